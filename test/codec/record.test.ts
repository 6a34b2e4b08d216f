import t from 'tap';
import { decode, encode, inspectRecord, type KvDtype } from '../../src/codec/codec.js';
import { toNativePlan, toNativeRope } from '../../src/codec/calibration.js';
import { loadNative } from '../../src/codec/native.js';
import { applyRope, syntheticKv } from '../../src/calibrate/synthetic.js';
import { modelInfo, syntheticCalibration } from '../helpers/calibration.js';
import { maxAbsDiff, relError, roundHalf } from '../helpers/reference.js';

const native = loadNative();
const model = modelInfo(5, 4, 8); // the stories260K shape, p = 160
const P = 160;
const cal = await syntheticCalibration(model, { ratios: [4, 16] });

function bf16(x: Float32Array): Uint16Array {
  const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
  return Uint16Array.from(u, (v) => (v + 0x7fff + ((v >>> 16) & 1)) >>> 16);
}
function fromBf16(b: Uint8Array): Float32Array {
  const u16 = new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2);
  const out = new Uint32Array(u16.length);
  for (let i = 0; i < u16.length; i++) out[i] = u16[i]! << 16;
  return new Float32Array(out.buffer);
}
function float16Bits(x: Float32Array): Uint16Array {
  // From the exactly representable rounded value (reference roundHalf) to IEEE binary16 bits.
  return Uint16Array.from(x, (v) => {
    const r = roundHalf(v);
    const sign = r < 0 || Object.is(r, -0) ? 0x8000 : 0;
    const a = Math.abs(r);
    if (a === 0) return sign;
    if (a < 2 ** -14) return sign | Math.round(a / 2 ** -24);
    const e = Math.floor(Math.log2(a));
    return sign | ((e + 15) << 10) | Math.round((a / 2 ** e - 1) * 1024);
  });
}
function fromFloat16(b: Uint8Array): Float32Array {
  const u = new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2);
  return Float32Array.from(u, (h) => {
    const s = h & 0x8000 ? -1 : 1,
      e = (h >> 10) & 31,
      m = h & 1023;
    return e === 0 ? s * m * 2 ** -24 : s * (1 + m / 1024) * 2 ** (e - 15);
  });
}
function f32(b: Uint8Array): Float32Array {
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

// The lossy reference: the stages composed by hand (unRoPE, project, quantize, dequantize,
// reconstruct, reRoPE) on the coded tokens.
function lossyReference(x: Float32Array, tokens: number, pos0: number, keys: boolean, ratio: number): Float32Array {
  const plan = cal.plans[cal.planId(ratio)]!;
  const stream = keys ? cal.keys : cal.values;
  const sp = keys ? plan.keys : plan.values;
  const rope = { tokens, heads: 20, headDim: 8, positionStart: pos0, rope: toNativeRope(model.rope) };
  const un = keys ? native.stages.ropeRotate(x, { ...rope, inverse: true }) : x;
  const o = { mean: stream.mean, basis: stream.basis, basisRank: stream.rank, tokens, rank: sp.rank };
  const d = native.stages.project(un, { ...o, inverse: false });
  const np = toNativePlan(sp);
  const dq = native.stages.dequantize(native.stages.quantize(d, { tokens, plan: np }), { tokens, plan: np });
  const back = native.stages.project(dq, { ...o, inverse: true });
  return keys ? native.stages.ropeRotate(back, { ...rope, inverse: false }) : back;
}

for (const tokens of [1, 7, 19, 989]) {
  for (const ratio of [4, 16]) {
    t.test(`record round trip: ${tokens} tokens at kvtc ${ratio}x, float32`, async (t) => {
      const tokenStart = tokens === 989 ? 0 : 300; // with and without attention sinks
      const kv = syntheticKv(tokens, P, tokens + ratio);
      kv.keys = applyRope(kv.keys, tokens, tokenStart, model);
      const rec = await encode(
        cal,
        { keys: kv.keys, values: kv.values, dtype: 'float32', tokens, tokenStart },
        { ratio, windowTokens: 16 },
      );
      const out = await decode(cal, rec, { tokens, dtype: 'float32' });
      const info = out.info;
      t.equal(info.tokens, tokens);
      t.equal(info.tokenStart, tokenStart);
      const sinks = tokenStart === 0 ? Math.min(4, tokens) : 0;
      const window = Math.min(16, tokens - sinks);
      t.equal(info.sinkTokens, sinks, 'sink tokens kept raw');
      t.equal(info.windowTokens, window, 'window tokens kept raw');
      const k = f32(out.keys),
        v = f32(out.values);
      const raw = (a: Float32Array, b: Float32Array, from: number, to: number) =>
        maxAbsDiff(a.subarray(from * P, to * P), b.subarray(from * P, to * P));
      t.equal(raw(k, kv.keys, 0, sinks) + raw(v, kv.values, 0, sinks), 0, 'sinks are bit-exact');
      t.equal(
        raw(k, kv.keys, tokens - window, tokens) + raw(v, kv.values, tokens - window, tokens),
        0,
        'window is bit-exact',
      );
      const mid = tokens - sinks - window;
      if (mid > 0) {
        const s = sinks * P,
          e = (sinks + mid) * P;
        for (const [name, got, src, isKeys] of [
          ['keys', k, kv.keys, true],
          ['values', v, kv.values, false],
        ] as const) {
          const ref = lossyReference(src.slice(s, e), mid, tokenStart + sinks, isKeys, ratio);
          t.ok(maxAbsDiff(got.subarray(s, e), ref) < 1e-4, `${name}: decode equals the composed lossy stages`);
          const plan = cal.plans[cal.planId(ratio)]!;
          const expected = (isKeys ? plan.keys : plan.values).expected_error;
          const err2 = relError(got.subarray(s, e), src.subarray(s, e)) ** 2;
          // Relative to the centred energy the plan's error is about; the mean adds energy, so the
          // raw relative error is below it. Allow sampling noise on few tokens.
          t.ok(
            err2 <= 3 * expected + 1e-3,
            `${name}: relative squared error ${err2.toExponential(2)} within the plan's ${expected.toExponential(2)}`,
          );
        }
      }
    });
  }
}

for (const dtype of ['float16', 'bfloat16'] as KvDtype[]) {
  t.test(`record round trip in ${dtype}`, async (t) => {
    const tokens = 300;
    const kv = syntheticKv(tokens, P, 5);
    kv.keys = applyRope(kv.keys, tokens, 0, model);
    const half = (x: Float32Array) => (dtype === 'bfloat16' ? bf16(x) : float16Bits(x));
    const keys = half(kv.keys),
      values = half(kv.values);
    const rec = await encode(cal, { keys, values, dtype, tokens }, { ratio: 4, windowTokens: 16 });
    const out = await decode(cal, rec, { tokens, dtype });
    t.equal(out.keys.length, tokens * P * 2);
    const raw = (b: Uint8Array, from: number, to: number) =>
      Buffer.from(b.buffer, b.byteOffset + from * P * 2, (to - from) * P * 2);
    t.same(raw(out.keys, 0, 4), raw(new Uint8Array(keys.buffer), 0, 4), 'sinks bit-exact');
    t.same(
      raw(out.values, tokens - 16, tokens),
      raw(new Uint8Array(values.buffer), tokens - 16, tokens),
      'window bit-exact',
    );
    const back = dtype === 'bfloat16' ? fromBf16(out.keys) : fromFloat16(out.keys);
    const err = relError(back.subarray(4 * P, (tokens - 16) * P), kv.keys.subarray(4 * P, (tokens - 16) * P));
    const ref32 = await decode(
      cal,
      await encode(cal, { keys: kv.keys, values: kv.values, dtype: 'float32', tokens }, { ratio: 4, windowTokens: 16 }),
      { tokens, dtype: 'float32' },
    );
    const err32 = relError(
      f32(ref32.keys).subarray(4 * P, (tokens - 16) * P),
      kv.keys.subarray(4 * P, (tokens - 16) * P),
    );
    t.ok(
      Math.abs(err - err32) < 0.01,
      `coded keys: ${dtype} error ${err.toFixed(4)} ~ float32 error ${err32.toFixed(4)}`,
    );
    await t.rejects(
      decode(cal, rec, { tokens, dtype: 'float32' }),
      { code: 'ERR_KVTC_RECORD_SIZE_MISMATCH' },
      'dtype is part of the expected size',
    );
  });
}

t.test('indexed sections (entryStride) decode to exactly what plain sections decode to', async (t) => {
  const tokens = 700;
  const kv = syntheticKv(tokens, P, 8);
  kv.keys = applyRope(kv.keys, tokens, 0, model);
  const chunk = { keys: bf16(kv.keys), values: bf16(kv.values), dtype: 'bfloat16' as const, tokens };
  const o = { ratio: 4, windowTokens: 16, chunkBytes: 4096 };
  const plain = await encode(cal, chunk, o);
  const indexed = await encode(cal, chunk, { ...o, entryStride: 256 });
  const encodings = native.inspect(indexed).sections.map((s) => s.encoding);
  t.same(encodings, [0, 0, 2, 2, 0, 0], 'sinks and window raw, coded sections indexed (encoding 2)');
  const a = await decode(cal, plain, { tokens, dtype: 'bfloat16' });
  const b = await decode(cal, indexed, { tokens, dtype: 'bfloat16' });
  t.same(Buffer.from(b.keys), Buffer.from(a.keys), 'keys identical');
  t.same(Buffer.from(b.values), Buffer.from(a.values), 'values identical');
  await t.rejects(encode(cal, chunk, { ...o, entryStride: 100 }), { code: 'ERR_KVTC_INVALID_ARGUMENT' });
});

t.test('deflateLevel 0 stores the coded sections: larger records, exactly the same decode', async (t) => {
  const tokens = 700;
  const kv = syntheticKv(tokens, P, 9);
  kv.keys = applyRope(kv.keys, tokens, 0, model);
  const chunk = { keys: bf16(kv.keys), values: bf16(kv.values), dtype: 'bfloat16' as const, tokens };
  const o = { ratio: 4, windowTokens: 16, chunkBytes: 4096 };
  for (const entryStride of [0, 256]) {
    const coded = await encode(cal, chunk, { ...o, entryStride });
    const stored = await encode(cal, chunk, { ...o, entryStride, deflateLevel: 0 });
    const sizes = (r: Buffer) =>
      native
        .inspect(r)
        .sections.filter((s) => s.encoding !== 0)
        .map((s) => s.storedBytes);
    const [ck, cv] = sizes(coded),
      [sk, sv] = sizes(stored);
    t.ok(sk! > ck! && sv! > cv!, `stride ${entryStride}: stored sections ${sk}/${sv} larger than coded ${ck}/${cv}`);
    const a = await decode(cal, coded, { tokens, dtype: 'bfloat16' });
    const b = await decode(cal, stored, { tokens, dtype: 'bfloat16' });
    t.same(Buffer.from(b.keys), Buffer.from(a.keys), `stride ${entryStride}: keys identical`);
    t.same(Buffer.from(b.values), Buffer.from(a.values), `stride ${entryStride}: values identical`);
  }
  await t.rejects(encode(cal, chunk, { ...o, deflateLevel: 13 }), { code: 'ERR_KVTC_INVALID_ARGUMENT' });
});

t.test('projection precision: bf16 and fp8 operands cost little beside the plan, records stay standard', async (t) => {
  const tokens = 600;
  const kv = syntheticKv(tokens, P, 12);
  const keys = applyRope(kv.keys, tokens, 0, model);
  const chunk = { keys, values: kv.values, dtype: 'float32' as const, tokens };
  const o = { ratio: 16, sinkTokens: 0, windowTokens: 0 };
  const err: Record<string, number> = {};
  let fp32Record: Buffer | undefined;
  for (const projection of ['fp32', 'bf16', 'fp8'] as const) {
    const rec = await encode(cal, chunk, { ...o, projection });
    if (projection === 'fp32') fp32Record = rec;
    const out = await decode(cal, rec, { tokens, dtype: 'float32', projection });
    const k = new Float32Array(out.keys.buffer, out.keys.byteOffset, tokens * P);
    err[projection] = relError(k, keys);
    // Any decoder reads any record: the precision is the codec's arithmetic, not the format's.
    const plain = await decode(cal, rec, { tokens, dtype: 'float32' });
    t.equal(plain.tokens, tokens, `${projection} record decodes with the default projection`);
  }
  t.comment(
    `keys relative error at 16x: fp32 ${err.fp32!.toFixed(4)}, bf16 ${err.bf16!.toFixed(4)}, fp8 ${err.fp8!.toFixed(4)}`,
  );
  t.ok(Math.abs(err.bf16! - err.fp32!) < 0.01 * err.fp32!, 'bf16 operands: within 1% of the fp32 error');
  t.ok(err.fp8! > err.fp32! && err.fp8! < 1.1 * err.fp32!, 'fp8 operands: worse than fp32, within 10% of it');
  const f8 = await decode(cal, fp32Record!, { tokens, dtype: 'float32', projection: 'fp8' });
  t.not(
    Buffer.compare(f8.keys, (await decode(cal, fp32Record!, { tokens, dtype: 'float32' })).keys),
    0,
    'decode rounds too',
  );
  await t.rejects(encode(cal, chunk, { ...o, projection: 'fp4' as 'fp8' }), { code: 'ERR_KVTC_INVALID_ARGUMENT' });
  await t.rejects(decode(cal, fp32Record!, { tokens, dtype: 'float32', projection: 'int8' as 'fp8' }), {
    code: 'ERR_KVTC_INVALID_ARGUMENT',
  });
});

t.test('bad records give stable codes', async (t) => {
  const tokens = 200;
  const kv = syntheticKv(tokens, P, 77);
  const rec = await encode(
    cal,
    { keys: kv.keys, values: kv.values, dtype: 'float32', tokens },
    { ratio: 16, chunkBytes: 1024 },
  );
  const expect = { tokens, dtype: 'float32' as const };
  await t.resolves(decode(cal, rec, expect), 'the intact record decodes');
  await t.rejects(decode(cal, rec.subarray(0, 0), expect), { code: 'ERR_KVTC_RECORD_EMPTY' }, 'zero length');
  await t.rejects(
    decode(cal, rec.subarray(0, 50), expect),
    { code: 'ERR_KVTC_RECORD_TRUNCATED' },
    'shorter than the header',
  );
  await t.rejects(
    decode(cal, rec.subarray(0, rec.length - 1), expect),
    { code: 'ERR_KVTC_RECORD_TRUNCATED' },
    'truncated body',
  );
  const flipped = Buffer.from(rec);
  flipped[flipped.length - 10]! ^= 0x04;
  await t.rejects(decode(cal, flipped, expect), { code: 'ERR_KVTC_RECORD_CORRUPT' }, 'one flipped bit in a section');
  const flippedHeader = Buffer.from(rec);
  flippedHeader[45]! ^= 0x01;
  await t.rejects(
    decode(cal, flippedHeader, expect),
    { code: 'ERR_KVTC_RECORD_CORRUPT' },
    'one flipped bit in the header',
  );
  const magic = Buffer.from(rec);
  magic[0] = 0x58;
  await t.rejects(decode(cal, magic, expect), { code: 'ERR_KVTC_RECORD_BAD_MAGIC' }, 'foreign bytes');
  await t.rejects(
    decode(cal, rec, { tokens: tokens + 1, dtype: 'float32' }),
    { code: 'ERR_KVTC_RECORD_SIZE_MISMATCH' },
    'wrong expected size',
  );
  const other = await syntheticCalibration(model, { ratios: [4, 16], seed: 2 });
  await t.rejects(decode(other, rec, expect), { code: 'ERR_KVTC_CALIBRATION_MISMATCH' }, 'foreign calibration id');
  // A huge declared length: record_bytes claims far more than was given (header CRC resealed so
  // the length check itself must catch it).
  const huge = Buffer.from(rec);
  huge.writeBigUInt64LE(1n << 50n, 64);
  await t.rejects(
    decode(cal, resealHeader(huge), expect),
    { code: 'ERR_KVTC_RECORD_TRUNCATED' },
    'huge declared length',
  );
  t.throws(() => inspectRecord(Buffer.alloc(0)), { code: 'ERR_KVTC_RECORD_EMPTY' });
  t.equal(inspectRecord(rec).calibrationId, cal.id, 'inspect reads the calibration id');
});

// Reseals a record's header CRC32C (bytes [0, 92) and the section table) after an edit.
function resealHeader(rec: Buffer): Buffer {
  const sections = rec[55]!;
  rec.writeUInt32LE(
    native.stages.crc32c(Buffer.concat([rec.subarray(0, 92), rec.subarray(96, 96 + 32 * sections)])),
    92,
  );
  return rec;
}

t.test('each stream must be a raw head, one coded middle and a raw tail, as the header says', async (t) => {
  // Two records of 100 tokens each (no sinks, no window: one coded section per stream) spliced
  // into one of 200 tokens whose streams are two coded sections each: every section intact and
  // tiling its stream, but not the format's layout.
  const kv = syntheticKv(200, P, 91);
  const half = async (first: number) =>
    encode(
      cal,
      {
        keys: kv.keys.subarray(first * P, (first + 100) * P),
        values: kv.values.subarray(first * P, (first + 100) * P),
        dtype: 'float32',
        tokens: 100,
        tokenStart: first,
      },
      { ratio: 16, sinkTokens: 0, windowTokens: 0 },
    );
  const parts = [await half(0), await half(100)];
  const entries = parts.flatMap((rec) =>
    [0, 1].map((i) => {
      const e = Buffer.from(rec.subarray(96 + 32 * i, 128 + 32 * i));
      const at = Number(e.readBigUInt64LE(16)),
        n = Number(e.readBigUInt64LE(24));
      return { e, body: rec.subarray(at, at + n) };
    }),
  );
  t.same(
    entries.map(({ e }) => e[0]),
    [3, 4, 3, 4],
    'each half holds coded keys and coded values',
  );
  // Keys of both halves, then values of both halves; the second half's tokens at offset 100.
  const order = [entries[0]!, entries[2]!, entries[1]!, entries[3]!];
  const header = Buffer.from(parts[0]!.subarray(0, 96));
  let offset = 96 + 32 * order.length;
  const table = order.map(({ e, body }, i) => {
    const entry = Buffer.from(e);
    entry.writeUInt32LE(i % 2 === 0 ? 0 : 100, 4);
    entry.writeBigUInt64LE(BigInt(offset), 16);
    offset += body.length;
    return entry;
  });
  header.writeUInt16LE(96 + 32 * order.length, 6);
  header.writeUInt32LE(200, 44);
  header[55] = order.length;
  header.writeBigUInt64LE(BigInt(offset), 64);
  const spliced = resealHeader(Buffer.concat([header, ...table, ...order.map(({ body }) => body)]));
  t.equal(spliced.length, offset);
  await t.rejects(
    decode(cal, spliced, { tokens: 200, dtype: 'float32' }),
    { code: 'ERR_KVTC_RECORD_CORRUPT', message: /keys sections are not a raw head of 0 tokens, a coded middle of 200/ },
    'two coded sections in a stream',
  );

  // A header whose sink count disagrees with the raw head it holds.
  const rec = await encode(
    cal,
    { keys: kv.keys, values: kv.values, dtype: 'float32', tokens: 200 },
    { ratio: 16, sinkTokens: 4, windowTokens: 16 },
  );
  await t.resolves(decode(cal, rec, { tokens: 200, dtype: 'float32' }), 'the intact record decodes');
  const sinks = Buffer.from(rec);
  sinks.writeUInt32LE(5, 56);
  await t.rejects(
    decode(cal, resealHeader(sinks), { tokens: 200, dtype: 'float32' }),
    { code: 'ERR_KVTC_RECORD_CORRUPT', message: /not a raw head of 5 tokens/ },
    'sink_tokens off by one',
  );
});

t.test('encode refuses bad input with coded errors', async (t) => {
  const kv = syntheticKv(4, P, 1);
  await t.rejects(
    encode(cal, { keys: kv.keys, values: kv.values, dtype: 'float32', tokens: 5 }),
    { code: 'ERR_KVTC_INVALID_ARGUMENT' },
    'wrong shape',
  );
  await t.rejects(encode(cal, { keys: kv.keys, values: kv.values, dtype: 'float32', tokens: 4 }, { ratio: 3 }), {
    code: 'ERR_KVTC_PLAN_UNKNOWN',
  });
  await t.rejects(encode(cal, { keys: kv.keys, values: kv.values, dtype: 'int8' as KvDtype, tokens: 4 }), {
    code: 'ERR_KVTC_INVALID_ARGUMENT',
  });
  await t.rejects(encode(cal, { keys: kv.keys, values: kv.values, dtype: 'float32', tokens: 0 }), {
    code: 'ERR_KVTC_INVALID_ARGUMENT',
  });
});
