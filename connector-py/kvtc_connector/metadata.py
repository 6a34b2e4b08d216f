"""What the scheduler-side connector tells the worker-side one each step, plus the settings and
model identity both sides share.

``METADATA_VERSION`` numbers the layout of :class:`KvtcConnectorMetadata` (it is pickled from the
scheduler process to the workers, which always run the same build, so it is a debugging aid, not a
compatibility gate). History:

1. First version: loads and saves of whole chunks, by block ids (2026-11-29).
2. ``LoadSpec.asynchronous``: the worker loads on its loader thread and reports the request in
   ``finished_recving`` (2026-12).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata

from kvtc_connector.client import DEFAULT_ENDPOINT
from kvtc_connector.fingerprint import model_fingerprint
from kvtc_connector.protocol import Dtype

if TYPE_CHECKING:
    import torch
    from vllm.config import VllmConfig

__all__ = [
    "FRAME_LAYOUT",
    "METADATA_VERSION",
    "KvtcConnectorMetadata",
    "KvtcSettings",
    "LoadSpec",
    "ModelIdentity",
    "SaveSpec",
    "dtype_name",
    "model_identity",
]

logger = logging.getLogger(__name__)

METADATA_VERSION = 2

# The `layout` sent in `hello`: on the raw-frame path the sidecar only ever sees token-major
# frames, [tokens, layers, kv_heads, head_dim], whatever vLLM's paged layout is.
FRAME_LAYOUT = "tokens-layers-heads-dim"


@dataclass
class LoadSpec:
    """Load chunks ``first_chunk ..`` of one request and write tokens ``[token_lo, token_hi)``.

    ``block_ids[j]`` holds tokens ``[(first_block + j) * block_size, ...)`` where ``first_block``
    is ``first_chunk * chunk_tokens // block_size``. Token bounds are multiples of the block size.

    ``asynchronous``: the request waits in ``WAITING_FOR_REMOTE_KVS``; the worker loads on its
    loader thread and reports the request in ``finished_recving`` once it no longer writes the
    blocks. Otherwise the load completes in ``start_load_kv``, before the step's forward.
    """

    req_id: str
    keys: list[str]
    first_chunk: int
    token_lo: int
    token_hi: int
    block_ids: list[int]
    asynchronous: bool = False


@dataclass
class SaveSpec:
    """Save chunks ``first_chunk ..`` of one request from ``block_ids`` (laid out as in LoadSpec).

    ``window_tokens[i]`` is the raw newest-token window of chunk ``i`` (0: all coded). ``held``
    means the request has finished and vLLM keeps its blocks until the worker reports it in
    ``finished_sending``, which it does after this save, whether the save succeeded or not.
    """

    req_id: str
    keys: list[str]
    first_chunk: int
    block_ids: list[int]
    window_tokens: list[int]
    held: bool = False


@dataclass
class KvtcConnectorMetadata(KVConnectorMetadata):
    chunk_tokens: int
    block_size: int
    loads: list[LoadSpec] = field(default_factory=list)
    saves: list[SaveSpec] = field(default_factory=list)
    version: int = METADATA_VERSION


def _bad(name: str, expected: str, value: object) -> ValueError:
    return ValueError(
        f"Expected {expected} for kv_connector_extra_config.{name} "
        f"but received {value!r} of type {type(value).__name__}"
    )


def _int(extra: Mapping[str, Any], name: str, default: int, low: int) -> int:
    value = extra.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise _bad(name, f"an integer >= {low}", value)
    return value


def _str(extra: Mapping[str, Any], name: str, default: str | None) -> str | None:
    value = extra.get(name, default)
    if value is not None and not isinstance(value, str):
        raise _bad(name, "a string", value)
    return value


def _bool(extra: Mapping[str, Any], name: str, default: bool) -> bool:
    value = extra.get(name, default)
    if not isinstance(value, bool):
        raise _bad(name, "a boolean", value)
    return value


def _ratio(extra: Mapping[str, Any]) -> float | None:
    value = extra.get("ratio")
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 1:
        raise _bad("ratio", "a number >= 1", value)
    return float(value)


@dataclass(frozen=True)
class KvtcSettings:
    """``kv_transfer_config.kv_connector_extra_config`` of the kvtc connector (README).

    ``load_async`` (default True): stored chunks load asynchronously. The scheduler reports hits
    as ``(n, True)``, vLLM parks the request in ``WAITING_FOR_REMOTE_KVS`` with its blocks
    allocated, the worker fetches and decodes on a background thread while other requests run,
    and reports the request in ``finished_recving``. False loads in ``start_load_kv`` before the
    forward instead (one step less of latency for a lone request, but the whole batch waits).

    ``max_pipeline`` (default 16): chunks per batch of saves and loads. The CPU data path keeps
    that many ``save`` requests in flight; the GPU data path sends them as one ``save_blocks``
    (``load_blocks``) request, which the sidecar encodes (decodes) in fused groups on the GPU
    (256-token chunks of the 8B shape: encode 211 GB/s against 74 one request per chunk,
    docs/benchmarks.md run o).

    Window policy (``window_tokens``, ``window_chunk_factor``). The codec keeps the first 4
    positions of a sequence raw (attention sinks, the sidecar's ``--sink-tokens``) and can keep
    the newest ``window_tokens`` of a chunk raw. The connector asks for that window only on the
    newest chunk a request stores (the last full prompt chunk at prefill, the last chunk saved
    when it finishes), and only when ``chunk_tokens >= window_chunk_factor * window_tokens``
    (defaults 128 and 4: chunks of 512 tokens or more); otherwise every stored token but the
    sinks is coded. Why: the paper keeps the newest 128 tokens of the *live* context raw, a
    small share (1.6 % at 8K) of the tokens that attention weighs most. A stored chunk is
    different. (1) vLLM always recomputes the tokens after the last stored chunk (at least one,
    usually the partial chunk plus the new turn), so the newest tokens of a resumed context are
    exact anyway. (2) A chunk is stored once under a content key and reused by every later
    request with that prefix; in a conversation the next turn appends the reply and a new
    message, so its "newest" tokens soon sit in the middle of the context while still stored
    raw. (3) With 256-token chunks a 128-token window is half the record: the multi-turn chat
    stored at 1.76x with the 8x plan. Capping the raw share of a windowed chunk at
    ``1 / window_chunk_factor`` keeps the paper's window where it is cheap (long chunks) and
    drops it where it would dominate. ``window_chunk_factor: 1`` restores a window on every
    newest chunk; ``window_tokens: 0`` turns it off for any chunk size.
    """

    endpoint: str = DEFAULT_ENDPOINT
    timeout_ms: int = 5000
    retry_ms: int = 1000
    chunk_tokens: int = 256
    ratio: float | None = None
    window_tokens: int = 128
    calibration_id: str = ""
    model_fingerprint: str | None = None
    max_pipeline: int = 16
    load_async: bool = True
    window_chunk_factor: int = 4

    @staticmethod
    def from_extra_config(extra: Mapping[str, Any] | None) -> KvtcSettings:
        extra = dict(extra or {})
        known = set(KvtcSettings.__dataclass_fields__)
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ValueError(
                f"Unknown kv_connector_extra_config keys for KvtcConnector: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        d = KvtcSettings()
        settings = KvtcSettings(
            endpoint=_str(extra, "endpoint", d.endpoint) or d.endpoint,
            timeout_ms=_int(extra, "timeout_ms", d.timeout_ms, 1),
            retry_ms=_int(extra, "retry_ms", d.retry_ms, 0),
            chunk_tokens=_int(extra, "chunk_tokens", d.chunk_tokens, 1),
            ratio=_ratio(extra),
            window_tokens=_int(extra, "window_tokens", d.window_tokens, 0),
            calibration_id=_str(extra, "calibration_id", d.calibration_id) or "",
            model_fingerprint=_str(extra, "model_fingerprint", None) or None,
            max_pipeline=_int(extra, "max_pipeline", d.max_pipeline, 1),
            load_async=_bool(extra, "load_async", d.load_async),
            window_chunk_factor=_int(extra, "window_chunk_factor", d.window_chunk_factor, 1),
        )
        dropped = settings.window_tokens and not settings.stored_window_tokens
        if "window_tokens" in extra and dropped:
            # Said once, at startup: a configured window that the policy drops is a surprise.
            logger.warning(
                "kvtc: window_tokens=%d is not applied: chunks of %d tokens are shorter than "
                "window_chunk_factor (%d) x the window, so stored chunks are coded except the sink "
                "tokens; lower window_chunk_factor or raise chunk_tokens to keep a raw window",
                settings.window_tokens,
                settings.chunk_tokens,
                settings.window_chunk_factor,
            )
        return settings

    @property
    def stored_window_tokens(self) -> int:
        """The raw window of the newest chunk a request stores (see the window policy)."""
        w = min(self.window_tokens, self.chunk_tokens)
        return w if self.chunk_tokens >= self.window_chunk_factor * w else 0

    def check_block_size(self, block_size: int) -> None:
        if self.chunk_tokens % block_size != 0:
            raise ValueError(
                f"Expected kv_connector_extra_config.chunk_tokens to be a multiple of vLLM's "
                f"block size {block_size} but received {self.chunk_tokens}"
            )


_DTYPES: dict[str, Dtype] = {
    "torch.bfloat16": "bfloat16",
    "torch.float16": "float16",
    "torch.float32": "float32",
}


def dtype_name(dtype: torch.dtype) -> Dtype:
    """The protocol's name of a KV cache dtype; ValueError for any other (fp8 caches)."""
    name = _DTYPES.get(str(dtype))
    if name is None:
        raise ValueError(
            f"Expected a bfloat16, float16 or float32 KV cache but received {dtype} "
            "(quantized KV caches are not supported by kvtc)"
        )
    return name


@dataclass(frozen=True)
class ModelIdentity:
    """The model as the calibration knows it: fingerprint and KV shape."""

    fingerprint: str
    layers: int
    kv_heads: int
    head_dim: int


@functools.lru_cache(maxsize=8)
def _fingerprint(path: str, shape_json: str) -> str:
    return model_fingerprint(path, json.loads(shape_json))


def _resolve_model_dir(model: str) -> Path:
    path = Path(model)
    if path.exists():
        return path
    try:  # a hub id vLLM already downloaded
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception as e:
        raise ValueError(
            f"kvtc cannot find the weights of {model!r} locally to fingerprint them ({e}); "
            "set kv_connector_extra_config.model_fingerprint"
        ) from e


def model_identity(vllm_config: VllmConfig, settings: KvtcSettings) -> ModelIdentity:
    """Fingerprint and KV shape of the served model, computed exactly as ``capture.py`` does.

    Hashing the weights reads every weight file once per process (cached); for large models set
    ``kv_connector_extra_config.model_fingerprint`` to the calibration's fingerprint instead.
    """
    from transformers import AutoConfig

    from kvtc_connector.fingerprint import canonical_json
    from kvtc_connector.rope import rope_params_from_config

    model_config = vllm_config.model_config
    source = _resolve_model_dir(model_config.model)
    config = AutoConfig.from_pretrained(
        str(source), local_files_only=True, trust_remote_code=model_config.trust_remote_code
    )
    layers = int(config.num_hidden_layers)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = int(
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )
    if settings.model_fingerprint:
        fingerprint = settings.model_fingerprint
    else:
        shape = {
            "layers": layers,
            "kv_heads": kv_heads,
            "head_dim": head_dim,
            "rope": rope_params_from_config(config),
        }
        fingerprint = _fingerprint(str(source.resolve()), canonical_json(shape))
    return ModelIdentity(fingerprint, layers, kv_heads, head_dim)
