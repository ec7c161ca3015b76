/*
 * test_vulkan_prepare.c — kq_cache_create builds the pipelines its cache
 * needs (kqsvd_backend.h, prepare), counted through
 * kq_device_stats.pipelines_created, never timed: after the cache is
 * created, a prefill (40 tokens appended and attended) and decode steps (one
 * query), each with a full and a latent output, build no pipeline (the core
 * prepares the full output only: the latent output's merge is the backend's
 * to foresee), for per-head F16 float latents,
 * per-head q8/q4 segments and the joint layout; a second cache of the same shapes on the same
 * device builds none either. Exits 77 (ctest SKIP) when no Vulkan device is present.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kqsvd.h"
#include "vulkan/vk_reference.h"

static char g_vk_name[32];

typedef struct prep_case {
  kq_layout layout;
  kq_storage storage;
  int32_t n_kseg, n_vseg; /* 0: one float segment */
  kq_segment kseg[3], vseg[3];
} prep_case;

static uint64_t pipelines(const kq_device *dev) {
  kq_device_stats s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  KQ_TEST_OK(kq_device_get_stats(dev, &s));
  return s.pipelines_created;
}

static kq_projections *make_projections(const prep_case *pc, int H, int Hk, int d) {
  const int32_t rk = pc->layout == KQ_LAYOUT_JOINT ? 96 : 32;
  const int32_t rv = pc->layout == KQ_LAYOUT_JOINT ? 80 : 24;
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = 2,
                              .n_heads = H,
                              .n_kv_heads = Hk,
                              .head_dim = d,
                              .rope = KQ_ROPE_POST,
                              .rope_layout = KQ_ROPE_PAIRS,
                              .rope_theta = 10000.0f,
                              .layout = pc->layout};
  const int32_t rks[2] = {rk, rk}, rvs[2] = {rv, rv};
  kq_projections *proj = NULL;
  KQ_TEST_OK(kq_projections_create(&info, rks, rvs, &proj));
  uint64_t seed = 5;
  for (int32_t l = 0; l < 2; ++l) {
    kq_projection_layer L;
    KQ_TEST_OK(kq_projections_layer(proj, l, &L));
    vk_ref_fill(L.key_down, (size_t)Hk * d * rk, 1.2, &seed);
    vk_ref_fill(L.query_down, (size_t)Hk * d * rk, 1.2, &seed);
    vk_ref_fill(L.value_down, (size_t)Hk * d * rv, 1.0, &seed);
    vk_ref_fill(L.value_up, (size_t)Hk * d * rv, 1.0, &seed);
    if (pc->n_kseg)
      KQ_TEST_OK(kq_projections_set_segments(proj, l, KQ_SIDE_KEYS, pc->n_kseg, pc->kseg));
    if (pc->n_vseg)
      KQ_TEST_OK(kq_projections_set_segments(proj, l, KQ_SIDE_VALUES, pc->n_vseg, pc->vseg));
  }
  return proj;
}

/* Appends `n` tokens, attends with all n of them when n > 1 (a prefill),
 * then runs one decode step (one query), on every layer; every attend once
 * with a full and once with a latent output. */
static void decode_steps(kq_cache *cache, int n, int H, int Hk, int d, uint64_t *seed) {
  const size_t row = (size_t)Hk * d, qrow = (size_t)H * d;
  float *K = malloc((size_t)n * row * 4), *V = malloc((size_t)n * row * 4);
  /* out: a full [n, H, d] or latent [n, H, rank_v] output, rank_v <= 2d */
  float *q = malloc((size_t)n * qrow * 4), *out = malloc((size_t)n * qrow * 2 * 4);
  assert_non_null(K && V && q && out);
  for (int32_t l = 0; l < 2; ++l) {
    vk_ref_fill(K, (size_t)n * row, 1.0, seed);
    vk_ref_fill(V, (size_t)n * row, 1.0, seed);
    vk_ref_fill(q, (size_t)n * qrow, 1.0, seed);
    KQ_TEST_OK(kq_cache_append(cache, l, n, K, V));
    if (n > 1) KQ_TEST_OK(kq_cache_attend(cache, l, n, q, KQ_OUTPUT_FULL, out));
    if (n > 1) KQ_TEST_OK(kq_cache_attend(cache, l, n, q, KQ_OUTPUT_LATENT, out));
    KQ_TEST_OK(kq_cache_attend(cache, l, 1, q, KQ_OUTPUT_FULL, out));
    KQ_TEST_OK(kq_cache_attend(cache, l, 1, q, KQ_OUTPUT_LATENT, out));
  }
  free(K), free(V), free(q), free(out);
}

static void run_prep_case(const prep_case *pc) {
  const int H = 8, Hk = 2, d = 64;
  kq_projections *proj = make_projections(pc, H, Hk, d);
  kq_device *dev = NULL;
  KQ_TEST_OK(kq_device_create(g_vk_name, &dev));
  kq_cache_params params = kq_cache_default_params();
  params.storage = pc->storage;
  params.capacity = 256;
  const uint64_t p_open = pipelines(dev);
  kq_cache *cache = NULL;
  KQ_TEST_OK(kq_cache_create(dev, proj, &params, &cache));
  const uint64_t p_created = pipelines(dev);
  uint64_t seed = 11;
  decode_steps(cache, 40, H, Hk, d, &seed); /* a prefill and the first decode step */
  decode_steps(cache, 1, H, Hk, d, &seed);  /* an ordinary decode step */
  const uint64_t p_steps = pipelines(dev);
  if (p_steps != p_created)
    fail_msg("prefill and decode built %llu pipelines after kq_cache_create",
             (unsigned long long)(p_steps - p_created));
  /* The counter counts: a fresh device built the cache's pipelines. */
  if (p_created <= p_open) fail_msg("kq_cache_create built no pipeline");
  /* A second cache of the same shapes reuses them all. */
  kq_cache *again = NULL;
  KQ_TEST_OK(kq_cache_create(dev, proj, &params, &again));
  decode_steps(again, 3, H, Hk, d, &seed);
  assert_int_equal(pipelines(dev), p_steps);
  kq_cache_destroy(again);
  kq_cache_destroy(cache);
  kq_device_destroy(dev);
  kq_projections_destroy(proj);
}

static void test_decode_builds_no_pipeline_per_head_f16(void **state) {
  (void)state;
  prep_case pc = {.layout = KQ_LAYOUT_PER_HEAD, .storage = KQ_STORAGE_F16};
  run_prep_case(&pc);
}

static void test_decode_builds_no_pipeline_per_head_quantized(void **state) {
  (void)state;
  prep_case pc = {.layout = KQ_LAYOUT_PER_HEAD,
                  .storage = KQ_STORAGE_F16,
                  .n_kseg = 3,
                  .kseg = {{8, KQ_SEG_FLOAT}, {12, KQ_SEG_Q8}, {12, KQ_SEG_Q4}},
                  .n_vseg = 2,
                  .vseg = {{16, KQ_SEG_Q8}, {8, KQ_SEG_Q4}}};
  run_prep_case(&pc);
}

static void test_decode_builds_no_pipeline_joint(void **state) {
  (void)state;
  prep_case pc = {.layout = KQ_LAYOUT_JOINT,
                  .storage = KQ_STORAGE_F32,
                  .n_kseg = 2,
                  .kseg = {{32, KQ_SEG_FLOAT}, {64, KQ_SEG_Q8}},
                  .n_vseg = 2,
                  .vseg = {{40, KQ_SEG_Q8}, {40, KQ_SEG_Q4}}};
  run_prep_case(&pc);
}

int main(void) {
  const int found = vk_test_first_device(g_vk_name, sizeof g_vk_name);
  if (found < 0) return 1;
  if (!found) {
    fprintf(stderr, "SKIP: no Vulkan device\n");
    return 77;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_decode_builds_no_pipeline_per_head_f16),
      cmocka_unit_test(test_decode_builds_no_pipeline_per_head_quantized),
      cmocka_unit_test(test_decode_builds_no_pipeline_joint),
  };
  return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
