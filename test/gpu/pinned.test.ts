// A restore straight from a page-locked record (KVTC_PIN_RECORDS=1): the CUDA backend copies each
// section to the device as it is and checks its CRC on the host while the copy runs, before any
// kernel reads it. This file is its own process under node:test, so the switch is set before
// the addon's first encode reads it.
process.env.KVTC_PIN_RECORDS = '1';

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { decode, encode } from '../../src/codec/codec.js';
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
import { smallRecordFixture } from '../helpers/calibration.js';
import { gpuSkip } from '../helpers/gpu.js';

const native = loadNative();

test('page-locked records restore directly, and a corrupt one is refused', { skip: gpuSkip }, async () => {
  const { cal, ...s } = await smallRecordFixture();
  const options = { tokens: 256, dtype: 'float32', backend: 'cuda' } as const;
  const rec = await encode(
    cal,
    { keys: s.keys, values: s.values, dtype: 'float32', tokens: 256 },
    { backend: 'cuda', windowTokens: 8 },
  );
  assert.ok(native.stages.pageLockedCuda!(rec), 'the record is page-locked (the direct restore runs)');
  const copy = Buffer.from(rec);
  assert.equal(native.stages.pageLockedCuda!(copy), false, 'a copy of it is pageable (the staged restore runs)');
  const direct = await decode(cal, rec, options);
  const staged = await decode(cal, copy, options);
  assert.ok(direct.keys.equals(staged.keys) && direct.values.equals(staged.values), 'direct and staged restores agree');
  // One flipped byte at the start, the middle and the end of every section, in the page-locked
  // record itself: the same code as the CPU decoder, and the next restore unharmed.
  const view = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
  for (let i = 0; i < rec[55]!; i++) {
    const entry = 96 + 32 * i;
    const offset = Number(view.getBigUint64(entry + 16, true)),
      stored = Number(view.getBigUint64(entry + 24, true));
    for (const at of [offset, offset + Math.floor(stored / 2), offset + stored - 1]) {
      rec[at]! ^= 0x10;
      const cpu = await decode(cal, Buffer.from(rec), { ...options, backend: 'cpu' }).then(
        () => 'decoded',
        (e: { code?: string }) => e.code,
      );
      await assert.rejects(decode(cal, rec, options), { code: cpu }, `section ${i}, byte ${at - offset} of ${stored}`);
      rec[at]! ^= 0x10;
      const again = await decode(cal, rec, options);
      assert.ok(again.keys.equals(direct.keys) && again.values.equals(direct.values), 'a good restore after a bad one');
    }
  }
});

test(
  'a group of page-locked and pageable records restores as the group staged, and a corrupt one is refused',
  {
    skip: gpuSkip,
  },
  async () => {
    const { cal } = await smallRecordFixture();
    // The fixture's model: 2 layers, 2 KV heads of 8. flash_attn layout, float32.
    const [L, H, D, N, B] = [2, 2, 8, 12, 16];
    const layout: PagedLayout = {
      numBlocks: N,
      blockSize: B,
      kvHeads: H,
      headDim: D,
      dtype: 'float32',
      strides: [N * B * H * D, B * H * D, H * D, D, 1],
    };
    const source = allocateKv(0, L, layout);
    const regions = [source];
    try {
      const flat = Float32Array.from({ length: L * 2 * N * B * H * D }, (_, i) => Math.sin(i * 0.13) + (i % 3) * 0.1);
      writeKv(source, new Uint8Array(flat.buffer));
      const spans = [
        { blockIds: [0, 1], firstSlot: 0, tokens: 32 },
        { blockIds: [2, 3], firstSlot: 0, tokens: 32 },
        { blockIds: [4, 5], firstSlot: 3, tokens: 20 },
      ];
      const options = spans.map((_, i) => ({ planId: 0, tokenStart: i * 32, windowTokens: 0 }));
      const recs = await encodePagedMany(cal, source, spans, options);
      assert.ok(
        recs.every((r) => native.stages.pageLockedCuda!(r)),
        'the records are page-locked',
      );
      const restore = async (records: Uint8Array[]) => {
        const region = allocateKv(0, L, layout);
        regions.push(region);
        await decodePagedMany(cal, region, spans, records);
        return readKv(region);
      };
      const staged = await restore(recs.map((r) => Buffer.from(r)));
      assert.equal(
        Buffer.compare(await restore(recs), staged),
        0,
        'page-locked records: the bytes of the group staged',
      );
      const mixed = await restore([recs[0]!, Buffer.from(recs[1]!), recs[2]!]);
      assert.equal(Buffer.compare(mixed, staged), 0, 'page-locked and pageable records in one group');
      const bad = recs[2]!;
      bad[bad.length - 2]! ^= 0x10;
      const region = allocateKv(0, L, layout);
      regions.push(region);
      const before = readKv(region);
      await assert.rejects(decodePagedMany(cal, region, spans, recs), { code: 'ERR_KVTC_RECORD_CORRUPT' });
      assert.equal(Buffer.compare(before, readKv(region)), 0, 'no block written');
    } finally {
      for (const r of regions) releaseKv(r);
    }
  },
);
