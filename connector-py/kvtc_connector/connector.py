"""``KvtcConnector``: vLLM's KV connector for the kvtc sidecar. A thin facade: the scheduler role
delegates to :mod:`kvtc_connector.scheduler`, the worker role to :mod:`kvtc_connector.worker`.

Load it out of tree::

    kv_transfer_config={
        "kv_connector": "KvtcConnector",
        "kv_connector_module_path": "kvtc_connector.connector",
        "kv_role": "kv_both",
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": {"endpoint": "ipc:///tmp/kvtc-sidecar.sock"},
    }

Settings (``kv_connector_extra_config``) are documented in :class:`~kvtc_connector.metadata.
KvtcSettings` and the README.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from kvtc_connector.metadata import KvtcConnectorMetadata, KvtcSettings
from kvtc_connector.scheduler import KvtcScheduler
from kvtc_connector.stats import KvtcConnectorStats, KvtcPromMetrics
from kvtc_connector.worker import KvtcWorker

if TYPE_CHECKING:
    import torch
    from vllm.config import VllmConfig
    from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
        KVConnectorPromMetrics,
        KVConnectorStats,
        PromMetric,
        PromMetricT,
    )
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

__all__ = ["KvtcConnector"]


class KvtcConnector(KVConnectorBase_V1):
    """Compressed KV cache through the kvtc sidecar: a best-effort cache, never a dependency."""

    def __init__(
        self,
        vllm_config: VllmConfig,
        role: KVConnectorRole,
        kv_cache_config: KVCacheConfig,
    ) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        settings = KvtcSettings.from_extra_config(
            self._kv_transfer_config.kv_connector_extra_config
        )
        self.connector_scheduler: KvtcScheduler | None = None
        self.connector_worker: KvtcWorker | None = None
        if role == KVConnectorRole.SCHEDULER:
            self.connector_scheduler = KvtcScheduler(vllm_config, kv_cache_config, settings)
        else:
            self.connector_worker = KvtcWorker(vllm_config, kv_cache_config, settings)

    @property
    def requires_kv_delivery(self) -> bool:
        # A dropped save is a future miss, not a lost hand-off: never recompute for it.
        return False

    # ==============================
    # Scheduler-side methods
    # ==============================

    def get_num_new_matched_tokens(
        self, request: Request, num_computed_tokens: int
    ) -> tuple[int | None, bool]:
        assert self.connector_scheduler is not None
        return self.connector_scheduler.get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(
        self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int
    ) -> None:
        assert self.connector_scheduler is not None
        self.connector_scheduler.update_state_after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        assert self.connector_scheduler is not None
        return self.connector_scheduler.build_connector_meta(scheduler_output)

    def update_connector_output(self, connector_output: KVConnectorOutput) -> None:
        assert self.connector_scheduler is not None
        self.connector_scheduler.update_connector_output(connector_output)

    def request_finished(
        self, request: Request, block_ids: list[int]
    ) -> tuple[bool, dict[str, Any] | None]:
        assert self.connector_scheduler is not None
        return self.connector_scheduler.request_finished(request, block_ids)

    # ==============================
    # Worker-side methods
    # ==============================

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        assert self.connector_worker is not None
        self.connector_worker.register_kv_caches(kv_caches)

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        assert self.connector_worker is not None
        self.connector_worker.bind(self._kvtc_metadata())
        self.connector_worker.start_load_kv()

    def wait_for_layer_load(self, layer_name: str) -> None:
        # Nothing per layer: async loads are for requests vLLM does not schedule until they are
        # reported in finished_recving; sync loads (load_async: false) complete in start_load_kv.
        return

    def save_kv_layer(
        self,
        layer_name: str,
        kv_layer: torch.Tensor,
        attn_metadata: AttentionMetadata,
        **kwargs: Any,
    ) -> None:
        # Saves gather whole chunks from all layers in wait_for_save, after the forward.
        return

    def wait_for_save(self) -> None:
        assert self.connector_worker is not None
        self.connector_worker.bind(self._kvtc_metadata())
        self.connector_worker.wait_for_save()

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        assert self.connector_worker is not None
        return self.connector_worker.get_finished(finished_req_ids)

    def get_block_ids_with_load_errors(self) -> set[int]:
        assert self.connector_worker is not None
        return self.connector_worker.get_block_ids_with_load_errors()

    # ==============================
    # Telemetry (vLLM's log line and /metrics)
    # ==============================

    def get_kv_connector_stats(self) -> KVConnectorStats | None:
        # Worker side: the counts since the last call; the scheduler side counts nothing.
        if self.connector_worker is None:
            return None
        return self.connector_worker.take_stats()

    @classmethod
    def build_kv_connector_stats(
        cls, data: dict[str, Any] | None = None
    ) -> KVConnectorStats | None:
        return KvtcConnectorStats(data=dict(data or {}))

    @classmethod
    def build_prom_metrics(
        cls,
        vllm_config: VllmConfig,
        metric_types: dict[type[PromMetric], type[PromMetricT]],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> KVConnectorPromMetrics | None:
        return KvtcPromMetrics(vllm_config, metric_types, labelnames, per_engine_labelvalues)

    def shutdown(self) -> None:
        if self.connector_scheduler is not None:
            self.connector_scheduler.shutdown()
        if self.connector_worker is not None:
            self.connector_worker.shutdown()

    def _kvtc_metadata(self) -> KvtcConnectorMetadata | None:
        meta = self._connector_metadata
        return meta if isinstance(meta, KvtcConnectorMetadata) else None
