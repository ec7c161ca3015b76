/*
 * test_rfactor.c — kq_rfactor: RᵀR = XᵀX (X converted independently with the
 * common f16/bf16 helpers and its Gram summed in long double), R upper
 * triangular with a non-negative diagonal, multi-part stacks with scales,
 * the TSQR fallback on ill-conditioned data (σ(R) checked against LAPACK
 * dgesvd of the data), rank-deficient inputs and NaN/Inf reporting.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include <cmocka.h>

#include "linalg/kq_linalg.h"
#include "linalg/kq_simd.h"
#include "linalg/linalg_test_util.h"

/* A part stored in `dtype`, rows×cols with row stride `stride`. */
typedef struct test_part {
  void *data;
  kq_matrix_view view;
} test_part;

static test_part make_part(kq_dtype dtype, int64_t rows, int cols, int64_t stride, double scale,
                           const double *values /* rows×cols row-major */) {
  test_part p;
  size_t es = kq_dtype_size(dtype);
  p.data = calloc((size_t)(rows * stride) + 1, es);
  if (!p.data) abort();
  for (int64_t i = 0; i < rows; i++)
    for (int j = 0; j < cols; j++) {
      double x = values[i * cols + j];
      size_t k = (size_t)(i * stride + j);
      switch (dtype) {
      case KQ_DTYPE_F32: ((float *)p.data)[k] = (float)x; break;
      case KQ_DTYPE_F16: ((uint16_t *)p.data)[k] = kq_f32_to_f16((float)x); break;
      case KQ_DTYPE_BF16: ((uint16_t *)p.data)[k] = kq_f32_to_bf16((float)x); break;
      default: ((double *)p.data)[k] = x; break;
      }
    }
  p.view = (kq_matrix_view){p.data, dtype, rows, cols, stride, scale};
  return p;
}

/* Element (i, j) of a view as the test reads it, independent of rfactor.c. */
static double view_at(const kq_matrix_view *v, int64_t i, int j) {
  size_t k = (size_t)(i * v->row_stride + j);
  double x;
  switch (v->dtype) {
  case KQ_DTYPE_F32: x = ((const float *)v->data)[k]; break;
  case KQ_DTYPE_F16: x = kq_f16_to_f32(((const uint16_t *)v->data)[k]); break;
  case KQ_DTYPE_BF16: x = kq_bf16_to_f32(((const uint16_t *)v->data)[k]); break;
  default: x = ((const double *)v->data)[k]; break;
  }
  return x * v->scale;
}

/* ‖RᵀR − XᵀX‖_F / ‖XᵀX‖_F, with XᵀX in long double; also checks shape. */
static double gram_error(const kq_matrix_view *parts, int n_parts, const double *r, int ldr) {
  int d = parts[0].cols;
  long double *g = calloc((size_t)d * d + 1, sizeof(long double));
  for (int p = 0; p < n_parts; p++)
    for (int64_t i = 0; i < parts[p].rows; i++)
      for (int a = 0; a < d; a++) {
        double xa = view_at(&parts[p], i, a);
        for (int b = 0; b < d; b++) g[a * d + b] += (long double)xa * view_at(&parts[p], i, b);
      }
  long double num = 0, den = 0;
  for (int a = 0; a < d; a++)
    for (int b = 0; b < d; b++) {
      long double rr = 0;
      for (int k = 0; k < d; k++) rr += (long double)r[a * ldr + k] * r[b * ldr + k];
      num += (rr - g[a * d + b]) * (rr - g[a * d + b]);
      den += g[a * d + b] * g[a * d + b];
    }
  for (int j = 0; j < d; j++) {
    assert_true(r[j * ldr + j] >= 0.0);
    for (int i = j + 1; i < d; i++) assert_true(r[j * ldr + i] == 0.0);
    for (int i = 0; i <= j; i++) assert_true(isfinite(r[j * ldr + i]));
  }
  free(g);
  return den > 0 ? (double)sqrtl(num / den) : (double)sqrtl(num);
}

static double *gauss_rows(uint64_t seed, int64_t rows, int cols) {
  test_rng rng = {seed};
  double *x = alloc_doubles((size_t)(rows * cols));
  fill_gauss(&rng, x, (size_t)(rows * cols));
  /* anisotropic columns, like hidden states */
  for (int64_t i = 0; i < rows; i++)
    for (int j = 0; j < cols; j++) x[i * cols + j] *= 1.0 + 3.0 * (j % 5);
  return x;
}

static void test_gram_of_r_matches_data_for_every_dtype(void **state) {
  (void)state;
  const kq_dtype types[] = {KQ_DTYPE_F32, KQ_DTYPE_F16, KQ_DTYPE_BF16, KQ_DTYPE_F64};
  const int dims[] = {1, 5, 13, 64};
  for (int t = 0; t < 4; t++)
    for (int di = 0; di < 4; di++) {
      int d = dims[di];
      int64_t rows = 700;
      double *x = gauss_rows(11 + (uint64_t)t, rows, d);
      test_part p = make_part(types[t], rows, d, d + 3, 1.0, x);
      double *r = alloc_doubles((size_t)d * (d + 2));
      kq_rfactor_info info;
      kq_status st = kq_rfactor(&p.view, 1, r, d + 2, &info);
      if (st != KQ_OK) fail_msg("dtype %d d %d: %s", t, d, kq_last_error());
      double e = gram_error(&p.view, 1, r, d + 2);
      if (!(e < 1e-13))
        fail_msg("dtype %s d %d: relative Gram error %.3e", kq_dtype_name(types[t]), d, e);
      if (types[t] != KQ_DTYPE_F64) assert_int_equal(info.method, KQ_RFACTOR_CHOLESKY);
      assert_true(info.min_pivot_ratio > 0.0 && info.min_pivot_ratio <= 1.0);
      free(x);
      free(r);
      free(p.data);
    }
}

/* Eigen's stack [αK; Q/α]: RᵀR = α²KᵀK + QᵀQ/α². */
static void test_multi_part_stack_with_scales(void **state) {
  (void)state;
  int d = 24;
  double alpha = 3.5;
  double *k = gauss_rows(21, 300, d), *q = gauss_rows(22, 500, d);
  test_part parts[3] = {make_part(KQ_DTYPE_F16, 300, d, d, alpha, k),
                        make_part(KQ_DTYPE_BF16, 500, d, d + 8, 1.0 / alpha, q),
                        make_part(KQ_DTYPE_F32, 0, d, d, 1.0, k)};
  kq_matrix_view views[3] = {parts[0].view, parts[1].view, parts[2].view};
  double *r = alloc_doubles((size_t)d * d);
  assert_int_equal(kq_rfactor(views, 3, r, d, NULL), KQ_OK);
  double e = gram_error(views, 3, r, d);
  if (!(e < 1e-13)) fail_msg("relative Gram error %.3e", e);
  free(k);
  free(q);
  free(r);
  for (int i = 0; i < 3; i++) free(parts[i].data);
}

/* X = W·diag(σ)·Yᵀ with κ = 1e8 in F64: Gram + Cholesky would lose the
 * small σ entirely (error ~κ²ε), the TSQR fallback keeps them. */
static void test_ill_conditioned_input_takes_tsqr_and_keeps_small_sigma(void **state) {
  (void)state;
  int d = 16, rows = 3000;
  test_rng rng = {31};
  double s[16];
  for (int k = 0; k < d; k++) s[k] = pow(1e8, -(double)k / (d - 1));
  double *colmajor = alloc_doubles((size_t)rows * d);
  matrix_with_spectrum(&rng, rows, d, s, colmajor);
  double *x = alloc_doubles((size_t)rows * d);
  for (int i = 0; i < rows; i++)
    for (int j = 0; j < d; j++) x[(size_t)i * d + j] = colmajor[(size_t)j * rows + i];
  double ref[16];
  lapack_singular_values(rows, d, colmajor, ref);
  /* Two parts (split mid-block, the second stored halved with scale 2),
   * so the fallback also streams across parts. */
  for (int i = 1200 * d; i < rows * d; i++) x[i] *= 0.5;
  test_part p = make_part(KQ_DTYPE_F64, rows, d, d, 1.0, x);
  kq_matrix_view views[2] = {p.view, p.view};
  views[0].rows = 1200;
  views[1].data = (const double *)p.data + 1200 * d;
  views[1].rows = rows - 1200;
  views[1].scale = 2.0;
  double r[256], sr[16];
  kq_rfactor_info info;
  assert_int_equal(kq_rfactor(views, 2, r, d, &info), KQ_OK);
  assert_int_equal(info.method, KQ_RFACTOR_TSQR);
  lapack_singular_values(d, d, r, sr);
  for (int k = 0; k < d; k++) {
    double rel = fabs(sr[k] - ref[k]) / ref[k];
    if (!(rel < 1e-6))
      fail_msg("sigma[%d] of R %.17g vs data %.17g (rel %.2e)", k, sr[k], ref[k], rel);
  }
  free(colmajor);
  free(x);
  free(p.data);
}

/* F32 data with κ = 1e5 is past the Gram route's limit for F32 (~2e4 at
 * this size): TSQR, with σ(R) equal to σ of the stored values. F16 data of
 * the same shape but κ = 10 stays on the Gram route. */
static void test_fallback_threshold_depends_on_dtype(void **state) {
  (void)state;
  int d = 16, rows = 2000;
  const double kappas[] = {1e5, 10.0};
  const kq_dtype types[] = {KQ_DTYPE_F32, KQ_DTYPE_F16};
  for (int c = 0; c < 2; c++) {
    test_rng rng = {71};
    double s[16];
    for (int k = 0; k < d; k++) s[k] = pow(kappas[c], -(double)k / (d - 1));
    double *colmajor = alloc_doubles((size_t)rows * d), *x = alloc_doubles((size_t)rows * d);
    matrix_with_spectrum(&rng, rows, d, s, colmajor);
    for (int i = 0; i < rows; i++)
      for (int j = 0; j < d; j++) x[(size_t)i * d + j] = colmajor[(size_t)j * rows + i];
    test_part p = make_part(types[c], rows, d, d, 1.0, x);
    for (int i = 0; i < rows; i++) /* the stored values, as the oracle sees them */
      for (int j = 0; j < d; j++) colmajor[(size_t)j * rows + i] = view_at(&p.view, i, j);
    double ref[16], sr[16], r[256];
    lapack_singular_values(rows, d, colmajor, ref);
    kq_rfactor_info info;
    assert_int_equal(kq_rfactor(&p.view, 1, r, d, &info), KQ_OK);
    assert_int_equal(info.method, c == 0 ? KQ_RFACTOR_TSQR : KQ_RFACTOR_CHOLESKY);
    lapack_singular_values(d, d, r, sr);
    for (int k = 0; k < d; k++)
      if (!(fabs(sr[k] - ref[k]) <= 1e-9 * ref[k]))
        fail_msg("case %d: sigma[%d] of R %.17g vs data %.17g", c, k, sr[k], ref[k]);
    free(colmajor);
    free(x);
    free(p.data);
  }
}

static void test_rank_deficient_inputs_give_finite_r(void **state) {
  (void)state;
  int d = 16;
  for (int c = 0; c < 4; c++) {
    int64_t rows = c == 0 ? 5 : 200; /* T < d, duplicates, zero columns, all zero */
    double *x = gauss_rows(41 + (uint64_t)c, rows, d);
    for (int64_t i = 0; i < rows; i++)
      for (int j = 0; j < d; j++) {
        if (c == 1 && j % 4 == 3) x[i * d + j] = x[i * d + j - 1];
        if (c == 2 && j % 5 == 2) x[i * d + j] = 0.0;
        if (c == 3) x[i * d + j] = 0.0;
      }
    test_part p = make_part(c == 0 ? KQ_DTYPE_F32 : KQ_DTYPE_F16, rows, d, d, 1.0, x);
    double r[256];
    kq_rfactor_info info;
    assert_int_equal(kq_rfactor(&p.view, 1, r, d, &info), KQ_OK);
    assert_int_equal(info.method, KQ_RFACTOR_TSQR); /* the Gram is singular */
    double e = gram_error(&p.view, 1, r, d);
    if (!(e < 1e-13)) fail_msg("case %d: relative Gram error %.3e", c, e);
    free(x);
    free(p.data);
  }
}

/* F64 data at 1e-300 (the Gram underflows) and 1e300 (it overflows): both
 * must still give R with RᵀR = XᵀX, through the TSQR pass. */
static void test_extreme_scales_fall_back_and_stay_accurate(void **state) {
  (void)state;
  int d = 12, rows = 500;
  const double scales[] = {1e-300, 1e300};
  for (int k = 0; k < 2; k++) {
    double *x = gauss_rows(61, rows, d);
    for (int i = 0; i < rows * d; i++) x[i] *= scales[k];
    test_part p = make_part(KQ_DTYPE_F64, rows, d, d, 1.0, x);
    double r[144];
    kq_rfactor_info info;
    assert_int_equal(kq_rfactor(&p.view, 1, r, d, &info), KQ_OK);
    assert_int_equal(info.method, KQ_RFACTOR_TSQR);
    double e = gram_error(&p.view, 1, r, d);
    if (!(e < 1e-13)) fail_msg("scale %g: relative Gram error %.3e", scales[k], e);
    free(x);
    free(p.data);
  }
}

static void test_nan_or_inf_is_reported_with_part_row_and_column(void **state) {
  (void)state;
  int d = 9;
  double *x = gauss_rows(51, 100, d);
  const kq_dtype types[] = {KQ_DTYPE_F16, KQ_DTYPE_F32, KQ_DTYPE_BF16};
  for (int t = 0; t < 3; t++) {
    x[70 * d + 4] = t == 1 ? INFINITY : NAN;
    test_part good = make_part(types[t], 30, d, d, 1.0, x);
    test_part bad = make_part(types[t], 100, d, d, 1.0, x);
    kq_matrix_view views[2] = {good.view, bad.view};
    double r[81];
    assert_int_equal(kq_rfactor(views, 2, r, d, NULL), KQ_ERR_NUMERIC);
    assert_non_null(strstr(kq_last_error(), "part 1 row 70 column 4"));
    free(good.data);
    free(bad.data);
  }
  free(x);
}

static void test_bad_views_are_rejected(void **state) {
  (void)state;
  double x[8] = {0};
  double r[16];
  kq_matrix_view v[2] = {{x, KQ_DTYPE_F64, 2, 2, 2, 1.0}, {x, KQ_DTYPE_F64, 2, 3, 3, 1.0}};
  assert_int_equal(kq_rfactor(v, 2, r, 4, NULL), KQ_ERR_INVALID_ARGUMENT); /* cols differ */
  assert_int_equal(kq_rfactor(v, 0, r, 4, NULL), KQ_ERR_INVALID_ARGUMENT);
  v[0].row_stride = 1;
  assert_int_equal(kq_rfactor(v, 1, r, 4, NULL), KQ_ERR_INVALID_ARGUMENT); /* stride < cols */
  v[0].row_stride = 2;
  v[0].dtype = KQ_DTYPE_I32;
  assert_int_equal(kq_rfactor(v, 1, r, 4, NULL), KQ_ERR_UNSUPPORTED);
  v[0].dtype = KQ_DTYPE_F64;
  assert_int_equal(kq_rfactor(v, 1, r, 1, NULL), KQ_ERR_INVALID_ARGUMENT); /* ldr < d */
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
      cmocka_unit_test(test_gram_of_r_matches_data_for_every_dtype),
      cmocka_unit_test(test_multi_part_stack_with_scales),
      cmocka_unit_test(test_ill_conditioned_input_takes_tsqr_and_keeps_small_sigma),
      cmocka_unit_test(test_fallback_threshold_depends_on_dtype),
      cmocka_unit_test(test_rank_deficient_inputs_give_finite_r),
      cmocka_unit_test(test_extreme_scales_fall_back_and_stay_accurate),
      cmocka_unit_test(test_nan_or_inf_is_reported_with_part_row_and_column),
      cmocka_unit_test(test_bad_views_are_rejected),
  };
  /* Every case runs on the AVX2 kernels (where the CPU has them) and again
   * on the baseline kernels. */
  int failed = cmocka_run_group_tests_name("simd kernels", tests, NULL, NULL);
  failed += cmocka_run_group_tests_name("baseline kernels", tests, use_baseline, allow_simd);
  return failed;
}
