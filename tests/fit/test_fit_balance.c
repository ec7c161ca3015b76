/*
 * Latent balancing (host/fit/balance.c): a diagonal scaling of each latent
 * space leaves the exact (unquantized) logits and value outputs of a fit
 * unchanged (1e-9 relative, double), gives every latent dim and its partner
 * the same energy up to one factor per group, keeps the total latent energy,
 * and lowers the logits error of a rotated q4 segment. For the quant basis:
 * still a scaled permutation (A Bᵀ = I), each channel balanced.
 * References are computed here from the calibration data in double.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fit_testutil.h"
#include "kq_fit.h"

/* Row-major T×n data times column j of a column-major n×n matrix. */
static void latents(const double *x, int T, int n, const double *m, int r, double *out) {
  for (int t = 0; t < T; t++)
    for (int j = 0; j < r; j++) {
      double s = 0;
      for (int i = 0; i < n; i++) s += x[(size_t)t * n + i] * m[i + (size_t)j * n];
      out[(size_t)t * r + j] = s;
    }
}

static double col_energy(const double *lat, int T, int r, int j) {
  double s = 0;
  for (int t = 0; t < T; t++) s += lat[(size_t)t * r + j] * lat[(size_t)t * r + j];
  return s;
}

static double rel_diff(const double *a, const double *b, size_t n) {
  double d = 0, s = 0;
  for (size_t i = 0; i < n; i++) d += (a[i] - b[i]) * (a[i] - b[i]), s += b[i] * b[i];
  return sqrt(d / s);
}

static void copy_solution(const kq_layer_solution *s, kq_layer_solution *o) {
  assert_int_equal(kq_layer_solution_alloc(s->groups, s->dim, o), KQ_OK);
  size_t nn = (size_t)s->groups * s->dim * s->dim, ns = (size_t)s->groups * s->dim;
  memcpy(o->a, s->a, nn * 8), memcpy(o->b, s->b, nn * 8);
  memcpy(o->c, s->c, nn * 8), memcpy(o->e, s->e, nn * 8);
  memcpy(o->sigma_k, s->sigma_k, ns * 8), memcpy(o->sigma_v, s->sigma_v, ns * 8);
}

/* K = [K_1 … K_Hk] (T × Hk·d), or head i alone (T × d) for i >= 0. */
static double *keys_of(const tcalib *c, const double *x, int head) {
  int n = head < 0 ? c->Hk * c->d : c->d;
  double *k = t_alloc((size_t)c->T * n);
  for (int i = 0; i < c->Hk; i++) {
    if (head >= 0 && i != head) continue;
    int off = head < 0 ? i * c->d : 0;
    for (int t = 0; t < c->T; t++)
      memcpy(k + (size_t)t * n + off, x + ((size_t)i * c->T + t) * c->d, (size_t)c->d * 8);
  }
  return k;
}

/* Rows of group (kv head) i's queries in the latent dim space of the
 * solution: per head the stacked queries (gT × d); joint block i of the
 * query rows is zero-padded (gT × Hk·d, only head i's block filled). */
static double *queries_of(const tcalib *c, int i, int joint) {
  int g = c->H / c->Hk, gT = g * c->T, d = c->d, n = joint ? c->Hk * d : d;
  double *qs = t_query_stack(c, 0, i), *out = t_alloc((size_t)gT * n);
  for (int t = 0; t < gT; t++)
    memcpy(out + (size_t)t * n + (joint ? i * d : 0), qs + (size_t)t * d, (size_t)d * 8);
  free(qs);
  return out;
}

/* Checks one solution pair (unbalanced s0, balanced s1) of layer 0. */
static void check_kqsvd(const tcalib *c, const kq_layer_solution *s0, const kq_layer_solution *s1,
                        int joint) {
  int n = s0->dim, T = c->T, gT = c->H / c->Hk * T;
  size_t nn = (size_t)n * n;
  for (int grp = 0; grp < s0->groups; grp++) {
    double *k = keys_of(c, c->k[0], joint ? -1 : grp), *v = keys_of(c, c->v[0], joint ? -1 : grp);
    const int ranks[2] = {n / 2, n};
    for (int ri = 0; ri < 2; ri++) {
      int r = ranks[ri];
      double *kl[2], *vl[2], *logits[2], *vout[2];
      for (int b = 0; b < 2; b++) {
        const kq_layer_solution *s = b ? s1 : s0;
        kl[b] = t_alloc((size_t)T * r), vl[b] = t_alloc((size_t)T * r);
        latents(k, T, n, s->a + grp * nn, r, kl[b]);
        latents(v, T, n, s->c + grp * nn, r, vl[b]);
        /* Exact logits of every kv head of the group: (Q_i B_i)(K A)ᵀ. */
        logits[b] = t_alloc((size_t)c->Hk * gT * T);
        for (int i = 0; i < c->Hk; i++) {
          if (!joint && i != grp) continue;
          double *q = queries_of(c, i, joint), *qb = t_alloc((size_t)gT * r);
          latents(q, gT, n, s->b + grp * nn, r, qb);
          t_gemm_nt(gT, T, r, qb, kl[b], logits[b] + (size_t)i * gT * T);
          free(q), free(qb);
        }
        /* Reconstructed values V C Eᵀ (before W_O: equal here, equal after). */
        vout[b] = t_alloc((size_t)T * n);
        double *et = t_alloc((size_t)n * r);
        for (int x = 0; x < n; x++)
          for (int j = 0; j < r; j++) et[(size_t)x * r + j] = s->e[grp * nn + x + (size_t)j * n];
        t_gemm_nt(T, n, r, vl[b], et, vout[b]);
        free(et);
      }
      assert_true(rel_diff(logits[1], logits[0], (size_t)c->Hk * gT * T) < 1e-9);
      assert_true(rel_diff(vout[1], vout[0], (size_t)T * n) < 1e-9);
      if (r == n) {
        /* Balanced: query/key latent energy the same ratio for every dim
         * (query energy from the data: every head of the group), total key
         * latent energy kept; unbalanced keys are whitened. */
        double *qe = t_alloc((size_t)n), *qb = t_alloc((size_t)gT * n);
        for (int i = 0; i < c->Hk; i++) {
          if (!joint && i != grp) continue;
          double *q = queries_of(c, i, joint);
          latents(q, gT, n, s1->b + grp * nn, n, qb);
          for (int j = 0; j < n; j++) qe[j] += col_energy(qb, gT, n, j);
          free(q);
        }
        double ratio = -1, e0 = 0, e1 = 0;
        for (int j = 0; j < n; j++) {
          double ek = col_energy(kl[1], T, r, j);
          e0 += col_energy(kl[0], T, r, j), e1 += ek;
          assert_true(fabs(col_energy(kl[0], T, r, j) - 1) < 1e-9);
          if (ratio < 0) ratio = qe[j] / ek;
          assert_true(fabs(qe[j] / ek - ratio) <= 1e-8 * ratio);
        }
        assert_true(fabs(e1 - e0) <= 1e-9 * e0);
        free(qe), free(qb);
      }
      for (int b = 0; b < 2; b++) free(kl[b]), free(vl[b]), free(logits[b]), free(vout[b]);
    }
    free(k), free(v);
  }
}

static void open_layer0(const char *path, kq_calib *calib, kq_layer_factors *f) {
  assert_int_equal(kq_calib_open(path, calib), KQ_OK);
  kq_calib_layer lt;
  kq_calib_get_layer(calib, 0, &lt);
  assert_int_equal(kq_layer_factors_compute(calib, &lt, 0, 1, 1, NULL, f), KQ_OK);
}

static void per_head_solution(const kq_layer_factors *f, kq_layer_solution *s) {
  int d = f->head_dim;
  size_t dd = (size_t)d * d;
  assert_int_equal(kq_layer_solution_alloc(f->n_kv_heads, d, s), KQ_OK);
  double *work = t_alloc(kq_solve_work_size(d));
  for (int i = 0; i < f->n_kv_heads; i++) {
    assert_int_equal(kq_solve_keys(KQ_METHOD_KQSVD, 1, d, f->r_key + i * dd, f->r_query + i * dd,
                                   work, s->a + i * dd, s->b + i * dd, s->sigma_k + i * d),
                     KQ_OK);
    assert_int_equal(kq_solve_values(d, f->r_value + i * dd, f->r_wo ? f->r_wo + i * dd : NULL,
                                     work, s->c + i * dd, s->e + i * dd, s->sigma_v + i * d),
                     KQ_OK);
  }
  free(work);
}

static void test_balanced_kqsvd_keeps_exact_logits_and_outputs(void **state) {
  (void)state;
  for (int wo = 0; wo < 2; wo++)
    for (int joint = 0; joint < 2; joint++) {
      tcalib c = {.L = 1, .H = 4, .Hk = 2, .T = 96, .d = 8, .D = wo ? 12 : 0};
      tcalib_random(&c, 0.8);
      const char *path = t_path("balance.st");
      assert_int_equal(tcalib_write(&c, path), KQ_OK);
      kq_calib calib;
      kq_layer_factors f;
      open_layer0(path, &calib, &f);
      kq_layer_solution s0, s1;
      if (joint) {
        kq_calib_layer lt;
        kq_calib_get_layer(&calib, 0, &lt);
        assert_int_equal(kq_joint_solve(&calib, &lt, 0, &f, &s0), KQ_OK);
      } else {
        per_head_solution(&f, &s0);
      }
      copy_solution(&s0, &s1);
      assert_int_equal(kq_balance_kqsvd(&s1, wo), KQ_OK);
      assert_non_null(s1.wk);
      assert_non_null(s1.wv);
      check_kqsvd(&c, &s0, &s1, joint);
      kq_layer_solution_free(&s0), kq_layer_solution_free(&s1);
      kq_layer_factors_free(&f);
      kq_calib_close(&calib);
      unlink(path);
      tcalib_free(&c);
    }
}

/* Logits error of quantizing the whole key latent as one rotated q4
 * segment: Σ ‖(Q B)(K̂ − K A)ᵀ‖² over the group's queries. */
static double q4_logits_error(const tcalib *c, const kq_layer_solution *s, int grp) {
  int n = s->dim, T = c->T, gT = c->H / c->Hk * T;
  size_t nn = (size_t)n * n;
  double *k = keys_of(c, c->k[0], grp), *lat = t_alloc((size_t)T * n);
  latents(k, T, n, s->a + grp * nn, n, lat);
  double *r = t_alloc(nn), *err = t_alloc((size_t)T * n);
  assert_int_equal(kq_rotation_make(n, 5, r), KQ_OK);
  float *y = malloc((size_t)n * sizeof *y);
  int8_t *q = malloc((size_t)n);
  for (int t = 0; t < T; t++) {
    for (int j = 0; j < n; j++) {
      double acc = 0;
      for (int i = 0; i < n; i++) acc += lat[(size_t)t * n + i] * r[i + (size_t)j * n];
      y[j] = (float)acc;
    }
    float scale = kq_f16_to_f32(kq_quantize_row(y, n, 7, q));
    for (int i = 0; i < n; i++) {
      double e = 0;
      for (int j = 0; j < n; j++) e += r[i + (size_t)j * n] * ((double)q[j] * scale);
      err[(size_t)t * n + i] = e - lat[(size_t)t * n + i];
    }
  }
  double *qs = queries_of(c, grp, 0), *qb = t_alloc((size_t)gT * n), *le = t_alloc((size_t)gT * T);
  latents(qs, gT, n, s->b + grp * nn, n, qb);
  t_gemm_nt(gT, T, n, qb, err, le);
  double out = t_frob2(le, (size_t)gT * T);
  free(k), free(lat), free(r), free(err), free(y), free(q), free(qs), free(qb), free(le);
  return out;
}

static void test_balanced_q4_segment_loses_less_logits_error(void **state) {
  (void)state;
  tcalib c = {.L = 1, .H = 4, .Hk = 2, .T = 256, .d = 16};
  tcalib_random(&c, 0.8);
  /* Queries decaying along the keys' channels: a spread spectrum. */
  for (size_t i = 0; i < (size_t)c.H * c.T * c.d; i++)
    c.q[0][i] = (float)(t_normal() * pow(0.8, (double)(i % c.d)));
  const char *path = t_path("balance_q4.st");
  assert_int_equal(tcalib_write(&c, path), KQ_OK);
  kq_calib calib;
  kq_layer_factors f;
  open_layer0(path, &calib, &f);
  kq_layer_solution s0, s1;
  per_head_solution(&f, &s0);
  copy_solution(&s0, &s1);
  assert_int_equal(kq_balance_kqsvd(&s1, 0), KQ_OK);
  for (int i = 0; i < c.Hk; i++) {
    double e0 = q4_logits_error(&c, &s0, i), e1 = q4_logits_error(&c, &s1, i);
    /* Cauchy–Schwarz bound of the isotropic model: (Σσ)² / (n Σσ²). */
    double s = 0, s2 = 0;
    for (int j = 0; j < c.d; j++)
      s += s0.sigma_k[i * c.d + j], s2 += pow(s0.sigma_k[i * c.d + j], 2);
    double bound = s * s / (c.d * s2);
    assert_true(bound < 0.8);
    assert_true(e1 < e0 * (bound + 1) / 2);
  }
  kq_layer_solution_free(&s0), kq_layer_solution_free(&s1);
  kq_layer_factors_free(&f);
  kq_calib_close(&calib);
  unlink(path);
  tcalib_free(&c);
}

static void test_balanced_quant_basis_is_a_scaled_permutation(void **state) {
  (void)state;
  for (int joint = 0; joint < 2; joint++) {
    tcalib c = {.L = 1, .H = 4, .Hk = 2, .T = 64, .d = 8, .D = 6};
    tcalib_random(&c, 0.7);
    const char *path = t_path("balance_quant.st");
    assert_int_equal(tcalib_write(&c, path), KQ_OK);
    kq_calib calib;
    kq_layer_factors f;
    open_layer0(path, &calib, &f);
    kq_layout layout = joint ? KQ_LAYOUT_JOINT : KQ_LAYOUT_PER_HEAD;
    kq_layer_solution s;
    assert_int_equal(kq_quant_basis(&f, layout, &s), KQ_OK);
    assert_int_equal(kq_quant_balance(&f, layout, &s), KQ_OK);
    int n = s.dim, d = c.d, g = c.H / c.Hk;
    size_t nn = (size_t)n * n;
    for (int grp = 0; grp < s.groups; grp++) {
      const double *a = s.a + grp * nn, *b = s.b + grp * nn;
      double *scale = t_alloc((size_t)n), *ek = t_alloc((size_t)n), *eq = t_alloc((size_t)n);
      for (int col = 0; col < n; col++) {
        int nz = 0, row = -1;
        for (int x = 0; x < n; x++)
          if (a[x + (size_t)col * n] != 0) nz++, row = x;
        assert_int_equal(nz, 1);
        /* A Bᵀ = I: B has the inverse scale at the same place. */
        assert_true(fabs(a[row + (size_t)col * n] * b[row + (size_t)col * n] - 1) < 1e-12);
        scale[row] = a[row + (size_t)col * n];
        assert_true(scale[row] > 0);
      }
      /* Channel energies from the data, of this group's channels. */
      for (int x = 0; x < n; x++) {
        int head = joint ? x / d : grp, j = x % d;
        double *qs = t_query_stack(&c, 0, head);
        ek[x] = eq[x] = 0;
        for (int t = 0; t < c.T; t++) ek[x] += pow(c.k[0][((size_t)head * c.T + t) * d + j], 2);
        for (int t = 0; t < g * c.T; t++) eq[x] += pow(qs[(size_t)t * d + j], 2);
        free(qs);
      }
      double ratio = -1, before = 0, after = 0;
      for (int x = 0; x < n; x++) {
        /* The channel's query energy over its key energy, after scaling. */
        double r = eq[x] / (scale[x] * scale[x]) / (ek[x] * scale[x] * scale[x]);
        if (ratio < 0) ratio = r;
        assert_true(fabs(r - ratio) <= 1e-6 * ratio);
        before += ek[x], after += ek[x] * scale[x] * scale[x];
      }
      assert_true(fabs(after - before) <= 1e-6 * before);
      free(scale), free(ek), free(eq);
    }
    kq_layer_solution_free(&s);
    kq_layer_factors_free(&f);
    kq_calib_close(&calib);
    unlink(path);
    tcalib_free(&c);
  }
}

/* The file kq_fit writes: balanced (default) and not give the same A Bᵀ
 * and C Eᵀ at equal ranks (F32 files: 1e-5). */
static void test_fit_balance_option_keeps_products(void **state) {
  (void)state;
  tcalib c = {.L = 2, .H = 4, .Hk = 2, .T = 64, .d = 8, .D = 8};
  tcalib_random(&c, 0.8);
  const char *calib = t_path("bal_fit.st"), *p0 = t_path("bal_p0.st"), *p1 = t_path("bal_p1.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  for (int joint = 0; joint < 2; joint++) {
    kq_fit_params p = kq_fit_default_params();
    assert_int_equal(p.balance, 1);
    p.layout = joint ? KQ_LAYOUT_JOINT : KQ_LAYOUT_PER_HEAD;
    p.rank_k = p.rank_v = 5;
    assert_int_equal(kq_fit(calib, p1, &p), KQ_OK);
    p.balance = 0;
    assert_int_equal(kq_fit(calib, p0, &p), KQ_OK);
    kq_projections *pr0 = NULL, *pr1 = NULL;
    assert_int_equal(kq_projections_load(p0, &pr0), KQ_OK);
    assert_int_equal(kq_projections_load(p1, &pr1), KQ_OK);
    int g = joint ? 1 : c.Hk, n = joint ? c.Hk * c.d : c.d;
    for (int l = 0; l < c.L; l++) {
      kq_projection_layer v0, v1;
      assert_int_equal(kq_projections_layer(pr0, l, &v0), KQ_OK);
      assert_int_equal(kq_projections_layer(pr1, l, &v1), KQ_OK);
      int differs = 0;
      for (int side = 0; side < 2; side++)
        for (int grp = 0; grp < g; grp++) {
          const float *d0 = side ? v0.value_down : v0.key_down,
                      *u0 = side ? v0.value_up : v0.query_down;
          const float *d1 = side ? v1.value_down : v1.key_down,
                      *u1 = side ? v1.value_up : v1.query_down;
          int r = 5;
          size_t o = (size_t)grp * n * r;
          double *m0 = t_alloc((size_t)n * n), *m1 = t_alloc((size_t)n * n);
          double *x0 = t_alloc((size_t)n * r), *y0 = t_alloc((size_t)n * r);
          double *x1 = t_alloc((size_t)n * r), *y1 = t_alloc((size_t)n * r);
          for (size_t i = 0; i < (size_t)n * r; i++) {
            x0[i] = d0[o + i], y0[i] = u0[o + i], x1[i] = d1[o + i], y1[i] = u1[o + i];
            differs |= fabs(x0[i] - x1[i]) > 1e-3 * fabs(x0[i]) + 1e-6;
          }
          t_gemm_nt(n, n, r, x0, y0, m0);
          t_gemm_nt(n, n, r, x1, y1, m1);
          assert_true(rel_diff(m1, m0, (size_t)n * n) < 1e-5);
          free(m0), free(m1), free(x0), free(y0), free(x1), free(y1);
        }
      assert_true(differs); /* the option did change the latents */
    }
    kq_projections_destroy(pr0), kq_projections_destroy(pr1);
  }
  unlink(calib), unlink(p0), unlink(p1);
  tcalib_free(&c);
}

/* kq_fit's quant baseline: unbalanced by default (A = B, a permutation),
 * balance = 2 scales its channels (A ≠ B, A Bᵀ = I); other values fail. */
static void test_fit_quant_balance_only_when_asked(void **state) {
  (void)state;
  tcalib c = {.L = 1, .H = 4, .Hk = 2, .T = 64, .d = 8, .D = 8};
  tcalib_random(&c, 0.8);
  const char *calib = t_path("balq.st"), *proj = t_path("balq_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  for (int bal = 1; bal <= 2; bal++) {
    kq_fit_params p = kq_fit_default_params();
    p.method = KQ_METHOD_QUANT;
    p.bytes = 1.0;
    p.balance = bal;
    assert_int_equal(kq_fit(calib, proj, &p), KQ_OK);
    kq_projections *pr = NULL;
    assert_int_equal(kq_projections_load(proj, &pr), KQ_OK);
    kq_projection_layer v;
    assert_int_equal(kq_projections_layer(pr, 0, &v), KQ_OK);
    int n = c.d, same = 1;
    for (int grp = 0; grp < c.Hk; grp++)
      for (int x = 0; x < n; x++)
        for (int y = 0; y < n; y++) {
          double s = 0;
          for (int j = 0; j < v.rank_k; j++) {
            size_t o = (size_t)grp * n * v.rank_k;
            s += (double)v.key_down[o + (size_t)x * v.rank_k + j] *
                 v.query_down[o + (size_t)y * v.rank_k + j];
            same &= v.key_down[o + (size_t)x * v.rank_k + j] ==
                    v.query_down[o + (size_t)x * v.rank_k + j];
          }
          assert_true(fabs(s - (x == y)) < 1e-5);
        }
    assert_int_equal(same, bal == 1);
    kq_projections_destroy(pr);
  }
  kq_fit_params p = kq_fit_default_params();
  p.method = KQ_METHOD_QUANT;
  p.bytes = 1.0;
  p.balance = 3;
  assert_int_equal(kq_fit(calib, proj, &p), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "balance 3"));
  unlink(calib), unlink(proj);
  tcalib_free(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_balanced_kqsvd_keeps_exact_logits_and_outputs),
      cmocka_unit_test(test_balanced_q4_segment_loses_less_logits_error),
      cmocka_unit_test(test_balanced_quant_basis_is_a_scaled_permutation),
      cmocka_unit_test(test_fit_balance_option_keeps_products),
      cmocka_unit_test(test_fit_quant_balance_only_when_asked),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
