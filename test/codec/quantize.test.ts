import t from 'tap';
import { loadNative, type NativePlan } from '../../src/codec/native.js';
import { gaussian, mulberry32 } from '../../src/calibrate/synthetic.js';
import { roundHalf } from '../helpers/reference.js';

const native = loadNative();
const BITS = [0, 2, 4, 8];

function plan(groups: [number, number, number][]): NativePlan {
  let rank = 0;
  for (const [s, n, ty] of groups) if (ty !== 0) rank = s + n;
  return { groups: Uint32Array.from(groups.flat()), rank };
}

// Mixed plan over 1 + 16 + 64 + 1 + 256 + 16 = 354 components: every size and type.
const MIXED: [number, number, number][] = [
  [0, 1, 3],
  [1, 16, 3],
  [17, 64, 2],
  [81, 1, 1],
  [82, 256, 1],
  [338, 16, 0],
  [354, 1, 2],
];

function payloadBytesReference(groups: [number, number, number][], tokens: number): number {
  let n = 0;
  for (const [, size, ty] of groups) if (ty !== 0) n += tokens * 4 + Math.ceil((tokens * size * BITS[ty]!) / 8);
  return n;
}

for (const tokens of [1, 7, 19, 989]) {
  t.test(`quantize/dequantize against the float64 error bound, ${tokens} tokens`, async (t) => {
    const pl = plan(MIXED);
    const normal = gaussian(mulberry32(tokens));
    // Decaying scales like PCA coefficients.
    const d = Float32Array.from(
      { length: tokens * pl.rank },
      (_, i) => normal() * 20 * Math.pow(1 + (i % pl.rank), -0.7),
    );
    const payload = native.stages.quantize(d, { tokens, plan: pl });
    t.equal(payload.length, payloadBytesReference(MIXED, tokens), 'payload size is the closed-form size');
    const back = native.stages.dequantize(payload, { tokens, plan: pl });
    let worst = 0;
    let droppedZero = true;
    for (let tk = 0; tk < tokens; tk++) {
      for (const [start, size, ty] of MIXED) {
        if (start + size > pl.rank) continue;
        const row = Array.from(d.subarray(tk * pl.rank + start, tk * pl.rank + start + size));
        const lo = Math.min(...row),
          hi = Math.max(...row);
        for (let j = 0; j < size; j++) {
          const x = row[j]!,
            y = back[tk * pl.rank + start + j]!;
          let bound: number;
          if (ty === 0)
            bound = Math.abs(x); // dropped: reconstructs as 0 (the mean)
          else if (ty === 3) {
            const scale = roundHalf((hi - lo) / 2 / 448);
            // e4m3 keeps 3 mantissa bits: relative half-ulp 2^-4, plus shift/scale rounding.
            const mid = (hi + lo) / 2;
            bound =
              Math.abs(x - roundHalf(mid)) * 2 ** -4 +
              scale * 2 ** -9 +
              Math.abs(roundHalf(mid) - mid) +
              1e-6 * (Math.abs(x) + 1);
          } else {
            const levels = 2 ** BITS[ty]! - 1;
            const scale = roundHalf((hi - lo) / levels);
            const shift = roundHalf(lo);
            // Half a step, plus what fp16 rounding of shift and scale moves the grid by.
            bound =
              scale / 2 +
              Math.abs(shift - lo) +
              levels * Math.abs(scale - (hi - lo) / levels) +
              1e-5 * (Math.abs(x) + 1);
          }
          if (ty === 0) droppedZero &&= y === 0;
          worst = Math.max(worst, Math.abs(x - y) / Math.max(bound, 1e-12));
        }
      }
    }
    t.ok(droppedZero, 'dropped components reconstruct as 0');
    t.ok(worst <= 1.0001, `every component within its bound (worst ${worst.toFixed(4)} of bound)`);
  });
}

t.test('constant groups and all-dropped plans', async (t) => {
  const pl = plan([[0, 16, 2]]);
  const d = new Float32Array(3 * 16).fill(1.25);
  const back = native.stages.dequantize(native.stages.quantize(d, { tokens: 3, plan: pl }), { tokens: 3, plan: pl });
  t.same(Array.from(back), Array.from(d), 'constant group reconstructs exactly');
  const none = plan([[0, 16, 0]]);
  t.equal(
    native.stages.quantize(new Float32Array(0), { tokens: 5, plan: none }).length,
    0,
    'no payload for dropped groups',
  );
});

t.test('malformed plans are refused', async (t) => {
  t.throws(
    () =>
      native.stages.quantize(new Float32Array(3), {
        tokens: 1,
        plan: { groups: Uint32Array.from([0, 3, 1]), rank: 3 },
      }),
    {
      code: 'ERR_KVTC_CALIBRATION_INVALID',
    },
  );
  t.throws(
    () =>
      native.stages.quantize(new Float32Array(2), {
        tokens: 1,
        plan: { groups: Uint32Array.from([1, 1, 1]), rank: 2 },
      }),
    {
      code: 'ERR_KVTC_CALIBRATION_INVALID',
    },
  );
});

t.test('fp16 and fp8 rounding matches the float64 references', async (t) => {
  const normal = gaussian(mulberry32(5));
  const x = Float32Array.from({ length: 4000 }, (_, i) => normal() * Math.pow(10, (i % 12) - 7));
  const h = native.stages.round(x, 'float16');
  let same = true;
  for (let i = 0; i < x.length; i++) same &&= h[i] === Math.fround(roundHalf(x[i]!));
  t.ok(same, 'float16 round-to-nearest-even is exact');
  const f8 = native.stages.round(
    Float32Array.from([0, 1, -1, 448, 500, -1e9, 0.0625, 1.0625, 1.1875, 2 ** -9, 2 ** -10]),
    'fp8',
  );
  t.same(
    Array.from(f8),
    [0, 1, -1, 448, 448, -448, 0.0625, 1, 1.25, 2 ** -9, 0],
    'e4m3: saturating, ties to even, subnormals',
  );
});
