"""Downstream quality of kvtc against baselines: restore a prefix's KV cache, continue the text.

For every held-out document (truncated to ``--max-tokens``):

1. Split the tokens into a prefix (``round(T * prefix_fraction)`` tokens) and a continuation.
2. Forward the whole document once (reference logits), and the prefix alone with ``use_cache``
   to capture its KV cache (float32 ``[tokens, layers, kv_heads, head_dim]``, keys post-RoPE:
   the format of :mod:`kvtc_connector.capture`).
3. Restore the prefix KV through the real codec (``<sidecar> roundtrip`` at every ratio, sinks and
   window kept raw) and through each baseline of :mod:`kvtc_connector.baselines` (``fp8``,
   ``kivi2``, ``poc`` at every ratio).
4. For the uncompressed cache and for each restored cache, build a ``DynamicCache`` holding the
   prefix KV and run the model over the continuation tokens, recording every layer's
   self-attention output (forward hooks) and the logits. Sanity check: the uncompressed cache
   path must reproduce the full-sequence logits (max abs difference below ``--sanity-tol`` times
   ``max(1, max |logit|)``), otherwise the evaluation stops.

Metrics per (method, target ratio), averaged over documents weighted by tokens:

- ``achieved_ratio``: bf16 bytes of the prefix KV / bytes the method stores for it, counting the
  tokens it keeps uncompressed at 16 bits (``raw_bf16 / (coded + (sinks + window) * p * 4)`` for
  kvtc). ``achieved_ratio_compressed``: the same on the compressed tokens only (paper
  accounting). Both are aggregated as total bytes over total bytes, which is the token-weighted
  (harmonic) mean of the per-document ratios.
- ``key_rel_err``, ``value_rel_err``: ``||X_hat - X||_F / ||X||_F`` over all prefix tokens
  (keys post-RoPE), weighted by prefix tokens.
- ``attn_rel_err``: per layer ``||A_hat - A||_F / ||A||_F`` of the self-attention module's output
  (after ``o_proj``) over the continuation tokens, averaged over layers.
- ``top1_agreement``, ``kl``: next-token argmax agreement and ``KL(p_base || p_method)`` (nats),
  over every continuation position.
- ``ppl`` and ``ppl_base``: continuation perplexity with the method's cache and with the
  uncompressed cache; the targets are continuation tokens 2..n (the first continuation token is
  predicted from the prefix forward, which no cache affects).

``tokens`` in the JSON is the total number of continuation positions evaluated. fp8 and kivi2
have no target ratio: their ``target_ratio`` is their nominal ratio (2 and 8 = 16 bits / 2 bits).
``--reference`` adds a ``"none"`` row (the uncompressed cache through the same path), whose
``ppl`` equals ``ppl_base`` by construction: a check of the harness, off by default.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from kvtc_connector import baselines
from kvtc_connector.capture import CaptureError, LoadedModel, capture_kv, load_model, read_texts

__all__ = ["EvalError", "evaluate", "main"]

logger = logging.getLogger("kvtc_connector.evaluate")

# kvtc's projection precisions (``roundtrip --projection``): fp32 is "kvtc"; the others are kvtc
# with the projection GEMM's operands rounded as the CUDA backend (bf16) or an fp8 GEMM would.
PROJECTIONS = {"fp32": "kvtc", "bf16": "kvtc-bf16-proj", "fp8": "kvtc-fp8-proj"}
METHODS = (*PROJECTIONS.values(), "fp8", "kivi2", "poc")
FP8_NOMINAL_RATIO = 2.0
KIVI2_NOMINAL_RATIO = 8.0
DEFAULT_SIDECAR = f"node {Path(__file__).resolve().parents[2] / 'dist' / 'src' / 'main.js'}"

F32 = npt.NDArray[np.float32]


class EvalError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


# --------------------------------------------------------------------------------------------
# Calibration file


@dataclass
class CalibrationInfo:
    calibration_id: str
    ratios: list[float]
    fingerprint: str
    source: str
    sink_tokens: int


def read_calibration(path: Path) -> CalibrationInfo:
    """The parts of a kvtc calibration file's metadata the evaluation needs."""
    try:
        with safe_open(str(path), "np") as f:
            raw = (f.metadata() or {}).get("kvtc")
    except FileNotFoundError:
        raise EvalError(f"{path}: calibration file not found") from None
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise EvalError(f"{path}: not a safetensors calibration file: {e}") from None
    if raw is None:
        raise EvalError(f"{path}: no kvtc metadata: not a kvtc calibration file")
    meta = json.loads(raw)
    return CalibrationInfo(
        calibration_id=str(meta["calibration_id"]),
        ratios=[float(p["ratio"]) for p in meta["plans"]],
        fingerprint=str(meta["model"]["fingerprint"]),
        source=str(meta["settings"].get("source", "")),
        sink_tokens=int(meta["settings"].get("sink_tokens", 4)),
    )


# --------------------------------------------------------------------------------------------
# Model runs


def _attention_modules(model: Any, layers: int) -> list[Any]:
    mods = [m for name, m in model.named_modules() if name.endswith("self_attn")]
    if len(mods) != layers:
        raise EvalError(f"found {len(mods)} self_attn modules, the config says {layers} layers")
    return mods


@contextmanager
def _record_attention(modules: Sequence[Any], into: list[Any]) -> Iterator[None]:
    """Append each attention module's output tensor (first element) to ``into``, in order."""

    def hook(_module: Any, _args: Any, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        into.append(out.detach()[0].clone())

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _build_cache(model: Any, keys: F32, values: F32) -> Any:
    """A DynamicCache holding ``keys``/``values`` [tokens, layers, kv_heads, head_dim]."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    dtype = next(model.parameters()).dtype
    for layer in range(keys.shape[1]):
        k = torch.from_numpy(np.ascontiguousarray(keys[:, layer].transpose(1, 0, 2)))[None]
        v = torch.from_numpy(np.ascontiguousarray(values[:, layer].transpose(1, 0, 2)))[None]
        cache.update(k.to(model.device, dtype), v.to(model.device, dtype), layer)
    return cache


@dataclass
class ContinuationRun:
    logits: Any  # torch [n, vocab] float32
    attention: list[Any]  # per layer torch [n, hidden]


def run_continuation(
    loaded: LoadedModel, attn: Sequence[Any], keys: F32, values: F32, cont_ids: Sequence[int]
) -> ContinuationRun:
    """Forward ``cont_ids`` over a cache holding the given prefix KV."""
    import torch

    cache = _build_cache(loaded.model, keys, values)
    ids = torch.tensor([list(cont_ids)], dtype=torch.long, device=loaded.model.device)
    recorded: list[Any] = []
    with torch.inference_mode(), _record_attention(attn, recorded):
        out = loaded.model(input_ids=ids, past_key_values=cache, use_cache=True)
    return ContinuationRun(out.logits[0].float(), [a.float() for a in recorded])


@dataclass
class DocMetrics:
    """Sums over one document, for token-weighted averaging."""

    prefix_tokens: int
    cont_tokens: int
    targets: int
    raw_bf16_bytes: int
    bytes_used: int
    coded_raw_bf16_bytes: int  # bf16 bytes of the compressed tokens only
    coded_bytes: int
    key_rel_err: float
    value_rel_err: float
    attn_rel_err: float
    top1: float
    kl: float
    nll_sum: float
    nll_base_sum: float


def _rel(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    den = float(np.linalg.norm(b.astype(np.float64)))
    num = float(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64)))
    return num / den if den > 0 else num


def compare(
    base: ContinuationRun, run: ContinuationRun, cont_ids: Sequence[int]
) -> tuple[float, float, float, float, float, int]:
    """(attn_rel_err, top1, kl, nll_sum, nll_base_sum, targets) of ``run`` against ``base``."""
    import torch

    layer_errs = [
        float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30))
        for a, b in zip(run.attention, base.attention, strict=True)
    ]
    lp_base = torch.log_softmax(base.logits.double(), dim=-1)
    lp = torch.log_softmax(run.logits.double(), dim=-1)
    kl = float((lp_base.exp() * (lp_base - lp)).sum(dim=-1).mean())
    top1 = float((base.logits.argmax(-1) == run.logits.argmax(-1)).double().mean())
    targets = torch.tensor(list(cont_ids[1:]), dtype=torch.long)
    n = len(targets)
    nll = float(-lp[:n].gather(1, targets[:, None]).sum()) if n else 0.0
    nll_base = float(-lp_base[:n].gather(1, targets[:, None]).sum()) if n else 0.0
    return float(np.mean(layer_errs)), top1, kl, nll, nll_base, n


# --------------------------------------------------------------------------------------------
# Methods


@dataclass
class Restored:
    method: str
    target_ratio: float | None
    keys: F32
    values: F32
    bytes_used: int
    raw_tokens: int  # tokens stored uncompressed at 16 bits


def _write_capture(
    loaded: LoadedModel, keys: F32, values: F32, ids: Sequence[int], out: Path
) -> None:
    tokens = len(ids)
    metadata = {
        "format": 1,
        **loaded.shape_fields(),
        "dtype": "float32",
        "compute_dtype": "float32",
        "document": 0,
        "tokens": tokens,
    }
    save_file(
        {
            "keys": np.ascontiguousarray(keys),
            "values": np.ascontiguousarray(values),
            "positions": np.arange(tokens, dtype=np.int64),
            "input_ids": np.asarray(ids, dtype=np.int64),
        },
        str(out),
        metadata={"kvtc_capture": json.dumps(metadata, sort_keys=True)},
    )


def kvtc_roundtrip(
    sidecar: Sequence[str],
    calibration: Path,
    loaded: LoadedModel,
    keys: F32,
    values: F32,
    ids: Sequence[int],
    ratios: Sequence[float],
    sink_tokens: int,
    window_tokens: int,
    workdir: Path,
    projection: str = "fp32",
) -> list[Restored]:
    """Compress and restore one prefix through ``<sidecar> roundtrip`` at every ratio."""
    kv_dir, out_dir = workdir / "kv", workdir / "rt"
    kv_dir.mkdir(parents=True, exist_ok=True)
    _write_capture(loaded, keys, values, ids, kv_dir / "seq-00000.safetensors")
    cmd = [
        *sidecar,
        "roundtrip",
        "--calibration",
        str(calibration),
        "--kv",
        str(kv_dir),
        "--out",
        str(out_dir),
        "--ratios",
        ",".join(_fmt(r) for r in ratios),
        "--sink-tokens",
        str(sink_tokens),
        "--window-tokens",
        str(window_tokens),
        "--projection",
        projection,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        message = " ".join((proc.stderr or proc.stdout).split())[-600:]
        raise EvalError(f"sidecar roundtrip failed ({shlex.join(cmd)}): {message}")
    summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    p = loaded.layers * loaded.kv_heads * loaded.head_dim
    restored: list[Restored] = []
    for entry in summary["entries"]:
        data = load_file(str(out_dir / entry["output"]))
        raw_tokens = int(entry["sink_tokens"]) + int(entry["window_tokens"])
        if raw_tokens + int(entry["coded_tokens"]) != int(entry["tokens"]):
            raise EvalError(f"sidecar summary does not add up: {entry}")
        restored.append(
            Restored(
                method=PROJECTIONS[projection],
                target_ratio=float(entry["ratio"]),
                keys=data["keys"],
                values=data["values"],
                bytes_used=int(entry["coded_bytes"]) + raw_tokens * p * 2 * 2,
                raw_tokens=raw_tokens,
            )
        )
        (out_dir / entry["output"]).unlink()
    shutil.rmtree(workdir, ignore_errors=True)
    return restored


def baseline_restores(
    keys: F32,
    values: F32,
    ratios: Sequence[float],
    poc_basis: baselines.PocBasis | None,
    sink_tokens: int,
    window_tokens: int,
) -> Iterator[Restored]:
    tokens = keys.shape[0]
    k, v, nb = baselines.fp8(keys, values)
    yield Restored("fp8", FP8_NOMINAL_RATIO, k, v, nb, baselines.fp8_raw_tokens(tokens))
    k, v, nb = baselines.kivi2(keys, values)
    yield Restored("kivi2", KIVI2_NOMINAL_RATIO, k, v, nb, baselines.kivi2_raw_tokens(tokens))
    if poc_basis is not None:
        raw = baselines.poc_raw_tokens(tokens, sink_tokens, window_tokens)
        for r in ratios:
            k, v, nb = baselines.poc(
                keys, values, poc_basis, r, sink_tokens=sink_tokens, window_tokens=window_tokens
            )
            yield Restored("poc", float(r), k, v, nb, raw)


def _fmt(r: float) -> str:
    return str(int(r)) if float(r).is_integer() else str(r)


# --------------------------------------------------------------------------------------------
# The evaluation


@dataclass
class Accumulator:
    docs: list[DocMetrics] = field(default_factory=list)

    def result(self, method: str, target: float | None) -> dict[str, Any]:
        d = self.docs
        pre = sum(x.prefix_tokens for x in d)
        cont = sum(x.cont_tokens for x in d)
        tgt = sum(x.targets for x in d)
        coded = sum(x.coded_bytes for x in d)

        def wavg(attr: str, weight: str) -> float:
            w = [getattr(x, weight) for x in d]
            return float(sum(getattr(x, attr) * wi for x, wi in zip(d, w, strict=True)) / sum(w))

        return {
            "method": method,
            "target_ratio": target,
            "achieved_ratio": sum(x.raw_bf16_bytes for x in d) / sum(x.bytes_used for x in d),
            "achieved_ratio_compressed": (
                sum(x.coded_raw_bf16_bytes for x in d) / coded if coded > 0 else None
            ),
            "key_rel_err": wavg("key_rel_err", "prefix_tokens") if pre else None,
            "value_rel_err": wavg("value_rel_err", "prefix_tokens") if pre else None,
            "attn_rel_err": wavg("attn_rel_err", "cont_tokens") if cont else None,
            "top1_agreement": wavg("top1", "cont_tokens") if cont else None,
            "kl": wavg("kl", "cont_tokens") if cont else None,
            "ppl": math.exp(sum(x.nll_sum for x in d) / tgt) if tgt else None,
            "ppl_base": math.exp(sum(x.nll_base_sum for x in d) / tgt) if tgt else None,
        }


def evaluate(
    loaded: LoadedModel,
    calibration: Path,
    docs: Sequence[str],
    ratios: Sequence[float],
    *,
    max_tokens: int | None = None,
    prefix_fraction: float = 0.75,
    sink_tokens: int = 4,
    window_tokens: int = 128,
    sidecar: Sequence[str] = tuple(shlex.split(DEFAULT_SIDECAR)),
    poc_basis: baselines.PocBasis | None = None,
    reference: bool = False,
    sanity_tol: float = 1e-3,
    progress: bool = True,
    per_document: list[dict[str, Any]] | None = None,
    projections: Sequence[str] = ("fp32",),
) -> dict[str, Any]:
    """Run the whole evaluation; returns the JSON document (see the module docstring).

    ``projections`` lists the kvtc projection precisions to run (keys of ``PROJECTIONS``), each a
    method of its own.

    With ``per_document``, one row per (document, method, ratio) is appended to it: the result
    fields computed on that document alone, plus ``document``, ``prefix_tokens`` and
    ``continuation_tokens``.
    """
    import torch

    cal = read_calibration(calibration)
    missing = [r for r in ratios if float(r) not in cal.ratios]
    if missing:
        raise EvalError(
            f"{calibration}: no plan for ratio(s) {', '.join(_fmt(r) for r in missing)}; it has "
            f"{', '.join(_fmt(r) for r in cal.ratios)}"
        )
    if cal.fingerprint != loaded.fingerprint:
        raise EvalError(
            f"{calibration}: calibrated for model fingerprint {cal.fingerprint}, the model is "
            f"{loaded.fingerprint}"
        )
    if not 0.0 < prefix_fraction < 1.0:
        raise EvalError(f"--prefix-fraction must be in (0, 1), got {prefix_fraction}")
    attn = _attention_modules(loaded.model, loaded.layers)
    p = loaded.layers * loaded.kv_heads * loaded.head_dim
    acc: dict[tuple[str, float | None], Accumulator] = {}
    total_cont = 0
    with tempfile.TemporaryDirectory(prefix="kvtc-eval-") as tmp, logging_redirect_tqdm():
        bar = tqdm(docs, desc="evaluate", unit="doc", disable=not progress)
        for index, text in enumerate(bar):
            encoded = loaded.tokenizer(
                text, truncation=max_tokens is not None, max_length=max_tokens
            )
            ids = [int(t) for t in encoded["input_ids"]]
            prefix_len = round(len(ids) * prefix_fraction)
            if prefix_len < 1 or len(ids) - prefix_len < 2:
                logger.warning("document %d has %d tokens: too short, skipped", index, len(ids))
                continue
            prefix, cont = ids[:prefix_len], ids[prefix_len:]

            bar.set_postfix_str("reference")
            with torch.inference_mode():
                full = (
                    loaded.model(
                        input_ids=torch.tensor([ids], device=loaded.model.device), use_cache=False
                    )
                    .logits[0, prefix_len:]
                    .float()
                )
            keys, values = capture_kv(loaded, prefix)
            base = run_continuation(loaded, attn, keys, values, cont)
            diff = float((base.logits - full).abs().max())
            bound = sanity_tol * max(1.0, float(full.abs().max()))
            if not diff <= bound:
                raise EvalError(
                    f"sanity check failed on document {index}: the uncompressed cache path "
                    f"differs from the full-sequence forward by {diff:.3g} (allowed {bound:.3g})"
                )

            restores: list[Restored] = []
            for projection in projections:
                bar.set_postfix_str(f"kvtc roundtrip ({projection} projection)")
                restores += kvtc_roundtrip(
                    sidecar,
                    calibration,
                    loaded,
                    keys,
                    values,
                    prefix,
                    ratios,
                    sink_tokens,
                    window_tokens,
                    Path(tmp) / f"doc-{index:05d}-{projection}",
                    projection,
                )
            bar.set_postfix_str("baselines")
            restores.extend(
                baseline_restores(keys, values, ratios, poc_basis, sink_tokens, window_tokens)
            )
            if reference:
                restores.append(Restored("none", 1.0, keys, values, prefix_len * p * 4, prefix_len))

            raw_bf16 = prefix_len * p * 2 * 2
            for r in restores:
                bar.set_postfix_str(f"{r.method} {_fmt(r.target_ratio or 0)}")
                run = run_continuation(loaded, attn, r.keys, r.values, cont)
                attn_err, top1, kl, nll, nll_base, targets = compare(base, run, cont)
                coded_tokens = prefix_len - r.raw_tokens
                metrics = DocMetrics(
                    prefix_tokens=prefix_len,
                    cont_tokens=len(cont),
                    targets=targets,
                    raw_bf16_bytes=raw_bf16,
                    bytes_used=r.bytes_used,
                    coded_raw_bf16_bytes=coded_tokens * p * 2 * 2,
                    coded_bytes=r.bytes_used - r.raw_tokens * p * 2 * 2,
                    key_rel_err=_rel(r.keys, keys),
                    value_rel_err=_rel(r.values, values),
                    attn_rel_err=attn_err,
                    top1=top1,
                    kl=kl,
                    nll_sum=nll,
                    nll_base_sum=nll_base,
                )
                acc.setdefault((r.method, r.target_ratio), Accumulator()).docs.append(metrics)
                if per_document is not None:
                    row = Accumulator([metrics]).result(r.method, r.target_ratio)
                    row.update(
                        document=index, prefix_tokens=prefix_len, continuation_tokens=len(cont)
                    )
                    per_document.append(row)
            total_cont += len(cont)
        bar.close()
    if not acc:
        raise EvalError("no document was long enough to evaluate")
    order = {m: i for i, m in enumerate((*METHODS, "none"))}
    results = [
        a.result(method, target)
        for (method, target), a in sorted(
            acc.items(), key=lambda kv: (order[kv[0][0]], kv[0][1] or 0.0)
        )
    ]
    return {
        "model": loaded.name,
        "calibration_id": cal.calibration_id,
        "tokens": total_cont,
        "results": results,
    }


# --------------------------------------------------------------------------------------------
# CLI


def _ratios(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of numbers: {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected ratios >= 1: {text!r}")
    return values


def _projections(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in PROJECTIONS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(PROJECTIONS)}: {text!r}"
        )
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kvtc_connector.evaluate",
        description=(
            "Measure downstream quality of kvtc and baselines (fp8, KIVI-2bit, the seed PoC): "
            "restore each held-out document's prefix KV cache, continue the text over it and "
            "compare with the uncompressed cache (perplexity, top-1, KL, attention-output error, "
            "KV reconstruction error, achieved ratios). Writes one JSON file."
        ),
        epilog=(
            "example:\n"
            "  python -m kvtc_connector.evaluate --model shared/models/stories260K/hf \\\n"
            "      --calibration .cache/quality/stories260k/calibration.safetensors \\\n"
            "      --texts connector-py/kvtc_connector/data/stories-eval.txt \\\n"
            "      --ratios 4,8,16,32 --window-tokens 32 --max-tokens 512 --json out.json\n"
            "\nexit status: 0 on success, 2 on a usage, input or sanity-check error."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, type=Path, help="model folder or .gguf file")
    parser.add_argument(
        "--calibration", required=True, type=Path, help="kvtc calibration file (.safetensors)"
    )
    parser.add_argument(
        "--texts", required=True, type=Path, help="held-out documents ('---'-separated or .jsonl)"
    )
    parser.add_argument(
        "--ratios",
        type=_ratios,
        default=[8.0, 16.0, 32.0, 64.0],
        help="kvtc plan ratios (and PoC target ratios) to evaluate (default: 8,16,32,64)",
    )
    parser.add_argument("--json", required=True, type=Path, help="output JSON file")
    parser.add_argument(
        "--projections",
        type=_projections,
        default=["fp32"],
        help="kvtc projection precisions, each its own method: fp32 ('kvtc'), bf16 "
        "('kvtc-bf16-proj', the CUDA backend's GEMM operands), fp8 ('kvtc-fp8-proj', e4m3 "
        "scaled per token and per basis vector) (default: fp32)",
    )
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="truncate each document to N tokens"
    )
    parser.add_argument(
        "--prefix-fraction",
        type=float,
        default=0.75,
        help="fraction of each document's tokens that forms the compressed prefix (default: 0.75)",
    )
    parser.add_argument(
        "--window-tokens",
        type=int,
        default=128,
        help="newest prefix tokens kept raw by kvtc and the PoC (default: 128)",
    )
    parser.add_argument(
        "--sink-tokens", type=int, default=4, help="leading tokens kept raw (default: 4)"
    )
    parser.add_argument(
        "--sidecar",
        default=os.environ.get("KVTC_SIDECAR", DEFAULT_SIDECAR),
        help="command that runs the sidecar CLI (default: $KVTC_SIDECAR or %(default)s)",
    )
    parser.add_argument(
        "--poc-kv",
        type=Path,
        default=None,
        help="capture folder the PoC basis is fitted on (default: the calibration's source "
        "folder, i.e. the data the kvtc calibration used)",
    )
    parser.add_argument(
        "--poc-cache",
        type=Path,
        default=None,
        help="npz file caching the PoC basis (reused when it was fitted on the same captures)",
    )
    parser.add_argument("--no-poc", action="store_true", help="skip the PoC baseline")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="add a 'none' row: the uncompressed cache through the same path (ppl == ppl_base)",
    )
    parser.add_argument(
        "--sanity-tol",
        type=float,
        default=1e-3,
        help="allowed max |logit| difference of the cache path vs the full forward, relative "
        "to max(1, max |logit|) (default: 1e-3)",
    )
    parser.add_argument(
        "--per-document",
        type=Path,
        default=None,
        help="also write every (document, method, ratio) row to this JSON file",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    cal = read_calibration(args.calibration)
    docs = read_texts(args.texts)
    loaded = load_model(args.model)
    poc_basis = None
    if not args.no_poc:
        source = args.poc_kv or (Path(cal.source) if cal.source else None)
        if source is None or not source.is_dir():
            raise EvalError(
                f"PoC baseline: calibration source folder {source} not found; pass --poc-kv "
                "CAPTURE_DIR (the captures the calibration was fitted on) or --no-poc"
            )
        t0 = time.perf_counter()
        print(f"PoC baseline: PCA of {source} ...", file=sys.stderr, flush=True)
        poc_basis = baselines.fit_poc_basis_from_captures(
            source, sink_tokens=cal.sink_tokens, cache=args.poc_cache
        )
        print(
            f"PoC baseline: basis of rank {poc_basis.keys.basis.shape[1]} from "
            f"{poc_basis.samples} token rows in {time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
        )
    per_document: list[dict[str, Any]] | None = [] if args.per_document else None
    result = evaluate(
        loaded,
        args.calibration,
        docs,
        args.ratios,
        max_tokens=args.max_tokens,
        prefix_fraction=args.prefix_fraction,
        sink_tokens=args.sink_tokens,
        window_tokens=args.window_tokens,
        sidecar=shlex.split(args.sidecar),
        poc_basis=poc_basis,
        reference=args.reference,
        sanity_tol=args.sanity_tol,
        progress=not args.quiet,
        per_document=per_document,
        projections=args.projections,
    )
    if args.per_document:
        args.per_document.parent.mkdir(parents=True, exist_ok=True)
        args.per_document.write_text(json.dumps(per_document, indent=1) + "\n", encoding="utf-8")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        f"evaluated {len(result['results'])} (method, ratio) pairs over {result['tokens']} "
        f"continuation tokens in {time.perf_counter() - started:.1f}s; wrote {args.json}"
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        run(args)
    except (EvalError, CaptureError) as e:
        print(f"kvtc-evaluate: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
