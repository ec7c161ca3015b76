/*
 * bench_svd.c — kq_svd_jacobi against LAPACK dgesvj and dgesdd (U and V
 * computed by all three) on the same random square matrices, in one run,
 * interleaved so that machine noise hits all alike. Prints medians of
 * `reps` runs (default 9) of wall-clock and process CPU time, with ratios
 * to dgesvj.
 *
 *   bench_svd [reps] [n ...]        (default n = 128 256)
 *
 * For a per-core comparison run with OPENBLAS_NUM_THREADS=1. CPU time sums
 * all threads, so with threaded OpenBLAS only the wall column compares.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench_util.h"
#include "linalg/kq_linalg.h"

#ifdef KQ_HAVE_LAPACKE
#include <lapacke.h>
#endif

static uint64_t rng_state = 12345;
static double gauss(void) {
  return bench_gauss(&rng_state);
}

enum { KQ, SVJ, SDD, N_METHODS };
static const char *names[N_METHODS] = {"kq_svd_jacobi", "LAPACK dgesvj", "LAPACK dgesdd"};

typedef struct bench_buffers {
  double *w, *s, *v, *vt;
} bench_buffers;

/* One run of `method` on a copy of a: wall seconds in *wall, CPU seconds
 * in *cpu; false if the method failed. */
static int run(int method, int n, const double *a, bench_buffers *b, double *wall, double *cpu) {
  memcpy(b->w, a, (size_t)n * n * sizeof(double));
  double c0 = bench_cpu_seconds(), t0 = kq_now_seconds();
  int ok = 0;
  if (method == KQ) {
    ok = kq_svd_jacobi(n, n, b->w, n, b->s, b->v, n, NULL, NULL) == KQ_OK;
  }
#ifdef KQ_HAVE_LAPACKE
  else if (method == SVJ) {
    double stat[6];
    ok =
        LAPACKE_dgesvj(LAPACK_COL_MAJOR, 'G', 'U', 'V', n, n, b->w, n, b->s, n, b->v, n, stat) == 0;
  } else {
    ok = LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'O', n, n, b->w, n, b->s, NULL, n, b->vt, n) == 0;
  }
#endif
  *wall = kq_now_seconds() - t0;
  *cpu = bench_cpu_seconds() - c0;
  return ok;
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 9;
  if (reps < 1) reps = 1;
  int sizes[16] = {128, 256}, n_sizes = 2;
  if (argc > 2) {
    n_sizes = 0;
    for (int i = 2; i < argc && n_sizes < 16; i++) sizes[n_sizes++] = atoi(argv[i]);
  }
  int n_methods = 1;
#ifdef KQ_HAVE_LAPACKE
  n_methods = N_METHODS;
#endif
  const char *threads = getenv("OPENBLAS_NUM_THREADS");
  printf("Jacobi SVD benchmark: median of %d runs, OPENBLAS_NUM_THREADS=%s\n", reps,
         threads ? threads : "(default)");
  printf("%6s  %-15s %10s %10s %10s %10s\n", "n", "method", "wall ms", "vs dgesvj", "cpu ms",
         "vs dgesvj");
  for (int si = 0; si < n_sizes; si++) {
    int n = sizes[si];
    if (n < 1) continue;
    size_t nn = (size_t)n * n;
    double *a = malloc(nn * sizeof(double));
    bench_buffers b = {malloc(nn * sizeof(double)), malloc((size_t)n * sizeof(double)),
                       malloc(nn * sizeof(double)), malloc(nn * sizeof(double))};
    double *wall = malloc((size_t)N_METHODS * reps * sizeof(double));
    double *cpu = malloc((size_t)N_METHODS * reps * sizeof(double));
    if (!a || !b.w || !b.s || !b.v || !b.vt || !wall || !cpu) return 1;
    for (size_t i = 0; i < nn; i++) a[i] = gauss();
    double w0, c0;
    for (int m = 0; m < n_methods; m++) /* warm-up */
      if (!run(m, n, a, &b, &w0, &c0)) {
        fprintf(stderr, "%s failed at n = %d\n", names[m], n);
        return 1;
      }
    for (int r = 0; r < reps; r++)
      for (int m = 0; m < n_methods; m++) run(m, n, a, &b, &wall[m * reps + r], &cpu[m * reps + r]);
    double mw[N_METHODS], mc[N_METHODS];
    for (int m = 0; m < n_methods; m++) {
      mw[m] = kq_median(wall + m * reps, reps);
      mc[m] = kq_median(cpu + m * reps, reps);
    }
    int base = n_methods > 1 ? SVJ : KQ;
    for (int m = 0; m < n_methods; m++)
      printf("%6d  %-15s %10.3f %9.2fx %10.3f %9.2fx\n", n, names[m], mw[m] * 1e3, mw[m] / mw[base],
             mc[m] * 1e3, mc[m] / mc[base]);
    free(a);
    free(b.w);
    free(b.s);
    free(b.v);
    free(b.vt);
    free(wall);
    free(cpu);
  }
  return 0;
}
