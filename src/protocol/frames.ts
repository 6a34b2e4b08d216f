/**
 * Multipart framing: frame 0 a msgpack header, then raw binary frames. One Packr for the whole
 * process, configured so that Python's msgpack reads what it writes (no records extension).
 */
import { Packr } from 'msgpackr';

import { KvtcError } from '../core/errors.js';

const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });

export type Header = Record<string, unknown>;

export function encodeHeader(h: Header): Buffer {
  return packr.pack(widenIntegers(h));
}

/**
 * msgpackr writes integers beyond 32 bits as float64, which Python's msgpack reads back as a float
 * (byte counters pass 4 GiB quickly). BigInt makes it write a 64-bit integer instead.
 */
function widenIntegers(v: unknown): unknown {
  if (typeof v === 'number') return Number.isSafeInteger(v) && (v > 0xffffffff || v < -0x80000000) ? BigInt(v) : v;
  if (Array.isArray(v)) return v.map(widenIntegers);
  if (v && typeof v === 'object' && !Buffer.isBuffer(v) && !ArrayBuffer.isView(v)) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = widenIntegers(x);
    return out;
  }
  return v;
}

/** @throws {KvtcError} ERR_KVTC_PROTOCOL_MALFORMED when the frame is not a msgpack map. */
export function decodeHeader(frame: Buffer): Header {
  let h: unknown;
  try {
    h = packr.unpack(frame);
  } catch (err) {
    throw new KvtcError('ERR_KVTC_PROTOCOL_MALFORMED', `header is not msgpack (${(err as Error).message})`);
  }
  if (!h || typeof h !== 'object' || Array.isArray(h) || Buffer.isBuffer(h)) {
    throw new KvtcError('ERR_KVTC_PROTOCOL_MALFORMED', 'header is not a msgpack map');
  }
  return h as Header;
}
