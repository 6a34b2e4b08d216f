#!/usr/bin/env python3
"""Sums each label of KVTC_CUDA_PROFILE lines ("[kvtc-profile] WHAT device: label ms ... | host:
label ms ...") over the lines of one kind, so a pipelined job's groups add up to its totals:
    python3 scripts/profile-summary.py decode < bench.err
Device marks are intervals between events on the job stream, so they include the stream's idle
time (e.g. waiting for the host's staging); host laps are the host's own time."""

import re
import sys
from collections import defaultdict

what = sys.argv[1] if len(sys.argv) > 1 else "decode"
lines = [
    line for line in sys.stdin if line.startswith(f"[kvtc-profile] {what} device:")
]
device: dict[str, float] = defaultdict(float)
host: dict[str, float] = defaultdict(float)
for line in lines:
    dev_part, _, host_part = line.partition("| host:")
    for part, sums in ((dev_part.split("device:", 1)[1], device), (host_part, host)):
        words: list[str] = []
        for word in part.split():
            if re.fullmatch(
                r"-?\d+\.\d+", word
            ):  # a figure ends its label (labels may hold spaces)
                sums[" ".join(words)] += float(word)
                words = []
            else:
                words.append(word)
print(f"{what}: {len(lines)} profiled jobs")
for name, sums in (("device", device), ("host", host)):
    total = sum(sums.values())
    print(
        f"  {name} {total:.3f} ms: "
        + " ".join(
            f"{k} {v:.3f}" for k, v in sorted(sums.items(), key=lambda kv: -kv[1])
        )
    )
