/*
 * fit --sensitivity: the file is read strictly (errors name the file and
 * line), the multipliers are sqrt(KL / predicted error) normalised to mean 1
 * with a floor, and a layer the model is measured to be sensitive to gets
 * more bytes than in the plain fit, within the same budget.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fit_testutil.h"
#include "kq_fit.h"

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static void test_file_is_read_with_comments_and_in_any_order(void **state) {
  (void)state;
  const char *path = t_path("sens_ok.txt");
  write_text(path, "# header\n\nvalues 1 0.5\nkeys 1 0.25 # trailing comment\n"
                   "keys 0 1e-3\n  values 0 0\n");
  double kl[4];
  assert_int_equal(kq_sensitivity_load(path, 2, kl), KQ_OK);
  assert_true(kl[0] == 1e-3 && kl[1] == 0.25 && kl[2] == 0 && kl[3] == 0.5);
  unlink(path);
}

static void expect_bad(const char *text, const char *what) {
  const char *path = t_path("sens_bad.txt");
  write_text(path, text);
  double kl[4];
  assert_int_equal(kq_sensitivity_load(path, 2, kl), KQ_ERR_FORMAT);
  assert_non_null(strstr(kq_last_error(), path));
  if (!strstr(kq_last_error(), what)) fail_msg("'%s' does not say '%s'", kq_last_error(), what);
  unlink(path);
}

static void test_bad_files_fail_naming_file_and_line(void **state) {
  (void)state;
  const char *rest = "keys 1 1\nvalues 0 1\nvalues 1 1\n";
  char buf[256];
  expect_bad("queries 0 1\n", ":1: expected");
  expect_bad("keys 0\n", ":1: expected");
  expect_bad("keys 0 1 2\n", ":1: expected");
  snprintf(buf, sizeof buf, "keys 2 1\n%s", rest);
  expect_bad(buf, ":1: layer 2 does not exist");
  snprintf(buf, sizeof buf, "keys 0 -1\n%s", rest);
  expect_bad(buf, "not a finite number");
  snprintf(buf, sizeof buf, "keys 0 nan\n%s", rest);
  expect_bad(buf, "not a finite number");
  snprintf(buf, sizeof buf, "keys 1 1\n%s", rest);
  expect_bad(buf, ":2: keys layer 1 given twice");
  expect_bad(rest, "no line for keys layer 0");
  double kl[4];
  assert_int_equal(kq_sensitivity_load(t_path("sens_missing.txt"), 2, kl), KQ_ERR_IO);
  assert_non_null(strstr(kq_last_error(), "sens_missing.txt"));
}

static void test_multipliers_are_normalised_square_roots_with_a_floor(void **state) {
  (void)state;
  /* sqrt(4/1) = 2, sqrt(9/4) = 1.5, sqrt(1/4) = 0.5: mean 4/3 */
  const double kl[3] = {4, 9, 1}, pred[3] = {1, 4, 4};
  double m[3];
  kq_sensitivity_multipliers(kl, pred, 3, m);
  assert_true(fabs(m[0] - 1.5) < 1e-12);
  assert_true(fabs(m[1] - 1.125) < 1e-12);
  assert_true(fabs(m[2] - 0.375) < 1e-12);
  /* zero KL or zero predicted error: the floor, 1/16 of the mean */
  const double kl2[4] = {1, 0, 1, 1}, pred2[4] = {1, 1, 0, 1};
  double m2[4];
  kq_sensitivity_multipliers(kl2, pred2, 4, m2);
  assert_true(fabs(m2[0] - 2) < 1e-12 && fabs(m2[3] - 2) < 1e-12);
  assert_true(m2[1] == 0.0625 && m2[2] == 0.0625);
}

static uint64_t layer_bytes(const char *proj, int layer) {
  kq_projections *p = NULL;
  assert_int_equal(kq_projections_load(proj, &p), KQ_OK);
  uint64_t b = kq_projections_layer_bytes(p, layer, KQ_STORAGE_F16);
  kq_projections_destroy(p);
  return b;
}

/* One layer measured sensitive (KL 1), the others not (KL 0): that layer
 * gets more bytes than in the plain fit, the others fewer, the budget holds. */
static void test_a_sensitive_layer_gets_more_bytes(void **state) {
  (void)state;
  tcalib c = {.L = 3, .H = 4, .Hk = 2, .T = 128, .d = 32, .D = 40};
  tcalib_random(&c, 0.9);
  const char *calib = t_path("sens.st"), *plain = t_path("sens_plain.st");
  const char *weighed = t_path("sens_w.st"), *file = t_path("sens.txt");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  const kq_layout layouts[2] = {KQ_LAYOUT_PER_HEAD, KQ_LAYOUT_JOINT};
  for (int y = 0; y < 2; y++)
    for (int hot = 0; hot < c.L; hot += c.L - 1) {
      kq_fit_params p = kq_fit_default_params();
      p.bytes = 0.25;
      p.layout = layouts[y];
      assert_int_equal(kq_fit(calib, plain, &p), KQ_OK);
      char text[256] = "";
      for (int l = 0; l < c.L; l++)
        snprintf(text + strlen(text), sizeof text - strlen(text), "keys %d %d\nvalues %d %d\n", l,
                 l == hot, l, l == hot);
      write_text(file, text);
      p.sensitivity = file;
      kq_fit_summary s;
      assert_int_equal(kq_fit_ex(calib, weighed, &p, &s), KQ_OK);
      assert_true(s.fraction_of_f16 <= 0.25 + 1e-12);
      uint64_t total_plain = 0, total_w = 0;
      for (int l = 0; l < c.L; l++) {
        uint64_t bp = layer_bytes(plain, l), bw = layer_bytes(weighed, l);
        total_plain += bp;
        total_w += bw;
        if (l == hot)
          assert_true(bw > bp);
        else
          assert_true(bw <= bp);
      }
      assert_true(total_w <= total_plain + 64); /* both at the budget, within a step */
    }
  /* sensitivity needs a byte budget */
  kq_fit_params p = kq_fit_default_params();
  p.ratio = 0.5;
  p.sensitivity = file;
  assert_int_equal(kq_fit(calib, plain, &p), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "byte budget"));
  /* a file for another model fails naming it */
  write_text(file, "keys 0 1\n");
  p = kq_fit_default_params();
  p.bytes = 0.25;
  p.sensitivity = file;
  assert_int_equal(kq_fit(calib, plain, &p), KQ_ERR_FORMAT);
  assert_non_null(strstr(kq_last_error(), file));
  unlink(calib), unlink(plain), unlink(weighed), unlink(file);
  tcalib_free(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_file_is_read_with_comments_and_in_any_order),
      cmocka_unit_test(test_bad_files_fail_naming_file_and_line),
      cmocka_unit_test(test_multipliers_are_normalised_square_roots_with_a_floor),
      cmocka_unit_test(test_a_sensitive_layer_gets_more_bytes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
