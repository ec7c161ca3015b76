#version 450
// Merges the per-chunk partials of attend.comp for one (query j, head h):
//   out = Σ_c o_c e^(m_c - M) / Σ_c l_c e^(m_c - M),  M = max_c m_c.
#extension GL_GOOGLE_include_directive : require
#include "kq_common.glsl"
#include "kq_push.h"

layout(local_size_x_id = 0) in;
layout(push_constant) uniform kq_pc { kq_push_reduce p; } pc;
layout(constant_id = 1) const uint RV = 64;

layout(std430, set = 0, binding = 0) readonly buffer kq_part { float part[]; };
layout(std430, set = 0, binding = 1) writeonly buffer kq_out { float outv[]; };

// Push constants: kq_push_reduce (kq_push.h).
void main() {
  const uint lid = gl_LocalInvocationID.x, wg = gl_WorkGroupSize.x;
  const uint h = gl_WorkGroupID.x, j = gl_WorkGroupID.y, nch = pc.p.n_parts;
  const uint row = j * pc.p.n_heads + h;
  const uint base = pc.p.part_off + row * nch * (RV + 2u);
  float m = KQ_NEG;
  for (uint c = 0u; c < nch; ++c) m = max(m, part[base + c * (RV + 2u)]);
  float l = 0.0;
  for (uint c = 0u; c < nch; ++c)
    l += part[base + c * (RV + 2u) + 1u] * exp(part[base + c * (RV + 2u)] - m);
  // A chunk that met a non-finite logit carries KQ_POISON as its maximum.
  const float inv = m >= 0.5 * KQ_POISON ? uintBitsToFloat(0x7fc00000u) : l > 0.0 ? 1.0 / l : 0.0;
  for (uint e = lid; e < RV; e += wg) {
    float o = 0.0;
    for (uint c = 0u; c < nch; ++c) {
      uint b = base + c * (RV + 2u);
      o += part[b + 2u + e] * exp(part[b] - m);
    }
    outv[pc.p.out_off + row * RV + e] = o * inv;
  }
}
