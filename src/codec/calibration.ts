/**
 * Calibration files: the per-model PCA mean and basis for keys and values, and one bit-allocation
 * plan per target ratio. Stored as safetensors (tensors `keys.mean` [p], `keys.basis` [p, rank],
 * `values.mean`, `values.basis`, all F32) with one metadata entry `kvtc` holding the JSON below.
 * The calibration id is the first 16 bytes of SHA-256 over the tensor bytes (in that order) and
 * the canonical JSON of the metadata without the id: it names the exact artefact, and records
 * carry it so that nothing is ever decoded with the wrong basis.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';

import { KvtcError } from '../core/errors.js';
import { loadNative, type NativeCalibration, type NativePlan, type NativeRope } from './native.js';
import { float32Tensor, parseSafetensors, serializeSafetensors, type Tensor } from './safetensors.js';

/** RoPE parameters in the canonical JSON form shared with connector-py (snake_case). */
export interface RopeJson {
  theta: number;
  rotary_dim: number;
  layout: 'neox' | 'interleaved';
  scaling:
    | { type: 'default' }
    | { type: 'linear'; factor: number }
    | {
        type: 'llama3';
        factor: number;
        low_freq_factor: number;
        high_freq_factor: number;
        original_max_position_embeddings: number;
      };
}

export interface ModelInfo {
  name: string;
  /** 32 hex characters (16 bytes), from connector-py's model_fingerprint(). */
  fingerprint: string;
  layers: number;
  kv_heads: number;
  head_dim: number;
  rope: RopeJson;
}

/** Group types: 0 dropped, 1 int2, 2 int4, 3 fp8. */
export type GroupTriple = [start: number, size: number, type: 0 | 1 | 2 | 3];

export interface StreamPlan {
  rank: number;
  groups: GroupTriple[];
  bits_per_token: number;
  expected_error: number;
}

export interface PlanInfo {
  /** Target ratio before entropy coding: budget = 16 * p / ratio bits per token. */
  ratio: number;
  budget_bits: number;
  keys: StreamPlan;
  values: StreamPlan;
}

export interface CalibrationSettings {
  sink_tokens: number;
  window_tokens: number;
  rank_cap: number;
  power_iters: number;
  oversample: number;
  seed: number;
  samples: number;
  dp_samples: number;
  source: string;
}

export interface CalibrationMetadata {
  format: 'kvtc-calibration';
  version: 1;
  calibration_id: string;
  model: ModelInfo;
  settings: CalibrationSettings;
  plans: PlanInfo[];
}

export interface StreamTensors {
  mean: Float32Array;
  basis: Float32Array;
  rank: number;
}

/** A loaded calibration: metadata, tensors, and the native copy the codec uses. */
export class Calibration {
  readonly id: string;
  readonly featureDim: number;
  /** @internal the addon's immutable copy */
  readonly native: NativeCalibration;

  constructor(
    readonly metadata: CalibrationMetadata,
    readonly keys: StreamTensors,
    readonly values: StreamTensors,
  ) {
    this.id = metadata.calibration_id;
    const m = metadata.model;
    this.featureDim = m.layers * m.kv_heads * m.head_dim;
    this.native = new (loadNative().Calibration)({
      id: Buffer.from(this.id, 'hex'),
      modelFingerprint: Buffer.from(m.fingerprint, 'hex'),
      layers: m.layers,
      kvHeads: m.kv_heads,
      headDim: m.head_dim,
      rope: toNativeRope(m.rope),
      keys,
      values,
      plans: metadata.plans.map((p) => ({
        keys: toNativePlan(p.keys, p.ratio),
        values: toNativePlan(p.values, p.ratio),
      })),
    });
  }

  get model(): ModelInfo {
    return this.metadata.model;
  }

  get plans(): readonly PlanInfo[] {
    return this.metadata.plans;
  }

  /**
   * The plan id for a target ratio.
   * @throws {KvtcError} ERR_KVTC_PLAN_UNKNOWN naming the ratios this calibration has.
   */
  planId(ratio: number): number {
    const id = this.metadata.plans.findIndex((p) => p.ratio === ratio);
    if (id < 0) {
      throw new KvtcError(
        'ERR_KVTC_PLAN_UNKNOWN',
        `calibration ${this.id} has no plan for ratio ${ratio}; it has ${this.metadata.plans.map((p) => p.ratio).join(', ')}`,
      );
    }
    return id;
  }

  /** Serializes to the safetensors file format (the id is recomputed and must match). */
  serialize(): Buffer {
    return serializeSafetensors(tensorList(this.keys, this.values), { kvtc: canonicalJson(this.metadata) });
  }
}

export function toNativeRope(r: RopeJson): NativeRope {
  const s = r.scaling;
  return {
    theta: r.theta,
    rotaryDim: r.rotary_dim,
    layout: r.layout,
    scaling: s.type,
    ...(s.type === 'linear' ? { factor: s.factor } : {}),
    ...(s.type === 'llama3'
      ? {
          factor: s.factor,
          lowFreqFactor: s.low_freq_factor,
          highFreqFactor: s.high_freq_factor,
          originalMaxPositionEmbeddings: s.original_max_position_embeddings,
        }
      : {}),
  };
}

export function toNativePlan(p: StreamPlan, ratio?: number): NativePlan {
  return { groups: Uint32Array.from(p.groups.flat()), rank: p.rank, ...(ratio ? { ratio } : {}) };
}

export function fromNativeGroups(groups: Uint32Array): GroupTriple[] {
  const out: GroupTriple[] = [];
  for (let i = 0; i < groups.length; i += 3) out.push([groups[i]!, groups[i + 1]!, groups[i + 2]! as 0 | 1 | 2 | 3]);
  return out;
}

/** JSON with object keys sorted at every level: the form that is hashed. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(
          Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
        )
      : v,
  );
}

function tensorList(keys: StreamTensors, values: StreamTensors): [string, Tensor][] {
  const p = keys.mean.length;
  return [
    ['keys.mean', float32Tensor(keys.mean, [p])],
    ['keys.basis', float32Tensor(keys.basis, [p, keys.rank])],
    ['values.mean', float32Tensor(values.mean, [p])],
    ['values.basis', float32Tensor(values.basis, [p, values.rank])],
  ];
}

/** The calibration id for these tensors and metadata (its own `calibration_id` is ignored). */
export function calibrationId(
  keys: StreamTensors,
  values: StreamTensors,
  metadata: Omit<CalibrationMetadata, 'calibration_id'>,
): string {
  const h = createHash('sha256');
  for (const [, t] of tensorList(keys, values)) h.update(t.data);
  const { calibration_id: _ignored, ...rest } = metadata as CalibrationMetadata;
  h.update(canonicalJson(rest));
  return h.digest('hex').slice(0, 32);
}

function invalid(source: string, message: string): never {
  throw new KvtcError('ERR_KVTC_CALIBRATION_INVALID', `${source}: ${message}`);
}

function streamFrom(tensors: Map<string, Tensor>, name: string, p: number, source: string): StreamTensors {
  const mean = tensors.get(`${name}.mean`);
  const basis = tensors.get(`${name}.basis`);
  if (!mean || !basis) invalid(source, `missing tensor ${name}.mean or ${name}.basis`);
  if (mean.dtype !== 'F32' || basis.dtype !== 'F32') invalid(source, `${name} tensors must be F32`);
  if (mean.shape.length !== 1 || mean.shape[0] !== p)
    invalid(source, `${name}.mean has shape [${mean.shape.join(', ')}], expected [${p}]`);
  if (basis.shape.length !== 2 || basis.shape[0] !== p)
    invalid(source, `${name}.basis has shape [${basis.shape.join(', ')}], expected [${p}, rank]`);
  const copy = (t: Tensor) => new Float32Array(new Uint8Array(t.data).buffer);
  return { mean: copy(mean), basis: copy(basis), rank: basis.shape[1]! };
}

/**
 * Parses and verifies a calibration file's bytes.
 * @throws {KvtcError} ERR_KVTC_CALIBRATION_INVALID naming `source` and what is wrong.
 */
export function parseCalibration(buf: Uint8Array, source = 'calibration'): Calibration {
  const file = parseSafetensors(buf, source);
  const raw = file.metadata['kvtc'];
  if (!raw) invalid(source, 'no kvtc metadata: not a kvtc calibration file');
  let metadata: CalibrationMetadata;
  try {
    metadata = JSON.parse(raw) as CalibrationMetadata;
  } catch {
    invalid(source, 'kvtc metadata is not JSON');
  }
  if (metadata.format !== 'kvtc-calibration' || metadata.version !== 1)
    invalid(source, `unsupported calibration format ${metadata.format} version ${metadata.version}`);
  const m = metadata.model;
  if (!m || !(m.layers > 0 && m.kv_heads > 0 && m.head_dim > 0)) invalid(source, 'model shape is missing or invalid');
  if (!/^[0-9a-f]{32}$/.test(m.fingerprint ?? '')) invalid(source, 'model fingerprint must be 32 hex characters');
  if (!m.rope) invalid(source, 'RoPE parameters are missing');
  const p = m.layers * m.kv_heads * m.head_dim;
  const keys = streamFrom(file.tensors, 'keys', p, source);
  const values = streamFrom(file.tensors, 'values', p, source);
  const id = calibrationId(keys, values, metadata);
  if (id !== metadata.calibration_id)
    invalid(
      source,
      `content hash ${id} does not match calibration_id ${metadata.calibration_id}: the file was modified`,
    );
  try {
    return new Calibration(metadata, keys, values);
  } catch (err) {
    const e = err as { code?: string; message?: string };
    throw new KvtcError('ERR_KVTC_CALIBRATION_INVALID', `${source}: ${e.message ?? String(err)}`, { cause: err });
  }
}

/**
 * Loads a calibration file (safetensors) and verifies its content hash.
 * @throws {KvtcError} ERR_KVTC_CALIBRATION_INVALID naming the file.
 */
export async function loadCalibration(path: string): Promise<Calibration> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (err) {
    throw new KvtcError('ERR_KVTC_CALIBRATION_INVALID', `${path}: cannot read (${(err as Error).message})`, {
      cause: err,
    });
  }
  return parseCalibration(buf, path);
}
