/* norm.c — the Euclidean norm of a double vector, safe at any scale. */
#include <math.h>

#include "kq_linalg.h"

double kq_vec_norm2(const double *x, int64_t n) {
  double amax = 0.0;
  for (int64_t i = 0; i < n; i++) amax = fmax(amax, fabs(x[i]));
  if (amax == 0.0 || !isfinite(amax)) return amax;
  double ss = 0.0;
  if (amax > 1e-140 && amax < 1e140) { /* squares and their sum stay in range */
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    return sqrt(ss);
  }
  /* Scale by 2^e ≈ 1/amax: exact, and scalbn reaches subnormal amax too
   * (where 2^e itself would overflow). */
  int e = -ilogb(amax);
  for (int64_t i = 0; i < n; i++) {
    double y = scalbn(x[i], e);
    ss += y * y;
  }
  return scalbn(sqrt(ss), -e);
}
