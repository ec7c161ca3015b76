/*
 * kq_llama.h — a llama-family decoder (GGUF "llama" architecture) in plain
 * C: RMSNorm, RoPE (pairs layout, the file's frequency base), grouped-query
 * attention through a pluggable attention (normally a kqsvd cache), SwiGLU
 * MLP, tied or untied output. Q4_0/Q4_1/Q8_0 weights stay in their blocks
 * and are expanded inside the matrix product; other types are dequantised
 * to float32 at load. Matrix products run on a thread team over weight-row
 * blocks (AVX2+FMA kernels where the CPU has them, portable C otherwise;
 * define KQ_MODEL_NO_SIMD to build only the portable path).
 */
#ifndef KQ_LLAMA_H
#define KQ_LLAMA_H

#include <stdint.h>

#include "kq_projections_internal.h"
#include "kq_tokenizer.h"
#include "kqsvd.h"

typedef struct kq_llama_hparams {
  int32_t n_layers, n_embd, n_ff, n_heads, n_kv_heads, head_dim, n_vocab, n_ctx_train;
  float rope_theta, rms_eps;
} kq_llama_hparams;

typedef struct kq_llama kq_llama;

/* Loads a GGUF llama model and its tokenizer. n_threads 0 = all cores.
 * Errors name the file and the key or tensor (missing, wrong shape,
 * unsupported type); KQ_ERR_UNSUPPORTED for another architecture. */
kq_status kq_llama_load(const char *path, int n_threads, kq_llama **out_model);
void kq_llama_destroy(kq_llama *model);

const kq_llama_hparams *kq_llama_get_hparams(const kq_llama *model);

/* The model's identity as projection and calibration files record it (SPEC
 * §1b): name = the GGUF's general.name ("" without one), sha256 = SHA-256 of
 * the whole GGUF file (what `sha256sum MODEL.gguf` prints). The hash is
 * computed on the first call (one read of the file) and kept. Errors name
 * the file. */
kq_status kq_llama_identity(kq_llama *model, const kq_model_identity **out_id);

/* The GGUF path the model was loaded from. */
const char *kq_llama_path(const kq_llama *model);

/* tokenizer.chat_template of the GGUF (NUL-terminated copy), NULL when the
 * file has none. */
const char *kq_llama_chat_template(const kq_llama *model);
const kq_tokenizer *kq_llama_get_tokenizer(const kq_llama *model);

/* Where a layer's keys/values go and its attention comes from. Shapes:
 * k, v [n, n_kv_heads, head_dim]; q, out [m, n_heads, head_dim]; the m
 * queries are the last m appended positions. rotate = 1: the model applies
 * RoPE to q and k before append/attend; 0: it passes them un-rotated (the
 * attention rotates, as a kqsvd cache in PRE mode does). */
typedef struct kq_llama_attention {
  void *ctx;
  int rotate;
  kq_status (*append)(void *ctx, int32_t layer, int32_t n, const float *k, const float *v);
  kq_status (*attend)(void *ctx, int32_t layer, int32_t m, const float *q, float *out);
} kq_llama_attention;

/* Optional per-layer tap for calibration capture: q [n, H, d], k, v
 * [n, Hk, d]; q_raw/k_raw before RoPE, q_rot/k_rot after. Called on the
 * calling thread; a non-OK return aborts the forward pass. */
typedef kq_status (*kq_llama_tap_fn)(void *user, int32_t layer, int32_t n, const float *q_raw,
                                     const float *k_raw, const float *q_rot, const float *k_rot,
                                     const float *v);

typedef struct kq_llama_eval {
  const int32_t *tokens; /* [n] */
  int32_t n;
  int32_t pos0;        /* position of tokens[0] = tokens already in the attention */
  float *logits;       /* NULL, [n, n_vocab], or [n_vocab] when last_only */
  int last_only;       /* compute logits of the last token only */
  kq_llama_tap_fn tap; /* optional */
  void *tap_user;
} kq_llama_eval;

/* Runs the decoder on eval->n tokens (all layers, batched). Errors from the
 * attention are passed on with the layer named. */
kq_status kq_llama_forward(kq_llama *model, const kq_llama_attention *attn,
                           const kq_llama_eval *eval);

/* Copies layer `layer`'s attention output weight W_O, [n_embd, n_heads *
 * head_dim] row-major (PyTorch o_proj.weight layout), into dst. */
kq_status kq_llama_copy_wo(const kq_llama *model, int32_t layer, float *dst);

/* The model's attention geometry as projection metadata (rope = POST,
 * pairs layout, the model's theta); method KQSVD. */
kq_projections_info kq_llama_projection_info(const kq_llama *model);

/* Checks that `info` fits the model (layers, heads, kv heads, head_dim) and,
 * for PRE rope, that its theta and layout are the model's. KQ_ERR_FORMAT
 * naming the mismatch. */
kq_status kq_llama_check_projections(const kq_llama *model, const kq_projections_info *info);

/* An attention that appends to / attends from `cache` (full outputs).
 * rotate = 0 for a PRE-rope cache, 1 otherwise. `cache` must outlive it. */
kq_llama_attention kq_llama_cache_attention(kq_cache *cache, kq_rope_mode rope);

/* Applies RoPE (pairs layout) in place to x [n, n_heads, head_dim] at
 * positions pos0 + t. */
void kq_llama_rope(float *x, int32_t n, int32_t n_heads, int32_t head_dim, int32_t pos0,
                   float theta);

#endif /* KQ_LLAMA_H */
