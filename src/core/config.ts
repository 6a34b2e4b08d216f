/**
 * Sidecar configuration: frozen defaults, then a JSON config file, then KVTC_* environment
 * variables, then command-line flags. The only reader of process.env for settings.
 */
import { readFileSync } from 'node:fs';

import { KvtcError } from './errors.js';

export interface ServeConfig {
  endpoint: string;
  calibration: string;
  stores: string[];
  backend: 'auto' | 'cuda' | 'cpu';
  /** the CUDA backend's GEMM precision: bf16, or fp8 (e4m3; its quality cost in docs/quality.md) */
  projection: 'bf16' | 'fp8';
  metricsPort: number | undefined;
  logLevel: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';
  maxInFlight: number;
  maxFrameBytes: number;
  ratio: number | undefined;
  windowTokens: number;
  sinkTokens: number;
  /** DEFLATE level of saved records, 0..12; 0 stores them without entropy coding (faster, ~10 % larger) */
  deflateLevel: number;
}

export const SERVE_DEFAULTS: Readonly<Omit<ServeConfig, 'calibration'>> = Object.freeze({
  endpoint: 'ipc:///tmp/kvtc-sidecar.sock',
  stores: ['mem://?max=4GiB', 'file://.cache/kvtc-store?max=32GiB'],
  backend: 'auto',
  projection: 'bf16',
  metricsPort: undefined,
  logLevel: 'info',
  maxInFlight: 64,
  maxFrameBytes: 1024 ** 3,
  ratio: undefined,
  windowTokens: 0,
  sinkTokens: 4,
  deflateLevel: 6,
});

const ENV: Record<string, keyof ServeConfig> = {
  KVTC_ENDPOINT: 'endpoint',
  KVTC_CALIBRATION: 'calibration',
  KVTC_STORE: 'stores',
  KVTC_BACKEND: 'backend',
  KVTC_PROJECTION: 'projection',
  KVTC_METRICS_PORT: 'metricsPort',
  KVTC_LOG_LEVEL: 'logLevel',
  KVTC_MAX_IN_FLIGHT: 'maxInFlight',
  KVTC_MAX_FRAME_BYTES: 'maxFrameBytes',
  KVTC_RATIO: 'ratio',
  KVTC_WINDOW_TOKENS: 'windowTokens',
  KVTC_SINK_TOKENS: 'sinkTokens',
  KVTC_DEFLATE_LEVEL: 'deflateLevel',
};

const NUMERIC = new Set<keyof ServeConfig>([
  'metricsPort',
  'maxInFlight',
  'maxFrameBytes',
  'ratio',
  'windowTokens',
  'sinkTokens',
  'deflateLevel',
]);

function coerce(key: keyof ServeConfig, value: unknown, source: string): unknown {
  if (key === 'stores') return typeof value === 'string' ? value.split(',').filter(Boolean) : value;
  if (NUMERIC.has(key) && typeof value === 'string') {
    const n = Number(value);
    if (!Number.isFinite(n))
      throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `${source}: ${key} must be a number, received '${value}'`);
    return n;
  }
  return value;
}

/** Merges file, environment and flags over the defaults and validates the result once. */
export function loadServeConfig(
  flags: Partial<ServeConfig> & { config?: string },
  env: NodeJS.ProcessEnv = process.env,
): ServeConfig {
  const merged: Record<string, unknown> = { ...SERVE_DEFAULTS };
  if (flags.config) {
    let file: Record<string, unknown>;
    try {
      file = JSON.parse(readFileSync(flags.config, 'utf8')) as Record<string, unknown>;
    } catch (err) {
      throw new KvtcError(
        'ERR_KVTC_INVALID_ARGUMENT',
        `${flags.config}: cannot read config (${(err as Error).message})`,
      );
    }
    for (const [k, v] of Object.entries(file)) merged[k] = coerce(k as keyof ServeConfig, v, flags.config);
  }
  for (const [name, key] of Object.entries(ENV))
    if (env[name] !== undefined) merged[key] = coerce(key, env[name], name);
  for (const [k, v] of Object.entries(flags))
    if (v !== undefined && k !== 'config') merged[k] = coerce(k as keyof ServeConfig, v, `--${k}`);
  const c = merged as unknown as ServeConfig;
  if (!c.calibration)
    throw new KvtcError(
      'ERR_KVTC_INVALID_ARGUMENT',
      'a calibration is required: --calibration FILE or KVTC_CALIBRATION',
    );
  if (!['auto', 'cuda', 'cpu'].includes(c.backend))
    throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `backend must be auto, cuda or cpu, received '${c.backend}'`);
  if (!['bf16', 'fp8'].includes(c.projection))
    throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `projection must be bf16 or fp8, received '${c.projection}'`);
  if (!/^(ipc|tcp):\/\//.test(c.endpoint))
    throw new KvtcError(
      'ERR_KVTC_INVALID_ARGUMENT',
      `endpoint must be ipc://PATH or tcp://HOST:PORT, received '${c.endpoint}'`,
    );
  if (!Array.isArray(c.stores) || c.stores.length === 0)
    throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', 'at least one store URL is needed');
  if (!(c.maxInFlight >= 1)) throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', 'maxInFlight must be >= 1');
  if (!(Number.isInteger(c.deflateLevel) && c.deflateLevel >= 0 && c.deflateLevel <= 12))
    throw new KvtcError(
      'ERR_KVTC_INVALID_ARGUMENT',
      `deflateLevel must be an integer in 0..12, received '${String(c.deflateLevel)}'`,
    );
  return Object.freeze(c);
}
