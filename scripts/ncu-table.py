#!/usr/bin/env python3
"""Per-kernel table from an Nsight Compute CSV (`ncu --csv --print-units base --metrics ...`, as the
device calls in bench/results/gpu-*/N-call.sh write it): duration, DRAM bytes and achieved DRAM
bandwidth, and each unit's throughput as a percentage of its peak, one row per kernel launch.

    python3 scripts/ncu-table.py bench/results/gpu-2026-11-30/17-ncu-8b.csv
"""
import argparse
import collections
import csv
import re


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", help="ncu --csv output (lines before the CSV header are skipped)")
    args = ap.parse_args()
    with open(args.csv) as f:
        rows = [line for line in f if line.startswith('"')]
    kernels: "collections.OrderedDict[str, dict]" = collections.OrderedDict()
    for r in csv.DictReader(rows):
        k = kernels.setdefault(r["ID"], {"name": r["Kernel Name"], "grid": r["Grid Size"]})
        v = r["Metric Value"].replace(",", "")
        k[r["Metric Name"]] = float(v) if v not in ("", "n/a") else 0.0

    def short(name: str) -> str:
        name = re.sub(r"\(.*", "", name)
        return re.sub(r"kvtc::|cuda::|huff::|<unnamed>::|\(anonymous namespace\)::|void ", "", name)[:44]

    print(f"{'id':>3} {'kernel':44} {'us':>8} {'GB rd':>6} {'GB wr':>6} {'TB/s':>5} "
          f"{'dram%':>5} {'l1%':>5} {'l2%':>5} {'sm%':>5} {'grid':>12} regs")
    for i, k in kernels.items():
        us = k.get("gpu__time_duration.sum", 0) / 1e3
        rd, wr = k.get("dram__bytes_read.sum", 0) / 1e9, k.get("dram__bytes_write.sum", 0) / 1e9
        tbs = (rd + wr) / us * 1e3 if us else 0.0
        print(f"{i:>3} {short(k['name']):44} {us:8.1f} {rd:6.3f} {wr:6.3f} {tbs:5.2f} "
              f"{k.get('dram__throughput.avg.pct_of_peak_sustained_elapsed', 0):5.1f} "
              f"{k.get('l1tex__throughput.avg.pct_of_peak_sustained_elapsed', 0):5.1f} "
              f"{k.get('lts__throughput.avg.pct_of_peak_sustained_elapsed', 0):5.1f} "
              f"{k.get('sm__throughput.avg.pct_of_peak_sustained_elapsed', 0):5.1f} "
              f"{k['grid']:>12} {int(k.get('launch__registers_per_thread', 0))}")


if __name__ == "__main__":
    main()
