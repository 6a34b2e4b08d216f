"""Baseline KV-cache compressors that kvtc is measured against, with honest byte counts.

Every method takes ``keys`` and ``values`` float32 ``[tokens, layers, kv_heads, head_dim]`` (keys
post-RoPE, exactly as the model caches them) and returns ``(restored_keys, restored_values,
bytes_used)``: the arrays the model will attend over (same shape, float32) and the bytes a store
would need for them, counting payload, every scale and zero point, and the tokens a method keeps
uncompressed at 16 bits (bf16 for sinks/window, fp16 for KIVI's residual). Tokens kept
uncompressed are returned exactly as given (as the kvtc ``roundtrip`` tool does); only their
byte count assumes 16-bit storage.

Methods:

- :func:`fp8`: FP8 E4M3 cast (``torch.float8_e4m3fn``, saturated at +-448, no scale) and back.
  1 byte per element, nothing kept raw: ratio 2 against bf16.
- :func:`kivi2`: KIVI 2-bit (Liu et al., ICML 2024; kvtc paper A.2: group 32, residual 128).
  Keys per channel (each (layer, head, dim) channel, groups of 32 consecutive tokens), values per
  token (groups of 32 consecutive channels of one layer's ``kv_heads * head_dim`` vector), 2-bit
  asymmetric uniform codes with an fp16 min and an fp16 scale per group. The newest 128 tokens
  (the residual) stay fp16, and so do the oldest-but-not-full-group tokens just before them, so
  the quantized span is a multiple of 32 tokens. 2 + 1 (key scales) or 2 + 1 (value scales) bits
  per element: 16/3 = 5.3x on the quantized span.
- :func:`poc`: the seed proof of concept (bet0x/kvtc-poc, see docs of :class:`PocBasis`).

Byte accounting helpers (:func:`fp8_raw_tokens`, :func:`kivi2_raw_tokens`,
:func:`poc_raw_tokens`) say how many tokens of a sequence a method keeps at 16 bits, so callers
can also report the ratio on the compressed tokens only (paper accounting).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kvtc_connector.rope import apply_rope, remove_rope

__all__ = [
    "KIVI_GROUP",
    "KIVI_RESIDUAL",
    "PocAllocation",
    "PocBasis",
    "fit_poc_basis",
    "fit_poc_basis_from_captures",
    "fp8",
    "fp8_raw_tokens",
    "kivi2",
    "kivi2_raw_tokens",
    "load_poc_basis",
    "pack_bits",
    "poc",
    "poc_allocate",
    "poc_raw_tokens",
    "save_poc_basis",
]

F32 = npt.NDArray[np.float32]
Result = tuple[F32, F32, int]

KIVI_GROUP = 32
KIVI_RESIDUAL = 128
KIVI_BITS = 2
FP8_E4M3_MAX = 448.0

# PoC constants (bet0x/kvtc-poc kvtc_poc.py: KVTCCalibrator.dp_alloc, KVTCConfig)
POC_GROUP_SIZES = (16, 64, 256, 1024)
POC_BIT_OPTIONS = tuple(range(9))  # 0..8
POC_GROUP_OVERHEAD_BITS = 32
POC_RANK_CAP = 4096
POC_DEFLATE_LEVEL = 6
POC_HEADER_BYTES = 8  # fp32 min + fp32 scale per active component and stream


def _check(keys: npt.ArrayLike, values: npt.ArrayLike) -> tuple[F32, F32]:
    k = np.asarray(keys, dtype=np.float32)
    v = np.asarray(values, dtype=np.float32)
    if k.ndim != 4 or k.shape != v.shape:
        raise ValueError(
            f"expected keys and values of shape [tokens, layers, kv_heads, head_dim], got "
            f"{k.shape} and {v.shape}"
        )
    return k, v


# --------------------------------------------------------------------------------------------
# FP8 E4M3


def fp8_raw_tokens(tokens: int) -> int:
    """Tokens :func:`fp8` keeps at 16 bits: none."""
    del tokens
    return 0


def fp8(keys: npt.ArrayLike, values: npt.ArrayLike) -> Result:
    """FP8 E4M3 round trip (no scale; values beyond +-448 saturate). 1 byte per element."""
    import torch

    k, v = _check(keys, values)

    def cast(x: F32) -> F32:
        t = torch.from_numpy(np.clip(x, -FP8_E4M3_MAX, FP8_E4M3_MAX))
        out: F32 = t.to(torch.float8_e4m3fn).to(torch.float32).numpy()
        return out

    return cast(k), cast(v), int(k.size + v.size)


# --------------------------------------------------------------------------------------------
# KIVI 2-bit


def kivi2_raw_tokens(tokens: int, residual: int = KIVI_RESIDUAL, group: int = KIVI_GROUP) -> int:
    """Tokens :func:`kivi2` keeps in fp16: the residual plus the tokens that miss a full group."""
    if tokens <= residual:
        return tokens
    return residual + (tokens - residual) % group


def _fp16(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return x.astype(np.float16).astype(np.float32)


def _quant_groups(x: F32, bits: int, axis: int) -> F32:
    """Asymmetric uniform quantization, one fp16 min and fp16 scale per slice along ``axis``."""
    levels = (1 << bits) - 1
    mn = _fp16(x.min(axis=axis, keepdims=True))
    mx = x.max(axis=axis, keepdims=True)
    scale = _fp16((mx - mn) / levels)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint((x - mn) / safe), 0, levels)
    out: F32 = (q * scale + mn).astype(np.float32)
    return out


def kivi2(
    keys: npt.ArrayLike,
    values: npt.ArrayLike,
    residual: int = KIVI_RESIDUAL,
    group: int = KIVI_GROUP,
    bits: int = KIVI_BITS,
) -> Result:
    """KIVI: keys per channel, values per token, ``bits``-bit codes, fp16 min/scale per group.

    Bytes: codes ``bits/8`` per quantized element; keys ``4`` bytes (fp16 min + scale) per channel
    per ``group`` tokens; values ``4`` bytes per token per ``group`` channels of a layer (a
    layer's last group may be shorter); fp16 residual tokens at 2 bytes per element.
    """
    k, v = _check(keys, values)
    tokens, layers, kv_heads, head_dim = k.shape
    p = layers * kv_heads * head_dim
    width = kv_heads * head_dim
    coded = tokens - kivi2_raw_tokens(tokens, residual, group)
    rk, rv = k.copy(), v.copy()
    nbytes = 2 * (tokens - coded) * p * 2  # fp16 residual, keys and values
    if coded > 0:
        groups_t = coded // group
        # keys: [groups_t, group, p] -> min/scale over the token axis of each group
        kc = k[:coded].reshape(groups_t, group, p)
        rk[:coded] = _quant_groups(kc, bits, axis=1).reshape(coded, layers, kv_heads, head_dim)
        # values: per token, per layer, groups of `group` channels along kv_heads*head_dim
        vc = v[:coded].reshape(coded, layers, width)
        out = np.empty_like(vc)
        for start in range(0, width, group):
            stop = min(start + group, width)
            out[:, :, start:stop] = _quant_groups(vc[:, :, start:stop], bits, axis=2)
        rv[:coded] = out.reshape(coded, layers, kv_heads, head_dim)
        payload = 2 * math.ceil(coded * p * bits / 8)
        key_scales = groups_t * p * 4
        value_scales = coded * layers * math.ceil(width / group) * 4
        nbytes += payload + key_scales + value_scales
    return rk, rv, int(nbytes)


# --------------------------------------------------------------------------------------------
# The seed proof of concept (PoC)


@dataclass
class PocAllocation:
    """Bits per PCA component (0..8) and the PoC's bookkeeping for one stream and ratio."""

    bits: npt.NDArray[np.int32]
    group_size: int
    budget_bits: int
    used_bits: int
    model_error: float


@dataclass
class PocStream:
    mean: npt.NDArray[np.float64]  # [p]
    basis: npt.NDArray[np.float64]  # [p, rank]
    variance: npt.NDArray[np.float64]  # [rank], S^2 of the centered calibration rows


@dataclass
class PocBasis:
    """PCA of the PoC, fitted on the calibration capture (RoPE removed from keys).

    What this reproduces from bet0x/kvtc-poc (``kvtc_poc.py`` at 6469f50): one mean and basis per
    stream over all layers and heads (token rows of the calibration captures, attention sinks
    excluded, window tokens included as the PoC did), rank capped at ``min(4096, n, p)``; the
    greedy "DP" over one uniform group size from {16, 64, 256, 1024} (full groups only) and 0..8
    bits with the analytic error ``var / 4^b`` and a cost of ``32 + group * bits`` bits per token
    per active group, against a budget of ``16 * p / target_ratio`` bits per token; ONE min and
    scale per PCA component over all coded tokens of the sequence, stored as fp32.

    What it does not reproduce (the PoC's bugs, see research kvtc-paper.md d.4): the PCA here is
    exact (eigendecomposition of the covariance, not ``pca_lowrank`` with 5 iterations); codes are
    bit-packed at their width instead of one uint16 each; the PoC's 3-byte per-component index and
    width header is not counted (the allocation is shared calibration data); RoPE uses the model's
    real parameters instead of hard-coded Llama-3 constants. All of this favours the PoC.
    """

    rope: dict[str, Any]
    layers: int
    kv_heads: int
    head_dim: int
    keys: PocStream
    values: PocStream
    samples: int
    _allocations: dict[tuple[str, float], PocAllocation] = field(default_factory=dict, repr=False)

    @property
    def feature_dim(self) -> int:
        return self.layers * self.kv_heads * self.head_dim

    def allocation(self, stream: str, target_ratio: float) -> PocAllocation:
        key = (stream, float(target_ratio))
        if key not in self._allocations:
            s = self.keys if stream == "keys" else self.values
            self._allocations[key] = poc_allocate(s.variance, self.feature_dim, target_ratio)
        return self._allocations[key]


def _pca(rows: npt.NDArray[np.float64], rank_cap: int) -> PocStream:
    """Exact PCA: eigendecomposition of the covariance (float32, as the PoC's float32 data)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float64))
    mean = x.mean(dim=0)
    c = (x - mean).to(torch.float32)
    cov = c.T @ c  # [p, p]: eigenvalues are S^2 of the centered rows
    evals, evecs = torch.linalg.eigh(cov)
    order = torch.argsort(evals, descending=True)
    rank = min(rank_cap, rows.shape[0], rows.shape[1])
    order = order[:rank]
    return PocStream(
        mean=mean.numpy(),
        basis=evecs[:, order].to(torch.float64).contiguous().numpy(),
        variance=torch.clamp(evals[order], min=0.0).to(torch.float64).numpy(),
    )


def fit_poc_basis(
    keys_rows: npt.ArrayLike,
    values_rows: npt.ArrayLike,
    shape: tuple[int, int, int],
    rope: Mapping[str, Any],
    rank_cap: int = POC_RANK_CAP,
) -> PocBasis:
    """PoC PCA from token rows ``[n, p]`` (keys already RoPE-free) of a model of ``shape``."""
    kr = np.asarray(keys_rows, dtype=np.float64)
    vr = np.asarray(values_rows, dtype=np.float64)
    layers, kv_heads, head_dim = shape
    p = layers * kv_heads * head_dim
    if kr.ndim != 2 or kr.shape[1] != p or kr.shape != vr.shape:
        raise ValueError(f"expected rows [n, {p}], got {kr.shape} and {vr.shape}")
    return PocBasis(
        rope=dict(rope),
        layers=layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        keys=_pca(kr, rank_cap),
        values=_pca(vr, rank_cap),
        samples=int(kr.shape[0]),
    )


def save_poc_basis(basis: PocBasis, path: str | Path, tag: str = "") -> None:
    """Store a fitted PoC basis (float32 tensors) in an ``.npz`` file, with a free-form ``tag``."""
    meta = {
        "rope": basis.rope,
        "shape": [basis.layers, basis.kv_heads, basis.head_dim],
        "samples": basis.samples,
        "tag": tag,
    }
    encoded = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    arrays: dict[str, npt.NDArray[Any]] = {"meta": encoded}
    for name, s in (("keys", basis.keys), ("values", basis.values)):
        arrays[f"{name}.mean"] = s.mean
        arrays[f"{name}.basis"] = s.basis.astype(np.float32)
        arrays[f"{name}.variance"] = s.variance
    with open(path, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # the stubs type **kwds as allow_pickle


def load_poc_basis(path: str | Path, tag: str = "") -> PocBasis | None:
    """A basis stored by :func:`save_poc_basis` with the same ``tag``; None if absent/stale."""
    try:
        data = np.load(path)
    except (OSError, ValueError):
        return None
    with data:
        meta = json.loads(data["meta"].tobytes().decode("utf-8"))
        if meta.get("tag") != tag:
            return None
        streams = {
            name: PocStream(
                mean=data[f"{name}.mean"].astype(np.float64),
                basis=data[f"{name}.basis"].astype(np.float64),
                variance=data[f"{name}.variance"].astype(np.float64),
            )
            for name in ("keys", "values")
        }
    layers, kv_heads, head_dim = (int(x) for x in meta["shape"])
    return PocBasis(
        rope=meta["rope"],
        layers=layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        keys=streams["keys"],
        values=streams["values"],
        samples=int(meta["samples"]),
    )


def fit_poc_basis_from_captures(
    capture_dir: str | Path,
    sink_tokens: int = 4,
    rank_cap: int = POC_RANK_CAP,
    cache: str | Path | None = None,
) -> PocBasis:
    """PoC PCA from a capture folder (``seq-*.safetensors``), the data ``calibrate`` pools.

    With ``cache``, a basis stored there for the same capture files (names, sizes, modification
    times), sink count and rank cap is reused, and a fresh fit is stored there.
    """
    from safetensors import safe_open

    files = sorted(Path(capture_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{capture_dir}: no .safetensors captures")
    tag = json.dumps(
        {
            "files": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files],
            "sink_tokens": sink_tokens,
            "rank_cap": rank_cap,
        },
        sort_keys=True,
    )
    if cache is not None:
        cached = load_poc_basis(cache, tag)
        if cached is not None:
            return cached
    krows: list[npt.NDArray[np.float64]] = []
    vrows: list[npt.NDArray[np.float64]] = []
    meta: dict[str, Any] = {}
    for f in files:
        with safe_open(str(f), "np") as st:
            meta = json.loads(st.metadata()["kvtc_capture"])
            k = st.get_tensor("keys")
            v = st.get_tensor("values")
            pos = st.get_tensor("positions")
        keep = pos >= sink_tokens
        unroped = remove_rope(k, pos, meta["rope"])
        krows.append(unroped[keep].reshape(int(keep.sum()), -1))
        vrows.append(v[keep].reshape(int(keep.sum()), -1).astype(np.float64))
    shape = (int(meta["layers"]), int(meta["kv_heads"]), int(meta["head_dim"]))
    keys_rows, values_rows = np.concatenate(krows), np.concatenate(vrows)
    basis = fit_poc_basis(keys_rows, values_rows, shape, meta["rope"], rank_cap)
    if cache is not None:
        save_poc_basis(basis, cache, tag)
    return basis


def poc_allocate(
    variance: npt.ArrayLike,
    feature_dim: int,
    target_ratio: float,
    group_sizes: Sequence[int] = POC_GROUP_SIZES,
) -> PocAllocation:
    """The PoC's greedy allocation (``dp_alloc``), reproduced decision for decision."""
    var = np.asarray(variance, dtype=np.float64)
    n = len(var)
    budget = int(feature_dim * 16 / target_ratio)
    cum = np.concatenate([[0.0], np.cumsum(var)])
    best: PocAllocation | None = None
    for gs in group_sizes:
        if gs > n:
            continue
        ng = n // gs
        g_var = cum[gs : ng * gs + 1 : gs] - cum[0 : ng * gs : gs]
        candidates = []
        for g in range(ng):
            for b in POC_BIT_OPTIONS:
                if b == 0:
                    continue
                cost = POC_GROUP_OVERHEAD_BITS + gs * b
                gain = g_var[g] * (1.0 - 1.0 / 4.0**b)
                candidates.append((gain / cost, gain, cost, g, b))
        # Python's sort is stable, as the PoC's: ties keep (group, bits) order.
        candidates.sort(key=lambda c: -c[0])
        used: dict[int, int] = {}
        rem = budget
        for _eff, _gain, cost, g, b in candidates:
            if g in used:
                cur = used[g]
                delta_cost = gs * (b - cur)
                delta_gain = g_var[g] * (1.0 / 4.0**cur - 1.0 / 4.0**b)
                if 0 < delta_cost <= rem and delta_gain > 0:
                    used[g] = b
                    rem -= delta_cost
            elif cost <= rem:
                used[g] = b
                rem -= cost
        err = 0.0
        bits = np.zeros(n, dtype=np.int32)
        for g in range(ng):
            b = used.get(g, 0)
            err += g_var[g] / 4.0**b
            if b > 0:
                bits[g * gs : (g + 1) * gs] = b
        err += cum[n] - cum[ng * gs]
        if best is None or err < best.model_error:
            best = PocAllocation(bits, gs, budget, budget - rem, float(err))
    if best is None:  # fewer components than the smallest group: nothing can be coded
        best = PocAllocation(np.zeros(n, dtype=np.int32), 0, budget, 0, float(cum[n]))
    return best


def pack_bits(codes: npt.ArrayLike, bits: int) -> bytes:
    """Pack non-negative integer codes at ``bits`` bits each, LSB first, into bytes."""
    c = np.asarray(codes, dtype=np.uint32).ravel()
    if bits == 0 or c.size == 0:
        return b""
    planes = ((c[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(planes.ravel(), bitorder="little").tobytes()


def poc_raw_tokens(tokens: int, sink_tokens: int = 4, window_tokens: int = 128) -> int:
    """Tokens :func:`poc` keeps at bf16: the sinks and the window (all tokens if that is more)."""
    return min(tokens, sink_tokens + window_tokens)


def _poc_stream(
    x: npt.NDArray[np.float64], s: PocStream, alloc: PocAllocation
) -> tuple[npt.NDArray[np.float64], int]:
    """Code rows ``x`` [n, p] the PoC's way; returns the restored rows and the bytes used."""
    d = (x - s.mean) @ s.basis  # [n, rank]
    dq = np.zeros_like(d)
    packed: list[bytes] = []
    active = np.nonzero(alloc.bits > 0)[0]
    for j in active:
        b = int(alloc.bits[j])
        levels = (1 << b) - 1
        col = d[:, j].astype(np.float32)  # the PoC codes float32 coefficients
        vmin = float(np.float32(col.min()))
        scale = float(np.float32((float(col.max()) - vmin) / levels))
        if scale == 0.0:
            scale = 1.0
        q = np.clip(np.rint((col - vmin) / scale), 0, levels).astype(np.uint32)
        dq[:, j] = q * np.float32(scale) + np.float32(vmin)
        packed.append(pack_bits(q, b))
    payload = zlib.compress(b"".join(packed), POC_DEFLATE_LEVEL) if packed else b""
    restored = dq @ s.basis.T + s.mean
    return restored, len(payload) + POC_HEADER_BYTES * len(active)


def poc(
    keys: npt.ArrayLike,
    values: npt.ArrayLike,
    basis: PocBasis,
    target_ratio: float,
    positions: npt.ArrayLike | None = None,
    sink_tokens: int = 4,
    window_tokens: int = 128,
) -> Result:
    """The seed PoC's compression (see :class:`PocBasis` for what is and is not reproduced).

    Reproduces the PoC's allocation (greedy, analytic ``var/4^b``, one group size, 0..8 bits,
    budget ``16 * p / target_ratio`` bits per token) and its quantization granularity (one fp32
    min and scale per PCA component over the whole coded span), not its bugs: codes are bit-packed
    and then DEFLATEd (zlib level 6, one stream for keys, one for values). Bytes: the two DEFLATE
    streams + 8 bytes per active component per stream + sinks and window at bf16.
    """
    k, v = _check(keys, values)
    tokens, layers, kv_heads, head_dim = k.shape
    if (layers, kv_heads, head_dim) != (basis.layers, basis.kv_heads, basis.head_dim):
        raise ValueError(
            f"KV shape {(layers, kv_heads, head_dim)} does not match the PoC basis "
            f"{(basis.layers, basis.kv_heads, basis.head_dim)}"
        )
    p = layers * kv_heads * head_dim
    pos = np.arange(tokens) if positions is None else np.asarray(positions)
    sink = min(sink_tokens, tokens)
    stop = max(sink, tokens - window_tokens)
    rk, rv = k.copy(), v.copy()
    nbytes = 2 * (tokens - (stop - sink)) * p * 2  # bf16 sinks and window, keys and values
    if stop > sink:
        kx = remove_rope(k[sink:stop], pos[sink:stop], basis.rope).reshape(stop - sink, p)
        vx = v[sink:stop].reshape(stop - sink, p).astype(np.float64)
        kr, kb = _poc_stream(kx, basis.keys, basis.allocation("keys", target_ratio))
        vr, vb = _poc_stream(vx, basis.values, basis.allocation("values", target_ratio))
        shape = (stop - sink, layers, kv_heads, head_dim)
        rk[sink:stop] = apply_rope(kr.reshape(shape), pos[sink:stop], basis.rope)
        rv[sink:stop] = vr.reshape(shape)
        nbytes += kb + vb
    return rk, rv, int(nbytes)
