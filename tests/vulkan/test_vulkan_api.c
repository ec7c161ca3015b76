/*
 * test_vulkan_api.c — the Vulkan backend through the public API: device
 * listing (lavapipe reported as a CPU-type Vulkan device), decode and prefill
 * against a float64 reference for F32/F16 and RoPE none/post/pre, two
 * threads using two caches on one device at once, and four threads with RoPE
 * PRE caches of different thetas (RoPE tables added while others are in use).
 * Exits 77 (ctest SKIP) when the registry finds no Vulkan device.
 */
#include <pthread.h>
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

typedef struct api_case {
  vk_ref_case c;
  kq_storage storage;
  kq_output output;
} api_case;

/* Runs one case on `dev`; returns the NMSE against the reference, or a
 * negative value (with the error kept) on an API failure. Thread-safe. */
static double run_api_case(kq_device *dev, const api_case *ac, uint64_t seed) {
  const vk_ref_case *c = &ac->c;
  const size_t d = (size_t)c->d, nk = (size_t)c->n_ctx * c->Hk * d;
  const size_t nq = (size_t)c->n_q * c->H * d, nlat = (size_t)c->n_q * c->H * c->rv;
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = 1,
                              .n_heads = c->H,
                              .n_kv_heads = c->Hk,
                              .head_dim = c->d,
                              .rope = (kq_rope_mode)c->rope,
                              .rope_layout = c->halves ? KQ_ROPE_HALVES : KQ_ROPE_PAIRS,
                              .rope_theta = (float)c->theta};
  int32_t rk = c->rk, rv = c->rv;
  kq_projections *proj = NULL;
  kq_cache *cache = NULL;
  double result = -1;
  float *K = malloc(nk * 4), *V = malloc(nk * 4), *Q = malloc(nq * 4), *out = malloc(nq * 4);
  double *rlat = malloc(nlat * 8), *rfull = malloc(nq * 8);
  if (!K || !V || !Q || !out || !rlat || !rfull) goto done;
  if (kq_projections_create(&info, &rk, &rv, &proj) != KQ_OK) goto done;
  kq_projection_layer L;
  if (kq_projections_layer(proj, 0, &L) != KQ_OK) goto done;
  vk_ref_fill(K, nk, 1.0, &seed);
  vk_ref_fill(V, nk, 1.0, &seed);
  vk_ref_fill(Q, nq, 1.0, &seed);
  vk_ref_fill(L.key_down, (size_t)c->Hk * d * rk, 1.2, &seed);
  vk_ref_fill(L.query_down, (size_t)c->Hk * d * rk, 1.2, &seed);
  vk_ref_fill(L.value_down, (size_t)c->Hk * d * rv, 1.0, &seed);
  vk_ref_fill(L.value_up, (size_t)c->Hk * d * rv, 1.0, &seed);
  if (vk_ref_attend(c, K, V, Q, L.key_down, L.query_down, L.value_down, L.value_up, rlat, rfull))
    goto done;
  kq_cache_params params = kq_cache_default_params();
  params.storage = ac->storage;
  params.capacity = c->n_ctx + 3;
  if (kq_cache_create(dev, proj, &params, &cache) != KQ_OK) goto done;
  const int first = c->n_ctx / 2;
  if (kq_cache_append(cache, 0, first, K, V) != KQ_OK ||
      kq_cache_append(cache, 0, c->n_ctx - first, K + (size_t)first * c->Hk * d,
                      V + (size_t)first * c->Hk * d) != KQ_OK ||
      kq_cache_attend(cache, 0, c->n_q, Q, ac->output, out) != KQ_OK)
    goto done;
  result =
      ac->output == KQ_OUTPUT_FULL ? vk_ref_nmse(out, rfull, nq) : vk_ref_nmse(out, rlat, nlat);
done:
  kq_cache_destroy(cache);
  kq_projections_destroy(proj);
  free(K), free(V), free(Q), free(out), free(rlat), free(rfull);
  return result;
}

/* F32: float accumulation over ≤ 200 terms, NMSE ~1e-12; F16 storage rounds
 * latents to 11 significant bits, NMSE ~1e-7. */
static double tolerance(kq_storage s) {
  return s == KQ_STORAGE_F16 ? 1e-5 : 1e-9;
}

static void test_registry_lists_vulkan_devices(void **state) {
  (void)state;
  int n = 0;
  KQ_TEST_OK(kq_device_count(&n));
  int found = 0;
  for (int i = 0; i < n; ++i) {
    kq_device_info info;
    KQ_TEST_OK(kq_device_info_get(i, &info));
    if (strcmp(info.backend, "vulkan") != 0) continue;
    assert_int_equal(strncmp(info.name, "vulkan:", 7), 0);
    if (strstr(info.description, "llvmpipe")) assert_int_equal(info.type, KQ_DEVICE_TYPE_CPU);
    ++found;
  }
  assert_true(found >= 1);
  kq_device *dev = NULL;
  KQ_TEST_OK(kq_device_create(g_vk_name, &dev));
  kq_device_info info;
  KQ_TEST_OK(kq_device_get_info(dev, &info));
  assert_string_equal(info.name, g_vk_name);
  kq_device_destroy(dev);
}

static void test_decode_and_prefill_match_reference(void **state) {
  (void)state;
  const api_case cases[] = {
      {{150, 1, 8, 2, 32, 12, 20, 1, 0, 10000}, KQ_STORAGE_F32, KQ_OUTPUT_FULL},
      {{150, 1, 8, 2, 32, 12, 20, 2, 1, 10000}, KQ_STORAGE_F16, KQ_OUTPUT_LATENT},
      {{60, 60, 4, 2, 32, 16, 16, 0, 0, 10000}, KQ_STORAGE_F16, KQ_OUTPUT_FULL},
      {{60, 7, 4, 1, 32, 8, 24, 2, 0, 10000}, KQ_STORAGE_F32, KQ_OUTPUT_FULL},
  };
  kq_device *dev = NULL;
  KQ_TEST_OK(kq_device_create(g_vk_name, &dev));
  for (size_t i = 0; i < sizeof cases / sizeof *cases; ++i) {
    double e = run_api_case(dev, &cases[i], 11 + i);
    if (e < 0) fail_msg("case %zu: %s", i, kq_last_error());
    if (e > tolerance(cases[i].storage))
      fail_msg("case %zu: NMSE %.3g > %.1g", i, e, tolerance(cases[i].storage));
  }
  kq_device_destroy(dev);
}

typedef struct thread_arg {
  kq_device *dev;
  int index;
  double worst;
  char error[256];
} thread_arg;

static void *thread_main(void *p) {
  thread_arg *a = p;
  a->worst = 0;
  for (int rep = 0; rep < 3; ++rep) {
    api_case ac = {{80 + 10 * a->index, 1 + 3 * rep, 4, 2, 32, 16, 16, rep, 0, 10000},
                   a->index ? KQ_STORAGE_F16 : KQ_STORAGE_F32,
                   KQ_OUTPUT_FULL};
    double e = run_api_case(a->dev, &ac, 100 + (uint64_t)(a->index * 10 + rep));
    if (e < 0) {
      snprintf(a->error, sizeof a->error, "%s", kq_last_error());
      a->worst = 1e30;
      return NULL;
    }
    e /= tolerance(ac.storage);
    if (e > a->worst) a->worst = e;
  }
  return NULL;
}

/* Two threads, one cache each, on one device at the same time. */
static void test_two_threads_share_one_device(void **state) {
  (void)state;
  kq_device *dev = NULL;
  KQ_TEST_OK(kq_device_create(g_vk_name, &dev));
  thread_arg args[2] = {{dev, 0, 0, ""}, {dev, 1, 0, ""}};
  pthread_t th[2];
  for (int i = 0; i < 2; ++i)
    assert_int_equal(pthread_create(&th[i], NULL, thread_main, &args[i]), 0);
  for (int i = 0; i < 2; ++i) pthread_join(th[i], NULL);
  kq_device_destroy(dev);
  for (int i = 0; i < 2; ++i)
    if (args[i].worst > 1.0)
      fail_msg("thread %d: NMSE/limit %.3g %s", i, args[i].worst, args[i].error);
}

typedef struct pre_arg {
  kq_device *dev;
  int index;
  double worst;
  char error[256];
} pre_arg;

/* RoPE PRE caches with a theta of their own per thread and round: every
 * attend adds a RoPE table to the device while other threads attend with
 * tables they looked up before (the table list grows under them). */
static void *pre_thread_main(void *p) {
  pre_arg *a = p;
  a->worst = 0;
  for (int rep = 0; rep < 4; ++rep) {
    const double theta = 5000.0 + 1000.0 * a->index + 97.0 * rep;
    api_case ac = {
        {40 + 30 * rep, 1 + 2 * (rep % 2), 4, 2, 32, 12, 12, 2, (a->index + rep) % 2, theta},
        rep % 2 ? KQ_STORAGE_F16 : KQ_STORAGE_F32,
        KQ_OUTPUT_FULL};
    double e = run_api_case(a->dev, &ac, 300 + (uint64_t)(a->index * 10 + rep));
    if (e < 0) {
      snprintf(a->error, sizeof a->error, "%s", kq_last_error());
      a->worst = 1e30;
      return NULL;
    }
    e /= tolerance(ac.storage);
    if (e > a->worst) a->worst = e;
  }
  return NULL;
}

/* Issue 13 item 7: PRE caches on one device from several threads. */
static void test_pre_caches_from_many_threads(void **state) {
  (void)state;
  enum { N = 4 };
  kq_device *dev = NULL;
  KQ_TEST_OK(kq_device_create(g_vk_name, &dev));
  pre_arg args[N];
  pthread_t th[N];
  for (int i = 0; i < N; ++i) {
    args[i] = (pre_arg){.dev = dev, .index = i};
    assert_int_equal(pthread_create(&th[i], NULL, pre_thread_main, &args[i]), 0);
  }
  for (int i = 0; i < N; ++i) pthread_join(th[i], NULL);
  kq_device_destroy(dev);
  for (int i = 0; i < N; ++i)
    if (args[i].worst > 1.0)
      fail_msg("thread %d: NMSE/limit %.3g %s", i, args[i].worst, args[i].error);
}

int main(void) {
  const int found = vk_test_first_device(g_vk_name, sizeof g_vk_name);
  if (found < 0) return 1;
  if (!found) {
    fprintf(stderr, "SKIP: no Vulkan device\n");
    return 77;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_registry_lists_vulkan_devices),
      cmocka_unit_test(test_decode_and_prefill_match_reference),
      cmocka_unit_test(test_two_threads_share_one_device),
      cmocka_unit_test(test_pre_caches_from_many_threads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
