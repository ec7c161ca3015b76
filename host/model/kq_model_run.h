/*
 * kq_model_run.h — what the CLI does with a loaded model: run it on a
 * kqsvd cache (full = identity projections, or a projection file),
 * perplexity, calibration capture (SPEC §2 file) and greedy generation.
 */
#ifndef KQ_MODEL_RUN_H
#define KQ_MODEL_RUN_H

#include <stdint.h>

#include "kq_llama.h"
#include "kqsvd.h"

/* A kqsvd cache bound to a model. */
typedef struct kq_model_session {
  kq_llama *model;       /* borrowed */
  const char *proj_path; /* borrowed; NULL: identity projections (the full cache) */
  kq_projections *proj;
  kq_cache *cache;
  kq_rope_mode rope; /* of the projections: PRE means the cache rotates */
  kq_llama_attention attn;
  uint64_t kv_bytes; /* latent K+V at full capacity, all layers */
  int32_t n_seqs;    /* sequences of the cache */
  int no_identity;   /* the projection file records no model (older files) */
} kq_model_session;

/* Whether projections `proj` (read from `proj_path`, for messages) were
 * fitted for `model`: their model_sha256 must be the model's (or, in a file
 * with a name but no hash, their model_name). KQ_ERR_INVALID_ARGUMENT naming
 * both models otherwise. A file without any identity passes with
 * *out_unknown = 1 (the caller warns). Hashes the GGUF on first use. */
kq_status kq_model_check_identity(kq_llama *model, const kq_projections *proj,
                                  const char *proj_path, int *out_unknown);

/* Everything kq_model_session_create checks about a projection file, without
 * a device or cache: it loads, its shapes fit the model
 * (kq_llama_check_projections) and it was fitted for this model
 * (kq_model_check_identity). For commands to refuse a mismatch before any
 * work. Errors name the file. */
kq_status kq_model_check_projection_file(kq_llama *model, const char *proj_path, int *out_unknown);

/* Creates a cache of `capacity` tokens on `device` with identity
 * projections (proj_path == NULL: full attention, rope POST) or the
 * projections of `proj_path` (checked against the model's shapes and
 * identity as kq_model_check_projection_file does; errors name the file). */
kq_status kq_model_session_create(kq_llama *model, kq_device *device, const char *proj_path,
                                  kq_storage storage, int32_t capacity,
                                  kq_model_session *out_session);
/* kq_model_session_create with a cache of n_seqs sequences of `capacity`
 * tokens each (kq_cache_params.n_seqs). */
kq_status kq_model_session_create_seqs(kq_llama *model, kq_device *device, const char *proj_path,
                                       kq_storage storage, int32_t capacity, int32_t n_seqs,
                                       kq_model_session *out_session);
void kq_model_session_destroy(kq_model_session *session);

typedef struct kq_ppl_params {
  int32_t ctx;   /* tokens per window; the caches are cleared between windows */
  int32_t batch; /* tokens per forward call (prefill chunk), default 64 */
  /* Score only the tokens at index >= score_from of each window (0-based;
   * each predicted from at least score_from tokens). 0 or 1: every token
   * after the first. */
  int32_t score_from;
  kq_progress_fn progress;
  void *progress_user;
  const volatile int *cancel;
  /* Optional, [reference ? 1 + n_sessions : n_sessions], reference first:
   * the perplexity so far of each run (exp of the mean NLL of the tokens
   * scored so far; NAN before the first), written before each progress
   * call, so a progress display can show it. */
  double *running_ppl;
} kq_ppl_params;

typedef struct kq_ppl_result {
  int64_t predictions; /* tokens scored: (window length - score_from) summed over windows */
  double nll;          /* mean negative log-likelihood, nats */
  double ppl;          /* exp(nll) */
  /* Against the reference session (NAN without one, and for the reference
   * itself): mean KL(p_reference || p_this) of the next-token
   * distributions, nats, and the share of scored tokens whose argmax (first
   * index on ties) is the reference's. */
  double kld;
  double top1;
  double seconds; /* wall time of this session's forward passes */
} kq_ppl_result;

/* Perplexity of ids[0..n) in consecutive non-overlapping windows of
 * params->ctx tokens (the last may be shorter; one of a single token is
 * skipped); inside a window every token after the first (from index
 * params->score_from on) is predicted from all the tokens before it.
 * Needs n >= 2; KQ_ERR_INVALID_ARGUMENT when no token is scored.
 *
 * The sessions run in lockstep: every window, batch by batch, goes through
 * `reference` (may be NULL) and then each of sessions[0..n_sessions), and
 * each position's logits are compared with the reference's at once, so all
 * score exactly the same tokens (KL and log-sum-exp in double).
 * out_reference (ignored when reference is NULL) and out[n_sessions] get
 * the results; kld/top1 are NAN without a reference. All sessions' caches
 * must hold params->ctx tokens. */
kq_status kq_model_perplexity(kq_model_session *reference, kq_model_session *const *sessions,
                              int32_t n_sessions, const int32_t *ids, int64_t n,
                              const kq_ppl_params *params, kq_ppl_result *out_reference,
                              kq_ppl_result *out);

/* Index of the largest of x[0..n) (the first on ties); n >= 1. */
int32_t kq_model_argmax(const float *x, int32_t n);

typedef struct kq_capture_params {
  int32_t seq_len;    /* tokens per calibration sequence */
  int64_t max_tokens; /* cap on T (rounded down to whole sequences); 0 = all */
  kq_rope_mode rope;  /* POST: rotated q/k; PRE: un-rotated */
  kq_dtype dtype;     /* F32 or F16 */
  int32_t batch;      /* tokens per forward call */
  kq_progress_fn progress;
  void *progress_user;
  const volatile int *cancel;
} kq_capture_params;

/* Runs the model (full attention on `device`) over whole seq_len-token
 * sequences of ids and writes per layer q [H,T,d], k, v [Hk,T,d] and
 * wo [D, H·d] with metadata seq_len, rope, rope_theta, rope_layout=pairs,
 * model_name and model_sha256 (kq_llama_identity) to out_path (atomically). *out_tokens = T.
 * KQ_ERR_INVALID_ARGUMENT when fewer than seq_len tokens are given. */
kq_status kq_model_capture(kq_llama *model, kq_device *device, const int32_t *ids, int64_t n,
                           const char *out_path, const kq_capture_params *params,
                           int64_t *out_tokens);

/* Called with each generated token; a non-zero return stops generation. */
typedef int (*kq_token_fn)(void *user, int32_t token);

typedef struct kq_generate_result {
  int32_t n_generated;
  double prefill_seconds, decode_seconds;
} kq_generate_result;

/* Greedy decoding: prefills prompt[0..n_prompt) then emits up to n_new
 * tokens (stopping after EOS), each passed to on_token. The session's cache
 * must hold n_prompt + n_new tokens. */
kq_status kq_model_generate(kq_model_session *session, const int32_t *prompt, int32_t n_prompt,
                            int32_t n_new, kq_token_fn on_token, void *user,
                            const volatile int *cancel, kq_generate_result *out);

/* One prompt of a parallel run. */
typedef struct kq_parallel_prompt {
  const int32_t *ids;
  int32_t n_ids;
} kq_parallel_prompt;

/* Called with each generated token of prompt `index`; a non-zero return
 * stops that prompt. */
typedef int (*kq_seq_token_fn)(void *user, int32_t index, int32_t token);

typedef struct kq_parallel_result {
  int64_t n_generated;    /* tokens generated, all prompts */
  double prefill_seconds; /* forward passes over prompts */
  double decode_seconds;  /* batched decode passes */
  int64_t decode_steps;   /* batched decode passes (one per step, all sequences) */
  int32_t max_batch;      /* most sequences in one decode pass */
} kq_parallel_result;

/* Greedy decoding of n_prompts prompts as sequences of one cache (the
 * session's cache has n_seqs sequences, each holding any prompt's n_ids +
 * n_new tokens). Up to n_seqs prompts are in flight: each is prefilled into
 * a free sequence, then every step decodes one token of every sequence in
 * flight in ONE forward pass (kq_cache_append_batch/attend_batch); a
 * finished sequence is cleared and takes the next prompt. Each prompt stops
 * as kq_model_generate does (n_new tokens, EOS, or on_token non-zero), and
 * gets the tokens kq_model_generate would give it alone: RoPE is applied per
 * sequence at its own positions. */
kq_status kq_model_generate_parallel(kq_model_session *session, const kq_parallel_prompt *prompts,
                                     int32_t n_prompts, int32_t n_new, kq_seq_token_fn on_token,
                                     void *user, const volatile int *cancel,
                                     kq_parallel_result *out);

/* Largest text file read (bytes). */
#define KQ_MAX_TEXT_BYTES ((uint64_t)1 << 30)

/* Reads a whole text file (NUL-terminated copy; caller frees). Only regular
 * files of at most KQ_MAX_TEXT_BYTES: a FIFO, device (/dev/zero) or
 * directory is refused at once with KQ_ERR_INVALID_ARGUMENT. Errors name
 * the file. */
kq_status kq_model_read_text(const char *path, char **out_text, size_t *out_len);

#endif /* KQ_MODEL_RUN_H */
