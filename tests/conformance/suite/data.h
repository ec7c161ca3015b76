/*
 * data.h — seeded random inputs for the conformance suite: a small
 * xoshiro256** generator, normal samples, and random projection pairs with a
 * realistic scale.
 */
#ifndef KQC_DATA_H
#define KQC_DATA_H

#include <stddef.h>
#include <stdint.h>

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

/* FNV-1a hash of a string (case seeds). */
uint64_t kqc_hash(const char *text);

#endif /* KQC_DATA_H */
