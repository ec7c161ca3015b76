/* cholesky.c — G = RᵀR for symmetric positive-definite G (upper triangle). */
#include <math.h>

#include "kq_linalg.h"

kq_status kq_cholesky_upper(int n, double *g, int ldg, double *out_min_pivot_ratio) {
  if (out_min_pivot_ratio) *out_min_pivot_ratio = 0.0;
  if (n < 0 || ldg < (n > 1 ? n : 1))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "Cholesky: bad shape %d (ldg %d)", n, ldg);
  double max_diag = 0.0;
  for (int j = 0; j < n; j++) max_diag = fmax(max_diag, g[(size_t)j * ldg + j]);
  double min_pivot = INFINITY;
  /* Left-looking by columns: column j of R needs columns 0..j−1 only. */
  for (int j = 0; j < n; j++) {
    double *gj = g + (size_t)j * ldg;
    for (int i = 0; i < j; i++) {
      const double *gi = g + (size_t)i * ldg;
      double s = gj[i];
      for (int k = 0; k < i; k++) s -= gi[k] * gj[k];
      gj[i] = s / gi[i];
    }
    double d = gj[j];
    for (int k = 0; k < j; k++) d -= gj[k] * gj[k];
    if (!(d > 0.0) || !isfinite(d))
      return kq_set_error(KQ_ERR_NUMERIC, "Cholesky: pivot %d of %d is not positive (%g)", j, n, d);
    gj[j] = sqrt(d);
    min_pivot = fmin(min_pivot, d);
  }
  if (out_min_pivot_ratio) *out_min_pivot_ratio = n == 0 ? 1.0 : min_pivot / max_diag;
  return KQ_OK;
}
