#!/usr/bin/env bash
# Run p, call 58 (2026-12-01): a decode group's sections staged in waves of about 4 MiB, each
# wave's copies and CRCs in one parallel pass over all threads (ParallelCopyChunksCrcMany) and sent
# as one copy; call 57's profile had the host staging each 1 MiB section in its own parallel loop
# (0.1 ms each) and each 256 KiB raw sink section on one thread (0.045 ms). All GPU tests, memcheck
# on the paged tests, the IPC end to end, then grouped (default) against KVTC_FUSE_TOKENS=0 in
# alternating processes (8B 256 x 32 paged and contiguous, 1K x 8, 8K), page-locked records, and
# the profile of the grouped paged 256 x 32.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
gpu_tests ""
unpack_tools
NEW=$(addon_in build-gpu)
stage "memcheck (paged tests)"
KVTC_ADDON_PATH=$NEW KVTC_CUDA_ENTROPY=kvtc timeout "$(left)" compute-sanitizer --tool memcheck --error-exitcode 7 \
  node --test dist/test/gpu/paged.test.js > "$OUT/sanitizer-paged-memcheck.log" 2>&1 && echo "memcheck: clean" ||
  { echo "memcheck: FAILED"; grep -E "ERROR SUMMARY|Invalid|not ok" "$OUT/sanitizer-paged-memcheck.log" | head -n 8; }
stage "IPC end to end"
timeout "$(left)" bash scripts/gpu-run.sh e2e 2>&1 | grep "passed\|failed\|error\|save_many\|Error" | tail -n 12
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
C256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0)
K1=(--shape 8b --tokens 1024 --batch 8)
REPS=3 VARIANT_ARGS="${P256[*]}" variant prof256 "$NEW" KVTC_CUDA_PROFILE=1
grep "kvtc-profile\] decode" "$OUT/variants/prof256.err" | tail -n 1 | cut -c1-900
for i in 1 2; do
  VARIANT_ARGS="${P256[*]}" variant p256off-$i "$NEW" KVTC_FUSE_TOKENS=0
  VARIANT_ARGS="${P256[*]}" variant p256on-$i "$NEW"
  VARIANT_ARGS="${C256[*]}" variant c256on-$i "$NEW"
  VARIANT_ARGS="${P256[*]}" variant pin-$i "$NEW" KVTC_PIN_RECORDS=1
done
VARIANT_ARGS="${K1[*]}" variant k1off-1 "$NEW" KVTC_FUSE_TOKENS=0
VARIANT_ARGS="${K1[*]}" variant k1on-1 "$NEW"
variant k8on-1 "$NEW"
merge_variants p256off p256on c256on pin k1off k1on
