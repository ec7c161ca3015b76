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
// Latents are read in place from their segments (kq_seg.glsl). A side that
// is one float segment of whole 16-byte rows is read in 16-byte units with
// q̃ in registers (KVEC / VVEC); any other side is walked segment by segment
// (SEGVEC): a segment whose rows are whole 16-byte units (row bytes a
// multiple of 16, so every row is 16-byte aligned: planes start at
// KQ_PLANE_ALIGN multiples and the host binds regions 16-byte aligned) is
// read in units (16 q8 / 32 q4 / 16 B of float dims per lane, unpacked with
// bit ops), other segments (e.g. 13 q4 bytes) element by element; a
// quantized segment's F16 scale multiplies the lane's partial dot product /
// weight once per segment and row.
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
layout(constant_id = KQ_SPEC_SEGVEC) const uint SEGVEC = 0;
// Value accumulators per lane and row of the segment walk (host: the walk's
// slot count of lane 0, the busiest lane).
layout(constant_id = KQ_SPEC_VACC) const uint VACC = 1;

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

// q̃ with one pad float per 32 dims: lanes reading units 16 or 32 dims apart
// hit different banks.
const uint RKP = RK + RK / 32u + 1u;
uint kq_sqi(uint r, uint e) {
  return r * RKP + e + (e >> 5u);
}
shared float sqin[ROWS * D];
shared float sq[ROWS * RKP];
shared float smrg[NPAR * ROWS * (RV + 2u)];
#if !KQ_SUBGROUP
shared float sred[NPAR * ROWS * LPR];
#endif

// Segment s of a side in the walk: width, format, row bytes, data and scale
// plane offsets (bytes from the side's base), whether its rows are read in
// 16-byte units, dims per unit, items per row (units, or dims).
struct kq_segw {
  uint w, bits, rb, data, sc, vec, dpu, n;
};

// `off` and `col`: running plane offset and first dim, advanced past s.
kq_segw kq_walk(uint side, uint s, inout uint off, uint gc) {
  kq_segw g;
  const uint sw = kq_seg(side, s);
  g.w = kq_seg_width(sw);
  g.bits = kq_seg_bits(sw);
  g.rb = kq_seg_row_bytes(sw, ELEM);
  g.data = kq_align256(off);
  off = g.data + gc * g.rb;
  g.sc = 0u;
  if (g.bits != 0u) {
    g.sc = kq_align256(off);
    off = g.sc + gc * 2u;
  }
  g.vec = (SEGVEC & (side == KQ_KEYS ? 1u : 2u)) != 0u && g.rb % 16u == 0u ? 1u : 0u;
  g.dpu = g.bits == 8u ? 16u : g.bits == 4u ? 32u : DPU;
  g.n = g.vec != 0u ? g.rb / 16u : g.w;
  return g;
}

// The dims of a 16-byte unit of a segment (the first g.dpu entries of x):
// int8 sign-extended, int4 as nibble - 8 (element 2i in the low nibble).
void kq_unpack_unit(uvec4 u, uint bits, out float x[32]) {
  [[unroll]] for (uint k = 0u; k < 32u; ++k) x[k] = 0.0;
  if (bits == 8u) {
    [[unroll]] for (uint k = 0u; k < 16u; ++k)
      x[k] = float(bitfieldExtract(int(u[k >> 2u]), int(8u * (k & 3u)), 8));
  } else if (bits == 4u) {
    [[unroll]] for (uint k = 0u; k < 32u; ++k)
      x[k] = float(int(bitfieldExtract(u[k >> 3u], int(4u * (k & 7u)), 4)) - 8);
  } else {
    float y[DPU];
    kq_unpack(u, y);
    [[unroll]] for (uint k = 0u; k < DPU; ++k) x[k] = y[k];
  }
}

uvec4 kq_unit(uint side, uint at) {
  return side == KQ_KEYS ? k16[at / 16u] : v16[at / 16u];
}

// Element j of the row at byte address `row` (unscaled).
float kq_elem(uint side, uint row, uint j, uint bits) {
  if (bits == 0u) return side == KQ_KEYS ? float(kf[row / ELEM + j]) : float(vf[row / ELEM + j]);
  if (bits == 8u) return float(side == KQ_KEYS ? int(ki8[row + j]) : int(vi8[row + j]));
  const uint b = side == KQ_KEYS ? uint(k8[row + j / 2u]) : uint(v8[row + j / 2u]);
  return float(int((j & 1u) != 0u ? b >> 4u : b & 15u) - 8);
}

// The F16 scale at byte address `at`.
float kq_scale(uint side, uint at) {
  const uint lo = side == KQ_KEYS ? uint(k8[at]) : uint(v8[at]);
  const uint hi = side == KQ_KEYS ? uint(k8[at + 1u]) : uint(v8[at + 1u]);
  return kq_f16_bits_to_f32(lo | (hi << 8u));
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
    sq[kq_sqi(r, e)] = acc;
  }
  barrier();

  // 2. This lane's query values (KVEC).
  const uint gc = pc.p.gc;
  float qv[KVEC != 0u ? ROWS * KUPL * DPU : 1u];
  [[unroll]] for (uint i = 0u; i < (KVEC != 0u ? KUPL : 0u); ++i) {
    const uint u = lane + i * LPR;
    [[unroll]] for (uint k = 0u; k < DPU; ++k)
      [[unroll]] for (uint r = 0u; r < ROWS; ++r)
        qv[(r * KUPL + i) * DPU + k] = u < KU ? sq[kq_sqi(r, u * DPU + k)] : 0.0;
  }
  // First 16-byte unit of row 0 of the (single) float segment: its plane is at 0.
  const uint k16_base = k_base / 16u, v16_base = v_base / 16u;
  float accv[VVEC != 0u ? ROWS * VUPL * DPU : 1u];
  [[unroll]] for (uint i = 0u; i < (VVEC != 0u ? ROWS * VUPL * DPU : 0u); ++i) accv[i] = 0.0;
  float m_run[ROWS], l_run[ROWS], acc[VVEC != 0u ? 1u : ROWS * VACC];
  [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
    m_run[r] = KQ_NEG;
    l_run[r] = 0.0;
  }
  [[unroll]] for (uint i = 0u; i < (VVEC != 0u ? 0u : ROWS * VACC); ++i) acc[i] = 0.0;

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
      uint off = 0u, col = 0u;
      [[unroll]] for (uint s = 0u; s < KSEG_N; ++s) {
        const kq_segw g = kq_walk(KQ_KEYS, s, off, gc);
        const uint row = k_base + g.data + slot * g.rb;
        float part[ROWS];
        [[unroll]] for (uint r = 0u; r < ROWS; ++r) part[r] = 0.0;
        for (uint i = lane; i < g.n; i += LPR) {
          if (g.vec != 0u) {
            float x[32];
            kq_unpack_unit(kq_unit(KQ_KEYS, row + i * 16u), g.bits, x);
            [[unroll]] for (uint k = 0u; k < 32u; ++k)
              if (k < g.dpu)
                [[unroll]] for (uint r = 0u; r < ROWS; ++r)
                  part[r] += sq[kq_sqi(r, col + i * g.dpu + k)] * x[k];
          } else {
            const float x = kq_elem(KQ_KEYS, row, i, g.bits);
            [[unroll]] for (uint r = 0u; r < ROWS; ++r) part[r] += sq[kq_sqi(r, col + i)] * x;
          }
        }
        const float f = g.bits != 0u ? kq_scale(KQ_KEYS, k_base + g.sc + slot * 2u) : 1.0;
        [[unroll]] for (uint r = 0u; r < ROWS; ++r) dots[r] += part[r] * f;
        col += g.w;
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
    float vv[VVEC != 0u ? VUPL * DPU : 1u];
    [[unroll]] for (uint i = 0u; i < (VVEC != 0u ? VUPL : 0u); ++i) {
      const uint u = lane + i * LPR;
      float x[DPU];
      kq_unpack(u < VU ? v16[v16_base + slot * VU + u] : uvec4(0u), x);
      [[unroll]] for (uint k = 0u; k < DPU; ++k) vv[i * DPU + k] = x[k];
    }
    float wt[ROWS];
    [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
      float s = dots[r] * scale;
      if (kq_nonfinite(s)) s = KQ_POISON;
      if (s > m_run[r]) { // rescale only when the running maximum grows (rarely, after a while)
        const float f = exp(m_run[r] - s);
        m_run[r] = s;
        l_run[r] *= f;
        [[unroll]] for (uint i = 0u; i < (VVEC != 0u ? 0u : VACC); ++i) acc[r * VACC + i] *= f;
        [[unroll]] for (uint i = 0u; i < (VVEC != 0u ? VUPL * DPU : 0u); ++i)
          accv[r * VUPL * DPU + i] *= f;
      }
      const float w = exp(s - m_run[r]);
      l_run[r] += w;
      wt[r] = w;
      [[unroll]] for (uint i = 0u; i < (VVEC != 0u ? VUPL * DPU : 0u); ++i)
        accv[r * VUPL * DPU + i] += w * vv[i];
    }
    if (VVEC == 0u) { // P·Ṽ over the value segments, slot a: lane's item i of segment s
      uint off = 0u, a = 0u;
      [[unroll]] for (uint s = 0u; s < VSEG_N; ++s) {
        const kq_segw g = kq_walk(KQ_VALUES, s, off, gc);
        const uint row = v_base + g.data + slot * g.rb;
        const float f = g.bits != 0u ? kq_scale(KQ_VALUES, v_base + g.sc + slot * 2u) : 1.0;
        float ws[ROWS];
        [[unroll]] for (uint r = 0u; r < ROWS; ++r) ws[r] = wt[r] * f;
        const uint ni = (g.n + LPR - 1u) / LPR, per = g.vec != 0u ? g.dpu : 1u;
        [[unroll]] for (uint i = 0u; i < ni; ++i) {
          const uint u = lane + i * LPR;
          if (u >= g.n) continue;
          if (g.vec != 0u) {
            float x[32];
            kq_unpack_unit(kq_unit(KQ_VALUES, row + u * 16u), g.bits, x);
            [[unroll]] for (uint k = 0u; k < 32u; ++k) {
              const uint ai = a + i * per + k;
              if (k < g.dpu && ai < VACC)
                [[unroll]] for (uint r = 0u; r < ROWS; ++r) acc[r * VACC + ai] += ws[r] * x[k];
            }
          } else if (a + i < VACC) {
            const float x = kq_elem(KQ_VALUES, row, u, g.bits);
            [[unroll]] for (uint r = 0u; r < ROWS; ++r) acc[r * VACC + a + i] += ws[r] * x;
          }
        }
        a += ni * per;
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
    if (VVEC == 0u) { // the walk's slots back to their dims
      uint off = 0u, a = 0u, col = 0u;
      [[unroll]] for (uint s = 0u; s < VSEG_N; ++s) {
        const kq_segw g = kq_walk(KQ_VALUES, s, off, gc);
        const uint ni = (g.n + LPR - 1u) / LPR, per = g.vec != 0u ? g.dpu : 1u;
        [[unroll]] for (uint i = 0u; i < ni; ++i) {
          const uint u = lane + i * LPR;
          if (u < g.n)
            [[unroll]] for (uint k = 0u; k < per; ++k)
              if (a + i * per + k < VACC)
                smrg[b + 2u + col + u * per + k] = acc[r * VACC + a + i * per + k];
        }
        a += ni * per;
        col += g.w;
      }
    }
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
