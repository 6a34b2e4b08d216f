#!/usr/bin/env bash
# Run n, call 47 (2026-11-30): (1) call 46's one failure (paged hnd, "fp8: paged and contiguous
# records are identical", never seen in the earlier GPU test runs): test/gpu/paged.test.js eight
# times with this tree's addon (14c6048) and eight times with ad0c8f8's (.gpu/old/cuda, before
# the mapped chunk sizes and the per-device state). (2) The page-locked restore: the machine's
# NUMA layout, and page-locked runs with the process bound to each node's CPUs and memory.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage "topology"
nvidia-smi topo -m 2>&1 | head -n 8
ls -d /sys/devices/system/node/node* 2>&1
for d in /sys/bus/pci/devices/*; do [ "$(cat $d/vendor 2>/dev/null)" = 0x10de ] && echo "$d numa_node $(cat $d/numa_node)"; done
lscpu | grep -i "numa\|model name\|socket"
command -v numactl || echo "no numactl"
build_old
stage "build new"
build_addon cuda build-gpu "$OUT/cmake.log" > "$OUT/build.log" 2>&1; echo "new build rc $?"
wait_old
for i in 1 2 3 4 5 6 7 8; do
  for v in new old; do
    a=$NEW; [ $v = old ] && a=$OLD
    KVTC_ADDON_PATH="$a" timeout 60 node --test --test-reporter=tap dist/test/gpu/paged.test.js > "$OUT/paged-$v-$i.tap" 2>&1
    echo "$v $i: $(grep -c '^ok' "$OUT/paged-$v-$i.tap") ok, $(grep -c '^not ok' "$OUT/paged-$v-$i.tap") not ok $(grep -h -A6 '^not ok' "$OUT/paged-$v-$i.tap" | grep -m1 -A1 'error:' | tail -n 1)"
  done
done
PIN=(KVTC_PIN_RECORDS=1 KVTC_RECORD_POOL_MB=2048)
if command -v numactl > /dev/null; then
  for node in $(ls -d /sys/devices/system/node/node* | sed 's/.*node//'); do
    for i in 1 2; do
      stage "pinned, node $node"
      numactl --cpunodebind=$node --membind=$node env "${PIN[@]}" KVTC_ADDON_PATH="$NEW" timeout "$(left)" node dist/src/main.js bench codec --backend cuda --json --reps 9 --shape 8b --tokens 8192 > "$OUT/pin-node$node-$i.json" 2> "$OUT/pin-node$node-$i.err"
      node -e 'for (const r of JSON.parse(require("fs").readFileSync(process.argv[1])).results) console.log(r.batch, r.encode_gbps.toFixed(1), r.decode_gbps.toFixed(1))' "$OUT/pin-node$node-$i.json"
    done
  done
fi
