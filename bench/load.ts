/**
 * `kvtc-sidecar bench load`: N concurrent clients save and load chunks against one sidecar
 * process for a fixed time. Reports throughput, p50/p99 latency per op, errors, and the
 * sidecar's peak RSS (VmHWM) beside its configured store cap.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { performance } from 'node:perf_hooks';

import { Dealer } from 'zeromq';
import { Packr } from 'msgpackr';

import { loadCalibration } from '../src/codec/calibration.js';
import { applyRope, syntheticKv } from '../src/calibrate/synthetic.js';

export interface LoadOptions {
  calibration: string;
  clients: number;
  seconds: number;
  tokens: number;
  storeMaxBytes: number;
  progress?: (label: string, fraction: number) => void;
}

export interface LoadResult {
  clients: number;
  seconds: number;
  tokens_per_chunk: number;
  chunk_raw_bytes: number;
  saves: number;
  loads: number;
  errors: Record<string, number>;
  saves_per_s: number;
  loads_per_s: number;
  raw_gbps: number;
  save_ms: { p50: number; p99: number };
  load_ms: { p50: number; p99: number };
  sidecar_peak_rss_bytes: number;
  store_max_bytes: number;
}

function pct(xs: number[], p: number): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  const cal = await loadCalibration(o.calibration);
  const m = cal.model;
  const p = cal.featureDim;
  const dir = mkdtempSync(join(tmpdir(), 'kvtc-load-'));
  const endpoint = `ipc://${join(dir, 'sidecar.sock')}`;
  const main = resolve(import.meta.dirname, '..', 'src', 'main.js');
  const child = spawn(
    process.execPath,
    [
      main,
      'serve',
      '--calibration',
      o.calibration,
      '--endpoint',
      endpoint,
      '--store',
      `mem://?max=${o.storeMaxBytes}`,
      '--log-level',
      'error',
      '--max-in-flight',
      '256',
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise<void>((res) => createInterface({ input: child.stdout! }).once('line', () => res()));

  // A bf16 chunk with the calibration's statistics is not needed for load: synthetic KV of the
  // right size exercises the same code paths and the same record sizes within a few percent.
  const s = syntheticKv(o.tokens, p, 1);
  const k32 = applyRope(s.keys, o.tokens, 0, m);
  const bf16 = (x: Float32Array) => {
    const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
    return Buffer.from(Uint16Array.from(u, (v) => (v + 0x7fff + ((v >>> 16) & 1)) >>> 16).buffer);
  };
  const keys = bf16(k32),
    values = bf16(s.values);
  const packr = new Packr({ useRecords: false, mapsAsObjects: true });
  const compat = {
    protocol: 1,
    model_fingerprint: m.fingerprint,
    dtype: 'bfloat16',
    layout: 'token-major',
    block_size: 16,
    layers: m.layers,
    kv_heads: m.kv_heads,
    head_dim: m.head_dim,
    calibration_id: cal.id,
  };

  const saveMs: number[] = [],
    loadMs: number[] = [];
  const errors: Record<string, number> = {};
  let saves = 0,
    loads = 0;
  const deadline = performance.now() + o.seconds * 1000;
  const t0 = performance.now();
  const ticker = setInterval(
    () => o.progress?.('load test', Math.min(1, (performance.now() - t0) / (o.seconds * 1000))),
    500,
  );

  async function client(c: number): Promise<void> {
    const sock = new Dealer({ receiveTimeout: 60000, linger: 0 });
    sock.connect(endpoint);
    let id = 0;
    const call = async (h: Record<string, unknown>, frames: Buffer[] = []) => {
      await sock.send([packr.pack({ v: 1, id: ++id, ...h }), ...frames]);
      const [rh, ...rf] = await sock.receive();
      return { h: packr.unpack(rh!) as Record<string, any>, f: rf };
    };
    const hello = await call({ op: 'hello', compat });
    const session = hello.h['session'] as string;
    const mine: string[] = [];
    for (let i = 0; performance.now() < deadline; i++) {
      const key = `${c.toString(16).padStart(4, '0')}${i.toString(16).padStart(28, '0')}`;
      let t = performance.now();
      const sv = await call({ op: 'save', session, key, token_start: 0, tokens: o.tokens, dtype: 'bfloat16' }, [
        keys,
        values,
      ]);
      if (sv.h['ok']) {
        saves++;
        saveMs.push(performance.now() - t);
        mine.push(key);
      } else errors[sv.h['code']] = (errors[sv.h['code']] ?? 0) + 1;
      const target = mine[Math.floor(Math.random() * mine.length)];
      if (!target) continue;
      t = performance.now();
      const ld = await call({ op: 'load', session, key: target, tokens: o.tokens, dtype: 'bfloat16' });
      // A record evicted by the memory cap is a legitimate miss, not an error.
      if (ld.h['ok']) {
        loads++;
        loadMs.push(performance.now() - t);
      } else if (ld.h['code'] !== 'ERR_KVTC_NOT_FOUND') errors[ld.h['code']] = (errors[ld.h['code']] ?? 0) + 1;
    }
    sock.close();
  }
  await Promise.all(Array.from({ length: o.clients }, (_, c) => client(c)));
  clearInterval(ticker);
  const elapsed = (performance.now() - t0) / 1000;
  const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
  const hwm = Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
  child.kill('SIGTERM');
  await new Promise((res) => child.on('exit', res));
  rmSync(dir, { recursive: true, force: true });
  const chunk = keys.length + values.length;
  return {
    clients: o.clients,
    seconds: elapsed,
    tokens_per_chunk: o.tokens,
    chunk_raw_bytes: chunk,
    saves,
    loads,
    errors,
    saves_per_s: saves / elapsed,
    loads_per_s: loads / elapsed,
    raw_gbps: ((saves + loads) * chunk) / elapsed / 1e9,
    save_ms: { p50: pct(saveMs, 50), p99: pct(saveMs, 99) },
    load_ms: { p50: pct(loadMs, 50), p99: pct(loadMs, 99) },
    sidecar_peak_rss_bytes: hwm,
    store_max_bytes: o.storeMaxBytes,
  };
}
