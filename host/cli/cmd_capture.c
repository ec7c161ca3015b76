/* kqsvd capture: run a GGUF model over text files and write calibration
 * data (SPEC §2: per-layer q, k, v, wo and metadata). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli_util.h"
#include "commands.h"
#include "kq_output_file.h"
#include "model/kq_model_run.h"

static void help(void) {
  printf("usage: kqsvd capture MODEL.gguf TEXT... -o CALIB.safetensors [--seq-len N]\n"
         "                    [--max-tokens N] [--rope post|pre] [--dtype f32|f16]\n"
         "                    [--device NAME] [-t N] [--special] [--json] [-q|-v]\n"
         "       kqsvd capture -m MODEL.gguf -f TEXT [-f TEXT]... -o CALIB.safetensors ...\n"
         "\n"
         "Tokenizes the TEXT files (each on its own, ids concatenated), cuts the tokens into\n"
         "sequences of --seq-len, runs the model with full attention over each sequence and\n"
         "writes per layer l: layers.l.q [H,T,d], layers.l.k and layers.l.v [Hk,T,d] and\n"
         "layers.l.wo [D,H*d], with metadata seq_len, rope, rope_theta, rope_layout=pairs\n"
         "and the model's identity, model_name (GGUF general.name) and model_sha256 (of the\n"
         "GGUF file), which fit copies into the projections and ppl/generate check.\n"
         "T is a whole number of sequences; a trailing partial sequence is dropped. The file\n"
         "is written atomically (no file on failure or Ctrl-C).\n"
         "\n"
         "  -o, --output FILE   calibration file to write\n"
         "  -m, --model FILE    the model (instead of the first argument)\n"
         "  -f, --file TEXT     a text file (repeatable; adds to the TEXT arguments)\n"
         "  --seq-len N         tokens per sequence (default 512)\n"
         "  --max-tokens N      cap on T (default 4096; 0 = all the text)\n"
         "  --rope post|pre     post (default): keys/queries after RoPE; pre: before\n"
         "  --dtype f32|f16     storage type of the tensors (default f32)\n"
         "  --device NAME       device for the attention (default: $KQSVD_DEVICE or cpu)\n"
         "  -t, --threads N     CPU threads for the model (default: all cores)\n"
         "  --special           read the model's control-token strings in TEXT (<|im_start|>,\n"
         "                      <|im_end|>, ...) as those tokens, as in a chat transcript;\n"
         "                      without it they are plain text\n"
         "  --json              print the summary as one JSON object on stdout: {\"output\",\n"
         "                      \"model\", \"layers\", \"tokens\", \"sequences\", \"seq_len\",\n"
         "                      \"text_tokens\", \"rope\", \"dtype\", \"seconds\"}\n"
         "  -q, --quiet         no progress, only errors, warnings and the summary\n"
         "  -v, --verbose       also the settings in effect\n"
         "  -h, --help          this help\n"
         "\n"
         "Options take their value as --opt V or --opt=V; -- ends the options.\n");
}

enum { OPT_SEQ_LEN = 256, OPT_MAX_TOKENS, OPT_DEVICE, OPT_ROPE, OPT_DTYPE, OPT_SPECIAL, OPT_JSON };

static const struct option g_options[] = {
    {"output", required_argument, NULL, 'o'},
    {"model", required_argument, NULL, 'm'},
    {"file", required_argument, NULL, 'f'},
    {"threads", required_argument, NULL, 't'},
    {"seq-len", required_argument, NULL, OPT_SEQ_LEN},
    {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"rope", required_argument, NULL, OPT_ROPE},
    {"dtype", required_argument, NULL, OPT_DTYPE},
    {"special", no_argument, NULL, OPT_SPECIAL},
    {"json", no_argument, NULL, OPT_JSON},
    KQ_CLI_COMMON_LONG,
    {NULL, 0, NULL, 0},
};

/* Returns 0 to run, 1 after --help, 2 on a usage error (printed). */
static int parse(int argc, char **argv, const char **model_path, const char **texts, int *n_texts,
                 const char **out, const char **device, long long *seq_len, long long *max_tokens,
                 long long *threads, int *special, int *json, kq_capture_params *p) {
  const char *cmd = "capture";
  int c, bad = 0;
  kq_cli_getopt_begin();
  while (!bad &&
         (c = kq_cli_getopt(cmd, argc, argv, KQ_CLI_COMMON_SHORT "o:m:f:t:", g_options)) != -1) {
    const char *val = optarg;
    switch (c) {
    case 'h': help(); return 1;
    case OPT_SPECIAL: *special = 1; break;
    case OPT_JSON: *json = 1; break;
    case 'o': *out = val; break;
    case 'm': *model_path = val; break;
    case 'f': texts[(*n_texts)++] = val; break;
    case OPT_SEQ_LEN: bad = !kq_cli_parse_int(cmd, "--seq-len", val, 2, 1 << 20, seq_len); break;
    case OPT_MAX_TOKENS:
      bad = !kq_cli_parse_int(cmd, "--max-tokens", val, 0, INT32_MAX, max_tokens);
      break;
    case 't': bad = !kq_cli_parse_int(cmd, "--threads", val, 1, 1024, threads); break;
    case OPT_DEVICE: *device = val; break;
    case OPT_ROPE:
      if (!strcmp(val, "post"))
        p->rope = KQ_ROPE_POST;
      else if (!strcmp(val, "pre"))
        p->rope = KQ_ROPE_PRE;
      else
        return kq_cli_usage_error(cmd, "--rope: '%s' (expected post or pre)", val);
      break;
    case OPT_DTYPE:
      if (!strcmp(val, "f32"))
        p->dtype = KQ_DTYPE_F32;
      else if (!strcmp(val, "f16"))
        p->dtype = KQ_DTYPE_F16;
      else
        return kq_cli_usage_error(cmd, "--dtype: '%s' (expected f32 or f16)", val);
      break;
    default: return 2;
    }
  }
  if (bad) return 2;
  for (int i = optind; i < argc; i++) {
    if (!*model_path)
      *model_path = argv[i];
    else
      texts[(*n_texts)++] = argv[i];
  }
  return 0;
}

int kq_cmd_capture(int argc, char **argv) {
  const char *cmd = "capture", *model_path = NULL, *out = NULL, *device = NULL;
  const char **texts = calloc((size_t)argc + 1, sizeof *texts);
  int n_texts = 0, special = 0, json = 0;
  long long seq_len = 512, max_tokens = 4096, threads = 0;
  kq_capture_params p = {.rope = KQ_ROPE_POST, .dtype = KQ_DTYPE_F32};
  if (!texts) return kq_cli_usage_error(cmd, "out of memory");
  int prc = parse(argc, argv, &model_path, texts, &n_texts, &out, &device, &seq_len, &max_tokens,
                  &threads, &special, &json, &p);
  if (prc) {
    free(texts);
    return prc == 1 ? 0 : 2;
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

  kq_cli_detail(cmd, "%s: %d text file%s -> %s, seq_len %lld, max_tokens %lld, threads %lld",
                model_path, n_texts, n_texts == 1 ? "" : "s", out, seq_len, max_tokens, threads);
  double t0 = kq_cli_seconds();
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
  if (st == KQ_OK) st = kq_cli_device_create(cmd, device, &dev);
  int64_t T = 0;
  if (st == KQ_OK) st = kq_model_capture(m, dev, all, n_all, out, &p, &T);
  kq_cli_progress_end();
  int rc = 0;
  if (st == KQ_ERR_INTERRUPTED) {
    fprintf(stderr, "kqsvd capture: interrupted; %s was not written\n", out);
    rc = 130;
  } else if (st != KQ_OK) {
    rc = kq_cli_fail(cmd, st);
  } else if (json) {
    const kq_llama_hparams *hp = kq_llama_get_hparams(m);
    cJSON *root = cJSON_CreateObject();
    int ok = root && cJSON_AddStringToObject(root, "output", out) &&
             cJSON_AddStringToObject(root, "model", model_path) &&
             kq_cli_json_add_number(root, "layers", hp->n_layers) &&
             kq_cli_json_add_number(root, "tokens", (double)T) &&
             kq_cli_json_add_number(root, "sequences", (double)(T / seq_len)) &&
             kq_cli_json_add_number(root, "seq_len", (double)seq_len) &&
             kq_cli_json_add_number(root, "text_tokens", (double)n_all) &&
             cJSON_AddStringToObject(root, "rope", p.rope == KQ_ROPE_POST ? "post" : "pre") &&
             cJSON_AddStringToObject(root, "dtype", p.dtype == KQ_DTYPE_F16 ? "f16" : "f32") &&
             kq_cli_json_add_number(root, "seconds", kq_cli_seconds() - t0);
    if (!ok) {
      cJSON_Delete(root);
      root = NULL;
    }
    rc = kq_cli_json_print(cmd, root);
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
