#version 450
// Expands positions [0, n_ctx) of the segmented latent buffer (SPEC §1b,
// table KSEG) of every sequence of a batch (workgroup z; the sequence table
// gives its buffer, n_ctx and first output position p0) into F32 rows:
// out[g, p0 + p, :] = the dequantized latent (q · s for quantized segments,
// the stored value for float ones). Used by the paths
// that rebuild keys from latents (RoPE pre) and by prefill of segmented
// caches; decode reads the segments directly (attend_seg.comp).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_shader_8bit_storage : require
#extension GL_EXT_shader_explicit_arithmetic_types_int8 : require
#include "kq_common.glsl"
#include "kq_push.h"
#include "kq_seg.glsl"

layout(local_size_x_id = 0) in;
layout(push_constant) uniform kq_pc { kq_push_dequant p; } pc;
layout(constant_id = 2) const uint R = 64;

layout(std430, set = 0, binding = 0) readonly buffer kq_src8 { uint8_t s8[]; };
layout(std430, set = 0, binding = 0) readonly buffer kq_srci8 { int8_t si8[]; };
layout(std430, set = 0, binding = 0) readonly buffer kq_srcf { CACHE_T sf[]; };
layout(std430, set = 0, binding = 1) writeonly buffer kq_out { float outv[]; };
layout(std430, set = 0, binding = 2) readonly buffer kq_seq { uint seqtab[]; };

#if KQ_F16
const uint ELEM = 2u;
#else
const uint ELEM = 4u;
#endif

// Push constants: kq_push_dequant (kq_push.h).
void main() {
  const uint g = gl_WorkGroupID.y, e0 = pc.p.seq_off + gl_WorkGroupID.z * KQ_DEQUANT_SEQ_WORDS;
  const uint base = seqtab[e0 + pc.p.base_word], p0 = seqtab[e0 + 2u], total = seqtab[e0 + 3u] * R;
  const uint gc = pc.p.gc;
  for (uint i = gl_GlobalInvocationID.x; i < total; i += gl_NumWorkGroups.x * gl_WorkGroupSize.x) {
    const uint p = i / R, e = i % R, slot = g * pc.p.capacity + p;
    uint s = 0u, col = 0u;
    while (s + 1u < KSEG_N && e >= col + kq_seg_width(kq_seg(KQ_KEYS, s))) col += kq_seg_width(kq_seg(KQ_KEYS, s++));
    const uint w = kq_seg(KQ_KEYS, s), bits = kq_seg_bits(w), j = e - col;
    const uvec2 pl = kq_seg_planes(KQ_KEYS, s, gc, ELEM);
    const uint row = base + pl.x + slot * kq_seg_row_bytes(w, ELEM);
    float x;
    if (bits == 0u) {
      x = float(sf[row / ELEM + j]);
    } else {
      const uint sat = base + pl.y + slot * 2u;
      const float sc = kq_f16_bits_to_f32(uint(s8[sat]) | (uint(s8[sat + 1u]) << 8u));
      float q;
      if (bits == 8u) {
        q = float(int(si8[row + j]));
      } else {
        const uint b = uint(s8[row + j / 2u]);
        q = float(int((j & 1u) != 0u ? b >> 4u : b & 15u) - 8);
      }
      x = q * sc;
    }
    outv[pc.p.out_off + (g * pc.p.n_total + p0 + p) * R + e] = x;
  }
}
