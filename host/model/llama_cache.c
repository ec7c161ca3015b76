/* Adapter: a kqsvd cache as the decoder's attention. Kept apart from
 * llama.c so code that brings its own attention needs no backend. */
#include "kq_llama.h"

static kq_status cache_append(void *ctx, int32_t layer, int32_t n, const float *k, const float *v) {
  return kq_cache_append(ctx, layer, n, k, v);
}

static kq_status cache_attend(void *ctx, int32_t layer, int32_t m, const float *q, float *out) {
  return kq_cache_attend(ctx, layer, m, q, KQ_OUTPUT_FULL, out);
}

kq_llama_attention kq_llama_cache_attention(kq_cache *cache, kq_rope_mode rope) {
  kq_llama_attention a = {
      .ctx = cache, .rotate = rope != KQ_ROPE_PRE, .append = cache_append, .attend = cache_attend};
  return a;
}
