/**
 * Several `bench codec --json` outputs of the same code and settings, one per process, merged into
 * one: per row, the median over the processes of every timed figure, with the per-process
 * encode / decode samples beside it. On the GPU machine a whole process sometimes runs up to half
 * as fast as the next one on the same code (host stalls; docs/benchmarks.md, run k), which the
 * median of repetitions inside one process cannot remove.
 */

import { KvtcError } from '../src/core/errors.js';

/** One `bench codec --json` output (CPU or CUDA). */
export interface BenchRun {
  backend: string;
  settings?: Record<string, string>;
  results: BenchRow[];
  [field: string]: unknown;
}

export type BenchRow = Record<string, unknown> & { shape: string; encode_gbps: number; decode_gbps: number };

/** What a row measures: it names the same job in every process. */
const KEY_FIELDS = [
  'shape',
  'tokens',
  'batch',
  'paged',
  'projection',
  'rank_keys',
  'rank_values',
  'target_ratio',
  'chunk_bytes',
  'entry_stride',
  'deflate_level',
  'input',
];

/** Timed figures: they differ from process to process and are merged by their median. */
const TIMED_FIELDS = [
  'encode_gbps',
  'decode_gbps',
  'gemm_ratio_encode',
  'gemm_ratio_decode',
  'bf16_gemm_ratio_encode',
  'bf16_gemm_ratio_decode',
  'd2h_copy_gbps',
];

/** Sizes: the same code writes the same records, so a difference means the runs are not comparable. */
const SIZE_FIELDS = ['raw_bytes', 'record_bytes'];

export interface MergedRow extends BenchRow {
  processes: number;
  encode_gbps_samples: number[];
  decode_gbps_samples: number[];
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function rowKey(r: BenchRow): string {
  return JSON.stringify(KEY_FIELDS.map((f) => r[f] ?? null));
}

/**
 * Merges runs of the same backend and settings; rows are matched by what they measure (shape,
 * tokens, batch, ...) and keep the order they first appear in (rows only some runs have are
 * merged over the runs that have them, so runs of different shapes simply add up). `processes`:
 * the most runs any row was merged from. Throws on runs that are not comparable.
 */
export function mergeRuns(runs: BenchRun[]): BenchRun & { processes: number; results: MergedRow[] } {
  const refuse = (message: string) => new KvtcError('ERR_KVTC_INVALID_ARGUMENT', message);
  if (runs.length === 0) throw refuse('nothing to merge: no bench runs given');
  const first = runs[0]!;
  const settings = JSON.stringify(first.settings ?? {});
  for (const [i, run] of runs.entries()) {
    if (typeof run?.backend !== 'string' || !Array.isArray(run.results))
      throw refuse(`run ${i} is not a bench codec JSON (no backend or results)`);
    if (run.backend !== first.backend)
      throw refuse(`run ${i} is a ${run.backend} bench, run 0 a ${first.backend} bench`);
    if (JSON.stringify(run.settings ?? {}) !== settings)
      throw refuse(`run ${i} ran with settings ${JSON.stringify(run.settings ?? {})}, run 0 with ${settings}`);
  }
  const groups = new Map<string, BenchRow[]>();
  for (const run of runs) {
    for (const row of run.results) {
      const key = rowKey(row);
      groups.set(key, [...(groups.get(key) ?? []), row]);
    }
  }
  const results: MergedRow[] = [];
  for (const rows of groups.values()) {
    const merged: MergedRow = {
      ...rows[0]!,
      processes: rows.length,
      encode_gbps_samples: rows.map((r) => r.encode_gbps),
      decode_gbps_samples: rows.map((r) => r.decode_gbps),
    };
    for (const f of SIZE_FIELDS) {
      const sizes = new Set(rows.map((r) => r[f]));
      if (sizes.size > 1) throw refuse(`${rows[0]!.shape} row: ${f} differs between runs (${[...sizes].join(', ')})`);
    }
    for (const f of TIMED_FIELDS) {
      if (typeof rows[0]![f] === 'number') merged[f] = median(rows.map((r) => r[f] as number));
    }
    results.push(merged);
  }
  return { ...first, processes: Math.max(...results.map((r) => r.processes)), results };
}

/** A markdown table of merged rows: each figure is the median, with the processes' range. */
export function mergedTable(rows: MergedRow[]): string {
  const range = (xs: number[]) => `${Math.min(...xs).toFixed(1)}-${Math.max(...xs).toFixed(1)}`;
  return [
    '| shape | tokens | batch | paged | proj | rank K/V | ratio | encode GB/s (range) | decode GB/s (range) | processes |',
    '|---|---|---|---|---|---|---|---|---|---|',
    ...rows.map(
      (r) =>
        `| ${r.shape} | ${r.tokens} | ${r.batch ?? 1} | ${r.paged ? 'yes' : 'no'} | ${r.projection ?? 'fp32'} | ${r.rank_keys}/${r.rank_values} | ${Number(r.ratio).toFixed(2)} | ${r.encode_gbps.toFixed(1)} (${range(r.encode_gbps_samples)}) | ${r.decode_gbps.toFixed(1)} (${range(r.decode_gbps_samples)}) | ${r.processes} |`,
    ),
  ].join('\n');
}
