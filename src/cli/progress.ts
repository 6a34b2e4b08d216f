/** A progress bar on stderr (hidden when stderr is not a terminal or KVTC_NO_PROGRESS is set). */
import cliProgress from 'cli-progress';

export interface Progress {
  update(label: string, fraction: number): void;
  stop(): void;
}

export function createProgress(enabled = process.stderr.isTTY && !process.env['KVTC_NO_PROGRESS']): Progress {
  if (!enabled) {
    let last = '';
    return {
      update(label) {
        if (label !== last) process.stderr.write(`${label}...\n`);
        last = label;
      },
      stop() {},
    };
  }
  const bar = new cliProgress.SingleBar(
    { format: '{label} [{bar}] {percentage}% | {duration_formatted}', stream: process.stderr, hideCursor: true },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    update(label, fraction) {
      if (!started) {
        bar.start(100, 0, { label });
        started = true;
      }
      bar.update(Math.round(fraction * 100), { label });
    },
    stop() {
      if (started) bar.stop();
    },
  };
}
