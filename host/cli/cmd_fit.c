/* kqsvd fit: fit KQ-SVD / K-SVD / Eigen / quant projections from calibration data. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "commands.h"

static void help(void) {
  printf(
      "usage: kqsvd fit CALIB -o PROJ [--method kq-svd|k-svd|eigen|quant] [--alpha A]\n"
      "                 (--rank-k N --rank-v N | --epsilon E | --ratio F | --bytes F)\n"
      "                 [--layout per-head|joint] [--seed N] [--positions N] [--threads N]\n"
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
      "  --threads N         worker threads (default: all cores)\n"
      "  -h, --help          this help\n");
}

int kq_cmd_fit(int argc, char **argv) {
  const char *cmd = "fit", *calib = NULL, *out = NULL;
  kq_fit_params p = kq_fit_default_params();
  int have_rk = 0, have_rv = 0, have_bytes = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
    long long n;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      help();
      return 0;
    }
    if (a[0] == '-' && a[1] != '\0' && !val) return kq_cli_usage_error(cmd, "%s needs a value", a);
    if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
      out = val;
    } else if (!strcmp(a, "--method")) {
      if (kq_method_parse(val, &p.method) != KQ_OK)
        return kq_cli_usage_error(cmd, "--method: '%s' (expected kq-svd, k-svd, eigen or quant)",
                                  val);
    } else if (!strcmp(a, "--alpha")) {
      if (!kq_cli_parse_double(cmd, a, val, 1e-6, 1e6, &p.alpha)) return 2;
    } else if (!strcmp(a, "--rank-k") || !strcmp(a, "--rank-v")) {
      if (!kq_cli_parse_int(cmd, a, val, 1, 1 << 20, &n)) return 2;
      if (a[7] == 'k')
        p.rank_k = (int32_t)n, have_rk = 1;
      else
        p.rank_v = (int32_t)n, have_rv = 1;
    } else if (!strcmp(a, "--epsilon")) {
      if (!kq_cli_parse_double(cmd, a, val, 1e-12, 0.999999, &p.epsilon)) return 2;
    } else if (!strcmp(a, "--ratio")) {
      if (!kq_cli_parse_double(cmd, a, val, 1e-9, 1.0, &p.ratio)) return 2;
    } else if (!strcmp(a, "--bytes")) {
      if (!kq_cli_parse_double(cmd, a, val, -1e300, 1e300, &p.bytes)) return 2;
      if (!(p.bytes > 0 && p.bytes <= 1))
        return kq_cli_usage_error(cmd, "--bytes: %s is not a fraction in (0, 1] of an F16 cache",
                                  val);
      have_bytes = 1;
    } else if (!strcmp(a, "--layout")) {
      if (kq_layout_parse(val, &p.layout) != KQ_OK)
        return kq_cli_usage_error(cmd, "--layout: '%s' (expected per-head or joint)", val);
    } else if (!strcmp(a, "--seed")) {
      char *end = NULL;
      unsigned long long seed = val[0] == '-' ? 0 : strtoull(val, &end, 10);
      if (!end || end == val || *end != '\0')
        return kq_cli_usage_error(cmd, "--seed: '%s' (expected a non-negative integer)", val);
      p.seed = (uint64_t)seed;
    } else if (!strcmp(a, "--positions")) {
      if (!kq_cli_parse_int(cmd, a, val, 1, (long long)1 << 40, &n)) return 2;
      p.positions = (int64_t)n;
    } else if (!strcmp(a, "--threads")) {
      if (!kq_cli_parse_int(cmd, a, val, 1, 1024, &n)) return 2;
      p.n_threads = (int32_t)n;
    } else if (a[0] == '-' && a[1] != '\0') {
      return kq_cli_usage_error(cmd, "unknown option '%s'", a);
    } else {
      if (calib) return kq_cli_usage_error(cmd, "more than one calibration file ('%s')", a);
      calib = a;
      continue;
    }
    i++;
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
  kq_fit_summary sum;
  kq_status st = kq_fit_ex(calib, out, &p, &sum);
  kq_cli_progress_end();
  if (st == KQ_ERR_INTERRUPTED) {
    fprintf(stderr, "kqsvd fit: interrupted; %s was not written\n", out);
    return 130;
  }
  if (st) return kq_cli_fail(cmd, st);
  fprintf(stderr, "kqsvd fit: wrote %s (%s)\n", out, kq_method_name(p.method));
  fprintf(stderr,
          "kqsvd fit: layout %s, bytes %.3f of F16, keys rank %.1f bits %.1f, values rank %.1f "
          "bits %.1f, predicted error k %.3f v %.3f\n",
          kq_layout_name(sum.layout), sum.fraction_of_f16, sum.mean_rank_k, sum.mean_bits_k,
          sum.mean_rank_v, sum.mean_bits_v, sum.predicted_error_k, sum.predicted_error_v);
  return 0;
}
