#!/usr/bin/env python3
"""What the 1.25x target leaves for everything but the GEMMs, per row of a GPU bench result
(`kvtc-sidecar bench codec --backend cuda --json`, e.g. bench/results/gpu-2026-12-01.json).

Per row and direction: the pipeline's time, its own GEMMs' time (pipeline over gemm_ratio_*), the
time 1.25x leaves for all the other work (inflate or coder, quantize, prologue or epilogue,
staging), and that time as a throughput of coded record bytes: the rate the entropy coder alone
would need if everything else were free.

    python3 scripts/gemm-budget.py bench/results/gpu-2026-12-01.json
"""
import argparse
import json

TARGET = 1.25


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="a bench JSON (its `results` rows need gemm_ratio_encode/decode)")
    args = ap.parse_args()
    with open(args.results) as f:
        rows = json.load(f)["results"]
    print(
        f"{'shape':8} {'tokens':>6} {'batch':>5} {'paged':5} {'proj':4} {'coded MB':>8} | "
        f"{'dir':6} {'ms':>7} {'GEMM ms':>7} {'x GEMM':>6} {'left ms':>7} {'coder GB/s':>10}"
    )
    for r in rows:
        coded = r["record_bytes"]
        head = (
            f"{r['shape']:8} {r['tokens']:6} {r['batch']:5} {str(r['paged']).lower():5} "
            f"{r['projection']:4} {coded / 1e6:8.1f}"
        )
        for direction in ("encode", "decode"):
            ms = r["raw_bytes"] / r[f"{direction}_gbps"] / 1e6
            gemm = ms / r[f"gemm_ratio_{direction}"]
            left = (TARGET - 1) * gemm
            print(
                f"{head} | {direction:6} {ms:7.2f} {gemm:7.2f} {r[f'gemm_ratio_{direction}']:6.2f} "
                f"{left:7.2f} {coded / left / 1e6:10.0f}"
            )
            head = " " * len(head)


if __name__ == "__main__":
    main()
