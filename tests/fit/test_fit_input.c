/*
 * Input handling of kq_fit / kq_eval: malformed calibration files give a
 * status and a message naming the file, tensor or field, and no output
 * file; degenerate data (all zeros) gives finite results; RoPE 'pre' and
 * cancellation behave as documented.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <sys/stat.h>

#include "fit_testutil.h"
#include "kq_fit.h"

static kq_status fit_fixed(const char *calib, const char *proj, int r) {
  kq_fit_params p = kq_fit_default_params();
  p.rank_k = p.rank_v = r;
  return kq_fit(calib, proj, &p);
}

/* Fit must fail with `want`, the message must contain `needle` and the
 * calibration path, and no projection file may appear. */
static void expect_fit_failure(const tcalib *c, kq_status want, const char *needle) {
  const char *calib = t_path("bad.st"), *proj = t_path("bad_p.st");
  unlink(proj);
  assert_int_equal(tcalib_write(c, calib), KQ_OK);
  kq_status st = fit_fixed(calib, proj, 2);
  if (st != want || !strstr(kq_last_error(), needle) || !strstr(kq_last_error(), calib))
    fprintf(stderr, "status %d, message '%s'\n", (int)st, kq_last_error());
  assert_int_equal(st, want);
  assert_non_null(strstr(kq_last_error(), needle));
  assert_non_null(strstr(kq_last_error(), calib));
  assert_false(t_exists(proj));
  unlink(calib);
}

static void test_heads_not_multiple_of_kv_heads_is_rejected(void **state) {
  (void)state;
  tcalib c = {.L = 1, .H = 3, .Hk = 2, .T = 16, .d = 4};
  tcalib_random(&c, 1.0);
  expect_fit_failure(&c, KQ_ERR_FORMAT, "layers.0.q");
  tcalib_free(&c);
}

static void test_nan_in_values_is_reported_with_tensor_name(void **state) {
  (void)state;
  tcalib c = {.L = 2, .H = 2, .Hk = 1, .T = 16, .d = 4};
  tcalib_random(&c, 1.0);
  c.v[1][37] = NAN;
  expect_fit_failure(&c, KQ_ERR_NUMERIC, "layers.1.v");
  c.v[1][37] = 0;
  c.k[0][5] = INFINITY;
  expect_fit_failure(&c, KQ_ERR_NUMERIC, "layers.0.k");
  tcalib_free(&c);
}

static void test_bad_metadata_names_the_field(void **state) {
  (void)state;
  tcalib c = {.L = 1, .H = 2, .Hk = 1, .T = 16, .d = 4};
  tcalib_random(&c, 1.0);
  c.seq_len = "abc";
  expect_fit_failure(&c, KQ_ERR_FORMAT, "seq_len");
  c.seq_len = "5"; /* does not divide T = 16 */
  expect_fit_failure(&c, KQ_ERR_FORMAT, "seq_len");
  c.seq_len = "8";
  c.rope = "sideways";
  expect_fit_failure(&c, KQ_ERR_FORMAT, "rope");
  c.rope = "pre";
  c.rope_theta = "-3";
  expect_fit_failure(&c, KQ_ERR_FORMAT, "rope_theta");
  c.rope_theta = NULL;
  c.rope_layout = "diagonal";
  expect_fit_failure(&c, KQ_ERR_FORMAT, "rope_layout");
  tcalib_free(&c);
}

static void test_inconsistent_layer_shapes_are_rejected(void **state) {
  (void)state;
  tcalib c = {.L = 2, .H = 2, .Hk = 1, .T = 16, .d = 4};
  tcalib_random(&c, 1.0);
  /* Write layer 1 with a different T by hand. */
  const char *calib = t_path("shape.st"), *proj = t_path("shape_p.st");
  unlink(proj);
  kq_st_writer *w = NULL;
  assert_int_equal(kq_st_writer_create(calib, &w), KQ_OK);
  float *buf = calloc(2 * 16 * 4, sizeof *buf);
  int64_t s1[3] = {1, 16, 4}, s2[3] = {2, 16, 4}, s_bad[3] = {1, 8, 4};
  assert_int_equal(kq_st_writer_add(w, "layers.0.k", KQ_DTYPE_F32, 3, s1, buf), KQ_OK);
  assert_int_equal(kq_st_writer_add(w, "layers.0.q", KQ_DTYPE_F32, 3, s2, buf), KQ_OK);
  assert_int_equal(kq_st_writer_add(w, "layers.0.v", KQ_DTYPE_F32, 3, s1, buf), KQ_OK);
  assert_int_equal(kq_st_writer_add(w, "layers.1.k", KQ_DTYPE_F32, 3, s_bad, buf), KQ_OK);
  assert_int_equal(kq_st_writer_add(w, "layers.1.q", KQ_DTYPE_F32, 3, s2, buf), KQ_OK);
  assert_int_equal(kq_st_writer_add(w, "layers.1.v", KQ_DTYPE_F32, 3, s1, buf), KQ_OK);
  assert_int_equal(kq_st_writer_commit(w, NULL), KQ_OK);
  kq_st_writer_destroy(w);
  free(buf);
  assert_int_equal(fit_fixed(calib, proj, 2), KQ_ERR_FORMAT);
  assert_non_null(strstr(kq_last_error(), "layers.1.k"));
  assert_false(t_exists(proj));
  unlink(calib);
  tcalib_free(&c);
}

/* All-zero data is legal: fit succeeds with zero projections and spectra
 * (every σ = 0 direction is dropped), eval reports 0 errors (nothing to
 * approximate; a zero reference with zero error counts as exact). */
static void test_all_zero_data_gives_finite_zero_results(void **state) {
  (void)state;
  tcalib c = {.L = 1, .H = 2, .Hk = 1, .T = 16, .d = 4, .D = 6};
  tcalib_random(&c, 1.0);
  memset(c.k[0], 0, 16 * 4 * sizeof(double));
  memset(c.q[0], 0, 2 * 16 * 4 * sizeof(double));
  memset(c.v[0], 0, 16 * 4 * sizeof(double));
  const char *calib = t_path("zero.st"), *proj = t_path("zero_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  for (int m = 0; m < 3; m++) {
    kq_fit_params p = kq_fit_default_params();
    p.method = (kq_method)m;
    p.rank_k = p.rank_v = 2;
    assert_int_equal(kq_fit(calib, proj, &p), KQ_OK);
    kq_projections *pp = NULL;
    assert_int_equal(kq_projections_load(proj, &pp), KQ_OK);
    tproj_layer t;
    assert_true(tproj_get(pp, 0, 1, 4, &t));
    for (int i = 0; i < 4; i++) assert_true(t.ks[i] == 0 && t.vs[i] == 0);
    tproj_free(&t);
    kq_projections_destroy(pp);
    kq_eval_result *r = NULL;
    assert_int_equal(kq_eval(calib, proj, NULL, &r), KQ_OK);
    const kq_eval_layer *e = &r->layers[0];
    double vals[7] = {e->key, e->query, e->value, e->logits, e->softmax, e->output, e->value_out};
    for (int i = 0; i < 7; i++) assert_true(vals[i] == 0.0);
    kq_eval_result_destroy(r);
  }
  unlink(calib);
  unlink(proj);
  tcalib_free(&c);
}

static double dot(const double *a, const double *b, int d) {
  double s = 0;
  for (int i = 0; i < d; i++) s += a[i] * b[i];
  return s;
}

static void test_rope_logit_depends_only_on_relative_position(void **state) {
  (void)state;
  const int d = 8;
  for (int layout = 0; layout < 2; layout++) {
    double q[8], k[8], q1[8], k1[8], q2[8], k2[8];
    for (int i = 0; i < d; i++) q[i] = t_normal(), k[i] = t_normal();
    memcpy(q1, q, sizeof q), memcpy(k1, k, sizeof k);
    memcpy(q2, q, sizeof q), memcpy(k2, k, sizeof k);
    kq_rope_rotate(q1, d, 9, 100.0, (kq_rope_layout)layout);
    kq_rope_rotate(k1, d, 4, 100.0, (kq_rope_layout)layout);
    kq_rope_rotate(q2, d, 25, 100.0, (kq_rope_layout)layout);
    kq_rope_rotate(k2, d, 20, 100.0, (kq_rope_layout)layout);
    assert_true(fabs(dot(q1, k1, d) - dot(q2, k2, d)) < 1e-12);
    assert_true(fabs(dot(q1, q1, d) - dot(q, q, d)) < 1e-12);
    /* pair 0 turns by exactly `pos` radians */
    int b = layout == 0 ? 1 : d / 2;
    double x[8] = {1, 0, 0, 0, 0, 0, 0, 0};
    kq_rope_rotate(x, d, 1, 100.0, (kq_rope_layout)layout);
    assert_true(fabs(x[0] - cos(1.0)) < 1e-15 && fabs(x[b] - sin(1.0)) < 1e-15);
  }
}

/* RoPE 'pre' at full rank: k̂ = kABᵀ = k and q̂ = qBAᵀ = q, so the rotated
 * attention is exact; at low rank it is not. */
static void test_rope_pre_full_rank_attention_is_exact(void **state) {
  (void)state;
  tcalib c = {.L = 1,
              .H = 2,
              .Hk = 1,
              .T = 32,
              .d = 8,
              .seq_len = "16",
              .rope = "pre",
              .rope_layout = "halves",
              .rope_theta = "50"};
  tcalib_random(&c, 0.9);
  const char *calib = t_path("pre.st"), *proj = t_path("pre_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  kq_eval_result *r = NULL;
  assert_int_equal(fit_fixed(calib, proj, 8), KQ_OK);
  assert_int_equal(kq_eval(calib, proj, NULL, &r), KQ_OK);
  assert_true(r->layers[0].softmax < 1e-5 && r->layers[0].output < 1e-5);
  assert_int_equal(r->seqs_total, 2);
  kq_eval_result_destroy(r);
  assert_int_equal(fit_fixed(calib, proj, 2), KQ_OK);
  kq_eval_params ep = kq_eval_default_params();
  ep.max_seqs = 1;
  assert_int_equal(kq_eval(calib, proj, &ep, &r), KQ_OK);
  assert_true(r->layers[0].softmax > 1e-3);
  assert_int_equal(r->seqs_used, 1);
  kq_eval_result_destroy(r);
  unlink(calib);
  unlink(proj);
  tcalib_free(&c);
}

/* RoPE 'pre' through the cpu device (append + attend rotate the
 * reconstructed keys/queries) agrees with the host's float64 path. */
static void test_rope_pre_device_output_matches_host(void **state) {
  (void)state;
  tcalib c = {.L = 1,
              .H = 4,
              .Hk = 2,
              .T = 48,
              .d = 8,
              .D = 12,
              .seq_len = "24",
              .rope = "pre",
              .rope_layout = "pairs",
              .rope_theta = "100"};
  tcalib_random(&c, 0.9);
  const char *calib = t_path("pre_dev.st"), *proj = t_path("pre_dev_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  assert_int_equal(fit_fixed(calib, proj, 3), KQ_OK);
  kq_eval_result *host = NULL, *dev = NULL;
  assert_int_equal(kq_eval(calib, proj, NULL, &host), KQ_OK);
  kq_eval_params ep = kq_eval_default_params();
  ep.device = "cpu";
  kq_status st = kq_eval(calib, proj, &ep, &dev);
  if (st) fprintf(stderr, "%s\n", kq_last_error());
  assert_int_equal(st, KQ_OK);
  double x = host->layers[0].output, y = dev->layers[0].output;
  if (fabs(x - y) > 1e-4 * x) fprintf(stderr, "host %.9g device %.9g\n", x, y);
  assert_true(x > 1e-3 && fabs(x - y) <= 1e-4 * x);
  assert_string_equal(dev->device, "cpu");
  kq_eval_result_destroy(host);
  kq_eval_result_destroy(dev);
  unlink(calib);
  unlink(proj);
  tcalib_free(&c);
}

static void test_cancel_flag_interrupts_without_output(void **state) {
  (void)state;
  tcalib c = {.L = 2, .H = 2, .Hk = 1, .T = 16, .d = 4};
  tcalib_random(&c, 1.0);
  const char *calib = t_path("cancel.st"), *proj = t_path("cancel_p.st");
  unlink(proj);
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  volatile int flag = 1;
  kq_fit_params p = kq_fit_default_params();
  p.rank_k = p.rank_v = 2;
  p.cancel = &flag;
  assert_int_equal(kq_fit(calib, proj, &p), KQ_ERR_INTERRUPTED);
  assert_false(t_exists(proj));
  unlink(calib);
  tcalib_free(&c);
}

/* Reliability round 2: no silent acceptance of negative thread counts, and
 * the output may never be the input or a non-regular file (checked before
 * the fit runs). */
static void test_bad_threads_and_outputs_are_refused_before_work(void **state) {
  (void)state;
  tcalib c = {.L = 1, .H = 2, .Hk = 1, .T = 16, .d = 4};
  tcalib_random(&c, 1.0);
  const char *calib = t_path("io.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  struct stat before;
  assert_int_equal(stat(calib, &before), 0);
  kq_fit_params p = kq_fit_default_params();
  p.rank_k = p.rank_v = 2;
  p.n_threads = -1;
  assert_int_equal(kq_fit(calib, t_path("io_p.st"), &p), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "n_threads"));
  assert_false(t_exists(t_path("io_p.st")));
  p.n_threads = 0;
  assert_int_equal(kq_fit(calib, calib, &p), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "is the input"));
  struct stat after;
  assert_int_equal(stat(calib, &after), 0);
  assert_int_equal(after.st_size, before.st_size);
  assert_int_equal(after.st_mtime, before.st_mtime);
  assert_int_equal(kq_fit(calib, "/dev/null", &p), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "/dev/null"));
  kq_eval_params e = kq_eval_default_params();
  e.n_threads = -2;
  kq_eval_result *r = NULL;
  assert_int_equal(kq_eval(calib, calib, &e, &r), KQ_ERR_INVALID_ARGUMENT);
  assert_null(r);
  assert_non_null(strstr(kq_last_error(), "n_threads"));
  unlink(calib);
  tcalib_free(&c);
}

/* Params structs carry their size: a zero-initialised struct (struct_size 0,
 * not started from the defaults) or one from a newer header is refused with
 * KQ_ERR_ABI naming the struct, before any file is touched. */
static void test_params_with_unknown_struct_size_are_refused(void **state) {
  (void)state;
  tcalib c = {.L = 1, .H = 2, .Hk = 1, .T = 16, .d = 4};
  tcalib_random(&c, 1.0);
  const char *calib = t_path("size.st"), *proj = t_path("size_p.st");
  unlink(proj);
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  const size_t bad[] = {0, sizeof(kq_fit_params) + 8};
  for (int i = 0; i < 2; i++) {
    kq_fit_params p = kq_fit_default_params();
    assert_int_equal(p.struct_size, sizeof p);
    p.rank_k = p.rank_v = 2;
    p.struct_size = bad[i];
    assert_int_equal(kq_fit(calib, proj, &p), KQ_ERR_ABI);
    assert_non_null(strstr(kq_last_error(), "kq_fit_params.struct_size"));
    assert_false(t_exists(proj));
  }
  kq_fit_params ok = kq_fit_default_params();
  ok.rank_k = ok.rank_v = 2;
  assert_int_equal(kq_fit(calib, proj, &ok), KQ_OK);

  kq_eval_params e = kq_eval_default_params();
  assert_int_equal(e.struct_size, sizeof e);
  e.struct_size = 0;
  kq_eval_result *r = NULL;
  assert_int_equal(kq_eval(calib, proj, &e, &r), KQ_ERR_ABI);
  assert_null(r);
  assert_non_null(strstr(kq_last_error(), "kq_eval_params"));

  kq_synth_params sp = kq_synth_default_params();
  assert_int_equal(sp.struct_size, sizeof sp);
  sp.struct_size = sizeof sp + 4;
  assert_int_equal(kq_synth(t_path("size_synth.st"), &sp), KQ_ERR_ABI);
  assert_non_null(strstr(kq_last_error(), "kq_synth_params"));
  assert_false(t_exists(t_path("size_synth.st")));

  kq_projections *pr = NULL;
  assert_int_equal(kq_projections_load(proj, &pr), KQ_OK);
  kq_device *dev = NULL;
  assert_int_equal(kq_device_create("cpu", &dev), KQ_OK);
  kq_cache_params cp = kq_cache_default_params();
  assert_int_equal(cp.struct_size, sizeof cp);
  cp.struct_size = 0;
  kq_cache *cache = NULL;
  assert_int_equal(kq_cache_create(dev, pr, &cp, &cache), KQ_ERR_ABI);
  assert_null(cache);
  assert_non_null(strstr(kq_last_error(), "kq_cache_params"));
  assert_int_equal(kq_cache_create(dev, pr, NULL, &cache), KQ_OK); /* NULL: the defaults */
  kq_cache_destroy(cache);
  kq_device_destroy(dev);
  kq_projections_destroy(pr);
  unlink(proj);
  unlink(calib);
  tcalib_free(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_heads_not_multiple_of_kv_heads_is_rejected),
      cmocka_unit_test(test_nan_in_values_is_reported_with_tensor_name),
      cmocka_unit_test(test_bad_metadata_names_the_field),
      cmocka_unit_test(test_inconsistent_layer_shapes_are_rejected),
      cmocka_unit_test(test_all_zero_data_gives_finite_zero_results),
      cmocka_unit_test(test_rope_logit_depends_only_on_relative_position),
      cmocka_unit_test(test_rope_pre_full_rank_attention_is_exact),
      cmocka_unit_test(test_rope_pre_device_output_matches_host),
      cmocka_unit_test(test_cancel_flag_interrupts_without_output),
      cmocka_unit_test(test_bad_threads_and_outputs_are_refused_before_work),
      cmocka_unit_test(test_params_with_unknown_struct_size_are_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
