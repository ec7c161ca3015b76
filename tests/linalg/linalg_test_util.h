/*
 * linalg_test_util.h — shared helpers for the host/linalg tests: a seeded
 * Gaussian generator, matrices with prescribed singular values (built from
 * LAPACK's QR of random matrices, independent of the code under test) and
 * LAPACK-style residual norms.
 */
#ifndef LINALG_TEST_UTIL_H
#define LINALG_TEST_UTIL_H

#include <float.h>
#include <lapacke.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct test_rng {
  uint64_t s;
} test_rng;

static inline uint64_t rng_next(test_rng *r) { /* splitmix64 */
  uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static inline double rng_uniform(test_rng *r) { /* (0, 1) */
  return ((double)(rng_next(r) >> 11) + 0.5) * 0x1p-53;
}

static inline double rng_gauss(test_rng *r) {
  double u = rng_uniform(r), v = rng_uniform(r);
  return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

static inline double *alloc_doubles(size_t n) {
  double *p = calloc(n ? n : 1, sizeof(double));
  if (!p) abort();
  return p;
}

static inline void fill_gauss(test_rng *r, double *a, size_t n) {
  for (size_t i = 0; i < n; i++) a[i] = rng_gauss(r);
}

/* m×n (m >= n) matrix with orthonormal columns: Q of a random Gaussian
 * matrix by LAPACK dgeqrf + dorgqr. */
static inline void random_orthonormal(test_rng *r, int m, int n, double *q) {
  if (n == 0) return;
  double *tau = alloc_doubles((size_t)n);
  fill_gauss(r, q, (size_t)m * n);
  LAPACKE_dgeqrf(LAPACK_COL_MAJOR, m, n, q, m, tau);
  LAPACKE_dorgqr(LAPACK_COL_MAJOR, m, n, n, q, m, tau);
  free(tau);
}

/* a (m×n, col-major, lda = m) = X·diag(s)·Yᵀ with random orthonormal X
 * (m×n) and orthogonal Y (n×n). */
static inline void matrix_with_spectrum(test_rng *r, int m, int n, const double *s, double *a) {
  double *x = alloc_doubles((size_t)m * n), *y = alloc_doubles((size_t)n * n);
  random_orthonormal(r, m, n, x);
  random_orthonormal(r, n, n, y);
  for (int j = 0; j < n; j++)
    for (int i = 0; i < m; i++) {
      double acc = 0.0;
      for (int k = 0; k < n; k++) acc += x[(size_t)k * m + i] * s[k] * y[(size_t)k * n + j];
      a[(size_t)j * m + i] = acc;
    }
  free(x);
  free(y);
}

/* ‖A‖₁ = max column sum. */
static inline double norm1(int m, int n, const double *a, int lda) {
  double best = 0.0;
  for (int j = 0; j < n; j++) {
    double s = 0.0;
    for (int i = 0; i < m; i++) s += fabs(a[(size_t)j * lda + i]);
    best = fmax(best, s);
  }
  return best;
}

/* ‖I − XᵀX‖₁ over the columns in `use` (all when use == NULL). */
static inline double orth_residual(int m, int n, const double *x, int ldx, const int *use) {
  double best = 0.0;
  for (int j = 0; j < n; j++) {
    if (use && !use[j]) continue;
    double s = 0.0;
    for (int i = 0; i < n; i++) {
      if (use && !use[i]) continue;
      double d = 0.0;
      for (int k = 0; k < m; k++) d += x[(size_t)i * ldx + k] * x[(size_t)j * ldx + k];
      s += fabs((i == j ? 1.0 : 0.0) - d);
    }
    best = fmax(best, s);
  }
  return best;
}

/* Singular values by LAPACK dgesdd (descending), a is not modified. */
static inline void lapack_singular_values(int m, int n, const double *a, double *s) {
  if (n == 0) return;
  double *w = alloc_doubles((size_t)m * n);
  memcpy(w, a, (size_t)m * n * sizeof(double));
  LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'N', m, n, w, m, s, NULL, 1, NULL, 1);
  free(w);
}

#endif /* LINALG_TEST_UTIL_H */
