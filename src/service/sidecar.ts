/**
 * The one orchestrator: requests from the transport go to the codec and the stores. Holds
 * sessions (handshakes), bounds in-flight work, enforces deadlines, counts everything, and on
 * shutdown finishes what is in flight before closing.
 */
import { createHash } from 'node:crypto';
import type { Server as HttpServer } from 'node:http';

import { canonicalJson, type Calibration } from '../codec/calibration.js';
import { decode, dtypeBytes, encode, verifyRecord, type Backend, type KvDtype } from '../codec/codec.js';
import {
  cudaDevices,
  decodePagedMany,
  encodePagedMany,
  registerKv,
  type GpuProjection,
  type PagedSpan,
} from '../codec/paged.js';
import { KvtcError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import {
  bin,
  dtype,
  KEY_PATTERN,
  map,
  mapList,
  optionalNumber,
  parseCompat,
  str,
  uint,
  type Compat,
  type Request,
  uintList,
} from '../protocol/messages.js';
import { PROTOCOL_VERSION, SIDECAR_VERSION } from '../protocol/version.js';
import { createStore, Tiers, type TierHit } from '../store/index.js';
import { Server, type Reply } from '../transport/server.js';
import { Metrics } from './metrics.js';
import { KvRegions } from './regions.js';

/** Spans in one `save_blocks` or `load_blocks` request (`items`): a vLLM step's chunks from one worker. */
const MAX_BLOCK_ITEMS = 1024;

export interface SidecarOptions {
  endpoint: string;
  calibration: Calibration;
  stores: string[];
  log: Logger;
  maxInFlight: number;
  maxFrameBytes: number;
  defaultRatio?: number;
  windowTokens: number;
  sinkTokens: number;
  /** DEFLATE level of saved records (default 6); 0 stores them without entropy coding, faster */
  deflateLevel?: number;
  metricsPort?: number;
  /** Codec backend of save/load/encode/decode; register_kv and the block ops need 'cuda'. */
  backend?: Backend;
  /** The CUDA backend's GEMM precision (default bf16); records are the same either way. */
  projection?: GpuProjection;
}

export class Sidecar {
  readonly metrics = new Metrics();
  readonly #sessions = new Map<string, Compat>();
  readonly #inFlight = new Set<Promise<unknown>>();
  #server!: Server;
  #tiers!: Tiers;
  #http: HttpServer | undefined;
  #regions: KvRegions | undefined;
  #shuttingDown = false;
  readonly #stats = { requests: 0, bytes_in: 0, bytes_out: 0, hits: 0, misses: 0 };

  private constructor(readonly options: SidecarOptions) {}

  static async start(options: SidecarOptions): Promise<Sidecar> {
    const s = new Sidecar(options);
    const stores = [];
    for (const url of options.stores) stores.push(await createStore(url, verifyRecord));
    s.#tiers = new Tiers(stores);
    s.#server = new Server({
      endpoint: options.endpoint,
      maxFrameBytes: options.maxFrameBytes,
      log: options.log.child({ component: 'transport' }),
      handle: (req) => s.#track(req),
      onError: (code, op) => {
        s.metrics.errors.inc({ code });
        s.metrics.requests.inc({ op: op ?? 'unknown', result: 'error' });
      },
    });
    await s.#server.start();
    if (options.metricsPort !== undefined) s.#http = await s.metrics.serve(options.metricsPort);
    const cal = options.calibration;
    options.log.info(
      {
        endpoint: s.#server.endpoint,
        calibration: cal.id,
        model: cal.model.name,
        ratios: cal.plans.map((p) => p.ratio),
        stores: options.stores,
        backend: options.backend ?? 'cpu',
        ...(options.backend === 'cuda' ? { projection: options.projection ?? 'bf16' } : {}),
        metrics: s.metricsAddress,
      },
      'sidecar serving',
    );
    return s;
  }

  get endpoint(): string {
    return this.#server.endpoint;
  }

  get metricsAddress(): string | undefined {
    const a = this.#http?.address();
    return a && typeof a === 'object' ? `http://${a.address}:${a.port}/metrics` : undefined;
  }

  get #backend(): Backend {
    return this.options.backend ?? 'cpu';
  }

  /** The codec options of save/load/encode/decode: the backend, and on CUDA its GEMM precision. */
  get #codec(): { backend: Backend; projection?: GpuProjection } {
    const projection = this.#backend === 'cuda' ? this.options.projection : undefined;
    return projection ? { backend: this.#backend, projection } : { backend: this.#backend };
  }

  /** Registered GPU caches; created on first use (CPU sidecars never need one). */
  get #kv(): KvRegions {
    if (this.#backend !== 'cuda')
      throw new KvtcError(
        'ERR_KVTC_BACKEND_UNAVAILABLE',
        'the GPU data plane (register_kv, save_blocks, load_blocks) needs a sidecar started with --backend cuda',
      );
    this.#regions ??= new KvRegions(this.options.log.child({ component: 'kv-regions' }));
    return this.#regions;
  }

  /** The span of a block op: tokens from slot first_slot of the first listed block. */
  #span(h: Record<string, unknown>, tokens: number, blockSize: number): PagedSpan {
    return {
      blockIds: uintList(h, 'block_ids', 1 << 20),
      firstSlot: h['first_slot'] === undefined ? 0 : uint(h, 'first_slot', blockSize - 1),
      tokens,
    };
  }

  get #ratio(): number {
    return this.options.defaultRatio ?? this.options.calibration.plans[0]!.ratio;
  }

  async #track(req: Request): Promise<Reply> {
    if (this.#shuttingDown) throw new KvtcError('ERR_KVTC_SHUTTING_DOWN', 'the sidecar is shutting down');
    if (this.#inFlight.size >= this.options.maxInFlight) {
      throw new KvtcError(
        'ERR_KVTC_BUSY',
        `${this.#inFlight.size} requests in flight (max ${this.options.maxInFlight}); retry later`,
      );
    }
    const started = Date.now();
    const work = this.#handle(req, started);
    this.#inFlight.add(work);
    this.metrics.inFlight.set(this.#inFlight.size);
    try {
      const reply = await work;
      this.metrics.requests.inc({ op: req.op, result: 'ok' });
      return reply;
    } finally {
      this.#inFlight.delete(work);
      this.metrics.inFlight.set(this.#inFlight.size);
      this.#stats.requests++;
    }
  }

  #session(req: Request): Compat {
    const c = req.session ? this.#sessions.get(req.session) : undefined;
    if (!c) throw new KvtcError('ERR_KVTC_HANDSHAKE_REQUIRED', 'unknown session: send hello first');
    return c;
  }

  #kvFrames(req: Request, tokens: number, dt: KvDtype): [Buffer, Buffer] {
    const expected = tokens * this.options.calibration.featureDim * dtypeBytes(dt);
    const [k, v] = req.frames;
    if (req.frames.length !== 2 || !k || !v || k.length !== expected || v.length !== expected) {
      throw new KvtcError(
        'ERR_KVTC_PROTOCOL_MALFORMED',
        `${req.op} needs 2 frames of ${expected} bytes (${tokens} tokens x ${this.options.calibration.featureDim} features, ${dt}); received ${req.frames.map((f) => f.length).join(', ') || 'none'}`,
      );
    }
    return [k, v];
  }

  async #handle(req: Request, started: number): Promise<Reply> {
    if (req.deadlineMs !== undefined && Date.now() - started > req.deadlineMs) {
      throw new KvtcError('ERR_KVTC_DEADLINE', `deadline of ${req.deadlineMs} ms expired before the ${req.op} started`);
    }
    const cal = this.options.calibration;
    const h = req.header;
    switch (req.op) {
      case 'hello': {
        const compat = parseCompat(h);
        if (compat.protocol !== PROTOCOL_VERSION) {
          throw new KvtcError(
            'ERR_KVTC_PROTOCOL_VERSION',
            `client protocol ${compat.protocol}, sidecar ${PROTOCOL_VERSION}`,
          );
        }
        const m = cal.model;
        if (
          compat.model_fingerprint !== m.fingerprint ||
          compat.layers !== m.layers ||
          compat.kv_heads !== m.kv_heads ||
          compat.head_dim !== m.head_dim
        ) {
          throw new KvtcError(
            'ERR_KVTC_MODEL_MISMATCH',
            `client model ${compat.model_fingerprint} (${compat.layers}x${compat.kv_heads}x${compat.head_dim}) is not the calibration's ${m.fingerprint} (${m.layers}x${m.kv_heads}x${m.head_dim})`,
          );
        }
        if (compat.calibration_id && compat.calibration_id !== cal.id) {
          throw new KvtcError(
            'ERR_KVTC_CALIBRATION_MISMATCH',
            `client expects calibration ${compat.calibration_id}, sidecar has ${cal.id}`,
          );
        }
        const full = { ...compat, calibration_id: cal.id };
        const session = createHash('sha256').update(canonicalJson(full)).digest('hex').slice(0, 32);
        this.#sessions.set(session, full);
        return {
          header: {
            session,
            calibration_id: cal.id,
            model_fingerprint: m.fingerprint,
            ratios: cal.plans.map((p) => p.ratio),
            default_ratio: this.#ratio,
            feature_dim: cal.featureDim,
            sidecar: SIDECAR_VERSION,
            max_frame_bytes: this.options.maxFrameBytes,
          },
        };
      }
      case 'lookup': {
        this.#session(req);
        const keys = h['keys'];
        if (
          !Array.isArray(keys) ||
          keys.length > 100000 ||
          !keys.every((k) => typeof k === 'string' && KEY_PATTERN.test(k))
        ) {
          throw new KvtcError('ERR_KVTC_PROTOCOL_MALFORMED', 'lookup needs keys: an array of hex chunk keys');
        }
        let hits = 0;
        for (const k of keys as string[]) {
          if (!(await this.#tiers.has(k))) break;
          hits++;
        }
        this.metrics.lookups.inc({ result: 'hit' }, hits);
        this.metrics.lookups.inc({ result: 'miss' }, keys.length - hits);
        this.#stats.hits += hits;
        this.#stats.misses += keys.length - hits;
        return { header: { hits } };
      }
      case 'save': {
        this.#session(req);
        const key = str(h, 'key', KEY_PATTERN);
        const tokens = uint(h, 'tokens', 1 << 24);
        const dt = dtype(h);
        const [k, v] = this.#kvFrames(req, tokens, dt);
        const t0 = performance.now();
        const record = await encode(
          cal,
          { keys: k, values: v, dtype: dt, tokens, tokenStart: uint(h, 'token_start') },
          { ...this.#coding(h), ...this.#codec },
        );
        return { header: { handle: await this.#store(key, record, k.length + v.length, t0) } };
      }
      case 'load': {
        this.#session(req);
        const key = str(h, 'key', KEY_PATTERN);
        const tokens = uint(h, 'tokens', 1 << 24);
        const dt = dtype(h);
        return this.#readRecord(key, async (record, tier) => {
          const t0 = performance.now();
          const out = await decode(cal, record, { tokens, dtype: dt, ...this.#codec });
          this.#countLoad(out.keys.length + out.values.length, t0);
          return {
            header: { token_start: out.tokenStart, tokens: out.tokens, tier },
            frames: [out.keys, out.values],
          };
        });
      }
      case 'delete': {
        this.#session(req);
        const deleted = await this.#tiers.delete(str(h, 'key', KEY_PATTERN));
        this.#updateStoreGauges();
        return { header: { deleted } };
      }
      case 'encode': {
        this.#session(req);
        const tokens = uint(h, 'tokens', 1 << 24);
        const dt = dtype(h);
        const [k, v] = this.#kvFrames(req, tokens, dt);
        const record = await encode(
          cal,
          { keys: k, values: v, dtype: dt, tokens, tokenStart: uint(h, 'token_start') },
          { ...this.#coding(h), ...this.#codec },
        );
        return { header: { record_bytes: record.length }, frames: [record] };
      }
      case 'decode': {
        this.#session(req);
        const [record] = req.frames;
        if (req.frames.length !== 1 || !record)
          throw new KvtcError('ERR_KVTC_PROTOCOL_MALFORMED', 'decode needs one record frame');
        const out = await decode(cal, record, {
          tokens: uint(h, 'tokens', 1 << 24),
          dtype: dtype(h),
          ...this.#codec,
        });
        return { header: { token_start: out.tokenStart, tokens: out.tokens }, frames: [out.keys, out.values] };
      }
      case 'register_kv': {
        const compat = this.#session(req);
        const kv = this.#kv;
        const uuid = str(h, 'device_uuid', /^[0-9a-f]{32}$/);
        const device = cudaDevices().find((d) => d.uuid === uuid);
        if (!device)
          throw new KvtcError('ERR_KVTC_DEVICE_UNKNOWN', `no device with UUID ${uuid} is visible to this sidecar`);
        const layout = map(h, 'layout');
        const strides = uintList(layout, 'strides', 5, 2 ** 40);
        if (strides.length !== 5) throw new KvtcError('ERR_KVTC_PROTOCOL_MALFORMED', 'layout.strides needs 5 strides');
        const allocations = h['allocations'];
        if (!Array.isArray(allocations) || allocations.length === 0 || allocations.length > 4096)
          throw new KvtcError('ERR_KVTC_PROTOCOL_MALFORMED', 'allocations must be a non-empty array of IPC handles');
        const handles = allocations.map((_, i) =>
          bin(allocations as unknown as Record<string, unknown>, String(i), 64),
        );
        const layerAllocation = uintList(h, 'layer_allocation', cal.model.layers, allocations.length - 1);
        const layerOffset = uintList(h, 'layer_offset', cal.model.layers, Number.MAX_SAFE_INTEGER);
        if (layerAllocation.length !== cal.model.layers || layerOffset.length !== cal.model.layers)
          throw new KvtcError(
            'ERR_KVTC_PROTOCOL_MALFORMED',
            `layer_allocation and layer_offset need ${cal.model.layers} entries (one per layer)`,
          );
        const paged = {
          numBlocks: uint(layout, 'num_blocks'),
          blockSize: uint(layout, 'block_size', 1 << 16),
          kvHeads: compat.kv_heads,
          headDim: compat.head_dim,
          dtype: compat.dtype,
          strides: strides as [number, number, number, number, number],
        };
        if (paged.blockSize !== compat.block_size)
          throw new KvtcError(
            'ERR_KVTC_PROTOCOL_MALFORMED',
            `layout.block_size ${paged.blockSize} differs from the handshake's ${compat.block_size}`,
          );
        const region = registerKv({
          device: device.index,
          layout: paged,
          layers: cal.model.layers,
          allocations: handles,
          layerAllocation,
          layerOffset,
          ...(h['event'] !== undefined ? { clientEvent: bin(h, 'event', 64) } : {}),
        });
        const pid = h['pid'] === undefined ? undefined : uint(h, 'pid');
        kv.add({ session: req.session!, region, device: device.index, layout: paged, pid });
        return { header: { region: region.id, event: region.event, device: device.index } };
      }
      case 'unregister_kv': {
        this.#session(req);
        const id = uint(h, 'region');
        return { header: { released: this.#regions?.release(id, 'client unregistered', req.session!) ?? false } };
      }
      case 'save_blocks': {
        this.#session(req);
        // `items`: many spans in one request, encoded together (a GPU runs small chunks fused);
        // otherwise the request's own fields are the one span. One failure fails the request. A
        // malformed list is refused as such before the region is looked up.
        const many = h['items'] !== undefined;
        const items = many ? mapList(h, 'items', MAX_BLOCK_ITEMS) : [h];
        const reg = this.#kv.get(req.session!, uint(h, 'region'));
        const saves = items.map((it) => {
          const tokens = uint(it, 'tokens', 1 << 24);
          const { ratio, ...coding } = this.#coding(it);
          return {
            key: str(it, 'key', KEY_PATTERN),
            tokens,
            span: this.#span(it, tokens, reg.layout.blockSize),
            options: {
              ...coding,
              planId: cal.planId(ratio),
              tokenStart: uint(it, 'token_start'),
              ...(this.#codec.projection ? { projection: this.#codec.projection } : {}),
            },
          };
        });
        const t0 = performance.now();
        const records = await encodePagedMany(
          cal,
          reg.region,
          saves.map((s) => s.span),
          saves.map((s) => s.options),
        );
        const rawOf = (tokens: number) => 2 * tokens * cal.featureDim * dtypeBytes(reg.layout.dtype);
        const batchRaw = saves.reduce((sum, s) => sum + rawOf(s.tokens), 0);
        const handles = [];
        for (const [i, s] of saves.entries())
          handles.push(await this.#store(s.key, records[i]!, rawOf(s.tokens), t0, batchRaw));
        return { header: many ? { handles } : { handle: handles[0] } };
      }
      case 'load_blocks': {
        this.#session(req);
        // `items`: many records in one request, decoded together (a GPU runs small chunks in
        // groups); otherwise the request's own fields are the one span. One failure fails the
        // request. A malformed list is refused as such before the region is looked up.
        const many = h['items'] !== undefined;
        const items = many ? mapList(h, 'items', MAX_BLOCK_ITEMS) : [h];
        const reg = this.#kv.get(req.session!, uint(h, 'region'));
        const loads = items.map((it) => {
          const tokens = uint(it, 'tokens', 1 << 24);
          return {
            key: str(it, 'key', KEY_PATTERN),
            tokens,
            span: {
              ...this.#span(it, tokens, reg.layout.blockSize),
              recordOffset: it['skip_tokens'] === undefined ? 0 : uint(it, 'skip_tokens', 1 << 24),
              ...(it['record_tokens'] === undefined ? {} : { recordTokens: uint(it, 'record_tokens', 1 << 24) }),
            },
          };
        });
        return this.#readRecords(
          loads.map((l) => l.key),
          async (records, tiers) => {
            const t0 = performance.now();
            const infos = await decodePagedMany(
              cal,
              reg.region,
              loads.map((l) => l.span),
              records,
              this.#codec.projection,
            );
            const raw = loads.reduce((sum, l) => sum + 2 * l.tokens * cal.featureDim * dtypeBytes(reg.layout.dtype), 0);
            this.#countLoad(raw, t0);
            // The blocks are written when the region's event fires: the client waits on it.
            const loaded = infos.map((info, i) => ({
              token_start: info.tokenStart,
              tokens: info.tokens,
              tier: tiers[i],
            }));
            return { header: many ? { loaded } : loaded[0]! };
          },
        );
      }
      case 'stats': {
        // This request is not in #inFlight yet: a synchronous handler runs before #track adds it.
        const stores = this.#tiers.stats().map((s) => ({
          tier: s.tier,
          url: s.url,
          entries: s.entries,
          bytes: s.bytes,
          max_bytes: s.maxBytes,
        }));
        return {
          header: {
            stats: {
              ...this.#stats,
              in_flight: this.#inFlight.size,
              backend: this.#backend,
              kv_regions: this.#regions?.size ?? 0,
              stores,
            },
          },
        };
      }
    }
  }

  /** How a save or encode request codes: its ratio and window, or the sidecar's defaults. */
  #coding(h: Record<string, unknown>): {
    ratio: number;
    windowTokens: number;
    sinkTokens: number;
    deflateLevel?: number;
  } {
    return {
      ratio: optionalNumber(h, 'ratio') ?? this.#ratio,
      windowTokens: h['window_tokens'] === undefined ? this.options.windowTokens : uint(h, 'window_tokens'),
      sinkTokens: this.options.sinkTokens,
      ...(this.options.deflateLevel !== undefined ? { deflateLevel: this.options.deflateLevel } : {}),
    };
  }

  /**
   * Puts a record encoded since `started` in the tiers, counts it, and returns its handle. A
   * record encoded with others (`batchRaw` bytes in all) is given its share of the time.
   */
  async #store(key: string, record: Buffer, raw: number, started: number, batchRaw = raw) {
    const seconds = ((performance.now() - started) / 1000) * (raw / batchRaw);
    const tier = await this.#tiers.put(key, record);
    this.metrics.bytesIn.inc(raw);
    this.metrics.recordBytes.inc(record.length);
    this.metrics.ratio.observe(raw / record.length);
    this.metrics.gbps.observe({ direction: 'encode' }, raw / seconds / 1e9);
    this.#stats.bytes_in += raw;
    this.#updateStoreGauges();
    return { key, raw_bytes: raw, stored_bytes: record.length, tier };
  }

  /**
   * Runs `use` on the record stored under `key`, pinned meanwhile. A record that does not decode
   * is useless to everyone: it is dropped and its code reported.
   */
  async #readRecord<T>(key: string, use: (record: Buffer, tier: string) => Promise<T>): Promise<T> {
    return this.#readRecords([key], (records, tiers) => use(records[0]!, tiers[0]!));
  }

  /**
   * Holds every key's record (in whichever tier has it) while `use` runs; a missing one fails the
   * request as not found. A record the codec finds damaged is deleted: the one record, or in a
   * batch each that fails its CRCs (a batch's error does not say which record it was).
   */
  async #readRecords<T>(keys: string[], use: (records: Buffer[], tiers: string[]) => Promise<T>): Promise<T> {
    const hits: TierHit[] = [];
    try {
      for (const key of keys) {
        const hit = await this.#tiers.acquire(key);
        if (!hit) throw new KvtcError('ERR_KVTC_NOT_FOUND', `no record for chunk ${key}`);
        hits.push(hit);
      }
      try {
        return await use(
          hits.map((hit) => hit.pinned.bytes),
          hits.map((hit) => hit.tier),
        );
      } catch (err) {
        if (err instanceof KvtcError && err.code.startsWith('ERR_KVTC_RECORD')) {
          for (const [i, key] of keys.entries())
            if (keys.length === 1 || !verifyRecord(hits[i]!.pinned.bytes)) await this.#tiers.delete(key);
        }
        throw err;
      }
    } finally {
      for (const hit of hits) hit.pinned.release();
    }
  }

  #countLoad(raw: number, started: number): void {
    this.metrics.bytesOut.inc(raw);
    this.metrics.gbps.observe({ direction: 'decode' }, raw / ((performance.now() - started) / 1000) / 1e9);
    this.#stats.bytes_out += raw;
  }

  #updateStoreGauges(): void {
    for (const s of this.#tiers.stats()) this.metrics.storeBytes.set({ tier: s.tier }, s.bytes);
  }

  /** Refuses new work, finishes what is in flight, then closes socket, stores and metrics. */
  async close(): Promise<void> {
    if (this.#shuttingDown) return;
    this.#shuttingDown = true;
    const pending = this.#inFlight.size;
    await this.#server.close(); // new requests are refused SHUTTING_DOWN; in-flight ones answered
    await Promise.allSettled([...this.#inFlight]);
    this.#regions?.close();
    await this.#tiers.close();
    await new Promise<void>((resolve) => (this.#http ? this.#http.close(() => resolve()) : resolve()));
    this.options.log.info({ finished: pending }, 'sidecar stopped');
  }
}
