#version 450
// Latent-to-full output for one (query j, head h): out = latent · Eᵀ,
// E = value_up[h / g] of shape [D][RV].
#extension GL_GOOGLE_include_directive : require
#include "kq_common.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint D = 128;
layout(constant_id = 2) const uint RV = 64;
layout(constant_id = 3) const uint IDENT = 0;

layout(std430, set = 0, binding = 0) readonly buffer kq_lat { float lat[]; };
layout(std430, set = 0, binding = 1) readonly buffer kq_e { float em[]; };
layout(std430, set = 0, binding = 2) writeonly buffer kq_out { float outv[]; };

// u[0] latent offset   u[1] E offset (kv head 0)   u[2] out offset   u[3] n_heads   u[4] group
shared float sl[RV];

void main() {
  const uint lid = gl_LocalInvocationID.x, wg = gl_WorkGroupSize.x;
  const uint h = gl_WorkGroupID.x, j = gl_WorkGroupID.y;
  const uint row = j * pc.u[3] + h, kv = h / pc.u[4];
  for (uint r = lid; r < RV; r += wg) sl[r] = lat[pc.u[0] + row * RV + r];
  barrier();
  for (uint e = lid; e < D; e += wg) {
    float acc = 0.0;
    if (IDENT != 0u) {
      acc = sl[e];
    } else {
      const uint base = pc.u[1] + (kv * D + e) * RV;
      for (uint r = 0u; r < RV; ++r) acc += sl[r] * em[base + r];
    }
    outv[pc.u[2] + row * D + e] = acc;
  }
}
