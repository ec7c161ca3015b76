/*
 * test_qr_cholesky.c — kq_qr_householder / kq_qr_apply_q (A = QR with R
 * upper triangular, QᵀQ = I) and kq_cholesky_upper (RᵀR = G, pivot ratio,
 * rejection of indefinite input). Products are formed in the test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include <cmocka.h>

#include "linalg/kq_linalg.h"
#include "linalg/kq_simd.h"
#include "linalg/linalg_test_util.h"

static void test_qr_reconstructs_a_with_orthogonal_q(void **state) {
  (void)state;
  const int shapes[][2] = {{1, 1}, {5, 3}, {40, 40}, {100, 17}, {64, 0}};
  for (int c = 0; c < 5; c++) {
    int m = shapes[c][0], n = shapes[c][1];
    test_rng rng = {100 + (uint64_t)c};
    double *a = alloc_doubles((size_t)m * n), *qr = alloc_doubles((size_t)m * n);
    double *tau = alloc_doubles((size_t)n), *rm = alloc_doubles((size_t)m * n);
    double *q = alloc_doubles((size_t)m * n);
    fill_gauss(&rng, a, (size_t)m * n);
    memcpy(qr, a, (size_t)m * n * sizeof(double));
    assert_int_equal(kq_qr_householder(m, n, qr, m, tau), KQ_OK);
    for (int j = 0; j < n; j++)
      for (int i = 0; i <= j; i++) rm[(size_t)j * m + i] = qr[(size_t)j * m + i];
    for (int j = 0; j < n; j++) q[(size_t)j * m + j] = 1.0;
    assert_int_equal(kq_qr_apply_q(m, n, qr, m, tau, n, rm, m), KQ_OK); /* Q·R */
    assert_int_equal(kq_qr_apply_q(m, n, qr, m, tau, n, q, m), KQ_OK);  /* Q·I */
    double na = norm1(m, n, a, m), worst = 0.0;
    for (size_t i = 0; i < (size_t)m * n; i++) rm[i] -= a[i];
    worst = norm1(m, n, rm, m) / (na > 0 ? na : 1.0);
    int nn = n > 0 ? n : 1;
    assert_true(worst / (nn * DBL_EPSILON) < 50.0);
    assert_true(orth_residual(m, n, q, m, NULL) / (nn * DBL_EPSILON) < 50.0);
    free(a);
    free(qr);
    free(tau);
    free(rm);
    free(q);
  }
}

static void test_cholesky_factors_spd_matrix(void **state) {
  (void)state;
  int n = 30, m = 50;
  test_rng rng = {7};
  double *b = alloc_doubles((size_t)m * n), *g = alloc_doubles((size_t)n * n);
  double *r = alloc_doubles((size_t)n * n);
  fill_gauss(&rng, b, (size_t)m * n);
  for (int j = 0; j < n; j++)
    for (int i = 0; i < n; i++) {
      double s = 0.0;
      for (int k = 0; k < m; k++) s += b[(size_t)i * m + k] * b[(size_t)j * m + k];
      g[(size_t)j * n + i] = s;
    }
  memcpy(r, g, (size_t)n * n * sizeof(double));
  double ratio = -1.0;
  assert_int_equal(kq_cholesky_upper(n, r, n, &ratio), KQ_OK);
  assert_true(ratio > 0.0 && ratio <= 1.0);
  double worst = 0.0, min_p = INFINITY, max_g = 0.0;
  for (int j = 0; j < n; j++) {
    min_p = fmin(min_p, r[(size_t)j * n + j] * r[(size_t)j * n + j]);
    max_g = fmax(max_g, g[(size_t)j * n + j]);
    for (int i = 0; i <= j; i++) {
      double s = 0.0;
      for (int k = 0; k <= i; k++) s += r[(size_t)i * n + k] * r[(size_t)j * n + k];
      worst = fmax(worst, fabs(s - g[(size_t)j * n + i]) / max_g);
    }
  }
  assert_true(worst < 1e-13);
  assert_true(fabs(ratio - min_p / max_g) <= 1e-12 * ratio);
  free(b);
  free(g);
  free(r);
}

static void test_cholesky_rejects_indefinite_matrix(void **state) {
  (void)state;
  double g[9] = {1, 2, 0, 2, 1, 0, 0, 0, 1}; /* eigenvalues 3, -1, 1 */
  double ratio;
  assert_int_equal(kq_cholesky_upper(3, g, 3, &ratio), KQ_ERR_NUMERIC);
  double z[4] = {0, 0, 0, 0};
  assert_int_equal(kq_cholesky_upper(2, z, 2, &ratio), KQ_ERR_NUMERIC);
  assert_int_equal(kq_cholesky_upper(0, z, 1, &ratio), KQ_OK);
}

static int use_baseline(void **state) {
  (void)state;
  kq_linalg_allow_avx2(false);
  return 0;
}

static int allow_simd(void **state) {
  (void)state;
  kq_linalg_allow_avx2(true);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_qr_reconstructs_a_with_orthogonal_q),
      cmocka_unit_test(test_cholesky_factors_spd_matrix),
      cmocka_unit_test(test_cholesky_rejects_indefinite_matrix),
  };
  /* Every case runs on the AVX2 kernels (where the CPU has them) and again
   * on the baseline kernels. */
  int failed = cmocka_run_group_tests_name("simd kernels", tests, NULL, NULL);
  failed += cmocka_run_group_tests_name("baseline kernels", tests, use_baseline, allow_simd);
  return failed;
}
