/*
 * seq_projections.h — the shared fixture of the sequence tests
 * (tests/engine/test_sequences.c, tests/opencl/test_opencl_sequences.c):
 * cache variants, a deterministic random fill, the relative difference the
 * tests compare with, and random projections of
 * ranks below head_dim (so nothing is the identity), optionally with
 * float + q8 + q4 segments on both sides. Header-only; include after
 * <cmocka.h> and "kqsvd.h".
 */
#ifndef KQ_TEST_SEQ_PROJECTIONS_H
#define KQ_TEST_SEQ_PROJECTIONS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "common/test_rng.h"

typedef struct variant {
  kq_rope_mode rope;
  kq_layout layout;
  kq_storage storage;
  int quantized; /* key/value segments: float + q8 + q4 */
} variant;

/* x[0..n) uniform in [-1, 1), the same for the same seed. */
static void fill(float *x, size_t n, uint64_t seed) {
  uint64_t rng = seed * 2654435761u + 17;
  test_rng_fill(x, n, &rng, 1.0f);
}

/* Projections of `n_layers` layers (h query heads, hk kv heads, head_dim d)
 * of variant v: ranks 12 / 10 per head, 20 / 18 joint, random entries (seed
 * 100 + 10·layer per matrix), segments when v->quantized. */
static kq_projections *make_projections_of(const variant *v, int n_layers, int h, int hk, int d) {
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = n_layers,
                              .n_heads = h,
                              .n_kv_heads = hk,
                              .head_dim = d,
                              .rope = v->rope,
                              .rope_layout = KQ_ROPE_PAIRS,
                              .rope_theta = 10000.0f,
                              .layout = v->layout};
  const int joint = v->layout == KQ_LAYOUT_JOINT;
  int32_t rk[8], rv[8];
  assert_true(n_layers >= 1 && n_layers <= 8);
  for (int l = 0; l < n_layers; l++) {
    rk[l] = joint ? 20 : 12;
    rv[l] = joint ? 18 : 10;
  }
  kq_projections *p = NULL;
  assert_int_equal(kq_projections_create(&info, rk, rv, &p), KQ_OK);
  const size_t rows_down = (size_t)hk * d; /* per-head [Hk, d, r] or joint [Hk·d, r]: same count */
  for (int l = 0; l < n_layers; l++) {
    kq_projection_layer pl;
    assert_int_equal(kq_projections_layer(p, l, &pl), KQ_OK);
    fill(pl.key_down, rows_down * (size_t)rk[l], 100 + 10 * (uint64_t)l);
    fill(pl.query_down, rows_down * (size_t)rk[l], 101 + 10 * (uint64_t)l);
    fill(pl.value_down, rows_down * (size_t)rv[l], 102 + 10 * (uint64_t)l);
    fill(pl.value_up, rows_down * (size_t)rv[l], 103 + 10 * (uint64_t)l);
    if (v->quantized) {
      kq_segment ks[3] = {{4, KQ_SEG_FLOAT}, {rk[l] - 8, KQ_SEG_Q8}, {4, KQ_SEG_Q4}};
      kq_segment vs[3] = {{2, KQ_SEG_FLOAT}, {rv[l] - 6, KQ_SEG_Q8}, {4, KQ_SEG_Q4}};
      assert_int_equal(kq_projections_set_segments(p, l, KQ_SIDE_KEYS, 3, ks), KQ_OK);
      assert_int_equal(kq_projections_set_segments(p, l, KQ_SIDE_VALUES, 3, vs), KQ_OK);
    }
  }
  return p;
}

/* ‖a − b‖ / ‖b‖ in double (‖a − b‖ when b is all zeros). */
static double rel_diff(const float *a, const float *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    den += (double)b[i] * b[i];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

#endif
