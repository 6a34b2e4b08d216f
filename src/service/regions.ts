/**
 * Clients' paged KV caches registered by CUDA IPC, by region id. Sessions are shared by clients
 * with the same compat (every tensor-parallel rank, every vLLM instance of one model), so a block
 * operation names its region, and a region answers only to the session that registered it. A
 * registration is released when the client says so (`unregister_kv`), when the client's process is
 * gone (checked by PID every few seconds; same PID namespace assumed, skipped when the client
 * sends no PID) and when the sidecar stops.
 */
import { KvtcError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { releaseKv, type PagedLayout, type Region } from '../codec/paged.js';

export interface Registration {
  session: string;
  region: Region;
  device: number;
  layout: PagedLayout;
  pid: number | undefined;
}

export class KvRegions {
  readonly #byId = new Map<number, Registration>();
  readonly #timer: NodeJS.Timeout;

  constructor(
    private readonly log: Logger,
    livenessMs = 2000,
  ) {
    this.#timer = setInterval(() => this.#reapDeadClients(), livenessMs);
    this.#timer.unref();
  }

  get size(): number {
    return this.#byId.size;
  }

  /** Returns the region id block operations name. */
  add(r: Registration): number {
    this.#byId.set(r.region.id, r);
    this.log.info(
      { region: r.region.id, session: r.session, device: r.device, pid: r.pid, blocks: r.layout.numBlocks },
      'KV cache registered',
    );
    return r.region.id;
  }

  /** @throws {KvtcError} ERR_KVTC_KV_UNREGISTERED for an unknown region or another session's. */
  get(session: string, id: number): Registration {
    const r = this.#byId.get(id);
    if (!r || r.session !== session)
      throw new KvtcError(
        'ERR_KVTC_KV_UNREGISTERED',
        `region ${id} is not registered by this session (released, or the sidecar restarted): send register_kv`,
      );
    return r;
  }

  release(id: number, why: string, session?: string): boolean {
    const r = this.#byId.get(id);
    if (!r || (session !== undefined && r.session !== session)) return false;
    this.#byId.delete(id);
    releaseKv(r.region);
    this.log.info({ region: id, why }, 'KV cache released');
    return true;
  }

  #reapDeadClients(): void {
    for (const [id, r] of this.#byId) {
      if (r.pid === undefined) continue;
      try {
        process.kill(r.pid, 0);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ESRCH') this.release(id, `client process ${r.pid} exited`);
      }
    }
  }

  close(): void {
    clearInterval(this.#timer);
    for (const id of [...this.#byId.keys()]) this.release(id, 'sidecar stopping');
  }
}
