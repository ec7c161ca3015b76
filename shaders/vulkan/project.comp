#version 450
// Latent projection of new tokens for one kv head:
//   dst[t, :] = src[t, head, :] · proj      (t < n_tokens)
// One workgroup projects TT tokens; the token rows are staged in shared memory
// and every invocation produces (token, rank) outputs.
#extension GL_GOOGLE_include_directive : require
#include "kq_common.glsl"
#include "kq_push.h"

layout(local_size_x_id = 0) in;
layout(push_constant) uniform kq_pc { kq_push_project p; } pc;
layout(constant_id = 1) const uint D = 128;
layout(constant_id = 2) const uint R = 64;
layout(constant_id = 3) const uint TT = 16;
layout(constant_id = 4) const uint IDENT = 0;
layout(constant_id = 5) const uint VEC4 = 0; // 4 outputs per invocation (R % 4 == 0)

layout(std430, set = 0, binding = 0) readonly buffer kq_src { float src[]; };
layout(std430, set = 0, binding = 1) readonly buffer kq_proj { float proj[]; };
layout(std430, set = 0, binding = 2) writeonly buffer kq_dst { CACHE_T dst[]; };
layout(std430, set = 0, binding = 1) readonly buffer kq_proj4 { vec4 proj4[]; };

// Push constants: kq_push_project (kq_push.h).
shared float tile[TT * D];

void main() {
  const uint lid = gl_LocalInvocationID.x, wg = gl_WorkGroupSize.x;
  const uint t0 = gl_WorkGroupID.x * TT;
  const uint nt = min(TT, pc.p.n_tokens - t0);
  const uint stride = pc.p.n_heads * D;
  for (uint i = lid; i < nt * D; i += wg) {
    uint t = i / D, k = i % D;
    tile[i] = src[pc.p.src_off + (t0 + t) * stride + pc.p.head * D + k];
  }
  barrier();
  if (VEC4 != 0u && IDENT == 0u) {
    for (uint i = lid; i < nt * (R / 4u); i += wg) {
      uint t = i / (R / 4u), r4 = i % (R / 4u);
      vec4 acc = vec4(0.0);
      const uint p = pc.p.proj_off / 4u + r4;
      for (uint k = 0u; k < D; ++k) acc += tile[t * D + k] * proj4[p + k * (R / 4u)];
      const uint o = pc.p.dst_off + (t0 + t) * R + 4u * r4;
      [[unroll]] for (uint j = 0u; j < 4u; ++j) dst[o + j] = CACHE_T(acc[j]);
    }
    return;
  }
  for (uint i = lid; i < nt * R; i += wg) {
    uint t = i / R, r = i % R;
    float acc = 0.0;
    if (IDENT != 0u) {
      acc = tile[t * D + r];
    } else {
      const uint p = pc.p.proj_off + r;
      for (uint k = 0u; k < D; ++k)
        acc += tile[t * D + k] * proj[p + k * R];
    }
    dst[pc.p.dst_off + (t0 + t) * R + r] = CACHE_T(acc);
  }
}
