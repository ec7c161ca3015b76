/*
 * cases.c — the conformance case table and the derivation of its NMSE
 * thresholds.
 *
 * Covering design, not a cartesian product: every value of every dimension
 * appears at least once, paired so that each head_dim block mixes ranks,
 * GQA group sizes, context lengths, m, storage, RoPE mode/layout, output kind
 * and append pattern; a few heavy cases (4099 tokens, large logits) use few
 * heads so that software devices (lavapipe, PoCL) stay feasible.
 *
 *   head_dim  64 80 96 128 256
 *   ranks     1, d/4, odd (17 41 31 63 129 9 13 33), d/2, d (identity) and
 *             one full-rank non-identity
 *   groups    H/Hk = 1, 2, 4, 8
 *   n_ctx     0 (error), 1, 7, 64, 1000, 4099
 *   m         1, 5, 64 (and m > n_ctx: error)
 *   storage   F32, F16
 *   rope      none, post (pairs, halves), pre (pairs, halves)
 *   output    latent, full
 *   appends   one, chunks (1, 3, 8, 21, ... with an attend after each,
 *             compared with a one-append cache), truncate then append
 *   layers    0, and layer 1 of a two-layer cache whose layer 0 has other
 *             ranks and receives other tokens in step (CASE_L1)
 *
 * NMSE thresholds (NMSE = Σ(a−b)²/Σb² against the float64 reference).
 *
 * Model: a correct device rounds every float32 operation to nearest, so each
 * stage adds a relative error of about u32 = 2^-24 per accumulated term,
 * and rounding errors of a length-L sum add up like a random walk: relative
 * variance ≈ L·u32². Output relative variance, stage by stage:
 *   projection  k̃ = kA, ṽ = vC (length d):                  d
 *   logits      q̃·k̃ (length r_k; PRE: q̂, k̂ rebuilt through
 *               d×r_k products and dotted over d: 2d + r_k): w
 *               A logit error δs is an absolute error, it perturbs P
 *               relatively by δs, and δs scales with the logit:
 *               variance s_max²·(d + w) (s_max from the reference).
 *   exp         GLSL/OpenCL exp may be off by 3 + 2|x| ulp, x ≤ 2·s_max:
 *               (3 + 4 s_max)²
 *   softmax     denominator and Σ p ṽ over n positions:        n
 *   output      full: (PṼ)Eᵀ, length r_v:                    r_v
 * RoPE (PRE only): the angle pos·θ^(−2j/d) computed in float32 is off by
 *   about c·u32·φ_j (c = 4: pow, product, sin/cos argument); q̂ and k̂ both
 *   turn, so a logit moves by a variance of 2·(c·u32·pos_max)²·s_rms²·
 *   (2/d)·Σ_j θ^(−4j/d). This is the dominant term for long PRE contexts
 *   (d = 64, pos_max = 4098, s_rms = 1.5: ≈ 6e-7 before the safety factor) and
 *   is inherent in float32 RoPE; devices that form angles in double do better.
 * F16 storage (modelled by the reference: latents rounded once to binary16):
 *   a device rounds its float32 latent, which differs from the exact value
 *   by ≈ sqrt(d)·u32 relative, so an element lands on the other side of a
 *   binary16 rounding boundary with probability p = min(1, 2·sqrt(d)·
 *   u32/u16), u16 = 2^-11, and is then off by one binary16 step (relative
 *   u16·2). Key flips move logits (∝ s_rms²), value flips the outputs:
 *   variance p·(2·u16)²·(1 + s_rms²).
 * Threshold = S·(sum of the above), S = 100: the random-walk model is an
 * estimate, not a bound, and blocked or tree sums, FMA contraction and
 * online (rescaled) softmax change the constants but not the orders. The
 * resulting thresholds: F32 NONE/POST 5e-10..5e-9 (1e-6 with |logits| ~ 100),
 * F32 PRE 1e-8 (64 tokens)..6e-5 (4099 tokens), F16 6e-7..3e-5 (1e-4 with
 * large logits). Measured on cpu, vulkan:0 (lavapipe) and opencl:0 (PoCL):
 * every case at most 0.016 of its threshold. Planted bugs in the CPU backend
 * (own token masked, query position + 1, wrong RoPE frequency, wrong kv head
 * for GQA) fail with NMSE 29x..1e4x above the threshold, and test_reference
 * checks a gap of 100x for such bugs on a 200-token reference.
 * Thresholds are never loosened to make a case pass.
 */
#include "cases.h"

#include <math.h>
#include <stdio.h>

#define F32 KQ_STORAGE_F32
#define F16 KQ_STORAGE_F16
#define NONE KQ_ROPE_NONE
#define POST KQ_ROPE_POST
#define PRE KQ_ROPE_PRE
#define PAIRS KQ_ROPE_PAIRS
#define HALVES KQ_ROPE_HALVES
#define LAT KQ_OUTPUT_LATENT
#define FULL KQ_OUTPUT_FULL
#define ONE KQC_APPEND_ONE
#define CHUNKS KQC_APPEND_CHUNKS

/* clang-format off */
/*  d    rk   rv  H  Hk  n_ctx  m  storage rope layout output append trunc identity qscale error */
#define CASE(d, rk, rv, H, Hk, n, m, st, rope, lay, out, app, trunc, id, qs, err) \
  {d, rk, rv, H, Hk, n, m, st, rope, lay, out, app, trunc, id, qs, err, 0}
/* The same, tested on layer 1 of a two-layer cache. */
#define CASE_L1(d, rk, rv, H, Hk, n, m, st, rope, lay, out, app, trunc, id, qs, err) \
  {d, rk, rv, H, Hk, n, m, st, rope, lay, out, app, trunc, id, qs, err, 1}

static const kqc_case g_cases[] = {
  /* head_dim 64 */
  CASE( 64,   1,   1, 4, 4,    7,  5, F32, NONE, PAIRS,  LAT,  ONE,       0, 0,  0, 0),
  CASE( 64,  16,  16, 8, 2,   64, 64, F16, POST, PAIRS,  FULL, CHUNKS,    0, 0,  0, 0),
  CASE( 64,  17,   9, 8, 1, 1000,  1, F32, PRE,  PAIRS,  FULL, ONE,       0, 0,  0, 0),
  CASE( 64,  32,  32, 2, 1,    1,  1, F16, PRE,  HALVES, LAT,  ONE,       0, 0,  0, 0),
  CASE( 64,  64,  64, 4, 2, 4099,  5, F32, PRE,  HALVES, FULL, CHUNKS,    0, 1,  0, 0),
  CASE( 64,  16,  16, 2, 2, 4099, 64, F16, POST, HALVES, LAT,  ONE,       0, 0,  0, 0),
  CASE( 64,  64,  64, 4, 1,   64,  5, F32, PRE,  PAIRS,  FULL, ONE,       0, 0,  0, 0),
  CASE( 64,  16,  16, 8, 1, 4099, 64, F16, PRE,  PAIRS,  LAT,  ONE,       0, 0,  0, 0),
  /* head_dim 80 */
  CASE_L1( 80,  20,  20, 4, 1,   64,  5, F32, PRE,  PAIRS,  FULL, CHUNKS,   40, 0,  0, 0),
  CASE( 80,   1,   1, 2, 1, 1000, 64, F16, NONE, HALVES, LAT,  ONE,       0, 0,  0, 0),
  CASE( 80,  41,  41, 8, 4,    7,  1, F16, PRE,  HALVES, FULL, CHUNKS,    0, 0,  0, 0),
  CASE( 80,  80,  80, 8, 8,   64, 64, F32, POST, PAIRS,  LAT,  ONE,       0, 1,  0, 0),
  CASE( 80,  40,  40, 4, 2, 1000,  5, F16, PRE,  PAIRS,  LAT,  CHUNKS,  500, 0,  0, 0),
  /* head_dim 96 */
  CASE_L1( 96,  24,  24, 8, 1, 1000,  5, F32, POST, HALVES, FULL, ONE,       0, 0,  0, 0),
  CASE( 96,  48,  48, 2, 2,    7,  5, F16, PRE,  HALVES, FULL, ONE,       0, 0,  0, 0),
  CASE( 96,   1,   1, 4, 2,   64,  1, F32, PRE,  PAIRS,  LAT,  CHUNKS,    0, 0,  0, 0),
  CASE( 96,  96,  96, 4, 1, 1000, 64, F16, PRE,  HALVES, FULL, CHUNKS,  600, 1,  0, 0),
  CASE( 96,  31,  13, 8, 2, 4099,  1, F32, NONE, PAIRS,  FULL, ONE,       0, 0,  0, 0),
  /* head_dim 128 */
  CASE(128,  32,  32, 8, 1,   64, 64, F16, PRE,  PAIRS,  FULL, CHUNKS,    0, 0,  0, 0),
  CASE(128,  64,  64, 2, 1, 4099, 64, F32, PRE,  HALVES, LAT,  ONE,       0, 0,  0, 0),
  CASE(128,   1,   1, 8, 8, 1000,  1, F16, POST, PAIRS,  FULL, ONE,       0, 0,  0, 0),
  CASE(128, 128, 128, 8, 2,    7,  5, F32, NONE, HALVES, FULL, CHUNKS,    3, 1,  0, 0),
  CASE(128,  63,  33, 4, 1, 1000,  5, F32, PRE,  PAIRS,  FULL, CHUNKS,    0, 0,  0, 0),
  CASE_L1(128,  32,  16, 4, 2,   64,  1, F16, NONE, PAIRS,  LAT,  CHUNKS,   20, 0,  0, 0),
  /* large logits (|s| ~ 100: exp overflows float32 without the max shift) */
  CASE(128,  32,  32, 4, 1, 1000,  5, F32, POST, PAIRS,  FULL, ONE,       0, 0, 30, 0),
  CASE(128,  64,  64, 2, 1,   64,  5, F16, PRE,  HALVES, LAT,  ONE,       0, 0, 20, 0),
  /* head_dim 256 */
  CASE(256,  64,  64, 4, 1, 1000,  5, F32, PRE,  HALVES, FULL, ONE,       0, 0,  0, 0),
  CASE(256, 128, 128, 2, 2,   64, 64, F16, POST, HALVES, LAT,  CHUNKS,    0, 0,  0, 0),
  CASE(256,   1,   1, 8, 1,    7,  1, F32, NONE, PAIRS,  FULL, ONE,       0, 0,  0, 0),
  CASE(256, 256, 256, 2, 1, 4099,  1, F16, PRE,  PAIRS,  FULL, ONE,       0, 1,  0, 0),
  CASE_L1(256, 129,  64, 4, 2,  300,  5, F32, PRE,  PAIRS,  LAT,  CHUNKS,  200, 0,  0, 0),
  CASE(256, 256, 256, 8, 4,   64,  5, F32, POST, PAIRS,  FULL, ONE,       0, 1,  0, 0),
  /* errors: attend on an empty cache, m larger than the cache */
  CASE( 64,  16,  16, 4, 2,    0,  1, F32, NONE, PAIRS,  FULL, ONE,       0, 0,  0, 1),
  CASE(128,  32,  32, 4, 1,    0,  5, F16, PRE,  HALVES, LAT,  ONE,       0, 0,  0, 1),
  CASE( 64,  16,  16, 2, 1,    1,  5, F32, POST, PAIRS,  FULL, ONE,       0, 0,  0, 1),
};
/* clang-format on */

const kqc_case *kqc_cases(int *out_count) {
  *out_count = (int)(sizeof g_cases / sizeof g_cases[0]);
  return g_cases;
}

void kqc_case_name(const kqc_case *c, char *buf, size_t size) {
  static const char *rope[] = {"none", "post", "pre"};
  static const char *layout[] = {"pairs", "halves"};
  char extra[48] = "";
  int len = 0;
  if (c->identity) len += snprintf(extra + len, sizeof extra - (size_t)len, "_identity");
  if (c->truncate_to > 0)
    len += snprintf(extra + len, sizeof extra - (size_t)len, "_trunc%d", (int)c->truncate_to);
  if (c->qscale > 0)
    len += snprintf(extra + len, sizeof extra - (size_t)len, "_q%g", (double)c->qscale);
  if (c->layer > 0)
    len += snprintf(extra + len, sizeof extra - (size_t)len, "_layer%d", (int)c->layer);
  if (c->expect_error) snprintf(extra + len, sizeof extra - (size_t)len, "_error");
  snprintf(buf, size, "d%d_rk%d_rv%d_h%dkv%d_n%d_m%d_%s_%s-%s_%s_%s%s", (int)c->head_dim,
           (int)c->rank_k, (int)c->rank_v, (int)c->n_heads, (int)c->n_kv_heads, (int)c->n_ctx,
           (int)c->m, c->storage == KQ_STORAGE_F16 ? "f16" : "f32", rope[c->rope],
           layout[c->layout], c->output == KQ_OUTPUT_FULL ? "full" : "latent",
           c->append == KQC_APPEND_CHUNKS ? "chunks" : "one", extra);
}

double kqc_case_threshold(const kqc_case *c, const kqc_ref_stats *stats) {
  const double u32 = 0x1p-24, u16 = 0x1p-11, safety = 100.0, theta = 10000.0;
  double d = c->head_dim, rk = c->rank_k, rv = c->rank_v;
  double n = c->n_ctx > 1 ? c->n_ctx : 1;
  double smax = stats->logit_max, srms = stats->logit_rms;
  int pre = c->rope == KQ_ROPE_PRE;
  double w = pre ? 2 * d + rk : rk;
  double terms = d + n + (c->output == KQ_OUTPUT_FULL ? rv : 0) + smax * smax * (d + w) +
                 (3 + 4 * smax) * (3 + 4 * smax);
  double var = u32 * u32 * terms;
  if (pre) {
    double sum = 0;
    for (int j = 0; j < c->head_dim / 2; j++) sum += pow(theta, -4.0 * j / d);
    double angle = 4 * u32 * (n - 1);
    var += 2 * angle * angle * srms * srms * (2 / d) * sum;
  }
  if (c->storage == KQ_STORAGE_F16) {
    double p = fmin(1.0, 2 * sqrt(d) * u32 / u16);
    var += p * (2 * u16) * (2 * u16) * (1 + srms * srms);
  }
  return safety * var;
}
