#include "convert.h"

namespace kvtc::addon {

RopeParams ParseRope(const Napi::Object& o) {
  RopeParams r;
  r.theta = Number(o, "theta");
  r.rotary_dim = static_cast<int>(Uint(o, "rotaryDim"));
  const std::string layout = String(o, "layout");
  KVTC_CHECK(layout == "neox" || layout == "interleaved", kInvalidArgument,
             "Expected 'neox' or 'interleaved' for rope.layout but received '" << layout << "'");
  r.layout = layout == "neox" ? RopeLayout::kNeox : RopeLayout::kInterleaved;
  const std::string scaling = String(o, "scaling");
  if (scaling == "default") {
    r.scaling = RopeScaling::kDefault;
  } else if (scaling == "linear") {
    r.scaling = RopeScaling::kLinear;
    r.factor = Number(o, "factor");
  } else if (scaling == "llama3") {
    r.scaling = RopeScaling::kLlama3;
    r.factor = Number(o, "factor");
    r.low_freq_factor = Number(o, "lowFreqFactor");
    r.high_freq_factor = Number(o, "highFreqFactor");
    r.original_max_position_embeddings = Number(o, "originalMaxPositionEmbeddings");
  } else {
    KVTC_CHECK(false, kInvalidArgument, "Expected rope.scaling 'default', 'linear' or 'llama3' but received '" << scaling << "'");
  }
  return r;
}

// Plans cross the boundary as {groups: Uint32Array of (start, size, type) triples, ...}.
Plan ParsePlan(const Napi::Object& o) {
  Plan plan;
  Napi::Value g = Prop(o, "groups");
  KVTC_CHECK(g.IsTypedArray() && g.As<Napi::TypedArray>().TypedArrayType() == napi_uint32_array, kInvalidArgument,
             "Expected a Uint32Array for plan.groups");
  auto arr = g.As<Napi::Uint32Array>();
  KVTC_CHECK(arr.ElementLength() % 3 == 0, kInvalidArgument, "plan.groups must hold (start, size, type) triples");
  for (size_t i = 0; i < arr.ElementLength(); i += 3) {
    KVTC_CHECK(arr[i + 2] <= 3, kCalibrationInvalid, "plan group type " << arr[i + 2] << " is unknown");
    plan.groups.push_back({arr[i], arr[i + 1], static_cast<GroupType>(arr[i + 2])});
  }
  plan.rank = Uint(o, "rank");
  Napi::Value ratio = o.Get("ratio");
  if (ratio.IsNumber()) plan.ratio = ratio.As<Napi::Number>().DoubleValue();
  return plan;
}

Napi::Object PlanToJs(Napi::Env env, const Plan& plan) {
  Napi::Object o = Napi::Object::New(env);
  auto groups = Napi::Uint32Array::New(env, plan.groups.size() * 3);
  for (size_t i = 0; i < plan.groups.size(); ++i) {
    groups[3 * i] = plan.groups[i].start;
    groups[3 * i + 1] = plan.groups[i].size;
    groups[3 * i + 2] = static_cast<uint32_t>(plan.groups[i].type);
  }
  o.Set("groups", groups);
  o.Set("rank", plan.rank);
  o.Set("budgetBits", plan.budget_bits);
  o.Set("bitsPerToken", static_cast<double>(PlanBitsPerToken(plan)));
  o.Set("expectedError", plan.expected_error);
  return o;
}

Napi::Object HeaderToJs(Napi::Env env, const RecordHeader& h) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("formatVersion", h.format_version);
  o.Set("calibrationId", Napi::Buffer<uint8_t>::Copy(env, h.calibration_id.data(), 16));
  o.Set("modelFingerprint", Napi::Buffer<uint8_t>::Copy(env, h.model_fingerprint.data(), 16));
  o.Set("tokenStart", h.token_start);
  o.Set("tokens", h.token_count);
  o.Set("featureDim", h.feature_dim);
  o.Set("planId", h.plan_id);
  o.Set("dtype", static_cast<uint32_t>(h.kv_dtype));
  o.Set("sinkTokens", h.sink_tokens);
  o.Set("windowTokens", h.window_tokens);
  o.Set("recordBytes", static_cast<double>(h.record_bytes));
  Napi::Array sections = Napi::Array::New(env, h.sections.size());
  for (size_t i = 0; i < h.sections.size(); ++i) {
    const Section& s = h.sections[i];
    Napi::Object e = Napi::Object::New(env);
    e.Set("kind", static_cast<uint32_t>(s.kind));
    e.Set("encoding", static_cast<uint32_t>(s.encoding));
    e.Set("tokenOffset", s.token_offset);
    e.Set("tokens", s.token_count);
    e.Set("offset", static_cast<double>(s.offset));
    e.Set("storedBytes", static_cast<double>(s.stored_bytes));
    sections.Set(i, e);
  }
  o.Set("sections", sections);
  return o;
}

}  // namespace kvtc::addon
