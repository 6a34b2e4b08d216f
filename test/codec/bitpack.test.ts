import t from 'tap';
import { loadNative } from '../../src/codec/native.js';
import { mulberry32 } from '../../src/calibrate/synthetic.js';
import { packReference } from '../helpers/reference.js';

const native = loadNative();

for (const bits of [2, 4, 8]) {
  for (const count of [1, 3, 7, 19, 989, 4096]) {
    t.test(`${bits}-bit packing of ${count} codes`, async (t) => {
      const rand = mulberry32(bits * 1000 + count);
      const codes = Uint8Array.from({ length: count }, () => Math.floor(rand() * 2 ** bits));
      const packed = native.stages.packBits(codes, bits);
      t.same(Buffer.from(packed), Buffer.from(packReference(codes, bits)), 'LSB-first layout matches the reference');
      t.same(Buffer.from(native.stages.packBits(packed, bits, count)), Buffer.from(codes), 'unpack returns the codes');
    });
  }
}

t.test('codes wider than the bit width are refused', async (t) => {
  t.throws(() => native.stages.packBits(Uint8Array.from([4]), 2), { code: 'ERR_KVTC_INVALID_ARGUMENT' });
});
