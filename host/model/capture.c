/* Calibration capture (SPEC §2): per layer q [H,T,d], k/v [Hk,T,d] from a
 * full-attention run over whole sequences, plus the layer's W_O. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kq_model_run.h"
#include "kq_safetensors.h"

typedef struct capture_state {
  const kq_llama_hparams *hp;
  int64_t T;           /* total tokens captured */
  int64_t t_base;      /* time index of the current forward call's first token */
  int rotated;         /* store rotated q/k (POST) */
  float **q, **k, **v; /* per layer [H or Hk, T, d] */
} capture_state;

/* Scatters [n, heads, d] rows into [heads, T, d] at time t_base. */
static void scatter(float *dst, const float *src, int32_t n, int32_t heads, int32_t d, int64_t T,
                    int64_t t_base) {
  for (int32_t t = 0; t < n; t++)
    for (int32_t h = 0; h < heads; h++)
      memcpy(dst + ((size_t)h * T + (size_t)(t_base + t)) * d, src + ((size_t)t * heads + h) * d,
             (size_t)d * sizeof(float));
}

static kq_status tap(void *user, int32_t layer, int32_t n, const float *q_raw, const float *k_raw,
                     const float *q_rot, const float *k_rot, const float *v) {
  capture_state *c = user;
  const kq_llama_hparams *hp = c->hp;
  scatter(c->q[layer], c->rotated ? q_rot : q_raw, n, hp->n_heads, hp->head_dim, c->T, c->t_base);
  scatter(c->k[layer], c->rotated ? k_rot : k_raw, n, hp->n_kv_heads, hp->head_dim, c->T,
          c->t_base);
  scatter(c->v[layer], v, n, hp->n_kv_heads, hp->head_dim, c->T, c->t_base);
  return KQ_OK;
}

static kq_status add_tensor(kq_st_writer *w, const char *name, kq_dtype dtype, int n_dims,
                            const int64_t *shape, float *data, size_t count) {
  if (dtype == KQ_DTYPE_F16) { /* convert in place: the buffer is ours */
    uint16_t *h = (uint16_t *)data;
    for (size_t j = 0; j < count; j++) h[j] = kq_f32_to_f16(data[j]);
  }
  return kq_st_writer_add(w, name, dtype, n_dims, shape, data);
}

kq_status kq_model_capture(kq_llama *model, kq_device *device, const int32_t *ids, int64_t n,
                           const char *out_path, const kq_capture_params *p, int64_t *out_tokens) {
  const kq_llama_hparams *hp = kq_llama_get_hparams(model);
  int32_t L = hp->n_layers, d = hp->head_dim, H = hp->n_heads, Hk = hp->n_kv_heads;
  if (p->seq_len < 2 || (p->dtype != KQ_DTYPE_F32 && p->dtype != KQ_DTYPE_F16) ||
      (p->rope != KQ_ROPE_POST && p->rope != KQ_ROPE_PRE))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "capture: seq_len must be >= 2, dtype F32/F16, rope post/pre");
  int64_t usable = p->max_tokens > 0 && p->max_tokens < n ? p->max_tokens : n;
  int64_t n_seqs = usable / p->seq_len;
  if (n_seqs < 1)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "capture: the text gives %lld tokens, fewer than one sequence of %d",
                        (long long)usable, p->seq_len);
  int64_t T = n_seqs * p->seq_len;
  int32_t batch = p->batch > 0 ? p->batch : 64;
  capture_state c = {.hp = hp, .T = T, .rotated = p->rope == KQ_ROPE_POST};
  kq_model_session sess = {0};
  kq_st_writer *w = NULL;
  float **bufs = kq_calloc_array((size_t)L * 4, sizeof(float *), "capture buffers");
  if (!bufs) return KQ_ERR_OUT_OF_MEMORY;
  c.q = bufs, c.k = bufs + L, c.v = bufs + 2 * L;
  float **wo = bufs + 3 * L;
  kq_status st = KQ_OK;
  for (int32_t l = 0; l < L && st == KQ_OK; l++) {
    c.q[l] = kq_malloc_array((size_t)H * T, (size_t)d * sizeof(float), "captured q");
    c.k[l] = kq_malloc_array((size_t)Hk * T, (size_t)d * sizeof(float), "captured k");
    c.v[l] = kq_malloc_array((size_t)Hk * T, (size_t)d * sizeof(float), "captured v");
    wo[l] = kq_malloc_array((size_t)hp->n_embd * H, (size_t)d * sizeof(float), "captured wo");
    if (!c.q[l] || !c.k[l] || !c.v[l] || !wo[l]) st = KQ_ERR_OUT_OF_MEMORY;
    if (st == KQ_OK) st = kq_llama_copy_wo(model, l, wo[l]);
  }
  if (st == KQ_OK)
    st = kq_model_session_create(model, device, NULL, KQ_STORAGE_F32, p->seq_len, &sess);
  for (int64_t s = 0; s < n_seqs && st == KQ_OK; s++) {
    st = kq_cache_truncate(sess.cache, 0);
    for (int32_t b = 0; b < p->seq_len && st == KQ_OK; b += batch) {
      if (p->cancel && *p->cancel) {
        st = kq_set_error(KQ_ERR_INTERRUPTED, "capture: interrupted");
        break;
      }
      int32_t m = p->seq_len - b < batch ? p->seq_len - b : batch;
      c.t_base = s * p->seq_len + b;
      kq_llama_eval ev = {.tokens = ids + c.t_base, .n = m, .pos0 = b, .tap = tap, .tap_user = &c};
      st = kq_llama_forward(model, &sess.attn, &ev);
    }
    if (st == KQ_OK && p->progress)
      p->progress(p->progress_user, (int32_t)(s + 1), (int32_t)n_seqs, "capture");
  }
  kq_model_session_destroy(&sess);
  if (st == KQ_OK) st = kq_st_writer_create(out_path, &w);
  char text[64];
  if (st == KQ_OK) {
    snprintf(text, sizeof text, "%d", p->seq_len);
    st = kq_st_writer_meta(w, "seq_len", text);
  }
  if (st == KQ_OK) st = kq_st_writer_meta(w, "rope", c.rotated ? "post" : "pre");
  if (st == KQ_OK) {
    snprintf(text, sizeof text, "%.9g", hp->rope_theta);
    st = kq_st_writer_meta(w, "rope_theta", text);
  }
  if (st == KQ_OK) st = kq_st_writer_meta(w, "rope_layout", "pairs");
  const kq_model_identity *id = NULL; /* SPEC §1b: fit copies it into the projections */
  if (st == KQ_OK) st = kq_llama_identity(model, &id);
  if (st == KQ_OK && id->name[0]) st = kq_st_writer_meta(w, "model_name", id->name);
  if (st == KQ_OK) st = kq_st_writer_meta(w, "model_sha256", id->sha256);
  for (int32_t l = 0; l < L && st == KQ_OK; l++) {
    char name[64];
    int64_t sq[3] = {H, T, d}, skv[3] = {Hk, T, d}, swo[2] = {hp->n_embd, (int64_t)H * d};
    snprintf(name, sizeof name, "layers.%d.q", l);
    st = add_tensor(w, name, p->dtype, 3, sq, c.q[l], (size_t)H * T * d);
    snprintf(name, sizeof name, "layers.%d.k", l);
    if (st == KQ_OK) st = add_tensor(w, name, p->dtype, 3, skv, c.k[l], (size_t)Hk * T * d);
    snprintf(name, sizeof name, "layers.%d.v", l);
    if (st == KQ_OK) st = add_tensor(w, name, p->dtype, 3, skv, c.v[l], (size_t)Hk * T * d);
    snprintf(name, sizeof name, "layers.%d.wo", l);
    if (st == KQ_OK) st = add_tensor(w, name, p->dtype, 2, swo, wo[l], (size_t)hp->n_embd * H * d);
  }
  if (st == KQ_OK) st = kq_st_writer_commit(w, p->cancel);
  kq_st_writer_destroy(w);
  for (int32_t l = 0; l < 4 * L; l++) free(bufs[l]);
  free(bufs);
  if (st == KQ_OK) *out_tokens = T;
  return st;
}
