/*
 * bench_util.h — helpers the benchmark programs share: a seeded Gaussian
 * generator (splitmix64 + Box–Muller), process CPU time and medians.
 * Header-only: each bench_*.c is its own program.
 */
#ifndef KQ_BENCH_UTIL_H
#define KQ_BENCH_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

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

static inline int bench_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Median of t[0..n) (sorts t in place). */
static inline double bench_median(double *t, int n) {
  qsort(t, (size_t)n, sizeof(double), bench_cmp_double);
  return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

#endif
