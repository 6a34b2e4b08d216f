/** Public API of kvtc-sidecar. */
export { encode, decode, inspectRecord, ENCODE_DEFAULTS, dtypeBytes } from './codec/codec.js';
export type {
  KvChunk,
  KvDtype,
  EncodeOptions,
  DecodeExpectation,
  DecodedChunk,
  RecordInfo,
  RecordSection,
  Projection,
} from './codec/codec.js';
export { Calibration, loadCalibration, parseCalibration } from './codec/calibration.js';
export type { CalibrationMetadata, ModelInfo, PlanInfo, RopeJson, StreamPlan } from './codec/calibration.js';
export { fitCalibration, planCalibration } from './calibrate/fit.js';
export type { FitOptions, PlanOptions, StreamAxes } from './calibrate/fit.js';
export { KvtcError, isKvtcError, ERROR_CODES } from './core/errors.js';
export type { ErrorCode } from './core/errors.js';
