#!/usr/bin/env python3
"""Where a kernel's warps stall, per SASS instruction, from Nsight Compute's source page.

Input: the CSV of `ncu --section SourceCounters --page source --print-source sass --csv ...`
(one kernel launch; lines before the header row, such as the program's own output, are skipped).
Prints the total stall samples, their share per block of BLOCK consecutive instructions (where
the time goes: a header parsed by one lane, a decode loop), then the TOP instructions by samples
in address order, each with how often it ran and with how many active threads.

    python3 scripts/ncu-sass-top.py ncu-inflate-sass.csv [--top 25] [--block 100]
"""

import argparse
import csv
import sys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", help="ncu --page source --print-source sass --csv output")
    ap.add_argument("--top", type=int, default=25, help="instructions to list (default 25)")
    ap.add_argument("--block", type=int, default=100, help="instructions per block of the profile (default 100)")
    a = ap.parse_args()
    with open(a.csv, newline="") as f:
        lines = f.readlines()
    starts = [i for i, line in enumerate(lines) if line.startswith('"Address"')]
    if not starts:
        sys.exit(f"{a.csv}: no source-page header row (was it --page source --csv?)")
    rows = list(csv.reader(lines[starts[0] :]))
    head, data = rows[0], [r for r in rows[1:] if len(r) == len(rows[0])]
    col = {name: head.index(name) for name in ("Source", "Warp Stall Sampling (All Samples)",
                                               "Instructions Executed", "Avg. Threads Executed")}

    def num(r: list, name: str) -> float:
        v = r[col[name]].replace(",", "")
        return float(v) if v not in ("", "-") else 0.0

    samples = [num(r, "Warp Stall Sampling (All Samples)") for r in data]
    total = sum(samples) or 1.0
    executed = sum(num(r, "Instructions Executed") for r in data)
    print(f"{len(data)} instructions, {int(sum(samples))} stall samples, {int(executed)} warp instructions executed")
    print(f"samples per block of {a.block} instructions (blocks with at least 1 %):")
    blocks: dict = {}
    for i, s in enumerate(samples):
        blocks[i // a.block] = blocks.get(i // a.block, 0.0) + s
    for b, s in sorted(blocks.items()):
        if s >= 0.01 * total:
            print(f"  {b * a.block:>6}-{(b + 1) * a.block - 1:<6} {100 * s / total:5.1f} %")
    print(f"top {a.top} instructions by samples (index, % of samples, executed, avg threads, SASS):")
    top = sorted(range(len(data)), key=lambda i: -samples[i])[: a.top]
    for i in sorted(top):
        r = data[i]
        print(f"  {i:>6} {100 * samples[i] / total:5.1f} % {int(num(r, 'Instructions Executed')):>9} "
              f"{num(r, 'Avg. Threads Executed'):4.0f}  {r[col['Source']].strip()}")


if __name__ == "__main__":
    main()
