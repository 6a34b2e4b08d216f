"""The sidecar client: the only ZeroMQ user in Python (docs/protocol.md is the contract).

One DEALER socket per client. A request is a multipart message, frame 0 its msgpack header and
then raw frames; replies carry the request's ``id`` and may come back in any order, so several
requests can be in flight at once (:meth:`SidecarClient.save_many`, :meth:`load_many`).

Failure model, so that a caller can always treat a failure as a cache miss:

- a reply ``ok: false`` raises (or, in the ``*_many`` forms, returns) the
  :class:`~kvtc_connector.errors.KvtcSidecarError` subclass of its code;
- no reply for ``timeout_ms`` raises :class:`~kvtc_connector.errors.SidecarUnavailable`. The socket
  is then closed with linger 0 and a fresh one (a new identity) is opened on the next call, so a
  late reply to the abandoned request can never be taken for the reply to a later one;
- after a timeout, calls fail at once with ``SidecarUnavailable`` for ``retry_ms``, so a dead
  sidecar costs one timeout per ``retry_ms``, not one per request;
- a sidecar that restarted forgets sessions (``ERR_KVTC_HANDSHAKE_REQUIRED``): the client repeats
  its last ``hello`` once and retries.

Thread-safe: one lock serializes calls (vLLM may call from several threads). A client is tied to
the process that made it; after a fork it opens its own socket (on pyzmq's process-wide context).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack
import zmq

from kvtc_connector.errors import (
    HandshakeRequiredError,
    KvtcSidecarError,
    ProtocolMalformedError,
    SidecarUnavailable,
    error_from_reply,
)
from kvtc_connector.protocol import (
    ERR_KVTC_PROTOCOL_MALFORMED,
    ERR_KVTC_SIDECAR_UNAVAILABLE,
    PROTOCOL_VERSION,
    SESSIONLESS_OPS,
    Dtype,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "Compat",
    "HelloResult",
    "LoadItem",
    "LoadResult",
    "Reply",
    "SaveItem",
    "SaveResult",
    "SidecarClient",
    "SidecarStats",
    "StoreStats",
]

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "ipc:///tmp/kvtc-sidecar.sock"

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class Compat:
    """What ``hello`` checks: this client's model and KV layout (docs/protocol.md ``hello``)."""

    model_fingerprint: str
    dtype: Dtype
    layout: str
    block_size: int
    layers: int
    kv_heads: int
    head_dim: int
    calibration_id: str = ""
    protocol: int = PROTOCOL_VERSION

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HelloResult:
    session: str
    calibration_id: str
    model_fingerprint: str
    ratios: list[float]
    default_ratio: float
    feature_dim: int
    sidecar: str
    max_frame_bytes: int


@dataclass(frozen=True)
class SaveItem:
    """One chunk to save: ``keys``/``values`` are ``tokens x layers x kv_heads x head_dim``."""

    key: str
    keys: Buffer
    values: Buffer
    token_start: int
    tokens: int
    dtype: Dtype
    ratio: float | None = None
    window_tokens: int | None = None


@dataclass(frozen=True)
class SaveResult:
    key: str
    raw_bytes: int
    stored_bytes: int
    tier: str


@dataclass(frozen=True)
class LoadItem:
    key: str
    tokens: int
    dtype: Dtype


@dataclass(frozen=True)
class LoadResult:
    """A decoded chunk; ``keys``/``values`` are views of the received frames (token-major)."""

    token_start: int
    tokens: int
    keys: memoryview
    values: memoryview
    tier: str | None = None


@dataclass(frozen=True)
class StoreStats:
    tier: str
    entries: int
    bytes: int
    max_bytes: int


@dataclass(frozen=True)
class SidecarStats:
    requests: int
    bytes_in: int
    bytes_out: int
    hits: int
    misses: int
    in_flight: int
    stores: list[StoreStats] = field(default_factory=list)


@dataclass(frozen=True)
class Reply:
    """A raw ``ok: true`` reply: the header and the raw frames."""

    header: dict[str, Any]
    frames: list[memoryview]


@dataclass
class _Call:
    op: str
    fields: Mapping[str, Any]
    frames: Sequence[Buffer] = ()
    id: int = 0
    result: Reply | KvtcSidecarError | None = None


def _int(header: Mapping[str, Any], key: str) -> int:
    value = header.get(key)
    if isinstance(value, float) and value.is_integer():
        return int(value)  # msgpackr sends integers of 2^32 and more as float64
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolMalformedError(
            ERR_KVTC_PROTOCOL_MALFORMED, f"reply field {key} must be an int, got {value!r}"
        )
    return value


def _str(header: Mapping[str, Any], key: str) -> str:
    value = header.get(key)
    if not isinstance(value, str):
        raise ProtocolMalformedError(
            ERR_KVTC_PROTOCOL_MALFORMED, f"reply field {key} must be a string, got {value!r}"
        )
    return value


class SidecarClient:
    """A connection to one sidecar. See the module docstring for the failure model.

    ``timeout_ms`` bounds the wait for each reply (for a pipelined batch: the longest silence
    between two replies). ``retry_ms`` is how long calls fail fast after a timeout.
    ``max_pipeline`` caps the requests one batch keeps in flight (the sidecar answers
    ``ERR_KVTC_BUSY`` above its ``--max-in-flight``, 64 by default).
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout_ms: int = 5000,
        retry_ms: int = 1000,
        max_pipeline: int = 16,
    ) -> None:
        if timeout_ms <= 0 or retry_ms < 0 or max_pipeline <= 0:
            raise ValueError(
                "Expected timeout_ms > 0, retry_ms >= 0 and max_pipeline > 0 but received "
                f"{timeout_ms}, {retry_ms}, {max_pipeline}"
            )
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        self.retry_ms = retry_ms
        self.max_pipeline = max_pipeline
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pid = os.getpid()
        self._socket: zmq.Socket[bytes] | None = None
        self._down_until = 0.0
        self._compat: Compat | None = None
        self.hello_result: HelloResult | None = None
        self._closed = False

    # ---------------------------------------------------------------- public operations

    @property
    def session(self) -> str | None:
        return self.hello_result.session if self.hello_result else None

    def hello(self, compat: Compat) -> HelloResult:
        """Handshake; remembers the session (and ``compat``, to repeat it after a restart)."""
        with self._lock:
            return self._hello(compat)

    def lookup(self, keys: Sequence[str]) -> int:
        """How many leading ``keys`` the sidecar's stores hold."""
        reply = self._one(_Call("lookup", {"keys": list(keys)}))
        return _int(reply.header, "hits")

    def save(self, item: SaveItem) -> SaveResult:
        result = self.save_many([item])[0]
        if isinstance(result, KvtcSidecarError):
            raise result
        return result

    def save_many(self, items: Sequence[SaveItem]) -> list[SaveResult | KvtcSidecarError]:
        """Saves pipelined; one result or error per item, in order.

        :raises SidecarUnavailable: no reply within the timeout (the whole batch is lost).
        """
        calls = []
        for item in items:
            fields: dict[str, Any] = {
                "key": item.key,
                "token_start": item.token_start,
                "tokens": item.tokens,
                "dtype": item.dtype,
            }
            if item.ratio is not None:
                fields["ratio"] = item.ratio
            if item.window_tokens is not None:
                fields["window_tokens"] = item.window_tokens
            calls.append(_Call("save", fields, (item.keys, item.values)))
        out: list[SaveResult | KvtcSidecarError] = []
        for call in self._many(calls):
            if isinstance(call.result, Reply):
                try:
                    handle = call.result.header.get("handle")
                    if not isinstance(handle, dict):
                        raise ProtocolMalformedError(
                            ERR_KVTC_PROTOCOL_MALFORMED, "save reply has no handle map"
                        )
                    out.append(
                        SaveResult(
                            key=_str(handle, "key"),
                            raw_bytes=_int(handle, "raw_bytes"),
                            stored_bytes=_int(handle, "stored_bytes"),
                            tier=_str(handle, "tier"),
                        )
                    )
                except KvtcSidecarError as e:
                    out.append(e)
            else:
                assert call.result is not None
                out.append(call.result)
        return out

    def load(self, key: str, tokens: int, dtype: Dtype) -> LoadResult:
        result = self.load_many([LoadItem(key, tokens, dtype)])[0]
        if isinstance(result, KvtcSidecarError):
            raise result
        return result

    def load_many(self, items: Sequence[LoadItem]) -> list[LoadResult | KvtcSidecarError]:
        """Loads pipelined; one result or error per item, in order.

        :raises SidecarUnavailable: no reply within the timeout (the whole batch is lost).
        """
        calls = [_Call("load", {"key": i.key, "tokens": i.tokens, "dtype": i.dtype}) for i in items]
        out: list[LoadResult | KvtcSidecarError] = []
        for call in self._many(calls):
            reply = call.result
            if not isinstance(reply, Reply):
                assert reply is not None
                out.append(reply)
                continue
            try:
                if len(reply.frames) != 2:
                    raise ProtocolMalformedError(
                        ERR_KVTC_PROTOCOL_MALFORMED,
                        f"load reply has {len(reply.frames)} frames, expected 2",
                    )
                tier = reply.header.get("tier")
                out.append(
                    LoadResult(
                        token_start=_int(reply.header, "token_start"),
                        tokens=_int(reply.header, "tokens"),
                        keys=reply.frames[0],
                        values=reply.frames[1],
                        tier=tier if isinstance(tier, str) else None,
                    )
                )
            except KvtcSidecarError as e:
                out.append(e)
        return out

    def delete(self, key: str) -> bool:
        reply = self._one(_Call("delete", {"key": key}))
        return bool(reply.header.get("deleted"))

    def stats(self) -> SidecarStats:
        reply = self._one(_Call("stats", {}))
        s = reply.header.get("stats")
        if not isinstance(s, dict):
            raise ProtocolMalformedError(ERR_KVTC_PROTOCOL_MALFORMED, "stats reply has no map")
        stores = [
            StoreStats(
                tier=_str(t, "tier"),
                entries=_int(t, "entries"),
                bytes=_int(t, "bytes"),
                # docs/protocol.md says max_bytes; sidecar 0.1.0 sends maxBytes.
                max_bytes=_int(t, "max_bytes" if "max_bytes" in t else "maxBytes"),
            )
            for t in s.get("stores") or []
            if isinstance(t, dict)
        ]
        return SidecarStats(
            requests=_int(s, "requests"),
            bytes_in=_int(s, "bytes_in"),
            bytes_out=_int(s, "bytes_out"),
            hits=_int(s, "hits"),
            misses=_int(s, "misses"),
            in_flight=_int(s, "in_flight"),
            stores=stores,
        )

    def request(
        self, op: str, fields: Mapping[str, Any] | None = None, frames: Sequence[Buffer] = ()
    ) -> Reply:
        """Any operation, raw: the ``ok: true`` reply, or the coded error raised."""
        return self._one(_Call(op, fields or {}, frames))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop_socket()

    def __enter__(self) -> SidecarClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- internals

    def _hello(self, compat: Compat) -> HelloResult:
        call = self._exchange([_Call("hello", {"compat": compat.to_wire()})])[0]
        if not isinstance(call.result, Reply):
            assert call.result is not None
            raise call.result
        h = call.result.header
        ratios = h.get("ratios")
        result = HelloResult(
            session=_str(h, "session"),
            calibration_id=_str(h, "calibration_id"),
            model_fingerprint=_str(h, "model_fingerprint"),
            ratios=[float(r) for r in ratios] if isinstance(ratios, list) else [],
            default_ratio=float(h.get("default_ratio") or 0.0),
            feature_dim=_int(h, "feature_dim"),
            sidecar=_str(h, "sidecar"),
            max_frame_bytes=_int(h, "max_frame_bytes"),
        )
        self._compat = compat
        self.hello_result = result
        return result

    def _one(self, call: _Call) -> Reply:
        done = self._many([call])[0]
        if not isinstance(done.result, Reply):
            assert done.result is not None
            raise done.result
        return done.result

    def _many(self, calls: list[_Call]) -> list[_Call]:
        if not calls:
            return calls
        with self._lock:
            self._exchange(calls)
            stale = [c for c in calls if isinstance(c.result, HandshakeRequiredError)]
            if stale and self._compat is not None:
                # The sidecar restarted (sessions live in its memory): handshake again, retry once.
                logger.info("kvtc sidecar %s forgot our session; repeating hello", self.endpoint)
                self._hello(self._compat)
                for c in stale:
                    c.result = None
                self._exchange(stale)
        return calls

    def _ensure_socket(self) -> zmq.Socket[bytes]:
        if self._closed:
            raise SidecarUnavailable(ERR_KVTC_SIDECAR_UNAVAILABLE, "the client is closed")
        if self._pid != os.getpid():
            # Forked: the parent's context and socket are not ours to use or close.
            self._pid = os.getpid()
            self._socket = None
        if self._socket is None:
            # The process-wide context (pyzmq makes a new one after a fork). It is never
            # terminated: a private context garbage-collected before its socket would block
            # forever in term() (pyzmq's Context.__del__), which hung test runs.
            sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 10000)
            sock.setsockopt(zmq.RCVHWM, 10000)
            sock.connect(self.endpoint)
            self._socket = sock
        return self._socket

    def _drop_socket(self) -> None:
        if self._socket is not None and self._pid == os.getpid():
            self._socket.close(linger=0)
        self._socket = None

    def _unavailable(self, why: str) -> SidecarUnavailable:
        self._drop_socket()
        self._down_until = time.monotonic() + self.retry_ms / 1000
        return SidecarUnavailable(ERR_KVTC_SIDECAR_UNAVAILABLE, f"{self.endpoint}: {why}")

    def _header(self, call: _Call) -> bytes:
        header: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": call.id, "op": call.op}
        session = self.session
        if call.op not in SESSIONLESS_OPS and session is not None:
            header["session"] = session
        header["deadline_ms"] = self.timeout_ms
        header.update(call.fields)
        packed: bytes = msgpack.packb(header, use_bin_type=True)
        return packed

    def _exchange(self, calls: list[_Call]) -> list[_Call]:
        """Sends ``calls`` (at most ``max_pipeline`` in flight) and fills in each ``result``."""
        now = time.monotonic()
        if now < self._down_until:
            raise SidecarUnavailable(
                ERR_KVTC_SIDECAR_UNAVAILABLE,
                f"{self.endpoint}: no reply to an earlier request; "
                f"retrying in {self._down_until - now:.1f} s",
            )
        sock = self._ensure_socket()
        pending: dict[int, _Call] = {}
        queue = list(calls)
        queue.reverse()
        timeout_s = self.timeout_ms / 1000
        deadline = time.monotonic() + timeout_s
        while queue or pending:
            while queue and len(pending) < self.max_pipeline:
                call = queue.pop()
                call.id = next(self._ids)
                try:
                    sock.send_multipart(
                        [self._header(call), *call.frames], flags=zmq.NOBLOCK, copy=False
                    )
                except zmq.Again:
                    raise self._unavailable("send queue full") from None
                except zmq.ZMQError as e:
                    raise self._unavailable(f"send failed: {e}") from None
                pending[call.id] = call
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not sock.poll(remaining_ms, zmq.POLLIN):
                waited = ", ".join(sorted({c.op for c in pending.values()}))
                raise self._unavailable(f"no reply to {waited} within {self.timeout_ms} ms")
            frames = sock.recv_multipart(copy=False)
            deadline = time.monotonic() + timeout_s
            try:
                header = msgpack.unpackb(frames[0].bytes, raw=False)
            except Exception as e:  # any msgpack failure: the reply is unusable
                logger.warning("kvtc sidecar %s sent an undecodable reply: %s", self.endpoint, e)
                continue
            if not isinstance(header, dict):
                logger.warning("kvtc sidecar %s sent a reply that is not a map", self.endpoint)
                continue
            rid = header.get("id")
            if rid is None and len(pending) == 1:
                rid = next(iter(pending))  # our header was undecodable; the error is ours
            target = pending.pop(rid, None) if isinstance(rid, int) else None
            if target is None:
                logger.debug("kvtc sidecar %s: dropping a reply to id %r", self.endpoint, rid)
                continue
            if header.get("ok") is True:
                target.result = Reply(header, [f.buffer for f in frames[1:]])
            else:
                target.result = error_from_reply(header.get("code"), header.get("message"))
        return calls
