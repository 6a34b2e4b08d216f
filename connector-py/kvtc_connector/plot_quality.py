"""Plot quality vs achieved compression ratio from ``kvtc_connector.evaluate`` JSON files.

``python -m kvtc_connector.plot_quality --json A.json [B.json ...] --out docs/quality-NAME``
writes ``docs/quality-NAME.png`` and ``docs/quality-NAME.svg``: four panels (perplexity change vs
the uncompressed cache in %, top-1 agreement, KL(base || method), attention-output relative
error) against the achieved ratio on a log axis, one line per (file, method). Several JSON files
(e.g. two models) are drawn side by side in one figure with a row of panels each.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "markdown_table", "plot"]

STYLE = {
    "kvtc": {"color": "#1f77b4", "marker": "o"},
    "kvtc-bf16-proj": {"color": "#17becf", "marker": "v"},
    "kvtc-fp8-proj": {"color": "#9467bd", "marker": "P"},
    "poc": {"color": "#ff7f0e", "marker": "s"},
    "kivi2": {"color": "#2ca02c", "marker": "^"},
    "fp8": {"color": "#d62728", "marker": "D"},
    "none": {"color": "#7f7f7f", "marker": "x"},
}
PANELS = (
    ("ppl_change", "perplexity change vs uncompressed (%)", "symlog"),
    ("top1_agreement", "top-1 agreement", "linear"),
    ("kl", "KL(base || method), nats", "log"),
    ("attn_rel_err", "attention output rel. error", "log"),
)
X_FIELDS = {
    "achieved": ("achieved_ratio", "achieved ratio (all prefix tokens, bf16 = 1)"),
    "compressed": ("achieved_ratio_compressed", "achieved ratio on compressed tokens"),
}


def _value(row: dict[str, Any], key: str) -> float | None:
    if key == "ppl_change":
        if row.get("ppl") is None or not row.get("ppl_base"):
            return None
        return 100.0 * (float(row["ppl"]) / float(row["ppl_base"]) - 1.0)
    v = row.get(key)
    return None if v is None else float(v)


TICK_SETS = (
    (1, 2, 4, 8, 16, 32, 64, 128, 256),
    (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128),
    (1, 1.25, 1.5, 1.75, 2, 2.25, 2.5, 2.75, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 10, 12, 14, 16),
)


def _ticks(lo: float, hi: float) -> list[float]:
    """The densest tick set with at most 8 ticks in [lo, hi] (at least 2 when possible)."""
    best: list[float] = []
    for ticks in TICK_SETS:
        inside = [float(t) for t in ticks if lo <= t <= hi]
        if len(inside) <= 8 and len(inside) >= len(best):
            best = inside
    return best


def plot(docs: Sequence[dict[str, Any]], out: Path, x: str = "achieved") -> list[Path]:
    """Draw the figure for the evaluation documents ``docs``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    x_key, x_label = X_FIELDS[x]
    fig = plt.figure(figsize=(10.5, 7.8 * len(docs)), layout="constrained")
    subfigs = fig.subfigures(len(docs), 1, squeeze=False)[:, 0]
    for doc, sub in zip(docs, subfigs, strict=True):
        sub.suptitle(
            f"{doc.get('model', '?')}: quality vs compression "
            f"({doc.get('tokens', '?')} continuation tokens)",
            fontsize=11,
        )
        axes = sub.subplots(2, 2).ravel()
        by_method: dict[str, list[dict[str, Any]]] = {}
        for row in doc["results"]:
            by_method.setdefault(row["method"], []).append(row)
        xs = [float(r[x_key]) for r in doc["results"] if r.get(x_key) is not None]
        lo, hi = (min(xs) / 1.1, max(xs) * 1.1) if xs else (1.0, 64.0)
        for ax, (key, label, scale) in zip(axes, PANELS, strict=True):
            for method, rows in by_method.items():
                pts: list[tuple[float, float, Any]] = []
                for row in rows:
                    y = _value(row, key)
                    if row.get(x_key) is not None and y is not None:
                        pts.append((float(row[x_key]), y, row.get("target_ratio")))
                if not pts:
                    continue
                pts.sort(key=lambda pt: pt[0])
                style = STYLE.get(method, {"color": "black", "marker": "."})
                ax.plot(
                    [pt[0] for pt in pts],
                    [pt[1] for pt in pts],
                    label=method,
                    linestyle="-" if len(pts) > 1 else "none",
                    **style,
                )
                if method.startswith("kvtc") or method == "poc":
                    for xp, yp, target in pts:
                        if target is not None:
                            ax.annotate(
                                f"{target:g}x",
                                (xp, yp),
                                textcoords="offset points",
                                xytext=(3, 4),
                                fontsize=7,
                                color=style["color"],
                            )
            ax.set_xscale("log")
            ax.set_xlim(lo, hi)
            ax.xaxis.set_major_locator(FixedLocator(_ticks(lo, hi)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            if scale == "symlog":
                ax.set_yscale("symlog", linthresh=1.0)
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            elif scale == "log":
                ax.set_yscale("log")
            ax.set_xlabel(x_label, fontsize=9)
            ax.set_title(label, fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for ext in ("png", "svg"):
        path = out.with_name(out.name + "." + ext)
        fig.savefig(path, dpi=110)
        written.append(path)
    plt.close(fig)
    return written


def _num(v: Any, fmt: str) -> str:
    return "-" if v is None else format(float(v), fmt)


def markdown_table(doc: dict[str, Any]) -> str:
    """The results of one evaluation as a Markdown table."""
    lines = [
        "| method | target | achieved ratio | achieved ratio (compressed tokens) "
        "| key rel. err | value rel. err | attn-output rel. err | top-1 | KL (nats) | ppl "
        "| ppl base | ppl change |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in doc["results"]:
        change = _value(row, "ppl_change")
        lines.append(
            f"| {row['method']} | {_num(row['target_ratio'], 'g')} "
            f"| {_num(row['achieved_ratio'], '.2f')} "
            f"| {_num(row['achieved_ratio_compressed'], '.2f')} "
            f"| {_num(row['key_rel_err'], '.4f')} | {_num(row['value_rel_err'], '.4f')} "
            f"| {_num(row['attn_rel_err'], '.4f')} | {_num(row['top1_agreement'], '.4f')} "
            f"| {_num(row['kl'], '.5f')} | {_num(row['ppl'], '.4f')} "
            f"| {_num(row['ppl_base'], '.4f')} | {_num(change, '+.2f')}% |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvtc_connector.plot_quality",
        description=(
            "Plot perplexity change, top-1 agreement, KL and attention-output error against the "
            "achieved compression ratio (log x axis) for every method of one or more "
            "kvtc_connector.evaluate JSON files. Writes OUT.png and OUT.svg."
        ),
    )
    parser.add_argument("--json", required=True, nargs="+", type=Path, help="evaluate JSON files")
    parser.add_argument(
        "--out", required=True, type=Path, help="output path without extension (docs/quality-X)"
    )
    parser.add_argument(
        "--x",
        choices=sorted(X_FIELDS),
        default="achieved",
        help="x axis: achieved ratio over all prefix tokens (default) or over compressed ones",
    )
    parser.add_argument(
        "--table", action="store_true", help="also print each file's results as a Markdown table"
    )
    args = parser.parse_args(argv)
    docs = []
    for path in args.json:
        try:
            docs.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as e:
            print(f"plot_quality: error: {path}: {e}", file=sys.stderr)
            return 2
    for path in plot(docs, args.out, args.x):
        print(f"wrote {path}")
    if args.table:
        for path, doc in zip(args.json, docs, strict=True):
            print(f"\n{path} ({doc.get('model')}, {doc.get('tokens')} tokens)\n")
            print(markdown_table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
