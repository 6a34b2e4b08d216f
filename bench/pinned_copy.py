"""Host-to-device copy speed from the three kinds of host memory a restore can read a record from.

The CUDA backend keeps records in host memory. A restore copies a record to the device either
straight from it (when it is page-locked, KVTC_PIN_RECORDS=1) or through a staging buffer. This
measures, in one process, a copy of the same bytes from:

- memory allocated page-locked (cudaHostAlloc: the restore's staging buffer),
- 2 MiB-aligned memory advised for huge pages, then page-locked (cudaHostRegister: a record
  block under KVTC_PIN_RECORDS=1),
- the same memory left pageable (the driver stages it itself),

and prints each one's GB/s and its ratio to the first. Runs on the GPU machine (torch with CUDA):

    python3 bench/pinned_copy.py --mib 32 --reps 20
"""

import argparse
import ctypes
import mmap

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--mib", type=int, default=32, help="bytes per copy, in MiB (default 32)"
    )
    ap.add_argument(
        "--reps", type=int, default=20, help="timed copies per kind (default 20)"
    )
    a = ap.parse_args()
    n = a.mib << 20
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    cudart = torch.cuda.cudart()
    dev = torch.empty(n, dtype=torch.uint8, device="cuda")

    def timed(src: torch.Tensor) -> float:
        for _ in range(3):
            dev.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        start, end = (
            torch.cuda.Event(enable_timing=True),
            torch.cuda.Event(enable_timing=True),
        )
        start.record()
        for _ in range(a.reps):
            dev.copy_(src, non_blocking=True)
        end.record()
        end.synchronize()
        return n * a.reps / (start.elapsed_time(end) * 1e-3) / 1e9

    allocated = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    allocated.fill_(1)
    # The record pool's blocks: posix_memalign at 2 MiB, MADV_HUGEPAGE (14), then registered.
    p = ctypes.c_void_p()
    assert libc.posix_memalign(ctypes.byref(p), 2 << 20, ctypes.c_size_t(n)) == 0
    libc.madvise(p, ctypes.c_size_t(n), mmap.MADV_HUGEPAGE)
    ctypes.memset(p, 1, n)
    buf = (ctypes.c_uint8 * n).from_address(p.value)
    host = torch.frombuffer(buf, dtype=torch.uint8)
    pageable = timed(host)
    assert int(cudart.cudaHostRegister(p.value, n, 0)) == 0, "cudaHostRegister failed"
    registered = timed(host)
    base = timed(allocated)
    print(f"{'host memory':<44} {'GB/s':>8} {'ratio':>8}")
    for name, gbps in [
        ("cudaHostAlloc (staging buffer)", base),
        ("cudaHostRegister'd huge-page block (record)", registered),
        ("pageable huge-page block", pageable),
    ]:
        print(f"{name:<44} {gbps:8.1f} {gbps / base:8.2f}")
    cudart.cudaHostUnregister(p.value)


if __name__ == "__main__":
    main()
