// kq_seg.glsl — latent segment tables (SPEC §1b) as specialization constants.
//
// A table is a count and 16 packed words `width | bits << 16` (bits: 0 float
// in the cache's storage type, 8 = q8, 4 = q4), so that the driver compiles
// one pipeline per segment layout and folds every plane offset below to a
// multiply-add. The key table takes constant ids 16..32, the value table
// 33..49 (kq_push.h: KQ_SPEC_KEY_SEGS, KQ_SPEC_VALUE_SEGS). Buffers are
// planar (kqsvd_backend.h): per segment a data plane [gc, row bytes] and, when
// quantized, an F16 scale plane [gc], each starting at a multiple of 256
// bytes, gc = groups · capacity.

layout(constant_id = 16) const uint KSEG_N = 0;
layout(constant_id = 17) const uint KSEG0 = 0;
layout(constant_id = 18) const uint KSEG1 = 0;
layout(constant_id = 19) const uint KSEG2 = 0;
layout(constant_id = 20) const uint KSEG3 = 0;
layout(constant_id = 21) const uint KSEG4 = 0;
layout(constant_id = 22) const uint KSEG5 = 0;
layout(constant_id = 23) const uint KSEG6 = 0;
layout(constant_id = 24) const uint KSEG7 = 0;
layout(constant_id = 25) const uint KSEG8 = 0;
layout(constant_id = 26) const uint KSEG9 = 0;
layout(constant_id = 27) const uint KSEG10 = 0;
layout(constant_id = 28) const uint KSEG11 = 0;
layout(constant_id = 29) const uint KSEG12 = 0;
layout(constant_id = 30) const uint KSEG13 = 0;
layout(constant_id = 31) const uint KSEG14 = 0;
layout(constant_id = 32) const uint KSEG15 = 0;
layout(constant_id = 33) const uint VSEG_N = 0;
layout(constant_id = 34) const uint VSEG0 = 0;
layout(constant_id = 35) const uint VSEG1 = 0;
layout(constant_id = 36) const uint VSEG2 = 0;
layout(constant_id = 37) const uint VSEG3 = 0;
layout(constant_id = 38) const uint VSEG4 = 0;
layout(constant_id = 39) const uint VSEG5 = 0;
layout(constant_id = 40) const uint VSEG6 = 0;
layout(constant_id = 41) const uint VSEG7 = 0;
layout(constant_id = 42) const uint VSEG8 = 0;
layout(constant_id = 43) const uint VSEG9 = 0;
layout(constant_id = 44) const uint VSEG10 = 0;
layout(constant_id = 45) const uint VSEG11 = 0;
layout(constant_id = 46) const uint VSEG12 = 0;
layout(constant_id = 47) const uint VSEG13 = 0;
layout(constant_id = 48) const uint VSEG14 = 0;
layout(constant_id = 49) const uint VSEG15 = 0;
#define KQ_KEYS 0u
#define KQ_VALUES 1u

// Packed word of segment s of a side (0 past the count).
uint kq_seg(uint side, uint s) {
  switch (s) {
  case 0u: return side == KQ_KEYS ? KSEG0 : VSEG0;
  case 1u: return side == KQ_KEYS ? KSEG1 : VSEG1;
  case 2u: return side == KQ_KEYS ? KSEG2 : VSEG2;
  case 3u: return side == KQ_KEYS ? KSEG3 : VSEG3;
  case 4u: return side == KQ_KEYS ? KSEG4 : VSEG4;
  case 5u: return side == KQ_KEYS ? KSEG5 : VSEG5;
  case 6u: return side == KQ_KEYS ? KSEG6 : VSEG6;
  case 7u: return side == KQ_KEYS ? KSEG7 : VSEG7;
  case 8u: return side == KQ_KEYS ? KSEG8 : VSEG8;
  case 9u: return side == KQ_KEYS ? KSEG9 : VSEG9;
  case 10u: return side == KQ_KEYS ? KSEG10 : VSEG10;
  case 11u: return side == KQ_KEYS ? KSEG11 : VSEG11;
  case 12u: return side == KQ_KEYS ? KSEG12 : VSEG12;
  case 13u: return side == KQ_KEYS ? KSEG13 : VSEG13;
  case 14u: return side == KQ_KEYS ? KSEG14 : VSEG14;
  case 15u: return side == KQ_KEYS ? KSEG15 : VSEG15;
  default: return 0u;
  }
}

uint kq_seg_count(uint side) { return side == KQ_KEYS ? KSEG_N : VSEG_N; }

uint kq_seg_width(uint w) { return w & 0xffffu; }
uint kq_seg_bits(uint w) { return w >> 16u; }

// Bytes of one row of a segment; `elem` is the float storage size (2 or 4).
uint kq_seg_row_bytes(uint w, uint elem) {
  const uint b = kq_seg_bits(w), n = kq_seg_width(w);
  return b == 8u ? n : b == 4u ? n / 2u : n * elem;
}

uint kq_align256(uint x) { return (x + 255u) & ~255u; }

// Byte offsets of the data and scale planes of segment `idx` of a side.
uvec2 kq_seg_planes(uint side, uint idx, uint gc, uint elem) {
  const uint n = kq_seg_count(side);
  uint off = 0u;
  uvec2 r = uvec2(0u);
  for (uint s = 0u; s < n; ++s) {
    off = kq_align256(off);
    if (s == idx) r.x = off;
    off += gc * kq_seg_row_bytes(kq_seg(side, s), elem);
    if (kq_seg_bits(kq_seg(side, s)) != 0u) {
      off = kq_align256(off);
      if (s == idx) r.y = off;
      off += gc * 2u;
    }
  }
  return r;
}

// binary16 bits of x rounded to nearest even (the rule of kq_f32_to_f16:
// overflow to Inf, NaN stays a quiet NaN), independent of the driver's
// conversion rounding mode.
uint kq_f32_to_f16_bits(float f) {
  const uint x = floatBitsToUint(f);
  const uint sgn = (x >> 16u) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u)
    return sgn | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13u) & 0x3ffu) : 0u);
  if (ax >= 0x477ff000u) return sgn | 0x7c00u;
  if (ax < 0x38800000u) {
    if (ax < 0x33000000u) return sgn;
    const uint e = ax >> 23u, man = (ax & 0x7fffffu) | 0x800000u, sh = 126u - e;
    uint h = man >> sh;
    const uint rem = man & ((1u << sh) - 1u), mid = 1u << (sh - 1u);
    if (rem > mid || (rem == mid && (h & 1u) != 0u)) h++;
    return sgn | h;
  }
  const uint rr = ax - 0x38000000u;
  uint h = rr >> 13u;
  const uint rem = rr & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) != 0u)) h++;
  return sgn | h;
}

float kq_f16_bits_to_f32(uint h) { return unpackHalf2x16(h).x; }
