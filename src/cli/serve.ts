/** `kvtc-sidecar serve`: load the calibration, start the service, stop cleanly on SIGTERM/SIGINT. */
import { loadCalibration } from '../codec/calibration.js';
import { loadNative } from '../codec/native.js';
import { loadServeConfig, type ServeConfig } from '../core/config.js';
import { KvtcError } from '../core/errors.js';
import { createLogger } from '../core/log.js';
import { Sidecar } from '../service/sidecar.js';

export async function runServe(flags: Partial<ServeConfig> & { config?: string }): Promise<void> {
  const config = loadServeConfig(flags);
  const log = createLogger(config.logLevel);
  const build = loadNative().buildInfo();
  if (config.backend === 'cuda' && !build.cuda) {
    throw new KvtcError(
      'ERR_KVTC_BACKEND_UNAVAILABLE',
      'backend cuda requested but this addon was built without CUDA (KVTC_WITH_CUDA=OFF)',
    );
  }
  if (config.backend === 'cuda' && !build.cudaDevice) {
    throw new KvtcError('ERR_KVTC_BACKEND_UNAVAILABLE', 'backend cuda requested but no CUDA device is usable');
  }
  const backend = config.backend === 'auto' ? (build.cuda && build.cudaDevice ? 'cuda' : 'cpu') : config.backend;
  if (config.backend === 'auto' && backend === 'cpu')
    log.info(
      { blas: build.blas },
      `backend auto: cpu (${build.cuda ? 'no CUDA device is usable' : 'addon built without CUDA'})`,
    );
  if (config.projection === 'fp8' && backend !== 'cuda')
    throw new KvtcError(
      'ERR_KVTC_INVALID_ARGUMENT',
      `projection fp8 runs on the CUDA backend; this sidecar's backend is ${backend}`,
    );
  const calibration = await loadCalibration(config.calibration);
  const sidecar = await Sidecar.start({
    endpoint: config.endpoint,
    calibration,
    stores: config.stores,
    log,
    maxInFlight: config.maxInFlight,
    maxFrameBytes: config.maxFrameBytes,
    ...(config.ratio !== undefined ? { defaultRatio: config.ratio } : {}),
    windowTokens: config.windowTokens,
    sinkTokens: config.sinkTokens,
    deflateLevel: config.deflateLevel,
    backend,
    projection: config.projection,
    ...(config.metricsPort !== undefined ? { metricsPort: config.metricsPort } : {}),
  });
  // Machine-readable readiness line for supervisors and tests.
  process.stdout.write(
    JSON.stringify({
      ready: true,
      endpoint: sidecar.endpoint,
      metrics: sidecar.metricsAddress,
      calibration: calibration.id,
    }) + '\n',
  );
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'stopping: finishing in-flight work');
      sidecar.close().then(resolve, (err: unknown) => {
        log.error({ err }, 'shutdown failed');
        resolve();
      });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}
