/**
 * Multipart framing: frame 0 a msgpack header, then raw binary frames. One Packr for the whole
 * process, configured so that Python's msgpack reads what it writes (no records extension).
 */
import { Packr } from 'msgpackr';

import { KvtcError } from '../core/errors.js';

const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });

export type Header = Record<string, unknown>;

export function encodeHeader(h: Header): Buffer {
  return packr.pack(h);
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
