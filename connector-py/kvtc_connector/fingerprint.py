"""Model fingerprint: a stable identifier for "these weights with this KV shape and RoPE".

A calibration (PCA basis, bit plan) is only valid for the exact model that produced the KV cache
it was fitted on, so capture files, calibration files and compressed records carry this
fingerprint and refuse to mix.

Definition (must stay byte-for-byte stable; any other implementation has to reproduce it)::

    h = sha256()
    h.update(json.dumps(shape, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    h.update(b"\\n")
    for f in weight_files:                       # sorted by file name
        h.update(f.name.encode("utf-8"))         # base name, e.g. b"model.safetensors"
        h.update(b"\\n")
        h.update(sha256(f.read_bytes()).hexdigest().encode("ascii"))   # 64 lowercase hex chars
        h.update(b"\\n")
    fingerprint = h.hexdigest()[:32]

``shape`` is ``{"layers", "kv_heads", "head_dim", "rope"}`` with ``rope`` the canonical dict of
:mod:`kvtc_connector.rope`. ``weight_files`` are the ``*.safetensors`` files of a model folder,
or, when the folder has none, its ``*.gguf`` files, or the single ``.gguf``/``.safetensors`` file
given directly. File contents are streamed in 1 MiB blocks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["FINGERPRINT_HEX_CHARS", "canonical_json", "model_fingerprint", "weight_files"]

FINGERPRINT_HEX_CHARS = 32
_BLOCK = 1 << 20


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the form that is hashed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def weight_files(model_dir_or_file: str | Path) -> list[Path]:
    """The weight files a fingerprint covers, sorted by name. Raises FileNotFoundError if none."""
    path = Path(model_dir_or_file)
    if path.is_file():
        if path.suffix not in (".gguf", ".safetensors"):
            raise FileNotFoundError(f"{path}: not a .gguf or .safetensors weight file")
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model file or folder")
    files = sorted(path.glob("*.safetensors"), key=lambda p: p.name)
    if not files:
        files = sorted(path.glob("*.gguf"), key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors or *.gguf weight files")
    return files


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(model_dir_or_file: str | Path, shape: Mapping[str, Any]) -> str:
    """First 32 hex chars of the sha256 described in the module docstring."""
    digest = hashlib.sha256()
    digest.update(canonical_json(dict(shape)).encode("utf-8"))
    digest.update(b"\n")
    for path in weight_files(model_dir_or_file):
        digest.update(path.name.encode("utf-8"))
        digest.update(b"\n")
        digest.update(_file_sha256(path).encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()[:FINGERPRINT_HEX_CHARS]
