"""Chunk keys (docs/protocol.md "Chunk keys"): fixed vectors and the chain's properties."""

from __future__ import annotations

import hashlib
import struct

import pytest

from kvtc_connector.keys import ChunkKeyChain, chunk_keys

CAL = "94cb5575fb0b6f1fed8be319621f639e"
FP = "e20b53f8bee8b537a3cd36e926abcdcc"


def reference_keys(tokens: list[int], chunk: int, cal: str, fp: str) -> list[str]:
    """The definition, written out a second way (struct per token, one bytes concatenation)."""
    previous = bytes(16)
    out = []
    for i in range(len(tokens) // chunk):
        body = b"".join(struct.pack("<i", t) for t in tokens[i * chunk : (i + 1) * chunk])
        previous = hashlib.sha256(previous + cal.encode() + fp.encode() + body).digest()[:16]
        out.append(previous.hex())
    return out


def test_fixed_vectors() -> None:
    # Vectors computed once from the definition; any other implementation must reproduce them.
    assert chunk_keys(list(range(8)), 4, "0" * 32, "f" * 32) == [
        "eb0db1559667e5a2247c8c33b7c4dfb6",
        "436725d8662748d2040372afc6875e37",
    ]
    assert chunk_keys([1, 70000, 49151, 2**31 - 1, 0, 5, 6, 7, 8], 3, CAL, FP) == [
        "b1704ad98de69cb9376c30187a682ba4",
        "dba8c89ff76c9fe5abe2a55a6d795005",
        "6e4e6fe34112c5152b66e12c9801cd3f",
    ]


def test_matches_reference_definition() -> None:
    tokens = [(i * 7919) % 49152 for i in range(1000)]
    assert chunk_keys(tokens, 256, CAL, FP) == reference_keys(tokens, 256, CAL, FP)


def test_only_full_chunks_have_keys() -> None:
    assert chunk_keys(list(range(255)), 256, CAL, FP) == []
    assert len(chunk_keys(list(range(767)), 256, CAL, FP)) == 2


def test_key_names_the_whole_prefix() -> None:
    a = list(range(512))
    b = list(range(512))
    b[3] = 9999  # differs in chunk 0 only
    ka, kb = chunk_keys(a, 256, CAL, FP), chunk_keys(b, 256, CAL, FP)
    assert ka[0] != kb[0] and ka[1] != kb[1]  # chunk 1 has the same tokens, another prefix
    c = a[:256] + [7] * 256
    kc = chunk_keys(c, 256, CAL, FP)
    assert kc[0] == ka[0] and kc[1] != ka[1]


def test_model_and_calibration_salt_the_keys() -> None:
    tokens = list(range(256))
    base = chunk_keys(tokens, 256, CAL, FP)
    assert chunk_keys(tokens, 256, "1" * 32, FP) != base
    assert chunk_keys(tokens, 256, CAL, "2" * 32) != base


def test_chain_extends_incrementally() -> None:
    tokens = [(i * 31) % 5000 for i in range(1100)]
    chain = ChunkKeyChain(256, CAL, FP)
    assert chain.extend(tokens[:300]) == chunk_keys(tokens[:300], 256, CAL, FP)
    assert chain.extend(tokens[:900]) == chunk_keys(tokens[:900], 256, CAL, FP)
    assert chain.extend(tokens) == chunk_keys(tokens, 256, CAL, FP)
    assert len(chain.keys) == 4


@pytest.mark.parametrize(
    ("cal", "fp", "chunk", "tokens"),
    [
        ("ABC", FP, 4, [1, 2, 3, 4]),
        (CAL, "g" * 32, 4, [1, 2, 3, 4]),
        (CAL, FP, 0, [1, 2, 3, 4]),
        (CAL, FP, 2, [1, 2**31]),
    ],
)
def test_rejects_bad_inputs(cal: str, fp: str, chunk: int, tokens: list[int]) -> None:
    with pytest.raises(ValueError, match="Expected"):
        chunk_keys(tokens, chunk, cal, fp)
