import { spawnSync } from 'node:child_process';

import t from 'tap';

import { decodeHeader, encodeHeader } from '../../src/protocol/frames.js';
import { python } from '../helpers/python.js';

t.test('integers beyond 32 bits stay integers (msgpack int64), nested too', async (t) => {
  const h = {
    big: 2 ** 40 + 3,
    neg: -(2 ** 40),
    small: 7,
    f: 0.5,
    nested: { list: [2 ** 33, 1] },
    b: Buffer.from([1, 2]),
  };
  const bytes = encodeHeader(h);
  t.same(decodeHeader(bytes), h, 'round trip in Node');
  // A float64 (0xcb) for 2^40 + 3 would start with these bytes; an int64 (0xd3) with 00 00 01 00.
  t.notOk(bytes.includes(Buffer.from([0xcb, 0x42, 0x70])), 'no float64 for integers');
  t.ok(bytes.includes(Buffer.from([0xd3, 0x00, 0x00, 0x01, 0x00])), 'int64 for 2^40 + 3');

  const py = python();
  if (!py) {
    t.comment('skipped the Python check: no project Python (.venv) with msgpack');
    return;
  }
  const r = spawnSync(
    py,
    [
      '-c',
      'import msgpack,sys; h=msgpack.unpackb(sys.stdin.buffer.read()); print(type(h["big"]).__name__, h["big"], h["nested"]["list"][0])',
    ],
    {
      input: bytes,
    },
  );
  t.equal(r.stdout.toString().trim(), `int ${2 ** 40 + 3} ${2 ** 33}`, 'Python reads ints');
});

t.test('headers that are not msgpack maps are refused with a code', async (t) => {
  t.throws(() => decodeHeader(Buffer.from([0x82, 0xa1])), { code: 'ERR_KVTC_PROTOCOL_MALFORMED' });
  t.throws(() => decodeHeader(encodeHeader([1, 2] as unknown as Record<string, unknown>)), {
    code: 'ERR_KVTC_PROTOCOL_MALFORMED',
  });
});
