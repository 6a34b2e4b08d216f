"""Baselines: shapes, byte accounting on small examples, error sanity, raw tokens exact."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kvtc_connector import baselines as B
from kvtc_connector.rope import apply_rope

pytest.importorskip("torch")

SHAPE = (2, 2, 32)  # layers, kv_heads, head_dim
P = 2 * 2 * 32
ROPE: dict[str, Any] = {
    "theta": 10000.0,
    "rotary_dim": 32,
    "layout": "neox",
    "scaling": {"type": "default"},
}


def _kv(tokens: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Low-rank-ish KV with RoPE applied to the keys, like a real cache."""
    fixed = np.random.default_rng(1234)  # the same subspace for every seed
    kmix, vmix = fixed.normal(size=(8, P)), fixed.normal(size=(8, P))
    rng = np.random.default_rng(seed)
    k0 = rng.normal(size=(tokens, 8)) @ kmix + 0.05 * rng.normal(size=(tokens, P))
    v = rng.normal(size=(tokens, 8)) @ vmix + 0.05 * rng.normal(size=(tokens, P))
    k = apply_rope(k0.reshape(tokens, *SHAPE), np.arange(tokens), ROPE)
    return k.astype(np.float32), v.reshape(tokens, *SHAPE).astype(np.float32)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def basis() -> B.PocBasis:
    k, v = _kv(600, seed=1)
    return B.fit_poc_basis(k.reshape(600, P), v.reshape(600, P), SHAPE, ROPE)


def test_shapes_and_dtypes(basis: B.PocBasis) -> None:
    k, v = _kv(200)
    for rk, rv, nbytes in (
        B.fp8(k, v),
        B.kivi2(k, v),
        B.poc(k, v, basis, 8, window_tokens=32),
    ):
        assert rk.shape == k.shape and rv.shape == v.shape
        assert rk.dtype == np.float32 and rv.dtype == np.float32
        assert isinstance(nbytes, int) and nbytes > 0


def test_shape_mismatch_is_rejected() -> None:
    k, v = _kv(10)
    with pytest.raises(ValueError):
        B.fp8(k, v[:5])


def test_fp8_bytes_and_error() -> None:
    k, v = _kv(100)
    rk, rv, nbytes = B.fp8(k, v)
    assert nbytes == 2 * 100 * P  # one byte per element, keys and values
    assert B.fp8_raw_tokens(100) == 0
    assert _rel(rk, k) < 0.04 and _rel(rv, v) < 0.04
    exact = np.array([1.0, 0.5, -2.0, 448.0], dtype=np.float32).reshape(1, 1, 1, 4)
    out, _, _ = B.fp8(exact, exact)
    np.testing.assert_array_equal(out, exact)
    big = np.full((1, 1, 1, 2), 1e4, dtype=np.float32)
    out, _, _ = B.fp8(big, big)
    assert np.all(out == 448.0)  # saturates instead of overflowing to NaN


def test_kivi2_bytes_formula() -> None:
    tokens = 200
    k, v = _kv(tokens)
    _, _, nbytes = B.kivi2(k, v)
    raw = B.kivi2_raw_tokens(tokens)
    assert raw == 128 + (200 - 128) % 32 == 136
    coded = tokens - raw  # 64 tokens = 2 key groups
    payload = 2 * coded * P * 2 // 8  # 2-bit codes, keys and values
    key_scales = (coded // 32) * P * 4  # fp16 min + scale per channel per 32 tokens
    value_scales = coded * 2 * math.ceil(64 / 32) * 4  # per token, per layer, per 32 channels
    residual = 2 * raw * P * 2
    assert nbytes == payload + key_scales + value_scales + residual
    # 3 bits per element on the quantized span: 16/3 times smaller than bf16
    assert (coded * P * 4) / (payload + key_scales + value_scales) == pytest.approx(16 / 3)


def test_kivi2_window_exact_and_error() -> None:
    tokens = 300
    k, v = _kv(tokens)
    rk, rv, _ = B.kivi2(k, v)
    raw = B.kivi2_raw_tokens(tokens)  # 128 + 12
    np.testing.assert_array_equal(rk[-raw:], k[-raw:])
    np.testing.assert_array_equal(rv[-raw:], v[-raw:])
    assert not np.array_equal(rk[: tokens - raw], k[: tokens - raw])
    assert 0 < _rel(rk[:160], k[:160]) < 0.5 and 0 < _rel(rv[:160], v[:160]) < 0.6


def test_kivi2_short_sequence_all_residual() -> None:
    k, v = _kv(100)
    rk, rv, nbytes = B.kivi2(k, v)
    np.testing.assert_array_equal(rk, k)
    assert nbytes == 2 * 100 * P * 2


def test_kivi2_quantizes_each_group_to_four_levels() -> None:
    k, v = _kv(160)
    rk, rv, _ = B.kivi2(k, v)
    # keys: per channel and 32-token group at most 4 distinct values
    kq = rk[:32].reshape(32, P)
    assert max(len(np.unique(kq[:, c])) for c in range(P)) <= 4
    # values: per token and 32-channel group at most 4 distinct values
    vq = rv[:32].reshape(32, 2, 64)
    assert max(len(np.unique(vq[t, layer, :32])) for t in range(32) for layer in range(2)) <= 4


def test_pack_bits() -> None:
    assert B.pack_bits([1, 2, 3], 2) == bytes([1 | 2 << 2 | 3 << 4])
    assert B.pack_bits([5, 7], 3) == bytes([5 | (7 << 3)])
    assert len(B.pack_bits(np.arange(100) % 32, 5)) == math.ceil(100 * 5 / 8)
    assert B.pack_bits([1, 2], 0) == b""


def test_poc_allocation_respects_budget(basis: B.PocBasis) -> None:
    for ratio in (2, 4, 8, 16, 32):
        a = basis.allocation("keys", ratio)
        assert a.budget_bits == int(P * 16 / ratio)
        assert a.bits.min() >= 0 and a.bits.max() <= 8
        groups = int(np.count_nonzero(a.bits)) // a.group_size if a.group_size else 0
        assert a.used_bits == groups * 32 + int(a.bits.sum())
        assert a.used_bits <= a.budget_bits


def test_poc_allocate_hand_example() -> None:
    # 32 components in two groups of 16; budget 16 * 20 / 1 = 320 bits per token.
    var = np.array([100.0] * 16 + [1.0] * 16)
    a = B.poc_allocate(var, feature_dim=20, target_ratio=1.0, group_sizes=(16,))
    # Greedy by gain/cost: group 0 (variance 1600) takes 1 bit (cost 32 + 16) and is upgraded bit
    # by bit (16 bits each) to 8 bits: 160 bits. Group 1 (variance 16) then gets the other 160.
    assert a.group_size == 16
    assert a.bits.tolist() == [8] * 32
    assert a.used_bits == 320
    a = B.poc_allocate(var, feature_dim=20, target_ratio=2.0, group_sizes=(16,))
    # 160 bits: group 0 at 8 bits exhausts the budget; group 1 gets nothing.
    assert a.bits.tolist() == [8] * 16 + [0] * 16
    assert a.model_error == pytest.approx(1600 / 4**8 + 16)


def test_poc_bytes_and_raw_tokens(basis: B.PocBasis) -> None:
    tokens, window, sink = 300, 32, 4
    k, v = _kv(tokens, seed=2)
    rk, rv, nbytes = B.poc(k, v, basis, 8, sink_tokens=sink, window_tokens=window)
    raw = B.poc_raw_tokens(tokens, sink, window)
    assert raw == 36
    np.testing.assert_array_equal(rk[:sink], k[:sink])
    np.testing.assert_array_equal(rk[-window:], k[-window:])
    np.testing.assert_array_equal(rv[-window:], v[-window:])
    coded = tokens - raw
    active = sum(int(np.count_nonzero(basis.allocation(s, 8).bits)) for s in ("keys", "values"))
    packed = sum(
        math.ceil(int(basis.allocation(s, 8).bits.sum()) * coded / 8) for s in ("keys", "values")
    )
    fixed = 2 * raw * P * 2 + 8 * active  # bf16 raw tokens + fp32 min/scale per component
    assert fixed < nbytes <= fixed + packed + 2 * 64  # DEFLATE never grows much beyond packed
    # the coded middle is an approximation of the original
    assert 0 < _rel(rk[sink:-window], k[sink:-window]) < 0.5
    assert 0 < _rel(rv[sink:-window], v[sink:-window]) < 0.5


def test_poc_short_sequence_all_raw(basis: B.PocBasis) -> None:
    k, v = _kv(30)
    rk, rv, nbytes = B.poc(k, v, basis, 8, window_tokens=32)
    np.testing.assert_array_equal(rk, k)
    assert nbytes == 2 * 30 * P * 2


def test_poc_basis_cache(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    kv = tmp_path / "kv"
    kv.mkdir()
    k, v = _kv(100, seed=3)
    meta = {"layers": 2, "kv_heads": 2, "head_dim": 32, "rope": ROPE}
    save_file(
        {"keys": k, "values": v, "positions": np.arange(100, dtype=np.int64)},
        str(kv / "seq-00000.safetensors"),
        metadata={"kvtc_capture": json.dumps(meta)},
    )
    cache = tmp_path / "poc.npz"
    fitted = B.fit_poc_basis_from_captures(kv, cache=cache)
    assert fitted.samples == 96  # sinks excluded
    assert cache.is_file()
    loaded = B.fit_poc_basis_from_captures(kv, cache=cache)
    np.testing.assert_allclose(loaded.keys.basis, fitted.keys.basis, atol=1e-6)
    np.testing.assert_array_equal(loaded.values.variance, fitted.values.variance)
    assert B.load_poc_basis(cache, tag="other") is None  # a stale cache is not used
    a, b = B.poc(k, v, fitted, 8, window_tokens=16), B.poc(k, v, loaded, 8, window_tokens=16)
    assert a[2] == b[2]
