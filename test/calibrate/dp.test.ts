// The exact DP (Appendix B.17) against brute force over every allocation, on small problems.
// A plan's error is measured independently: quantize and dequantize the coefficients with the
// plan through the codec's own stages and sum the squared differences.
import t from 'tap';
import { loadNative, type NativePlan } from '../../src/codec/native.js';
import { gaussian, mulberry32 } from '../../src/calibrate/synthetic.js';

const native = loadNative();
const COST_BITS = [0, 2, 4, 8];

function coefficients(n: number, f: number, seed: number): Float32Array {
  const normal = gaussian(mulberry32(seed));
  return Float32Array.from({ length: n * f }, (_, i) => normal() * 10 * Math.pow(1 + (i % f), -0.8));
}

type G = [number, number, number];

function planError(d: Float32Array, n: number, f: number, groups: G[]): number {
  let rank = 0;
  for (const [s, size, ty] of groups) if (ty) rank = s + size;
  let err = 0;
  let back: Float32Array = new Float32Array(0);
  if (rank > 0) {
    const trimmed = groups.filter(([s]) => s < rank);
    const plan: NativePlan = { groups: Uint32Array.from(trimmed.flat()), rank };
    const sub = new Float32Array(n * rank);
    for (let r = 0; r < n; r++) sub.set(d.subarray(r * f, r * f + rank), r * rank);
    back = native.stages.dequantize(native.stages.quantize(sub, { tokens: n, plan }), { tokens: n, plan });
  }
  for (let r = 0; r < n; r++)
    for (let j = 0; j < f; j++) {
      const x = d[r * f + j]!;
      const y = j < rank ? back[r * rank + j]! : 0;
      err += (x - y) ** 2;
    }
  return err;
}

function cost(groups: G[]): number {
  return groups.reduce((a, [, size, ty]) => a + (ty ? size * COST_BITS[ty]! + 32 : 0), 0);
}

/** Every allocation of [0, f) into groups of the given sizes and types within `maxBits`. */
function* allPlans(f: number, sizes: number[], maxBits: number, at = 0, acc: G[] = []): Generator<G[]> {
  if (at === f) {
    yield acc;
    return;
  }
  yield* allPlans(f, sizes, maxBits, at + 1, [...acc, [at, 1, 0]]); // dropped components
  for (const size of sizes) {
    if (at + size > f) continue;
    for (const ty of [1, 2, 3]) {
      const c = size * COST_BITS[ty]! + 32;
      if (c <= maxBits) yield* allPlans(f, sizes, maxBits - c, at + size, [...acc, [at, size, ty]]);
    }
  }
}

for (const [f, sizes, budgets, n] of [
  [5, [1], [0, 33, 34, 40, 68, 80, 120, 200], 48],
  [18, [1, 16], [34, 66, 100, 130], 24],
] as const) {
  t.test(`DP equals brute force: ${f} components, sizes ${sizes.join('/')}`, async (t) => {
    const d = coefficients(n, f, f);
    const dp = await native.allocateBits(d, n, f, [...budgets]);
    const energy = dp.energy;
    let prevErr = Infinity;
    for (let b = 0; b < budgets.length; b++) {
      const budget = budgets[b]!;
      let best = Infinity;
      let count = 0;
      for (const plan of allPlans(f, [...sizes], budget)) {
        best = Math.min(best, planError(d, n, f, plan));
        count++;
      }
      const got = dp.plans[b]!;
      const groups: G[] = [];
      for (let i = 0; i < got.groups.length; i += 3)
        groups.push([got.groups[i]!, got.groups[i + 1]!, got.groups[i + 2]!]);
      const measured = planError(d, n, f, groups);
      t.ok(cost(groups) <= budget, `budget ${budget}: plan costs ${cost(groups)} bits`);
      t.equal(cost(groups), got.bitsPerToken, 'the plan reports the bits it spends');
      t.ok(
        Math.abs(measured - best) <= 1e-6 * energy,
        `budget ${budget}: DP error ${measured.toFixed(4)} = brute force ${best.toFixed(4)} over ${count} plans`,
      );
      t.ok(
        Math.abs(got.expectedError * energy - measured) <= 1e-6 * energy,
        "expected_error is the plan's measured error",
      );
      t.ok(measured <= prevErr + 1e-9 * energy, 'more budget never increases the error');
      prevErr = measured;
    }
  });
}

t.test('DP at a realistic size meets every budget and trims the basis', async (t) => {
  const n = 64,
    f = 600;
  const d = coefficients(n, f, 3);
  const budgets = [(16 * f) / 64, (16 * f) / 16, (16 * f) / 4].map(Math.floor);
  const dp = await native.allocateBits(d, n, f, budgets);
  let prev = Infinity;
  for (const [i, plan] of dp.plans.entries()) {
    t.ok(plan.bitsPerToken <= budgets[i]!, `plan ${i} within ${budgets[i]} bits (${plan.bitsPerToken})`);
    t.ok(plan.expectedError <= prev, 'monotone in budget');
    prev = plan.expectedError;
    const last = plan.groups.length - 3;
    t.ok(
      plan.groups[last + 2] !== 0 && plan.groups[last]! + plan.groups[last + 1]! === plan.rank,
      'the plan ends at its last kept group',
    );
  }
});

t.test('DP input errors are coded', async (t) => {
  await t.rejects(async () => native.allocateBits(new Float32Array(3), 1, 4, [10]), {
    code: 'ERR_KVTC_INVALID_ARGUMENT',
  });
});
