"""Test helpers: a real sidecar process, and real vLLM objects (config, scheduler, requests, model
runner outputs) on the CPU for the converted SmolLM2 folder, with the kvtc connector configured.

Modeled on the pattern of vLLM's ``tests/v1/kv_connector/unit/utils.py`` (which does not ship in
the wheel), written for this project: nothing here is mocked except the model's forward pass,
which :class:`EngineLoop` replaces by writing a known KV pattern into the blocks vLLM scheduled.
"""

from __future__ import annotations

import gc
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = Path(os.environ.get("KVTC_TEST_MODEL", ROOT / ".cache/models/smollm2-hf"))
CALIBRATION = Path(
    os.environ.get("KVTC_TEST_CALIBRATION", ROOT / ".cache/calib/smollm2-hf.kvtc.safetensors")
)
SIDECAR_MAIN = ROOT / "dist/src/main.js"


def _calibration_fingerprint(default: str = "e20b53f8bee8b537a3cd36e926abcdcc") -> str:
    """The model fingerprint the calibration records (it was made from the same folder)."""
    try:
        from safetensors import safe_open

        with safe_open(str(CALIBRATION), "np") as f:
            return str(json.loads((f.metadata() or {})["kvtc"])["model"]["fingerprint"])
    except (OSError, KeyError, ValueError):
        return default


MODEL_FINGERPRINT = _calibration_fingerprint()
LAYERS, KV_HEADS, HEAD_DIM = 30, 3, 64
FEATURES = LAYERS * KV_HEADS * HEAD_DIM
BLOCK_SIZE = 128
CHUNK_TOKENS = 256
CONNECTOR = {
    "kv_connector": "KvtcConnector",
    "kv_connector_module_path": "kvtc_connector.connector",
}


@contextmanager
def vllm_engine(endpoint: str, *, prefix_caching: bool, **extra_config: Any) -> Iterator[Any]:
    """A real vLLM (CPU) serving SmolLM2 with KvtcConnector at ``endpoint`` (extra settings in
    ``extra_config``), shut down on exit so the next module can start its own."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    engine = LLM(
        model=str(MODEL_DIR),
        dtype="bfloat16",
        enforce_eager=True,
        enable_prefix_caching=prefix_caching,
        max_model_len=2048,
        seed=0,
        kv_transfer_config={
            **CONNECTOR,
            "kv_role": "kv_both",
            "kv_load_failure_policy": "recompute",
            "kv_connector_extra_config": {"endpoint": endpoint, **extra_config},
        },
    )
    try:
        yield engine
    finally:
        shutdown = getattr(getattr(engine.llm_engine, "engine_core", None), "shutdown", None)
        if shutdown is not None:
            shutdown()
        del engine
        gc.collect()


def require_inputs() -> None:
    """Skips (with the reason) when the model folder, calibration or sidecar build is missing."""
    for path, what in (
        (MODEL_DIR, "the converted SmolLM2 folder"),
        (CALIBRATION, "the SmolLM2 calibration"),
        (SIDECAR_MAIN, "the sidecar build (npm run build)"),
    ):
        if not path.exists():
            pytest.skip(f"{what} is missing: {path}")


# ------------------------------------------------------------------------------------ sidecar


@dataclass
class Sidecar:
    """A ``kvtc-sidecar serve`` process on an ipc:// endpoint in a private temporary folder."""

    endpoint: str
    proc: subprocess.Popen[bytes]
    folder: Path
    ready: dict[str, Any]
    stderr: list[str] = field(default_factory=list)
    owns_folder: bool = False  # a temporary folder of its own, removed by stop()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.alive:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout)
        if self.owns_folder:  # its file store reaches hundreds of MiB per test run
            shutil.rmtree(self.folder, ignore_errors=True)
        return code


def start_sidecar(
    *extra_args: str,
    calibration: Path = CALIBRATION,
    folder: Path | None = None,
    store: str | None = None,
    timeout: float = 60,
) -> Sidecar:
    """Starts a sidecar and waits for its ``{"ready": true}`` line."""
    owns_folder = folder is None
    folder = folder or Path(tempfile.mkdtemp(prefix="kvtc-test-"))
    folder.mkdir(parents=True, exist_ok=True)
    endpoint = f"ipc://{folder}/sidecar.sock"
    store = store or f"mem://?max=1GiB,file://{folder}/store?max=4GiB"
    args = [
        "node",
        str(SIDECAR_MAIN),
        "serve",
        "--calibration",
        str(calibration),
        "--endpoint",
        endpoint,
        "--store",
        store,
        "--log-level",
        "warn",
        *extra_args,
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sidecar = Sidecar(endpoint, proc, folder, {}, owns_folder=owns_folder)
    assert proc.stderr is not None and proc.stdout is not None
    err, out = proc.stderr, proc.stdout
    lines: queue.Queue[bytes] = queue.Queue()

    def drain_stderr() -> None:  # keep the pipe from filling; keep the text for messages
        for line in err:
            sidecar.stderr.append(line.decode(errors="replace"))

    def drain_stdout() -> None:
        for line in out:
            lines.put(line)
        lines.put(b"")  # EOF: the process exited

    threading.Thread(target=drain_stderr, daemon=True).start()
    threading.Thread(target=drain_stdout, daemon=True).start()
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        proc.kill()
        raise RuntimeError(f"sidecar not ready in {timeout} s: {''.join(sidecar.stderr)}") from None
    if not line:
        proc.wait(timeout)
        raise RuntimeError(f"sidecar exited ({proc.returncode}): {''.join(sidecar.stderr)}")
    sidecar.ready = json.loads(line)
    assert sidecar.ready.get("ready") is True, sidecar.ready
    return sidecar


@contextmanager
def running_sidecar(*extra_args: str, **kwargs: Any) -> Iterator[Sidecar]:
    sidecar = start_sidecar(*extra_args, **kwargs)
    try:
        yield sidecar
    finally:
        sidecar.stop()


def compat(**overrides: Any) -> Any:
    from kvtc_connector.client import Compat

    fields: dict[str, Any] = {
        "model_fingerprint": MODEL_FINGERPRINT,
        "dtype": "bfloat16",
        "layout": "tokens-layers-heads-dim",
        "block_size": BLOCK_SIZE,
        "layers": LAYERS,
        "kv_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
    }
    fields.update(overrides)
    return Compat(**fields)


def random_bf16(tokens: int, seed: int) -> torch.Tensor:
    """``[tokens, layers, kv_heads, head_dim]`` bfloat16 of unit scale."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((tokens, LAYERS, KV_HEADS, HEAD_DIM), generator=g).to(torch.bfloat16)


def tensor_bytes(t: torch.Tensor) -> bytes:
    return bytes(t.contiguous().view(-1).view(torch.uint8).numpy())


# ------------------------------------------------------------------------------------ vLLM


def make_vllm_config(
    endpoint: str,
    *,
    block_size: int = BLOCK_SIZE,
    max_num_batched_tokens: int = 4096,
    max_model_len: int = 4096,
    num_blocks: int = 64,
    kv_load_failure_policy: Literal["recompute", "fail"] = "recompute",
    **extra: Any,
) -> Any:
    """A real VllmConfig on the CPU for the SmolLM2 folder, with the kvtc connector."""
    from vllm.config import (
        CacheConfig,
        DeviceConfig,
        KVTransferConfig,
        ModelConfig,
        SchedulerConfig,
        VllmConfig,
    )

    model = ModelConfig(
        model=str(MODEL_DIR),
        tokenizer=str(MODEL_DIR),
        dtype="bfloat16",
        seed=0,
        max_model_len=max_model_len,
    )
    cache = CacheConfig(block_size=block_size, cache_dtype="auto", enable_prefix_caching=False)
    scheduler = SchedulerConfig(
        max_num_seqs=16,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=max_model_len,
        enable_chunked_prefill=True,
        is_encoder_decoder=False,
    )
    kv = KVTransferConfig(
        kv_connector=CONNECTOR["kv_connector"],
        kv_connector_module_path=CONNECTOR["kv_connector_module_path"],
        kv_role="kv_both",
        kv_load_failure_policy=kv_load_failure_policy,
        kv_connector_extra_config={"endpoint": endpoint, "timeout_ms": 2000, **extra},
    )
    config = VllmConfig(
        model_config=model,
        cache_config=cache,
        scheduler_config=scheduler,
        kv_transfer_config=kv,
        device_config=DeviceConfig("cpu"),
    )
    config.cache_config.num_gpu_blocks = num_blocks
    return config


def layer_names() -> list[str]:
    return [f"model.layers.{i}.self_attn.attn" for i in range(LAYERS)]


def make_kv_cache_config(
    num_blocks: int, block_size: int = BLOCK_SIZE, layout: str = "LBHNC"
) -> Any:
    """KVCacheConfig of one full-attention group, laid out as vLLM's engine would."""
    from vllm.v1.kv_cache_interface import (
        FullAttentionSpec,
        KVCacheConfig,
        KVCacheGroupSpec,
        KVCacheTensor,
    )

    spec = FullAttentionSpec(
        block_size=block_size, num_kv_heads=KV_HEADS, head_size=HEAD_DIM, dtype=torch.bfloat16
    )
    page = spec.page_size_bytes
    names = layer_names()
    if layout == "LBHNC":  # each layer one region: the layer views are contiguous
        layer_stride, block_stride = page * num_blocks, page
    else:  # "BLHNC": a block holds every layer's page; the layer views are strided
        layer_stride, block_stride = page, page * len(names)
    tensor = KVCacheTensor(
        size=page * num_blocks * len(names),
        layers=names,
        layer_stride=layer_stride,
        block_stride=block_stride,
    )
    return KVCacheConfig(
        num_blocks=num_blocks,
        kv_cache_tensors=[tensor],
        kv_cache_groups=[KVCacheGroupSpec(names, spec)],
    )


def allocate_kv_caches(kv_cache_config: Any, layout: str = "LBHNC") -> dict[str, torch.Tensor]:
    """The per-layer KV tensors, allocated by vLLM's own allocator for ``kv_cache_config``."""
    from vllm.v1.kv_cache_layout import KVCacheLayout
    from vllm.v1.worker.utils import allocate_kv_cache

    block = kv_cache_config.kv_cache_groups[0].kv_cache_spec.block_size
    caches: dict[str, torch.Tensor] = allocate_kv_cache(
        kv_cache_config, torch.device("cpu"), KVCacheLayout[layout], [block]
    )
    return caches


def make_scheduler(vllm_config: Any, kv_cache_config: Any) -> Any:
    """A real vLLM Scheduler; it builds the scheduler-role connector itself."""
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.structured_output import StructuredOutputManager

    return Scheduler(
        vllm_config=vllm_config,
        kv_cache_config=kv_cache_config,
        structured_output_manager=StructuredOutputManager(vllm_config),
        block_size=vllm_config.cache_config.block_size,
        log_stats=False,
    )


def make_worker_connector(vllm_config: Any, kv_cache_config: Any, layout: str = "LBHNC") -> Any:
    """The worker-role connector with KV tensors from vLLM's allocator registered."""
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole

    from kvtc_connector.connector import KvtcConnector

    connector = KvtcConnector(vllm_config, KVConnectorRole.WORKER, kv_cache_config)
    connector.register_kv_caches(allocate_kv_caches(kv_cache_config, layout))
    return connector


def make_request(req_id: str, prompt: list[int], max_tokens: int = 4) -> Any:
    from vllm import SamplingParams
    from vllm.v1.request import Request

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return Request(
        request_id=req_id,
        prompt_token_ids=list(prompt),
        sampling_params=params,
        pooling_params=None,
    )


def prompt_tokens(n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(3, 49000, size=n)]


def model_runner_output(
    scheduler: Any,
    scheduler_output: Any,
    *,
    token: int = 7,
    finished_sending: set[str] | None = None,
    finished_recving: set[str] | None = None,
    invalid_block_ids: set[int] | None = None,
    kv_connector_stats: Any = None,
) -> Any:
    """What a model runner returns for ``scheduler_output``: a token for every request whose
    prompt is complete after this step, and the connector's report."""
    from vllm.v1.outputs import KVConnectorOutput, ModelRunnerOutput

    req_ids = list(scheduler_output.num_scheduled_tokens)
    sampled: list[list[int]] = []
    for req_id in req_ids:
        request = scheduler.requests[req_id]
        # num_computed_tokens already counts this step's tokens (vLLM advances it at schedule).
        sampled.append([token] if request.num_computed_tokens >= request.num_tokens else [])
    return ModelRunnerOutput(
        req_ids=req_ids,
        req_id_to_index={r: i for i, r in enumerate(req_ids)},
        sampled_token_ids=sampled,
        kv_connector_output=KVConnectorOutput(
            finished_sending=finished_sending,
            finished_recving=finished_recving,
            invalid_block_ids=invalid_block_ids or set(),
            kv_connector_stats=kv_connector_stats,
        ),
    )


def kv_pattern(positions: int, seed: int = 1234) -> torch.Tensor:
    """The KV the fake forward writes for each position: ``[positions, 2, L, H, D]`` bf16."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((positions, 2, LAYERS, KV_HEADS, HEAD_DIM), generator=g).to(torch.bfloat16)


@dataclass
class StepResult:
    scheduler_output: Any
    metadata: Any
    finished_sending: set[str] | None
    invalid_block_ids: set[int]
    finished_recving: set[str] | None = None


class EngineLoop:
    """The engine core's step with the real Scheduler and the real worker-role connector.

    Only the forward pass is fake: it writes ``pattern[position]`` into the slots of the tokens
    the step computes, the way the attention layers would write the KV they compute.
    """

    def __init__(self, scheduler: Any, worker: Any, pattern: torch.Tensor) -> None:
        self.scheduler = scheduler
        self.worker = worker
        self.pattern = pattern
        self.connector_stats: list[Any] = []  # what the worker reported each step (or None)

    def free_blocks(self) -> int:
        """Free blocks in the scheduler's pool (a request's blocks return here when released)."""
        return int(self.scheduler.kv_cache_manager.block_pool.get_num_free_blocks())

    def step(
        self,
        before_output: Callable[[StepResult], None] | None = None,
        *,
        wait_loads: bool = True,
    ) -> StepResult:
        """One engine step. ``wait_loads``: let the worker's asynchronous loads finish before
        it reports (deterministic tests); False reports only what is done by then."""
        so = self.scheduler.schedule()
        meta = so.kv_connector_metadata
        w = self.worker
        w.bind_connector_metadata(meta)
        w.start_load_kv(None)  # kvtc does not read the forward context
        self._forward(so)
        w.wait_for_save()
        if wait_loads:
            assert w.connector_worker.wait_for_loads(timeout=60), "a load did not finish"
        sending, recving = w.get_finished(so.finished_req_ids)
        invalid = w.get_block_ids_with_load_errors()
        stats = w.get_kv_connector_stats()  # as vLLM's model runner asks after every step
        self.connector_stats.append(stats)
        w.clear_connector_metadata()
        result = StepResult(so, meta, sending, invalid, recving)
        if before_output is not None:
            before_output(result)
        out = model_runner_output(
            self.scheduler,
            so,
            finished_sending=sending,
            finished_recving=recving,
            invalid_block_ids=invalid,
            kv_connector_stats=stats,
        )
        self.scheduler.update_from_output(so, out)
        return result

    def _forward(self, so: Any) -> None:
        kw = self.worker.connector_worker
        for req_id, n in so.num_scheduled_tokens.items():
            request = self.scheduler.requests[req_id]
            end = request.num_computed_tokens  # already advanced by n
            start = end - n
            block_ids = self.scheduler.kv_cache_manager.get_block_ids(req_id)[0]
            # Whole blocks covering [start, end): write the pattern of the positions they hold.
            b0, b1 = start // BLOCK_SIZE, -(-end // BLOCK_SIZE)
            lo, hi = b0 * BLOCK_SIZE, b1 * BLOCK_SIZE
            kv = self.read_blocks(block_ids[b0:b1])
            kv[start - lo : end - lo] = self.pattern[start:end]
            kw.scatter(block_ids[b0:b1], kv[:, 0], kv[:, 1])
            assert hi - lo == kv.shape[0]

    def read_blocks(self, block_ids: list[int]) -> torch.Tensor:
        keys, values = self.worker.connector_worker.gather(block_ids)
        return torch.stack([keys, values], dim=1)
