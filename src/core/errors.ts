/**
 * Typed errors with stable codes. The native addon sets `code` on its errors; {@link fromNative}
 * wraps them as {@link KvtcError} with the JavaScript stack captured before the async hop.
 * docs/errors.md is the table of record.
 */

/** Every error code the project emits. Stable: they travel over the wire and into logs. */
export const ERROR_CODES = [
  'ERR_KVTC_INVALID_ARGUMENT',
  'ERR_KVTC_RECORD_EMPTY',
  'ERR_KVTC_RECORD_TRUNCATED',
  'ERR_KVTC_RECORD_BAD_MAGIC',
  'ERR_KVTC_RECORD_VERSION',
  'ERR_KVTC_RECORD_CORRUPT',
  'ERR_KVTC_RECORD_LENGTH',
  'ERR_KVTC_RECORD_SIZE_MISMATCH',
  'ERR_KVTC_CALIBRATION_MISMATCH',
  'ERR_KVTC_MODEL_MISMATCH',
  'ERR_KVTC_PLAN_UNKNOWN',
  'ERR_KVTC_CALIBRATION_INVALID',
  'ERR_KVTC_DEFLATE',
  'ERR_KVTC_BACKEND_UNAVAILABLE',
  'ERR_KVTC_NUMERICAL',
  'ERR_KVTC_IPC',
  'ERR_KVTC_DEVICE_UNKNOWN',
  'ERR_KVTC_KV_UNREGISTERED',
  'ERR_KVTC_NATIVE_LOAD',
  'ERR_KVTC_PROTOCOL_MALFORMED',
  'ERR_KVTC_PROTOCOL_VERSION',
  'ERR_KVTC_PROTOCOL_OVERSIZED',
  'ERR_KVTC_HANDSHAKE_REQUIRED',
  'ERR_KVTC_BUSY',
  'ERR_KVTC_DEADLINE',
  'ERR_KVTC_NOT_FOUND',
  'ERR_KVTC_STORE_FULL',
  'ERR_KVTC_STORE_IO',
  'ERR_KVTC_SHUTTING_DOWN',
  'ERR_KVTC_INTERNAL',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

const KNOWN = new Set<string>(ERROR_CODES);

/** Base class of every error the project throws on purpose. */
export class KvtcError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KvtcError';
    this.code = code;
  }
}

/** True when `err` is a {@link KvtcError}, optionally with the given code. */
export function isKvtcError(err: unknown, code?: ErrorCode): err is KvtcError {
  return err instanceof KvtcError && (code === undefined || err.code === code);
}

/**
 * Converts an error thrown by the native addon into a {@link KvtcError}. `stack` is an Error
 * created by the caller before the asynchronous call, so the stack points at user code.
 */
export function fromNative(err: unknown, stack?: Error): KvtcError {
  if (err instanceof KvtcError) return err;
  const e = err as { code?: unknown; message?: unknown };
  const code = typeof e?.code === 'string' && KNOWN.has(e.code) ? (e.code as ErrorCode) : 'ERR_KVTC_INTERNAL';
  const out = new KvtcError(code, typeof e?.message === 'string' ? e.message : String(err), {
    cause: err,
  });
  if (stack?.stack) out.stack = `${out.name} [${code}]: ${out.message}\n${stack.stack.split('\n').slice(1).join('\n')}`;
  return out;
}

/** Runs a synchronous native call; its error becomes a {@link KvtcError}. */
export function callNative<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw fromNative(err);
  }
}

/**
 * Awaits a native job; its error becomes a {@link KvtcError} whose stack points at the caller
 * (captured before the job starts: an asynchronous error has no user frames of its own).
 */
export async function awaitNative<T>(job: () => Promise<T>): Promise<T> {
  const stack = new Error();
  Error.captureStackTrace(stack, awaitNative);
  try {
    return await job();
  } catch (err) {
    throw fromNative(err, stack);
  }
}

/** The parameter-error sentence used everywhere: "Expected <what> for <name> but received <value>". */
export function invalidArgument(what: string, name: string, value: unknown): KvtcError {
  const shown = typeof value === 'string' ? `'${value}'` : String(value);
  return new KvtcError(
    'ERR_KVTC_INVALID_ARGUMENT',
    `Expected ${what} for ${name} but received ${shown} of type ${typeof value}`,
  );
}
