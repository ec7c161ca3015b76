/* kqsvd synth: write a synthetic calibration file (see kq_synth). */
#include <stdio.h>
#include <string.h>

#include "cli_util.h"
#include "commands.h"

static void help(const kq_synth_params *d) {
  printf(
      "usage: kqsvd synth OUT [--layers N] [--heads N] [--kv-heads N] [--head-dim N]\n"
      "                   [--hidden N] [--seq-len N] [--n-seqs N] [--dtype f32|f16|bf16]\n"
      "                   [--seed N] [--rope-theta X] [--no-wo]\n"
      "\n"
      "Writes a synthetic calibration file (SPEC §2) with the structure that matters for\n"
      "KV-cache compression, for demos and tests until real-model capture:\n"
      "  - anisotropic hidden states: x = z·diag(s)·Pᵀ, z standard normal, s_j = (1+j)^-0.8\n"
      "    over min(hidden, 64) directions of a random orthonormal frame P;\n"
      "  - GQA: per layer Gaussian W_k, W_v per kv head and W_q per query head; each query\n"
      "    head reuses its kv head's key weights with random positive channel gains plus\n"
      "    its own component, so queries and keys are correlated as in trained models;\n"
      "  - a few key channels (the lowest-frequency rotary pairs, max(1, head_dim/32) pairs)\n"
      "    with 8x the variance that the queries ignore (zero query weight): K-SVD spends\n"
      "    rank there, KQ-SVD does not;\n"
      "  - keys/queries rotated by RoPE after projection (rope = post, pairs layout,\n"
      "    angle pos·theta^(-2j/d), pos = position inside its sequence), small isotropic noise;\n"
      "  - W_O (unless --no-wo): Gaussian with each head's columns scaled by exp(-2c/d).\n"
      "Deterministic for a given seed (xoshiro256**, Box–Muller).\n"
      "\n"
      "defaults: --layers %d --heads %d --kv-heads %d --head-dim %d --hidden %d --seq-len %d\n"
      "          --n-seqs %d --dtype f32 --seed %llu --rope-theta %g\n",
      (int)d->n_layers, (int)d->n_heads, (int)d->n_kv_heads, (int)d->head_dim, (int)d->hidden,
      (int)d->seq_len, (int)d->n_seqs, (unsigned long long)d->seed, (double)d->rope_theta);
}

typedef struct int_option {
  const char *name;
  int32_t *field;
  long long lo, hi;
} int_option;

int kq_cmd_synth(int argc, char **argv) {
  const char *cmd = "synth", *out = NULL;
  kq_synth_params p = kq_synth_default_params();
  const int_option ints[] = {
      {"--layers", &p.n_layers, 1, 4096},      {"--heads", &p.n_heads, 1, 65536},
      {"--kv-heads", &p.n_kv_heads, 1, 65536}, {"--head-dim", &p.head_dim, 2, 4096},
      {"--hidden", &p.hidden, 1, 1 << 20},     {"--seq-len", &p.seq_len, 1, 1 << 24},
      {"--n-seqs", &p.n_seqs, 1, 1 << 24},
  };
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      help(&p);
      return 0;
    }
    if (!strcmp(a, "--no-wo")) {
      p.with_wo = 0;
      continue;
    }
    if (a[0] == '-' && a[1] != '\0' && !val) return kq_cli_usage_error(cmd, "%s needs a value", a);
    int matched = 0;
    for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++) {
      if (strcmp(a, ints[k].name)) continue;
      long long n;
      if (!kq_cli_parse_int(cmd, a, val, ints[k].lo, ints[k].hi, &n)) return 2;
      *ints[k].field = (int32_t)n;
      matched = 1;
    }
    if (matched) {
      i++;
      continue;
    }
    if (!strcmp(a, "--dtype")) {
      if (!strcmp(val, "f32") || !strcmp(val, "F32"))
        p.dtype = KQ_DTYPE_F32;
      else if (!strcmp(val, "f16") || !strcmp(val, "F16"))
        p.dtype = KQ_DTYPE_F16;
      else if (!strcmp(val, "bf16") || !strcmp(val, "BF16"))
        p.dtype = KQ_DTYPE_BF16;
      else
        return kq_cli_usage_error(cmd, "--dtype: '%s' (expected f32, f16 or bf16)", val);
    } else if (!strcmp(a, "--seed")) {
      long long n;
      if (!kq_cli_parse_int(cmd, a, val, 0, (long long)9e18, &n)) return 2;
      p.seed = (uint64_t)n;
    } else if (!strcmp(a, "--rope-theta")) {
      double x;
      if (!kq_cli_parse_double(cmd, a, val, 1e-3, 1e30, &x)) return 2;
      p.rope_theta = (float)x;
    } else if (a[0] == '-' && a[1] != '\0') {
      return kq_cli_usage_error(cmd, "unknown option '%s'", a);
    } else {
      if (out) return kq_cli_usage_error(cmd, "more than one output file ('%s')", a);
      out = a;
      continue;
    }
    i++;
  }
  if (!out) return kq_cli_usage_error(cmd, "missing output file OUT");
  if (p.n_heads % p.n_kv_heads)
    return kq_cli_usage_error(cmd, "--heads %d is not a multiple of --kv-heads %d", (int)p.n_heads,
                              (int)p.n_kv_heads);
  if (p.head_dim % 2) return kq_cli_usage_error(cmd, "--head-dim %d must be even", (int)p.head_dim);
  kq_status st = kq_synth(out, &p);
  if (st) return kq_cli_fail(cmd, st);
  fprintf(stderr, "kqsvd synth: wrote %s (%d layers, %lld tokens)\n", out, (int)p.n_layers,
          (long long)p.seq_len * p.n_seqs);
  return 0;
}
