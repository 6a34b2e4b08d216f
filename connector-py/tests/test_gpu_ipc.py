"""End to end on a GPU: a paged KV cache filled by a real model (stories260K, transformers, bf16)
is registered with a CUDA sidecar by IPC, saved in place, overwritten, restored in place; the
restored cache gives the same next-token distribution within the calibrated error.

Skipped without CUDA (CI). On the GPU machine ``scripts/gpu-run.sh e2e`` runs it with the
sidecar built there, the stories260K calibration carried in ``.gpu/`` and pyzmq from the bundle.
Also runnable as ``python tests/test_gpu_ipc.py`` (no pytest needed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from torch import Tensor

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip(
        "no CUDA device: the GPU data plane test runs on the GPU machine", allow_module_level=True
    )

from kvtc_connector.client import Compat, SidecarClient  # noqa: E402
from kvtc_connector.cuda_ipc import LAYOUTS, BlockSpan, IpcKvCache, LoadSpan  # noqa: E402
from kvtc_connector.errors import DeviceUnknownError, IpcError, KvtcSidecarError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = Path(
    os.environ.get("KVTC_STORIES", ROOT.parent / "shared" / "models" / "stories260K" / "hf")
)
CALIBRATION = Path(
    os.environ.get("KVTC_GPU_CALIBRATION", ROOT / ".gpu" / "stories260K.kvtc.safetensors")
)
TEXT = ROOT / "connector-py" / "kvtc_connector" / "data" / "stories-eval.txt"
BLOCK = 16
REPORT: dict[str, object] = {}


def _calibration_meta() -> dict[str, Any]:
    import struct

    raw = CALIBRATION.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    meta: dict[str, Any] = json.loads(json.loads(raw[8 : 8 + n])["__metadata__"]["kvtc"])
    return meta


@pytest.fixture(scope="module")
def sidecar() -> Iterator[str]:
    if not CALIBRATION.exists():
        pytest.skip(f"no calibration at {CALIBRATION}")
    sock = Path(tempfile.mkdtemp()) / "kvtc.sock"
    cmd = [
        "node",
        str(ROOT / "dist" / "src" / "main.js"),
        "serve",
        "--endpoint",
        f"ipc://{sock}",
        "--calibration",
        str(CALIBRATION),
        "--backend",
        "cuda",
        "--store",
        "mem://?max=1GiB",
        "--log-level",
        "warn",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    assert '"ready":true' in line, f"sidecar did not start: {line!r}"
    yield f"ipc://{sock}"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def model_and_prompt() -> tuple[Any, Tensor]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL)
    # PreTrainedModel.cuda is wrapped by functools.wraps, which typeshed does not bind as a method.
    model = AutoModelForCausalLM.from_pretrained(MODEL, torch_dtype=torch.bfloat16).cuda().eval()  # type: ignore[call-arg]
    text = " ".join(TEXT.read_text().split("\n")[:6])
    ids = tok(text, return_tensors="pt").input_ids[:, :203].cuda()  # odd on purpose: 12.7 blocks
    return model, ids


def _kv_of(model: Any, ids: Tensor) -> list[tuple[Tensor, Tensor]]:
    with torch.no_grad():
        out = model(ids[:, :-1], use_cache=True)
    cache = out.past_key_values
    return [(layer.keys[0], layer.values[0]) for layer in cache.layers]  # [H, T, D] each


def _next_logits(model: Any, ids: Tensor, kv: list[tuple[Tensor, Tensor]]) -> Tensor:
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(kv):
        cache.update(k[None].clone(), v[None].clone(), i)
    with torch.no_grad():
        logits: Tensor = (
            model(ids[:, -1:], past_key_values=cache, use_cache=True).logits[0, -1].float()
        )
        return logits


def _paged(layout: str, layers: int, heads: int, dim: int, num_blocks: int) -> list[Tensor]:
    """Per-layer views of ONE allocation (as vLLM allocates), in the named layout."""
    shape = {
        "flash_attn": (2, num_blocks, BLOCK, heads, dim),
        "flashinfer": (num_blocks, 2, BLOCK, heads, dim),
        "hnd": (num_blocks, 2, heads, BLOCK, dim),
    }[layout]
    per = 1
    for s in shape:
        per *= s
    buf = torch.randn(layers * per, dtype=torch.bfloat16, device="cuda")
    return [buf[i * per : (i + 1) * per].view(shape) for i in range(layers)]


def _slot_view(t: Tensor, layout: str, kv: int, block: int) -> Tensor:
    """[slots, heads, dim] of one block of one layer tensor."""
    if layout == "flash_attn":
        return t[kv, block]
    if layout == "flashinfer":
        return t[block, kv]
    return t[block, kv].transpose(0, 1)


def _write(
    tensors: list[Tensor], layout: str, kv: list[tuple[Tensor, Tensor]], block_ids: list[int]
) -> None:
    T = kv[0][0].shape[1]
    for li, (k, v) in enumerate(kv):
        for t0 in range(0, T, BLOCK):
            n = min(BLOCK, T - t0)
            b = block_ids[t0 // BLOCK]
            _slot_view(tensors[li], layout, 0, b)[:n] = k[:, t0 : t0 + n].transpose(0, 1)
            _slot_view(tensors[li], layout, 1, b)[:n] = v[:, t0 : t0 + n].transpose(0, 1)


def _read(
    tensors: list[Tensor], layout: str, block_ids: list[int], T: int
) -> list[tuple[Tensor, Tensor]]:
    out = []
    for t in tensors:
        ks, vs = [], []
        for t0 in range(0, T, BLOCK):
            n = min(BLOCK, T - t0)
            b = block_ids[t0 // BLOCK]
            ks.append(_slot_view(t, layout, 0, b)[:n].transpose(0, 1))
            vs.append(_slot_view(t, layout, 1, b)[:n].transpose(0, 1))
        out.append((torch.cat(ks, 1), torch.cat(vs, 1)))
    return out


def _client(endpoint: str, meta: dict[str, Any], layout: str) -> SidecarClient:
    m = meta["model"]
    c = SidecarClient(endpoint, timeout_ms=60000)
    c.hello(
        Compat(
            model_fingerprint=m["fingerprint"],
            dtype="bfloat16",
            layout=layout,
            block_size=BLOCK,
            layers=m["layers"],
            kv_heads=m["kv_heads"],
            head_dim=m["head_dim"],
        )
    )
    return c


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_save_overwrite_load_restores_next_token(
    sidecar: str, model_and_prompt: tuple[Any, Tensor], layout: str
) -> None:
    model, ids = model_and_prompt
    meta = _calibration_meta()
    m = meta["model"]
    kv = _kv_of(model, ids)
    T = kv[0][0].shape[1]
    num_blocks = 40
    gen = torch.Generator().manual_seed(7)
    block_ids = torch.randperm(num_blocks, generator=gen)[: (T + BLOCK - 1) // BLOCK].tolist()
    tensors = _paged(layout, m["layers"], m["kv_heads"], m["head_dim"], num_blocks)
    _write(tensors, layout, kv, block_ids)
    untouched = [t.clone() for t in tensors]
    client = _client(sidecar, meta, layout)
    cache = IpcKvCache(client, tensors, layout)
    ref_logits = _next_logits(model, ids, kv)
    results: dict[str, Any] = {}
    try:
        # 1. All raw (window = every token): gather and scatter are bit-exact.
        saved = cache.save_blocks("a1" * 16, block_ids, T, 0, window_tokens=T)
        for t in tensors:
            t.zero_()
        cache.load_blocks("a1" * 16, block_ids, T)
        back = _read(tensors, layout, block_ids, T)
        for (k, v), (k0, v0) in zip(back, kv, strict=True):
            assert torch.equal(k, k0) and torch.equal(v, v0), (
                "raw round trip through the blocks is not exact"
            )
        # Blocks outside the span were zeroed above and must still be zero.
        used = set(block_ids)
        for t in tensors:
            for b in range(num_blocks):
                if b not in used:
                    assert (
                        not _slot_view(t, layout, 0, b).any()
                        and not _slot_view(t, layout, 1, b).any()
                    )
        results["raw_bytes"] = saved.raw_bytes

        # A sub-range of a record (as a partial prefix hit restores it): tokens from 2 blocks in,
        # the first two blocks untouched.
        for t in tensors:
            t.zero_()
        skip = 2 * BLOCK
        cache.load_blocks("a1" * 16, block_ids[2:], T - skip, skip_tokens=skip, record_tokens=T)
        back = _read(tensors, layout, block_ids, T)
        for (k, v), (k0, v0) in zip(back, kv, strict=True):
            assert torch.equal(k[:, skip:], k0[:, skip:]) and torch.equal(v[:, skip:], v0[:, skip:])
            assert not k[:, :skip].any() and not v[:, :skip].any(), "skipped tokens were written"

        # 2. kvtc at each ratio the calibration has: within the calibrated error, same next token.
        for plan in meta["plans"]:
            ratio = plan["ratio"]
            for i, t in enumerate(tensors):
                t.copy_(untouched[i])
            key = f"{int(ratio):02x}" * 16
            s = cache.save_blocks(key, block_ids, T, 0, ratio=ratio, window_tokens=0)
            for t in tensors:
                t.fill_(7.0)  # overwrite
            cache.load_blocks(key, block_ids, T)
            got = _read(tensors, layout, block_ids, T)
            # Relative squared error of the coded tokens (the first 4 are raw sinks).
            num_k = sum(
                ((a.float() - b.float())[:, 4:] ** 2).sum().item()
                for (a, _), (b, _) in zip(got, kv, strict=True)
            )
            den_k = sum((b.float()[:, 4:] ** 2).sum().item() for b, _ in kv)
            num_v = sum(
                ((a.float() - b.float())[:, 4:] ** 2).sum().item()
                for (_, a), (_, b) in zip(got, kv, strict=True)
            )
            den_v = sum((b.float()[:, 4:] ** 2).sum().item() for _, b in kv)
            logits = _next_logits(model, ids, got)
            p_ref = torch.log_softmax(ref_logits, -1)
            p_got = torch.log_softmax(logits, -1)
            kl = torch.sum(p_ref.exp() * (p_ref - p_got)).item()
            results[f"{ratio}x"] = {
                "ratio": s.raw_bytes / s.stored_bytes,
                "key_rel_mse": num_k / den_k,
                "value_rel_mse": num_v / den_v,
                "kl": kl,
                "top1_same": int(logits.argmax()) == int(ref_logits.argmax()),
            }
            assert s.stored_bytes < s.raw_bytes
            # Relative MSE against the DP's expected error (bf16 rounding and the sink tokens
            # aside): a factor of 3 margin, measured on one real sequence.
            k_exp = plan["keys"]["expected_error"]
            v_exp = plan["values"]["expected_error"]
            assert num_k / den_k < 3 * k_exp + 1e-3, (
                f"{ratio}x keys {num_k / den_k} vs expected {k_exp}"
            )
            assert num_v / den_v < 3 * v_exp + 1e-3, (
                f"{ratio}x values {num_v / den_v} vs expected {v_exp}"
            )
        lowest = min(meta["plans"], key=lambda p: p["ratio"])["ratio"]
        assert results[f"{lowest}x"]["top1_same"], results
    finally:
        cache.close()
        client.close()
    REPORT[layout] = results
    print(json.dumps({layout: results}))


def test_save_many_matches_one_by_one(sidecar: str, model_and_prompt: tuple[Any, Tensor]) -> None:
    """Chunks of 32 tokens saved in one ``save_blocks`` request (``items``: the sidecar fuses them
    on the GPU into one projection and one coder launch) restore as well as the same chunks saved
    one request each, into records of the same size."""
    model, ids = model_and_prompt
    meta = _calibration_meta()
    m = meta["model"]
    kv = _kv_of(model, ids)
    chunk = 2 * BLOCK
    n = kv[0][0].shape[1] // chunk
    assert n >= 3, "the prompt should give a few chunks"
    T = n * chunk
    kv = [(k[:, :T], v[:, :T]) for k, v in kv]
    num_blocks = 40
    block_ids = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(3))[: T // BLOCK]
    block_ids = block_ids.tolist()
    tensors = _paged("flash_attn", m["layers"], m["kv_heads"], m["head_dim"], num_blocks)
    _write(tensors, "flash_attn", kv, block_ids)
    untouched = [t.clone() for t in tensors]
    client = _client(sidecar, meta, "flash_attn")
    cache = IpcKvCache(client, tensors, "flash_attn")
    ratio = min(meta["plans"], key=lambda p: p["ratio"])["ratio"]

    def spans(tag: int) -> list[BlockSpan]:
        return [
            BlockSpan(
                key=f"{tag:02x}{i:02x}" * 8,
                block_ids=block_ids[2 * i : 2 * i + 2],
                tokens=chunk,
                token_start=i * chunk,
                ratio=ratio,
                window_tokens=0,
            )
            for i in range(n)
        ]

    def restored_error(saved: list[BlockSpan], grouped: bool = False) -> float:
        for t in tensors:
            t.fill_(7.0)
        if grouped:
            starts = cache.load_blocks_many([LoadSpan(s.key, s.block_ids, s.tokens) for s in saved])
            assert starts == [s.token_start for s in saved]
        else:
            for s in saved:
                cache.load_blocks(s.key, s.block_ids, s.tokens)
        got = _read(tensors, "flash_attn", block_ids, T)
        num = sum(
            ((a.float() - b.float())[:, 4:] ** 2).sum().item()
            + ((c.float() - d.float())[:, 4:] ** 2).sum().item()
            for (a, c), (b, d) in zip(got, kv, strict=True)
        )
        den = sum(
            (b.float()[:, 4:] ** 2).sum().item() + (d.float()[:, 4:] ** 2).sum().item()
            for b, d in kv
        )
        return num / den

    try:
        many = spans(0xA0)
        fused = cache.save_blocks_many(many)
        assert [r.key for r in fused] == [s.key for s in many]
        single = spans(0xB0)
        alone = [
            cache.save_blocks(
                s.key, s.block_ids, s.tokens, s.token_start, ratio=ratio, window_tokens=0
            )
            for s in single
        ]
        for i, t in enumerate(tensors):
            t.copy_(untouched[i])
        fused_bytes, alone_bytes = (
            sum(r.stored_bytes for r in fused),
            sum(r.stored_bytes for r in alone),
        )
        assert abs(fused_bytes - alone_bytes) <= 0.01 * alone_bytes, (fused_bytes, alone_bytes)
        err_fused, err_alone = restored_error(many), restored_error(single)
        # The same kernels on the same rows; only the GEMM's shape differs (its summation order
        # may), so the errors agree to well within their size.
        assert abs(err_fused - err_alone) <= 0.05 * err_alone + 1e-6, (err_fused, err_alone)
        # The same records loaded in one ``load_blocks`` request (decoded on the GPU as a group).
        err_many = restored_error(many, grouped=True)
        assert abs(err_many - err_fused) <= 0.05 * err_fused + 1e-6, (err_many, err_fused)
        # One missing record fails the request: the client counts every span as not loaded.
        missing = LoadSpan("ff" * 16, many[0].block_ids, chunk)
        with pytest.raises(KvtcSidecarError) as refused:
            cache.load_blocks_many([LoadSpan(many[1].key, many[1].block_ids, chunk), missing])
        assert refused.value.code == "ERR_KVTC_NOT_FOUND"
        REPORT["save_many"] = {
            "chunks": n,
            "fused_bytes": fused_bytes,
            "alone_bytes": alone_bytes,
            "rel_mse_fused": err_fused,
            "rel_mse_alone": err_alone,
            "rel_mse_loaded_many": err_many,
        }
        print(json.dumps({"save_many": REPORT["save_many"]}))
    finally:
        cache.close()
        client.close()


def test_refusals(sidecar: str, model_and_prompt: tuple[Any, Tensor]) -> None:
    meta = _calibration_meta()
    m = meta["model"]
    client = _client(sidecar, meta, "flash_attn")
    tensors = _paged("flash_attn", m["layers"], m["kv_heads"], m["head_dim"], 8)
    try:
        cache = IpcKvCache(client, tensors, "flash_attn")
        fields = cache.registration.fields()
        fields["device_uuid"] = "f" * 32
        with pytest.raises(DeviceUnknownError):
            client.request("register_kv", fields)
        fields = cache.registration.fields()
        fields["layout"] = dict(fields["layout"], num_blocks=10**6)  # past the allocation
        with pytest.raises(IpcError):
            client.request("register_kv", fields)
        cache.close()
        assert client.stats().in_flight == 0
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-q", "-s"]))
