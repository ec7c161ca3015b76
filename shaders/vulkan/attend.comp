#version 450
// Flash-decoding partial pass: one workgroup takes the QT query tokens of a
// query tile times the G query heads of one kv head (R = QT*G rows, so the
// group shares every latent-key load) against one chunk of CH cache
// positions, with an online softmax over key tiles of TK positions. It writes
// the chunk's row maximum m, sum l and unnormalised output o[RV]; reduce.comp
// merges the chunks. Causal: a row sees positions <= its own. A query tile
// (workgroup y) is QT consecutive queries of one sequence; the tile table
// gives its sequence's latent rows and positions, so one grid covers every
// sequence of a batch.
//
// PRE rope: keys are rebuilt in shared memory only, k̂ = rot(k̃ Bᵀ, p); the
// prepared queries are already q̂ (qprep.comp), so logits are q̂·k̂.
#extension GL_GOOGLE_include_directive : require
#include "kq_common.glsl"
#include "kq_push.h"

layout(local_size_x_id = 0) in;
layout(push_constant) uniform kq_pc { kq_push_attend p; } pc;
layout(constant_id = 1) const uint D = 128;
layout(constant_id = 2) const uint RK = 64;
layout(constant_id = 3) const uint RV = 64;
layout(constant_id = 4) const uint G = 4;
layout(constant_id = 5) const uint QT = 1;
layout(constant_id = 6) const uint TK = 32;
layout(constant_id = 7) const uint PRE = 0;
layout(constant_id = 8) const uint HALVES = 0;
layout(constant_id = 9) const uint IDENT = 0;
layout(constant_id = 10) const uint SLOTS = 1; // output units per invocation (see below)
layout(constant_id = 11) const uint QK = 64;   // RK, or D with PRE
layout(constant_id = 12) const uint VEC4 = 0;  // keys, values, queries read as 4-vectors
layout(constant_id = 13) const uint NTG = 1;   // key groups splitting the P·V sum

const uint R = QT * G;
// P·V: invocation lid owns output unit (float, or vec4 with VEC4) eu = lid % EU
// (+ slot * wg) over the keys t ≡ tg (mod NTG), tg = lid / EU. Each key group
// writes its own partial (same m; l counted once), so no reduction is needed.
const uint EU = VEC4 != 0u ? RV / 4u : RV;

layout(std430, set = 0, binding = 0) readonly buffer kq_q { float q[]; };
layout(std430, set = 0, binding = 1) readonly buffer kq_k { CACHE_T kc[]; };
layout(std430, set = 0, binding = 2) readonly buffer kq_v { CACHE_T vc[]; };
layout(std430, set = 0, binding = 3) writeonly buffer kq_part { float part[]; };
layout(std430, set = 0, binding = 4) readonly buffer kq_rope_tab { float rope_tab[]; };
layout(std430, set = 0, binding = 5) readonly buffer kq_b { float bm[]; };
// 4-vector views of the same bindings (offsets are multiples of 4 elements).
layout(std430, set = 0, binding = 0) readonly buffer kq_q4 { vec4 q4[]; };
layout(std430, set = 0, binding = 0) readonly buffer kq_tiles { uint tiles[]; };
layout(std430, set = 0, binding = 1) readonly buffer kq_k4 { CACHE_T4 kc4[]; };
layout(std430, set = 0, binding = 2) readonly buffer kq_v4 { CACHE_T4 vc4[]; };

#include "kq_reduce.glsl"
#include "kq_rope.glsl"

// Push constants: kq_push_attend (kq_push.h).
shared float sq[VEC4 != 0u ? 1u : R * QK];
shared vec4 sq4[VEC4 != 0u ? R * QK / 4u : 1u];
shared float sk[PRE != 0u ? TK * QK : 1u];
shared float ss[R * TK];
shared float slat[PRE != 0u ? TK * RK : 1u];

void main() {
  const uint lid = gl_LocalInvocationID.x, wg = gl_WorkGroupSize.x;
  const uint c = pc.p.chunk0 + gl_WorkGroupID.x;
  const uint H = pc.p.n_heads, head0 = pc.p.head0;
  const uint tok_base = pc.p.tok_base;
  const float scale = uintBitsToFloat(pc.p.scale_bits);
  const uint te = pc.p.tile_off + gl_WorkGroupID.y * KQ_TILE_WORDS;
  const uint k_seq = pc.p.k_off + tiles[te], v_seq = pc.p.v_off + tiles[te + 1u];
  const uint q0 = tiles[te + 2u], nqt = tiles[te + 3u];
  const uint pos0 = tiles[te + 4u]; // position of the tile's first query
  const uint cs = c * pc.p.chunk;
  const uint ce = min(cs + pc.p.chunk, pos0 + nqt);

  if (VEC4 != 0u) {
    for (uint i = lid; i < R * QK / 4u; i += wg) {
      uint row = i / (QK / 4u), e4 = i % (QK / 4u), tq = row / G;
      uint at = pc.p.q_off + ((q0 + tq) * H + head0 + row % G) * QK;
      sq4[i] = tq < nqt ? q4[at / 4u + e4] : vec4(0.0);
    }
  } else {
    for (uint i = lid; i < R * QK; i += wg) {
      uint row = i / QK, e = i % QK, tq = row / G;
      sq[i] = tq < nqt ? q[pc.p.q_off + ((q0 + tq) * H + head0 + row % G) * QK + e] : 0.0;
    }
  }
  const uint tg = NTG > 1u ? lid / EU : 0u;
  const uint eu0 = NTG > 1u ? lid % EU : lid;
  float m_run[R], l_run[R];
  [[unroll]] for (uint row = 0u; row < R; ++row) {
    m_run[row] = KQ_NEG;
    l_run[row] = 0.0;
  }
  float acc[VEC4 != 0u ? 1u : SLOTS * R];
  vec4 acc4[VEC4 != 0u ? SLOTS * R : 1u];
  [[unroll]] for (uint i = 0u; i < SLOTS * R; ++i) {
    if (VEC4 != 0u) acc4[i] = vec4(0.0);
    else acc[i] = 0.0;
  }
  barrier();

  for (uint t0 = cs; t0 < ce; t0 += TK) {
    const uint nk = min(TK, ce - t0);
    const uint kbase = k_seq + (t0 - tok_base) * RK;
    if (PRE != 0u) {
      for (uint i = lid; i < nk * RK; i += wg) slat[i] = float(kc[kbase + i]);
      barrier();
      for (uint i = lid; i < nk * (D / 2u); i += wg) {
        uint t = i / (D / 2u), jj = i % (D / 2u);
        uvec2 e = kq_rope_pair(jj, D, HALVES);
        float x0 = 0.0, x1 = 0.0;
        if (IDENT != 0u) {
          x0 = slat[t * RK + e.x];
          x1 = slat[t * RK + e.y];
        } else {
          const uint b0 = pc.p.b_off + e.x * RK, b1 = pc.p.b_off + e.y * RK;
          for (uint r = 0u; r < RK; ++r) {
            float l = slat[t * RK + r];
            x0 += l * bm[b0 + r];
            x1 += l * bm[b1 + r];
          }
        }
        vec2 cs2 = kq_rope_cs(t0 + t, jj, D / 2u, pc.p.rope_hi);
        sk[t * D + e.x] = x0 * cs2.x - x1 * cs2.y;
        sk[t * D + e.y] = x0 * cs2.y + x1 * cs2.x;
      }
      barrier();
    }
    // Logits, one key per invocation: the key is loaded once for all R rows
    // of the group, and the query rows are uniform (broadcast) reads.
    float tmax[R];
    [[unroll]] for (uint row = 0u; row < R; ++row) tmax[row] = KQ_NEG;
    for (uint t = lid; t < TK; t += wg) {
      float dots[R];
      [[unroll]] for (uint row = 0u; row < R; ++row) dots[row] = 0.0;
      if (t < nk && VEC4 != 0u) {
        const uint kb4 = (kbase + t * RK) / 4u;
        for (uint e4 = 0u; e4 < QK / 4u; ++e4) {
          const vec4 k = vec4(kc4[kb4 + e4]);
          [[unroll]] for (uint row = 0u; row < R; ++row)
            dots[row] += dot(sq4[row * (QK / 4u) + e4], k);
        }
      } else if (t < nk) {
        for (uint e = 0u; e < QK; ++e) {
          const float k = PRE != 0u ? sk[t * QK + e] : float(kc[kbase + t * RK + e]);
          [[unroll]] for (uint row = 0u; row < R; ++row) dots[row] += sq[row * QK + e] * k;
        }
      }
      [[unroll]] for (uint row = 0u; row < R; ++row) {
        const uint tq = row / G;
        const bool ok = t < nk && tq < nqt && t0 + t <= pos0 + tq;
        float s = ok ? dots[row] * scale : KQ_NEG;
        if (ok && kq_nonfinite(s)) s = KQ_POISON;
        ss[row * TK + t] = s;
        tmax[row] = max(tmax[row], s);
      }
    }
    // Online softmax: tile maximum and sum over the workgroup; every
    // invocation keeps the same running m, l and rescale factor f.
    kq_reduce_rows(KQ_RED_MAX, tmax);
    float tsum[R], f[R];
    [[unroll]] for (uint row = 0u; row < R; ++row) {
      const float mx = max(m_run[row], tmax[row]);
      f[row] = exp(m_run[row] - mx);
      m_run[row] = mx;
      tsum[row] = 0.0;
    }
    for (uint t = lid; t < TK; t += wg) {
      [[unroll]] for (uint row = 0u; row < R; ++row) {
        const float s = ss[row * TK + t];
        const float p = s > 0.5 * KQ_NEG ? exp(s - m_run[row]) : 0.0;
        ss[row * TK + t] = p;
        tsum[row] += p;
      }
    }
    kq_reduce_rows(KQ_RED_SUM, tsum); // its barrier also publishes ss
    [[unroll]] for (uint row = 0u; row < R; ++row) l_run[row] = l_run[row] * f[row] + tsum[row];
    const uint vbase = v_seq + (t0 - tok_base) * RV;
    [[unroll]] for (uint slot = 0u; slot < SLOTS; ++slot) {
      const uint eu = eu0 + slot * wg;
      if (eu < EU && tg < NTG) {
        if (VEC4 != 0u) {
          [[unroll]] for (uint row = 0u; row < R; ++row) acc4[slot * R + row] *= f[row];
          for (uint t = tg; t < nk; t += NTG) {
            const vec4 v = vec4(vc4[(vbase + t * RV) / 4u + eu]);
            [[unroll]] for (uint row = 0u; row < R; ++row)
              acc4[slot * R + row] += ss[row * TK + t] * v;
          }
        } else {
          [[unroll]] for (uint row = 0u; row < R; ++row) acc[slot * R + row] *= f[row];
          for (uint t = tg; t < nk; t += NTG) {
            const float v = float(vc[vbase + t * RV + eu]);
            [[unroll]] for (uint row = 0u; row < R; ++row)
              acc[slot * R + row] += ss[row * TK + t] * v;
          }
        }
      }
    }
    barrier();
  }

  const uint nch = pc.p.n_parts; // partials per row: chunks * NTG
  if (tg >= NTG) return;
  [[unroll]] for (uint row = 0u; row < R; ++row) {
    const uint tq = row / G;
    if (tq >= nqt) continue;
    const uint base =
        pc.p.part_off + (((q0 + tq) * H + head0 + row % G) * nch + c * NTG + tg) * (RV + 2u);
    [[unroll]] for (uint slot = 0u; slot < SLOTS; ++slot) {
      const uint eu = eu0 + slot * wg;
      if (eu < EU) {
        if (VEC4 != 0u) {
          [[unroll]] for (uint i = 0u; i < 4u; ++i)
            part[base + 2u + 4u * eu + i] = acc4[slot * R + row][i];
        } else {
          part[base + 2u + eu] = acc[slot * R + row];
        }
      }
    }
    if (eu0 == 0u) {
      part[base] = m_run[row];
      part[base + 1u] = tg == 0u ? l_run[row] : 0.0;
    }
  }
}
