/* kqsvd capture: run a GGUF model over text files and write calibration
 * data (SPEC §2: per-layer q, k, v, wo and metadata). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "commands.h"
#include "kq_output_file.h"
#include "model/kq_model_run.h"

static void help(void) {
  printf("usage: kqsvd capture MODEL.gguf TEXT... -o CALIB.safetensors [--seq-len N]\n"
         "                    [--max-tokens N] [--rope post|pre] [--dtype f32|f16]\n"
         "                    [--device NAME] [--threads N] [--special]\n"
         "\n"
         "Tokenizes the TEXT files (each on its own, ids concatenated), cuts the tokens into\n"
         "sequences of --seq-len, runs the model with full attention over each sequence and\n"
         "writes per layer l: layers.l.q [H,T,d], layers.l.k and layers.l.v [Hk,T,d] and\n"
         "layers.l.wo [D,H*d], with metadata seq_len, rope, rope_theta, rope_layout=pairs.\n"
         "T is a whole number of sequences; a trailing partial sequence is dropped. The file\n"
         "is written atomically (no file on failure or Ctrl-C).\n"
         "\n"
         "  -o, --output FILE   calibration file to write\n"
         "  --seq-len N         tokens per sequence (default 512)\n"
         "  --max-tokens N      cap on T (default 4096; 0 = all the text)\n"
         "  --rope post|pre     post (default): keys/queries after RoPE; pre: before\n"
         "  --dtype f32|f16     storage type of the tensors (default f32)\n"
         "  --device NAME       device for the attention (default: $KQSVD_DEVICE or cpu)\n"
         "  --threads N         CPU threads for the model (default: all cores)\n"
         "  --special           read the model's control-token strings in TEXT (<|im_start|>,\n"
         "                      <|im_end|>, ...) as those tokens, as in a chat transcript;\n"
         "                      without it they are plain text\n"
         "  -h, --help          this help\n");
}

int kq_cmd_capture(int argc, char **argv) {
  const char *cmd = "capture", *model_path = NULL, *out = NULL, *device = NULL;
  const char **texts = calloc((size_t)argc + 1, sizeof *texts);
  int n_texts = 0, special = 0;
  long long seq_len = 512, max_tokens = 4096, threads = 0;
  kq_capture_params p = {.rope = KQ_ROPE_POST, .dtype = KQ_DTYPE_F32};
  if (!texts) return kq_cli_usage_error(cmd, "out of memory");
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      help();
      free(texts);
      return 0;
    }
    if (!strcmp(a, "--special")) {
      special = 1;
      continue;
    }
    int bad = 0;
    if (a[0] == '-' && a[1] != '\0' && !val) {
      free(texts);
      return kq_cli_usage_error(cmd, "%s needs a value", a);
    }
    if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
      out = val;
    } else if (!strcmp(a, "--seq-len")) {
      bad = !kq_cli_parse_int(cmd, a, val, 2, 1 << 20, &seq_len);
    } else if (!strcmp(a, "--max-tokens")) {
      bad = !kq_cli_parse_int(cmd, a, val, 0, INT32_MAX, &max_tokens);
    } else if (!strcmp(a, "--threads")) {
      bad = !kq_cli_parse_int(cmd, a, val, 1, 1024, &threads);
    } else if (!strcmp(a, "--device")) {
      device = val;
    } else if (!strcmp(a, "--rope")) {
      if (!strcmp(val, "post"))
        p.rope = KQ_ROPE_POST;
      else if (!strcmp(val, "pre"))
        p.rope = KQ_ROPE_PRE;
      else {
        free(texts);
        return kq_cli_usage_error(cmd, "--rope: '%s' (expected post or pre)", val);
      }
    } else if (!strcmp(a, "--dtype")) {
      if (!strcmp(val, "f32"))
        p.dtype = KQ_DTYPE_F32;
      else if (!strcmp(val, "f16"))
        p.dtype = KQ_DTYPE_F16;
      else {
        free(texts);
        return kq_cli_usage_error(cmd, "--dtype: '%s' (expected f32 or f16)", val);
      }
    } else if (a[0] == '-' && a[1] != '\0') {
      free(texts);
      return kq_cli_usage_error(cmd, "unknown option '%s'", a);
    } else {
      if (!model_path)
        model_path = a;
      else
        texts[n_texts++] = a;
      continue;
    }
    if (bad) {
      free(texts);
      return 2;
    }
    i++;
  }
  if (!model_path || n_texts == 0) {
    free(texts);
    return kq_cli_usage_error(cmd, "need MODEL.gguf and at least one TEXT file");
  }
  if (!out) {
    free(texts);
    return kq_cli_usage_error(cmd, "missing -o CALIB.safetensors");
  }
  /* Fail before the long run if the output cannot be written or is one of
   * the inputs (capture m.gguf t -o m.gguf would replace the model). */
  const char **inputs = calloc((size_t)n_texts + 2, sizeof *inputs);
  if (!inputs) {
    free(texts);
    return kq_cli_fail(cmd, KQ_ERR_OUT_OF_MEMORY);
  }
  inputs[0] = model_path;
  for (int t = 0; t < n_texts; t++) inputs[t + 1] = texts[t];
  kq_status cst = kq_output_check(out, inputs);
  free(inputs);
  if (cst != KQ_OK) {
    free(texts);
    return kq_cli_fail(cmd, cst);
  }
  p.seq_len = (int32_t)seq_len;
  p.max_tokens = max_tokens;
  p.progress = kq_cli_progress;
  p.progress_user = (void *)cmd;
  p.cancel = kq_cli_cancel_flag();

  kq_llama *m = NULL;
  kq_device *dev = NULL;
  int32_t *all = NULL;
  int64_t n_all = 0;
  kq_status st = kq_llama_load(model_path, (int)threads, &m);
  for (int k = 0; k < n_texts && st == KQ_OK; k++) {
    if (max_tokens > 0 && n_all >= max_tokens) break; /* enough text already */
    char *text = NULL;
    size_t len;
    int32_t *ids = NULL, n = 0;
    size_t dropped = 0;
    st = kq_model_read_text(texts[k], &text, &len);
    if (st == KQ_OK) /* no more tokens than still needed */
      st = kq_tokenizer_encode_ex(kq_llama_get_tokenizer(m), text, len, special,
                                  max_tokens > 0 ? max_tokens - n_all : 0, &ids, &n, &dropped);
    free(text);
    if (st == KQ_OK && dropped > 0)
      fprintf(stderr,
              "kqsvd capture: warning: %s: %zu bytes have no token in this model's vocabulary "
              "and were left out\n",
              texts[k], dropped);
    if (st == KQ_OK) {
      int32_t *grown = realloc(all, (size_t)(n_all + n + 1) * sizeof *all);
      if (!grown) {
        fprintf(stderr, "kqsvd capture: out of memory\n");
        free(ids);
        free(all);
        kq_llama_destroy(m);
        free(texts);
        return 1;
      }
      all = grown;
      memcpy(all + n_all, ids, (size_t)n * sizeof *all);
      n_all += n;
    }
    free(ids);
  }
  if (st == KQ_OK) st = kq_device_create(device, &dev);
  int64_t T = 0;
  if (st == KQ_OK) st = kq_model_capture(m, dev, all, n_all, out, &p, &T);
  kq_cli_progress_end();
  int rc = 0;
  if (st == KQ_ERR_INTERRUPTED) {
    fprintf(stderr, "kqsvd capture: interrupted; %s was not written\n", out);
    rc = 130;
  } else if (st != KQ_OK) {
    rc = kq_cli_fail(cmd, st);
  } else {
    const kq_llama_hparams *hp = kq_llama_get_hparams(m);
    fprintf(stderr,
            "kqsvd capture: wrote %s: %d layers, T = %lld tokens (%lld sequences of %lld; %lld "
            "tokens of text), rope %s, %s\n",
            out, hp->n_layers, (long long)T, (long long)(T / seq_len), seq_len, (long long)n_all,
            p.rope == KQ_ROPE_POST ? "post" : "pre", p.dtype == KQ_DTYPE_F16 ? "f16" : "f32");
  }
  kq_device_destroy(dev);
  free(all);
  kq_llama_destroy(m);
  free(texts);
  return rc;
}
