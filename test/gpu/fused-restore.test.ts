// The fused restore (KVTC_FUSED_RESTORE=on: the restore's GEMM writes the paged cache from its
// registers, cuda/src/cuda_restore_epilogue.cuh) against the two-pass restore (the GEMM, then the
// epilogue kernels). The knob is read once per process, so this file runs itself again as a child
// with it on and compares the two restored caches, for a 2 x 128 and a 3 x 64 head layout (the
// 256- and 192-wide tiles): every target slot within a bf16 rounding (the fused path rounds once,
// the two-pass path twice), every other element untouched, and the child's counters show the fused
// GEMM ran. Needs an addon built with CUTLASS (KVTC_CUTLASS_DIR; scripts/gpu-run.sh builds it so
// when scripts/gpu-bundle.sh carried the headers). node:test.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { fromBf16, toBf16 } from '../../bench/codec.js';
import { applyRope, syntheticKv } from '../../src/calibrate/synthetic.js';
import { loadNative } from '../../src/codec/native.js';
import {
  allocateKv,
  decodePagedMany,
  encodePagedMany,
  readKv,
  releaseKv,
  writeKv,
  type PagedLayout,
} from '../../src/codec/paged.js';
import type { ModelInfo } from '../../src/codec/calibration.js';
import { modelInfo, syntheticCalibration } from '../helpers/calibration.js';
import { runSelf } from '../helpers/child.js';
import { gpuSkip } from '../helpers/gpu.js';
import { gatherRows, layerExtent, pagedIndex } from '../helpers/paged.js';

const CHILD = 'KVTC_FUSED_RESTORE_CHILD';

// Neox RoPE over the whole head (modelInfo's default), layers a whole tile wide, as the fused GEMM
// needs: 2 x 128 (256 features, the 128 x 256 tile of the 8B shape's heads) and 3 x 64 (192
// features, the 128 x 192 tile of SmolLM2's).
const models = [modelInfo(2, 2, 128), modelInfo(2, 3, 64)];
const NUM_BLOCKS = 24;
const BLOCK = 16;

/** vLLM's FlashAttention layout, (2, blocks, block, heads, dim) per layer, in bf16. */
function layoutOf(model: ModelInfo): PagedLayout {
  const row = model.kv_heads * model.head_dim;
  return {
    numBlocks: NUM_BLOCKS,
    blockSize: BLOCK,
    kvHeads: model.kv_heads,
    headDim: model.head_dim,
    dtype: 'bfloat16',
    strides: [NUM_BLOCKS * BLOCK * row, BLOCK * row, row, model.head_dim, 1],
  };
}
// Three records (odd sizes and first slots) saved from these spans and restored into others.
const spans = [
  { blockIds: [0, 1, 2], firstSlot: 3, tokens: 40 },
  { blockIds: [3, 4, 5, 6], firstSlot: 0, tokens: 64 },
  { blockIds: [7, 8], firstSlot: 5, tokens: 23 },
];
const targets = [
  { blockIds: [12, 13, 14], firstSlot: 3, tokens: 40 },
  { blockIds: [15, 16, 17, 18], firstSlot: 0, tokens: 64 },
  { blockIds: [20, 21], firstSlot: 5, tokens: 23 },
];

interface Restored {
  cache: string; // the restored region, hex
  fused: number; // streams the fused GEMM wrote
}

/** The three records saved and restored in one job, in this process's mode. */
async function restored(model: ModelInfo): Promise<Restored> {
  const layout = layoutOf(model);
  const P = model.layers * model.kv_heads * model.head_dim;
  const cal = await syntheticCalibration(model, { samples: 600, ratios: [8], seed: 7 });
  const total = model.layers * layerExtent(layout);
  const perLayer = model.kv_heads * model.head_dim;
  const flat = new Float32Array(total);
  for (const [i, span] of spans.entries()) {
    const kv = syntheticKv(span.tokens, P, 11 + i);
    const keys = applyRope(kv.keys, span.tokens, 100 * i, model);
    for (let t = 0; t < span.tokens; t++)
      for (let j = 0; j < P; j++) {
        const layer = Math.floor(j / perLayer);
        flat[pagedIndex(layout, layer, 0, span.blockIds, span.firstSlot, t, j % perLayer)] = keys[t * P + j]!;
        flat[pagedIndex(layout, layer, 1, span.blockIds, span.firstSlot, t, j % perLayer)] = kv.values[t * P + j]!;
      }
  }
  const bf16 = toBf16(flat);
  const source = allocateKv(0, model.layers, layout);
  const region = allocateKv(0, model.layers, layout);
  try {
    writeKv(source, new Uint8Array(bf16.buffer, bf16.byteOffset, bf16.byteLength));
    const records = await encodePagedMany(
      cal,
      source,
      spans,
      spans.map((_, i) => ({ planId: 0, tokenStart: 100 * i, sinkTokens: 4, windowTokens: 0 })),
    );
    writeKv(region, new Uint8Array(total * 2));
    const before = loadNative().counters().fusedRestores;
    await decodePagedMany(cal, region, targets, records);
    const fused = loadNative().counters().fusedRestores - before;
    return { cache: Buffer.from(readKv(region)).toString('hex'), fused };
  } finally {
    releaseKv(source);
    releaseKv(region);
  }
}

const skip =
  gpuSkip ||
  (!loadNative().buildInfo().fusedRestore &&
    'addon built without CUTLASS (CMake KVTC_CUTLASS_DIR): this build has no fused restore to compare');

/** Both models' restores, in this process's mode. */
async function restoredAll(): Promise<Restored[]> {
  const out: Restored[] = [];
  for (const model of models) out.push(await restored(model));
  return out;
}

if (process.env[CHILD]) {
  process.stdout.write(JSON.stringify(await restoredAll()));
} else {
  test('the fused restore writes what the two-pass restore writes, within a bf16 rounding', { skip }, async () => {
    assert.notEqual(process.env['KVTC_FUSED_RESTORE'], 'on', 'this process is the two-pass side');
    const twoPassAll = await restoredAll();
    const fusedAll = runSelf<Restored[]>(import.meta.url, CHILD, { KVTC_FUSED_RESTORE: 'on' });
    for (const [m, model] of models.entries()) {
      const name = `${model.kv_heads} x ${model.head_dim}`;
      assert.equal(twoPassAll[m]!.fused, 0, `${name}: the two-pass side ran no fused GEMM`);
      assert.equal(fusedAll[m]!.fused, 2, `${name}: keys and values went through the fused GEMM (one group)`);
      assertSameRestore(model, twoPassAll[m]!, fusedAll[m]!, name);
    }
  });
}

/** Two restores of the same records: every target row within 2^-7 of its largest element (the
 * reconstruction test's bound), nothing outside the target slots written. */
function assertSameRestore(model: ModelInfo, twoPass: Restored, fusedRun: Restored, name: string): void {
  const layout = layoutOf(model);
  const P = model.layers * model.kv_heads * model.head_dim;
  const a = fromBf16(Buffer.from(twoPass.cache, 'hex'));
  const b = fromBf16(Buffer.from(fusedRun.cache, 'hex'));
  assert.equal(a.length, b.length);
  const touched = new Set<number>();
  const perLayer = model.kv_heads * model.head_dim;
  for (const span of targets) {
    const x = gatherRows(layout, model.layers, a, span.blockIds, span.firstSlot, span.tokens);
    const y = gatherRows(layout, model.layers, b, span.blockIds, span.firstSlot, span.tokens);
    for (const part of ['keys', 'values'] as const) {
      for (let t = 0; t < span.tokens; t++) {
        let rowMax = 0;
        for (let f = 0; f < P; f++) rowMax = Math.max(rowMax, Math.abs(x[part][t * P + f]!));
        assert.ok(rowMax > 0, `${name} ${part} token ${t}: restored`);
        for (let f = 0; f < P; f++) {
          const d = Math.abs(x[part][t * P + f]! - y[part][t * P + f]!);
          assert.ok(
            d <= rowMax / 128,
            `${name} ${part} token ${t} feature ${f}: ${x[part][t * P + f]} vs ${y[part][t * P + f]}`,
          );
        }
      }
    }
    for (let t = 0; t < span.tokens; t++)
      for (let j = 0; j < P; j++)
        for (const kv of [0, 1])
          touched.add(pagedIndex(layout, Math.floor(j / perLayer), kv, span.blockIds, span.firstSlot, t, j % perLayer));
  }
  let stray = 0;
  for (let i = 0; i < b.length; i++) if (!touched.has(i) && (a[i] !== 0 || b[i] !== 0)) stray++;
  assert.equal(stray, 0, `${name}: no element outside the target slots written`);
}
