/* kqsvd generate: greedy generation with the full or a compressed cache. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "commands.h"
#include "model/kq_model_run.h"

static void help(void) {
  printf("usage: kqsvd generate MODEL.gguf --prompt TEXT [--proj PROJ] [--device NAME]\n"
         "                     [-n N] [--storage f32|f16] [--chat] [--threads N]\n"
         "\n"
         "Greedy decoding: prints the prompt and the generated text on stdout, then prefill\n"
         "and decode speed on stderr. Attention runs on --device through the kqsvd cache:\n"
         "the full cache, or with --proj the compressed cache of a projection file.\n"
         "\n"
         "  --prompt TEXT       the prompt\n"
         "  --proj PROJ         projection file from 'kqsvd fit' (default: full cache)\n"
         "  --device NAME       cpu, vulkan:N, opencl:N (default: $KQSVD_DEVICE or cpu)\n"
         "  -n N                tokens to generate (default 64); stops early at EOS\n"
         "  --storage T         latent cache storage, f32 (default) or f16\n"
         "  --chat              wrap the prompt in the model's chat turn markers\n"
         "                      (<|im_start|>user ... <|im_end|> <|im_start|>assistant)\n"
         "  --threads N         CPU threads for the model (default: all cores)\n"
         "  -h, --help          this help\n");
}

typedef struct printer {
  const kq_tokenizer *tok;
} printer;

static int print_token(void *user, int32_t id) {
  const printer *p = user;
  size_t len;
  const char *b = kq_tokenizer_token_bytes(p->tok, id, &len);
  if (b && id != kq_tokenizer_eos(p->tok)) fwrite(b, 1, len, stdout);
  fflush(stdout);
  return 0;
}

int kq_cmd_generate(int argc, char **argv) {
  const char *cmd = "generate", *model_path = NULL, *prompt = NULL, *proj = NULL, *device = NULL;
  long long n_new = 64, threads = 0;
  int chat = 0;
  kq_storage storage = KQ_STORAGE_F32;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      help();
      return 0;
    }
    if (!strcmp(a, "--chat")) {
      chat = 1;
      continue;
    }
    if (a[0] == '-' && a[1] != '\0' && !val) return kq_cli_usage_error(cmd, "%s needs a value", a);
    if (!strcmp(a, "--prompt")) {
      prompt = val;
    } else if (!strcmp(a, "--proj")) {
      proj = val;
    } else if (!strcmp(a, "--device")) {
      device = val;
    } else if (!strcmp(a, "-n")) {
      if (!kq_cli_parse_int(cmd, a, val, 1, 1 << 20, &n_new)) return 2;
    } else if (!strcmp(a, "--threads")) {
      if (!kq_cli_parse_int(cmd, a, val, 1, 1024, &threads)) return 2;
    } else if (!strcmp(a, "--storage")) {
      if (!kq_cli_parse_storage(cmd, a, val, &storage)) return 2;
    } else if (a[0] == '-' && a[1] != '\0') {
      return kq_cli_usage_error(cmd, "unknown option '%s'", a);
    } else {
      if (model_path) return kq_cli_usage_error(cmd, "unexpected argument '%s'", a);
      model_path = a;
      continue;
    }
    i++;
  }
  if (!model_path) return kq_cli_usage_error(cmd, "missing MODEL.gguf");
  if (!prompt || !*prompt) return kq_cli_usage_error(cmd, "missing --prompt TEXT");

  kq_llama *m = NULL;
  kq_device *dev = NULL;
  int32_t *ids = NULL, n_ids = 0;
  char *wrapped = NULL;
  kq_model_session s = {0};
  int have_session = 0;
  kq_status st = kq_llama_load(model_path, (int)threads, &m);
  if (st == KQ_OK) {
    const char *text = prompt;
    if (chat) {
      size_t len = strlen(prompt) + 64;
      wrapped = malloc(len);
      if (!wrapped) return kq_cli_usage_error(cmd, "out of memory");
      snprintf(wrapped, len, "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n", prompt);
      text = wrapped;
    }
    st = kq_tokenizer_encode(kq_llama_get_tokenizer(m), text, strlen(text), chat, &ids, &n_ids);
  }
  if (st == KQ_OK && n_ids == 0)
    st = kq_set_error(KQ_ERR_INVALID_ARGUMENT, "the prompt gives no tokens");
  if (st == KQ_OK) st = kq_device_create(device, &dev);
  if (st == KQ_OK) st = kq_model_session_create(m, dev, proj, storage, n_ids + (int32_t)n_new, &s);
  have_session = st == KQ_OK;
  kq_generate_result r = {0};
  if (st == KQ_OK) {
    fwrite(chat ? wrapped : prompt, 1, strlen(chat ? wrapped : prompt), stdout);
    printer pr = {kq_llama_get_tokenizer(m)};
    st = kq_model_generate(&s, ids, n_ids, (int32_t)n_new, print_token, &pr, kq_cli_cancel_flag(),
                           &r);
    printf("\n");
  }
  int rc = 0;
  if (st != KQ_OK) {
    rc = st == KQ_ERR_INTERRUPTED ? 130 : kq_cli_fail(cmd, st);
  } else {
    kq_device_info di;
    kq_device_get_info(dev, &di);
    int32_t decoded = r.n_generated > 1 ? r.n_generated - 1 : 0;
    fprintf(stderr,
            "kqsvd generate: %s cache on %s, kv_bytes %llu: prompt %d tokens in %.3f s (%.1f "
            "tokens/s); %d tokens generated, decode %.1f tokens/s\n",
            proj ? "compressed" : "full", di.name, (unsigned long long)s.kv_bytes, n_ids,
            r.prefill_seconds, n_ids / r.prefill_seconds, r.n_generated,
            decoded > 0 ? decoded / r.decode_seconds : 0.0);
  }
  if (have_session) kq_model_session_destroy(&s);
  kq_device_destroy(dev);
  free(ids);
  free(wrapped);
  kq_llama_destroy(m);
  return rc;
}
