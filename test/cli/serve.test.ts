// `kvtc-sidecar serve` as a process: readiness line, SIGTERM finishes in-flight saves then exits 0,
// bad configuration exits 2 with a coded message.
import t from 'tap';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';

import { applyRope, syntheticKv } from '../../src/calibrate/synthetic.js';
import { modelInfo, syntheticCalibration } from '../helpers/calibration.js';
import { TestClient } from '../helpers/client.js';
import { tempDir } from '../helpers/tmp.js';

const MAIN = resolve(import.meta.dirname, '..', '..', 'dist', 'src', 'main.js');
const model = modelInfo(5, 4, 8);
const cal = await syntheticCalibration(model, { ratios: [8] });
const dir = tempDir(t, 'kvtc-serve-');
const calFile = join(dir, 'cal.safetensors');
writeFileSync(calFile, cal.serialize());

t.test('SIGTERM: in-flight saves finish, then exit 0', async (t) => {
  const endpoint = `ipc://${join(dir, 'a.sock')}`;
  const child = spawn(
    process.execPath,
    [
      MAIN,
      'serve',
      '--calibration',
      calFile,
      '--endpoint',
      endpoint,
      '--store',
      'mem://?max=1GiB',
      '--log-level',
      'warn',
    ],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  const ready = await new Promise<Record<string, unknown>>((res) => {
    createInterface({ input: child.stdout! }).once('line', (line) => res(JSON.parse(line)));
  });
  t.equal(ready['ready'], true);
  t.equal(ready['calibration'], cal.id);
  const c = new TestClient(endpoint);
  await c.hello({
    protocol: 1,
    model_fingerprint: model.fingerprint,
    dtype: 'float32',
    layout: 'token-major',
    block_size: 16,
    layers: 5,
    kv_heads: 4,
    head_dim: 8,
    calibration_id: cal.id,
  });
  const tokens = 40000;
  const s = syntheticKv(tokens, 160, 9);
  const k = applyRope(s.keys, tokens, 0, model);
  const pending = c.request('save', { key: 'ab'.repeat(16), token_start: 0, tokens, dtype: 'float32' }, [
    Buffer.from(k.buffer),
    Buffer.from(s.values.buffer),
  ]);
  // Wait until the sidecar is working on it (stats excludes itself from in_flight), then stop it.
  for (let i = 0; i < 600; i++) {
    const st = await c.request('stats');
    if (st.header['stats'].in_flight >= 1) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  child.kill('SIGTERM');
  const reply = await pending;
  t.equal(reply.header['ok'], true, 'the in-flight save completed and was answered');
  t.equal(await exited, 0, 'exit code 0');
  c.close();
});

t.test('configuration errors exit 2 with a coded message', async (t) => {
  for (const [args, pattern] of [
    [['serve'], /a calibration is required.*ERR_KVTC_INVALID_ARGUMENT/],
    [
      ['serve', '--calibration', join(dir, 'missing.safetensors')],
      /missing\.safetensors: cannot read.*ERR_KVTC_CALIBRATION_INVALID/,
    ],
    [
      ['serve', '--calibration', calFile, '--endpoint', 'http://x'],
      /endpoint must be ipc:\/\/PATH or tcp:\/\/HOST:PORT/,
    ],
    [['serve', '--calibration', calFile, '--backend', 'cuda'], /ERR_KVTC_BACKEND_UNAVAILABLE/],
    [['serve', '--calibration', calFile, '--store', 'redis://x'], /unknown store scheme/],
    [['serve', '--calibration', calFile, '--projection', 'fp4'], /projection must be bf16 or fp8, received 'fp4'/],
    [['serve', '--calibration', calFile, '--deflate-level', '13'], /deflateLevel must be an integer in 0\.\.12/],
    [
      ['serve', '--calibration', calFile, '--backend', 'cpu', '--projection', 'fp8'],
      /projection fp8 runs on the CUDA backend; this sidecar's backend is cpu.*ERR_KVTC_INVALID_ARGUMENT/,
    ],
  ] as const) {
    const child = spawn(process.execPath, [MAIN, ...args], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, KVTC_CALIBRATION: '' },
    });
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    const code = await new Promise((res) => child.on('exit', res));
    t.equal(code, 2, args.join(' '));
    t.match(err, pattern);
  }
});

t.test('--help lists every option', async (t) => {
  const child = spawn(process.execPath, [MAIN, 'serve', '--help'], { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  await new Promise((res) => child.on('exit', res));
  for (const opt of [
    '--endpoint',
    '--calibration',
    '--store',
    '--backend',
    '--projection',
    '--metrics-port',
    '--log-level',
    '--deflate-level',
    '--config',
  ])
    t.match(out, opt);
});
