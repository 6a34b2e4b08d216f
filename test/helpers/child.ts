// GPU tests whose subject is a setting the addon reads once per process (an environment knob) run
// their own file again as a child with the other setting and compare what both computed.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/**
 * Runs the test file at `fileUrl` (its `import.meta.url`) as a child with `env` and `flag`=1 set
 * (the file computes and prints its JSON when it sees `flag`), and returns what it printed.
 */
export function runSelf<T>(fileUrl: string, flag: string, env: Record<string, string>): T {
  const run = spawnSync(process.execPath, [fileURLToPath(fileUrl)], {
    env: { ...process.env, [flag]: '1', ...env },
    encoding: 'utf8',
    maxBuffer: 1 << 30,
  });
  assert.equal(run.status, 0, `child (${JSON.stringify(env)}) failed: ${run.stderr}`);
  return JSON.parse(run.stdout) as T;
}
