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
 * Greedy spreading of `budget` rank units over the layers of ONE kind (keys or
 * values): start every layer at rank 1, then repeatedly give one more rank to
 * the layer whose mean-over-heads predicted squared relative error drops the
 * most (ties: lowest layer). For one head the drop at rank r is σ_r²/Σσ²,
 * non-increasing in r, so each layer's error is convex in its rank and the
 * greedy choice minimises the kind's summed error for its budget. Returns the
 * units actually used (less than budget once every layer is at rank d).
 */
static int64_t spread_kind(const double *sigma, int32_t n_layers, int32_t n_heads, int32_t d,
                           int64_t budget, int32_t *rank, double *cur, double *gain) {
  size_t stride = (size_t)n_heads * d;
  for (int32_t l = 0; l < n_layers; l++) {
    const double *s = sigma + (size_t)l * stride;
    rank[l] = 1;
    cur[l] = mean_sq_error(s, n_heads, d, 1);
    gain[l] = d > 1 ? cur[l] - mean_sq_error(s, n_heads, d, 2) : -1.0;
  }
  int64_t used = n_layers;
  for (; used < budget; used++) {
    int32_t best = -1;
    for (int32_t l = 0; l < n_layers; l++)
      if (gain[l] >= 0 && (best < 0 || gain[l] > gain[best])) best = l;
    if (best < 0) break; /* every layer at rank d */
    const double *s = sigma + (size_t)best * stride;
    int32_t nr = ++rank[best];
    cur[best] = mean_sq_error(s, n_heads, d, nr);
    gain[best] = nr < d ? cur[best] - mean_sq_error(s, n_heads, d, nr + 1) : -1.0;
  }
  return used;
}

/*
 * The --ratio budget is split evenly between keys and values, and each half
 * is spread over the layers where it removes the most predicted error of its
 * own kind (spread_kind). Keys and values are not traded against each other:
 * their predicted errors are not on a common scale. A relative logits error
 * passes through the softmax exponential, so perplexity is far more
 * sensitive to it than to the same relative value error; a single greedy over
 * both kinds starved KQ-SVD's fast-decaying key spectrum (ranks 8-21 of 64
 * at --ratio 0.5 on SmolLM2) and gave a worse perplexity than uniform ranks.
 * Units one kind cannot use (all its layers at rank d) go to the other.
 */
kq_status kq_rank_for_budget(const double *sigma_k, const double *sigma_v, int32_t n_layers,
                             int32_t n_heads, int32_t d, int64_t budget, int32_t *rank_k,
                             int32_t *rank_v) {
  if (budget < 2 * (int64_t)n_layers)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "ratio: the budget of %lld latent dimensions is below the minimum of %d "
                        "(rank 1 for keys and values in each of %d layers)",
                        (long long)budget, 2 * (int)n_layers, (int)n_layers);
  double *cur = kq_malloc_array((size_t)n_layers, sizeof *cur, "rank errors");
  double *gain = kq_malloc_array((size_t)n_layers, sizeof *gain, "rank gains");
  if (!cur || !gain) {
    free(cur);
    free(gain);
    return KQ_ERR_OUT_OF_MEMORY;
  }
  int64_t half = budget / 2;
  int64_t used_k = spread_kind(sigma_k, n_layers, n_heads, d, half, rank_k, cur, gain);
  int64_t used_v = spread_kind(sigma_v, n_layers, n_heads, d, budget - used_k, rank_v, cur, gain);
  if (used_k + used_v < budget) /* values saturated: give keys what is left */
    spread_kind(sigma_k, n_layers, n_heads, d, budget - used_v, rank_k, cur, gain);
  free(cur);
  free(gain);
  return KQ_OK;
}
