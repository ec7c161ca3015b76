/* model_probe — test driver that exposes the model code to the Python
 * reference script (tests/model/reference_logits.py):
 *   model_probe tensor   FILE.gguf NAME OUT.f32     dequantise one tensor
 *   model_probe tokenize FILE.gguf TEXTFILE [MAX]   print token ids (at most MAX),
 *                                                   "dropped N" (bytes without a
 *                                                   token) on stderr
 *   model_probe logits   FILE.gguf OUT.f32 ID...    logits [n, vocab] through the
 *                                                   naive attention AND the
 *                                                   kqsvd cpu cache (identity
 *                                                   projections); writes both,
 *                                                   naive first
 * Exit 0 on success, 1 on failure with the library's message on stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/kq_gguf.h"
#include "model/kq_llama.h"
#include "model/kq_model_run.h"
#include "model/kq_tokenizer.h"
#include "naive_attention.h"

static int fail(kq_status st) {
  fprintf(stderr, "model_probe: %s: %s\n", kq_status_string(st), kq_last_error());
  return 1;
}

static int write_all(const char *path, const void *p, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
    fprintf(stderr, "model_probe: cannot write %s\n", path);
    return 1;
  }
  return 0;
}

static int cmd_tensor(const char *path, const char *name, const char *out) {
  kq_gguf *f;
  kq_status st = kq_gguf_open(path, &f);
  if (st != KQ_OK) return fail(st);
  const kq_gguf_tensor *t = kq_gguf_find_tensor(f, name);
  float *buf = t ? malloc((size_t)t->n_elements * sizeof(float)) : NULL;
  int rc = 1;
  if (!t)
    fprintf(stderr, "model_probe: no tensor %s\n", name);
  else if (buf && (st = kq_gguf_dequantize(f, t, buf)) != KQ_OK)
    fail(st);
  else if (buf)
    rc = write_all(out, buf, (size_t)t->n_elements * sizeof(float));
  free(buf);
  kq_gguf_close(f);
  return rc;
}

static int cmd_tokenize(const char *path, const char *text_path, int64_t max_tokens) {
  char *text = NULL;
  size_t len = 0;
  kq_status st = kq_model_read_text(text_path, &text, &len);
  if (st != KQ_OK) return fail(st);
  kq_gguf *f;
  st = kq_gguf_open(path, &f);
  if (st != KQ_OK) return free(text), fail(st);
  kq_tokenizer *tok;
  st = kq_tokenizer_load(f, &tok);
  kq_gguf_close(f);
  if (st != KQ_OK) return free(text), fail(st);
  int32_t *ids, n;
  size_t dropped = 0;
  st = kq_tokenizer_encode_ex(tok, text, len, 0, max_tokens, &ids, &n, &dropped);
  free(text);
  if (st != KQ_OK) return kq_tokenizer_destroy(tok), fail(st);
  for (int32_t j = 0; j < n; j++) printf("%s%d", j ? " " : "", ids[j]);
  printf("\n");
  fprintf(stderr, "dropped %zu\n", dropped);
  free(ids);
  kq_tokenizer_destroy(tok);
  return 0;
}

static int cmd_logits(const char *path, const char *out, int n, char **id_text) {
  int32_t *ids = malloc((size_t)n * sizeof *ids);
  if (!ids) return 1;
  for (int j = 0; j < n; j++) ids[j] = (int32_t)atoi(id_text[j]);
  kq_llama *m;
  kq_status st = kq_llama_load(path, 0, &m);
  if (st != KQ_OK) return free(ids), fail(st);
  const kq_llama_hparams *hp = kq_llama_get_hparams(m);
  size_t nl = (size_t)n * hp->n_vocab;
  float *logits = malloc(2 * nl * sizeof(float));
  naive_attention *na =
      naive_attention_create(hp->n_layers, hp->n_heads, hp->n_kv_heads, hp->head_dim, n);
  kq_device *dev = NULL;
  kq_projections *proj = NULL;
  kq_cache *cache = NULL;
  int rc = 1;
  if (!logits || !na) goto done;
  kq_llama_attention at = naive_attention_iface(na);
  kq_llama_eval ev = {.tokens = ids, .n = n, .logits = logits};
  if ((st = kq_llama_forward(m, &at, &ev)) != KQ_OK) goto fail;
  kq_projections_info info = kq_llama_projection_info(m);
  kq_cache_params cp = kq_cache_default_params();
  cp.capacity = n;
  if ((st = kq_device_create("cpu", &dev)) != KQ_OK) goto fail;
  if ((st = kq_projections_create_identity(&info, &proj)) != KQ_OK) goto fail;
  if ((st = kq_cache_create(dev, proj, &cp, &cache)) != KQ_OK) goto fail;
  /* Second path: prefill in two chunks, so append/attend see a non-empty
   * cache with m > 1 and the decode step m = 1. */
  at = kq_llama_cache_attention(cache, KQ_ROPE_POST);
  int32_t first = n > 2 ? n - 1 : n;
  ev = (kq_llama_eval){.tokens = ids, .n = first, .logits = logits + nl};
  if ((st = kq_llama_forward(m, &at, &ev)) != KQ_OK) goto fail;
  if (first < n) {
    ev = (kq_llama_eval){.tokens = ids + first,
                         .n = n - first,
                         .pos0 = first,
                         .logits = logits + nl + (size_t)first * hp->n_vocab};
    if ((st = kq_llama_forward(m, &at, &ev)) != KQ_OK) goto fail;
  }
  rc = write_all(out, logits, 2 * nl * sizeof(float));
  goto done;
fail:
  fail(st);
done:
  kq_cache_destroy(cache);
  kq_projections_destroy(proj);
  kq_device_destroy(dev);
  naive_attention_destroy(na);
  free(logits);
  free(ids);
  kq_llama_destroy(m);
  return rc;
}

int main(int argc, char **argv) {
  if (argc == 5 && !strcmp(argv[1], "tensor")) return cmd_tensor(argv[2], argv[3], argv[4]);
  if ((argc == 4 || argc == 5) && !strcmp(argv[1], "tokenize"))
    return cmd_tokenize(argv[2], argv[3], argc == 5 ? atoll(argv[4]) : 0);
  if (argc >= 5 && !strcmp(argv[1], "logits"))
    return cmd_logits(argv[2], argv[3], argc - 4, argv + 4);
  fprintf(stderr, "usage: model_probe tensor|tokenize|logits ... (see the source)\n");
  return 2;
}
