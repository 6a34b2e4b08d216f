// `kvtc-sidecar roundtrip` as a process: restores every capture of a folder, reports the record
// bytes in summary.json, and passes the entropy options through (level 0 stores the chunks: larger
// records, the same restored KV).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { parseSafetensors } from '../../src/codec/safetensors.js';
import { modelInfo, syntheticCalibration } from '../helpers/calibration.js';
import { writeSyntheticCapture } from '../helpers/capture.js';
import { tempDir } from '../helpers/tmp.js';

const MAIN = resolve(import.meta.dirname, '..', '..', 'dist', 'src', 'main.js');
const model = modelInfo(5, 4, 8);
const cal = await syntheticCalibration(model, { ratios: [4] });
const dir = tempDir(t, 'kvtc-roundtrip-');
const calFile = join(dir, 'cal.safetensors');
writeFileSync(calFile, cal.serialize());

const tokens = 400;
const kvDir = join(dir, 'kv');
mkdirSync(kvDir);
writeSyntheticCapture(join(kvDir, 'seq-00000.safetensors'), model, tokens, 3);

function roundtrip(out: string, ...extra: string[]) {
  const r = spawnSync(
    process.execPath,
    [MAIN, 'roundtrip', '--calibration', calFile, '--kv', kvDir, '--out', out, '--window-tokens', '16', ...extra],
    { encoding: 'utf8' },
  );
  return { status: r.status, stderr: r.stderr };
}

interface Summary {
  deflate_level: number;
  chunk_bytes: number;
  entry_stride: number;
  entries: { output: string; coded_tokens: number; coded_bytes: number; record_bytes: number }[];
}

t.test('level 0 against the default: stored chunks, the same restored KV', async (t) => {
  const coded = join(dir, 'coded'),
    stored = join(dir, 'stored');
  t.equal(roundtrip(coded).status, 0);
  t.equal(roundtrip(stored, '--deflate-level', '0', '--chunk-kib', '1', '--entry-stride', '64').status, 0);
  const a = JSON.parse(readFileSync(join(coded, 'summary.json'), 'utf8')) as Summary;
  const b = JSON.parse(readFileSync(join(stored, 'summary.json'), 'utf8')) as Summary;
  t.same([a.deflate_level, a.chunk_bytes, a.entry_stride], [6, 65536, 0], 'defaults reported');
  t.same([b.deflate_level, b.chunk_bytes, b.entry_stride], [0, 1024, 64], 'options reported');
  t.equal(a.entries[0]!.coded_tokens, tokens - 4 - 16);
  t.ok(
    b.entries[0]!.coded_bytes > a.entries[0]!.coded_bytes,
    `stored ${b.entries[0]!.coded_bytes} > coded ${a.entries[0]!.coded_bytes} bytes`,
  );
  // The files' metadata hold each record's sizes; the restored tensors must be identical.
  const restored = (folder: string, s: Summary) =>
    parseSafetensors(readFileSync(join(folder, s.entries[0]!.output)), 'restored').tensors;
  const [x, y] = [restored(stored, b), restored(coded, a)];
  for (const name of ['keys', 'values'])
    t.same(Buffer.from(x.get(name)!.data), Buffer.from(y.get(name)!.data), `restored ${name} identical`);
});

t.test('an out-of-range level exits 2 with a coded message', async (t) => {
  const r = roundtrip(join(dir, 'bad'), '--deflate-level', '13');
  t.equal(r.status, 2);
  t.match(r.stderr, /DEFLATE level in 0\.\.12.*ERR_KVTC_INVALID_ARGUMENT|ERR_KVTC_INVALID_ARGUMENT.*DEFLATE level/s);
});
