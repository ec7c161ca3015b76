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
 * and shows it again). Also the 0.28 q8/q4 recipe of that shape (F16,
 * post, decode and prefill) and a joint q8/q4 cache (decode). Exits 77
 * (ctest SKIP) when the device is absent.
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

/* One long case: the shape and storage of a cache. */
typedef struct long_case {
  kq_layout layout;
  kq_rope_mode rope;
  kq_storage storage;
  int32_t rank_k, rank_v;
  int32_t n_kseg, n_vseg; /* 0: one float segment */
  kq_segment kseg[3], vseg[3];
} long_case;

/* One layer, Llama's attention shape (32 heads on 8 kv heads, head_dim
 * 128): n_ctx positions appended at once, then the last n_q of them attend;
 * the device's output against the CPU backend's. Float latents differ by
 * summation order only: NMSE 1e-8 (F32) or 1e-5 (F16 storage) leaves room
 * for that over 20k positions. Quantized segments: the same quantizer, but
 * a latent computed in another order may round to the neighbouring level
 * now and then (1e-3, as the decode-step tests). Dropped steps give 0.1 and
 * more, or NaN. */
static void run_long_case(const long_case *lc, int n_ctx, int n_q) {
  const int H = 32, Hk = 8, d = 128;
  const int32_t rk = lc->rank_k, rv = lc->rank_v;
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = 1,
                              .n_heads = H,
                              .n_kv_heads = Hk,
                              .head_dim = d,
                              .rope = lc->rope,
                              .rope_layout = KQ_ROPE_PAIRS,
                              .rope_theta = 10000.0f,
                              .layout = lc->layout};
  kq_projections *proj = NULL;
  KQ_TEST_OK(kq_projections_create(&info, &rk, &rv, &proj));
  kq_projection_layer L;
  KQ_TEST_OK(kq_projections_layer(proj, 0, &L));
  if (lc->n_kseg)
    KQ_TEST_OK(kq_projections_set_segments(proj, 0, KQ_SIDE_KEYS, lc->n_kseg, lc->kseg));
  if (lc->n_vseg)
    KQ_TEST_OK(kq_projections_set_segments(proj, 0, KQ_SIDE_VALUES, lc->n_vseg, lc->vseg));
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
  params.storage = lc->storage;
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
  const double tol = lc->n_kseg || lc->n_vseg ? 1e-3 : lc->storage == KQ_STORAGE_F16 ? 1e-5 : 1e-8;
  print_message("%s: ctx %d, %d queries: NMSE %.3g\n", g_device, n_ctx, n_q, num / den);
  if (!(num <= tol * den))
    fail_msg("%s: ctx %d, %d queries: NMSE %.3g against the CPU backend", g_device, n_ctx, n_q,
             num / den);

  kq_cache_destroy(cache);
  kq_cache_destroy(ref);
  kq_device_destroy(dev);
  kq_device_destroy(cpu);
  kq_projections_destroy(proj);
  free(K), free(V), free(Q), free(out), free(want);
}

/* RoPE pre, F32, rank 128: each key rebuilt in the kernel. */
static const long_case k_pre = {.layout = KQ_LAYOUT_PER_HEAD,
                                .rope = KQ_ROPE_PRE,
                                .storage = KQ_STORAGE_F32,
                                .rank_k = 128,
                                .rank_v = 128};
/* The 0.28 recipe of the Llama shape in q8/q4 segments, F16, post. */
static const long_case k_quant = {.layout = KQ_LAYOUT_PER_HEAD,
                                  .rope = KQ_ROPE_POST,
                                  .storage = KQ_STORAGE_F16,
                                  .rank_k = 104,
                                  .rank_v = 80,
                                  .n_kseg = 3,
                                  .kseg = {{8, KQ_SEG_FLOAT}, {32, KQ_SEG_Q8}, {64, KQ_SEG_Q4}},
                                  .n_vseg = 2,
                                  .vseg = {{16, KQ_SEG_Q8}, {64, KQ_SEG_Q4}}};
/* One latent per layer for all heads (joint), q8/q4 segments, F16. */
static const long_case k_joint = {.layout = KQ_LAYOUT_JOINT,
                                  .rope = KQ_ROPE_POST,
                                  .storage = KQ_STORAGE_F16,
                                  .rank_k = 192,
                                  .rank_v = 192,
                                  .n_kseg = 3,
                                  .kseg = {{32, KQ_SEG_FLOAT}, {96, KQ_SEG_Q8}, {64, KQ_SEG_Q4}},
                                  .n_vseg = 2,
                                  .vseg = {{64, KQ_SEG_Q8}, {128, KQ_SEG_Q4}}};

/* A case of the table below: a cache, its context and its queries. */
typedef struct long_run {
  const long_case *cache;
  int n_ctx, n_q;
} long_run;

static void long_run_matches_cpu(void **state) {
  const long_run *r = *state;
  run_long_case(r->cache, r->n_ctx, r->n_q);
}

/* One query: the decode grid, where a small device holds every position of
 * a row group in one chunk. Sixteen: the tiled path (more queries than the
 * decode grid takes), chunks of several key tiles (RoPE pre: each tile
 * rebuilding 64 keys in the kernel). */
static long_run k_runs[] = {
    {&k_pre, 20000, 1},   {&k_pre, 6000, 16},   {&k_quant, 20000, 1},
    {&k_quant, 6000, 16}, {&k_joint, 20000, 1},
};

int main(int argc, char **argv) {
  if (argc > 1) g_device = argv[1];
  if (!kq_test_device_present(g_device)) return 77;
  const struct CMUnitTest tests[] = {
      {"long_decode_rope_pre", long_run_matches_cpu, NULL, NULL, &k_runs[0]},
      {"long_prefill_rope_pre", long_run_matches_cpu, NULL, NULL, &k_runs[1]},
      {"long_decode_quantized", long_run_matches_cpu, NULL, NULL, &k_runs[2]},
      {"long_prefill_quantized", long_run_matches_cpu, NULL, NULL, &k_runs[3]},
      {"long_decode_joint", long_run_matches_cpu, NULL, NULL, &k_runs[4]},
  };
  return cmocka_run_group_tests_name(g_device, tests, NULL, NULL);
}
