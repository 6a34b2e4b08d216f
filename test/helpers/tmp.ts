import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Anything with tap's `teardown` (a test, or the root `t` for a file-wide folder). */
interface Teardown {
  teardown(fn: () => void): void;
}

/**
 * A fresh folder under the OS temporary directory, removed when `t` ends, so that test runs
 * leave nothing behind (stores and captures here reach hundreds of MiB per run).
 */
export function tempDir(t: Teardown, prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
