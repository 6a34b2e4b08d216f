/** The root pino logger. Components take `logger.child({component})`; payloads are never logged. */
import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

export function createLogger(level: LevelWithSilent = 'info'): Logger {
  return pino({
    level,
    base: { pid: process.pid, name: 'kvtc-sidecar' },
    redact: { paths: ['*.keys', '*.values', '*.record', '*.payload'], censor: '[bytes]' },
  });
}
