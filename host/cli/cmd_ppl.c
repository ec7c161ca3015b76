/* kqsvd ppl: perplexity of a GGUF model on a text with the full cache and
 * with compressed caches, their KL divergence and top-1 agreement against
 * the full cache (the sessions run in lockstep), and the KV bytes of each. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_model.h"
#include "cli_util.h"
#include "commands.h"
#include "model/kq_model_run.h"

/* --proj may be given this many times. */
#define MAX_PROJ 16

static void help(void) {
  printf("usage: kqsvd ppl MODEL.gguf TEXT [--proj PROJ]... [--device NAME] [--storage f32|f16]\n"
         "                [-c N] [--max-tokens N] [-b N] [-t N] [--special]\n"
         "                [--score-from N] [--skip-full] [--json] [-q|-v]\n"
         "       kqsvd ppl -m MODEL.gguf -f TEXT ...\n"
         "\n"
         "Tokenizes TEXT (a file) with the model's tokenizer and reports the perplexity exp(mean\n"
         "-log p(token | preceding tokens)) in consecutive windows of --ctx tokens (the cache is\n"
         "cleared between windows; by default tokens 2..n of each window are scored) with the\n"
         "full cache (identity projections, rank = head_dim) and, for each --proj, with the\n"
         "compressed cache of a projection file written by 'kqsvd fit'. The full model and the\n"
         "compressed ones run in lockstep (same windows, same batches), and each compressed run\n"
         "also reports, over the same scored tokens, the mean KL(p_full || p_compressed) of the\n"
         "next-token distributions (nats) and top-1, the share of tokens whose most likely next\n"
         "token is the full cache's. Bytes: kv_bytes at capacity (--ctx tokens, all layers, keys\n"
         "and values, quantized data and scales), per token, and as a fraction of an F16 full\n"
         "cache (2*2*head_dim*n_kv_heads*n_layers bytes per token: F32 full cache = 2).\n"
         "Attention runs on --device through the kqsvd cache; the rest of the model on the CPU.\n"
         "\n"
         "  --proj PROJ         projection file (adds a compressed-cache run); repeat it to\n"
         "                      compare several (one pass of the full model serves them all)\n"
         "  --score-from N      score only tokens N+1..n of each window, each predicted from at\n"
         "                      least N tokens (default 1: tokens 2..n; N = ctx/2 + 1 scores the\n"
         "                      tokens llama.cpp's llama-perplexity scores)\n"
         "  --skip-full         with --proj: no full-cache run, so no KL / top-1 (null)\n"
         "  --device NAME       cpu, vulkan:N, opencl:N (default: $KQSVD_DEVICE or cpu)\n"
         "  --storage T         float latent storage, f32 (default) or f16\n"
         "  -m, --model FILE    the model (instead of the MODEL.gguf argument)\n"
         "  -f, --file TEXT     the text file (instead of the TEXT argument)\n"
         "  -c, --ctx N         window length in tokens (default 512; also --ctx-size)\n"
         "  --max-tokens N      use only the first N tokens of the text (default: all)\n"
         "  -b, --batch N       tokens per forward call (default 64)\n"
         "  -t, --threads N     CPU threads for the model (default: all cores)\n"
         "  --special           read control-token strings in TEXT (<|im_start|>, ...) as those\n"
         "                      tokens, as in a chat transcript (default: plain text)\n"
         "  --json              {\"tokens\", \"ctx\", \"windows\", \"predictions\",\n"
         "                       \"scored\", \"device\", \"storage\", \"full\": RUN|null,\n"
         "                       \"compressed\": RUN of the first --proj|null,\n"
         "                       \"runs\": [RUN of each --proj]}, RUN = {\"proj\",\n"
         "                       \"method\", \"layout\", \"ppl\", \"nll\", \"kld\", \"top1\",\n"
         "                       \"kv_bytes\", \"kv_bytes_per_token\", \"kv_fraction_f16\",\n"
         "                       \"seconds\"}; kld/top1 null for the full run and with\n"
         "                       --skip-full; non-finite numbers null\n"
         "  -q, --quiet         no progress, only errors, warnings and the results\n"
         "  -v, --verbose       also the settings in effect\n"
         "  -h, --help          this help\n"
         "\n"
         "Progress labels the pass: \"full pass\", \"full + N compressed pass\" (lockstep) or\n"
         "\"compressed pass\" (--skip-full), and shows each cache's perplexity so far\n"
         "(\"ppl full 22.413, proj.st 23.051\"). Options take their value as --opt V or\n"
         "--opt=V; -- ends the options.\n");
}

/* One cache the text runs through: the full one (proj NULL) or a file's. */
typedef struct ppl_run {
  const char *proj;
  kq_model_session session;
  int created;
  kq_projections_info info;
  kq_ppl_result res;
} ppl_run;

static kq_status open_run(kq_llama *m, kq_device *dev, kq_storage storage, int32_t ctx,
                          ppl_run *r) {
  kq_status st = kq_model_session_create(m, dev, r->proj, storage, ctx, &r->session);
  if (st != KQ_OK) return st;
  r->created = 1;
  return kq_projections_get_info(r->session.proj, &r->info);
}

/* Bytes per token of a full F16 cache: keys and values, 2 bytes a value. */
static double f16_bytes_per_token(const kq_llama_hparams *hp) {
  return 2.0 * 2.0 * hp->head_dim * hp->n_kv_heads * hp->n_layers;
}

static double bytes_per_token(const ppl_run *r, int32_t ctx) {
  return (double)r->session.kv_bytes / (double)ctx;
}

static cJSON *run_json(const ppl_run *r, int32_t ctx, const kq_llama_hparams *hp) {
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  double per_token = bytes_per_token(r, ctx);
  bool ok = (r->proj ? cJSON_AddStringToObject(o, "proj", r->proj)
                     : cJSON_AddNullToObject(o, "proj")) != NULL;
  ok = ok && (r->proj ? cJSON_AddStringToObject(o, "method", kq_method_name(r->info.method))
                      : cJSON_AddStringToObject(o, "method", "full")) != NULL;
  ok = ok && cJSON_AddStringToObject(o, "layout", kq_layout_name(r->info.layout));
  ok = ok && kq_cli_json_add_number(o, "ppl", r->res.ppl);
  ok = ok && kq_cli_json_add_number(o, "nll", r->res.nll);
  ok = ok && kq_cli_json_add_number(o, "kld", r->res.kld);
  ok = ok && kq_cli_json_add_number(o, "top1", r->res.top1);
  ok = ok && kq_cli_json_add_number(o, "kv_bytes", (double)r->session.kv_bytes);
  ok = ok && kq_cli_json_add_number(o, "kv_bytes_per_token", per_token);
  ok = ok && kq_cli_json_add_number(o, "kv_fraction_f16", per_token / f16_bytes_per_token(hp));
  ok = ok && kq_cli_json_add_number(o, "seconds", r->res.seconds);
  if (!ok) {
    cJSON_Delete(o);
    return NULL;
  }
  return o;
}

static int print_json(const char *scored, const char *text_path, int64_t n, int32_t ctx,
                      const kq_device_info *di, kq_storage storage, const ppl_run *full,
                      const ppl_run *comp, int n_comp, const kq_llama_hparams *hp) {
  const kq_ppl_result *any = full ? &full->res : &comp[0].res;
  int64_t windows = n / ctx + (n % ctx >= 2);
  cJSON *root = cJSON_CreateObject(), *runs = NULL, *o;
  bool ok = root && cJSON_AddStringToObject(root, "text", text_path);
  ok = ok && cJSON_AddNumberToObject(root, "tokens", (double)n);
  ok = ok && cJSON_AddNumberToObject(root, "ctx", ctx);
  ok = ok && cJSON_AddNumberToObject(root, "windows", (double)windows);
  ok = ok && cJSON_AddNumberToObject(root, "predictions", (double)any->predictions);
  ok = ok && cJSON_AddStringToObject(root, "scored", scored);
  ok = ok && cJSON_AddStringToObject(root, "device", di->name);
  ok = ok && cJSON_AddStringToObject(root, "storage", storage == KQ_STORAGE_F16 ? "f16" : "f32");
  if (ok) {
    o = full ? run_json(full, ctx, hp) : cJSON_CreateNull();
    ok = o && cJSON_AddItemToObject(root, "full", o);
  }
  if (ok) {
    o = n_comp ? run_json(&comp[0], ctx, hp) : cJSON_CreateNull();
    ok = o && cJSON_AddItemToObject(root, "compressed", o);
  }
  ok = ok && (runs = cJSON_AddArrayToObject(root, "runs")) != NULL;
  for (int i = 0; ok && i < n_comp; i++) {
    o = run_json(&comp[i], ctx, hp);
    ok = o && cJSON_AddItemToArray(runs, o);
  }
  if (!ok) {
    cJSON_Delete(root);
    root = NULL;
  }
  return kq_cli_json_print("ppl", root);
}

/* A table cell: the number, or "-" when there is none. */
static void cell(const char *fmt, int width, double v) {
  if (isfinite(v))
    printf(fmt, width, v);
  else
    printf("%*s", width, "-");
}

static void print_row(const char *name, const ppl_run *r, const ppl_run *full, int32_t ctx,
                      int64_t n, const kq_llama_hparams *hp) {
  double per_token = bytes_per_token(r, ctx);
  printf("%-10s", name);
  cell(" %*.4f", 10, r->res.ppl);
  cell(" %+*.4f", 10, full && r != full ? r->res.ppl - full->res.ppl : NAN);
  cell(" %*.6f", 10, r->res.kld);
  cell(" %*.4f", 7, r->res.top1);
  printf(" %12llu %9.1f", (unsigned long long)r->session.kv_bytes, per_token);
  cell(" %*.4f", 8, per_token / f16_bytes_per_token(hp));
  cell(" %*.1f", 9, (double)n / r->res.seconds);
  printf("  %s\n", r->proj ? r->proj : "");
}

static void print_table(const char *scored, const char *text_path, int64_t n, int32_t ctx,
                        const kq_device_info *di, kq_storage storage, const ppl_run *full,
                        const ppl_run *comp, int n_comp, const kq_llama_hparams *hp) {
  const kq_ppl_result *any = full ? &full->res : &comp[0].res;
  printf("text        %s: %lld tokens, %lld scored (%s), windows of %d\n", text_path, (long long)n,
         (long long)any->predictions, scored, ctx);
  printf("device      %s (%s), storage %s\n", di->name, di->description,
         storage == KQ_STORAGE_F16 ? "f16" : "f32");
  printf("%-10s %10s %11s %10s %7s %12s %9s %8s %9s  %s\n", "cache", "ppl", "Δppl", "KL", "top-1",
         "kv_bytes", "B/token", "of F16", "tokens/s", "projections");
  if (full) print_row("full", full, full, ctx, n, hp);
  for (int i = 0; i < n_comp; i++) print_row("compressed", &comp[i], full, ctx, n, hp);
}

enum {
  OPT_PROJ = 256,
  OPT_DEVICE,
  OPT_STORAGE,
  OPT_MAX_TOKENS,
  OPT_SCORE_FROM,
  OPT_JSON,
  OPT_SKIP_FULL,
  OPT_SPECIAL
};

static const struct option g_options[] = {
    {"model", required_argument, NULL, 'm'},
    {"file", required_argument, NULL, 'f'},
    {"ctx", required_argument, NULL, 'c'},
    {"ctx-size", required_argument, NULL, 'c'},
    {"batch", required_argument, NULL, 'b'},
    {"threads", required_argument, NULL, 't'},
    {"proj", required_argument, NULL, OPT_PROJ},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"storage", required_argument, NULL, OPT_STORAGE},
    {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
    {"score-from", required_argument, NULL, OPT_SCORE_FROM},
    {"json", no_argument, NULL, OPT_JSON},
    {"skip-full", no_argument, NULL, OPT_SKIP_FULL},
    {"special", no_argument, NULL, OPT_SPECIAL},
    KQ_CLI_COMMON_LONG,
    {NULL, 0, NULL, 0},
};

/* The progress label says which caches run in the pass (they run in
 * lockstep); the note gives each one's perplexity so far. */
static char g_pass_label[64];
static double g_running[1 + MAX_PROJ];
static const char *g_run_names[1 + MAX_PROJ];
static int g_n_running;

static void pass_progress(void *user, int32_t done, int32_t total, const char *stage) {
  (void)stage;
  char note[512] = "", *at = note;
  for (int r = 0; r < g_n_running && isfinite(g_running[r]); r++) {
    size_t left = sizeof note - (size_t)(at - note);
    int n = snprintf(at, left, "%s%s %.3f", r ? ", " : "ppl ", g_run_names[r], g_running[r]);
    if (n < 0 || (size_t)n >= left) break;
    at += n;
  }
  kq_cli_progress_note(user, done, total, g_pass_label, note);
}

int kq_cmd_ppl(int argc, char **argv) {
  const char *cmd = "ppl", *model_path = NULL, *text_path = NULL, *device = NULL;
  ppl_run runs[1 + MAX_PROJ];
  memset(runs, 0, sizeof runs);
  ppl_run *full = &runs[0], *comp = &runs[1];
  int n_comp = 0, c;
  kq_storage storage = KQ_STORAGE_F32;
  long long ctx = 512, max_tokens = 0, batch = 64, threads = 0, score_from = 1;
  int json = 0, skip_full = 0, special = 0;
  kq_cli_getopt_begin();
  while ((c = kq_cli_getopt(cmd, argc, argv, KQ_CLI_COMMON_SHORT "m:f:c:b:t:", g_options)) != -1) {
    const char *val = optarg;
    switch (c) {
    case 'h': help(); return 0;
    case OPT_JSON: json = 1; break;
    case OPT_SKIP_FULL: skip_full = 1; break;
    case OPT_SPECIAL: special = 1; break;
    case 'm': model_path = val; break;
    case 'f':
      if (text_path) return kq_cli_usage_error(cmd, "one TEXT file expected ('%s')", val);
      text_path = val;
      break;
    case OPT_PROJ:
      if (n_comp == MAX_PROJ)
        return kq_cli_usage_error(cmd, "--proj: at most %d projection files", MAX_PROJ);
      comp[n_comp++].proj = val;
      break;
    case OPT_DEVICE: device = val; break;
    case OPT_STORAGE:
      if (!kq_cli_parse_storage(cmd, "--storage", val, &storage)) return 2;
      break;
    case 'c':
      if (!kq_cli_parse_int(cmd, "--ctx", val, 2, 1 << 20, &ctx)) return 2;
      break;
    case OPT_MAX_TOKENS:
      if (!kq_cli_parse_int(cmd, "--max-tokens", val, 2, INT32_MAX, &max_tokens)) return 2;
      break;
    case OPT_SCORE_FROM:
      if (!kq_cli_parse_int(cmd, "--score-from", val, 1, 1 << 20, &score_from)) return 2;
      break;
    case 'b':
      if (!kq_cli_parse_int(cmd, "--batch", val, 1, 4096, &batch)) return 2;
      break;
    case 't':
      if (!kq_cli_parse_int(cmd, "--threads", val, 1, 1024, &threads)) return 2;
      break;
    default: return 2;
    }
  }
  for (int i = optind; i < argc; i++) {
    if (!model_path)
      model_path = argv[i];
    else if (!text_path)
      text_path = argv[i];
    else
      return kq_cli_usage_error(cmd, "unexpected argument '%s'", argv[i]);
  }
  if (!model_path || !text_path) return kq_cli_usage_error(cmd, "need MODEL.gguf and TEXT");
  if (skip_full && !n_comp) return kq_cli_usage_error(cmd, "--skip-full needs --proj");
  if (score_from >= ctx)
    return kq_cli_usage_error(cmd, "--score-from %lld: windows of %lld tokens score nothing",
                              score_from, ctx);
  char scored[64];
  snprintf(scored, sizeof scored, "tokens %lld..n of each window", score_from + 1);

  kq_llama *m = NULL;
  kq_device *dev = NULL;
  char *text = NULL;
  int32_t *ids = NULL, n_ids = 0;
  size_t len;
  kq_status st = kq_model_read_text(text_path, &text, &len);
  if (st == KQ_OK) st = kq_llama_load(model_path, (int)threads, &m);
  for (int i = 0; i < n_comp && st == KQ_OK; i++) /* before tokenizing or any pass */
    st = kq_cli_check_proj(cmd, m, comp[i].proj);
  size_t dropped = 0;
  if (st == KQ_OK) /* tokenize no further than scored */
    st = kq_tokenizer_encode_ex(kq_llama_get_tokenizer(m), text, len, special,
                                max_tokens > 0 ? max_tokens : 0, &ids, &n_ids, &dropped);
  free(text);
  if (st == KQ_OK && dropped > 0)
    fprintf(stderr,
            "kqsvd ppl: warning: %s: %zu bytes have no token in this model's vocabulary and were "
            "left out\n",
            text_path, dropped);
  if (st == KQ_OK && n_ids < 2)
    st =
        kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: %d token%s of text; perplexity needs at least 2",
                     text_path, (int)n_ids, n_ids == 1 ? "" : "s");
  if (st == KQ_OK) st = kq_cli_device_create(cmd, device, &dev);
  if (skip_full) full = NULL;
  if (full && st == KQ_OK) st = open_run(m, dev, storage, (int32_t)ctx, full);
  for (int i = 0; i < n_comp && st == KQ_OK; i++)
    st = open_run(m, dev, storage, (int32_t)ctx, &comp[i]);
  int64_t n = max_tokens > 0 && max_tokens < n_ids ? max_tokens : n_ids;
  kq_ppl_params p = {.ctx = (int32_t)ctx,
                     .batch = (int32_t)batch,
                     .score_from = (int32_t)score_from,
                     .progress = pass_progress,
                     .progress_user = (void *)cmd,
                     .cancel = kq_cli_cancel_flag(),
                     .running_ppl = g_running};
  g_n_running = 0;
  if (full) g_run_names[g_n_running++] = "full";
  for (int i = 0; i < n_comp; i++) g_run_names[g_n_running++] = comp[i].proj;
  if (skip_full)
    snprintf(g_pass_label, sizeof g_pass_label, "compressed pass (%d cache%s)", n_comp,
             n_comp == 1 ? "" : "s");
  else if (n_comp)
    snprintf(g_pass_label, sizeof g_pass_label, "full + %d compressed pass", n_comp);
  else
    snprintf(g_pass_label, sizeof g_pass_label, "full pass");
  kq_cli_detail(cmd, "%s: %s: %lld tokens, ctx %lld, batch %lld, %s", model_path, text_path,
                (long long)n, ctx, batch, scored);
  kq_model_session *sessions[MAX_PROJ];
  kq_ppl_result results[MAX_PROJ];
  for (int i = 0; i < n_comp; i++) sessions[i] = &comp[i].session;
  if (st == KQ_OK) {
    st = kq_model_perplexity(full ? &full->session : NULL, sessions, n_comp, ids, n, &p,
                             full ? &full->res : NULL, results);
    kq_cli_progress_end();
  }
  for (int i = 0; i < n_comp && st == KQ_OK; i++) comp[i].res = results[i];
  int rc = 0;
  if (st != KQ_OK) {
    rc = st == KQ_ERR_INTERRUPTED ? 130 : kq_cli_fail(cmd, st);
  } else {
    kq_device_info di;
    kq_device_get_info(dev, &di);
    const kq_llama_hparams *hp = kq_llama_get_hparams(m);
    if (json)
      rc = print_json(scored, text_path, n, (int32_t)ctx, &di, storage, full, comp, n_comp, hp);
    else
      print_table(scored, text_path, n, (int32_t)ctx, &di, storage, full, comp, n_comp, hp);
  }
  for (int r = 0; r < 1 + n_comp; r++)
    if (runs[r].created) kq_model_session_destroy(&runs[r].session);
  kq_device_destroy(dev);
  free(ids);
  kq_llama_destroy(m);
  return rc;
}
