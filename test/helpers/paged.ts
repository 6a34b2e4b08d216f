// Host references for the paged-cache GPU tests: where a token row's elements lie in a region of
// layers laid out as `l` describes ([kv][block][slot][head][dim] strides, one layer's extent after
// another), and the rows a span holds.
import type { PagedLayout } from '../../src/codec/paged.js';

/** Elements of one layer's tensor (the region holds `layers` of them back to back). */
export function layerExtent(l: PagedLayout): number {
  const [a, b, c, d, e] = l.strides;
  return a + (l.numBlocks - 1) * b + (l.blockSize - 1) * c + (l.kvHeads - 1) * d + (l.headDim - 1) * e + 1;
}

/** Element index of feature j (head x dim) of span token t of `layer`, keys (kv 0) or values (1). */
export function pagedIndex(
  l: PagedLayout,
  layer: number,
  kv: number,
  blockIds: number[],
  firstSlot: number,
  t: number,
  j: number,
): number {
  const h = Math.floor(j / l.headDim) % l.kvHeads;
  const d = j % l.headDim;
  const pos = firstSlot + t;
  const [sk, sb, ss, sh, sd] = l.strides;
  return (
    layer * layerExtent(l) +
    kv * sk +
    blockIds[Math.floor(pos / l.blockSize)]! * sb +
    (pos % l.blockSize) * ss +
    h * sh +
    d * sd
  );
}

/** A span's keys and values as [tokens, layers x kv heads x head dim] rows, read from `flat`. */
export function gatherRows(
  l: PagedLayout,
  layers: number,
  flat: Float32Array,
  blockIds: number[],
  firstSlot: number,
  tokens: number,
): { keys: Float32Array; values: Float32Array } {
  const perLayer = l.kvHeads * l.headDim,
    p = layers * perLayer;
  const keys = new Float32Array(tokens * p),
    values = new Float32Array(tokens * p);
  for (let t = 0; t < tokens; t++)
    for (let j = 0; j < p; j++) {
      const layer = Math.floor(j / perLayer);
      keys[t * p + j] = flat[pagedIndex(l, layer, 0, blockIds, firstSlot, t, j % perLayer)]!;
      values[t * p + j] = flat[pagedIndex(l, layer, 1, blockIds, firstSlot, t, j % perLayer)]!;
    }
  return { keys, values };
}

/** Sum of squared differences: a restore's error against the original or another restore. */
export function sumSquaredDiff(x: Float32Array, y: Float32Array): number {
  return x.reduce((acc, v, k) => acc + (v - y[k]!) ** 2, 0);
}
