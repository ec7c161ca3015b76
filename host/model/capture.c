/* Calibration capture (SPEC §2): per layer q [H,T,d], k/v [Hk,T,d] from a
 * full-attention run over whole sequences, plus the layer's W_O, written
 * through the public calibration writer (kq_calib_writer_*), as an engine
 * with its own model code would. */
#include <stdlib.h>

#include "kq_model_run.h"

typedef struct capture_state {
  kq_calib_writer *w;
  int rotated; /* store rotated q/k (POST) */
} capture_state;

static kq_status tap(void *user, int32_t layer, int32_t n, const float *q_raw, const float *k_raw,
                     const float *q_rot, const float *k_rot, const float *v) {
  capture_state *c = user;
  return kq_calib_writer_add(c->w, layer, n, c->rotated ? q_rot : q_raw, c->rotated ? k_rot : k_raw,
                             v);
}

kq_status kq_model_capture(kq_llama *model, kq_device *device, const int32_t *ids, int64_t n,
                           const char *out_path, const kq_capture_params *p, int64_t *out_tokens) {
  const kq_llama_hparams *hp = kq_llama_get_hparams(model);
  int32_t L = hp->n_layers, d = hp->head_dim, H = hp->n_heads;
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
  int32_t batch = p->batch > 0 ? p->batch : 64;
  capture_state c = {.rotated = p->rope == KQ_ROPE_POST};
  kq_calib_writer_params wp = kq_calib_writer_default_params();
  wp.n_layers = L;
  wp.n_heads = H;
  wp.n_kv_heads = hp->n_kv_heads;
  wp.head_dim = d;
  wp.hidden = hp->n_embd;
  wp.seq_len = p->seq_len;
  wp.rope = p->rope;
  wp.rope_layout = KQ_ROPE_PAIRS;
  wp.rope_theta = hp->rope_theta;
  wp.dtype = p->dtype;
  wp.cancel = p->cancel;
  const kq_model_identity *id = NULL; /* SPEC §1b: fit copies it into the projections */
  kq_status st = kq_llama_identity(model, &id);
  if (st != KQ_OK) return st;
  st = kq_calib_writer_open(out_path, &wp, &c.w);
  if (st != KQ_OK) return st;
  if (id->name[0]) st = kq_calib_writer_set_meta(c.w, "model_name", id->name);
  if (st == KQ_OK) st = kq_calib_writer_set_meta(c.w, "model_sha256", id->sha256);
  float *wo = kq_malloc_array((size_t)hp->n_embd * H, (size_t)d * sizeof(float), "captured wo");
  if (!wo) st = KQ_ERR_OUT_OF_MEMORY;
  for (int32_t l = 0; l < L && st == KQ_OK; l++) {
    st = kq_llama_copy_wo(model, l, wo);
    if (st == KQ_OK) st = kq_calib_writer_set_wo(c.w, l, wo);
  }
  free(wo);
  kq_model_session sess = {0};
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
      kq_llama_eval ev = {
          .tokens = ids + s * p->seq_len + b, .n = m, .pos0 = b, .tap = tap, .tap_user = &c};
      st = kq_llama_forward(model, &sess.attn, &ev);
    }
    if (st == KQ_OK && p->progress)
      p->progress(p->progress_user, (int32_t)(s + 1), (int32_t)n_seqs, "capture");
  }
  kq_model_session_destroy(&sess);
  if (st != KQ_OK) {
    kq_calib_writer_abort(c.w);
    return st;
  }
  st = kq_calib_writer_close(c.w);
  if (st == KQ_OK) *out_tokens = n_seqs * p->seq_len;
  return st;
}
