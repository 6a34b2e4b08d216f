/** Request validation: every field a handler reads is checked here, with a coded error. */
import { KvtcError } from '../core/errors.js';
import type { KvDtype } from '../codec/codec.js';
import type { Header } from './frames.js';
import { PROTOCOL_VERSION } from './version.js';

export const OPS = [
  'hello',
  'lookup',
  'save',
  'load',
  'delete',
  'encode',
  'decode',
  'stats',
  'register_kv',
  'save_blocks',
  'load_blocks',
  'unregister_kv',
] as const;
export type Op = (typeof OPS)[number];

export interface Compat {
  protocol: number;
  model_fingerprint: string;
  dtype: KvDtype;
  layout: string;
  block_size: number;
  layers: number;
  kv_heads: number;
  head_dim: number;
  calibration_id: string;
}

export interface Request {
  id: number | string;
  op: Op;
  session?: string;
  deadlineMs?: number;
  header: Header;
  frames: Buffer[];
}

function malformed(message: string): KvtcError {
  return new KvtcError('ERR_KVTC_PROTOCOL_MALFORMED', message);
}

export function str(h: Header, key: string, pattern?: RegExp): string {
  const v = h[key];
  if (typeof v !== 'string' || (pattern && !pattern.test(v)))
    throw malformed(`field ${key} must be a string${pattern ? ` matching ${pattern}` : ''}`);
  return v;
}

export function uint(h: Header, key: string, max = 0xffffffff): number {
  const v = h[key];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max)
    throw malformed(`field ${key} must be an integer in 0..${max}`);
  return v;
}

export function optionalNumber(h: Header, key: string): number | undefined {
  const v = h[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw malformed(`field ${key} must be a number`);
  return v;
}

/** A binary field of exactly `size` bytes (msgpack bin). */
export function bin(h: Header, key: string, size: number): Uint8Array {
  const v = h[key];
  if (!(v instanceof Uint8Array) || v.length !== size)
    throw malformed(`field ${key} must be ${size} bytes of msgpack bin`);
  return v;
}

/** An array of unsigned integers, at most `maxLength` long. */
export function uintList(h: Header, key: string, maxLength: number, max = 0xffffffff): number[] {
  const v = h[key];
  if (!Array.isArray(v) || v.length > maxLength || !v.every((x) => Number.isInteger(x) && x >= 0 && x <= max))
    throw malformed(`field ${key} must be an array of at most ${maxLength} integers in 0..${max}`);
  return v as number[];
}

/** An array of 1 to `maxLength` maps. */
export function mapList(h: Header, key: string, maxLength: number): Header[] {
  const v = h[key];
  if (
    !Array.isArray(v) ||
    v.length === 0 ||
    v.length > maxLength ||
    !v.every((x) => x && typeof x === 'object' && !Array.isArray(x) && !(x instanceof Uint8Array))
  )
    throw malformed(`field ${key} must be an array of 1 to ${maxLength} maps`);
  return v as Header[];
}

export function map(h: Header, key: string): Header {
  const v = h[key];
  if (!v || typeof v !== 'object' || Array.isArray(v) || v instanceof Uint8Array)
    throw malformed(`field ${key} must be a map`);
  return v as Header;
}

export function dtype(h: Header): KvDtype {
  const v = h['dtype'];
  if (v !== 'float32' && v !== 'float16' && v !== 'bfloat16')
    throw malformed(`field dtype must be float32, float16 or bfloat16`);
  return v;
}

export const KEY_PATTERN = /^[0-9a-f]{8,64}$/;
const HEX32 = /^[0-9a-f]{32}$/;

/** Validates the common envelope. The header's `id` is returned even when the rest is bad. */
export function parseRequest(header: Header, frames: Buffer[]): Request {
  const id = header['id'];
  if (!(typeof id === 'number' || typeof id === 'string')) throw malformed('field id must be an int or a string');
  if (header['v'] !== PROTOCOL_VERSION) {
    throw new KvtcError(
      'ERR_KVTC_PROTOCOL_VERSION',
      `protocol version ${String(header['v'])} is not supported; this sidecar speaks ${PROTOCOL_VERSION}`,
    );
  }
  const op = header['op'];
  if (typeof op !== 'string' || !(OPS as readonly string[]).includes(op)) throw malformed(`unknown op ${String(op)}`);
  const session = header['session'];
  if (session !== undefined && (typeof session !== 'string' || !HEX32.test(session)))
    throw malformed('field session must be 32 hex characters');
  const deadline = optionalNumber(header, 'deadline_ms');
  return {
    id,
    op: op as Op,
    ...(session ? { session } : {}),
    ...(deadline !== undefined ? { deadlineMs: deadline } : {}),
    header,
    frames,
  };
}

export function parseCompat(h: Header): Compat {
  const c = h['compat'];
  if (!c || typeof c !== 'object' || Array.isArray(c)) throw malformed('hello needs a compat map');
  const m = c as Header;
  return {
    protocol: uint(m, 'protocol'),
    model_fingerprint: str(m, 'model_fingerprint', HEX32),
    dtype: dtype(m),
    layout: str(m, 'layout'),
    block_size: uint(m, 'block_size'),
    layers: uint(m, 'layers'),
    kv_heads: uint(m, 'kv_heads'),
    head_dim: uint(m, 'head_dim'),
    calibration_id:
      m['calibration_id'] === '' || m['calibration_id'] === undefined ? '' : str(m, 'calibration_id', HEX32),
  };
}
