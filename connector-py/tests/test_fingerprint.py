"""Model fingerprint: the exact byte-level definition and what changes it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kvtc_connector.fingerprint import model_fingerprint, weight_files

SHAPE = {
    "layers": 2,
    "kv_heads": 1,
    "head_dim": 4,
    "rope": {"theta": 1e4, "rotary_dim": 4, "layout": "neox", "scaling": {"type": "default"}},
}


def _expected(shape: dict[str, object], files: list[Path]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(shape, sort_keys=True, separators=(",", ":")).encode())
    h.update(b"\n")
    for f in files:
        h.update(f.name.encode() + b"\n" + hashlib.sha256(f.read_bytes()).hexdigest().encode())
        h.update(b"\n")
    return h.hexdigest()[:32]


def test_folder_of_safetensors(tmp_path: Path) -> None:
    # > 1 MiB so that streaming crosses a block boundary
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"b" * (3 << 20) + b"x")
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"a" * 100)
    (tmp_path / "config.json").write_text("{}")
    files = weight_files(tmp_path)
    assert [f.name for f in files] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    fp = model_fingerprint(tmp_path, SHAPE)
    assert fp == _expected(SHAPE, files)
    assert len(fp) == 32 and int(fp, 16) >= 0

    # Any change to the shape or the weights changes it.
    assert model_fingerprint(tmp_path, {**SHAPE, "layers": 3}) != fp
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"a" * 99 + b"c")
    assert model_fingerprint(tmp_path, SHAPE) != fp


def test_gguf_file_and_errors(tmp_path: Path) -> None:
    gguf = tmp_path / "m.Q4_1.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)))
    assert model_fingerprint(gguf, SHAPE) == _expected(SHAPE, [gguf])
    assert model_fingerprint(tmp_path, SHAPE) == _expected(SHAPE, [gguf])  # folder with one gguf
    with pytest.raises(FileNotFoundError):
        model_fingerprint(tmp_path / "missing", SHAPE)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError):
        model_fingerprint(empty, SHAPE)


def test_stories260k_fingerprint_is_stable() -> None:
    model = Path("/work/shared/models/stories260K/hf")
    if not model.is_dir():
        pytest.skip("stories260K not available")
    shape = {**SHAPE, "layers": 5, "kv_heads": 4, "head_dim": 8}
    shape["rope"] = {**SHAPE["rope"], "rotary_dim": 8}  # type: ignore[dict-item]
    assert model_fingerprint(model, shape) == model_fingerprint(model, dict(shape))
