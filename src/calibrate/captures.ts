/**
 * Reads KV captures written by `python -m kvtc_connector.capture` (one safetensors file per
 * sequence: `keys`/`values` F32 [tokens, layers, kv_heads, head_dim] with RoPE applied,
 * `positions` I64 [tokens], metadata `kvtc_capture`) and pools token rows for calibration.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';

import { KvtcError } from '../core/errors.js';
import { toNativeRope, type ModelInfo, type RopeJson } from '../codec/calibration.js';
import { loadNative } from '../codec/native.js';
import { parseSafetensors, tensorToFloat32 } from '../codec/safetensors.js';

export interface Capture {
  file: string;
  model: ModelInfo;
  tokens: number;
  /** [tokens, p], RoPE applied */
  keys: Float32Array;
  values: Float32Array;
  positionStart: number;
}

interface CaptureMeta {
  model?: string;
  model_fingerprint?: string;
  layers?: number;
  kv_heads?: number;
  head_dim?: number;
  rope?: RopeJson;
}

function bad(file: string, message: string): never {
  throw new KvtcError('ERR_KVTC_CALIBRATION_INVALID', `${file}: ${message}`);
}

export async function readCapture(file: string): Promise<Capture> {
  const st = parseSafetensors(await readFile(file), file);
  let meta: CaptureMeta;
  try {
    meta = JSON.parse(st.metadata['kvtc_capture'] ?? 'null') as CaptureMeta;
  } catch {
    bad(file, 'kvtc_capture metadata is not JSON');
  }
  if (!meta) bad(file, 'no kvtc_capture metadata: not a KV capture');
  const { layers, kv_heads: kvHeads, head_dim: headDim } = meta;
  if (!(layers! > 0 && kvHeads! > 0 && headDim! > 0)) bad(file, 'capture metadata lacks layers, kv_heads or head_dim');
  if (!meta.rope || !(meta.rope.theta > 0) || !(meta.rope.rotary_dim > 0))
    bad(file, 'capture metadata lacks RoPE parameters');
  if (!/^[0-9a-f]{32}$/.test(meta.model_fingerprint ?? ''))
    bad(file, 'capture metadata lacks a 32-hex model_fingerprint');
  const k = st.tensors.get('keys'),
    v = st.tensors.get('values'),
    pos = st.tensors.get('positions');
  if (!k || !v || !pos) bad(file, 'capture lacks keys, values or positions');
  const shapeOk = (s: number[]) => s.length === 4 && s[1] === layers && s[2] === kvHeads && s[3] === headDim;
  if (!shapeOk(k.shape) || !shapeOk(v.shape) || k.shape[0] !== v.shape[0])
    bad(
      file,
      `keys ${JSON.stringify(k.shape)} / values ${JSON.stringify(v.shape)} do not match [tokens, ${layers}, ${kvHeads}, ${headDim}]`,
    );
  const tokens = k.shape[0]!;
  if (pos.dtype !== 'I64' || pos.shape[0] !== tokens) bad(file, 'positions must be I64 [tokens]');
  const p = new BigInt64Array(new Uint8Array(pos.data).buffer);
  for (let i = 1; i < tokens; i++) if (p[i] !== p[0]! + BigInt(i)) bad(file, 'positions must be consecutive');
  return {
    file,
    model: {
      name: meta.model ?? 'unknown',
      fingerprint: meta.model_fingerprint!,
      layers: layers!,
      kv_heads: kvHeads!,
      head_dim: headDim!,
      rope: meta.rope,
    },
    tokens,
    keys: tensorToFloat32(k),
    values: tensorToFloat32(v),
    positionStart: tokens > 0 ? Number(p[0]) : 0,
  };
}

export async function listCaptures(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `${dir}: cannot list captures (${(err as Error).message})`);
  }
  const files = names
    .filter((n) => n.endsWith('.safetensors'))
    .sort()
    .map((n) => join(dir, n));
  if (files.length === 0) throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `${dir}: no .safetensors captures`);
  return files;
}

/** Removes RoPE from a capture's keys (a copy), at the capture's absolute positions. */
export function unropedKeys(c: Capture): Float32Array {
  const m = c.model;
  return loadNative().stages.ropeRotate(c.keys, {
    tokens: c.tokens,
    heads: m.layers * m.kv_heads,
    headDim: m.head_dim,
    positionStart: c.positionStart,
    rope: toNativeRope(m.rope),
    inverse: true,
  });
}

export interface PooledSamples {
  model: ModelInfo;
  keys: Float32Array; // [n, p], RoPE removed
  values: Float32Array;
  n: number;
  files: number;
}

/**
 * Pools token rows of every capture, excluding attention sinks (positions < sinkTokens), RoPE
 * removed from keys; keeps at most `maxSamples` rows, chosen uniformly with a seeded generator.
 */
export async function poolCaptures(
  dir: string,
  options: { sinkTokens: number; maxSamples: number; seed: number; minSamples: number },
): Promise<PooledSamples> {
  const files = await listCaptures(dir);
  let model: ModelInfo | undefined;
  const parts: { keys: Float32Array; values: Float32Array; rows: number[] }[] = [];
  let total = 0;
  for (const file of files) {
    const c = await readCapture(file);
    if (!model) model = c.model;
    else if (
      c.model.layers !== model.layers ||
      c.model.kv_heads !== model.kv_heads ||
      c.model.head_dim !== model.head_dim ||
      c.model.fingerprint !== model.fingerprint
    ) {
      bad(file, `model shape or fingerprint differs from ${files[0]}`);
    }
    const keys = unropedKeys(c);
    const rows: number[] = [];
    for (let t = 0; t < c.tokens; t++) if (c.positionStart + t >= options.sinkTokens) rows.push(t);
    const p = model.layers * model.kv_heads * model.head_dim;
    for (const arr of [keys, c.values]) {
      for (let i = 0; i < arr.length; i++)
        if (!Number.isFinite(arr[i]!)) bad(file, `non-finite value at token ${Math.floor(i / p)}`);
    }
    parts.push({ keys, values: c.values, rows });
    total += rows.length;
  }
  if (!model) throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `${dir}: no captures`);
  if (total < options.minSamples)
    throw new KvtcError(
      'ERR_KVTC_INVALID_ARGUMENT',
      `${dir}: ${total} token rows after excluding sinks, fewer than the ${options.minSamples} calibration needs`,
    );
  const p = model.layers * model.kv_heads * model.head_dim;
  // Uniform sample without replacement (seeded partial Fisher-Yates over the global row index).
  const index = Array.from({ length: total }, (_, i) => i);
  const n = Math.min(total, options.maxSamples);
  let state = options.seed >>> 0 || 1;
  const rand = () => (state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 4294967296;
  if (n < total) {
    for (let i = 0; i < n; i++) {
      const j = i + Math.floor(rand() * (total - i));
      [index[i], index[j]] = [index[j]!, index[i]!];
    }
    index.length = n;
    index.sort((a, b) => a - b);
  }
  const keys = new Float32Array(n * p),
    values = new Float32Array(n * p);
  let part = 0,
    base = 0,
    out = 0;
  for (const g of index) {
    while (g >= base + parts[part]!.rows.length) base += parts[part++]!.rows.length;
    const src = parts[part]!.rows[g - base]! * p;
    keys.set(parts[part]!.keys.subarray(src, src + p), out * p);
    values.set(parts[part]!.values.subarray(src, src + p), out * p);
    out++;
  }
  return { model, keys, values, n, files: files.length };
}
