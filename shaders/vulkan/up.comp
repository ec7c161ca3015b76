#version 450
// Latent-to-full output for one (query j, head h): out = latent · Eᵀ,
// E = value_up[h / g] of shape [D][RV].
#extension GL_GOOGLE_include_directive : require
#include "kq_common.glsl"
#include "kq_push.h"

layout(local_size_x_id = 0) in;
layout(push_constant) uniform kq_pc { kq_push_up p; } pc;
layout(constant_id = 1) const uint D = 128;
layout(constant_id = 2) const uint RV = 64;
layout(constant_id = 3) const uint IDENT = 0;

layout(std430, set = 0, binding = 0) readonly buffer kq_lat { float lat[]; };
layout(std430, set = 0, binding = 1) readonly buffer kq_e { float em[]; };
layout(std430, set = 0, binding = 2) writeonly buffer kq_out { float outv[]; };

// Push constants: kq_push_up (kq_push.h).
shared float sl[RV];

void main() {
  const uint lid = gl_LocalInvocationID.x, wg = gl_WorkGroupSize.x;
  const uint h = gl_WorkGroupID.x, j = gl_WorkGroupID.y;
  const uint row = j * pc.p.n_heads + h, kv = h / pc.p.group;
  for (uint r = lid; r < RV; r += wg) sl[r] = lat[pc.p.lat_off + row * RV + r];
  barrier();
  for (uint e = lid; e < D; e += wg) {
    float acc = 0.0;
    if (IDENT != 0u) {
      acc = sl[e];
    } else {
      const uint base = pc.p.e_off + (kv * D + e) * RV;
      for (uint r = 0u; r < RV; ++r) acc += sl[r] * em[base + r];
    }
    outv[pc.p.out_off + row * D + e] = acc;
  }
}
