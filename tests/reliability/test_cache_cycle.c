/*
 * test_cache_cycle.c — the cache life cycle that .ci/jobs/30-valgrind.sh
 * runs under valgrind (and ctest runs plainly and under ASan): on one
 * device, for F32/F16 storage and NONE/POST/PRE rope, create a cache, append
 * in chunks, attend (full and latent outputs, prefill and decode), truncate,
 * append again, destroy. Checks outputs are finite and that attending after
 * truncate + re-append of the same tokens reproduces the first outputs
 * bitwise (the truncated tail really is forgotten).
 *
 * usage: test_cache_cycle [DEVICE]   (default cpu)
 */
#include <math.h>

#include "rel_util.h"

enum { L = 2, H = 4, HK = 2, D = 16, RK = 6, RV = 5, T = 24 };

static void cycle(kq_device *dev, kq_storage storage, kq_rope_mode rope) {
  kq_projections_info pi = {.method = KQ_METHOD_KQSVD,
                            .n_layers = L,
                            .n_heads = H,
                            .n_kv_heads = HK,
                            .head_dim = D,
                            .rope = rope,
                            .rope_layout = KQ_ROPE_PAIRS,
                            .rope_theta = 10000.0f};
  kq_projections *proj = rel_projections(&pi, RK, RV, 11);
  kq_cache_params cp = kq_cache_default_params();
  cp.storage = storage;
  cp.capacity = T;
  kq_cache *c = NULL;
  REL_OK(kq_cache_create(dev, proj, &cp, &c));
  kq_projections_destroy(proj); /* the cache keeps its own copy */
  static float k[T * HK * D], v[T * HK * D], q[T * H * D], out[T * H * D], first[T * H * D];
  for (int32_t l = 0; l < L; l++) {
    rel_fill(k, T * HK * D, 1 + (uint64_t)l);
    rel_fill(v, T * HK * D, 2 + (uint64_t)l);
    rel_fill(q, T * H * D, 3 + (uint64_t)l);
    REL_OK(kq_cache_append(c, l, 16, k, v));
    REL_OK(kq_cache_attend(c, l, 16, q, KQ_OUTPUT_FULL, out));
    REL_OK(kq_cache_append(c, l, 1, k + 16 * HK * D, v + 16 * HK * D));
    REL_OK(kq_cache_attend(c, l, 1, q + 16 * H * D, KQ_OUTPUT_LATENT, out));
    REL_OK(kq_cache_attend(c, l, 1, q + 16 * H * D, KQ_OUTPUT_FULL, first));
    for (int i = 0; i < H * D; i++) REL_CHECK(isfinite(first[i]), "output %d not finite", i);
  }
  REL_OK(kq_cache_truncate(c, 16));
  for (int32_t l = 0; l < L; l++) {
    REL_CHECK(kq_cache_length(c, l) == 16, "length %d after truncate", (int)kq_cache_length(c, l));
    rel_fill(k, T * HK * D, 1 + (uint64_t)l);
    rel_fill(v, T * HK * D, 2 + (uint64_t)l);
    rel_fill(q, T * H * D, 3 + (uint64_t)l);
    REL_OK(kq_cache_append(c, l, 1, k + 16 * HK * D, v + 16 * HK * D));
    REL_OK(kq_cache_attend(c, l, 1, q + 16 * H * D, KQ_OUTPUT_FULL, out));
    if (l == L - 1)
      REL_CHECK(memcmp(out, first, sizeof(float) * H * D) == 0,
                "truncate + re-append does not reproduce the decode output");
  }
  kq_cache_memory mem;
  REL_OK(kq_cache_get_memory(c, &mem));
  REL_CHECK(mem.kv_bytes > 0, "no kv bytes reported");
  kq_cache_destroy(c);
}

int main(int argc, char **argv) {
  const char *name = argc > 1 ? argv[1] : "cpu";
  kq_device *dev = NULL;
  REL_OK(kq_device_create(name, &dev));
  kq_device_info info;
  REL_OK(kq_device_get_info(dev, &info));
  int n = 0;
  for (int s = 0; s < 2; s++)
    for (int r = 0; r < 3; r++) {
      if (s == 1 && !info.fp16_storage) continue;
      cycle(dev, (kq_storage)s, (kq_rope_mode)r);
      n++;
    }
  kq_device_destroy(dev);
  printf("%s: %d create/append/attend/truncate/destroy cycles\n", name, n);
  return 0;
}
