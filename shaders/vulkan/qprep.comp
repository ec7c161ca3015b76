#version 450
// Query preparation for attention, one workgroup per (query j, head h):
//   NONE/POST: out = q B                      (RK values)
//   PRE:       out = rot(q B Aᵀ, pos_j)       (D values; pos_j from the
//                                              position table, binding 5)
// With IDENT (A = B = I) the projections are skipped.
#extension GL_GOOGLE_include_directive : require
#include "kq_common.glsl"
#include "kq_push.h"

layout(local_size_x_id = 0) in;
layout(push_constant) uniform kq_pc { kq_push_qprep p; } pc;
layout(constant_id = 1) const uint D = 128;
layout(constant_id = 2) const uint RK = 64;
layout(constant_id = 3) const uint PRE = 0;
layout(constant_id = 4) const uint HALVES = 0;
layout(constant_id = 5) const uint IDENT = 0;

layout(std430, set = 0, binding = 0) readonly buffer kq_q { float q[]; };
layout(std430, set = 0, binding = 1) readonly buffer kq_b { float bm[]; };
layout(std430, set = 0, binding = 2) readonly buffer kq_a { float am[]; };
layout(std430, set = 0, binding = 3) writeonly buffer kq_out { float outq[]; };
layout(std430, set = 0, binding = 4) readonly buffer kq_rope_tab { float rope_tab[]; };
layout(std430, set = 0, binding = 5) readonly buffer kq_pos { uint qpos[]; };

#include "kq_rope.glsl"

// Push constants: kq_push_qprep (kq_push.h).
shared float sq[D];
shared float sqb[RK];

void main() {
  const uint lid = gl_LocalInvocationID.x, wg = gl_WorkGroupSize.x;
  const uint h = gl_WorkGroupID.x, j = gl_WorkGroupID.y, H = pc.p.n_heads;
  const uint kv = h / pc.p.group;
  const uint row = j * H + h;
  for (uint e = lid; e < D; e += wg)
    sq[e] = q[pc.p.q_off + row * D + e];
  barrier();
  for (uint r = lid; r < RK; r += wg) {
    float acc = 0.0;
    if (IDENT != 0u) {
      acc = sq[r];
    } else {
      const uint base = pc.p.b_off + kv * D * RK + r;
      for (uint e = 0u; e < D; ++e)
        acc += sq[e] * bm[base + e * RK];
    }
    sqb[r] = acc;
  }
  barrier();
  if (PRE == 0u) {
    for (uint r = lid; r < RK; r += wg)
      outq[pc.p.out_off + row * RK + r] = sqb[r];
    return;
  }
  const uint pos = qpos[pc.p.pos_off + j];
  for (uint jj = lid; jj < D / 2u; jj += wg) {
    uvec2 e = kq_rope_pair(jj, D, HALVES);
    float x0 = 0.0, x1 = 0.0;
    if (IDENT != 0u) {
      x0 = sqb[e.x];
      x1 = sqb[e.y];
    } else {
      const uint a0 = pc.p.a_off + kv * D * RK + e.x * RK, a1 = pc.p.a_off + kv * D * RK + e.y * RK;
      for (uint r = 0u; r < RK; ++r) {
        x0 += sqb[r] * am[a0 + r];
        x1 += sqb[r] * am[a1 + r];
      }
    }
    vec2 cs = kq_rope_cs(pos, jj, D / 2u, pc.p.rope_hi);
    outq[pc.p.out_off + row * D + e.x] = x0 * cs.x - x1 * cs.y;
    outq[pc.p.out_off + row * D + e.y] = x0 * cs.y + x1 * cs.x;
  }
}
