"""Chunk keys: the names under which the sidecar stores a sequence's chunks (docs/protocol.md).

A sequence is cut into chunks of ``chunk_tokens`` tokens; only full chunks have keys. Key ``i`` is
the first 16 bytes (hex) of SHA-256 over

1. the previous key, 16 raw bytes (16 zero bytes for the first chunk),
2. the calibration id and the model fingerprint, hex, as ASCII,
3. the chunk's token ids as little-endian int32.

So a key names a chunk *and its whole prefix*: two sequences share key ``i`` only if they share
their first ``(i + 1) * chunk_tokens`` tokens, model and calibration. Any process on any node
computes the same keys (never Python's ``hash()``, which is salted per process).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

__all__ = ["KEY_BYTES", "ROOT", "ChunkKeyChain", "chunk_key", "chunk_keys"]

KEY_BYTES = 16
ROOT = bytes(KEY_BYTES)
_HEX32 = frozenset("0123456789abcdef")
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _check_hex32(name: str, value: str) -> bytes:
    if len(value) != 32 or not set(value) <= _HEX32:
        raise ValueError(f"Expected 32 lowercase hex characters for {name} but received {value!r}")
    return value.encode("ascii")


def _token_bytes(tokens: Sequence[int]) -> bytes:
    arr = np.asarray(tokens, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"Expected a flat sequence of token ids but received shape {arr.shape}")
    if arr.size and (int(arr.min()) < _INT32_MIN or int(arr.max()) > _INT32_MAX):
        raise ValueError("Expected token ids that fit in int32")
    return arr.astype("<i4").tobytes()


def chunk_key(previous: bytes, salt: bytes, tokens: Sequence[int]) -> bytes:
    """The raw 16-byte key of one chunk, ``salt`` being calibration id + fingerprint (ASCII)."""
    if len(previous) != KEY_BYTES:
        raise ValueError(f"Expected a {KEY_BYTES}-byte previous key but received {len(previous)}")
    digest = hashlib.sha256()
    digest.update(previous)
    digest.update(salt)
    digest.update(_token_bytes(tokens))
    return digest.digest()[:KEY_BYTES]


def chunk_keys(
    tokens: Sequence[int], chunk_tokens: int, calibration_id: str, model_fingerprint: str
) -> list[str]:
    """Hex keys of every full chunk of ``tokens``, in sequence order."""
    chain = ChunkKeyChain(chunk_tokens, calibration_id, model_fingerprint)
    return chain.extend(tokens)


class ChunkKeyChain:
    """The keys of one growing sequence, computed once each: ``extend`` hashes only new chunks.

    ``extend(tokens)`` takes the whole sequence seen so far (a request's ``all_token_ids``) and
    returns all its full-chunk keys; the caller must pass the same prefix every time.
    """

    def __init__(self, chunk_tokens: int, calibration_id: str, model_fingerprint: str) -> None:
        if chunk_tokens <= 0:
            raise ValueError(f"Expected a positive chunk_tokens but received {chunk_tokens}")
        self.chunk_tokens = chunk_tokens
        self._salt = _check_hex32("calibration_id", calibration_id) + _check_hex32(
            "model_fingerprint", model_fingerprint
        )
        self._raw: list[bytes] = []
        self.keys: list[str] = []

    def extend(self, tokens: Sequence[int]) -> list[str]:
        full = len(tokens) // self.chunk_tokens
        c = self.chunk_tokens
        for i in range(len(self._raw), full):
            previous = self._raw[-1] if self._raw else ROOT
            raw = chunk_key(previous, self._salt, tokens[i * c : (i + 1) * c])
            self._raw.append(raw)
            self.keys.append(raw.hex())
        return self.keys[:full]
