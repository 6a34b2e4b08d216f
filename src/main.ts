#!/usr/bin/env node
/** The kvtc-sidecar command line. */
import { Command, InvalidArgumentError, Option } from 'commander';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';

import { inspectRecord } from './codec/codec.js';
import type { GpuProjection } from './codec/paged.js';
import { isKvtcError, KvtcError } from './core/errors.js';
import { runCalibrate } from './cli/calibrate.js';
import { runRoundtrip } from './cli/roundtrip.js';
import { runServe } from './cli/serve.js';
import { createProgress } from './cli/progress.js';

function int(name: string, min = 0) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}`);
    return n;
  };
}

function ratios(v: string): number[] {
  const list = v.split(',').map(Number);
  if (list.length === 0 || list.some((r) => !(r >= 1)))
    throw new InvalidArgumentError('ratios must be numbers >= 1, e.g. 8,16,32,64');
  return list;
}

const program = new Command('kvtc-sidecar')
  .description('KV-cache transform coding (kvtc) for LLM serving: codec, calibration, benchmarks')
  .version('0.1.0');

program
  .command('calibrate')
  .description('fit a calibration (PCA basis + DP bit plans) from KV captures')
  .requiredOption('--kv <dir>', 'folder of captures from `python -m kvtc_connector.capture`')
  .requiredOption('--out <file>', 'calibration file to write (.safetensors)')
  .option('--ratios <list>', 'target compression ratios', ratios, [8, 16, 32, 64])
  .option('--rank-cap <n>', 'PCA rank cap', int('rank-cap', 1), 10240)
  .option('--power-iters <n>', 'randomized SVD power iterations', int('power-iters'), 8)
  .option('--oversample <n>', 'randomized SVD oversampling', int('oversample'), 10)
  .option('--max-samples <n>', 'token rows pooled for PCA', int('max-samples', 2), 200000)
  .option('--dp-samples <n>', 'token rows the DP simulates quantization on', int('dp-samples', 1), 2048)
  .option('--sink-tokens <n>', 'leading positions excluded (attention sinks)', int('sink-tokens'), 4)
  .option('--window-tokens <n>', 'newest tokens kept raw by default when encoding', int('window-tokens'), 128)
  .option('--seed <n>', 'random seed', int('seed'), 1)
  .action(async (o) => runCalibrate({ ...o, kv: resolve(o.kv), out: resolve(o.out) }));

program
  .command('serve')
  .description('serve the codec and stores to vLLM connectors over ZeroMQ')
  .option('--endpoint <url>', 'ipc://PATH or tcp://HOST:PORT (env KVTC_ENDPOINT; default ipc:///tmp/kvtc-sidecar.sock)')
  .option('--calibration <file>', 'calibration file (env KVTC_CALIBRATION)')
  .option(
    '--store <urls>',
    'store URLs, comma-separated, fastest first (env KVTC_STORE; default mem://?max=4GiB,file://.cache/kvtc-store?max=32GiB)',
  )
  .option('--backend <name>', 'auto | cuda | cpu (env KVTC_BACKEND)')
  .option(
    '--projection <precision>',
    "the CUDA backend's GEMM precision: bf16 | fp8 (e4m3, GEMMs about 1.7x faster on an H200; quality cost in docs/quality.md) (env KVTC_PROJECTION; default bf16)",
  )
  .option(
    '--metrics-port <n>',
    'serve Prometheus metrics on 127.0.0.1:PORT/metrics (env KVTC_METRICS_PORT)',
    int('metrics-port'),
  )
  .option('--log-level <level>', 'trace | debug | info | warn | error (env KVTC_LOG_LEVEL)')
  .option(
    '--max-in-flight <n>',
    'requests worked on at once; more are answered BUSY (env KVTC_MAX_IN_FLIGHT)',
    int('max-in-flight', 1),
  )
  .option('--max-frame-bytes <n>', 'largest accepted frame (env KVTC_MAX_FRAME_BYTES)', int('max-frame-bytes', 1))
  .option('--ratio <n>', 'default target ratio for saves (env KVTC_RATIO; default: the first plan)', Number)
  .option(
    '--window-tokens <n>',
    'newest tokens of each saved chunk kept raw unless the request says (env KVTC_WINDOW_TOKENS)',
    int('window-tokens'),
  )
  .option(
    '--deflate-level <n>',
    'DEFLATE level of saved records, 0..12; 0 stores them without entropy coding: faster on a GPU, about 10 % larger (env KVTC_DEFLATE_LEVEL; default 6)',
    int('deflate-level'),
  )
  .option('--config <file>', 'JSON config file with the same keys (camelCase)')
  .action(async (o) =>
    runServe({
      endpoint: o.endpoint,
      calibration: o.calibration,
      stores: o.store,
      backend: o.backend,
      projection: o.projection,
      metricsPort: o.metricsPort,
      logLevel: o.logLevel,
      maxInFlight: o.maxInFlight,
      maxFrameBytes: o.maxFrameBytes,
      ratio: o.ratio,
      windowTokens: o.windowTokens,
      deflateLevel: o.deflateLevel,
      config: o.config,
    }),
  );

program
  .command('roundtrip')
  .description('compress and restore every capture of a folder through the codec (for quality tools)')
  .requiredOption('--calibration <file>', 'calibration file')
  .requiredOption('--kv <dir>', 'folder of captures')
  .requiredOption('--out <dir>', 'folder for restored captures and summary.json')
  .option('--ratios <list>', 'ratios (default: every plan of the calibration)', ratios)
  .option('--sink-tokens <n>', 'attention sinks kept raw', int('sink-tokens'), 4)
  .option('--window-tokens <n>', 'newest tokens kept raw', int('window-tokens'), 128)
  .addOption(
    new Option(
      '--projection <precision>',
      "precision of the projection's operands: fp32, bf16 (the CUDA backend's) or fp8 (e4m3, scaled per token and per basis vector)",
    )
      .choices(['fp32', 'bf16', 'fp8'])
      .default('fp32'),
  )
  .option(
    '--deflate-level <n>',
    'DEFLATE level 0..12 (default 6); 0 stores the chunks without entropy coding',
    int('deflate-level'),
  )
  .option('--chunk-kib <n>', 'DEFLATE chunk size in KiB (default 64)', int('chunk-kib', 1))
  .option(
    '--entry-stride <bytes>',
    "indexed chunks by kvtc's literal coder (the CUDA backend's records: --chunk-kib 16 --entry-stride 512), a multiple of 16",
    int('entry-stride', 16),
  )
  .action(async (o) =>
    runRoundtrip({
      ...o,
      calibration: resolve(o.calibration),
      kv: resolve(o.kv),
      out: resolve(o.out),
      chunkBytes: o.chunkKib === undefined ? undefined : o.chunkKib * 1024,
    }),
  );

const bench = program.command('bench').description('benchmarks');
bench
  .command('codec')
  .description('encode/decode throughput per model shape, beside the BLAS GEMM of the same shape')
  .option('--backend <name>', 'codec backend: cpu or cuda (a CUDA build with a device)', 'cpu')
  .option('--shape <name>', 'one of stories260k, smollm2, 1b, 8b (default: all)')
  .option('--tokens <n>', 'tokens per run (default: per shape)', int('tokens', 1))
  .option('--batch <n>', 'sequences per timed run, cuda only (default: 1 and 8)', int('batch', 1))
  .option('--paged', 'cuda only: KV in a paged cache (FlashAttention layout), encoded and restored in place')
  .option(
    '--window-tokens <n>',
    "cuda only: newest tokens of each sequence kept raw (default 128; 0 as the connector's chunks but the last)",
    int('window-tokens', 0),
  )
  .option(
    '--chunk-kib <n>',
    "DEFLATE chunk size in KiB (default: the backend's, 64 on cpu, 16 on cuda)",
    int('chunk-kib', 1),
  )
  .option(
    '--entry-stride <bytes>',
    'cpu only: write indexed DEFLATE sections (what the CUDA backend writes) with an entry point every so many bytes, a multiple of 16, to time their CPU decode',
    int('entry-stride', 16),
  )
  .option('--ratio <n>', 'target compression ratio of the plan', Number, 16)
  .option(
    '--kv <dir>',
    'captured KV (python -m kvtc_connector.capture) instead of synthetic, repeated to the length; needs --calibration, sets the shape',
  )
  .option('--calibration <file>', "with --kv: the captured model's calibration (its plan at --ratio)")
  .option(
    '--deflate-level <n>',
    'DEFLATE level of the records (default 6); 0 stores the chunks without entropy coding',
    int('deflate-level'),
  )
  .addOption(
    new Option(
      '--projection <precision>',
      "cuda only: the GEMMs' precision, bf16 or fp8 (e4m3 operands scaled per vector; the ratios are then against the fp8 GEMMs)",
    ).choices(['bf16', 'fp8']),
  )
  .option(
    '--rank-cap <n>',
    'components the synthetic calibration may keep (default: 2048, all 160 for stories260k)',
    int('rank-cap', 1),
  )
  .option('--reps <n>', 'repetitions (best is reported)', int('reps', 1), 3)
  .option('--json', 'print one JSON object')
  .option('--cache <dir>', 'where synthetic calibrations are cached', 'bench/.cache')
  .action(async (o) => {
    const { SHAPES, CUDA_SHAPES, benchSettings, benchShape, benchShapeCuda, markdownTable, realInput, realShape } =
      await import('../bench/codec.js');
    if (o.backend !== 'cpu' && o.backend !== 'cuda')
      throw new InvalidArgumentError(`backend must be cpu or cuda, received '${o.backend}'`);
    if (o.backend !== 'cuda' && o.projection !== undefined)
      throw new InvalidArgumentError('--projection is cuda only: the CPU bench projects in fp32');
    if (o.backend !== 'cuda' && o.windowTokens !== undefined)
      throw new InvalidArgumentError('--window-tokens is cuda only: the CPU bench keeps the default window');
    if (o.backend === 'cuda' && o.entryStride !== undefined)
      throw new InvalidArgumentError('--entry-stride is cpu only: the CUDA backend always writes indexed sections');
    if ((o.kv === undefined) !== (o.calibration === undefined))
      throw new InvalidArgumentError("--kv and --calibration go together: captured KV and its model's calibration");
    if (o.kv !== undefined && (o.shape !== undefined || o.rankCap !== undefined))
      throw new InvalidArgumentError('--kv sets the shape and the calibration its ranks: drop --shape and --rank-cap');
    const pool = o.backend === 'cuda' ? CUDA_SHAPES : SHAPES;
    const real = o.kv === undefined ? undefined : await realInput(resolve(o.kv), resolve(o.calibration));
    const shapes = (real ? [realShape(real, pool)] : pool)
      .filter((s) => !o.shape || s.name === o.shape)
      .map((s) => ({ ...s, tokens: o.tokens ?? s.tokens, rankCap: o.rankCap ?? s.rankCap }));
    if (shapes.length === 0)
      throw new InvalidArgumentError(`unknown shape ${o.shape}; known: ${pool.map((s) => s.name).join(', ')}`);
    const chunkBytes = o.chunkKib === undefined ? undefined : o.chunkKib * 1024;
    const progress = createProgress();
    if (o.backend === 'cuda') {
      const results = [];
      for (const shape of shapes) {
        results.push(
          ...(await benchShapeCuda(shape, {
            shapes,
            ratio: o.ratio,
            reps: o.reps,
            cacheDir: o.cache,
            progress: progress.update,
            tokenCounts: o.tokens ? [o.tokens] : [8192, 32768],
            batches: o.batch ? [o.batch] : [1, 8],
            paged: o.paged === true,
            ...(o.windowTokens !== undefined ? { windowTokens: o.windowTokens } : {}),
            ...(o.projection ? { projection: o.projection as GpuProjection } : {}),
            chunkBytes,
            deflateLevel: o.deflateLevel,
            ...(real ? { real } : {}),
          })),
        );
      }
      progress.stop();
      const first = results[0];
      const out = {
        backend: 'cuda',
        gpu: first?.gpu ?? 'unknown',
        date: first?.date ?? '',
        settings: benchSettings(),
        results,
      };
      process.stdout.write((o.json ? JSON.stringify(out) : markdownTable(results)) + '\n');
      return;
    }
    const results = [];
    for (const shape of shapes) {
      results.push(
        await benchShape(shape, {
          shapes,
          ratio: o.ratio,
          reps: o.reps,
          cacheDir: o.cache,
          progress: progress.update,
          chunkBytes,
          entryStride: o.entryStride,
          deflateLevel: o.deflateLevel,
          ...(real ? { real } : {}),
        }),
      );
    }
    progress.stop();
    if (o.json) process.stdout.write(JSON.stringify({ backend: 'cpu', settings: benchSettings(), results }) + '\n');
    else process.stdout.write(markdownTable(results) + '\n');
  });

bench
  .command('host')
  .description("the CUDA backend's host passes (CRC32C, fused copy + CRC32C) beside memcpy in the same process")
  .option('--sizes <list>', 'bytes per pass, comma-separated', '262144,1048576,8388608,67108864')
  .option('--reps <n>', 'timed passes per figure (best is reported)', int('reps', 1), 20)
  .option('--json', 'print one JSON object')
  .action(async (o) => {
    const { benchHost, hostTable } = await import('../bench/host.js');
    const sizes = String(o.sizes)
      .split(',')
      .map((x) => Number(x));
    if (sizes.some((x) => !Number.isInteger(x) || x <= 0))
      throw new InvalidArgumentError(`--sizes must be positive integers, received '${o.sizes}'`);
    const progress = createProgress();
    const r = benchHost({ sizes, reps: o.reps, progress: progress.update });
    progress.stop();
    process.stdout.write((o.json ? JSON.stringify(r) : hostTable(r)) + '\n');
  });

bench
  .command('merge')
  .description(
    'merge `bench codec --json` outputs of the same code and settings, one per process: per row the median over the processes, with their range',
  )
  .argument('<files...>', 'bench codec JSON files')
  .option('--json', "print one JSON object (the first file's, rows merged, with processes and the per-process samples)")
  .action(async (files: string[], o) => {
    const { mergeRuns, mergedTable } = await import('../bench/merge.js');
    const runs = await Promise.all(
      files.map(async (f) => {
        try {
          return JSON.parse(await readFile(f, 'utf8'));
        } catch (err) {
          throw new KvtcError('ERR_KVTC_INVALID_ARGUMENT', `${f}: not a bench JSON (${(err as Error).message})`);
        }
      }),
    );
    const merged = mergeRuns(runs);
    process.stdout.write((o.json ? JSON.stringify(merged) : mergedTable(merged.results)) + '\n');
  });

bench
  .command('load')
  .description('concurrent clients saving and loading against one sidecar process')
  .requiredOption('--calibration <file>', 'calibration file')
  .option('--clients <n>', 'concurrent clients', int('clients', 1), 32)
  .option('--seconds <n>', 'duration', int('seconds', 1), 60)
  .option('--tokens <n>', 'tokens per chunk', int('tokens', 1), 256)
  .option('--store-max <bytes>', 'memory store cap in bytes', int('store-max', 1), 256 * 2 ** 20)
  .option('--json', 'print one JSON object')
  .action(async (o) => {
    const { runLoad } = await import('../bench/load.js');
    const progress = createProgress();
    const r = await runLoad({
      calibration: resolve(o.calibration),
      clients: o.clients,
      seconds: o.seconds,
      tokens: o.tokens,
      storeMaxBytes: o.storeMax,
      progress: progress.update,
    });
    progress.stop();
    process.stdout.write(JSON.stringify(r, null, o.json ? undefined : 2) + '\n');
  });

program
  .command('inspect')
  .description("print a record's header")
  .argument('<record>', 'record file')
  .action(async (file: string) => {
    process.stdout.write(JSON.stringify(inspectRecord(await readFile(file)), null, 2) + '\n');
  });

program.parseAsync().catch((err: unknown) => {
  const code = isKvtcError(err) ? err.code : ((err as { code?: string }).code ?? 'ERR_KVTC_INTERNAL');
  process.stderr.write(`kvtc-sidecar: ${(err as Error).message} [${code}]\n`);
  process.exitCode = 2;
});
