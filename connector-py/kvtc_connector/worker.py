"""Worker side of the kvtc connector: gathers chunks out of vLLM's paged KV cache and scatters
loaded chunks back in. Runs in each worker process, next to the KV tensors.

On the CPU (vLLM's CPU backend) blocks travel as raw frames: a chunk is gathered from the blocks of
every layer into token-major ``[tokens, layers, kv_heads, head_dim]`` keys and values, sent with
``save``, and ``load`` replies are scattered back the same way. Saves run in ``wait_for_save``,
after the forward, synchronously, so a block is never read after vLLM reuses it.

Loads. An asynchronous ``LoadSpec`` (the default) becomes a job for the loader thread, which
fetches the chunks from the sidecar, decodes nothing itself (the sidecar decodes) and scatters
them into the request's blocks while the engine runs other requests. ``get_finished`` reports a
job's request in ``finished_recving`` only once the thread is done with it, so vLLM, which holds
the blocks of a loading request until then (even when it is aborted), never frees a block the
thread still writes. Blocks of chunks that failed to load are returned by
``get_block_ids_with_load_errors`` in that same step; an aborted request's job stops at the next
chunk batch and reports no errors. Every sidecar call has the client's timeout, so a job always
ends. A synchronous ``LoadSpec`` (``load_async: false``) is loaded in ``start_load_kv``, before
the forward.

On a GPU no block leaves the device through this process: the layers' CUDA tensors are registered
with the sidecar once by CUDA IPC (:mod:`kvtc_connector.cuda_ipc`), which then encodes from and
restores into the blocks in place (``save_blocks``, ``load_blocks``), ordered by IPC events.

The paged layout. vLLM >= 0.32 hands each layer over as ``[blocks, kv_heads, block, 2 * head_dim]``
(shape and strides are read, never assumed contiguous), but what a ``(block, head)`` page holds
depends on the CPU attention kernel's ISA: with ``vec`` the keys are stored transposed,
``[head_dim, block]``, and the values ``[block, head_dim]``; ``amx`` packs differently again. So
the worker does not guess: at registration it writes known token and dim indices through vLLM's
own cache writer (``cpu_attn_reshape_and_cache`` with the layers' ISA) into a scratch page and
reads back where each key and value element landed (:func:`probe_page_layout`). Gather and
scatter then index pages with that map.

Block ids are the scheduler's; when the kernel block is smaller than vLLM's block, block ``b``
is kernel blocks ``b * r .. b * r + r - 1``. Block 0 is vLLM's null block and never appears.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import TYPE_CHECKING, Any

import torch

from kvtc_connector.client import (
    Compat,
    HelloResult,
    LoadItem,
    LoadResult,
    SaveItem,
    SidecarClient,
)
from kvtc_connector.cuda_ipc import BlockSpan, IpcKvCache, LoadSpan, detect_layout
from kvtc_connector.errors import KvtcSidecarError
from kvtc_connector.metadata import (
    FRAME_LAYOUT,
    KvtcConnectorMetadata,
    KvtcSettings,
    LoadSpec,
    SaveSpec,
    dtype_name,
    model_identity,
)
from kvtc_connector.protocol import Dtype
from kvtc_connector.stats import KvtcConnectorStats

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.kv_cache_interface import KVCacheConfig

__all__ = ["KvtcWorker", "PagedLayer", "WorkerStats"]

logger = logging.getLogger(__name__)

_WARN_EVERY_S = 60.0


@dataclass
class PagedLayer:
    """One layer's cache as ``[kernel_blocks, kv_heads, page]`` (a view of vLLM's tensor)."""

    name: str
    pages: torch.Tensor


@dataclass(frozen=True)
class PageLayout:
    """Where a ``(block, head)`` page keeps each key and value element: flat page offsets
    ``key_pos[token * head_dim + dim]`` and ``value_pos[...]``, as vLLM's cache writer put them."""

    block: int
    head_dim: int
    isa: str
    key_pos: torch.Tensor
    value_pos: torch.Tensor


@dataclass
class _LoadJob:
    """One asynchronous load: owned by the loader thread until ``done``."""

    spec: LoadSpec
    failed_blocks: set[int] = dc_field(default_factory=set)
    cancelled: bool = False  # the request finished (aborted): stop writing, report no errors
    done: bool = False


@dataclass
class WorkerStats:
    chunks_loaded: int = 0
    tokens_loaded: int = 0
    chunks_saved: int = 0
    load_errors: int = 0
    save_errors: int = 0


def _layer_index(name: str) -> int:
    try:
        from vllm.model_executor.models.utils import extract_layer_index

        return int(extract_layer_index(name))
    except Exception:
        numbers = re.findall(r"\.(\d+)\.", name)
        if not numbers:
            raise ValueError(f"kvtc cannot tell the layer index of KV cache {name!r}") from None
        return int(numbers[-1])


def page_view(name: str, kv: torch.Tensor, kv_heads: int, head_dim: int) -> torch.Tensor:
    """``[blocks, kv_heads, 2 * block * head_dim]`` view of one layer's cache (no copy).

    :raises NotImplementedError: a shape or strides this connector does not know (the message
        has both).
    """
    shape, strides = tuple(kv.shape), tuple(kv.stride())
    if (
        kv.dim() == 4
        and shape[1] == kv_heads
        and shape[3] == 2 * head_dim
        and strides[3] == 1
        and strides[2] == 2 * head_dim
    ):
        return kv.as_strided((shape[0], kv_heads, shape[2] * shape[3]), (strides[0], strides[1], 1))
    raise NotImplementedError(
        f"kvtc does not know the paged KV layout of {name}: shape {shape}, strides {strides} "
        f"(expected [blocks, {kv_heads}, block, {2 * head_dim}] with pages of "
        f"block x {2 * head_dim} contiguous elements, as vLLM's CPU attention backend has)"
    )


def attention_isa(vllm_config: VllmConfig, layer_name: str, dtype: torch.dtype, block: int) -> str:
    """The ISA of vLLM's CPU attention kernel for a layer (it decides the page layout)."""
    ctx = vllm_config.compilation_config.static_forward_context
    isa = getattr(ctx.get(layer_name), "isa", None)
    if isinstance(isa, str):
        return isa
    try:  # no model loaded (tests): ask the backend the way its metadata builder does
        from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

        head = vllm_config.model_config.get_head_size()
        return str(_get_attn_isa(dtype, block, head, vllm_config.cache_config.cache_dtype))
    except Exception as e:
        raise NotImplementedError(
            f"kvtc cannot tell which CPU attention kernel writes {layer_name}: {e}"
        ) from e


def probe_page_layout(
    kv_heads: int, block: int, head_dim: int, dtype: torch.dtype, isa: str
) -> PageLayout:
    """Finds the page layout by writing known indices with vLLM's own cache writer.

    Each probe writes one integer field of (token, dim) plus one (exact in any float dtype) into
    the keys or the values of a scratch page and reads back where the numbers landed. Fields are
    split base 128 so that bfloat16 holds them exactly.

    :raises NotImplementedError: the writer is missing, or it does not store a page as a
        permutation of its keys and values, one head per page.
    """
    try:
        from vllm._custom_ops import cpu_attn_reshape_and_cache
    except Exception as e:
        raise NotImplementedError(f"kvtc needs vLLM's CPU cache writer: {e}") from e
    page = 2 * block * head_dim
    n = torch.arange(block)[:, None, None].expand(block, kv_heads, head_dim)
    h = torch.arange(kv_heads)[None, :, None].expand(block, kv_heads, head_dim)
    d = torch.arange(head_dim)[None, None, :].expand(block, kv_heads, head_dim)
    fields = {"n_lo": n % 128, "n_hi": n // 128, "d_lo": d % 128, "d_hi": d // 128, "h": h % 128}
    scratch = torch.zeros((2, kv_heads, block, 2 * head_dim), dtype=dtype)
    key_cache, value_cache = scratch.view(2, kv_heads, 2 * block, head_dim).chunk(2, dim=2)
    slots = torch.arange(block) + block  # block 1 of the scratch cache
    found: dict[str, dict[str, torch.Tensor]] = {"key": {}, "value": {}}
    for side in ("key", "value"):
        for fname, field in fields.items():
            scratch.zero_()
            marked = (field + 1).to(dtype).contiguous()
            zero = torch.zeros_like(marked)
            k, v = (marked, zero) if side == "key" else (zero, marked)
            try:
                cpu_attn_reshape_and_cache(k, v, key_cache, value_cache, slots, isa)
            except Exception as e:
                raise NotImplementedError(
                    f"kvtc could not probe vLLM's CPU cache writer (isa {isa}): {e}"
                ) from e
            found[side][fname] = scratch[1].reshape(kv_heads, page).to(torch.int64) - 1
    pos: dict[str, torch.Tensor] = {}
    head_ids = torch.arange(kv_heads)[:, None]
    for side, got in found.items():
        written = got["n_lo"] >= 0
        count = block * head_dim
        if not bool((written.sum(dim=1) == count).all()) or not bool(
            (got["h"][written].view(kv_heads, count) == head_ids).all()
        ):
            raise NotImplementedError(
                f"kvtc: vLLM's CPU cache writer (isa {isa}) does not store {side}s as one "
                "permuted page per head; this layout is not supported"
            )
        token = (got["n_hi"] * 128 + got["n_lo"])[0]
        dim = (got["d_hi"] * 128 + got["d_lo"])[0]
        offsets = torch.nonzero(written[0]).flatten()
        index = torch.full((count,), -1, dtype=torch.int64)
        index[token[offsets] * head_dim + dim[offsets]] = offsets
        if bool((index < 0).any()):
            raise NotImplementedError(f"kvtc: the {side} page layout of isa {isa} is not a map")
        pos[side] = index
    if bool(torch.isin(pos["key"], pos["value"]).any()):
        raise NotImplementedError(f"kvtc: keys and values share page offsets (isa {isa})")
    return PageLayout(block, head_dim, isa, pos["key"], pos["value"])


class KvtcWorker:
    """The worker-role half of :class:`kvtc_connector.connector.KvtcConnector`."""

    def __init__(
        self,
        vllm_config: VllmConfig,
        kv_cache_config: KVCacheConfig | None,
        settings: KvtcSettings,
        *,
        client: SidecarClient | None = None,
    ) -> None:
        parallel = vllm_config.parallel_config
        if parallel.tensor_parallel_size > 1 or parallel.pipeline_parallel_size > 1:
            raise NotImplementedError(
                "kvtc records hold every layer and KV head of a token; tensor and pipeline "
                "parallelism split them across workers, which this connector does not support yet"
            )
        self.settings = settings
        self.block_size = int(vllm_config.cache_config.block_size)
        settings.check_block_size(self.block_size)
        self.chunk_tokens = settings.chunk_tokens
        self.identity = model_identity(vllm_config, settings)
        self.client = client or SidecarClient(
            settings.endpoint,
            timeout_ms=settings.timeout_ms,
            retry_ms=settings.retry_ms,
            max_pipeline=settings.max_pipeline,
        )
        self._vllm_config = vllm_config
        self.layers: list[PagedLayer] = []
        self.page_layout: PageLayout | None = None
        self.layout = ""
        self.dtype: Dtype = "bfloat16"
        self._torch_dtype = torch.bfloat16
        self.kernel_block_size = self.block_size
        self.compat: Compat | None = None
        self._finished_sending: set[str] = set()
        self._failed_blocks: set[int] = set()
        self._warned: dict[str, float] = {}
        self.stats = WorkerStats()
        self._reported = WorkerStats()  # what take_stats has handed to vLLM so far
        self.metadata: KvtcConnectorMetadata | None = None
        self._hello_after: dict[int, float] = {}  # id(client) -> next handshake attempt
        # Asynchronous loads. The loader thread has a client of its own (its own DEALER socket
        # and session), made on first use: SidecarClient is thread-safe only by serialising
        # every call on one lock, so a shared client would make the saves in wait_for_save (on
        # the forward's thread) wait behind whole load batches; and a ZeroMQ socket must not be
        # used by two threads at once anyway.
        self._jobs: list[_LoadJob] = []  # guarded by _jobs_lock; removed once reported
        self._jobs_lock = threading.Lock()
        self._job_queue: queue.Queue[_LoadJob | None] = queue.Queue()
        self._loader: threading.Thread | None = None
        self._load_client: SidecarClient | None = None
        # GPU path: the layers' CUDA tensors, registered with the sidecar once per client (the
        # forward thread's and the loader's), read and written in place by CUDA IPC.
        self._cuda_layers: list[torch.Tensor] = []
        self._ipc_layout = ""
        self._ipc_caches: dict[int, IpcKvCache] = {}  # id(client) -> registration

    # ---------------------------------------------------------------- registration

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        ident = self.identity
        named = sorted(kv_caches.items(), key=lambda item: _layer_index(item[0]))
        if len(named) != ident.layers or len({_layer_index(n) for n, _ in named}) != ident.layers:
            raise NotImplementedError(
                f"kvtc expects one KV cache per layer ({ident.layers}) but vLLM registered "
                f"{len(named)} ({', '.join(n for n, _ in named[:4])}, ...); cross-layer KV "
                "sharing and hybrid models are not supported"
            )
        if named[0][1].device.type == "cuda":
            self._register_cuda(named)
            return
        layers: list[PagedLayer] = []
        shapes = set()
        dtypes = set()
        for name, kv in named:
            if kv.device.type != "cpu":
                raise NotImplementedError(
                    f"kvtc: KV cache {name} is on {kv.device}: only CPU and CUDA caches "
                    "are supported"
                )
            layers.append(PagedLayer(name, page_view(name, kv, ident.kv_heads, ident.head_dim)))
            shapes.add(tuple(kv.shape[1:]))
            dtypes.add(kv.dtype)
        if len(shapes) != 1 or len(dtypes) != 1:
            raise NotImplementedError(
                f"kvtc needs one page shape and dtype for all layers; got {shapes} and {dtypes}"
            )
        self._torch_dtype = dtypes.pop()
        self.dtype = dtype_name(self._torch_dtype)
        kernel_block = int(named[0][1].shape[2])
        if self.block_size % kernel_block != 0:
            raise NotImplementedError(
                f"kvtc: kernel block size {kernel_block} does not divide the block size "
                f"{self.block_size}"
            )
        isa = attention_isa(self._vllm_config, named[0][0], self._torch_dtype, kernel_block)
        self.page_layout = probe_page_layout(
            ident.kv_heads, kernel_block, ident.head_dim, self._torch_dtype, isa
        )
        self.layout = f"cpu-attn-{isa}"
        self.kernel_block_size = kernel_block
        self.layers = layers
        self.compat = self._compat(FRAME_LAYOUT)
        logger.info(
            "kvtc: registered %d layers, layout %s, %s, block %d (kernel block %d)",
            len(layers),
            self.layout,
            self.dtype,
            self.block_size,
            kernel_block,
        )
        self._session(self.client)

    def _compat(self, layout: str) -> Compat:
        """What ``hello`` checks for this worker's cache (dtype and layout known by now)."""
        ident = self.identity
        return Compat(
            model_fingerprint=ident.fingerprint,
            dtype=self.dtype,
            layout=layout,
            block_size=self.block_size,
            layers=ident.layers,
            kv_heads=ident.kv_heads,
            head_dim=ident.head_dim,
            calibration_id=self.settings.calibration_id,
        )

    def _register_cuda(self, named: list[tuple[str, torch.Tensor]]) -> None:
        """GPU path: the blocks stay on the GPU; the sidecar (``--backend cuda``, same node)
        opens the layers by CUDA IPC and gathers, encodes, decodes and scatters them in place."""
        ident = self.identity
        tensors = [kv for _, kv in named]
        first = tensors[0]
        if any(t.device != first.device or t.dtype != first.dtype for t in tensors):
            raise NotImplementedError(
                "kvtc needs every layer's KV cache on one device, in one dtype"
            )
        self._ipc_layout = detect_layout(first, self.block_size, ident.kv_heads, ident.head_dim)
        self._torch_dtype = first.dtype
        self.dtype = dtype_name(self._torch_dtype)
        self.kernel_block_size = self.block_size
        self.layout = f"cuda-{self._ipc_layout}"
        self._cuda_layers = tensors
        self.compat = self._compat(self.layout)
        logger.info(
            "kvtc: registered %d CUDA layers (%s, %s, block %d), shared by CUDA IPC",
            len(tensors),
            self._ipc_layout,
            self.dtype,
            self.block_size,
        )
        self._session(self.client)

    def _ipc(self, client: SidecarClient) -> IpcKvCache:
        """``client``'s registration of the CUDA layers, made on first use (after its hello)."""
        cache = self._ipc_caches.get(id(client))
        if cache is None:
            cache = IpcKvCache(client, self._cuda_layers, self._ipc_layout)
            self._ipc_caches[id(client)] = cache
        return cache

    # ---------------------------------------------------------------- per step

    def bind(self, metadata: KvtcConnectorMetadata | None) -> None:
        self.metadata = metadata

    def start_load_kv(self) -> None:
        """Hands this step's asynchronous loads to the loader thread; loads the synchronous
        ones now, before the forward."""
        meta = self.metadata
        if meta is None or not meta.loads:
            return
        for spec in meta.loads:
            if spec.asynchronous:
                job = _LoadJob(spec)
                with self._jobs_lock:
                    self._jobs.append(job)
                self._ensure_loader()
                self._job_queue.put(job)
            else:
                self._failed_blocks.update(self._run_load(spec, self.client))

    def wait_for_loads(self, timeout: float | None = None) -> bool:
        """Blocks until every asynchronous load handed over so far is done (tests, shutdown).
        False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._jobs_lock:
                if all(j.done for j in self._jobs):
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.002)

    def wait_for_save(self) -> None:
        """Gathers and saves this step's chunks (best effort: failures are logged, not raised)."""
        meta = self.metadata
        if meta is None or not meta.saves:
            return
        for spec in meta.saves:
            try:
                self._save(spec)
            except Exception as e:
                self._warn("save", "kvtc: save of %s failed: %s", spec.req_id, e)
                self.stats.save_errors += 1
            finally:
                if spec.held:
                    self._finished_sending.add(spec.req_id)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        """(saves of finished requests done, async loads done). A load is reported only once
        the loader thread no longer touches its blocks; its failed blocks are queued for
        ``get_block_ids_with_load_errors``, which vLLM calls right after, in the same step."""
        sending, self._finished_sending = self._finished_sending, set()
        recving: set[str] = set()
        with self._jobs_lock:
            pending = []
            for job in self._jobs:
                if job.spec.req_id in finished_req_ids:
                    job.cancelled = True  # aborted while loading: stop at the next batch
                if not job.done:
                    pending.append(job)
                    continue
                recving.add(job.spec.req_id)
                if not job.cancelled:
                    self._failed_blocks.update(job.failed_blocks)
            self._jobs = pending
        return (sending or None), (recving or None)

    def get_block_ids_with_load_errors(self) -> set[int]:
        failed, self._failed_blocks = self._failed_blocks, set()
        return failed

    def take_stats(self) -> KvtcConnectorStats | None:
        """The counts since the previous call (None when nothing happened), for vLLM's telemetry."""
        now = dataclasses.asdict(self.stats)  # one read of each counter (the loader thread adds)
        before = dataclasses.asdict(self._reported)
        delta = {k: now[k] - before[k] for k in now}
        if not any(delta.values()):
            return None
        self._reported = WorkerStats(**now)
        return KvtcConnectorStats(data=delta)

    def shutdown(self) -> None:
        if self._loader is not None:
            with self._jobs_lock:
                for job in self._jobs:
                    job.cancelled = True
            self._job_queue.put(None)
            self._loader.join(timeout=2 * self.settings.timeout_ms / 1000 + 1)
        for ipc in self._ipc_caches.values():
            ipc.close()  # unregister_kv (the sidecar also releases regions of exited PIDs)
        if self._load_client is not None:
            self._load_client.close()
        s = self.stats
        logger.info(
            "kvtc worker: loaded %d chunks (%d tokens, %d errors), saved %d chunks (%d errors)",
            s.chunks_loaded,
            s.tokens_loaded,
            s.load_errors,
            s.chunks_saved,
            s.save_errors,
        )
        self.client.close()

    # ---------------------------------------------------------------- gather / scatter

    def _kernel_blocks(self, block_ids: list[int]) -> torch.Tensor:
        r = self.block_size // self.kernel_block_size
        ids = torch.tensor(block_ids, dtype=torch.long)
        if r == 1:
            return ids
        return (ids[:, None] * r + torch.arange(r)[None, :]).reshape(-1)

    def gather(self, block_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the tokens in ``block_ids``: ``[tokens, layers, heads, dim]``."""
        ids = self._kernel_blocks(block_ids)
        k, kb = int(ids.numel()), self.kernel_block_size
        ident = self.identity
        heads, dim = ident.kv_heads, ident.head_dim
        shape = (k * kb, ident.layers, heads, dim)
        keys = torch.empty(shape, dtype=self._torch_dtype)
        values = torch.empty(shape, dtype=self._torch_dtype)
        layout = self.page_layout
        assert layout is not None, "register_kv_caches first"
        for i, layer in enumerate(self.layers):
            pages = layer.pages.index_select(0, ids)  # [k, heads, page]
            for pos, dst in ((layout.key_pos, keys), (layout.value_pos, values)):
                # [k, heads, block * dim] -> [k, block, heads, dim] -> [tokens, heads, dim]
                part = pages[:, :, pos].view(k, heads, kb, dim).transpose(1, 2)
                dst[:, i] = part.reshape(k * kb, heads, dim)
        return keys, values

    def scatter(self, block_ids: list[int], keys: torch.Tensor, values: torch.Tensor) -> None:
        """Writes ``[tokens, layers, heads, dim]`` keys and values into the tokens of the blocks
        (whole blocks: ``tokens`` is ``len(block_ids) * block_size``)."""
        ids = self._kernel_blocks(block_ids)
        k, kb = int(ids.numel()), self.kernel_block_size
        heads, dim = self.identity.kv_heads, self.identity.head_dim
        layout = self.page_layout
        assert layout is not None, "register_kv_caches first"
        for i, layer in enumerate(self.layers):
            pages = layer.pages.index_select(0, ids)
            for pos, src in ((layout.key_pos, keys), (layout.value_pos, values)):
                part = src[:, i].reshape(k, kb, heads, dim).transpose(1, 2)
                pages[:, :, pos] = part.reshape(k, heads, kb * dim).to(pages.dtype)
            layer.pages.index_copy_(0, ids, pages)

    # ---------------------------------------------------------------- sidecar calls

    def _block_offset(self, spec: LoadSpec) -> int:
        """Index in ``spec.block_ids`` of the block holding ``token_lo``."""
        base = spec.first_chunk * self.chunk_tokens
        return (spec.token_lo - base) // self.block_size

    def _ensure_loader(self) -> None:
        if self._loader is None or not self._loader.is_alive():
            self._loader = threading.Thread(
                target=self._loader_main, name="kvtc-loader", daemon=True
            )
            self._loader.start()

    def _loader_main(self) -> None:
        while True:
            job = self._job_queue.get()
            if job is None:
                return
            try:
                if not job.cancelled:
                    if self._load_client is None:
                        self._load_client = SidecarClient(
                            self.settings.endpoint,
                            timeout_ms=self.settings.timeout_ms,
                            retry_ms=self.settings.retry_ms,
                            max_pipeline=self.settings.max_pipeline,
                        )
                    job.failed_blocks = self._run_load(job.spec, self._load_client, job)
            except BaseException as e:  # the thread must survive anything
                job.failed_blocks = set(job.spec.block_ids[self._block_offset(job.spec) :])
                self._warn("load", "kvtc: loader failed on %s: %s", job.spec.req_id, e)
            finally:
                with self._jobs_lock:
                    job.done = True

    def _run_load(
        self, spec: LoadSpec, client: SidecarClient, job: _LoadJob | None = None
    ) -> set[int]:
        """Loads ``spec``; returns the blocks it could not fill (never raises)."""
        failed: set[int] = set()
        try:
            self._load(spec, client, failed, job)
        except Exception as e:  # never into vLLM: a failed load is recomputed
            self._warn("load", "kvtc: load of %s failed, recomputing: %s", spec.req_id, e)
            self.stats.load_errors += 1
            # Every block from token_lo that was not filled (a scatter may have run already).
            failed.update(spec.block_ids[self._block_offset(spec) :])
        return failed

    def _load(
        self,
        spec: LoadSpec,
        client: SidecarClient,
        failed: set[int],
        job: _LoadJob | None = None,
    ) -> None:
        c, bs = self.chunk_tokens, self.block_size
        base_block = spec.first_chunk * c // bs
        if self._session(client) is None:
            raise KvtcSidecarError("ERR_KVTC_SIDECAR_UNAVAILABLE", "no session with the sidecar")
        if self._cuda_layers:
            self._load_ipc(spec, client, failed, job)
            return
        step = self.settings.max_pipeline
        for start in range(0, len(spec.keys), step):
            if job is not None and job.cancelled:
                return
            batch = spec.keys[start : start + step]
            try:
                results = client.load_many([LoadItem(key, c, self.dtype) for key in batch])
            except KvtcSidecarError as e:
                # The batch is lost (timeout): its blocks and all after them are not filled.
                self._warn("load", "kvtc: load of %s failed, recomputing: %s", spec.req_id, e)
                self.stats.load_errors += 1
                lo = max(spec.token_lo, (spec.first_chunk + start) * c)
                failed.update(spec.block_ids[lo // bs - base_block :])
                return
            if job is not None and job.cancelled:
                return
            self._scatter_results(spec, start, results, failed)

    def _chunk_span(self, spec: LoadSpec, i: int) -> tuple[int, int, int, list[int]]:
        """Chunk ``i`` of ``spec``: its index, the tokens ``[lo, hi)`` this load fills, and the
        blocks holding them."""
        c, bs = self.chunk_tokens, self.block_size
        base_block = spec.first_chunk * c // bs
        chunk = spec.first_chunk + i
        lo = max(spec.token_lo, chunk * c)
        hi = min(spec.token_hi, (chunk + 1) * c)
        return (
            chunk,
            lo,
            hi,
            spec.block_ids[lo // bs - base_block : (hi + bs - 1) // bs - base_block],
        )

    def _chunk_failed(
        self, spec: LoadSpec, chunk: int, blocks: list[int], failed: set[int], why: object
    ) -> None:
        self._warn("load", "kvtc: chunk %d of %s not loaded: %s", chunk, spec.req_id, why)
        self.stats.load_errors += 1
        failed.update(blocks)

    def _scatter_results(
        self,
        spec: LoadSpec,
        start: int,
        results: list[LoadResult | KvtcSidecarError],
        failed: set[int],
    ) -> None:
        c = self.chunk_tokens
        for i, result in enumerate(results, start):
            chunk, lo, hi, blocks = self._chunk_span(spec, i)
            if isinstance(result, LoadResult) and not (
                result.token_start == chunk * c and result.tokens == c
            ):
                result = KvtcSidecarError(
                    "ERR_KVTC_RECORD_SIZE_MISMATCH",
                    f"record holds tokens {result.token_start}+{result.tokens}, "
                    f"expected {chunk * c}+{c}",
                )
            if not isinstance(result, LoadResult):
                self._chunk_failed(spec, chunk, blocks, failed, result)
                continue
            shape = (c, self.identity.layers, self.identity.kv_heads, self.identity.head_dim)
            keys = torch.frombuffer(result.keys, dtype=self._torch_dtype).view(shape)
            values = torch.frombuffer(result.values, dtype=self._torch_dtype).view(shape)
            off = lo - chunk * c
            self.scatter(blocks, keys[off : off + hi - lo], values[off : off + hi - lo])
            self.stats.chunks_loaded += 1
            self.stats.tokens_loaded += hi - lo

    def _load_ipc(
        self,
        spec: LoadSpec,
        client: SidecarClient,
        failed: set[int],
        job: _LoadJob | None = None,
    ) -> None:
        """GPU path of :meth:`_load`: each chunk is decoded and scattered by the sidecar in place.

        On the loader thread the host waits for the sidecar's event before the load is reported
        finished (vLLM's forward runs on another thread and stream); a synchronous load makes the
        forward stream wait on the device instead."""
        c, bs = self.chunk_tokens, self.block_size
        ipc = self._ipc(client)
        step = self.settings.max_pipeline
        # Up to max_pipeline chunks per request, which the sidecar decodes on the GPU together;
        # a failed request fails its chunks (their blocks are recomputed).
        for first in range(0, len(spec.keys), step):
            if job is not None and job.cancelled:
                return
            chunks = []
            for i in range(first, min(first + step, len(spec.keys))):
                chunk, lo, hi, blocks = self._chunk_span(spec, i)
                span = LoadSpan(
                    spec.keys[i],
                    blocks,
                    tokens=hi - lo,
                    first_slot=lo % bs,
                    skip_tokens=lo - chunk * c,
                    record_tokens=c,
                )
                chunks.append((chunk, lo, hi, blocks, span))
            try:
                starts = ipc.load_blocks_many(
                    [span for *_, span in chunks], wait="host" if job is not None else "stream"
                )
                for (chunk, *_), start in zip(chunks, starts, strict=True):
                    if start != chunk * c:
                        raise KvtcSidecarError(
                            "ERR_KVTC_RECORD_SIZE_MISMATCH",
                            f"record of chunk {chunk} starts at {start}, expected {chunk * c}",
                        )
            except KvtcSidecarError as e:
                for chunk, _, _, blocks, _ in chunks:
                    self._chunk_failed(spec, chunk, blocks, failed, e)
                continue
            self.stats.chunks_loaded += len(chunks)
            self.stats.tokens_loaded += sum(hi - lo for _, lo, hi, _, _ in chunks)

    def _save(self, spec: SaveSpec) -> None:
        if self._session(self.client) is None:
            raise KvtcSidecarError("ERR_KVTC_SIDECAR_UNAVAILABLE", "no session with the sidecar")
        c, bs = self.chunk_tokens, self.block_size
        per_chunk = c // bs
        step = self.settings.max_pipeline
        if self._cuda_layers:
            # In place: the sidecar waits (on the GPU) for this stream's event, then gathers. Up
            # to max_pipeline chunks per request, which the sidecar runs through the GPU together.
            ipc = self._ipc(self.client)
            for start in range(0, len(spec.keys), step):
                spans = [
                    BlockSpan(
                        key=spec.keys[i],
                        block_ids=spec.block_ids[i * per_chunk : (i + 1) * per_chunk],
                        tokens=c,
                        token_start=(spec.first_chunk + i) * c,
                        ratio=self.settings.ratio,
                        window_tokens=spec.window_tokens[i],
                    )
                    for i in range(start, min(start + step, len(spec.keys)))
                ]
                try:
                    ipc.save_blocks_many(spans)
                    self.stats.chunks_saved += len(spans)
                except KvtcSidecarError as e:
                    self._warn("save", "kvtc: chunks %s.. not saved: %s", spans[0].key, e)
                    self.stats.save_errors += len(spans)
            return
        for start in range(0, len(spec.keys), step):
            items = []
            for i in range(start, min(start + step, len(spec.keys))):
                keys, values = self.gather(spec.block_ids[i * per_chunk : (i + 1) * per_chunk])
                items.append(
                    SaveItem(
                        key=spec.keys[i],
                        keys=_bytes(keys),
                        values=_bytes(values),
                        token_start=(spec.first_chunk + i) * c,
                        tokens=c,
                        dtype=self.dtype,
                        ratio=self.settings.ratio,
                        window_tokens=spec.window_tokens[i],
                    )
                )
            for item, result in zip(items, self.client.save_many(items), strict=True):
                if isinstance(result, KvtcSidecarError):
                    self._warn("save", "kvtc: chunk %s not saved: %s", item.key, result)
                    self.stats.save_errors += 1
                else:
                    self.stats.chunks_saved += 1

    def _session(self, client: SidecarClient) -> HelloResult | None:
        """``client``'s handshake result, shaking hands first (at most once per retry_ms)."""
        if client.hello_result is not None:
            return client.hello_result
        if self.compat is None:
            return None
        now = time.monotonic()
        if now < self._hello_after.get(id(client), 0.0):
            return None
        self._hello_after[id(client)] = now + self.settings.retry_ms / 1000
        try:
            return client.hello(self.compat)
        except KvtcSidecarError as e:
            self._warn("hello", "kvtc: no session with the sidecar at %s: %s", client.endpoint, e)
            return None

    def _warn(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -_WARN_EVERY_S) >= _WARN_EVERY_S:
            self._warned[key] = now
            logger.warning(msg, *args)


def _bytes(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy (numpy has no bfloat16)."""
    flat = t.contiguous().view(-1).view(torch.uint8)
    return flat.numpy().data
