/* Rank choice of SPEC §1 from each method's own spectra: per-layer epsilon
 * and the global memory budget (--ratio). */
#include <math.h>
#include <stdlib.h>

#include "kq_fit.h"

double kq_predicted_error(const double *sigma, int32_t d, int32_t r) {
  double total = 0, tail = 0;
  for (int32_t j = 0; j < d; j++) {
    double s2 = sigma[j] * sigma[j];
    total += s2;
    if (j >= r) tail += s2;
  }
  return total > 0 ? sqrt(tail / total) : 0.0;
}

static double mean_error(const double *sigma, int32_t n_heads, int32_t d, int32_t r) {
  double s = 0;
  for (int32_t h = 0; h < n_heads; h++) s += kq_predicted_error(sigma + (size_t)h * d, d, r);
  return n_heads > 0 ? s / n_heads : 0.0;
}

int32_t kq_rank_for_epsilon(const double *sigma, int32_t n_heads, int32_t d, double epsilon) {
  for (int32_t r = 1; r < d; r++)
    if (mean_error(sigma, n_heads, d, r) <= epsilon) return r;
  return d;
}

/* Mean over heads of the predicted SQUARED relative error at rank r. */
static double mean_sq_error(const double *sigma, int32_t n_heads, int32_t d, int32_t r) {
  double s = 0;
  for (int32_t h = 0; h < n_heads; h++) {
    double e = kq_predicted_error(sigma + (size_t)h * d, d, r);
    s += e * e;
  }
  return n_heads > 0 ? s / n_heads : 0.0;
}

/*
 * Objective: minimise Σ over all (layer, kind ∈ {key, value}) pairs of the
 * mean-over-heads predicted squared relative error, subject to
 * Σ (r_k + r_v) <= budget and 1 <= r <= d. Greedy: start every pair at
 * rank 1, then repeatedly give one more rank to the pair whose error drops
 * the most (ties: lowest layer, keys first). For one head the drop at rank
 * r is σ_{r}²/Σσ², non-increasing in r, so each pair's error is convex in
 * its rank and the greedy choice is optimal for this separable objective.
 */
kq_status kq_rank_for_budget(const double *sigma_k, const double *sigma_v, int32_t n_layers,
                             int32_t n_heads, int32_t d, int64_t budget, int32_t *rank_k,
                             int32_t *rank_v) {
  if (budget < 2 * (int64_t)n_layers)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "ratio: the budget of %lld latent dimensions is below the minimum of %d "
                        "(rank 1 for keys and values in each of %d layers)",
                        (long long)budget, 2 * (int)n_layers, (int)n_layers);
  int32_t n_pairs = 2 * n_layers;
  double *cur = kq_malloc_array((size_t)n_pairs, sizeof *cur, "rank errors");
  double *gain = kq_malloc_array((size_t)n_pairs, sizeof *gain, "rank gains");
  if (!cur || !gain) {
    free(cur);
    free(gain);
    return KQ_ERR_OUT_OF_MEMORY;
  }
  size_t stride = (size_t)n_heads * d;
  for (int32_t p = 0; p < n_pairs; p++) {
    const double *s = (p % 2 ? sigma_v : sigma_k) + (size_t)(p / 2) * stride;
    int32_t *r = p % 2 ? rank_v : rank_k;
    r[p / 2] = 1;
    cur[p] = mean_sq_error(s, n_heads, d, 1);
    gain[p] = d > 1 ? cur[p] - mean_sq_error(s, n_heads, d, 2) : -1.0;
  }
  for (int64_t used = n_pairs; used < budget; used++) {
    int32_t best = -1;
    for (int32_t p = 0; p < n_pairs; p++)
      if (gain[p] >= 0 && (best < 0 || gain[p] > gain[best])) best = p;
    if (best < 0) break; /* every pair at rank d */
    const double *s = (best % 2 ? sigma_v : sigma_k) + (size_t)(best / 2) * stride;
    int32_t *r = best % 2 ? rank_v : rank_k;
    int32_t nr = ++r[best / 2];
    cur[best] = mean_sq_error(s, n_heads, d, nr);
    gain[best] = nr < d ? cur[best] - mean_sq_error(s, n_heads, d, nr + 1) : -1.0;
  }
  free(cur);
  free(gain);
  return KQ_OK;
}
