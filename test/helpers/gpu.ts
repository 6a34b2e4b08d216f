import { loadNative } from '../../src/codec/native.js';

const info = loadNative().buildInfo();

/**
 * Why the GPU tests skip on this machine, or false where they run (a CUDA build with a device).
 * They run on the GPU machine through scripts/gpu-run.sh; CI has no GPU and says so.
 */
export const gpuSkip: string | false = !info.cuda
  ? 'addon built without CUDA (KVTC_WITH_CUDA=OFF): GPU tests run on the GPU machine via scripts/gpu-run.sh'
  : !info.cudaDevice
    ? 'no CUDA device'
    : false;
