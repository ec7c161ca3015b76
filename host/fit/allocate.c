/* The byte allocator of fit --bytes (SPEC §1b): which latent dims are kept
 * in F16, q8, q4 or dropped, per layer and side, under a byte budget.
 *
 * Latent dims are in σ order, so a side's state is three boundaries
 * 0 <= b_F16 <= b_q8 <= b_q4 <= dim: a float segment, a q8 segment, a q4
 * segment, the rest dropped (widths multiples of 8). A move extends one
 * format by 8 dims (taking them from the formats after it) and is scored by
 * the predicted error it removes per byte it costs; the predicted error of
 * dim j in format f is weight_j · relerr_f (weight_j: σ_j² over the side's
 * Σσ², so every layer's error is relative; relerr_f the measured rounding
 * error discounted by KQ_ALLOC_ROUNDING_WEIGHT), dropped dims cost weight_j.
 */
#include <math.h>
#include <stdlib.h>

#include "kq_fit.h"

#define KQ_ALLOC_STEP 8

static const double k_bits[KQ_FMT_COUNT] = {16, 8, 4};

void kq_alloc_side_init(kq_alloc_side *s) {
  int32_t w = s->dim < KQ_ALLOC_STEP ? s->dim : KQ_ALLOC_STEP;
  s->bound[0] = 0;
  s->bound[1] = w % 2 ? w : 0; /* q4 widths are even: an odd side starts in q8 */
  s->bound[2] = w;
}

static double bytes_of(const kq_alloc_side *s, const int32_t *b) {
  double per_group = 0;
  int32_t lo = 0;
  for (int f = 0; f < KQ_FMT_COUNT; f++) {
    int32_t w = b[f] - lo;
    if (w > 0) per_group += w * k_bits[f] / 8 + (f == KQ_FMT_F16 ? 0 : 2);
    lo = b[f] > lo ? b[f] : lo;
  }
  return per_group * s->groups;
}

static double error_of(const kq_alloc_side *s, const int32_t *b) {
  double e = 0;
  int32_t lo = 0;
  for (int f = 0; f < KQ_FMT_COUNT; f++) {
    for (int32_t j = lo; j < b[f]; j++) e += s->weight[j] * s->relerr[f];
    lo = b[f] > lo ? b[f] : lo;
  }
  for (int32_t j = lo; j < s->dim; j++) e += s->weight[j];
  return e;
}

void kq_alloc_side_set_relerr(kq_alloc_side *s, int fmt, double measured) {
  s->relerr[fmt] = measured * KQ_ALLOC_ROUNDING_WEIGHT;
}

double kq_alloc_side_bytes(const kq_alloc_side *s) {
  return bytes_of(s, s->bound);
}

double kq_alloc_side_error(const kq_alloc_side *s) {
  return error_of(s, s->bound);
}

int32_t kq_alloc_side_segments(const kq_alloc_side *s, kq_segment *segments) {
  static const int32_t seg_bits[KQ_FMT_COUNT] = {KQ_SEG_FLOAT, KQ_SEG_Q8, KQ_SEG_Q4};
  int32_t n = 0, lo = 0;
  for (int f = 0; f < KQ_FMT_COUNT; f++) {
    if (s->bound[f] > lo) segments[n++] = (kq_segment){s->bound[f] - lo, seg_bits[f]};
    lo = s->bound[f] > lo ? s->bound[f] : lo;
  }
  return n;
}

/* The state after extending format f by one step; 0 if there is no such
 * move (format already reaches dim, or an odd q4 width would result). */
static int move_of(const kq_alloc_side *s, int f, int32_t *nb) {
  int32_t step = s->dim - s->bound[f] < KQ_ALLOC_STEP ? s->dim - s->bound[f] : KQ_ALLOC_STEP;
  if (step <= 0) return 0;
  for (int x = 0; x < KQ_FMT_COUNT; x++) nb[x] = s->bound[x];
  nb[f] += step;
  for (int x = f + 1; x < KQ_FMT_COUNT; x++)
    if (nb[x] < nb[f]) nb[x] = nb[f];
  return (nb[2] - nb[1]) % 2 == 0;
}

/* Best move of one side over layers: highest error removed per byte among
 * moves that fit `room` bytes; a move that removes error without costing
 * bytes wins outright. Returns 0 when none fits. */
static int best_move(const kq_alloc_side *sides, int32_t n_layers, double room, int32_t *out_l,
                     int32_t *out_b) {
  double best = -1;
  int found = 0;
  for (int32_t l = 0; l < n_layers; l++) {
    const kq_alloc_side *s = &sides[l];
    double e0 = kq_alloc_side_error(s), c0 = kq_alloc_side_bytes(s);
    for (int f = 0; f < KQ_FMT_COUNT; f++) {
      int32_t nb[KQ_FMT_COUNT];
      if (!move_of(s, f, nb)) continue;
      double gain = e0 - error_of(s, nb), cost = bytes_of(s, nb) - c0;
      if (!(gain > 0) || cost > room + 1e-9) continue;
      double score = cost > 0 ? gain / cost : INFINITY;
      if (score > best) {
        best = score;
        found = 1;
        *out_l = l;
        for (int x = 0; x < KQ_FMT_COUNT; x++) out_b[x] = nb[x];
      }
    }
  }
  return found;
}

/* Spends greedily until `limit` bytes of this side (its current state
 * included) are used or no move fits; returns the bytes used. */
static double spend(kq_alloc_side *sides, int32_t n_layers, double limit) {
  double used = 0;
  for (int32_t l = 0; l < n_layers; l++) used += kq_alloc_side_bytes(&sides[l]);
  for (;;) {
    int32_t l = 0, nb[KQ_FMT_COUNT] = {0, 0, 0};
    if (!best_move(sides, n_layers, limit - used, &l, nb)) break;
    double before = kq_alloc_side_bytes(&sides[l]);
    for (int x = 0; x < KQ_FMT_COUNT; x++) sides[l].bound[x] = nb[x];
    used += kq_alloc_side_bytes(&sides[l]) - before;
  }
  return used;
}

/*
 * Keys and values are not traded against each other: their predicted errors
 * are on different scales (a relative logits error passes through the
 * softmax exponential), the same reason --ratio splits its budget evenly.
 * Half the budget goes to each side; what one side cannot spend goes to the
 * other.
 */
kq_status kq_allocate_bytes(kq_alloc_side *keys, kq_alloc_side *values, int32_t n_layers,
                            double budget) {
  double min_bytes = 0;
  for (int32_t l = 0; l < n_layers; l++)
    min_bytes += kq_alloc_side_bytes(&keys[l]) + kq_alloc_side_bytes(&values[l]);
  if (budget < min_bytes)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "bytes: the budget of %.1f bytes per token is below the minimum of %.1f "
                        "(%d latent dims in q4 for keys and values in each of %d layers)",
                        budget, min_bytes, KQ_ALLOC_STEP, (int)n_layers);
  double used_k = spend(keys, n_layers, budget / 2);
  double used_v = spend(values, n_layers, budget - used_k);
  spend(keys, n_layers, budget - used_v);
  return KQ_OK;
}
