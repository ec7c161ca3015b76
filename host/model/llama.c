/* Llama-family decoder: loading (hyper-parameters, dequantised weights,
 * tokenizer) and the batched forward pass. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kq_gguf.h"
#include "kq_llama.h"
#include "kq_llama_ops.h"
#include "kqsvd_backend.h"

typedef struct layer_weights {
  float *attn_norm, *ffn_norm;
  kq_llama_weight wq, wk, wv, wo, w_gate, w_up, w_down;
} layer_weights;

struct kq_llama {
  kq_llama_hparams hp;
  int n_threads;
  kq_llama_weight tok_embd; /* [n_vocab, n_embd] */
  kq_llama_weight output;   /* [n_vocab, n_embd]; data == tok_embd's when tied */
  float *output_norm;
  layer_weights *layers;
  kq_tokenizer *tok;
  char *path;           /* the GGUF file */
  char *chat_template;  /* tokenizer.chat_template, NULL if absent */
  kq_model_identity id; /* name at load; sha256 on first kq_llama_identity */
};

static kq_status get_u32_key(const kq_gguf *f, const char *arch, const char *suffix, int32_t *out) {
  char key[128];
  snprintf(key, sizeof key, "%s.%s", arch, suffix);
  uint32_t v;
  kq_status st = kq_gguf_get_u32(f, key, &v);
  if (st != KQ_OK) return st;
  if (v == 0 || v > (1u << 24))
    return kq_set_error(KQ_ERR_FORMAT, "%s: %s = %u is out of range", kq_gguf_path(f), key, v);
  *out = (int32_t)v;
  return KQ_OK;
}

static kq_status read_hparams(const kq_gguf *f, kq_llama_hparams *hp) {
  kq_gguf_str arch;
  kq_status st = kq_gguf_get_str(f, "general.architecture", &arch);
  if (st != KQ_OK) return st;
  if (arch.len != 5 || memcmp(arch.ptr, "llama", 5))
    return kq_set_error(KQ_ERR_UNSUPPORTED, "%s: architecture '%.*s' is not supported (llama)",
                        kq_gguf_path(f), (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);
  const char *a = "llama";
  st = get_u32_key(f, a, "block_count", &hp->n_layers);
  if (st == KQ_OK) st = get_u32_key(f, a, "embedding_length", &hp->n_embd);
  if (st == KQ_OK) st = get_u32_key(f, a, "feed_forward_length", &hp->n_ff);
  if (st == KQ_OK) st = get_u32_key(f, a, "attention.head_count", &hp->n_heads);
  if (st == KQ_OK) st = get_u32_key(f, a, "context_length", &hp->n_ctx_train);
  if (st != KQ_OK) return st;
  hp->n_kv_heads = hp->n_heads;
  if (kq_gguf_find_kv(f, "llama.attention.head_count_kv"))
    st = get_u32_key(f, a, "attention.head_count_kv", &hp->n_kv_heads);
  if (st != KQ_OK) return st;
  if (hp->n_embd % hp->n_heads != 0 || hp->n_heads % hp->n_kv_heads != 0)
    return kq_set_error(KQ_ERR_FORMAT, "%s: %d heads / %d kv heads do not divide width %d",
                        kq_gguf_path(f), hp->n_heads, hp->n_kv_heads, hp->n_embd);
  hp->head_dim = hp->n_embd / hp->n_heads;
  if (hp->head_dim % 2 != 0)
    return kq_set_error(KQ_ERR_FORMAT, "%s: head_dim %d is odd", kq_gguf_path(f), hp->head_dim);
  if (kq_gguf_find_kv(f, "llama.rope.dimension_count")) {
    int32_t rd = 0;
    st = get_u32_key(f, a, "rope.dimension_count", &rd);
    if (st != KQ_OK) return st;
    if (rd != hp->head_dim)
      return kq_set_error(KQ_ERR_UNSUPPORTED, "%s: partial RoPE (%d of %d dims) is not supported",
                          kq_gguf_path(f), rd, hp->head_dim);
  }
  hp->rope_theta = 10000.0f;
  if (kq_gguf_find_kv(f, "llama.rope.freq_base"))
    st = kq_gguf_get_f32(f, "llama.rope.freq_base", &hp->rope_theta);
  if (st == KQ_OK) st = kq_gguf_get_f32(f, "llama.attention.layer_norm_rms_epsilon", &hp->rms_eps);
  if (st != KQ_OK) return st;
  if (!(hp->rope_theta > 0) || !(hp->rms_eps > 0) || !isfinite(hp->rope_theta))
    return kq_set_error(KQ_ERR_FORMAT, "%s: rope theta %g / rms epsilon %g out of range",
                        kq_gguf_path(f), hp->rope_theta, hp->rms_eps);
  if (kq_gguf_find_kv(f, "llama.rope.scaling.type")) {
    kq_gguf_str s;
    st = kq_gguf_get_str(f, "llama.rope.scaling.type", &s);
    if (st != KQ_OK) return st;
    if (!(s.len == 4 && !memcmp(s.ptr, "none", 4)))
      return kq_set_error(KQ_ERR_UNSUPPORTED, "%s: RoPE scaling is not supported", kq_gguf_path(f));
  }
  return KQ_OK;
}

/* block_count comes from metadata; before anything is allocated per layer,
 * the tensors must agree (a 370 KB file claiming 16 million layers used to
 * allocate gigabytes first): every layer has 9 tensors, the last one too. */
static kq_status check_layer_count(const kq_gguf *f, const kq_llama_hparams *hp) {
  char name[KQ_GGUF_MAX_NAME];
  snprintf(name, sizeof name, "blk.%d.attn_norm.weight", (int)hp->n_layers - 1);
  if (kq_gguf_tensor_count(f) < 9 * (int64_t)hp->n_layers || !kq_gguf_find_tensor(f, name))
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: llama.block_count = %d, but the file has %lld tensors%s (9 per layer)",
                        kq_gguf_path(f), (int)hp->n_layers, (long long)kq_gguf_tensor_count(f),
                        kq_gguf_find_tensor(f, name) ? "" : " and no last layer");
  return KQ_OK;
}

typedef struct load_job {
  const kq_gguf *f;
  kq_llama *m;
} load_job;

static kq_status load_layer(void *ctx, int64_t l) {
  const load_job *j = ctx;
  const kq_llama_hparams *hp = &j->m->hp;
  layer_weights *w = &j->m->layers[l];
  int32_t D = hp->n_embd, F = hp->n_ff, KV = hp->n_kv_heads * hp->head_dim;
  struct {
    const char *suffix;
    kq_llama_weight *dst;
    int32_t rows, cols;
  } mats[] = {
      {"attn_q.weight", &w->wq, D, D},       {"attn_k.weight", &w->wk, KV, D},
      {"attn_v.weight", &w->wv, KV, D},      {"attn_output.weight", &w->wo, D, D},
      {"ffn_gate.weight", &w->w_gate, F, D}, {"ffn_up.weight", &w->w_up, F, D},
      {"ffn_down.weight", &w->w_down, D, F},
  };
  char name[KQ_GGUF_MAX_NAME];
  uint64_t nd[1] = {(uint64_t)D};
  snprintf(name, sizeof name, "blk.%lld.attn_norm.weight", (long long)l);
  kq_status st = kq_gguf_load_f32(j->f, name, 1, nd, &w->attn_norm);
  snprintf(name, sizeof name, "blk.%lld.ffn_norm.weight", (long long)l);
  if (st == KQ_OK) st = kq_gguf_load_f32(j->f, name, 1, nd, &w->ffn_norm);
  for (size_t k = 0; k < sizeof mats / sizeof mats[0] && st == KQ_OK; k++) {
    snprintf(name, sizeof name, "blk.%lld.%s", (long long)l, mats[k].suffix);
    st = kq_llama_weight_load(j->f, name, mats[k].rows, mats[k].cols, mats[k].dst);
  }
  return st;
}

/* general.name (for the model identity) and tokenizer.chat_template, both
 * optional. */
static kq_status read_strings(const kq_gguf *f, kq_llama *m) {
  kq_gguf_str s;
  if (kq_gguf_find_kv(f, "general.name") && kq_gguf_get_str(f, "general.name", &s) == KQ_OK) {
    size_t n = s.len < sizeof m->id.name ? (size_t)s.len : sizeof m->id.name - 1;
    memcpy(m->id.name, s.ptr, n);
    m->id.name[n] = '\0';
  }
  if (kq_gguf_find_kv(f, "tokenizer.chat_template") &&
      kq_gguf_get_str(f, "tokenizer.chat_template", &s) == KQ_OK) {
    m->chat_template = malloc((size_t)s.len + 1);
    if (!m->chat_template)
      return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: out of memory", kq_gguf_path(f));
    memcpy(m->chat_template, s.ptr, (size_t)s.len);
    m->chat_template[s.len] = '\0';
  }
  kq_clear_error(); /* a general.name of another type is not an error */
  return KQ_OK;
}

kq_status kq_llama_load(const char *path, int n_threads, kq_llama **out_model) {
  *out_model = NULL;
  kq_gguf *f = NULL;
  kq_status st = kq_gguf_open(path, &f);
  if (st != KQ_OK) return st;
  kq_llama *m = calloc(1, sizeof *m);
  if (!m) {
    kq_gguf_close(f);
    return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
  }
  m->n_threads = kq_thread_count(n_threads);
  m->path = strdup(path);
  if (!m->path) st = kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
  if (st == KQ_OK) st = read_strings(f, m);
  if (st == KQ_OK) st = read_hparams(f, &m->hp);
  if (st == KQ_OK) st = kq_tokenizer_load(f, &m->tok);
  if (st == KQ_OK) st = check_layer_count(f, &m->hp);
  if (st == KQ_OK) {
    m->hp.n_vocab = kq_tokenizer_vocab_size(m->tok);
    m->layers = kq_calloc_array((size_t)m->hp.n_layers, sizeof *m->layers, "model layers");
    if (!m->layers) st = KQ_ERR_OUT_OF_MEMORY;
  }
  uint64_t ev[2] = {(uint64_t)m->hp.n_embd, (uint64_t)m->hp.n_vocab};
  if (st == KQ_OK)
    st = kq_llama_weight_load(f, "token_embd.weight", m->hp.n_vocab, m->hp.n_embd, &m->tok_embd);
  if (st == KQ_OK) st = kq_gguf_load_f32(f, "output_norm.weight", 1, ev, &m->output_norm);
  if (st == KQ_OK && kq_gguf_find_tensor(f, "output.weight"))
    st = kq_llama_weight_load(f, "output.weight", m->hp.n_vocab, m->hp.n_embd, &m->output);
  if (st == KQ_OK && !m->output.data) m->output = m->tok_embd; /* tied embeddings */
  if (st == KQ_OK) {
    load_job job = {.f = f, .m = m};
    st = kq_parallel_for(m->hp.n_layers, m->n_threads, load_layer, &job);
  }
  kq_gguf_close(f);
  if (st != KQ_OK) {
    kq_llama_destroy(m);
    return st;
  }
  *out_model = m;
  return KQ_OK;
}

void kq_llama_destroy(kq_llama *m) {
  if (!m) return;
  if (m->layers)
    for (int32_t l = 0; l < m->hp.n_layers; l++) {
      layer_weights *w = &m->layers[l];
      kq_llama_weight *all[] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w_gate, &w->w_up, &w->w_down};
      for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) kq_llama_weight_free(all[k]);
      free(w->attn_norm);
      free(w->ffn_norm);
    }
  free(m->layers);
  if (m->output.data != m->tok_embd.data) kq_llama_weight_free(&m->output);
  kq_llama_weight_free(&m->tok_embd);
  free(m->output_norm);
  kq_tokenizer_destroy(m->tok);
  free(m->path);
  free(m->chat_template);
  free(m);
}

const kq_llama_hparams *kq_llama_get_hparams(const kq_llama *m) {
  return &m->hp;
}
const kq_tokenizer *kq_llama_get_tokenizer(const kq_llama *m) {
  return m->tok;
}

kq_status kq_llama_identity(kq_llama *m, const kq_model_identity **out_id) {
  if (!m->id.sha256[0]) {
    kq_status st = kq_sha256_file(m->path, m->id.sha256);
    if (st != KQ_OK) return st;
  }
  *out_id = &m->id;
  return KQ_OK;
}

const char *kq_llama_path(const kq_llama *m) {
  return m->path;
}

const char *kq_llama_chat_template(const kq_llama *m) {
  return m->chat_template;
}

void kq_llama_rope(float *x, int32_t n, int32_t n_heads, int32_t head_dim, int32_t pos0,
                   float theta) {
  for (int32_t t = 0; t < n; t++) {
    double pos = (double)pos0 + t;
    for (int32_t j = 0; j < head_dim / 2; j++) {
      double angle = pos * kq_rope_inv_freq(theta, head_dim, j);
      float c = (float)cos(angle), s = (float)sin(angle);
      for (int32_t h = 0; h < n_heads; h++) {
        float *p = x + ((size_t)t * n_heads + h) * head_dim + 2 * j;
        float a = p[0], b = p[1];
        p[0] = a * c - b * s;
        p[1] = a * s + b * c;
      }
    }
  }
}

/* Scratch for one forward call of n tokens. */
typedef struct scratch {
  float *x, *xn, *q, *k, *v, *qr, *kr, *att, *gate, *up;
} scratch;

static void scratch_free(scratch *s) {
  float *all[] = {s->x, s->xn, s->q, s->k, s->v, s->qr, s->kr, s->att, s->gate, s->up};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) free(all[k]);
}

static kq_status scratch_alloc(scratch *s, const kq_llama_hparams *hp, size_t n) {
  size_t D = (size_t)hp->n_embd, KV = (size_t)hp->n_kv_heads * hp->head_dim;
  size_t F = (size_t)hp->n_ff;
  memset(s, 0, sizeof *s);
  s->x = kq_malloc_array(n, D * sizeof(float), "forward scratch");
  s->xn = kq_malloc_array(n, D * sizeof(float), "forward scratch");
  s->q = kq_malloc_array(n, D * sizeof(float), "forward scratch");
  s->qr = kq_malloc_array(n, D * sizeof(float), "forward scratch");
  s->att = kq_malloc_array(n, D * sizeof(float), "forward scratch");
  s->k = kq_malloc_array(n, KV * sizeof(float), "forward scratch");
  s->kr = kq_malloc_array(n, KV * sizeof(float), "forward scratch");
  s->v = kq_malloc_array(n, KV * sizeof(float), "forward scratch");
  s->gate = kq_malloc_array(n, F * sizeof(float), "forward scratch");
  s->up = kq_malloc_array(n, F * sizeof(float), "forward scratch");
  if (!s->x || !s->xn || !s->q || !s->qr || !s->att || !s->k || !s->kr || !s->v || !s->gate ||
      !s->up) {
    scratch_free(s);
    return KQ_ERR_OUT_OF_MEMORY;
  }
  return KQ_OK;
}

static kq_status run_layer(kq_llama *m, const kq_llama_attention *attn, const kq_llama_eval *ev,
                           int32_t l, scratch *s) {
  const kq_llama_hparams *hp = &m->hp;
  const layer_weights *w = &m->layers[l];
  int32_t n = ev->n, D = hp->n_embd, KV = hp->n_kv_heads * hp->head_dim, F = hp->n_ff;
  int nt = m->n_threads;
  kq_llama_rmsnorm(s->xn, s->x, w->attn_norm, n, D, hp->rms_eps);
  kq_status st = kq_llama_matmul_w(s->q, s->xn, &w->wq, n, nt);
  if (st == KQ_OK) st = kq_llama_matmul_w(s->k, s->xn, &w->wk, n, nt);
  if (st == KQ_OK) st = kq_llama_matmul_w(s->v, s->xn, &w->wv, n, nt);
  if (st != KQ_OK) return st;
  memcpy(s->qr, s->q, (size_t)n * D * sizeof(float));
  memcpy(s->kr, s->k, (size_t)n * KV * sizeof(float));
  kq_llama_rope(s->qr, n, hp->n_heads, hp->head_dim, ev->pos0, hp->rope_theta);
  kq_llama_rope(s->kr, n, hp->n_kv_heads, hp->head_dim, ev->pos0, hp->rope_theta);
  if (ev->tap) {
    st = ev->tap(ev->tap_user, l, n, s->q, s->k, s->qr, s->kr, s->v);
    if (st != KQ_OK) return st;
  }
  const float *qa = attn->rotate ? s->qr : s->q, *ka = attn->rotate ? s->kr : s->k;
  st = attn->append(attn->ctx, l, n, ka, s->v);
  if (st == KQ_OK) st = attn->attend(attn->ctx, l, n, qa, s->att);
  if (st != KQ_OK) return kq_error_prefix(st, "layer %d attention", l);
  st = kq_llama_matmul_w(s->xn, s->att, &w->wo, n, nt);
  if (st != KQ_OK) return st;
  for (size_t j = 0; j < (size_t)n * D; j++) s->x[j] += s->xn[j];
  kq_llama_rmsnorm(s->xn, s->x, w->ffn_norm, n, D, hp->rms_eps);
  st = kq_llama_matmul_w(s->gate, s->xn, &w->w_gate, n, nt);
  if (st == KQ_OK) st = kq_llama_matmul_w(s->up, s->xn, &w->w_up, n, nt);
  if (st != KQ_OK) return st;
  kq_llama_swiglu(s->gate, s->up, (size_t)n * F);
  st = kq_llama_matmul_w(s->xn, s->gate, &w->w_down, n, nt);
  if (st != KQ_OK) return st;
  for (size_t j = 0; j < (size_t)n * D; j++) s->x[j] += s->xn[j];
  return KQ_OK;
}

/* KQ_ERR_NUMERIC naming the first non-finite row of x [rows, cols]. */
static kq_status check_finite_rows(const char *what, const float *x, size_t rows, size_t cols,
                                   int64_t pos0) {
  if (!kq_any_nonfinite_f32(x, rows * cols)) return KQ_OK; /* the vectorised common case */
  for (size_t i = 0; i < rows * cols; i++)
    if (!isfinite(x[i]))
      return kq_set_error(KQ_ERR_NUMERIC,
                          "llama: %s of the token at position %lld are not finite (%s): the "
                          "weights, inputs or attention cache produced it",
                          what, (long long)(pos0 + (int64_t)(i / cols)),
                          isnan(x[i]) ? "NaN" : "Inf");
  return KQ_OK;
}

kq_status kq_llama_forward(kq_llama *m, const kq_llama_attention *attn, const kq_llama_eval *ev) {
  const kq_llama_hparams *hp = &m->hp;
  if (!attn || !ev || !ev->tokens || ev->n <= 0 || ev->pos0 < 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "llama: forward needs n > 0 tokens");
  for (int32_t t = 0; t < ev->n; t++)
    if (ev->tokens[t] < 0 || ev->tokens[t] >= hp->n_vocab)
      return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "llama: token %d at index %d is not in [0, %d)",
                          ev->tokens[t], t, hp->n_vocab);
  scratch s;
  kq_status st = scratch_alloc(&s, hp, (size_t)ev->n);
  if (st != KQ_OK) return st;
  size_t D = (size_t)hp->n_embd;
  for (int32_t t = 0; t < ev->n; t++) kq_llama_weight_row(&m->tok_embd, ev->tokens[t], s.x + t * D);
  for (int32_t l = 0; l < hp->n_layers && st == KQ_OK; l++) st = run_layer(m, attn, ev, l, &s);
  /* Never hand on NaN/Inf: perplexity, generation and calibration capture
   * must fail instead of printing or writing them. */
  if (st == KQ_OK) st = check_finite_rows("hidden state", s.x, (size_t)ev->n, D, ev->pos0);
  if (st == KQ_OK && ev->logits) {
    int32_t first = ev->last_only ? ev->n - 1 : 0, rows = ev->n - first;
    kq_llama_rmsnorm(s.xn, s.x + first * D, m->output_norm, rows, hp->n_embd, hp->rms_eps);
    st = kq_llama_matmul_w(ev->logits, s.xn, &m->output, rows, m->n_threads);
    if (st == KQ_OK)
      st = check_finite_rows("logits", ev->logits, (size_t)rows, (size_t)hp->n_vocab,
                             ev->pos0 + first);
  }
  scratch_free(&s);
  return st;
}

kq_status kq_llama_copy_wo(const kq_llama *m, int32_t layer, float *dst) {
  if (layer < 0 || layer >= m->hp.n_layers)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "llama: layer %d out of range", layer);
  const kq_llama_weight *wo = &m->layers[layer].wo;
  for (int32_t r = 0; r < wo->rows; r++) kq_llama_weight_row(wo, r, dst + (size_t)r * wo->cols);
  return KQ_OK;
}

kq_projections_info kq_llama_projection_info(const kq_llama *m) {
  kq_projections_info info = {
      .method = KQ_METHOD_KQSVD,
      .n_layers = m->hp.n_layers,
      .n_heads = m->hp.n_heads,
      .n_kv_heads = m->hp.n_kv_heads,
      .head_dim = m->hp.head_dim,
      .rope = KQ_ROPE_POST,
      .rope_layout = KQ_ROPE_PAIRS,
      .rope_theta = m->hp.rope_theta,
  };
  return info;
}

kq_status kq_llama_check_projections(const kq_llama *m, const kq_projections_info *info) {
  const kq_llama_hparams *hp = &m->hp;
  if (info->n_layers != hp->n_layers || info->n_heads != hp->n_heads ||
      info->n_kv_heads != hp->n_kv_heads || info->head_dim != hp->head_dim)
    return kq_set_error(KQ_ERR_FORMAT,
                        "projections are for %d layers, %d heads, %d kv heads, head_dim %d; "
                        "the model has %d, %d, %d, %d",
                        info->n_layers, info->n_heads, info->n_kv_heads, info->head_dim,
                        hp->n_layers, hp->n_heads, hp->n_kv_heads, hp->head_dim);
  if (info->rope == KQ_ROPE_PRE) {
    if (info->rope_layout != KQ_ROPE_PAIRS)
      return kq_set_error(KQ_ERR_FORMAT, "projections rotate in the halves layout; this GGUF "
                                         "llama model uses pairs");
    if (fabsf(info->rope_theta - hp->rope_theta) > 1e-3f * hp->rope_theta)
      return kq_set_error(KQ_ERR_FORMAT, "projections use rope_theta %g; the model uses %g",
                          info->rope_theta, hp->rope_theta);
  }
  return KQ_OK;
}
