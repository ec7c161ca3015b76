#version 450
// Decode attention on latents, shaped for GPUs: one dispatch over (chunk,
// row group, query row), the rows of every sequence of the op (the row table,
// kq_push.h: KQ_SEQ_WORDS, gives each row its sequence's latent buffers,
// position and chunking). A row group is ROWS query heads that read the same
// cache group (per-head: heads of one kv head; JOINT: ROWS = 1 and one
// workgroup per query head). The workgroup
//   1. folds q·B: q̃ = q_h · B[h / b_group] for its ROWS heads (shared memory);
//   2. walks its chunk NPAR = WG / LPR positions at a time: each cluster of
//      LPR lanes takes one position, the lanes split the latent dims of the
//      row (lane l reads dims l, l + LPR, ..., so a subgroup reads contiguous
//      bytes of consecutive rows), the cluster sums its dot products by
//      subgroup shuffles (shared memory without subgroups), and keeps the
//      running max / sum / accumulator of its positions in registers;
//   3. merges its NPAR clusters once in shared memory and writes one partial
//      (m, l, o[RV]) per (query, head, chunk); merge_up.comp merges chunks.
// Latents are read in place from their segments (kq_seg.glsl): float rows
// in the storage type, q8/q4 rows times their F16 scale.
//
// PRE rope (per-head only): step 1 also forms q̂ = rot(q̃ Aᵀ, pos) (D values
// per row, in place of q); in step 2 each cluster stages the latent key row
// of its position in shared memory and its lanes rebuild the rotated key
// k̂ = rot(k̃ Bᵀ, p) pair by pair (lane l takes frequencies l, l + LPR, ...),
// so the logit is q̂·k̂ with no D-wide key ever stored.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_shader_8bit_storage : require
#extension GL_EXT_shader_explicit_arithmetic_types_int8 : require
#if KQ_SUBGROUP
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#endif
#include "kq_common.glsl"
#include "kq_push.h"
#include "kq_seg.glsl"

layout(local_size_x_id = KQ_SPEC_WG) in;
layout(constant_id = KQ_SPEC_D) const uint D = 128;
layout(constant_id = KQ_SPEC_RK) const uint RK = 64;
layout(constant_id = KQ_SPEC_RV) const uint RV = 64;
layout(constant_id = KQ_SPEC_ROWS) const uint ROWS = 1;
layout(constant_id = KQ_SPEC_LPR) const uint LPR = 8;
layout(constant_id = KQ_SPEC_IDENT) const uint IDENT = 0;
// 16-byte loads (lane l loads units l, l + LPR, ... of a row): 1 = the side
// is one float segment whose rows are whole 16-byte units at 16-byte aligned
// addresses; 2 = every segment of the side's table (float, q8, q4) has rows
// of whole 16-byte units: a unit holds 16 / ELEM float dims, 16 q8 dims or
// 32 q4 dims, unpacked with constant indices (no dynamically indexed local
// array). With VVEC = 2 a cluster's value accumulators live in its smrg
// rows (each lane updates the dims of its own units), not in registers.
layout(constant_id = KQ_SPEC_KVEC) const uint KVEC = 0;
layout(constant_id = KQ_SPEC_VVEC) const uint VVEC = 0;
layout(constant_id = KQ_SPEC_PRE) const uint PRE = 0;
layout(constant_id = KQ_SPEC_HALVES) const uint HALVES = 0;

layout(push_constant) uniform kq_pc { kq_push_decode p; } pc;

layout(std430, set = 0, binding = 0) readonly buffer kq_q { float qin[]; };
layout(std430, set = 0, binding = 1) readonly buffer kq_b { float bm[]; };
layout(std430, set = 0, binding = 2) readonly buffer kq_k8 { uint8_t k8[]; };
layout(std430, set = 0, binding = 2) readonly buffer kq_ki8 { int8_t ki8[]; };
layout(std430, set = 0, binding = 2) readonly buffer kq_kf { CACHE_T kf[]; };
layout(std430, set = 0, binding = 3) readonly buffer kq_v8 { uint8_t v8[]; };
layout(std430, set = 0, binding = 3) readonly buffer kq_vi8 { int8_t vi8[]; };
layout(std430, set = 0, binding = 3) readonly buffer kq_vf { CACHE_T vf[]; };
layout(std430, set = 0, binding = 4) writeonly buffer kq_part { float part[]; };
layout(std430, set = 0, binding = 2) readonly buffer kq_k16 { uvec4 k16[]; };
layout(std430, set = 0, binding = 3) readonly buffer kq_v16 { uvec4 v16[]; };
layout(std430, set = 0, binding = 5) readonly buffer kq_seqt { uint seqt[]; };
layout(std430, set = 0, binding = 6) readonly buffer kq_a { float am[]; };
layout(std430, set = 0, binding = 7) readonly buffer kq_rope_tab { float rope_tab[]; };

#include "kq_rope.glsl"

#if KQ_F16
const uint ELEM = 2u;
#else
const uint ELEM = 4u;
#endif
const uint WG = gl_WorkGroupSize.x;
const uint NPAR = WG / LPR;             // positions in flight per workgroup
const uint KPL = (RK + LPR - 1u) / LPR; // key dims per lane
const uint VPL = (RV + LPR - 1u) / LPR; // value dims per lane
const uint PPL = PRE != 0u ? (D / 2u + LPR - 1u) / LPR : 1u; // PRE: RoPE pairs per lane
const uint DPU = 16u / ELEM;            // dims per 16-byte unit
const uint KU = RK / DPU, VU = RV / DPU; // units per row (KVEC / VVEC)
const uint KUPL = KVEC == 1u ? (KU + LPR - 1u) / LPR : 1u; // key units per lane
const uint VUPL = VVEC == 1u ? (VU + LPR - 1u) / LPR : 1u;

// The DPU floats of a 16-byte unit of float storage.
void kq_unpack(uvec4 w, out float x[DPU]) {
#if KQ_F16
  [[unroll]] for (uint k = 0u; k < 4u; ++k) {
    const vec2 h = unpackHalf2x16(w[k]);
    x[2u * k] = h.x;
    x[2u * k + 1u] = h.y;
  }
#else
  [[unroll]] for (uint k = 0u; k < 4u; ++k) x[k] = uintBitsToFloat(w[k]);
#endif
}

shared float sqin[ROWS * D]; // q; with PRE then q̂
shared float sq[ROWS * RK];
shared float slat[PRE != 0u ? NPAR * RK : 1u]; // PRE: the latent key row of each cluster
shared float smrg[NPAR * ROWS * (RV + 2u)];
#if !KQ_SUBGROUP
shared float sred[NPAR * ROWS * LPR];
#endif

// Where dim e of a latent row lives: byte address of row 0 (data plane +
// the dim's offset in the row), row bytes, format, scale plane (quantized).
struct kq_dim {
  uint at, rb, bits, sc, sub; // sub: nibble (q4: e & 1)
};

kq_dim kq_locate(uint side, uint e, uint base, uint gc) {
  uint s = 0u, col = 0u;
  const uint n = kq_seg_count(side);
  while (s + 1u < n && e >= col + kq_seg_width(kq_seg(side, s))) col += kq_seg_width(kq_seg(side, s++));
  const uint w = kq_seg(side, s), bits = kq_seg_bits(w), j = e - col;
  const uvec2 pl = kq_seg_planes(side, s, gc, ELEM);
  kq_dim r;
  r.rb = kq_seg_row_bytes(w, ELEM);
  r.bits = bits;
  r.sc = base + pl.y;
  r.at = base + pl.x + (bits == 8u ? j : bits == 4u ? j / 2u : j * ELEM);
  r.sub = j & 1u;
  return r;
}

float kq_load_k(kq_dim m, uint slot) {
  const uint at = m.at + slot * m.rb;
  if (m.bits == 0u) return float(kf[at / ELEM]);
  const uint sa = m.sc + slot * 2u;
  const float sc = kq_f16_bits_to_f32(uint(k8[sa]) | (uint(k8[sa + 1u]) << 8u));
  if (m.bits == 8u) return float(int(ki8[at])) * sc;
  const uint b = uint(k8[at]);
  return float(int(m.sub != 0u ? b >> 4u : b & 15u) - 8) * sc;
}

float kq_load_v(kq_dim m, uint slot) {
  const uint at = m.at + slot * m.rb;
  if (m.bits == 0u) return float(vf[at / ELEM]);
  const uint sa = m.sc + slot * 2u;
  const float sc = kq_f16_bits_to_f32(uint(v8[sa]) | (uint(v8[sa + 1u]) << 8u));
  if (m.bits == 8u) return float(int(vi8[at])) * sc;
  const uint b = uint(v8[at]);
  return float(int(m.sub != 0u ? b >> 4u : b & 15u) - 8) * sc;
}

// VVEC = 2: scales (or zeroes) the dims of this lane's value units in the
// smrg row at b (the lane's cluster and query row), the only lane that
// touches them until step 3.
void kq_vacc_scale(uint b, uint lane, float f, bool zero) {
  uint col = 0u;
  [[unroll]] for (uint s = 0u; s < 16u; ++s) {
    if (s < VSEG_N) {
      const uint w = kq_seg(KQ_VALUES, s), bits = kq_seg_bits(w);
      const uint nu = kq_seg_row_bytes(w, ELEM) / 16u;
      const uint dpu = bits == 0u ? DPU : bits == 8u ? 16u : 32u;
      for (uint u = lane; u < nu; u += LPR)
        for (uint k = 0u; k < dpu; ++k) {
          const uint at = b + 2u + col + u * dpu + k;
          smrg[at] = zero ? 0.0 : smrg[at] * f;
        }
      col += kq_seg_width(w);
    }
  }
}

void main() {
  const uint lid = gl_LocalInvocationID.x;
  const uint c = gl_WorkGroupID.x, rg = gl_WorkGroupID.y, j = gl_WorkGroupID.z;
  const uint H = pc.p.n_heads, h0 = rg * ROWS;
  const uint grp = h0 / pc.p.c_group; // cache group
  const uint t = pc.p.seq_off + j * KQ_SEQ_WORDS;
  if (c >= seqt[t + 4u]) return; // past this sequence's chunks: the whole workgroup idles
  const uint k_base = seqt[t], v_base = seqt[t + 1u], pos = seqt[t + 2u], chunk = seqt[t + 3u];
  const uint cs = c * chunk, ce = min(cs + chunk, pos + 1u);
  const float scale = uintBitsToFloat(pc.p.scale_bits);
#if KQ_SUBGROUP
  const uint lane = gl_SubgroupInvocationID % LPR;
  const uint cl = gl_SubgroupID * (gl_SubgroupSize / LPR) + gl_SubgroupInvocationID / LPR;
#else
  const uint lane = lid % LPR, cl = lid / LPR;
#endif

  // 1. q̃ = q · B for the ROWS heads of the group.
  for (uint i = lid; i < ROWS * D; i += WG)
    sqin[i] = qin[pc.p.q_off + (j * H + h0 + i / D) * D + i % D];
  barrier();
  for (uint i = lid; i < ROWS * RK; i += WG) {
    const uint r = i / RK, e = i % RK;
    float acc = 0.0;
    if (IDENT != 0u) {
      acc = sqin[r * D + e];
    } else {
      const uint bb = pc.p.b_off + ((h0 + r) / pc.p.b_group) * D * RK + e;
      for (uint k = 0u; k < D; ++k) acc += sqin[r * D + k] * bm[bb + k * RK];
    }
    sq[i] = acc;
  }
  barrier();
  const uint HD = D / 2u; // RoPE frequencies
  const uint kvm = pc.p.b_off + (h0 / pc.p.b_group) * D * RK; // B of the group's kv head
  if (PRE != 0u) { // q̂ = rot(q̃ Aᵀ, pos) over sqin (q was read in full above)
    const uint am0 = pc.p.a_off + (h0 / pc.p.b_group) * D * RK;
    for (uint i = lid; i < ROWS * HD; i += WG) {
      const uint r = i / HD, f = i % HD;
      const uvec2 e = kq_rope_pair(f, D, HALVES);
      float x0 = 0.0, x1 = 0.0;
      if (IDENT != 0u) {
        x0 = sq[r * RK + e.x];
        x1 = sq[r * RK + e.y];
      } else {
        for (uint k = 0u; k < RK; ++k) {
          x0 += sq[r * RK + k] * am[am0 + e.x * RK + k];
          x1 += sq[r * RK + k] * am[am0 + e.y * RK + k];
        }
      }
      const vec2 cs2 = kq_rope_cs(pos, f, HD, pc.p.rope_hi);
      sqin[r * D + e.x] = x0 * cs2.x - x1 * cs2.y;
      sqin[r * D + e.y] = x0 * cs2.y + x1 * cs2.x;
    }
    barrier();
  }

  // 2. This lane's dims: query values and where the dims live.
  float qr[ROWS * KPL];
  kq_dim kd[KPL];
  kq_dim vd[VPL];
  [[unroll]] for (uint i = 0u; i < KPL; ++i) {
    const uint e = lane + i * LPR;
    kd[i] = kq_locate(KQ_KEYS, min(e, RK - 1u), k_base, pc.p.gc);
    [[unroll]] for (uint r = 0u; r < ROWS; ++r) qr[r * KPL + i] = e < RK ? sq[r * RK + e] : 0.0;
  }
  [[unroll]] for (uint i = 0u; i < VPL; ++i)
    vd[i] = kq_locate(KQ_VALUES, min(lane + i * LPR, RV - 1u), v_base, pc.p.gc);
  float qv[KVEC == 1u ? ROWS * KUPL * DPU : 1u];
  [[unroll]] for (uint i = 0u; i < (KVEC == 1u ? KUPL : 0u); ++i) {
    const uint u = lane + i * LPR;
    [[unroll]] for (uint k = 0u; k < DPU; ++k)
      [[unroll]] for (uint r = 0u; r < ROWS; ++r)
        qv[(r * KUPL + i) * DPU + k] = u < KU ? sq[r * RK + u * DPU + k] : 0.0;
  }
  // First 16-byte unit of row 0 of the (single) float segment: its plane is at 0.
  const uint k16_base = k_base / 16u, v16_base = v_base / 16u;
  float accv[VVEC == 1u ? ROWS * VUPL * DPU : 1u];
  [[unroll]] for (uint i = 0u; i < (VVEC == 1u ? ROWS * VUPL * DPU : 0u); ++i) accv[i] = 0.0;
  if (VVEC == 2u)
    [[unroll]] for (uint r = 0u; r < ROWS; ++r) kq_vacc_scale((cl * ROWS + r) * (RV + 2u), lane, 0.0, true);
  float m_run[ROWS], l_run[ROWS], acc[ROWS * VPL];
  [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
    m_run[r] = KQ_NEG;
    l_run[r] = 0.0;
  }
  [[unroll]] for (uint i = 0u; i < ROWS * VPL; ++i) acc[i] = 0.0;

  const uint slot0 = grp * pc.p.capacity;
  for (uint pb = cs; pb < ce; pb += NPAR) { // uniform trip count: barriers and shuffles are safe
    const uint p = pb + cl;
    const bool ok = p < ce;
    const uint slot = slot0 + (ok ? p : cs);
    float dots[ROWS];
    [[unroll]] for (uint r = 0u; r < ROWS; ++r) dots[r] = 0.0;
    if (PRE != 0u) {
      [[unroll]] for (uint i = 0u; i < KPL; ++i) {
        const uint e = lane + i * LPR;
        if (e < RK) slat[cl * RK + e] = kq_load_k(kd[i], slot);
      }
      barrier();
      const uint pk = ok ? p : cs; // the position of the staged row
      // k̂ pairs of this lane: frequencies f = lane + i·LPR, unrolled (the
      // pair loop is innermost so that the only loop with a run-time trip
      // count is the latent-dim loop, 4 dims a step: Mesa llvmpipe stops a
      // loop nest after 65535 back edges, and a chunk is many positions).
      float x0[PPL], x1[PPL];
      [[unroll]] for (uint i = 0u; i < PPL; ++i) {
        x0[i] = 0.0;
        x1[i] = 0.0;
      }
      if (IDENT != 0u) {
        [[unroll]] for (uint i = 0u; i < PPL; ++i) {
          const uvec2 e = kq_rope_pair(min(lane + i * LPR, HD - 1u), D, HALVES);
          x0[i] = slat[cl * RK + e.x];
          x1[i] = slat[cl * RK + e.y];
        }
      } else {
        uint k = 0u;
        for (; k + 4u <= RK; k += 4u) {
          const vec4 l = vec4(slat[cl * RK + k], slat[cl * RK + k + 1u], slat[cl * RK + k + 2u],
                              slat[cl * RK + k + 3u]);
          [[unroll]] for (uint i = 0u; i < PPL; ++i) {
            const uvec2 e = kq_rope_pair(min(lane + i * LPR, HD - 1u), D, HALVES);
            const uint b0 = kvm + e.x * RK + k, b1 = kvm + e.y * RK + k;
            x0[i] += dot(l, vec4(bm[b0], bm[b0 + 1u], bm[b0 + 2u], bm[b0 + 3u]));
            x1[i] += dot(l, vec4(bm[b1], bm[b1 + 1u], bm[b1 + 2u], bm[b1 + 3u]));
          }
        }
        [[unroll]] for (uint t = 0u; t < RK % 4u; ++t) {
          const float l = slat[cl * RK + k + t];
          [[unroll]] for (uint i = 0u; i < PPL; ++i) {
            const uvec2 e = kq_rope_pair(min(lane + i * LPR, HD - 1u), D, HALVES);
            x0[i] += l * bm[kvm + e.x * RK + k + t];
            x1[i] += l * bm[kvm + e.y * RK + k + t];
          }
        }
      }
      [[unroll]] for (uint i = 0u; i < PPL; ++i) {
        const uint f = lane + i * LPR;
        if (f < HD) {
          const uvec2 e = kq_rope_pair(f, D, HALVES);
          const vec2 cs2 = kq_rope_cs(pk, f, HD, pc.p.rope_hi);
          const float k0 = x0[i] * cs2.x - x1[i] * cs2.y, k1 = x0[i] * cs2.y + x1[i] * cs2.x;
          [[unroll]] for (uint r = 0u; r < ROWS; ++r)
            dots[r] += sqin[r * D + e.x] * k0 + sqin[r * D + e.y] * k1;
        }
      }
      barrier(); // slat is restaged by the next step
    } else if (KVEC == 2u) {
      uint off = 0u, col = 0u;
      [[unroll]] for (uint s = 0u; s < 16u; ++s) {
        if (s < KSEG_N) {
          const uint w = kq_seg(KQ_KEYS, s), bits = kq_seg_bits(w);
          const uint rb = kq_seg_row_bytes(w, ELEM), nu = rb / 16u;
          const uint dpu = bits == 0u ? DPU : bits == 8u ? 16u : 32u;
          off = kq_align256(off);
          const uint ub = (k_base + off + slot * rb) / 16u;
          off += pc.p.gc * rb;
          float part[ROWS];
          [[unroll]] for (uint r = 0u; r < ROWS; ++r) part[r] = 0.0;
          for (uint u = lane; u < nu; u += LPR) {
            const uvec4 q = k16[ub + u];
            const uint e0 = col + u * dpu;
            if (bits == 0u) {
              float x[DPU];
              kq_unpack(q, x);
              [[unroll]] for (uint k = 0u; k < DPU; ++k)
                [[unroll]] for (uint r = 0u; r < ROWS; ++r) part[r] += sq[r * RK + e0 + k] * x[k];
            } else if (bits == 8u) {
              [[unroll]] for (uint c = 0u; c < 4u; ++c)
                [[unroll]] for (uint b = 0u; b < 4u; ++b) {
                  const float x = float(bitfieldExtract(int(q[c]), int(8u * b), 8));
                  [[unroll]] for (uint r = 0u; r < ROWS; ++r)
                    part[r] += sq[r * RK + e0 + 4u * c + b] * x;
                }
            } else {
              [[unroll]] for (uint c = 0u; c < 4u; ++c)
                [[unroll]] for (uint n = 0u; n < 8u; ++n) {
                  const float x = float(int(bitfieldExtract(q[c], int(4u * n), 4)) - 8);
                  [[unroll]] for (uint r = 0u; r < ROWS; ++r)
                    part[r] += sq[r * RK + e0 + 8u * c + n] * x;
                }
            }
          }
          float sc = 1.0;
          if (bits != 0u) { // the row's scale multiplies the segment's sum once
            off = kq_align256(off);
            const uint sa = k_base + off + slot * 2u;
            sc = kq_f16_bits_to_f32(uint(k8[sa]) | (uint(k8[sa + 1u]) << 8u));
            off += pc.p.gc * 2u;
          }
          [[unroll]] for (uint r = 0u; r < ROWS; ++r) dots[r] += part[r] * sc;
          col += kq_seg_width(w);
        }
      }
    } else if (KVEC == 1u) {
      [[unroll]] for (uint i = 0u; i < KUPL; ++i) {
        const uint u = lane + i * LPR;
        if (u < KU) {
          float x[DPU];
          kq_unpack(k16[k16_base + slot * KU + u], x);
          [[unroll]] for (uint k = 0u; k < DPU; ++k)
            [[unroll]] for (uint r = 0u; r < ROWS; ++r) dots[r] += qv[(r * KUPL + i) * DPU + k] * x[k];
        }
      }
    } else {
      [[unroll]] for (uint i = 0u; i < KPL; ++i) {
        if (lane + i * LPR < RK) {
          const float k = kq_load_k(kd[i], slot);
          [[unroll]] for (uint r = 0u; r < ROWS; ++r) dots[r] += qr[r * KPL + i] * k;
        }
      }
    }
#if KQ_SUBGROUP
    [[unroll]] for (uint o = LPR / 2u; o > 0u; o >>= 1u)
      [[unroll]] for (uint r = 0u; r < ROWS; ++r) dots[r] += subgroupShuffleXor(dots[r], o);
#else
    [[unroll]] for (uint r = 0u; r < ROWS; ++r) sred[(cl * ROWS + r) * LPR + lane] = dots[r];
    barrier();
    [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
      float t = 0.0;
      for (uint l = 0u; l < LPR; ++l) t += sred[(cl * ROWS + r) * LPR + l];
      dots[r] = t;
    }
    barrier();
#endif
    if (!ok) continue;
    float v[VVEC != 0u ? 1u : VPL];
    [[unroll]] for (uint i = 0u; i < (VVEC != 0u ? 0u : VPL); ++i)
      v[i] = lane + i * LPR < RV ? kq_load_v(vd[i], slot) : 0.0;
    float vv[VVEC == 1u ? VUPL * DPU : 1u];
    [[unroll]] for (uint i = 0u; i < (VVEC == 1u ? VUPL : 0u); ++i) {
      const uint u = lane + i * LPR;
      float x[DPU];
      kq_unpack(u < VU ? v16[v16_base + slot * VU + u] : uvec4(0u), x);
      [[unroll]] for (uint k = 0u; k < DPU; ++k) vv[i * DPU + k] = x[k];
    }
    float wr[ROWS];
    [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
      float s = dots[r] * scale;
      if (kq_nonfinite(s)) s = KQ_POISON;
      if (s > m_run[r]) { // rescale only when the running maximum grows (rarely, after a while)
        const float f = exp(m_run[r] - s);
        m_run[r] = s;
        l_run[r] *= f;
        [[unroll]] for (uint i = 0u; i < (VVEC != 0u ? 0u : VPL); ++i) acc[r * VPL + i] *= f;
        [[unroll]] for (uint i = 0u; i < (VVEC == 1u ? VUPL * DPU : 0u); ++i)
          accv[r * VUPL * DPU + i] *= f;
        if (VVEC == 2u) kq_vacc_scale((cl * ROWS + r) * (RV + 2u), lane, f, false);
      }
      const float w = exp(s - m_run[r]);
      wr[r] = w;
      l_run[r] += w;
      [[unroll]] for (uint i = 0u; i < (VVEC != 0u ? 0u : VPL); ++i) acc[r * VPL + i] += w * v[i];
      [[unroll]] for (uint i = 0u; i < (VVEC == 1u ? VUPL * DPU : 0u); ++i)
        accv[r * VUPL * DPU + i] += w * vv[i];
    }
    // VVEC = 2: this lane's units of every value segment, w · scale · x added
    // to the cluster's smrg rows.
    if (VVEC == 2u) {
      uint off = 0u, col = 0u;
      [[unroll]] for (uint s = 0u; s < 16u; ++s) {
        if (s < VSEG_N) {
          const uint w = kq_seg(KQ_VALUES, s), bits = kq_seg_bits(w);
          const uint rb = kq_seg_row_bytes(w, ELEM), nu = rb / 16u;
          const uint dpu = bits == 0u ? DPU : bits == 8u ? 16u : 32u;
          off = kq_align256(off);
          const uint ub = (v_base + off + slot * rb) / 16u;
          off += pc.p.gc * rb;
          float sc = 1.0;
          if (bits != 0u) {
            off = kq_align256(off);
            const uint sa = v_base + off + slot * 2u;
            sc = kq_f16_bits_to_f32(uint(v8[sa]) | (uint(v8[sa + 1u]) << 8u));
            off += pc.p.gc * 2u;
          }
          float ws[ROWS];
          [[unroll]] for (uint r = 0u; r < ROWS; ++r) ws[r] = wr[r] * sc;
          for (uint u = lane; u < nu; u += LPR) {
            const uvec4 q = v16[ub + u];
            const uint b0 = cl * ROWS * (RV + 2u) + 2u + col + u * dpu;
            if (bits == 0u) {
              float x[DPU];
              kq_unpack(q, x);
              [[unroll]] for (uint k = 0u; k < DPU; ++k)
                [[unroll]] for (uint r = 0u; r < ROWS; ++r) smrg[b0 + r * (RV + 2u) + k] += ws[r] * x[k];
            } else if (bits == 8u) {
              [[unroll]] for (uint c = 0u; c < 4u; ++c)
                [[unroll]] for (uint b = 0u; b < 4u; ++b) {
                  const float x = float(bitfieldExtract(int(q[c]), int(8u * b), 8));
                  [[unroll]] for (uint r = 0u; r < ROWS; ++r)
                    smrg[b0 + r * (RV + 2u) + 4u * c + b] += ws[r] * x;
                }
            } else {
              [[unroll]] for (uint c = 0u; c < 4u; ++c)
                [[unroll]] for (uint n = 0u; n < 8u; ++n) {
                  const float x = float(int(bitfieldExtract(q[c], int(4u * n), 4)) - 8);
                  [[unroll]] for (uint r = 0u; r < ROWS; ++r)
                    smrg[b0 + r * (RV + 2u) + 8u * c + n] += ws[r] * x;
                }
            }
          }
          col += kq_seg_width(w);
        }
      }
    }
  }

  // 3. One merge of the clusters, one partial per (query, head, chunk).
  [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
    const uint b = (cl * ROWS + r) * (RV + 2u);
    if (lane == 0u) {
      smrg[b] = m_run[r];
      smrg[b + 1u] = l_run[r];
    }
    [[unroll]] for (uint i = 0u; i < (VVEC != 0u ? 0u : VPL); ++i)
      if (lane + i * LPR < RV) smrg[b + 2u + lane + i * LPR] = acc[r * VPL + i];
    [[unroll]] for (uint i = 0u; i < (VVEC == 1u ? VUPL : 0u); ++i) {
      const uint u = lane + i * LPR;
      if (u < VU)
        [[unroll]] for (uint k = 0u; k < DPU; ++k)
          smrg[b + 2u + u * DPU + k] = accv[(r * VUPL + i) * DPU + k];
    }
  }
  barrier();
  for (uint i = lid; i < ROWS * (RV + 1u); i += WG) {
    const uint r = i / (RV + 1u), e = i % (RV + 1u); // e == RV: the (m, l) pair
    float m = KQ_NEG;
    for (uint k = 0u; k < NPAR; ++k) m = max(m, smrg[(k * ROWS + r) * (RV + 2u)]);
    float o = 0.0;
    for (uint k = 0u; k < NPAR; ++k) {
      const uint b = (k * ROWS + r) * (RV + 2u);
      o += smrg[b + (e == RV ? 1u : 2u + e)] * exp(smrg[b] - m);
    }
    const uint dst = pc.p.part_off + ((j * H + h0 + r) * pc.p.n_chunks + c) * (RV + 2u);
    if (e == RV) {
      part[dst] = m;
      part[dst + 1u] = o;
    } else {
      part[dst + 2u + e] = o;
    }
  }
}
