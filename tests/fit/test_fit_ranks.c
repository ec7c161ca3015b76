/*
 * Rank choice (SPEC §1): --epsilon picks the smallest rank meeting the
 * target, --ratio respects the memory budget, and the greedy budget split
 * reaches the brute-force optimum of its stated objective.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fit_testutil.h"
#include "kq_fit.h"

/* Mean over kv heads of the predicted relative logits error at rank r,
 * from LAPACK singular values of the explicit K_i Q_iᵀ. */
static double logits_pred(const tcalib *c, int l, int r) {
  int g = c->H / c->Hk, T = c->T, gT = g * T, n = T < gT ? T : gT;
  double sum = 0;
  for (int i = 0; i < c->Hk; i++) {
    double *qs = t_query_stack(c, l, i), *m = t_alloc((size_t)T * gT), *s = t_alloc((size_t)n);
    t_gemm_nt(T, gT, c->d, c->k[l] + (size_t)i * T * c->d, qs, m);
    assert_int_equal(t_singular_values(T, gT, m, s), 0);
    sum += sqrt(t_tail2(s, n, r) / t_tail2(s, n, 0));
    free(qs), free(m), free(s);
  }
  return sum / c->Hk;
}

static double value_pred(const tcalib *c, int l, int r) {
  double sum = 0, s[64];
  for (int i = 0; i < c->Hk; i++) {
    assert_int_equal(t_singular_values(c->T, c->d, c->v[l] + (size_t)i * c->T * c->d, s), 0);
    sum += sqrt(t_tail2(s, c->d, r) / t_tail2(s, c->d, 0));
  }
  return sum / c->Hk;
}

static void read_ranks(const char *proj, int n_layers, int *rk, int *rv) {
  kq_projections *p = NULL;
  assert_int_equal(kq_projections_load(proj, &p), KQ_OK);
  for (int l = 0; l < n_layers; l++) {
    kq_projection_layer v;
    assert_int_equal(kq_projections_layer(p, l, &v), KQ_OK);
    rk[l] = v.rank_k;
    rv[l] = v.rank_v;
  }
  kq_projections_destroy(p);
}

static void test_epsilon_rank_is_minimal_and_meets_target(void **state) {
  (void)state;
  tcalib c = {.L = 2, .H = 4, .Hk = 2, .T = 40, .d = 10};
  tcalib_random(&c, 0.75);
  const char *calib = t_path("eps.st"), *proj = t_path("eps_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  const double eps[3] = {0.05, 0.2, 0.4};
  for (int e = 0; e < 3; e++) {
    kq_fit_params p = kq_fit_default_params();
    p.epsilon = eps[e];
    assert_int_equal(kq_fit(calib, proj, &p), KQ_OK);
    int rk[2], rv[2];
    read_ranks(proj, c.L, rk, rv);
    for (int l = 0; l < c.L; l++) {
      assert_true(logits_pred(&c, l, rk[l]) <= eps[e] + 1e-9);
      if (rk[l] > 1) assert_true(logits_pred(&c, l, rk[l] - 1) > eps[e]);
      assert_true(value_pred(&c, l, rv[l]) <= eps[e] + 1e-9);
      if (rv[l] > 1) assert_true(value_pred(&c, l, rv[l] - 1) > eps[e]);
    }
  }
  unlink(calib);
  unlink(proj);
  tcalib_free(&c);
}

static void test_ratio_respects_budget_and_spends_it(void **state) {
  (void)state;
  tcalib c = {.L = 3, .H = 2, .Hk = 1, .T = 30, .d = 10};
  tcalib_random(&c, 0.8);
  const char *calib = t_path("ratio.st"), *proj = t_path("ratio_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  const double ratios[3] = {0.1, 0.3, 0.75};
  for (int x = 0; x < 3; x++) {
    kq_fit_params p = kq_fit_default_params();
    p.ratio = ratios[x];
    assert_int_equal(kq_fit(calib, proj, &p), KQ_OK);
    int rk[3], rv[3], total = 0;
    read_ranks(proj, c.L, rk, rv);
    for (int l = 0; l < c.L; l++) {
      assert_true(rk[l] >= 1 && rk[l] <= c.d && rv[l] >= 1 && rv[l] <= c.d);
      total += rk[l] + rv[l];
    }
    int budget = (int)floor(ratios[x] * 2 * c.d * c.L + 1e-9);
    assert_true(total <= budget);
    assert_int_equal(total, budget); /* random spectra: every extra rank helps */
  }
  unlink(calib);
  unlink(proj);
  tcalib_free(&c);
}

static void test_ratio_below_two_ranks_per_layer_is_rejected(void **state) {
  (void)state;
  tcalib c = {.L = 4, .H = 2, .Hk = 1, .T = 20, .d = 8};
  tcalib_random(&c, 0.8);
  const char *calib = t_path("ratio_small.st"), *proj = t_path("ratio_small_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  unlink(proj);
  kq_fit_params p = kq_fit_default_params();
  p.ratio = 0.05; /* 0.05·2·8·4 = 3.2 < 8 */
  assert_int_equal(kq_fit(calib, proj, &p), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "ratio"));
  assert_false(t_exists(proj));
  unlink(calib);
  tcalib_free(&c);
}

/* Σ over layers of the mean-over-heads squared relative tail of one kind
 * (keys or values): the objective rank.c documents, computed from scratch. */
static double kind_objective(const double *s_kind, int L, int hk, int d, const int *r) {
  double obj = 0;
  for (int l = 0; l < L; l++)
    for (int i = 0; i < hk; i++) {
      const double *s = s_kind + ((size_t)l * hk + i) * d;
      obj += t_tail2(s, d, r[l]) / t_tail2(s, d, 0) / hk;
    }
  return obj;
}

/* Best objective of one kind over all rank pairs (a, b) with a + b <= budget. */
static double kind_brute_force(const double *s_kind, int L, int hk, int d, int budget) {
  double best = INFINITY;
  for (int a = 1; a <= d; a++)
    for (int b = 1; b <= d; b++) {
      if (a + b > budget) continue;
      int r[2] = {a, b};
      best = fmin(best, kind_objective(s_kind, L, hk, d, r));
    }
  return best;
}

/* --ratio splits the budget evenly between keys and values (keys get
 * floor(budget/2)); within each kind the greedy spread must reach the
 * brute-force optimum of that kind's objective for its share. */
static void test_budget_split_evenly_and_each_kind_optimal(void **state) {
  (void)state;
  enum { L = 2, HK = 2, D = 4 };
  double sk[L * HK * D], sv[L * HK * D];
  for (int trial = 0; trial < 20; trial++) {
    for (int i = 0; i < L * HK; i++) {
      /* descending positive spectra with varied decay */
      double decay = 0.2 + 0.8 * t_uniform(), x = 1 + t_uniform();
      for (int j = 0; j < D; j++) sk[i * D + j] = x *= decay;
      decay = 0.2 + 0.8 * t_uniform(), x = 1 + t_uniform();
      for (int j = 0; j < D; j++) sv[i * D + j] = x *= decay;
    }
    for (int budget = 2 * L; budget <= 2 * L * D; budget++) {
      int32_t rk[L], rv[L];
      assert_int_equal(kq_rank_for_budget(sk, sv, L, HK, D, budget, rk, rv), KQ_OK);
      int grk[L] = {rk[0], rk[1]}, grv[L] = {rv[0], rv[1]};
      int used_k = grk[0] + grk[1], used_v = grv[0] + grv[1];
      assert_true(used_k + used_v <= budget);
      assert_int_equal(used_k, budget / 2 < L * D ? budget / 2 : L * D);
      assert_int_equal(used_v, budget - used_k < L * D ? budget - used_k : L * D);
      double best_k = kind_brute_force(sk, L, HK, D, budget / 2);
      double best_v = kind_brute_force(sv, L, HK, D, budget - used_k);
      assert_true(kind_objective(sk, L, HK, D, grk) <= best_k * (1 + 1e-12) + 1e-15);
      assert_true(kind_objective(sv, L, HK, D, grv) <= best_v * (1 + 1e-12) + 1e-15);
    }
  }
}

static void test_fit_needs_exactly_one_rank_mode(void **state) {
  (void)state;
  tcalib c = {.L = 1, .H = 2, .Hk = 1, .T = 20, .d = 8};
  tcalib_random(&c, 0.8);
  const char *calib = t_path("modes.st"), *proj = t_path("modes_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  unlink(proj);
  kq_fit_params p = kq_fit_default_params();
  assert_int_equal(kq_fit(calib, proj, &p), KQ_ERR_INVALID_ARGUMENT); /* none */
  p.rank_k = p.rank_v = 2;
  p.epsilon = 0.1;
  assert_int_equal(kq_fit(calib, proj, &p), KQ_ERR_INVALID_ARGUMENT); /* two */
  p.epsilon = 0;
  p.rank_k = 9; /* > head_dim */
  assert_int_equal(kq_fit(calib, proj, &p), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "head_dim"));
  assert_false(t_exists(proj));
  unlink(calib);
  tcalib_free(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_epsilon_rank_is_minimal_and_meets_target),
      cmocka_unit_test(test_ratio_respects_budget_and_spends_it),
      cmocka_unit_test(test_ratio_below_two_ranks_per_layer_is_rejected),
      cmocka_unit_test(test_budget_split_evenly_and_each_kind_optimal),
      cmocka_unit_test(test_fit_needs_exactly_one_rank_mode),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
