/*
 * test_opencl_stats.c — structural costs of opencl:0 through the public API
 * (kq_device_get_stats): after warm-up, one decode step on one layer (append
 * one token, attend one query) allocates no device memory and blocks the
 * host exactly once, for the download of the result. Exits 77 (SKIPPED)
 * when there is no OpenCL device.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/test_rng.h"
#include "kqsvd.h"

/* ctest's SKIP_RETURN_CODE for "no OpenCL device here". */
#define KQ_OCL_SKIP 77

/* Deterministic uniform values in [-scale, scale], the same for the same
 * seed (the first number of the seed's stream is skipped). */
static void fill(float *x, size_t n, uint64_t seed, float scale) {
  uint64_t s = seed;
  (void)test_rng_u64(&s);
  test_rng_fill(x, n, &s, scale);
}

enum { L = 2, H = 8, HK = 2, D = 64, RK = 32, RV = 24, PREFILL = 300, CAP = 1024 };

/* Projections with the given RoPE mode; segmented: keys [q8 24, q4 8],
 * values [float 8, q4 16] on every layer. */
static kq_projections *make_projections(kq_rope_mode rope, int segmented) {
  kq_projections_info info = {KQ_METHOD_KQSVD,   L, H, HK, D, rope, KQ_ROPE_HALVES, 1e4f,
                              KQ_LAYOUT_PER_HEAD};
  int32_t rk[L] = {RK, RK}, rv[L] = {RV, RV};
  kq_projections *proj = NULL;
  assert_int_equal(kq_projections_create(&info, rk, rv, &proj), KQ_OK);
  for (int l = 0; l < L; ++l) {
    kq_projection_layer pl;
    assert_int_equal(kq_projections_layer(proj, l, &pl), KQ_OK);
    fill(pl.key_down, HK * D * RK, 10 + l, 0.3f);
    fill(pl.query_down, HK * D * RK, 20 + l, 0.3f);
    fill(pl.value_down, HK * D * RV, 30 + l, 0.3f);
    fill(pl.value_up, HK * D * RV, 40 + l, 0.3f);
    if (segmented) {
      const kq_segment ks[2] = {{24, KQ_SEG_Q8}, {8, KQ_SEG_Q4}};
      const kq_segment vs[2] = {{8, KQ_SEG_FLOAT}, {16, KQ_SEG_Q4}};
      assert_int_equal(kq_projections_set_segments(proj, l, KQ_SIDE_KEYS, 2, ks), KQ_OK);
      assert_int_equal(kq_projections_set_segments(proj, l, KQ_SIDE_VALUES, 2, vs), KQ_OK);
    }
  }
  return proj;
}

static void get_stats(kq_device *dev, kq_device_stats *s) {
  memset(s, 0, sizeof *s);
  s->struct_size = sizeof *s;
  kq_status st = kq_device_get_stats(dev, s);
  if (st != KQ_OK) fail_msg("kq_device_get_stats: %s", kq_last_error());
}

/* Prefill, then decode steps on layer 1; the last step is measured. */
static void check_decode_step(kq_storage storage, kq_rope_mode rope, int segmented,
                              kq_output output) {
  kq_projections *proj = make_projections(rope, segmented);
  kq_device *dev = NULL;
  assert_int_equal(kq_device_create("opencl:0", &dev), KQ_OK);
  kq_cache_params cp = kq_cache_default_params();
  cp.storage = storage;
  cp.capacity = CAP;
  kq_cache *cache = NULL;
  kq_status st = kq_cache_create(dev, proj, &cp, &cache);
  if (st != KQ_OK) fail_msg("kq_cache_create: %s", kq_last_error());
  const int steps = 4;
  float *k = malloc(sizeof(float) * (PREFILL + steps) * HK * D);
  float *v = malloc(sizeof(float) * (PREFILL + steps) * HK * D);
  float q[H * D], out[H * D];
  assert_non_null(k);
  assert_non_null(v);
  fill(k, (size_t)(PREFILL + steps) * HK * D, 1, 1.0f);
  fill(v, (size_t)(PREFILL + steps) * HK * D, 2, 1.0f);
  fill(q, H * D, 3, 1.5f);
  for (int l = 0; l < L; ++l) assert_int_equal(kq_cache_append(cache, l, PREFILL, k, v), KQ_OK);
  kq_device_stats before = {0}, after = {0};
  for (int s = 0; s < steps; ++s) {
    if (s == steps - 1) get_stats(dev, &before);
    const size_t at = (size_t)(PREFILL + s) * HK * D;
    assert_int_equal(kq_cache_append(cache, 1, 1, k + at, v + at), KQ_OK);
    st = kq_cache_attend(cache, 1, 1, q, output, out);
    if (st != KQ_OK) fail_msg("kq_cache_attend: %s", kq_last_error());
  }
  get_stats(dev, &after);
  const size_t out_bytes = sizeof(float) * H * (output == KQ_OUTPUT_FULL ? D : RV);
  assert_int_equal(after.device_allocations - before.device_allocations, 0);
  assert_int_equal(after.host_waits - before.host_waits, 1);
  assert_int_equal(after.bytes_downloaded - before.bytes_downloaded, out_bytes);
  /* The new key, value and query went up (and nothing as large as a cache). */
  assert_true(after.bytes_uploaded - before.bytes_uploaded >= sizeof(float) * (2 * HK + H) * D);
  assert_true(after.bytes_uploaded - before.bytes_uploaded < sizeof(float) * 64 * H * D);
  const uint64_t dispatches = after.dispatches - before.dispatches;
  const uint64_t submits = after.submits - before.submits;
  assert_true(dispatches >= 2); /* at least a projection and an attention */
  assert_true(submits >= 1 && submits <= dispatches);
  for (int i = 0; i < (int)(out_bytes / sizeof(float)); ++i) assert_true(isfinite(out[i]));
  kq_cache_destroy(cache);
  kq_device_destroy(dev);
  kq_projections_destroy(proj);
  free(k);
  free(v);
}

static void test_f16_post_full_decode_step_waits_once_and_allocates_nothing(void **s) {
  (void)s;
  check_decode_step(KQ_STORAGE_F16, KQ_ROPE_POST, 0, KQ_OUTPUT_FULL);
}
static void test_f32_pre_latent_decode_step_waits_once_and_allocates_nothing(void **s) {
  (void)s;
  check_decode_step(KQ_STORAGE_F32, KQ_ROPE_PRE, 0, KQ_OUTPUT_LATENT);
}
static void test_quantized_decode_step_waits_once_and_allocates_nothing(void **s) {
  (void)s;
  check_decode_step(KQ_STORAGE_F16, KQ_ROPE_NONE, 1, KQ_OUTPUT_FULL);
}
static void test_quantized_pre_decode_step_waits_once_and_allocates_nothing(void **s) {
  (void)s;
  check_decode_step(KQ_STORAGE_F32, KQ_ROPE_PRE, 1, KQ_OUTPUT_FULL);
}

/* The counters move with the work: a download is one host wait and its
 * bytes, an allocation one device allocation. */
static void test_counters_follow_buffer_work(void **s) {
  (void)s;
  kq_device *dev = NULL;
  assert_int_equal(kq_device_create("opencl:0", &dev), KQ_OK);
  kq_device_stats a, b;
  get_stats(dev, &a);
  double gbps = 0;
  assert_int_equal(kq_device_copy_bandwidth(dev, 1 << 20, 2, &gbps), KQ_OK);
  get_stats(dev, &b);
  assert_true(b.device_allocations > a.device_allocations); /* its source and destination */
  assert_true(b.dispatches > a.dispatches);
  assert_true(b.host_waits > a.host_waits);
  kq_device_destroy(dev);
}

int main(void) {
  kq_device *dev = NULL;
  if (kq_device_create("opencl:0", &dev) != KQ_OK) {
    printf("SKIPPED: no OpenCL device (%s)\n", kq_last_error());
    return KQ_OCL_SKIP;
  }
  kq_device_destroy(dev);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_counters_follow_buffer_work),
      cmocka_unit_test(test_f16_post_full_decode_step_waits_once_and_allocates_nothing),
      cmocka_unit_test(test_f32_pre_latent_decode_step_waits_once_and_allocates_nothing),
      cmocka_unit_test(test_quantized_decode_step_waits_once_and_allocates_nothing),
      cmocka_unit_test(test_quantized_pre_decode_step_waits_once_and_allocates_nothing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
