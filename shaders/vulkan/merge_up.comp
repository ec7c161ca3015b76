#version 450
// Merges the per-chunk partials of attend_dec.comp for one (head h, query j)
// and, with UP, applies the up-projection in the same workgroup:
//   M = max_c m_c,  w_c = e^(m_c - M),  lat = Σ_c w_c o_c / Σ_c w_c l_c
//   out = UP ? lat · E[h / e_group]ᵀ : lat
// The maximum and the weights are computed in parallel over chunks; a chunk
// maximum at or above KQ_POISON / 2 (a NaN/Inf logit) makes the row NaN.
#extension GL_GOOGLE_include_directive : require
#include "kq_common.glsl"
#include "kq_push.h"

layout(local_size_x_id = KQ_SPEC_WG) in;
layout(constant_id = KQ_SPEC_D) const uint D = 128;
layout(constant_id = KQ_SPEC_RV) const uint RV = 64;
layout(constant_id = KQ_SPEC_IDENT) const uint IDENT = 0;
layout(constant_id = KQ_SPEC_UP) const uint UP = 1;

layout(push_constant) uniform kq_pc { kq_push_merge p; } pc;

layout(std430, set = 0, binding = 0) readonly buffer kq_part { float part[]; };
layout(std430, set = 0, binding = 1) readonly buffer kq_e { float em[]; };
layout(std430, set = 0, binding = 2) writeonly buffer kq_out { float outv[]; };
layout(std430, set = 0, binding = 3) readonly buffer kq_seqt { uint seqt[]; };

const uint WG = gl_WorkGroupSize.x;
const uint MAXCH = 1024u; // host limit on chunks per row
shared float sw[MAXCH];
shared float sred[WG];
shared float slat[RV];

float wg_reduce(float x, bool is_max) {
  const uint lid = gl_LocalInvocationID.x;
  sred[lid] = x;
  barrier();
  for (uint s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) sred[lid] = is_max ? max(sred[lid], sred[lid + s]) : sred[lid] + sred[lid + s];
    barrier();
  }
  const float r = sred[0];
  barrier();
  return r;
}

void main() {
  const uint lid = gl_LocalInvocationID.x;
  const uint h = gl_WorkGroupID.x, j = gl_WorkGroupID.y;
  const uint nch = seqt[pc.p.seq_off + j * KQ_SEQ_WORDS + 4u]; // this row's sequence's chunks
  const uint row = j * pc.p.n_heads + h;
  const uint base = pc.p.part_off + row * pc.p.n_chunks * (RV + 2u);
  float m = KQ_NEG;
  for (uint c = lid; c < nch; c += WG) m = max(m, part[base + c * (RV + 2u)]);
  m = wg_reduce(m, true);
  float l = 0.0;
  for (uint c = lid; c < nch; c += WG) {
    const float w = exp(part[base + c * (RV + 2u)] - m);
    sw[c] = w;
    l += w * part[base + c * (RV + 2u) + 1u];
  }
  l = wg_reduce(l, false); // its barriers also publish sw
  const float inv = m >= 0.5 * KQ_POISON ? uintBitsToFloat(0x7fc00000u) : l > 0.0 ? 1.0 / l : 0.0;
  for (uint e = lid; e < RV; e += WG) {
    float o = 0.0;
    for (uint c = 0u; c < nch; ++c) o += part[base + c * (RV + 2u) + 2u + e] * sw[c];
    if (UP != 0u) slat[e] = o * inv;
    else outv[pc.p.out_off + row * RV + e] = o * inv;
  }
  if (UP == 0u) return;
  barrier();
  const uint eb = pc.p.e_off + (h / pc.p.e_group) * D * RV;
  for (uint d = lid; d < D; d += WG) {
    float acc = 0.0;
    if (IDENT != 0u) {
      acc = slat[d];
    } else {
      for (uint r = 0u; r < RV; ++r) acc += slat[r] * em[eb + d * RV + r];
    }
    outv[pc.p.out_off + row * D + d] = acc;
  }
}
