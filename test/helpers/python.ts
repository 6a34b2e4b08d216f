/** The project's Python (the .venv scripts/setup.sh makes, or $KVTC_PYTHON) for capture fixtures. */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';

export const ROOT = resolve(import.meta.dirname, '..', '..');
export const STORIES_MODEL = resolve(ROOT, '..', 'shared', 'models', 'stories260K', 'hf');
export const DATA = join(ROOT, 'connector-py', 'kvtc_connector', 'data');

export function python(): string | undefined {
  const candidates = [process.env['KVTC_PYTHON'], join(ROOT, '.venv', 'bin', 'python')].filter(Boolean) as string[];
  for (const py of candidates) {
    if (!existsSync(py)) continue;
    const ok = spawnSync(py, ['-c', 'import torch, transformers, kvtc_connector'], { stdio: 'ignore' }).status === 0;
    if (ok) return py;
  }
  return undefined;
}

/** Captures stories260K KV for a texts file into test/.cache (once), returning the folder. */
export function captureStories(texts: string, name: string, maxTokens = 512): string {
  const py = python();
  if (!py) throw new Error('no Python with torch, transformers and kvtc_connector: run scripts/setup.sh');
  const out = join(ROOT, 'test', '.cache', name);
  if (!existsSync(join(out, 'manifest.json'))) {
    mkdirSync(out, { recursive: true });
    execFileSync(
      py,
      [
        '-m',
        'kvtc_connector.capture',
        '--model',
        STORIES_MODEL,
        '--texts',
        join(DATA, texts),
        '--out',
        out,
        '--max-tokens',
        String(maxTokens),
      ],
      { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, HF_HUB_OFFLINE: '1', KVTC_NO_PROGRESS: '1' } },
    );
  }
  return out;
}
