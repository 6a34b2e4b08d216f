/** mem://?max=BYTES: records in host memory, least recently used evicted first, pinned while read. */
import { KvtcError } from '../core/errors.js';
import type { Pinned, Store, StoreStats } from './store.js';

interface Entry {
  bytes: Buffer;
  pins: number;
}

export class MemoryStore implements Store {
  readonly tier = 'mem';
  // Map iteration order is insertion order: re-inserting on access makes it an LRU list.
  readonly #entries = new Map<string, Entry>();
  #bytes = 0;

  constructor(
    readonly url: string,
    readonly maxBytes: number,
  ) {}

  async has(key: string): Promise<boolean> {
    return this.#entries.has(key);
  }

  async acquire(key: string): Promise<Pinned | undefined> {
    const e = this.#entries.get(key);
    if (!e) return undefined;
    this.#entries.delete(key);
    this.#entries.set(key, e);
    e.pins++;
    let released = false;
    return {
      bytes: e.bytes,
      release: () => {
        if (!released) e.pins--;
        released = true;
      },
    };
  }

  async put(key: string, bytes: Buffer): Promise<void> {
    if (bytes.length > this.maxBytes) {
      throw new KvtcError(
        'ERR_KVTC_STORE_FULL',
        `${this.url}: a ${bytes.length}-byte record exceeds the ${this.maxBytes}-byte cap`,
      );
    }
    const old = this.#entries.get(key);
    if (old && old.pins > 0) return; // the same key names the same tokens: keep the one being read
    if (old) {
      this.#entries.delete(key);
      this.#bytes -= old.bytes.length;
    }
    // Evict unpinned entries, oldest first, until the record fits.
    for (const [k, e] of this.#entries) {
      if (this.#bytes + bytes.length <= this.maxBytes) break;
      if (e.pins > 0) continue;
      this.#entries.delete(k);
      this.#bytes -= e.bytes.length;
    }
    if (this.#bytes + bytes.length > this.maxBytes) {
      throw new KvtcError(
        'ERR_KVTC_STORE_FULL',
        `${this.url}: full (${this.#bytes} of ${this.maxBytes} bytes pinned by readers)`,
      );
    }
    this.#entries.set(key, { bytes, pins: 0 });
    this.#bytes += bytes.length;
  }

  async delete(key: string): Promise<boolean> {
    const e = this.#entries.get(key);
    if (!e) return false;
    this.#entries.delete(key);
    this.#bytes -= e.bytes.length;
    return true;
  }

  stats(): StoreStats {
    return { tier: this.tier, url: this.url, entries: this.#entries.size, bytes: this.#bytes, maxBytes: this.maxBytes };
  }

  async close(): Promise<void> {
    this.#entries.clear();
    this.#bytes = 0;
  }
}
