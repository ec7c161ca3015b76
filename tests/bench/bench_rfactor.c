/*
 * bench_rfactor.c — kq_rfactor on a T×d F16 matrix (default 65536×128, one
 * attention head of calibration data) against OpenBLAS cblas_dsyrk +
 * LAPACK dpotrf on the same data already converted to double, in one run.
 * The baseline's conversion is not timed (its scalar cost is printed
 * separately); kq_rfactor's includes reading the F16 data. Medians of
 * `reps` runs of wall-clock and process CPU time.
 *
 *   bench_rfactor [reps] [T] [d]
 *
 * Last line: one run of the TSQR fallback (a duplicated column makes the
 * Gram singular, so kq_rfactor takes the second pass).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench_util.h"
#include "linalg/kq_linalg.h"

#ifdef KQ_HAVE_LAPACKE
#include <cblas.h>
#include <lapacke.h>
#endif

static uint64_t rng_state = 999;
static double gauss(void) {
  return bench_gauss(&rng_state);
}

enum { T_KQ, T_BLAS, T_CONV, N_TIMES };

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 7;
  int64_t t_rows = argc > 2 ? atoll(argv[2]) : 65536;
  int d = argc > 3 ? atoi(argv[3]) : 128;
  if (reps < 1 || t_rows < 1 || d < 1) return 2;
  size_t n = (size_t)t_rows * d;
  uint16_t *h = malloc(n * sizeof(uint16_t));
  double *x = malloc(n * sizeof(double));
  double *r = malloc((size_t)d * d * sizeof(double)), *g = malloc((size_t)d * d * sizeof(double));
  double *wall = malloc((size_t)N_TIMES * reps * sizeof(double));
  double *cpu = malloc((size_t)N_TIMES * reps * sizeof(double));
  if (!h || !x || !r || !g || !wall || !cpu) return 1;
  for (int64_t i = 0; i < t_rows; i++)
    for (int j = 0; j < d; j++)
      h[(size_t)i * d + j] = kq_f32_to_f16((float)(gauss() * (1.0 + (j % 7))));
  kq_matrix_view view = {h, KQ_DTYPE_F16, t_rows, d, d, 1.0};
  const char *threads = getenv("OPENBLAS_NUM_THREADS");
  printf("R factor benchmark: %lld x %d F16, median of %d runs, OPENBLAS_NUM_THREADS=%s\n",
         (long long)t_rows, d, reps, threads ? threads : "(default)");
  kq_rfactor_info info;
  for (int rep = -1; rep < reps; rep++) { /* rep -1 is a warm-up */
    double w[N_TIMES + 1], c[N_TIMES + 1];
    w[0] = kq_now_seconds();
    c[0] = bench_cpu_seconds();
    if (kq_rfactor(&view, 1, r, d, &info) != KQ_OK) {
      fprintf(stderr, "kq_rfactor: %s\n", kq_last_error());
      return 1;
    }
    w[1] = kq_now_seconds();
    c[1] = bench_cpu_seconds();
#ifdef KQ_HAVE_LAPACKE
    cblas_dsyrk(CblasColMajor, CblasUpper, CblasNoTrans, d, (int)t_rows, 1.0, x, d, 0.0, g, d);
    if (LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', d, g, d) != 0 && rep >= 0) return 1;
#endif
    w[2] = kq_now_seconds();
    c[2] = bench_cpu_seconds();
    kq_convert_to_f64(KQ_DTYPE_F16, h, x, n); /* the baseline's input (for the next rep) */
    w[3] = kq_now_seconds();
    c[3] = bench_cpu_seconds();
    if (rep >= 0)
      for (int k = 0; k < N_TIMES; k++) {
        wall[k * reps + rep] = w[k + 1] - w[k];
        cpu[k * reps + rep] = c[k + 1] - c[k];
      }
  }
  double mw[N_TIMES], mc[N_TIMES];
  for (int k = 0; k < N_TIMES; k++) {
    mw[k] = kq_median(wall + k * reps, reps);
    mc[k] = kq_median(cpu + k * reps, reps);
  }
  double gflop = (double)t_rows * d * (d + 1) / 1e9; /* SYRK: 2 flops per multiply-add */
  printf("%-36s %9s %9s %9s\n", "method", "wall ms", "cpu ms", "GFLOP/s");
  printf("%-36s %9.2f %9.2f %9.2f   (%s)\n", "kq_rfactor (reads F16)", mw[T_KQ] * 1e3,
         mc[T_KQ] * 1e3, gflop / mw[T_KQ],
         info.method == KQ_RFACTOR_CHOLESKY ? "Gram+Cholesky" : "TSQR");
#ifdef KQ_HAVE_LAPACKE
  printf("%-36s %9.2f %9.2f %9.2f\n", "cblas_dsyrk + dpotrf (reads F64)", mw[T_BLAS] * 1e3,
         mc[T_BLAS] * 1e3, gflop / mw[T_BLAS]);
  printf("%-36s %9.2f %9.2f\n", "(F16->F64 conversion, scalar)", mw[T_CONV] * 1e3,
         mc[T_CONV] * 1e3);
  printf("ratio kq_rfactor / (dsyrk+dpotrf): wall %.2fx, cpu %.2fx\n", mw[T_KQ] / mw[T_BLAS],
         mc[T_KQ] / mc[T_BLAS]);
  double worst = 0.0, scale = 0.0;
  for (int j = 0; j < d; j++)
    for (int i = 0; i <= j; i++) {
      worst = fmax(worst, fabs(fabs(r[(size_t)j * d + i]) - fabs(g[(size_t)j * d + i])));
      scale = fmax(scale, fabs(g[(size_t)j * d + i]));
    }
  printf("max ||R_kq| - |R_lapack|| / max |R|: %.2e\n", worst / scale);
#endif
  for (int64_t i = 0; i < t_rows; i++) h[(size_t)i * d + d - 1] = h[(size_t)i * d];
  double c0 = bench_cpu_seconds(), t0 = kq_now_seconds();
  kq_status st = kq_rfactor(&view, 1, r, d, &info);
  double t1 = kq_now_seconds(), c1 = bench_cpu_seconds();
  printf("%-36s %9.2f %9.2f             (%s, status %d, 1 run)\n", "kq_rfactor, duplicated column",
         (t1 - t0) * 1e3, (c1 - c0) * 1e3,
         info.method == KQ_RFACTOR_TSQR ? "Gram, then TSQR" : "Gram+Cholesky", (int)st);
  free(h);
  free(x);
  free(r);
  free(g);
  free(wall);
  free(cpu);
  return 0;
}
