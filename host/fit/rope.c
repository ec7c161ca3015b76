/* RoPE in double on one vector: fitting at drawn positions (positions.c),
 * synthetic data (synth.c) and the attention metrics of kq_eval. */
#include <math.h>

#include "kq_fit.h"
#include "kqsvd_backend.h"

void kq_rope_rotate(double *x, int32_t d, int64_t pos, double theta, kq_rope_layout layout) {
  int32_t half = d / 2;
  for (int32_t j = 0; j < half; j++) {
    double angle = (double)pos * kq_rope_inv_freq(theta, d, j);
    double c = cos(angle), s = sin(angle);
    int32_t a = layout == KQ_ROPE_PAIRS ? 2 * j : j;
    int32_t b = layout == KQ_ROPE_PAIRS ? 2 * j + 1 : j + half;
    double x0 = x[a], x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
  }
}
