// The sidecar end to end over real ZeroMQ sockets: handshake, save/load/lookup/delete, and each
// fault (malformed, truncated, oversized, wrong version, busy, store full, corrupt record on disk,
// restart with the file store). After every fault the sidecar keeps serving.
import t from 'tap';
import { readdirSync, readFileSync, writeFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

import { pino } from 'pino';
import { Sidecar, type SidecarOptions } from '../../src/service/sidecar.js';
import { applyRope, syntheticKv } from '../../src/calibrate/synthetic.js';
import { modelInfo, syntheticCalibration } from '../helpers/calibration.js';
import { pack, TestClient } from '../helpers/client.js';
import { tempDir } from '../helpers/tmp.js';

const model = modelInfo(5, 4, 8);
const cal = await syntheticCalibration(model, { ratios: [4, 16] });
const P = cal.featureDim;
const dir = tempDir(t, 'kvtc-sidecar-');
let n = 0;
const endpoint = () => `ipc://${join(dir, `s${n++}.sock`)}`;
const log = pino({ level: 'silent' });

const compat = {
  protocol: 1,
  model_fingerprint: model.fingerprint,
  dtype: 'float32',
  layout: 'token-major',
  block_size: 16,
  layers: 5,
  kv_heads: 4,
  head_dim: 8,
  calibration_id: '',
};

async function start(extra: Partial<SidecarOptions> = {}): Promise<Sidecar> {
  return Sidecar.start({
    endpoint: endpoint(),
    calibration: cal,
    stores: ['mem://?max=64MiB'],
    log,
    maxInFlight: 16,
    maxFrameBytes: 64 * 1024 * 1024,
    windowTokens: 0,
    sinkTokens: 4,
    ...extra,
  });
}

function kv(tokens: number, seed: number, pos0 = 0): [Buffer, Buffer] {
  const s = syntheticKv(tokens, P, seed);
  const k = applyRope(s.keys, tokens, pos0, model);
  return [Buffer.from(k.buffer, k.byteOffset, k.byteLength), Buffer.from(s.values.buffer)];
}

t.test('handshake, save, lookup, load, delete, stats', async (t) => {
  const s = await start({ metricsPort: 0 });
  const c = new TestClient(s.endpoint);
  t.teardown(async () => {
    c.close();
    await s.close();
  });
  const hello = await c.hello(compat);
  t.equal(hello.header['ok'], true);
  t.equal(hello.header['calibration_id'], cal.id);
  t.same(hello.header['ratios'], [4, 16]);
  t.match(hello.header['session'], /^[0-9a-f]{32}$/);

  const [k, v] = kv(300, 1);
  const save = await c.request(
    'save',
    { key: 'aa'.repeat(16), token_start: 0, tokens: 300, dtype: 'float32', ratio: 4 },
    [k, v],
  );
  t.equal(save.header['ok'], true, JSON.stringify(save.header));
  const handle = save.header['handle'];
  t.equal(handle.key, 'aa'.repeat(16));
  t.equal(handle.raw_bytes, 2 * 300 * P * 4);
  t.ok(handle.stored_bytes < handle.raw_bytes / 4, `stored ${handle.stored_bytes} of ${handle.raw_bytes}`);
  t.equal(handle.tier, 'mem');

  const look = await c.request('lookup', { keys: ['aa'.repeat(16), 'bb'.repeat(16), 'aa'.repeat(16)] });
  t.equal(look.header['hits'], 1, 'lookup counts the leading run of stored keys');

  const load = await c.request('load', { key: 'aa'.repeat(16), tokens: 300, dtype: 'float32' });
  t.equal(load.header['ok'], true);
  t.equal(load.frames.length, 2);
  t.equal(load.frames[0]!.length, k.length);
  t.same(load.frames[0]!.subarray(0, 4 * P * 4), k.subarray(0, 4 * P * 4), 'sinks restored exactly');

  const miss = await c.request('load', { key: 'cc'.repeat(16), tokens: 300, dtype: 'float32' });
  t.equal(miss.header['code'], 'ERR_KVTC_NOT_FOUND');

  const del = await c.request('delete', { key: 'aa'.repeat(16) });
  t.equal(del.header['deleted'], true);
  const stats = await c.request('stats');
  t.equal(stats.header['stats'].stores[0].entries, 0);
  t.equal(stats.header['stats'].in_flight, 0, 'nothing else in flight');
  t.type(stats.header['stats'].stores[0].max_bytes, 'number');

  const metrics = await (await fetch(s.metricsAddress!)).text();
  t.match(metrics, /kvtc_requests_total\{op="save",result="ok"\} 1/);
  t.match(metrics, /kvtc_errors_total\{code="ERR_KVTC_NOT_FOUND"\} 1/);
  t.match(metrics, /kvtc_compression_ratio_count 1/);
});

t.test('malformed, truncated, oversized and wrong-version messages get coded errors; serving goes on', async (t) => {
  const s = await start({ maxFrameBytes: 100_000 });
  const c = new TestClient(s.endpoint);
  t.teardown(async () => {
    c.close();
    await s.close();
  });
  await c.hello(compat);
  const notMsgpack = await c.raw(null, [Buffer.from([0xc1, 0x00, 0xff])]);
  t.equal(notMsgpack.header['code'], 'ERR_KVTC_PROTOCOL_MALFORMED', 'not msgpack');
  t.equal(notMsgpack.header['id'], null);
  const notMap = await c.raw(null, [pack([1, 2, 3] as unknown as Record<string, unknown>)]);
  t.equal(notMap.header['code'], 'ERR_KVTC_PROTOCOL_MALFORMED', 'not a map');
  const wrongVersion = await c.raw(77, [pack({ v: 2, id: 77, op: 'stats' })]);
  t.equal(wrongVersion.header['code'], 'ERR_KVTC_PROTOCOL_VERSION');
  t.equal(wrongVersion.header['id'], 77, 'the id is echoed');
  const unknownOp = await c.request('explode');
  t.equal(unknownOp.header['code'], 'ERR_KVTC_PROTOCOL_MALFORMED');
  const truncated = await c.request('save', { key: 'ab'.repeat(16), token_start: 0, tokens: 10, dtype: 'float32' });
  t.equal(truncated.header['code'], 'ERR_KVTC_PROTOCOL_MALFORMED', 'save without its frames');
  const short = await c.request('save', { key: 'ab'.repeat(16), token_start: 0, tokens: 10, dtype: 'float32' }, [
    Buffer.alloc(10),
    Buffer.alloc(10),
  ]);
  t.equal(short.header['code'], 'ERR_KVTC_PROTOCOL_MALFORMED', 'frames of the wrong size');
  const [k, v] = kv(200, 2);
  const big = await c.request('save', { key: 'ab'.repeat(16), token_start: 0, tokens: 200, dtype: 'float32' }, [k, v]);
  t.equal(big.header['code'], 'ERR_KVTC_PROTOCOL_OVERSIZED', `${k.length}-byte frames over a 100000-byte cap`);
  const badKey = await c.request('load', { key: 'not-hex', tokens: 1, dtype: 'float32' });
  t.equal(badKey.header['code'], 'ERR_KVTC_PROTOCOL_MALFORMED');
  const noSession = new TestClient(s.endpoint);
  const anon = await noSession.request('lookup', { keys: [] });
  noSession.close();
  t.equal(anon.header['code'], 'ERR_KVTC_HANDSHAKE_REQUIRED');
  const wrongModel = await new TestClient(s.endpoint).hello({ ...compat, model_fingerprint: 'f'.repeat(32) });
  t.equal(wrongModel.header['code'], 'ERR_KVTC_MODEL_MISMATCH');
  const wrongCal = await c.request('hello', { compat: { ...compat, calibration_id: '0'.repeat(32) } });
  t.equal(wrongCal.header['code'], 'ERR_KVTC_CALIBRATION_MISMATCH');
  const ok = await c.request('stats');
  t.equal(ok.header['ok'], true, 'still serving');
});

t.test('busy: beyond max in-flight the sidecar answers BUSY at once', async (t) => {
  const s = await start({ maxInFlight: 1 });
  const c = new TestClient(s.endpoint);
  t.teardown(async () => {
    c.close();
    await s.close();
  });
  await c.hello(compat);
  const [k, v] = kv(2000, 3);
  const replies = await Promise.all(
    [0, 1, 2, 3].map((i) =>
      c.request('save', { key: `${i}`.repeat(32), token_start: 0, tokens: 2000, dtype: 'float32' }, [k, v]),
    ),
  );
  const codes = replies.map((r) => (r.header['ok'] ? 'ok' : r.header['code']));
  t.ok(codes.includes('ok'), `some saves succeed: ${codes}`);
  t.ok(codes.includes('ERR_KVTC_BUSY'), `some are refused BUSY: ${codes}`);
});

t.test('store full', async (t) => {
  const s = await start({ stores: ['mem://?max=20KiB'] });
  const c = new TestClient(s.endpoint);
  t.teardown(async () => {
    c.close();
    await s.close();
  });
  await c.hello(compat);
  const [k, v] = kv(2000, 4);
  const r = await c.request('save', { key: 'dd'.repeat(16), token_start: 0, tokens: 2000, dtype: 'float32' }, [k, v]);
  t.equal(r.header['code'], 'ERR_KVTC_STORE_FULL');
  t.equal((await c.request('stats')).header['ok'], true, 'still serving');
});

t.test('file store: survives a restart, refuses a corrupt record on disk', async (t) => {
  const storeDir = tempDir(t, 'kvtc-files-');
  const stores = [`file://${storeDir}?max=1GiB`];
  const [k, v] = kv(200, 5);
  {
    const s = await start({ stores });
    const c = new TestClient(s.endpoint);
    await c.hello(compat);
    for (const key of ['e1'.repeat(16), 'e2'.repeat(16)]) {
      const r = await c.request('save', { key, token_start: 0, tokens: 200, dtype: 'float32' }, [k, v]);
      t.equal(r.header['handle'].tier, 'file');
    }
    c.close();
    await s.close();
  }
  const s = await start({ stores });
  const c = new TestClient(s.endpoint);
  t.teardown(async () => {
    c.close();
    await s.close();
  });
  await c.hello(compat);
  t.equal(
    (await c.request('lookup', { keys: ['e1'.repeat(16), 'e2'.repeat(16)] })).header['hits'],
    2,
    'records found after restart',
  );
  const ok = await c.request('load', { key: 'e1'.repeat(16), tokens: 200, dtype: 'float32' });
  t.equal(ok.header['ok'], true);
  // Flip one byte of the second record's file.
  const files: string[] = [];
  const walk = (d: string) => {
    for (const f of readdirSync(d)) {
      const p = join(d, f);
      if (statSync(p).isDirectory()) walk(p);
      else if (f.startsWith('e2')) files.push(p);
    }
  };
  walk(storeDir);
  t.equal(files.length, 1);
  const bytes = readFileSync(files[0]!);
  bytes[bytes.length - 7]! ^= 0x20;
  writeFileSync(files[0]!, bytes);
  const bad = await c.request('load', { key: 'e2'.repeat(16), tokens: 200, dtype: 'float32' });
  t.equal(bad.header['code'], 'ERR_KVTC_NOT_FOUND', 'a record failing its CRC is refused (a miss)');
  t.equal((await c.request('lookup', { keys: ['e2'.repeat(16)] })).header['hits'], 0, 'and removed');
});

t.test('tiers: memory in front of disk, promotion on load', async (t) => {
  const storeDir = tempDir(t, 'kvtc-tiers-');
  const s = await start({ stores: ['mem://?max=200KiB', `file://${storeDir}?max=1GiB`] });
  const c = new TestClient(s.endpoint);
  t.teardown(async () => {
    c.close();
    await s.close();
  });
  await c.hello(compat);
  const [k, v] = kv(300, 6);
  for (let i = 0; i < 8; i++)
    await c.request('save', { key: `f${i}`.repeat(16), token_start: 0, tokens: 300, dtype: 'float32', ratio: 4 }, [
      k,
      v,
    ]);
  const stats = (await c.request('stats')).header['stats'].stores;
  t.ok(
    stats[0].entries < 8,
    `memory tier evicted (${stats[0].entries} left, ${stats[0].bytes} bytes <= ${stats[0].max_bytes})`,
  );
  t.ok(stats[0].bytes <= stats[0].max_bytes);
  t.equal(stats[1].entries, 8, 'disk keeps all');
  const r = await c.request('load', { key: 'f0'.repeat(16), tokens: 300, dtype: 'float32' });
  t.equal(r.header['tier'], 'file', 'evicted record served from disk');
  const again = await c.request('load', { key: 'f0'.repeat(16), tokens: 300, dtype: 'float32' });
  t.equal(again.header['tier'], 'mem', 'and promoted to memory');
});

t.test('deflateLevel 0: saves store their chunks (larger), loads give the same KV', async (t) => {
  const [k, v] = kv(300, 8);
  const header = { key: 'ee'.repeat(16), token_start: 0, tokens: 300, dtype: 'float32', ratio: 16 };
  const results = [];
  for (const deflateLevel of [6, 0]) {
    const s = await start({ deflateLevel });
    const c = new TestClient(s.endpoint);
    try {
      await c.hello(compat);
      const save = await c.request('save', header, [k, v]);
      t.equal(save.header['ok'], true, JSON.stringify(save.header));
      const load = await c.request('load', { key: header.key, tokens: 300, dtype: 'float32' });
      results.push({ stored: save.header['handle'].stored_bytes as number, frames: load.frames });
    } finally {
      c.close();
      await s.close();
    }
  }
  const [coded, stored] = results;
  t.ok(stored!.stored > coded!.stored, `level 0 stores ${stored!.stored} bytes against ${coded!.stored}`);
  t.same(stored!.frames, coded!.frames, 'the same keys and values back');
});

t.test('GPU data plane ops on a CPU sidecar: coded refusals, then still serving', async (t) => {
  const s = await start();
  const c = new TestClient(s.endpoint);
  t.teardown(async () => {
    c.close();
    await s.close();
  });
  await c.hello(compat);
  const reg = await c.request('register_kv', {
    device_uuid: '0'.repeat(32),
    layout: { num_blocks: 4, block_size: 16, strides: [1, 1, 1, 1, 1] },
    allocations: [Buffer.alloc(64)],
    layer_allocation: [0, 0, 0, 0, 0],
    layer_offset: [0, 0, 0, 0, 0],
  });
  t.equal(reg.header['code'], 'ERR_KVTC_BACKEND_UNAVAILABLE', String(reg.header['message']));
  const save = await c.request('save_blocks', {
    region: 1,
    key: 'ab'.repeat(16),
    tokens: 16,
    token_start: 0,
    block_ids: [0],
  });
  t.equal(save.header['code'], 'ERR_KVTC_BACKEND_UNAVAILABLE');
  const many = await c.request('save_blocks', {
    region: 1,
    items: [{ key: 'cd'.repeat(16), tokens: 16, token_start: 0, block_ids: [0] }],
  });
  t.equal(many.header['code'], 'ERR_KVTC_BACKEND_UNAVAILABLE', 'several spans in one request: the same refusal');
  for (const items of ['x', [], [1], Array.from({ length: 1025 }, () => ({}))]) {
    const bad = await c.request('save_blocks', { region: 1, items });
    t.equal(
      bad.header['code'],
      'ERR_KVTC_PROTOCOL_MALFORMED',
      `items ${JSON.stringify(items).slice(0, 20)}: malformed`,
    );
  }
  const loadMany = await c.request('load_blocks', {
    region: 1,
    items: [{ key: 'cd'.repeat(16), tokens: 16, block_ids: [0] }],
  });
  t.equal(loadMany.header['code'], 'ERR_KVTC_BACKEND_UNAVAILABLE', 'several records in one load: the same refusal');
  for (const items of ['x', [], [1], Array.from({ length: 1025 }, () => ({}))]) {
    const bad = await c.request('load_blocks', { region: 1, items });
    t.equal(
      bad.header['code'],
      'ERR_KVTC_PROTOCOL_MALFORMED',
      `load items ${JSON.stringify(items).slice(0, 20)}: malformed`,
    );
  }
  const un = await c.request('unregister_kv', { region: 1 });
  t.equal(un.header['released'], false, 'nothing was registered');
  const stats = await c.request('stats');
  t.equal(stats.header['stats'].backend, 'cpu');
  t.equal(stats.header['stats'].kv_regions, 0);
});
