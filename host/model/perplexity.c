/* Perplexity over non-overlapping windows, logits computed in prefill
 * chunks so the cache sees batched appends and attends; several sessions
 * in lockstep so that KL and top-1 compare the same positions. */
#include <math.h>
#include <stdlib.h>

#include "kq_model_run.h"

int32_t kq_model_argmax(const float *x, int32_t n) {
  int32_t best = 0;
  for (int32_t j = 1; j < n; j++)
    if (x[j] > x[best]) best = j;
  return best;
}

/* log Σ exp(x_j), in double. */
static double log_sum_exp(const float *x, int32_t n) {
  double mx = x[0];
  for (int32_t j = 1; j < n; j++)
    if (x[j] > mx) mx = x[j];
  double sum = 0;
  for (int32_t j = 0; j < n; j++) sum += exp((double)x[j] - mx);
  return log(sum) + mx;
}

/* KL(p || q) for p = softmax(lp) given as probs p_j and log-normaliser
 * lse_p, q = softmax(lq) with log-normaliser lse_q. Written term by term
 * (not as Σp(lp−lq) − lse_p + lse_q) so that equal logits give exactly 0. */
static double kl_divergence(const double *p, const float *lp, double lse_p, const float *lq,
                            double lse_q, int32_t n) {
  double kl = 0;
  for (int32_t j = 0; j < n; j++) kl += p[j] * (((double)lp[j] - lse_p) - ((double)lq[j] - lse_q));
  return kl;
}

typedef struct ppl_acc {
  kq_model_session *session;
  float *logits; /* [batch, n_vocab] */
  double nll, kld, seconds;
  int64_t agree;
} ppl_acc;

kq_status kq_model_perplexity(kq_model_session *reference, kq_model_session *const *sessions,
                              int32_t n_sessions, const int32_t *ids, int64_t n,
                              const kq_ppl_params *p, kq_ppl_result *out_reference,
                              kq_ppl_result *out) {
  int has_ref = reference != NULL;
  int32_t n_runs = n_sessions + has_ref;
  int32_t ctx = p->ctx, batch = p->batch > 0 ? p->batch : 64;
  int32_t score_from = p->score_from > 1 ? p->score_from : 1;
  if (n < 2 || ctx < 2)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "perplexity needs at least 2 tokens and a window of 2 (got %lld, %d)",
                        (long long)n, ctx);
  if (n_runs < 1 || n_sessions < 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "perplexity: no session to run");
  const kq_llama_hparams *hp =
      kq_llama_get_hparams(has_ref ? reference->model : sessions[0]->model);
  int32_t n_vocab = hp->n_vocab;
  if (batch > ctx) batch = ctx;
  ppl_acc *runs = calloc((size_t)n_runs, sizeof *runs);
  double *probs = kq_malloc_array((size_t)n_vocab, sizeof(double), "reference probabilities");
  kq_status st = runs && probs ? KQ_OK : KQ_ERR_OUT_OF_MEMORY;
  if (!runs) kq_set_error(st, "perplexity: out of memory");
  for (int32_t r = 0; r < n_runs && st == KQ_OK; r++) {
    runs[r].session = has_ref && r == 0 ? reference : sessions[r - has_ref];
    runs[r].logits = kq_malloc_array((size_t)batch * n_vocab, sizeof(float), "logits");
    if (!runs[r].logits) st = KQ_ERR_OUT_OF_MEMORY;
  }
  int64_t scored = 0;
  int64_t n_windows = (n + ctx - 1) / ctx;
  for (int64_t w = 0; w < n_windows && st == KQ_OK; w++) {
    const int32_t *win = ids + w * ctx;
    int32_t len = (int32_t)(n - w * ctx < ctx ? n - w * ctx : ctx);
    if (len <= score_from) break; /* nothing to score (the last window) */
    for (int32_t r = 0; r < n_runs && st == KQ_OK; r++)
      st = kq_cache_truncate(runs[r].session->cache, 0);
    for (int32_t b = 0; b < len && st == KQ_OK; b += batch) {
      if (p->cancel && *p->cancel) {
        st = kq_set_error(KQ_ERR_INTERRUPTED, "perplexity: interrupted");
        break;
      }
      int32_t m = len - b < batch ? len - b : batch;
      for (int32_t r = 0; r < n_runs && st == KQ_OK; r++) {
        kq_llama_eval ev = {.tokens = win + b, .n = m, .pos0 = b, .logits = runs[r].logits};
        double t0 = kq_now_seconds();
        st = kq_llama_forward(runs[r].session->model, &runs[r].session->attn, &ev);
        runs[r].seconds += kq_now_seconds() - t0;
        if (st != KQ_OK && runs[r].session->proj_path)
          st = kq_error_prefix(st, "%s", runs[r].session->proj_path);
      }
      for (int32_t t = 0; t < m && st == KQ_OK; t++) {
        if (b + t + 1 >= len) break;
        if (b + t + 1 < score_from) continue;
        int32_t target = win[b + t + 1];
        const float *lp = runs[0].logits + (size_t)t * n_vocab;
        double lse_p = log_sum_exp(lp, n_vocab);
        int32_t top_p = kq_model_argmax(lp, n_vocab);
        if (has_ref)
          for (int32_t j = 0; j < n_vocab; j++) probs[j] = exp((double)lp[j] - lse_p);
        for (int32_t r = 0; r < n_runs; r++) {
          const float *lq = runs[r].logits + (size_t)t * n_vocab;
          double lse_q = r == 0 ? lse_p : log_sum_exp(lq, n_vocab);
          runs[r].nll += lse_q - (double)lq[target];
          if (!has_ref || r == 0) continue;
          runs[r].kld += kl_divergence(probs, lp, lse_p, lq, lse_q, n_vocab);
          runs[r].agree += kq_model_argmax(lq, n_vocab) == top_p;
        }
        scored++;
      }
      for (int32_t r = 0; r < n_runs && p->running_ppl; r++)
        p->running_ppl[r] = scored ? exp(runs[r].nll / (double)scored) : NAN;
      if (p->progress && st == KQ_OK)
        p->progress(p->progress_user, (int32_t)(w * ctx + b + m),
                    (int32_t)(n > INT32_MAX ? INT32_MAX : n), "perplexity");
    }
  }
  if (st == KQ_OK && scored == 0)
    st = kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                      "perplexity: no token scored (%lld tokens, windows of %d, scoring from "
                      "index %d of each window)",
                      (long long)n, ctx, score_from);
  for (int32_t r = 0; r < n_runs && st == KQ_OK; r++) {
    kq_ppl_result *res = has_ref && r == 0 ? out_reference : &out[r - has_ref];
    res->predictions = scored;
    res->nll = runs[r].nll / (double)scored;
    res->ppl = exp(res->nll);
    res->kld = has_ref && r > 0 ? runs[r].kld / (double)scored : NAN;
    res->top1 = has_ref && r > 0 ? (double)runs[r].agree / (double)scored : NAN;
    res->seconds = runs[r].seconds;
  }
  for (int32_t r = 0; runs && r < n_runs; r++) free(runs[r].logits);
  free(runs);
  free(probs);
  return st;
}
