/* Per-head solutions of SPEC §1 from d×d R factors: KQ-SVD (the SVD of
 * R_1 R_2ᵀ, giving the best rank-r approximation of X_1 X_2ᵀ), and the
 * K-SVD / Eigen / plain-V baselines (right singular vectors). */
#include <float.h>
#include <string.h>

#include "kq_fit.h"
#include "kq_linalg.h"

size_t kq_solve_work_size(int32_t d) {
  return 3 * (size_t)d * (size_t)d + (size_t)d;
}

void kq_mul_rrt(int32_t d, const double *r1, const double *r2, double *m) {
  /* m[i,j] = Σ_x r1[i,x] r2[j,x]; both upper triangular: x >= max(i, j). */
  for (int32_t j = 0; j < d; j++)
    for (int32_t i = 0; i < d; i++) {
      double s = 0;
      for (int32_t x = i > j ? i : j; x < d; x++)
        s += r1[i + (size_t)x * d] * r2[j + (size_t)x * d];
      m[i + (size_t)j * d] = s;
    }
}

/* out = Rᵀ x for upper-triangular R (column-major): out[c] = Σ_{y<=c} R[y,c] x[y]. */
static void mul_rt_vec(int32_t d, const double *r, const double *x, double scale, double *out) {
  for (int32_t c = 0; c < d; c++) {
    double s = 0;
    const double *col = r + (size_t)c * d;
    for (int32_t y = 0; y <= c; y++) s += col[y] * x[y];
    out[c] = s * scale;
  }
}

/* The KQ-SVD step shared by keys and values: SVD R1 R2ᵀ = U Σ Wᵀ, then
 * down = R2ᵀ W Σ⁻¹ (acts on rows of X1), up = R1ᵀ U (acts on rows of X2).
 * σ_j below rounding level relative to σ_0 is a direction of a
 * rank-deficient problem: its columns are left zero (never divide by 0). */
static kq_status solve_pair(int32_t d, const double *r1, const double *r2, double *work,
                            double *down, double *up, double *sigma) {
  double *m = work, *w = work + (size_t)d * d;
  kq_mul_rrt(d, r1, r2, m);
  kq_svd_params sp = kq_svd_default_params();
  kq_status st = kq_svd_jacobi(d, d, m, d, sigma, w, d, &sp, NULL);
  if (st) return st;
  double tol = sigma[0] * (double)d * DBL_EPSILON;
  memset(down, 0, (size_t)d * d * sizeof *down);
  memset(up, 0, (size_t)d * d * sizeof *up);
  for (int32_t j = 0; j < d; j++) {
    if (!(sigma[j] > tol) || sigma[j] <= 0) continue;
    mul_rt_vec(d, r2, w + (size_t)j * d, 1.0 / sigma[j], down + (size_t)j * d);
    mul_rt_vec(d, r1, m + (size_t)j * d, 1.0, up + (size_t)j * d);
  }
  return KQ_OK;
}

/* Right singular vectors of an m×d matrix held in work (lda m): both
 * outputs get V (sorted by descending σ). */
static kq_status solve_right_vectors(int32_t m, int32_t d, double *a, double *v, double *out1,
                                     double *out2, double *sigma) {
  kq_svd_params sp = kq_svd_default_params();
  kq_status st = kq_svd_jacobi(m, d, a, m, sigma, v, d, &sp, NULL);
  if (st) return st;
  memcpy(out1, v, (size_t)d * d * sizeof *v);
  memcpy(out2, v, (size_t)d * d * sizeof *v);
  return KQ_OK;
}

kq_status kq_solve_keys(kq_method method, double alpha, int32_t d, const double *r_key,
                        const double *r_query, double *work, double *a, double *b, double *sigma) {
  size_t dd = (size_t)d * d;
  switch (method) {
  case KQ_METHOD_KQSVD:
    /* M = R_K R_Qᵀ: A = R_Qᵀ W Σ⁻¹ (keys), B = R_Kᵀ U (queries). */
    return solve_pair(d, r_key, r_query, work, a, b, sigma);
  case KQ_METHOD_KSVD:
    memcpy(work, r_key, dd * sizeof *work);
    return solve_right_vectors(d, d, work, work + 2 * dd, a, b, sigma);
  case KQ_METHOD_EIGEN: {
    /* [αR_K; R_Q/α] has the Gram matrix of [αK; Q/α]. */
    double *s = work;
    for (int32_t c = 0; c < d; c++)
      for (int32_t i = 0; i < d; i++) {
        s[i + (size_t)c * 2 * d] = alpha * r_key[i + (size_t)c * d];
        s[d + i + (size_t)c * 2 * d] = r_query[i + (size_t)c * d] / alpha;
      }
    return solve_right_vectors(2 * d, d, s, work + 2 * dd, a, b, sigma);
  }
  case KQ_METHOD_QUANT: break; /* no solve: identity basis (host/fit/quant) */
  }
  return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "unknown method %d", (int)method);
}

kq_status kq_solve_values(int32_t d, const double *r_value, const double *r_wo, double *work,
                          double *c, double *e, double *sigma) {
  size_t dd = (size_t)d * d;
  if (r_wo) return solve_pair(d, r_value, r_wo, work, c, e, sigma);
  memcpy(work, r_value, dd * sizeof *work);
  return solve_right_vectors(d, d, work, work + 2 * dd, c, e, sigma);
}
