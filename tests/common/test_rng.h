/*
 * test_rng.h — the tests' one pseudo-random generator: a 64-bit linear
 * congruential generator (multiplier 6364136223846793005, increment
 * 1442695040888963407) on a uint64_t state the caller owns and seeds. The
 * same seed gives the same numbers on every platform and compiler, so a
 * failing case can be rerun; tests compare against float64 references with
 * thresholds, never against stored outputs of this stream.
 *
 * Header-only (static inline): each test is its own program, and the
 * installed-library consumer (tests/install/engine.c) is not built with it.
 */
#ifndef KQ_TEST_RNG_H
#define KQ_TEST_RNG_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* Advances *state one step and returns the new state. Any seed is valid,
 * 0 included. The low bits of an LCG have short periods: the other
 * functions use the high bits only. */
static inline uint64_t test_rng_u64(uint64_t *state) {
  *state = *state * 6364136223846793005ull + 1442695040888963407ull;
  return *state;
}

/* The high 32 bits of the next state. */
static inline uint32_t test_rng_u32(uint64_t *state) {
  return (uint32_t)(test_rng_u64(state) >> 32);
}

/* Uniform in the open interval (0, 1): the high 53 bits of the next state
 * plus one half, over 2^53. Never 0 or 1, so log(u) is finite. */
static inline double test_rng_uniform_open(uint64_t *state) {
  return ((double)(test_rng_u64(state) >> 11) + 0.5) * 0x1p-53;
}

/* Uniform in [-1, 1) in steps of 2^-52: the high 53 bits of the next state
 * over 2^52, minus 1 (exact in double). Rounded to float by a caller it
 * lies in [-1, 1] (1 only through that rounding). */
static inline double test_rng_signed(uint64_t *state) {
  return (double)(test_rng_u64(state) >> 11) * 0x1p-52 - 1.0;
}

/* A standard normal sample (Box–Muller, cosine branch) from two steps:
 * sqrt(-2 ln u) · cos(2π v), u and v from test_rng_uniform_open. */
static inline double test_rng_gauss(uint64_t *state) {
  double u = test_rng_uniform_open(state), v = test_rng_uniform_open(state);
  return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* x[i] = scale · (float)test_rng_signed(state) for i < n: a float array
 * uniform in [-scale, scale], the product taken in float (scale 1: the
 * rounded numbers themselves). */
static inline void test_rng_fill(float *x, size_t n, uint64_t *state, float scale) {
  for (size_t i = 0; i < n; i++) x[i] = scale * (float)test_rng_signed(state);
}

#endif /* KQ_TEST_RNG_H */
