#version 450
// Latent projection of new tokens into a segmented (q8/q4) latent buffer
// (SPEC §1b), for one group (kv head, or the whole layer in the JOINT
// layout) and a tile of TT source rows:
//   lat[t, :] = src[t, head, :] · proj           (F32, shared memory)
// The row table (KQ_PROJECT_SEQ_WORDS per row) gives each row's latent
// buffer (its sequence's region) and position: one grid covers every
// sequence of a batch.
// then every segment row is stored: float segments in the storage type,
// quantized ones by the rule of kq_quantize_row: s = max|x| / qmax in F32,
// rounded to F16 (stored); q = clamp(round_half_away(x / s), ±qmax) with x / s
// in F32 from the rounded s; a row holding NaN/Inf stores a NaN scale and
// zeros. One invocation owns one (token, segment) row, so every byte of the
// output has one writer.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_shader_8bit_storage : require
#extension GL_EXT_shader_explicit_arithmetic_types_int8 : require
#include "kq_common.glsl"
#include "kq_push.h"
#include "kq_seg.glsl"

layout(local_size_x_id = 0) in;
layout(push_constant) uniform kq_pc { kq_push_project_seg p; } pc;
layout(constant_id = 1) const uint D = 128;
layout(constant_id = 2) const uint R = 64;
layout(constant_id = 3) const uint TT = 16;
layout(constant_id = 4) const uint IDENT = 0;

layout(std430, set = 0, binding = 0) readonly buffer kq_src { float src[]; };
layout(std430, set = 0, binding = 1) readonly buffer kq_proj { float proj[]; };
layout(std430, set = 0, binding = 2) writeonly buffer kq_dst8 { uint8_t d8[]; };
layout(std430, set = 0, binding = 2) writeonly buffer kq_dstf { CACHE_T df[]; };
layout(std430, set = 0, binding = 3) readonly buffer kq_seq { uint seqtab[]; };

#if KQ_F16
const uint ELEM = 2u;
#else
const uint ELEM = 4u;
#endif

// Push constants: kq_push_project_seg (kq_push.h).
shared float tile[TT * D];
shared float lat[TT * R];

// x / s rounded to float32, refined by one residual step so that drivers
// with an approximate division still round ties (x / s = j + 1/2) exactly.
float kq_div(float x, float s) {
  float y = x / s;
  const float r = fma(-y, s, x);
  return fma(r, 1.0 / s, y);
}

// round half away from zero (GLSL round() leaves halves to the driver).
float kq_round_away(float y) {
  const float t = trunc(y);
  return abs(y - t) >= 0.5 ? t + sign(y) : t;
}

void store_byte(uint at, uint v) { d8[at] = uint8_t(v); }

void main() {
  const uint lid = gl_LocalInvocationID.x, wg = gl_WorkGroupSize.x;
  const uint t0 = gl_WorkGroupID.x * TT, head = gl_WorkGroupID.y;
  const uint nt = min(TT, pc.p.n_tokens - t0);
  const uint stride = pc.p.n_heads * D;
  for (uint i = lid; i < nt * D; i += wg) {
    const uint t = i / D, k = i % D;
    tile[i] = src[pc.p.src_off + (t0 + t) * stride + head * D + k];
  }
  barrier();
  for (uint i = lid; i < nt * R; i += wg) {
    const uint t = i / R, r = i % R;
    float acc = 0.0;
    if (IDENT != 0u) {
      acc = tile[t * D + r];
    } else {
      const uint p = pc.p.proj_off + head * D * R + r;
      for (uint k = 0u; k < D; ++k) acc += tile[t * D + k] * proj[p + k * R];
    }
    lat[t * R + r] = acc;
  }
  barrier();
  const uint gc = pc.p.gc;
  for (uint i = lid; i < nt * KSEG_N; i += wg) {
    const uint t = i / KSEG_N, s = i % KSEG_N;
    const uint e = pc.p.seq_off + (pc.p.row0 + t0 + t) * KQ_PROJECT_SEQ_WORDS;
    const uint base = seqtab[e];
    const uint w = kq_seg(KQ_KEYS, s), n = kq_seg_width(w), bits = kq_seg_bits(w);
    uint col = 0u;
    for (uint j = 0u; j < s; ++j) col += kq_seg_width(kq_seg(KQ_KEYS, j));
    const uvec2 pl = kq_seg_planes(KQ_KEYS, s, gc, ELEM);
    const uint slot = head * pc.p.capacity + seqtab[e + 1u];
    const uint row = base + pl.x + slot * kq_seg_row_bytes(w, ELEM);
    const uint x0 = t * R + col;
    if (bits == 0u) {
      for (uint j = 0u; j < n; ++j) df[row / ELEM + j] = CACHE_T(lat[x0 + j]);
      continue;
    }
    const float qmax = bits == 8u ? 127.0 : 7.0;
    float amax = 0.0;
    bool bad = false;
    for (uint j = 0u; j < n; ++j) {
      bad = bad || kq_nonfinite(lat[x0 + j]);
      amax = max(amax, abs(lat[x0 + j]));
    }
    const uint sh = bad ? 0x7e00u : kq_f32_to_f16_bits(kq_div(amax, qmax));
    const float sc = kq_f16_bits_to_f32(sh);
    const bool zero = bad || !(sc > 0.0) || kq_nonfinite(sc);
    const uint sat = base + pl.y + slot * 2u;
    store_byte(sat, sh & 0xffu);
    store_byte(sat + 1u, sh >> 8u);
    for (uint j = 0u; j < n; j += (bits == 8u ? 1u : 2u)) {
      const float a = zero ? 0.0 : clamp(kq_round_away(kq_div(lat[x0 + j], sc)), -qmax, qmax);
      if (bits == 8u) {
        store_byte(row + j, uint(int(a)) & 0xffu);
      } else {
        const float b =
            zero ? 0.0 : clamp(kq_round_away(kq_div(lat[x0 + j + 1u], sc)), -qmax, qmax);
        store_byte(row + j / 2u, uint(int(a) + 8) | (uint(int(b) + 8) << 4u));
      }
    }
  }
}
