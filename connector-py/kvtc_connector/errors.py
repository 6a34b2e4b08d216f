"""Exceptions for sidecar replies: one class per ``ERR_KVTC_*`` code (docs/errors.md).

A reply ``{ok: false, code, message}`` becomes ``error_from_reply(code, message)``, an instance of
the class registered for ``code`` (a plain :class:`KvtcSidecarError` for a code this build does not
know, so a newer sidecar never breaks an older connector). Every class carries ``code`` and
``message``; ``except KvtcSidecarError`` catches all of them, including
:class:`SidecarUnavailable`, which the client raises itself when no reply comes in time.

For the connector every one of these is a cache miss: vLLM recomputes.
"""

from __future__ import annotations

from typing import ClassVar

from kvtc_connector import protocol as p

__all__ = [
    "BackendUnavailableError",
    "BusyError",
    "CalibrationInvalidError",
    "CalibrationMismatchError",
    "DeadlineError",
    "DeflateError",
    "HandshakeRequiredError",
    "InternalError",
    "InvalidArgumentError",
    "KvtcSidecarError",
    "ModelMismatchError",
    "NativeLoadError",
    "NotFoundError",
    "NumericalError",
    "PlanUnknownError",
    "ProtocolMalformedError",
    "ProtocolOversizedError",
    "ProtocolVersionError",
    "RecordBadMagicError",
    "RecordCorruptError",
    "RecordEmptyError",
    "RecordError",
    "RecordLengthError",
    "RecordSizeMismatchError",
    "RecordTruncatedError",
    "RecordVersionError",
    "ShuttingDownError",
    "SidecarUnavailable",
    "StoreFullError",
    "StoreIoError",
    "error_class",
    "error_from_reply",
]


class KvtcSidecarError(Exception):
    """An error the sidecar answered (or, for :class:`SidecarUnavailable`, the client saw).

    ``CODE`` is the code a subclass stands for; the instance's ``code`` is the code received.
    """

    CODE: ClassVar[str | None] = None

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[KvtcSidecarError], tuple[str, str]]:
        # Picklable with its code (vLLM moves exceptions between processes).
        return (type(self), (self.code, self.message))


class InvalidArgumentError(KvtcSidecarError):
    """A parameter is out of range or of the wrong type or shape."""

    CODE = p.ERR_KVTC_INVALID_ARGUMENT


class RecordError(KvtcSidecarError):
    """Base of the ``ERR_KVTC_RECORD_*`` codes: the stored record is unusable (a miss)."""


class RecordEmptyError(RecordError):
    """A record of 0 bytes."""

    CODE = p.ERR_KVTC_RECORD_EMPTY


class RecordTruncatedError(RecordError):
    """Fewer bytes than the header, or than the record declares."""

    CODE = p.ERR_KVTC_RECORD_TRUNCATED


class RecordBadMagicError(RecordError):
    """The bytes are not a kvtc record."""

    CODE = p.ERR_KVTC_RECORD_BAD_MAGIC


class RecordVersionError(RecordError):
    """A record format version the sidecar does not read."""

    CODE = p.ERR_KVTC_RECORD_VERSION


class RecordCorruptError(RecordError):
    """A CRC32C fails or the structure is inconsistent."""

    CODE = p.ERR_KVTC_RECORD_CORRUPT


class RecordLengthError(RecordError):
    """A declared length or offset falls outside the record."""

    CODE = p.ERR_KVTC_RECORD_LENGTH


class RecordSizeMismatchError(RecordError):
    """The record decodes to another size (tokens, dtype) than the caller expects."""

    CODE = p.ERR_KVTC_RECORD_SIZE_MISMATCH


class CalibrationMismatchError(KvtcSidecarError):
    """Another calibration wrote the record, or the client expects another calibration."""

    CODE = p.ERR_KVTC_CALIBRATION_MISMATCH


class ModelMismatchError(KvtcSidecarError):
    """The client's model (fingerprint or KV shape) is not the calibration's."""

    CODE = p.ERR_KVTC_MODEL_MISMATCH


class PlanUnknownError(KvtcSidecarError):
    """A ratio the calibration has no plan for."""

    CODE = p.ERR_KVTC_PLAN_UNKNOWN


class CalibrationInvalidError(KvtcSidecarError):
    """A calibration file is unreadable, inconsistent or modified."""

    CODE = p.ERR_KVTC_CALIBRATION_INVALID


class DeflateError(KvtcSidecarError):
    """A DEFLATE chunk is malformed."""

    CODE = p.ERR_KVTC_DEFLATE


class BackendUnavailableError(KvtcSidecarError):
    """A codec backend that is not built, or has no device."""

    CODE = p.ERR_KVTC_BACKEND_UNAVAILABLE


class NumericalError(KvtcSidecarError):
    """NaN/Inf in calibration data, or a LAPACK failure."""

    CODE = p.ERR_KVTC_NUMERICAL


class IpcError(KvtcSidecarError):
    """A CUDA IPC handle or event that does not open, memory smaller than its layout, or a
    cuMem/VMM allocation (e.g. PyTorch's expandable_segments), which legacy IPC cannot share."""

    CODE = p.ERR_KVTC_IPC


class DeviceUnknownError(KvtcSidecarError):
    """The registered KV cache lives on a GPU the sidecar cannot see."""

    CODE = p.ERR_KVTC_DEVICE_UNKNOWN


class KvUnregisteredError(KvtcSidecarError):
    """A block operation from a session that registered no KV cache (or lost it on a restart)."""

    CODE = p.ERR_KVTC_KV_UNREGISTERED


class NativeLoadError(KvtcSidecarError):
    """The sidecar cannot load its native addon."""

    CODE = p.ERR_KVTC_NATIVE_LOAD


class InternalError(KvtcSidecarError):
    """A bug in the sidecar."""

    CODE = p.ERR_KVTC_INTERNAL


class ProtocolMalformedError(KvtcSidecarError):
    """A header that is not a msgpack map, a missing or mistyped field, wrong frames."""

    CODE = p.ERR_KVTC_PROTOCOL_MALFORMED


class ProtocolVersionError(KvtcSidecarError):
    """The request's ``v`` (or the hello's ``compat.protocol``) is not the sidecar's version."""

    CODE = p.ERR_KVTC_PROTOCOL_VERSION


class ProtocolOversizedError(KvtcSidecarError):
    """A frame larger than the sidecar's ``max_frame_bytes``."""

    CODE = p.ERR_KVTC_PROTOCOL_OVERSIZED


class HandshakeRequiredError(KvtcSidecarError):
    """No ``hello`` yet, or the sidecar restarted and forgot the session."""

    CODE = p.ERR_KVTC_HANDSHAKE_REQUIRED


class BusyError(KvtcSidecarError):
    """The sidecar has ``--max-in-flight`` requests in progress."""

    CODE = p.ERR_KVTC_BUSY


class DeadlineError(KvtcSidecarError):
    """The request's ``deadline_ms`` expired before its work started."""

    CODE = p.ERR_KVTC_DEADLINE


class NotFoundError(KvtcSidecarError):
    """No record under the key."""

    CODE = p.ERR_KVTC_NOT_FOUND


class StoreFullError(KvtcSidecarError):
    """No store had room for the record."""

    CODE = p.ERR_KVTC_STORE_FULL


class StoreIoError(KvtcSidecarError):
    """A store failed to read or write."""

    CODE = p.ERR_KVTC_STORE_IO


class ShuttingDownError(KvtcSidecarError):
    """The sidecar is stopping and takes no new work."""

    CODE = p.ERR_KVTC_SHUTTING_DOWN


class SidecarUnavailable(KvtcSidecarError):
    """No reply within the client's timeout (the sidecar is down, hung or unreachable)."""

    CODE = p.ERR_KVTC_SIDECAR_UNAVAILABLE


def _subclasses(cls: type[KvtcSidecarError]) -> list[type[KvtcSidecarError]]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


_BY_CODE: dict[str, type[KvtcSidecarError]] = {
    sub.CODE: sub for sub in _subclasses(KvtcSidecarError) if sub.CODE is not None
}
_missing = [code for code in p.ERROR_CODES if code not in _BY_CODE]
if _missing:  # pragma: no cover - a code added to protocol.py without a class here
    raise ImportError(f"kvtc_connector.errors has no class for {', '.join(_missing)}")


def error_class(code: str) -> type[KvtcSidecarError]:
    """The class registered for ``code``; :class:`KvtcSidecarError` for an unknown code."""
    return _BY_CODE.get(code, KvtcSidecarError)


def error_from_reply(code: object, message: object) -> KvtcSidecarError:
    """The exception for a reply's ``code`` and ``message`` (either may be missing or mistyped)."""
    code_s = code if isinstance(code, str) and code else p.ERR_KVTC_INTERNAL
    message_s = message if isinstance(message, str) else "the sidecar refused the request"
    return error_class(code_s)(code_s, message_s)
