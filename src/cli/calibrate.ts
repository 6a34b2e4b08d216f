/** `kvtc-sidecar calibrate`: captures -> calibration file, with a summary table. */
import { writeFile } from 'node:fs/promises';

import { poolCaptures } from '../calibrate/captures.js';
import { fitCalibration } from '../calibrate/fit.js';
import { createProgress } from './progress.js';

export interface CalibrateArgs {
  kv: string;
  out: string;
  ratios: number[];
  rankCap: number;
  powerIters: number;
  oversample: number;
  maxSamples: number;
  dpSamples: number;
  sinkTokens: number;
  windowTokens: number;
  seed: number;
}

export async function runCalibrate(a: CalibrateArgs): Promise<void> {
  const t0 = Date.now();
  const progress = createProgress();
  const pooled = await poolCaptures(a.kv, {
    sinkTokens: a.sinkTokens,
    maxSamples: a.maxSamples,
    seed: a.seed,
    minSamples: 16,
  });
  const cal = await fitCalibration({
    model: pooled.model,
    keys: pooled.keys,
    values: pooled.values,
    n: pooled.n,
    ratios: a.ratios,
    rankCap: a.rankCap,
    powerIters: a.powerIters,
    oversample: a.oversample,
    seed: a.seed,
    dpSamples: a.dpSamples,
    sinkTokens: a.sinkTokens,
    windowTokens: a.windowTokens,
    source: a.kv,
    progress: (stage, f) => progress.update(stage, f),
  });
  progress.stop();
  await writeFile(a.out, cal.serialize());
  const m = cal.model;
  const p = cal.featureDim;
  const lines = [
    `calibration ${cal.id} for ${m.name} (${m.layers} layers x ${m.kv_heads} KV heads x ${m.head_dim}, p = ${p})`,
    `${pooled.n} token rows from ${pooled.files} captures (sinks excluded), basis kept: keys ${cal.keys.rank}, values ${cal.values.rank}; ${((Date.now() - t0) / 1000).toFixed(1)} s`,
    '',
    '| ratio | budget bits/token | keys: components | keys: bits/token | keys: expected error | values: components | values: bits/token | values: expected error |',
    '|---|---|---|---|---|---|---|---|',
    ...cal.plans.map(
      (pl) =>
        `| ${pl.ratio} | ${pl.budget_bits} | ${pl.keys.rank} | ${pl.keys.bits_per_token} | ${pl.keys.expected_error.toExponential(3)} | ${pl.values.rank} | ${pl.values.bits_per_token} | ${pl.values.expected_error.toExponential(3)} |`,
    ),
    '',
    `wrote ${a.out}`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
}
