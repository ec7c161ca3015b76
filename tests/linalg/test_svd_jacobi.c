/*
 * test_svd_jacobi.c — kq_svd_jacobi checked LAPACK-style on a table of
 * sizes and matrix types: backward error ‖A−UΣVᵀ‖₁/(‖A‖₁·n·ε) < 50,
 * orthogonality ‖I−UᵀU‖₁/(n·ε) < 50 (columns with σ > 0) and
 * ‖I−VᵀV‖₁/(n·ε) < 50, σ descending; σ compared with known spectra and with
 * LAPACK (dgesdd, dgesvj) as oracles.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include <cmocka.h>

#include "linalg/kq_linalg.h"
#include "linalg/kq_simd.h"
#include "linalg/linalg_test_util.h"

#define EPS DBL_EPSILON
#define LIMIT 50.0

/* Set while the second group runs on the baseline (non-AVX2) kernels. */
static int baseline_group;

typedef enum mtype {
  M_ZERO,
  M_IDENTITY,
  M_RANDOM,
  M_GEOMETRIC,  /* σ_k = κ^(−k/(n−1)), κ = 1e12 */
  M_ARITHMETIC, /* σ_k = 1 − k/(n−1)·(1 − 1/κ) */
  M_CLUSTERED,  /* σ = 1 except the last = 1/κ, and a cluster at 1e-6 */
  M_RANK_DEFICIENT,
  M_DUPLICATE_COLUMNS,
  M_TINY,      /* random × 1e-300 */
  M_HUGE,      /* random × 1e300 */
  M_SUBNORMAL, /* random × 1e-310: subnormal entries */
} mtype;

static const char *mtype_name(mtype t) {
  static const char *names[] = {"zero",           "identity",          "random",
                                "geometric",      "arithmetic",        "clustered",
                                "rank-deficient", "duplicate columns", "tiny (1e-300)",
                                "huge (1e300)",   "subnormal (1e-310)"};
  return names[t];
}

/* Builds an m×n (lda = m) matrix of the type; writes the exact singular
 * values to s_known when they are known by construction (else leaves it). */
static int build(mtype t, int m, int n, uint64_t seed, double *a, double *s_known) {
  test_rng rng = {seed};
  size_t mn = (size_t)m * n;
  memset(a, 0, mn * sizeof(double));
  const double kappa = 1e12;
  switch (t) {
  case M_ZERO:
    for (int k = 0; k < n; k++) s_known[k] = 0.0;
    return 1;
  case M_IDENTITY:
    for (int k = 0; k < n; k++) {
      a[(size_t)k * m + k] = 1.0;
      s_known[k] = 1.0;
    }
    return 1;
  case M_RANDOM: fill_gauss(&rng, a, mn); return 0;
  case M_GEOMETRIC:
  case M_ARITHMETIC:
  case M_CLUSTERED:
    for (int k = 0; k < n; k++) {
      double f = n > 1 ? (double)k / (n - 1) : 0.0;
      if (t == M_GEOMETRIC)
        s_known[k] = pow(kappa, -f);
      else if (t == M_ARITHMETIC)
        s_known[k] = 1.0 - f * (1.0 - 1.0 / kappa);
      else
        s_known[k] = k == n - 1 && n > 1 ? 1.0 / kappa : (k >= n / 2 ? 1e-6 : 1.0);
    }
    matrix_with_spectrum(&rng, m, n, s_known, a);
    return 1;
  case M_RANK_DEFICIENT: {
    int r = n / 2;
    for (int k = 0; k < n; k++) s_known[k] = k < r ? 1.0 + (double)(r - k) / n : 0.0;
    matrix_with_spectrum(&rng, m, n, s_known, a);
    return 1;
  }
  case M_DUPLICATE_COLUMNS:
    fill_gauss(&rng, a, mn);
    for (int j = 1; j < n; j += 3)
      memcpy(a + (size_t)j * m, a + (size_t)(j - 1) * m, m * sizeof(double));
    return 0;
  case M_TINY:
  case M_HUGE:
  case M_SUBNORMAL:
    fill_gauss(&rng, a, mn);
    for (size_t i = 0; i < mn; i++) a[i] *= t == M_TINY ? 1e-300 : (t == M_HUGE ? 1e300 : 1e-310);
    return 0;
  }
  return 0;
}

typedef struct svd_result {
  double resid, orth_u, orth_v;
  double *sigma;
} svd_result;

/* Runs kq_svd_jacobi on a copy of a (m×n) and checks the LAPACK-style
 * ratios and ordering. Returns σ (caller frees). */
static double *check_svd(const char *what, int m, int n, const double *a, int precondition) {
  size_t mn = (size_t)m * n;
  double *u = alloc_doubles(mn), *v = alloc_doubles((size_t)n * n), *s = alloc_doubles((size_t)n);
  memcpy(u, a, mn * sizeof(double));
  kq_svd_params p = kq_svd_default_params();
  p.qr_precondition = precondition;
  kq_svd_info info;
  kq_status st = kq_svd_jacobi(m, n, u, m > 0 ? m : 1, s, v, n > 0 ? n : 1, &p, &info);
  if (st != KQ_OK) fail_msg("%s %dx%d: status %d (%s)", what, m, n, st, kq_last_error());
  double nrm = norm1(m, n, a, m);
  /* Backward error, the scale factor cancels out of the ratio: divide A and
   * UΣVᵀ by ‖A‖₁ column by column to stay in range at 1e±300. */
  double worst = 0.0;
  double inv = nrm > 0.0 ? 1.0 / nrm : 1.0;
  double *col = alloc_doubles((size_t)m);
  for (int j = 0; j < n; j++) { /* column j of A/‖A‖ − U·(Σ/‖A‖)·Vᵀ */
    for (int i = 0; i < m; i++) col[i] = a[(size_t)j * m + i] * inv;
    for (int k = 0; k < n; k++) {
      double f = (s[k] * inv) * v[(size_t)k * n + j];
      for (int i = 0; i < m; i++) col[i] -= u[(size_t)k * m + i] * f;
    }
    double sum = 0.0;
    for (int i = 0; i < m; i++) sum += fabs(col[i]);
    worst = fmax(worst, sum);
  }
  free(col);
  double nn = n > 0 ? n : 1;
  double resid = worst / (nn * EPS);
  int *use = calloc((size_t)n + 1, sizeof(int));
  for (int j = 0; j < n; j++) use[j] = s[j] > 0.0;
  double ou = orth_residual(m, n, u, m, use) / (nn * EPS);
  double ov = orth_residual(n, n, v, n, NULL) / (nn * EPS);
  free(use);
  if (!(resid < LIMIT && ou < LIMIT && ov < LIMIT))
    fail_msg("%s %dx%d (precondition %d): resid %.2f orthU %.2f orthV %.2f (limit %.0f), %d sweeps",
             what, m, n, precondition, resid, ou, ov, LIMIT, info.sweeps);
  for (int j = 0; j < n; j++) {
    if (!(s[j] >= 0.0) || (j > 0 && s[j] > s[j - 1]))
      fail_msg("%s %dx%d: sigma not descending/non-negative at %d", what, m, n, j);
  }
  free(u);
  free(v);
  return s;
}

/* Runs the type on every size (square, then a few rectangular), comparing σ
 * with the construction (when known) or LAPACK dgesdd, to c·n·ε·σ₁. */
static void run_type(mtype t, int precondition, int with_256) {
  static const int sizes[] = {0, 1, 2, 3, 10, 16, 30, 40, 64, 80, 96, 128, 256};
  static const int rect[][2] = {{20, 10}, {100, 30}, {300, 64}, {257, 128}};
  int n_sq = (int)(sizeof sizes / sizeof sizes[0]);
  int n_cases = n_sq + 4;
  for (int c = 0; c < n_cases; c++) {
    int m = c < n_sq ? sizes[c] : rect[c - n_sq][0];
    int n = c < n_sq ? sizes[c] : rect[c - n_sq][1];
    if (n == 256 && (!with_256 || baseline_group)) continue; /* keep the suite fast */
    double *a = alloc_doubles((size_t)m * n), *known = alloc_doubles((size_t)n + 1);
    double *ref = alloc_doubles((size_t)n + 1);
    int have_known = build(t, m, n, 1000 + 7 * (uint64_t)c + 101 * (uint64_t)t, a, known);
    double *s = check_svd(mtype_name(t), m, n, a, precondition);
    if (have_known) {
      memcpy(ref, known, (size_t)n * sizeof(double));
    } else {
      lapack_singular_values(m, n, a, ref);
    }
    double tol = 50.0 * (n > 0 ? n : 1) * EPS * (n > 0 ? ref[0] : 0.0);
    for (int j = 0; j < n; j++)
      if (fabs(s[j] - ref[j]) > tol)
        fail_msg("%s %dx%d: sigma[%d] = %.17g, reference %.17g", mtype_name(t), m, n, j, s[j],
                 ref[j]);
    free(s);
    free(a);
    free(known);
    free(ref);
  }
}

static void test_zero_matrix_gives_zero_sigma_and_orthogonal_v(void **state) {
  (void)state;
  run_type(M_ZERO, 0, 1);
}
static void test_identity_is_its_own_svd(void **state) {
  (void)state;
  run_type(M_IDENTITY, 0, 0);
}
static void test_random_matrices_factor_accurately(void **state) {
  (void)state;
  run_type(M_RANDOM, 0, 1);
}
static void test_geometric_spectrum_kappa_1e12(void **state) {
  (void)state;
  run_type(M_GEOMETRIC, 0, 1);
}
static void test_arithmetic_spectrum_kappa_1e12(void **state) {
  (void)state;
  run_type(M_ARITHMETIC, 0, 0);
}
static void test_clustered_spectrum(void **state) {
  (void)state;
  run_type(M_CLUSTERED, 0, 0);
}
static void test_rank_deficient_matrix(void **state) {
  (void)state;
  run_type(M_RANK_DEFICIENT, 0, 0);
}
static void test_duplicate_columns(void **state) {
  (void)state;
  run_type(M_DUPLICATE_COLUMNS, 0, 0);
}
static void test_scale_near_underflow(void **state) {
  (void)state;
  run_type(M_TINY, 0, 0);
}
static void test_scale_near_overflow(void **state) {
  (void)state;
  run_type(M_HUGE, 0, 0);
}
static void test_subnormal_entries(void **state) {
  (void)state;
  run_type(M_SUBNORMAL, 0, 0);
}

static void test_qr_preconditioned_path_on_every_type(void **state) {
  (void)state;
  for (int t = M_ZERO; t <= M_SUBNORMAL; t++) run_type((mtype)t, 1, t == M_GEOMETRIC);
}

/* Graded columns A = B·D, D from 1 down to 1e-15 (and a wilder 1e-60):
 * one-sided Jacobi determines even the smallest σ to high relative accuracy,
 * as LAPACK dgesvj does; compare relatively against dgesvj. */
static void test_graded_columns_small_sigma_relatively_accurate(void **state) {
  (void)state;
  const int sizes[] = {10, 40, 96};
  const double ranges[] = {1e-15, 1e-60};
  for (int si = 0; si < 3; si++)
    for (int ri = 0; ri < 2; ri++) {
      int n = sizes[si], m = n + 5;
      test_rng rng = {77 + (uint64_t)si};
      double *a = alloc_doubles((size_t)m * n), *ref = alloc_doubles((size_t)n);
      double *w = alloc_doubles((size_t)m * n), *vv = alloc_doubles((size_t)n * n), stat[6];
      fill_gauss(&rng, a, (size_t)m * n);
      for (int j = 0; j < n; j++) {
        double dj = pow(ranges[ri], (double)j / (n - 1));
        for (int i = 0; i < m; i++) a[(size_t)j * m + i] *= dj;
      }
      memcpy(w, a, (size_t)m * n * sizeof(double));
      int rc =
          (int)LAPACKE_dgesvj(LAPACK_COL_MAJOR, 'G', 'N', 'N', m, n, w, m, ref, 0, vv, n, stat);
      assert_int_equal(rc, 0);
      assert_true(stat[0] == 1.0); /* dgesvj returns scaled σ when stat[0] != 1 */
      double *s = check_svd("graded", m, n, a, 0);
      for (int j = 0; j < n; j++) {
        double rel = fabs(s[j] - ref[j]) / ref[j];
        if (!(rel < 1e-11))
          fail_msg("graded %dx%d range %g: sigma[%d] = %.17g vs dgesvj %.17g (rel %.2e)", m, n,
                   ranges[ri], j, s[j], ref[j], rel);
      }
      free(s);
      free(a);
      free(ref);
      free(w);
      free(vv);
    }
}

static void test_nan_or_inf_input_is_numeric_error(void **state) {
  (void)state;
  double a[12], s[3], v[9];
  for (int bad = 0; bad < 3; bad++) {
    for (int i = 0; i < 12; i++) a[i] = (double)(i % 5) - 1.5;
    a[7] = bad == 0 ? NAN : (bad == 1 ? INFINITY : -INFINITY);
    kq_status st = kq_svd_jacobi(4, 3, a, 4, s, v, 3, NULL, NULL);
    assert_int_equal(st, KQ_ERR_NUMERIC);
    assert_non_null(strstr(kq_last_error(), "(3, 1)"));
  }
}

static void test_one_sweep_on_hard_matrix_reports_no_convergence(void **state) {
  (void)state;
  int n = 64;
  double *a = alloc_doubles((size_t)n * n), *v = alloc_doubles((size_t)n * n), s[64];
  test_rng rng = {5};
  fill_gauss(&rng, a, (size_t)n * n);
  kq_svd_params p = kq_svd_default_params();
  p.max_sweeps = 1;
  kq_svd_info info;
  assert_int_equal(kq_svd_jacobi(n, n, a, n, s, v, n, &p, &info), KQ_ERR_NO_CONVERGENCE);
  assert_int_equal(info.sweeps, 1);
  assert_true(info.rotations > 0);
  for (int j = 0; j < n; j++) assert_true(isfinite(s[j]));
  free(a);
  free(v);
}

static void test_default_sweeps_converge_within_limit(void **state) {
  (void)state;
  int n = 128;
  double *a = alloc_doubles((size_t)n * n), *v = alloc_doubles((size_t)n * n);
  double *s = alloc_doubles((size_t)n);
  test_rng rng = {6};
  fill_gauss(&rng, a, (size_t)n * n);
  kq_svd_info info;
  assert_int_equal(kq_svd_jacobi(n, n, a, n, s, v, n, NULL, &info), KQ_OK);
  assert_in_range(info.sweeps, 2, 30);
  free(a);
  free(v);
  free(s);
}

static void test_bad_arguments_are_rejected(void **state) {
  (void)state;
  double a[4] = {1, 2, 3, 4}, s[2], v[4];
  assert_int_equal(kq_svd_jacobi(1, 2, a, 1, s, v, 2, NULL, NULL), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_svd_jacobi(2, 2, a, 1, s, v, 2, NULL, NULL), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_svd_jacobi(2, 2, a, 2, s, v, 1, NULL, NULL), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_svd_jacobi(-1, 0, a, 1, s, v, 1, NULL, NULL), KQ_ERR_INVALID_ARGUMENT);
}

/* Leading dimensions larger than the matrix: padding rows are untouched. */
static void test_padded_leading_dimensions(void **state) {
  (void)state;
  int m = 37, n = 23, lda = 41, ldv = 29;
  test_rng rng = {8};
  double *a = alloc_doubles((size_t)lda * n), *dense = alloc_doubles((size_t)m * n);
  double *v = alloc_doubles((size_t)ldv * n), s[23];
  for (int j = 0; j < n; j++)
    for (int i = 0; i < lda; i++) a[(size_t)j * lda + i] = i < m ? rng_gauss(&rng) : 777.0;
  for (int j = 0; j < n; j++)
    for (int i = 0; i < ldv; i++) v[(size_t)j * ldv + i] = 555.0;
  for (int j = 0; j < n; j++)
    memcpy(dense + (size_t)j * m, a + (size_t)j * lda, m * sizeof(double));
  assert_int_equal(kq_svd_jacobi(m, n, a, lda, s, v, ldv, NULL, NULL), KQ_OK);
  for (int j = 0; j < n; j++) {
    for (int i = m; i < lda; i++) assert_true(a[(size_t)j * lda + i] == 777.0);
    for (int i = n; i < ldv; i++) assert_true(v[(size_t)j * ldv + i] == 555.0);
  }
  /* Same factorisation as with tight leading dimensions. */
  double *s2 = check_svd("padded", m, n, dense, 0);
  for (int j = 0; j < n; j++) assert_true(fabs(s[j] - s2[j]) <= 1e-13 * s2[0]);
  free(s2);
  free(a);
  free(dense);
  free(v);
}

/* Exactly rank-deficient input converges in a normal number of sweeps (no
 * slow decay of the null columns) and gives σ = 0 with zero U columns. */
static void test_rank_deficient_converges_quickly_with_zero_u_columns(void **state) {
  (void)state;
  const int sizes[] = {30, 128};
  for (int si = 0; si < 2; si++)
    for (int pre = 0; pre < 2; pre++) {
      int n = sizes[si], m = n;
      test_rng rng = {9};
      double *a = alloc_doubles((size_t)m * n), *v = alloc_doubles((size_t)n * n);
      double *s = alloc_doubles((size_t)n);
      fill_gauss(&rng, a, (size_t)m * n);
      for (int j = 1; j < n; j += 3)
        memcpy(a + (size_t)j * m, a + (size_t)(j - 1) * m, m * sizeof(double));
      kq_svd_params p = kq_svd_default_params();
      p.qr_precondition = pre;
      kq_svd_info info;
      assert_int_equal(kq_svd_jacobi(m, n, a, m, s, v, n, &p, &info), KQ_OK);
      /* the QR path may run Jacobi twice (on Rᵀ, then on R) */
      if (info.sweeps > (pre ? 24 : 12))
        fail_msg("n %d precondition %d: %d sweeps", n, pre, info.sweeps);
      int rank = 0;
      for (int j = 0; j < n; j++) rank += s[j] > 1e-13 * s[0];
      assert_int_equal(rank, n - (n + 1) / 3);
      for (int j = 0; j < n; j++)
        if (s[j] == 0.0)
          for (int i = 0; i < m; i++) assert_true(a[(size_t)j * m + i] == 0.0);
      free(a);
      free(v);
      free(s);
    }
}

static int use_baseline(void **state) {
  (void)state;
  baseline_group = 1;
  kq_linalg_allow_avx2(false);
  return 0;
}

static int allow_simd(void **state) {
  (void)state;
  baseline_group = 0;
  kq_linalg_allow_avx2(true);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_zero_matrix_gives_zero_sigma_and_orthogonal_v),
      cmocka_unit_test(test_identity_is_its_own_svd),
      cmocka_unit_test(test_random_matrices_factor_accurately),
      cmocka_unit_test(test_geometric_spectrum_kappa_1e12),
      cmocka_unit_test(test_arithmetic_spectrum_kappa_1e12),
      cmocka_unit_test(test_clustered_spectrum),
      cmocka_unit_test(test_rank_deficient_matrix),
      cmocka_unit_test(test_duplicate_columns),
      cmocka_unit_test(test_scale_near_underflow),
      cmocka_unit_test(test_scale_near_overflow),
      cmocka_unit_test(test_subnormal_entries),
      cmocka_unit_test(test_qr_preconditioned_path_on_every_type),
      cmocka_unit_test(test_graded_columns_small_sigma_relatively_accurate),
      cmocka_unit_test(test_nan_or_inf_input_is_numeric_error),
      cmocka_unit_test(test_one_sweep_on_hard_matrix_reports_no_convergence),
      cmocka_unit_test(test_default_sweeps_converge_within_limit),
      cmocka_unit_test(test_bad_arguments_are_rejected),
      cmocka_unit_test(test_padded_leading_dimensions),
      cmocka_unit_test(test_rank_deficient_converges_quickly_with_zero_u_columns),
  };
  /* Every case runs on the AVX2 kernels (where the CPU has them) and again
   * on the baseline kernels. */
  int failed = cmocka_run_group_tests_name("simd kernels", tests, NULL, NULL);
  failed += cmocka_run_group_tests_name("baseline kernels", tests, use_baseline, allow_simd);
  return failed;
}
