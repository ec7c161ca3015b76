/*
 * fit --positions (host/fit/positions.c): a rope pre calibration rotated to
 * sampled positions and fitted as rope post. Checked against a rotation
 * done here in double from the RoPE formula (not through kq_rope_rotate),
 * plus the identities: positions 1 is the unrotated fit, the file says
 * rope post, and a seed gives one result.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fit_testutil.h"
#include "kq_fit.h"

enum { L = 2, H = 4, HK = 2, T = 96, D = 8, RANK = 3 };

static void make_calib(tcalib *c, const char *rope) {
  memset(c, 0, sizeof *c);
  c->L = L, c->H = H, c->Hk = HK, c->T = T, c->d = D, c->D = 12;
  c->rope = rope;
  c->rope_theta = "100";
  t_rng_state = 77;
  tcalib_random(c, 0.8);
}

static kq_projections *fit(const char *calib, const char *out, int64_t positions, uint64_t seed) {
  kq_fit_params p = kq_fit_default_params();
  p.rank_k = RANK;
  p.rank_v = RANK;
  p.positions = positions;
  p.seed = seed;
  p.n_threads = 2;
  kq_status st = kq_fit(calib, out, &p);
  if (st) fail_msg("fit: %s", kq_last_error());
  kq_projections *proj = NULL;
  assert_int_equal(kq_projections_load(out, &proj), KQ_OK);
  return proj;
}

/* max |x − y| over the key/query/value matrices and spectra of all layers. */
static double max_diff(kq_projections *a, kq_projections *b) {
  double m = 0;
  for (int l = 0; l < L; l++) {
    tproj_layer x, y;
    assert_true(tproj_get(a, l, HK, D, &x));
    assert_true(tproj_get(b, l, HK, D, &y));
    size_t n = (size_t)HK * D * RANK;
    for (size_t i = 0; i < n; i++) {
      m = fmax(m, fabs(x.a[i] - y.a[i]));
      m = fmax(m, fabs(x.b[i] - y.b[i]));
      m = fmax(m, fabs(x.c[i] - y.c[i]));
      m = fmax(m, fabs(x.e[i] - y.e[i]));
    }
    for (size_t i = 0; i < (size_t)HK * D; i++) m = fmax(m, fabs(x.ks[i] - y.ks[i]));
    tproj_free(&x);
    tproj_free(&y);
  }
  return m;
}

static void test_positions_one_is_unrotated(void **state) {
  (void)state;
  tcalib c;
  make_calib(&c, "pre");
  const char *pre = t_path("pos_pre.safetensors"), *post = t_path("pos_post.safetensors");
  assert_int_equal(tcalib_write(&c, pre), KQ_OK);
  c.rope = "post";
  assert_int_equal(tcalib_write(&c, post), KQ_OK);
  kq_projections *rot = fit(pre, t_path("pos_p1.safetensors"), 1, 5);
  kq_projections *plain = fit(post, t_path("pos_plain.safetensors"), 0, 5);
  assert_true(max_diff(rot, plain) == 0.0);
  kq_projections_info info;
  assert_int_equal(kq_projections_get_info(rot, &info), KQ_OK);
  assert_int_equal(info.rope, KQ_ROPE_POST);
  /* The temporary rotated file is gone. */
  char tmp[300];
  snprintf(tmp, sizeof tmp, "%s.positions.%d", t_path("pos_p1.safetensors"), (int)getpid());
  assert_false(t_exists(tmp));
  kq_projections_destroy(rot);
  kq_projections_destroy(plain);
  unlink(pre), unlink(post), unlink(t_path("pos_p1.safetensors"));
  unlink(t_path("pos_plain.safetensors"));
  tcalib_free(&c);
}

/* x [d] rotated to position pos, pairs layout: angle pos·θ^(−2j/d). */
static void ref_rotate(double *x, int d, int64_t pos, double theta) {
  for (int j = 0; j < d / 2; j++) {
    double a = (double)pos / pow(theta, 2.0 * j / d);
    double x0 = x[2 * j], x1 = x[2 * j + 1];
    x[2 * j] = x0 * cos(a) - x1 * sin(a);
    x[2 * j + 1] = x0 * sin(a) + x1 * cos(a);
  }
}

static void test_positions_match_reference_rotation(void **state) {
  (void)state;
  const int64_t N = 4096;
  tcalib c;
  make_calib(&c, "pre");
  const char *pre = t_path("pos_pre2.safetensors"), *ref = t_path("pos_ref.safetensors");
  assert_int_equal(tcalib_write(&c, pre), KQ_OK);
  int64_t lo = N, hi = -1;
  for (int l = 0; l < L; l++)
    for (int side = 0; side < 2; side++) {
      int heads = side ? H : HK;
      double *x = side ? c.q[l] : c.k[l];
      for (int h = 0; h < heads; h++)
        for (int t = 0; t < T; t++) {
          int64_t pos = kq_calib_row_position(9, N, l, side, h, t);
          assert_true(pos >= 0 && pos < N);
          lo = pos < lo ? pos : lo;
          hi = pos > hi ? pos : hi;
          ref_rotate(x + ((size_t)h * T + t) * D, D, pos, 100.0);
        }
    }
  /* Positions spread over the range (1152 draws from [0, 4096)). */
  assert_true(lo < N / 16 && hi > N - N / 16);
  c.rope = "post";
  assert_int_equal(tcalib_write(&c, ref), KQ_OK);
  kq_projections *rot = fit(pre, t_path("pos_rot.safetensors"), N, 9);
  kq_projections *want = fit(ref, t_path("pos_want.safetensors"), 0, 9);
  /* Same data up to the last bit of an F32 rounding of the rotated rows. */
  double m = 0;
  for (int l = 0; l < L; l++) {
    tproj_layer x, y;
    assert_true(tproj_get(rot, l, HK, D, &x));
    assert_true(tproj_get(want, l, HK, D, &y));
    for (int i = 0; i < HK * D; i++) m = fmax(m, fabs(x.ks[i] - y.ks[i]) / (fabs(y.ks[0]) + 1e-30));
    tproj_free(&x);
    tproj_free(&y);
  }
  assert_true(m < 1e-5);
  /* And the rotation changed the fit: the unrotated spectrum differs. */
  kq_projections *plain = fit(pre, t_path("pos_unrot.safetensors"), 1, 9);
  assert_true(max_diff(rot, plain) > 1e-3);
  kq_projections_destroy(rot);
  kq_projections_destroy(want);
  kq_projections_destroy(plain);
  unlink(pre), unlink(ref), unlink(t_path("pos_rot.safetensors"));
  unlink(t_path("pos_want.safetensors")), unlink(t_path("pos_unrot.safetensors"));
  tcalib_free(&c);
}

static void test_positions_deterministic_per_seed(void **state) {
  (void)state;
  tcalib c;
  make_calib(&c, "pre");
  const char *pre = t_path("pos_pre3.safetensors");
  assert_int_equal(tcalib_write(&c, pre), KQ_OK);
  kq_projections *a = fit(pre, t_path("pos_s1a.safetensors"), 2048, 1);
  kq_projections *b = fit(pre, t_path("pos_s1b.safetensors"), 2048, 1);
  kq_projections *o = fit(pre, t_path("pos_s2.safetensors"), 2048, 2);
  assert_true(max_diff(a, b) == 0.0);
  assert_true(max_diff(a, o) > 1e-4);
  kq_projections_destroy(a);
  kq_projections_destroy(b);
  kq_projections_destroy(o);
  unlink(pre), unlink(t_path("pos_s1a.safetensors")), unlink(t_path("pos_s1b.safetensors"));
  unlink(t_path("pos_s2.safetensors"));
  tcalib_free(&c);
}

static void test_positions_refuse_post_calibration(void **state) {
  (void)state;
  tcalib c;
  make_calib(&c, "post");
  const char *post = t_path("pos_post4.safetensors"), *out = t_path("pos_out4.safetensors");
  assert_int_equal(tcalib_write(&c, post), KQ_OK);
  kq_fit_params p = kq_fit_default_params();
  p.rank_k = p.rank_v = RANK;
  p.positions = 256;
  assert_int_equal(kq_fit(post, out, &p), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "rope pre"));
  assert_false(t_exists(out));
  p.positions = -1;
  assert_int_equal(kq_fit(post, out, &p), KQ_ERR_INVALID_ARGUMENT);
  unlink(post);
  tcalib_free(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_positions_one_is_unrotated),
      cmocka_unit_test(test_positions_match_reference_rotation),
      cmocka_unit_test(test_positions_deterministic_per_seed),
      cmocka_unit_test(test_positions_refuse_post_calibration),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
