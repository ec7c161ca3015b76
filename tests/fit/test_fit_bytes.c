/*
 * fit --bytes (SPEC §1b): the byte allocator keeps to its budget and spends
 * it, segments are well formed, more budget never predicts more error;
 * segment rotations are orthogonal, leave A Bᵀ / C Eᵀ unchanged and are
 * deterministic per seed; the quant baseline is a rank-d permutation basis;
 * bad parameters fail with a message that says what is wrong.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fit_testutil.h"
#include "kq_fit.h"

/* ------------------------------------------------------------------------ */
/* Rotations                                                                */
/* ------------------------------------------------------------------------ */

static double orthogonality_defect(const double *r, int w) {
  double worst = 0;
  for (int i = 0; i < w; i++)
    for (int j = 0; j < w; j++) {
      double s = 0;
      for (int x = 0; x < w; x++) s += r[x + (size_t)i * w] * r[x + (size_t)j * w];
      double e = fabs(s - (i == j));
      if (e > worst) worst = e;
    }
  return worst;
}

static void test_randomised_hadamard_and_random_rotations_are_orthogonal(void **state) {
  (void)state;
  const int widths[6] = {1, 8, 64, 256, 24, 40};
  for (int x = 0; x < 6; x++) {
    int w = widths[x];
    double *r = t_alloc((size_t)w * w);
    assert_int_equal(kq_rotation_make(w, 7, r), KQ_OK);
    assert_true(orthogonality_defect(r, w) < 1e-12);
    /* A rotation, not a permutation: for w >= 8 no column is a unit axis. */
    if (w >= 8)
      for (int j = 0; j < w; j++) {
        double mx = 0;
        for (int i = 0; i < w; i++) mx = fmax(mx, fabs(r[i + (size_t)j * w]));
        assert_true(mx < 0.99);
      }
    free(r);
  }
  double bad[1];
  assert_int_equal(kq_rotation_make(0, 1, bad), KQ_ERR_INVALID_ARGUMENT);
}

/* A set of projections with random A..E and mixed segments. */
static kq_projections *random_projections(int hk, int d, int rank) {
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = 2,
                              .n_heads = 2 * hk,
                              .n_kv_heads = hk,
                              .head_dim = d,
                              .rope = KQ_ROPE_POST,
                              .rope_theta = 10000.0f};
  int32_t ranks[2] = {rank, rank};
  kq_projections *p = NULL;
  assert_int_equal(kq_projections_create(&info, ranks, ranks, &p), KQ_OK);
  for (int l = 0; l < 2; l++) {
    kq_projection_layer v;
    assert_int_equal(kq_projections_layer(p, l, &v), KQ_OK);
    size_t n = (size_t)hk * d * rank;
    for (size_t i = 0; i < n; i++) {
      v.key_down[i] = (float)t_normal();
      v.query_down[i] = (float)t_normal();
      v.value_down[i] = (float)t_normal();
      v.value_up[i] = (float)t_normal();
    }
    /* float 4, q8 8 (Hadamard), q4 12 (random orthogonal): rank 24. */
    kq_segment segs[3] = {{4, KQ_SEG_FLOAT}, {8, KQ_SEG_Q8}, {rank - 12, KQ_SEG_Q4}};
    assert_int_equal(kq_projections_set_segments(p, l, KQ_SIDE_KEYS, 3, segs), KQ_OK);
    assert_int_equal(kq_projections_set_segments(p, l, KQ_SIDE_VALUES, 3, segs), KQ_OK);
  }
  return p;
}

/* Copies of one layer's matrices [Hk·d][rank] in double. */
static void copy_layer(kq_projections *p, int l, int n, double *out[4]) {
  kq_projection_layer v;
  assert_int_equal(kq_projections_layer(p, l, &v), KQ_OK);
  const float *src[4] = {v.key_down, v.query_down, v.value_down, v.value_up};
  for (int m = 0; m < 4; m++) {
    out[m] = t_alloc((size_t)n);
    for (int i = 0; i < n; i++) out[m][i] = src[m][i];
  }
}

/* max |(X Yᵀ)_ref − (X Yᵀ)_rot| per head over max |(X Yᵀ)_ref|. */
static double product_change(const double *x0, const double *y0, const double *x1, const double *y1,
                             int hk, int d, int r) {
  double worst = 0, scale = 0;
  double *p0 = t_alloc((size_t)d * d), *p1 = t_alloc((size_t)d * d);
  for (int i = 0; i < hk; i++) {
    size_t o = (size_t)i * d * r;
    t_gemm_nt(d, d, r, x0 + o, y0 + o, p0);
    t_gemm_nt(d, d, r, x1 + o, y1 + o, p1);
    for (int k = 0; k < d * d; k++) {
      worst = fmax(worst, fabs(p0[k] - p1[k]));
      scale = fmax(scale, fabs(p0[k]));
    }
  }
  free(p0), free(p1);
  return worst / scale;
}

static void test_rotations_keep_products_and_depend_only_on_seed(void **state) {
  (void)state;
  int hk = 2, d = 32, r = 24, n = hk * d * r;
  t_rng_state = 0x1234567;
  kq_projections *p0 = random_projections(hk, d, r);
  double *ref[2][4], *rot1[2][4], *rot1b[2][4], *rot2[2][4];
  for (int l = 0; l < 2; l++) copy_layer(p0, l, n, ref[l]);
  assert_int_equal(kq_fold_rotations(p0, 1), KQ_OK);
  for (int l = 0; l < 2; l++) copy_layer(p0, l, n, rot1[l]);
  kq_projections_destroy(p0);

  t_rng_state = 0x1234567; /* the same random projections again */
  kq_projections *p1 = random_projections(hk, d, r);
  t_rng_state = 0x1234567;
  kq_projections *p2 = random_projections(hk, d, r);
  assert_int_equal(kq_fold_rotations(p1, 1), KQ_OK);
  assert_int_equal(kq_fold_rotations(p2, 2), KQ_OK);
  for (int l = 0; l < 2; l++) {
    copy_layer(p1, l, n, rot1b[l]);
    copy_layer(p2, l, n, rot2[l]);
  }
  for (int l = 0; l < 2; l++) {
    /* A Bᵀ and C Eᵀ unchanged (float rounding only). */
    assert_true(product_change(ref[l][0], ref[l][1], rot1[l][0], rot1[l][1], hk, d, r) < 1e-5);
    assert_true(product_change(ref[l][2], ref[l][3], rot1[l][2], rot1[l][3], hk, d, r) < 1e-5);
    assert_true(product_change(ref[l][0], ref[l][1], rot2[l][0], rot2[l][1], hk, d, r) < 1e-5);
    for (int m = 0; m < 4; m++) {
      double diff_seed = 0, same_seed = 0, float_cols = 0, moved = 0;
      for (int i = 0; i < n; i++) {
        same_seed = fmax(same_seed, fabs(rot1[l][m][i] - rot1b[l][m][i]));
        diff_seed = fmax(diff_seed, fabs(rot1[l][m][i] - rot2[l][m][i]));
        if (i % r < 4)
          float_cols = fmax(float_cols, fabs(rot1[l][m][i] - ref[l][m][i]));
        else
          moved = fmax(moved, fabs(rot1[l][m][i] - ref[l][m][i]));
      }
      assert_true(same_seed == 0.0);  /* deterministic per seed */
      assert_true(diff_seed > 0.1);   /* another seed, another rotation */
      assert_true(float_cols == 0.0); /* float segments are not rotated */
      assert_true(moved > 0.1);       /* quantized segments are */
    }
  }
  for (int l = 0; l < 2; l++)
    for (int m = 0; m < 4; m++)
      free(ref[l][m]), free(rot1[l][m]), free(rot1b[l][m]), free(rot2[l][m]);
  kq_projections_destroy(p1);
  kq_projections_destroy(p2);
}

/* ------------------------------------------------------------------------ */
/* The allocator on its own                                                 */
/* ------------------------------------------------------------------------ */

typedef struct alloc_case {
  int L, dim, groups;
  double *wk, *wv;
  kq_alloc_side *k, *v;
} alloc_case;

static void alloc_case_init(alloc_case *c, double budget_fraction, double *out_error,
                            double *out_bytes) {
  for (int l = 0; l < c->L; l++) {
    c->k[l] = (kq_alloc_side){.dim = c->dim,
                              .groups = c->groups,
                              .weight = c->wk + (size_t)l * c->dim,
                              .relerr = {1e-7, 2e-4 * (1 + 0.1 * l), 0.02 * (1 + 0.05 * l)}};
    c->v[l] = (kq_alloc_side){.dim = c->dim,
                              .groups = c->groups,
                              .weight = c->wv + (size_t)l * c->dim,
                              .relerr = {1e-7, 1e-4, 0.015}};
    kq_alloc_side_init(&c->k[l]);
    kq_alloc_side_init(&c->v[l]);
  }
  double full = 4.0 * c->dim * c->groups * c->L;
  assert_int_equal(kq_allocate_bytes(c->k, c->v, c->L, budget_fraction * full), KQ_OK);
  double e = 0, b = 0;
  for (int l = 0; l < c->L; l++) {
    e += kq_alloc_side_error(&c->k[l]) + kq_alloc_side_error(&c->v[l]);
    b += kq_alloc_side_bytes(&c->k[l]) + kq_alloc_side_bytes(&c->v[l]);
  }
  *out_error = e;
  *out_bytes = b / full;
}

static void test_allocator_respects_budget_and_more_budget_never_predicts_more_error(void **s) {
  (void)s;
  alloc_case c = {.L = 5, .dim = 64, .groups = 3};
  c.wk = t_alloc((size_t)c.L * c.dim);
  c.wv = t_alloc((size_t)c.L * c.dim);
  c.k = calloc((size_t)c.L, sizeof *c.k);
  c.v = calloc((size_t)c.L, sizeof *c.v);
  for (int l = 0; l < c.L; l++) {
    double tk = 0, tv = 0;
    for (int j = 0; j < c.dim; j++) {
      tk += c.wk[l * c.dim + j] = exp(-0.15 * (1 + l) * j); /* fast decay, layer dependent */
      tv += c.wv[l * c.dim + j] = 1.0 / (1 + j);            /* slow decay */
    }
    for (int j = 0; j < c.dim; j++) c.wk[l * c.dim + j] /= tk, c.wv[l * c.dim + j] /= tv;
  }
  /* The largest move: 8 dims q8 -> F16 plus a freed scale... at most 8·2 + 2
   * bytes per group. */
  double slack = (8 * 2 + 2) * (double)c.groups / (4.0 * c.dim * c.groups * c.L);
  double prev_err = INFINITY;
  for (double f = 0.06; f <= 1.0 + 1e-9; f += 0.02) {
    double err, frac;
    alloc_case_init(&c, f, &err, &frac);
    assert_true(frac <= f + 1e-12);
    int exhausted = 1;
    for (int l = 0; l < c.L; l++) {
      const kq_alloc_side *sd[2] = {&c.k[l], &c.v[l]};
      for (int x = 0; x < 2; x++) {
        if (sd[x]->bound[0] < c.dim) exhausted = 0;
        kq_segment seg[3];
        int n = kq_alloc_side_segments(sd[x], seg), sum = 0;
        assert_true(n >= 1 && n <= 3);
        for (int i = 0; i < n; i++) {
          assert_true(seg[i].bits == 0 || seg[i].bits == 8 || seg[i].bits == 4);
          assert_true(seg[i].width % 8 == 0 && seg[i].width > 0);
          if (i) assert_true(seg[i].bits != 0 && (seg[i - 1].bits == 0 || seg[i].bits == 4));
          sum += seg[i].width;
        }
        assert_int_equal(sum, sd[x]->bound[2]);
      }
    }
    if (!exhausted) assert_true(frac >= f - slack);
    assert_true(err <= prev_err * (1 + 1e-12));
    prev_err = err;
  }
  /* Below the minimal state (8 q4 dims per side and layer): refused. */
  for (int l = 0; l < c.L; l++) {
    kq_alloc_side_init(&c.k[l]);
    kq_alloc_side_init(&c.v[l]);
  }
  assert_int_equal(kq_allocate_bytes(c.k, c.v, c.L, 10.0), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "below the minimum"));
  free(c.wk), free(c.wv), free(c.k), free(c.v);
}

/* Rounding noise counts for less than the error of dropped dims: given the
 * same measured errors through kq_alloc_side_set_relerr, the allocator keeps
 * more latent dims (in coarser formats) than when rounding error is counted
 * at face value, within the same budget. */
static void test_measured_rounding_error_is_discounted_against_dropped_dims(void **s) {
  (void)s;
  enum { L = 4, DIM = 64, GROUPS = 3 };
  const double measured[KQ_FMT_COUNT] = {1e-7, 3e-4, 0.06};
  kq_alloc_side probe = {.dim = DIM};
  for (int f = 0; f < KQ_FMT_COUNT; f++) {
    kq_alloc_side_set_relerr(&probe, f, measured[f]);
    assert_true(probe.relerr[f] > 0 && probe.relerr[f] < measured[f]);
  }
  double *w = t_alloc(DIM), total = 0;
  for (int j = 0; j < DIM; j++) total += w[j] = exp(-0.06 * j);
  for (int j = 0; j < DIM; j++) w[j] /= total;
  int32_t kept[2] = {0, 0}, wide[2] = {0, 0};
  double budget = 0.25 * 4.0 * DIM * GROUPS * L;
  for (int discounted = 0; discounted < 2; discounted++) {
    kq_alloc_side k[L], v[L];
    for (int l = 0; l < L; l++) {
      k[l] = (kq_alloc_side){.dim = DIM, .groups = GROUPS, .weight = w};
      for (int f = 0; f < KQ_FMT_COUNT; f++) {
        if (discounted)
          kq_alloc_side_set_relerr(&k[l], f, measured[f]);
        else
          k[l].relerr[f] = measured[f];
      }
      v[l] = k[l];
      kq_alloc_side_init(&k[l]);
      kq_alloc_side_init(&v[l]);
    }
    assert_int_equal(kq_allocate_bytes(k, v, L, budget), KQ_OK);
    double used = 0;
    for (int l = 0; l < L; l++) {
      used += kq_alloc_side_bytes(&k[l]) + kq_alloc_side_bytes(&v[l]);
      kept[discounted] += k[l].bound[2] + v[l].bound[2];
      wide[discounted] += k[l].bound[1] + v[l].bound[1]; /* F16 and q8 dims */
    }
    assert_true(used <= budget + 1e-9);
  }
  assert_true(kept[1] > kept[0]);
  assert_true(wide[1] <= wide[0]);
  free(w);
}

/* ------------------------------------------------------------------------ */
/* kq_fit_ex --bytes end to end                                             */
/* ------------------------------------------------------------------------ */

static void read_segments(const char *path, int L, int d, int *ok) {
  kq_projections *p = NULL;
  assert_int_equal(kq_projections_load(path, &p), KQ_OK);
  for (int l = 0; l < L; l++) {
    kq_projection_layer v;
    assert_int_equal(kq_projections_layer(p, l, &v), KQ_OK);
    int sum_k = 0, sum_v = 0;
    for (int i = 0; i < v.n_key_segments; i++) sum_k += v.key_segments[i].width;
    for (int i = 0; i < v.n_value_segments; i++) sum_v += v.value_segments[i].width;
    if (sum_k != v.rank_k || sum_v != v.rank_v || v.rank_k > d || v.rank_v > d) *ok = 0;
  }
  kq_projections_destroy(p);
}

static void test_fit_bytes_meets_budget_and_error_falls_with_budget(void **state) {
  (void)state;
  tcalib c = {.L = 3, .H = 4, .Hk = 2, .T = 128, .d = 32, .D = 40};
  tcalib_random(&c, 0.9);
  const char *calib = t_path("bytes.st"), *proj = t_path("bytes_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  const double fr[5] = {0.15, 0.25, 0.375, 0.6, 1.0};
  const kq_layout layouts[2] = {KQ_LAYOUT_PER_HEAD, KQ_LAYOUT_JOINT};
  for (int y = 0; y < 2; y++) {
    double prev_k = INFINITY, prev_v = INFINITY;
    for (int x = 0; x < 5; x++) {
      kq_fit_params p = kq_fit_default_params();
      p.bytes = fr[x];
      p.layout = layouts[y];
      kq_fit_summary s;
      assert_int_equal(kq_fit_ex(calib, proj, &p, &s), KQ_OK);
      kq_projections *pr = NULL;
      assert_int_equal(kq_projections_load(proj, &pr), KQ_OK);
      double frac = kq_projections_fraction_of_f16(pr, KQ_STORAGE_F16);
      kq_projections_destroy(pr);
      assert_true(fabs(frac - s.fraction_of_f16) < 1e-12);
      assert_true(frac <= fr[x] + 1e-12);
      assert_true(frac >= fr[x] - 0.05);
      int ok = 1;
      read_segments(proj, c.L, layouts[y] == KQ_LAYOUT_JOINT ? c.Hk * c.d : c.d, &ok);
      assert_true(ok);
      assert_true(s.predicted_error_k <= prev_k * (1 + 1e-9));
      assert_true(s.predicted_error_v <= prev_v * (1 + 1e-9));
      prev_k = s.predicted_error_k;
      prev_v = s.predicted_error_v;
    }
    assert_true(prev_k < 1e-3 && prev_v < 1e-3); /* bytes 1: every dim kept in F16 */
  }
  unlink(calib), unlink(proj);
  tcalib_free(&c);
}

/* ------------------------------------------------------------------------ */
/* The quant baseline                                                       */
/* ------------------------------------------------------------------------ */

static double gram_diag(const double *x, int T, int d, int j) {
  double s = 0;
  for (int t = 0; t < T; t++) s += x[(size_t)t * d + j] * x[(size_t)t * d + j];
  return s;
}

static void test_quant_method_is_a_rank_d_permutation_basis(void **state) {
  (void)state;
  tcalib c = {.L = 2, .H = 4, .Hk = 2, .T = 64, .d = 16, .D = 8};
  tcalib_random(&c, 0.9);
  const char *calib = t_path("quant.st"), *proj = t_path("quant_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  kq_fit_params p = kq_fit_default_params();
  p.method = KQ_METHOD_QUANT;
  p.bytes = 1.0;
  assert_int_equal(kq_fit(calib, proj, &p), KQ_OK);
  kq_projections *pr = NULL;
  assert_int_equal(kq_projections_load(proj, &pr), KQ_OK);
  int d = c.d, g = c.H / c.Hk;
  for (int l = 0; l < c.L; l++) {
    tproj_layer t;
    assert_true(tproj_get(pr, l, c.Hk, d, &t));
    assert_int_equal(t.rk, d);
    assert_int_equal(t.rv, d);
    for (int i = 0; i < c.Hk; i++) {
      const double *a = t.a + (size_t)i * d * d, *b = t.b + (size_t)i * d * d;
      /* A = B, a permutation: A Bᵀ = I. */
      for (int x = 0; x < d * d; x++) assert_true(a[x] == b[x]);
      double *ab = t_alloc((size_t)d * d);
      t_gemm_nt(d, d, d, a, b, ab);
      for (int x = 0; x < d; x++)
        for (int y = 0; y < d; y++) assert_true(fabs(ab[x * d + y] - (x == y)) < 1e-12);
      /* Latent dim j is the channel ranked j-th by (KᵀK)_jj (QᵀQ)_jj. */
      double *qs = t_query_stack(&c, l, i);
      double prev = INFINITY;
      for (int j = 0; j < d; j++) {
        int ch = -1;
        for (int x = 0; x < d; x++)
          if (a[x * d + j] == 1.0) ch = x;
        assert_true(ch >= 0);
        double w =
            gram_diag(c.k[l] + (size_t)i * c.T * d, c.T, d, ch) * gram_diag(qs, g * c.T, d, ch);
        assert_true(w <= prev * (1 + 1e-9));
        assert_true(fabs(t.ks[i * d + j] * t.ks[i * d + j] - w) <= 1e-4 * w);
        prev = w;
      }
      free(qs), free(ab);
    }
    tproj_free(&t);
  }
  kq_projections_destroy(pr);
  unlink(calib), unlink(proj);
  tcalib_free(&c);
}

/* ------------------------------------------------------------------------ */
/* Bad input                                                                */
/* ------------------------------------------------------------------------ */

static void expect_failure(const char *calib, const char *proj, kq_fit_params p, kq_status want,
                           const char *needle) {
  assert_int_equal(kq_fit(calib, proj, &p), want);
  assert_non_null(strstr(kq_last_error(), needle));
  assert_false(t_exists(proj));
}

static void test_bad_byte_budgets_and_layouts_fail_clearly(void **state) {
  (void)state;
  tcalib c = {.L = 1, .H = 2, .Hk = 1, .T = 32, .d = 8};
  tcalib_random(&c, 0.9);
  const char *calib = t_path("bad.st"), *proj = t_path("bad_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  kq_fit_params p = kq_fit_default_params();
  p.bytes = 1.5;
  expect_failure(calib, proj, p, KQ_ERR_INVALID_ARGUMENT, "bytes 1.5 must be in (0, 1]");
  p.bytes = -0.1;
  expect_failure(calib, proj, p, KQ_ERR_INVALID_ARGUMENT, "bytes -0.1 must be in (0, 1]");
  p.bytes = 0; /* no mode at all */
  expect_failure(calib, proj, p, KQ_ERR_INVALID_ARGUMENT, "exactly one rank mode");
  p.bytes = 0.3;
  p.ratio = 0.3;
  expect_failure(calib, proj, p, KQ_ERR_INVALID_ARGUMENT, "exactly one rank mode");
  p = kq_fit_default_params();
  p.method = KQ_METHOD_QUANT;
  p.ratio = 0.5;
  expect_failure(calib, proj, p, KQ_ERR_INVALID_ARGUMENT, "method quant needs a byte budget");
  p = kq_fit_default_params();
  p.method = KQ_METHOD_KSVD;
  p.layout = KQ_LAYOUT_JOINT;
  p.rank_k = p.rank_v = 2;
  expect_failure(calib, proj, p, KQ_ERR_UNSUPPORTED, "layout joint supports");
  p = kq_fit_default_params();
  p.bytes = 0.001; /* below 8 q4 dims per side */
  expect_failure(calib, proj, p, KQ_ERR_INVALID_ARGUMENT, "below the minimum");
  unlink(calib);

  c.rope = "pre";
  c.rope_theta = "10000";
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  p = kq_fit_default_params();
  p.layout = KQ_LAYOUT_JOINT;
  p.bytes = 0.5;
  expect_failure(calib, proj, p, KQ_ERR_UNSUPPORTED, "rope pre");
  assert_non_null(strstr(kq_last_error(), calib));
  unlink(calib);
  tcalib_free(&c);
}

static void test_odd_head_dim_gets_valid_segments(void **state) {
  (void)state;
  tcalib c = {.L = 2, .H = 2, .Hk = 1, .T = 32, .d = 5};
  tcalib_random(&c, 0.9);
  const char *calib = t_path("odd.st"), *proj = t_path("odd_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  const double fr[3] = {0.75, 0.9, 1.0}; /* the minimum is 5 q8 dims: 0.7 */
  for (int x = 0; x < 3; x++) {
    kq_fit_params p = kq_fit_default_params();
    p.bytes = fr[x];
    kq_fit_summary s;
    assert_int_equal(kq_fit_ex(calib, proj, &p, &s), KQ_OK);
    assert_true(s.fraction_of_f16 <= fr[x] + 1e-12);
    int ok = 1;
    read_segments(proj, c.L, c.d, &ok); /* the loader rejects odd q4 widths */
    assert_true(ok);
  }
  unlink(calib), unlink(proj);
  tcalib_free(&c);
}

static void test_eval_refuses_quantized_and_joint_files(void **state) {
  (void)state;
  tcalib c = {.L = 1, .H = 2, .Hk = 1, .T = 32, .d = 16};
  tcalib_random(&c, 0.9);
  const char *calib = t_path("evq.st"), *proj = t_path("evq_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  kq_fit_params p = kq_fit_default_params();
  p.bytes = 0.3;
  assert_int_equal(kq_fit(calib, proj, &p), KQ_OK);
  kq_eval_params ep = kq_eval_default_params();
  kq_eval_result *res = NULL;
  assert_int_equal(kq_eval(calib, proj, &ep, &res), KQ_ERR_UNSUPPORTED);
  assert_non_null(strstr(kq_last_error(), proj));
  p = kq_fit_default_params();
  p.layout = KQ_LAYOUT_JOINT;
  p.rank_k = p.rank_v = 4;
  assert_int_equal(kq_fit(calib, proj, &p), KQ_OK);
  assert_int_equal(kq_eval(calib, proj, &ep, &res), KQ_ERR_UNSUPPORTED);
  assert_non_null(strstr(kq_last_error(), "layout joint"));
  unlink(calib), unlink(proj);
  tcalib_free(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_randomised_hadamard_and_random_rotations_are_orthogonal),
      cmocka_unit_test(test_rotations_keep_products_and_depend_only_on_seed),
      cmocka_unit_test(test_allocator_respects_budget_and_more_budget_never_predicts_more_error),
      cmocka_unit_test(test_measured_rounding_error_is_discounted_against_dropped_dims),
      cmocka_unit_test(test_fit_bytes_meets_budget_and_error_falls_with_budget),
      cmocka_unit_test(test_quant_method_is_a_rank_d_permutation_basis),
      cmocka_unit_test(test_bad_byte_budgets_and_layouts_fail_clearly),
      cmocka_unit_test(test_odd_head_dim_gets_valid_segments),
      cmocka_unit_test(test_eval_refuses_quantized_and_joint_files),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
