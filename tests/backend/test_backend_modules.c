/* Backend modules found through KQSVD_BACKEND_PATH: a module built for
 * another ABI version (or with a truncated interface) is refused with
 * KQ_ERR_ABI and a message naming its path and both versions, a module
 * without the entry symbol or without devices contributes nothing, and the
 * cpu device keeps working. KQ_TEST_MODULE_DIR holds the fake modules
 * (fake_module.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../backend/core/kq_core.h"
#include "kqsvd.h"

/* The index of the problem that mentions `needle`, or -1. */
static int find_problem(const char *needle) {
  for (int i = 0; i < kq_backend_problem_count(); i++)
    if (strstr(kq_backend_problem(i), needle)) return i;
  return -1;
}

static void wrong_abi_module_is_refused_naming_path_and_versions(void **state) {
  (void)state;
  int i = find_problem("libkqsvd-badabi");
  assert_true(i >= 0);
  assert_int_equal(kq_backend_problem_status(i), KQ_ERR_ABI);
  const char *msg = kq_backend_problem(i);
  char want[64];
  snprintf(want, sizeof want, "version %u", KQ_BACKEND_ABI_VERSION + 98u);
  assert_non_null(strstr(msg, want));
  snprintf(want, sizeof want, "version %u", KQ_BACKEND_ABI_VERSION);
  assert_non_null(strstr(msg, want));
  assert_non_null(strstr(msg, KQ_TEST_MODULE_DIR));

  /* Asking for that backend's device reports the refusal itself. */
  kq_device *dev = NULL;
  assert_int_equal(kq_device_create("badabi:0", &dev), KQ_ERR_ABI);
  assert_null(dev);
  assert_non_null(strstr(kq_last_error(), "libkqsvd-badabi"));
}

static void truncated_interface_is_refused(void **state) {
  (void)state;
  int i = find_problem("libkqsvd-short");
  assert_true(i >= 0);
  assert_int_equal(kq_backend_problem_status(i), KQ_ERR_ABI);
  assert_non_null(strstr(kq_backend_problem(i), "smaller"));
}

static void module_without_entry_symbol_is_reported(void **state) {
  (void)state;
  int i = find_problem("libkqsvd-noentry");
  assert_true(i >= 0);
  assert_non_null(strstr(kq_backend_problem(i), "kq_backend_entry"));
}

static void module_without_devices_contributes_none_and_no_problem(void **state) {
  (void)state;
  assert_int_equal(find_problem("libkqsvd-empty"), -1);
  int n = 0;
  assert_int_equal(kq_device_count(&n), KQ_OK);
  for (int d = 0; d < n; d++) {
    kq_device_info info;
    assert_int_equal(kq_device_info_get(d, &info), KQ_OK);
    assert_string_not_equal(info.backend, "fake");
  }
  kq_device *dev = NULL;
  assert_int_equal(kq_device_create("fake:0", &dev), KQ_ERR_NOT_FOUND);
}

static void module_device_is_named_and_its_limits_are_enforced(void **state) {
  (void)state;
  kq_device *dev = NULL;
  assert_int_equal(kq_device_create("fakegpu:0", &dev), KQ_OK);
  kq_device_info info;
  assert_int_equal(kq_device_get_info(dev, &info), KQ_OK);
  assert_string_equal(info.name, "fakegpu:0");
  assert_string_equal(info.backend, "fakegpu");
  assert_int_equal(kq_device_create("fakegpu:1", &(kq_device *){NULL}), KQ_ERR_NOT_FOUND);

  kq_projections_info pinfo = {.n_layers = 1,
                               .n_heads = 8,
                               .n_kv_heads = 8,
                               .head_dim = 128,
                               .rope = KQ_ROPE_POST,
                               .rope_theta = 10000.0f};
  kq_projections *proj = NULL;
  assert_int_equal(kq_projections_create_identity(&pinfo, &proj), KQ_OK);
  kq_cache *cache = NULL;
  kq_cache_params p = kq_cache_default_params();
  p.storage = KQ_STORAGE_F16; /* the device has no F16 storage */
  assert_int_equal(kq_cache_create(dev, proj, &p, &cache), KQ_ERR_UNSUPPORTED);
  assert_non_null(strstr(kq_last_error(), "fakegpu:0"));
  p.storage = KQ_STORAGE_F32;
  p.capacity = 1 << 20; /* 8 heads x 2^20 x 256 x 4 bytes = 8 GiB > 1 GiB */
  assert_int_equal(kq_cache_create(dev, proj, &p, &cache), KQ_ERR_DEVICE_MEMORY);
  assert_non_null(strstr(kq_last_error(), "fakegpu:0"));
  assert_non_null(strstr(kq_last_error(), "8589934592"));
  assert_null(cache);
  kq_projections_destroy(proj);
  kq_device_destroy(dev);
}

static void cpu_still_works_beside_refused_modules(void **state) {
  (void)state;
  kq_device *dev = NULL;
  assert_int_equal(kq_device_create("cpu", &dev), KQ_OK);
  kq_projections_info info = {.n_layers = 1,
                              .n_heads = 2,
                              .n_kv_heads = 1,
                              .head_dim = 8,
                              .rope = KQ_ROPE_NONE,
                              .rope_theta = 10000.0f};
  kq_projections *proj = NULL;
  assert_int_equal(kq_projections_create_identity(&info, &proj), KQ_OK);
  kq_cache *cache = NULL;
  assert_int_equal(kq_cache_create(dev, proj, NULL, &cache), KQ_OK);
  /* One token: attention returns its value exactly. */
  float k[8] = {1, 2, 3, 4, 5, 6, 7, 8}, v[8] = {8, 7, 6, 5, 4, 3, 2, 1}, q[16] = {0}, out[16];
  assert_int_equal(kq_cache_append(cache, 0, 1, k, v), KQ_OK);
  assert_int_equal(kq_cache_attend(cache, 0, 1, q, KQ_OUTPUT_FULL, out), KQ_OK);
  for (int h = 0; h < 2; h++)
    for (int i = 0; i < 8; i++) assert_true(out[h * 8 + i] == v[i]);
  kq_cache_destroy(cache);
  kq_projections_destroy(proj);
  kq_device_destroy(dev);
}

int main(void) {
  setenv("KQSVD_BACKEND_PATH", "/nonexistent/dir:" KQ_TEST_MODULE_DIR, 1);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(wrong_abi_module_is_refused_naming_path_and_versions),
      cmocka_unit_test(truncated_interface_is_refused),
      cmocka_unit_test(module_without_entry_symbol_is_reported),
      cmocka_unit_test(module_without_devices_contributes_none_and_no_problem),
      cmocka_unit_test(module_device_is_named_and_its_limits_are_enforced),
      cmocka_unit_test(cpu_still_works_beside_refused_modules),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
