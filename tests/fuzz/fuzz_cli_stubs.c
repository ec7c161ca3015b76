/*
 * fuzz_cli_stubs.c — stand-ins for the public device and cache API, which
 * kq_eval's device path references but the CLI fuzz harness never reaches
 * (kq_eval is replaced there). Each fails cleanly with KQ_ERR_UNSUPPORTED, so
 * that reaching one by accident is an error, not a crash.
 */
#include <stddef.h>

#include "common/kq_common.h"
#include "kqsvd.h"

#define KQ_FUZZ_UNSUPPORTED                                                                        \
  return kq_set_error(KQ_ERR_UNSUPPORTED, "%s: not in the fuzz build", __func__)

kq_status kq_device_create(const char *name, kq_device **out_device) {
  (void)name;
  (void)out_device;
  KQ_FUZZ_UNSUPPORTED;
}
kq_status kq_device_get_info(const kq_device *device, kq_device_info *out_info) {
  (void)device;
  (void)out_info;
  KQ_FUZZ_UNSUPPORTED;
}
void kq_device_destroy(kq_device *device) {
  (void)device;
}

kq_cache_params kq_cache_default_params(void) {
  kq_cache_params p = {
      .struct_size = sizeof p, .storage = KQ_STORAGE_F32, .capacity = 4096, .n_seqs = 1};
  return p;
}
kq_status kq_cache_create(kq_device *device, const kq_projections *proj,
                          const kq_cache_params *params, kq_cache **out_cache) {
  (void)device;
  (void)proj;
  (void)params;
  (void)out_cache;
  KQ_FUZZ_UNSUPPORTED;
}
kq_status kq_cache_append(kq_cache *cache, int32_t layer, int32_t n_tokens, const float *keys,
                          const float *values) {
  (void)cache;
  (void)layer;
  (void)n_tokens;
  (void)keys;
  (void)values;
  KQ_FUZZ_UNSUPPORTED;
}
kq_status kq_cache_attend(kq_cache *cache, int32_t layer, int32_t n_queries, const float *queries,
                          kq_output output, float *out) {
  (void)cache;
  (void)layer;
  (void)n_queries;
  (void)queries;
  (void)output;
  (void)out;
  KQ_FUZZ_UNSUPPORTED;
}
kq_status kq_cache_truncate(kq_cache *cache, int32_t length) {
  (void)cache;
  (void)length;
  KQ_FUZZ_UNSUPPORTED;
}
void kq_cache_destroy(kq_cache *cache) {
  (void)cache;
}
