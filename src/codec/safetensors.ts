/**
 * Minimal safetensors reader and writer (https://github.com/huggingface/safetensors format:
 * u64 little-endian header length, JSON header, tensor bytes). Used for calibration files and KV
 * captures; only the dtypes we exchange are supported.
 */
import { KvtcError } from '../core/errors.js';

export type TensorDtype = 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'U8';

export interface Tensor {
  dtype: TensorDtype;
  shape: number[];
  data: Uint8Array;
}

export interface SafetensorsFile {
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
}

const ELEMENT_BYTES: Record<TensorDtype, number> = { F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, U8: 1 };
const MAX_HEADER = 100 * 1024 * 1024;

function fail(source: string, message: string): never {
  throw new KvtcError('ERR_KVTC_CALIBRATION_INVALID', `${source}: ${message}`);
}

/** Parses a safetensors buffer; tensor data are views into `buf`. */
export function parseSafetensors(buf: Uint8Array, source = 'safetensors'): SafetensorsFile {
  if (buf.byteLength < 8) fail(source, `file is ${buf.byteLength} bytes, too short for safetensors`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  if (headerLen > MAX_HEADER || 8 + headerLen > buf.byteLength) fail(source, `header length ${headerLen} is invalid`);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(Buffer.from(buf.buffer, buf.byteOffset + 8, headerLen).toString('utf8')) as Record<
      string,
      unknown
    >;
  } catch (err) {
    fail(source, `header is not JSON (${(err as Error).message})`);
  }
  const dataStart = 8 + headerLen;
  const tensors = new Map<string, Tensor>();
  let metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = value as Record<string, string>;
      continue;
    }
    const t = value as { dtype?: string; shape?: number[]; data_offsets?: [number, number] };
    if (!t.dtype || !(t.dtype in ELEMENT_BYTES)) fail(source, `tensor ${name} has unsupported dtype ${t.dtype}`);
    const dtype = t.dtype as TensorDtype;
    const shape = t.shape ?? [];
    const [begin, end] = t.data_offsets ?? [-1, -1];
    const count = shape.reduce((a, b) => a * b, 1);
    if (
      !(begin >= 0 && end >= begin && dataStart + end <= buf.byteLength) ||
      end - begin !== count * ELEMENT_BYTES[dtype]
    )
      fail(source, `tensor ${name} has invalid offsets [${begin}, ${end}] for shape [${shape.join(', ')}]`);
    tensors.set(name, { dtype, shape, data: buf.subarray(dataStart + begin, dataStart + end) });
  }
  return { tensors, metadata };
}

/** Serializes tensors (in the given order) and string metadata. */
export function serializeSafetensors(tensors: [string, Tensor][], metadata: Record<string, string>): Buffer {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const [name, t] of tensors) {
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const jsonBytes = Buffer.from(json, 'utf8');
  const out = Buffer.alloc(8 + jsonBytes.byteLength + offset);
  out.writeBigUInt64LE(BigInt(jsonBytes.byteLength), 0);
  jsonBytes.copy(out, 8);
  let at = 8 + jsonBytes.byteLength;
  for (const [, t] of tensors) {
    out.set(t.data, at);
    at += t.data.byteLength;
  }
  return out;
}

/** Copies a tensor's bytes into a Float32Array (F32, F16 or BF16 input). */
export function tensorToFloat32(t: Tensor): Float32Array {
  const count = t.shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(count);
  if (t.dtype === 'F32') {
    out.set(new Float32Array(new Uint8Array(t.data).buffer));
    return out;
  }
  if (t.dtype === 'BF16') {
    const u32 = new Uint32Array(out.buffer);
    const view = new DataView(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    for (let i = 0; i < count; i++) u32[i] = view.getUint16(2 * i, true) << 16;
    return out;
  }
  throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `Expected an F32 or BF16 tensor but received ${t.dtype}`);
}

export function float32Tensor(data: Float32Array, shape: number[]): Tensor {
  return { dtype: 'F32', shape, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}
