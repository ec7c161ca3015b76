/*
 * naive_attention.h — test-only causal GQA attention over full keys/values
 * in float64 accumulation, plugged into kq_llama_forward as an independent
 * check of the kqsvd cache path. Keys arrive rotated (rotate = 1).
 */
#ifndef KQ_TEST_NAIVE_ATTENTION_H
#define KQ_TEST_NAIVE_ATTENTION_H

#include "model/kq_llama.h"

typedef struct naive_attention naive_attention;

/* A cache for n_layers layers of capacity tokens; NULL on allocation failure. */
naive_attention *naive_attention_create(int32_t n_layers, int32_t n_heads, int32_t n_kv_heads,
                                        int32_t head_dim, int32_t capacity);
void naive_attention_destroy(naive_attention *a);
kq_llama_attention naive_attention_iface(naive_attention *a);

#endif
