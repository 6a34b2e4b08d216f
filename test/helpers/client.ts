/** A minimal protocol client over a real ZeroMQ DEALER socket, for the sidecar tests. */
import { Dealer } from 'zeromq';
import { Packr } from 'msgpackr';

const packr = new Packr({ useRecords: false, mapsAsObjects: true });
let seq = 0;

export interface ReplyOf {
  header: Record<string, any>;
  frames: Buffer[];
}

export class TestClient {
  readonly socket = new Dealer({ receiveTimeout: 20000, linger: 0 });
  session = '';
  readonly #pending = new Map<unknown, (r: ReplyOf) => void>();
  #loop: Promise<void>;

  constructor(readonly endpoint: string) {
    this.socket.connect(endpoint);
    this.#loop = (async () => {
      try {
        for await (const [h, ...frames] of this.socket) {
          const header = packr.unpack(h!) as Record<string, any>;
          const done = this.#pending.get(header['id']);
          this.#pending.delete(header['id']);
          done?.({ header, frames });
        }
      } catch {
        /* closed */
      }
    })();
  }

  /** Sends raw frames; resolves with the reply to `id`. */
  async raw(id: unknown, frames: Buffer[]): Promise<ReplyOf> {
    const reply = new Promise<ReplyOf>((resolve) => this.#pending.set(id, resolve));
    await this.socket.send(frames);
    return reply;
  }

  async request(op: string, fields: Record<string, unknown> = {}, frames: Buffer[] = []): Promise<ReplyOf> {
    const id = ++seq;
    return this.raw(id, [packr.pack({ v: 1, id, op, session: this.session || undefined, ...fields }), ...frames]);
  }

  async hello(compat: Record<string, unknown>): Promise<ReplyOf> {
    const r = await this.request('hello', { compat });
    if (r.header['ok']) this.session = r.header['session'];
    return r;
  }

  close(): void {
    this.socket.close();
  }
}

export function pack(h: Record<string, unknown>): Buffer {
  return packr.pack(h);
}
