"""Capture real KV caches from a transformers causal LM into safetensors files.

These files are the calibration and evaluation input of the kvtc codec (paper section 3.1:
"forward every calibration sequence and collect its KV cache"). One file per document::

    OUT/seq-00000.safetensors
        keys       float32 [tokens, layers, kv_heads, head_dim]  post-RoPE, as the model cached them
        values     float32 [tokens, layers, kv_heads, head_dim]
        positions  int64   [tokens]                              absolute positions 0..T-1
        input_ids  int64   [tokens]
        metadata   {"kvtc_capture": JSON string, see below}
    OUT/manifest.json

The ``kvtc_capture`` metadata is ``{"format": 1, "model", "model_fingerprint", "layers",
"kv_heads", "head_dim", "rope", "dtype": "float32", "compute_dtype", "document", "tokens"}`` where
``rope`` is the canonical dict of :mod:`kvtc_connector.rope` and ``document`` the 0-based index of
the document in the texts file. Keys stay post-RoPE on purpose: removing RoPE is the codec's job,
and :func:`kvtc_connector.rope.remove_rope` at ``positions`` is its reference.

Texts: UTF-8, documents separated by a line that contains only ``---``; or ``.jsonl`` with one
``{"text": ...}`` object per line. Every document is tokenized as the tokenizer does by default
(BOS where the tokenizer adds one), truncated to ``--max-tokens`` and forwarded once with
``use_cache=True``. Errors exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from kvtc_connector.fingerprint import model_fingerprint
from kvtc_connector.rope import rope_params_from_config

__all__ = ["CAPTURE_FORMAT", "CaptureError", "LoadedModel", "load_model", "main", "read_texts"]

CAPTURE_FORMAT = 1
SEPARATOR = "---"
METADATA_KEY = "kvtc_capture"

logger = logging.getLogger("kvtc_connector.capture")


class CaptureError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


@dataclass
class LoadedModel:
    """A model ready for capture, with the fields every capture file records."""

    model: Any
    tokenizer: Any
    name: str
    weights: Path  # folder with *.safetensors, or the .gguf file (what the fingerprint covers)
    layers: int
    kv_heads: int
    head_dim: int
    rope: dict[str, Any]
    fingerprint: str
    max_position_embeddings: int | None

    def shape_fields(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "model_fingerprint": self.fingerprint,
            "layers": self.layers,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "rope": self.rope,
        }


def read_texts(path: Path) -> list[str]:
    """Documents of a texts file (``---``-separated, or ``.jsonl`` with ``{"text": ...}``)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CaptureError(f"{path}: texts file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CaptureError(f"{path}: cannot read texts file: {e}") from None

    docs: list[str] = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text = record["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CaptureError(f'{path}:{number}: expected a JSON object with "text"') from None
            if not isinstance(text, str):
                raise CaptureError(f'{path}:{number}: "text" is not a string')
            docs.append(text)
    else:
        current: list[str] = []
        for line in raw.splitlines():
            if line.strip() == SEPARATOR:
                docs.append("\n".join(current))
                current = []
            else:
                current.append(line)
        docs.append("\n".join(current))
    docs = [d.strip() for d in docs]
    docs = [d for d in docs if d]
    if not docs:
        raise CaptureError(f"{path}: no documents (empty texts file)")
    return docs


def _default_model_name(path: Path) -> str:
    if path.is_file():
        return path.stem
    resolved = path.resolve()
    # A transformers folder is often just "hf" inside the model's own folder.
    if resolved.name in ("hf", "model", "weights") and resolved.parent.name:
        return resolved.parent.name
    return resolved.name


def load_model(model_path: Path, dtype: str = "float32", name: str | None = None) -> LoadedModel:
    """Load a causal LM and tokenizer from a safetensors folder or a GGUF file, offline."""
    if not model_path.exists():
        raise CaptureError(f"{model_path}: model file or folder not found")
    if model_path.is_file():
        if model_path.suffix != ".gguf":
            raise CaptureError(f"{model_path}: expected a model folder or a .gguf file")
        source, gguf_file = model_path.parent, model_path.name
    else:
        source, gguf_file = model_path, None
        if not (model_path / "config.json").is_file():
            ggufs = sorted(model_path.glob("*.gguf"))
            if len(ggufs) != 1:
                raise CaptureError(
                    f"{model_path}: no config.json and not exactly one .gguf file in the folder"
                )
            gguf_file = ggufs[0].name
            model_path = ggufs[0]

    # Local files only: never reach for a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise CaptureError(
            f"capture needs torch and transformers (pip install 'kvtc-connector[capture]'): {e}"
        ) from None
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        dtype
    ]
    kwargs: dict[str, Any] = {"local_files_only": True}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file

    def _cannot(what: str, e: Exception) -> CaptureError:
        message = " ".join(str(e).split())
        return CaptureError(f"{model_path}: cannot load {what}: {type(e).__name__}: {message}")

    # transformers raises many exception types; each one here means "cannot load this model".
    try:
        config = AutoConfig.from_pretrained(str(source), **kwargs)
    except Exception as e:
        raise _cannot("config", e) from e
    # Check the RoPE variant before paying for the weights (a GGUF is dequantized on load).
    try:
        rope = rope_params_from_config(config)
    except ValueError as e:
        raise CaptureError(f"{model_path}: {e}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)
    except Exception as e:
        raise _cannot("tokenizer", e) from e
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(source), config=config, dtype=torch_dtype, **kwargs
        )
    except Exception as e:
        raise _cannot("model", e) from e
    model.eval()
    layers = int(config.num_hidden_layers)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = int(
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )
    weights = model_path
    shape = {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim, "rope": rope}
    try:
        fingerprint = model_fingerprint(weights, shape)
    except FileNotFoundError as e:
        raise CaptureError(str(e)) from None
    max_pos = getattr(config, "max_position_embeddings", None)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name or _default_model_name(model_path),
        weights=weights,
        layers=layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        rope=rope,
        fingerprint=fingerprint,
        max_position_embeddings=int(max_pos) if max_pos else None,
    )


def _cache_layers(cache: Any) -> list[tuple[Any, Any]]:
    """(keys, values) per layer, each [batch, kv_heads, tokens, head_dim], from any cache form."""
    layers = getattr(cache, "layers", None)
    if layers is not None:  # transformers 5.x Cache: one CacheLayer per layer
        return [(layer.keys, layer.values) for layer in layers]
    if hasattr(cache, "key_cache"):  # transformers 4.x DynamicCache
        return list(zip(cache.key_cache, cache.value_cache, strict=True))
    return [(entry[0], entry[1]) for entry in cache]  # legacy tuple of (k, v) tuples


def capture_kv(loaded: LoadedModel, input_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Forward ``input_ids`` once; keys and values as float32 [T, layers, kv_heads, head_dim]."""
    import torch

    tokens = len(input_ids)
    ids = torch.tensor([list(input_ids)], dtype=torch.long, device=loaded.model.device)
    with torch.inference_mode():
        out = loaded.model(input_ids=ids, use_cache=True)
    per_layer = _cache_layers(out.past_key_values)
    if len(per_layer) != loaded.layers:
        raise CaptureError(f"model cached {len(per_layer)} layers, config says {loaded.layers}")
    expected = (1, loaded.kv_heads, tokens, loaded.head_dim)
    for index, (k, v) in enumerate(per_layer):
        if tuple(k.shape) != expected or tuple(v.shape) != expected:
            raise CaptureError(
                f"layer {index} cached keys {tuple(k.shape)} / values {tuple(v.shape)}, expected "
                f"{expected} (sliding-window or otherwise unsupported attention?)"
            )
    # [layers, batch=1, kv_heads, T, head_dim] -> [T, layers, kv_heads, head_dim]
    keys = torch.stack([k for k, _ in per_layer])[:, 0].permute(2, 0, 1, 3)
    values = torch.stack([v for _, v in per_layer])[:, 0].permute(2, 0, 1, 3)
    return (
        np.ascontiguousarray(keys.to(torch.float32).cpu().numpy()),
        np.ascontiguousarray(values.to(torch.float32).cpu().numpy()),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kvtc_connector.capture",
        description=(
            "Run a transformers causal LM over a file of documents and write each document's KV "
            "cache (keys post-RoPE, values; float32 [tokens, layers, kv_heads, head_dim]) to "
            "OUT/seq-NNNNN.safetensors, plus OUT/manifest.json."
        ),
        epilog=(
            "examples:\n"
            "  python -m kvtc_connector.capture --model shared/models/stories260K/hf \\\n"
            "      --texts connector-py/kvtc_connector/data/stories-calib.txt --out .cache/kv/s\n"
            "  python -m kvtc_connector.capture \\\n"
            "      --model .cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\\n"
            "      --texts connector-py/kvtc_connector/data/general-calib.txt --out .cache/kv/g\n"
            "\nexit status: 0 on success, 2 on a usage or input error (one line on stderr)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        help="transformers model folder (config.json + *.safetensors) or a .gguf file",
    )
    parser.add_argument(
        "--texts",
        required=True,
        type=Path,
        help="UTF-8 text file, documents separated by a line '---'; or .jsonl with {\"text\": ...}",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="truncate each document to N tokens (default: the model's max_position_embeddings)",
    )
    parser.add_argument(
        "--min-tokens",
        type=int,
        default=8,
        help="skip documents shorter than N tokens, with a warning (default: 8)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="dtype the model runs in; files always store float32 (default: float32)",
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device to run on, e.g. cpu or cuda (default: cpu)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is steadier on a busy machine)",
    )
    parser.add_argument(
        "--model-name",
        default=None,
        help="name recorded in the metadata (default: derived from the model path)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace seq-*.safetensors and manifest.json already in OUT",
    )
    return parser


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CaptureError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    stale = sorted(out.glob("seq-*.safetensors")) + sorted(out.glob("manifest.json"))
    if stale and not overwrite:
        raise CaptureError(f"{out}: already holds a capture ({stale[0].name}); pass --overwrite")
    for path in stale:
        path.unlink()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Capture every document of ``args.texts``; return the manifest that was written."""
    if args.max_tokens is not None and args.max_tokens < 1:
        raise CaptureError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.min_tokens < 1:
        raise CaptureError(f"--min-tokens must be >= 1, got {args.min_tokens}")
    started = time.perf_counter()
    docs = read_texts(args.texts)
    _prepare_out(args.out, args.overwrite)

    if args.threads is not None:
        if args.threads < 1:
            raise CaptureError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, args.dtype, args.model_name)
    if args.device != "cpu":
        loaded.model.to(args.device)
    load_seconds = time.perf_counter() - started
    max_tokens = args.max_tokens or loaded.max_position_embeddings

    files: list[dict[str, Any]] = []
    skipped: list[dict[str, int]] = []
    with logging_redirect_tqdm():
        for index, text in enumerate(tqdm(docs, desc="capture", unit="doc")):
            encoded = loaded.tokenizer(
                text, truncation=max_tokens is not None, max_length=max_tokens
            )
            input_ids = [int(t) for t in encoded["input_ids"]]
            if len(input_ids) < args.min_tokens:
                logger.warning(
                    "%s: document %d has %d tokens (< --min-tokens %d); skipped",
                    args.texts,
                    index,
                    len(input_ids),
                    args.min_tokens,
                )
                skipped.append({"document": index, "tokens": len(input_ids)})
                continue
            keys, values = capture_kv(loaded, input_ids)
            tokens = len(input_ids)
            metadata = {
                "format": CAPTURE_FORMAT,
                **loaded.shape_fields(),
                "dtype": "float32",
                "compute_dtype": args.dtype,
                "document": index,
                "tokens": tokens,
            }
            name = f"seq-{len(files):05d}.safetensors"
            save_file(
                {
                    "keys": keys,
                    "values": values,
                    "positions": np.arange(tokens, dtype=np.int64),
                    "input_ids": np.asarray(input_ids, dtype=np.int64),
                },
                str(args.out / name),
                metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)},
            )
            files.append({"file": name, "document": index, "tokens": tokens})

    if not files:
        raise CaptureError(
            f"{args.texts}: no document has at least --min-tokens {args.min_tokens} tokens"
        )
    manifest = {
        "format": CAPTURE_FORMAT,
        **loaded.shape_fields(),
        "dtype": "float32",
        "compute_dtype": args.dtype,
        "layout": "keys/values float32 [tokens, layers, kv_heads, head_dim], keys post-RoPE",
        "texts": args.texts.name,
        "max_tokens": max_tokens,
        "min_tokens": args.min_tokens,
        "documents": len(docs),
        "total_tokens": sum(f["tokens"] for f in files),
        "files": files,
        "skipped": skipped,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    total_seconds = time.perf_counter() - started
    print(
        f"captured {len(files)}/{len(docs)} documents, {manifest['total_tokens']} tokens "
        f"({len(skipped)} skipped) from {loaded.name} [{loaded.layers} layers x {loaded.kv_heads} "
        f"kv heads x {loaded.head_dim}] into {args.out} in {total_seconds:.1f}s "
        f"(load {load_seconds:.1f}s)"
    )
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        run(args)
    except CaptureError as e:
        print(f"kvtc-capture: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
