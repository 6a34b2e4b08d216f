// GPU data plane tests (node:test; skipped without a CUDA device): gather from and scatter into a
// paged cache in each layout, against a host reference of the same strides. All-raw records make
// the round trip bit-exact; a kvtc record restores within the plan's error and touches no other
// block. Bad spans and records are refused before a block is written.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { decode, encode } from '../../src/codec/codec.js';
import {
  allocateKv,
  decodePaged,
  decodePagedMany,
  encodePaged,
  encodePagedMany,
  readKv,
  releaseKv,
  writeKv,
  type PagedLayout,
} from '../../src/codec/paged.js';
import { syntheticKv } from '../../src/calibrate/synthetic.js';
import { fitCalibration } from '../../src/calibrate/fit.js';
import type { ModelInfo } from '../../src/codec/calibration.js';
import { gpuSkip } from '../helpers/gpu.js';
import { gatherRows, layerExtent, pagedIndex, sumSquaredDiff } from '../helpers/paged.js';

const skip = gpuSkip;

const model: ModelInfo = {
  name: 'paged-test',
  fingerprint: 'ab'.repeat(16),
  layers: 3,
  kv_heads: 2,
  head_dim: 16,
  rope: { theta: 10000, rotary_dim: 16, layout: 'neox', scaling: { type: 'default' } },
};
const P = model.layers * model.kv_heads * model.head_dim;
const NUM_BLOCKS = 13;
const BLOCK = 5; // odd on purpose

// [kv, block, slot, head, dim] strides (elements) of each layout, with one layer's shape.
function layoutOf(name: string, numBlocks = NUM_BLOCKS, block = BLOCK): PagedLayout {
  const H = model.kv_heads,
    D = model.head_dim;
  const s: Record<string, [number, number, number, number, number]> = {
    flash_attn: [numBlocks * block * H * D, block * H * D, H * D, D, 1], // (2, N, B, H, D)
    flashinfer: [block * H * D, 2 * block * H * D, H * D, D, 1], // (N, 2, B, H, D)
    hnd: [H * block * D, 2 * H * block * D, D, block * D, 1], // (N, 2, H, B, D)
  };
  return { numBlocks, blockSize: block, kvHeads: H, headDim: D, dtype: 'float32', strides: s[name]! };
}

// Rows [t0, t1) of [tokens, P] rows.
function tokenRows(x: Float32Array, t0: number, t1: number): Float32Array {
  return x.subarray(t0 * P, t1 * P);
}

function bitEqual(x: Float32Array, y: Float32Array): boolean {
  return x.every((v, k) => v === y[k]);
}

async function calibration() {
  const n = 600;
  const s = syntheticKv(n, P, 3);
  return fitCalibration({
    model,
    keys: s.keys,
    values: s.values,
    n,
    ratios: [4],
    rankCap: P,
    powerIters: 2,
    oversample: 8,
    seed: 1,
    dpSamples: 256,
    sinkTokens: 4,
    windowTokens: 0,
    source: 'gpu paged test',
  });
}

for (const name of ['flash_attn', 'flashinfer', 'hnd']) {
  test(
    `paged ${name}: all-raw round trip is bit-exact, kvtc within the plan, other blocks untouched`,
    { skip },
    async () => {
      const cal = await calibration();
      const l = layoutOf(name);
      const region = allocateKv(0, model.layers, l);
      try {
        const total = model.layers * layerExtent(l);
        const flat = Float32Array.from({ length: total }, (_, i) => Math.sin(i * 0.37) * 3 + (i % 7) * 0.1);
        writeKv(region, new Uint8Array(flat.buffer));
        const blockIds = [7, 2, 11, 0, 5];
        const firstSlot = 3;
        const tokens = 19; // slots 3..21 over 5 blocks of 5
        const span = { blockIds, firstSlot, tokens };
        const want = gatherRows(l, model.layers, flat, blockIds, firstSlot, tokens);

        // 1. Gather: an all-raw record holds exactly the gathered rows.
        const raw = await encodePaged(cal, region, span, {
          planId: 0,
          tokenStart: 40,
          sinkTokens: 0,
          windowTokens: tokens,
        });
        const back = await decode(cal, raw, { tokens, dtype: 'float32' });
        assert.deepEqual(
          new Float32Array(back.keys.buffer, back.keys.byteOffset, tokens * P),
          want.keys,
          'keys gathered',
        );
        assert.deepEqual(
          new Float32Array(back.values.buffer, back.values.byteOffset, tokens * P),
          want.values,
          'values gathered',
        );

        // 2. Scatter: zero the region, restore, compare every element (other blocks stay zero).
        writeKv(region, new Uint8Array(total * 4));
        await decodePaged(cal, region, span, raw);
        const restored = new Float32Array(readKv(region).buffer.slice(0));
        const expected = new Float32Array(total);
        const perLayer = model.kv_heads * model.head_dim;
        for (let t = 0; t < tokens; t++)
          for (let j = 0; j < P; j++)
            for (const kv of [0, 1]) {
              const i = pagedIndex(l, Math.floor(j / perLayer), kv, blockIds, firstSlot, t, j % perLayer);
              expected[i] = flat[i]!;
            }
        assert.deepEqual(restored, expected, 'scatter wrote exactly the span');

        // 3. kvtc: the paged path writes the same record as the contiguous path on the same rows,
        // and restores exactly what decoding that record gives.
        const rows = syntheticKv(tokens, P, 11);
        const filled = Float32Array.from(flat);
        for (let t = 0; t < tokens; t++)
          for (let j = 0; j < P; j++) {
            const layer = Math.floor(j / perLayer);
            filled[pagedIndex(l, layer, 0, blockIds, firstSlot, t, j % perLayer)] = rows.keys[t * P + j]!;
            filled[pagedIndex(l, layer, 1, blockIds, firstSlot, t, j % perLayer)] = rows.values[t * P + j]!;
          }
        writeKv(region, new Uint8Array(filled.buffer));
        const coded = await encodePaged(cal, region, span, {
          planId: 0,
          tokenStart: 40,
          sinkTokens: 0,
          windowTokens: 0,
        });
        const contiguous = await encode(
          cal,
          { keys: rows.keys, values: rows.values, dtype: 'float32', tokens, tokenStart: 40 },
          { sinkTokens: 0, windowTokens: 0, backend: 'cuda' },
        );
        assert.equal(Buffer.compare(coded, contiguous), 0, 'paged and contiguous records are identical');
        // Raw sinks, coded middle and raw window in one record: the window's section starts at
        // whatever offset the coded sections end (not element-aligned in general).
        const mixedOptions = { planId: 0, tokenStart: 0, sinkTokens: 2, windowTokens: 5 };
        const mixed = await encodePaged(cal, region, span, mixedOptions);
        const mixedContiguous = await encode(
          cal,
          { keys: rows.keys, values: rows.values, dtype: 'float32', tokens, tokenStart: 0 },
          { sinkTokens: 2, windowTokens: 5, backend: 'cuda' },
        );
        assert.equal(Buffer.compare(mixed, mixedContiguous), 0, 'paged and contiguous mixed records are identical');
        assert.ok(coded.length < raw.length, `coded ${coded.length} < raw ${raw.length}`);
        writeKv(region, new Uint8Array(total * 4));
        await decodePaged(cal, region, span, coded);
        const got = gatherRows(
          l,
          model.layers,
          new Float32Array(readKv(region).buffer.slice(0)),
          blockIds,
          firstSlot,
          tokens,
        );
        const ref = await decode(cal, contiguous, { tokens, dtype: 'float32', backend: 'cuda' });
        assert.deepEqual(
          got.keys,
          new Float32Array(ref.keys.buffer.slice(ref.keys.byteOffset, ref.keys.byteOffset + ref.keys.length)),
        );
        assert.deepEqual(
          got.values,
          new Float32Array(ref.values.buffer.slice(ref.values.byteOffset, ref.values.byteOffset + ref.values.length)),
        );
        writeKv(region, new Uint8Array(total * 4));
        await decodePaged(cal, region, span, mixed);
        const gotMixed = gatherRows(
          l,
          model.layers,
          new Float32Array(readKv(region).buffer.slice(0)),
          blockIds,
          firstSlot,
          tokens,
        );
        const refMixed = await decode(cal, mixedContiguous, { tokens, dtype: 'float32', backend: 'cuda' });
        const f32 = (b: Buffer) => new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
        assert.deepEqual(gotMixed.keys, f32(refMixed.keys), 'mixed record restored in place (keys)');
        assert.deepEqual(gotMixed.values, f32(refMixed.values), 'mixed record restored in place (values)');

        // 4. The fp8 projection keeps both identities: paged and contiguous write the same record,
        // and a paged restore equals the contiguous restore of it.
        writeKv(region, new Uint8Array(filled.buffer));
        const fp8Options = { planId: 0, tokenStart: 40, sinkTokens: 0, windowTokens: 0, projection: 'fp8' as const };
        const coded8 = await encodePaged(cal, region, span, fp8Options);
        const contiguous8 = await encode(
          cal,
          { keys: rows.keys, values: rows.values, dtype: 'float32', tokens, tokenStart: 40 },
          { sinkTokens: 0, windowTokens: 0, backend: 'cuda', projection: 'fp8' },
        );
        assert.equal(Buffer.compare(coded8, contiguous8), 0, 'fp8: paged and contiguous records are identical');
        writeKv(region, new Uint8Array(total * 4));
        await decodePaged(cal, region, span, coded8, 'fp8');
        const got8 = gatherRows(
          l,
          model.layers,
          new Float32Array(readKv(region).buffer.slice(0)),
          blockIds,
          firstSlot,
          tokens,
        );
        const ref8 = await decode(cal, contiguous8, { tokens, dtype: 'float32', backend: 'cuda', projection: 'fp8' });
        assert.deepEqual(got8.keys, f32(ref8.keys), 'fp8 record restored in place (keys)');
        assert.deepEqual(got8.values, f32(ref8.values), 'fp8 record restored in place (values)');
      } finally {
        releaseKv(region);
      }
    },
  );
}

test('paged: many spans in one job (fused on the device) encode like one span at a time', { skip }, async () => {
  const cal = await calibration();
  const l = layoutOf('flash_attn');
  const region = allocateKv(0, model.layers, l);
  try {
    const total = model.layers * layerExtent(l);
    const flat = Float32Array.from({ length: total }, (_, i) => Math.cos(i * 0.29) * 2 + (i % 5) * 0.2);
    writeKv(region, new Uint8Array(flat.buffer));
    // Odd sizes and slots, shared blocks (encoding only reads), sinks in the first, an all-raw
    // span (no coded tokens) in the middle of the group.
    const spans = [
      { blockIds: [7, 2], firstSlot: 1, tokens: 9 },
      { blockIds: [0, 5, 11, 3], firstSlot: 4, tokens: 16 },
      { blockIds: [9], firstSlot: 2, tokens: 3 },
      { blockIds: [1, 12, 6], firstSlot: 0, tokens: 12 },
      { blockIds: [4, 8, 10, 2, 7, 0], firstSlot: 3, tokens: 26 },
    ];
    const options = spans.map((s, i) => ({
      planId: 0,
      tokenStart: i * 32,
      sinkTokens: 4,
      windowTokens: i === 2 ? s.tokens : 0,
    }));
    const fused = await encodePagedMany(cal, region, spans, options);
    assert.equal(fused.length, spans.length);
    // Level 0 (no entropy coding) in the same fused group: the same payloads, stored, so both
    // decoders give exactly what they give for the coded records.
    const stored = await encodePagedMany(
      cal,
      region,
      spans,
      options.map((o) => ({ ...o, deflateLevel: 0 })),
    );
    for (const [i, span] of spans.entries()) {
      if (i === 2) continue;
      assert.ok(stored[i]!.length >= fused[i]!.length, `span ${i}: the stored record is no smaller`);
      for (const backend of ['cpu', 'cuda'] as const) {
        const o = { tokens: span.tokens, dtype: 'float32' as const, backend };
        const [a, b] = [await decode(cal, fused[i]!, o), await decode(cal, stored[i]!, o)];
        assert.equal(Buffer.compare(b.keys, a.keys), 0, `span ${i} level 0 -> ${backend}: keys`);
        assert.equal(Buffer.compare(b.values, a.values), 0, `span ${i} level 0 -> ${backend}: values`);
      }
    }
    for (const [i, span] of spans.entries()) {
      const alone = await encodePaged(cal, region, span, options[i]!);
      const want = gatherRows(l, model.layers, flat, span.blockIds, span.firstSlot, span.tokens);
      const a = await decode(cal, fused[i]!, { tokens: span.tokens, dtype: 'float32' });
      const b = await decode(cal, alone, { tokens: span.tokens, dtype: 'float32' });
      if (i === 2) {
        assert.equal(Buffer.compare(fused[i]!, alone), 0, 'an all-raw span: the same record');
        continue;
      }
      assert.ok(Math.abs(fused[i]!.length - alone.length) <= 0.02 * alone.length, `span ${i}: record sizes`);
      // Only the GEMM's shape differs between the two (its summation order may): a coefficient
      // may round into the next bin, far less than the plan's own error.
      const f32 = (u: Uint8Array) => new Float32Array(u.buffer, u.byteOffset, span.tokens * P);
      for (const part of ['keys', 'values'] as const) {
        const planError = sumSquaredDiff(f32(b[part]), want[part]);
        const between = sumSquaredDiff(f32(a[part]), f32(b[part]));
        assert.ok(planError > 0, `span ${i} ${part}: the plan is lossy`);
        assert.ok(between <= 0.25 * planError, `span ${i} ${part}: fused vs alone ${between}, plan ${planError}`);
      }
    }
    await assert.rejects(encodePagedMany(cal, region, spans, options.slice(1)), { code: 'ERR_KVTC_INVALID_ARGUMENT' });
  } finally {
    releaseKv(region);
  }
});

test('paged: many records in one job (grouped on the device) restore like one record at a time', { skip }, async () => {
  const cal = await calibration();
  const l = layoutOf('flash_attn');
  const source = allocateKv(0, model.layers, l);
  const total = model.layers * layerExtent(l);
  const flat = Float32Array.from({ length: total }, (_, i) => Math.sin(i * 0.37) * 2 + (i % 7) * 0.1);
  // Disjoint spans (decodes write): sinks in the first, an all-raw record (no coded tokens) in the
  // middle, odd sizes and slots.
  const spans = [
    { blockIds: [0, 1], firstSlot: 1, tokens: 9 },
    { blockIds: [2, 3, 4], firstSlot: 0, tokens: 12 },
    { blockIds: [5], firstSlot: 2, tokens: 3 },
    { blockIds: [6, 7, 8, 9], firstSlot: 3, tokens: 16 },
  ];
  const options = spans.map((s, i) => ({
    planId: 0,
    tokenStart: i * 32,
    sinkTokens: 4,
    windowTokens: i === 2 ? s.tokens : 0,
  }));
  const regions = [source];
  try {
    writeKv(source, new Uint8Array(flat.buffer));
    const records = await encodePagedMany(cal, source, spans, options);
    type Target = {
      blockIds: number[];
      firstSlot: number;
      tokens: number;
      recordOffset?: number;
      recordTokens?: number;
    };
    const restore = async (targets: Target[], recs: Buffer[], many: boolean) => {
      const region = allocateKv(0, model.layers, l);
      regions.push(region);
      if (many) await decodePagedMany(cal, region, targets, recs);
      else for (const [i, span] of targets.entries()) await decodePaged(cal, region, span, recs[i]!);
      return new Float32Array(new Uint8Array(readKv(region)).buffer);
    };
    // Whole records (one write launch per stream for the group), then records restored in part
    // (skip_tokens, each written on its own): each against the record restored alone.
    const cases: { targets: Target[]; sources: number[] }[] = [
      { targets: spans, sources: [0, 1, 2, 3] },
      {
        targets: [
          { blockIds: [10, 11], firstSlot: 0, tokens: 9, recordOffset: 3, recordTokens: 12 },
          { blockIds: [12], firstSlot: 0, tokens: 5, recordOffset: 4, recordTokens: 9 },
        ],
        sources: [1, 0],
      },
    ];
    for (const { targets, sources } of cases) {
      const recs = sources.map((k) => records[k]!);
      const fused = await restore(targets, recs, true);
      const alone = await restore(targets, recs, false);
      const touched = new Set<number>();
      const perLayer = model.kv_heads * model.head_dim;
      for (const [i, span] of targets.entries()) {
        const from = spans[sources[i]!]!;
        const want = gatherRows(
          l,
          model.layers,
          flat,
          from.blockIds,
          from.firstSlot + (span.recordOffset ?? 0),
          span.tokens,
        );
        const a = gatherRows(l, model.layers, fused, span.blockIds, span.firstSlot, span.tokens);
        const b = gatherRows(l, model.layers, alone, span.blockIds, span.firstSlot, span.tokens);
        for (let t = 0; t < span.tokens; t++)
          for (let j = 0; j < P; j++)
            for (const kv of [0, 1])
              touched.add(pagedIndex(l, Math.floor(j / perLayer), kv, span.blockIds, span.firstSlot, t, j % perLayer));
        for (const part of ['keys', 'values'] as const) {
          if (sources[i] === 2) {
            assert.deepEqual(a[part], want[part], `all-raw record ${i} ${part}: bit-exact`);
            assert.deepEqual(b[part], want[part], `all-raw record ${i} ${part}: bit-exact alone`);
            continue;
          }
          const planError = sumSquaredDiff(b[part], want[part]);
          const between = sumSquaredDiff(a[part], b[part]);
          assert.ok(planError > 0, `record ${i} ${part}: the plan is lossy`);
          // Only the GEMM's shape differs (its summation order may): far less than the plan's error.
          assert.ok(between <= 0.25 * planError, `record ${i} ${part}: grouped vs alone ${between}, plan ${planError}`);
        }
      }
      for (let k = 0; k < total; k++) if (!touched.has(k)) assert.equal(fused[k], 0, `element ${k} outside the spans`);
    }
    // A bad record fails the job, and its group writes nothing.
    const bad = Buffer.from(records[3]!);
    bad[bad.length - 3]! ^= 0x40;
    const region = allocateKv(0, model.layers, l);
    regions.push(region);
    const before = readKv(region);
    await assert.rejects(decodePagedMany(cal, region, spans, [records[0]!, records[1]!, records[2]!, bad]), {
      code: 'ERR_KVTC_RECORD_CORRUPT',
    });
    assert.equal(Buffer.compare(before, readKv(region)), 0, 'no block written');
    await assert.rejects(decodePagedMany(cal, region, spans, records.slice(1)), { code: 'ERR_KVTC_INVALID_ARGUMENT' });
  } finally {
    for (const r of regions) releaseKv(r);
  }
});

test('paged: a restore of several groups (each slot reused) writes every record as alone', { skip }, async () => {
  // Groups of up to 2048 coded tokens (DecodeGroups): three records of 632-636 coded tokens, one of
  // 2136 (alone, section by section), three more, one more. Four groups over the two pipeline
  // slots, so groups 3 and 4 reuse the coded and raw device buffers of groups 1 and 2, which are
  // freed at different times (DecodeSlot). Each record keeps 64 raw window rows, and those that
  // start a sequence (token 0) 4 raw sink rows.
  const cal = await calibration();
  const l = layoutOf('flash_attn', 512, 16);
  const source = allocateKv(0, model.layers, l);
  const total = model.layers * layerExtent(l);
  const flat = Float32Array.from({ length: total }, (_, i) => Math.sin(i * 0.37) * 2 + (i % 7) * 0.1);
  const sizes = [700, 700, 700, 2200, 700, 700, 700, 700];
  let block = 0;
  const spans = sizes.map((tokens, i) => {
    const firstSlot = i % 3;
    const n = Math.ceil((firstSlot + tokens) / l.blockSize);
    const blockIds = Array.from({ length: n }, (_, k) => block + k);
    block += n;
    return { blockIds, firstSlot, tokens };
  });
  assert.ok(block <= l.numBlocks);
  const options = spans.map((_, i) => ({
    planId: 0,
    tokenStart: i % 2 ? i * 4096 : 0,
    sinkTokens: 4,
    windowTokens: 64,
  }));
  const regions = [source];
  try {
    writeKv(source, new Uint8Array(flat.buffer));
    const records = await encodePagedMany(cal, source, spans, options);
    const restore = async (many: boolean) => {
      const region = allocateKv(0, model.layers, l);
      regions.push(region);
      if (many) await decodePagedMany(cal, region, spans, records);
      else for (const [i, span] of spans.entries()) await decodePaged(cal, region, span, records[i]!);
      return new Float32Array(new Uint8Array(readKv(region)).buffer);
    };
    const grouped = await restore(true);
    const alone = await restore(false);
    const f32 = (u: Uint8Array) => new Float32Array(u.buffer, u.byteOffset, u.byteLength / 4);
    // Every record and stream checked before the test fails, so that one run says which stage is
    // wrong: the record itself (the CPU decoder's raw rows), the restore alone, the grouped one.
    const problems: string[] = [];
    for (const [i, span] of spans.entries()) {
      const want = gatherRows(l, model.layers, flat, span.blockIds, span.firstSlot, span.tokens);
      const a = gatherRows(l, model.layers, grouped, span.blockIds, span.firstSlot, span.tokens);
      const b = gatherRows(l, model.layers, alone, span.blockIds, span.firstSlot, span.tokens);
      const cpu = await decode(cal, records[i]!, { tokens: span.tokens, dtype: 'float32' });
      const end = span.tokens;
      const sinks = options[i]!.tokenStart === 0 ? 4 : 0;
      for (const part of ['keys', 'values'] as const) {
        const c = f32(cpu[part]);
        // The raw rows (sinks, window) bit-exact; the coded ones within a quarter of the plan's error.
        for (const [what, t0, t1] of [
          ['sinks', 0, sinks],
          ['window', end - 64, end],
        ] as const) {
          const w = tokenRows(want[part], t0, t1);
          if (!bitEqual(tokenRows(c, t0, t1), w)) problems.push(`record ${i} ${part} ${what}: the record's`);
          if (!bitEqual(tokenRows(b[part], t0, t1), w)) problems.push(`record ${i} ${part} ${what}: restored alone`);
          if (!bitEqual(tokenRows(a[part], t0, t1), w)) problems.push(`record ${i} ${part} ${what}: restored grouped`);
        }
        const planError = sumSquaredDiff(tokenRows(c, sinks, end - 64), tokenRows(want[part], sinks, end - 64));
        const alonePlan = sumSquaredDiff(tokenRows(b[part], sinks, end - 64), tokenRows(c, sinks, end - 64));
        const between = sumSquaredDiff(tokenRows(a[part], sinks, end - 64), tokenRows(b[part], sinks, end - 64));
        if (!(planError > 0)) problems.push(`record ${i} ${part}: the plan is not lossy`);
        if (!(alonePlan <= 0.25 * planError)) problems.push(`record ${i} ${part}: alone vs CPU ${alonePlan}`);
        if (!(between <= 0.25 * planError)) problems.push(`record ${i} ${part}: grouped vs alone ${between}`);
      }
    }
    assert.deepEqual(problems, []);
  } finally {
    for (const r of regions) releaseKv(r);
  }
});

test('paged: bad spans and records are refused before any block is written', { skip }, async () => {
  const cal = await calibration();
  const l = layoutOf('flash_attn');
  const region = allocateKv(0, model.layers, l);
  try {
    const span = { blockIds: [1, 2], firstSlot: 0, tokens: 10 };
    await assert.rejects(encodePaged(cal, region, { ...span, blockIds: [1, 99] }, { planId: 0, tokenStart: 0 }), {
      code: 'ERR_KVTC_INVALID_ARGUMENT',
    });
    await assert.rejects(encodePaged(cal, region, { ...span, blockIds: [1] }, { planId: 0, tokenStart: 0 }), {
      code: 'ERR_KVTC_INVALID_ARGUMENT',
    });
    const rec = await encodePaged(cal, region, span, { planId: 0, tokenStart: 0 });
    const bad = Buffer.from(rec);
    bad[bad.length - 3]! ^= 0x40;
    const before = readKv(region);
    await assert.rejects(decodePaged(cal, region, span, bad), { code: 'ERR_KVTC_RECORD_CORRUPT' });
    await assert.rejects(decodePaged(cal, region, { ...span, tokens: 9, blockIds: [1, 2] }, rec), {
      code: 'ERR_KVTC_RECORD_SIZE_MISMATCH',
    });
    assert.equal(Buffer.compare(before, readKv(region)), 0, 'no block written');
  } finally {
    releaseKv(region);
  }
});
