#version 450
// Latent projection of new tokens into a plain float latent buffer, for
// every source row t of the dispatch and kv head h (head0 + workgroup y):
//   latent(t)[h, pos(t), :] = src[t, h, :] · proj[h]
// where the row table (KQ_PROJECT_SEQ_WORDS per row) gives the latent buffer
// (its sequence's region) and position of each row, so one grid covers every
// sequence of a batch. One workgroup projects TT rows; the rows are staged
// in shared memory and every invocation produces (row, rank) outputs.
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
layout(std430, set = 0, binding = 3) readonly buffer kq_seq { uint seqtab[]; };
layout(std430, set = 0, binding = 1) readonly buffer kq_proj4 { vec4 proj4[]; };

// Push constants: kq_push_project (kq_push.h).
shared float tile[TT * D];

// First element of row t's latent row of head h (unsigned arithmetic wraps
// like the table's word 0).
uint dst_row(uint t, uint head) {
  const uint e = pc.p.seq_off + (pc.p.row0 + t) * KQ_PROJECT_SEQ_WORDS;
  return seqtab[e] + (head * pc.p.capacity + seqtab[e + 1u]) * R;
}

void main() {
  const uint lid = gl_LocalInvocationID.x, wg = gl_WorkGroupSize.x;
  const uint t0 = gl_WorkGroupID.x * TT, head = pc.p.head0 + gl_WorkGroupID.y;
  const uint nt = min(TT, pc.p.n_tokens - t0);
  const uint stride = pc.p.n_heads * D;
  for (uint i = lid; i < nt * D; i += wg) {
    uint t = i / D, k = i % D;
    tile[i] = src[pc.p.src_off + (t0 + t) * stride + head * D + k];
  }
  barrier();
  if (VEC4 != 0u && IDENT == 0u) {
    for (uint i = lid; i < nt * (R / 4u); i += wg) {
      uint t = i / (R / 4u), r4 = i % (R / 4u);
      vec4 acc = vec4(0.0);
      const uint p = (pc.p.proj_off + head * D * R) / 4u + r4;
      for (uint k = 0u; k < D; ++k) acc += tile[t * D + k] * proj4[p + k * (R / 4u)];
      const uint o = dst_row(t0 + t, head) + 4u * r4;
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
      const uint p = pc.p.proj_off + head * D * R + r;
      for (uint k = 0u; k < D; ++k)
        acc += tile[t * D + k] * proj[p + k * R];
    }
    dst[dst_row(t0 + t, head) + r] = CACHE_T(acc);
  }
}
