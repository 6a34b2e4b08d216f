/**
 * Store URLs and tiers. `mem://?max=8GiB`, `file:///var/cache/kvtc?max=100GiB` (or
 * `file://relative/dir`). Several URLs make tiers, first is fastest: a save is written through to
 * every tier (so records survive restarts), a load is served by the first tier that has it and
 * promoted into the tiers above.
 */
import { resolve } from 'node:path';

import { KvtcError } from '../core/errors.js';
import { FileStore, type RecordCheck } from './file.js';
import { MemoryStore } from './memory.js';
import { parseBytes, type Pinned, type Store, type StoreStats } from './store.js';

export type { Store, StoreStats, Pinned };

export async function createStore(url: string, check: RecordCheck): Promise<Store> {
  const m = /^([a-z]+):\/\/([^?]*)(?:\?(.*))?$/.exec(url);
  if (!m)
    throw new KvtcError(
      'ERR_KVTC_INVALID_ARGUMENT',
      `Expected a store URL such as mem://?max=1GiB but received '${url}'`,
    );
  const [, scheme, path, query] = m;
  const params = new URLSearchParams(query ?? '');
  let max: number;
  try {
    max = parseBytes(params.get('max'), scheme === 'mem' ? 2 ** 30 : 16 * 2 ** 30);
  } catch (err) {
    throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `${url}: ${(err as Error).message}`);
  }
  switch (scheme) {
    case 'mem':
      return new MemoryStore(url, max);
    case 'file':
      if (!path) throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `${url}: file:// needs a directory`);
      return FileStore.open(url, resolve(path), max, check);
    default:
      throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `${url}: unknown store scheme '${scheme}' (known: mem, file)`);
  }
}

export interface TierHit {
  pinned: Pinned;
  tier: string;
}

/** Stores in tier order. */
export class Tiers {
  constructor(readonly stores: Store[]) {
    if (stores.length === 0) throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', 'at least one store is needed');
  }

  async has(key: string): Promise<boolean> {
    for (const s of this.stores) if (await s.has(key)) return true;
    return false;
  }

  /** Writes through every tier; succeeds if any tier took it, reporting the fastest one. */
  async put(key: string, bytes: Buffer): Promise<string> {
    let took: string | undefined;
    let firstError: unknown;
    for (const s of this.stores) {
      try {
        await s.put(key, bytes);
        took ??= s.tier;
      } catch (err) {
        firstError ??= err;
      }
    }
    if (took === undefined) throw firstError;
    return took;
  }

  async acquire(key: string): Promise<TierHit | undefined> {
    for (const [i, s] of this.stores.entries()) {
      const pinned = await s.acquire(key);
      if (!pinned) continue;
      for (const upper of this.stores.slice(0, i)) await upper.put(key, pinned.bytes).catch(() => undefined);
      return { pinned, tier: s.tier };
    }
    return undefined;
  }

  async delete(key: string): Promise<boolean> {
    let any = false;
    for (const s of this.stores) any = (await s.delete(key)) || any;
    return any;
  }

  stats(): StoreStats[] {
    return this.stores.map((s) => s.stats());
  }

  async close(): Promise<void> {
    for (const s of this.stores) await s.close();
  }
}
