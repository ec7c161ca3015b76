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
// 16-byte loads: the side is one float segment whose rows are whole 16-byte
// units at 16-byte aligned addresses; lane l loads units l, l + LPR, ...
layout(constant_id = KQ_SPEC_KVEC) const uint KVEC = 0;
layout(constant_id = KQ_SPEC_VVEC) const uint VVEC = 0;

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

#if KQ_F16
const uint ELEM = 2u;
#else
const uint ELEM = 4u;
#endif
const uint WG = gl_WorkGroupSize.x;
const uint NPAR = WG / LPR;             // positions in flight per workgroup
const uint KPL = (RK + LPR - 1u) / LPR; // key dims per lane
const uint VPL = (RV + LPR - 1u) / LPR; // value dims per lane
const uint DPU = 16u / ELEM;            // dims per 16-byte unit
const uint KU = RK / DPU, VU = RV / DPU; // units per row (KVEC / VVEC)
const uint KUPL = KVEC != 0u ? (KU + LPR - 1u) / LPR : 1u; // key units per lane
const uint VUPL = VVEC != 0u ? (VU + LPR - 1u) / LPR : 1u;

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

shared float sqin[ROWS * D];
shared float sq[ROWS * RK];
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
  float qv[KVEC != 0u ? ROWS * KUPL * DPU : 1u];
  [[unroll]] for (uint i = 0u; i < (KVEC != 0u ? KUPL : 0u); ++i) {
    const uint u = lane + i * LPR;
    [[unroll]] for (uint k = 0u; k < DPU; ++k)
      [[unroll]] for (uint r = 0u; r < ROWS; ++r)
        qv[(r * KUPL + i) * DPU + k] = u < KU ? sq[r * RK + u * DPU + k] : 0.0;
  }
  // First 16-byte unit of row 0 of the (single) float segment: its plane is at 0.
  const uint k16_base = k_base / 16u, v16_base = v_base / 16u;
  float accv[VVEC != 0u ? ROWS * VUPL * DPU : 1u];
  [[unroll]] for (uint i = 0u; i < (VVEC != 0u ? ROWS * VUPL * DPU : 0u); ++i) accv[i] = 0.0;
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
    if (KVEC != 0u) {
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
    float vv[VVEC != 0u ? VUPL * DPU : 1u];
    [[unroll]] for (uint i = 0u; i < (VVEC != 0u ? VUPL : 0u); ++i) {
      const uint u = lane + i * LPR;
      float x[DPU];
      kq_unpack(u < VU ? v16[v16_base + slot * VU + u] : uvec4(0u), x);
      [[unroll]] for (uint k = 0u; k < DPU; ++k) vv[i * DPU + k] = x[k];
    }
    [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
      float s = dots[r] * scale;
      if (kq_nonfinite(s)) s = KQ_POISON;
      if (s > m_run[r]) { // rescale only when the running maximum grows (rarely, after a while)
        const float f = exp(m_run[r] - s);
        m_run[r] = s;
        l_run[r] *= f;
        [[unroll]] for (uint i = 0u; i < (VVEC != 0u ? 0u : VPL); ++i) acc[r * VPL + i] *= f;
        [[unroll]] for (uint i = 0u; i < (VVEC != 0u ? VUPL * DPU : 0u); ++i)
          accv[r * VUPL * DPU + i] *= f;
      }
      const float w = exp(s - m_run[r]);
      l_run[r] += w;
      [[unroll]] for (uint i = 0u; i < (VVEC != 0u ? 0u : VPL); ++i) acc[r * VPL + i] += w * v[i];
      [[unroll]] for (uint i = 0u; i < (VVEC != 0u ? VUPL * DPU : 0u); ++i)
        accv[r * VUPL * DPU + i] += w * vv[i];
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
    [[unroll]] for (uint i = 0u; i < (VVEC != 0u ? VUPL : 0u); ++i) {
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
