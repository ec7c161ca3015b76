/*
 * test_vulkan_long_chunks.c — long chunks of positions on a driver that
 * stops shader loops after a number of back edges (Mesa llvmpipe: 65535 in
 * all, then the invocation goes on with partial sums and no error). RoPE
 * pre rebuilds each key in the kernel, 33 back edges per step at rank 128:
 * before the chunk cap (vk_split.h, vk_loop_chunk_cap) decodes of 16k and
 * 33k positions and a 6k prefill of 16 queries came out wrong on lavapipe
 * (NaN, NMSE 0.85 and 0.9 against the CPU backend, where the capped runs
 * give 4e-12 to 1e-11; KQSVD_VULKAN_LOOP_LIMIT=0 turns the cap off and
 * shows it again). Here both, through the public API, must match the CPU
 * backend, and the cap itself is checked on pretend limits. Exits 77 (ctest SKIP) when no Vulkan
 * device is present (the cap checks still run).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kqsvd.h"
#include "vk_split.h"
#include "vulkan/vk_reference.h"

static char g_vk_name[32];

/* The cap on pretend limits: half the limit over the edges of a step, whole
 * steps; no limit, no cap; a step that alone takes half the limit, 0. */
static void test_chunk_cap_follows_the_limit(void **state) {
  (void)state;
  assert_true(vk_loop_chunk_cap(0, 33, 8) == UINT64_MAX);
  /* 32767 / 33 = 992 steps of 8 positions */
  assert_true(vk_loop_chunk_cap(VK_LLVMPIPE_LOOP_LIMIT, 33, 8) == 992u * 8u);
  assert_true(vk_loop_chunk_cap(VK_LLVMPIPE_LOOP_LIMIT, 1, 1) == 32767u);
  assert_true(vk_loop_chunk_cap(VK_LLVMPIPE_LOOP_LIMIT, 40000, 64) == 0);
  /* every cap keeps steps x edges within half the limit */
  for (uint64_t e = 1; e < 70000; e = e * 3 + 1) {
    const uint64_t cap = vk_loop_chunk_cap(VK_LLVMPIPE_LOOP_LIMIT, e, 4);
    assert_true(cap / 4 * e <= VK_LLVMPIPE_LOOP_LIMIT / 2);
    assert_true((cap / 4 + 1) * e > VK_LLVMPIPE_LOOP_LIMIT / 2);
  }
}

/* One layer, Llama's attention shape (32 heads on 8 kv heads, head_dim
 * 128), rank 128 both sides, RoPE pre, F32 storage: n_ctx positions
 * appended at once, then the last n_q of them attend; the Vulkan output
 * against the CPU backend's. Only summation order differs (F32 latents):
 * NMSE 1e-8 leaves room for that over 33k positions and is far below what
 * dropped steps give. */
static void run_long_case(int n_ctx, int n_q) {
  const int H = 32, Hk = 8, d = 128;
  const int32_t rk = 128, rv = 128;
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = 1,
                              .n_heads = H,
                              .n_kv_heads = Hk,
                              .head_dim = d,
                              .rope = KQ_ROPE_PRE,
                              .rope_layout = KQ_ROPE_PAIRS,
                              .rope_theta = 10000.0f,
                              .layout = KQ_LAYOUT_PER_HEAD};
  kq_projections *proj = NULL;
  KQ_TEST_OK(kq_projections_create(&info, &rk, &rv, &proj));
  kq_projection_layer L;
  KQ_TEST_OK(kq_projections_layer(proj, 0, &L));
  uint64_t seed = 91;
  /* logits of a few units (std about 12), as in a model: with much larger
   * ones the softmax is an argmax whose near ties F32 order can tip */
  vk_ref_fill(L.key_down, (size_t)Hk * d * rk, 0.3, &seed);
  vk_ref_fill(L.query_down, (size_t)Hk * d * rk, 0.3, &seed);
  vk_ref_fill(L.value_down, (size_t)Hk * d * rv, 1.0, &seed);
  vk_ref_fill(L.value_up, (size_t)Hk * d * rv, 1.0, &seed);

  const size_t row = (size_t)Hk * d, qrow = (size_t)H * d;
  float *K = malloc((size_t)n_ctx * row * 4), *V = malloc((size_t)n_ctx * row * 4);
  float *Q = malloc((size_t)n_q * qrow * 4);
  float *out = malloc((size_t)n_q * qrow * 4), *want = malloc((size_t)n_q * qrow * 4);
  assert_non_null(K && V && Q && out && want);
  vk_ref_fill(K, (size_t)n_ctx * row, 1.0, &seed);
  vk_ref_fill(V, (size_t)n_ctx * row, 1.0, &seed);
  vk_ref_fill(Q, (size_t)n_q * qrow, 1.0, &seed);

  kq_device *dev = NULL, *cpu = NULL;
  KQ_TEST_OK(kq_device_create(g_vk_name, &dev));
  KQ_TEST_OK(kq_device_create("cpu", &cpu));
  kq_cache_params params = kq_cache_default_params();
  params.storage = KQ_STORAGE_F32;
  params.capacity = n_ctx;
  kq_cache *cache = NULL, *ref = NULL;
  KQ_TEST_OK(kq_cache_create(dev, proj, &params, &cache));
  KQ_TEST_OK(kq_cache_create(cpu, proj, &params, &ref));
  KQ_TEST_OK(kq_cache_append(cache, 0, n_ctx, K, V));
  KQ_TEST_OK(kq_cache_append(ref, 0, n_ctx, K, V));
  KQ_TEST_OK(kq_cache_attend(cache, 0, n_q, Q, KQ_OUTPUT_FULL, out));
  KQ_TEST_OK(kq_cache_attend(ref, 0, n_q, Q, KQ_OUTPUT_FULL, want));

  double num = 0, den = 0;
  for (size_t i = 0; i < (size_t)n_q * qrow; ++i) {
    num += ((double)out[i] - want[i]) * ((double)out[i] - want[i]);
    den += (double)want[i] * want[i];
  }
  print_message("%s: ctx %d, %d queries: NMSE %.3g\n", g_vk_name, n_ctx, n_q, num / den);
  if (!(num <= 1e-8 * den))
    fail_msg("%s: ctx %d, %d queries: NMSE %.3g against the CPU backend", g_vk_name, n_ctx, n_q,
             num / den);

  kq_cache_destroy(cache);
  kq_cache_destroy(ref);
  kq_device_destroy(dev);
  kq_device_destroy(cpu);
  kq_projections_destroy(proj);
  free(K), free(V), free(Q), free(out), free(want);
}

/* The decode grid: on a small device one chunk per row group would hold
 * every position. */
static void test_long_decode_rope_pre_matches_cpu(void **state) {
  (void)state;
  run_long_case(20000, 1);
}

/* The tiled path (more queries than the decode grid takes): chunks of
 * several key tiles, each tile rebuilding 64 keys in the kernel. */
static void test_long_prefill_rope_pre_matches_cpu(void **state) {
  (void)state;
  run_long_case(6000, 16);
}

int main(void) {
  const struct CMUnitTest pure[] = {
      cmocka_unit_test(test_chunk_cap_follows_the_limit),
  };
  if (cmocka_run_group_tests(pure, NULL, NULL)) return 1;
  const int found = vk_test_first_device(g_vk_name, sizeof g_vk_name);
  if (found < 0) return 1;
  if (!found) {
    fprintf(stderr, "SKIP: no Vulkan device (the cap checks passed)\n");
    return 77;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_long_decode_rope_pre_matches_cpu),
      cmocka_unit_test(test_long_prefill_rope_pre_matches_cpu),
  };
  return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
