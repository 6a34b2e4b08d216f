/**
 * Clients' paged KV caches registered by CUDA IPC, one per session. A registration is released
 * when the client says so (`unregister_kv`), when its session registers again, when the client's
 * process is gone (checked by PID every few seconds; same PID namespace assumed, skipped when the
 * client sends no PID) and when the sidecar stops.
 */
import { KvtcError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { releaseKv, type PagedLayout, type Region } from '../codec/paged.js';

export interface Registration {
  region: Region;
  device: number;
  layout: PagedLayout;
  pid: number | undefined;
}

export class KvRegions {
  readonly #bySession = new Map<string, Registration>();
  readonly #timer: NodeJS.Timeout;

  constructor(
    private readonly log: Logger,
    livenessMs = 2000,
  ) {
    this.#timer = setInterval(() => this.#reapDeadClients(), livenessMs);
    this.#timer.unref();
  }

  get size(): number {
    return this.#bySession.size;
  }

  add(session: string, r: Registration): void {
    this.release(session, 'registered again');
    this.#bySession.set(session, r);
    this.log.info({ session, device: r.device, pid: r.pid, blocks: r.layout.numBlocks }, 'KV cache registered');
  }

  /** @throws {KvtcError} ERR_KVTC_KV_UNREGISTERED when the session registered no cache. */
  get(session: string): Registration {
    const r = this.#bySession.get(session);
    if (!r)
      throw new KvtcError('ERR_KVTC_KV_UNREGISTERED', 'this session registered no KV cache: send register_kv first');
    return r;
  }

  release(session: string, why: string): boolean {
    const r = this.#bySession.get(session);
    if (!r) return false;
    this.#bySession.delete(session);
    releaseKv(r.region);
    this.log.info({ session, why }, 'KV cache released');
    return true;
  }

  #reapDeadClients(): void {
    for (const [session, r] of this.#bySession) {
      if (r.pid === undefined) continue;
      try {
        process.kill(r.pid, 0);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ESRCH') this.release(session, `client process ${r.pid} exited`);
      }
    }
  }

  close(): void {
    clearInterval(this.#timer);
    for (const session of [...this.#bySession.keys()]) this.release(session, 'sidecar stopping');
  }
}
