"""Prefill time of a Llama-shaped model on the GPU: the recompute baseline of a KV restore.

No 8B checkpoint can reach the GPU machine, so the model is built from its architecture with
random bf16 weights (transformers, SDPA attention): the prefill's FLOPs and memory traffic are
those of the real model; only the outputs are meaningless. Prints one JSON line per shape.

  python3 bench/prefill.py --shape 8b --tokens 8192 --reps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    # Llama 3.1 8B: 32 layers x 8 KV heads x 128 (the codec bench's "8b" shape)
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
    ),
    # Llama 3.2 1B: 16 layers x 8 KV heads x 64
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    cfg = LlamaConfig(**SHAPES[a.shape], max_position_embeddings=max(131072, a.tokens), torch_dtype="bfloat16")
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, a.tokens), device="cuda")
    times = []
    with torch.no_grad():
        for i in range(a.reps + 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            # Prefill as a server runs it: fill the cache, keep only the last token's logits.
            model(ids, use_cache=True, logits_to_keep=1)
            torch.cuda.synchronize()
            if i:  # the first run warms up kernels and the allocator
                times.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "shape": a.shape,
                "tokens": a.tokens,
                "prefill_s": statistics.median(times),
                "reps": a.reps,
                "gpu": torch.cuda.get_device_name(),
                "torch": torch.__version__,
                "attention": "sdpa",
            }
        )
    )


if __name__ == "__main__":
    main()
