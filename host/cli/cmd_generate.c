/* kqsvd generate: greedy generation with the full or a compressed cache. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli_model.h"
#include "cli_util.h"
#include "commands.h"
#include "model/kq_chat.h"
#include "model/kq_model_run.h"

static void help(void) {
  printf(
      "usage: kqsvd generate MODEL.gguf -p TEXT [--proj PROJ] [--device NAME]\n"
      "                     [-n N] [--storage f32|f16] [--chat] [-t N] [--json] [-q|-v]\n"
      "\n"
      "Greedy decoding: prints the prompt and the generated text on stdout (with --chat\n"
      "only the reply), then prefill and decode speed on stderr. Attention runs on\n"
      "--device through the kqsvd cache: the full cache, or with --proj the compressed\n"
      "cache of a projection file (refused when it was fitted for another model).\n"
      "\n"
      "  -m, --model FILE    the model (instead of the MODEL.gguf argument)\n"
      "  -p, --prompt TEXT   the prompt\n"
      "  --proj PROJ         projection file from 'kqsvd fit' (default: full cache)\n"
      "  --device NAME       cpu, vulkan:N, opencl:N (default: $KQSVD_DEVICE or cpu)\n"
      "  -n, --n-predict N   tokens to generate (default 64); stops early at EOS\n"
      "  --storage T         latent cache storage, f32 (default) or f16\n"
      "  --chat              the prompt is a user message: render the model's chat\n"
      "                      template (GGUF tokenizer.chat_template; ChatML with its\n"
      "                      default system prompt, or Llama-3 turns; ChatML with a\n"
      "                      warning when the GGUF has neither) and print only the reply\n"
      "  -t, --threads N     CPU threads for the model (default: all cores)\n"
      "  --json              print one JSON object on stdout instead of the text: {\"prompt\",\n"
      "                      \"text\" (generated), \"cache\", \"proj\", \"device\", \"kv_bytes\",\n"
      "                      \"prompt_tokens\", \"prefill_seconds\", \"prefill_tokens_per_s\",\n"
      "                      \"generated_tokens\", \"decode_seconds\", \"decode_tokens_per_s\"}\n"
      "  -q, --quiet         only the text (or JSON) and errors\n"
      "  -v, --verbose       also the settings in effect\n"
      "  -h, --help          this help\n"
      "\n"
      "Options take their value as --opt V or --opt=V; -- ends the options.\n");
}

/* Where generated tokens go: stdout as they come, or a buffer for --json. */
typedef struct printer {
  const kq_tokenizer *tok;
  char *text; /* NULL: print */
  size_t len, cap;
  int oom;
  char last; /* last byte printed, '\0' before any */
} printer;

static int print_token(void *user, int32_t id) {
  printer *p = user;
  size_t len;
  const char *b = kq_tokenizer_token_bytes(p->tok, id, &len);
  if (!b || id == kq_tokenizer_eos(p->tok)) return 0;
  if (len) p->last = b[len - 1];
  if (!p->text) {
    fwrite(b, 1, len, stdout);
    fflush(stdout);
    return 0;
  }
  if (p->len + len + 1 > p->cap) {
    size_t cap = 2 * (p->len + len + 1);
    char *grown = realloc(p->text, cap);
    if (!grown) {
      p->oom = 1;
      return 0;
    }
    p->text = grown, p->cap = cap;
  }
  memcpy(p->text + p->len, b, len);
  p->len += len;
  p->text[p->len] = '\0';
  return 0;
}

enum { OPT_PROJ = 256, OPT_DEVICE, OPT_STORAGE, OPT_CHAT, OPT_JSON };

static const struct option g_options[] = {
    {"prompt", required_argument, NULL, 'p'},
    {"model", required_argument, NULL, 'm'},
    {"threads", required_argument, NULL, 't'},
    {"n-predict", required_argument, NULL, 'n'},
    {"proj", required_argument, NULL, OPT_PROJ},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"storage", required_argument, NULL, OPT_STORAGE},
    {"chat", no_argument, NULL, OPT_CHAT},
    {"json", no_argument, NULL, OPT_JSON},
    KQ_CLI_COMMON_LONG,
    {NULL, 0, NULL, 0},
};

int kq_cmd_generate(int argc, char **argv) {
  const char *cmd = "generate", *model_path = NULL, *prompt = NULL, *proj = NULL, *device = NULL;
  long long n_new = 64, threads = 0;
  int chat = 0, json = 0, c;
  kq_storage storage = KQ_STORAGE_F32;
  kq_cli_getopt_begin();
  while ((c = kq_cli_getopt(cmd, argc, argv, KQ_CLI_COMMON_SHORT "p:m:t:n:", g_options)) != -1) {
    switch (c) {
    case 'h': help(); return 0;
    case OPT_CHAT: chat = 1; break;
    case OPT_JSON: json = 1; break;
    case 'p': prompt = optarg; break;
    case 'm': model_path = optarg; break;
    case OPT_PROJ: proj = optarg; break;
    case OPT_DEVICE: device = optarg; break;
    case 'n':
      if (!kq_cli_parse_int(cmd, "-n", optarg, 1, 1 << 20, &n_new)) return 2;
      break;
    case 't':
      if (!kq_cli_parse_int(cmd, "--threads", optarg, 1, 1024, &threads)) return 2;
      break;
    case OPT_STORAGE:
      if (!kq_cli_parse_storage(cmd, "--storage", optarg, &storage)) return 2;
      break;
    default: return 2;
    }
  }
  for (int i = optind; i < argc; i++) {
    if (model_path) return kq_cli_usage_error(cmd, "unexpected argument '%s'", argv[i]);
    model_path = argv[i];
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
  if (st == KQ_OK && proj) st = kq_cli_check_proj(cmd, m, proj); /* before any work */
  if (st == KQ_OK) {
    const char *text = prompt;
    if (chat) {
      kq_chat_format fmt;
      kq_chat_detect(kq_llama_chat_template(m), &fmt);
      if (fmt.guessed)
        fprintf(stderr,
                "kqsvd generate: warning: %s has %s chat template; using ChatML turn markers "
                "(<|im_start|>user ... <|im_end|>)\n",
                model_path, kq_llama_chat_template(m) ? "no known" : "no");
      kq_cli_detail(cmd, "chat template: %s%s%s",
                    fmt.family == KQ_CHAT_LLAMA3 ? "Llama-3" : "ChatML",
                    fmt.default_system[0] ? ", default system prompt: " : "", fmt.default_system);
      st = kq_chat_render(&fmt, prompt, &wrapped);
      text = wrapped;
    }
    if (st == KQ_OK)
      st = kq_tokenizer_encode(kq_llama_get_tokenizer(m), text, strlen(text), chat, &ids, &n_ids);
  }
  if (st == KQ_OK && n_ids == 0)
    st = kq_set_error(KQ_ERR_INVALID_ARGUMENT, "the prompt gives no tokens");
  if (st == KQ_OK) st = kq_device_create(device, &dev);
  kq_cli_detail(cmd, "%s: %d prompt tokens, up to %lld new, %s cache, storage %s", model_path,
                (int)n_ids, n_new, proj ? proj : "full", storage == KQ_STORAGE_F16 ? "f16" : "f32");
  if (st == KQ_OK) st = kq_model_session_create(m, dev, proj, storage, n_ids + (int32_t)n_new, &s);
  have_session = st == KQ_OK;
  kq_generate_result r = {0};
  printer pr = {0};
  if (st == KQ_OK) {
    pr.tok = kq_llama_get_tokenizer(m);
    if (json)
      pr.text = calloc(1, 1), pr.cap = 1, pr.oom = pr.text == NULL;
    else if (!chat)
      fwrite(prompt, 1, strlen(prompt), stdout);
    st = kq_model_generate(&s, ids, n_ids, (int32_t)n_new, print_token, &pr, kq_cli_cancel_flag(),
                           &r);
    if (st == KQ_OK && pr.oom) st = kq_set_error(KQ_ERR_OUT_OF_MEMORY, "generated text");
    if (!json && (!chat || pr.last != '\n')) printf("\n"); /* the reply ends with a newline */
  }
  int rc = 0;
  if (st != KQ_OK) {
    rc = st == KQ_ERR_INTERRUPTED ? 130 : kq_cli_fail(cmd, st);
  } else {
    kq_device_info di;
    kq_device_get_info(dev, &di);
    int32_t decoded = r.n_generated > 1 ? r.n_generated - 1 : 0;
    double decode_rate = decoded > 0 ? decoded / r.decode_seconds : 0.0;
    if (json) {
      cJSON *root = cJSON_CreateObject();
      int ok = root && cJSON_AddStringToObject(root, "prompt", chat ? wrapped : prompt) &&
               cJSON_AddStringToObject(root, "text", pr.text) &&
               cJSON_AddStringToObject(root, "cache", proj ? "compressed" : "full") &&
               (proj ? cJSON_AddStringToObject(root, "proj", proj)
                     : cJSON_AddNullToObject(root, "proj")) &&
               cJSON_AddStringToObject(root, "device", di.name) &&
               kq_cli_json_add_number(root, "kv_bytes", (double)s.kv_bytes) &&
               kq_cli_json_add_number(root, "prompt_tokens", n_ids) &&
               kq_cli_json_add_number(root, "prefill_seconds", r.prefill_seconds) &&
               kq_cli_json_add_number(root, "prefill_tokens_per_s", n_ids / r.prefill_seconds) &&
               kq_cli_json_add_number(root, "generated_tokens", r.n_generated) &&
               kq_cli_json_add_number(root, "decode_seconds", r.decode_seconds) &&
               kq_cli_json_add_number(root, "decode_tokens_per_s", decode_rate);
      if (!ok) {
        cJSON_Delete(root);
        root = NULL;
      }
      rc = kq_cli_json_print(cmd, root);
    } else if (kq_cli_get_verbosity() >= KQ_CLI_NORMAL) {
      fprintf(stderr,
              "kqsvd generate: %s cache on %s, kv_bytes %llu: prompt %d tokens in %.3f s (%.1f "
              "tokens/s); %d tokens generated, decode %.1f tokens/s\n",
              proj ? "compressed" : "full", di.name, (unsigned long long)s.kv_bytes, n_ids,
              r.prefill_seconds, n_ids / r.prefill_seconds, r.n_generated, decode_rate);
    }
  }
  if (have_session) kq_model_session_destroy(&s);
  kq_device_destroy(dev);
  free(ids);
  free(wrapped);
  free(pr.text);
  kq_llama_destroy(m);
  return rc;
}
