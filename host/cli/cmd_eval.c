/* kqsvd eval: the SPEC §3 fidelity metrics of projections, per layer, as an
 * aligned table or JSON. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "commands.h"

static void help(void) {
  printf(
      "usage: kqsvd eval CALIB PROJ [--json] [--max-seqs N] [--device NAME]\n"
      "                  [--storage f32|f16] [-t N] [-q|-v]\n"
      "\n"
      "Measures projection file PROJ on calibration file CALIB (SPEC §3). Per layer,\n"
      "relative Frobenius errors with heads pooled by summing squares:\n"
      "  key ‖K−KABᵀ‖/‖K‖, query ‖Q−QBAᵀ‖/‖Q‖, value ‖V−VCEᵀ‖/‖V‖,\n"
      "  logits ‖QKᵀ−QBAᵀKᵀ‖/‖QKᵀ‖ over all calibration rows (from R factors),\n"
      "  softmax ‖P−P̂‖/‖P‖ and output ‖Y−Ŷ‖/‖Y‖ for causal attention inside each seq_len\n"
      "  sequence (Y = head outputs times W_Oᵀ, or the concatenated outputs without wo),\n"
      "  value_out ‖(V−VCEᵀ)W_iᵀ‖/‖V W_iᵀ‖ per kv head i (only with wo).\n"
      "\n"
      "  --json           print {\"method\", \"layers\": [...], \"mean\": {...}}\n"
      "  --max-seqs N     use at most N calibration sequences for softmax/output\n"
      "  --device NAME    run the projected attention of the output metric through a device's\n"
      "                   compressed cache (cpu, vulkan:N, opencl:N). The device returns\n"
      "                   outputs, not probabilities, so softmax stays the host's float64 value\n"
      "  --storage S      latent cache storage on the device: f32 (default) or f16\n"
      "  -t, --threads N  worker threads (default: all cores)\n"
      "  -q, --quiet      no progress, only errors and the results\n"
      "  -v, --verbose    also the settings in effect and the time taken\n"
      "  -h, --help       this help\n"
      "\n"
      "Options take their value as --opt V or --opt=V; -- ends the options.\n");
}

static void add_metrics(cJSON *o, const kq_eval_layer *e, int has_wo) {
  cJSON_AddNumberToObject(o, "key", e->key);
  cJSON_AddNumberToObject(o, "query", e->query);
  cJSON_AddNumberToObject(o, "value", e->value);
  cJSON_AddNumberToObject(o, "logits", e->logits);
  cJSON_AddNumberToObject(o, "softmax", e->softmax);
  cJSON_AddNumberToObject(o, "output", e->output);
  if (has_wo)
    cJSON_AddNumberToObject(o, "value_out", e->value_out);
  else
    cJSON_AddNullToObject(o, "value_out");
}

static int print_json(const kq_eval_result *r) {
  cJSON *root = cJSON_CreateObject(), *layers = NULL, *mean = NULL;
  if (!root) return 1;
  cJSON_AddStringToObject(root, "method", kq_method_name(r->method));
  layers = cJSON_AddArrayToObject(root, "layers");
  for (int32_t l = 0; layers && l < r->n_layers; l++) {
    cJSON *o = cJSON_CreateObject();
    if (!o) break;
    cJSON_AddNumberToObject(o, "layer", r->layers[l].layer);
    cJSON_AddNumberToObject(o, "rank_k", r->layers[l].rank_k);
    cJSON_AddNumberToObject(o, "rank_v", r->layers[l].rank_v);
    add_metrics(o, &r->layers[l], r->has_wo);
    cJSON_AddItemToArray(layers, o);
  }
  mean = cJSON_AddObjectToObject(root, "mean");
  if (mean) add_metrics(mean, &r->mean, r->has_wo);
  return kq_cli_json_print("eval", root);
}

static void print_row(const char *label, const kq_eval_layer *e, int has_wo, int ranks) {
  char rk[16] = "", rv[16] = "", vo[16] = "-";
  if (ranks) {
    snprintf(rk, sizeof rk, "%d", (int)e->rank_k);
    snprintf(rv, sizeof rv, "%d", (int)e->rank_v);
  }
  if (has_wo) snprintf(vo, sizeof vo, "%.6f", e->value_out);
  printf("%6s %5s %5s %9.6f %9.6f %9.6f %9.6f %9.6f %9.6f %9s\n", label, rk, rv, e->key, e->query,
         e->value, e->logits, e->softmax, e->output, vo);
}

static void print_table(const kq_eval_result *r) {
  printf("method %s, %d layers, softmax/output on %d of %d sequences (%s)\n",
         kq_method_name(r->method), (int)r->n_layers, (int)r->seqs_used, (int)r->seqs_total,
         r->device[0] ? r->device : "host float64");
  printf("%6s %5s %5s %9s %9s %9s %9s %9s %9s %9s\n", "layer", "r_k", "r_v", "key", "query",
         "value", "logits", "softmax", "output", "value_out");
  for (int32_t l = 0; l < r->n_layers; l++) {
    char label[16];
    snprintf(label, sizeof label, "%d", (int)r->layers[l].layer);
    print_row(label, &r->layers[l], r->has_wo, 1);
  }
  print_row("mean", &r->mean, r->has_wo, 0);
}

enum { OPT_JSON = 256, OPT_MAX_SEQS, OPT_DEVICE, OPT_STORAGE };

static const struct option g_options[] = {
    {"threads", required_argument, NULL, 't'},
    {"json", no_argument, NULL, OPT_JSON},
    {"max-seqs", required_argument, NULL, OPT_MAX_SEQS},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"storage", required_argument, NULL, OPT_STORAGE},
    KQ_CLI_COMMON_LONG,
    {NULL, 0, NULL, 0},
};

int kq_cmd_eval(int argc, char **argv) {
  const char *cmd = "eval", *files[2] = {NULL, NULL};
  int n_files = 0, json = 0;
  kq_eval_params p = kq_eval_default_params();
  int c;
  kq_cli_getopt_begin();
  while ((c = kq_cli_getopt(cmd, argc, argv, KQ_CLI_COMMON_SHORT "t:", g_options)) != -1) {
    long long n;
    switch (c) {
    case 'h': help(); return 0;
    case OPT_JSON: json = 1; break;
    case OPT_MAX_SEQS:
      if (!kq_cli_parse_int(cmd, "--max-seqs", optarg, 1, 1 << 30, &n)) return 2;
      p.max_seqs = (int32_t)n;
      break;
    case OPT_DEVICE: p.device = optarg; break;
    case OPT_STORAGE:
      if (!kq_cli_parse_storage(cmd, "--storage", optarg, &p.storage)) return 2;
      break;
    case 't':
      if (!kq_cli_parse_int(cmd, "--threads", optarg, 1, 1024, &n)) return 2;
      p.n_threads = (int32_t)n;
      break;
    default: return 2;
    }
  }
  for (int i = optind; i < argc; i++) {
    if (n_files == 2) return kq_cli_usage_error(cmd, "unexpected argument '%s'", argv[i]);
    files[n_files++] = argv[i];
  }
  if (n_files != 2) return kq_cli_usage_error(cmd, "expected CALIB and PROJ");
  p.progress = kq_cli_progress;
  p.progress_user = (void *)cmd;
  p.cancel = kq_cli_cancel_flag();
  kq_cli_detail(cmd, "%s with %s: device %s, storage %s, threads %d, max_seqs %d", files[0],
                files[1], p.device ? p.device : "host (float64)",
                p.storage == KQ_STORAGE_F16 ? "f16" : "f32", (int)p.n_threads, (int)p.max_seqs);
  double t0 = kq_cli_seconds();
  kq_eval_result *r = NULL;
  kq_status st = kq_eval(files[0], files[1], &p, &r);
  kq_cli_progress_end();
  kq_cli_detail(cmd, "evaluated in %.2f s", kq_cli_seconds() - t0);
  if (st == KQ_ERR_INTERRUPTED) {
    fprintf(stderr, "kqsvd eval: interrupted\n");
    return 130;
  }
  if (st) return kq_cli_fail(cmd, st);
  int rc = 0;
  if (json)
    rc = print_json(r);
  else
    print_table(r);
  if (r->seqs_used < r->seqs_total)
    kq_cli_note(cmd, "softmax/output use %d of %d sequences", (int)r->seqs_used,
                (int)r->seqs_total);
  kq_eval_result_destroy(r);
  return rc;
}
