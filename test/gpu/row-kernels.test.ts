// The row kernels (the encode prologue and decode epilogue) in their three modes write the same
// bits: paired (the default: the keys' vectors with their RoPE partners, where the rotation is
// neox over the whole head), vector (8-feature vectors) and scalar (KVTC_ROW_KERNELS): same
// arithmetic in the same order, so the same records and the same restored bits. The mode is read
// once per process, so this file runs itself again as a child in each other mode and compares
// what all wrote: float32 and bf16 rows, neox RoPE over the whole head (the paired kernels), bf16
// and fp8 projections. The small-group kernels (KVTC_SMALL_GROUPS) the same way. node:test, like
// the other GPU tests.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { toBf16 } from '../../bench/codec.js';
import { decode, encode, type KvDtype, type Projection } from '../../src/codec/codec.js';
import { applyRope, syntheticKv } from '../../src/calibrate/synthetic.js';
import { modelInfo, syntheticCalibration } from '../helpers/calibration.js';
import { gpuSkip } from '../helpers/gpu.js';

const CHILD = 'KVTC_ROW_KERNELS_CHILD';

// 2 layers x 2 heads x 64, neox: every vector of 8 features lies in one half of a rotation.
const model = modelInfo(2, 2, 64);
const P = model.layers * model.kv_heads * model.head_dim;
const bytes = (a: Float32Array | Uint16Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** Every record and restore of the cases, hex-encoded, in this process's row-kernel mode. */
async function outputs(): Promise<string[]> {
  const cal = await syntheticCalibration(model, { samples: 600, ratios: [8], seed: 5 });
  const out: string[] = [];
  for (const tokens of [19, 333]) {
    const kv = syntheticKv(tokens, P, tokens);
    const keys = applyRope(kv.keys, tokens, 70, model);
    for (const dtype of ['float32', 'bfloat16'] as KvDtype[]) {
      const k = bytes(dtype === 'float32' ? keys : toBf16(keys));
      const v = bytes(dtype === 'float32' ? kv.values : toBf16(kv.values));
      for (const projection of ['bf16', 'fp8'] as Projection[]) {
        const chunk = { keys: k, values: v, dtype, tokens, tokenStart: 70 };
        const record = await encode(cal, chunk, { windowTokens: 3, backend: 'cuda', projection });
        const back = await decode(cal, record, { tokens, dtype, backend: 'cuda', projection });
        out.push(
          record.toString('hex'),
          Buffer.from(back.keys).toString('hex'),
          Buffer.from(back.values).toString('hex'),
        );
      }
    }
  }
  return out;
}

const skip = gpuSkip;

if (process.env[CHILD]) {
  process.stdout.write(JSON.stringify(await outputs()));
} else {
  test('paired, vector and scalar row kernels write the same bits', { skip }, async () => {
    const mine = process.env['KVTC_ROW_KERNELS'] || 'paired';
    const ours = await outputs();
    for (const other of ['paired', 'vector', 'scalar'].filter((m) => m !== mine)) {
      const theirs = child({ KVTC_ROW_KERNELS: other });
      assert.equal(theirs.length, ours.length);
      for (let i = 0; i < ours.length; i++) assert.ok(theirs[i] === ours[i], `output ${i}: ${mine} and ${other} differ`);
    }
  });

  // The plan's small groups in tiles through shared memory (the default) and one thread per token
  // (KVTC_SMALL_GROUPS=threads).
  test('small-group tiles write the bits the per-token kernels write', { skip }, async () => {
    const mine = process.env['KVTC_SMALL_GROUPS'] === 'threads' ? 'threads' : 'tiles';
    const other = mine === 'tiles' ? 'threads' : 'tiles';
    const theirs = child({ KVTC_SMALL_GROUPS: other });
    const ours = await outputs();
    assert.equal(theirs.length, ours.length);
    for (let i = 0; i < ours.length; i++) assert.ok(theirs[i] === ours[i], `output ${i}: ${mine} and ${other} differ`);
  });
}

/** This file's outputs from a child process with `env` set. */
function child(env: Record<string, string>): string[] {
  const run = spawnSync(process.execPath, [fileURLToPath(import.meta.url)], {
    env: { ...process.env, [CHILD]: '1', ...env },
    encoding: 'utf8',
    maxBuffer: 1 << 30,
  });
  assert.equal(run.status, 0, `child (${JSON.stringify(env)}) failed: ${run.stderr}`);
  return JSON.parse(run.stdout) as string[];
}
