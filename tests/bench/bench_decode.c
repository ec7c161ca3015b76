/*
 * bench_decode — decode (one query token) throughput of compressed attention
 * against full attention on one device, through the public API, in one run.
 *
 *   bench_decode --device NAME [--ctx N] [--heads H] [--kv-heads Hk] [--dim d]
 *                [--rank-k r] [--rank-v r] [--storage f16|f32] [--layers L]
 *                [--steps S] [--output full|latent] [--copy-mib M] [--json]
 *
 * A timed step attends one query in every layer (each layer's cache is read
 * once per step, and the layers together exceed the last-level cache several
 * times, SPEC §5). Bytes per step = latent caches read + queries + outputs.
 * The ceiling is kq_device_copy_bandwidth on the same device in the same run.
 * Figures are medians over the steps; compressed and full steps alternate.
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
  const char *device;
  int ctx, heads, kv_heads, dim, rank_k, rank_v, layers, steps, copy_mib, json;
  kq_storage storage;
  kq_output output;
} bench_cfg;

typedef struct bench_result {
  double ms, gbps, bytes;
  int layers;
} bench_result;

static int fail(const char *what) {
  fprintf(stderr, "bench_decode: %s: %s\n", what, kq_last_error());
  return 1;
}

static int usage(void) {
  fprintf(stderr,
          "usage: bench_decode --device NAME [--ctx N] [--heads H] [--kv-heads Hk] [--dim d]\n"
          "                    [--rank-k r] [--rank-v r] [--storage f16|f32] [--layers L]\n"
          "                    [--steps S] [--output full|latent] [--copy-mib M] [--json]\n");
  return 2;
}

/* Builds a cache of cfg->ctx tokens in every layer with rank (rk, rv), or
 * identity projections when rk == rv == dim, then times decode steps. */
static int build(const bench_cfg *cfg, kq_device *dev, int rk, int rv, int layers,
                 kq_cache **out_cache) {
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = layers,
                              .n_heads = cfg->heads,
                              .n_kv_heads = cfg->kv_heads,
                              .head_dim = cfg->dim,
                              .rope = KQ_ROPE_POST,
                              .rope_layout = KQ_ROPE_PAIRS,
                              .rope_theta = 10000.0f};
  kq_projections *proj = NULL;
  uint64_t seed = 0x1234567u;
  const int d = cfg->dim, Hk = cfg->kv_heads;
  if (rk == d && rv == d) {
    if (kq_projections_create_identity(&info, &proj) != KQ_OK) return fail("identity projections");
  } else {
    int32_t *rks = calloc((size_t)layers, sizeof *rks), *rvs = calloc((size_t)layers, sizeof *rvs);
    if (!rks || !rvs) return fail("ranks");
    for (int l = 0; l < layers; ++l) rks[l] = rk, rvs[l] = rv;
    kq_status st = kq_projections_create(&info, rks, rvs, &proj);
    free(rks), free(rvs);
    if (st != KQ_OK) return fail("projections");
    for (int l = 0; l < layers; ++l) {
      kq_projection_layer pl;
      if (kq_projections_layer(proj, l, &pl) != KQ_OK) return fail("projection layer");
      const float amp = 1.0f / sqrtf((float)d);
      for (size_t i = 0; i < (size_t)Hk * d * rk; ++i) {
        pl.key_down[i] = amp * bench_frand(&seed);
        pl.query_down[i] = amp * bench_frand(&seed);
      }
      for (size_t i = 0; i < (size_t)Hk * d * rv; ++i) {
        pl.value_down[i] = amp * bench_frand(&seed);
        pl.value_up[i] = amp * bench_frand(&seed);
      }
    }
  }
  return bench_filled_cache("bench_decode", dev, proj, cfg->storage, cfg->ctx, layers, Hk, d, &seed,
                            out_cache);
}

/* One timed step: one decode query in every layer. */
static int step(const bench_cfg *cfg, kq_cache *cache, int layers, const float *q, float *out,
                double *seconds) {
  double t0 = bench_now_seconds();
  for (int l = 0; l < layers; ++l)
    if (kq_cache_attend(cache, l, 1, q, cfg->output, out) != KQ_OK) return fail("attend");
  *seconds = bench_now_seconds() - t0;
  return 0;
}

/* Bytes per step: latent caches read + queries + outputs, every layer. */
static void figures(const bench_cfg *cfg, int rk, int rv, int layers, double sec,
                    bench_result *res) {
  const double elem = cfg->storage == KQ_STORAGE_F16 ? 2.0 : 4.0;
  const double out_per_head = cfg->output == KQ_OUTPUT_FULL ? cfg->dim : rv;
  double per_layer = (double)cfg->ctx * cfg->kv_heads * (rk + rv) * elem +
                     (double)cfg->heads * cfg->dim * 4.0 + (double)cfg->heads * out_per_head * 4.0;
  res->bytes = per_layer * layers;
  res->ms = 1e3 * sec;
  res->gbps = res->bytes / sec / 1e9;
  res->layers = layers;
}

int main(int argc, char **argv) {
  bench_cfg cfg = {.device = NULL,
                   .ctx = 32768,
                   .heads = 32,
                   .kv_heads = 8,
                   .dim = 128,
                   .rank_k = 64,
                   .rank_v = 64,
                   .layers = 0,
                   .steps = 5,
                   .copy_mib = 512,
                   .storage = KQ_STORAGE_F16,
                   .output = KQ_OUTPUT_FULL};
  for (int i = 1; i < argc; ++i) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int *num = NULL;
    if (!strcmp(a, "--json")) {
      cfg.json = 1;
      continue;
    }
    if (!v) return usage();
    if (!strcmp(a, "--device"))
      cfg.device = v;
    else if (!strcmp(a, "--storage")) {
      if (!strcmp(v, "f16"))
        cfg.storage = KQ_STORAGE_F16;
      else if (!strcmp(v, "f32"))
        cfg.storage = KQ_STORAGE_F32;
      else
        return usage();
    } else if (!strcmp(a, "--output")) {
      if (!strcmp(v, "full"))
        cfg.output = KQ_OUTPUT_FULL;
      else if (!strcmp(v, "latent"))
        cfg.output = KQ_OUTPUT_LATENT;
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
    else if (!strcmp(a, "--rank-k"))
      num = &cfg.rank_k;
    else if (!strcmp(a, "--rank-v"))
      num = &cfg.rank_v;
    else if (!strcmp(a, "--layers"))
      num = &cfg.layers;
    else if (!strcmp(a, "--steps"))
      num = &cfg.steps;
    else if (!strcmp(a, "--copy-mib"))
      num = &cfg.copy_mib;
    else
      return usage();
    if (num) {
      char *end;
      long x = strtol(v, &end, 10);
      if (*end || x < 0 || x > 1 << 28) return usage();
      *num = (int)x;
    }
    ++i;
  }
  if (cfg.ctx < 1 || cfg.heads < 1 || cfg.kv_heads < 1 || cfg.heads % cfg.kv_heads || cfg.dim < 2 ||
      cfg.rank_k < 1 || cfg.rank_k > cfg.dim || cfg.rank_v < 1 || cfg.rank_v > cfg.dim ||
      cfg.steps < 1 || cfg.copy_mib < 1)
    return usage();
  kq_device *dev = NULL;
  if (kq_device_create(cfg.device, &dev) != KQ_OK) return fail("device");
  kq_device_info info;
  if (kq_device_get_info(dev, &info) != KQ_OK) return fail("device info");

  /* Enough layers that the compressed caches exceed 4x the last-level cache. */
  int layers = cfg.layers;
  if (layers == 0) {
    long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l3 <= 0) l3 = 32L << 20;
    double per = (double)cfg.ctx * cfg.kv_heads * (cfg.rank_k + cfg.rank_v) *
                 (cfg.storage == KQ_STORAGE_F16 ? 2.0 : 4.0);
    layers = (int)ceil(4.0 * (double)l3 / per);
    if (layers < 2) layers = 2;
    /* ... but the full-attention baseline must fit in the device memory. */
    double both = (double)cfg.ctx * cfg.kv_heads * (2.0 * cfg.dim + cfg.rank_k + cfg.rank_v) *
                  (cfg.storage == KQ_STORAGE_F16 ? 2.0 : 4.0);
    int fit = (int)(0.75 * (double)info.memory_bytes / both);
    if (info.memory_bytes > 0 && layers > fit) {
      layers = fit < 1 ? 1 : fit;
      fprintf(stderr, "bench_decode: %d layers (both caches must fit in %.1f GiB)\n", layers,
              (double)info.memory_bytes / (1 << 30));
    }
  }
  double ceiling = 0;
  if (kq_device_copy_bandwidth(dev, (uint64_t)cfg.copy_mib << 20, 5, &ceiling) != KQ_OK)
    return fail("copy bandwidth");
  /* Both caches live side by side and the steps alternate, so that both
   * see the same machine state (thermal, other load). */
  kq_cache *ccomp = NULL, *cfull = NULL;
  if (build(&cfg, dev, cfg.rank_k, cfg.rank_v, layers, &ccomp)) return 1;
  if (build(&cfg, dev, cfg.dim, cfg.dim, layers, &cfull)) return 1;
  float *q = malloc((size_t)cfg.heads * cfg.dim * sizeof *q);
  float *out = malloc((size_t)cfg.heads * cfg.dim * sizeof *out);
  double *tc = calloc((size_t)cfg.steps + 1, sizeof *tc),
         *tf = calloc((size_t)cfg.steps + 1, sizeof *tf);
  if (!q || !out || !tc || !tf) return fail("host buffers");
  uint64_t seed = 99;
  for (size_t i = 0; i < (size_t)cfg.heads * cfg.dim; ++i) q[i] = bench_frand(&seed);
  for (int s = 0; s <= cfg.steps; ++s) /* step 0 is the warm-up */
    if (step(&cfg, ccomp, layers, q, out, &tc[s]) || step(&cfg, cfull, layers, q, out, &tf[s]))
      return 1;
  bench_result comp = {0}, full = {0};
  figures(&cfg, cfg.rank_k, cfg.rank_v, layers, kq_median(tc + 1, cfg.steps), &comp);
  figures(&cfg, cfg.dim, cfg.dim, layers, kq_median(tf + 1, cfg.steps), &full);
  free(q), free(out), free(tc), free(tf);
  kq_cache_destroy(ccomp);
  kq_cache_destroy(cfull);
  kq_device_destroy(dev);
  const double speedup = full.ms / comp.ms;
  const char *st = cfg.storage == KQ_STORAGE_F16 ? "f16" : "f32";
  if (cfg.json) {
    printf("{\"device\":\"%s\",\"description\":\"%s\",\"ctx\":%d,\"heads\":%d,\"kv_heads\":%d,"
           "\"dim\":%d,\"rank_k\":%d,\"rank_v\":%d,\"storage\":\"%s\",\"layers\":%d,"
           "\"steps\":%d,\"ceiling_gbps\":%.3f,"
           "\"compressed\":{\"ms\":%.4f,\"gbps\":%.3f,\"pct_of_ceiling\":%.2f},"
           "\"full\":{\"ms\":%.4f,\"gbps\":%.3f,\"pct_of_ceiling\":%.2f},\"speedup\":%.3f}\n",
           info.name, info.description, cfg.ctx, cfg.heads, cfg.kv_heads, cfg.dim, cfg.rank_k,
           cfg.rank_v, st, layers, cfg.steps, ceiling, comp.ms, comp.gbps,
           100 * comp.gbps / ceiling, full.ms, full.gbps, 100 * full.gbps / ceiling, speedup);
    return 0;
  }
  printf("device %s (%s)\n", info.name, info.description);
  printf("decode ctx %d, H %d, Hk %d, d %d, %s, %d layers per step, median of %d steps\n", cfg.ctx,
         cfg.heads, cfg.kv_heads, cfg.dim, st, layers, cfg.steps);
  printf("copy ceiling                 %9.2f GB/s\n", ceiling);
  printf("compressed r_k=%-3d r_v=%-3d   %9.3f ms/step %8.2f GB/s %6.1f%% of ceiling\n", cfg.rank_k,
         cfg.rank_v, comp.ms, comp.gbps, 100 * comp.gbps / ceiling);
  printf("full       rank %-3d          %9.3f ms/step %8.2f GB/s %6.1f%% of ceiling\n", cfg.dim,
         full.ms, full.gbps, 100 * full.gbps / ceiling);
  printf("speedup                      %9.2fx\n", speedup);
  return 0;
}
