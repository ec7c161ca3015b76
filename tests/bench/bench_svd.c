/*
 * bench_svd.c — kq_svd_jacobi against LAPACK dgesvj and dgesdd (U and V
 * computed by all three) on the same random square matrices, in one run.
 * Prints the median of `reps` runs (default 9) and ratios to dgesvj.
 *
 *   bench_svd [reps] [n ...]        (default n = 128 256)
 *
 * For a per-core comparison run with OPENBLAS_NUM_THREADS=1.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "linalg/kq_linalg.h"

#ifdef KQ_HAVE_LAPACKE
#include <lapacke.h>
#endif

static uint64_t rng_state = 12345;
static double gauss(void) {
  double u[2];
  for (int k = 0; k < 2; k++) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    u[k] = ((double)(z >> 11) + 0.5) * 0x1p-53;
  }
  return sqrt(-2.0 * log(u[0])) * cos(6.283185307179586 * u[1]);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *t, int n) {
  qsort(t, (size_t)n, sizeof(double), cmp_double);
  return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

enum { KQ, SVJ, SDD, N_METHODS };
static const char *names[N_METHODS] = {"kq_svd_jacobi", "LAPACK dgesvj", "LAPACK dgesdd"};

/* One timed run of `method` on a copy of a; returns seconds or -1. */
static double run(int method, int n, const double *a, double *w, double *s, double *v, double *vt) {
  memcpy(w, a, (size_t)n * n * sizeof(double));
  double t0 = kq_now_seconds();
  int ok = 0;
  if (method == KQ) {
    ok = kq_svd_jacobi(n, n, w, n, s, v, n, NULL, NULL) == KQ_OK;
  }
#ifdef KQ_HAVE_LAPACKE
  else if (method == SVJ) {
    double stat[6];
    ok = LAPACKE_dgesvj(LAPACK_COL_MAJOR, 'G', 'U', 'V', n, n, w, n, s, n, v, n, stat) == 0;
  } else {
    ok = LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'O', n, n, w, n, s, NULL, n, vt, n) == 0;
  }
#else
  (void)vt;
#endif
  double t = kq_now_seconds() - t0;
  return ok ? t : -1.0;
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 9;
  if (reps < 1) reps = 1;
  int sizes[16] = {128, 256}, n_sizes = 2;
  if (argc > 2) {
    n_sizes = 0;
    for (int i = 2; i < argc && n_sizes < 16; i++) sizes[n_sizes++] = atoi(argv[i]);
  }
  const char *threads = getenv("OPENBLAS_NUM_THREADS");
  printf("Jacobi SVD benchmark: median of %d runs, OPENBLAS_NUM_THREADS=%s\n", reps,
         threads ? threads : "(default)");
  printf("%6s  %-15s %12s %10s\n", "n", "method", "median ms", "vs dgesvj");
  int n_methods = 1;
#ifdef KQ_HAVE_LAPACKE
  n_methods = N_METHODS;
#endif
  for (int si = 0; si < n_sizes; si++) {
    int n = sizes[si];
    size_t nn = (size_t)n * n;
    double *a = malloc(nn * sizeof(double)), *w = malloc(nn * sizeof(double));
    double *v = malloc(nn * sizeof(double)), *vt = malloc(nn * sizeof(double));
    double *s = malloc((size_t)n * sizeof(double));
    double *times = malloc((size_t)N_METHODS * reps * sizeof(double));
    if (!a || !w || !v || !vt || !s || !times) return 1;
    for (size_t i = 0; i < nn; i++) a[i] = gauss();
    for (int m = 0; m < n_methods; m++) run(m, n, a, w, s, v, vt); /* warm-up */
    for (int r = 0; r < reps; r++) /* interleaved, so drift hits all alike */
      for (int m = 0; m < n_methods; m++) times[m * reps + r] = run(m, n, a, w, s, v, vt);
    double med[N_METHODS];
    for (int m = 0; m < n_methods; m++) med[m] = median(times + m * reps, reps);
    for (int m = 0; m < n_methods; m++) {
      if (n_methods > 1)
        printf("%6d  %-15s %12.3f %9.2fx\n", n, names[m], med[m] * 1e3, med[m] / med[SVJ]);
      else
        printf("%6d  %-15s %12.3f %10s\n", n, names[m], med[m] * 1e3, "-");
    }
    free(a);
    free(w);
    free(v);
    free(vt);
    free(s);
    free(times);
  }
  return 0;
}
