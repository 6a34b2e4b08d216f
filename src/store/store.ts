/**
 * Where compressed records live. Stores know nothing of the codec or the network: they map a
 * chunk key to the bytes of one record. URL schemes select the backend (createStore).
 */
export interface StoreStats {
  tier: string;
  url: string;
  entries: number;
  bytes: number;
  maxBytes: number;
}

/** A record held for reading; it cannot be evicted until released. */
export interface Pinned {
  bytes: Buffer;
  release(): void;
}

export interface Store {
  /** The URL scheme, e.g. 'mem', reported in save handles and metrics. */
  readonly tier: string;
  readonly url: string;
  has(key: string): Promise<boolean>;
  /** The record, pinned against eviction until released; undefined when absent. */
  acquire(key: string): Promise<Pinned | undefined>;
  /** @throws {KvtcError} ERR_KVTC_STORE_FULL when the record cannot fit, ERR_KVTC_STORE_IO on I/O failure. */
  put(key: string, bytes: Buffer): Promise<void>;
  delete(key: string): Promise<boolean>;
  stats(): StoreStats;
  close(): Promise<void>;
}

/** Parses the `max` query parameter: bytes, with optional K/M/G/T (binary) suffix. */
export function parseBytes(v: string | null, fallback: number): number {
  if (v === null || v === '') return fallback;
  const m = /^(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?$/.exec(v.trim());
  if (!m) throw new Error(`cannot parse byte size '${v}'`);
  const mult = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[
    m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'
  ];
  return Math.floor(Number(m[1]) * mult);
}
