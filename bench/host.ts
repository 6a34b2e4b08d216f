/**
 * `kvtc-sidecar bench host`: the host passes a CUDA record goes through (CRC32C of a section, and
 * the fused copy + CRC32C that assembles an encoded record from pinned staging and stages a
 * restore's chunks), each beside a plain memcpy of the same bytes timed in the same process
 * (Buffer.copy, one thread), so the figures are ratios that hold on any machine. Destinations are
 * allocated and touched once, outside the timing, as the CUDA backend's record pool and staging
 * buffers are.
 */
import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';

import { loadNative } from '../src/codec/native.js';

export interface HostBenchOptions {
  /** bytes per pass */
  sizes: number[];
  /** timed passes per figure (the best is reported) */
  reps: number;
  progress?: (label: string, fraction: number) => void;
}

export interface HostBenchResult {
  bytes: number;
  memcpy_gbps: number;
  crc32c_gbps: number;
  /** destination whole pages after the source (as an encode's record and its pinned image) */
  copy_crc32c_gbps: number;
  /** destination 16 bytes past the source modulo 4 KiB (by chance, one restore chunk in ~65) */
  copy_crc32c_aliased_gbps: number;
  /** copy + CRC32C time against memcpy's (aligned): 1 means the checksum is free */
  copy_crc32c_vs_memcpy: number;
}

function bestGbps(bytes: number, reps: number, pass: () => void): number {
  pass(); // warm-up: caches, page tables, the thread pool
  let best = Infinity;
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    pass();
    best = Math.min(best, performance.now() - t0);
  }
  return bytes / (best / 1e3) / 1e9;
}

export function benchHost(o: HostBenchOptions): { cores: number; results: HostBenchResult[] } {
  const { stages } = loadNative();
  const results: HostBenchResult[] = [];
  o.sizes.forEach((bytes, i) => {
    o.progress?.(`host ${bytes} B`, i / o.sizes.length);
    // One allocation, so that the distances between source and destinations are known: a
    // destination a whole number of pages after the source, and one 16 bytes further (1-63 bytes
    // past the source modulo 4 KiB: where glibc's `rep movsb` runs several times slower on AMD;
    // host_copy.cc CopyBytes).
    const pitch = Math.ceil(bytes / 4096) * 4096 + 4096;
    const space = Buffer.alloc(3 * pitch + 64, 1);
    const src = space.subarray(0, bytes);
    for (let j = 0; j < bytes; j++) src[j] = (j * 2654435761) >>> 24;
    const aligned = space.subarray(pitch, pitch + bytes);
    const aliased = space.subarray(2 * pitch + 16, 2 * pitch + 16 + bytes);
    const memcpy = bestGbps(bytes, o.reps, () => src.copy(aligned));
    const crc = bestGbps(bytes, o.reps, () => stages.crc32c(src));
    const fused = bestGbps(bytes, o.reps, () => stages.copyCrc32c(src, aligned));
    const fusedAliased = bestGbps(bytes, o.reps, () => stages.copyCrc32c(src, aliased));
    results.push({
      bytes,
      memcpy_gbps: memcpy,
      crc32c_gbps: crc,
      copy_crc32c_gbps: fused,
      copy_crc32c_aliased_gbps: fusedAliased,
      copy_crc32c_vs_memcpy: memcpy / fused,
    });
  });
  o.progress?.('host', 1);
  return { cores: availableParallelism(), results };
}

export function hostTable(r: { cores: number; results: HostBenchResult[] }): string {
  return [
    `${r.cores} cores`,
    '| bytes | memcpy GB/s | CRC32C GB/s | copy + CRC32C GB/s | copy + CRC32C, dst - src = 16 mod 4096, GB/s | copy + CRC32C time / memcpy time |',
    '|---|---|---|---|---|---|',
    ...r.results.map(
      (x) =>
        `| ${x.bytes} | ${x.memcpy_gbps.toFixed(1)} | ${x.crc32c_gbps.toFixed(1)} | ${x.copy_crc32c_gbps.toFixed(1)} | ${x.copy_crc32c_aliased_gbps.toFixed(1)} | ${x.copy_crc32c_vs_memcpy.toFixed(2)} |`,
    ),
  ].join('\n');
}
