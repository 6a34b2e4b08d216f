/**
 * The only ZeroMQ user of the sidecar: a ROUTER socket, one receive loop, replies routed back by
 * identity. Frames become validated Requests; everything else is the service's business. Sends
 * are serialized (zeromq.js allows one pending send per socket).
 */
import { Router } from 'zeromq';

import { KvtcError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { decodeHeader, encodeHeader, type Header } from '../protocol/frames.js';
import { parseRequest, type Request } from '../protocol/messages.js';

export interface Reply {
  header: Header;
  frames?: Buffer[];
}

export type Handler = (req: Request) => Promise<Reply>;

export interface ServerOptions {
  endpoint: string;
  maxFrameBytes: number;
  log: Logger;
  /** Called for every request whose envelope parsed; the error path replies with the code. */
  handle: Handler;
  /** Called with each reply error code (for metrics). */
  onError?: (code: string, op: string | undefined) => void;
}

export class Server {
  readonly #socket: Router;
  #sendChain: Promise<void> = Promise.resolve();
  #loop: Promise<void> | undefined;
  #closed = false;
  // Every request from receipt to its reply being sent: close() waits for these.
  readonly #dispatching = new Set<Promise<void>>();

  constructor(readonly options: ServerOptions) {
    this.#socket = new Router({
      // Frames above the cap never reach memory: libzmq drops the peer's message.
      maxMessageSize: options.maxFrameBytes + 1024 * 1024,
      receiveHighWaterMark: 1000,
      sendHighWaterMark: 1000,
      linger: 2000,
    });
  }

  async start(): Promise<void> {
    await this.#socket.bind(this.options.endpoint);
    this.#loop = this.#receiveLoop();
  }

  get endpoint(): string {
    return this.#socket.lastEndpoint ?? this.options.endpoint;
  }

  async #receiveLoop(): Promise<void> {
    const log = this.options.log;
    try {
      for await (const [identity, ...frames] of this.#socket) {
        if (!identity) continue;
        const d = this.#dispatch(identity, frames);
        this.#dispatching.add(d);
        void d.finally(() => this.#dispatching.delete(d));
      }
    } catch (err) {
      if (!this.#closed) log.error({ err }, 'receive loop failed');
    }
  }

  async #dispatch(identity: Buffer, frames: Buffer[]): Promise<void> {
    let id: unknown = null;
    let op: string | undefined;
    try {
      const first = frames[0];
      if (!first) throw new KvtcError('ERR_KVTC_PROTOCOL_MALFORMED', 'message has no header frame');
      const header = decodeHeader(first);
      id = typeof header['id'] === 'number' || typeof header['id'] === 'string' ? header['id'] : null;
      op = typeof header['op'] === 'string' ? header['op'] : undefined;
      const payload = frames.slice(1);
      const big = payload.find((f) => f.length > this.options.maxFrameBytes);
      if (big) {
        throw new KvtcError(
          'ERR_KVTC_PROTOCOL_OVERSIZED',
          `a ${big.length}-byte frame exceeds max_frame_bytes ${this.options.maxFrameBytes}`,
        );
      }
      const reply = await this.options.handle(parseRequest(header, payload));
      await this.#send(identity, { id, ok: true, ...reply.header }, reply.frames ?? []);
    } catch (err) {
      const e =
        err instanceof KvtcError ? err : new KvtcError('ERR_KVTC_INTERNAL', (err as Error).message ?? String(err));
      this.options.onError?.(e.code, op);
      if (e.code === 'ERR_KVTC_INTERNAL') this.options.log.error({ err, op }, 'request failed');
      else this.options.log.warn({ code: e.code, op, msg: e.message }, 'request refused');
      await this.#send(identity, { id, ok: false, code: e.code, message: e.message }, []).catch(() => undefined);
    }
  }

  #send(identity: Buffer, header: Header, frames: Buffer[]): Promise<void> {
    const next = this.#sendChain.then(() => this.#socket.send([identity, encodeHeader(header), ...frames]));
    this.#sendChain = next.catch(() => undefined);
    return next;
  }

  /** Waits until every request received so far has been answered, then closes the socket. */
  async close(): Promise<void> {
    this.#closed = true;
    while (this.#dispatching.size > 0) await Promise.allSettled([...this.#dispatching]);
    await this.#sendChain;
    this.#socket.close();
    await this.#loop;
  }
}
