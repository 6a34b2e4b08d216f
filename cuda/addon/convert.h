// JS <-> C++ conversion helpers for the N-API layer. Every JS value is converted to plain C++
// before work is queued (nothing V8-owned is touched off the JS thread).
#pragma once

#include <napi.h>

#include <string>
#include <vector>

#include "kvtc/codec.h"
#include "kvtc/error.h"

namespace kvtc::addon {

inline Napi::Error CodedError(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  return err;
}

inline Napi::Value Prop(const Napi::Object& o, const char* name) {
  Napi::Value v = o.Get(name);
  KVTC_CHECK(!v.IsUndefined(), kInvalidArgument, "Expected a value for " << name << " but received undefined");
  return v;
}

inline double Number(const Napi::Object& o, const char* name) {
  Napi::Value v = Prop(o, name);
  KVTC_CHECK(v.IsNumber(), kInvalidArgument, "Expected a number for " << name);
  return v.As<Napi::Number>().DoubleValue();
}

inline uint32_t Uint(const Napi::Object& o, const char* name) {
  const double d = Number(o, name);
  KVTC_CHECK(d >= 0 && d <= 4294967295.0 && d == static_cast<double>(static_cast<uint64_t>(d)), kInvalidArgument,
             "Expected an unsigned integer for " << name << " but received " << d);
  return static_cast<uint32_t>(d);
}

// An optional property: `fallback` when absent (undefined).
inline uint32_t OptionalUint(const Napi::Object& o, const char* name, uint32_t fallback) {
  return o.Get(name).IsUndefined() ? fallback : Uint(o, name);
}
inline bool OptionalBool(const Napi::Object& o, const char* name) { return o.Get(name).ToBoolean(); }

inline std::string String(const Napi::Object& o, const char* name) {
  Napi::Value v = Prop(o, name);
  KVTC_CHECK(v.IsString(), kInvalidArgument, "Expected a string for " << name);
  return v.As<Napi::String>().Utf8Value();
}

// A view of a TypedArray or Buffer's bytes (valid while the JS object is alive).
struct Bytes {
  const uint8_t* data = nullptr;
  size_t size = 0;
};

inline Bytes ViewBytes(const Napi::Value& v, const char* name) {
  KVTC_CHECK(v.IsTypedArray() || v.IsArrayBuffer(), kInvalidArgument,
             "Expected a TypedArray or Buffer for " << name);
  if (v.IsArrayBuffer()) {
    auto ab = v.As<Napi::ArrayBuffer>();
    return {static_cast<const uint8_t*>(ab.Data()), ab.ByteLength()};
  }
  auto ta = v.As<Napi::TypedArray>();
  const auto* base = static_cast<const uint8_t*>(ta.ArrayBuffer().Data());
  return {base ? base + ta.ByteOffset() : nullptr, ta.ByteLength()};
}

inline std::vector<float> CopyFloats(const Napi::Value& v, const char* name) {
  KVTC_CHECK(v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_float32_array, kInvalidArgument,
             "Expected a Float32Array for " << name);
  Bytes b = ViewBytes(v, name);
  std::vector<float> out(b.size / 4);
  if (b.size) std::memcpy(out.data(), b.data, b.size);
  return out;
}

inline Napi::Float32Array NewFloats(Napi::Env env, const float* data, size_t count) {
  auto arr = Napi::Float32Array::New(env, count);
  if (count) std::memcpy(arr.Data(), data, count * 4);
  return arr;
}

inline Napi::Buffer<uint8_t> NewBuffer(Napi::Env env, std::vector<uint8_t>&& bytes) {
  auto* owned = new std::vector<uint8_t>(std::move(bytes));
  return Napi::Buffer<uint8_t>::New(env, owned->data(), owned->size(),
                                    [](Napi::Env, uint8_t*, std::vector<uint8_t>* v) { delete v; }, owned);
}

RopeParams ParseRope(const Napi::Object& o);
Plan ParsePlan(const Napi::Object& o);
Napi::Object PlanToJs(Napi::Env env, const Plan& plan);
Napi::Object HeaderToJs(Napi::Env env, const RecordHeader& h);

}  // namespace kvtc::addon
