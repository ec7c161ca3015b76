/* kqsvd ppl: perplexity of a GGUF model on a text with the full cache and
 * with a compressed cache, and the KV bytes of each. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "commands.h"
#include "model/kq_model_run.h"

static void help(void) {
  printf(
      "usage: kqsvd ppl MODEL.gguf TEXT [--proj PROJ] [--device NAME] [--storage f32|f16]\n"
      "                [--ctx N] [--max-tokens N] [--batch N] [--threads N] [--special]\n"
      "                [--skip-full] [--json]\n"
      "\n"
      "Tokenizes TEXT (a file) with the model's tokenizer and reports the perplexity\n"
      "exp(mean -log p(token | preceding tokens)) in consecutive windows of --ctx tokens\n"
      "(the cache is cleared between windows), first with the full cache (identity\n"
      "projections, rank = head_dim) and then, with --proj, with the compressed cache of a\n"
      "projection file written by 'kqsvd fit'. Attention runs on --device through the\n"
      "kqsvd cache; the rest of the model runs on the CPU.\n"
      "\n"
      "  --proj PROJ         projection file (adds the compressed-cache run)\n"
      "  --skip-full         with --proj: only the compressed run (\"full\": null)\n"
      "  --device NAME       cpu, vulkan:N, opencl:N (default: $KQSVD_DEVICE or cpu)\n"
      "  --storage T         latent cache storage, f32 (default) or f16\n"
      "  --ctx N             window length in tokens (default 512)\n"
      "  --max-tokens N      use only the first N tokens of the text (default: all)\n"
      "  --batch N           tokens per forward call (default 64)\n"
      "  --threads N         CPU threads for the model (default: all cores)\n"
      "  --special           read control-token strings in TEXT (<|im_start|>, ...) as those\n"
      "                      tokens, as in a chat transcript (default: plain text)\n"
      "  --json              {\"tokens\":N,\"full\":{\"ppl\":..,\"kv_bytes\":..},\n"
      "                       \"compressed\":{\"ppl\":..,\"kv_bytes\":..}} (null without --proj)\n"
      "  -h, --help          this help\n");
}

static kq_status run_one(kq_llama *m, kq_device *dev, const char *proj, kq_storage storage,
                         const int32_t *ids, int64_t n, const kq_ppl_params *p, kq_ppl_result *res,
                         uint64_t *kv_bytes) {
  kq_model_session s;
  kq_status st = kq_model_session_create(m, dev, proj, storage, p->ctx, &s);
  if (st != KQ_OK) return st;
  *kv_bytes = s.kv_bytes;
  st = kq_model_perplexity(&s, ids, n, p, res);
  kq_model_session_destroy(&s);
  return st;
}

int kq_cmd_ppl(int argc, char **argv) {
  const char *cmd = "ppl", *model_path = NULL, *text_path = NULL, *proj = NULL, *device = NULL;
  kq_storage storage = KQ_STORAGE_F32;
  long long ctx = 512, max_tokens = 0, batch = 64, threads = 0;
  int json = 0, skip_full = 0, special = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      help();
      return 0;
    }
    if (!strcmp(a, "--json")) {
      json = 1;
      continue;
    }
    if (!strcmp(a, "--skip-full")) {
      skip_full = 1;
      continue;
    }
    if (!strcmp(a, "--special")) {
      special = 1;
      continue;
    }
    if (a[0] == '-' && a[1] != '\0' && !val) return kq_cli_usage_error(cmd, "%s needs a value", a);
    if (!strcmp(a, "--proj")) {
      proj = val;
    } else if (!strcmp(a, "--device")) {
      device = val;
    } else if (!strcmp(a, "--storage")) {
      if (!kq_cli_parse_storage(cmd, a, val, &storage)) return 2;
    } else if (!strcmp(a, "--ctx")) {
      if (!kq_cli_parse_int(cmd, a, val, 2, 1 << 20, &ctx)) return 2;
    } else if (!strcmp(a, "--max-tokens")) {
      if (!kq_cli_parse_int(cmd, a, val, 2, INT32_MAX, &max_tokens)) return 2;
    } else if (!strcmp(a, "--batch")) {
      if (!kq_cli_parse_int(cmd, a, val, 1, 4096, &batch)) return 2;
    } else if (!strcmp(a, "--threads")) {
      if (!kq_cli_parse_int(cmd, a, val, 1, 1024, &threads)) return 2;
    } else if (a[0] == '-' && a[1] != '\0') {
      return kq_cli_usage_error(cmd, "unknown option '%s'", a);
    } else {
      if (!model_path)
        model_path = a;
      else if (!text_path)
        text_path = a;
      else
        return kq_cli_usage_error(cmd, "unexpected argument '%s'", a);
      continue;
    }
    i++;
  }
  if (!model_path || !text_path) return kq_cli_usage_error(cmd, "need MODEL.gguf and TEXT");
  if (skip_full && !proj) return kq_cli_usage_error(cmd, "--skip-full needs --proj");

  kq_llama *m = NULL;
  kq_device *dev = NULL;
  char *text = NULL;
  int32_t *ids = NULL, n_ids = 0;
  size_t len;
  kq_status st = kq_model_read_text(text_path, &text, &len);
  if (st == KQ_OK) st = kq_llama_load(model_path, (int)threads, &m);
  if (st == KQ_OK)
    st = kq_tokenizer_encode(kq_llama_get_tokenizer(m), text, len, special, &ids, &n_ids);
  free(text);
  if (st == KQ_OK) st = kq_device_create(device, &dev);
  if (st != KQ_OK) {
    int rc = kq_cli_fail(cmd, st);
    free(ids);
    kq_llama_destroy(m);
    return rc;
  }
  int64_t n = max_tokens > 0 && max_tokens < n_ids ? max_tokens : n_ids;
  kq_device_info di;
  kq_device_get_info(dev, &di);
  kq_ppl_params p = {.ctx = (int32_t)ctx,
                     .batch = (int32_t)batch,
                     .progress = kq_cli_progress,
                     .progress_user = (void *)cmd,
                     .cancel = kq_cli_cancel_flag()};
  kq_ppl_result full = {0}, comp = {0};
  uint64_t full_kv = 0, comp_kv = 0;
  if (!skip_full) st = run_one(m, dev, NULL, storage, ids, n, &p, &full, &full_kv);
  if (st == KQ_OK && proj) st = run_one(m, dev, proj, storage, ids, n, &p, &comp, &comp_kv);
  kq_cli_progress_end();
  int rc = 0;
  if (st != KQ_OK) {
    rc = st == KQ_ERR_INTERRUPTED ? 130 : kq_cli_fail(cmd, st);
  } else if (json) {
    printf("{\"tokens\":%lld,\"full\":", (long long)n);
    if (skip_full)
      printf("null");
    else
      printf("{\"ppl\":%.6f,\"kv_bytes\":%llu}", full.ppl, (unsigned long long)full_kv);
    if (proj)
      printf(",\"compressed\":{\"ppl\":%.6f,\"kv_bytes\":%llu}}\n", comp.ppl,
             (unsigned long long)comp_kv);
    else
      printf(",\"compressed\":null}\n");
  } else {
    printf("text        %s: %lld tokens, %lld scored, windows of %lld\n", text_path, (long long)n,
           (long long)(skip_full ? comp.predictions : full.predictions), ctx);
    printf("device      %s (%s), storage %s\n", di.name, di.description,
           storage == KQ_STORAGE_F16 ? "f16" : "f32");
    if (!skip_full)
      printf("full        ppl %10.4f   kv_bytes %12llu   %7.1f tokens/s\n", full.ppl,
             (unsigned long long)full_kv, (double)n / full.seconds);
    if (proj) {
      printf("compressed  ppl %10.4f   kv_bytes %12llu   %7.1f tokens/s   (%s", comp.ppl,
             (unsigned long long)comp_kv, (double)n / comp.seconds, proj);
      if (!skip_full)
        printf("; ppl %+.4f, kv %.1f%%", comp.ppl - full.ppl,
               100.0 * (double)comp_kv / (double)full_kv);
      printf(")\n");
    }
  }
  kq_device_destroy(dev);
  free(ids);
  kq_llama_destroy(m);
  return rc;
}
