"""The sidecar client against a real sidecar process over real ZeroMQ: the handshake, every
operation, the faults the protocol defines, and that the sidecar keeps serving after each."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator

import msgpack
import pytest
import torch
import zmq
from vllm_utils import (
    FEATURES,
    MODEL_FINGERPRINT,
    Sidecar,
    compat,
    random_bf16,
    require_inputs,
    running_sidecar,
    start_sidecar,
    tensor_bytes,
)

from kvtc_connector.client import LoadItem, LoadResult, SaveItem, SidecarClient
from kvtc_connector.errors import (
    CalibrationMismatchError,
    HandshakeRequiredError,
    KvtcSidecarError,
    ModelMismatchError,
    NotFoundError,
    PlanUnknownError,
    ProtocolMalformedError,
    ProtocolOversizedError,
    ProtocolVersionError,
    SidecarUnavailable,
)
from kvtc_connector.fingerprint import canonical_json
from kvtc_connector.keys import chunk_keys
from kvtc_connector.protocol import PROTOCOL_VERSION

CHUNK = 64


@pytest.fixture(scope="module")
def sidecar() -> Iterator[Sidecar]:
    require_inputs()
    with running_sidecar() as s:
        yield s


@pytest.fixture
def client(sidecar: Sidecar) -> Iterator[SidecarClient]:
    with SidecarClient(sidecar.endpoint, timeout_ms=10000) as c:
        c.hello(compat())
        yield c


@pytest.fixture(autouse=True)
def still_serving(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test: the module's sidecar is alive and answers a fresh client."""
    yield
    if "sidecar" not in request.fixturenames:
        return
    s: Sidecar = request.getfixturevalue("sidecar")
    assert s.alive, "".join(s.stderr)
    with SidecarClient(s.endpoint, timeout_ms=10000) as c:
        assert c.hello(compat()).session
        assert c.stats().requests > 0


def raw_exchange(endpoint: str, frames: list[bytes], timeout_ms: int = 10000) -> dict[str, object]:
    """Sends raw frames from a raw DEALER socket; returns the decoded reply header."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
        assert sock.poll(timeout_ms, zmq.POLLIN), "no reply"
        reply = sock.recv_multipart()
        header: dict[str, object] = msgpack.unpackb(reply[0], raw=False)
        return header
    finally:
        sock.close(0)
        ctx.term()


def chunk(seed: int, key_tokens: list[int], cal: str) -> tuple[str, torch.Tensor, torch.Tensor]:
    key = chunk_keys(key_tokens, CHUNK, cal, MODEL_FINGERPRINT)[0]
    return key, random_bf16(CHUNK, seed), random_bf16(CHUNK, seed + 1)


# ------------------------------------------------------------------------------ handshake


def test_handshake(sidecar: Sidecar, client: SidecarClient) -> None:
    hello = client.hello_result
    assert hello is not None
    assert hello.calibration_id == sidecar.ready["calibration"]
    assert hello.model_fingerprint == MODEL_FINGERPRINT
    assert 8.0 in hello.ratios and hello.default_ratio in hello.ratios
    assert hello.feature_dim == FEATURES
    assert hello.sidecar.startswith("kvtc-sidecar/")
    assert hello.max_frame_bytes == 1 << 30
    # The session is the compatibility hash: compat, calibration id filled in, canonical JSON.
    wire = {**compat().to_wire(), "calibration_id": hello.calibration_id}
    expected = hashlib.sha256(canonical_json(wire).encode()).hexdigest()[:32]
    assert hello.session == expected
    with SidecarClient(sidecar.endpoint) as other:
        assert other.hello(compat()).session == hello.session  # same compat, same session
        assert other.hello(compat(layout="other")).session != hello.session
        # Naming the right calibration is accepted and gives the same session.
        named = other.hello(compat(calibration_id=hello.calibration_id))
        assert named.session == hello.session


def test_model_mismatch(sidecar: Sidecar) -> None:
    with SidecarClient(sidecar.endpoint, timeout_ms=10000) as c:
        with pytest.raises(ModelMismatchError) as e:
            c.hello(compat(model_fingerprint="f" * 32))
        assert e.value.code == "ERR_KVTC_MODEL_MISMATCH"
        with pytest.raises(ModelMismatchError):
            c.hello(compat(layers=29))
        with pytest.raises(ModelMismatchError):
            c.hello(compat(kv_heads=4))
        with pytest.raises(CalibrationMismatchError):
            c.hello(compat(calibration_id="0" * 32))
        assert c.session is None


def test_wrong_protocol_version(sidecar: Sidecar) -> None:
    header = msgpack.packb({"v": PROTOCOL_VERSION + 1, "id": 41, "op": "stats"})
    reply = raw_exchange(sidecar.endpoint, [header])
    assert reply["ok"] is False
    assert reply["id"] == 41
    assert reply["code"] == "ERR_KVTC_PROTOCOL_VERSION"
    # A version-1 envelope announcing another version in hello's compat is refused too.
    with SidecarClient(sidecar.endpoint) as c, pytest.raises(ProtocolVersionError):
        c.hello(compat(protocol=2))


def test_malformed_header(sidecar: Sidecar) -> None:
    reply = raw_exchange(sidecar.endpoint, [b"\xc1 this is not msgpack"])
    assert reply["ok"] is False and reply["id"] is None
    assert reply["code"] == "ERR_KVTC_PROTOCOL_MALFORMED"
    reply = raw_exchange(sidecar.endpoint, [msgpack.packb([1, 2, 3])])  # msgpack, not a map
    assert reply["code"] == "ERR_KVTC_PROTOCOL_MALFORMED"
    reply = raw_exchange(sidecar.endpoint, [msgpack.packb({"v": 1, "id": 5, "op": "teleport"})])
    assert (reply["id"], reply["code"]) == (5, "ERR_KVTC_PROTOCOL_MALFORMED")


def test_truncated_message(client: SidecarClient) -> None:
    # A save whose header promises KV frames that never came.
    fields = {"key": "ab" * 16, "token_start": 0, "tokens": CHUNK, "dtype": "bfloat16"}
    with pytest.raises(ProtocolMalformedError, match="2 frames"):
        client.request("save", fields)
    keys = random_bf16(CHUNK, 1)
    with pytest.raises(ProtocolMalformedError):  # one frame of two
        client.request("save", fields, [tensor_bytes(keys)])
    with pytest.raises(ProtocolMalformedError):  # frames one token short
        short = tensor_bytes(keys)[: -FEATURES * 2]
        client.request("save", fields, [short, short])
    assert client.lookup(["ab" * 16]) == 0  # nothing was stored


def test_oversized_frame(tmp_path_factory: pytest.TempPathFactory) -> None:
    with running_sidecar("--max-frame-bytes", "1000", folder=tmp_path_factory.mktemp("small")) as s:
        with SidecarClient(s.endpoint, timeout_ms=10000) as c:
            assert c.hello(compat()).max_frame_bytes == 1000
            keys = tensor_bytes(random_bf16(1, 3))  # one token: 11520 bytes
            with pytest.raises(ProtocolOversizedError):
                c.save(SaveItem("cd" * 16, keys, keys, 0, 1, "bfloat16"))
            assert c.stats().requests >= 1  # still serving
            assert c.lookup(["cd" * 16]) == 0


def test_load_of_missing_key(client: SidecarClient) -> None:
    with pytest.raises(NotFoundError) as e:
        client.load("0123456789abcdef" * 2, CHUNK, "bfloat16")
    assert e.value.code == "ERR_KVTC_NOT_FOUND"


def test_handshake_required(sidecar: Sidecar) -> None:
    with SidecarClient(sidecar.endpoint) as c, pytest.raises(HandshakeRequiredError):
        c.lookup(["ab" * 16])


def test_unknown_ratio(client: SidecarClient) -> None:
    key = "ef" * 16
    data = tensor_bytes(random_bf16(CHUNK, 5))
    with pytest.raises(PlanUnknownError):
        client.save(SaveItem(key, data, data, 0, CHUNK, "bfloat16", ratio=3.5))


# ------------------------------------------------------------------------------ operations


def test_save_lookup_load_delete(client: SidecarClient) -> None:
    hello = client.hello_result
    assert hello is not None
    tokens = list(range(100, 100 + 2 * CHUNK))
    keys = chunk_keys(tokens, CHUNK, hello.calibration_id, hello.model_fingerprint)
    k0, v0 = random_bf16(CHUNK, 10), random_bf16(CHUNK, 11)
    k1, v1 = random_bf16(CHUNK, 12), random_bf16(CHUNK, 13)
    assert client.lookup(keys) == 0
    # Chunk 0 with every token in the raw window: a lossless round trip.
    saved = client.save(
        SaveItem(keys[0], tensor_bytes(k0), tensor_bytes(v0), 0, CHUNK, "bfloat16", 8.0, CHUNK)
    )
    assert saved.key == keys[0] and saved.tier == "mem"
    assert saved.raw_bytes == 2 * CHUNK * FEATURES * 2
    assert client.lookup(keys) == 1
    loaded = client.load(keys[0], CHUNK, "bfloat16")
    assert (loaded.token_start, loaded.tokens) == (0, CHUNK)
    assert bytes(loaded.keys) == tensor_bytes(k0) and bytes(loaded.values) == tensor_bytes(v0)
    # Chunk 1 fully coded: smaller than raw, decodes to the right size.
    coded = client.save(
        SaveItem(keys[1], tensor_bytes(k1), tensor_bytes(v1), CHUNK, CHUNK, "bfloat16", 8.0, 0)
    )
    assert coded.stored_bytes < coded.raw_bytes
    assert client.lookup(keys) == 2
    back = client.load(keys[1], CHUNK, "bfloat16")
    assert back.token_start == CHUNK and len(back.keys) == CHUNK * FEATURES * 2
    # A chain is only useful up to its first gap.
    assert client.delete(keys[0]) is True
    assert client.delete(keys[0]) is False
    assert client.lookup(keys) == 0
    with pytest.raises(NotFoundError):
        client.load(keys[0], CHUNK, "bfloat16")
    stats = client.stats()
    assert stats.bytes_in >= 2 * saved.raw_bytes and stats.bytes_out >= 2 * saved.raw_bytes
    assert [s.tier for s in stats.stores] == ["mem", "file"]


def test_pipelined_batches(sidecar: Sidecar) -> None:
    with SidecarClient(sidecar.endpoint, timeout_ms=20000, max_pipeline=3) as c:
        hello = c.hello(compat())
        tokens = list(range(7000, 7000 + 8 * CHUNK))
        keys = chunk_keys(tokens, CHUNK, hello.calibration_id, hello.model_fingerprint)
        data = [random_bf16(CHUNK, 100 + i) for i in range(8)]
        items = [
            SaveItem(k, tensor_bytes(d), tensor_bytes(d), i * CHUNK, CHUNK, "bfloat16", None, CHUNK)
            for i, (k, d) in enumerate(zip(keys, data, strict=True))
        ]
        results = c.save_many(items)
        assert all(not isinstance(r, KvtcSidecarError) for r in results)
        assert [r.key for r in results if not isinstance(r, KvtcSidecarError)] == keys
        wanted = [LoadItem(k, CHUNK, "bfloat16") for k in keys]
        wanted.insert(3, LoadItem("77" * 16, CHUNK, "bfloat16"))
        loads = c.load_many(wanted)
        assert isinstance(loads[3], NotFoundError)
        del loads[3]
        for i, result in enumerate(loads):
            assert isinstance(result, LoadResult)
            assert result.token_start == i * CHUNK
            assert bytes(result.keys) == tensor_bytes(data[i])


def test_threads_share_one_client(client: SidecarClient) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                assert client.lookup(["12" * 16]) == 0
                client.stats()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ------------------------------------------------------------------------------ unavailability


def test_timeout_when_nothing_listens(tmp_path: object) -> None:
    with SidecarClient(f"ipc://{tmp_path}/nobody.sock", timeout_ms=300, retry_ms=500) as c:
        t0 = time.monotonic()
        with pytest.raises(SidecarUnavailable) as e:
            c.stats()
        waited = time.monotonic() - t0
        assert 0.25 <= waited < 1.5
        assert e.value.code == "ERR_KVTC_SIDECAR_UNAVAILABLE"
        assert isinstance(e.value, KvtcSidecarError)
        t0 = time.monotonic()  # within retry_ms: fails at once
        with pytest.raises(SidecarUnavailable, match="retrying"):
            c.hello(compat())
        assert time.monotonic() - t0 < 0.1
        time.sleep(0.6)  # after retry_ms: tries (and waits) again
        t0 = time.monotonic()
        with pytest.raises(SidecarUnavailable, match="within 300 ms"):
            c.stats()
        assert time.monotonic() - t0 >= 0.25


def test_late_reply_is_never_taken_for_another(tmp_path: object) -> None:
    """A fake sidecar answers the first request after the client gave up: the client must open
    a fresh socket so that the stale reply cannot answer the second request."""
    endpoint = f"ipc://{tmp_path}/slow.sock"
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    stop = threading.Event()

    def serve() -> None:
        first = True
        while not stop.is_set():
            if not router.poll(50):
                continue
            identity, header, *_ = router.recv_multipart()
            h = msgpack.unpackb(header, raw=False)
            if first:
                first = False
                time.sleep(0.5)  # longer than the client's timeout
                stale = {"id": h["id"], "ok": True, "stats": {"requests": 666}}
                router.send_multipart([identity, msgpack.packb(stale)])
                continue
            reply = {"id": h["id"], "ok": True, "deleted": True}
            router.send_multipart([identity, msgpack.packb(reply)])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with SidecarClient(endpoint, timeout_ms=200, retry_ms=0) as c:
            with pytest.raises(SidecarUnavailable):
                c.request("stats")
            time.sleep(0.5)  # the stale reply is sent now, to the old socket's identity
            reply = c.request("delete", {"key": "ab" * 16})
            assert reply.header == {"id": reply.header["id"], "ok": True, "deleted": True}
    finally:
        stop.set()
        thread.join()
        router.close(0)
        ctx.term()


def test_sidecar_restart_repeats_hello(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("restart")
    first = start_sidecar(folder=folder, store=f"file://{folder}/store?max=1GiB")
    try:
        with SidecarClient(first.endpoint, timeout_ms=10000, retry_ms=0) as c:
            hello = c.hello(compat())
            key = chunk_keys(list(range(CHUNK)), CHUNK, hello.calibration_id, MODEL_FINGERPRINT)[0]
            data = tensor_bytes(random_bf16(CHUNK, 9))
            c.save(SaveItem(key, data, data, 0, CHUNK, "bfloat16", None, CHUNK))
            assert first.stop() == 0  # SIGTERM: a clean exit
            with pytest.raises(SidecarUnavailable):
                c.lookup([key])
            second = start_sidecar(folder=folder, store=f"file://{folder}/store?max=1GiB")
            try:
                # The new process has no sessions: the client says hello again by itself, and
                # the file store kept the record.
                assert c.lookup([key]) == 1
                assert bytes(c.load(key, CHUNK, "bfloat16").keys) == data
            finally:
                second.stop()
    finally:
        first.stop()


def test_every_code_has_its_class() -> None:
    from kvtc_connector import errors
    from kvtc_connector.protocol import ERROR_CODES

    classes = {errors.error_class(code) for code in ERROR_CODES}
    assert len(classes) == len(ERROR_CODES)  # 1:1
    for code in ERROR_CODES:
        e = errors.error_from_reply(code, "why")
        assert (e.code, e.message, type(e).CODE) == (code, "why", code)
        assert isinstance(e, KvtcSidecarError)
    assert isinstance(errors.error_from_reply("ERR_KVTC_RECORD_CORRUPT", ""), errors.RecordError)
    unknown = errors.error_from_reply("ERR_KVTC_FROM_THE_FUTURE", None)
    assert type(unknown) is KvtcSidecarError and unknown.code == "ERR_KVTC_FROM_THE_FUTURE"
