/**
 * `kvtc-sidecar roundtrip`: compresses and restores every capture of a folder through the real
 * codec, at each ratio, writing the restored KV (same capture format) and the byte counts. This is
 * how Python tools (kvtc_connector.evaluate) measure quality without reimplementing the codec.
 */
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';

import { readCapture } from '../calibrate/captures.js';
import { loadCalibration } from '../codec/calibration.js';
import { decode, encode, ENCODE_DEFAULTS, type Projection } from '../codec/codec.js';
import { float32Tensor, serializeSafetensors } from '../codec/safetensors.js';

export interface RoundtripArgs {
  calibration: string;
  kv: string;
  out: string;
  ratios?: number[];
  sinkTokens: number;
  windowTokens: number;
  /** precision of the projection's operands, both ways (default fp32) */
  projection?: Projection;
  /** entropy coding of the records (EncodeOptions): DEFLATE level, chunk size, indexed chunks */
  deflateLevel?: number;
  chunkBytes?: number;
  entryStride?: number;
}

export interface RoundtripEntry {
  capture: string;
  output: string;
  ratio: number;
  tokens: number;
  sink_tokens: number;
  window_tokens: number;
  coded_tokens: number;
  record_bytes: number;
  coded_bytes: number;
  raw_bf16_bytes: number;
}

export async function runRoundtrip(a: RoundtripArgs): Promise<void> {
  const cal = await loadCalibration(a.calibration);
  const ratios = a.ratios ?? cal.plans.map((p) => p.ratio);
  const files = (await readdir(a.kv)).filter((f) => f.endsWith('.safetensors')).sort();
  await mkdir(a.out, { recursive: true });
  const entries: RoundtripEntry[] = [];
  for (const f of files) {
    const c = await readCapture(join(a.kv, f));
    const m = c.model;
    for (const ratio of ratios) {
      const rec = await encode(
        cal,
        { keys: c.keys, values: c.values, dtype: 'float32', tokens: c.tokens, tokenStart: c.positionStart },
        {
          ratio,
          sinkTokens: a.sinkTokens,
          windowTokens: a.windowTokens,
          projection: a.projection,
          deflateLevel: a.deflateLevel,
          chunkBytes: a.chunkBytes,
          entryStride: a.entryStride,
        },
      );
      const out = await decode(cal, rec, { tokens: c.tokens, dtype: 'float32', projection: a.projection });
      const shape = [c.tokens, m.layers, m.kv_heads, m.head_dim];
      const name = `${basename(f, '.safetensors')}.cr${ratio}.safetensors`;
      const pos = new BigInt64Array(c.tokens).map((_, i) => BigInt(c.positionStart + i));
      const f32 = (b: Buffer) => new Float32Array(b.buffer, b.byteOffset, b.length / 4);
      await writeFile(
        join(a.out, name),
        serializeSafetensors(
          [
            ['keys', float32Tensor(f32(out.keys), shape)],
            ['values', float32Tensor(f32(out.values), shape)],
            ['positions', { dtype: 'I64', shape: [c.tokens], data: new Uint8Array(pos.buffer) }],
          ],
          { kvtc_roundtrip: JSON.stringify({ calibration_id: cal.id, ratio, record: out.info }) },
        ),
      );
      const coded = out.info.sections.filter((s) => s.kind.startsWith('coded'));
      entries.push({
        capture: f,
        output: name,
        ratio,
        tokens: c.tokens,
        sink_tokens: out.info.sinkTokens,
        window_tokens: out.info.windowTokens,
        coded_tokens: coded[0]?.tokens ?? 0,
        record_bytes: rec.length,
        coded_bytes: coded.reduce((s, x) => s + x.storedBytes, 0),
        raw_bf16_bytes: c.tokens * cal.featureDim * 2 * 2,
      });
    }
  }
  const summary = {
    calibration_id: cal.id,
    model: cal.model,
    projection: a.projection ?? 'fp32',
    deflate_level: a.deflateLevel ?? ENCODE_DEFAULTS.deflateLevel,
    chunk_bytes: a.chunkBytes ?? ENCODE_DEFAULTS.chunkBytes,
    entry_stride: a.entryStride ?? 0,
    entries,
  };
  await writeFile(join(a.out, 'summary.json'), JSON.stringify(summary, null, 2));
  process.stdout.write(`restored ${files.length} captures at ratios ${ratios.join(', ')} into ${a.out}\n`);
}
