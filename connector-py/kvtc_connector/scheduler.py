"""Scheduler side of the kvtc connector: chunk keys, lookups, and each step's loads and saves.

Runs in vLLM's engine-core process (one instance, no tensors). Per request it keeps the chunk-key
chain of the request's tokens, the block table, and ``stored``: how many leading chunks the
sidecar already holds (found by ``lookup`` or saved through us), so that no chunk is saved twice.

Saves. A chunk is saved once all its tokens are computed:

- chunks inside the prompt are saved in the step that computes them (so that a request sharing
  the prefix finds them at once); the prompt's last full chunk may keep a raw window;
- chunks of generated tokens are saved when the request finishes, in one batch whose last chunk
  may keep the raw window (``KvtcSettings`` documents when: the window policy).
  ``request_finished`` then returns ``True``: vLLM keeps the request's blocks until the worker
  has read them and reports the request in ``finished_sending`` (the worker does so in the same
  step, after its save, whether the save succeeded or not).

Loads. ``get_num_new_matched_tokens`` looks the request's chunk keys up and reports the hit as
``(n, True)`` (``load_async``, the default): vLLM allocates the blocks, parks the request in
``WAITING_FOR_REMOTE_KVS``, and the next metadata carries the ``LoadSpec``. The worker loads on
its loader thread and reports the request in ``finished_recving`` once it no longer writes the
blocks, with the blocks of any chunk it could not load in ``get_block_ids_with_load_errors`` in
the same step or earlier. vLLM then rolls ``num_computed_tokens`` back to the valid prefix and
recomputes the rest (``kv_load_failure_policy="recompute"``). This side remembers the failed
chunk: the request is never offered those chunks again (no load-fail-reload loop), and the
chunks it recomputes are saved again. While a load is in flight vLLM holds the request's blocks
even if it is aborted, until ``finished_recving``; a request that cannot compute is never
preempted. With ``load_async: false`` hits are ``(n, False)`` and the worker loads in
``start_load_kv``, before the forward. A sidecar that is down, slow or wrong is a cache miss,
never an exception into vLLM.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvtc_connector.client import Compat, HelloResult, SidecarClient
from kvtc_connector.errors import KvtcSidecarError
from kvtc_connector.keys import ChunkKeyChain
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

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

__all__ = ["KvtcScheduler"]

logger = logging.getLogger(__name__)

_WARN_EVERY_S = 60.0


class _RateLimitedLog:
    """One warning per ``key`` per minute: a dead sidecar must not flood the engine's log."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -_WARN_EVERY_S) >= _WARN_EVERY_S:
            self._last[key] = now
            logger.warning(msg, *args)


@dataclass
class _RequestState:
    request: Request
    # Keys need the session's calibration id: None until a hello succeeded.
    chain: ChunkKeyChain | None = None
    block_ids: list[int] = field(default_factory=list)
    # Leading chunks the sidecar holds: lookup hits, or saves already handed to the worker.
    stored: int = 0
    # The local-hit count vLLM passed to the last get_num_new_matched_tokens.
    lookup_computed: int = 0
    # The last load handed to the worker, until it is known done (async: finished_recving;
    # sync: a later load, preemption or the end of the request). Maps load errors to chunks.
    loading: LoadSpec | None = None
    # After a failed load: offer at most this many leading chunks again.
    load_cap: int | None = None


def _cacheable(request: Request) -> bool:
    """Whether token ids alone determine the request's KV (what chunk keys assume).

    Not so with prompt embeddings (token ids are placeholders), multimodal inputs (the same
    placeholder tokens stand for different images), LoRA adapters (other weights), and a
    ``cache_salt`` (the user asked for a cache of its own).
    """
    return not (
        getattr(request, "prompt_embeds", None) is not None
        or getattr(request, "mm_features", None)
        or getattr(request, "lora_request", None) is not None
        or getattr(request, "cache_salt", None)
    )


class KvtcScheduler:
    """The scheduler-role half of :class:`kvtc_connector.connector.KvtcConnector`."""

    def __init__(
        self,
        vllm_config: VllmConfig,
        kv_cache_config: KVCacheConfig | None,
        settings: KvtcSettings,
        *,
        client: SidecarClient | None = None,
    ) -> None:
        self.settings = settings
        self.block_size = int(vllm_config.cache_config.block_size)
        settings.check_block_size(self.block_size)
        self.chunk_tokens = settings.chunk_tokens
        self.window_tokens = settings.stored_window_tokens
        self.load_async = settings.load_async
        self.identity = model_identity(vllm_config, settings)
        dtype: Dtype = "bfloat16"
        if kv_cache_config is not None and kv_cache_config.kv_cache_groups:
            spec = kv_cache_config.kv_cache_groups[0].kv_cache_spec
            dtype = dtype_name(spec.dtype)  # type: ignore[attr-defined]
        self.compat = Compat(
            model_fingerprint=self.identity.fingerprint,
            dtype=dtype,
            layout=FRAME_LAYOUT,
            block_size=self.block_size,
            layers=self.identity.layers,
            kv_heads=self.identity.kv_heads,
            head_dim=self.identity.head_dim,
            calibration_id=settings.calibration_id,
        )
        self.client = client or SidecarClient(
            settings.endpoint,
            timeout_ms=settings.timeout_ms,
            retry_ms=settings.retry_ms,
            max_pipeline=settings.max_pipeline,
        )
        self._log = _RateLimitedLog()
        self._hello: HelloResult | None = None
        self._next_hello = 0.0
        self._reqs: dict[str, _RequestState] = {}
        self._finish_saves: list[SaveSpec] = []
        # Loads decided by update_state_after_alloc, for the next build_connector_meta.
        self._pending_loads: dict[str, LoadSpec] = {}
        # Requests whose async load the worker has not reported in finished_recving yet.
        self.recving: set[str] = set()
        # Requests whose blocks vLLM holds for us until the worker reports finished_sending.
        self.held: set[str] = set()
        policy = getattr(vllm_config.kv_transfer_config, "kv_load_failure_policy", "recompute")
        if policy != "recompute":
            logger.warning(
                "kvtc: kv_load_failure_policy is %r; a chunk that fails to load fails its request. "
                "Set kv_transfer_config.kv_load_failure_policy='recompute' to recompute it instead",
                policy,
            )
        self._session()  # handshake now if the sidecar is up; later otherwise

    # ---------------------------------------------------------------- vLLM hooks

    def get_num_new_matched_tokens(
        self, request: Request, num_computed_tokens: int
    ) -> tuple[int, bool]:
        """Tokens beyond ``num_computed_tokens`` that stored chunks can fill, and whether they
        load asynchronously (``load_async``)."""
        state = self._state(request)
        if state is None:
            return 0, False
        state.lookup_computed = num_computed_tokens
        keys = self._keys(state)
        if not keys:
            return 0, False
        try:
            hits = self.client.lookup(keys)
        except KvtcSidecarError as e:
            self._log.warning("lookup", "kvtc: lookup failed, treating as a miss: %s", e)
            return 0, False
        if state.load_cap is not None:
            hits = min(hits, state.load_cap)
        state.stored = max(state.stored, hits)
        # vLLM must compute at least one token itself; hits end on a block boundary.
        limit = (request.num_tokens - 1) // self.block_size * self.block_size
        matched = min(hits * self.chunk_tokens, limit)
        n = max(0, matched - num_computed_tokens)
        return n, self.load_async and n > 0

    def update_state_after_alloc(
        self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int
    ) -> None:
        state = self._state(request)
        if state is None:
            return
        state.block_ids = list(blocks.get_block_ids()[0])
        if num_external_tokens <= 0 or state.chain is None:
            # Nothing to load (for an async load: its second call, once the KV has arrived).
            self._pending_loads.pop(request.request_id, None)
            return
        c, bs = self.chunk_tokens, self.block_size
        lo = state.lookup_computed
        hi = lo + num_external_tokens
        first = lo // c
        last = -(-hi // c)
        self._pending_loads[request.request_id] = LoadSpec(
            req_id=request.request_id,
            keys=state.chain.keys[first:last],
            first_chunk=first,
            token_lo=lo,
            token_hi=hi,
            block_ids=state.block_ids[first * c // bs : -(-hi // bs)],
            asynchronous=self.load_async,
        )

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KvtcConnectorMetadata:
        meta = KvtcConnectorMetadata(chunk_tokens=self.chunk_tokens, block_size=self.block_size)
        meta.saves.extend(self._finish_saves)
        self._finish_saves = []

        # Preempted since the last step: the blocks are gone. (A request preempted and resumed
        # within one schedule() is in resumed_req_ids too; its load, if any, is for the new
        # blocks, set below.)
        for req_id in scheduler_output.preempted_req_ids or ():
            state = self._reqs.get(req_id)
            if state is not None:
                state.block_ids = []
                state.loading = None
        for new in scheduler_output.scheduled_new_reqs:
            state = self._reqs.get(new.req_id)
            if state is not None:
                state.block_ids = list(new.block_ids[0])
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            state = self._reqs.get(req_id)
            new_ids = cached.new_block_ids[i]
            if state is None:
                continue
            if req_id in cached.resumed_req_ids:
                state.block_ids = list(new_ids[0]) if new_ids else []
            elif new_ids is not None:
                state.block_ids.extend(new_ids[0])

        # Every load decided this step: sync ones are scheduled, async ones wait for their KV.
        for req_id, load in self._pending_loads.items():
            state = self._reqs.get(req_id)
            if state is None:
                continue
            meta.loads.append(load)
            state.loading = load
            if load.asynchronous:
                self.recving.add(req_id)
        self._pending_loads = {}

        c, bs = self.chunk_tokens, self.block_size
        for req_id, scheduled in scheduler_output.num_scheduled_tokens.items():
            state = self._reqs.get(req_id)
            if state is None:
                continue
            request = state.request
            tokens = request.all_token_ids
            computed = min(request.num_computed_tokens + scheduled, len(tokens))
            prompt_chunks = request.num_prompt_tokens // c
            done = min(computed // c, prompt_chunks)
            if done <= state.stored:
                continue
            keys = self._keys(state)
            if len(keys) < done:
                continue
            first = state.stored
            meta.saves.append(
                SaveSpec(
                    req_id=req_id,
                    keys=keys[first:done],
                    first_chunk=first,
                    block_ids=state.block_ids[first * c // bs : done * c // bs],
                    window_tokens=[
                        self.window_tokens if i == prompt_chunks - 1 else 0
                        for i in range(first, done)
                    ],
                )
            )
            state.stored = done
        return meta

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, None]:
        """Queues the save of the generated tokens' full chunks; True holds the blocks for it."""
        state = self._reqs.pop(request.request_id, None)
        self._pending_loads.pop(request.request_id, None)
        if state is None:
            return False, None
        if request.request_id in self.recving:
            # Finished (aborted) while its load is in flight: vLLM holds the blocks until the
            # worker reports finished_recving, and nothing past the lookup was computed.
            return False, None
        c, bs = self.chunk_tokens, self.block_size
        tokens = request.all_token_ids
        computed = min(request.num_computed_tokens, len(tokens), len(block_ids) * bs)
        done = computed // c
        if done <= state.stored:
            return False, None
        keys = self._keys(state)
        if len(keys) < done:
            return False, None
        first = state.stored
        self._finish_saves.append(
            SaveSpec(
                req_id=request.request_id,
                keys=keys[first:done],
                first_chunk=first,
                block_ids=list(block_ids[first * c // bs : done * c // bs]),
                window_tokens=[0] * (done - first - 1) + [self.window_tokens],
                held=True,
            )
        )
        self.held.add(request.request_id)
        return True, None

    def update_connector_output(self, connector_output: KVConnectorOutput) -> None:
        for req_id in connector_output.finished_sending or ():
            self.held.discard(req_id)
        invalid = connector_output.invalid_block_ids
        if invalid:
            self._note_load_errors(invalid)
        for req_id in connector_output.finished_recving or ():
            self.recving.discard(req_id)
            state = self._reqs.get(req_id)
            if state is not None:
                state.loading = None

    def _note_load_errors(self, invalid: set[int]) -> None:
        """Chunks whose blocks failed to load: never offered to the request again, and saved
        again once it has recomputed them (the record may be lost or corrupt)."""
        c, bs = self.chunk_tokens, self.block_size
        for state in self._reqs.values():
            load = state.loading
            if load is None:
                continue
            bad = next((j for j, b in enumerate(load.block_ids) if b in invalid), None)
            if bad is None:
                continue
            chunk = (load.first_chunk * c // bs + bad) * bs // c
            state.load_cap = chunk if state.load_cap is None else min(state.load_cap, chunk)
            state.stored = min(state.stored, chunk)
            logger.debug("kvtc: load of %s failed from chunk %d", load.req_id, chunk)

    def shutdown(self) -> None:
        self.client.close()

    # ---------------------------------------------------------------- internals

    def _session(self) -> HelloResult | None:
        """The handshake result, shaking hands first if needed (at most once per retry_ms)."""
        current = self.client.hello_result
        if current is not None and current is not self._hello:
            # First hello, or the client repeated it after a sidecar restart.
            if self._hello is not None and (
                current.calibration_id != self._hello.calibration_id
                or current.model_fingerprint != self._hello.model_fingerprint
            ):
                logger.warning("kvtc: the sidecar's calibration changed; forgetting chunk keys")
                for state in self._reqs.values():
                    state.chain = None
                    state.stored = 0
            self._hello = current
        if self._hello is not None:
            return self._hello
        now = time.monotonic()
        if now < self._next_hello:
            return None
        self._next_hello = now + self.settings.retry_ms / 1000
        try:
            self._hello = self.client.hello(self.compat)
        except KvtcSidecarError as e:
            self._log.warning(
                "hello",
                "kvtc: no session with the sidecar at %s, every lookup is a miss until it "
                "answers: %s",
                self.settings.endpoint,
                e,
            )
            return None
        logger.info(
            "kvtc: scheduler connected to %s (%s, calibration %s, ratios %s)",
            self.settings.endpoint,
            self._hello.sidecar,
            self._hello.calibration_id,
            self._hello.ratios,
        )
        return self._hello

    def _state(self, request: Request) -> _RequestState | None:
        """The request's state; None for requests kvtc must not cache (see ``_cacheable``)."""
        state = self._reqs.get(request.request_id)
        if state is None:
            if not _cacheable(request):
                return None
            state = _RequestState(request=request)
            self._reqs[request.request_id] = state
        return state

    def _keys(self, state: _RequestState) -> list[str]:
        """Keys of the request's full chunks so far; [] while there is no session."""
        hello = self._session()
        if hello is None:
            return []
        if state.chain is None:
            state.chain = ChunkKeyChain(
                self.chunk_tokens, hello.calibration_id, hello.model_fingerprint
            )
        return state.chain.extend(state.request.all_token_ids)
