/* Test-only reference attention: softmax(q kᵀ / sqrt(d)) v per query head,
 * causal, accumulated in double. */
#include "naive_attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct naive_attention {
  int32_t n_layers, n_heads, n_kv_heads, head_dim, capacity;
  int32_t *len;
  float *k, *v; /* [n_layers, capacity, n_kv_heads, head_dim] */
};

naive_attention *naive_attention_create(int32_t n_layers, int32_t n_heads, int32_t n_kv_heads,
                                        int32_t head_dim, int32_t capacity) {
  naive_attention *a = calloc(1, sizeof *a);
  if (!a) return NULL;
  *a = (naive_attention){n_layers, n_heads, n_kv_heads, head_dim, capacity, NULL, NULL, NULL};
  size_t per = (size_t)capacity * n_kv_heads * head_dim;
  a->len = calloc((size_t)n_layers, sizeof *a->len);
  a->k = malloc((size_t)n_layers * per * sizeof(float));
  a->v = malloc((size_t)n_layers * per * sizeof(float));
  if (!a->len || !a->k || !a->v) {
    naive_attention_destroy(a);
    return NULL;
  }
  return a;
}

void naive_attention_destroy(naive_attention *a) {
  if (!a) return;
  free(a->len);
  free(a->k);
  free(a->v);
  free(a);
}

static kq_status append(void *ctx, int32_t layer, int32_t n, const float *k, const float *v) {
  naive_attention *a = ctx;
  if (a->len[layer] + n > a->capacity)
    return kq_set_error(KQ_ERR_CAPACITY, "naive attention: capacity %d exceeded", a->capacity);
  size_t row = (size_t)a->n_kv_heads * a->head_dim;
  size_t off = ((size_t)layer * a->capacity + a->len[layer]) * row;
  memcpy(a->k + off, k, (size_t)n * row * sizeof(float));
  memcpy(a->v + off, v, (size_t)n * row * sizeof(float));
  a->len[layer] += n;
  return KQ_OK;
}

static kq_status attend(void *ctx, int32_t layer, int32_t m, const float *q, float *out) {
  naive_attention *a = ctx;
  int32_t d = a->head_dim, g = a->n_heads / a->n_kv_heads, len = a->len[layer];
  size_t row = (size_t)a->n_kv_heads * d;
  const float *K = a->k + (size_t)layer * a->capacity * row;
  const float *V = a->v + (size_t)layer * a->capacity * row;
  double *w = malloc((size_t)len * sizeof(double));
  double *acc = malloc((size_t)d * sizeof(double));
  if (!w || !acc) {
    free(w);
    free(acc);
    return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "naive attention: out of memory");
  }
  for (int32_t j = 0; j < m; j++) {
    int32_t pos = len - m + j;
    for (int32_t h = 0; h < a->n_heads; h++) {
      const float *qv = q + ((size_t)j * a->n_heads + h) * d;
      int32_t kvh = h / g;
      double mx = -INFINITY, sum = 0;
      for (int32_t t = 0; t <= pos; t++) {
        const float *kv = K + (size_t)t * row + (size_t)kvh * d;
        double s = 0;
        for (int32_t c = 0; c < d; c++) s += (double)qv[c] * kv[c];
        w[t] = s / sqrt((double)d);
        if (w[t] > mx) mx = w[t];
      }
      for (int32_t t = 0; t <= pos; t++) sum += (w[t] = exp(w[t] - mx));
      for (int32_t c = 0; c < d; c++) acc[c] = 0;
      for (int32_t t = 0; t <= pos; t++) {
        const float *vv = V + (size_t)t * row + (size_t)kvh * d;
        for (int32_t c = 0; c < d; c++) acc[c] += w[t] * vv[c];
      }
      float *o = out + ((size_t)j * a->n_heads + h) * d;
      for (int32_t c = 0; c < d; c++) o[c] = (float)(acc[c] / sum);
    }
  }
  free(w);
  free(acc);
  return KQ_OK;
}

kq_llama_attention naive_attention_iface(naive_attention *a) {
  kq_llama_attention it = {.ctx = a, .rotate = 1, .append = append, .attend = attend};
  return it;
}
