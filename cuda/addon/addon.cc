// The addon's complete export table. Heavy work runs on the libuv pool through Job (an
// AsyncWorker resolving a Promise); errors reach JS with their stable `code`.
#include <napi.h>

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>

#include "convert.h"
#include "kvtc/calibrate.h"
#include "kvtc/codec.h"
#include "kvtc/crc32c.h"
#include "kvtc/host_copy.h"
#include "kvtc/record_memory.h"
#include "kvtc/entropy.h"
#include "kvtc/numeric.h"

#if KVTC_WITH_CUDA
#include <mutex>

#include <cuda_runtime_api.h>

#include <map>

#include "kvtc/cuda_codec.h"
#include "kvtc/cuda_paged.h"
#endif

extern "C" char* openblas_get_config(void);

namespace kvtc::addon {
namespace {

std::atomic<uint64_t> g_jobs_queued{0}, g_jobs_running{0}, g_jobs_done{0}, g_jobs_failed{0};

class Job : public Napi::AsyncWorker {
 public:
  using Run = std::function<void(const std::function<void(double)>&)>;
  using Finish = std::function<Napi::Value(Napi::Env)>;

  // `keep` holds JS buffers the job reads; `progress` (may be empty) receives fractions in [0, 1].
  Job(Napi::Env env, Run run, Finish finish, std::vector<Napi::Value> keep, Napi::Value progress)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), run_(std::move(run)),
        finish_(std::move(finish)) {
    for (auto& v : keep) keep_.push_back(Napi::Persistent(v.As<Napi::Object>()));
    if (progress.IsFunction()) {
      tsfn_ = Napi::ThreadSafeFunction::New(env, progress.As<Napi::Function>(), "kvtc-progress", 0, 1);
      has_progress_ = true;
    }
    ++g_jobs_queued;
  }
  ~Job() override {
    if (has_progress_) tsfn_.Release();
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    --g_jobs_queued;
    ++g_jobs_running;
    std::function<void(double)> report;
    if (has_progress_) {
      report = [this](double f) {
        auto* value = new double(f);
        if (tsfn_.NonBlockingCall(value, [](Napi::Env env, Napi::Function cb, double* v) {
              cb.Call({Napi::Number::New(env, *v)});
              delete v;
            }) != napi_ok) {
          delete value;
        }
      };
    }
    try {
      run_(report);
    } catch (const Error& e) {
      code_ = e.code_name();
      SetError(e.what());
    } catch (const std::bad_alloc&) {
      code_ = CodeName(ErrorCode::kInternal);
      SetError("out of memory");
    } catch (const std::exception& e) {
      code_ = CodeName(ErrorCode::kInternal);
      SetError(e.what());
    }
    --g_jobs_running;
  }
  void OnOK() override {
    ++g_jobs_done;
    try {
      deferred_.Resolve(finish_(Env()));
    } catch (const Error& e) {
      deferred_.Reject(CodedError(Env(), e.code_name(), e.what()).Value());
    }
  }
  void OnError(const Napi::Error& e) override {
    ++g_jobs_failed;
    deferred_.Reject(CodedError(Env(), code_, e.Message()).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Run run_;
  Finish finish_;
  std::vector<Napi::ObjectReference> keep_;
  Napi::ThreadSafeFunction tsfn_;
  bool has_progress_ = false;
  const char* code_ = "ERR_KVTC_INTERNAL";
};

// Runs `fn` on the JS thread, turning kvtc::Error into a coded JS exception.
template <typename F>
Napi::Value Guard(const Napi::CallbackInfo& info, F&& fn) {
  try {
    return fn();
  } catch (const Error& e) {
    CodedError(info.Env(), e.code_name(), e.what()).ThrowAsJavaScriptException();
  } catch (const std::exception& e) {
    CodedError(info.Env(), CodeName(ErrorCode::kInternal), e.what()).ThrowAsJavaScriptException();
  }
  return info.Env().Undefined();
}

Napi::Object ArgObject(const Napi::CallbackInfo& info, size_t i, const char* name) {
  KVTC_CHECK(info.Length() > i && info[i].IsObject(), kInvalidArgument, "Expected an object for " << name);
  return info[i].As<Napi::Object>();
}

// --- Calibration: an immutable native copy of mean, basis and plans ------------------------

class CalibrationWrap : public Napi::ObjectWrap<CalibrationWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Calibration",
                       {InstanceAccessor<&CalibrationWrap::FeatureDim>("featureDim"),
                        InstanceAccessor<&CalibrationWrap::PlanCount>("planCount")});
  }

  explicit CalibrationWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<CalibrationWrap>(info) {
    Guard(info, [&]() -> Napi::Value {
      Napi::Object d = ArgObject(info, 0, "calibration");
      auto c = std::make_shared<Calibration>();
      Bytes id = ViewBytes(Prop(d, "id"), "id"), fp = ViewBytes(Prop(d, "modelFingerprint"), "modelFingerprint");
      KVTC_CHECK(id.size == 16 && fp.size == 16, kInvalidArgument, "id and modelFingerprint must be 16 bytes");
      std::memcpy(c->id.data(), id.data, 16);
      std::memcpy(c->model_fingerprint.data(), fp.data, 16);
      c->layers = Uint(d, "layers");
      c->kv_heads = Uint(d, "kvHeads");
      c->head_dim = Uint(d, "headDim");
      c->rope = ParseRope(Prop(d, "rope").As<Napi::Object>());
      for (int k = 0; k < 2; ++k) {
        Napi::Object s = Prop(d, k == 0 ? "keys" : "values").As<Napi::Object>();
        StreamBasis& b = k == 0 ? c->keys : c->values;
        b.mean = CopyFloats(Prop(s, "mean"), "mean");
        b.basis = CopyFloats(Prop(s, "basis"), "basis");
        b.rank = Uint(s, "rank");
      }
      Napi::Value plans = Prop(d, "plans");
      KVTC_CHECK(plans.IsArray(), kInvalidArgument, "Expected an array for plans");
      auto arr = plans.As<Napi::Array>();
      for (uint32_t i = 0; i < arr.Length(); ++i) {
        Napi::Object pp = arr.Get(i).As<Napi::Object>();
        c->plans.push_back({ParsePlan(Prop(pp, "keys").As<Napi::Object>()),
                            ParsePlan(Prop(pp, "values").As<Napi::Object>())});
      }
      ValidateCalibration(*c);
      calibration_ = std::move(c);
      return info.Env().Undefined();
    });
  }

  std::shared_ptr<const Calibration> get() const { return calibration_; }

#if KVTC_WITH_CUDA
  // The copy on `device`, uploaded on first use by a CUDA job there (a paged job runs on its
  // cache's device; the others on device 0).
  std::shared_ptr<cuda::DeviceCalibration> device(int device = 0) {
    std::lock_guard<std::mutex> lock(devices_mu_);
    std::shared_ptr<cuda::DeviceCalibration>& d = devices_[device];
    if (!d) d = cuda::Upload(*calibration_, device);
    return d;
  }
#endif

 private:
  Napi::Value FeatureDim(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), calibration_ ? calibration_->feature_dim() : 0);
  }
  Napi::Value PlanCount(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), calibration_ ? calibration_->plans.size() : 0);
  }
  std::shared_ptr<const Calibration> calibration_;
#if KVTC_WITH_CUDA
  std::mutex devices_mu_;
  std::map<int, std::shared_ptr<cuda::DeviceCalibration>> devices_;
#endif
};

std::shared_ptr<const Calibration> UnwrapCalibration(const Napi::CallbackInfo& info, Napi::FunctionReference& ctor) {
  KVTC_CHECK(info.Length() > 0 && info[0].IsObject() && info[0].As<Napi::Object>().InstanceOf(ctor.Value()),
             kInvalidArgument, "Expected a native Calibration as the first argument");
  auto c = CalibrationWrap::Unwrap(info[0].As<Napi::Object>())->get();
  KVTC_CHECK(c != nullptr, kInvalidArgument, "Calibration was not constructed");
  return c;
}

Napi::FunctionReference* g_calibration_ctor = nullptr;

// "cpu" or "cuda": the CUDA backend needs this build and a device.
bool WantsCuda(const Napi::Value& v) {
  if (!v.IsString()) return false;
  const std::string b = v.As<Napi::String>().Utf8Value();
  KVTC_CHECK(b == "cpu" || b == "cuda", kInvalidArgument, "Expected backend 'cpu' or 'cuda' but received '" << b << "'");
#if KVTC_WITH_CUDA
  KVTC_CHECK(b != "cuda" || cuda::Available(), kBackendUnavailable, "backend cuda requested but no CUDA device is usable");
#else
  KVTC_CHECK(b != "cuda", kBackendUnavailable, "backend cuda requested but this addon was built without CUDA");
#endif
  return b == "cuda";
}

CalibrationWrap* UnwrapWrap(const Napi::CallbackInfo& info) { return CalibrationWrap::Unwrap(info[0].As<Napi::Object>()); }

KvDtype ParseDtype(uint32_t d) {
  KVTC_CHECK(d <= 2, kInvalidArgument, "Expected dtype 0 (float32), 1 (float16) or 2 (bfloat16) but received " << d);
  return static_cast<KvDtype>(d);
}

#if KVTC_WITH_CUDA
// A record from the CUDA backend handed to JavaScript without a copy.
Napi::Buffer<uint8_t> NewHostBuffer(Napi::Env env, cuda::HostBytes&& bytes) {
  auto* owned = new cuda::HostBytes(std::move(bytes));
  return Napi::Buffer<uint8_t>::New(env, owned->data.get(), owned->size,
                                    [](Napi::Env, uint8_t*, cuda::HostBytes* b) { delete b; }, owned);
}

#endif

// 'fp32', 'bf16' or 'fp8' (absent: fp32 on the CPU, bf16 on CUDA): the projection's operand
// precision (codec.h). The CPU backend rounds its fp32 operands to it (a simulation, for quality
// figures); the CUDA backend runs its GEMMs in bf16 or, for 'fp8', on e4m3 operands (cuda_fp8.cuh).
Projection ParseProjection(const Napi::Value& v, bool use_cuda) {
  if (v.IsUndefined() || v.IsNull()) return use_cuda ? Projection::kBf16 : Projection::kFp32;
  KVTC_CHECK(v.IsString(), kInvalidArgument, "Expected projection 'fp32', 'bf16' or 'fp8'");
  const std::string s = v.As<Napi::String>().Utf8Value();
  Projection p;
  if (s == "fp32") {
    p = Projection::kFp32;
  } else if (s == "bf16") {
    p = Projection::kBf16;
  } else {
    KVTC_CHECK(s == "fp8", kInvalidArgument, "Expected projection 'fp32', 'bf16' or 'fp8' but received '" << s << "'");
    p = Projection::kFp8;
  }
  KVTC_CHECK(!use_cuda || p != Projection::kFp32, kInvalidArgument,
             "the CUDA backend projects in bf16 or fp8; projection 'fp32' is a CPU backend option");
  return p;
}

// The fields every encode job shares (tokens, position, plan, raw spans, DEFLATE settings).
void ParseJobOptions(const Napi::Object& j, EncodeJob& job) {
  job.tokens = Uint(j, "tokens");
  job.token_start = Uint(j, "tokenStart");
  job.plan_id = static_cast<uint16_t>(Uint(j, "planId"));
  job.sink_tokens = Uint(j, "sinkTokens");
  job.window_tokens = Uint(j, "windowTokens");
  job.deflate_level = static_cast<int>(Uint(j, "deflateLevel"));
  job.chunk_bytes = Uint(j, "chunkBytes");
  job.entry_stride = OptionalUint(j, "entryStride", 0);
}

// encode(calibration, job) -> Promise<Buffer>
Napi::Value EncodeJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    auto cal = UnwrapCalibration(info, *g_calibration_ctor);
    Napi::Object j = ArgObject(info, 1, "job");
    auto job = std::make_shared<EncodeJob>();
    job->dtype = ParseDtype(Uint(j, "dtype"));
    ParseJobOptions(j, *job);
    Napi::Value keys = Prop(j, "keys"), values = Prop(j, "values");
    Bytes k = ViewBytes(keys, "keys"), v = ViewBytes(values, "values");
    const uint64_t expected = static_cast<uint64_t>(job->tokens) * cal->feature_dim() * DtypeBytes(job->dtype);
    KVTC_CHECK(k.size == expected && v.size == expected, kInvalidArgument,
               "Expected keys and values of " << expected << " bytes (" << job->tokens << " tokens x "
                                              << cal->feature_dim() << " features) but received " << k.size
                                              << " and " << v.size);
    job->keys = k.data;
    job->values = v.data;
    auto out = std::make_shared<std::vector<uint8_t>>();
    const bool use_cuda = WantsCuda(j.Get("backend"));
    job->projection = ParseProjection(j.Get("projection"), use_cuda);
#if KVTC_WITH_CUDA
    std::shared_ptr<cuda::DeviceCalibration> dev = use_cuda ? UnwrapWrap(info)->device() : nullptr;
    auto gpu_out = std::make_shared<cuda::HostBytes>();
#else
    (void)use_cuda;
    std::shared_ptr<void> dev;
#endif
    auto* w = new Job(
        info.Env(),
        [=](const auto&) {
#if KVTC_WITH_CUDA
          if (dev) {
            *gpu_out = cuda::Encode(*cal, *dev, *job, /*device_input=*/false);
            return;
          }
#endif
          *out = Encode(*cal, *job);
        },
        [=](Napi::Env env) -> Napi::Value {
#if KVTC_WITH_CUDA
          if (dev) return NewHostBuffer(env, std::move(*gpu_out));
#endif
          return NewBuffer(env, std::move(*out));
        },
        {keys, values}, info.Env().Undefined());
    w->Queue();
    return w->Promise();
  });
}

// decode(calibration, record, expectedBytes, backend?, projection?) -> Promise<{keys, values, header}>
Napi::Value DecodeJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    auto cal = UnwrapCalibration(info, *g_calibration_ctor);
    KVTC_CHECK(info.Length() > 2 && info[2].IsNumber(), kInvalidArgument, "Expected a number for expectedBytes");
    Bytes rec = ViewBytes(info[1], "record");
    const double expected = info[2].As<Napi::Number>().DoubleValue();
    KVTC_CHECK(expected >= 0, kInvalidArgument, "Expected expectedBytes >= 0");
    auto out = std::make_shared<DecodeResult>();
    const bool use_cuda = info.Length() > 3 && WantsCuda(info[3]);
    const Projection projection = ParseProjection(info.Length() > 4 ? info[4] : info.Env().Undefined(), use_cuda);
#if KVTC_WITH_CUDA
    std::shared_ptr<cuda::DeviceCalibration> dev = use_cuda ? UnwrapWrap(info)->device() : nullptr;
#else
    (void)use_cuda;
    std::shared_ptr<void> dev;
#endif
    auto* w = new Job(
        info.Env(),
        [cal, rec, expected, out, dev, projection](const auto&) {
#if KVTC_WITH_CUDA
          if (dev) {
            *out = cuda::Decode(*cal, *dev, rec.data, rec.size, static_cast<uint64_t>(expected), projection);
            return;
          }
#endif
          *out = Decode(*cal, rec.data, rec.size, static_cast<uint64_t>(expected), projection);
        },
        [out](Napi::Env env) -> Napi::Value {
          Napi::Object o = Napi::Object::New(env);
          o.Set("header", HeaderToJs(env, out->header));
          o.Set("keys", NewBuffer(env, std::move(out->keys)));
          o.Set("values", NewBuffer(env, std::move(out->values)));
          return o;
        },
        {info[1]}, info.Env().Undefined());
    w->Queue();
    return w->Promise();
  });
}

// inspect(record) -> header (validates structure and header CRC, not section CRCs)
Napi::Value InspectJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    KVTC_CHECK(info.Length() > 0, kInvalidArgument, "Expected a record");
    Bytes rec = ViewBytes(info[0], "record");
    return HeaderToJs(info.Env(), ReadHeader(rec.data, rec.size));
  });
}

// verify(record) -> true when the header and every section CRC are intact (stores use it to
// refuse a damaged file before the codec sees it).
Napi::Value VerifyJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    KVTC_CHECK(info.Length() > 0, kInvalidArgument, "Expected a record");
    Bytes rec = ViewBytes(info[0], "record");
    try {
      RecordHeader h = ReadHeader(rec.data, rec.size);
      VerifySections(h, rec.data);
    } catch (const Error&) {
      return Napi::Boolean::New(info.Env(), false);
    }
    return Napi::Boolean::New(info.Env(), true);
  });
}

// fitPca(samples Float32Array, n, p, rank, {powerIters, oversample, seed}, progress?) -> Promise
Napi::Value FitPcaJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    KVTC_CHECK(info.Length() >= 5, kInvalidArgument, "fitPca(samples, n, p, rank, options, progress?)");
    Bytes x = ViewBytes(info[0], "samples");
    const int64_t n = info[1].As<Napi::Number>().Int64Value(), p = info[2].As<Napi::Number>().Int64Value();
    const int64_t rank = info[3].As<Napi::Number>().Int64Value();
    Napi::Object o = info[4].As<Napi::Object>();
    const int iters = static_cast<int>(Uint(o, "powerIters")), over = static_cast<int>(Uint(o, "oversample"));
    const uint64_t seed = Uint(o, "seed");
    KVTC_CHECK(n > 0 && p > 0 && x.size == static_cast<size_t>(n * p * 4), kInvalidArgument,
               "Expected " << n << " x " << p << " float32 samples but received " << x.size << " bytes");
    auto out = std::make_shared<PcaResult>();
    auto* w = new Job(
        info.Env(),
        [=](const std::function<void(double)>& progress) {
          *out = FitPca(reinterpret_cast<const float*>(x.data), n, p, rank, iters, over, seed, progress);
        },
        [out, rank](Napi::Env env) -> Napi::Value {
          Napi::Object r = Napi::Object::New(env);
          r.Set("mean", NewFloats(env, out->mean.data(), out->mean.size()));
          r.Set("basis", NewFloats(env, out->basis.data(), out->basis.size()));
          r.Set("singular", NewFloats(env, out->singular.data(), out->singular.size()));
          r.Set("totalEnergy", out->total_energy);
          r.Set("rank", Napi::Number::New(env, static_cast<double>(rank)));
          return r;
        },
        {info[0]}, info.Length() > 5 ? info[5] : info.Env().Undefined());
    w->Queue();
    return w->Promise();
  });
}

// allocateBits(projected Float32Array, n, f, budgets number[], progress?) -> Promise<{plans, energy}>
Napi::Value AllocateBitsJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    KVTC_CHECK(info.Length() >= 4 && info[3].IsArray(), kInvalidArgument, "allocateBits(projected, n, f, budgets)");
    Bytes x = ViewBytes(info[0], "projected");
    const int64_t n = info[1].As<Napi::Number>().Int64Value(), f = info[2].As<Napi::Number>().Int64Value();
    KVTC_CHECK(n > 0 && f > 0 && x.size == static_cast<size_t>(n * f * 4), kInvalidArgument,
               "Expected " << n << " x " << f << " float32 coefficients but received " << x.size << " bytes");
    std::vector<uint32_t> budgets;
    auto arr = info[3].As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); ++i) {
      const double b = arr.Get(i).As<Napi::Number>().DoubleValue();
      KVTC_CHECK(b >= 0 && b <= 16.0 * (1 << 24), kInvalidArgument, "budget " << b << " bits is out of range");
      budgets.push_back(static_cast<uint32_t>(b));
    }
    auto out = std::make_shared<DpResult>();
    auto* w = new Job(
        info.Env(),
        [=](const std::function<void(double)>& progress) {
          *out = AllocateBits(reinterpret_cast<const float*>(x.data), n, f, budgets, progress);
        },
        [out](Napi::Env env) -> Napi::Value {
          Napi::Object r = Napi::Object::New(env);
          Napi::Array plans = Napi::Array::New(env, out->plans.size());
          for (size_t i = 0; i < out->plans.size(); ++i) plans.Set(i, PlanToJs(env, out->plans[i]));
          r.Set("plans", plans);
          r.Set("energy", out->energy);
          return r;
        },
        {info[0]}, info.Length() > 4 ? info[4] : info.Env().Undefined());
    w->Queue();
    return w->Promise();
  });
}

// --- Stages, synchronous, for tests and tools --------------------------------------------------

Napi::Value RopeRotateJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    std::vector<float> x = CopyFloats(info[0], "x");
    Napi::Object o = ArgObject(info, 1, "options");
    const uint32_t tokens = Uint(o, "tokens"), heads = Uint(o, "heads"), head_dim = Uint(o, "headDim");
    KVTC_CHECK(x.size() == static_cast<size_t>(tokens) * heads * head_dim, kInvalidArgument, "x has the wrong size");
    RopeRotate(x.data(), tokens, heads, static_cast<int>(head_dim), Uint(o, "positionStart"),
               ParseRope(Prop(o, "rope").As<Napi::Object>()), Prop(o, "inverse").ToBoolean());
    return NewFloats(info.Env(), x.data(), x.size());
  });
}

Napi::Value ProjectJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    std::vector<float> x = CopyFloats(info[0], "x");
    Napi::Object o = ArgObject(info, 1, "options");
    StreamBasis b{CopyFloats(Prop(o, "mean"), "mean"), CopyFloats(Prop(o, "basis"), "basis"), Uint(o, "basisRank")};
    const uint32_t tokens = Uint(o, "tokens"), rank = Uint(o, "rank");
    KVTC_CHECK(rank <= b.rank && b.basis.size() == b.mean.size() * b.rank, kInvalidArgument,
               "project: basis is not [p, basisRank] or rank exceeds it");
    const bool inverse = Prop(o, "inverse").ToBoolean();
    if (!inverse) {
      KVTC_CHECK(x.size() == static_cast<size_t>(tokens) * b.mean.size(), kInvalidArgument, "project: x has the wrong size");
      std::vector<float> d(static_cast<size_t>(tokens) * rank);
      Project(x.data(), tokens, b, rank, d.data());
      return NewFloats(info.Env(), d.data(), d.size());
    }
    KVTC_CHECK(x.size() == static_cast<size_t>(tokens) * rank, kInvalidArgument, "reconstruct: d has the wrong size");
    std::vector<float> out(static_cast<size_t>(tokens) * b.mean.size());
    Reconstruct(x.data(), tokens, b, rank, out.data());
    return NewFloats(info.Env(), out.data(), out.size());
  });
}

Napi::Value QuantizeJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    std::vector<float> d = CopyFloats(info[0], "d");
    Napi::Object o = ArgObject(info, 1, "options");
    const uint32_t tokens = Uint(o, "tokens");
    Plan plan = ParsePlan(Prop(o, "plan").As<Napi::Object>());
    ValidatePlan(plan, plan.rank);
    KVTC_CHECK(d.size() == static_cast<size_t>(tokens) * plan.rank, kInvalidArgument, "d has the wrong size");
    std::vector<uint8_t> payload(PayloadBytes(plan, tokens));
    Quantize(d.data(), plan.rank, tokens, plan, payload.data());
    return NewBuffer(info.Env(), std::move(payload));
  });
}

Napi::Value DequantizeJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    Bytes payload = ViewBytes(info[0], "payload");
    Napi::Object o = ArgObject(info, 1, "options");
    const uint32_t tokens = Uint(o, "tokens");
    Plan plan = ParsePlan(Prop(o, "plan").As<Napi::Object>());
    ValidatePlan(plan, plan.rank);
    KVTC_CHECK(payload.size == PayloadBytes(plan, tokens), kInvalidArgument, "payload has the wrong size");
    std::vector<float> d(static_cast<size_t>(tokens) * plan.rank);
    Dequantize(payload.data, tokens, plan, d.data(), plan.rank);
    return NewFloats(info.Env(), d.data(), d.size());
  });
}

Napi::Value PackBitsJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    Bytes codes = ViewBytes(info[0], "codes");
    const int bits = info[1].As<Napi::Number>().Int32Value();
    const bool unpack = info.Length() > 2 && info[2].IsNumber();
    KVTC_CHECK(bits == 2 || bits == 4 || bits == 8, kInvalidArgument, "Expected bits 2, 4 or 8 but received " << bits);
    if (!unpack) {
      std::vector<uint8_t> out((codes.size * bits + 7) / 8);
      for (size_t i = 0; i < codes.size; ++i)
        KVTC_CHECK(codes.data[i] < (1u << bits), kInvalidArgument, "code " << int{codes.data[i]} << " needs more than " << bits << " bits");
      PackBits(codes.data, codes.size, bits, out.data());
      return NewBuffer(info.Env(), std::move(out));
    }
    const size_t count = static_cast<size_t>(info[2].As<Napi::Number>().Int64Value());
    KVTC_CHECK(codes.size == (count * bits + 7) / 8, kInvalidArgument, "packed buffer has the wrong size");
    std::vector<uint8_t> out(count);
    UnpackBits(codes.data, count, bits, out.data());
    return NewBuffer(info.Env(), std::move(out));
  });
}

Napi::Value DeflateJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    Bytes in = ViewBytes(info[0], "data");
    Napi::Object o = ArgObject(info, 1, "options");
    if (Prop(o, "inflate").ToBoolean()) {
      const double expected = Number(o, "expectedBytes");
      KVTC_CHECK(expected >= 0 && expected <= 1e12, kInvalidArgument, "expectedBytes out of range");
      std::vector<uint8_t> out(static_cast<size_t>(expected));
      const bool indexed = OptionalBool(o, "indexed");
      InflateChunks(in.data, in.size, indexed ? SectionEncoding::kDeflateIndexed : SectionEncoding::kDeflateChunks,
                    out.data(), out.size());
      return NewBuffer(info.Env(), std::move(out));
    }
    const uint32_t stride = OptionalUint(o, "entryStride", 0);
    const int level = static_cast<int>(Uint(o, "level"));
    if (stride) return NewBuffer(info.Env(), DeflateChunksIndexed(in.data, in.size, Uint(o, "chunkBytes"), stride, level));
    return NewBuffer(info.Env(), DeflateChunks(in.data, in.size, Uint(o, "chunkBytes"), level));
  });
}

Napi::Value Crc32cJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    Bytes in = ViewBytes(info[0], "data");
    return Napi::Number::New(info.Env(), Crc32cParallel(in.data, in.size));
  });
}

// copyCrc32c(data, into?) -> {copy, crc}: the copy-and-checksum pass the CUDA backend assembles
// records with. `into` (at least data's size) receives the copy instead of a new Buffer and is
// returned as `copy`: `bench host` times the pass, not an allocation's page faults.
Napi::Value CopyCrc32cJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    Bytes in = ViewBytes(info[0], "data");
    const bool given = info.Length() > 1 && !info[1].IsUndefined();
    std::vector<uint8_t> own;
    uint8_t* dst = nullptr;
    if (given) {
      Bytes into = ViewBytes(info[1], "into");
      KVTC_CHECK(into.size >= in.size, kInvalidArgument,
                 "Expected into to hold at least " << in.size << " bytes but it has " << into.size);
      dst = const_cast<uint8_t*>(into.data);  // a JS-owned, writable view (ViewBytes types it const)
    } else {
      own.resize(in.size);
      dst = own.data();
    }
    const uint32_t crc = ParallelCopyCrc(dst, in.data, in.size);
    Napi::Object out = Napi::Object::New(info.Env());
    out.Set("crc", Napi::Number::New(info.Env(), crc));
    out.Set("copy", given ? info[1] : NewBuffer(info.Env(), std::move(own)));
    return out;
  });
}

// copyCrc32cMany(parts, inPlace?) -> { copies, crcs }: CopyCrcMany over the parts (a fused encode
// group's read back); inPlace: checksums only, the parts themselves returned.
Napi::Value CopyCrc32cManyJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    KVTC_CHECK(info.Length() > 0 && info[0].IsArray(), kInvalidArgument, "Expected an array of byte arrays");
    Napi::Array parts = info[0].As<Napi::Array>();
    const bool in_place = info.Length() > 1 && info[1].ToBoolean().Value();
    std::vector<Bytes> in;
    std::vector<std::vector<uint8_t>> own(parts.Length());
    std::vector<CopyCrcJob> jobs(parts.Length());
    for (uint32_t i = 0; i < parts.Length(); ++i) {
      in.push_back(ViewBytes(parts.Get(i), "parts[i]"));
      if (in_place) {
        jobs[i] = {const_cast<uint8_t*>(in[i].data), nullptr, in[i].size, 0};
      } else {
        own[i].resize(in[i].size);
        jobs[i] = {own[i].data(), in[i].data, in[i].size, 0};
      }
    }
    CopyCrcMany(jobs.data(), jobs.size());
    Napi::Array copies = Napi::Array::New(info.Env(), jobs.size()), crcs = Napi::Array::New(info.Env(), jobs.size());
    for (uint32_t i = 0; i < jobs.size(); ++i) {
      copies.Set(i, in_place ? parts.Get(i) : Napi::Value(NewBuffer(info.Env(), std::move(own[i]))));
      crcs.Set(i, Napi::Number::New(info.Env(), jobs[i].crc));
    }
    Napi::Object out = Napi::Object::New(info.Env());
    out.Set("copies", copies);
    out.Set("crcs", crcs);
    return out;
  });
}

// The chunk lists of copyChunks / copyChunksCrc32c, checked against the source and destination.
struct ChunkCopyArgs {
  Bytes in;
  std::vector<size_t> src, dst, sizes;
  size_t dst_bytes = 0;
};
ChunkCopyArgs ParseChunkCopy(const Bytes& in, const Napi::Object& o) {
  ChunkCopyArgs c{in, {}, {}, {}, 0};
  auto list = [&](const char* name) {
    Napi::Value v = Prop(o, name);
    KVTC_CHECK(v.IsArray(), kInvalidArgument, "Expected an array for " << name);
    Napi::Array a = v.As<Napi::Array>();
    std::vector<size_t> out(a.Length());
    for (uint32_t i = 0; i < a.Length(); ++i) out[i] = static_cast<size_t>(a.Get(i).As<Napi::Number>().Int64Value());
    return out;
  };
  c.src = list("srcOffsets");
  c.dst = list("dstOffsets");
  c.sizes = list("sizes");
  c.dst_bytes = Uint(o, "dstBytes");
  KVTC_CHECK(c.src.size() == c.sizes.size() && c.dst.size() == c.sizes.size(), kInvalidArgument,
             "offset and size lists differ");
  for (size_t i = 0; i < c.sizes.size(); ++i) {
    KVTC_CHECK(c.src[i] <= c.in.size && c.sizes[i] <= c.in.size - c.src[i] && c.dst[i] <= c.dst_bytes &&
                   c.sizes[i] <= c.dst_bytes - c.dst[i],
               kInvalidArgument, "chunk " << i << " is out of bounds");
  }
  return c;
}
ChunkCopyArgs ParseChunkCopy(const Napi::CallbackInfo& info) {
  return ParseChunkCopy(ViewBytes(info[0], "data"), ArgObject(info, 1, "options"));
}

// copyChunks(data, {srcOffsets, dstOffsets, sizes, dstBytes}) -> Buffer: the parallel chunk copy
// the CUDA backend stages records with (zero outside the chunks).
Napi::Value CopyChunksJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    const ChunkCopyArgs c = ParseChunkCopy(info);
    std::vector<uint8_t> out(c.dst_bytes, 0);
    ParallelCopyChunks(out.data(), c.dst.data(), c.in.data, c.src.data(), c.sizes.data(), c.sizes.size());
    return NewBuffer(info.Env(), std::move(out));
  });
}

// copyChunksCrc32c(data, {...as copyChunks}) -> {copy, crc}: the same copy of chunks that lie back
// to back in `data`, with the CRC32C of their span (the restore's staging-and-verify pass).
Napi::Value CopyChunksCrc32cJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    const ChunkCopyArgs c = ParseChunkCopy(info);
    std::vector<uint8_t> copy(c.dst_bytes, 0);
    const uint32_t crc =
        ParallelCopyChunksCrc(copy.data(), c.dst.data(), c.in.data, c.src.data(), c.sizes.data(), c.sizes.size());
    Napi::Object out = Napi::Object::New(info.Env());
    out.Set("crc", Napi::Number::New(info.Env(), crc));
    out.Set("copy", NewBuffer(info.Env(), std::move(copy)));
    return out;
  });
}

// copyChunksCrc32cMany(data, [{...as copyChunks}]) -> [{copy, crc}]: copyChunksCrc32c of every list
// in one parallel pass (a decode group's staging), each into its own destination.
Napi::Value CopyChunksCrc32cManyJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    const Bytes in = ViewBytes(info[0], "data");
    KVTC_CHECK(info.Length() > 1 && info[1].IsArray(), kInvalidArgument, "Expected an array of chunk lists");
    Napi::Array lists = info[1].As<Napi::Array>();
    std::vector<ChunkCopyArgs> args;
    for (uint32_t i = 0; i < lists.Length(); ++i) {
      KVTC_CHECK(lists.Get(i).IsObject(), kInvalidArgument, "chunk list " << i << " is not an object");
      args.push_back(ParseChunkCopy(in, lists.Get(i).As<Napi::Object>()));
    }
    std::vector<std::vector<uint8_t>> copies(args.size());
    std::vector<ChunkCopy> jobs(args.size());
    for (size_t i = 0; i < args.size(); ++i) {
      copies[i].assign(args[i].dst_bytes, 0);
      jobs[i] = {copies[i].data(), args[i].dst.data(), in.data, args[i].src.data(), args[i].sizes.data(),
                 args[i].sizes.size()};
    }
    ParallelCopyChunksCrcMany(jobs.data(), jobs.size());
    Napi::Array out = Napi::Array::New(info.Env(), args.size());
    for (size_t i = 0; i < args.size(); ++i) {
      Napi::Object o = Napi::Object::New(info.Env());
      o.Set("crc", Napi::Number::New(info.Env(), jobs[i].crc));
      o.Set("copy", NewBuffer(info.Env(), std::move(copies[i])));
      out.Set(uint32_t(i), o);
    }
    return out;
  });
}

// recordPoolRun(sizes, rounds) -> {hits, misses, idleBytes, limitBytes}: `rounds` times, takes a
// record block of each size (writing its first and last byte), notes them as one batch as an encode
// does, and frees them all; returns the record pool's counters as they moved (record_memory.h,
// which the CUDA backend writes its records into).
Napi::Value RecordPoolRunJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    KVTC_CHECK(info.Length() >= 2 && info[0].IsArray() && info[1].IsNumber(), kInvalidArgument,
               "Expected (sizes: number[], rounds: number)");
    Napi::Array a = info[0].As<Napi::Array>();
    std::vector<size_t> sizes(a.Length());
    for (uint32_t i = 0; i < a.Length(); ++i) sizes[i] = static_cast<size_t>(a.Get(i).As<Napi::Number>().Int64Value());
    const RecordPoolStats before = RecordPoolStatistics();
    for (uint32_t r = 0; r < info[1].As<Napi::Number>().Uint32Value(); ++r) {
      std::vector<RecordMemory> held;
      for (size_t n : sizes) {
        held.push_back(AllocateRecordMemory(n));
        held.back()[0] = 1;
        held.back()[n ? n - 1 : 0] = 2;
      }
      size_t batch = 0;
      for (const RecordMemory& m : held) batch += m.get_deleter().capacity;
      NoteRecordBatch(batch);
    }
    const RecordPoolStats after = RecordPoolStatistics();
    Napi::Object out = Napi::Object::New(info.Env());
    out.Set("hits", static_cast<double>(after.hits - before.hits));
    out.Set("misses", static_cast<double>(after.misses - before.misses));
    out.Set("idleBytes", static_cast<double>(after.idle_bytes));
    out.Set("limitBytes", static_cast<double>(after.limit_bytes));
    return out;
  });
}

// convert(Float32Array, 'float16' | 'bfloat16' | 'fp8') -> the rounded values as Float32Array
Napi::Value RoundJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    std::vector<float> x = CopyFloats(info[0], "x");
    const std::string to = info[1].As<Napi::String>().Utf8Value();
    for (float& v : x) {
      if (to == "float16") v = HalfToFloat(FloatToHalf(v));
      else if (to == "bfloat16") v = Bf16ToFloat(FloatToBf16(v));
      else if (to == "fp8") v = Fp8E4m3ToFloat(FloatToFp8E4m3(v));
      else KVTC_CHECK(false, kInvalidArgument, "Expected float16, bfloat16 or fp8 but received " << to);
    }
    return NewFloats(info.Env(), x.data(), x.size());
  });
}

// benchGemm({m, n, k, transB, reps}) -> best seconds of one sgemm C[m,n] = A[m,k] B (or B^T),
// the baseline the codec benchmark divides by (same BLAS, same threads, same process).
Napi::Value BenchGemmJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    Napi::Object o = ArgObject(info, 0, "options");
    const uint32_t m = Uint(o, "m"), n = Uint(o, "n"), k = Uint(o, "k"), reps = std::max(1u, Uint(o, "reps"));
    const bool trans_b = Prop(o, "transB").ToBoolean();
    std::vector<float> a(static_cast<size_t>(m) * k, 0.5f), b(static_cast<size_t>(k) * n, 0.25f),
        c(static_cast<size_t>(m) * n);
    double best = 1e30;
    for (uint32_t r = 0; r < reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m),
                  static_cast<int>(n), static_cast<int>(k), 1.0f, a.data(), static_cast<int>(k), b.data(),
                  trans_b ? static_cast<int>(k) : static_cast<int>(n), 0.0f, c.data(), static_cast<int>(n));
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return Napi::Number::New(info.Env(), best);
  });
}

#if KVTC_WITH_CUDA
// benchCuda(calibration, {keys: Uint16Array (bf16), values, tokens, batch, planId, reps, paged, chunkBytes,
// projection?, windowTokens, deflateLevel?}) -> figures
Napi::Value BenchCudaJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    auto cal = UnwrapCalibration(info, *g_calibration_ctor);
    KVTC_CHECK(cuda::Available(), kBackendUnavailable, "no CUDA device is usable");
    Napi::Object o = ArgObject(info, 1, "options");
    Bytes k = ViewBytes(Prop(o, "keys"), "keys"), v = ViewBytes(Prop(o, "values"), "values");
    const uint32_t tokens = Uint(o, "tokens"), batch = Uint(o, "batch"), reps = Uint(o, "reps");
    const uint32_t plan_id = Uint(o, "planId");
    KVTC_CHECK(k.size == size_t(tokens) * cal->feature_dim() * 2 && v.size == k.size, kInvalidArgument,
               "benchCuda needs bf16 keys and values of tokens x feature_dim");
    auto dev = UnwrapWrap(info)->device();
    cuda::BenchFigures f = cuda::Bench(*cal, *dev, reinterpret_cast<const uint16_t*>(k.data),
                                       reinterpret_cast<const uint16_t*>(v.data), tokens, batch,
                                       static_cast<uint16_t>(plan_id), static_cast<int>(reps), OptionalBool(o, "paged"),
                                       Uint(o, "chunkBytes"), ParseProjection(o.Get("projection"), true),
                                       Uint(o, "windowTokens"), int(OptionalUint(o, "deflateLevel", 6)));
    Napi::Object r = Napi::Object::New(info.Env());
    r.Set("encodeS", f.encode_s);
    r.Set("decodeS", f.decode_s);
    r.Set("gemmEncodeS", f.gemm_encode_s);
    r.Set("gemmDecodeS", f.gemm_decode_s);
    r.Set("gemmBf16EncodeS", f.gemm_bf16_encode_s);
    r.Set("gemmBf16DecodeS", f.gemm_bf16_decode_s);
    r.Set("d2hCopyS", f.d2h_copy_s);
    r.Set("recordBytes", static_cast<double>(f.record_bytes));
    r.Set("codedBytes", static_cast<double>(f.coded_bytes));
    r.Set("codedTokens", f.coded_tokens);
    r.Set("poolHits", static_cast<double>(f.pool_hits));
    r.Set("poolMisses", static_cast<double>(f.pool_misses));
    r.Set("device", cuda::DeviceName(0));
    return r;
  });
}

// --- GPU data plane: regions over a client's paged KV cache (cuda_paged.h) ---------------------
// Regions live in a registry keyed by a small integer: JavaScript never holds a device pointer.
// A job captures its region's shared_ptr, so releasing a region during a job is safe.

std::map<uint32_t, std::shared_ptr<cuda::KvRegion>> g_regions;  // JS thread only
uint32_t g_next_region = 1;

cuda::PagedGeometry ParseGeometry(const Napi::Object& o) {
  cuda::PagedGeometry g;
  g.layers = Uint(o, "layers");
  g.num_blocks = Uint(o, "numBlocks");
  g.block_size = Uint(o, "blockSize");
  g.kv_heads = Uint(o, "kvHeads");
  g.head_dim = Uint(o, "headDim");
  g.dtype = ParseDtype(Uint(o, "dtype"));
  Napi::Value s = Prop(o, "strides");
  KVTC_CHECK(s.IsArray() && s.As<Napi::Array>().Length() == 5, kInvalidArgument,
             "Expected strides: 5 element strides (kv, block, slot, head, dim)");
  for (uint32_t i = 0; i < 5; ++i) {
    Napi::Value v = s.As<Napi::Array>().Get(i);
    KVTC_CHECK(v.IsNumber(), kInvalidArgument, "Expected a number for strides[" << i << "]");
    const double d = v.As<Napi::Number>().DoubleValue();
    KVTC_CHECK(d >= 0 && d < 1099511627776.0 && d == static_cast<double>(static_cast<int64_t>(d)), kInvalidArgument,
               "Expected a non-negative integer for strides[" << i << "] but received " << d);
    g.strides[i] = static_cast<int64_t>(d);
  }
  return g;
}

cuda::IpcHandle ParseHandle(const Napi::Value& v, const char* name) {
  Bytes b = ViewBytes(v, name);
  KVTC_CHECK(b.size == 64, kInvalidArgument, "Expected a 64-byte CUDA IPC handle for " << name << " but received " << b.size << " bytes");
  cuda::IpcHandle h;
  std::memcpy(h.data(), b.data, 64);
  return h;
}

std::vector<uint32_t> ParseU32List(const Napi::Value& v, const char* name) {
  std::vector<uint32_t> out;
  if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_uint32_array) {
    Bytes b = ViewBytes(v, name);
    out.resize(b.size / 4);
    if (b.size) std::memcpy(out.data(), b.data, b.size);
    return out;
  }
  KVTC_CHECK(v.IsArray(), kInvalidArgument, "Expected an array or Uint32Array for " << name);
  auto a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value x = a.Get(i);
    KVTC_CHECK(x.IsNumber(), kInvalidArgument, "Expected numbers in " << name);
    const double d = x.As<Napi::Number>().DoubleValue();
    KVTC_CHECK(d >= 0 && d <= 4294967295.0 && d == static_cast<double>(static_cast<uint32_t>(d)), kInvalidArgument,
               "Expected unsigned integers in " << name << " but received " << d);
    out.push_back(static_cast<uint32_t>(d));
  }
  return out;
}

std::shared_ptr<cuda::KvRegion> RegionArg(const Napi::CallbackInfo& info, size_t i) {
  KVTC_CHECK(info.Length() > i && info[i].IsNumber(), kInvalidArgument, "Expected a region id");
  auto it = g_regions.find(info[i].As<Napi::Number>().Uint32Value());
  KVTC_CHECK(it != g_regions.end(), kInvalidArgument, "unknown or released KV region");
  return it->second;
}

Napi::Object RegionToJs(Napi::Env env, uint32_t id, const cuda::KvRegion& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("region", id);
  const cuda::IpcHandle h = cuda::RegionEventHandle(r);
  o.Set("event", NewBuffer(env, std::vector<uint8_t>(h.begin(), h.end())));
  return o;
}

// cudaRegisterKv({device, geometry, allocations: Buffer[], layerAllocation, layerOffset, clientEvent?})
Napi::Value RegisterKvJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    Napi::Object o = ArgObject(info, 0, "registration");
    cuda::KvRegionDesc d;
    d.device = static_cast<int>(Uint(o, "device"));
    d.geometry = ParseGeometry(Prop(o, "geometry").As<Napi::Object>());
    Napi::Value allocs = Prop(o, "allocations");
    KVTC_CHECK(allocs.IsArray(), kInvalidArgument, "Expected an array of handles for allocations");
    for (uint32_t i = 0; i < allocs.As<Napi::Array>().Length(); ++i)
      d.allocations.push_back(ParseHandle(allocs.As<Napi::Array>().Get(i), "allocations[i]"));
    d.layer_allocation = ParseU32List(Prop(o, "layerAllocation"), "layerAllocation");
    Napi::Value offs = Prop(o, "layerOffset");
    KVTC_CHECK(offs.IsArray(), kInvalidArgument, "Expected an array for layerOffset");
    for (uint32_t i = 0; i < offs.As<Napi::Array>().Length(); ++i) {
      Napi::Value x = offs.As<Napi::Array>().Get(i);
      KVTC_CHECK(x.IsNumber() && x.As<Napi::Number>().DoubleValue() >= 0, kInvalidArgument, "Expected byte offsets in layerOffset");
      d.layer_offset.push_back(static_cast<uint64_t>(x.As<Napi::Number>().DoubleValue()));
    }
    Napi::Value ev = o.Get("clientEvent");
    if (!ev.IsUndefined() && !ev.IsNull()) {
      d.client_event = ParseHandle(ev, "clientEvent");
      d.has_client_event = true;
    }
    auto region = cuda::OpenKvRegion(d);
    const uint32_t id = g_next_region++;
    g_regions[id] = region;
    return RegionToJs(info.Env(), id, *region);
  });
}

// cudaAllocateKv(device, geometry): a region over memory the addon allocates (tests, benchmarks).
Napi::Value AllocateKvJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    KVTC_CHECK(info.Length() > 1 && info[0].IsNumber(), kInvalidArgument, "Expected (device, geometry)");
    auto region = cuda::AllocateKvRegion(info[0].As<Napi::Number>().Int32Value(), ParseGeometry(ArgObject(info, 1, "geometry")));
    const uint32_t id = g_next_region++;
    g_regions[id] = region;
    return RegionToJs(info.Env(), id, *region);
  });
}

Napi::Value WriteKvJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    auto region = RegionArg(info, 0);
    Bytes b = ViewBytes(info[1], "bytes");
    cuda::WriteKvRegion(*region, b.data, b.size);
    return info.Env().Undefined();
  });
}

Napi::Value ReadKvJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value { return NewBuffer(info.Env(), cuda::ReadKvRegion(*RegionArg(info, 0))); });
}

// cudaReleaseKv(id) -> whether it existed. IPC mappings close when the last job using them ends.
Napi::Value ReleaseKvJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    KVTC_CHECK(info.Length() > 0 && info[0].IsNumber(), kInvalidArgument, "Expected a region id");
    return Napi::Boolean::New(info.Env(), g_regions.erase(info[0].As<Napi::Number>().Uint32Value()) > 0);
  });
}

cuda::PagedSpan ParseSpan(const Napi::Object& o) {
  cuda::PagedSpan s;
  s.block_ids = ParseU32List(Prop(o, "blockIds"), "blockIds");
  s.first_slot = Uint(o, "firstSlot");
  s.tokens = Uint(o, "tokens");
  if (!o.Get("recordOffset").IsUndefined()) s.record_offset = Uint(o, "recordOffset");
  if (!o.Get("recordTokens").IsUndefined()) s.record_tokens = Uint(o, "recordTokens");
  return s;
}

// encodePagedMany(calibration, region, jobs, spans) -> Promise<Buffer[]>: a record per span,
// jobs[i] for spans[i]; the sequences are fused into groups on the device (cuda::EncodePagedMany).
Napi::Value EncodePagedManyJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    auto cal = UnwrapCalibration(info, *g_calibration_ctor);
    auto region = RegionArg(info, 1);
    KVTC_CHECK(info.Length() > 3 && info[2].IsArray() && info[3].IsArray(), kInvalidArgument,
               "Expected (calibration, region, jobs[], spans[])");
    Napi::Array js = info[2].As<Napi::Array>(), ss = info[3].As<Napi::Array>();
    KVTC_CHECK(js.Length() == ss.Length() && js.Length() > 0, kInvalidArgument,
               "Expected as many jobs as spans, at least one, but received " << js.Length() << " and " << ss.Length());
    auto jobs = std::make_shared<std::vector<EncodeJob>>(js.Length());
    auto spans = std::make_shared<std::vector<cuda::PagedSpan>>();
    for (uint32_t i = 0; i < js.Length(); ++i) {
      KVTC_CHECK(js.Get(i).IsObject() && ss.Get(i).IsObject(), kInvalidArgument, "jobs and spans hold objects");
      Napi::Object j = js.Get(i).As<Napi::Object>();
      EncodeJob& job = (*jobs)[i];
      job.dtype = cuda::RegionGeometry(*region).dtype;
      ParseJobOptions(j, job);
      job.projection = ParseProjection(j.Get("projection"), /*use_cuda=*/true);
      spans->push_back(ParseSpan(ss.Get(i).As<Napi::Object>()));
      KVTC_CHECK(spans->back().tokens == job.tokens, kInvalidArgument, "span " << i << ": tokens differ from its job's");
    }
    auto dev = UnwrapWrap(info)->device(cuda::RegionDevice(*region));
    auto out = std::make_shared<std::vector<cuda::HostBytes>>();
    auto* w = new Job(
        info.Env(),
        [cal, jobs, spans, out, dev, region](const auto&) {
          *out = cuda::EncodePagedMany(*cal, *dev, *region, *spans, *jobs);
        },
        [out](Napi::Env env) -> Napi::Value {
          Napi::Array a = Napi::Array::New(env, out->size());
          for (size_t i = 0; i < out->size(); ++i) a.Set(uint32_t(i), NewHostBuffer(env, std::move((*out)[i])));
          return a;
        },
        {}, info.Env().Undefined());
    w->Queue();
    return w->Promise();
  });
}

// decodePagedMany(calibration, region, records, spans, projection?) -> Promise<header[]>: records[i]
// into spans[i]; records of few tokens are decoded in groups on the device (cuda::DecodePagedMany).
Napi::Value DecodePagedManyJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    auto cal = UnwrapCalibration(info, *g_calibration_ctor);
    auto region = RegionArg(info, 1);
    KVTC_CHECK(info.Length() > 3 && info[2].IsArray() && info[3].IsArray(), kInvalidArgument,
               "Expected (calibration, region, records[], spans[], projection?)");
    Napi::Array rs = info[2].As<Napi::Array>(), ss = info[3].As<Napi::Array>();
    KVTC_CHECK(rs.Length() == ss.Length() && rs.Length() > 0, kInvalidArgument,
               "Expected as many records as spans, at least one, but received " << rs.Length() << " and "
                                                                               << ss.Length());
    auto records = std::make_shared<std::vector<std::pair<const uint8_t*, size_t>>>();
    auto spans = std::make_shared<std::vector<cuda::PagedSpan>>();
    std::vector<Napi::Value> keep;
    for (uint32_t i = 0; i < rs.Length(); ++i) {
      KVTC_CHECK(ss.Get(i).IsObject(), kInvalidArgument, "spans hold objects");
      Bytes rec = ViewBytes(rs.Get(i), "record");
      records->emplace_back(rec.data, rec.size);
      keep.push_back(rs.Get(i));
      spans->push_back(ParseSpan(ss.Get(i).As<Napi::Object>()));
    }
    const Projection projection = ParseProjection(info.Length() > 4 ? info[4] : info.Env().Undefined(), true);
    auto dev = UnwrapWrap(info)->device(cuda::RegionDevice(*region));
    auto out = std::make_shared<std::vector<RecordHeader>>();
    auto* w = new Job(
        info.Env(),
        [cal, records, spans, out, dev, region, projection](const auto&) {
          *out = cuda::DecodePagedMany(*cal, *dev, *region, *spans, *records, projection);
        },
        [out](Napi::Env env) -> Napi::Value {
          Napi::Array a = Napi::Array::New(env, out->size());
          for (size_t i = 0; i < out->size(); ++i) a.Set(uint32_t(i), HeaderToJs(env, (*out)[i]));
          return a;
        },
        keep, info.Env().Undefined());
    w->Queue();
    return w->Promise();
  });
}

// cudaDevices() -> [{index, name, uuid}]
Napi::Value DevicesJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    Napi::Array out = Napi::Array::New(info.Env());
    if (!cuda::Available()) return out;
    int count = 0;
    cudaGetDeviceCount(&count);
    for (int d = 0; d < count; ++d) {
      Napi::Object o = Napi::Object::New(info.Env());
      o.Set("index", d);
      o.Set("name", cuda::DeviceName(d));
      o.Set("uuid", cuda::DeviceUuid(d));
      out.Set(uint32_t(d), o);
    }
    return out;
  });
}

// pageLockedCuda(buffer) -> whether the buffer's memory is page-locked (a record the CUDA
// backend wrote under KVTC_PIN_RECORDS=1): a restore then copies it to the device directly.
Napi::Value PageLockedCudaJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    const Bytes in = ViewBytes(info[0], "data");
    return Napi::Boolean::New(info.Env(), in.size > 0 && cuda::IsPageLocked(in.data));
  });
}

Napi::Value QuantizeCudaJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    std::vector<float> d = CopyFloats(info[0], "d");
    Napi::Object o = ArgObject(info, 1, "options");
    const uint32_t tokens = Uint(o, "tokens");
    Plan plan = ParsePlan(Prop(o, "plan").As<Napi::Object>());
    ValidatePlan(plan, plan.rank);
    KVTC_CHECK(d.size() == static_cast<size_t>(tokens) * plan.rank, kInvalidArgument, "d has the wrong size");
    return NewBuffer(info.Env(), cuda::QuantizeOnDevice(d.data(), tokens, plan));
  });
}

Napi::Value DequantizeCudaJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    Bytes payload = ViewBytes(info[0], "payload");
    Napi::Object o = ArgObject(info, 1, "options");
    const uint32_t tokens = Uint(o, "tokens");
    Plan plan = ParsePlan(Prop(o, "plan").As<Napi::Object>());
    ValidatePlan(plan, plan.rank);
    KVTC_CHECK(payload.size == PayloadBytes(plan, tokens), kInvalidArgument, "payload has the wrong size");
    std::vector<float> d = cuda::DequantizeOnDevice(payload.data, tokens, plan);
    return NewFloats(info.Env(), d.data(), d.size());
  });
}
#endif

Napi::Value CountersJs(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("queued", static_cast<double>(g_jobs_queued.load()));
  o.Set("running", static_cast<double>(g_jobs_running.load()));
  o.Set("done", static_cast<double>(g_jobs_done.load()));
  o.Set("failed", static_cast<double>(g_jobs_failed.load()));
#if KVTC_WITH_CUDA
  o.Set("fusedRestores", static_cast<double>(cuda::FusedRestores()));
#else
  o.Set("fusedRestores", 0.0);
#endif
  return o;
}

Napi::Value BuildInfoJs(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("formatVersion", kFormatVersion);
#if KVTC_WITH_CUDA
  o.Set("cuda", true);
  o.Set("cudaDevice", cuda::Available() ? Napi::Value(Napi::String::New(info.Env(), cuda::DeviceName(0))) : info.Env().Null());
  o.Set("fusedRestore", cuda::FusedRestoreBuilt());
#else
  o.Set("cuda", false);
  o.Set("fusedRestore", false);
#endif
  o.Set("blas", openblas_get_config());
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = CalibrationWrap::Define(env);
  g_calibration_ctor = new Napi::FunctionReference(Napi::Persistent(ctor));
  exports.Set("Calibration", ctor);
  exports.Set("encode", Napi::Function::New(env, EncodeJs));
  exports.Set("decode", Napi::Function::New(env, DecodeJs));
  exports.Set("inspect", Napi::Function::New(env, InspectJs));
  exports.Set("verify", Napi::Function::New(env, VerifyJs));
  exports.Set("fitPca", Napi::Function::New(env, FitPcaJs));
  exports.Set("allocateBits", Napi::Function::New(env, AllocateBitsJs));
  exports.Set("benchGemm", Napi::Function::New(env, BenchGemmJs));
  exports.Set("counters", Napi::Function::New(env, CountersJs));
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfoJs));
  Napi::Object stages = Napi::Object::New(env);
  stages.Set("ropeRotate", Napi::Function::New(env, RopeRotateJs));
  stages.Set("project", Napi::Function::New(env, ProjectJs));
  stages.Set("quantize", Napi::Function::New(env, QuantizeJs));
  stages.Set("dequantize", Napi::Function::New(env, DequantizeJs));
  stages.Set("packBits", Napi::Function::New(env, PackBitsJs));
  stages.Set("deflate", Napi::Function::New(env, DeflateJs));
  stages.Set("crc32c", Napi::Function::New(env, Crc32cJs));
  stages.Set("copyCrc32c", Napi::Function::New(env, CopyCrc32cJs));
  stages.Set("copyCrc32cMany", Napi::Function::New(env, CopyCrc32cManyJs));
  stages.Set("copyChunks", Napi::Function::New(env, CopyChunksJs));
  stages.Set("copyChunksCrc32cMany", Napi::Function::New(env, CopyChunksCrc32cManyJs));
  stages.Set("copyChunksCrc32c", Napi::Function::New(env, CopyChunksCrc32cJs));
  stages.Set("recordPoolRun", Napi::Function::New(env, RecordPoolRunJs));
  stages.Set("round", Napi::Function::New(env, RoundJs));
#if KVTC_WITH_CUDA
  exports.Set("benchCuda", Napi::Function::New(env, BenchCudaJs));
  stages.Set("quantizeCuda", Napi::Function::New(env, QuantizeCudaJs));
  stages.Set("dequantizeCuda", Napi::Function::New(env, DequantizeCudaJs));
  stages.Set("pageLockedCuda", Napi::Function::New(env, PageLockedCudaJs));
  exports.Set("cudaRegisterKv", Napi::Function::New(env, RegisterKvJs));
  exports.Set("cudaAllocateKv", Napi::Function::New(env, AllocateKvJs));
  exports.Set("cudaWriteKv", Napi::Function::New(env, WriteKvJs));
  exports.Set("cudaReadKv", Napi::Function::New(env, ReadKvJs));
  exports.Set("cudaReleaseKv", Napi::Function::New(env, ReleaseKvJs));
  exports.Set("encodePagedMany", Napi::Function::New(env, EncodePagedManyJs));
  exports.Set("decodePagedMany", Napi::Function::New(env, DecodePagedManyJs));
  exports.Set("cudaDevices", Napi::Function::New(env, DevicesJs));
#endif
  exports.Set("stages", stages);
  return exports;
}

}  // namespace
}  // namespace kvtc::addon

static Napi::Object InitKvtc(Napi::Env env, Napi::Object exports) { return kvtc::addon::Init(env, exports); }
NODE_API_MODULE(kvtc, InitKvtc)
