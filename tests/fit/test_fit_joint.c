/*
 * Joint KQ-SVD (SPEC §1b): one latent per layer shared by the kv heads.
 * Its logits error over the calibration is the Eckart–Young tail of
 * Q_bd Kᵀ, computed here in double from the data (never through the code
 * under test), and it is never worse than per-head at equal total rank.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fit_testutil.h"

/* K = [K_1 … K_Hk] (T × Hk·d). */
static double *concat(const tcalib *c, const double *x) {
  int n = c->Hk * c->d;
  double *k = t_alloc((size_t)c->T * n);
  for (int i = 0; i < c->Hk; i++)
    for (int t = 0; t < c->T; t++)
      memcpy(k + (size_t)t * n + (size_t)i * c->d, x + ((size_t)i * c->T + t) * c->d,
             (size_t)c->d * sizeof *k);
  return k;
}

/* Σ_i ‖Q_i K_iᵀ − (Q_i B_i)(K̃)ᵀ‖² with K̃ = the cached latent keys:
 * joint: K A (A: Hk·d × R); per-head: K_i A_i (each d × r). */
static double logits_error2(const tcalib *c, int l, const tproj_layer *p, int joint) {
  int g = c->H / c->Hk, T = c->T, d = c->d, gT = g * T, n = c->Hk * d, r = p->rk;
  double *kc = concat(c, c->k[l]), sum = 0;
  double *lat = t_alloc((size_t)T * r);
  if (joint) t_gemm_nn(T, r, n, kc, p->a, lat);
  for (int i = 0; i < c->Hk; i++) {
    double *qs = t_query_stack(c, l, i);
    const double *ki = c->k[l] + (size_t)i * T * d;
    const double *bi = p->b + (size_t)i * d * r;
    if (!joint) t_gemm_nn(T, r, d, ki, p->a + (size_t)i * d * r, lat);
    double *exact = t_alloc((size_t)gT * T), *qb = t_alloc((size_t)gT * r);
    double *approx = t_alloc((size_t)gT * T);
    t_gemm_nt(gT, T, d, qs, ki, exact);
    t_gemm_nn(gT, r, d, qs, bi, qb);
    t_gemm_nt(gT, T, r, qb, lat, approx);
    for (size_t x = 0; x < (size_t)gT * T; x++) {
      double e = exact[x] - approx[x];
      sum += e * e;
    }
    free(qs), free(exact), free(qb), free(approx);
  }
  free(kc), free(lat);
  return sum;
}

/* Singular values of Q_bd Kᵀ = [Q_1 K_1ᵀ; …; Q_Hk K_Hkᵀ] ((Hk·gT) × T). */
static double *qbd_kt_spectrum(const tcalib *c, int l, int *out_n) {
  int g = c->H / c->Hk, T = c->T, d = c->d, gT = g * T, rows = c->Hk * gT;
  double *m = t_alloc((size_t)rows * T);
  for (int i = 0; i < c->Hk; i++) {
    double *qs = t_query_stack(c, l, i);
    t_gemm_nt(gT, T, d, qs, c->k[l] + (size_t)i * T * d, m + (size_t)i * gT * T);
    free(qs);
  }
  int n = rows < T ? rows : T;
  double *s = t_alloc((size_t)n);
  assert_int_equal(t_singular_values(rows, T, m, s), 0);
  free(m);
  *out_n = n;
  return s;
}

/* Σ_i ‖V_i W_iᵀ − Ṽ E_iᵀ W_iᵀ‖² with Ṽ = V C (joint) or V_i C_i. */
static double value_out_error2(const tcalib *c, int l, const tproj_layer *p, int joint) {
  int T = c->T, d = c->d, n = c->Hk * d, r = p->rv, D = c->D;
  double *vc = concat(c, c->v[l]), sum = 0;
  double *lat = t_alloc((size_t)T * r);
  if (joint) t_gemm_nn(T, r, n, vc, p->c, lat);
  for (int i = 0; i < c->Hk; i++) {
    const double *vi = c->v[l] + (size_t)i * T * d;
    if (!joint) t_gemm_nn(T, r, d, vi, p->c + (size_t)i * d * r, lat);
    double *rec = t_alloc((size_t)T * d), *w = t_wo_mean(c, l, i);
    double *y = t_alloc((size_t)T * D), *yh = t_alloc((size_t)T * D);
    t_gemm_nt(T, d, r, lat, p->e + (size_t)i * d * r, rec); /* Ṽ E_iᵀ */
    t_gemm_nt(T, D, d, vi, w, y);
    t_gemm_nt(T, D, d, rec, w, yh);
    for (size_t x = 0; x < (size_t)T * D; x++) sum += (y[x] - yh[x]) * (y[x] - yh[x]);
    free(rec), free(w), free(y), free(yh);
  }
  free(vc), free(lat);
  return sum;
}

static void fit_ranks(const char *calib, const char *proj, kq_layout layout, int rk, int rv) {
  kq_fit_params p = kq_fit_default_params();
  p.layout = layout;
  p.rank_k = rk;
  p.rank_v = rv;
  assert_int_equal(kq_fit(calib, proj, &p), KQ_OK);
}

static void test_joint_logits_error_is_eckart_young_tail(void **state) {
  (void)state;
  tcalib c = {.L = 2, .H = 4, .Hk = 2, .T = 48, .d = 8, .D = 12};
  tcalib_random(&c, 0.8);
  const char *calib = t_path("joint_ey.st"), *proj = t_path("joint_ey_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  const int ranks[3] = {3, 9, 16};
  for (int x = 0; x < 3; x++) {
    fit_ranks(calib, proj, KQ_LAYOUT_JOINT, ranks[x], ranks[x]);
    kq_projections *pr = NULL;
    assert_int_equal(kq_projections_load(proj, &pr), KQ_OK);
    kq_projections_info info;
    assert_int_equal(kq_projections_get_info(pr, &info), KQ_OK);
    assert_int_equal(info.layout, KQ_LAYOUT_JOINT);
    for (int l = 0; l < c.L; l++) {
      tproj_layer p;
      assert_true(tproj_get(pr, l, c.Hk, c.d, &p));
      assert_int_equal(p.rk, ranks[x]);
      int n;
      double *s = qbd_kt_spectrum(&c, l, &n);
      double err = logits_error2(&c, l, &p, 1), tail = t_tail2(s, n, ranks[x]);
      double total = t_tail2(s, n, 0);
      /* At full rank the tail is 0: compare against the total instead. */
      assert_true(fabs(err - tail) <= 1e-6 * (tail > 1e-9 * total ? tail : total));
      /* The file's spectrum is the one of Q_bd Kᵀ. */
      for (int j = 0; j < c.Hk * c.d; j++) assert_true(fabs(p.ks[j] - s[j]) <= 1e-5 * s[0]);
      free(s);
      tproj_free(&p);
    }
    kq_projections_destroy(pr);
  }
  unlink(calib);
  unlink(proj);
  tcalib_free(&c);
}

static void test_joint_never_worse_than_per_head_at_equal_total_rank(void **state) {
  (void)state;
  tcalib c = {.L = 1, .H = 6, .Hk = 3, .T = 40, .d = 8, .D = 10};
  tcalib_random(&c, 0.85);
  const char *calib = t_path("joint_ph.st"), *pj = t_path("joint_ph_j.st");
  const char *pp = t_path("joint_ph_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  for (int r = 1; r <= c.d; r += 3) {
    fit_ranks(calib, pp, KQ_LAYOUT_PER_HEAD, r, r);
    fit_ranks(calib, pj, KQ_LAYOUT_JOINT, c.Hk * r, c.Hk * r);
    kq_projections *a = NULL, *b = NULL;
    assert_int_equal(kq_projections_load(pp, &a), KQ_OK);
    assert_int_equal(kq_projections_load(pj, &b), KQ_OK);
    tproj_layer ph, jt;
    assert_true(tproj_get(a, 0, c.Hk, c.d, &ph));
    assert_true(tproj_get(b, 0, c.Hk, c.d, &jt));
    double ek_ph = logits_error2(&c, 0, &ph, 0), ek_jt = logits_error2(&c, 0, &jt, 1);
    double ev_ph = value_out_error2(&c, 0, &ph, 0), ev_jt = value_out_error2(&c, 0, &jt, 1);
    assert_true(ek_jt <= ek_ph * (1 + 1e-6) + 1e-9);
    assert_true(ev_jt <= ev_ph * (1 + 1e-6) + 1e-9);
    tproj_free(&ph);
    tproj_free(&jt);
    kq_projections_destroy(a);
    kq_projections_destroy(b);
  }
  unlink(calib), unlink(pj), unlink(pp);
  tcalib_free(&c);
}

static void test_joint_value_out_error_is_tail_of_vbd_spectrum(void **state) {
  (void)state;
  tcalib c = {.L = 1, .H = 4, .Hk = 2, .T = 36, .d = 6, .D = 9};
  tcalib_random(&c, 0.8);
  const char *calib = t_path("joint_v.st"), *proj = t_path("joint_v_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  /* V W_bdᵀ = [V_1 W_1ᵀ … V_Hk W_Hkᵀ] (T × Hk·D). */
  int T = c.T, d = c.d, D = c.D, cols = c.Hk * D;
  double *m = t_alloc((size_t)T * cols), *blk = t_alloc((size_t)T * D);
  for (int i = 0; i < c.Hk; i++) {
    double *w = t_wo_mean(&c, 0, i);
    t_gemm_nt(T, D, d, c.v[0] + (size_t)i * T * d, w, blk);
    for (int t = 0; t < T; t++)
      memcpy(m + (size_t)t * cols + (size_t)i * D, blk + (size_t)t * D, (size_t)D * sizeof *m);
    free(w);
  }
  double s[64];
  assert_int_equal(t_singular_values(T, cols, m, s), 0);
  int n = T < cols ? T : cols;
  for (int r = 2; r <= 10; r += 4) {
    fit_ranks(calib, proj, KQ_LAYOUT_JOINT, 4, r);
    kq_projections *pr = NULL;
    assert_int_equal(kq_projections_load(proj, &pr), KQ_OK);
    tproj_layer p;
    assert_true(tproj_get(pr, 0, c.Hk, c.d, &p));
    double err = value_out_error2(&c, 0, &p, 1), tail = t_tail2(s, n, r);
    assert_true(fabs(err - tail) <= 1e-6 * tail);
    tproj_free(&p);
    kq_projections_destroy(pr);
  }
  free(m), free(blk);
  unlink(calib), unlink(proj);
  tcalib_free(&c);
}

static void test_joint_ranks_reach_all_heads_dims_and_ratio_mode_works(void **state) {
  (void)state;
  tcalib c = {.L = 2, .H = 4, .Hk = 2, .T = 40, .d = 8};
  tcalib_random(&c, 0.8);
  const char *calib = t_path("joint_r.st"), *proj = t_path("joint_r_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  kq_fit_params p = kq_fit_default_params();
  p.layout = KQ_LAYOUT_JOINT;
  p.rank_k = p.rank_v = c.Hk * c.d + 1; /* one more than Hk·d */
  assert_int_equal(kq_fit(calib, proj, &p), KQ_ERR_INVALID_ARGUMENT);
  p.rank_k = p.rank_v = 0;
  p.ratio = 0.5;
  kq_fit_summary sum;
  assert_int_equal(kq_fit_ex(calib, proj, &p, &sum), KQ_OK);
  assert_int_equal(sum.layout, KQ_LAYOUT_JOINT);
  /* Joint dims cost Hk per-head dims each: 0.5 of 2·Hk·d per layer. */
  assert_true(sum.mean_rank_k + sum.mean_rank_v <= 0.5 * 2 * c.Hk * c.d + 1e-9);
  assert_true(sum.fraction_of_f16 <= 0.5 + 1e-12);
  unlink(calib), unlink(proj);
  tcalib_free(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_joint_logits_error_is_eckart_young_tail),
      cmocka_unit_test(test_joint_never_worse_than_per_head_at_equal_total_rank),
      cmocka_unit_test(test_joint_value_out_error_is_tail_of_vbd_spectrum),
      cmocka_unit_test(test_joint_ranks_reach_all_heads_dims_and_ratio_mode_works),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
