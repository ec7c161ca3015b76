/*
 * bench_quant — decode attention on quantized latent segments (SPEC §1b)
 * against full F16 attention (rank d, identity) on one device, in one run.
 *
 *   bench_quant --device NAME [--ctx N] [--heads H] [--kv-heads Hk] [--dim d]
 *               [--layout per-head|joint] [--keys "16f 48q8 32q4"]
 *               [--values "16q8 96q4"] [--layers L] [--steps S] [--output full|latent]
 *
 * Segments: width then f (F16), q8 or q4, in σ order; the ranks are their
 * sums. A timed step attends one query in every layer (each layer's cache
 * once; by default enough layers that the quantized caches exceed 4x the
 * last-level cache, SPEC §5). Compressed and full steps alternate; figures
 * are medians. The byte fraction is kq_projections_fraction_of_f16.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "kqsvd.h"

typedef struct bench_cfg {
  const char *device, *keys, *values;
  int ctx, heads, kv_heads, dim, layers, steps;
  kq_layout layout;
  kq_output output;
} bench_cfg;

static int fail(const char *what) {
  fprintf(stderr, "bench_quant: %s: %s\n", what, kq_last_error());
  return 1;
}

/* "16f 48q8 32q4" -> segments; 0 on a malformed list. */
static int parse_segments(const char *text, kq_segment *out, int *rank) {
  int n = 0;
  *rank = 0;
  while (*text) {
    char *end;
    long w = strtol(text, &end, 10);
    if (end == text || w < 1 || n == KQ_MAX_SEGMENTS) return 0;
    if (end[0] == 'f') {
      out[n].bits = KQ_SEG_FLOAT, end += 1;
    } else if (end[0] == 'q' && (end[1] == '8' || end[1] == '4')) {
      out[n].bits = end[1] == '8' ? KQ_SEG_Q8 : KQ_SEG_Q4, end += 2;
    } else {
      return 0;
    }
    out[n++].width = (int32_t)w;
    *rank += (int)w;
    text = end;
    while (*text == ' ' || *text == ',') text++;
  }
  return n;
}

/* A cache of cfg->ctx random tokens in every layer: identity projections
 * (full F16 attention) when `full`, else random ones with the segments. */
static int build(const bench_cfg *cfg, kq_device *dev, int full, int layers, kq_cache **out_cache,
                 double *out_fraction) {
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = layers,
                              .n_heads = cfg->heads,
                              .n_kv_heads = cfg->kv_heads,
                              .head_dim = cfg->dim,
                              .rope = KQ_ROPE_POST,
                              .rope_layout = KQ_ROPE_PAIRS,
                              .rope_theta = 10000.0f,
                              .layout = full ? KQ_LAYOUT_PER_HEAD : cfg->layout};
  kq_projections *proj = NULL;
  uint64_t seed = 0x1234567u;
  const int d = cfg->dim, Hk = cfg->kv_heads;
  if (full) {
    if (kq_projections_create_identity(&info, &proj) != KQ_OK) return fail("identity projections");
  } else {
    kq_segment ks[KQ_MAX_SEGMENTS], vs[KQ_MAX_SEGMENTS];
    int rk, rv, nks = parse_segments(cfg->keys, ks, &rk),
                nvs = parse_segments(cfg->values, vs, &rv);
    int32_t *rks = calloc((size_t)layers, sizeof *rks), *rvs = calloc((size_t)layers, sizeof *rvs);
    if (!rks || !rvs) return fail("ranks");
    for (int l = 0; l < layers; ++l) rks[l] = rk, rvs[l] = rv;
    kq_status st = kq_projections_create(&info, rks, rvs, &proj);
    free(rks), free(rvs);
    if (st != KQ_OK) return fail("projections");
    /* A, C: [Hk, d, r] per head or [Hk·d, r] joint, the same count. */
    const float amp = 1.0f / sqrtf((float)(cfg->layout == KQ_LAYOUT_JOINT ? Hk * d : d));
    for (int l = 0; l < layers; ++l) {
      kq_projection_layer pl;
      if (kq_projections_layer(proj, l, &pl) != KQ_OK) return fail("projection layer");
      for (size_t i = 0; i < (size_t)Hk * d * rk; ++i) {
        pl.key_down[i] = amp * bench_frand(&seed);
        pl.query_down[i] = amp * bench_frand(&seed);
      }
      for (size_t i = 0; i < (size_t)Hk * d * rv; ++i) {
        pl.value_down[i] = amp * bench_frand(&seed);
        pl.value_up[i] = amp * bench_frand(&seed);
      }
      if (kq_projections_set_segments(proj, l, KQ_SIDE_KEYS, nks, ks) != KQ_OK ||
          kq_projections_set_segments(proj, l, KQ_SIDE_VALUES, nvs, vs) != KQ_OK)
        return fail("segments");
    }
  }
  *out_fraction = kq_projections_fraction_of_f16(proj, KQ_STORAGE_F16);
  return bench_filled_cache("bench_quant", dev, proj, KQ_STORAGE_F16, cfg->ctx, layers, Hk, d,
                            &seed, out_cache);
}

/* Wall and process CPU seconds of one step (CPU time, all threads, is the
 * steadier figure on a machine shared with other work). */
static int step(const bench_cfg *cfg, kq_cache *cache, int layers, const float *q, float *out,
                double *seconds, double *cpu) {
  double t0 = bench_now_seconds(), c0 = bench_cpu_seconds();
  for (int l = 0; l < layers; ++l)
    if (kq_cache_attend(cache, l, 1, q, cfg->output, out) != KQ_OK) return fail("attend");
  *seconds = bench_now_seconds() - t0;
  *cpu = bench_cpu_seconds() - c0;
  return 0;
}

static int usage(void) {
  fprintf(stderr, "usage: bench_quant --device NAME [--ctx N] [--heads H] [--kv-heads Hk] "
                  "[--dim d] [--layout per-head|joint]\n"
                  "                   [--keys SEGS] [--values SEGS] [--layers L] [--steps S] "
                  "[--output full|latent]\n");
  return 2;
}

int main(int argc, char **argv) {
  bench_cfg cfg = {.device = NULL,
                   .keys = "16f 48q8 32q4",
                   .values = "16q8 96q4",
                   .ctx = 32768,
                   .heads = 32,
                   .kv_heads = 8,
                   .dim = 128,
                   .layers = 0,
                   .steps = 7,
                   .layout = KQ_LAYOUT_PER_HEAD,
                   .output = KQ_OUTPUT_FULL};
  for (int i = 1; i + 1 < argc; i += 2) {
    const char *a = argv[i], *v = argv[i + 1];
    int *num = NULL;
    if (!strcmp(a, "--device"))
      cfg.device = v;
    else if (!strcmp(a, "--keys"))
      cfg.keys = v;
    else if (!strcmp(a, "--values"))
      cfg.values = v;
    else if (!strcmp(a, "--layout")) {
      if (kq_layout_parse(v, &cfg.layout) != KQ_OK) return usage();
    } else if (!strcmp(a, "--output")) {
      if (!strcmp(v, "full") || !strcmp(v, "latent"))
        cfg.output = !strcmp(v, "full") ? KQ_OUTPUT_FULL : KQ_OUTPUT_LATENT;
      else
        return usage();
    } else if (!strcmp(a, "--ctx"))
      num = &cfg.ctx;
    else if (!strcmp(a, "--heads"))
      num = &cfg.heads;
    else if (!strcmp(a, "--kv-heads"))
      num = &cfg.kv_heads;
    else if (!strcmp(a, "--dim"))
      num = &cfg.dim;
    else if (!strcmp(a, "--layers"))
      num = &cfg.layers;
    else if (!strcmp(a, "--steps"))
      num = &cfg.steps;
    else
      return usage();
    if (num) {
      char *end;
      long x = strtol(v, &end, 10);
      if (*end || x < 0 || x > 1 << 28) return usage();
      *num = (int)x;
    }
  }
  kq_segment tmp[KQ_MAX_SEGMENTS];
  int rk, rv;
  if (argc % 2 == 0 || cfg.ctx < 1 || cfg.heads < 1 || cfg.kv_heads < 1 ||
      cfg.heads % cfg.kv_heads || cfg.steps < 1 || !parse_segments(cfg.keys, tmp, &rk) ||
      !parse_segments(cfg.values, tmp, &rv))
    return usage();
  kq_device *dev = NULL;
  if (kq_device_create(cfg.device, &dev) != KQ_OK) return fail("device");
  kq_device_info info;
  if (kq_device_get_info(dev, &info) != KQ_OK) return fail("device info");
  int layers = cfg.layers;
  if (layers == 0) { /* quantized caches > 4x the last-level cache */
    long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l3 <= 0) l3 = 32L << 20;
    double groups = cfg.layout == KQ_LAYOUT_JOINT ? 1 : cfg.kv_heads;
    double per = (double)cfg.ctx * groups * (rk + rv); /* about a byte a dim */
    layers = (int)ceil(4.0 * (double)l3 / per);
    if (layers < 2) layers = 2;
  }
  kq_cache *cq = NULL, *cf = NULL;
  double frac_q, frac_f;
  if (build(&cfg, dev, 0, layers, &cq, &frac_q) || build(&cfg, dev, 1, layers, &cf, &frac_f))
    return 1;
  float *q = malloc((size_t)cfg.heads * cfg.dim * sizeof *q);
  float *out = malloc((size_t)cfg.heads * cfg.dim * sizeof *out);
  double *tq = calloc((size_t)cfg.steps + 1, sizeof *tq), *tf = calloc((size_t)cfg.steps + 1, 8);
  double *cq_s = calloc((size_t)cfg.steps + 1, 8), *cf_s = calloc((size_t)cfg.steps + 1, 8);
  if (!q || !out || !tq || !tf || !cq_s || !cf_s) return fail("host buffers");
  uint64_t seed = 99;
  for (size_t i = 0; i < (size_t)cfg.heads * cfg.dim; ++i) q[i] = bench_frand(&seed);
  for (int s = 0; s <= cfg.steps; ++s) /* step 0 warms up */
    if (step(&cfg, cq, layers, q, out, &tq[s], &cq_s[s]) ||
        step(&cfg, cf, layers, q, out, &tf[s], &cf_s[s]))
      return 1;
  double mq = 1e3 * kq_median(tq + 1, cfg.steps) / layers;
  double mf = 1e3 * kq_median(tf + 1, cfg.steps) / layers;
  double uq = 1e3 * kq_median(cq_s + 1, cfg.steps) / layers;
  double uf = 1e3 * kq_median(cf_s + 1, cfg.steps) / layers;
  printf("device %s (%s)\n", info.name, info.description);
  printf("decode ctx %d, H %d, Hk %d, d %d, layout %s, %d layers, median of %d steps\n", cfg.ctx,
         cfg.heads, cfg.kv_heads, cfg.dim, kq_layout_name(cfg.layout), layers, cfg.steps);
  printf("quantized keys [%s] values [%s]: %.4f of F16 bytes\n", cfg.keys, cfg.values, frac_q);
  printf("  quantized %8.3f ms per layer-attend (CPU %8.3f ms)\n", mq, uq);
  printf("  full F16  %8.3f ms per layer-attend (CPU %8.3f ms), rank %d identity\n", mf, uf,
         cfg.dim);
  printf("speedup %.2fx (CPU time %.2fx)\n", mf / mq, uf / uq);
  free(q), free(out), free(tq), free(tf), free(cq_s), free(cf_s);
  kq_cache_destroy(cq);
  kq_cache_destroy(cf);
  kq_device_destroy(dev);
  return 0;
}
