/*
 * kq_segments.cl — quantized latent segments (SPEC §1b, kqsvd_backend.h):
 * storing F32 latent rows into one segment's planes, and reading a tile of
 * a segment back as F32. Storage-independent: planes are addressed in bytes
 * (`base` + byte offsets), float segments are F16 when f16 != 0, else F32.
 * One launch per segment; the host passes the segment's column range and
 * plane offsets (kq_segment_planes).
 */

/* x / y rounded once to F32, as the host's quantizer divides (C's `/` on
 * floats). OpenCL's single-precision `/` may be off by 2.5 ulp, which can
 * move x / s across a rounding boundary; the quotient in double rounds to
 * F32 exactly (53 >= 2·24 + 2 bits: double rounding is innocuous). Without
 * fp64, two Newton steps on the exact residual (fma) reach the rounded
 * quotient. */
#ifdef cl_khr_fp64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
inline float kq_div_rn(float x, float y) {
  return (float)((double)x / (double)y);
}
#else
inline float kq_div_rn(float x, float y) {
  const float inv = 1.0f / y;
  float q = x * inv;
  q = fma(fma(-q, y, x), inv, q);
  return fma(fma(-q, y, x), inv, q);
}
#endif

/* Row t of group h (global id (t, h)) of the F32 latent rows
 * src[src_off + h·head_stride + t·row_stride + col .. + width), of sequence
 * i of tab (region in bytes), goes to slot h·capacity + pos_i + t - row0_i
 * of one segment:
 *   bits 0 (float): data plane [.., width] in F32 or F16 (round to nearest
 *                   even);
 *   bits 8 / 4:     s = max|x| / qmax rounded to F16 (scale plane),
 *                   q = clamp(round_half_away(x / s), ±qmax), 0 when s = 0;
 *                   a row with NaN / Inf stores zeros and the F16 NaN 0x7e00.
 *                   q4: element 2i in the low nibble, 2i + 1 in the high
 *                   one, each as q + 8.
 * The rule of kq_quantize_row, bit for bit. */
__kernel void kq_seg_store(__global const float *src, ulong src_off, int row_stride,
                           int head_stride, int col, int width, int bits, int f16,
                           __global uchar *base, ulong data_off, ulong scale_off, int capacity,
                           kq_ptab tab) {
  const int t = get_global_id(0), h = get_global_id(1);
  const int si = kq_ptab_seq(&tab, t);
  __global const float *x = src + src_off + (size_t)h * head_stride + (size_t)t * row_stride + col;
  const size_t slot = (size_t)h * capacity + tab.pos[si] + t - tab.row0[si];
  base += tab.reg[si];
  if (bits == 0) {
    if (f16) {
      __global half *d = (__global half *)(base + data_off) + slot * width;
      for (int i = 0; i < width; ++i) vstore_half_rte(x[i], i, d);
    } else {
      __global float *d = (__global float *)(base + data_off) + slot * width;
      for (int i = 0; i < width; ++i) d[i] = x[i];
    }
    return;
  }
  const int qmax = bits == 8 ? 127 : 7;
  __global half *sp = (__global half *)(base + scale_off);
  float amax = 0.0f;
  int bad = 0;
  for (int i = 0; i < width; ++i) {
    bad |= kq_nonfinite(x[i]);
    amax = fmax(amax, fabs(x[i]));
  }
  float s = 0.0f;
  if (bad) {
    ((__global ushort *)sp)[slot] = (ushort)0x7e00;
  } else {
    vstore_half_rte(kq_div_rn(amax, (float)qmax), slot, sp);
    s = vload_half(slot, sp);
  }
  const float fq = (float)qmax;
  if (bits == 8) {
    __global char *d = (__global char *)(base + data_off) + slot * width;
    for (int i = 0; i < width; ++i)
      d[i] = (char)(s > 0.0f ? clamp(round(kq_div_rn(x[i], s)), -fq, fq) : 0.0f);
  } else {
    __global uchar *d = base + data_off + slot * (size_t)(width / 2);
    for (int i = 0; i < width; i += 2) {
      const int q0 = s > 0.0f ? (int)clamp(round(kq_div_rn(x[i], s)), -fq, fq) : 0;
      const int q1 = s > 0.0f ? (int)clamp(round(kq_div_rn(x[i + 1], s)), -fq, fq) : 0;
      d[i / 2] = (uchar)((q0 + 8) | ((q1 + 8) << 4));
    }
  }
}

/* Element i (< width) of slot `slot` of a segment, dequantized (q · s). */
inline float kq_seg_load(__global const uchar *base, ulong data_off, ulong scale_off, int width,
                         int bits, int f16, size_t slot, int i) {
  if (bits == 0)
    return f16 ? vload_half(slot * width + i, (__global const half *)(base + data_off))
               : ((__global const float *)(base + data_off))[slot * width + i];
  const float s = vload_half(slot, (__global const half *)(base + scale_off));
  if (bits == 8) return (float)((__global const char *)(base + data_off))[slot * width + i] * s;
  const uchar b = base[data_off + slot * (size_t)(width / 2) + i / 2];
  return (float)((int)((i & 1) ? b >> 4 : b & 15) - 8) * s;
}

/* out[h, p, col + i] = segment element i of group h at position p0 + p, for
 * i < width (out is [groups, rows, ld] F32). global size (width, positions,
 * groups), positions <= rows. */
__kernel void kq_seg_widen(__global const uchar *base, ulong data_off, ulong scale_off, int width,
                           int bits, int f16, int capacity, int p0, __global float *out, int rows,
                           int ld, int col) {
  const int i = get_global_id(0), p = get_global_id(1), h = get_global_id(2);
  out[((size_t)h * rows + p) * ld + col + i] =
      kq_seg_load(base, data_off, scale_off, width, bits, f16, (size_t)h * capacity + p0 + p, i);
}
