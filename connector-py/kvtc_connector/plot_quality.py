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

__all__ = ["main", "plot"]

STYLE = {
    "kvtc": {"color": "#1f77b4", "marker": "o"},
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


def plot(docs: Sequence[dict[str, Any]], out: Path, x: str = "achieved") -> list[Path]:
    """Draw the figure for the evaluation documents ``docs``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    x_key, x_label = X_FIELDS[x]
    fig, grid = plt.subplots(2 * len(docs), 2, figsize=(10, 7.2 * len(docs)), squeeze=False)
    for r, doc in enumerate(docs):
        axes = [[grid[2 * r][0], grid[2 * r][1], grid[2 * r + 1][0], grid[2 * r + 1][1]]]
        r = 0
        by_method: dict[str, list[dict[str, Any]]] = {}
        for row in doc["results"]:
            by_method.setdefault(row["method"], []).append(row)
        for c, (key, label, scale) in enumerate(PANELS):
            ax = axes[r][c]
            for method, rows in by_method.items():
                pts = [
                    (float(row[x_key]), _value(row, key), row.get("target_ratio"))
                    for row in rows
                    if row.get(x_key) is not None and _value(row, key) is not None
                ]
                pts = [pt for pt in pts if pt[1] is not None]
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
                if method in ("kvtc", "poc"):
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
            ax.xaxis.set_major_locator(FixedLocator([1, 2, 4, 8, 16, 32, 64, 128, 256]))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            if scale == "symlog":
                ax.set_yscale("symlog", linthresh=1.0)
            elif scale == "log":
                ax.set_yscale("log")
            ax.set_xlabel(x_label)
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(
                f"{doc.get('model', '?')}: {label} ({doc.get('tokens', '?')} tokens)", fontsize=9
            )
        axes[r][0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for ext in ("png", "svg"):
        path = out.with_name(out.name + "." + ext)
        fig.savefig(path, dpi=120)
        written.append(path)
    plt.close(fig)
    return written


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
