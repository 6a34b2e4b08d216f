"""The GPU data plane's client side that runs without a GPU: layout detection from vLLM's
tensor shapes and strides, and the refusals (CPU tensors, unknown layouts)."""

import pytest
import torch

from kvtc_connector.cuda_ipc import (
    LAYOUTS,
    BlockSpan,
    LoadSpan,
    _load_fields,
    _span_fields,
    describe,
    detect_layout,
)
from kvtc_connector.errors import IpcError


def test_detects_vllm_layouts_from_shape_and_strides() -> None:
    assert detect_layout(torch.empty(2, 10, 16, 4, 8), 16, 4, 8) == "flash_attn"
    assert detect_layout(torch.empty(10, 2, 16, 4, 8), 16, 4, 8) == "flashinfer"
    # FlashInfer's HND cache: logical NHD shape over HND memory; the strides carry it.
    hnd_memory = torch.empty(10, 2, 4, 16, 8).transpose(2, 3)
    assert detect_layout(hnd_memory, 16, 4, 8) == "flashinfer"
    assert detect_layout(torch.empty(10, 2, 4, 16, 8), 16, 4, 8) == "hnd"
    with pytest.raises(IpcError):
        detect_layout(torch.empty(10, 16, 4, 8), 16, 4, 8)
    with pytest.raises(IpcError):
        detect_layout(torch.empty(2, 10, 32, 4, 8), 16, 4, 8)  # another block size


def test_strides_map_each_layout_to_kv_block_slot_head_dim() -> None:
    # The element [kv=1, block=3, slot=5, head=2, dim=7] must be the same memory in each layout.
    for name, dims in LAYOUTS.items():
        shape = [0] * 5
        for logical, size in zip(dims, (2, 10, 16, 4, 8), strict=True):
            shape[logical] = size
        t = torch.arange(2 * 10 * 16 * 4 * 8).view(shape)
        idx = [0] * 5
        for logical, i in zip(dims, (1, 3, 5, 2, 7), strict=True):
            idx[logical] = i
        strides = [t.stride(d) for d in dims]
        flat = sum(i * s for i, s in zip((1, 3, 5, 2, 7), strides, strict=True))
        assert t[tuple(idx)].item() == flat, name


def test_describe_refuses_cpu_tensors_and_unknown_layouts() -> None:
    with pytest.raises(IpcError, match="CUDA tensors"):
        describe([torch.empty(2, 10, 16, 4, 8)], "flash_attn")
    with pytest.raises(IpcError, match="unknown layout"):
        describe([torch.empty(2, 10, 16, 4, 8)], "nhd-ish")


def test_block_span_fields_are_the_save_blocks_items() -> None:
    # A save_blocks item is the single-span request's fields (docs/protocol.md): optional ones
    # only when set, block ids as plain ints (msgpack cannot pack tensor scalars).
    plain = _span_fields(BlockSpan("ab" * 16, [3, 1], tokens=20, token_start=256))
    assert plain == {
        "key": "ab" * 16,
        "block_ids": [3, 1],
        "tokens": 20,
        "token_start": 256,
        "first_slot": 0,
    }
    ids = torch.tensor([7, 2])
    full = _span_fields(
        BlockSpan("cd" * 16, list(ids), 32, 0, first_slot=5, ratio=8.0, window_tokens=0)
    )
    assert full["block_ids"] == [7, 2] and all(type(b) is int for b in full["block_ids"])
    assert full["first_slot"] == 5 and full["ratio"] == 8.0 and full["window_tokens"] == 0


def test_load_span_fields_are_the_load_blocks_items() -> None:
    # A load_blocks item is the single-record request's fields: skip_tokens and record_tokens
    # only when set, block ids as plain ints.
    plain = _load_fields(LoadSpan("ab" * 16, [3, 1], tokens=20))
    assert plain == {"key": "ab" * 16, "block_ids": [3, 1], "tokens": 20, "first_slot": 0}
    full = _load_fields(
        LoadSpan(
            "cd" * 16, list(torch.tensor([7, 2])), 9, first_slot=3, skip_tokens=7, record_tokens=16
        )
    )
    assert full["block_ids"] == [7, 2] and all(type(b) is int for b in full["block_ids"])
    assert full["first_slot"] == 3 and full["skip_tokens"] == 7 and full["record_tokens"] == 16
