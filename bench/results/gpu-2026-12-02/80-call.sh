#!/usr/bin/env bash
# Run w, call 80 (2026-12-02): the current tree (a81cf74's LaunchStreams refactor had only been
# compiled) through the GPU tests, memcheck and racecheck (last racecheck: call 68), and the IPC end
# to end; then why the 8B 32K level-0 encode lost 27 % in run v: the default 512 MiB record pool
# against 4096 MiB (a batch of eight 272 MiB records), alternating.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
tail -n 1 "$OUT/build.log"
gpu_tests "memcheck racecheck"
stage "IPC end to end"
timeout "$(left)" bash scripts/gpu-run.sh e2e 2>&1 | grep "passed\|failed\|error\|Error" | tail -n 12
cp "$OUT/gpu-e2e.log" "$R/" 2>/dev/null
unpack_tools
NEW=$(addon_in build-gpu)
for i in 1 2; do
  VARIANT_ARGS="--shape 8b --tokens 32768 --batch 8 --deflate-level 0" variant pool512-$i "$NEW"
  VARIANT_ARGS="--shape 8b --tokens 32768 --batch 8 --deflate-level 0" variant pool4096-$i "$NEW" KVTC_RECORD_POOL_MB=4096
done
merge_variants pool512 pool4096
