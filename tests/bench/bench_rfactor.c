/*
 * bench_rfactor.c — kq_rfactor on a T×d F16 matrix (default 65536×128, one
 * attention head of calibration data) against OpenBLAS cblas_dsyrk +
 * LAPACK dpotrf on the same data already converted to double (conversion
 * not timed for the baseline; its cost is printed separately), in one run.
 *
 *   bench_rfactor [reps] [T] [d]
 *
 * Also times the TSQR fallback once (forced by an ill-conditioned F64 copy
 * is not needed: kq_rfactor picks it itself; here we time it on the same
 * data through the F64 path of a duplicated-column matrix).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "linalg/kq_linalg.h"

#ifdef KQ_HAVE_LAPACKE
#include <cblas.h>
#include <lapacke.h>
#endif

static uint64_t rng_state = 999;
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

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 7;
  int64_t t_rows = argc > 2 ? atoll(argv[2]) : 65536;
  int d = argc > 3 ? atoi(argv[3]) : 128;
  if (reps < 1 || t_rows < 1 || d < 1) return 2;
  size_t n = (size_t)t_rows * d;
  uint16_t *h = malloc(n * sizeof(uint16_t));
  double *x = malloc(n * sizeof(double));
  double *r = malloc((size_t)d * d * sizeof(double)), *g = malloc((size_t)d * d * sizeof(double));
  double *times = malloc((size_t)3 * reps * sizeof(double));
  if (!h || !x || !r || !g || !times) return 1;
  for (int64_t i = 0; i < t_rows; i++)
    for (int j = 0; j < d; j++)
      h[(size_t)i * d + j] = kq_f32_to_f16((float)(gauss() * (1.0 + (j % 7))));
  kq_matrix_view view = {h, KQ_DTYPE_F16, t_rows, d, d, 1.0};
  const char *threads = getenv("OPENBLAS_NUM_THREADS");
  printf("R factor benchmark: %lld x %d F16, median of %d runs, OPENBLAS_NUM_THREADS=%s\n",
         (long long)t_rows, d, reps, threads ? threads : "(default)");
  kq_rfactor_info info;
  for (int rep = -1; rep < reps; rep++) { /* rep -1 is a warm-up */
    double t0 = kq_now_seconds();
    if (kq_rfactor(&view, 1, r, d, &info) != KQ_OK) {
      fprintf(stderr, "kq_rfactor: %s\n", kq_last_error());
      return 1;
    }
    double t1 = kq_now_seconds();
    kq_convert_to_f64(KQ_DTYPE_F16, h, x, n);
    double t2 = kq_now_seconds();
    double t3 = t2;
#ifdef KQ_HAVE_LAPACKE
    cblas_dsyrk(CblasColMajor, CblasUpper, CblasNoTrans, d, (int)t_rows, 1.0, x, d, 0.0, g, d);
    if (LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', d, g, d) != 0) return 1;
    t3 = kq_now_seconds();
#endif
    if (rep >= 0) {
      times[rep] = t1 - t0;
      times[reps + rep] = t3 - t2;
      times[2 * reps + rep] = t2 - t1;
    }
  }
  double kq = median(times, reps), blas = median(times + reps, reps);
  double conv = median(times + 2 * reps, reps);
  double gflop = (double)t_rows * d * (d + 1) / 1e9; /* SYRK flops (2 per multiply-add) */
  printf("%-34s %10s %10s\n", "method", "median ms", "GFLOP/s");
  printf("%-34s %10.2f %10.2f   (method %s)\n", "kq_rfactor (F16 in, incl. convert)", kq * 1e3,
         gflop / kq, info.method == KQ_RFACTOR_CHOLESKY ? "Gram+Cholesky" : "TSQR");
#ifdef KQ_HAVE_LAPACKE
  printf("%-34s %10.2f %10.2f\n", "cblas_dsyrk + dpotrf (F64 in)", blas * 1e3, gflop / blas);
  printf("%-34s %10.2f\n", "(scalar F16->F64 conversion)", conv * 1e3);
  printf("ratio kq / (dsyrk+dpotrf): %.2fx; vs (convert+dsyrk+dpotrf): %.2fx\n", kq / blas,
         kq / (blas + conv));
  /* Agreement: RᵀR from both must match XᵀX to rounding. */
  double worst = 0.0, scale = 0.0;
  for (int j = 0; j < d; j++)
    for (int i = 0; i <= j; i++) {
      worst = fmax(worst, fabs(fabs(r[(size_t)j * d + i]) - fabs(g[(size_t)j * d + i])));
      scale = fmax(scale, fabs(g[(size_t)j * d + i]));
    }
  printf("max |R_kq| - |R_lapack| relative to max |R|: %.2e\n", worst / scale);
#else
  (void)blas;
  (void)conv;
#endif
  /* TSQR fallback cost: duplicate column forces it. */
  for (int64_t i = 0; i < t_rows; i++) h[(size_t)i * d + d - 1] = h[(size_t)i * d];
  double t0 = kq_now_seconds();
  kq_status st = kq_rfactor(&view, 1, r, d, &info);
  double t1 = kq_now_seconds();
  printf("%-34s %10.2f            (method %s, status %d, 1 run)\n",
         "kq_rfactor fallback (dup. column)", (t1 - t0) * 1e3,
         info.method == KQ_RFACTOR_TSQR ? "TSQR" : "Gram+Cholesky", (int)st);
  free(h);
  free(x);
  free(r);
  free(g);
  free(times);
  return 0;
}
