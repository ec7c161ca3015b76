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
      "       kqsvd generate MODEL.gguf (-p TEXT)... | -f PROMPTS [--parallel N] ...\n"
      "\n"
      "Greedy decoding: prints the prompt and the generated text on stdout (with --chat\n"
      "only the reply), then prefill and decode speed on stderr. Attention runs on\n"
      "--device through the kqsvd cache: the full cache, or with --proj the compressed\n"
      "cache of a projection file (refused when it was fitted for another model).\n"
      "\n"
      "Several prompts (-p repeated, or -f with one prompt per line) run as sequences of\n"
      "one cache: up to --parallel N at once, every decode step one batched forward pass\n"
      "over all of them; a finished sequence takes the next prompt. Each prompt gets the\n"
      "tokens it gets alone. The texts are printed in prompt order once all are done;\n"
      "stderr reports the aggregate tokens/s.\n"
      "\n"
      "  -m, --model FILE    the model (instead of the MODEL.gguf argument)\n"
      "  -p, --prompt TEXT   a prompt (repeatable)\n"
      "  -f, --file FILE     prompts, one per non-empty line\n"
      "  --parallel N        sequences decoded together (default 1)\n"
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
      "                      (several prompts: {\"results\": [{\"prompt\", \"text\",\n"
      "                      \"prompt_tokens\", \"generated_tokens\"}, ...], \"parallel\", "
      "\"cache\",\n"
      "                      \"proj\", \"device\", \"kv_bytes\", \"generated_tokens\", "
      "\"seconds\",\n"
      "                      \"tokens_per_s\", \"prefill_seconds\", \"decode_seconds\",\n"
      "                      \"decode_steps\", \"decode_tokens_per_s\"})\n"
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
  int32_t n_tokens; /* every token seen, EOS included */
  char last;        /* last byte printed, '\0' before any */
} printer;

static int print_token(void *user, int32_t id) {
  printer *p = user;
  p->n_tokens++;
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

enum { OPT_PROJ = 256, OPT_DEVICE, OPT_STORAGE, OPT_CHAT, OPT_JSON, OPT_PARALLEL };

/* Most prompts one run takes (-p and -f together). */
#define MAX_PROMPTS 4096

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
    {"file", required_argument, NULL, 'f'},
    {"parallel", required_argument, NULL, OPT_PARALLEL},
    KQ_CLI_COMMON_LONG,
    {NULL, 0, NULL, 0},
};

/* The prompt as the model reads it: wrapped in chat markers with --chat
 * (*out_wrapped then owns the text), then tokenized. */
/* Tokens of one prompt; with `chat` the prompt is a user message rendered
 * with the model's chat template (*out_wrapped: the rendered text). The
 * template notice is printed once per command (`*noticed`). */
static kq_status encode_prompt(const char *cmd, const char *model_path, kq_llama *m,
                               const char *prompt, int chat, int *noticed, char **out_wrapped,
                               int32_t **out_ids, int32_t *out_n) {
  const char *text = prompt;
  *out_wrapped = NULL;
  kq_status st = KQ_OK;
  if (chat) {
    kq_chat_format fmt;
    kq_chat_detect(kq_llama_chat_template(m), &fmt);
    if (!*noticed) {
      *noticed = 1;
      if (fmt.guessed)
        fprintf(stderr,
                "kqsvd generate: warning: %s has %s chat template; using ChatML turn markers "
                "(<|im_start|>user ... <|im_end|>)\n",
                model_path, kq_llama_chat_template(m) ? "no known" : "no");
      kq_cli_detail(cmd, "chat template: %s%s%s",
                    fmt.family == KQ_CHAT_LLAMA3 ? "Llama-3" : "ChatML",
                    fmt.default_system[0] ? ", default system prompt: " : "", fmt.default_system);
    }
    st = kq_chat_render(&fmt, prompt, out_wrapped);
    text = *out_wrapped;
  }
  if (st == KQ_OK)
    st = kq_tokenizer_encode(kq_llama_get_tokenizer(m), text, strlen(text), chat, out_ids, out_n);
  if (st == KQ_OK && *out_n == 0)
    st = kq_set_error(KQ_ERR_INVALID_ARGUMENT, "the prompt gives no tokens");
  return st;
}

/* Generated text of each prompt of a parallel run. */
typedef struct many_out {
  printer *pr; /* [n_prompts] */
} many_out;

static int collect_token(void *user, int32_t index, int32_t id) {
  many_out *o = user;
  return print_token(&o->pr[index], id);
}

typedef struct many_options {
  const char *cmd, *model_path, *proj, *device;
  long long n_new, threads, parallel;
  int chat, json;
  kq_storage storage;
} many_options;

/* Several prompts as sequences of one cache (--parallel). */
static int generate_many(const many_options *o, char **prompts, int32_t n_prompts) {
  const char *cmd = o->cmd;
  kq_llama *m = NULL;
  kq_device *dev = NULL;
  kq_model_session s = {0};
  int have_session = 0;
  kq_parallel_prompt *pp = calloc((size_t)n_prompts, sizeof *pp);
  char **shown = calloc((size_t)n_prompts, sizeof *shown); /* wrapped (--chat) texts */
  printer *pr = calloc((size_t)n_prompts, sizeof *pr);
  kq_status st = pp && shown && pr ? KQ_OK : kq_set_error(KQ_ERR_OUT_OF_MEMORY, "prompts");
  if (st == KQ_OK) st = kq_llama_load(o->model_path, (int)o->threads, &m);
  if (st == KQ_OK && o->proj) st = kq_cli_check_proj(cmd, m, o->proj); /* before any work */
  int32_t longest = 0, noticed = 0;
  int64_t prompt_tokens = 0;
  for (int32_t i = 0; i < n_prompts && st == KQ_OK; i++) {
    int32_t *ids = NULL;
    st = encode_prompt(cmd, o->model_path, m, prompts[i], o->chat, &noticed, &shown[i], &ids,
                       &pp[i].n_ids);
    pp[i].ids = ids;
    if (st != KQ_OK) {
      kq_error_prefix(st, "prompt %d", (int)i + 1);
      break;
    }
    if (pp[i].n_ids > longest) longest = pp[i].n_ids;
    prompt_tokens += pp[i].n_ids;
    pr[i].tok = kq_llama_get_tokenizer(m);
    pr[i].text = calloc(1, 1), pr[i].cap = 1;
    if (!pr[i].text) st = kq_set_error(KQ_ERR_OUT_OF_MEMORY, "generated text");
  }
  int32_t N = (int32_t)(o->parallel < n_prompts ? o->parallel : n_prompts);
  if (st == KQ_OK) st = kq_cli_device_create(cmd, o->device, &dev);
  kq_cli_detail(cmd, "%s: %d prompts (%lld tokens), %d sequences, up to %lld new each, %s cache",
                o->model_path, (int)n_prompts, (long long)prompt_tokens, (int)N, o->n_new,
                o->proj ? o->proj : "full");
  if (st == KQ_OK)
    st = kq_model_session_create_seqs(m, dev, o->proj, o->storage, longest + (int32_t)o->n_new, N,
                                      &s);
  have_session = st == KQ_OK;
  kq_parallel_result r = {0};
  many_out mo = {.pr = pr};
  double t0 = kq_now_seconds();
  if (st == KQ_OK)
    st = kq_model_generate_parallel(&s, pp, n_prompts, (int32_t)o->n_new, collect_token, &mo,
                                    kq_cli_cancel_flag(), &r);
  double seconds = kq_now_seconds() - t0;
  for (int32_t i = 0; i < n_prompts && st == KQ_OK; i++)
    if (pr[i].oom) st = kq_set_error(KQ_ERR_OUT_OF_MEMORY, "generated text");
  int rc = 0;
  if (st != KQ_OK) {
    rc = st == KQ_ERR_INTERRUPTED ? 130 : kq_cli_fail(cmd, st);
  } else {
    kq_device_info di;
    kq_device_get_info(dev, &di);
    /* Decode passes produce every token after each prompt's first. */
    double decode_rate =
        r.decode_seconds > 0 ? (double)(r.n_generated - n_prompts) / r.decode_seconds : 0.0;
    double rate = seconds > 0 ? (double)r.n_generated / seconds : 0.0;
    if (o->json) {
      cJSON *root = cJSON_CreateObject(), *results = cJSON_CreateArray();
      int ok = root && results && cJSON_AddItemToObject(root, "results", results);
      if (!ok) cJSON_Delete(results);
      for (int32_t i = 0; i < n_prompts && ok; i++) {
        cJSON *one = cJSON_CreateObject();
        ok = one && cJSON_AddItemToArray(results, one);
        if (!ok) {
          cJSON_Delete(one);
          break;
        }
        int32_t generated = pr[i].n_tokens;
        ok = cJSON_AddStringToObject(one, "prompt", shown[i] ? shown[i] : prompts[i]) &&
             cJSON_AddStringToObject(one, "text", pr[i].text) &&
             kq_cli_json_add_number(one, "prompt_tokens", pp[i].n_ids) &&
             kq_cli_json_add_number(one, "generated_tokens", generated);
      }
      ok = ok && kq_cli_json_add_number(root, "parallel", N) &&
           cJSON_AddStringToObject(root, "cache", o->proj ? "compressed" : "full") &&
           (o->proj ? cJSON_AddStringToObject(root, "proj", o->proj)
                    : cJSON_AddNullToObject(root, "proj")) &&
           cJSON_AddStringToObject(root, "device", di.name) &&
           kq_cli_json_add_number(root, "kv_bytes", (double)s.kv_bytes) &&
           kq_cli_json_add_number(root, "generated_tokens", (double)r.n_generated) &&
           kq_cli_json_add_number(root, "seconds", seconds) &&
           kq_cli_json_add_number(root, "tokens_per_s", rate) &&
           kq_cli_json_add_number(root, "prefill_seconds", r.prefill_seconds) &&
           kq_cli_json_add_number(root, "decode_seconds", r.decode_seconds) &&
           kq_cli_json_add_number(root, "decode_steps", (double)r.decode_steps) &&
           kq_cli_json_add_number(root, "decode_tokens_per_s", decode_rate);
      if (!ok) {
        cJSON_Delete(root);
        root = NULL;
      }
      rc = kq_cli_json_print(cmd, root);
    } else {
      for (int32_t i = 0; i < n_prompts; i++)
        printf("%s%s%s", o->chat ? "" : prompts[i], pr[i].text, /* --chat: only the reply */
               pr[i].last == '\n' && o->chat ? "" : "\n");
      fflush(stdout);
      if (kq_cli_get_verbosity() >= KQ_CLI_NORMAL)
        fprintf(stderr,
                "kqsvd generate: %d prompts as %d sequences of one %s cache on %s, kv_bytes "
                "%llu: %lld tokens generated in %.3f s, aggregate %.1f tokens/s (decode %.1f "
                "tokens/s in %lld batched steps of up to %d sequences)\n",
                (int)n_prompts, (int)N, o->proj ? "compressed" : "full", di.name,
                (unsigned long long)s.kv_bytes, (long long)r.n_generated, seconds, rate,
                decode_rate, (long long)r.decode_steps, (int)r.max_batch);
    }
  }
  if (have_session) kq_model_session_destroy(&s);
  kq_device_destroy(dev);
  for (int32_t i = 0; pp && i < n_prompts; i++) free((void *)pp[i].ids);
  for (int32_t i = 0; shown && i < n_prompts; i++) free(shown[i]);
  for (int32_t i = 0; pr && i < n_prompts; i++) free(pr[i].text);
  free(pp);
  free(shown);
  free(pr);
  kq_llama_destroy(m);
  return rc;
}

/* Splits a prompts file into its non-empty lines (in place; "\r\n" too). */
static int add_file_prompts(const char *cmd, char *text, char **prompts, int32_t *n) {
  for (char *line = text; line && *line;) {
    char *nl = strchr(line, '\n');
    if (nl) *nl = '\0';
    size_t len = strlen(line);
    if (len && line[len - 1] == '\r') line[--len] = '\0';
    if (len) {
      if (*n == MAX_PROMPTS) {
        kq_cli_usage_error(cmd, "more than %d prompts", MAX_PROMPTS);
        return -1;
      }
      prompts[(*n)++] = line;
    }
    line = nl ? nl + 1 : NULL;
  }
  return 0;
}

int kq_cmd_generate(int argc, char **argv) {
  const char *cmd = "generate", *model_path = NULL, *prompt = NULL, *proj = NULL, *device = NULL;
  long long n_new = 64, threads = 0, parallel = 1;
  int chat = 0, json = 0, parallel_set = 0, c;
  static char *prompts[MAX_PROMPTS];
  int32_t n_prompts = 0;
  const char *prompt_file = NULL;
  kq_storage storage = KQ_STORAGE_F32;
  kq_cli_getopt_begin();
  while ((c = kq_cli_getopt(cmd, argc, argv, KQ_CLI_COMMON_SHORT "p:m:t:n:f:", g_options)) != -1) {
    switch (c) {
    case 'h': help(); return 0;
    case OPT_CHAT: chat = 1; break;
    case OPT_JSON: json = 1; break;
    case 'p':
      if (n_prompts == MAX_PROMPTS)
        return kq_cli_usage_error(cmd, "more than %d prompts", MAX_PROMPTS);
      prompt = prompts[n_prompts++] = optarg;
      break;
    case 'f': prompt_file = optarg; break;
    case OPT_PARALLEL:
      if (!kq_cli_parse_int(cmd, "--parallel", optarg, 1, 1024, &parallel)) return 2;
      parallel_set = 1;
      break;
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
  char *file_text = NULL;
  if (prompt_file) {
    size_t len;
    kq_status fst = kq_model_read_text(prompt_file, &file_text, &len);
    if (fst != KQ_OK) return kq_cli_fail(cmd, fst);
    if (add_file_prompts(cmd, file_text, prompts, &n_prompts) != 0) {
      free(file_text);
      return 2;
    }
    if (n_prompts == 0) {
      free(file_text);
      return kq_cli_usage_error(cmd, "%s holds no prompt", prompt_file);
    }
  }
  for (int32_t i = 0; i < n_prompts; i++)
    if (!*prompts[i]) {
      free(file_text);
      return kq_cli_usage_error(cmd, "prompt %d is empty", (int)i + 1);
    }
  if (n_prompts > 1 || parallel_set || prompt_file) {
    many_options mo = {.cmd = cmd,
                       .model_path = model_path,
                       .proj = proj,
                       .device = device,
                       .n_new = n_new,
                       .threads = threads,
                       .parallel = parallel,
                       .chat = chat,
                       .json = json,
                       .storage = storage};
    int rc = generate_many(&mo, prompts, n_prompts);
    free(file_text);
    return rc;
  }
  if (!prompt || !*prompt) return kq_cli_usage_error(cmd, "missing --prompt TEXT");

  kq_llama *m = NULL;
  kq_device *dev = NULL;
  int32_t *ids = NULL, n_ids = 0;
  char *wrapped = NULL;
  kq_model_session s = {0};
  int have_session = 0;
  kq_status st = kq_llama_load(model_path, (int)threads, &m);
  if (st == KQ_OK && proj) st = kq_cli_check_proj(cmd, m, proj); /* before any work */
  int noticed = 0;
  if (st == KQ_OK)
    st = encode_prompt(cmd, model_path, m, prompt, chat, &noticed, &wrapped, &ids, &n_ids);
  if (st == KQ_OK) st = kq_cli_device_create(cmd, device, &dev);
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
    fflush(stdout); /* before the summary on stderr, also when both go to one pipe */
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
