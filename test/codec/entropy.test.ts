import t from 'tap';
import { inflateRawSync } from 'node:zlib';
import { loadNative } from '../../src/codec/native.js';
import { mulberry32 } from '../../src/calibrate/synthetic.js';

const native = loadNative();

function chunks(body: Buffer): { raw: number; stored: number; data: Buffer }[] {
  const n = body.readUInt32LE(0);
  let at = 4 + 8 * n;
  const out = [];
  for (let i = 0; i < n; i++) {
    const raw = body.readUInt32LE(4 + 8 * i),
      stored = body.readUInt32LE(8 + 8 * i);
    out.push({ raw, stored, data: body.subarray(at, at + stored) });
    at += stored;
  }
  return out;
}

for (const size of [0, 1, 7, 19, 989, 200_000]) {
  t.test(`DEFLATE chunks round trip, ${size} bytes`, async (t) => {
    const rand = mulberry32(size + 1);
    // Skewed symbols, like quantization codes: compressible but not trivially.
    const data = Uint8Array.from({ length: size }, () => Math.floor(rand() ** 3 * 16));
    const body = native.stages.deflate(data, { inflate: false, chunkBytes: 65536, level: 6 });
    const back = native.stages.deflate(body, { inflate: true, expectedBytes: size });
    t.same(Buffer.from(back), Buffer.from(data), 'inflate returns the exact bytes');
    // Each chunk is plain raw DEFLATE (RFC 1951): zlib, an independent implementation, reads it.
    const parts = chunks(body).map((c) => (c.stored === c.raw ? c.data : inflateRawSync(c.data)));
    t.same(Buffer.concat(parts), Buffer.from(data), 'zlib inflates every chunk');
    if (size > 1000) t.ok(body.length < size * 0.8, `compresses (${body.length} of ${size})`);
  });
}

t.test('incompressible data is stored, never expanded beyond the table', async (t) => {
  const rand = mulberry32(9);
  const data = Uint8Array.from({ length: 100_000 }, () => Math.floor(rand() * 256));
  const body = native.stages.deflate(data, { inflate: false, chunkBytes: 65536, level: 6 });
  t.equal(body.length, data.length + 4 + 8 * 2, 'stored chunks cost only the chunk table');
});

t.test('inflating to the wrong size or from garbage gives coded errors', async (t) => {
  const data = Buffer.alloc(5000, 3);
  const body = native.stages.deflate(data, { inflate: false, chunkBytes: 1024, level: 6 });
  t.throws(() => native.stages.deflate(body, { inflate: true, expectedBytes: 4999 }), {
    code: 'ERR_KVTC_RECORD_SIZE_MISMATCH',
  });
  const bad = Buffer.from(body);
  bad.fill(0xff, 4 + 8 * 5);
  t.throws(() => native.stages.deflate(bad, { inflate: true, expectedBytes: 5000 }), { code: 'ERR_KVTC_DEFLATE' });
  t.throws(() => native.stages.deflate(body.subarray(0, 10), { inflate: true, expectedBytes: 5000 }), {
    code: 'ERR_KVTC_RECORD_LENGTH',
  });
});

/** Chunks of an indexed body: u32 count, u32 stride, the table, entry points, chunk data. */
function indexedChunks(body: Buffer) {
  const n = body.readUInt32LE(0),
    stride = body.readUInt32LE(4);
  const table = [];
  let entries = 0;
  for (let i = 0; i < n; i++) {
    const raw = body.readUInt32LE(8 + 8 * i),
      stored = body.readUInt32LE(12 + 8 * i);
    const count = stored < raw ? Math.ceil(raw / stride) - 1 : 0;
    table.push({ raw, stored, entriesAt: 8 + 8 * n + 4 * entries, count });
    entries += count;
  }
  let at = 8 + 8 * n + 4 * entries;
  return table.map((c) => {
    const data = body.subarray(at, at + c.stored);
    at += c.stored;
    return { ...c, data };
  });
}

for (const size of [1, 989, 200_000]) {
  t.test(`indexed DEFLATE chunks round trip, ${size} bytes`, async (t) => {
    const rand = mulberry32(size + 7);
    const data = Uint8Array.from({ length: size }, () => Math.floor(rand() ** 3 * 16));
    const body = native.stages.deflate(data, { inflate: false, chunkBytes: 65536, level: 6, entryStride: 2048 });
    t.equal(body.readUInt32LE(4), 2048, 'the entry stride is in the body');
    const back = native.stages.deflate(body, { inflate: true, expectedBytes: size, indexed: true });
    t.same(Buffer.from(back), Buffer.from(data), 'inflate from the entry points returns the exact bytes');
    const parts = indexedChunks(body);
    // Still plain raw DEFLATE: zlib reads every chunk, ignoring the index.
    t.same(
      Buffer.concat(parts.map((c) => (c.stored === c.raw ? c.data : inflateRawSync(c.data)))),
      Buffer.from(data),
      'zlib inflates every chunk',
    );
    if (size > 100_000) {
      const plain = native.stages.deflate(data, { inflate: false, chunkBytes: 65536, level: 6 });
      t.ok(body.length < plain.length * 1.01, `index costs under 1% (${body.length} vs libdeflate ${plain.length})`);
      const c = parts.find((p) => p.count > 0)!;
      const moved = Buffer.from(body);
      moved.writeUInt32LE(moved.readUInt32LE(c.entriesAt + 4) + 1, c.entriesAt + 4);
      t.throws(
        () => native.stages.deflate(moved, { inflate: true, expectedBytes: size, indexed: true }),
        {
          code: 'ERR_KVTC_DEFLATE',
        },
        'an entry point one bit off is caught by the run before it',
      );
      const swapped = Buffer.from(body);
      swapped.writeUInt32LE(0xffffffff, c.entriesAt);
      t.throws(
        () => native.stages.deflate(swapped, { inflate: true, expectedBytes: size, indexed: true }),
        {
          code: 'ERR_KVTC_RECORD_CORRUPT',
        },
        'an entry point outside its chunk is refused before inflating',
      );
    }
  });
}

t.test('level 0 stores every chunk, plain and indexed, and any inflater reads it', async (t) => {
  const rand = mulberry32(21);
  const data = Uint8Array.from({ length: 150_000 }, () => Math.floor(rand() ** 3 * 16));
  const plain = native.stages.deflate(data, { inflate: false, chunkBytes: 65536, level: 0 });
  t.same(
    chunks(plain).map((c) => c.stored === c.raw),
    [true, true, true],
    'plain: every chunk stored although it compresses at level 6',
  );
  t.equal(plain.length, data.length + 4 + 8 * 3, 'plain: the data and the table, nothing else');
  t.same(Buffer.from(native.stages.deflate(plain, { inflate: true, expectedBytes: data.length })), Buffer.from(data));
  const indexed = native.stages.deflate(data, { inflate: false, chunkBytes: 65536, level: 0, entryStride: 2048 });
  t.same(
    indexedChunks(indexed).map((c) => [c.stored === c.raw, c.count]),
    [
      [true, 0],
      [true, 0],
      [true, 0],
    ],
    'indexed: every chunk stored, no entry points',
  );
  t.same(
    Buffer.from(native.stages.deflate(indexed, { inflate: true, expectedBytes: data.length, indexed: true })),
    Buffer.from(data),
  );
  t.throws(() => native.stages.deflate(data, { inflate: false, chunkBytes: 65536, level: 13 }), {
    code: 'ERR_KVTC_INVALID_ARGUMENT',
  });
});

t.test('indexed chunks need an entry stride that is a multiple of 16', async (t) => {
  t.throws(
    () => native.stages.deflate(Buffer.alloc(100), { inflate: false, chunkBytes: 64, level: 6, entryStride: 24 }),
    {
      code: 'ERR_KVTC_INVALID_ARGUMENT',
    },
  );
});

t.test('CRC32C test vectors', async (t) => {
  t.equal(native.stages.crc32c(Buffer.from('123456789')), 0xe3069283);
  t.equal(native.stages.crc32c(Buffer.alloc(32)), 0x8a9136aa);
  t.equal(native.stages.crc32c(Buffer.alloc(0)), 0);
  // Above 4 MiB the CRC is computed in 1 MiB pieces on all cores and combined: check it against a
  // bitwise reference at sizes that end mid-piece.
  const ref = (b: Uint8Array) => {
    let c = 0xffffffff;
    for (const x of b) {
      c ^= x;
      for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    }
    return (c ^ 0xffffffff) >>> 0;
  };
  const big = Buffer.alloc(5 * 2 ** 20 + 12345);
  for (let i = 0; i < big.length; i++) big[i] = (i * 2654435761) >>> 24;
  // Below that, one thread in blocks of 3 x 8 KiB checksummed as three interleaved chains and
  // joined, then a tail: sizes around a block's edge and a few blocks with a ragged tail.
  for (const n of [24575, 24576, 24577, 3 * 24576 + 13, 4 * 2 ** 20, 4 * 2 ** 20 + 1, big.length]) {
    t.equal(native.stages.crc32c(big.subarray(0, n)), ref(big.subarray(0, n)), `parallel CRC of ${n} bytes`);
  }
  // The chunk gather that stages records for the GPU: many small chunks and one of several MiB
  // (cut into pieces across threads), each landing exactly at its offset.
  const sizes = [5 * 2 ** 20 + 3, 17, 0, 65536, 1, 2 ** 20];
  const srcOffsets: number[] = [],
    dstOffsets: number[] = [];
  let dstBytes = 0;
  sizes.forEach((n, i) => {
    srcOffsets.push((i * 7919) % (big.length - n));
    dstBytes += 16 - (dstBytes % 16); // aligned like the GPU image, with gaps
    dstOffsets.push(dstBytes);
    dstBytes += n;
  });
  const gathered = native.stages.copyChunks(big, { srcOffsets, dstOffsets, sizes, dstBytes });
  const expected = Buffer.alloc(dstBytes);
  sizes.forEach((n, i) => big.copy(expected, dstOffsets[i]!, srcOffsets[i]!, srcOffsets[i]! + n));
  t.ok(gathered.equals(expected), 'chunks land at their offsets, big ones cut into pieces');
  t.throws(() => native.stages.copyChunks(big, { srcOffsets: [big.length], dstOffsets: [0], sizes: [1], dstBytes: 1 }));
  // The staging-and-verify pass of a restore: chunks back to back in the source (a section's
  // chunk data), copied to aligned offsets, with the CRC32C of their span. Sizes cross the
  // 256 KiB blocks its threads checksum, include empty chunks, and sit below and above the
  // 512 KiB parallel cut.
  for (const sizes2 of [
    [],
    [0],
    [5],
    [300000],
    [300000, 250000],
    [300000, 0, 17, 2 ** 18, 3 * 2 ** 20 + 5, 1, 65536],
    [5 * 2 ** 20],
  ]) {
    const start = 4099;
    const srcOffsets2: number[] = [],
      dstOffsets2: number[] = [];
    let at = start,
      dst = 0;
    for (const n of sizes2) {
      srcOffsets2.push(at);
      at += n;
      dst += 16 - (dst % 16);
      dstOffsets2.push(dst);
      dst += n;
    }
    const { copy, crc } = native.stages.copyChunksCrc32c(big, {
      srcOffsets: srcOffsets2,
      dstOffsets: dstOffsets2,
      sizes: sizes2,
      dstBytes: dst,
    });
    const want = Buffer.alloc(dst);
    sizes2.forEach((n, i) => big.copy(want, dstOffsets2[i]!, srcOffsets2[i]!, srcOffsets2[i]! + n));
    t.ok(copy.equals(want), `chunks [${sizes2.join(', ')}] land at their offsets`);
    t.equal(crc, ref(big.subarray(start, at)), `CRC of the span of chunks [${sizes2.join(', ')}]`);
  }
  t.throws(
    () =>
      native.stages.copyChunksCrc32c(big, { srcOffsets: [0, 10], dstOffsets: [0, 16], sizes: [5, 5], dstBytes: 32 }),
    { code: 'ERR_KVTC_INTERNAL' },
    'chunks with a gap between them in the source are refused',
  );
  // Many lists in one pass (a decode group's sections): each list's copy and span CRC as alone, for
  // spans below and past the parallel cut, an empty list among them.
  const lists = [
    { start: 3, sizes: [100, 7, 5000] },
    { start: 2 ** 20 + 1, sizes: [2 ** 18 + 5, 16 * 1024, 2 ** 19 + 9] },
    { start: 77, sizes: [] },
    { start: 5 * 2 ** 20, sizes: [4096] },
  ].map(({ start, sizes }) => {
    const srcOffsets: number[] = [],
      dstOffsets: number[] = [];
    let at = start,
      dst = 0;
    for (const n of sizes) {
      srcOffsets.push(at);
      dstOffsets.push(dst);
      at += n;
      dst += n + 16 - (n % 16);
    }
    return { srcOffsets, dstOffsets, sizes, dstBytes: dst, span: big.subarray(start, at) };
  });
  const staged = native.stages.copyChunksCrc32cMany(big, lists);
  t.equal(staged.length, lists.length);
  for (const [i, l] of lists.entries()) {
    const alone = native.stages.copyChunksCrc32c(big, l);
    t.ok(staged[i]!.copy.equals(alone.copy), `list ${i}: the same copy as alone`);
    t.equal(staged[i]!.crc, l.sizes.length ? ref(l.span) : 0, `list ${i}: the CRC of its span`);
  }
  // The fused copy + CRC pass (CUDA record assembly) at sizes below, at and past its 512 KiB cut.
  for (const n of [0, 1, 2 ** 19 - 1, 2 ** 19, 2 ** 19 + 2 ** 18 + 3, 3 * 2 ** 20 + 7, big.length]) {
    const { copy, crc } = native.stages.copyCrc32c(big.subarray(0, n));
    t.ok(copy.equals(big.subarray(0, n)), `copy of ${n} bytes is exact`);
    t.equal(crc, ref(big.subarray(0, n)), `CRC of the ${n}-byte copy`);
  }
  // Into a given destination: whole pages after the source, and 16 bytes further (the placement
  // host_copy.cc copies in 2 KiB calls), each past the 2 KiB step with a ragged end.
  const n = 2 ** 20 + 12345;
  const pitch = 2 ** 21;
  const space = Buffer.alloc(3 * pitch + 64);
  big.copy(space, 0, 0, n);
  for (const at of [pitch, 2 * pitch + 16, 2 * pitch + 16 + 4096 * 3]) {
    const into = space.subarray(at, at + n);
    const { copy, crc } = native.stages.copyCrc32c(space.subarray(0, n), into);
    t.equal(copy, into, 'the copy is the destination given');
    t.ok(into.equals(big.subarray(0, n)), `copy into offset ${at} is exact`);
    t.equal(crc, ref(big.subarray(0, n)), `CRC of the copy into offset ${at}`);
  }
  t.throws(() => native.stages.copyCrc32c(big.subarray(0, 100), Buffer.alloc(99)), {
    code: 'ERR_KVTC_INVALID_ARGUMENT',
  });
  // Many parts at once (a fused GPU encode group's read back): empty, tiny, past the 256 KiB piece,
  // megabytes with a ragged end, each from its own offset.
  const partSizes = [0, 1, 2 ** 18 + 1, 17, 3 * 2 ** 20 + 7, 2 ** 19];
  const parts = partSizes.map((n, i) => big.subarray(i * 1000, i * 1000 + n));
  const many = native.stages.copyCrc32cMany(parts);
  const inPlace = native.stages.copyCrc32cMany(parts, true);
  for (const [i, part] of parts.entries()) {
    t.ok(many.copies[i]!.equals(part), `part ${i} (${partSizes[i]} bytes) copied exactly`);
    t.equal(many.crcs[i], ref(part), `part ${i}: CRC of the copy`);
    t.equal(inPlace.crcs[i], ref(part), `part ${i}: CRC in place`);
  }
});
