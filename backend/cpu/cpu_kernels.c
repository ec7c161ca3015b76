/* Inner loops of the CPU backend: portable C plus an AVX2/FMA/F16C set
 * selected at run time (the rest of the library stays baseline x86-64). */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu_kernels.h"
#include "kq_common.h"
#include "kqsvd.h"

/* ---------------------------------------------------------------------- */
/* Portable versions                                                      */
/* ---------------------------------------------------------------------- */

static void gen_f16_to_f32(const uint16_t *src, float *dst, int n) {
  for (int i = 0; i < n; i++) dst[i] = kq_f16_to_f32(src[i]);
}

static void gen_f32_to_f16(const float *src, uint16_t *dst, int n) {
  for (int i = 0; i < n; i++) dst[i] = kq_f32_to_f16(src[i]);
}

static float gen_dot(const float *restrict a, const float *restrict b, int n) {
  /* Eight partial sums: vectorisable without reassociation flags. */
  float acc[8] = {0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) acc[k] += a[i + k] * b[i + k];
  float s = 0.0f;
  for (; i < n; i++) s += a[i] * b[i];
  return s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static void gen_logits(const float *q, int rows, const float *k, int nt, int dp, float *s,
                       int lds) {
  for (int i = 0; i < rows; i++)
    for (int t = 0; t < nt; t++)
      s[(size_t)i * lds + t] = gen_dot(q + (size_t)i * dp, k + (size_t)t * dp, dp);
}

static void gen_pv(const float *p, int rows, int lds, const float *v, int nt, int dp, float *acc) {
  for (int i = 0; i < rows; i++) {
    float *restrict a = acc + (size_t)i * dp;
    for (int t = 0; t < nt; t++) {
      float w = p[(size_t)i * lds + t];
      if (w == 0.0f) continue;
      const float *restrict vr = v + (size_t)t * dp;
      for (int c = 0; c < dp; c++) a[c] += w * vr[c];
    }
  }
}

static void gen_exp(float *x, int n) {
  for (int i = 0; i < n; i++) x[i] = expf(x[i]);
}

static int gen_any_nonfinite_rows(const float *s, int rows, int lds, int nt) {
  for (int r = 0; r < rows; r++)
    if (kq_any_nonfinite_f32(s + (size_t)r * lds, (size_t)nt)) return 1;
  return 0;
}

static void gen_softmax_update(float *s, int rows, int lds, int nt, float *m, float *l,
                               float *alpha) {
  for (int r = 0; r < rows; r++) {
    float *x = s + (size_t)r * lds;
    float tmax = -INFINITY;
    for (int t = 0; t < nt; t++) tmax = x[t] > tmax ? x[t] : tmax;
    if (tmax == -INFINITY) {
      for (int t = 0; t < nt; t++) x[t] = 0.0f;
      alpha[r] = 1.0f;
      continue;
    }
    float mnew = tmax > m[r] ? tmax : m[r];
    alpha[r] = m[r] == -INFINITY ? 0.0f : mnew == m[r] ? 1.0f : exp2f(m[r] - mnew);
    float sum = 0.0f;
    for (int t = 0; t < nt; t++) sum += (x[t] = exp2f(x[t] - mnew));
    l[r] = l[r] * alpha[r] + sum;
    m[r] = mnew;
  }
}

static void gen_matmul_rows(const float *x, int n, int ldx, const float *m, int d, int r,
                            float *out, int ldo) {
  for (int t = 0; t < n; t++) {
    float *restrict o = out + (size_t)t * ldo;
    const float *xr = x + (size_t)t * ldx;
    for (int k = 0; k < r; k++) o[k] = 0.0f;
    for (int i = 0; i < d; i++) {
      const float *restrict mr = m + (size_t)i * r;
      float w = xr[i];
      for (int k = 0; k < r; k++) o[k] += w * mr[k];
    }
  }
}

/* One column range [j0, j1) of rope_rows, all rows. */
static void gen_rope_cols(float *x, int nt, int ldx, int d, int halves, double *cs, double *sn,
                          const double *step_cos, const double *step_sin, int j0, int j1) {
  int half = d / 2;
  for (int j = j0; j < j1; j++) {
    double c = cs[j], sj = sn[j];
    int i0 = halves ? j : 2 * j, i1 = halves ? j + half : 2 * j + 1;
    for (int t = 0; t < nt; t++) {
      float *row = x + (size_t)t * ldx;
      float a = row[i0], b = row[i1], fc = (float)c, fs = (float)sj;
      row[i0] = a * fc - b * fs;
      row[i1] = a * fs + b * fc;
      double cn = c * step_cos[j] - sj * step_sin[j];
      sj = sj * step_cos[j] + c * step_sin[j];
      c = cn;
    }
    cs[j] = c;
    sn[j] = sj;
  }
}

static void gen_rope_rows(float *x, int nt, int ldx, int d, int halves, double *cs, double *sn,
                          const double *step_cos, const double *step_sin) {
  gen_rope_cols(x, nt, ldx, d, halves, cs, sn, step_cos, step_sin, 0, d / 2);
}

static void gen_widen_q8(const int8_t *src, float *dst, int n) {
  for (int i = 0; i < n; i++) dst[i] = (float)src[i];
}

static void gen_widen_q4(const uint8_t *src, float *dst, int n) {
  for (int i = 0; i + 1 < n; i += 2) {
    unsigned b = src[i / 2];
    dst[i] = (float)((int)(b & 15u) - 8);
    dst[i + 1] = (float)((int)(b >> 4) - 8);
  }
}

static void gen_widen_rows(int bits, int f16, const unsigned char *src, size_t stride, int nt,
                           int width, float *dst, int ld) {
  for (int t = 0; t < nt; t++) {
    const void *row = src + (size_t)t * stride;
    float *d = dst + (size_t)t * ld;
    if (bits == KQ_SEG_Q8)
      gen_widen_q8(row, d, width);
    else if (bits == KQ_SEG_Q4)
      gen_widen_q4(row, d, width);
    else if (f16)
      gen_f16_to_f32(row, d, width);
    else
      memcpy(d, row, (size_t)width * sizeof(float));
  }
}

static void gen_logits_seg(const float *q, int rows, const float *k, int nt, int dp,
                           const kq_cpu_seg *seg, int nseg, float *s, int lds) {
  for (int i = 0; i < rows; i++)
    for (int t = 0; t < nt; t++) {
      float sum = 0.0f;
      for (int g = 0; g < nseg; g++) {
        float part =
            gen_dot(q + (size_t)i * dp + seg[g].off, k + (size_t)t * dp + seg[g].off, seg[g].width);
        sum += seg[g].scale ? seg[g].scale[t] * part : part;
      }
      s[(size_t)i * lds + t] = sum;
    }
}

static void gen_pv_seg(const float *p, int rows, int lds, const float *v, int nt, int dp,
                       const kq_cpu_seg *seg, int nseg, float *acc, float *ptmp) {
  (void)ptmp;
  for (int i = 0; i < rows; i++)
    for (int g = 0; g < nseg; g++) {
      float *restrict a = acc + (size_t)i * dp + seg[g].off;
      for (int t = 0; t < nt; t++) {
        float w = p[(size_t)i * lds + t];
        if (seg[g].scale) w *= seg[g].scale[t];
        if (w == 0.0f) continue;
        const float *restrict vr = v + (size_t)t * dp + seg[g].off;
        for (int c = 0; c < seg[g].width; c++) a[c] += w * vr[c];
      }
    }
}

void kq_cpu_query_i16(int bits, const float *x, int w, int16_t *q, float *scale, int32_t *sum) {
  int wp = kq_cpu_i16_width(w);
  float amax = 0.0f;
  for (int c = 0; c < w; c++) amax = fmaxf(amax, fabsf(x[c]));
  memset(q, 0, (size_t)wp * sizeof *q);
  *sum = 0;
  *scale = amax / 32767.0f;
  if (!(amax > 0.0f) || !isfinite(amax)) {
    /* zeros, or a non-finite query: a NaN scale makes every logit NaN */
    if (!(amax == 0.0f)) *scale = NAN;
    return;
  }
  float inv = 32767.0f / amax;
  int32_t total = 0;
  /* chunk [c0, c0 + n): n = 32 while 32 elements remain, then 16 */
  for (int c0 = 0; c0 < wp;) {
    int n = bits == KQ_SEG_Q4 && c0 + 32 <= w ? 32 : 16;
    for (int j = 0; j < n && c0 + j < w; j++) {
      float v = x[c0 + j] * inv;
      int iv = (int)nearbyintf(v);
      iv = iv > 32767 ? 32767 : iv < -32767 ? -32767 : iv;
      int at = bits == KQ_SEG_Q4 ? (j % 2 ? n / 2 + j / 2 : j / 2) : j;
      q[c0 + at] = (int16_t)iv;
      total += iv;
    }
    c0 += n;
  }
  *sum = total;
}

/* Bytes of one digit run of a quantized segment of width w (q4: both
 * halves), each half padded to 32 digits, every 4 digits repeated 8 times
 * (a broadcast vector the kernels read as a plain load). */
static size_t i8_run_bytes(int bits, int w) {
  size_t half = (size_t)(bits == KQ_SEG_Q4 ? (w + 1) / 2 : w);
  half = ((half + 31) & ~(size_t)31) * 8;
  return bits == KQ_SEG_Q4 ? 2 * half : half;
}

size_t kq_cpu_query_i8_bytes(const kq_cpu_plane *pl, int npl) {
  size_t n = 0;
  for (int g = 0; g < npl; g++)
    if (pl[g].bits != KQ_SEG_FLOAT)
      n += KQ_CPU_I8_DIGITS * i8_run_bytes(pl[g].bits, pl[g].width) + 32;
  return n;
}

void kq_cpu_query_i8(const kq_cpu_plane *pl, int npl, const float *q, int rows, int ldq,
                     unsigned char *out, size_t ld) {
  for (int r = 0; r < rows; r++) {
    unsigned char *o = out + (size_t)r * ld;
    for (int g = 0; g < npl; g++) {
      const kq_cpu_plane *p = &pl[g];
      if (p->bits == KQ_SEG_FLOAT) continue;
      const float *x = q + (size_t)r * ldq + p->qoff;
      int w = p->width;
      size_t run = i8_run_bytes(p->bits, w), half = p->bits == KQ_SEG_Q4 ? run / 2 : run;
      memset(o + KQ_CPU_I8_DIGITS * run, 0, 32); /* scales, sums, padding */
      float amax = 0.0f;
      int finite = 1;
      for (int c = 0; c < w; c++) { /* no fmaxf: a libm call on the baseline ISA */
        float v = fabsf(x[c]);
        finite &= v <= FLT_MAX;
        amax = v > amax ? v : amax;
      }
      if (!finite) amax = NAN;
      float *scales = (float *)(void *)(o + KQ_CPU_I8_DIGITS * run);
      int32_t *sums = (int32_t *)(void *)(scales + KQ_CPU_I8_DIGITS);
      int halves = p->bits == KQ_SEG_Q4 ? 2 : 1;
      size_t digits = half / 8;                  /* per half, a multiple of 32 */
      for (int k = 0; k < KQ_CPU_I8_DIGITS; k++) /* the compact padding (see below) */
        for (int hh = 0; hh < halves; hh++) {
          size_t used = halves == 2 ? (size_t)(w + 1 - hh) / 2 : (size_t)w;
          memset(o + (size_t)k * run + (size_t)hh * half + used, 0, digits - used);
        }
      if (!(amax > 0.0f) || !isfinite(amax)) {
        memset(o, 0, KQ_CPU_I8_DIGITS * run);
        /* zeros, or a non-finite query: a NaN scale makes every logit NaN */
        for (int k = 0; k < KQ_CPU_I8_DIGITS; k++) scales[k] = amax == 0.0f ? 0.0f : NAN;
        o += KQ_CPU_I8_DIGITS * run + 32;
        continue;
      }
      double sc = (double)amax / 127.0, wk = sc;
      for (int k = 0; k < KQ_CPU_I8_DIGITS; k++, wk /= KQ_CPU_I8_BASE) scales[k] = (float)wk;
      float inv = (float)(1.0 / sc);
      /* Compact digits first, at byte at of each half (q4: even elements,
       * then odd ones from byte half), then every dword spread to its 32
       * bytes, the last first so that no compact byte is overwritten unread.
       * Rounding by truncation of y ± 0.5 (the residual digit takes up any
       * tie the same way; no libm call on the baseline ISA). */
      for (int c = 0; c < w; c++) {
        size_t at = p->bits == KQ_SEG_Q4 ? (c % 2 ? half : 0) + (size_t)c / 2 : (size_t)c;
        float y = x[c] * inv; /* in [-127, 127] */
        for (int k = 0; k < KQ_CPU_I8_DIGITS; k++) {
          int a = (int)(y + copysignf(0.5f, y)); /* branch-free: the signs are random */
          a = a > 127 ? 127 : a < -127 ? -127 : a;
          o[(size_t)k * run + at] = (unsigned char)(int8_t)a;
          sums[k] += a;
          y = (y - (float)a) * (float)KQ_CPU_I8_BASE; /* the residual, in [-127, 127] */
        }
      }
      for (int k = 0; k < KQ_CPU_I8_DIGITS; k++)
        for (int hh = 0; hh < halves; hh++) {
          unsigned char *base = o + (size_t)k * run + (size_t)hh * half;
          for (size_t i = digits / 4; i-- > 0;) {
            uint32_t d4;
            memcpy(&d4, base + 4 * i, 4);
            uint64_t d8 = (uint64_t)d4 | (uint64_t)d4 << 32;
            for (int j = 0; j < 4; j++) memcpy(base + 32 * i + 8 * j, &d8, 8);
          }
        }
      o += KQ_CPU_I8_DIGITS * run + 32;
    }
  }
}

static const kq_cpu_kernels g_generic = {
    .isa = "generic",
    .f16_to_f32 = gen_f16_to_f32,
    .f32_to_f16 = gen_f32_to_f16,
    .logits = gen_logits,
    .pv = gen_pv,
    .exp_inplace = gen_exp,
    .dot = gen_dot,
    .softmax_update = gen_softmax_update,
    .any_nonfinite_rows = gen_any_nonfinite_rows,
    .matmul_rows = gen_matmul_rows,
    .logits_f16 = NULL,
    .pv_f16 = NULL,
    .rope_rows = gen_rope_rows,
    .widen_rows = gen_widen_rows,
    .quantize_row = kq_quantize_row,
    .logits_seg = gen_logits_seg,
    .pv_seg = gen_pv_seg,
};

/* ---------------------------------------------------------------------- */
/* AVX2 + FMA + F16C                                                       */
/* ---------------------------------------------------------------------- */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KQ_HAVE_X86_KERNELS 1
#define KQ_INLINE static inline __attribute__((always_inline))
#define KQ_ROWS _Pragma("GCC unroll 4") /* unrolls a loop over the rows of a block */
#define KQ_X86_CAT2(a, b) a##b
#define KQ_X86_CAT(a, b) KQ_X86_CAT2(a, b)
#define KQ_X86_NAME(n) KQ_X86_CAT(KQ_X86_PREFIX, n)

/* AVX2 + FMA + F16C: 16 vector registers. */
#define KQ_X86 __attribute__((target("avx2,fma,f16c")))
#define KQ_X86_PREFIX avx2_
#define KQ_X86_ISA "avx2+fma+f16c"
#define KQ_X86_ROWS 2
#define KQ_X86_AVX512 0
#define KQ_X86_VNNI 0
#include "cpu_kernels_x86.inc"
#undef KQ_X86
#undef KQ_X86_PREFIX
#undef KQ_X86_ISA
#undef KQ_X86_ROWS
#undef KQ_X86_AVX512
#undef KQ_X86_VNNI

/* The same with AVX-512F/VL enabled: still 256-bit vectors (no 512-bit
 * frequency penalties anywhere), but 32 registers. */
#define KQ_X86 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl")))
#define KQ_X86_PREFIX avx512vl_
#define KQ_X86_ISA "avx2+fma+f16c+avx512vl"
#define KQ_X86_ROWS 4
#define KQ_X86_AVX512 1
#define KQ_X86_VNNI 0
#include "cpu_kernels_x86.inc"
#undef KQ_X86
#undef KQ_X86_PREFIX
#undef KQ_X86_ISA
#undef KQ_X86_ROWS
#undef KQ_X86_AVX512
#undef KQ_X86_VNNI

/* The same with AVX-512 VNNI: the integer kernels of quantized segments use
 * vpdpwssd (one instruction for vpmaddwd + vpaddd). */
#define KQ_X86 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))
#define KQ_X86_PREFIX avx512vnni_
#define KQ_X86_ISA "avx2+fma+f16c+avx512vl+vnni"
#define KQ_X86_ROWS 4
#define KQ_X86_AVX512 1
#define KQ_X86_VNNI 1
#include "cpu_kernels_x86.inc"
#undef KQ_X86
#undef KQ_X86_PREFIX
#undef KQ_X86_ISA
#undef KQ_X86_ROWS
#undef KQ_X86_AVX512
#undef KQ_X86_VNNI

#endif

#ifdef KQ_HAVE_X86_KERNELS
#include <cpuid.h>
/* 3: AVX2, FMA, F16C, AVX-512F/VL/BW and AVX-512 VNNI with their register
 * state enabled by the OS (XCR0); 2: the same without VNNI or BW; 1: without
 * AVX-512; 0: none of them. */
static int cpu_x86_level(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
  if (!(fma && osxsave && avx && f16c)) return 0;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & 6u) != 6u) return 0; /* XMM and YMM state */
  if (__get_cpuid_max(0, NULL) < 7) return 0;
  __cpuid_count(7, 0, a, b, c, d);
  if (!((b >> 5) & 1)) return 0;                    /* AVX2 */
  int avx512 = ((b >> 16) & 1) && ((b >> 31) & 1);  /* F and VL */
  if (!(avx512 && (lo & 0xE0u) == 0xE0u)) return 1; /* opmask and ZMM state */
  int vnni = ((c >> 11) & 1) && ((b >> 30) & 1);    /* VNNI and BW */
  return vnni ? 3 : 2;
}
#endif

static const kq_cpu_kernels *g_kernels = &g_generic;
static kq_cpu_kernels g_mixed; /* see faster_set */
static pthread_once_t g_kernels_once = PTHREAD_ONCE_INIT;
static char g_isa_note[96]; /* how the set was chosen, for kq_cpu_code_path */

/* CPU seconds of this thread: a timing that a descheduled thread does not
 * inflate (the machines are shared). */
static double cpu_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Seconds of the fastest of 5 trials of `reps` F16 decode tiles on kernel
 * set k: 4 query rows (a GQA group), logits and P·V over 16 positions at
 * rank 128 and 32 at rank 64 (the tiles attend uses). */
static double time_f16_decode(const kq_cpu_kernels *k, const uint16_t *kv, const float *q, float *s,
                              float *acc, int reps) {
  double best = INFINITY;
  for (int trial = 0; trial < 5; trial++) {
    double t0 = cpu_now_s();
    for (int i = 0; i < reps; i++) {
      k->logits_f16(q, 4, kv, 16, 128, s, 64);
      k->pv_f16(s, 4, 64, kv, 16, 128, acc);
      k->logits_f16(q, 4, kv, 32, 64, s, 64);
      k->pv_f16(s, 4, 64, kv, 32, 64, acc);
    }
    double dt = cpu_now_s() - t0;
    best = dt < best ? dt : best;
  }
  return best;
}

/* The AVX-512 set (32 registers, blocks of 4 rows) or the AVX2 one (16,
 * blocks of 2): they compute the same sums in the same order (bit-identical
 * results), but which is faster depends on the core (register file, the
 * AVX-512 licence on some Intel parts), so it is measured once. Returns
 * the faster and notes the ratio. */
static const kq_cpu_kernels *faster_set(const kq_cpu_kernels *wide) {
  uint16_t *kv = calloc(32 * 128, sizeof *kv);
  float *q = calloc(4 * 128, sizeof *q), *s = calloc(4 * 64, sizeof *s);
  float *acc = calloc(4 * 128, sizeof *acc);
  const kq_cpu_kernels *pick = wide;
  if (kv && q && s && acc) {
    for (int i = 0; i < 32 * 128; i++) kv[i] = kq_f32_to_f16((float)((i * 37) % 19 - 9) * 0.05f);
    for (int i = 0; i < 4 * 128; i++) q[i] = (float)((i * 29) % 17 - 8) * 0.01f;
    time_f16_decode(wide, kv, q, s, acc, 20); /* warm-up */
    double tw = time_f16_decode(wide, kv, q, s, acc, 200);
    double t2 = time_f16_decode(&avx2_kernels, kv, q, s, acc, 200);
    pick = t2 < tw ? &avx2_kernels : wide;
    if (pick == &avx2_kernels && wide == &avx512vnni_kernels) {
      /* the F16 kernels of the AVX2 set with VNNI's int8 logits (exact
       * integer sums: the same results as the AVX2 form, fewer instructions) */
      g_mixed = avx2_kernels;
      g_mixed.logits_planes_i8 = wide->logits_planes_i8;
      g_mixed.pv_plane_i8 = wide->pv_plane_i8;
      pick = &g_mixed;
    }
    /* speed of the AVX-512 set relative to the AVX2 one */
    snprintf(g_isa_note, sizeof g_isa_note,
             pick == wide ? " (timed %.2fx avx2)" : " (avx512 timed %.2fx)",
             pick == wide ? t2 / tw
             : tw > 0     ? t2 / tw
                          : 0.0);
  }
  free(kv), free(q), free(s), free(acc);
  return pick;
}

static void kernels_init(void) {
  const char *force = getenv("KQSVD_CPU_ISA");
  if (force && strcmp(force, "generic") == 0) return;
#ifdef KQ_HAVE_X86_KERNELS
  int level = cpu_x86_level();
  if (force && strcmp(force, "avx2") == 0 && level > 1) level = 1;
  if (force && strcmp(force, "avx512novnni") == 0 && level > 2) level = 2;
  if (level >= 1) g_kernels = &avx2_kernels;
  if (level >= 2) g_kernels = &avx512vl_kernels;
  if (level >= 3) g_kernels = &avx512vnni_kernels;
  if (level >= 2 && !(force && *force)) g_kernels = faster_set(g_kernels);
#endif
}

const kq_cpu_kernels *kq_cpu_kernels_get(void) {
  pthread_once(&g_kernels_once, kernels_init);
  return g_kernels;
}

/* ---------------------------------------------------------------------- */
/* Quantized path: int16 or F32 kernels, by measurement                    */
/* ---------------------------------------------------------------------- */

static int g_quant_int16, g_quant_int8, g_quant_int8_pv;
static char g_code_path[256];
static pthread_once_t g_quant_once = PTHREAD_ONCE_INIT;

/* Seconds of the fastest of 5 trials of `reps` decode tiles (4 query rows,
 * 64 positions, keys [32 q8, 64 q4], values [16 q8, 64 q4]: the Llama-shape
 * 0.28 recipe) on kernel path int16 (1) or F32 (0). */
static double time_quant_path(const kq_cpu_kernels *k, int int16, unsigned char *kq8,
                              unsigned char *kq4, float *q, int16_t *q16, float *p, float *acc,
                              int16_t *wtmp, int reps) {
  enum { R = 4, NT = 64 };
  float sc[NT], qs[R] = {1e-3f, 1e-3f, 1e-3f, 1e-3f}, s[R * NT];
  int32_t qsum[R] = {0};
  for (int t = 0; t < NT; t++) sc[t] = 0.01f;
  double best = INFINITY;
  for (int trial = 0; trial < 5; trial++) {
    double t0 = cpu_now_s();
    for (int i = 0; i < reps; i++) {
      if (int16) {
        k->logits_plane_i16(KQ_SEG_Q8, q16, R, 96, qs, qsum, kq8, 32, NT, 32, sc, s, NT, 0);
        k->logits_plane_i16(KQ_SEG_Q4, q16 + 32, R, 96, qs, qsum, kq4, 32, NT, 64, sc, s, NT, 1);
        k->pv_plane_i16(KQ_SEG_Q8, p, R, NT, kq8, 32, NT, 16, acc, 80, wtmp);
        k->pv_plane_i16(KQ_SEG_Q4, p, R, NT, kq4, 32, NT, 64, acc + 16, 80, wtmp);
      } else {
        k->logits_plane(KQ_SEG_Q8, 0, q, R, 96, kq8, 32, NT, 32, sc, s, NT, 0);
        k->logits_plane(KQ_SEG_Q4, 0, q + 32, R, 96, kq4, 32, NT, 64, sc, s, NT, 1);
        k->pv_plane(KQ_SEG_Q8, 0, p, R, NT, kq8, 32, NT, 16, acc, 80);
        k->pv_plane(KQ_SEG_Q4, 0, p, R, NT, kq4, 32, NT, 64, acc + 16, 80);
      }
    }
    double dt = cpu_now_s() - t0;
    best = dt < best ? dt : best;
  }
  return best;
}

static void quant_init(void) {
  const kq_cpu_kernels *k = kq_cpu_kernels_get();
  const char *mode = getenv("KQSVD_CPU_QUANT");
  double ratio = NAN;
  int have = k->logits_plane_i16 && k->logits_plane;
  g_quant_int16 = 0;
  /* int8 logits unless another path is asked for (its sums are exact
   * integers: F32-level results, conformance unchanged) */
  int with_pv = mode && strcmp(mode, "int8-pv") == 0;
  g_quant_int8 =
      k->logits_planes_i8 != NULL && !(mode && *mode && strcmp(mode, "int8") != 0 && !with_pv);
  /* int8 P·V with them, opt-in: exact to 2^-17 of a row's largest weight
   * per tile, but no faster than the F32 kernel on Zen 4 (cpu_kernels.h) */
  g_quant_int8_pv = g_quant_int8 && k->pv_plane_i8 != NULL && with_pv;
  if (have && mode && strcmp(mode, "int16") == 0) {
    g_quant_int16 = 1;
  } else if (have && mode && strcmp(mode, "auto") == 0) {
    enum { NT = 64 };
    unsigned char *kq8 = calloc(NT * 32, 1), *kq4 = calloc(NT * 32, 1);
    float *q = calloc(4 * 96, sizeof *q), *p = calloc(4 * NT, sizeof *p);
    float *acc = calloc(4 * 80, sizeof *acc);
    int16_t *q16 = calloc(4 * 96, sizeof *q16), *wtmp = calloc(KQ_CPU_I16_ROWS * 66, 2);
    if (kq8 && kq4 && q && p && acc && q16 && wtmp) {
      for (int i = 0; i < NT * 32; i++) {
        kq8[i] = (unsigned char)(i * 37 + 11);
        kq4[i] = (unsigned char)(i * 53 + 5);
      }
      for (int i = 0; i < 4 * 96; i++) {
        q[i] = (float)((i * 29) % 17 - 8) * 0.1f;
        q16[i] = (int16_t)((i * 977) % 20001 - 10000);
      }
      for (int i = 0; i < 4 * NT; i++) p[i] = (float)((i * 13) % 7) * 0.1f;
      time_quant_path(k, 1, kq8, kq4, q, q16, p, acc, wtmp, 20); /* warm-up */
      double ti = time_quant_path(k, 1, kq8, kq4, q, q16, p, acc, wtmp, 100);
      double tf = time_quant_path(k, 0, kq8, kq4, q, q16, p, acc, wtmp, 100);
      ratio = tf / ti;
      g_quant_int16 = ti < tf;
    }
    free(kq8), free(kq4), free(q), free(p), free(acc), free(q16), free(wtmp);
  }
  const char *path = g_quant_int16     ? "int16"
                     : g_quant_int8_pv ? "int8 logits and P.V"
                     : g_quant_int8    ? "int8 logits"
                                       : "f32";
  if (isfinite(ratio))
    snprintf(g_code_path, sizeof g_code_path, "%s%s, quantized %s (int16 timed %.2fx f32)", k->isa,
             g_isa_note, path, ratio);
  else
    snprintf(g_code_path, sizeof g_code_path, "%s%s, quantized %s", k->isa, g_isa_note, path);
}

int kq_cpu_quant_int8(void) {
  pthread_once(&g_quant_once, quant_init);
  return g_quant_int8;
}

int kq_cpu_quant_int8_pv(void) {
  pthread_once(&g_quant_once, quant_init);
  return g_quant_int8_pv;
}

int kq_cpu_quant_int16(void) {
  pthread_once(&g_quant_once, quant_init);
  return g_quant_int16;
}

const char *kq_cpu_code_path(void) {
  pthread_once(&g_quant_once, quant_init);
  return g_code_path;
}
