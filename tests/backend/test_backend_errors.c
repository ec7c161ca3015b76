/* Bad input to the device and cache API returns a status with a message
 * naming what is wrong, and never crashes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "backend/attn_ref.h"

static kq_projections_info small_info(void) {
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = 2,
                              .n_heads = 4,
                              .n_kv_heads = 2,
                              .head_dim = 16,
                              .rope = KQ_ROPE_POST,
                              .rope_layout = KQ_ROPE_PAIRS,
                              .rope_theta = 10000.0f};
  return info;
}

typedef struct fixture {
  kq_device *dev;
  kq_projections *proj;
  kq_cache *cache;
  float keys[8 * 2 * 16], queries[8 * 4 * 16], out[8 * 4 * 16];
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  kq_projections_info info = small_info();
  if (!f || kq_device_create("cpu", &f->dev) != KQ_OK ||
      kq_projections_create_identity(&info, &f->proj) != KQ_OK)
    return -1;
  kq_cache_params p = kq_cache_default_params();
  p.capacity = 8;
  if (kq_cache_create(f->dev, f->proj, &p, &f->cache) != KQ_OK) return -1;
  uint64_t seed = 7;
  ref_fill(f->keys, sizeof f->keys / sizeof f->keys[0], &seed, 1.0);
  ref_fill(f->queries, sizeof f->queries / sizeof f->queries[0], &seed, 1.0);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  kq_cache_destroy(f->cache);
  kq_projections_destroy(f->proj);
  kq_device_destroy(f->dev);
  free(f);
  return 0;
}

static void unknown_device_is_not_found_and_lists_devices(void **state) {
  (void)state;
  kq_device *dev = (kq_device *)&dev;
  assert_int_equal(kq_device_create("nosuch:3", &dev), KQ_ERR_NOT_FOUND);
  assert_null(dev);
  assert_non_null(strstr(kq_last_error(), "nosuch:3"));
  assert_non_null(strstr(kq_last_error(), "cpu"));
  assert_int_equal(kq_device_create("cpu", NULL), KQ_ERR_INVALID_ARGUMENT);
  kq_device_info info;
  assert_int_equal(kq_device_info_get(-1, &info), KQ_ERR_NOT_FOUND);
  int n = 0;
  assert_int_equal(kq_device_count(&n), KQ_OK);
  assert_true(n >= 1);
  assert_int_equal(kq_device_info_get(n, &info), KQ_ERR_NOT_FOUND);
  assert_int_equal(kq_device_info_get(0, &info), KQ_OK);
  assert_string_equal(info.name, "cpu"); /* the CPU comes first */
}

static void default_device_follows_kqsvd_device_variable(void **state) {
  (void)state;
  kq_device *dev = NULL;
  setenv("KQSVD_DEVICE", "bogus:0", 1);
  assert_int_equal(kq_device_create(NULL, &dev), KQ_ERR_NOT_FOUND);
  assert_non_null(strstr(kq_last_error(), "bogus:0"));
  setenv("KQSVD_DEVICE", "cpu", 1);
  assert_int_equal(kq_device_create("", &dev), KQ_OK);
  kq_device_info info;
  assert_int_equal(kq_device_get_info(dev, &info), KQ_OK);
  assert_string_equal(info.name, "cpu");
  assert_int_equal(info.type, KQ_DEVICE_TYPE_CPU);
  assert_true(info.memory_bytes > 0);
  kq_device_destroy(dev);
  unsetenv("KQSVD_DEVICE");
}

static void rank_above_head_dim_is_refused(void **state) {
  (void)state;
  kq_projections_info info = small_info();
  int32_t rk[2] = {17, 4}, rv[2] = {4, 4};
  kq_projections *proj = NULL;
  assert_int_not_equal(kq_projections_create(&info, rk, rv, &proj), KQ_OK);
  assert_null(proj);
  rk[0] = 0;
  assert_int_not_equal(kq_projections_create(&info, rk, rv, &proj), KQ_OK);
  assert_null(proj);
}

static void bad_cache_params_are_refused(void **state) {
  fixture *f = *state;
  kq_cache *c = NULL;
  kq_cache_params p = kq_cache_default_params();
  p.capacity = 0;
  assert_int_equal(kq_cache_create(f->dev, f->proj, &p, &c), KQ_ERR_INVALID_ARGUMENT);
  p = kq_cache_default_params();
  p.n_seqs = 0;
  assert_int_equal(kq_cache_create(f->dev, f->proj, &p, &c), KQ_ERR_INVALID_ARGUMENT);
  p = kq_cache_default_params();
  p.storage = (kq_storage)7;
  assert_int_equal(kq_cache_create(f->dev, f->proj, &p, &c), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_create(NULL, f->proj, NULL, &c), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_create(f->dev, NULL, NULL, &c), KQ_ERR_INVALID_ARGUMENT);
  assert_null(c);
}

static void oversized_cache_fails_with_device_memory_naming_device(void **state) {
  fixture *f = *state;
  kq_cache *c = NULL;
  kq_cache_params p = kq_cache_default_params();
  p.capacity = INT32_MAX; /* 2 layers x 2 heads x 2^31 x 32 x 4 bytes: ~1 TiB */
  assert_int_equal(kq_cache_create(f->dev, f->proj, &p, &c), KQ_ERR_DEVICE_MEMORY);
  assert_null(c);
  assert_non_null(strstr(kq_last_error(), "cpu"));
  assert_non_null(strstr(kq_last_error(), "bytes"));
}

static void append_validates_layer_count_and_pointers(void **state) {
  fixture *f = *state;
  assert_int_equal(kq_cache_append(f->cache, 2, 1, f->keys, f->keys), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "layer 2"));
  assert_int_equal(kq_cache_append(f->cache, -1, 1, f->keys, f->keys), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_append(f->cache, 0, 0, f->keys, f->keys), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_append(f->cache, 0, -5, f->keys, f->keys), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_append(f->cache, 0, 1, NULL, f->keys), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_append(f->cache, 0, 1, f->keys, NULL), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_append(NULL, 0, 1, f->keys, f->keys), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_length(f->cache, 0), 0);
}

static void append_beyond_capacity_is_a_capacity_error(void **state) {
  fixture *f = *state;
  assert_int_equal(kq_cache_append(f->cache, 1, 6, f->keys, f->keys), KQ_OK);
  assert_int_equal(kq_cache_append(f->cache, 1, 3, f->keys, f->keys), KQ_ERR_CAPACITY);
  const char *msg = kq_last_error();
  assert_non_null(strstr(msg, "layer 1"));
  assert_non_null(strstr(msg, "capacity of 8"));
  assert_int_equal(kq_cache_length(f->cache, 1), 6); /* nothing half-appended */
  assert_int_equal(kq_cache_append(f->cache, 1, 2, f->keys, f->keys), KQ_OK);
  assert_int_equal(kq_cache_append(f->cache, 1, 1, f->keys, f->keys), KQ_ERR_CAPACITY);
}

static void attend_on_empty_cache_is_an_error_not_nan(void **state) {
  fixture *f = *state;
  for (size_t i = 0; i < 4 * 16; i++) f->out[i] = 123.0f;
  assert_int_equal(kq_cache_attend(f->cache, 0, 1, f->queries, KQ_OUTPUT_FULL, f->out),
                   KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "empty"));
  assert_true(f->out[0] == 123.0f);
}

static void attend_with_more_queries_than_tokens_is_an_error(void **state) {
  fixture *f = *state;
  assert_int_equal(kq_cache_append(f->cache, 0, 3, f->keys, f->keys), KQ_OK);
  assert_int_equal(kq_cache_attend(f->cache, 0, 4, f->queries, KQ_OUTPUT_FULL, f->out),
                   KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_attend(f->cache, 0, 0, f->queries, KQ_OUTPUT_FULL, f->out),
                   KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_attend(f->cache, 0, 1, NULL, KQ_OUTPUT_FULL, f->out),
                   KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_attend(f->cache, 0, 1, f->queries, (kq_output)9, f->out),
                   KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_attend(f->cache, 5, 1, f->queries, KQ_OUTPUT_FULL, f->out),
                   KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_attend(f->cache, 0, 3, f->queries, KQ_OUTPUT_FULL, f->out), KQ_OK);
}

static void truncate_shortens_and_append_continues(void **state) {
  fixture *f = *state;
  assert_int_equal(kq_cache_append(f->cache, 0, 5, f->keys, f->keys), KQ_OK);
  assert_int_equal(kq_cache_append(f->cache, 1, 2, f->keys, f->keys), KQ_OK);
  assert_int_equal(kq_cache_truncate(f->cache, -1), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_truncate(f->cache, 3), KQ_OK);
  assert_int_equal(kq_cache_length(f->cache, 0), 3);
  assert_int_equal(kq_cache_length(f->cache, 1), 2);
  assert_int_equal(kq_cache_length(f->cache, 7), 0);
  assert_int_equal(kq_cache_append(f->cache, 0, 5, f->keys, f->keys), KQ_OK);
  assert_int_equal(kq_cache_length(f->cache, 0), 8);
  kq_cache_memory mem;
  assert_int_equal(kq_cache_get_memory(f->cache, &mem), KQ_OK);
  assert_int_equal(mem.kv_bytes, 2u * 2u * 8u * (16u + 16u) * 4u);
  assert_int_equal(mem.projection_bytes, 0); /* identity: nothing uploaded */
  assert_true(mem.scratch_bytes > 0);
  assert_int_equal(kq_cache_get_memory(f->cache, NULL), KQ_ERR_INVALID_ARGUMENT);
}

static void copy_bandwidth_validates_and_measures(void **state) {
  fixture *f = *state;
  double gbps = -1.0;
  assert_int_equal(kq_device_copy_bandwidth(f->dev, 0, 3, &gbps), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_device_copy_bandwidth(f->dev, 1 << 20, 0, &gbps), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_device_copy_bandwidth(NULL, 1 << 20, 3, &gbps), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_device_copy_bandwidth(f->dev, 1 << 20, 3, NULL), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_device_copy_bandwidth(f->dev, UINT64_MAX, 3, &gbps), KQ_ERR_DEVICE_MEMORY);
  assert_int_equal(kq_device_copy_bandwidth(f->dev, 1 << 20, 3, &gbps), KQ_OK);
  assert_true(gbps > 0.01 && gbps < 1e5); /* a real, finite rate */
}

/* The CPU device counts what it did: an append is two projections, a full
 * attend an attend and an up, and the bytes moved are the tensors' bytes. */
static void device_stats_count_ops_and_bytes(void **state) {
  fixture *f = *state;
  kq_device_stats a = {.struct_size = sizeof a}, b = {.struct_size = sizeof b};
  /* warm-up: the cache sizes its staging buffers on first use */
  assert_int_equal(kq_cache_append(f->cache, 0, 4, f->keys, f->keys), KQ_OK);
  assert_int_equal(kq_cache_attend(f->cache, 0, 2, f->queries, KQ_OUTPUT_FULL, f->out), KQ_OK);
  assert_int_equal(kq_device_get_stats(f->dev, &a), KQ_OK);
  assert_int_equal(kq_cache_append(f->cache, 0, 4, f->keys, f->keys), KQ_OK);
  assert_int_equal(kq_cache_attend(f->cache, 0, 2, f->queries, KQ_OUTPUT_FULL, f->out), KQ_OK);
  assert_int_equal(kq_device_get_stats(f->dev, &b), KQ_OK);
  assert_int_equal(b.dispatches - a.dispatches, 4);
  assert_int_equal(b.submits, 0);
  assert_int_equal(b.host_waits, 0);
  /* keys and values of 4 tokens, 2 kv heads, d 16; 2 queries of 4 heads */
  assert_int_equal(b.bytes_uploaded - a.bytes_uploaded,
                   2u * 4u * 2u * 16u * 4u + 2u * 4u * 16u * 4u);
  assert_int_equal(b.bytes_downloaded - a.bytes_downloaded, 2u * 4u * 16u * 4u);
  assert_int_equal(b.device_allocations, a.device_allocations); /* staging already sized */
  /* A short struct gets only the fields that fit; a too-short one is refused. */
  kq_device_stats c;
  memset(&c, 0xAB, sizeof c);
  c.struct_size = (uint32_t)offsetof(kq_device_stats, dispatches);
  assert_int_equal(kq_device_get_stats(f->dev, &c), KQ_OK);
  assert_int_equal(c.submits, 0);
  assert_int_equal(c.dispatches, 0xABABABABABABABABull);
  c.struct_size = 4;
  assert_int_equal(kq_device_get_stats(f->dev, &c), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "struct_size"));
  assert_int_equal(kq_device_get_stats(NULL, &a), KQ_ERR_INVALID_ARGUMENT);
}

static void destroy_functions_accept_null(void **state) {
  (void)state;
  kq_cache_destroy(NULL);
  kq_device_destroy(NULL);
  kq_projections_destroy(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(unknown_device_is_not_found_and_lists_devices),
      cmocka_unit_test(default_device_follows_kqsvd_device_variable),
      cmocka_unit_test(rank_above_head_dim_is_refused),
      cmocka_unit_test_setup_teardown(bad_cache_params_are_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(oversized_cache_fails_with_device_memory_naming_device, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(append_validates_layer_count_and_pointers, setup, teardown),
      cmocka_unit_test_setup_teardown(append_beyond_capacity_is_a_capacity_error, setup, teardown),
      cmocka_unit_test_setup_teardown(attend_on_empty_cache_is_an_error_not_nan, setup, teardown),
      cmocka_unit_test_setup_teardown(attend_with_more_queries_than_tokens_is_an_error, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(truncate_shortens_and_append_continues, setup, teardown),
      cmocka_unit_test_setup_teardown(copy_bandwidth_validates_and_measures, setup, teardown),
      cmocka_unit_test_setup_teardown(device_stats_count_ops_and_bytes, setup, teardown),
      cmocka_unit_test(destroy_functions_accept_null),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
