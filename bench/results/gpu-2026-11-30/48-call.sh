#!/usr/bin/env bash
# Run n, call 48 (2026-11-30): PublishSizesKernel ends with __threadfence_system() (every mapped
# write visible before the kernel ends, so before the event the host waits on). The whole GPU
# suite five times over (node --test runs its files in concurrent processes, as in call 46 where
# paged hnd's fp8 record identity failed once), and racecheck once.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage "suite 1 + racecheck"
SANITIZERS=racecheck timeout "$(left)" bash scripts/gpu-run.sh test 2>&1 | grep "# pass\|# fail\|clean\|FAILED\|^not ok"
cp "$OUT/gpu-tests.tap" "$R/" 2>/dev/null
unpack_tools
export KVTC_ADDON_PATH=$(addon_in build-gpu) KVTC_GPU_CALIBRATION="$PWD/.gpu/stories260K.kvtc.safetensors" KVTC_GPU_CAPTURES="$PWD/.gpu/stories-eval"
for i in 2 3 4 5; do
  stage "suite $i"
  timeout "$(left)" node --test --test-reporter=tap dist/test/gpu/ > "$OUT/suite-$i.tap" 2>&1
  grep "^# pass\|^# fail\|^not ok" "$OUT/suite-$i.tap"
  grep -A12 "^not ok" "$OUT/suite-$i.tap" | grep -m2 "error:" -A1
done
