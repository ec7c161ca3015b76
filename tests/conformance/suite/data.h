/*
 * data.h — seeded random inputs for the conformance suite: a small
 * xoshiro256** generator, normal samples, and random projection pairs with a
 * realistic scale.
 */
#ifndef KQC_DATA_H
#define KQC_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "kqsvd.h"

typedef struct kqc_rng {
  uint64_t s[4];
} kqc_rng;

/* Seeds the generator from one 64-bit value (splitmix64 expansion). */
void kqc_rng_seed(kqc_rng *rng, uint64_t seed);

/* A uniform double in [0, 1). */
double kqc_rng_uniform(kqc_rng *rng);

/* A standard normal sample (Box–Muller). */
double kqc_rng_normal(kqc_rng *rng);

/* x[i] = sigma * N(0, 1), i < n. */
void kqc_fill_normal(kqc_rng *rng, float *x, size_t n, double sigma);

/* A down/up projection pair per kv head, each [n_kv, d, r] row-major:
 * down = gain · Q · D and up = Q' · D⁻¹ with Q, Q' two different d×r bases
 * with orthonormal columns (Q' = orth(Q + noise)) and D diagonal in
 * [1/2, 2]. Different bases make a swap of down and up visible; gain keeps
 * logits near unit scale at any rank. Returns 0, or -1 if out of memory. */
int kqc_make_projection_pair(kqc_rng *rng, int32_t n_kv, int32_t d, int32_t r, double gain,
                             float *down, float *up);

/* Rows [from, n) of x [n, G, D] whose quantized segments (segs, n_segs
 * covering D; SPEC §1b) sit exactly on rounding ties: per row and segment
 * a power-of-two step s0 with qmax·s0 in [1, 2), one element ±qmax·s0 (so
 * the scale is exactly s0) and the others ±(j + 1/2)·s0, j in [0, qmax):
 * x/s = j + 1/2 exactly in float32. Float segments get N(0, 1). */
void kqc_fill_ties(kqc_rng *rng, float *x, int32_t from, int32_t n, int32_t G, int32_t D,
                   const kq_segment *segs, int32_t n_segs);

/* FNV-1a hash of a string (case seeds). */
uint64_t kqc_hash(const char *text);

#endif /* KQC_DATA_H */
