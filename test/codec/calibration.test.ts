import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { canonicalJson, loadCalibration, parseCalibration } from '../../src/codec/calibration.js';
import { parseSafetensors, serializeSafetensors } from '../../src/codec/safetensors.js';
import { modelInfo, syntheticCalibration } from '../helpers/calibration.js';
import { tempDir } from '../helpers/tmp.js';

const cal = await syntheticCalibration(modelInfo(2, 2, 8), { ratios: [4, 8] });
const dir = tempDir(t, 'kvtc-cal-');

t.test('a calibration file round-trips and keeps its id', async (t) => {
  const file = join(dir, 'ok.safetensors');
  writeFileSync(file, cal.serialize());
  const back = await loadCalibration(file);
  t.equal(back.id, cal.id);
  t.match(back.id, /^[0-9a-f]{32}$/);
  t.same(back.plans, cal.plans);
  t.equal(back.planId(8), 1);
  t.throws(() => back.planId(3), { code: 'ERR_KVTC_PLAN_UNKNOWN' });
});

t.test('a modified file is refused, naming the file', async (t) => {
  const bytes = Buffer.from(cal.serialize());
  bytes[bytes.length - 5]! ^= 0x10; // one bit of the last tensor
  const file = join(dir, 'tampered.safetensors');
  writeFileSync(file, bytes);
  await t.rejects(loadCalibration(file), {
    code: 'ERR_KVTC_CALIBRATION_INVALID',
    message: /tampered\.safetensors: content hash/,
  });
});

function rewrite(mutate: (meta: Record<string, any>) => void): Buffer {
  const st = parseSafetensors(cal.serialize());
  const meta = JSON.parse(st.metadata['kvtc']!);
  mutate(meta);
  return serializeSafetensors([...st.tensors.entries()], { kvtc: canonicalJson(meta) });
}

t.test('inconsistent calibrations are refused with clear errors', async (t) => {
  t.throws(() => parseCalibration(Buffer.alloc(3), 'x.safetensors'), {
    code: 'ERR_KVTC_CALIBRATION_INVALID',
    message: /x\.safetensors/,
  });
  t.throws(
    () =>
      parseCalibration(
        rewrite((m) => delete m.model.rope),
        'norope',
      ),
    { message: /norope: RoPE parameters are missing/ },
  );
  t.throws(
    () =>
      parseCalibration(
        rewrite((m) => (m.model.layers = 3)),
        'shape',
      ),
    { message: /shape: keys.mean has shape/ },
  );
  t.throws(
    () =>
      parseCalibration(
        rewrite((m) => (m.plans[0].keys.groups[0][1] = 5)),
        'plan',
      ),
    {
      code: 'ERR_KVTC_CALIBRATION_INVALID',
    },
  );
  await t.rejects(loadCalibration(join(dir, 'missing.safetensors')), {
    code: 'ERR_KVTC_CALIBRATION_INVALID',
    message: /missing\.safetensors/,
  });
});
