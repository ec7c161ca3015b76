/*
 * bench_util.h — helpers the benchmark programs share: a seeded Gaussian
 * generator (splitmix64 + Box–Muller), process CPU time and medians.
 * Header-only: each bench_*.c is its own program.
 */
#ifndef KQ_BENCH_UTIL_H
#define KQ_BENCH_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "kq_common.h"
#include "kqsvd.h"

/* Next standard normal from the generator state *state. */
static inline double bench_gauss(uint64_t *state) {
  double u[2];
  for (int k = 0; k < 2; k++) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    u[k] = ((double)(z >> 11) + 0.5) * 0x1p-53;
  }
  return sqrt(-2.0 * log(u[0])) * cos(6.283185307179586 * u[1]);
}

/* CPU time of the whole process (all threads), in seconds. */
static inline double bench_cpu_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Wall-clock seconds (monotonic). */
static inline double bench_now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Uniform in [-1, 1) from a xorshift64 state (never 0). */
static inline float bench_frand(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return (float)((double)(*s >> 11) / 4503599627370496.0 - 1.0);
}

/* Creates a cache of `ctx` tokens for `proj` and fills every layer to
 * capacity with random keys/values [n, Hk, d] in appends of 2048 tokens.
 * Takes ownership of proj (destroyed here). Prints "PROG: what: error" and
 * returns 1 on failure, else 0 with *out_cache set. */
static inline int bench_filled_cache(const char *prog, kq_device *dev, kq_projections *proj,
                                     kq_storage storage, int ctx, int layers, int Hk, int d,
                                     uint64_t *seed, kq_cache **out_cache) {
  kq_cache_params params = kq_cache_default_params();
  params.storage = storage;
  params.capacity = ctx;
  kq_cache *cache = NULL;
  kq_status st = kq_cache_create(dev, proj, &params, &cache);
  kq_projections_destroy(proj);
  const char *what = st != KQ_OK ? "cache create" : NULL;
  const int chunk = 2048;
  float *kv = what ? NULL : malloc((size_t)chunk * Hk * d * sizeof *kv);
  if (!what && !kv) what = "host buffers";
  for (size_t i = 0; kv && i < (size_t)chunk * Hk * d; ++i) kv[i] = bench_frand(seed);
  for (int l = 0; l < layers && !what; ++l)
    for (int t = 0; t < ctx && !what; t += chunk) {
      int n = ctx - t < chunk ? ctx - t : chunk;
      if (kq_cache_append(cache, l, n, kv, kv) != KQ_OK) what = "append";
    }
  free(kv);
  if (what) {
    fprintf(stderr, "%s: %s: %s\n", prog, what, kq_last_error());
    kq_cache_destroy(cache);
    return 1;
  }
  *out_cache = cache;
  return 0;
}

#endif
