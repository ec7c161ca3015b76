/*
 * test_long_context.c — a long decode and a long prefill on the device named
 * by argv[1] (vulkan:0, opencl:0) against the CPU backend, through the public
 * API: contexts far past the conformance suite's, where a kernel's chunking
 * or loop bounds can go wrong without any error. Found this way: Mesa
 * llvmpipe stops shader loops after 65535 back edges in all (then the
 * invocation goes on with partial sums), and RoPE pre rebuilds each key in
 * the kernel at 33 back edges per step at rank 128: before the Vulkan chunk
 * cap (vk_split.h, vk_loop_chunk_cap) decodes of 16k and 33k positions and
 * a 6k prefill of 16 queries came out wrong on lavapipe (NaN, NMSE 0.85 and
 * 0.9; capped, 4e-12 to 1e-11; KQSVD_VULKAN_LOOP_LIMIT=0 turns the cap off
 * and shows it again). Exits 77 (ctest SKIP) when the device is absent.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/test_check.h"
#include "common/test_rng.h"
#include "kqsvd.h"

static const char *g_device = "vulkan:0";

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
  test_rng_fill(L.key_down, (size_t)Hk * d * rk, &seed, 0.3f);
  test_rng_fill(L.query_down, (size_t)Hk * d * rk, &seed, 0.3f);
  test_rng_fill(L.value_down, (size_t)Hk * d * rv, &seed, 1.0f);
  test_rng_fill(L.value_up, (size_t)Hk * d * rv, &seed, 1.0f);

  const size_t row = (size_t)Hk * d, qrow = (size_t)H * d;
  float *K = malloc((size_t)n_ctx * row * 4), *V = malloc((size_t)n_ctx * row * 4);
  float *Q = malloc((size_t)n_q * qrow * 4);
  float *out = malloc((size_t)n_q * qrow * 4), *want = malloc((size_t)n_q * qrow * 4);
  assert_non_null(K && V && Q && out && want);
  test_rng_fill(K, (size_t)n_ctx * row, &seed, 1.0f);
  test_rng_fill(V, (size_t)n_ctx * row, &seed, 1.0f);
  test_rng_fill(Q, (size_t)n_q * qrow, &seed, 1.0f);

  kq_device *dev = NULL, *cpu = NULL;
  KQ_TEST_OK(kq_device_create(g_device, &dev));
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
  print_message("%s: ctx %d, %d queries: NMSE %.3g\n", g_device, n_ctx, n_q, num / den);
  if (!(num <= 1e-8 * den))
    fail_msg("%s: ctx %d, %d queries: NMSE %.3g against the CPU backend", g_device, n_ctx, n_q,
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

int main(int argc, char **argv) {
  if (argc > 1) g_device = argv[1];
  kq_device *probe = NULL;
  if (kq_device_create(g_device, &probe) != KQ_OK) {
    printf("SKIP: device %s: %s\n", g_device, kq_last_error());
    return 77;
  }
  kq_device_destroy(probe);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_long_decode_rope_pre_matches_cpu),
      cmocka_unit_test(test_long_prefill_rope_pre_matches_cpu),
  };
  return cmocka_run_group_tests_name(g_device, tests, NULL, NULL);
}
