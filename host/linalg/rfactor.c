/*
 * rfactor.c — R factor (RᵀR = XᵀX) of a tall stack of F32/F16/BF16/F64
 * row-major parts, streamed in blocks of rows, all in double.
 *
 * Pass 1 accumulates the upper triangle of XᵀX with a register-tiled kernel
 * and factors it with Cholesky. When that is not accurate enough (see
 * gram_is_safe), pass 2 re-reads the data and builds R by Householder
 * updates of [R; X_block] (TSQR with a flat tree), which never squares κ.
 * Nothing larger than a block of rows or d×d is ever held.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#include "kq_linalg.h"
#include "kq_simd.h"

/* Rows per block in the Gram pass: 16 rows × 128 columns of double is
 * 16 KiB, which stays in L1 while every tile of G streams over it (measured
 * faster than 32 or 64 rows, and steadier on a busy machine). */
#define KQ_GRAM_ROWS 16
/* Blocks summed into a partial Gram before it is added to the total: a
 * two-level sum keeps the rounding error ~(rows per group + groups)·ε
 * instead of growing with the number of blocks. */
#define KQ_GRAM_GROUP 64
/* Rows per block in the TSQR pass (column-major block, d columns). */
#define KQ_TSQR_ROWS 256

/* ---- conversion of rows to double ---------------------------------------- */

/* x[0..d) *= scale, and probe[0..4) += x·0, which turns NaN iff some x is
 * NaN or Inf (four lanes so that the sums do not serialise). */
KQ_INLINE void scale_and_probe(double *restrict x, int d, double scale, double *restrict probe) {
  kq_v4d acc, t, vs = KQ_V4D_SET1(scale), zero = KQ_V4D_SET1(0.0);
  KQ_V4D_LOAD(acc, probe);
  double tail = 0.0;
  int j = 0;
  if (scale != 1.0) {
    for (; j + 4 <= d; j += 4) {
      KQ_V4D_LOAD(t, x + j);
      t *= vs;
      KQ_V4D_STORE(x + j, t);
      acc += t * zero;
    }
    for (; j < d; j++) x[j] *= scale;
  } else {
    for (; j + 4 <= d; j += 4) {
      KQ_V4D_LOAD(t, x + j);
      acc += t * zero;
    }
  }
  for (int k = d & ~3; k < d; k++) tail += x[k] * 0.0;
  acc[0] += tail;
  KQ_V4D_STORE(probe, acc);
}

/* Converts `rows` rows from row0 of a part to double (row-major, stride ld),
 * times the part's scale, accumulating the NaN probe. */
static void convert_rows_default(const kq_matrix_view *pv, int64_t row0, int rows, double *x,
                                 int ld, double *probe) {
  size_t es = kq_dtype_size(pv->dtype);
  for (int r = 0; r < rows; r++) {
    size_t off = (size_t)(row0 + r) * (size_t)pv->row_stride * es;
    double *xr = x + (size_t)r * ld;
    kq_convert_to_f64(pv->dtype, (const char *)pv->data + off, xr, (size_t)pv->cols);
    scale_and_probe(xr, pv->cols, pv->scale, probe);
  }
}

#if KQ_HAVE_AVX2_CLONE
KQ_TARGET_AVX2 static void convert_rows_avx2(const kq_matrix_view *pv, int64_t row0, int rows,
                                             double *x, int ld, double *probe) {
  const int d = pv->cols;
  if (pv->dtype != KQ_DTYPE_F16 && pv->dtype != KQ_DTYPE_BF16) {
    size_t es = kq_dtype_size(pv->dtype);
    for (int r = 0; r < rows; r++) {
      size_t off = (size_t)(row0 + r) * (size_t)pv->row_stride * es;
      double *xr = x + (size_t)r * ld;
      kq_convert_to_f64(pv->dtype, (const char *)pv->data + off, xr, (size_t)d);
      scale_and_probe(xr, d, pv->scale, probe);
    }
    return;
  }
  for (int r = 0; r < rows; r++) {
    const uint16_t *s = (const uint16_t *)pv->data + (size_t)(row0 + r) * (size_t)pv->row_stride;
    double *xr = x + (size_t)r * ld;
    int j = 0;
    if (pv->dtype == KQ_DTYPE_F16) {
      for (; j + 8 <= d; j += 8) {
        __m256 f = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + j)));
        _mm256_storeu_pd(xr + j, _mm256_cvtps_pd(_mm256_castps256_ps128(f)));
        _mm256_storeu_pd(xr + j + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
      }
      for (; j < d; j++) xr[j] = kq_f16_to_f32(s[j]);
    } else {
      for (; j + 4 <= d; j += 4) {
        __m128i h = _mm_loadl_epi64((const __m128i *)(s + j));
        __m128i w = _mm_unpacklo_epi16(_mm_setzero_si128(), h); /* bf16 << 16 */
        _mm256_storeu_pd(xr + j, _mm256_cvtps_pd(_mm_castsi128_ps(w)));
      }
      for (; j < d; j++) xr[j] = kq_bf16_to_f32(s[j]);
    }
    scale_and_probe(xr, d, pv->scale, probe);
  }
}
#endif

typedef void (*convert_rows_fn)(const kq_matrix_view *pv, int64_t row0, int rows, double *x, int ld,
                                double *probe);

static convert_rows_fn pick_convert(void) {
#if KQ_HAVE_AVX2_CLONE
  if (kq_linalg_have_avx2()) return convert_rows_avx2;
#endif
  return convert_rows_default;
}

/* Finds the first non-finite element of a converted block (rows × d, stride
 * ld) and reports it; the caller has already seen that one exists. */
static kq_status report_non_finite(const double *x, int rows, int d, int ld, int part,
                                   int64_t row0) {
  for (int r = 0; r < rows; r++)
    for (int j = 0; j < d; j++)
      if (!isfinite(x[(size_t)r * ld + j]))
        return kq_set_error(KQ_ERR_NUMERIC, "R factor: part %d row %lld column %d is %s", part,
                            (long long)(row0 + r), j, isnan(x[(size_t)r * ld + j]) ? "NaN" : "Inf");
  return kq_set_error(KQ_ERR_NUMERIC, "R factor: part %d rows from %lld hold NaN/Inf", part,
                      (long long)row0);
}

/* Converts rows [row0, row0+rows) of a part to double, row-major with
 * stride ld (columns d..ld stay zero), times the part's scale. Returns
 * KQ_ERR_NUMERIC naming the element when any value is NaN/Inf. */
static kq_status load_rows(convert_rows_fn conv, const kq_matrix_view *pv, int part, int64_t row0,
                           int rows, double *x, int ld) {
  double probe[4] = {0.0, 0.0, 0.0, 0.0};
  conv(pv, row0, rows, x, ld, probe);
  double sum = (probe[0] + probe[1]) + (probe[2] + probe[3]);
  if (sum != 0.0 || isnan(sum)) return report_non_finite(x, rows, pv->cols, ld, part, row0);
  return KQ_OK;
}

/* ---- pass 1: G += XᵀX on the upper triangle ----------------------------- */

/* 4×8 tile of G (rows i0..i0+3, columns j0..j0+7) over `rows` rows of the
 * row-major block x (stride ld): 8 vector accumulators, per row 2 vector
 * loads + 4 broadcasts for 8 multiply-adds. */
KQ_INLINE void gram_tile(const double *restrict x, int rows, int ld, int i0, int j0,
                         double *restrict g, int ldg) {
  kq_v4d c00 = KQ_V4D_SET1(0.0), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00,
         c31 = c00, b0, b1;
  for (int r = 0; r < rows; r++) {
    const double *xr = x + (size_t)r * ld;
    KQ_V4D_LOAD(b0, xr + j0);
    KQ_V4D_LOAD(b1, xr + j0 + 4);
    kq_v4d a0 = KQ_V4D_SET1(xr[i0]), a1 = KQ_V4D_SET1(xr[i0 + 1]);
    kq_v4d a2 = KQ_V4D_SET1(xr[i0 + 2]), a3 = KQ_V4D_SET1(xr[i0 + 3]);
    c00 += a0 * b0;
    c01 += a0 * b1;
    c10 += a1 * b0;
    c11 += a1 * b1;
    c20 += a2 * b0;
    c21 += a2 * b1;
    c30 += a3 * b0;
    c31 += a3 * b1;
  }
  double *g0 = g + (size_t)i0 * ldg + j0;
  kq_v4d t;
#define KQ_GRAM_FLUSH(row, lo, hi)                                                                 \
  do {                                                                                             \
    KQ_V4D_LOAD(t, g0 + (size_t)(row)*ldg);                                                        \
    t += lo;                                                                                       \
    KQ_V4D_STORE(g0 + (size_t)(row)*ldg, t);                                                       \
    KQ_V4D_LOAD(t, g0 + (size_t)(row)*ldg + 4);                                                    \
    t += hi;                                                                                       \
    KQ_V4D_STORE(g0 + (size_t)(row)*ldg + 4, t);                                                   \
  } while (0)
  KQ_GRAM_FLUSH(0, c00, c01);
  KQ_GRAM_FLUSH(1, c10, c11);
  KQ_GRAM_FLUSH(2, c20, c21);
  KQ_GRAM_FLUSH(3, c30, c31);
#undef KQ_GRAM_FLUSH
}

/* g (dp×dp, row-major, upper part meaningful) += xᵀx for a rows×dp block;
 * dp is a multiple of 8 and the padding columns of x are zero. */
KQ_INLINE void gram_block_body(const double *x, int rows, int dp, double *g) {
  for (int i0 = 0; i0 < dp; i0 += 4)
    for (int j0 = i0 & ~7; j0 < dp; j0 += 8) gram_tile(x, rows, dp, i0, j0, g, dp);
}

static void gram_block_default(const double *x, int rows, int dp, double *g) {
  gram_block_body(x, rows, dp, g);
}

#if KQ_HAVE_AVX2_CLONE
/* gram_tile with explicit FMA: ISO C mode forbids the compiler to contract
 * a*b+c, and separate multiply/add doubles the µops of the hot loop. */
KQ_TARGET_AVX2 static inline void gram_tile_fma(const double *restrict x, int rows, int ld, int i0,
                                                int j0, double *restrict g, int ldg) {
  __m256d c00 = _mm256_setzero_pd(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
          c30 = c00, c31 = c00;
  for (int r = 0; r < rows; r++) {
    const double *xr = x + (size_t)r * ld;
    __m256d b0 = _mm256_loadu_pd(xr + j0), b1 = _mm256_loadu_pd(xr + j0 + 4);
    __m256d a = _mm256_broadcast_sd(xr + i0);
    c00 = _mm256_fmadd_pd(a, b0, c00);
    c01 = _mm256_fmadd_pd(a, b1, c01);
    a = _mm256_broadcast_sd(xr + i0 + 1);
    c10 = _mm256_fmadd_pd(a, b0, c10);
    c11 = _mm256_fmadd_pd(a, b1, c11);
    a = _mm256_broadcast_sd(xr + i0 + 2);
    c20 = _mm256_fmadd_pd(a, b0, c20);
    c21 = _mm256_fmadd_pd(a, b1, c21);
    a = _mm256_broadcast_sd(xr + i0 + 3);
    c30 = _mm256_fmadd_pd(a, b0, c30);
    c31 = _mm256_fmadd_pd(a, b1, c31);
  }
  double *g0 = g + (size_t)i0 * ldg + j0;
  __m256d lo[4] = {c00, c10, c20, c30}, hi[4] = {c01, c11, c21, c31};
  for (int k = 0; k < 4; k++) {
    double *gk = g0 + (size_t)k * ldg;
    _mm256_storeu_pd(gk, _mm256_add_pd(_mm256_loadu_pd(gk), lo[k]));
    _mm256_storeu_pd(gk + 4, _mm256_add_pd(_mm256_loadu_pd(gk + 4), hi[k]));
  }
}

KQ_TARGET_AVX2 static void gram_block_avx2(const double *x, int rows, int dp, double *g) {
  for (int i0 = 0; i0 < dp; i0 += 4)
    for (int j0 = i0 & ~7; j0 < dp; j0 += 8) gram_tile_fma(x, rows, dp, i0, j0, g, dp);
}
#endif

/* ---- pass 2: Householder update of [R; X_block] ------------------------- */

/* Reflectors per panel of the blocked TSQR update. */
#define KQ_TSQR_PANEL 8

/* Σ_i x[i]·y[i] */
KQ_INLINE double tsqr_dot(const double *restrict x, const double *restrict y, int n) {
  kq_v4d acc = KQ_V4D_SET1(0.0), a, b;
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    KQ_V4D_LOAD(a, x + i);
    KQ_V4D_LOAD(b, y + i);
    acc += a * b;
  }
  double s = KQ_V4D_SUM(acc);
  for (; i < n; i++) s += x[i] * y[i];
  return s;
}

/* y −= w·x */
KQ_INLINE void tsqr_axpy(double *restrict y, const double *restrict x, double w, int n) {
  kq_v4d vw = KQ_V4D_SET1(w), a, b;
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    KQ_V4D_LOAD(a, x + i);
    KQ_V4D_LOAD(b, y + i);
    b -= vw * a;
    KQ_V4D_STORE(y + i, b);
  }
  for (; i < n; i++) y[i] -= w * x[i];
}

/* Trailing update of one column by a full panel of reflectors (compact WY,
 * Qᵀ = I − Y·Tᵀ·Yᵀ with Y = [I; V]): w = Tᵀ(r_top + Vᵀx), r_top −= w,
 * x −= V·w. Two passes over x instead of 2·KQ_TSQR_PANEL. */
KQ_INLINE void tsqr_apply_panel(const double *restrict v, int ldv, const double *t,
                                double *restrict rtop, double *restrict x, int nb) {
  enum { P = KQ_TSQR_PANEL };
  double w[P], u[P];
  kq_v4d acc[P], a, b;
  for (int l = 0; l < P; l++) acc[l] = KQ_V4D_SET1(0.0);
  int i = 0;
  for (; i + 4 <= nb; i += 4) {
    KQ_V4D_LOAD(b, x + i);
    for (int l = 0; l < P; l++) {
      KQ_V4D_LOAD(a, v + (size_t)l * ldv + i);
      acc[l] += a * b;
    }
  }
  for (int l = 0; l < P; l++) {
    double s = KQ_V4D_SUM(acc[l]);
    for (int k = i; k < nb; k++) s += v[(size_t)l * ldv + k] * x[k];
    u[l] = rtop[l] + s;
  }
  for (int l = 0; l < P; l++) { /* w = Tᵀu; T(k, l) = t[l·P + k], upper */
    double s = 0.0;
    for (int k = 0; k <= l; k++) s += t[l * P + k] * u[k];
    w[l] = s;
    rtop[l] -= s;
  }
  i = 0;
  for (; i + 4 <= nb; i += 4) {
    KQ_V4D_LOAD(b, x + i);
    for (int l = 0; l < P; l++) {
      KQ_V4D_LOAD(a, v + (size_t)l * ldv + i);
      b -= a * KQ_V4D_SET1(w[l]);
    }
    KQ_V4D_STORE(x + i, b);
  }
  for (; i < nb; i++)
    for (int l = 0; l < P; l++) x[i] -= v[(size_t)l * ldv + i] * w[l];
}

/* R (d×d upper, column-major, ldr) := R factor of [R; X] for the nb×d
 * column-major block x (ldx); x is overwritten. Reflector k touches row k
 * of R and all of x only (the rows of R below k are already zero in the
 * columns it acts on), so a block costs ~2·nb·d² flops. Reflectors are
 * formed in panels of KQ_TSQR_PANEL columns and applied to the rest as one
 * block reflector, so the trailing columns are read twice per panel. */
KQ_INLINE void tsqr_update_body(int d, double *r, int ldr, int nb, double *x, int ldx) {
  double t[KQ_TSQR_PANEL * KQ_TSQR_PANEL], tau[KQ_TSQR_PANEL];
  for (int k0 = 0; k0 < d; k0 += KQ_TSQR_PANEL) {
    int kw = d - k0 < KQ_TSQR_PANEL ? d - k0 : KQ_TSQR_PANEL;
    /* Panel: unblocked Householder on columns k0..k0+kw. */
    for (int l = 0; l < kw; l++) {
      int k = k0 + l;
      double *xk = x + (size_t)k * ldx;
      double alpha = r[(size_t)k * ldr + k];
      double xnorm = kq_vec_norm2(xk, nb);
      tau[l] = 0.0;
      if (xnorm == 0.0) continue; /* H = I; xk is zero, so is its v */
      double beta = -copysign(hypot(alpha, xnorm), alpha);
      tau[l] = (beta - alpha) / beta;
      double den = alpha - beta; /* |den| >= |beta| > 0 */
      if (fabs(den) >= 0x1p-1000) {
        double inv = 1.0 / den;
        for (int i = 0; i < nb; i++) xk[i] *= inv;
      } else { /* 1/den would overflow: subnormal-scale data */
        for (int i = 0; i < nb; i++) xk[i] /= den;
      }
      r[(size_t)k * ldr + k] = beta;
      for (int j = k + 1; j < k0 + kw; j++) {
        double *xj = x + (size_t)j * ldx;
        double w = tau[l] * (r[(size_t)j * ldr + k] + tsqr_dot(xk, xj, nb));
        r[(size_t)j * ldr + k] -= w;
        tsqr_axpy(xj, xk, w, nb);
      }
    }
    if (k0 + kw >= d) break;
    /* T of Q = H_0···H_{kw−1} = I − Y·T·Yᵀ (forward, as LAPACK dlarft):
     * T_ll = τ_l, T(0:l, l) = −τ_l·T(0:l, 0:l)·(Vᵀv_l); the unit parts of
     * Y sit in distinct rows of R and add nothing to Yᵀy_l. */
    const double *v = x + (size_t)k0 * ldx;
    for (int l = 0; l < kw; l++) {
      double z[KQ_TSQR_PANEL];
      for (int k = 0; k < l; k++) z[k] = tsqr_dot(v + (size_t)k * ldx, v + (size_t)l * ldx, nb);
      for (int k = 0; k < l; k++) {
        double s = 0.0;
        for (int q = k; q < l; q++) s += t[q * KQ_TSQR_PANEL + k] * z[q];
        t[l * KQ_TSQR_PANEL + k] = -tau[l] * s; /* t[col * P + row] */
      }
      t[l * KQ_TSQR_PANEL + l] = tau[l];
    }
    /* Only a full panel has trailing columns (a short one is the last). */
    for (int j = k0 + kw; j < d; j++)
      tsqr_apply_panel(v, ldx, t, r + (size_t)j * ldr + k0, x + (size_t)j * ldx, nb);
  }
}

static void tsqr_update_default(int d, double *r, int ldr, int nb, double *x, int ldx) {
  tsqr_update_body(d, r, ldr, nb, x, ldx);
}

#if KQ_HAVE_AVX2_CLONE
KQ_TARGET_AVX2 static void tsqr_update_avx2(int d, double *r, int ldr, int nb, double *x, int ldx) {
  tsqr_update_body(d, r, ldr, nb, x, ldx);
}
#endif

/* ---- safety test for the Gram route -------------------------------------- */

/* Unit roundoff of the data as stored. */
static double dtype_roundoff(kq_dtype t) {
  switch (t) {
  case KQ_DTYPE_F16: return 0x1p-11;
  case KQ_DTYPE_BF16: return 0x1p-8;
  case KQ_DTYPE_F32: return 0x1p-24;
  default: return 0x1p-53;
  }
}

/* κ_F(R) = ‖R‖_F·‖R⁻¹‖_F (≥ κ₂(R), ≤ d·κ₂(R)) by back substitution. */
static double condition_frobenius(int d, const double *r, int ldr, double *work) {
  double nr = 0.0, ninv = 0.0;
  for (int j = 0; j < d; j++)
    for (int i = 0; i <= j; i++) nr += r[(size_t)j * ldr + i] * r[(size_t)j * ldr + i];
  for (int j = 0; j < d; j++) { /* column j of R⁻¹: solve R·y = e_j */
    for (int i = j + 1; i < d; i++) work[i] = 0.0;
    work[j] = 1.0 / r[(size_t)j * ldr + j];
    for (int i = j - 1; i >= 0; i--) {
      double s = 0.0;
      for (int k = i + 1; k <= j; k++) s += r[(size_t)k * ldr + i] * work[k];
      work[i] = -s / r[(size_t)i * ldr + i];
    }
    for (int i = 0; i <= j; i++) ninv += work[i] * work[i];
  }
  return sqrt(nr) * sqrt(ninv);
}

/* Whether the Cholesky factor of the computed Gram is as good as the data.
 *
 * Gram + Cholesky gives the exact R of XᵀX + E with ‖E‖ ≲ γ‖X‖², where
 * γ ≈ (d + rows per block + blocks per group + groups)·ε covers the
 * Cholesky and the two-level blocked sums. That moves σ_i² by up to γσ₁²,
 * i.e. σ_i by a relative γκ_i²/2 (κ_i = σ₁/σ_i): harmless for the large σ,
 * κ²-amplified for the small ones. The data itself is only known to its
 * storage roundoff u, which already moves every σ_i by u·σ₁ (a relative
 * uκ_i). So the Gram route loses nothing the data had while γκ²/2 <= uκ,
 * i.e. κ <= 2u/γ. We keep a further factor KQ_GRAM_MARGIN below that, so
 * that R also matches an exact factor of the stored values (what float64
 * references in tests compute) to well within the data's precision: with
 * 65536 rows and d = 128, γ ≈ 273ε and κ may reach ~2e4 for F32 data,
 * ~1.6e8 for F16 and ~1.3e9 for BF16 (the finest dtype among the parts
 * counts). F64 data has u = ε, where the bound is < 1; there we accept
 * κ <= 1e4, which keeps the smallest σ to ~1e-6 relative. κ is
 * over-estimated by κ_F(R) (at most d times too large), so the test errs
 * towards the TSQR fallback. */
#define KQ_GRAM_MARGIN 100.0
static bool gram_is_safe(int d, const double *r, int ldr, double u, int64_t total_rows,
                         double *work) {
  double groups = (double)(total_rows / (KQ_GRAM_ROWS * KQ_GRAM_GROUP) + 1);
  double gamma = ((double)d + KQ_GRAM_ROWS + KQ_GRAM_GROUP + groups) * DBL_EPSILON;
  double kmax = fmax(1e4, 2.0 * u / (KQ_GRAM_MARGIN * gamma));
  double kappa = condition_frobenius(d, r, ldr, work);
  return isfinite(kappa) && kappa <= kmax;
}

/* ---- driver -------------------------------------------------------------- */

static kq_status validate(const kq_matrix_view *parts, int n_parts, int ldr, int *out_d,
                          int64_t *out_rows, double *out_u) {
  if (!parts || n_parts <= 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "R factor: no parts given");
  int d = parts[0].cols;
  int64_t rows = 0;
  double u = 1.0;
  for (int p = 0; p < n_parts; p++) {
    const kq_matrix_view *pv = &parts[p];
    if (pv->cols != d || pv->cols < 0)
      return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                          "R factor: part %d has %d columns, part 0 has %d", p, pv->cols, d);
    if (pv->dtype != KQ_DTYPE_F32 && pv->dtype != KQ_DTYPE_F16 && pv->dtype != KQ_DTYPE_BF16 &&
        pv->dtype != KQ_DTYPE_F64)
      return kq_set_error(KQ_ERR_UNSUPPORTED, "R factor: part %d has unsupported dtype %d", p,
                          (int)pv->dtype);
    if (pv->rows < 0 || (pv->rows > 0 && (!pv->data || pv->row_stride < pv->cols)))
      return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                          "R factor: part %d has bad rows %lld / row stride %lld / data", p,
                          (long long)pv->rows, (long long)pv->row_stride);
    if (!isfinite(pv->scale))
      return kq_set_error(KQ_ERR_NUMERIC, "R factor: part %d has non-finite scale", p);
    rows += pv->rows;
    if (pv->rows > 0) u = fmin(u, dtype_roundoff(pv->dtype));
  }
  if (ldr < (d > 1 ? d : 1))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "R factor: ldr %d < %d", ldr, d);
  *out_d = d;
  *out_rows = rows;
  *out_u = u;
  return KQ_OK;
}

/* g (dp×dp, upper part) = XᵀX; gp is a second dp×dp buffer. */
static kq_status gram_pass(const kq_matrix_view *parts, int n_parts, int dp, double *x, double *g,
                           double *gp) {
  convert_rows_fn conv = pick_convert();
  void (*block)(const double *, int, int, double *) = gram_block_default;
#if KQ_HAVE_AVX2_CLONE
  if (kq_linalg_have_avx2()) block = gram_block_avx2;
#endif
  size_t ng = (size_t)dp * dp;
  int in_group = 0;
  memset(g, 0, ng * sizeof(double));
  memset(gp, 0, ng * sizeof(double));
  for (int p = 0; p < n_parts; p++) {
    for (int64_t r0 = 0; r0 < parts[p].rows; r0 += KQ_GRAM_ROWS) {
      int nb = (int)(parts[p].rows - r0 < KQ_GRAM_ROWS ? parts[p].rows - r0 : KQ_GRAM_ROWS);
      kq_status st = load_rows(conv, &parts[p], p, r0, nb, x, dp);
      if (st != KQ_OK) return st;
      block(x, nb, dp, gp);
      if (++in_group == KQ_GRAM_GROUP) {
        for (size_t i = 0; i < ng; i++) g[i] += gp[i];
        memset(gp, 0, ng * sizeof(double));
        in_group = 0;
      }
    }
  }
  for (size_t i = 0; i < ng; i++) g[i] += gp[i];
  return KQ_OK;
}

static kq_status tsqr_pass(const kq_matrix_view *parts, int n_parts, int d, double *row, double *xc,
                           double *r, int ldr) {
  convert_rows_fn conv = pick_convert();
  void (*update)(int, double *, int, int, double *, int) = tsqr_update_default;
#if KQ_HAVE_AVX2_CLONE
  if (kq_linalg_have_avx2()) update = tsqr_update_avx2;
#endif
  for (int j = 0; j < d; j++) memset(r + (size_t)j * ldr, 0, (size_t)d * sizeof(double));
  for (int p = 0; p < n_parts; p++) {
    for (int64_t r0 = 0; r0 < parts[p].rows; r0 += KQ_TSQR_ROWS) {
      int nb = (int)(parts[p].rows - r0 < KQ_TSQR_ROWS ? parts[p].rows - r0 : KQ_TSQR_ROWS);
      for (int i = 0; i < nb; i++) { /* transpose into the column-major block */
        kq_status st = load_rows(conv, &parts[p], p, r0 + i, 1, row, d);
        if (st != KQ_OK) return st;
        for (int j = 0; j < d; j++) xc[(size_t)j * KQ_TSQR_ROWS + i] = row[j];
      }
      update(d, r, ldr, nb, xc, KQ_TSQR_ROWS);
    }
  }
  return KQ_OK;
}

kq_status kq_rfactor(const kq_matrix_view *parts, int n_parts, double *r, int ldr,
                     kq_rfactor_info *info) {
  int d = 0;
  int64_t total = 0;
  double u = 1.0;
  kq_status st = validate(parts, n_parts, ldr, &d, &total, &u);
  if (st != KQ_OK) return st;
  if (info) {
    info->method = KQ_RFACTOR_CHOLESKY;
    info->min_pivot_ratio = 0.0;
  }
  if (d == 0) return KQ_OK;
  if (!r) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "R factor: NULL output");
  int dp = (d + 7) & ~7;
  size_t nx = (size_t)KQ_GRAM_ROWS * dp, ng = (size_t)dp * dp;
  size_t nt = (size_t)KQ_TSQR_ROWS * d;
  double *w = kq_calloc_array(nx + 2 * ng + nt + (size_t)d, sizeof(double), "R factor workspace");
  if (!w) return KQ_ERR_OUT_OF_MEMORY;
  double *x = w, *g = w + nx, *gp = g + ng, *xc = gp + ng, *vec = xc + nt;
  st = gram_pass(parts, n_parts, dp, x, g, gp);
  if (st != KQ_OK) goto done;
  bool finite = true;
  for (int j = 0; j < d; j++) {
    double *rj = r + (size_t)j * ldr;
    for (int i = 0; i <= j; i++) {
      rj[i] = g[(size_t)i * dp + j];
      finite = finite && isfinite(rj[i]);
    }
    for (int i = j + 1; i < d; i++) rj[i] = 0.0;
  }
  double ratio = 0.0;
  bool use_gram = false;
  if (finite) {
    if (kq_cholesky_upper(d, r, ldr, &ratio) == KQ_OK)
      use_gram = gram_is_safe(d, r, ldr, u, total, vec);
    else
      kq_clear_error(); /* a failed Cholesky only selects the fallback */
  }
  if (info) info->min_pivot_ratio = ratio;
  if (!use_gram) {
    if (info) info->method = KQ_RFACTOR_TSQR;
    st = tsqr_pass(parts, n_parts, d, vec, xc, r, ldr);
    if (st != KQ_OK) goto done;
    for (int k = 0; k < d; k++) /* non-negative diagonal: flip row k */
      if (r[(size_t)k * ldr + k] < 0.0)
        for (int j = k; j < d; j++) r[(size_t)j * ldr + k] = -r[(size_t)j * ldr + k];
  }
done:
  free(w);
  return st;
}
