/* kqsvd synth: write a synthetic calibration file (see kq_synth). */
#include <stdio.h>
#include <string.h>

#include "cli_util.h"
#include "commands.h"

static void help(const kq_synth_params *d) {
  printf(
      "usage: kqsvd synth OUT [--layers N] [--heads N] [--kv-heads N] [--head-dim N]\n"
      "                   [--hidden N] [--seq-len N] [--n-seqs N] [--dtype f32|f16|bf16]\n"
      "                   [--seed N] [--rope-theta X] [--no-wo] [-q|-v]\n"
      "       kqsvd synth -o OUT ...\n"
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
      "          --n-seqs %d --dtype f32 --seed %llu --rope-theta %g\n"
      "\n"
      "  -o, --output OUT  the file to write (instead of the OUT argument)\n"
      "  -q, --quiet       print nothing but errors\n"
      "  -v, --verbose     more detail\n"
      "  -h, --help        this help\n"
      "Options take their value as --opt V or --opt=V; -- ends the options.\n",
      (int)d->n_layers, (int)d->n_heads, (int)d->n_kv_heads, (int)d->head_dim, (int)d->hidden,
      (int)d->seq_len, (int)d->n_seqs, (unsigned long long)d->seed, (double)d->rope_theta);
}

typedef struct int_option {
  const char *name;
  int32_t *field;
  long long lo, hi;
} int_option;

enum { OPT_NO_WO = 256, OPT_DTYPE, OPT_SEED, OPT_ROPE_THETA, OPT_INT };

/* Values OPT_INT + k are the k-th entry of the int_option table below. */
static const struct option g_options[] = {
    {"layers", required_argument, NULL, OPT_INT + 0},
    {"heads", required_argument, NULL, OPT_INT + 1},
    {"kv-heads", required_argument, NULL, OPT_INT + 2},
    {"head-dim", required_argument, NULL, OPT_INT + 3},
    {"hidden", required_argument, NULL, OPT_INT + 4},
    {"seq-len", required_argument, NULL, OPT_INT + 5},
    {"n-seqs", required_argument, NULL, OPT_INT + 6},
    {"output", required_argument, NULL, 'o'},
    {"no-wo", no_argument, NULL, OPT_NO_WO},
    {"dtype", required_argument, NULL, OPT_DTYPE},
    {"seed", required_argument, NULL, OPT_SEED},
    {"rope-theta", required_argument, NULL, OPT_ROPE_THETA},
    KQ_CLI_COMMON_LONG,
    {NULL, 0, NULL, 0},
};

int kq_cmd_synth(int argc, char **argv) {
  const char *cmd = "synth", *out = NULL;
  kq_synth_params p = kq_synth_default_params();
  const int_option ints[] = {
      {"--layers", &p.n_layers, 1, 4096},      {"--heads", &p.n_heads, 1, 65536},
      {"--kv-heads", &p.n_kv_heads, 1, 65536}, {"--head-dim", &p.head_dim, 2, 4096},
      {"--hidden", &p.hidden, 1, 1 << 20},     {"--seq-len", &p.seq_len, 1, 1 << 24},
      {"--n-seqs", &p.n_seqs, 1, 1 << 24},
  };
  int c;
  kq_cli_getopt_begin();
  while ((c = kq_cli_getopt(cmd, argc, argv, KQ_CLI_COMMON_SHORT "o:", g_options)) != -1) {
    const char *val = optarg;
    long long n;
    if (c >= OPT_INT && c < OPT_INT + (int)(sizeof ints / sizeof ints[0])) {
      const int_option *o = &ints[c - OPT_INT];
      if (!kq_cli_parse_int(cmd, o->name, val, o->lo, o->hi, &n)) return 2;
      *o->field = (int32_t)n;
      continue;
    }
    switch (c) {
    case 'h': help(&p); return 0;
    case OPT_NO_WO: p.with_wo = 0; break;
    case 'o':
      if (out) return kq_cli_usage_error(cmd, "more than one output file ('%s')", val);
      out = val;
      break;
    case OPT_DTYPE:
      if (!strcmp(val, "f32") || !strcmp(val, "F32"))
        p.dtype = KQ_DTYPE_F32;
      else if (!strcmp(val, "f16") || !strcmp(val, "F16"))
        p.dtype = KQ_DTYPE_F16;
      else if (!strcmp(val, "bf16") || !strcmp(val, "BF16"))
        p.dtype = KQ_DTYPE_BF16;
      else
        return kq_cli_usage_error(cmd, "--dtype: '%s' (expected f32, f16 or bf16)", val);
      break;
    case OPT_SEED:
      if (!kq_cli_parse_int(cmd, "--seed", val, 0, (long long)9e18, &n)) return 2;
      p.seed = (uint64_t)n;
      break;
    case OPT_ROPE_THETA: {
      double x;
      if (!kq_cli_parse_double(cmd, "--rope-theta", val, 1e-3, 1e30, &x)) return 2;
      p.rope_theta = (float)x;
      break;
    }
    default: return 2;
    }
  }
  for (int i = optind; i < argc; i++) {
    if (out) return kq_cli_usage_error(cmd, "more than one output file ('%s')", argv[i]);
    out = argv[i];
  }
  if (!out) return kq_cli_usage_error(cmd, "missing output file OUT");
  if (p.n_heads % p.n_kv_heads)
    return kq_cli_usage_error(cmd, "--heads %d is not a multiple of --kv-heads %d", (int)p.n_heads,
                              (int)p.n_kv_heads);
  if (p.head_dim % 2) return kq_cli_usage_error(cmd, "--head-dim %d must be even", (int)p.head_dim);
  kq_cli_detail(cmd,
                "%s: %d layers, %d heads, %d kv heads, head_dim %d, hidden %d, %d x %d tokens, "
                "seed %llu",
                out, (int)p.n_layers, (int)p.n_heads, (int)p.n_kv_heads, (int)p.head_dim,
                (int)p.hidden, (int)p.n_seqs, (int)p.seq_len, (unsigned long long)p.seed);
  kq_status st = kq_synth(out, &p);
  if (st) return kq_cli_fail(cmd, st);
  kq_cli_note(cmd, "wrote %s (%d layers, %lld tokens)", out, (int)p.n_layers,
              (long long)p.seq_len * p.n_seqs);
  return 0;
}
