// Two GPUs behind one sidecar: a cache on device 0 saved and restored into a cache on device 1
// (the prefill and decode GPUs of one node), and jobs of both devices interleaved on the addon's
// threads, whose streams, library handles and scratch are per device, as is the calibration's
// device copy. Needs two CUDA devices (the nvidia-h200-x2 machine); skipped otherwise.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { decode } from '../../src/codec/codec.js';
import {
  allocateKv,
  cudaDevices,
  decodePaged,
  encodePaged,
  readKv,
  releaseKv,
  writeKv,
  type PagedLayout,
  type Region,
} from '../../src/codec/paged.js';
import { smallRecordFixture } from '../helpers/calibration.js';
import { gpuSkip } from '../helpers/gpu.js';

const devices = gpuSkip ? 0 : cudaDevices().length;
const skip =
  gpuSkip || (devices < 2 ? `needs two CUDA devices, found ${devices} (run it on the nvidia-h200-x2 machine)` : false);

// smallRecordFixture's model: 2 layers x 2 KV heads x 8 dims, 256 float32 tokens.
const LAYERS = 2,
  HEADS = 2,
  DIM = 8,
  TOKENS = 256;
const P = LAYERS * HEADS * DIM;
const NUM_BLOCKS = 24,
  BLOCK = 16;
// vLLM's FlashAttention layout, (2, num_blocks, block_size, heads, dim) per layer.
const layout: PagedLayout = {
  numBlocks: NUM_BLOCKS,
  blockSize: BLOCK,
  kvHeads: HEADS,
  headDim: DIM,
  dtype: 'float32',
  strides: [NUM_BLOCKS * BLOCK * HEADS * DIM, BLOCK * HEADS * DIM, HEADS * DIM, DIM, 1],
};
const EXTENT = 2 * NUM_BLOCKS * BLOCK * HEADS * DIM; // elements per layer

function at(layer: number, kv: number, blockIds: number[], t: number, j: number): number {
  const [sk, sb, ss] = layout.strides;
  return layer * EXTENT + kv * sk + blockIds[Math.floor(t / BLOCK)]! * sb + (t % BLOCK) * ss + j;
}

// The span's rows of a region's bytes, as [tokens, P] keys and values.
function gather(bytes: Buffer, blockIds: number[]): { keys: Float32Array; values: Float32Array } {
  const flat = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
  const keys = new Float32Array(TOKENS * P),
    values = new Float32Array(TOKENS * P);
  const perLayer = HEADS * DIM;
  for (let t = 0; t < TOKENS; t++)
    for (let j = 0; j < P; j++) {
      keys[t * P + j] = flat[at(Math.floor(j / perLayer), 0, blockIds, t, j % perLayer)]!;
      values[t * P + j] = flat[at(Math.floor(j / perLayer), 1, blockIds, t, j % perLayer)]!;
    }
  return { keys, values };
}

test('two devices: a cache saved on one restores into the other, jobs of both interleaved', { skip }, async () => {
  const { cal, keys, values } = await smallRecordFixture();
  const options = { planId: 0, tokenStart: 0, sinkTokens: 4, windowTokens: 8 };
  const prefillIds = [5, 17, 2, 9, 22, 0, 13, 7, 19, 3, 11, 21, 1, 15, 8, 23];
  const decodeIds = [12, 4, 20, 6, 16, 10, 14, 18, 0, 2, 23, 9, 1, 5, 21, 3];
  const regions: Region[] = [];
  const region = (device: number) => {
    const r = allocateKv(device, LAYERS, layout);
    regions.push(r);
    return r;
  };
  try {
    const prefill = region(0); // the prefill GPU's cache
    const decoder = region(1); // the decode GPU's cache
    const local = region(0); // the same restore on the prefill GPU, for reference
    const flat = new Float32Array(LAYERS * EXTENT);
    const perLayer = HEADS * DIM;
    for (let t = 0; t < TOKENS; t++)
      for (let j = 0; j < P; j++) {
        flat[at(Math.floor(j / perLayer), 0, prefillIds, t, j % perLayer)] = keys[t * P + j]!;
        flat[at(Math.floor(j / perLayer), 1, prefillIds, t, j % perLayer)] = values[t * P + j]!;
      }
    writeKv(prefill, new Uint8Array(flat.buffer));
    const prefillSpan = { blockIds: prefillIds, firstSlot: 0, tokens: TOKENS };
    const decodeSpan = { blockIds: decodeIds, firstSlot: 0, tokens: TOKENS };

    const saved = await encodePaged(cal, prefill, prefillSpan, options);
    await decodePaged(cal, decoder, decodeSpan, saved);
    await decodePaged(cal, local, decodeSpan, saved);
    const onDecoder = readKv(decoder),
      onPrefill = readKv(local);
    assert.equal(Buffer.compare(onDecoder, onPrefill), 0, 'device 1 restores the bits device 0 restores');
    const want = await decode(cal, saved, { tokens: TOKENS, dtype: 'float32', backend: 'cuda' });
    const got = gather(onDecoder, decodeIds);
    assert.deepEqual(Buffer.from(got.keys.buffer), want.keys, 'keys: the record decoded');
    assert.deepEqual(Buffer.from(got.values.buffer), want.values, 'values: the record decoded');
    const touched = new Set(decodeIds);
    const other = new Float32Array(
      onDecoder.buffer.slice(onDecoder.byteOffset, onDecoder.byteOffset + onDecoder.length),
    );
    for (let b = 0; b < NUM_BLOCKS; b++) {
      if (touched.has(b)) continue;
      for (let layer = 0; layer < LAYERS; layer++)
        for (const kv of [0, 1])
          for (let i = 0; i < BLOCK * perLayer; i++)
            assert.equal(other[at(layer, kv, [b], 0, 0) + i], 0, `block ${b} (layer ${layer}, kv ${kv}) untouched`);
    }

    // Saves from either device's restored cache write the same record; then many jobs of both
    // devices at once, on whichever addon threads take them.
    const fromDecoder = await encodePaged(cal, decoder, decodeSpan, options);
    const fromPrefill = await encodePaged(cal, local, decodeSpan, options);
    assert.equal(Buffer.compare(fromDecoder, fromPrefill), 0, 'device 1 encodes the record device 0 encodes');
    const jobs: Promise<Buffer>[] = [];
    for (let i = 0; i < 6; i++) {
      jobs.push(encodePaged(cal, prefill, prefillSpan, options));
      jobs.push(encodePaged(cal, decoder, decodeSpan, options));
    }
    const records = await Promise.all(jobs);
    records.forEach((r, i) =>
      assert.equal(Buffer.compare(r, i % 2 ? fromDecoder : saved), 0, `interleaved job ${i} (device ${i % 2})`),
    );
    await Promise.all([
      decodePaged(cal, decoder, decodeSpan, saved),
      decodePaged(cal, local, decodeSpan, saved),
      decodePaged(cal, decoder, decodeSpan, saved),
    ]);
    assert.equal(Buffer.compare(readKv(decoder), onDecoder), 0, 'restores of both devices at once');
  } finally {
    for (const r of regions) releaseKv(r);
  }
});
