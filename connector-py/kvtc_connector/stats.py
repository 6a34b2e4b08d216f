"""The connector's counters in vLLM's own telemetry.

Each worker hands vLLM a :class:`KvtcConnectorStats` per step (the counts since its last step);
vLLM aggregates them across workers, logs ``KV Transfer metrics: chunks_loaded=...`` at its
logging interval, and, through :class:`KvtcPromMetrics`, adds them to its ``/metrics`` as
``vllm:kvtc_*_total`` counters (labelled by engine like vLLM's own). The sidecar exports its own
side (bytes, ratio, GB/s, errors by code) on its ``--metrics-port``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
    KVConnectorPromMetrics,
    KVConnectorStats,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.distributed.kv_transfer.kv_connector.v1.metrics import PromMetric, PromMetricT

# name -> Prometheus help text; every field is a count that only grows.
COUNTERS: dict[str, str] = {
    "chunks_loaded": "kvtc chunks restored from the sidecar into vLLM's KV cache",
    "tokens_loaded": "tokens whose KV was restored from the sidecar instead of recomputed",
    "chunks_saved": "kvtc chunks saved (compressed) to the sidecar",
    "load_errors": "chunk loads that failed and were recomputed (sidecar down, bad or lost record)",
    "save_errors": "chunk saves that failed (vLLM is unaffected)",
}


@dataclass
class KvtcConnectorStats(KVConnectorStats):
    """Counts of one interval: fields of :data:`COUNTERS`, summed across workers and steps."""

    def __post_init__(self) -> None:
        for name in COUNTERS:
            self.data[name] = int(self.data.get(name, 0))

    def reset(self) -> None:
        self.data = dict.fromkeys(COUNTERS, 0)

    def aggregate(self, other: KVConnectorStats) -> KvtcConnectorStats:
        for name in COUNTERS:
            self.data[name] += int(other.data.get(name, 0))
        return self

    def reduce(self) -> dict[str, int | float]:
        return dict(self.data)

    def is_empty(self) -> bool:
        return not any(self.data.values())


class KvtcPromMetrics(KVConnectorPromMetrics):
    """``vllm:kvtc_<field>_total`` counters, one child per engine."""

    def __init__(
        self,
        vllm_config: VllmConfig,
        metric_types: dict[type[PromMetric], type[PromMetricT]],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> None:
        super().__init__(vllm_config, metric_types, labelnames, per_engine_labelvalues)
        self._counters = {
            name: self._counter_cls(
                name=f"vllm:kvtc_{name}", documentation=doc, labelnames=labelnames
            )
            for name, doc in COUNTERS.items()
        }
        self._children: dict[int, dict[str, Any]] = {}

    def observe(self, transfer_stats_data: dict[str, Any] | None, engine_idx: int = 0) -> None:
        if not transfer_stats_data:
            return
        children = self._children.get(engine_idx)
        if children is None:
            values = self.per_engine_labelvalues[engine_idx]
            children = {name: c.labels(*values) for name, c in self._counters.items()}
            self._children[engine_idx] = children
        for name, child in children.items():
            n = int(transfer_stats_data.get(name, 0))
            if n > 0:
                child.inc(n)
