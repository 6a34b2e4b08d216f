/** KV captures as `python -m kvtc_connector.capture` writes them, for tests of their readers. */
import { writeFileSync } from 'node:fs';

import { applyRope, syntheticKv } from '../../src/calibrate/synthetic.js';
import type { ModelInfo } from '../../src/codec/calibration.js';
import { float32Tensor, serializeSafetensors } from '../../src/codec/safetensors.js';

/**
 * Writes one capture of `tokens` synthetic tokens (seed `seed`) at positions from `positionStart`:
 * keys and values F32 [tokens, layers, kv_heads, head_dim], keys with RoPE applied.
 */
export function writeSyntheticCapture(file: string, model: ModelInfo, tokens: number, seed: number, positionStart = 0) {
  const p = model.layers * model.kv_heads * model.head_dim;
  const kv = syntheticKv(tokens, p, seed);
  const shape = [tokens, model.layers, model.kv_heads, model.head_dim];
  const positions = new BigInt64Array(tokens).map((_, i) => BigInt(positionStart + i));
  writeFileSync(
    file,
    serializeSafetensors(
      [
        ['keys', float32Tensor(applyRope(kv.keys, tokens, positionStart, model), shape)],
        ['values', float32Tensor(kv.values, shape)],
        ['positions', { dtype: 'I64', shape: [tokens], data: new Uint8Array(positions.buffer) }],
      ],
      {
        kvtc_capture: JSON.stringify({
          model: model.name,
          model_fingerprint: model.fingerprint,
          layers: model.layers,
          kv_heads: model.kv_heads,
          head_dim: model.head_dim,
          rope: model.rope,
        }),
      },
    ),
  );
}
