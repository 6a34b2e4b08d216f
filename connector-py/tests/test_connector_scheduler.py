"""The connector inside vLLM's real Scheduler, against a real sidecar process.

The scheduler-role connector is built by vLLM's Scheduler from the kv_transfer_config. Where a
test needs the worker side too, :class:`vllm_utils.EngineLoop` runs the engine's step with the
real worker-role connector on KV tensors from vLLM's own allocator; only the forward pass is
replaced by writing a known pattern into the scheduled tokens' slots.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from vllm_utils import (
    BLOCK_SIZE,
    CHUNK_TOKENS,
    EngineLoop,
    Sidecar,
    compat,
    kv_pattern,
    make_kv_cache_config,
    make_request,
    make_scheduler,
    make_vllm_config,
    make_worker_connector,
    model_runner_output,
    prompt_tokens,
    require_inputs,
    running_sidecar,
    tensor_bytes,
)

from kvtc_connector.client import SaveItem, SidecarClient
from kvtc_connector.keys import chunk_keys
from kvtc_connector.metadata import KvtcConnectorMetadata, KvtcSettings, LoadSpec, SaveSpec
from kvtc_connector.worker import page_view, probe_page_layout

C = CHUNK_TOKENS
PATTERN = kv_pattern(2048)


@pytest.fixture(scope="module")
def sidecar() -> Iterator[Sidecar]:
    require_inputs()
    with running_sidecar() as s:
        yield s


@pytest.fixture(scope="module")
def seed(sidecar: Sidecar) -> Iterator[SidecarClient]:
    """The test's own client, to pre-fill and inspect the sidecar's stores."""
    with SidecarClient(sidecar.endpoint, timeout_ms=20000) as c:
        c.hello(compat())
        yield c


def keys_of(seed: SidecarClient, tokens: list[int]) -> list[str]:
    hello = seed.hello_result
    assert hello is not None
    return chunk_keys(tokens, C, hello.calibration_id, hello.model_fingerprint)


def prefill(seed: SidecarClient, tokens: list[int], chunks: int) -> list[str]:
    """Stores the first ``chunks`` chunks of ``tokens`` raw (lossless): ``PATTERN`` at their
    positions, as the model would have cached them."""
    keys = keys_of(seed, tokens)
    for i in range(chunks):
        kv = PATTERN[i * C : (i + 1) * C]
        item = SaveItem(
            keys[i], tensor_bytes(kv[:, 0]), tensor_bytes(kv[:, 1]), i * C, C, "bfloat16", None, C
        )
        seed.save(item)
    return keys


def meta_of(scheduler_output: Any) -> KvtcConnectorMetadata:
    meta = scheduler_output.kv_connector_metadata
    assert isinstance(meta, KvtcConnectorMetadata)
    return meta


def blocks_of(scheduler: Any, req_id: str) -> list[int]:
    return list(scheduler.kv_cache_manager.get_block_ids(req_id)[0])


def finish_prefill(scheduler: Any, so: Any) -> None:
    scheduler.update_from_output(so, model_runner_output(scheduler, so))


def new_scheduler(sidecar: Sidecar, num_blocks: int = 48, **extra: Any) -> Any:
    return make_scheduler(
        make_vllm_config(sidecar.endpoint, num_blocks=num_blocks, **extra),
        make_kv_cache_config(num_blocks),
    )


def new_loop(
    sidecar: Sidecar, num_blocks: int = 32, layout: str = "LBHNC", **extra: Any
) -> EngineLoop:
    config = make_vllm_config(sidecar.endpoint, num_blocks=num_blocks, **extra)
    kv_config = make_kv_cache_config(num_blocks, layout=layout)
    scheduler = make_scheduler(config, kv_config)
    worker = make_worker_connector(config, kv_config, layout)
    return EngineLoop(scheduler, worker, PATTERN)


def gate_loads(loop: EngineLoop, sidecar: Sidecar) -> threading.Event:
    """Gives the worker's loader thread a real client whose loads wait for the returned event,
    so that a test can hold a load in flight across engine steps."""
    gate = threading.Event()
    client = SidecarClient(sidecar.endpoint, timeout_ms=5000)
    real = client.load_many

    def gated(items: Any) -> Any:
        assert gate.wait(60), "the test never opened the gate"
        return real(items)

    client.load_many = gated  # type: ignore[method-assign]
    loop.worker.connector_worker._load_client = client
    return gate


MODES = pytest.mark.parametrize("load_async", [True, False], ids=["async", "sync"])


def admit(scheduler: Any, req_id: str, load_async: bool) -> tuple[Any, Any]:
    """Schedules a request that hits the sidecar: (the step that decided the load, the step that
    computes its first tokens). Async: the request waits for its KV in between and the (fake)
    worker reports it in finished_recving."""
    from vllm.v1.request import RequestStatus

    first = scheduler.schedule()
    if not load_async:
        return first, first
    request = scheduler.requests[req_id]
    assert first.num_scheduled_tokens == {}
    assert request.status == RequestStatus.WAITING_FOR_REMOTE_KVS
    (load,) = meta_of(first).loads
    assert load.asynchronous and load.req_id == req_id
    # vLLM counts the tokens being loaded as computed already, and waits.
    assert request.num_computed_tokens == load.token_hi
    waiting = scheduler.schedule()
    assert waiting.num_scheduled_tokens == {} and meta_of(waiting).loads == []
    scheduler.update_from_output(waiting, model_runner_output(scheduler, waiting))
    assert request.status == RequestStatus.WAITING_FOR_REMOTE_KVS  # not reported yet
    done = scheduler.schedule()
    scheduler.update_from_output(
        done, model_runner_output(scheduler, done, finished_recving={req_id})
    )
    assert scheduler.connector.connector_scheduler.recving == set()
    second = scheduler.schedule()
    (new,) = second.scheduled_new_reqs
    assert (new.req_id, new.num_computed_tokens) == (req_id, load.token_hi)
    return first, second


# ------------------------------------------------------------------------------ lookups


def test_miss_computes_everything_and_saves_the_prompt_chunks(sidecar: Sidecar) -> None:
    scheduler = new_scheduler(sidecar)
    scheduler.add_request(make_request("miss", prompt_tokens(700, 1)))
    so = scheduler.schedule()
    meta = meta_of(so)
    assert so.num_scheduled_tokens == {"miss": 700}
    assert meta.loads == []
    blocks = blocks_of(scheduler, "miss")
    # Two full prompt chunks, computed by this step: saved now. The default 128-token window is
    # half a 256-token chunk, more than the policy's quarter: no window (sinks only).
    assert len(meta.saves) == 1
    save = meta.saves[0]
    assert (save.req_id, save.first_chunk, save.held) == ("miss", 0, False)
    assert save.block_ids == blocks[: 2 * C // BLOCK_SIZE]
    assert save.window_tokens == [0, 0]
    assert len(save.keys) == 2
    # A 64-token window is a quarter of the chunk: the newest stored chunk keeps it.
    windowed = new_scheduler(sidecar, window_tokens=64)
    windowed.add_request(make_request("miss64", prompt_tokens(700, 1)))
    assert [s.window_tokens for s in meta_of(windowed.schedule()).saves] == [[0, 64]]


def test_window_policy() -> None:
    def window(**extra: Any) -> int:
        return KvtcSettings.from_extra_config(extra).stored_window_tokens

    assert window() == 0  # 128 of 256: over a quarter of the chunk
    assert window(chunk_tokens=512) == 128  # the paper's window where it is cheap
    assert window(chunk_tokens=256, window_tokens=64) == 64
    assert window(window_chunk_factor=2) == 128
    assert window(window_chunk_factor=1, window_tokens=1000) == 256  # at most the chunk
    assert window(chunk_tokens=4096, window_tokens=0) == 0


@MODES
def test_hit_loads_the_stored_prefix(
    sidecar: Sidecar, seed: SidecarClient, load_async: bool
) -> None:
    tokens = prompt_tokens(3 * C + 50, 2)
    keys = prefill(seed, tokens, 3)
    scheduler = new_scheduler(sidecar, load_async=load_async)
    scheduler.add_request(make_request("hit", tokens))
    decided, so = admit(scheduler, "hit", load_async)
    assert so.num_scheduled_tokens == {"hit": 50}
    assert scheduler.requests["hit"].num_computed_tokens == 3 * C + 50
    blocks = blocks_of(scheduler, "hit")
    assert meta_of(decided).loads == [
        LoadSpec("hit", keys[:3], 0, 0, 3 * C, blocks[: 3 * C // BLOCK_SIZE], load_async),
    ]
    if load_async:
        assert meta_of(so).loads == []  # loaded once, not again when it runs
    assert meta_of(so).saves == []  # every full prompt chunk is stored already


def test_hit_leaves_one_token_to_compute(sidecar: Sidecar, seed: SidecarClient) -> None:
    tokens = prompt_tokens(2 * C, 3)  # exactly two chunks, both stored
    keys = prefill(seed, tokens, 2)
    scheduler = new_scheduler(sidecar)
    scheduler.add_request(make_request("cap", tokens))
    decided, so = admit(scheduler, "cap", True)
    # vLLM must compute at least one token: the hit stops at the last block boundary before it.
    assert so.num_scheduled_tokens == {"cap": BLOCK_SIZE}
    blocks = blocks_of(scheduler, "cap")
    assert meta_of(decided).loads == [
        LoadSpec("cap", keys[:2], 0, 0, 2 * C - BLOCK_SIZE, blocks[:3], True)
    ]
    assert meta_of(so).saves == []


def test_partial_hit(sidecar: Sidecar, seed: SidecarClient) -> None:
    tokens = prompt_tokens(700, 4)
    keys = prefill(seed, tokens, 1)  # first chunk stored, second not
    assert seed.lookup(keys) == 1
    scheduler = new_scheduler(sidecar)
    scheduler.add_request(make_request("partial", tokens))
    decided, so = admit(scheduler, "partial", True)
    assert so.num_scheduled_tokens == {"partial": 700 - C}
    blocks = blocks_of(scheduler, "partial")
    assert meta_of(decided).loads == [LoadSpec("partial", keys[:1], 0, 0, C, blocks[:2], True)]
    # Only the chunk the sidecar lacks is saved: never the one that matched.
    assert meta_of(so).saves == [SaveSpec("partial", keys[1:2], 1, blocks[2:4], [0])]


def test_sidecar_down_at_scheduler_start(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    require_inputs()
    caplog.set_level(logging.WARNING, logger="kvtc_connector")
    config = make_vllm_config(f"ipc://{tmp_path}/nobody.sock", num_blocks=32, timeout_ms=200)
    scheduler = make_scheduler(config, make_kv_cache_config(32))  # no exception
    for i in range(3):
        scheduler.add_request(make_request(f"down{i}", prompt_tokens(600, 10 + i)))
        so = scheduler.schedule()
        meta = meta_of(so)
        assert so.num_scheduled_tokens[f"down{i}"] == 600  # 0 matched: all computed
        assert meta.loads == [] and meta.saves == []
        finish_prefill(scheduler, so)
    warnings = [r for r in caplog.records if "no session with the sidecar" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited


# ------------------------------------------------------------------------------ with the worker


def test_save_then_load_through_the_worker(sidecar: Sidecar, seed: SidecarClient) -> None:
    W = 64  # a quarter of the chunk: the window policy keeps it on the newest stored chunk
    loop = new_loop(sidecar, window_tokens=W)
    scheduler = loop.scheduler
    first = prompt_tokens(3 * C + 30, 5)
    scheduler.add_request(make_request("writer", first, max_tokens=2))
    step = loop.step()
    assert step.metadata.saves[0].window_tokens == [0, 0, W]
    while scheduler.requests:
        loop.step()
    stats = loop.worker.connector_worker.stats
    assert (stats.chunks_saved, stats.save_errors) == (3, 0)
    keys = keys_of(seed, first)
    assert seed.lookup(keys) == 3
    # The worker gathered token-major [tokens, layers, heads, dim] from the paged blocks: the raw
    # window (newest W tokens of the last prompt chunk) and the 4 sink tokens are exact.
    last = seed.load(keys[2], C, "bfloat16")
    k = torch.frombuffer(bytearray(last.keys), dtype=torch.bfloat16).view(C, 30, 3, 64)
    v = torch.frombuffer(bytearray(last.values), dtype=torch.bfloat16).view(C, 30, 3, 64)
    assert torch.equal(k[C - W :], PATTERN[3 * C - W : 3 * C, 0])
    assert torch.equal(v[C - W :], PATTERN[3 * C - W : 3 * C, 1])
    assert not torch.equal(k[: C - W], PATTERN[2 * C : 3 * C - W, 0])  # the rest is coded
    sink = seed.load(keys[0], C, "bfloat16")
    k0 = torch.frombuffer(bytearray(sink.keys), dtype=torch.bfloat16).view(C, 30, 3, 64)
    assert torch.equal(k0[:4], PATTERN[:4, 0])

    # A second request shares the first three chunks: the worker loads them into its blocks.
    second = first[: 3 * C] + prompt_tokens(40, 6)
    scheduler.add_request(make_request("reader", second, max_tokens=1))
    step = loop.step()
    (load,) = step.metadata.loads
    assert (load.token_lo, load.token_hi, load.asynchronous) == (0, 3 * C, True)
    assert step.scheduler_output.num_scheduled_tokens == {}  # waits for its KV
    assert step.finished_recving == {"reader"}
    assert step.invalid_block_ids == set()
    assert loop.worker.connector_worker.stats.tokens_loaded == 3 * C
    got = loop.read_blocks(load.block_ids)
    assert torch.equal(got[3 * C - W :, :], PATTERN[3 * C - W : 3 * C])
    assert torch.equal(got[:4], PATTERN[:4])
    # The coded tokens come back close to what was saved (random data is the codec's worst case).
    err = (got[4 : 2 * C].float() - PATTERN[4 : 2 * C].float()).norm()
    assert err < PATTERN[4 : 2 * C].float().norm()
    while scheduler.requests:
        loop.step()


def test_raw_records_scatter_exactly_into_strided_layers(
    sidecar: Sidecar, seed: SidecarClient
) -> None:
    # Block-outermost allocation: every layer's view is strided (not contiguous).
    loop = new_loop(sidecar, layout="BLHNC")
    layer = loop.worker.connector_worker.layers[0]
    assert not layer.pages.is_contiguous()
    tokens = prompt_tokens(2 * C + 10, 7)
    prefill(seed, tokens, 2)
    loop.scheduler.add_request(make_request("strided", tokens, max_tokens=1))
    step = loop.step()
    (load,) = step.metadata.loads
    got = loop.read_blocks(load.block_ids)
    assert torch.equal(got, PATTERN[: 2 * C])
    while loop.scheduler.requests:
        loop.step()


def test_gather_reads_what_vllms_kernel_wrote(sidecar: Sidecar) -> None:
    """The page layout is the CPU attention kernel's (keys transposed with the ``vec`` ISA): the
    worker must read exactly the KV that vLLM's own cache writer stored."""
    from vllm._custom_ops import cpu_attn_reshape_and_cache

    loop = new_loop(sidecar, num_blocks=8, layout="BLHNC")
    worker = loop.worker.connector_worker
    blocks = [5, 2]  # any order: the block table of some request
    tokens = 2 * BLOCK_SIZE
    slots = torch.tensor([b * BLOCK_SIZE + i for b in blocks for i in range(BLOCK_SIZE)])
    caches = loop.worker.connector_worker.layers
    isa = worker.page_layout.isa
    for i, layer in enumerate(caches):
        kv = layer.pages.as_strided(
            (layer.pages.shape[0], 3, BLOCK_SIZE, 128), (*layer.pages.stride()[:2], 128, 1)
        )
        key_cache, value_cache = kv.view(kv.shape[0], 3, 2 * BLOCK_SIZE, 64).chunk(2, dim=2)
        cpu_attn_reshape_and_cache(
            PATTERN[:tokens, 0, i].contiguous(),
            PATTERN[:tokens, 1, i].contiguous(),
            key_cache,
            value_cache,
            slots,
            isa,
        )
    keys, values = worker.gather(blocks)
    assert torch.equal(keys, PATTERN[:tokens, 0])
    assert torch.equal(values, PATTERN[:tokens, 1])
    # And scatter is gather's inverse.
    worker.scatter(blocks, values, keys)
    assert torch.equal(worker.gather(blocks)[0], PATTERN[:tokens, 1])


def test_held_blocks_are_freed_after_finished_sending(
    sidecar: Sidecar, seed: SidecarClient
) -> None:
    loop = new_loop(sidecar)
    scheduler = loop.scheduler
    free_before = loop.free_blocks()
    # 500 prompt tokens: chunk 0 is saved after the prefill; chunk 1 fills up while decoding.
    tokens = prompt_tokens(500, 8)
    scheduler.add_request(make_request("held", tokens, max_tokens=20))
    first = loop.step()
    assert [(s.first_chunk, len(s.keys)) for s in first.metadata.saves] == [(0, 1)]
    held: list[Any] = []
    while "held" in scheduler.requests and not scheduler.requests["held"].is_finished():
        loop.step()
    # Finished, but its blocks are held for the pending save of chunk 1.
    request = scheduler.requests["held"]
    assert request.is_finished()
    connector = scheduler.connector.connector_scheduler
    assert connector.held == {"held"}
    assert loop.free_blocks() < free_before
    block_ids = blocks_of(scheduler, "held")

    step = loop.step(before_output=lambda r: held.append(r))
    (save,) = step.metadata.saves
    assert (save.req_id, save.first_chunk, save.held) == ("held", 1, True)
    assert save.window_tokens == [0]  # 128 of 256 tokens: over the window policy's quarter
    assert save.block_ids == block_ids[2:4]
    assert step.finished_sending == {"held"}
    # The worker reported it: vLLM freed the blocks and forgot the request.
    assert "held" not in scheduler.requests
    assert connector.held == set()
    assert loop.free_blocks() == free_before
    assert seed.lookup(keys_of(seed, list(request.all_token_ids))) == 2


def test_request_finishing_without_pending_save_frees_at_once(sidecar: Sidecar) -> None:
    loop = new_loop(sidecar)
    scheduler = loop.scheduler
    scheduler.add_request(make_request("quick", prompt_tokens(600, 9), max_tokens=2))
    while scheduler.requests:
        step = loop.step()
        assert step.finished_sending is None
    assert scheduler.connector.connector_scheduler.held == set()


def test_preemption_reissues_loads_and_never_saves_twice(
    sidecar: Sidecar, seed: SidecarClient
) -> None:
    loop = new_loop(sidecar)
    scheduler = loop.scheduler
    tokens = prompt_tokens(2 * C + 100, 11)
    scheduler.add_request(make_request("pre", tokens, max_tokens=10))
    step = loop.step()
    assert [(s.first_chunk, len(s.keys)) for s in step.metadata.saves] == [(0, 2)]
    loop.step()
    # Preempt every running request (vLLM frees their blocks and requeues them).
    scheduler.reset_prefix_cache(reset_running_requests=True)
    assert scheduler.requests["pre"].num_computed_tokens == 0
    saves: list[SaveSpec] = []
    loads: list[LoadSpec] = []
    while scheduler.requests:
        step = loop.step()
        saves += step.metadata.saves
        loads += step.metadata.loads
        assert step.invalid_block_ids == set()
    # Resumed: the chunks saved before the preemption are loaded, not computed or saved again.
    (load,) = loads
    assert (load.req_id, load.first_chunk, load.token_lo, load.token_hi) == ("pre", 0, 0, 2 * C)
    assert load.keys == keys_of(seed, tokens)[:2]
    assert saves == []


@MODES
def test_load_failure_is_reported_and_recomputed(
    sidecar: Sidecar, seed: SidecarClient, load_async: bool
) -> None:
    loop = new_loop(sidecar, load_async=load_async)
    scheduler = loop.scheduler
    free_before = loop.free_blocks()
    tokens = prompt_tokens(3 * C + 20, 12 if load_async else 13)
    keys = prefill(seed, tokens, 3)
    scheduler.add_request(make_request("lost", tokens, max_tokens=2))
    # The record of chunk 1 disappears between the lookup and the load.
    original = scheduler.connector.connector_scheduler.update_state_after_alloc

    def drop_after_alloc(request: Any, blocks: Any, n: int) -> None:
        original(request, blocks, n)
        assert seed.delete(keys[1])

    scheduler.connector.connector_scheduler.update_state_after_alloc = drop_after_alloc
    step = loop.step()
    scheduler.connector.connector_scheduler.update_state_after_alloc = original
    (load,) = step.metadata.loads
    assert load.asynchronous == load_async
    assert step.invalid_block_ids == set(load.block_ids[2:4])
    assert step.finished_recving == ({"lost"} if load_async else None)
    stats = loop.worker.connector_worker.stats
    assert (stats.chunks_loaded, stats.load_errors) == (2, 1)
    # vLLM rolled back to the valid prefix (chunk 0) and recomputes from there.
    assert scheduler.requests["lost"].num_computed_tokens == C
    step = loop.step()
    assert step.scheduler_output.num_scheduled_tokens == {"lost": 2 * C + 20}
    assert step.metadata.loads == []
    # The chunks it recomputed are saved again: the lost record is replaced.
    blocks = blocks_of(scheduler, "lost")
    assert step.metadata.saves == [SaveSpec("lost", keys[1:3], 1, blocks[2:6], [0, 0])]
    while scheduler.requests:
        loop.step()
    assert seed.lookup(keys) == 3
    assert loop.free_blocks() == free_before


def test_unreachable_sidecar_during_async_load_recomputes_once(
    sidecar: Sidecar, seed: SidecarClient, tmp_path: object
) -> None:
    loop = new_loop(sidecar)
    scheduler = loop.scheduler
    free_before = loop.free_blocks()
    tokens = prompt_tokens(2 * C + 60, 14)
    prefill(seed, tokens, 2)
    # The loader's connection cannot reach a sidecar (the lookup's could): every block fails.
    loop.worker.connector_worker._load_client = SidecarClient(
        f"ipc://{tmp_path}/nobody.sock", timeout_ms=200
    )
    scheduler.add_request(make_request("down", tokens, max_tokens=2))
    step = loop.step()
    (load,) = step.metadata.loads
    assert step.invalid_block_ids == set(load.block_ids) and len(load.block_ids) == 4
    assert step.finished_recving == {"down"}
    request = scheduler.requests["down"]
    assert request.num_computed_tokens == 0
    # No valid prefix: vLLM freed the blocks and looks the request up again. The sidecar still
    # lists both chunks, but the connector does not offer them again: no load-fail loop.
    step = loop.step()
    assert step.metadata.loads == []
    assert step.scheduler_output.num_scheduled_tokens == {"down": 2 * C + 60}
    assert step.invalid_block_ids == set()
    while scheduler.requests:
        loop.step()
    assert loop.free_blocks() == free_before


def test_async_load_runs_beside_other_requests_then_resumes(
    sidecar: Sidecar, seed: SidecarClient
) -> None:
    from vllm.v1.request import RequestStatus

    loop = new_loop(sidecar)
    scheduler = loop.scheduler
    free_before = loop.free_blocks()
    gate = gate_loads(loop, sidecar)
    tokens = prompt_tokens(3 * C + 50, 15)
    prefill(seed, tokens, 3)
    scheduler.add_request(make_request("busy", prompt_tokens(200, 16), max_tokens=20))
    loop.step()
    scheduler.add_request(make_request("hit", tokens, max_tokens=2))
    step = loop.step(wait_loads=False)
    (load,) = step.metadata.loads
    assert load.asynchronous and (load.token_lo, load.token_hi) == (0, 3 * C)
    request = scheduler.requests["hit"]
    # The load is in flight: the other request keeps decoding, "hit" waits with its blocks.
    for _ in range(3):
        step = loop.step(wait_loads=False)
        assert step.scheduler_output.num_scheduled_tokens == {"busy": 1}
        assert step.finished_recving is None
        assert request.status == RequestStatus.WAITING_FOR_REMOTE_KVS
    assert blocks_of(scheduler, "hit")[:6] == load.block_ids
    gate.set()
    step = loop.step()
    assert step.finished_recving == {"hit"} and step.invalid_block_ids == set()
    assert torch.equal(loop.read_blocks(load.block_ids), PATTERN[: 3 * C])  # raw records
    step = loop.step()
    # It runs with the loaded tokens counted as computed: only the 50 others are scheduled.
    assert step.scheduler_output.num_scheduled_tokens == {"busy": 1, "hit": 50}
    (new,) = step.scheduler_output.scheduled_new_reqs
    assert (new.req_id, new.num_computed_tokens) == ("hit", 3 * C)
    assert step.metadata.loads == []
    while scheduler.requests:
        loop.step()
    assert loop.free_blocks() == free_before
    assert loop.worker.connector_worker.stats.tokens_loaded == 3 * C


def test_abort_during_load_holds_the_blocks_until_the_worker_lets_go(
    sidecar: Sidecar, seed: SidecarClient
) -> None:
    from vllm.v1.request import RequestStatus

    loop = new_loop(sidecar)
    scheduler = loop.scheduler
    connector = scheduler.connector.connector_scheduler
    worker = loop.worker.connector_worker
    free_before = loop.free_blocks()
    gate = gate_loads(loop, sidecar)
    tokens = prompt_tokens(2 * C + 10, 17)
    prefill(seed, tokens, 2)
    scheduler.add_request(make_request("gone", tokens, max_tokens=2))
    step = loop.step(wait_loads=False)
    (load,) = step.metadata.loads
    before = loop.read_blocks(load.block_ids)
    scheduler.finish_requests("gone", RequestStatus.FINISHED_ABORTED)
    # Aborted mid-load: vLLM keeps the request's blocks for the worker, nothing is saved.
    assert "gone" in scheduler.requests
    assert loop.free_blocks() == free_before - len(load.block_ids)
    assert connector.recving == {"gone"} and connector.held == set()
    step = loop.step(wait_loads=False)  # the worker learns of the abort; the load is stuck
    assert step.scheduler_output.finished_req_ids == {"gone"}
    assert step.finished_recving is None
    assert loop.free_blocks() == free_before - len(load.block_ids)
    gate.set()
    step = loop.step()
    # Reported once the thread let go of the blocks; it wrote nothing after the abort, and
    # an aborted load reports no errors.
    assert step.finished_recving == {"gone"} and step.invalid_block_ids == set()
    assert step.metadata.saves == []
    assert "gone" not in scheduler.requests
    assert loop.free_blocks() == free_before
    assert connector.recving == set()
    assert torch.equal(loop.read_blocks(load.block_ids), before)
    assert worker.stats.tokens_loaded == 0
    loop.step()  # nothing left to report
    assert loop.free_blocks() == free_before


def test_preemption_during_an_inflight_load(sidecar: Sidecar, seed: SidecarClient) -> None:
    """13 usable blocks: two running requests and one loading fill them; one running request
    is preempted while the load is in flight. The loading request keeps its blocks and gets the
    right KV; the preempted one resumes through an async load of the chunk it saved."""
    loop = new_loop(sidecar, num_blocks=14)
    scheduler = loop.scheduler
    free_before = loop.free_blocks()
    gate = gate_loads(loop, sidecar)
    tokens = prompt_tokens(3 * C + 50, 18)
    prefill(seed, tokens, 3)
    late_tokens = prompt_tokens(382, 20)
    scheduler.add_request(make_request("run", prompt_tokens(382, 19), max_tokens=12))
    loop.step(wait_loads=False)
    scheduler.add_request(make_request("load", tokens, max_tokens=3))
    step = loop.step(wait_loads=False)
    (load,) = step.metadata.loads
    load_blocks = blocks_of(scheduler, "load")
    scheduler.add_request(make_request("late", late_tokens, max_tokens=12))
    steps: list[Any] = []

    preempted = False
    for _ in range(10):
        step = loop.step(wait_loads=False)
        steps.append(step)
        assert step.finished_recving is None
        if "late" in step.scheduler_output.preempted_req_ids:
            preempted = True
            break
    assert preempted
    assert scheduler.requests["late"].num_computed_tokens == 0
    assert blocks_of(scheduler, "load") == load_blocks  # untouched by the preemption
    gate.set()
    resumed = None
    late_loads: list[LoadSpec] = []
    while scheduler.requests:
        step = loop.step()
        assert step.invalid_block_ids == set()
        if step.finished_recving and "load" in step.finished_recving:
            assert torch.equal(loop.read_blocks(load.block_ids), PATTERN[: 3 * C])
        late_loads += [x for x in step.metadata.loads if x.req_id == "late"]
        cached = step.scheduler_output.scheduled_cached_reqs
        if "late" in cached.resumed_req_ids and resumed is None:
            resumed = cached.num_computed_tokens[cached.req_ids.index("late")]
        assert all(s.req_id != "late" or s.first_chunk > 0 for s in step.metadata.saves)
    # "late" saved chunk 0 at its prefill, so it resumed by loading it, asynchronously.
    assert [(x.token_lo, x.token_hi, x.asynchronous) for x in late_loads] == [(0, C, True)]
    assert resumed == C
    assert loop.free_blocks() == free_before


def test_page_layouts() -> None:
    with pytest.raises(NotImplementedError, match="paged KV layout"):
        page_view("model.layers.0.self_attn.attn", torch.zeros(2, 4, 3, 16, 64), 3, 64)
    with pytest.raises(NotImplementedError, match="paged KV layout"):  # rows not contiguous
        page_view("x", torch.zeros(4, 3, 128, 256)[:, :, :, :128], 3, 64)
    assert page_view("x", torch.zeros(4, 3, 16, 128), 3, 64).shape == (4, 3, 16 * 128)
    # With the vec kernel a page holds the keys transposed, [dim, token], then the values.
    layout = probe_page_layout(3, 32, 64, torch.bfloat16, "vec")
    assert layout.key_pos[:3].tolist() == [0, 32, 64]  # token 0, dims 0..2
    assert layout.key_pos[64:66].tolist() == [1, 33]  # token 1, dims 0..1
    assert layout.value_pos[:3].tolist() == [2048, 2049, 2050]


def test_caches_on_other_devices_are_refused(sidecar: Sidecar) -> None:
    """CPU caches travel as frames, CUDA caches by IPC (tests/test_gpu_ipc.py); others refused."""
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole

    from kvtc_connector.connector import KvtcConnector

    config = make_vllm_config(sidecar.endpoint, num_blocks=4)
    connector = KvtcConnector(config, KVConnectorRole.WORKER, make_kv_cache_config(4))
    caches = {
        f"model.layers.{i}.self_attn.attn": torch.empty(4, 3, 128, 128, device="meta")
        for i in range(30)
    }
    with pytest.raises(NotImplementedError, match="only CPU and CUDA caches"):
        connector.register_kv_caches(caches)


def test_settings_are_validated(sidecar: Sidecar) -> None:
    assert KvtcSettings.from_extra_config({}) == KvtcSettings()
    with pytest.raises(ValueError, match="Unknown kv_connector_extra_config keys"):
        KvtcSettings.from_extra_config({"endpont": "ipc:///x"})
    with pytest.raises(ValueError, match="integer >= 1"):
        KvtcSettings.from_extra_config({"timeout_ms": "5000"})
    with pytest.raises(ValueError, match="number >= 1"):
        KvtcSettings.from_extra_config({"ratio": 0.5})
    with pytest.raises(ValueError, match="a boolean"):
        KvtcSettings.from_extra_config({"load_async": "yes"})
    assert not KvtcSettings.from_extra_config({"load_async": False}).load_async
    with pytest.raises(ValueError, match="multiple of vLLM's block size 128"):
        new_scheduler(sidecar, chunk_tokens=200)


def test_counts_reach_vllms_log_line_and_metrics(sidecar: Sidecar, seed: SidecarClient) -> None:
    """The worker's counts travel as vLLM's KVConnectorStats (through the real scheduler) and
    come out of vLLM's own KV-transfer logger and Prometheus metrics."""
    import prometheus_client
    from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
        KVConnectorLogging,
        KVConnectorProm,
    )

    loop = new_loop(sidecar)
    scheduler = loop.scheduler
    first = prompt_tokens(2 * C + 10, 21)
    scheduler.add_request(make_request("w", first, max_tokens=1))
    while scheduler.requests:
        loop.step()
    scheduler.add_request(make_request("r", first[: 2 * C] + prompt_tokens(5, 22), max_tokens=1))
    while scheduler.requests:
        loop.step()
    reported = [s for s in loop.connector_stats if s is not None]
    assert reported, "the worker reported no stats"
    config = loop.scheduler.vllm_config
    logging_ = KVConnectorLogging(config.kv_transfer_config)
    prom = KVConnectorProm(config, labelnames=["engine"], per_engine_labelvalues={0: ["0"]})
    before = prometheus_client.REGISTRY.get_sample_value(
        "vllm:kvtc_tokens_loaded_total", {"engine": "0"}
    )
    for s in reported:
        logging_.observe(s.to_dict())
        prom.observe(s.to_dict(), 0)
    lines: list[str] = []
    # vLLM's KVConnectorLogging.log is unannotated.
    logging_.log(lambda fmt, *args: lines.append(fmt % args))  # type: ignore[no-untyped-call]
    (line,) = lines
    assert "chunks_saved=2" in line and "chunks_loaded=2" in line, line
    assert f"tokens_loaded={2 * C}" in line and "load_errors=0" in line, line
    after = prometheus_client.REGISTRY.get_sample_value(
        "vllm:kvtc_tokens_loaded_total", {"engine": "0"}
    )
    assert after is not None
    assert after - (before or 0) == 2 * C
    # Nothing new happened since: the next step reports nothing.
    assert loop.worker.get_kv_connector_stats() is None
