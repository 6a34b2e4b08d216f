// Typed errors with stable codes. The code names are part of the public API: they travel to
// TypeScript as `err.code`, over the wire in reply headers, and are listed in docs/errors.md.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace kvtc {

#define KVTC_ERROR_CODES(X)                                                        \
  X(kInvalidArgument, "ERR_KVTC_INVALID_ARGUMENT")                                 \
  X(kRecordEmpty, "ERR_KVTC_RECORD_EMPTY")                                         \
  X(kRecordTruncated, "ERR_KVTC_RECORD_TRUNCATED")                                 \
  X(kRecordBadMagic, "ERR_KVTC_RECORD_BAD_MAGIC")                                  \
  X(kRecordVersion, "ERR_KVTC_RECORD_VERSION")                                     \
  X(kRecordCorrupt, "ERR_KVTC_RECORD_CORRUPT")                                     \
  X(kRecordLength, "ERR_KVTC_RECORD_LENGTH")                                       \
  X(kRecordSizeMismatch, "ERR_KVTC_RECORD_SIZE_MISMATCH")                          \
  X(kCalibrationMismatch, "ERR_KVTC_CALIBRATION_MISMATCH")                         \
  X(kModelMismatch, "ERR_KVTC_MODEL_MISMATCH")                                     \
  X(kPlanUnknown, "ERR_KVTC_PLAN_UNKNOWN")                                         \
  X(kCalibrationInvalid, "ERR_KVTC_CALIBRATION_INVALID")                           \
  X(kDeflate, "ERR_KVTC_DEFLATE")                                                  \
  X(kBackendUnavailable, "ERR_KVTC_BACKEND_UNAVAILABLE")                           \
  X(kNumerical, "ERR_KVTC_NUMERICAL")                                              \
  X(kIpc, "ERR_KVTC_IPC")                                                          \
  X(kInternal, "ERR_KVTC_INTERNAL")

enum class ErrorCode : uint8_t {
#define KVTC_ENUM_ENTRY(name, str) name,
  KVTC_ERROR_CODES(KVTC_ENUM_ENTRY)
#undef KVTC_ENUM_ENTRY
};

inline const char* CodeName(ErrorCode code) {
  switch (code) {
#define KVTC_NAME_ENTRY(name, str) \
  case ErrorCode::name:            \
    return str;
    KVTC_ERROR_CODES(KVTC_NAME_ENTRY)
#undef KVTC_NAME_ENTRY
  }
  return "ERR_KVTC_INTERNAL";
}

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }
  const char* code_name() const { return CodeName(code_); }

 private:
  ErrorCode code_;
};

// KVTC_CHECK(cond, kRecordTruncated, "record is " << n << " bytes")
#define KVTC_CHECK(cond, code, msg)                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::ostringstream kvtc_check_os_;                              \
      kvtc_check_os_ << msg;                                          \
      throw ::kvtc::Error(::kvtc::ErrorCode::code, kvtc_check_os_.str()); \
    }                                                                 \
  } while (0)

}  // namespace kvtc

#include <sstream>
