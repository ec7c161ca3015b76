/*
 * fuzz_model.c — libFuzzer harness for the whole-model GGUF loader: the
 * input is a whole GGUF file, loaded with kq_llama_load (hyper-parameters,
 * tokenizer, every weight, kept-quantised blocks checked once). A model that
 * loads runs a short prefill of three tokens and one decode step on the
 * test-only naive attention (tests/model/naive_attention.c: no device, no
 * kqsvd cache), and its tokenizer encodes a short fixed text. Besides
 * crashes and sanitizer reports, aborts on a broken promise of kq_llama.h:
 * hyper-parameters that do not fit together, or a forward pass that returns
 * OK with non-finite logits.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "model/kq_llama.h"
#include "naive_attention.h"

static volatile uint64_t g_sink;

static void check_hparams(const kq_llama_hparams *hp) {
  if (hp->n_layers <= 0 || hp->n_embd <= 0 || hp->n_ff <= 0 || hp->n_heads <= 0 ||
      hp->n_kv_heads <= 0 || hp->n_vocab <= 0 || hp->head_dim <= 0 ||
      hp->head_dim * hp->n_heads != hp->n_embd || hp->n_heads % hp->n_kv_heads != 0 ||
      !(hp->rms_eps > 0) || !(hp->rope_theta > 0))
    abort();
}

/* Runs the tokens of eval through the model; on OK the logits must be
 * finite (the forward pass promises never to hand on NaN/Inf). */
static void forward_checked(kq_llama *m, const kq_llama_attention *attn, kq_llama_eval *ev,
                            float *logits, int32_t n_vocab) {
  ev->logits = logits;
  ev->last_only = 1;
  if (kq_llama_forward(m, attn, ev) != KQ_OK) return;
  for (int32_t j = 0; j < n_vocab; j++)
    if (!isfinite(logits[j])) abort();
  g_sink += (uint64_t)(logits[0] > 0);
}

static void run_forward(kq_llama *m) {
  const kq_llama_hparams *hp = kq_llama_get_hparams(m);
  naive_attention *a =
      naive_attention_create(hp->n_layers, hp->n_heads, hp->n_kv_heads, hp->head_dim, 4);
  float *logits = malloc((size_t)hp->n_vocab * sizeof *logits);
  if (!a || !logits) abort();
  kq_llama_attention attn = naive_attention_iface(a);
  int32_t bos = kq_tokenizer_bos(kq_llama_get_tokenizer(m));
  int32_t prefill[3] = {bos >= 0 ? bos : 0, hp->n_vocab - 1, hp->n_vocab / 2};
  kq_llama_eval ev = {.tokens = prefill, .n = 3, .pos0 = 0};
  forward_checked(m, &attn, &ev, logits, hp->n_vocab);
  int32_t next[1] = {hp->n_vocab > 1 ? 1 : 0};
  ev = (kq_llama_eval){.tokens = next, .n = 1, .pos0 = 3};
  forward_checked(m, &attn, &ev, logits, hp->n_vocab);
  free(logits);
  naive_attention_destroy(a);
}

static void run_tokenizer(const kq_tokenizer *tok) {
  static const char text[] = "<|im_start|>Hi there, 42 caf\xc3\xa9s!\n\n  ok";
  for (int special = 0; special <= 1; special++) {
    int32_t *ids = NULL, n = 0;
    if (kq_tokenizer_encode(tok, text, sizeof text - 1, special, &ids, &n) != KQ_OK) continue;
    for (int32_t j = 0; j < n; j++) {
      size_t len = 0;
      if (!kq_tokenizer_token_bytes(tok, ids[j], &len)) abort(); /* an id outside the vocab */
      g_sink += len;
    }
    free(ids);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char path[64];
  kq_fuzz_to_file(data, size, path, sizeof path);
  kq_llama *m = NULL;
  if (kq_llama_load(path, 1, &m) != KQ_OK) return 0;
  check_hparams(kq_llama_get_hparams(m));
  if (kq_tokenizer_vocab_size(kq_llama_get_tokenizer(m)) != kq_llama_get_hparams(m)->n_vocab)
    abort();
  run_forward(m);
  run_tokenizer(kq_llama_get_tokenizer(m));
  kq_llama_destroy(m);
  return 0;
}
