/**
 * file://DIR?max=BYTES: one file per record under DIR/ab/cd/KEY.kvtc (keys hashed into paths),
 * written to DIR/tmp then renamed (atomic on one filesystem), indexed at start so that records
 * survive a restart, least recently used deleted first. A record whose CRC fails on read is
 * deleted and reported as absent.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { KvtcError } from '../core/errors.js';
import type { Pinned, Store, StoreStats } from './store.js';

export type RecordCheck = (bytes: Buffer) => boolean;

export class FileStore implements Store {
  readonly tier = 'file';
  readonly #index = new Map<string, { size: number; pins: number }>();
  #bytes = 0;
  #tmpSeq = 0;

  private constructor(
    readonly url: string,
    readonly dir: string,
    readonly maxBytes: number,
    readonly check: RecordCheck,
  ) {}

  /** Opens (creating) DIR and indexes the records already there, oldest first. */
  static async open(url: string, dir: string, maxBytes: number, check: RecordCheck): Promise<FileStore> {
    const s = new FileStore(url, dir, maxBytes, check);
    try {
      await mkdir(join(dir, 'tmp'), { recursive: true });
      await rm(join(dir, 'tmp'), { recursive: true, force: true }); // half-written files of a crash
      await mkdir(join(dir, 'tmp'), { recursive: true });
      const found: { key: string; size: number; mtime: number }[] = [];
      for (const a of await readdir(dir)) {
        if (!/^[0-9a-f]{2}$/.test(a)) continue;
        for (const b of await readdir(join(dir, a))) {
          for (const f of await readdir(join(dir, a, b))) {
            if (!f.endsWith('.kvtc')) continue;
            const st = await stat(join(dir, a, b, f));
            found.push({ key: f.slice(0, -5), size: st.size, mtime: st.mtimeMs });
          }
        }
      }
      found.sort((x, y) => x.mtime - y.mtime);
      for (const f of found) {
        s.#index.set(f.key, { size: f.size, pins: 0 });
        s.#bytes += f.size;
      }
    } catch (err) {
      throw new KvtcError('ERR_KVTC_STORE_IO', `${url}: cannot open ${dir} (${(err as Error).message})`, {
        cause: err,
      });
    }
    return s;
  }

  #path(key: string): string {
    const h = createHash('sha256').update(key).digest('hex');
    return join(this.dir, h.slice(0, 2), h.slice(2, 4), `${key}.kvtc`);
  }

  async has(key: string): Promise<boolean> {
    return this.#index.has(key);
  }

  async acquire(key: string): Promise<Pinned | undefined> {
    const e = this.#index.get(key);
    if (!e) return undefined;
    e.pins++;
    let released = false;
    const release = () => {
      if (!released) e.pins--;
      released = true;
    };
    let bytes: Buffer;
    try {
      bytes = await readFile(this.#path(key));
    } catch {
      release();
      this.#forget(key);
      return undefined;
    }
    if (!this.check(bytes)) {
      release();
      await this.delete(key);
      return undefined;
    }
    this.#index.delete(key);
    this.#index.set(key, e);
    return { bytes, release };
  }

  async put(key: string, bytes: Buffer): Promise<void> {
    if (bytes.length > this.maxBytes) {
      throw new KvtcError(
        'ERR_KVTC_STORE_FULL',
        `${this.url}: a ${bytes.length}-byte record exceeds the ${this.maxBytes}-byte cap`,
      );
    }
    const old = this.#index.get(key);
    if (old && old.pins > 0) return;
    const victims: string[] = [];
    let bytesAfter = this.#bytes - (old?.size ?? 0);
    for (const [k, e] of this.#index) {
      if (bytesAfter + bytes.length <= this.maxBytes) break;
      if (e.pins > 0 || k === key) continue;
      victims.push(k);
      bytesAfter -= e.size;
    }
    if (bytesAfter + bytes.length > this.maxBytes) {
      throw new KvtcError('ERR_KVTC_STORE_FULL', `${this.url}: full (${this.#bytes} of ${this.maxBytes} bytes)`);
    }
    for (const k of victims) await this.delete(k);
    const path = this.#path(key);
    const tmp = join(this.dir, 'tmp', `${process.pid}-${this.#tmpSeq++}.part`);
    try {
      await mkdir(join(path, '..'), { recursive: true });
      await writeFile(tmp, bytes);
      await rename(tmp, path);
    } catch (err) {
      await rm(tmp, { force: true });
      throw new KvtcError('ERR_KVTC_STORE_IO', `${this.url}: cannot write ${key} (${(err as Error).message})`, {
        cause: err,
      });
    }
    this.#forget(key);
    this.#index.set(key, { size: bytes.length, pins: 0 });
    this.#bytes += bytes.length;
  }

  #forget(key: string): void {
    const e = this.#index.get(key);
    if (!e) return;
    this.#index.delete(key);
    this.#bytes -= e.size;
  }

  async delete(key: string): Promise<boolean> {
    if (!this.#index.has(key)) return false;
    this.#forget(key);
    await rm(this.#path(key), { force: true });
    return true;
  }

  stats(): StoreStats {
    return { tier: this.tier, url: this.url, entries: this.#index.size, bytes: this.#bytes, maxBytes: this.maxBytes };
  }

  async close(): Promise<void> {}
}
