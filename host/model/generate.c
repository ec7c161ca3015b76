/* Greedy generation: one prefill call, then one token per decode step;
 * and many prompts as sequences of one cache, decoded in batched steps. */
#include <stdlib.h>
#include <string.h>

#include "kq_model_run.h"

kq_status kq_model_generate(kq_model_session *s, const int32_t *prompt, int32_t n_prompt,
                            int32_t n_new, kq_token_fn on_token, void *user,
                            const volatile int *cancel, kq_generate_result *out) {
  const kq_llama_hparams *hp = kq_llama_get_hparams(s->model);
  const kq_tokenizer *tok = kq_llama_get_tokenizer(s->model);
  out->n_generated = 0;
  out->prefill_seconds = out->decode_seconds = 0;
  if (n_prompt < 1) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "generate: empty prompt");
  float *logits = kq_malloc_array((size_t)hp->n_vocab, sizeof(float), "logits");
  if (!logits) return KQ_ERR_OUT_OF_MEMORY;
  kq_status st = kq_cache_truncate(s->cache, 0);
  double t0 = kq_now_seconds();
  kq_llama_eval ev = {.tokens = prompt, .n = n_prompt, .logits = logits, .last_only = 1};
  if (st == KQ_OK) st = kq_llama_forward(s->model, &s->attn, &ev);
  double t1 = kq_now_seconds();
  out->prefill_seconds = t1 - t0;
  int32_t pos = n_prompt;
  for (int32_t j = 0; j < n_new && st == KQ_OK; j++) {
    int32_t next = kq_model_argmax(logits, hp->n_vocab);
    out->n_generated++;
    if ((on_token && on_token(user, next)) || next == kq_tokenizer_eos(tok)) break;
    if (j + 1 == n_new) break;
    if (cancel && *cancel) {
      st = kq_set_error(KQ_ERR_INTERRUPTED, "generate: interrupted");
      break;
    }
    ev = (kq_llama_eval){.tokens = &next, .n = 1, .pos0 = pos++, .logits = logits, .last_only = 1};
    st = kq_llama_forward(s->model, &s->attn, &ev);
  }
  out->decode_seconds = kq_now_seconds() - t1;
  free(logits);
  return st;
}

/* The decoder's attention for a batch of sequences: the model passes
 * un-rotated q/k (rotate = 0) and this adapter rotates each span at its own
 * sequence's positions (kq_llama_rope, the model's own rotation, so the
 * numbers are those of a single-sequence run), unless the cache rotates
 * itself (PRE projections). */
typedef struct batch_attention {
  kq_cache *cache;
  int rotate; /* 1: rotate here (cache rope NONE/POST) */
  const kq_llama_hparams *hp;
  int32_t n_spans;
  const kq_seq_span *spans;
  float *buf; /* rotated copy of q or k */
  size_t buf_floats;
} batch_attention;

static kq_status rotated(batch_attention *b, int32_t layer, const float *x, int32_t n,
                         int32_t heads, int after_append, const float **out) {
  if (!b->rotate) {
    *out = x;
    return KQ_OK;
  }
  size_t row = (size_t)heads * b->hp->head_dim;
  if (b->buf_floats < (size_t)n * row) {
    float *p = kq_malloc_array((size_t)n, row * sizeof(float), "batched rope scratch");
    if (!p) return KQ_ERR_OUT_OF_MEMORY;
    free(b->buf);
    b->buf = p;
    b->buf_floats = (size_t)n * row;
  }
  memcpy(b->buf, x, (size_t)n * row * sizeof(float));
  size_t r = 0;
  for (int32_t i = 0; i < b->n_spans; i++) {
    int32_t m = b->spans[i].n_tokens, len = kq_cache_seq_length(b->cache, layer, b->spans[i].seq);
    int32_t pos0 = after_append ? len - m : len; /* the span's first position */
    kq_llama_rope(b->buf + r * row, m, heads, b->hp->head_dim, pos0, b->hp->rope_theta);
    r += (size_t)m;
  }
  *out = b->buf;
  return KQ_OK;
}

static kq_status batch_append(void *ctx, int32_t layer, int32_t n, const float *k, const float *v) {
  batch_attention *b = ctx;
  const float *kr;
  kq_status st = rotated(b, layer, k, n, b->hp->n_kv_heads, 0, &kr);
  if (st != KQ_OK) return st;
  return kq_cache_append_batch(b->cache, layer, b->n_spans, b->spans, kr, v);
}

static kq_status batch_attend(void *ctx, int32_t layer, int32_t m, const float *q, float *out) {
  batch_attention *b = ctx;
  const float *qr;
  kq_status st = rotated(b, layer, q, m, b->hp->n_heads, 1, &qr);
  if (st != KQ_OK) return st;
  return kq_cache_attend_batch(b->cache, layer, b->n_spans, b->spans, qr, KQ_OUTPUT_FULL, out);
}

typedef struct slot {
  int32_t prompt; /* -1: free */
  int32_t generated, next;
} slot;

/* Records token `next` of slot `s` (kq_model_generate's stopping rule);
 * returns 1 when the prompt is done. */
static int emit(slot *s, int32_t next, int32_t n_new, int32_t eos, kq_seq_token_fn on_token,
                void *user, kq_parallel_result *out) {
  s->next = next;
  s->generated++;
  out->n_generated++;
  if ((on_token && on_token(user, s->prompt, next)) || next == eos) return 1;
  return s->generated == n_new;
}

kq_status kq_model_generate_parallel(kq_model_session *s, const kq_parallel_prompt *prompts,
                                     int32_t n_prompts, int32_t n_new, kq_seq_token_fn on_token,
                                     void *user, const volatile int *cancel,
                                     kq_parallel_result *out) {
  const kq_llama_hparams *hp = kq_llama_get_hparams(s->model);
  const int32_t eos = kq_tokenizer_eos(kq_llama_get_tokenizer(s->model)), N = s->n_seqs;
  memset(out, 0, sizeof *out);
  if (n_prompts < 1 || n_new < 1 || N < 1)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "generate: %d prompts, %d new tokens, %d sequences", (int)n_prompts,
                        (int)n_new, (int)N);
  for (int32_t i = 0; i < n_prompts; i++)
    if (prompts[i].n_ids < 1)
      return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "generate: prompt %d is empty", (int)i + 1);
  slot *slots = kq_malloc_array((size_t)N, sizeof *slots, "generate slots");
  kq_seq_span *spans = kq_malloc_array((size_t)N, sizeof *spans, "generate spans");
  int32_t *tokens = kq_malloc_array((size_t)N, sizeof *tokens, "generate tokens");
  int32_t *owner = kq_malloc_array((size_t)N, sizeof *owner, "generate batch");
  float *logits = kq_malloc_array((size_t)N * (size_t)hp->n_vocab, sizeof(float), "logits");
  batch_attention b = {.cache = s->cache, .rotate = s->rope != KQ_ROPE_PRE, .hp = hp};
  kq_llama_attention attn = {
      .ctx = &b, .rotate = 0, .append = batch_append, .attend = batch_attend};
  kq_status st = slots && spans && tokens && owner && logits ? KQ_OK : KQ_ERR_OUT_OF_MEMORY;
  for (int32_t i = 0; i < N && st == KQ_OK; i++) slots[i].prompt = -1;
  int32_t next_prompt = 0;
  while (st == KQ_OK) {
    /* Free sequences take the next prompts: clear, prefill, first token. */
    for (int32_t q = 0; q < N && st == KQ_OK && next_prompt < n_prompts; q++) {
      while (slots[q].prompt < 0 && next_prompt < n_prompts && st == KQ_OK) {
        slot *sl = &slots[q];
        *sl = (slot){.prompt = next_prompt++};
        kq_seq_span span = {.seq = q, .n_tokens = prompts[sl->prompt].n_ids};
        b.n_spans = 1;
        b.spans = &span;
        st = kq_cache_seq_clear(s->cache, q);
        double t0 = kq_now_seconds();
        kq_llama_eval ev = {.tokens = prompts[sl->prompt].ids,
                            .n = span.n_tokens,
                            .logits = logits,
                            .last_only = 1};
        if (st == KQ_OK) st = kq_llama_forward(s->model, &attn, &ev);
        out->prefill_seconds += kq_now_seconds() - t0;
        if (st == KQ_OK &&
            emit(sl, kq_model_argmax(logits, hp->n_vocab), n_new, eos, on_token, user, out))
          sl->prompt = -1;
      }
    }
    int32_t B = 0;
    for (int32_t q = 0; q < N; q++)
      if (slots[q].prompt >= 0) {
        spans[B] = (kq_seq_span){.seq = q, .n_tokens = 1};
        tokens[B] = slots[q].next;
        owner[B++] = q;
      }
    if (st != KQ_OK || B == 0) break;
    if (cancel && *cancel) {
      st = kq_set_error(KQ_ERR_INTERRUPTED, "generate: interrupted");
      break;
    }
    /* One decode step of every sequence in flight: one forward pass. */
    b.n_spans = B;
    b.spans = spans;
    double t0 = kq_now_seconds();
    kq_llama_eval ev = {.tokens = tokens, .n = B, .logits = logits};
    st = kq_llama_forward(s->model, &attn, &ev);
    out->decode_seconds += kq_now_seconds() - t0;
    out->decode_steps++;
    if (B > out->max_batch) out->max_batch = B;
    for (int32_t i = 0; i < B && st == KQ_OK; i++) {
      slot *sl = &slots[owner[i]];
      int32_t next = kq_model_argmax(logits + (size_t)i * hp->n_vocab, hp->n_vocab);
      if (emit(sl, next, n_new, eos, on_token, user, out)) sl->prompt = -1;
    }
  }
  free(b.buf);
  free(slots);
  free(spans);
  free(tokens);
  free(owner);
  free(logits);
  return st;
}
