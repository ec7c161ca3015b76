/* kqsvd fit: fit KQ-SVD / K-SVD / Eigen / quant projections from calibration data. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli_util.h"
#include "commands.h"

static void help(void) {
  printf(
      "usage: kqsvd fit CALIB -o PROJ [--method kq-svd|k-svd|eigen|quant] [--alpha A]\n"
      "                 (--rank-k N --rank-v N | --epsilon E | --ratio F | --bytes F)\n"
      "                 [--layout per-head|joint] [--seed N] [--positions N]\n"
      "                 [--sensitivity FILE] [--no-balance|--balance-quant]\n"
      "                 [-t N] [--json] [-q|-v]\n"
      "\n"
      "Fits per-layer projections (SPEC §1, §1b) from calibration file CALIB\n"
      "(layers.{l}.k/q/v, optional layers.{l}.wo) and writes projection file PROJ atomically:\n"
      "an interrupted or failed run leaves no file. Progress per layer goes to stderr, then one\n"
      "summary line (layout, bytes as a fraction of an F16 cache, mean ranks, bits per kept\n"
      "latent dim, predicted relative errors).\n"
      "\n"
      "  -o, --output PROJ   projection file to write\n"
      "  --method M          kq-svd (default): best rank-r approximation of the logits QKᵀ\n"
      "                      and of V W_Oᵀ; k-svd: top singular vectors of K (and of V);\n"
      "                      eigen: top singular vectors of [αK; Q/α] (and of V);\n"
      "                      quant: no low rank, the channels sorted by importance and\n"
      "                      quantized (the plain KV quantization baseline; --bytes only)\n"
      "  --alpha A           eigen's key/query balance (default 1)\n"
      "  --layout L          per-head (default): one latent per kv head; joint: one latent per\n"
      "                      layer shared by all kv heads (kq-svd and quant; rope post/none)\n"
      "rank choice (exactly one):\n"
      "  --rank-k N --rank-v N  fixed ranks for keys and values in every layer (1..head_dim,\n"
      "                      joint: 1..n_kv_heads·head_dim)\n"
      "  --epsilon E         per layer the smallest ranks whose predicted relative error\n"
      "                      (from the method's own spectrum, mean over kv heads) is <= E\n"
      "  --ratio F           latent cache <= F of the full cache over all layers: half the\n"
      "                      budget to keys, half to values, each spread over the layers\n"
      "                      where it removes the most predicted squared error\n"
      "  --bytes F           cache bytes <= F of a full F16 cache, scales included, F in\n"
      "                      (0, 1]: latent dims get F16, q8, q4 or are dropped where they\n"
      "                      remove the most predicted error per byte (errors of q8/q4\n"
      "                      measured on the calibration latents); half to keys, half to\n"
      "                      values; quantized segments are rotated\n"
      "  --seed N            seed of the segment rotations and of --positions (default 1)\n"
      "  --positions N       position-robust post-RoPE fit from a rope pre calibration: each\n"
      "                      key and query row is rotated to its own position drawn from\n"
      "                      [0, N) before factoring; writes a rope post file for positions < N\n"
      "  --sensitivity FILE  with --bytes: the model's measured KL per layer for keys and\n"
      "                      values (lines \"keys|values LAYER KL\", .ci/sensitivity.sh);\n"
      "                      each layer's predicted error is weighed by sqrt(KL / predicted\n"
      "                      error) and the bytes allocated again\n"
      "  --no-balance        keep the latents as solved (kq-svd: keys whitened, σ on the\n"
      "                      query side) instead of scaling each latent dim so that it and\n"
      "                      its partner (query dim, value output) carry equal energy; exact\n"
      "                      logits are the same, quantized segments lose more (A/B only)\n"
      "  --balance-quant     balance the quant baseline's channels too (off by default: on\n"
      "                      SmolLM2 better at windows of 256, worse at 2048)\n"
      "  -t, --threads N     worker threads (default: all cores)\n"
      "  --json              print the summary as one JSON object on stdout: {\"output\",\n"
      "                      \"method\", \"layout\", \"fraction_of_f16\", \"mean_rank_k\",\n"
      "                      \"mean_rank_v\", \"mean_bits_k\", \"mean_bits_v\",\n"
      "                      \"predicted_error_k\", \"predicted_error_v\"}\n"
      "  -q, --quiet         no progress, only errors and the summary\n"
      "  -v, --verbose       also the settings in effect and the time taken\n"
      "  -h, --help          this help\n"
      "\n"
      "Options take their value as --opt V or --opt=V; -- ends the options.\n");
}

enum {
  OPT_METHOD = 256,
  OPT_ALPHA,
  OPT_RANK_K,
  OPT_RANK_V,
  OPT_EPSILON,
  OPT_RATIO,
  OPT_BYTES,
  OPT_LAYOUT,
  OPT_SEED,
  OPT_POSITIONS,
  OPT_SENSITIVITY,
  OPT_NO_BALANCE,
  OPT_BALANCE_QUANT,
  OPT_JSON
};

static const struct option g_options[] = {
    {"output", required_argument, NULL, 'o'},
    {"threads", required_argument, NULL, 't'},
    {"method", required_argument, NULL, OPT_METHOD},
    {"alpha", required_argument, NULL, OPT_ALPHA},
    {"rank-k", required_argument, NULL, OPT_RANK_K},
    {"rank-v", required_argument, NULL, OPT_RANK_V},
    {"epsilon", required_argument, NULL, OPT_EPSILON},
    {"ratio", required_argument, NULL, OPT_RATIO},
    {"bytes", required_argument, NULL, OPT_BYTES},
    {"layout", required_argument, NULL, OPT_LAYOUT},
    {"seed", required_argument, NULL, OPT_SEED},
    {"positions", required_argument, NULL, OPT_POSITIONS},
    {"sensitivity", required_argument, NULL, OPT_SENSITIVITY},
    {"no-balance", no_argument, NULL, OPT_NO_BALANCE},
    {"balance-quant", no_argument, NULL, OPT_BALANCE_QUANT},
    {"json", no_argument, NULL, OPT_JSON},
    KQ_CLI_COMMON_LONG,
    {NULL, 0, NULL, 0},
};

static int print_json(const char *out, const kq_fit_params *p, const kq_fit_summary *sum) {
  cJSON *root = cJSON_CreateObject();
  int ok = root && cJSON_AddStringToObject(root, "output", out) &&
           cJSON_AddStringToObject(root, "method", kq_method_name(p->method)) &&
           cJSON_AddStringToObject(root, "layout", kq_layout_name(sum->layout)) &&
           kq_cli_json_add_number(root, "fraction_of_f16", sum->fraction_of_f16) &&
           kq_cli_json_add_number(root, "mean_rank_k", sum->mean_rank_k) &&
           kq_cli_json_add_number(root, "mean_rank_v", sum->mean_rank_v) &&
           kq_cli_json_add_number(root, "mean_bits_k", sum->mean_bits_k) &&
           kq_cli_json_add_number(root, "mean_bits_v", sum->mean_bits_v) &&
           kq_cli_json_add_number(root, "predicted_error_k", sum->predicted_error_k) &&
           kq_cli_json_add_number(root, "predicted_error_v", sum->predicted_error_v);
  if (!ok) {
    cJSON_Delete(root);
    root = NULL;
  }
  return kq_cli_json_print("fit", root);
}

int kq_cmd_fit(int argc, char **argv) {
  const char *cmd = "fit", *calib = NULL, *out = NULL;
  kq_fit_params p = kq_fit_default_params();
  int have_rk = 0, have_rv = 0, have_bytes = 0, json = 0, c;
  kq_cli_getopt_begin();
  while ((c = kq_cli_getopt(cmd, argc, argv, KQ_CLI_COMMON_SHORT "o:t:", g_options)) != -1) {
    const char *val = optarg;
    long long n;
    switch (c) {
    case 'h': help(); return 0;
    case 'o': out = val; break;
    case OPT_JSON: json = 1; break;
    case OPT_METHOD:
      if (kq_method_parse(val, &p.method) != KQ_OK)
        return kq_cli_usage_error(cmd, "--method: '%s' (expected kq-svd, k-svd, eigen or quant)",
                                  val);
      break;
    case OPT_ALPHA:
      if (!kq_cli_parse_double(cmd, "--alpha", val, 1e-6, 1e6, &p.alpha)) return 2;
      break;
    case OPT_RANK_K:
    case OPT_RANK_V:
      if (!kq_cli_parse_int(cmd, c == OPT_RANK_K ? "--rank-k" : "--rank-v", val, 1, 1 << 20, &n))
        return 2;
      if (c == OPT_RANK_K)
        p.rank_k = (int32_t)n, have_rk = 1;
      else
        p.rank_v = (int32_t)n, have_rv = 1;
      break;
    case OPT_EPSILON:
      if (!kq_cli_parse_double(cmd, "--epsilon", val, 1e-12, 0.999999, &p.epsilon)) return 2;
      break;
    case OPT_RATIO:
      if (!kq_cli_parse_double(cmd, "--ratio", val, 1e-9, 1.0, &p.ratio)) return 2;
      break;
    case OPT_BYTES:
      if (!kq_cli_parse_double(cmd, "--bytes", val, -1e300, 1e300, &p.bytes)) return 2;
      if (!(p.bytes > 0 && p.bytes <= 1))
        return kq_cli_usage_error(cmd, "--bytes: %s is not a fraction in (0, 1] of an F16 cache",
                                  val);
      have_bytes = 1;
      break;
    case OPT_LAYOUT:
      if (kq_layout_parse(val, &p.layout) != KQ_OK)
        return kq_cli_usage_error(cmd, "--layout: '%s' (expected per-head or joint)", val);
      break;
    case OPT_SEED: {
      char *end = NULL;
      unsigned long long seed = val[0] == '-' ? 0 : strtoull(val, &end, 10);
      if (!end || end == val || *end != '\0')
        return kq_cli_usage_error(cmd, "--seed: '%s' (expected a non-negative integer)", val);
      p.seed = (uint64_t)seed;
      break;
    }
    case OPT_POSITIONS:
      if (!kq_cli_parse_int(cmd, "--positions", val, 1, (long long)1 << 40, &n)) return 2;
      p.positions = (int64_t)n;
      break;
    case OPT_SENSITIVITY: p.sensitivity = val; break;
    case OPT_NO_BALANCE: p.balance = 0; break;
    case OPT_BALANCE_QUANT: p.balance = 2; break;
    case 't':
      if (!kq_cli_parse_int(cmd, "--threads", val, 1, 1024, &n)) return 2;
      p.n_threads = (int32_t)n;
      break;
    default: return 2;
    }
  }
  for (int i = optind; i < argc; i++) {
    if (calib) return kq_cli_usage_error(cmd, "more than one calibration file ('%s')", argv[i]);
    calib = argv[i];
  }
  if (!calib) return kq_cli_usage_error(cmd, "missing calibration file CALIB");
  if (!out) return kq_cli_usage_error(cmd, "missing -o PROJ");
  if (have_rk != have_rv) return kq_cli_usage_error(cmd, "--rank-k and --rank-v go together");
  int modes = have_rk + (p.epsilon > 0) + (p.ratio > 0) + have_bytes;
  if (modes != 1)
    return kq_cli_usage_error(
        cmd, "choose exactly one of --rank-k/--rank-v, --epsilon, --ratio, --bytes");
  p.progress = kq_cli_progress;
  p.progress_user = (void *)cmd;
  p.cancel = kq_cli_cancel_flag();
  kq_cli_detail(cmd, "%s -> %s: method %s, layout %s, threads %d%s", calib, out,
                kq_method_name(p.method), kq_layout_name(p.layout), (int)p.n_threads,
                p.n_threads ? "" : " (all cores)");
  double t0 = kq_cli_seconds();
  kq_fit_summary sum;
  kq_status st = kq_fit_ex(calib, out, &p, &sum);
  kq_cli_progress_end();
  if (st == KQ_ERR_INTERRUPTED) {
    fprintf(stderr, "kqsvd fit: interrupted; %s was not written\n", out);
    return 130;
  }
  if (st) return kq_cli_fail(cmd, st);
  kq_cli_detail(cmd, "fitted in %.2f s", kq_cli_seconds() - t0);
  if (json) return print_json(out, &p, &sum);
  kq_cli_note(cmd, "wrote %s (%s)", out, kq_method_name(p.method));
  fprintf(stderr,
          "kqsvd fit: layout %s, bytes %.3f of F16, keys rank %.1f bits %.1f, values rank %.1f "
          "bits %.1f, predicted error k %.3f v %.3f\n",
          kq_layout_name(sum.layout), sum.fraction_of_f16, sum.mean_rank_k, sum.mean_bits_k,
          sum.mean_rank_v, sum.mean_bits_v, sum.predicted_error_k, sum.predicted_error_v);
  return 0;
}
