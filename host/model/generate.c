/* Greedy generation: one prefill call, then one token per decode step. */
#include <stdlib.h>

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
