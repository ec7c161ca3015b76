/* Inner loops of the CPU backend: portable C plus an AVX2/FMA/F16C set
 * selected at run time (the rest of the library stays baseline x86-64). */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_kernels.h"
#include "kq_common.h"

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
    alpha[r] = m[r] == -INFINITY ? 0.0f : expf(m[r] - mnew);
    float sum = 0.0f;
    for (int t = 0; t < nt; t++) sum += (x[t] = expf(x[t] - mnew));
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

static const kq_cpu_kernels g_generic = {
    .isa = "generic",
    .f16_to_f32 = gen_f16_to_f32,
    .f32_to_f16 = gen_f32_to_f16,
    .logits = gen_logits,
    .pv = gen_pv,
    .exp_inplace = gen_exp,
    .dot = gen_dot,
    .softmax_update = gen_softmax_update,
    .matmul_rows = gen_matmul_rows,
    .logits_f16 = NULL,
    .pv_f16 = NULL,
    .rope_rows = gen_rope_rows,
};

/* ---------------------------------------------------------------------- */
/* AVX2 + FMA + F16C                                                       */
/* ---------------------------------------------------------------------- */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KQ_HAVE_AVX2_KERNELS 1
#define KQ_AVX2 __attribute__((target("avx2,fma,f16c")))

KQ_AVX2 static void avx2_f16_to_f32(const uint16_t *src, float *dst, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
  for (; i < n; i++) dst[i] = kq_f16_to_f32(src[i]);
}

KQ_AVX2 static void avx2_f32_to_f16(const float *src, uint16_t *dst, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i *)(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; i++) dst[i] = kq_f32_to_f16(src[i]);
}

KQ_AVX2 static inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

KQ_AVX2 static float avx2_dot(const float *a, const float *b, int n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8)
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  float s = hsum8(_mm256_add_ps(acc0, acc1));
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

/* Four sums at once: [hsum(a), hsum(b), hsum(c), hsum(d)]. */
KQ_AVX2 static inline __m128 hsum4x8(__m256 a, __m256 b, __m256 c, __m256 d) {
  __m256 ab = _mm256_hadd_ps(a, b);
  __m256 cd = _mm256_hadd_ps(c, d);
  __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

KQ_AVX2 static inline __m256 load8_f32(const float *p) {
  return _mm256_loadu_ps(p);
}
KQ_AVX2 static inline __m256 load8_f16(const uint16_t *p) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
}

/* The logits and P·V kernels work on blocks of R <= 4 query rows (R a
 * constant after inlining, every loop over it unrolled, the accumulators in
 * registers): a group of 3 heads (9/3) runs as one block of 3 rather than
 * three single rows with one FMA chain each. KQ_ROWS unrolls a loop over the
 * rows of a block. */
#define KQ_INLINE static inline __attribute__((always_inline))
#define KQ_ROWS _Pragma("GCC unroll 4")

/* R <= 3 rows against 4 keys at a time (R x 4 accumulators, each key load
 * shared by the R rows): the 4 sums of one row reduce into 4 adjacent
 * logits, one horizontal reduction per 4 outputs. Blocks of 2 rows beat one
 * block of 4 (whose 16 accumulators spill, or with 2 keys reduce twice as
 * often): measured 5-10% at ranks 32-128 on Zen 4. */
#define KQ_DEFINE_LOGITS(NAME, KT, LOADK)                                                          \
  KQ_AVX2 KQ_INLINE void NAME##_block(const float *q, const int R, const KT *k, int nt, int dp,    \
                                      float *s, int lds) {                                         \
    const __m256 z = _mm256_setzero_ps();                                                          \
    int t = 0;                                                                                     \
    for (; t + 4 <= nt; t += 4) {                                                                  \
      const KT *k0 = k + (size_t)t * dp;                                                           \
      __m256 a[3][4] = {{z, z, z, z}, {z, z, z, z}, {z, z, z, z}};                                 \
      for (int c = 0; c < dp; c += 8) {                                                            \
        __m256 x0 = LOADK(k0 + c), x1 = LOADK(k0 + dp + c);                                        \
        __m256 x2 = LOADK(k0 + 2 * dp + c), x3 = LOADK(k0 + 3 * dp + c);                           \
        KQ_ROWS for (int r = 0; r < R; r++) {                                                      \
          __m256 w = _mm256_loadu_ps(q + (size_t)r * dp + c);                                      \
          a[r][0] = _mm256_fmadd_ps(w, x0, a[r][0]);                                               \
          a[r][1] = _mm256_fmadd_ps(w, x1, a[r][1]);                                               \
          a[r][2] = _mm256_fmadd_ps(w, x2, a[r][2]);                                               \
          a[r][3] = _mm256_fmadd_ps(w, x3, a[r][3]);                                               \
        }                                                                                          \
      }                                                                                            \
      KQ_ROWS for (int r = 0; r < R; r++)                                                          \
          _mm_storeu_ps(s + (size_t)r * lds + t, hsum4x8(a[r][0], a[r][1], a[r][2], a[r][3]));     \
    }                                                                                              \
    for (; t < nt; t++) {                                                                          \
      const KT *ka = k + (size_t)t * dp;                                                           \
      __m256 a[4] = {z, z, z, z};                                                                  \
      for (int c = 0; c < dp; c += 8) {                                                            \
        __m256 x = LOADK(ka + c);                                                                  \
        KQ_ROWS for (int r = 0; r < R; r++) a[r] =                                                 \
            _mm256_fmadd_ps(_mm256_loadu_ps(q + (size_t)r * dp + c), x, a[r]);                     \
      }                                                                                            \
      float ra[4];                                                                                 \
      _mm_storeu_ps(ra, hsum4x8(a[0], a[1], a[2], a[3]));                                          \
      KQ_ROWS for (int r = 0; r < R; r++) s[(size_t)r * lds + t] = ra[r];                          \
    }                                                                                              \
  }                                                                                                \
  KQ_AVX2 static void NAME(const float *q, int rows, const KT *k, int nt, int dp, float *s,        \
                           int lds) {                                                              \
    int i = 0;                                                                                     \
    for (; rows - i > 3; i += 2)                                                                   \
      NAME##_block(q + (size_t)i * dp, 2, k, nt, dp, s + (size_t)i * lds, lds);                    \
    const float *qi = q + (size_t)i * dp;                                                          \
    float *si = s + (size_t)i * lds;                                                               \
    switch (rows - i) {                                                                            \
    case 3: NAME##_block(qi, 3, k, nt, dp, si, lds); break;                                        \
    case 2: NAME##_block(qi, 2, k, nt, dp, si, lds); break;                                        \
    case 1: NAME##_block(qi, 1, k, nt, dp, si, lds); break;                                        \
    default: break;                                                                                \
    }                                                                                              \
  }

KQ_DEFINE_LOGITS(avx2_logits, float, load8_f32)
KQ_DEFINE_LOGITS(avx2_logits_f16, uint16_t, load8_f16)

/* acc rows += P · V for R rows: CW column vectors (8 floats each) per pass,
 * R x CW accumulators, each V load shared by the R rows; CW = 2 for 3-4
 * rows, 4 for 1-2 rows (>= 4 independent FMA chains), one vector for the
 * columns left over. */
#define KQ_DEFINE_PV(NAME, VT, LOADV)                                                              \
  KQ_AVX2 KQ_INLINE void NAME##_cols(const float *p, const int R, int lds, const VT *v, int nt,    \
                                     int dp, float *acc, const int CW, int c) {                    \
    __m256 a[4][4];                                                                                \
    KQ_ROWS for (int r = 0; r < R; r++) KQ_ROWS for (int j = 0; j < CW; j++) a[r][j] =             \
        _mm256_loadu_ps(acc + (size_t)r * dp + c + 8 * j);                                         \
    for (int t = 0; t < nt; t++) {                                                                 \
      const VT *vr = v + (size_t)t * dp + c;                                                       \
      __m256 x[4];                                                                                 \
      KQ_ROWS for (int j = 0; j < CW; j++) x[j] = LOADV(vr + 8 * j);                               \
      KQ_ROWS for (int r = 0; r < R; r++) {                                                        \
        __m256 w = _mm256_broadcast_ss(p + (size_t)r * lds + t);                                   \
        KQ_ROWS for (int j = 0; j < CW; j++) a[r][j] = _mm256_fmadd_ps(w, x[j], a[r][j]);          \
      }                                                                                            \
    }                                                                                              \
    KQ_ROWS for (int r = 0; r < R; r++) KQ_ROWS for (int j = 0; j < CW; j++)                       \
        _mm256_storeu_ps(acc + (size_t)r * dp + c + 8 * j, a[r][j]);                               \
  }                                                                                                \
  KQ_AVX2 KQ_INLINE void NAME##_block(const float *p, const int R, int lds, const VT *v, int nt,   \
                                      int dp, float *acc) {                                        \
    const int CW = R <= 2 ? 4 : 2;                                                                 \
    int c = 0;                                                                                     \
    for (; c + 8 * CW <= dp; c += 8 * CW) NAME##_cols(p, R, lds, v, nt, dp, acc, CW, c);           \
    for (; c < dp; c += 8) NAME##_cols(p, R, lds, v, nt, dp, acc, 1, c);                           \
  }                                                                                                \
  KQ_AVX2 static void NAME(const float *p, int rows, int lds, const VT *v, int nt, int dp,         \
                           float *acc) {                                                           \
    int i = 0;                                                                                     \
    for (; i + 4 <= rows; i += 4)                                                                  \
      NAME##_block(p + (size_t)i * lds, 4, lds, v, nt, dp, acc + (size_t)i * dp);                  \
    const float *pi = p + (size_t)i * lds;                                                         \
    float *ai = acc + (size_t)i * dp;                                                              \
    switch (rows - i) {                                                                            \
    case 3: NAME##_block(pi, 3, lds, v, nt, dp, ai); break;                                        \
    case 2: NAME##_block(pi, 2, lds, v, nt, dp, ai); break;                                        \
    case 1: NAME##_block(pi, 1, lds, v, nt, dp, ai); break;                                        \
    default: break;                                                                                \
    }                                                                                              \
  }

KQ_DEFINE_PV(avx2_pv, float, load8_f32)
KQ_DEFINE_PV(avx2_pv_f16, uint16_t, load8_f16)

/* exp by range reduction x = n ln2 + r, |r| <= ln2/2, and a degree-6
 * polynomial for e^r (relative error ~2e-7); below -87.3 the result is 0. */
KQ_AVX2 static __m256 avx2_exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f);
  __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(x, lo);
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(under, y);
}

KQ_AVX2 static void avx2_exp(float *x, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, avx2_exp8(_mm256_loadu_ps(x + i)));
  if (i < n) {
    float tmp[8] = {0};
    memcpy(tmp, x + i, (size_t)(n - i) * sizeof(float));
    _mm256_storeu_ps(tmp, avx2_exp8(_mm256_loadu_ps(tmp)));
    memcpy(x + i, tmp, (size_t)(n - i) * sizeof(float));
  }
}

/* out rows = x rows · M, 4 rows x 16 columns per register block. */
KQ_AVX2 static void avx2_matmul_rows(const float *x, int n, int ldx, const float *m, int d, int r,
                                     float *out, int ldo) {
  int t = 0;
  for (; t + 4 <= n; t += 4) {
    const float *x0 = x + (size_t)t * ldx, *x1 = x0 + ldx, *x2 = x1 + ldx, *x3 = x2 + ldx;
    float *o0 = out + (size_t)t * ldo, *o1 = o0 + ldo, *o2 = o1 + ldo, *o3 = o2 + ldo;
    int c = 0;
    for (; c + 16 <= r; c += 16) {
      __m256 a0 = _mm256_setzero_ps(), b0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      __m256 b1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), b2 = _mm256_setzero_ps();
      __m256 a3 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
      for (int i = 0; i < d; i++) {
        const float *mr = m + (size_t)i * r + c;
        __m256 ma = _mm256_loadu_ps(mr), mb = _mm256_loadu_ps(mr + 8);
        __m256 w = _mm256_broadcast_ss(x0 + i);
        a0 = _mm256_fmadd_ps(w, ma, a0), b0 = _mm256_fmadd_ps(w, mb, b0);
        w = _mm256_broadcast_ss(x1 + i);
        a1 = _mm256_fmadd_ps(w, ma, a1), b1 = _mm256_fmadd_ps(w, mb, b1);
        w = _mm256_broadcast_ss(x2 + i);
        a2 = _mm256_fmadd_ps(w, ma, a2), b2 = _mm256_fmadd_ps(w, mb, b2);
        w = _mm256_broadcast_ss(x3 + i);
        a3 = _mm256_fmadd_ps(w, ma, a3), b3 = _mm256_fmadd_ps(w, mb, b3);
      }
      _mm256_storeu_ps(o0 + c, a0), _mm256_storeu_ps(o0 + c + 8, b0);
      _mm256_storeu_ps(o1 + c, a1), _mm256_storeu_ps(o1 + c + 8, b1);
      _mm256_storeu_ps(o2 + c, a2), _mm256_storeu_ps(o2 + c + 8, b2);
      _mm256_storeu_ps(o3 + c, a3), _mm256_storeu_ps(o3 + c + 8, b3);
    }
    if (c < r) { /* column tail: the portable loop on these columns */
      for (int q = 0; q < 4; q++) {
        const float *xr = x0 + (size_t)q * ldx;
        float *o = o0 + (size_t)q * ldo;
        for (int k = c; k < r; k++) o[k] = 0.0f;
        for (int i = 0; i < d; i++) {
          const float *mr = m + (size_t)i * r;
          float w = xr[i];
          for (int k = c; k < r; k++) o[k] += w * mr[k];
        }
      }
    }
  }
  if (t < n) gen_matmul_rows(x + (size_t)t * ldx, n - t, ldx, m, d, r, out + (size_t)t * ldo, ldo);
}

/* Online-softmax update of a tile, see kq_cpu_kernels.softmax_update. */
KQ_AVX2 static void avx2_softmax_update(float *s, int rows, int lds, int nt, float *m, float *l,
                                        float *alpha) {
  int nt8 = (nt + 7) & ~7;
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  for (int r = 0; r < rows; r++) {
    float *x = s + (size_t)r * lds;
    for (int t = nt; t < nt8; t++) x[t] = -INFINITY;
    __m256 mx = ninf;
    for (int t = 0; t < nt8; t += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(x + t));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    float tmax = _mm_cvtss_f32(h);
    if (tmax == -INFINITY) { /* every position masked for this row */
      for (int t = 0; t < nt8; t++) x[t] = 0.0f;
      alpha[r] = 1.0f;
      continue;
    }
    float mnew = tmax > m[r] ? tmax : m[r];
    alpha[r] = m[r] == -INFINITY ? 0.0f : expf(m[r] - mnew);
    __m256 mv = _mm256_set1_ps(mnew), sum = _mm256_setzero_ps();
    for (int t = 0; t < nt8; t += 8) {
      __m256 e = avx2_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + t), mv));
      _mm256_storeu_ps(x + t, e);
      sum = _mm256_add_ps(sum, e);
    }
    l[r] = l[r] * alpha[r] + hsum8(sum);
    m[r] = mnew;
  }
}

/* rope_rows, four pairs at a time: the angles of a column block stay in
 * registers while the rows are walked. */
KQ_AVX2 static void avx2_rope_rows(float *x, int nt, int ldx, int d, int halves, double *cs,
                                   double *sn, const double *step_cos, const double *step_sin) {
  int half = d / 2, j = 0;
  const __m256i dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
  for (; j + 4 <= half; j += 4) {
    __m256d c = _mm256_loadu_pd(cs + j), s = _mm256_loadu_pd(sn + j);
    __m256d sc = _mm256_loadu_pd(step_cos + j), ss = _mm256_loadu_pd(step_sin + j);
    for (int t = 0; t < nt; t++) {
      float *row = x + (size_t)t * ldx;
      __m128 fc = _mm256_cvtpd_ps(c), fs = _mm256_cvtpd_ps(s);
      if (halves) {
        __m128 a = _mm_loadu_ps(row + j), b = _mm_loadu_ps(row + half + j);
        _mm_storeu_ps(row + j, _mm_fmsub_ps(a, fc, _mm_mul_ps(b, fs)));
        _mm_storeu_ps(row + half + j, _mm_fmadd_ps(a, fs, _mm_mul_ps(b, fc)));
      } else {
        __m256 v = _mm256_loadu_ps(row + 2 * j);
        __m256 c8 = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(fc), dup);
        __m256 s8 = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(fs), dup);
        __m256 sw = _mm256_permute_ps(v, 0xB1); /* (b, a) in every pair */
        /* even lanes a c - b s, odd lanes b c + a s */
        _mm256_storeu_ps(row + 2 * j, _mm256_fmaddsub_ps(v, c8, _mm256_mul_ps(sw, s8)));
      }
      __m256d cn = _mm256_fmsub_pd(c, sc, _mm256_mul_pd(s, ss));
      s = _mm256_fmadd_pd(s, sc, _mm256_mul_pd(c, ss));
      c = cn;
    }
    _mm256_storeu_pd(cs + j, c);
    _mm256_storeu_pd(sn + j, s);
  }
  if (j < half) gen_rope_cols(x, nt, ldx, d, halves, cs, sn, step_cos, step_sin, j, half);
}

static const kq_cpu_kernels g_avx2 = {
    .isa = "avx2+fma+f16c",
    .f16_to_f32 = avx2_f16_to_f32,
    .f32_to_f16 = avx2_f32_to_f16,
    .logits = avx2_logits,
    .pv = avx2_pv,
    .exp_inplace = avx2_exp,
    .dot = avx2_dot,
    .softmax_update = avx2_softmax_update,
    .matmul_rows = avx2_matmul_rows,
    .logits_f16 = avx2_logits_f16,
    .pv_f16 = avx2_pv_f16,
    .rope_rows = avx2_rope_rows,
};
#endif

#ifdef KQ_HAVE_AVX2_KERNELS
#include <cpuid.h>
/* AVX2, FMA and F16C in the CPU, and YMM state enabled by the OS (XCR0). */
static int cpu_has_avx2_fma_f16c(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
  if (!(fma && osxsave && avx && f16c)) return 0;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & 6u) != 6u) return 0; /* XMM and YMM state */
  if (__get_cpuid_max(0, NULL) < 7) return 0;
  __cpuid_count(7, 0, a, b, c, d);
  return (b >> 5) & 1; /* AVX2 */
}
#endif

static const kq_cpu_kernels *g_kernels = &g_generic;
static pthread_once_t g_kernels_once = PTHREAD_ONCE_INIT;

static void kernels_init(void) {
  const char *force = getenv("KQSVD_CPU_ISA");
  if (force && strcmp(force, "generic") == 0) return;
#ifdef KQ_HAVE_AVX2_KERNELS
  if (cpu_has_avx2_fma_f16c()) g_kernels = &g_avx2;
#endif
}

const kq_cpu_kernels *kq_cpu_kernels_get(void) {
  pthread_once(&g_kernels_once, kernels_init);
  return g_kernels;
}
