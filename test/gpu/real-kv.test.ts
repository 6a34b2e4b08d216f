// The cross-decode matrix on real KV: held-out stories260K captures (transformers, on the
// development machine) and the model's calibration fitted on real KV by `kvtc-sidecar calibrate`,
// both carried to the GPU machine by scripts/gpu-bundle.sh and named by scripts/gpu-run.sh
// (KVTC_GPU_CALIBRATION, KVTC_GPU_CAPTURES). cpu, cpu-indexed and cuda records, each restored by
// the CPU and the CUDA backend, at every plan: sinks and window exact, plain and indexed CPU
// records the same bytes back on both, the middle within the calibration's error, and the two
// backends' restores of one record within 2 % of each other (the GPU's GEMM operands are bf16).
// node:test, like the other GPU tests; the CPU half runs in CI (test/codec/real-kv.test.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';

import { loadCalibration } from '../../src/codec/calibration.js';
import { gpuSkip } from '../helpers/gpu.js';
import { realKvCrossDecode } from '../helpers/real-kv.js';

const calibration = process.env['KVTC_GPU_CALIBRATION'];
const captures = process.env['KVTC_GPU_CAPTURES'];
const skip =
  gpuSkip ||
  (!calibration || !captures
    ? 'needs KVTC_GPU_CALIBRATION and KVTC_GPU_CAPTURES (scripts/gpu-run.sh sets both from .gpu/)'
    : false);

test('cross-decode matrix on real KV (stories260K)', { skip }, async (t) => {
  const cal = await loadCalibration(calibration!);
  const files = readdirSync(captures!)
    .filter((f) => f.endsWith('.safetensors'))
    .sort()
    .map((f) => join(captures!, f));
  assert.ok(files.length > 0, `no captures in ${captures}`);
  // The sanitizer runs (KVTC_GPU_TEST_SMALL=1): one story, one plan.
  const small = Boolean(process.env['KVTC_GPU_TEST_SMALL']);
  for (const plan of small ? cal.plans.slice(-1) : cal.plans) {
    const m = await realKvCrossDecode(
      cal,
      small ? files.slice(0, 1) : files,
      plan.ratio,
      ['cpu', 'cpu-indexed', 'cuda'],
      ['cpu', 'cuda'],
      0.02,
    );
    t.diagnostic(`kvtc ${plan.ratio}x: decoder spread ${m.decoderSpread.toExponential(2)} ${JSON.stringify(m.errors)}`);
  }
});
