// The row kernels (the encode prologue and decode epilogue) in their three modes write the same
// bits: paired (the default: the keys' vectors with their RoPE partners, where the rotation is
// neox over the whole head), vector (8-feature vectors) and scalar (KVTC_ROW_KERNELS): same
// arithmetic in the same order, so the same records and the same restored bits. The mode is read
// once per process, so this file runs itself again as a child in each other mode and compares
// what all wrote: float32 and bf16 rows, neox RoPE over the whole head (the paired kernels), bf16
// and fp8 projections. The small-group kernels (KVTC_SMALL_GROUPS) the same way, and the bf16
// reconstruction (KVTC_RECONSTRUCTION) within its rounding. node:test, like the other GPU tests.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { fromBf16, toBf16 } from '../../bench/codec.js';
import { decode, encode, type KvDtype, type Projection } from '../../src/codec/codec.js';
import { applyRope, syntheticKv } from '../../src/calibrate/synthetic.js';
import { modelInfo, syntheticCalibration } from '../helpers/calibration.js';
import { runSelf } from '../helpers/child.js';
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
  // This process's outputs, computed once for the three tests (the same settings for all).
  let mineOnce: Promise<string[]> | undefined;
  const mineOutputs = () => (mineOnce ??= outputs());

  test('paired, vector and scalar row kernels write the same bits', { skip }, async () => {
    const mine = process.env['KVTC_ROW_KERNELS'] || 'paired';
    const ours = await mineOutputs();
    for (const other of ['paired', 'vector', 'scalar'].filter((m) => m !== mine)) {
      assertSameOutputs(
        ours,
        runSelf<string[]>(import.meta.url, CHILD, { KVTC_ROW_KERNELS: other }),
        `${mine} and ${other}`,
      );
    }
  });

  // The plan's small groups in tiles through shared memory (the default) and one thread per token
  // (KVTC_SMALL_GROUPS=threads).
  test('small-group tiles write the bits the per-token kernels write', { skip }, async () => {
    const mine = process.env['KVTC_SMALL_GROUPS'] === 'threads' ? 'threads' : 'tiles';
    const other = mine === 'tiles' ? 'threads' : 'tiles';
    assertSameOutputs(
      await mineOutputs(),
      runSelf<string[]>(import.meta.url, CHILD, { KVTC_SMALL_GROUPS: other }),
      `${mine} and ${other}`,
    );
  });

  // A bf16 cache's reconstruction comes out of the decode GEMM in bf16 (the default) or fp32
  // (KVTC_RECONSTRUCTION=fp32): the records are the same, and so is every restore but the bf16
  // projection's into bf16 rows, which may differ by the one extra bf16 rounding before the mean and
  // the RoPE (about 2^-9 of a RoPE pair's norm, then the output's own rounding): bounded here by
  // 2^-7 of the token row's largest element.
  test('bf16 reconstruction stays within a bf16 rounding of the fp32 one', { skip }, async () => {
    const mine = process.env['KVTC_RECONSTRUCTION'] === 'fp32' ? 'fp32' : 'bf16';
    const other = mine === 'bf16' ? 'fp32' : 'bf16';
    const theirs = runSelf<string[]>(import.meta.url, CHILD, { KVTC_RECONSTRUCTION: other });
    const ours = await mineOutputs();
    assert.equal(theirs.length, ours.length);
    let compared = 0;
    for (let c = 0; c < ours.length / 3; c++) {
      // outputs(): per token count, dtype (float32, bfloat16), projection (bf16, fp8): 3 strings.
      const bf16Rows = Math.floor(c / 2) % 2 === 1 && c % 2 === 0;
      assert.ok(theirs[3 * c] === ours[3 * c], `case ${c}: ${mine} and ${other} wrote different records`);
      for (const i of [3 * c + 1, 3 * c + 2]) {
        if (!bf16Rows) {
          assert.ok(theirs[i] === ours[i], `output ${i}: ${mine} and ${other} differ`);
          continue;
        }
        const a = fromBf16(Buffer.from(ours[i]!, 'hex'));
        const b = fromBf16(Buffer.from(theirs[i]!, 'hex'));
        assert.equal(a.length, b.length);
        for (let t = 0; t < a.length / P; t++) {
          let rowMax = 0;
          for (let f = 0; f < P; f++) rowMax = Math.max(rowMax, Math.abs(b[t * P + f]!));
          for (let f = 0; f < P; f++) {
            const d = Math.abs(a[t * P + f]! - b[t * P + f]!);
            assert.ok(d <= rowMax / 128, `output ${i} token ${t} feature ${f}: ${a[t * P + f]} vs ${b[t * P + f]}`);
          }
        }
        compared++;
      }
    }
    assert.equal(compared, 4, 'both token counts, keys and values, in bf16 rows with the bf16 projection');
  });
}

/** Every output of two runs identical, bit for bit. */
function assertSameOutputs(ours: string[], theirs: string[], which: string): void {
  assert.equal(theirs.length, ours.length);
  for (let i = 0; i < ours.length; i++) assert.ok(theirs[i] === ours[i], `output ${i}: ${which} differ`);
}
