/* Perplexity over non-overlapping windows, logits computed in prefill
 * chunks so the cache sees batched appends and attends. */
#include <math.h>
#include <stdlib.h>

#include "kq_model_run.h"

/* -log softmax(logits)[target], in double. */
static double token_nll(const float *logits, int32_t n_vocab, int32_t target) {
  double mx = logits[0];
  for (int32_t j = 1; j < n_vocab; j++)
    if (logits[j] > mx) mx = logits[j];
  double sum = 0;
  for (int32_t j = 0; j < n_vocab; j++) sum += exp((double)logits[j] - mx);
  return log(sum) + mx - (double)logits[target];
}

kq_status kq_model_perplexity(kq_model_session *s, const int32_t *ids, int64_t n,
                              const kq_ppl_params *p, kq_ppl_result *out) {
  const kq_llama_hparams *hp = kq_llama_get_hparams(s->model);
  int32_t ctx = p->ctx, batch = p->batch > 0 ? p->batch : 64;
  if (n < 2 || ctx < 2)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "perplexity needs at least 2 tokens and a window of 2 (got %lld, %d)",
                        (long long)n, ctx);
  if (batch > ctx) batch = ctx;
  float *logits = kq_malloc_array((size_t)batch * hp->n_vocab, sizeof(float), "logits");
  if (!logits) return KQ_ERR_OUT_OF_MEMORY;
  double nll = 0;
  int64_t scored = 0;
  int64_t n_windows = (n + ctx - 1) / ctx;
  kq_status st = KQ_OK;
  double t0 = kq_now_seconds();
  for (int64_t w = 0; w < n_windows && st == KQ_OK; w++) {
    const int32_t *win = ids + w * ctx;
    int32_t len = (int32_t)(n - w * ctx < ctx ? n - w * ctx : ctx);
    if (len < 2) break;
    st = kq_cache_truncate(s->cache, 0);
    for (int32_t b = 0; b < len && st == KQ_OK; b += batch) {
      if (p->cancel && *p->cancel) {
        st = kq_set_error(KQ_ERR_INTERRUPTED, "perplexity: interrupted");
        break;
      }
      int32_t m = len - b < batch ? len - b : batch;
      kq_llama_eval ev = {.tokens = win + b, .n = m, .pos0 = b, .logits = logits};
      st = kq_llama_forward(s->model, &s->attn, &ev);
      for (int32_t t = 0; t < m && st == KQ_OK; t++) {
        if (b + t + 1 >= len) break;
        nll += token_nll(logits + (size_t)t * hp->n_vocab, hp->n_vocab, win[b + t + 1]);
        scored++;
      }
      if (p->progress && st == KQ_OK)
        p->progress(p->progress_user, (int32_t)(w * ctx + b + m),
                    (int32_t)(n > INT32_MAX ? INT32_MAX : n), "perplexity");
    }
  }
  free(logits);
  if (st != KQ_OK) return st;
  out->seconds = kq_now_seconds() - t0;
  out->predictions = scored;
  out->nll = nll / (double)scored;
  out->ppl = exp(out->nll);
  return KQ_OK;
}
