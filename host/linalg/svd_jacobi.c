/*
 * svd_jacobi.c — one-sided Jacobi SVD (Hestenes), following the structure of
 * LAPACK's dgesvj: row-cyclic sweeps with de Rijk pivoting, Rutishauser's
 * rotation formulas, a pair counted as converged when
 * |a_pᵀa_q| <= sqrt(m)·ε·‖a_p‖·‖a_q‖, power-of-two pre-scaling, and an
 * optional QR preconditioning step (Jacobi on Rᵀ of A·P = Q·R).
 */
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kq_linalg.h"
#include "kq_simd.h"

/* Columns whose norm (after scaling the largest to ~1) is below this are set
 * to zero: they sit under the relative range of double and would only feed
 * denormals into the rotations. */
#define KQ_JAC_NEGLIGIBLE (DBL_MIN / DBL_EPSILON)
/* Products of column norms above this let a plain dot product be trusted
 * (underflowed terms are far below ε·‖a_p‖·‖a_q‖); below it the dot product
 * is taken on normalised columns. */
#define KQ_JAC_SAFE_PRODUCT 1e-250
/* Norms whose square would lose digits to underflow are recomputed with
 * scaling instead of taken from the fused sum of squares. */
#define KQ_JAC_SAFE_SUMSQ 1e-250
/* Rutishauser: beyond this |ζ|, t = 1/(2ζ) to full accuracy. */
#define KQ_JAC_BIG_ZETA 1e8
/* Columns with norms at least this (and at most ~sqrt(n) after scaling)
 * have squared norms, products of them and tol² times those all in range,
 * so the sweep may work on squared norms. */
#define KQ_JAC_FAST_NORM 1e-60

kq_svd_params kq_svd_default_params(void) {
  kq_svd_params p = {.max_sweeps = 30, .qr_precondition = 0};
  return p;
}

/* x *= 2^k exactly (barring underflow), for |k| up to ~2100. */
static void scale_pow2(double *x, int m, int k) {
  while (k != 0) {
    int step = k > 1000 ? 1000 : (k < -1000 ? -1000 : k);
    double f = ldexp(1.0, step);
    for (int i = 0; i < m; i++) x[i] *= f;
    k -= step;
  }
}

static void swap_columns(double *x, int ld, int rows, int p, int q) {
  double *xp = x + (size_t)p * ld, *xq = x + (size_t)q * ld;
  for (int i = 0; i < rows; i++) {
    double t = xp[i];
    xp[i] = xq[i];
    xq[i] = t;
  }
}

/* Norm of a column that rotations made very small; below the negligible
 * level (the largest norm is ~1) it is set to zero and skipped from now on,
 * so that 1/‖a‖ and norm ratios stay finite. */
static double negligible_to_zero(double *x, int m) {
  double nx = kq_vec_norm2(x, m);
  if (nx >= KQ_JAC_NEGLIGIBLE) return nx;
  memset(x, 0, (size_t)m * sizeof(double));
  return 0.0;
}

/* A column whose norm fell below `noise`·(the largest norm it has had) by
 * cancellation holds nothing but rounding errors of earlier rotations: it is
 * numerically in the span of the other columns (rank deficiency). Rotating
 * it further only shrinks it by ~ε per sweep for dozens of sweeps, so it is
 * set to zero — a change below the backward error each rotation already
 * makes to that column. Returns the (possibly zero) norm. */
static double drop_cancelled(double *x, int m, double nx, double *ref, double noise) {
  if (nx > *ref) *ref = nx;
  if (nx == 0.0 || nx >= noise * *ref) return nx;
  memset(x, 0, (size_t)m * sizeof(double));
  return 0.0;
}

/* ---- inner kernels (inlined into a baseline and an AVX2 sweep) ---------- */

KQ_INLINE double k_dot(const double *restrict x, const double *restrict y, int m) {
  kq_v4d s0 = KQ_V4D_SET1(0.0), s1 = KQ_V4D_SET1(0.0), a, b, c, d;
  int i = 0;
  for (; i + 8 <= m; i += 8) {
    KQ_V4D_LOAD(a, x + i);
    KQ_V4D_LOAD(b, y + i);
    KQ_V4D_LOAD(c, x + i + 4);
    KQ_V4D_LOAD(d, y + i + 4);
    s0 += a * b;
    s1 += c * d;
  }
  s0 += s1;
  double s = KQ_V4D_SUM(s0);
  for (; i < m; i++) s += x[i] * y[i];
  return s;
}

/* Σ (x_i·sx)(y_i·sy): the dot product of normalised columns. */
KQ_INLINE double k_dot_scaled(const double *x, const double *y, int m, double sx, double sy) {
  double s = 0.0;
  for (int i = 0; i < m; i++) s += (x[i] * sx) * (y[i] * sy);
  return s;
}

/* x' = c·x − s·y, y' = s·x + c·y; returns ‖x'‖², ‖y'‖² (plain sums). */
KQ_INLINE void k_rot_norms(double *restrict x, double *restrict y, int m, double c, double s,
                           double *xx, double *yy) {
  kq_v4d vc = KQ_V4D_SET1(c), vs = KQ_V4D_SET1(s), nx = KQ_V4D_SET1(0.0), ny = KQ_V4D_SET1(0.0);
  kq_v4d a, b, u, w;
  int i = 0;
  for (; i + 4 <= m; i += 4) {
    KQ_V4D_LOAD(a, x + i);
    KQ_V4D_LOAD(b, y + i);
    u = vc * a - vs * b;
    w = vs * a + vc * b;
    nx += u * u;
    ny += w * w;
    KQ_V4D_STORE(x + i, u);
    KQ_V4D_STORE(y + i, w);
  }
  double sx = KQ_V4D_SUM(nx), sy = KQ_V4D_SUM(ny);
  for (; i < m; i++) {
    double a1 = x[i], b1 = y[i];
    double u1 = c * a1 - s * b1, w1 = s * a1 + c * b1;
    x[i] = u1;
    y[i] = w1;
    sx += u1 * u1;
    sy += w1 * w1;
  }
  *xx = sx;
  *yy = sy;
}

/* xᵀy and xᵀz in one pass over x. */
KQ_INLINE void k_dot2(const double *restrict x, const double *restrict y, const double *restrict z,
                      int m, double *xy, double *xz) {
  kq_v4d s0 = KQ_V4D_SET1(0.0), s1 = KQ_V4D_SET1(0.0), a, b, c;
  int i = 0;
  for (; i + 4 <= m; i += 4) {
    KQ_V4D_LOAD(a, x + i);
    KQ_V4D_LOAD(b, y + i);
    KQ_V4D_LOAD(c, z + i);
    s0 += a * b;
    s1 += a * c;
  }
  double t0 = KQ_V4D_SUM(s0), t1 = KQ_V4D_SUM(s1);
  for (; i < m; i++) {
    t0 += x[i] * y[i];
    t1 += x[i] * z[i];
  }
  *xy = t0;
  *xz = t1;
}

/* k_rot_norms plus x'ᵀz for the next pair, in the same pass. */
KQ_INLINE void k_rot_norms_dot(double *restrict x, double *restrict y, const double *restrict z,
                               int m, double c, double s, double *xx, double *yy, double *xz) {
  kq_v4d vc = KQ_V4D_SET1(c), vs = KQ_V4D_SET1(s), nx = KQ_V4D_SET1(0.0), ny = KQ_V4D_SET1(0.0);
  kq_v4d dz = KQ_V4D_SET1(0.0), a, b, u, w, e;
  int i = 0;
  for (; i + 4 <= m; i += 4) {
    KQ_V4D_LOAD(a, x + i);
    KQ_V4D_LOAD(b, y + i);
    KQ_V4D_LOAD(e, z + i);
    u = vc * a - vs * b;
    w = vs * a + vc * b;
    nx += u * u;
    ny += w * w;
    dz += u * e;
    KQ_V4D_STORE(x + i, u);
    KQ_V4D_STORE(y + i, w);
  }
  double sx = KQ_V4D_SUM(nx), sy = KQ_V4D_SUM(ny), sz = KQ_V4D_SUM(dz);
  for (; i < m; i++) {
    double a1 = x[i], b1 = y[i];
    double u1 = c * a1 - s * b1, w1 = s * a1 + c * b1;
    x[i] = u1;
    y[i] = w1;
    sx += u1 * u1;
    sy += w1 * w1;
    sz += u1 * z[i];
  }
  *xx = sx;
  *yy = sy;
  *xz = sz;
}

/* x' = c·x − s·y, y' = s·x + c·y (the same rotation on the columns of V). */
KQ_INLINE void k_rot(double *restrict x, double *restrict y, int m, double c, double s) {
  kq_v4d vc = KQ_V4D_SET1(c), vs = KQ_V4D_SET1(s), a0, b0, a1, b1, u;
  int i = 0;
  for (; i + 8 <= m; i += 8) {
    KQ_V4D_LOAD(a0, x + i);
    KQ_V4D_LOAD(b0, y + i);
    KQ_V4D_LOAD(a1, x + i + 4);
    KQ_V4D_LOAD(b1, y + i + 4);
    u = vc * a0 - vs * b0;
    KQ_V4D_STORE(x + i, u);
    u = vs * a0 + vc * b0;
    KQ_V4D_STORE(y + i, u);
    u = vc * a1 - vs * b1;
    KQ_V4D_STORE(x + i + 4, u);
    u = vs * a1 + vc * b1;
    KQ_V4D_STORE(y + i + 4, u);
  }
  for (; i < m; i++) {
    double a = x[i], b = y[i];
    x[i] = c * a - s * b;
    y[i] = s * a + c * b;
  }
}

/* ---- the sweep ---------------------------------------------------------- */

typedef struct jacobi_state {
  int m, n;
  double *a;
  int lda;
  double *v; /* n×n, or NULL when rotations are not accumulated */
  int ldv;
  int nv; /* rows of v */
  double *nrm;
  double *ref; /* largest norm each column has had: the scale of its rounding errors */
  double *sq;  /* squared norms (kept alongside nrm inside a sweep) */
  double tol;
  double max_cos; /* largest |cos| met in the sweep */
  double max_sin; /* largest |sin| of a rotation applied in the sweep */
} jacobi_state;

/* Rotation (c, s) that makes columns with norms np, nq and cosine cs
 * orthogonal (Rutishauser's formulas, overflow-safe for any norm ratio). */
static void rotation(double np, double nq, double cs, double *c, double *s) {
  double r = nq / np;
  double diff = r - 1.0 / r; /* (nq² − np²)/(np·nq) */
  double t;
  if (fabs(diff) > 2.0 * KQ_JAC_BIG_ZETA * fabs(cs)) {
    t = cs / diff; /* = 1/(2ζ) */
  } else {
    double zeta = 0.5 * diff / cs;
    t = copysign(1.0 / (fabs(zeta) + sqrt(1.0 + zeta * zeta)), zeta);
  }
  *c = 1.0 / sqrt(1.0 + t * t);
  *s = t * *c;
}

/* The same rotation from squared norms α = ‖a_p‖², β = ‖a_q‖² and
 * γ = a_pᵀa_q: ζ = (β − α)/(2γ), t = sign(ζ)/(|ζ| + sqrt(1 + ζ²)). */
static void rotation_sq(double alpha, double beta, double gamma, double *c, double *s) {
  double diff = beta - alpha;
  double t;
  if (fabs(diff) > 2.0 * KQ_JAC_BIG_ZETA * fabs(gamma)) {
    t = gamma / diff; /* = 1/(2ζ) */
  } else {
    double zeta = 0.5 * diff / gamma;
    t = copysign(1.0 / (fabs(zeta) + sqrt(1.0 + zeta * zeta)), zeta);
  }
  *c = 1.0 / sqrt(1.0 + t * t);
  *s = t * *c;
}

/* One row-cyclic sweep with de Rijk pivoting; returns rotations applied. */
KQ_INLINE int sweep_body(jacobi_state *st) {
  const int m = st->m, n = st->n, lda = st->lda, ldv = st->ldv, nv = st->nv;
  double *a = st->a, *v = st->v, *nrm = st->nrm, *ref = st->ref, *sq = st->sq;
  const double tol = st->tol, tol2 = tol * tol, noise = 4.0 * tol;
  int rotations = 0;
  double max_cos = 0.0, max_sin = 0.0;
  for (int j = 0; j < n; j++) sq[j] = nrm[j] * nrm[j];
  for (int p = 0; p < n - 1; p++) {
    int best = p;
    for (int q = p + 1; q < n; q++)
      if (nrm[q] > nrm[best]) best = q;
    if (best != p) {
      swap_columns(a, lda, m, p, best);
      if (v) swap_columns(v, ldv, nv, p, best);
      double t = nrm[p];
      nrm[p] = nrm[best];
      nrm[best] = t;
      t = ref[p];
      ref[p] = ref[best];
      ref[best] = t;
      t = sq[p];
      sq[p] = sq[best];
      sq[best] = t;
    }
    if (nrm[p] == 0.0) break; /* every remaining column is zero */
    double *ap = a + (size_t)p * lda;
    /* The dot product a_pᵀa_q of the next pair is computed in the same pass
     * as the current one (two dots sharing the read of a_p, or the rotation
     * producing the new a_p), which saves a third of the memory traffic. */
    double pending = 0.0;
    bool have_pending = false;
    for (int q = p + 1; q < n; q++) {
      double nq = nrm[q];
      double *aq = a + (size_t)q * lda;
      double *an = q + 1 < n ? aq + lda : NULL;
      bool had = have_pending;
      have_pending = false;
      if (nq == 0.0) continue;
      double np = nrm[p], dot;
      if (np * nq < KQ_JAC_SAFE_PRODUCT) {
        dot = NAN; /* use the scaled cosine */
      } else if (had) {
        dot = pending;
      } else if (an) {
        k_dot2(ap, aq, an, m, &dot, &pending);
        have_pending = true;
      } else {
        dot = k_dot(ap, aq, m);
      }
      double c, s, pp, qq;
      if (!isnan(dot) && np >= KQ_JAC_FAST_NORM && nq >= KQ_JAC_FAST_NORM) {
        /* Fast path on squared norms: no division or square root before
         * the test, one division and two roots before the rotation (this
         * scalar chain sits between consecutive vector passes). */
        max_cos = fmax(max_cos, fabs(dot) / (np * nq));
        if (!(dot * dot > tol2 * sq[p] * sq[q])) continue;
        rotation_sq(sq[p], sq[q], dot, &c, &s);
      } else {
        double cs = isnan(dot) ? k_dot_scaled(ap, aq, m, 1.0 / np, 1.0 / nq) : (dot / np) / nq;
        max_cos = fmax(max_cos, fabs(cs));
        if (!(fabs(cs) > tol)) continue;
        rotation(np, nq, cs, &c, &s);
      }
      max_sin = fmax(max_sin, fabs(s));
      if (an) {
        k_rot_norms_dot(ap, aq, an, m, c, s, &pp, &qq, &pending);
        have_pending = true;
      } else {
        k_rot_norms(ap, aq, m, c, s, &pp, &qq);
        have_pending = false;
      }
      if (v) k_rot(v + (size_t)p * ldv, v + (size_t)q * ldv, nv, c, s);
      nrm[p] = pp >= KQ_JAC_SAFE_SUMSQ ? sqrt(pp) : negligible_to_zero(ap, m);
      nrm[q] = qq >= KQ_JAC_SAFE_SUMSQ ? sqrt(qq) : negligible_to_zero(aq, m);
      nrm[p] = drop_cancelled(ap, m, nrm[p], &ref[p], noise);
      nrm[q] = drop_cancelled(aq, m, nrm[q], &ref[q], noise);
      sq[p] = pp >= KQ_JAC_SAFE_SUMSQ && nrm[p] != 0.0 ? pp : nrm[p] * nrm[p];
      sq[q] = qq >= KQ_JAC_SAFE_SUMSQ && nrm[q] != 0.0 ? qq : nrm[q] * nrm[q];
      if (nrm[p] == 0.0) have_pending = false;
      rotations++;
    }
  }
  st->max_cos = max_cos;
  st->max_sin = max_sin;
  return rotations;
}

static int sweep_default(jacobi_state *st) {
  return sweep_body(st);
}

#if KQ_HAVE_AVX2_CLONE
KQ_TARGET_AVX2 static int sweep_avx2(jacobi_state *st) {
  return sweep_body(st);
}
#endif

static int sweep(jacobi_state *st) {
#if KQ_HAVE_AVX2_CLONE
  if (kq_linalg_have_avx2()) return sweep_avx2(st);
#endif
  return sweep_default(st);
}

/* ---- driver ------------------------------------------------------------- */

static void identity(int n, double *v, int ldv) {
  for (int j = 0; j < n; j++) {
    memset(v + (size_t)j * ldv, 0, (size_t)n * sizeof(double));
    v[(size_t)j * ldv + j] = 1.0;
  }
}

/* Core Jacobi on an m×n matrix already free of NaN/Inf. Writes σ (sorted,
 * unscaled), U over a, V (if v != NULL; v starts as given — identity for a
 * plain SVD). Returns OK or KQ_ERR_NO_CONVERGENCE (outputs finalised). */
static kq_status jacobi_core(int m, int n, double *a, int lda, double *sigma, double *v, int ldv,
                             int max_sweeps, kq_svd_info *info) {
  double *nrm = kq_malloc_array(3 * (size_t)n, sizeof(double), "Jacobi SVD norms");
  if (!nrm) return KQ_ERR_OUT_OF_MEMORY;
  double maxn = 0.0;
  for (int j = 0; j < n; j++) {
    nrm[j] = kq_vec_norm2(a + (size_t)j * lda, m);
    maxn = fmax(maxn, nrm[j]);
  }
  int k = 0;
  if (maxn > 0.0) {
    k = -ilogb(maxn) - 1; /* largest norm scaled into [0.5, 1) */
    for (int j = 0; j < n; j++) {
      double *aj = a + (size_t)j * lda;
      if (k != 0) scale_pow2(aj, m, k);
      nrm[j] = ldexp(nrm[j], k);
      if (nrm[j] < KQ_JAC_NEGLIGIBLE) {
        memset(aj, 0, (size_t)m * sizeof(double));
        nrm[j] = 0.0;
      } else if (nrm[j] < 1e-100) {
        nrm[j] = kq_vec_norm2(aj, m); /* entries may have lost bits to denormals */
      }
    }
  }
  for (int j = 0; j < n; j++) nrm[n + j] = nrm[j];
  jacobi_state st = {.m = m,
                     .n = n,
                     .a = a,
                     .lda = lda,
                     .v = v,
                     .ldv = ldv,
                     .nv = n,
                     .nrm = nrm,
                     .ref = nrm + n,
                     .sq = nrm + 2 * (size_t)n,
                     .tol = sqrt((double)m) * (DBL_EPSILON / 2)};
  kq_status status = KQ_ERR_NO_CONVERGENCE;
  int sweeps = 0, rotations = 0;
  while (sweeps < max_sweeps) {
    int r = sweep(&st);
    sweeps++;
    rotations += r;
    /* dgesvj's stopping rule: no rotation at all, or (after the first
     * sweeps) every cosine within sqrt(n)·tol and rotations so small that
     * n·max|cos|·max|sin| < tol. The second case ends the rare cycling of
     * nearly-null columns whose cosines rounding keeps just above tol. */
    bool tiny = sweeps > 2 && st.max_cos < sqrt((double)n) * st.tol &&
                (double)n * st.max_cos * st.max_sin < st.tol;
    if (r == 0 || tiny) {
      status = KQ_OK;
      break;
    }
  }
  if (n <= 1 && max_sweeps <= 0) status = KQ_OK; /* nothing to rotate */
  /* Final σ from exact norms; U = A·diag(1/σ). */
  for (int j = 0; j < n; j++) {
    double *aj = a + (size_t)j * lda;
    double s = nrm[j] == 0.0 ? 0.0 : kq_vec_norm2(aj, m);
    sigma[j] = s;
    if (s == 0.0) {
      memset(aj, 0, (size_t)m * sizeof(double));
    } else if (s >= DBL_MIN * 4) {
      double inv = 1.0 / s;
      for (int i = 0; i < m; i++) aj[i] *= inv;
    } else {
      for (int i = 0; i < m; i++) aj[i] /= s;
    }
  }
  /* Sort descending (selection sort keeps the column swaps to n). */
  for (int j = 0; j < n; j++) {
    int best = j;
    for (int q = j + 1; q < n; q++)
      if (sigma[q] > sigma[best]) best = q;
    if (best != j) {
      double t = sigma[j];
      sigma[j] = sigma[best];
      sigma[best] = t;
      swap_columns(a, lda, m, j, best);
      if (v) swap_columns(v, ldv, n, j, best);
    }
  }
  for (int j = 0; j < n; j++) sigma[j] = ldexp(sigma[j], -k);
  if (info) {
    info->sweeps = sweeps;
    info->rotations = rotations;
  }
  free(nrm);
  if (status != KQ_OK)
    kq_set_error(status, "Jacobi SVD (%d x %d): not converged after %d sweeps", m, n, sweeps);
  return status;
}

static kq_status check_finite(int m, int n, const double *a, int lda) {
  for (int j = 0; j < n; j++)
    for (int i = 0; i < m; i++)
      if (!isfinite(a[(size_t)j * lda + i]))
        return kq_set_error(KQ_ERR_NUMERIC, "Jacobi SVD: element (%d, %d) is %s", i, j,
                            isnan(a[(size_t)j * lda + i]) ? "NaN" : "Inf");
  return KQ_OK;
}

/* QR-preconditioned path: A·P = Q·R with P sorting columns by decreasing
 * norm, Jacobi on Rᵀ (faster convergence: R·Rᵀ is closer to diagonal),
 * then U = Q·V', V = P·U'. If Rᵀ has an exactly zero singular value the
 * right vectors would be incomplete; then Jacobi runs on R itself. */
static kq_status svd_qr_precond(int m, int n, double *a, int lda, double *sigma, double *v, int ldv,
                                const kq_svd_params *params, kq_svd_info *info) {
  size_t mn = (size_t)m * n, nn = (size_t)n * n;
  double *w =
      kq_malloc_array(mn + 3 * nn + 2 * (size_t)n + 1, sizeof(double), "Jacobi SVD workspace");
  int *perm = kq_malloc_array((size_t)n + 1, sizeof(int), "Jacobi SVD permutation");
  if (!w || !perm) {
    free(w);
    free(perm);
    return KQ_ERR_OUT_OF_MEMORY;
  }
  double *qr = w, *rt = w + mn, *vr = rt + nn, *rsave = vr + nn, *tau = rsave + nn, *nrm = tau + n;
  for (int j = 0; j < n; j++) {
    perm[j] = j;
    nrm[j] = kq_vec_norm2(a + (size_t)j * lda, m);
  }
  for (int j = 0; j < n; j++) { /* stable selection by decreasing norm */
    int best = j;
    for (int q = j + 1; q < n; q++)
      if (nrm[q] > nrm[best]) best = q;
    double t = nrm[j];
    nrm[j] = nrm[best];
    nrm[best] = t;
    int pt = perm[j];
    perm[j] = perm[best];
    perm[best] = pt;
  }
  /* Scale by 2^k (largest column norm into [0.5, 1)) so that QR works far
   * from overflow and underflow; σ is scaled back at the end. */
  int k = nrm[0] > 0.0 ? -ilogb(nrm[0]) - 1 : 0;
  for (int j = 0; j < n; j++) {
    memcpy(qr + (size_t)j * m, a + (size_t)perm[j] * lda, (size_t)m * sizeof(double));
    scale_pow2(qr + (size_t)j * m, m, k);
  }
  kq_status st = kq_qr_householder(m, n, qr, m, tau);
  if (st != KQ_OK) goto done;
  for (int j = 0; j < n; j++)
    for (int i = 0; i < n; i++) {
      double rij = i <= j ? qr[(size_t)j * m + i] : 0.0;
      rt[(size_t)i * n + j] = rij; /* Rᵀ(j, i) */
      rsave[(size_t)j * n + i] = rij;
    }
  identity(n, vr, n);
  st = jacobi_core(n, n, rt, n, sigma, vr, n, params->max_sweeps, info);
  if (st != KQ_OK && st != KQ_ERR_NO_CONVERGENCE) goto done;
  int zero_sigma = n > 0 && sigma[n - 1] == 0.0;
  if (!zero_sigma) {
    /* U = Q·[V'; 0]; V = P·U'. */
    for (int j = 0; j < n; j++) {
      double *uj = a + (size_t)j * lda;
      memcpy(uj, vr + (size_t)j * n, (size_t)n * sizeof(double));
      memset(uj + n, 0, (size_t)(m - n) * sizeof(double));
      for (int i = 0; i < n; i++) v[(size_t)j * ldv + perm[i]] = rt[(size_t)j * n + i];
    }
  } else {
    /* Jacobi on R: R·V_r = U_r·Σ with V_r orthogonal; U = Q·[U_r; 0]. */
    kq_svd_info first = info ? *info : (kq_svd_info){0, 0};
    identity(n, vr, n);
    st = jacobi_core(n, n, rsave, n, sigma, vr, n, params->max_sweeps, info);
    if (info) {
      info->sweeps += first.sweeps;
      info->rotations += first.rotations;
    }
    if (st != KQ_OK && st != KQ_ERR_NO_CONVERGENCE) goto done;
    for (int j = 0; j < n; j++) {
      double *uj = a + (size_t)j * lda;
      memcpy(uj, rsave + (size_t)j * n, (size_t)n * sizeof(double));
      memset(uj + n, 0, (size_t)(m - n) * sizeof(double));
      for (int i = 0; i < n; i++) v[(size_t)j * ldv + perm[i]] = vr[(size_t)j * n + i];
    }
  }
  kq_status st2 = kq_qr_apply_q(m, n, qr, m, tau, n, a, lda);
  if (st2 != KQ_OK) st = st2;
  for (int j = 0; j < n; j++) {
    if (sigma[j] == 0.0) memset(a + (size_t)j * lda, 0, (size_t)m * sizeof(double));
    sigma[j] = ldexp(sigma[j], -k);
  }
done:
  free(w);
  free(perm);
  return st;
}

kq_status kq_svd_jacobi(int m, int n, double *a, int lda, double *sigma, double *v, int ldv,
                        const kq_svd_params *params, kq_svd_info *info) {
  kq_svd_params defaults = kq_svd_default_params();
  if (!params) params = &defaults;
  if (info) {
    info->sweeps = 0;
    info->rotations = 0;
  }
  if (m < 0 || n < 0 || m < n)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "Jacobi SVD: need m >= n >= 0, got %d x %d", m, n);
  if (lda < (m > 1 ? m : 1) || ldv < (n > 1 ? n : 1))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "Jacobi SVD: lda %d / ldv %d too small for %d x %d", lda, ldv, m, n);
  if (params->max_sweeps < 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "Jacobi SVD: max_sweeps %d < 0",
                        params->max_sweeps);
  if (n == 0) return KQ_OK;
  if (!a || !sigma || !v)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "Jacobi SVD: NULL matrix or output");
  kq_status st = check_finite(m, n, a, lda);
  if (st != KQ_OK) return st;
  if (params->qr_precondition && n > 1)
    return svd_qr_precond(m, n, a, lda, sigma, v, ldv, params, info);
  identity(n, v, ldv);
  return jacobi_core(m, n, a, lda, sigma, v, ldv, params->max_sweeps, info);
}
