/*
 * test_exhaustion.c — resource exhaustion gives clean errors, never a crash.
 *
 * usage: test_exhaustion BACKEND   (cpu, vulkan, opencl): for every device
 * of that backend,
 *   - a cache far larger than the device's memory (tens of TiB) and one a
 *     few times its memory_bytes fail in kq_cache_create with
 *     KQ_ERR_DEVICE_MEMORY and a message naming the device (kqsvd.h's
 *     documented status), leaving no cache behind;
 *   - the device still works afterwards (a small cache appends and attends);
 *   - appending past capacity gives KQ_ERR_CAPACITY and keeps the length.
 * Exit 77 (ctest SKIPPED) when there is no such device.
 *
 * usage: test_exhaustion host — host allocations of absurd size
 * (kq_projections_create / _create_identity with shapes whose byte size is
 * beyond memory or overflows size_t) fail with KQ_ERR_OUT_OF_MEMORY or
 * KQ_ERR_INVALID_ARGUMENT and a message, never crash.
 */
#include "rel_util.h"

static void expect_device_memory(kq_device *dev, const char *name, const kq_projections *proj,
                                 int32_t capacity, const char *what) {
  kq_cache_params cp = kq_cache_default_params();
  cp.capacity = capacity;
  kq_cache *cache = (kq_cache *)&cp; /* must be reset to NULL on failure */
  kq_status st = kq_cache_create(dev, proj, &cp, &cache);
  if (st == KQ_OK) kq_cache_destroy(cache);
  REL_CHECK(st == KQ_ERR_DEVICE_MEMORY, "%s on %s: expected KQ_ERR_DEVICE_MEMORY, got %s (%s)",
            what, name, kq_status_string(st), kq_last_error());
  REL_CHECK(strstr(kq_last_error(), name) != NULL, "%s: message does not name device %s: '%s'",
            what, name, kq_last_error());
  REL_CHECK(cache == NULL, "%s: failed kq_cache_create left a non-NULL cache", what);
  printf("  %s: %s\n", what, kq_last_error());
}

static void small_cache_works(kq_device *dev, const char *name) {
  kq_projections_info pi = {.method = KQ_METHOD_KQSVD,
                            .n_layers = 1,
                            .n_heads = 2,
                            .n_kv_heads = 1,
                            .head_dim = 16,
                            .rope = KQ_ROPE_POST,
                            .rope_layout = KQ_ROPE_PAIRS,
                            .rope_theta = 10000.0f};
  kq_projections *proj = rel_projections(&pi, 4, 4, 3);
  kq_cache_params cp = kq_cache_default_params();
  cp.capacity = 8;
  kq_cache *cache = NULL;
  REL_OK(kq_cache_create(dev, proj, &cp, &cache));
  float k[9 * 16], v[9 * 16], q[9 * 2 * 16], out[9 * 2 * 16];
  rel_fill(k, 9 * 16, 1);
  rel_fill(v, 9 * 16, 2);
  rel_fill(q, 9 * 2 * 16, 3);
  REL_OK(kq_cache_append(cache, 0, 8, k, v));
  REL_OK(kq_cache_attend(cache, 0, 8, q, KQ_OUTPUT_FULL, out));
  for (int i = 0; i < 8 * 2 * 16; i++)
    REL_CHECK(out[i] == out[i] && out[i] > -1e30f && out[i] < 1e30f, "%s: output %d not finite",
              name, i);
  kq_status st = kq_cache_append(cache, 0, 1, k + 8 * 16, v + 8 * 16);
  REL_CHECK(st == KQ_ERR_CAPACITY, "%s: append past capacity gave %s, expected KQ_ERR_CAPACITY",
            name, kq_status_string(st));
  REL_CHECK(kq_cache_length(cache, 0) == 8, "%s: failed append changed the length to %d", name,
            (int)kq_cache_length(cache, 0));
  REL_OK(kq_cache_attend(cache, 0, 1, q, KQ_OUTPUT_FULL, out));
  kq_cache_destroy(cache);
  kq_projections_destroy(proj);
}

static void test_device(const char *name) {
  kq_device *dev = NULL;
  REL_OK(kq_device_create(name, &dev));
  kq_device_info info;
  REL_OK(kq_device_get_info(dev, &info));
  /* 4 layers x 8 kv heads x (128 + 128) latents x 4 bytes = 32 KiB a token. */
  kq_projections_info pi = {.method = KQ_METHOD_KQSVD,
                            .n_layers = 4,
                            .n_heads = 8,
                            .n_kv_heads = 8,
                            .head_dim = 128,
                            .rope = KQ_ROPE_POST,
                            .rope_layout = KQ_ROPE_PAIRS,
                            .rope_theta = 10000.0f};
  kq_projections *proj = rel_projections(&pi, 128, 128, 5);
  const uint64_t per_token = 4ull * 8 * 256 * 4;
  printf("%s: memory %llu bytes, max buffer %llu bytes\n", name,
         (unsigned long long)info.memory_bytes, (unsigned long long)info.max_buffer_bytes);
  expect_device_memory(dev, name, proj, INT32_MAX, "cache of 64 TiB");
  uint64_t cap = info.memory_bytes / per_token * 4;
  if (cap > 0 && cap < INT32_MAX) {
    char what[64];
    snprintf(what, sizeof what, "cache of 4x device memory (%llu tokens)", (unsigned long long)cap);
    expect_device_memory(dev, name, proj, (int32_t)cap, what);
  }
  kq_projections_destroy(proj);
  small_cache_works(dev, name);
  kq_device_destroy(dev);
  printf("%s: over-size caches fail with KQ_ERR_DEVICE_MEMORY; the device works afterwards\n",
         name);
}

static void expect_alloc_error(kq_status st, kq_projections *p, const char *what) {
  kq_projections_destroy(p);
  REL_CHECK(st == KQ_ERR_OUT_OF_MEMORY || st == KQ_ERR_INVALID_ARGUMENT,
            "%s: expected KQ_ERR_OUT_OF_MEMORY or KQ_ERR_INVALID_ARGUMENT, got %s", what,
            kq_status_string(st));
  REL_CHECK(kq_last_error()[0] != '\0', "%s: no error message", what);
  printf("  %s: %s: %s\n", what, kq_status_string(st), kq_last_error());
}

static void test_host(void) {
  static const struct {
    int32_t layers, heads, kv_heads, dim;
    const char *what;
  } cases[] = {
      {1, 1 << 20, 1 << 20, 1 << 20, "2^60 floats a matrix"},
      {2, 1 << 30, 1 << 30, 1 << 30, "size_t-overflowing shape"},
      {1, 8, 8, 1 << 24, "16 Mi head_dim (2^51 bytes)"},
      /* Inside every range check, so the allocation itself must fail. */
      {1, 65536, 65536, 65536, "largest legal shape (2^50 bytes a matrix)"},
      {2, 4096, 4096, 65536, "2^46 bytes a matrix"},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    kq_projections_info pi = {.method = KQ_METHOD_KQSVD,
                              .n_layers = cases[c].layers,
                              .n_heads = cases[c].heads,
                              .n_kv_heads = cases[c].kv_heads,
                              .head_dim = cases[c].dim,
                              .rope = KQ_ROPE_NONE,
                              .rope_layout = KQ_ROPE_PAIRS,
                              .rope_theta = 10000.0f};
    kq_projections *p = NULL;
    expect_alloc_error(kq_projections_create_identity(&pi, &p), p, cases[c].what);
    if (cases[c].layers <= 2) {
      int32_t r[2] = {cases[c].dim, cases[c].dim};
      p = NULL;
      expect_alloc_error(kq_projections_create(&pi, r, r, &p), p, cases[c].what);
    }
  }
  printf("host: absurd allocations fail cleanly\n");
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: test_exhaustion BACKEND|host\n");
    return 2;
  }
  if (!strcmp(argv[1], "host")) {
    test_host();
    return 0;
  }
  char names[16][32];
  int n = rel_devices(argv[1], names, 16);
  if (n == 0) {
    printf("no %s device found: SKIPPED\n", argv[1]);
    return REL_SKIP;
  }
  for (int i = 0; i < n; i++) test_device(names[i]);
  return 0;
}
