/*
 * qr_householder.c — unblocked Householder QR (as LAPACK dgeqr2) and the
 * product with its Q. Used by the QR-preconditioned Jacobi SVD on small
 * matrices; the streamed R factor has its own structured update (rfactor.c).
 */
#include <float.h>
#include <math.h>

#include "kq_linalg.h"

kq_status kq_qr_householder(int m, int n, double *a, int lda, double *tau) {
  if (m < 0 || n < 0 || m < n || lda < (m > 1 ? m : 1))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "Householder QR: bad shape %d x %d (lda %d)", m, n,
                        lda);
  for (int k = 0; k < n; k++) {
    double *ak = a + (size_t)k * lda;
    double alpha = ak[k];
    double xnorm = kq_vec_norm2(ak + k + 1, m - k - 1);
    if (xnorm == 0.0) {
      tau[k] = 0.0; /* already upper triangular in this column: H = I */
      continue;
    }
    double beta = -copysign(hypot(alpha, xnorm), alpha);
    tau[k] = (beta - alpha) / beta;
    double den = alpha - beta; /* |den| >= |beta| > 0 */
    if (fabs(den) >= 0x1p-1000) {
      double inv = 1.0 / den;
      for (int i = k + 1; i < m; i++) ak[i] *= inv;
    } else { /* 1/den would overflow: subnormal-scale data */
      for (int i = k + 1; i < m; i++) ak[i] /= den;
    }
    ak[k] = beta;
    /* Apply H_k = I − τ v vᵀ (v = [1; ak(k+1:m)]) to the trailing columns. */
    for (int j = k + 1; j < n; j++) {
      double *aj = a + (size_t)j * lda;
      double w = aj[k];
      for (int i = k + 1; i < m; i++) w += ak[i] * aj[i];
      w *= tau[k];
      aj[k] -= w;
      for (int i = k + 1; i < m; i++) aj[i] -= w * ak[i];
    }
  }
  return KQ_OK;
}

kq_status kq_qr_apply_q(int m, int n, const double *a, int lda, const double *tau, int ncols,
                        double *c, int ldc) {
  if (m < 0 || n < 0 || m < n || ncols < 0 || lda < (m > 1 ? m : 1) || ldc < (m > 1 ? m : 1))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "apply Q: bad shape %d x %d, %d columns", m, n,
                        ncols);
  for (int k = n - 1; k >= 0; k--) {
    if (tau[k] == 0.0) continue;
    const double *ak = a + (size_t)k * lda;
    for (int j = 0; j < ncols; j++) {
      double *cj = c + (size_t)j * ldc;
      double w = cj[k];
      for (int i = k + 1; i < m; i++) w += ak[i] * cj[i];
      w *= tau[k];
      cj[k] -= w;
      for (int i = k + 1; i < m; i++) cj[i] -= w * ak[i];
    }
  }
  return KQ_OK;
}
