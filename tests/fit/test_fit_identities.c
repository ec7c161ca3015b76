/*
 * Fitting identities of SPEC §1, checked against float64 references that
 * never go through the code under test: explicit products KQᵀ, V W_iᵀ and
 * LAPACK singular values of them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fit_testutil.h"

static kq_status fit(const char *calib, const char *out, kq_method m, int rk, int rv) {
  kq_fit_params p = kq_fit_default_params();
  p.method = m;
  p.rank_k = rk;
  p.rank_v = rv;
  p.n_threads = 2;
  return kq_fit(calib, out, &p);
}

static kq_eval_result *eval(const char *calib, const char *proj) {
  kq_eval_params p = kq_eval_default_params();
  p.n_threads = 2;
  kq_eval_result *r = NULL;
  kq_status st = kq_eval(calib, proj, &p, &r);
  if (st) fprintf(stderr, "eval: %s\n", kq_last_error());
  assert_int_equal(st, KQ_OK);
  return r;
}

static kq_projections *load(const char *path) {
  kq_projections *p = NULL;
  kq_status st = kq_projections_load(path, &p);
  if (st) fprintf(stderr, "load: %s\n", kq_last_error());
  assert_int_equal(st, KQ_OK);
  return p;
}

/* Explicit logits error of layer l pooled over kv heads: err2 = Σ‖KQᵀ −
 * KABᵀQᵀ‖², tail2 = Σ Eckart–Young tails at rank r, tot2 = Σ‖KQᵀ‖². */
static void logits_explicit(const tcalib *c, int l, const tproj_layer *p, double *err2,
                            double *tail2, double *tot2) {
  int g = c->H / c->Hk, T = c->T, d = c->d, r = p->rk, gT = g * T;
  *err2 = *tail2 = *tot2 = 0;
  for (int i = 0; i < c->Hk; i++) {
    const double *k = c->k[l] + (size_t)i * T * d;
    double *qs = t_query_stack(c, l, i);
    double *m = t_alloc((size_t)T * gT), *ka = t_alloc((size_t)T * r);
    double *qb = t_alloc((size_t)gT * r), *ap = t_alloc((size_t)T * gT);
    double *s = t_alloc((size_t)gT);
    t_gemm_nt(T, gT, d, k, qs, m);
    assert_int_equal(t_singular_values(T, gT, m, s), 0);
    t_gemm_nn(T, r, d, k, p->a + (size_t)i * d * r, ka);
    t_gemm_nn(gT, r, d, qs, p->b + (size_t)i * d * r, qb);
    t_gemm_nt(T, gT, r, ka, qb, ap);
    for (size_t x = 0; x < (size_t)T * gT; x++) ap[x] = m[x] - ap[x];
    *err2 += t_frob2(ap, (size_t)T * gT);
    *tot2 += t_frob2(m, (size_t)T * gT);
    *tail2 += t_tail2(s, T < gT ? T : gT, r);
    free(qs), free(m), free(ka), free(qb), free(ap), free(s);
  }
}

/* Explicit value_out error: Σ‖V W_iᵀ − V C (W_i E)ᵀ‖² etc. */
static void value_out_explicit(const tcalib *c, int l, const tproj_layer *p, double *err2,
                               double *tail2, double *tot2) {
  int T = c->T, d = c->d, D = c->D, r = p->rv;
  *err2 = *tail2 = *tot2 = 0;
  for (int i = 0; i < c->Hk; i++) {
    const double *v = c->v[l] + (size_t)i * T * d;
    double *w = t_wo_mean(c, l, i);
    double *m = t_alloc((size_t)T * D), *vc = t_alloc((size_t)T * r), *we = t_alloc((size_t)D * r);
    double *ap = t_alloc((size_t)T * D), *s = t_alloc((size_t)(T < D ? T : D));
    t_gemm_nt(T, D, d, v, w, m);
    assert_int_equal(t_singular_values(T, D, m, s), 0);
    t_gemm_nn(T, r, d, v, p->c + (size_t)i * d * r, vc);
    t_gemm_nn(D, r, d, w, p->e + (size_t)i * d * r, we);
    t_gemm_nt(T, D, r, vc, we, ap);
    for (size_t x = 0; x < (size_t)T * D; x++) ap[x] = m[x] - ap[x];
    *err2 += t_frob2(ap, (size_t)T * D);
    *tot2 += t_frob2(m, (size_t)T * D);
    *tail2 += t_tail2(s, T < D ? T : D, r);
    free(w), free(m), free(vc), free(we), free(ap), free(s);
  }
}

static void assert_rel(double got, double want, double tol) {
  double rel = fabs(got - want) / (fabs(want) > 0 ? fabs(want) : 1.0);
  if (!(rel <= tol))
    fprintf(stderr, "got %.12g want %.12g (rel %.3g > %.3g)\n", got, want, rel, tol);
  assert_true(rel <= tol);
}

/* Checks the logits identity on every layer of c fitted at rank r. */
static void check_logits_tail(const tcalib *c, int r, double tol) {
  const char *calib = t_path("ey.st"), *proj = t_path("ey_p.st");
  assert_int_equal(tcalib_write(c, calib), KQ_OK);
  assert_int_equal(fit(calib, proj, KQ_METHOD_KQSVD, r, r), KQ_OK);
  kq_projections *pp = load(proj);
  kq_eval_result *res = eval(calib, proj);
  for (int l = 0; l < c->L; l++) {
    tproj_layer p;
    assert_true(tproj_get(pp, l, c->Hk, c->d, &p));
    double err2, tail2, tot2;
    logits_explicit(c, l, &p, &err2, &tail2, &tot2);
    double want = sqrt(tail2 / tot2);
    assert_rel(sqrt(err2 / tot2), want, tol);
    assert_rel(res->layers[l].logits, want, tol);
    tproj_free(&p);
  }
  kq_eval_result_destroy(res);
  kq_projections_destroy(pp);
  unlink(calib);
  unlink(proj);
}

static void test_kqsvd_logits_error_is_eckart_young_tail_with_gqa(void **state) {
  (void)state;
  tcalib c = {.L = 2, .H = 4, .Hk = 2, .T = 40, .d = 10};
  tcalib_random(&c, 0.8);
  check_logits_tail(&c, 3, 1e-6);
  tcalib_free(&c);
}

static void test_full_rank_gives_identity_products(void **state) {
  (void)state;
  for (int with_wo = 0; with_wo < 2; with_wo++) {
    tcalib c = {.L = 1, .H = 2, .Hk = 1, .T = 40, .d = 8, .D = with_wo ? 16 : 0};
    tcalib_random(&c, 0.9);
    const char *calib = t_path("id.st"), *proj = t_path("id_p.st");
    assert_int_equal(tcalib_write(&c, calib), KQ_OK);
    assert_int_equal(fit(calib, proj, KQ_METHOD_KQSVD, c.d, c.d), KQ_OK);
    kq_projections *pp = load(proj);
    tproj_layer p;
    assert_true(tproj_get(pp, 0, c.Hk, c.d, &p));
    double worst_k = 0, worst_v = 0;
    for (int x = 0; x < c.d; x++)
      for (int y = 0; y < c.d; y++) {
        double ab = 0, ce = 0;
        for (int j = 0; j < c.d; j++) {
          ab += p.a[x * c.d + j] * p.b[y * c.d + j];
          ce += p.c[x * c.d + j] * p.e[y * c.d + j];
        }
        worst_k = fmax(worst_k, fabs(ab - (x == y)));
        worst_v = fmax(worst_v, fabs(ce - (x == y)));
      }
    assert_true(worst_k < 1e-4);
    assert_true(worst_v < 1e-4);
    tproj_free(&p);
    kq_projections_destroy(pp);
    unlink(calib);
    unlink(proj);
    tcalib_free(&c);
  }
}

static void test_value_out_error_is_tail_of_v_wo_spectrum(void **state) {
  (void)state;
  tcalib c = {.L = 1, .H = 4, .Hk = 2, .T = 40, .d = 10, .D = 14};
  tcalib_random(&c, 0.85);
  const char *calib = t_path("vo.st"), *proj = t_path("vo_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  assert_int_equal(fit(calib, proj, KQ_METHOD_KQSVD, 3, 3), KQ_OK);
  kq_projections *pp = load(proj);
  kq_eval_result *res = eval(calib, proj);
  tproj_layer p;
  assert_true(tproj_get(pp, 0, c.Hk, c.d, &p));
  double err2, tail2, tot2;
  value_out_explicit(&c, 0, &p, &err2, &tail2, &tot2);
  assert_rel(sqrt(err2 / tot2), sqrt(tail2 / tot2), 1e-6);
  assert_rel(res->layers[0].value_out, sqrt(tail2 / tot2), 1e-6);
  tproj_free(&p);
  kq_eval_result_destroy(res);
  kq_projections_destroy(pp);
  unlink(calib);
  unlink(proj);
  tcalib_free(&c);
}

static void test_value_error_without_wo_is_tail_of_v_spectrum(void **state) {
  (void)state;
  tcalib c = {.L = 1, .H = 2, .Hk = 2, .T = 30, .d = 9};
  tcalib_random(&c, 0.8);
  const char *calib = t_path("v.st"), *proj = t_path("v_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  assert_int_equal(fit(calib, proj, KQ_METHOD_KQSVD, 2, 4), KQ_OK);
  kq_eval_result *res = eval(calib, proj);
  double tail2 = 0, tot2 = 0;
  for (int i = 0; i < c.Hk; i++) {
    double s[9];
    assert_int_equal(t_singular_values(c.T, c.d, c.v[0] + (size_t)i * c.T * c.d, s), 0);
    tail2 += t_tail2(s, c.d, 4);
    tot2 += t_tail2(s, c.d, 0);
  }
  assert_rel(res->layers[0].value, sqrt(tail2 / tot2), 1e-6);
  assert_true(res->layers[0].value_out < 0); /* no wo */
  kq_eval_result_destroy(res);
  unlink(calib);
  unlink(proj);
  tcalib_free(&c);
}

/* Logits error of every method at equal ranks; kq-svd must not lose. */
static void compare_methods(const char *calib, int n_layers, int r, double *kq_mean,
                            double *other_mean) {
  const kq_method methods[3] = {KQ_METHOD_KQSVD, KQ_METHOD_KSVD, KQ_METHOD_EIGEN};
  double logits[4][16];
  const char *proj = t_path("cmp_p.st");
  for (int m = 0; m < 4; m++) {
    kq_fit_params p = kq_fit_default_params();
    p.method = methods[m < 3 ? m : 2];
    p.alpha = m == 3 ? 2.0 : 1.0;
    p.rank_k = p.rank_v = r;
    assert_int_equal(kq_fit(calib, proj, &p), KQ_OK);
    kq_eval_params ep = kq_eval_default_params();
    ep.max_seqs = 1;
    kq_eval_result *res = NULL;
    assert_int_equal(kq_eval(calib, proj, &ep, &res), KQ_OK);
    for (int l = 0; l < n_layers; l++) logits[m][l] = res->layers[l].logits;
    kq_eval_result_destroy(res);
  }
  *kq_mean = *other_mean = 0;
  for (int l = 0; l < n_layers; l++) {
    for (int m = 1; m < 4; m++) assert_true(logits[0][l] <= logits[m][l] * (1 + 1e-9));
    *kq_mean += logits[0][l] / n_layers;
    *other_mean += fmin(logits[1][l], fmin(logits[2][l], logits[3][l])) / n_layers;
  }
  unlink(proj);
}

static void test_kqsvd_logits_error_not_above_baselines_random(void **state) {
  (void)state;
  tcalib c = {.L = 2, .H = 4, .Hk = 2, .T = 48, .d = 12};
  tcalib_random(&c, 0.85);
  const char *calib = t_path("cmp.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  double kq, best_other;
  compare_methods(calib, c.L, 4, &kq, &best_other);
  unlink(calib);
  tcalib_free(&c);
}

static void test_kqsvd_logits_error_below_baselines_on_synth(void **state) {
  (void)state;
  kq_synth_params sp = kq_synth_default_params();
  sp.n_layers = 2;
  sp.n_heads = 4;
  sp.n_kv_heads = 2;
  sp.head_dim = 32;
  sp.hidden = 64;
  sp.seq_len = 64;
  sp.n_seqs = 4;
  const char *calib = t_path("synth.st");
  assert_int_equal(kq_synth(calib, &sp), KQ_OK);
  double kq, best_other;
  compare_methods(calib, sp.n_layers, 6, &kq, &best_other);
  /* The synthetic high-variance key channels the queries ignore make the
   * baselines waste rank: KQ-SVD is clearly better, not just equal. */
  assert_true(kq < 0.95 * best_other);
  unlink(calib);
}

static void invert(int n, const double *m, double *inv) {
  lapack_int ipiv[64];
  memcpy(inv, m, (size_t)n * n * sizeof *inv);
  assert_int_equal(LAPACKE_dgetrf(LAPACK_ROW_MAJOR, n, n, inv, n, ipiv), 0);
  assert_int_equal(LAPACKE_dgetri(LAPACK_ROW_MAJOR, n, inv, n, ipiv), 0);
}

static void test_logits_error_invariant_under_k_m_q_m_inverse_transpose(void **state) {
  (void)state;
  tcalib c = {.L = 1, .H = 4, .Hk = 2, .T = 40, .d = 8};
  tcalib_random(&c, 0.8);
  tcalib c2 = c;
  c2.k = calloc(1, sizeof *c2.k), c2.q = calloc(1, sizeof *c2.q);
  c2.v = calloc(1, sizeof *c2.v), c2.wo = calloc(1, sizeof *c2.wo);
  int d = c.d;
  double m[64], minv[64], mit[64];
  for (int i = 0; i < d * d; i++) m[i] = (i % (d + 1) == 0) + 0.3 * t_normal() / sqrt(d);
  invert(d, m, minv);
  for (int i = 0; i < d; i++)
    for (int j = 0; j < d; j++) mit[i * d + j] = minv[j * d + i];
  size_t nk = (size_t)c.Hk * c.T * d, nq = (size_t)c.H * c.T * d;
  c2.k[0] = t_alloc(nk), c2.q[0] = t_alloc(nq), c2.v[0] = t_alloc(nk);
  t_gemm_nn(c.Hk * c.T, d, d, c.k[0], m, c2.k[0]);
  t_gemm_nn(c.H * c.T, d, d, c.q[0], mit, c2.q[0]);
  memcpy(c2.v[0], c.v[0], nk * sizeof(double));
  for (size_t i = 0; i < nk; i++) c2.k[0][i] = (float)c2.k[0][i];
  for (size_t i = 0; i < nq; i++) c2.q[0][i] = (float)c2.q[0][i];
  const char *f1 = t_path("inv1.st"), *f2 = t_path("inv2.st"), *p1 = t_path("inv1_p.st"),
             *p2 = t_path("inv2_p.st");
  assert_int_equal(tcalib_write(&c, f1), KQ_OK);
  assert_int_equal(tcalib_write(&c2, f2), KQ_OK);
  for (int r = 1; r < d; r += 3) {
    assert_int_equal(fit(f1, p1, KQ_METHOD_KQSVD, r, 2), KQ_OK);
    assert_int_equal(fit(f2, p2, KQ_METHOD_KQSVD, r, 2), KQ_OK);
    kq_eval_result *r1 = eval(f1, p1), *r2 = eval(f2, p2);
    assert_rel(r2->layers[0].logits, r1->layers[0].logits, 1e-5);
    kq_eval_result_destroy(r1);
    kq_eval_result_destroy(r2);
  }
  unlink(f1), unlink(f2), unlink(p1), unlink(p2);
  tcalib_free(&c2);
  tcalib_free(&c);
}

static void test_rank_deficient_keys_give_finite_optimal_projections(void **state) {
  (void)state;
  /* T < d: KQᵀ is 6×12 of rank <= 6. */
  tcalib a = {.L = 1, .H = 2, .Hk = 1, .T = 6, .d = 12, .D = 8};
  tcalib_random(&a, 1.0);
  check_logits_tail(&a, 3, 1e-6);
  tcalib_free(&a);
  /* Duplicate columns in K, Q and V (rank d−1). */
  tcalib b = {.L = 1, .H = 2, .Hk = 1, .T = 40, .d = 10, .D = 12};
  tcalib_random(&b, 0.9);
  for (int t = 0; t < b.T; t++) {
    b.k[0][t * b.d + 7] = b.k[0][t * b.d + 2];
    b.v[0][t * b.d + 7] = b.v[0][t * b.d + 2];
  }
  for (int t = 0; t < b.H * b.T; t++) b.q[0][t * b.d + 7] = b.q[0][t * b.d + 2];
  check_logits_tail(&b, 4, 1e-6);
  /* At r = d−1 nothing is left to lose: the error is rounding only. */
  const char *calib = t_path("dup.st"), *proj = t_path("dup_p.st");
  assert_int_equal(tcalib_write(&b, calib), KQ_OK);
  assert_int_equal(fit(calib, proj, KQ_METHOD_KQSVD, b.d - 1, b.d - 1), KQ_OK);
  kq_projections *pp = load(proj);
  tproj_layer p;
  assert_true(tproj_get(pp, 0, b.Hk, b.d, &p));
  double err2, tail2, tot2;
  logits_explicit(&b, 0, &p, &err2, &tail2, &tot2);
  assert_true(sqrt(err2 / tot2) < 1e-5);
  tproj_free(&p);
  kq_projections_destroy(pp);
  unlink(calib);
  unlink(proj);
  tcalib_free(&b);
}

/* The same synthetic data stored as F32, F16 and BF16 fits to nearly the
 * same errors: the half-precision paths read the data they claim to. */
static void test_f16_and_bf16_files_fit_like_f32(void **state) {
  (void)state;
  const kq_dtype dtypes[3] = {KQ_DTYPE_F32, KQ_DTYPE_F16, KQ_DTYPE_BF16};
  const double tol[3] = {0, 1e-3, 2e-2};
  double ref[2] = {0, 0};
  for (int x = 0; x < 3; x++) {
    kq_synth_params sp = kq_synth_default_params();
    sp.n_layers = 1;
    sp.n_heads = 4;
    sp.n_kv_heads = 2;
    sp.head_dim = 16;
    sp.hidden = 32;
    sp.seq_len = 32;
    sp.n_seqs = 2;
    sp.dtype = dtypes[x];
    const char *calib = t_path("dtype.st"), *proj = t_path("dtype_p.st");
    assert_int_equal(kq_synth(calib, &sp), KQ_OK);
    assert_int_equal(fit(calib, proj, KQ_METHOD_KQSVD, 4, 4), KQ_OK);
    kq_eval_result *res = eval(calib, proj);
    double got[2] = {res->layers[0].logits, res->layers[0].output};
    for (int m = 0; m < 2; m++) {
      if (x == 0)
        ref[m] = got[m];
      else
        assert_rel(got[m], ref[m], tol[x]);
    }
    kq_eval_result_destroy(res);
    unlink(calib);
    unlink(proj);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_kqsvd_logits_error_is_eckart_young_tail_with_gqa),
      cmocka_unit_test(test_full_rank_gives_identity_products),
      cmocka_unit_test(test_value_out_error_is_tail_of_v_wo_spectrum),
      cmocka_unit_test(test_value_error_without_wo_is_tail_of_v_spectrum),
      cmocka_unit_test(test_kqsvd_logits_error_not_above_baselines_random),
      cmocka_unit_test(test_kqsvd_logits_error_below_baselines_on_synth),
      cmocka_unit_test(test_logits_error_invariant_under_k_m_q_m_inverse_transpose),
      cmocka_unit_test(test_rank_deficient_keys_give_finite_optimal_projections),
      cmocka_unit_test(test_f16_and_bf16_files_fit_like_f32),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
