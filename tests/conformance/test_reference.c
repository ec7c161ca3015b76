/*
 * test_reference.c — checks the conformance suite's float64 reference
 * against a brute-force computation that takes a different route (full-space
 * composite matrices, naive softmax, hand-computed rotations), and checks
 * that the suite's thresholds separate rounding noise from real bugs.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/attn_reference.h"
#include "conformance/suite/cases.h"
#include "conformance/suite/data.h"

/* |a - b| <= tol, with the values in the failure message. */
#define assert_close(a, b, tol)                                                                    \
  do {                                                                                             \
    double a_ = (a), b_ = (b), t_ = (tol);                                                         \
    if (!(fabs(a_ - b_) <= t_))                                                                    \
      fail_msg("%s = %.17g, %s = %.17g, tolerance %.3g", #a, a_, #b, b_, t_);                      \
  } while (0)

/* A problem shape, as designated initializers (the data pointers stay NULL). */
#define SHAPE(d_, H_, Hk_, rk_, rv_, n_, m_, rope_, layout_, storage_, output_)                    \
  {                                                                                                \
    .d = d_, .H = H_, .Hk = Hk_, .rk = rk_, .rv = rv_, .n = n_, .m = m_, .rope = rope_,            \
    .layout = layout_, .storage = storage_, .output = output_                                      \
  }

/* --- binary16 rounding ---------------------------------------------------- */

static void f16_rounding_is_nearest_even_with_subnormals_and_overflow(void **state) {
  (void)state;
  assert_true(kqc_round_f16(1.0) == 1.0);
  assert_true(kqc_round_f16(1.0 + 0x1p-11) == 1.0);                     /* tie -> even */
  assert_true(kqc_round_f16(1.0 + 3 * 0x1p-11) == 1.0 + 0x1p-9);        /* tie -> even */
  assert_true(kqc_round_f16(1.0 + 0x1p-11 + 0x1p-30) == 1.0 + 0x1p-10); /* above tie */
  assert_true(kqc_round_f16(-3.14159) == -3.140625);
  assert_true(kqc_round_f16(65504.0) == 65504.0);
  assert_true(kqc_round_f16(65519.9) == 65504.0);
  assert_true(isinf(kqc_round_f16(65520.0)) && kqc_round_f16(-65520.0) < 0);
  assert_true(kqc_round_f16(0x1p-24) == 0x1p-24);       /* smallest subnormal */
  assert_true(kqc_round_f16(0x1p-25) == 0.0);           /* tie -> even (zero) */
  assert_true(kqc_round_f16(1.5 * 0x1p-24) == 0x1p-23); /* tie -> even */
  assert_true(kqc_round_f16(0x1p-14 + 0x1p-25) == 0x1p-14);
}

/* --- RoPE ----------------------------------------------------------------- */

static void rope_rotates_the_documented_pairs_by_pos_times_theta_power(void **state) {
  (void)state;
  /* d = 4, theta = 100: pair 0 turns by pos, pair 1 by pos/10. */
  double x[4] = {1, 2, 3, 4};
  kqc_ref_rope(x, 4, 2.0, 100.0, KQ_ROPE_PAIRS); /* pairs (0,1), (2,3) */
  assert_close(x[0], cos(2.0) - 2 * sin(2.0), 1e-14);
  assert_close(x[1], sin(2.0) + 2 * cos(2.0), 1e-14);
  assert_close(x[2], 3 * cos(0.2) - 4 * sin(0.2), 1e-14);
  assert_close(x[3], 3 * sin(0.2) + 4 * cos(0.2), 1e-14);
  double y[4] = {1, 2, 3, 4};
  kqc_ref_rope(y, 4, 2.0, 100.0, KQ_ROPE_HALVES); /* pairs (0,2), (1,3) */
  assert_close(y[0], cos(2.0) - 3 * sin(2.0), 1e-14);
  assert_close(y[2], sin(2.0) + 3 * cos(2.0), 1e-14);
  assert_close(y[1], 2 * cos(0.2) - 4 * sin(0.2), 1e-14);
  assert_close(y[3], 2 * sin(0.2) + 4 * cos(0.2), 1e-14);
}

static double dot(const double *a, const double *b, int n) {
  double s = 0;
  for (int i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

static void rope_preserves_norms_and_logits_depend_only_on_relative_position(void **state) {
  (void)state;
  kqc_rng rng;
  kqc_rng_seed(&rng, 7);
  for (int layout = 0; layout < 2; layout++) {
    for (int d = 2; d <= 256; d *= 2) {
      int dd = d == 128 ? 80 : d; /* one non-power-of-two width */
      double q[256] = {0}, k[256] = {0}, q1[256], k1[256], q2[256], k2[256];
      for (int i = 0; i < dd; i++) q[i] = kqc_rng_normal(&rng), k[i] = kqc_rng_normal(&rng);
      int m = 1000, n = 17, shift = 3071;
      memcpy(q1, q, sizeof q), memcpy(k1, k, sizeof k);
      memcpy(q2, q, sizeof q), memcpy(k2, k, sizeof k);
      kqc_ref_rope(q1, dd, m, 10000.0, (kq_rope_layout)layout);
      kqc_ref_rope(k1, dd, n, 10000.0, (kq_rope_layout)layout);
      kqc_ref_rope(q2, dd, m + shift, 10000.0, (kq_rope_layout)layout);
      kqc_ref_rope(k2, dd, n + shift, 10000.0, (kq_rope_layout)layout);
      assert_close(dot(q1, q1, dd), dot(q, q, dd), 1e-10 * dot(q, q, dd));
      double a = dot(q1, k1, dd), b = dot(q2, k2, dd);
      assert_close(a, b, 1e-10 * sqrt(dot(q, q, dd) * dot(k, k, dd)));
      /* ... and equals q · rot(k, n − m). */
      double k3[256];
      memcpy(k3, k, sizeof k);
      kqc_ref_rope(k3, dd, (double)(n - m), 10000.0, (kq_rope_layout)layout);
      assert_close(a, dot(q, k3, dd), 1e-10 * sqrt(dot(q, q, dd) * dot(k, k, dd)));
    }
  }
}

/* --- attention against brute force -------------------------------------- */

/* Deliberate deviations for the threshold-gap test (all zero = correct). */
typedef struct knobs {
  int qshift;       /* query positions off by this much */
  int swap_layout;  /* rotate with the other layout */
  int drop;         /* > 0: position drop - 1 is missing from the softmax */
  int wrong_kv_map; /* kv head h % Hk instead of h / g */
  double scale_mul; /* logit scale multiplied by this (0 = 1) */
} knobs;

typedef struct problem {
  int d, H, Hk, rk, rv, n, m;
  kq_rope_mode rope;
  kq_rope_layout layout;
  kq_storage storage;
  kq_output output;
  float *A, *B, *C, *E, *k, *v, *q;
} problem;

/* Brute force in the full space: composite d×d matrices M_k = A Bᵀ and
 * M_v = C Eᵀ, k' = k M_k (PRE) and q' = q Mᵀ_k... as SPEC §1 writes them. For
 * NONE/POST, logit = q (B Aᵀ) kᵀ; values v' = ṽ Eᵀ with ṽ the (rounded)
 * latent. Naive softmax (no max shift: logits stay small here). */
static void brute_force(const problem *p, const knobs *kn, double *out) {
  int d = p->d, g = p->H / p->Hk;
  double *mk = calloc((size_t)p->Hk * d * d, sizeof(double)); /* A Bᵀ per kv head */
  double *keys = calloc((size_t)p->n * d, sizeof(double));
  double *vals = calloc((size_t)p->n * d, sizeof(double));
  double *lat = calloc((size_t)(p->rv > d ? p->rv : d), sizeof(double));
  double *w = calloc((size_t)p->n, sizeof(double));
  double *qq = calloc((size_t)d, sizeof(double));
  assert_non_null(mk), assert_non_null(keys), assert_non_null(vals), assert_non_null(lat);
  assert_non_null(w), assert_non_null(qq);
  kq_rope_layout lay = kn->swap_layout ? (kq_rope_layout)(1 - p->layout) : p->layout;
  double scale = (kn->scale_mul ? kn->scale_mul : 1.0) / sqrt((double)d);
  for (int kv = 0; kv < p->Hk; kv++) {
    const float *A = p->A + (size_t)kv * d * p->rk, *B = p->B + (size_t)kv * d * p->rk;
    const float *C = p->C + (size_t)kv * d * p->rv, *E = p->E + (size_t)kv * d * p->rv;
    double *M = mk + (size_t)kv * d * d;
    for (int i = 0; i < d; i++)
      for (int j = 0; j < d; j++)
        for (int r = 0; r < p->rk; r++) M[i * d + j] += (double)A[i * p->rk + r] * B[j * p->rk + r];
    /* keys in the space logits are taken in: PRE k' = rot((kA)Bᵀ); else k M
     * (then logit = q kᵀ... with M = A Bᵀ: q·(k A Bᵀ) = (qB)·(kA)). F16
     * rounding applies to the latent kA, so with F16 the latent is formed
     * first. */
    for (int t = 0; t < p->n; t++) {
      const float *kt = p->k + ((size_t)t * p->Hk + kv) * d;
      const float *vt = p->v + ((size_t)t * p->Hk + kv) * d;
      for (int r = 0; r < p->rk; r++) {
        double s = 0;
        for (int i = 0; i < d; i++) s += (double)kt[i] * A[i * p->rk + r];
        lat[r] = p->storage == KQ_STORAGE_F16 ? kqc_round_f16(s) : s;
      }
      for (int j = 0; j < d; j++) {
        double s = 0;
        for (int r = 0; r < p->rk; r++) s += lat[r] * B[j * p->rk + r];
        keys[(size_t)t * d + j] = s;
      }
      if (p->rope == KQ_ROPE_PRE) kqc_ref_rope(keys + (size_t)t * d, d, t, 10000.0, lay);
      for (int r = 0; r < p->rv; r++) {
        double s = 0;
        for (int i = 0; i < d; i++) s += (double)vt[i] * C[i * p->rv + r];
        lat[r] = p->storage == KQ_STORAGE_F16 ? kqc_round_f16(s) : s;
      }
      for (int j = 0; j < d; j++) {
        double s = 0;
        for (int r = 0; r < p->rv; r++) s += lat[r] * E[j * p->rv + r];
        vals[(size_t)t * d + j] = s;
      }
    }
    for (int h = 0; h < p->H; h++) {
      int hk = kn->wrong_kv_map ? h % p->Hk : h / g;
      if (hk != kv) continue;
      for (int j = 0; j < p->m; j++) {
        int pos = p->n - p->m + j;
        const float *qf = p->q + ((size_t)j * p->H + h) * d;
        /* PRE: q' = rot(q B Aᵀ) = rot(q Mᵀ); NONE/POST: q itself, since
         * q · (k A Bᵀ) already is the latent logit. */
        for (int i = 0; i < d; i++) {
          double s = 0;
          if (p->rope == KQ_ROPE_PRE)
            for (int a = 0; a < d; a++) s += (double)qf[a] * M[i * d + a];
          else
            s = qf[i];
          qq[i] = s;
        }
        if (p->rope == KQ_ROPE_PRE) kqc_ref_rope(qq, d, pos + kn->qshift, 10000.0, lay);
        double den = 0;
        for (int t = 0; t <= pos; t++) {
          w[t] =
              (kn->drop && t == kn->drop - 1) ? 0 : exp(scale * dot(qq, keys + (size_t)t * d, d));
          den += w[t];
        }
        double *o = out + ((size_t)j * p->H + h) * d;
        for (int i = 0; i < d; i++) {
          double s = 0;
          for (int t = 0; t <= pos; t++) s += w[t] * vals[(size_t)t * d + i];
          o[i] = s / den;
        }
      }
    }
  }
  free(mk), free(keys), free(vals), free(lat), free(w), free(qq);
}

static void make_problem(problem *p, uint64_t seed) {
  kqc_rng rng;
  kqc_rng_seed(&rng, seed);
  size_t kd = (size_t)p->Hk * p->d;
  p->A = malloc(sizeof(float) * kd * p->rk), p->B = malloc(sizeof(float) * kd * p->rk);
  p->C = malloc(sizeof(float) * kd * p->rv), p->E = malloc(sizeof(float) * kd * p->rv);
  p->k = malloc(sizeof(float) * kd * p->n), p->v = malloc(sizeof(float) * kd * p->n);
  p->q = malloc(sizeof(float) * (size_t)p->m * p->H * p->d);
  assert_non_null(p->A), assert_non_null(p->B), assert_non_null(p->C), assert_non_null(p->E);
  assert_non_null(p->k), assert_non_null(p->v), assert_non_null(p->q);
  assert_int_equal(
      kqc_make_projection_pair(&rng, p->Hk, p->d, p->rk, sqrt((double)p->d / p->rk), p->A, p->B),
      0);
  assert_int_equal(kqc_make_projection_pair(&rng, p->Hk, p->d, p->rv, 1.0, p->C, p->E), 0);
  kqc_fill_normal(&rng, p->k, kd * p->n, 1.0);
  kqc_fill_normal(&rng, p->v, kd * p->n, 1.0);
  kqc_fill_normal(&rng, p->q, (size_t)p->m * p->H * p->d, 1.5);
}

static void free_problem(problem *p) {
  free(p->A), free(p->B), free(p->C), free(p->E), free(p->k), free(p->v), free(p->q);
}

/* The reference's full output for problem p, and its logit statistics.
 * Also checks that precomputed logit keys (kqc_ref_logit_keys) give exactly
 * the same output as keys built inside kqc_ref_attend. */
static double *reference(const problem *p, kqc_ref_stats *st) {
  double *kl = malloc(sizeof(double) * (size_t)p->Hk * p->n * p->rk);
  double *vl = malloc(sizeof(double) * (size_t)p->Hk * p->n * p->rv);
  double *out = malloc(sizeof(double) * (size_t)p->m * p->H * p->d);
  assert_non_null(kl), assert_non_null(vl), assert_non_null(out);
  assert_int_equal(kqc_ref_project(p->k, p->A, p->n, p->Hk, p->d, p->rk, p->storage, kl, p->n, 0),
                   0);
  assert_int_equal(kqc_ref_project(p->v, p->C, p->n, p->Hk, p->d, p->rv, p->storage, vl, p->n, 0),
                   0);
  kqc_ref_problem pb = {p->H,    p->Hk, p->d, p->rk, p->rv, p->rope,           p->layout,
                        10000.0, p->A,  p->B, p->E,  NULL,  KQ_LAYOUT_PER_HEAD};
  assert_int_equal(kqc_ref_attend(&pb, kl, vl, p->n, p->n, p->m, p->q, KQ_OUTPUT_FULL, out, st), 0);
  size_t count = (size_t)p->m * p->H * p->d;
  double *keys = malloc(sizeof(double) * (size_t)p->Hk * p->n * kqc_ref_logit_width(&pb));
  double *out2 = malloc(sizeof(double) * count);
  assert_non_null(keys), assert_non_null(out2);
  kqc_ref_logit_keys(&pb, kl, p->n, p->n, keys);
  pb.logit_keys = keys;
  assert_int_equal(kqc_ref_attend(&pb, kl, vl, p->n, p->n, p->m, p->q, KQ_OUTPUT_FULL, out2, NULL),
                   0);
  assert_memory_equal(out, out2, sizeof(double) * count);
  free(kl), free(vl), free(keys), free(out2);
  return out;
}

static double nmse(const double *a, const double *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
  return num / den;
}

static const problem g_shapes[] = {
    /* d  H  Hk rk rv n  m  rope            layout          storage */
    SHAPE(16, 4, 2, 5, 3, 23, 4, KQ_ROPE_NONE, KQ_ROPE_PAIRS, KQ_STORAGE_F32, KQ_OUTPUT_FULL),
    SHAPE(16, 8, 1, 16, 16, 9, 9, KQ_ROPE_POST, KQ_ROPE_HALVES, KQ_STORAGE_F16, KQ_OUTPUT_FULL),
    SHAPE(20, 4, 4, 7, 10, 31, 5, KQ_ROPE_PRE, KQ_ROPE_PAIRS, KQ_STORAGE_F32, KQ_OUTPUT_FULL),
    SHAPE(24, 6, 3, 12, 5, 40, 1, KQ_ROPE_PRE, KQ_ROPE_HALVES, KQ_STORAGE_F16, KQ_OUTPUT_FULL),
};

static void reference_matches_full_space_brute_force(void **state) {
  (void)state;
  for (size_t s = 0; s < sizeof g_shapes / sizeof g_shapes[0]; s++) {
    problem p = g_shapes[s];
    make_problem(&p, 100 + s);
    kqc_ref_stats st;
    double *ref = reference(&p, &st);
    size_t count = (size_t)p.m * p.H * p.d;
    double *bf = malloc(sizeof(double) * count);
    assert_non_null(bf);
    knobs kn = {0};
    brute_force(&p, &kn, bf);
    double e = nmse(ref, bf, count);
    print_message("shape %zu: NMSE(reference, brute force) = %.3e\n", s, e);
    assert_true(e < 1e-24);
    free(ref), free(bf);
    free_problem(&p);
  }
}

/* Identity projections: the reference is plain softmax attention. */
static void identity_projections_give_plain_attention(void **state) {
  (void)state;
  problem p =
      SHAPE(12, 4, 2, 12, 12, 10, 3, KQ_ROPE_NONE, KQ_ROPE_PAIRS, KQ_STORAGE_F32, KQ_OUTPUT_LATENT);
  make_problem(&p, 5);
  size_t kd = (size_t)p.Hk * p.d * p.d;
  for (size_t i = 0; i < kd; i++) p.A[i] = p.B[i] = p.C[i] = p.E[i] = 0;
  for (int h = 0; h < p.Hk; h++)
    for (int i = 0; i < p.d; i++) {
      size_t at = ((size_t)h * p.d + i) * p.d + i;
      p.A[at] = p.B[at] = p.C[at] = p.E[at] = 1;
    }
  kqc_ref_stats st;
  double *ref = reference(&p, &st);
  /* out[j, h] = Σ_t softmax_t(q·k_t / sqrt(d)) v_t, t ≤ n − m + j, kv = h / 2. */
  for (int j = 0; j < p.m; j++)
    for (int h = 0; h < p.H; h++) {
      int kv = h / 2, pos = p.n - p.m + j;
      const float *q = p.q + ((size_t)j * p.H + h) * p.d;
      double w[16], den = 0;
      for (int t = 0; t <= pos; t++) {
        const float *k = p.k + ((size_t)t * p.Hk + kv) * p.d;
        double s = 0;
        for (int i = 0; i < p.d; i++) s += (double)q[i] * k[i];
        w[t] = exp(s / sqrt(12.0));
        den += w[t];
      }
      for (int i = 0; i < p.d; i++) {
        double y = 0;
        for (int t = 0; t <= pos; t++) y += w[t] * p.v[((size_t)t * p.Hk + kv) * p.d + i];
        assert_close(ref[((size_t)j * p.H + h) * p.d + i], y / den, 1e-12);
      }
    }
  free(ref);
  free_problem(&p);
}

static void reference_refuses_m_outside_the_context(void **state) {
  (void)state;
  float A[4] = {1, 0, 0, 1};
  double kl[2] = {0, 0}, out[2];
  float q[2] = {1, 1};
  kqc_ref_problem pb = {1,   1, 2, 2, 2,    KQ_ROPE_NONE,      KQ_ROPE_PAIRS,
                        1e4, A, A, A, NULL, KQ_LAYOUT_PER_HEAD};
  assert_int_equal(kqc_ref_attend(&pb, kl, kl, 1, 0, 1, q, KQ_OUTPUT_FULL, out, NULL), -1);
  assert_int_equal(kqc_ref_attend(&pb, kl, kl, 1, 1, 2, q, KQ_OUTPUT_FULL, out, NULL), -1);
  assert_int_equal(kqc_ref_attend(&pb, kl, kl, 1, 1, 1, q, KQ_OUTPUT_FULL, out, NULL), 0);
}

/* Every plausible bug must land far above the threshold of the same shape,
 * while float32 rounding noise lands far below it. */
static void thresholds_separate_bugs_from_rounding(void **state) {
  (void)state;
  problem shapes[] = {
      SHAPE(64, 4, 2, 16, 16, 200, 5, KQ_ROPE_PRE, KQ_ROPE_PAIRS, KQ_STORAGE_F32, KQ_OUTPUT_FULL),
      SHAPE(64, 4, 2, 17, 9, 200, 5, KQ_ROPE_PRE, KQ_ROPE_HALVES, KQ_STORAGE_F16, KQ_OUTPUT_FULL),
  };
  for (size_t s = 0; s < 2; s++) {
    problem p = shapes[s];
    make_problem(&p, 900 + s);
    kqc_ref_stats st;
    double *ref = reference(&p, &st);
    kqc_case c = {.head_dim = p.d,
                  .rank_k = p.rk,
                  .rank_v = p.rv,
                  .n_heads = p.H,
                  .n_kv_heads = p.Hk,
                  .n_ctx = p.n,
                  .m = p.m,
                  .storage = p.storage,
                  .rope = p.rope,
                  .layout = p.layout,
                  .output = KQ_OUTPUT_FULL};
    double thr = kqc_case_threshold(&c, &st, NULL);
    size_t count = (size_t)p.m * p.H * p.d;
    double *bf = malloc(sizeof(double) * count);
    assert_non_null(bf);
    knobs bugs[] = {
        {.qshift = 1}, {.swap_layout = 1},  {.drop = 1},
        {.drop = 150}, {.wrong_kv_map = 1}, {.scale_mul = 1.01},
    };
    for (size_t b = 0; b < sizeof bugs / sizeof bugs[0]; b++) {
      brute_force(&p, &bugs[b], bf);
      double e = nmse(bf, ref, count);
      print_message("shape %zu bug %zu: NMSE %.3e, threshold %.3e\n", s, b, e, thr);
      assert_true(e > 100 * thr);
    }
    /* Rounding noise: the inputs perturbed by one float32 ulp give an NMSE
     * far below the threshold. */
    for (size_t i = 0; i < (size_t)p.n * p.Hk * p.d; i++) p.k[i] = nextafterf(p.k[i], INFINITY);
    double *ref2 = reference(&p, &st);
    double e = nmse(ref2, ref, count);
    print_message("shape %zu: ulp-perturbed keys NMSE %.3e, threshold %.3e\n", s, e, thr);
    if (p.storage == KQ_STORAGE_F32) assert_true(e < thr / 100);
    assert_true(thr < 1e-5);
    free(ref), free(ref2), free(bf);
    free_problem(&p);
  }
}

/* --- quantized segments (SPEC §1b) ---------------------------------------- */

static void quantizer_rounds_half_away_with_a_binary16_scale(void **state) {
  (void)state;
  /* Ties: s = 7·2^-4 / 7 = 2^-4 exactly; 2.5 -> 3, -2.5 -> -3 (half-even: 2). */
  double x[4] = {2.5 / 16, -2.5 / 16, 7.0 / 16, 0.5 / 16}, out[4];
  assert_true(kqc_ref_quantize(x, 4, 7, out) == 1.0 / 16);
  assert_true(out[0] == 3.0 / 16 && out[1] == -3.0 / 16 && out[2] == 7.0 / 16);
  assert_true(out[3] == 1.0 / 16); /* 0.5 -> 1 */
  /* s = F16(1/127) = 1032·2^-17 (binary16 spacing 2^-17 in [2^-7, 2^-6)). */
  double y[2] = {1.0, 0.5}, oy[2];
  double s = kqc_ref_quantize(y, 2, 127, oy);
  assert_true(s == 1032 * 0x1p-17);
  assert_true(oy[0] == 127 * s && oy[1] == 64 * s); /* 0.5/s = 63.5039 -> 64 */
  /* an all-zero row stores zeros with scale 0 */
  double z[3] = {0, 0, 0}, oz[3] = {1, 1, 1};
  assert_true(kqc_ref_quantize(z, 3, 127, oz) == 0.0);
  assert_true(oz[0] == 0 && oz[1] == 0 && oz[2] == 0);
  /* the F32 quotient x/s decides: 3.5 steps rounds away even when negative */
  double w[2] = {-3.5 / 4, 7.0 / 4}, ow[2];
  assert_true(kqc_ref_quantize(w, 2, 7, ow) == 0.25);
  assert_true(ow[0] == -1.0);
}

static void recipes_cover_the_rank_with_valid_formats(void **state) {
  (void)state;
  for (int rec = 0; rec < KQC_RECIPE_COUNT; rec++)
    for (int32_t r = 1; r <= 300; r++) {
      kq_segment segs[KQ_MAX_SEGMENTS];
      int32_t n = kqc_recipe_segments((kqc_recipe)rec, r, segs), sum = 0;
      if (n <= 0) {
        assert_true(n == 0 ? rec == KQC_FLOAT : 1);
        continue;
      }
      for (int32_t k = 0; k < n; k++) {
        assert_true(segs[k].width >= 1);
        assert_true(segs[k].bits == KQ_SEG_FLOAT || segs[k].bits == KQ_SEG_Q8 ||
                    segs[k].bits == KQ_SEG_Q4);
        if (segs[k].bits == KQ_SEG_Q4) assert_int_equal(segs[k].width % 2, 0);
        sum += segs[k].width;
      }
      assert_int_equal(sum, r);
    }
}

/* How an emulated device stores its latents: correct, or with one bug. */
typedef enum qbug {
  QB_NONE,
  QB_HALF_EVEN,   /* rint: ties to even instead of away */
  QB_TRUNCATE,    /* toward zero */
  QB_NO_SCALE,    /* dequantized q instead of q·s */
  QB_SCALE_TWICE, /* q·s·s */
  QB_BOUNDARY,    /* the q8|q4 format boundary one dim late (a q4 dim quantized as q8) */
  QB_OFFSET,      /* a segment's data read from one dim past its start */
  QB_NIBBLES,     /* q4: elements 2i and 2i+1 swapped */
  QB_COUNT
} qbug;
static const char *const g_qbug_names[QB_COUNT] = {"none",     "half-even",      "truncate",
                                                   "no scale", "scale twice",    "boundary+1",
                                                   "offset+1", "nibbles swapped"};

/* A float32 device: latent by float accumulation in reverse order, then
 * the quantizer in float32 (roundf: half away), with `bug`. out [G, n, r]. */
static void device_latents(const float *x, const float *proj, int32_t n, int32_t G, int32_t D,
                           int32_t r, kq_storage storage, const kq_segment *segs0, int32_t n_segs,
                           qbug bug, double *out) {
  kq_segment segs[KQ_MAX_SEGMENTS];
  memcpy(segs, segs0, sizeof(kq_segment) * (size_t)n_segs);
  for (int32_t k = 0; bug == QB_BOUNDARY && k + 1 < n_segs; k++)
    if (segs[k].bits == KQ_SEG_Q8 && segs[k + 1].bits == KQ_SEG_Q4) {
      segs[k].width++, segs[k + 1].width--;
      break;
    }
  float lat[1024];
  for (int32_t g = 0; g < G; g++)
    for (int32_t t = 0; t < n; t++) {
      const float *xt = x + ((size_t)t * G + g) * D;
      const float *p = proj + (size_t)g * D * r;
      for (int32_t j = 0; j < r; j++) {
        float acc = 0.0f;
        for (int32_t i = D - 1; i >= 0; i--) acc += xt[i] * p[(size_t)i * r + j];
        lat[j] = acc;
      }
      double *o = out + ((size_t)g * n + t) * r;
      for (int32_t k = 0, start = 0; k < n_segs; start += segs[k].width, k++) {
        int32_t w = segs[k].width;
        if (segs[k].bits == KQ_SEG_FLOAT) {
          for (int32_t j = 0; j < w; j++)
            o[start + j] =
                storage == KQ_STORAGE_F16 ? kqc_round_f16(lat[start + j]) : lat[start + j];
          continue;
        }
        float qmax = segs[k].bits == KQ_SEG_Q8 ? 127.0f : 7.0f, amax = 0.0f;
        for (int32_t j = 0; j < w; j++) amax = fmaxf(amax, fabsf(lat[start + j]));
        float sc = (float)kqc_round_f16(amax / qmax);
        for (int32_t j = 0; j < w; j++) {
          float y = sc > 0 ? lat[start + j] / sc : 0.0f;
          float q = bug == QB_HALF_EVEN ? rintf(y) : bug == QB_TRUNCATE ? truncf(y) : roundf(y);
          q = fminf(fmaxf(q, -qmax), qmax);
          double v = bug == QB_NO_SCALE      ? q
                     : bug == QB_SCALE_TWICE ? (double)q * sc * sc
                                             : (double)q * sc;
          o[start + j] = v;
        }
        if (bug == QB_OFFSET && k == n_segs - 1) /* the last segment's dims one late */
          for (int32_t j = 0; j < w; j++) o[start + j] = j + 1 < w ? o[start + j + 1] : 0.0;
        if (bug == QB_NIBBLES && segs[k].bits == KQ_SEG_Q4)
          for (int32_t j = 0; j + 1 < w; j += 2) {
            double a = o[start + j];
            o[start + j] = o[start + j + 1], o[start + j + 1] = a;
          }
      }
    }
}

typedef struct qshape {
  int32_t d, H, Hk, rk, rv, n, m;
  kq_layout latent;
  kqc_recipe kr, vr;
  kq_storage storage;
  int32_t ties; /* identity projections and tie data */
} qshape;

/* The case's reference (kqc_ref_project_seg: latents, alternatives,
 * statistics) against an emulated device with `bug`; returns the device's
 * NMSE and sets *thr to the case threshold. */
static double quantized_nmse(const qshape *q, uint64_t seed, qbug bug, double *thr,
                             int64_t *at_risk) {
  int joint = q->latent == KQ_LAYOUT_JOINT;
  int32_t G = joint ? 1 : q->Hk, D = joint ? q->Hk * q->d : q->d;
  int32_t rk = q->ties ? D : q->rk, rv = q->ties ? D : q->rv;
  kqc_rng rng;
  kqc_rng_seed(&rng, seed);
  kq_segment ks[KQ_MAX_SEGMENTS], vs[KQ_MAX_SEGMENTS];
  int32_t nk = kqc_recipe_segments(q->kr, rk, ks), nv = kqc_recipe_segments(q->vr, rv, vs);
  assert_true(nk > 0 && nv > 0);
  size_t kd = (size_t)G * D;
  float *A = calloc(kd * rk, sizeof(float)), *B = calloc(kd * rk, sizeof(float));
  float *C = calloc(kd * rv, sizeof(float)), *E = calloc(kd * rv, sizeof(float));
  float *k = malloc(sizeof(float) * kd * q->n), *v = malloc(sizeof(float) * kd * q->n);
  float *qq = malloc(sizeof(float) * (size_t)q->m * q->H * q->d);
  assert_true(A && B && C && E && k && v && qq);
  if (q->ties) {
    for (int32_t g = 0; g < G; g++)
      for (int32_t i = 0; i < D; i++) {
        size_t at = ((size_t)g * D + i) * D + i;
        A[at] = B[at] = C[at] = E[at] = 1.0f;
      }
    kqc_fill_ties(&rng, k, 0, q->n, G, D, ks, nk);
    kqc_fill_ties(&rng, v, 0, q->n, G, D, vs, nv);
  } else {
    assert_int_equal(kqc_make_projection_pair(&rng, G, D, rk, sqrt((double)D / rk), A, B), 0);
    assert_int_equal(kqc_make_projection_pair(&rng, G, D, rv, 1.0, C, E), 0);
    kqc_fill_normal(&rng, k, kd * q->n, 1.0);
    kqc_fill_normal(&rng, v, kd * q->n, 1.0);
  }
  kqc_fill_normal(&rng, qq, (size_t)q->m * q->H * q->d, 1.5);
  size_t kn = (size_t)G * q->n * rk, vn = (size_t)G * q->n * rv, on = (size_t)q->m * q->H * q->d;
  double *kl = malloc(sizeof(double) * kn), *vl = malloc(sizeof(double) * vn);
  double *ka = malloc(sizeof(double) * kn), *va = malloc(sizeof(double) * vn);
  double *kdv = malloc(sizeof(double) * kn), *vdv = malloc(sizeof(double) * vn);
  double *ref = malloc(sizeof(double) * on), *alt = malloc(sizeof(double) * on);
  double *dev = malloc(sizeof(double) * on);
  assert_true(kl && vl && ka && va && kdv && vdv && ref && alt && dev);
  kqc_quant_stats qs = {0};
  assert_int_equal(
      kqc_ref_project_seg(k, A, q->n, G, D, rk, q->storage, ks, nk, kl, ka, q->n, 0, &qs.keys), 0);
  assert_int_equal(
      kqc_ref_project_seg(v, C, q->n, G, D, rv, q->storage, vs, nv, vl, va, q->n, 0, &qs.values),
      0);
  device_latents(k, A, q->n, G, D, rk, q->storage, ks, nk, bug, kdv);
  device_latents(v, C, q->n, G, D, rv, q->storage, vs, nv, bug, vdv);
  kqc_ref_problem pb = {q->H, q->Hk, q->d, rk, rv,   KQ_ROPE_POST, KQ_ROPE_PAIRS,
                        1e4,  A,     B,    E,  NULL, q->latent};
  kqc_ref_stats st;
  assert_int_equal(kqc_ref_attend(&pb, kl, vl, q->n, q->n, q->m, qq, KQ_OUTPUT_FULL, ref, &st), 0);
  assert_int_equal(kqc_ref_attend(&pb, ka, va, q->n, q->n, q->m, qq, KQ_OUTPUT_FULL, alt, NULL), 0);
  assert_int_equal(kqc_ref_attend(&pb, kdv, vdv, q->n, q->n, q->m, qq, KQ_OUTPUT_FULL, dev, NULL),
                   0);
  qs.alt_nmse = nmse(alt, ref, on);
  kqc_case c = {.head_dim = q->d,
                .rank_k = rk,
                .rank_v = rv,
                .n_heads = q->H,
                .n_kv_heads = q->Hk,
                .n_ctx = q->n,
                .m = q->m,
                .storage = q->storage,
                .rope = KQ_ROPE_POST,
                .output = KQ_OUTPUT_FULL,
                .key_recipe = q->kr,
                .value_recipe = q->vr,
                .latent = q->latent,
                .ties = q->ties};
  *thr = kqc_case_threshold(&c, &st, &qs);
  *at_risk = qs.keys.at_risk + qs.values.at_risk;
  double e = nmse(dev, ref, on);
  free(A), free(B), free(C), free(E), free(k), free(v), free(qq);
  free(kl), free(vl), free(ka), free(va), free(kdv), free(vdv), free(ref), free(alt), free(dev);
  return e;
}

static const qshape g_qshapes[] = {
    /* d  H  Hk  rk  rv   n   m  latent               keys      values    storage        ties */
    {64, 4, 2, 16, 16, 200, 5, KQ_LAYOUT_PER_HEAD, KQC_Q8, KQC_Q8, KQ_STORAGE_F32, 0},
    {64, 4, 2, 32, 24, 200, 5, KQ_LAYOUT_PER_HEAD, KQC_MIX, KQC_TAIL, KQ_STORAGE_F16, 0},
    {64, 8, 2, 96, 64, 200, 1, KQ_LAYOUT_JOINT, KQC_TAIL, KQC_MIX, KQ_STORAGE_F32, 0},
    {64, 4, 2, 0, 0, 64, 5, KQ_LAYOUT_PER_HEAD, KQC_Q8, KQC_Q4, KQ_STORAGE_F32, 1},
    {32, 4, 2, 0, 0, 64, 5, KQ_LAYOUT_JOINT, KQC_Q4, KQC_Q8, KQ_STORAGE_F32, 1},
};

/* A correct float32 device stays below the threshold on every seed (flips
 * included), and every planted quantizer bug lands above it: 100x for
 * rounding, scale, offset and nibble-order bugs, 5x for one dim given the
 * neighbouring segment's format. Half-even rounding shows only on ties,
 * so the tie shapes carry it. */
static void thresholds_separate_quantizer_bugs_from_rounding(void **state) {
  (void)state;
  for (size_t s = 0; s < sizeof g_qshapes / sizeof g_qshapes[0]; s++) {
    const qshape *q = &g_qshapes[s];
    double worst = 0, thr = 0;
    int64_t risk = 0, risk_total = 0;
    for (uint64_t seed = 0; seed < 8; seed++) {
      double e = quantized_nmse(q, 5000 + 17 * s + seed, QB_NONE, &thr, &risk);
      risk_total += risk;
      worst = fmax(worst, e / thr);
      assert_true(e <= thr);
    }
    print_message("qshape %zu: correct device at most %.3g of its threshold (%lld roundings at "
                  "risk over 8 seeds)\n",
                  s, worst, (long long)risk_total);
    for (int b = QB_HALF_EVEN; b < QB_COUNT; b++) {
      if (b == QB_HALF_EVEN && !q->ties) continue; /* no ties in random data */
      int has_q4 = q->kr == KQC_Q4 || q->vr == KQC_Q4 || q->kr == KQC_MIX || q->vr == KQC_MIX ||
                   q->kr == KQC_TAIL || q->vr == KQC_TAIL;
      int has_boundary =
          q->kr == KQC_MIX || q->vr == KQC_MIX || q->kr == KQC_TAIL || q->vr == KQC_TAIL;
      if ((b == QB_NIBBLES && !has_q4) || (b == QB_BOUNDARY && !has_boundary)) continue;
      double e = quantized_nmse(q, 5000 + 17 * s, (qbug)b, &thr, &risk);
      print_message("qshape %zu bug %-15s: NMSE %.3e, threshold %.3e (%.0fx)\n", s, g_qbug_names[b],
                    e, thr, e / thr);
      /* A dim quantized in the neighbouring format is a small error (one dim
       * of a row, q4 against q8 rounding); every other bug is gross. */
      assert_true(e > (b == QB_BOUNDARY ? 5 : 100) * thr);
    }
  }
}

/* The table covers every value the issue asks for. */
static void case_table_covers_every_dimension(void **state) {
  (void)state;
  int n;
  const kqc_case *cs = kqc_cases(&n);
  assert_true(n <=
              65); /* software devices run the whole table in CI (the 65th: long positions, 2 s) */
  /* Every kind of non-finite input (kqsvd.h's IEEE rule), in both layouts. */
  for (int kind = KQC_NF_KEY_NAN; kind <= KQC_NF_QUERY_NAN; kind++) {
    int seen = 0;
    for (int j = 0; j < n; j++) seen |= cs[j].nonfinite == (kqc_nonfinite)kind;
    assert_true(seen);
  }
  int nf_joint = 0, nf_quant = 0;
  for (int j = 0; j < n; j++)
    if (cs[j].nonfinite) {
      nf_joint |= cs[j].latent == KQ_LAYOUT_JOINT;
      nf_quant |= cs[j].key_recipe != KQC_FLOAT;
    }
  assert_true(nf_joint && nf_quant);
  int dims[] = {64, 80, 96, 128, 256}, ctxs[] = {0, 1, 7, 64, 1000, 4099}, ms[] = {1, 5, 64},
      groups[] = {1, 2, 4, 8};
  for (int i = 0; i < 5; i++) {
    int found = 0, r1 = 0, rq = 0, rodd = 0, rh = 0, rid = 0;
    for (int j = 0; j < n; j++) {
      if (cs[j].head_dim != dims[i]) continue;
      found = 1;
      int d = dims[i], rk = cs[j].rank_k, rv = cs[j].rank_v;
      r1 |= rk == 1 || rv == 1, rq |= rk == d / 4 || rv == d / 4, rh |= rk == d / 2 || rv == d / 2;
      rodd |= rk % 2 || rv % 2, rid |= cs[j].identity && rk == d && rv == d;
    }
    assert_true(found && r1 && rq && rodd && rh && rid);
  }
  for (int i = 0; i < 6; i++) {
    int found = 0;
    for (int j = 0; j < n; j++) found |= cs[j].n_ctx == ctxs[i];
    assert_true(found);
  }
  for (int i = 0; i < 3; i++) {
    int found = 0;
    for (int j = 0; j < n; j++) found |= cs[j].m == ms[i] && !cs[j].expect_error;
    assert_true(found);
  }
  for (int i = 0; i < 4; i++) {
    int found = 0;
    for (int j = 0; j < n; j++) found |= cs[j].n_heads / cs[j].n_kv_heads == groups[i];
    assert_true(found);
  }
  int mask = 0;
  for (int j = 0; j < n; j++) {
    mask |= 1 << (cs[j].storage + 0) | 1 << (2 + cs[j].output) | 1 << (4 + cs[j].append);
    mask |= 1 << (6 + cs[j].rope * 2 + cs[j].layout);
    mask |= (cs[j].truncate_to > 0) << 12 | (cs[j].n_ctx == 0 && cs[j].expect_error) << 13;
    mask |= (cs[j].layer == 1) << 14;
  }
  assert_int_equal(mask, (1 << 15) - 1);
  /* names are unique (they seed the data and are what filters match) */
  for (int i = 0; i < n; i++)
    for (int j = i + 1; j < n; j++) {
      char a[128], b[128];
      kqc_case_name(&cs[i], a, sizeof a), kqc_case_name(&cs[j], b, sizeof b);
      assert_string_not_equal(a, b);
    }
}

/* The quantized / JOINT cases cover what SPEC §1b asks of a device. */
static void case_table_covers_quantized_segments_and_joint(void **state) {
  (void)state;
  int n, recipes_k = 0, recipes_v = 0, ms = 0, mask = 0, odd_q8 = 0;
  const kqc_case *cs = kqc_cases(&n);
  for (int j = 0; j < n; j++) {
    const kqc_case *c = &cs[j];
    if (!kqc_case_uses_v2(c)) continue;
    int joint = c->latent == KQ_LAYOUT_JOINT, D = joint ? c->n_kv_heads * c->head_dim : c->head_dim;
    int rk = c->ties ? D : c->rank_k, rv = c->ties ? D : c->rank_v;
    assert_true(rk == c->rank_k && rv == c->rank_v && rk <= D && rv <= D);
    kq_segment segs[KQ_MAX_SEGMENTS];
    int32_t nk = kqc_recipe_segments(c->key_recipe, rk, segs);
    assert_true(nk >= 0);
    for (int32_t k = 0; k < nk; k++) odd_q8 |= segs[k].bits == KQ_SEG_Q8 && segs[k].width % 2;
    int32_t nv = kqc_recipe_segments(c->value_recipe, rv, segs);
    assert_true(nv >= 0);
    for (int32_t k = 0; k < nv; k++) odd_q8 |= segs[k].bits == KQ_SEG_Q8 && segs[k].width % 2;
    assert_false(joint && c->rope == KQ_ROPE_PRE); /* refused by the SPEC */
    recipes_k |= 1 << c->key_recipe, recipes_v |= 1 << c->value_recipe;
    ms |= (c->m == 1) | (c->m == 5) << 1 | (c->m == 64) << 2;
    mask |= (!joint && c->rope == KQ_ROPE_PRE) << 0 | (joint && c->n_kv_heads == 1) << 1;
    mask |= (joint && c->n_kv_heads > 1) << 2 | (joint && c->rank_k > c->head_dim) << 3;
    mask |= (c->storage == KQ_STORAGE_F16) << 4 | (c->storage == KQ_STORAGE_F32) << 5;
    mask |= (c->append == KQC_APPEND_CHUNKS) << 6 | (c->truncate_to > 0) << 7;
    mask |= (c->layer == 1) << 8 | (c->ties && !joint) << 9 | (c->ties && joint) << 10;
    mask |= (c->rope == KQ_ROPE_NONE) << 11 | (c->rope == KQ_ROPE_POST) << 12;
    mask |= (c->n_heads > c->n_kv_heads) << 13 | (c->output == KQ_OUTPUT_LATENT) << 14;
    mask |= (c->output == KQ_OUTPUT_FULL) << 15 | (joint && c->rank_v > c->head_dim) << 16;
  }
  assert_int_equal(recipes_k & 0x3e, 0x3e); /* q8 q4 mix tail odd */
  assert_int_equal(recipes_v & 0x3e, 0x3e);
  assert_int_equal(ms, 7);
  assert_int_equal(mask, (1 << 17) - 1);
  assert_true(odd_q8);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(f16_rounding_is_nearest_even_with_subnormals_and_overflow),
      cmocka_unit_test(rope_rotates_the_documented_pairs_by_pos_times_theta_power),
      cmocka_unit_test(rope_preserves_norms_and_logits_depend_only_on_relative_position),
      cmocka_unit_test(reference_matches_full_space_brute_force),
      cmocka_unit_test(identity_projections_give_plain_attention),
      cmocka_unit_test(reference_refuses_m_outside_the_context),
      cmocka_unit_test(thresholds_separate_bugs_from_rounding),
      cmocka_unit_test(case_table_covers_every_dimension),
      cmocka_unit_test(quantizer_rounds_half_away_with_a_binary16_scale),
      cmocka_unit_test(recipes_cover_the_rank_with_valid_formats),
      cmocka_unit_test(case_table_covers_quantized_segments_and_joint),
      cmocka_unit_test(thresholds_separate_quantizer_bugs_from_rounding),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
