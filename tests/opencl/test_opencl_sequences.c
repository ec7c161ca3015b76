/*
 * test_opencl_sequences.c — more sequences than one OpenCL launch covers
 * (KQ_OCL_SEQS = 16): a batched append / attend over 20 sequences on
 * opencl:0 (projection and store, decode, and prefill with and without
 * RoPE PRE, one launch per step for each 16 sequences) equals 20
 * single-sequence caches fed the same tokens, at 1e-6 relative per
 * sequence, for float, F16, quantized and joint caches. Exits 77 (SKIPPED)
 * when there is no OpenCL device.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kqsvd.h"

enum { NL = 1, H = 4, HK = 2, D = 16, NS = 20, CAP = 64, MAXROWS = 512 };

#include "../engine/seq_projections.h"

static kq_projections *make_projections(const variant *v) {
  return make_projections_of(v, NL, H, HK, D);
}

static uint64_t dispatches(kq_device *dev) {
  kq_device_stats st = {.struct_size = sizeof st};
  if (kq_device_get_stats(dev, &st) != KQ_OK) fail_msg("%s", kq_last_error());
  return st.dispatches;
}

/* One batched append + attend over `spans` against the same rows appended
 * to / attended from the single-sequence caches, both output kinds. The
 * batch is enqueued per 16 sequences, not per sequence: an append takes at
 * most (projection + 3 segment stores) per side and 16 sequences, an
 * attend at most 6 launches per 16 sequences. */
static void step_and_compare(kq_device *dev, kq_cache *batched, kq_cache **single, int32_t rank_v,
                             uint64_t seed, int n_spans, const kq_seq_span *spans) {
  static float k[MAXROWS * HK * D], v[MAXROWS * HK * D], q[MAXROWS * H * D];
  static float out_b[MAXROWS * H * D], out_s[MAXROWS * H * D];
  int rows = 0;
  for (int i = 0; i < n_spans; i++) rows += spans[i].n_tokens;
  assert_true(rows <= MAXROWS);
  fill(k, (size_t)rows * HK * D, 1000 + seed);
  fill(v, (size_t)rows * HK * D, 2000 + seed);
  fill(q, (size_t)rows * H * D, 3000 + seed);
  const uint64_t launches = (uint64_t)(n_spans + 15) / 16;
  uint64_t d0 = dispatches(dev);
  if (kq_cache_append_batch(batched, 0, n_spans, spans, k, v)) fail_msg("%s", kq_last_error());
  if (dispatches(dev) - d0 > 2 * 4 * launches)
    fail_msg("append of %d sequences: %d dispatches", n_spans, (int)(dispatches(dev) - d0));
  int row = 0;
  for (int i = 0; i < n_spans; i++) {
    assert_int_equal(kq_cache_append(single[spans[i].seq], 0, spans[i].n_tokens,
                                     k + (size_t)row * HK * D, v + (size_t)row * HK * D),
                     KQ_OK);
    row += spans[i].n_tokens;
  }
  for (int kind = 0; kind < 2; kind++) {
    const kq_output o = kind ? KQ_OUTPUT_LATENT : KQ_OUTPUT_FULL;
    const size_t width = kind ? (size_t)rank_v : D;
    d0 = dispatches(dev);
    if (kq_cache_attend_batch(batched, 0, n_spans, spans, q, o, out_b))
      fail_msg("%s", kq_last_error());
    if (dispatches(dev) - d0 > 6 * launches)
      fail_msg("attend of %d sequences: %d dispatches", n_spans, (int)(dispatches(dev) - d0));
    row = 0;
    for (int i = 0; i < n_spans; i++) {
      const size_t n = (size_t)spans[i].n_tokens * H * width;
      assert_int_equal(kq_cache_attend(single[spans[i].seq], 0, spans[i].n_tokens,
                                       q + (size_t)row * H * D, o, out_s),
                       KQ_OK);
      const double e = rel_diff(out_b + (size_t)row * H * width, out_s, n);
      if (!(e <= 1e-6))
        fail_msg("sequence %d (%d rows), %s output: relative difference %g", (int)spans[i].seq,
                 (int)spans[i].n_tokens, kind ? "latent" : "full", e);
      row += spans[i].n_tokens;
    }
  }
}

/* Prefill of different lengths (1 .. 40 rows, 20 sequences in one batch),
 * then two decode steps of all 20. */
static void run_variant(const variant *var) {
  kq_device *dev = NULL;
  assert_int_equal(kq_device_create("opencl:0", &dev), KQ_OK);
  kq_projections *proj = make_projections(var);
  kq_projection_layer pl;
  assert_int_equal(kq_projections_layer(proj, 0, &pl), KQ_OK);
  kq_cache_params cp = kq_cache_default_params();
  cp.storage = var->storage;
  cp.capacity = CAP;
  kq_cache *single[NS], *batched = NULL;
  for (int s = 0; s < NS; s++) assert_int_equal(kq_cache_create(dev, proj, &cp, &single[s]), KQ_OK);
  cp.n_seqs = NS;
  assert_int_equal(kq_cache_create(dev, proj, &cp, &batched), KQ_OK);
  { /* CLBlast compiles its kernels on the device's first GEMM (counted as
     * dispatches): a throwaway prefill takes that out of the counts. */
    static float kv[40 * HK * D];
    fill(kv, 40 * HK * D, 7);
    kq_cache *warm = NULL;
    cp.n_seqs = 1;
    assert_int_equal(kq_cache_create(dev, proj, &cp, &warm), KQ_OK);
    assert_int_equal(kq_cache_append(warm, 0, 40, kv, kv), KQ_OK);
    kq_cache_destroy(warm);
    cp.n_seqs = NS;
  }
  kq_seq_span spans[NS];
  for (int s = 0; s < NS; s++) /* reverse order of ids; lengths 1 .. 40 */
    spans[s] = (kq_seq_span){.seq = NS - 1 - s, .n_tokens = 1 + (s * 13) % 40};
  step_and_compare(dev, batched, single, pl.rank_v, 1, NS, spans);
  for (int s = 0; s < NS; s++) spans[s] = (kq_seq_span){.seq = s, .n_tokens = 1};
  for (int t = 0; t < 2; t++) step_and_compare(dev, batched, single, pl.rank_v, 2 + t, NS, spans);
  kq_cache_destroy(batched);
  for (int s = 0; s < NS; s++) kq_cache_destroy(single[s]);
  kq_projections_destroy(proj);
  kq_device_destroy(dev);
}

static void test_f32_post_batches_equal_single_caches(void **s) {
  (void)s;
  run_variant(&(variant){KQ_ROPE_POST, KQ_LAYOUT_PER_HEAD, KQ_STORAGE_F32, 0});
}
static void test_f16_batches_equal_single_caches(void **s) {
  (void)s;
  run_variant(&(variant){KQ_ROPE_NONE, KQ_LAYOUT_PER_HEAD, KQ_STORAGE_F16, 0});
}
static void test_f32_pre_batches_equal_single_caches(void **s) {
  (void)s;
  run_variant(&(variant){KQ_ROPE_PRE, KQ_LAYOUT_PER_HEAD, KQ_STORAGE_F32, 0});
}
static void test_quantized_batches_equal_single_caches(void **s) {
  (void)s;
  run_variant(&(variant){KQ_ROPE_NONE, KQ_LAYOUT_PER_HEAD, KQ_STORAGE_F16, 1});
}
static void test_quantized_pre_batches_equal_single_caches(void **s) {
  (void)s;
  run_variant(&(variant){KQ_ROPE_PRE, KQ_LAYOUT_PER_HEAD, KQ_STORAGE_F32, 1});
}
static void test_joint_quantized_batches_equal_single_caches(void **s) {
  (void)s;
  run_variant(&(variant){KQ_ROPE_POST, KQ_LAYOUT_JOINT, KQ_STORAGE_F16, 1});
}

int main(void) {
  kq_device *dev = NULL;
  if (kq_device_create("opencl:0", &dev) != KQ_OK) {
    printf("SKIPPED: no OpenCL device (%s)\n", kq_last_error());
    return 77;
  }
  kq_device_destroy(dev);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_f32_post_batches_equal_single_caches),
      cmocka_unit_test(test_f16_batches_equal_single_caches),
      cmocka_unit_test(test_f32_pre_batches_equal_single_caches),
      cmocka_unit_test(test_quantized_batches_equal_single_caches),
      cmocka_unit_test(test_quantized_pre_batches_equal_single_caches),
      cmocka_unit_test(test_joint_quantized_batches_equal_single_caches),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
