"""The GPU data plane, client side: share a paged KV cache with the sidecar by CUDA IPC.

Each layer's KV tensor is described once (``register_kv``): the 64-byte IPC handle of the
allocation holding it, its byte offset there, and the element strides of the logical index
``[kv, block, slot, head, dim]``, so any layout works (vLLM's FlashAttention
``(2, blocks, block_size, heads, dim)``, FlashInfer ``(blocks, 2, block_size, heads, dim)``, HND).
The sidecar opens the handles once and then reads and writes blocks in place.

Ordering: :meth:`IpcKvCache.save_blocks` records the client's interprocess event on the current
stream before asking; the sidecar's stream waits for it on the device. After
:meth:`IpcKvCache.load_blocks` the current stream waits for the sidecar's event, so attention
reads the blocks only once they are written. Neither side synchronises the host.

Handles come from the CUDA driver (``cuIpcGetMemHandle`` on the allocation's base, found with
``cuMemGetAddressRange``). Memory from ``cuMemCreate`` (PyTorch's ``expandable_segments``) is not
legacy-IPC capable: :class:`~kvtc_connector.errors.IpcError` says so before anything is sent.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import protocol as p
from .client import SaveResult, SidecarClient
from .errors import IpcError, KvUnregisteredError

if TYPE_CHECKING:
    import torch

# Tensor dimension holding each logical index (kv, block, slot, head, dim), per layout name.
LAYOUTS: Mapping[str, tuple[int, int, int, int, int]] = {
    "flash_attn": (0, 1, 2, 3, 4),  # (2, num_blocks, block_size, heads, dim)
    "flashinfer": (1, 0, 2, 3, 4),  # (num_blocks, 2, block_size, heads, dim)
    "hnd": (1, 0, 3, 2, 4),  # (num_blocks, 2, heads, block_size, dim)
}

_CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE = 10


class _Driver:
    """The few CUDA driver calls we need, through ctypes (no extra dependency)."""

    def __init__(self) -> None:
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError as e:  # pragma: no cover - only without a driver
            raise IpcError(
                p.ERR_KVTC_IPC, f"the CUDA driver (libcuda.so.1) cannot be loaded: {e}"
            ) from e

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            name = ctypes.c_char_p()
            self.lib.cuGetErrorString(rc, ctypes.byref(name))
            raise IpcError(p.ERR_KVTC_IPC, f"{what} failed: {(name.value or b'?').decode()} ({rc})")

    def allocation(self, ptr: int) -> tuple[int, int]:
        """(base, size) of the allocation holding device address ``ptr``."""
        capable = ctypes.c_int(0)
        self._check(
            self.lib.cuPointerGetAttribute(
                ctypes.byref(capable),
                _CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE,
                ctypes.c_uint64(ptr),
            ),
            "cuPointerGetAttribute",
        )
        if not capable.value:
            raise IpcError(
                p.ERR_KVTC_IPC,
                "the KV cache is a cuMem/VMM allocation, which legacy CUDA IPC cannot share "
                "(PyTorch's expandable_segments); start vLLM with "
                "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False",
            )
        base, size = ctypes.c_uint64(0), ctypes.c_size_t(0)
        self._check(
            self.lib.cuMemGetAddressRange_v2(
                ctypes.byref(base), ctypes.byref(size), ctypes.c_uint64(ptr)
            ),
            "cuMemGetAddressRange",
        )
        return base.value, size.value

    def ipc_handle(self, base: int) -> bytes:
        handle = (ctypes.c_char * 64)()
        self._check(self.lib.cuIpcGetMemHandle(handle, ctypes.c_uint64(base)), "cuIpcGetMemHandle")
        return bytes(handle)


@dataclass(frozen=True)
class Registration:
    """What ``register_kv`` sends: one entry per layer, allocations deduplicated."""

    device_uuid: str
    num_blocks: int
    block_size: int
    strides: tuple[int, int, int, int, int]
    allocations: list[bytes]
    layer_allocation: list[int]
    layer_offset: list[int]

    def fields(self) -> dict[str, Any]:
        return {
            "device_uuid": self.device_uuid,
            "layout": {
                "num_blocks": self.num_blocks,
                "block_size": self.block_size,
                "strides": list(self.strides),
            },
            "allocations": self.allocations,
            "layer_allocation": self.layer_allocation,
            "layer_offset": self.layer_offset,
            "pid": os.getpid(),
        }


def detect_layout(kv: torch.Tensor, block_size: int, kv_heads: int, head_dim: int) -> str:
    """The LAYOUTS name of a vLLM GPU KV tensor, from its shape and strides.

    :raises IpcError: a shape none of the layouts explains.
    """
    shape, stride = tuple(kv.shape), kv.stride()
    if kv.dim() == 5 and shape[0] == 2 and shape[2:] == (block_size, kv_heads, head_dim):
        return "flash_attn"
    if kv.dim() == 5 and shape[1] == 2 and shape[2:] == (block_size, kv_heads, head_dim):
        # FlashInfer's logical NHD shape; a physically HND cache only permutes the strides,
        # which the registration carries as they are.
        return "flashinfer"
    if kv.dim() == 5 and shape[1] == 2 and shape[2:] == (kv_heads, block_size, head_dim):
        return "hnd"
    raise IpcError(p.ERR_KVTC_IPC, f"unrecognised KV cache layout: shape {shape}, strides {stride}")


def describe(layers: Sequence[torch.Tensor], layout: str) -> Registration:
    """The registration of per-layer KV tensors (in model layer order) in ``layout``.

    :raises IpcError: tensors on the CPU, on different devices, of different shapes or
        strides, or in memory legacy CUDA IPC cannot share.
    """
    import torch

    if layout not in LAYOUTS:
        raise IpcError(p.ERR_KVTC_IPC, f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}")
    if not layers:
        raise IpcError(p.ERR_KVTC_IPC, "no KV tensors to register")
    first = layers[0]
    if first.device.type != "cuda":
        raise IpcError(p.ERR_KVTC_IPC, f"CUDA IPC needs CUDA tensors, received {first.device}")
    dims = LAYOUTS[layout]
    if first.dim() != 5 or first.shape[dims[0]] != 2:
        raise IpcError(
            p.ERR_KVTC_IPC,
            f"layout {layout} expects 5 dims with 2 at dim {dims[0]}, shape {tuple(first.shape)}",
        )
    driver = _Driver()
    allocations: list[bytes] = []
    by_base: dict[int, int] = {}
    layer_allocation, layer_offset = [], []
    for t in layers:
        if (
            t.device != first.device
            or t.shape != first.shape
            or t.stride() != first.stride()
            or t.dtype != first.dtype
        ):
            raise IpcError(
                p.ERR_KVTC_IPC,
                "every layer's KV tensor must share device, shape, strides and dtype",
            )
        base, _size = driver.allocation(t.data_ptr())
        if base not in by_base:
            by_base[base] = len(allocations)
            allocations.append(driver.ipc_handle(base))
        layer_allocation.append(by_base[base])
        layer_offset.append(t.data_ptr() - base)
    uuid = str(torch.cuda.get_device_properties(first.device).uuid).replace("-", "").lower()
    strides = tuple(int(first.stride(d)) for d in dims)
    return Registration(
        device_uuid=uuid,
        num_blocks=int(first.shape[dims[1]]),
        block_size=int(first.shape[dims[2]]),
        strides=strides,  # type: ignore[arg-type]
        allocations=allocations,
        layer_allocation=layer_allocation,
        layer_offset=layer_offset,
    )


@dataclass(frozen=True)
class BlockSpan:
    """One record's tokens in the cache, for :meth:`IpcKvCache.save_blocks_many`.

    Token ``t`` is slot ``(first_slot + t) % block_size`` of block
    ``block_ids[(first_slot + t) // block_size]``.
    """

    key: str
    block_ids: Sequence[int]
    tokens: int
    token_start: int
    first_slot: int = 0
    ratio: float | None = None
    window_tokens: int | None = None


def _blocks_fields(
    key: str, block_ids: Sequence[int], tokens: int, first_slot: int
) -> dict[str, Any]:
    """The fields every block op shares; block ids as plain ints (msgpack cannot pack tensor
    scalars)."""
    return {
        "key": key,
        "block_ids": [int(b) for b in block_ids],
        "tokens": tokens,
        "first_slot": first_slot,
    }


def _span_fields(s: BlockSpan) -> dict[str, Any]:
    fields = _blocks_fields(s.key, s.block_ids, s.tokens, s.first_slot)
    fields["token_start"] = s.token_start
    if s.ratio is not None:
        fields["ratio"] = s.ratio
    if s.window_tokens is not None:
        fields["window_tokens"] = s.window_tokens
    return fields


@dataclass(frozen=True)
class LoadSpan:
    """One record restored into the cache, for :meth:`IpcKvCache.load_blocks_many`.

    The record's tokens from ``skip_tokens`` on go to slots ``first_slot``.. of ``block_ids``
    (as in :class:`BlockSpan`); the record holds ``record_tokens`` tokens (default
    ``skip_tokens + tokens``).
    """

    key: str
    block_ids: Sequence[int]
    tokens: int
    first_slot: int = 0
    skip_tokens: int = 0
    record_tokens: int | None = None


def _load_fields(s: LoadSpan) -> dict[str, Any]:
    fields = _blocks_fields(s.key, s.block_ids, s.tokens, s.first_slot)
    if s.skip_tokens:
        fields["skip_tokens"] = s.skip_tokens
    if s.record_tokens is not None:
        fields["record_tokens"] = s.record_tokens
    return fields


def _save_result(h: Mapping[str, Any]) -> SaveResult:
    return SaveResult(
        key=h["key"],
        raw_bytes=int(h["raw_bytes"]),
        stored_bytes=int(h["stored_bytes"]),
        tier=str(h["tier"]),
    )


class IpcKvCache:
    """A paged KV cache registered with the sidecar; save and load blocks in place.

    The client must have completed ``hello`` with a compat whose ``block_size`` and ``dtype``
    match the tensors. A sidecar restart loses the registration: the next block operation
    registers again once and retries.
    """

    def __init__(self, client: SidecarClient, layers: Sequence[torch.Tensor], layout: str) -> None:
        import torch

        self.client = client
        self.layers = list(layers)
        self.layout = layout
        self.device = self.layers[0].device
        self.registration = describe(self.layers, layout)
        self._event = torch.cuda.Event(interprocess=True, enable_timing=False)
        self._event.record(torch.cuda.current_stream(self.device))
        self._sidecar_event: torch.cuda.Event | None = None
        self.region = 0
        self.register()

    def register(self) -> None:
        import torch

        fields = self.registration.fields()
        fields["event"] = bytes(self._event.ipc_handle())
        reply = self.client.request("register_kv", fields)
        self.region = int(reply.header["region"])
        handle = reply.header.get("event")
        if not isinstance(handle, (bytes, bytearray)) or len(handle) != 64:
            raise IpcError(p.ERR_KVTC_IPC, "register_kv reply carries no 64-byte event handle")
        self._sidecar_event = torch.cuda.Event.from_ipc_handle(self.device, bytes(handle))

    def _retrying(self, op: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return self.client.request(op, {**fields, "region": self.region}).header
        except KvUnregisteredError:
            self.register()  # the sidecar restarted (or reaped us): a new region id
            return self.client.request(op, {**fields, "region": self.region}).header

    def save_blocks(
        self,
        key: str,
        block_ids: Sequence[int],
        tokens: int,
        token_start: int,
        first_slot: int = 0,
        ratio: float | None = None,
        window_tokens: int | None = None,
    ) -> SaveResult:
        """Compresses ``tokens`` tokens from the blocks into the record ``key``."""
        import torch

        self._event.record(torch.cuda.current_stream(self.device))
        h = self._retrying(
            "save_blocks",
            _span_fields(
                BlockSpan(key, block_ids, tokens, token_start, first_slot, ratio, window_tokens)
            ),
        )["handle"]
        return _save_result(h)

    def save_blocks_many(self, spans: Sequence[BlockSpan]) -> list[SaveResult]:
        """Compresses each span into its own record, in one request: the sidecar runs the spans
        through the GPU together (one projection and one coder launch for many 256-token chunks),
        so this is much faster than a :meth:`save_blocks` per chunk. One failure fails them all."""
        import torch

        if not spans:
            return []
        self._event.record(torch.cuda.current_stream(self.device))
        handles = self._retrying("save_blocks", {"items": [_span_fields(s) for s in spans]})[
            "handles"
        ]
        return [_save_result(h) for h in handles]

    def load_blocks(
        self,
        key: str,
        block_ids: Sequence[int],
        tokens: int,
        first_slot: int = 0,
        skip_tokens: int = 0,
        record_tokens: int | None = None,
        wait: str = "stream",
    ) -> int:
        """Restores the record ``key`` into the blocks; returns its first token position.

        ``skip_tokens`` leading tokens of the record are not written; the record holds
        ``record_tokens`` tokens (default ``skip_tokens + tokens``). ``wait="stream"``: the
        current stream waits on the device for the sidecar's writes (loads issued on the forward
        pass's stream); ``"host"``: this thread blocks until they are done (loads on a
        background thread, read later by another stream).
        """
        span = LoadSpan(key, block_ids, tokens, first_slot, skip_tokens, record_tokens)
        h = self._retrying("load_blocks", _load_fields(span))
        self._wait_for_sidecar(wait)
        return int(h["token_start"])

    def load_blocks_many(self, spans: Sequence[LoadSpan], wait: str = "stream") -> list[int]:
        """Restores each span's record into its blocks, in one request: the sidecar decodes the
        records on the GPU together (one inflate launch and one GEMM per stream for many
        256-token chunks). Returns each record's first token position. One failure fails them
        all (some blocks may then hold restored tokens: treat every span as not loaded).
        ``wait`` as for :meth:`load_blocks`."""
        if not spans:
            return []
        loaded = self._retrying("load_blocks", {"items": [_load_fields(s) for s in spans]})[
            "loaded"
        ]
        self._wait_for_sidecar(wait)
        return [int(h["token_start"]) for h in loaded]

    def _wait_for_sidecar(self, wait: str) -> None:
        import torch

        assert self._sidecar_event is not None
        if wait == "host":
            self._sidecar_event.synchronize()
        else:
            torch.cuda.current_stream(self.device).wait_event(self._sidecar_event)

    def close(self) -> None:
        """Releases the registration (the sidecar also does when this process exits)."""
        try:
            self.client.request("unregister_kv", {"region": self.region})
        except Exception:  # noqa: BLE001 - best effort at shutdown; the sidecar reaps by PID
            pass
