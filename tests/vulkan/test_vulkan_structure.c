/*
 * test_vulkan_structure.c — structural costs of the Vulkan backend, counted
 * (kq_device_get_stats), never timed: one decode step on one layer through
 * the public API is at most one queue submit, at most two dispatches for
 * attend, one host wait (the blocking download of the result) and no device
 * allocation after warm-up (RoPE pre included); its output matches the CPU backend. Also the
 * decode split (vk_split.h) against pretend devices: the grid of a 4k or 32k
 * context holds at least twice as many workgroups as the device has compute
 * units, and the chunk cap under a driver's loop limit on pretend limits
 * (tests/engine/test_long_context.c runs the long cases it is for). The
 * pipeline cache is written to KQSVD_CACHE_DIR when a device
 * closes, and a damaged file is ignored and rewritten. The split tests run without a device; the
 * rest exits 77 (ctest SKIP) when no Vulkan device is present.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "kqsvd.h"
#include "vk_split.h"
#include "vulkan/vk_reference.h"

static char g_vk_name[32];

/* --- the split, on pretend devices --- */

static void test_split_fills_the_device(void **state) {
  (void)state;
  const uint32_t cus[] = {1, 8, 16, 28, 80, 96, 108, 132, 228};
  const uint64_t ctx[] = {4096, 32768};
  const uint32_t row_groups[] = {1, 2, 4, 8, 32}; /* kv heads (per-head) or query heads (joint) */
  for (size_t a = 0; a < sizeof cus / sizeof *cus; ++a)
    for (size_t b = 0; b < sizeof ctx / sizeof *ctx; ++b)
      for (size_t c = 0; c < sizeof row_groups / sizeof *row_groups; ++c) {
        uint32_t n = vk_decode_chunks(ctx[b], row_groups[c], 1, cus[a]);
        uint64_t wgs = (uint64_t)n * row_groups[c];
        if (wgs < 2ull * cus[a])
          fail_msg("%u CUs, ctx %llu, %u row groups: %llu workgroups", cus[a],
                   (unsigned long long)ctx[b], row_groups[c], (unsigned long long)wgs);
        uint32_t len = vk_decode_chunk_len(ctx[b], n);
        /* the chunks cover the context, none of them empty */
        assert_true((uint64_t)len * n >= ctx[b]);
        assert_true((uint64_t)len * (n - 1) < ctx[b]);
        assert_true(n <= VK_DECODE_MAX_CHUNKS);
      }
}

static void test_split_has_no_chunk_floor(void **state) {
  (void)state;
  /* A 300-position context on 132 CUs with 8 kv heads: 528 workgroups
   * wanted, 66 chunks of ceil(300 / 66) = 5 positions, i.e. 60 chunks. */
  uint32_t n = vk_decode_chunks(300, 8, 1, 132);
  assert_int_equal(n, 60);
  assert_int_equal(vk_decode_chunk_len(300, n), 5);
  /* No floor: 10 positions on a big device are 10 chunks of one. */
  assert_int_equal(vk_decode_chunks(10, 1, 1, 132), 10);
  assert_int_equal(vk_decode_chunk_len(10, 10), 1);
  /* A big device and a long context: capped by the merge's shared memory. */
  assert_int_equal(vk_decode_chunks(1u << 20, 1, 1, 4096), VK_DECODE_MAX_CHUNKS);
  /* Several queries share the grid: 528 / (8 · 4) -> 17 chunks. */
  assert_int_equal(vk_decode_chunks(32768, 8, 4, 132), 17);
}

/* A batch of sequences shares the grid in proportion to the contexts: one
 * sequence is the single-sequence split; a context 4x longer gets about 4x
 * the chunks, so chunk lengths stay about equal across sequences. */
static void test_split_of_a_batch_follows_each_context(void **state) {
  (void)state;
  for (uint64_t ctx = 1; ctx <= 40000; ctx = ctx * 3 + 1)
    for (uint32_t nq = 1; nq <= 8; nq *= 2)
      assert_int_equal(vk_decode_seq_chunks(ctx, ctx * nq, 8, 132),
                       vk_decode_chunks(ctx, 8, nq, 132));
  /* Contexts 1000 and 4000 on 132 CUs, 8 row groups: 528 workgroups over
   * 5000 positions -> ceil(528 · 1000 / 40000) = 14 and 53 chunks. */
  const uint32_t a = vk_decode_seq_chunks(1000, 5000, 8, 132);
  const uint32_t b = vk_decode_seq_chunks(4000, 5000, 8, 132);
  assert_int_equal(a, 14);
  assert_int_equal(b, 53);
  const uint32_t la = vk_decode_chunk_len(1000, a), lb = vk_decode_chunk_len(4000, b);
  assert_true(la * 10 <= lb * 11 && lb * 10 <= la * 11); /* lengths within 10% (72, 76) */
  /* A short sequence beside long ones still gets at least one chunk, never
   * more than its positions. */
  assert_int_equal(vk_decode_seq_chunks(1, 100000, 8, 132), 1);
  assert_int_equal(vk_decode_seq_chunks(3, 3, 1, 132), 3);
}

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

/* --- one decode step through the public API --- */

typedef struct step_case {
  kq_layout layout;
  kq_rope_mode rope;          /* 0: post */
  kq_rope_layout rope_layout; /* with rope pre */
  kq_storage storage;
  int32_t n_kseg, n_vseg; /* 0: one float segment */
  kq_segment kseg[3], vseg[3];
} step_case;

/* Fills a layer's matrices (joint: key_down / value_down [Hk d, r]). */
static void fill_layer(const kq_projection_layer *L, int Hk, int d, uint64_t *seed) {
  vk_ref_fill(L->key_down, (size_t)Hk * d * L->rank_k, 1.2, seed);
  vk_ref_fill(L->query_down, (size_t)Hk * d * L->rank_k, 1.2, seed);
  vk_ref_fill(L->value_down, (size_t)Hk * d * L->rank_v, 1.0, seed);
  vk_ref_fill(L->value_up, (size_t)Hk * d * L->rank_v, 1.0, seed);
}

static kq_cache *make_cache(kq_device *dev, kq_projections *proj, kq_storage storage, int cap) {
  kq_cache_params params = kq_cache_default_params();
  params.storage = storage;
  params.capacity = cap;
  kq_cache *cache = NULL;
  KQ_TEST_OK(kq_cache_create(dev, proj, &params, &cache));
  return cache;
}

static kq_device_stats stats(const kq_device *dev) {
  kq_device_stats s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  KQ_TEST_OK(kq_device_get_stats(dev, &s));
  return s;
}

static void run_step_case(const step_case *sc, int n_ctx) {
  const int H = 8, Hk = 2, d = 64, warm = 5; /* more steps than the ring has frames */
  const int32_t rk = sc->layout == KQ_LAYOUT_JOINT ? 96 : 32;
  const int32_t rv = sc->layout == KQ_LAYOUT_JOINT ? 80 : 24;
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = 1,
                              .n_heads = H,
                              .n_kv_heads = Hk,
                              .head_dim = d,
                              .rope = sc->rope ? sc->rope : KQ_ROPE_POST,
                              .rope_layout = sc->rope ? sc->rope_layout : KQ_ROPE_PAIRS,
                              .rope_theta = 10000.0f,
                              .layout = sc->layout};
  kq_projections *proj = NULL;
  KQ_TEST_OK(kq_projections_create(&info, &rk, &rv, &proj));
  kq_projection_layer L;
  KQ_TEST_OK(kq_projections_layer(proj, 0, &L));
  uint64_t seed = 77;
  fill_layer(&L, Hk, d, &seed);
  if (sc->n_kseg)
    KQ_TEST_OK(kq_projections_set_segments(proj, 0, KQ_SIDE_KEYS, sc->n_kseg, sc->kseg));
  if (sc->n_vseg)
    KQ_TEST_OK(kq_projections_set_segments(proj, 0, KQ_SIDE_VALUES, sc->n_vseg, sc->vseg));
  const int total = n_ctx + warm + 1;
  const size_t row = (size_t)Hk * d, qrow = (size_t)H * d;
  float *K = malloc((size_t)total * row * 4), *V = malloc((size_t)total * row * 4);
  float *Q = malloc((size_t)(warm + 1) * qrow * 4);
  float *out = malloc(qrow * 4), *want = malloc(qrow * 4);
  assert_non_null(K && V && Q && out && want);
  vk_ref_fill(K, (size_t)total * row, 1.0, &seed);
  vk_ref_fill(V, (size_t)total * row, 1.0, &seed);
  vk_ref_fill(Q, (size_t)(warm + 1) * qrow, 1.0, &seed);

  kq_device *dev = NULL, *cpu = NULL;
  KQ_TEST_OK(kq_device_create(g_vk_name, &dev));
  KQ_TEST_OK(kq_device_create("cpu", &cpu));
  kq_cache *cache = make_cache(dev, proj, sc->storage, total);
  kq_cache *ref = make_cache(cpu, proj, sc->storage, total);
  KQ_TEST_OK(kq_cache_append(cache, 0, n_ctx, K, V));
  KQ_TEST_OK(kq_cache_append(ref, 0, n_ctx, K, V));
  /* Warm-up: pipelines, scratch and staging reach their sizes. */
  for (int s = 0; s < warm; ++s) {
    const float *k = K + (size_t)(n_ctx + s) * row, *v = V + (size_t)(n_ctx + s) * row;
    KQ_TEST_OK(kq_cache_append(cache, 0, 1, k, v));
    KQ_TEST_OK(kq_cache_append(ref, 0, 1, k, v));
    KQ_TEST_OK(kq_cache_attend(cache, 0, 1, Q + (size_t)s * qrow, KQ_OUTPUT_FULL, out));
    KQ_TEST_OK(kq_cache_attend(ref, 0, 1, Q + (size_t)s * qrow, KQ_OUTPUT_FULL, want));
  }
  const float *k = K + (size_t)(n_ctx + warm) * row, *v = V + (size_t)(n_ctx + warm) * row;
  const float *q = Q + (size_t)warm * qrow;
  kq_device_stats s0 = stats(dev);
  KQ_TEST_OK(kq_cache_append(cache, 0, 1, k, v));
  kq_device_stats s1 = stats(dev);
  KQ_TEST_OK(kq_cache_attend(cache, 0, 1, q, KQ_OUTPUT_FULL, out));
  kq_device_stats s2 = stats(dev);
  KQ_TEST_OK(kq_cache_append(ref, 0, 1, k, v));
  KQ_TEST_OK(kq_cache_attend(ref, 0, 1, q, KQ_OUTPUT_FULL, want));

  if (s2.submits - s0.submits > 1)
    fail_msg("decode step: %llu queue submits", (unsigned long long)(s2.submits - s0.submits));
  if (s2.dispatches - s1.dispatches > 2)
    fail_msg("attend: %llu dispatches", (unsigned long long)(s2.dispatches - s1.dispatches));
  assert_true(s2.dispatches > s1.dispatches); /* the counter counts */
  assert_int_equal(s2.host_waits - s0.host_waits, 1);
  assert_int_equal(s2.device_allocations - s0.device_allocations, 0);
  assert_int_equal(s2.bytes_downloaded - s1.bytes_downloaded, qrow * 4);
  assert_true(s1.bytes_uploaded - s0.bytes_uploaded >= 2 * row * 4);

  double num = 0, den = 0;
  for (size_t i = 0; i < qrow; ++i) {
    num += ((double)out[i] - want[i]) * ((double)out[i] - want[i]);
    den += (double)want[i] * want[i];
  }
  /* F32 float latents: summation order only (1e-10). Quantized segments: the
   * same quantizer, but a latent computed in another order may round to the
   * neighbouring level now and then (q4 steps are 1/7 of the row maximum). */
  const double tol = sc->n_kseg || sc->n_vseg ? 1e-3 : sc->storage == KQ_STORAGE_F16 ? 1e-5 : 1e-10;
  if (!(num <= tol * den)) fail_msg("decode output NMSE %.3g > %.1g", num / den, tol);

  kq_cache_destroy(cache);
  kq_cache_destroy(ref);
  kq_device_destroy(dev);
  kq_device_destroy(cpu);
  kq_projections_destroy(proj);
  free(K), free(V), free(Q), free(out), free(want);
}

static void test_decode_step_per_head_float(void **state) {
  (void)state;
  step_case sc = {.layout = KQ_LAYOUT_PER_HEAD, .storage = KQ_STORAGE_F32};
  run_step_case(&sc, 700);
}

static void test_decode_step_per_head_quantized(void **state) {
  (void)state;
  step_case sc = {.layout = KQ_LAYOUT_PER_HEAD,
                  .storage = KQ_STORAGE_F16,
                  .n_kseg = 3,
                  .kseg = {{8, KQ_SEG_FLOAT}, {13, KQ_SEG_Q8}, {11, KQ_SEG_Q8}},
                  .n_vseg = 2,
                  .vseg = {{16, KQ_SEG_Q8}, {8, KQ_SEG_Q4}}};
  run_step_case(&sc, 500);
}

static void test_decode_step_joint(void **state) {
  (void)state;
  step_case sc = {.layout = KQ_LAYOUT_JOINT,
                  .storage = KQ_STORAGE_F32,
                  .n_kseg = 2,
                  .kseg = {{32, KQ_SEG_FLOAT}, {64, KQ_SEG_Q8}},
                  .n_vseg = 2,
                  .vseg = {{40, KQ_SEG_Q8}, {40, KQ_SEG_Q4}}};
  run_step_case(&sc, 400);
}

/* RoPE pre: keys rebuilt and rotated inside the decode kernel. Past 4096
 * positions (the first RoPE table's reach), so the table is regrown during
 * the warm-up and the high part of the angle is not 0. */
static void test_decode_step_rope_pre_float(void **state) {
  (void)state;
  step_case sc = {.layout = KQ_LAYOUT_PER_HEAD,
                  .rope = KQ_ROPE_PRE,
                  .rope_layout = KQ_ROPE_PAIRS,
                  .storage = KQ_STORAGE_F32};
  run_step_case(&sc, 4300);
}

static void test_decode_step_rope_pre_quantized(void **state) {
  (void)state;
  step_case sc = {.layout = KQ_LAYOUT_PER_HEAD,
                  .rope = KQ_ROPE_PRE,
                  .rope_layout = KQ_ROPE_HALVES,
                  .storage = KQ_STORAGE_F16,
                  .n_kseg = 2,
                  .kseg = {{16, KQ_SEG_Q8}, {16, KQ_SEG_Q4}},
                  .n_vseg = 2,
                  .vseg = {{8, KQ_SEG_FLOAT}, {16, KQ_SEG_Q8}}};
  run_step_case(&sc, 600);
}

/* --- the pipeline cache on disk --- */

/* One small decode on a fresh device, then the device is closed. */
static void decode_once(void) {
  step_case sc = {.layout = KQ_LAYOUT_PER_HEAD, .storage = KQ_STORAGE_F32};
  run_step_case(&sc, 40);
}

/* 1 when `path` is a whole cache file: our header, then a Vulkan pipeline
 * cache blob (header version one, at least 32 bytes). */
static int valid_cache_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  unsigned char buf[4096];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  if (n < 24 + 32 || memcmp(buf, "KQVKPC01", 8) != 0) return 0;
  uint64_t len = 0;
  for (int i = 7; i >= 0; --i) len = (len << 8) | buf[8 + i];
  uint32_t hdr_len = (uint32_t)buf[24] | (uint32_t)buf[25] << 8 | (uint32_t)buf[26] << 16 |
                     (uint32_t)buf[27] << 24;
  return len + 24 == n && hdr_len >= 32 && buf[28] == 1;
}

/* The single cache file in `dir` (its path into out), or 0. */
static int find_cache_file(const char *dir, char *out, size_t size) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "ls %s/vulkan-*.pcache 2>/dev/null", dir);
  FILE *p = popen(cmd, "r");
  if (!p) return 0;
  int ok = fgets(out, (int)size, p) != NULL;
  pclose(p);
  if (ok) out[strcspn(out, "\n")] = '\0';
  return ok && out[0];
}

static void test_pipeline_cache_persists(void **state) {
  (void)state;
  char dir[] = "/tmp/kqsvd-vk-pcache-XXXXXX", path[700];
  assert_non_null(mkdtemp(dir));
  setenv("KQSVD_CACHE_DIR", dir, 1);
  decode_once();
  if (!find_cache_file(dir, path, sizeof path)) fail_msg("no pipeline cache written in %s", dir);
  assert_true(valid_cache_file(path));
  /* A truncated file is ignored, and the next close writes a whole one. */
  assert_int_equal(truncate(path, 30), 0);
  decode_once();
  assert_true(valid_cache_file(path));
  /* Garbage of the right length is ignored too (checksum). */
  FILE *f = fopen(path, "r+b");
  assert_non_null(f);
  fseek(f, 30, SEEK_SET);
  fputc(0x5a, f);
  fclose(f);
  decode_once();
  assert_true(valid_cache_file(path));
  unsetenv("KQSVD_CACHE_DIR");
  unlink(path);
  rmdir(dir);
}

int main(void) {
  const struct CMUnitTest pure[] = {
      cmocka_unit_test(test_split_fills_the_device),
      cmocka_unit_test(test_split_has_no_chunk_floor),
      cmocka_unit_test(test_split_of_a_batch_follows_each_context),
      cmocka_unit_test(test_chunk_cap_follows_the_limit),
  };
  if (cmocka_run_group_tests(pure, NULL, NULL)) return 1;
  const int found = vk_test_first_device(g_vk_name, sizeof g_vk_name);
  if (found < 0) return 1;
  if (!found) {
    fprintf(stderr, "SKIP: no Vulkan device (the split tests passed)\n");
    return 77;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_decode_step_per_head_float),
      cmocka_unit_test(test_decode_step_per_head_quantized),
      cmocka_unit_test(test_decode_step_joint),
      cmocka_unit_test(test_decode_step_rope_pre_float),
      cmocka_unit_test(test_decode_step_rope_pre_quantized),
      cmocka_unit_test(test_pipeline_cache_persists),
  };
  return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
