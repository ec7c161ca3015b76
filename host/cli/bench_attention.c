/*
 * bench_attention.c — timing of compressed attention on one device, as a
 * model runs it (SPEC §5): a cache of L layers whose latents together cover
 * several times the last-level cache, each layer filled to the context by
 * append, and one timed decode step = one attend on every layer. Prefill
 * (m = 512, compute-bound) times one layer per repetition, cycling through
 * the layers so that each read starts cold as well. The ranks of one case
 * are timed in alternation, so that load changes on a shared machine hit
 * full and compressed attention alike.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "cli_util.h"
#include "common/kq_common.h"
#include "kqsvd_backend.h"

/* Deterministic values in [-amp/2, amp/2). */
static void fill_random(float *x, size_t n, uint64_t *state, float amp) {
  for (size_t i = 0; i < n; i++) {
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    x[i] = amp * ((float)(*state >> 40) / (float)(1u << 24) - 0.5f);
  }
}

kq_status kq_bench_device_prepare(kq_bench_device_ctx *ctx, int32_t copy_reps) {
  kq_status st = kq_device_get_info(ctx->device, &ctx->info);
  if (st) return st;
  uint64_t llc = kq_bench_llc_bytes();
  bool cpu_like = ctx->info.type == KQ_DEVICE_TYPE_CPU;
  ctx->target_bytes = cpu_like ? 4 * llc : (uint64_t)1 << 30;
  uint64_t mem = ctx->info.memory_bytes ? ctx->info.memory_bytes : (uint64_t)8 << 30;
  ctx->budget_bytes = mem / 4;
  if (ctx->budget_bytes > ((uint64_t)4 << 30)) ctx->budget_bytes = (uint64_t)4 << 30;
  /* The copy moves 2x its size; make one buffer several times the LLC. */
  uint64_t copy = cpu_like ? 4 * llc : (uint64_t)256 << 20;
  if (copy < ((uint64_t)64 << 20)) copy = (uint64_t)64 << 20;
  if (ctx->info.max_buffer_bytes && copy > ctx->info.max_buffer_bytes)
    copy = ctx->info.max_buffer_bytes;
  if (copy > mem / 8) copy = mem / 8;
  ctx->copy_bytes = copy;
  return kq_device_copy_bandwidth(ctx->device, copy, copy_reps, &ctx->ceiling_gbps);
}

static double elem_bytes(kq_storage s) {
  return s == KQ_STORAGE_F16 ? 2.0 : 4.0;
}

/* Bytes per token of one group's side (SPEC §1b: a quantized segment
 * stores its data plus one F16 scale; float segments in F16). */
static int32_t side_bytes(const kq_segment *segs, int32_t n) {
  int32_t bytes = 0;
  for (int32_t i = 0; i < n; i++)
    bytes += (int32_t)kq_segment_row_bytes(segs[i], KQ_STORAGE_F16) +
             (segs[i].bits == KQ_SEG_FLOAT ? 0 : 2);
  return bytes;
}

static int32_t side_rank(const kq_segment *segs, int32_t n) {
  int32_t r = 0;
  for (int32_t i = 0; i < n; i++) r += segs[i].width;
  return r;
}

/* Shrinks the last segment of a side by 2 dims (drops it when empty). */
static void shrink_side(kq_segment *segs, int32_t *n) {
  kq_segment *last = &segs[*n - 1];
  last->width -= 2;
  if (last->width <= 0) (*n)--;
}

bool kq_bench_budget_segments(double budget, int32_t width, kq_segment *keys, int32_t *n_keys,
                              int32_t *rank_k, kq_segment *values, int32_t *n_values,
                              int32_t *rank_v) {
  int32_t w = width, nk = 0, nv = 0;
#define KSEG(n, b) (keys[nk++] = (kq_segment){(n), (b)})
#define VSEG(n, b) (values[nv++] = (kq_segment){(n), (b)})
  if (budget >= 0.375) {
    KSEG(w / 8, KQ_SEG_FLOAT), KSEG(w / 4, KQ_SEG_Q8), KSEG(2 * (w / 4), KQ_SEG_Q4);
    VSEG(w / 4, KQ_SEG_Q8), VSEG(2 * (w / 4), KQ_SEG_Q4);
  } else if (budget >= 0.28) {
    KSEG(w / 16, KQ_SEG_FLOAT), KSEG(w / 4, KQ_SEG_Q8), KSEG(2 * (w / 4), KQ_SEG_Q4);
    VSEG(w / 8, KQ_SEG_Q8), VSEG(2 * (w / 4), KQ_SEG_Q4);
  } else if (budget >= 0.25) {
    KSEG(w / 4, KQ_SEG_Q8), KSEG(2 * (w / 4), KQ_SEG_Q4);
    VSEG(w / 8, KQ_SEG_Q8), VSEG(2 * (w / 4), KQ_SEG_Q4);
  } else {
    KSEG(w / 8, KQ_SEG_Q8), KSEG(2 * (w / 4), KQ_SEG_Q4);
    VSEG(2 * (w / 4), KQ_SEG_Q4);
  }
#undef KSEG
#undef VSEG
  for (int32_t i = 0; i < nk; i++)
    if (keys[i].width < 1) return false;
  for (int32_t i = 0; i < nv; i++)
    if (values[i].width < 1) return false;
  /* A full F16 group stores 2 bytes per dim for keys and values. */
  double full = 4.0 * w;
  while (nk > 0 && nv > 0 && side_bytes(keys, nk) + side_bytes(values, nv) > budget * full) {
    if (side_bytes(keys, nk) >= side_bytes(values, nv))
      shrink_side(keys, &nk);
    else
      shrink_side(values, &nv);
  }
  if (nk == 0 || nv == 0) return false;
  *n_keys = nk, *n_values = nv;
  *rank_k = side_rank(keys, nk), *rank_v = side_rank(values, nv);
  return true;
}

/* The recipe of a budget configuration (see kq_bench_budget_segments). */
typedef struct budget_recipe {
  kq_segment keys[KQ_MAX_SEGMENTS], values[KQ_MAX_SEGMENTS];
  int32_t n_keys, n_values, rank_k, rank_v, groups, width;
} budget_recipe;

static bool budget_recipe_of(const kq_bench_attn_config *cfg, budget_recipe *r) {
  bool joint = cfg->layout == KQ_LAYOUT_JOINT;
  r->groups = joint ? 1 : cfg->kv_heads;
  r->width = joint ? cfg->kv_heads * cfg->head_dim : cfg->head_dim;
  return kq_bench_budget_segments(cfg->bytes_budget, r->width, r->keys, &r->n_keys, &r->rank_k,
                                  r->values, &r->n_values, &r->rank_v);
}

/* Latent bytes of one layer holding `tokens` tokens (SPEC §1b / §5: the
 * true bytes, quantized data plus scales). */
static double layer_latent_bytes(const kq_bench_attn_config *cfg, int32_t tokens) {
  budget_recipe br;
  if (cfg->bytes_budget > 0 && budget_recipe_of(cfg, &br))
    return (double)br.groups * tokens *
           (side_bytes(br.keys, br.n_keys) + side_bytes(br.values, br.n_values));
  return (double)cfg->kv_heads * tokens * 2.0 * cfg->rank * elem_bytes(cfg->storage);
}

/* SPEC §5 bytes of one attend over `tokens` cached tokens with m queries:
 * the latent cache read once, plus queries and full outputs (float32). */
static double attend_bytes(const kq_bench_attn_config *cfg, int32_t tokens, int32_t m) {
  return layer_latent_bytes(cfg, tokens) + 2.0 * m * cfg->heads * cfg->head_dim * 4.0;
}

/* Bytes of one layer's A, B, C, E (float32). */
static double projection_bytes(const kq_bench_attn_config *cfg) {
  budget_recipe br = {
      .rank_k = cfg->rank, .rank_v = cfg->rank, .groups = cfg->kv_heads, .width = cfg->head_dim};
  if (cfg->bytes_budget > 0 && !budget_recipe_of(cfg, &br)) return 0.0;
  return 2.0 * 4.0 * br.groups * br.width * (br.rank_k + br.rank_v);
}

/* Projections of L layers: identity for rank == head_dim, else random
 * matrices (values do not matter for timing); a budget configuration gets
 * its recipe's ranks, layout and segments on every layer. */
static kq_status make_projections(const kq_bench_attn_config *cfg, int32_t layers,
                                  kq_projections **out) {
  bool budget = cfg->bytes_budget > 0;
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = layers,
                              .n_heads = cfg->heads,
                              .n_kv_heads = cfg->kv_heads,
                              .head_dim = cfg->head_dim,
                              .rope = cfg->rope,
                              .rope_layout = KQ_ROPE_HALVES,
                              .rope_theta = 500000.0f,
                              .layout = budget ? cfg->layout : KQ_LAYOUT_PER_HEAD};
  if (!budget && cfg->rank == cfg->head_dim) return kq_projections_create_identity(&info, out);
  budget_recipe br = {
      .rank_k = cfg->rank, .rank_v = cfg->rank, .groups = cfg->kv_heads, .width = cfg->head_dim};
  if (budget && !budget_recipe_of(cfg, &br))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "bench: no recipe fits bytes %g at width %d",
                        cfg->bytes_budget, (int)br.width);
  int32_t *ranks = kq_calloc_array((size_t)layers * 2, sizeof *ranks, "bench ranks");
  if (!ranks) return KQ_ERR_OUT_OF_MEMORY;
  for (int32_t l = 0; l < layers; l++) ranks[l] = br.rank_k, ranks[layers + l] = br.rank_v;
  kq_status st = kq_projections_create(&info, ranks, ranks + layers, out);
  free(ranks);
  if (st) return st;
  uint64_t seed = 0x6b71737664ull;
  size_t nk = (size_t)br.groups * br.width * br.rank_k,
         nv = (size_t)br.groups * br.width * br.rank_v;
  float amp = 2.0f / sqrtf((float)br.width);
  for (int32_t l = 0; l < layers && st == KQ_OK; l++) {
    kq_projection_layer L;
    st = kq_projections_layer(*out, l, &L);
    if (st) break;
    fill_random(L.key_down, nk, &seed, amp);
    fill_random(L.query_down, nk, &seed, amp);
    fill_random(L.value_down, nv, &seed, amp);
    fill_random(L.value_up, nv, &seed, amp);
    if (budget) {
      st = kq_projections_set_segments(*out, l, KQ_SIDE_KEYS, br.n_keys, br.keys);
      if (st == KQ_OK)
        st = kq_projections_set_segments(*out, l, KQ_SIDE_VALUES, br.n_values, br.values);
    }
  }
  /* The library's count of the true bytes must be the one timed here. */
  if (st == KQ_OK && budget &&
      (double)kq_projections_layer_bytes(*out, 0, cfg->storage) != layer_latent_bytes(cfg, 1))
    st = kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                      "bench: bytes %g: the library counts %llu bytes per token and layer, the "
                      "bench %.0f",
                      cfg->bytes_budget,
                      (unsigned long long)kq_projections_layer_bytes(*out, 0, cfg->storage),
                      layer_latent_bytes(cfg, 1));
  if (st) kq_projections_destroy(*out), *out = NULL;
  return st;
}

/* Buffers shared by a run: one block of keys/values, queries, outputs. */
typedef struct bench_buffers {
  float *kv, *q, *out;
  int32_t block;
} bench_buffers;

static void buffers_free(bench_buffers *b) {
  free(b->kv), free(b->q), free(b->out);
  memset(b, 0, sizeof *b);
}

static kq_status buffers_alloc(const kq_bench_attn_config *cfg, int32_t m, bench_buffers *b) {
  memset(b, 0, sizeof *b);
  b->block = 1024;
  size_t kv = (size_t)b->block * cfg->kv_heads * cfg->head_dim;
  size_t q = (size_t)m * cfg->heads * cfg->head_dim;
  b->kv = kq_calloc_array(kv, sizeof(float), "bench keys");
  b->q = kq_calloc_array(q, sizeof(float), "bench queries");
  b->out = kq_calloc_array(q, sizeof(float), "bench outputs");
  if (!b->kv || !b->q || !b->out) {
    buffers_free(b);
    return KQ_ERR_OUT_OF_MEMORY;
  }
  uint64_t seed = 12345;
  fill_random(b->kv, kv, &seed, 2.0f);
  fill_random(b->q, q, &seed, 2.0f);
  return KQ_OK;
}

static kq_status fill_layer(kq_cache *cache, int32_t layer, int32_t tokens, const bench_buffers *b,
                            const volatile int *cancel) {
  for (int32_t t = 0; t < tokens; t += b->block) {
    if (cancel && *cancel) {
      return kq_set_error(KQ_ERR_INTERRUPTED, "bench: interrupted");
    }
    int32_t n = tokens - t < b->block ? tokens - t : b->block;
    kq_status st = kq_cache_append(cache, layer, n, b->kv, b->kv);
    if (st) return st;
  }
  return KQ_OK;
}

static const char *storage_name(kq_storage s) {
  return s == KQ_STORAGE_F16 ? "f16" : "f32";
}
static const char *rope_name(kq_rope_mode r) {
  return r == KQ_ROPE_PRE ? "pre" : r == KQ_ROPE_POST ? "post" : "none";
}

/* A result of `ctx`'s device with the ceiling measured at the start;
 * kq_bench_report_ceilings replaces it with the run-wide one at the end.
 * proj: the configuration's projections (ranks, layout, bytes fraction). */
static void result_init(const kq_bench_device_ctx *ctx, const kq_bench_attn_config *cfg,
                        const kq_projections *proj, const char *op, int32_t context, int32_t m,
                        double seconds, kq_bench_result *r) {
  double ceiling = ctx->ceiling_gbps;
  memset(r, 0, sizeof *r);
  snprintf(r->device, sizeof r->device, "%s", ctx->info.name);
  snprintf(r->op, sizeof r->op, "%s", op);
  r->context = context;
  r->heads = cfg->heads, r->kv_heads = cfg->kv_heads, r->head_dim = cfg->head_dim;
  r->rank_k = r->rank_v = cfg->rank;
  kq_projection_layer L;
  if (kq_projections_layer((kq_projections *)proj, 0, &L) == KQ_OK)
    r->rank_k = L.rank_k, r->rank_v = L.rank_v;
  kq_projections_info info;
  r->layout = kq_projections_get_info(proj, &info) == KQ_OK ? kq_layout_name(info.layout) : NULL;
  r->bytes_fraction = kq_projections_fraction_of_f16(proj, cfg->storage);
  r->bytes_budget = cfg->bytes_budget > 0 ? cfg->bytes_budget : NAN;
  r->storage = storage_name(cfg->storage);
  r->rope = rope_name(cfg->rope);
  r->seconds = seconds;
  r->tokens_per_s = m / seconds;
  r->bytes = attend_bytes(cfg, context, m);
  r->gbps = r->bytes / seconds / 1e9;
  r->ceiling_gbps = ceiling;
  r->pct_of_ceiling = 100.0 * r->gbps / ceiling;
  r->speedup_vs_full = NAN;
}

static bool skippable(kq_status st) {
  return st == KQ_ERR_DEVICE_MEMORY || st == KQ_ERR_OUT_OF_MEMORY || st == KQ_ERR_UNSUPPORTED ||
         st == KQ_ERR_CAPACITY;
}

/* One rank of a group: its cache and timings. */
typedef struct bench_member {
  const kq_bench_attn_config *cfg;
  kq_projections *proj;
  kq_cache *cache; /* NULL: skipped */
  int32_t layers;
  double *decode_t, *prefill_t;
} bench_member;

static void member_free(bench_member *m) {
  kq_cache_destroy(m->cache);
  kq_projections_destroy(m->proj);
  free(m->decode_t), free(m->prefill_t);
  memset(m, 0, sizeof *m);
}

/* A short name of a configuration for notes: "rank 64" or "bytes 0.28
 * joint". */
static void config_label(const kq_bench_attn_config *cfg, char *buf, size_t size) {
  if (cfg->bytes_budget > 0)
    snprintf(buf, size, "bytes %g %s", cfg->bytes_budget, kq_layout_name(cfg->layout));
  else
    snprintf(buf, size, "rank %d", (int)cfg->rank);
}

/* Leaves a member out with a note (status st: does not fit, unsupported). */
static kq_status member_skip(const kq_bench_device_ctx *ctx, bench_member *m, kq_status st,
                             kq_bench_report *rep) {
  const kq_bench_attn_config *cfg = m->cfg;
  char label[64];
  config_label(cfg, label, sizeof label);
  kq_bench_report_note(rep, "%s: context %d H %d d %d %s %s %s skipped: %s: %s", ctx->info.name,
                       cfg->context, cfg->heads, cfg->head_dim, label, storage_name(cfg->storage),
                       rope_name(cfg->rope), kq_status_string(st), kq_last_error());
  kq_cache_destroy(m->cache);
  m->cache = NULL;
  return KQ_OK;
}

/* Creates and fills the cache of one member; a configuration that does not
 * fit, or that the device does not support, leaves m->cache NULL with a
 * note and returns KQ_OK. */
static kq_status member_build(const kq_bench_device_ctx *ctx, bench_member *m,
                              const bench_buffers *b, kq_bench_report *rep) {
  const kq_bench_attn_config *cfg = m->cfg;
  double per_layer = layer_latent_bytes(cfg, cfg->context);
  if (per_layer > (double)ctx->budget_bytes ||
      (ctx->info.max_buffer_bytes && per_layer > (double)ctx->info.max_buffer_bytes)) {
    char label[64];
    config_label(cfg, label, sizeof label);
    kq_bench_report_note(rep,
                         "%s: context %d H %d Hk %d d %d %s %s skipped: one layer's latents "
                         "(%.0f MiB) exceed the memory budget (%.0f MiB) or largest buffer",
                         ctx->info.name, cfg->context, cfg->heads, cfg->kv_heads, cfg->head_dim,
                         label, storage_name(cfg->storage), per_layer / 1048576.0,
                         (double)ctx->budget_bytes / 1048576.0);
    return KQ_OK;
  }
  /* The host and device copies of the projections count against the memory
   * budget too (joint ones are Hk² times larger than per-head ones). */
  double want = ceil((double)ctx->target_bytes / per_layer);
  double fit = floor((double)ctx->budget_bytes / (per_layer + projection_bytes(cfg)));
  int32_t layers = (int32_t)fmin(fmin(want, fit), 4096.0);
  if (layers < 1) layers = 1;
  if (cfg->prefill && layers < cfg->prefill_reps && cfg->prefill_reps <= 64 &&
      per_layer * cfg->prefill_reps <= (double)ctx->budget_bytes)
    layers = cfg->prefill_reps; /* every timed prefill reads a layer not read before */
  m->layers = layers;
  m->decode_t = kq_calloc_array((size_t)cfg->decode_reps, sizeof(double), "bench times");
  m->prefill_t = kq_calloc_array((size_t)cfg->prefill_reps, sizeof(double), "bench times");
  if (!m->decode_t || !m->prefill_t) return KQ_ERR_OUT_OF_MEMORY;
  kq_status st = make_projections(cfg, layers, &m->proj);
  if (st == KQ_OK) {
    kq_cache_params p = kq_cache_default_params();
    p.storage = cfg->storage;
    p.capacity = cfg->context;
    st = kq_cache_create(ctx->device, m->proj, &p, &m->cache);
  }
  if (skippable(st)) return member_skip(ctx, m, st, rep);
  if (st) return st;
  char label[64];
  config_label(cfg, label, sizeof label);
  if (cfg->bytes_budget > 0) {
    kq_projection_layer L;
    if (kq_projections_layer(m->proj, 0, &L) == KQ_OK)
      snprintf(label + strlen(label), sizeof label - strlen(label), " (ranks %d/%d, %.3f of F16)",
               (int)L.rank_k, (int)L.rank_v, kq_projections_fraction_of_f16(m->proj, cfg->storage));
  }
  kq_cli_note("bench", "[%d/%d] %s %s ctx %d H %d/%d d %d %s %s %s: %d layers (%.0f MiB)",
              cfg->index, cfg->total, ctx->info.name,
              cfg->bytes_budget <= 0 && cfg->rank == cfg->head_dim ? "full" : "compressed",
              cfg->context, cfg->heads, cfg->kv_heads, cfg->head_dim, label,
              storage_name(cfg->storage), rope_name(cfg->rope), layers,
              per_layer * layers / 1048576.0);
  /* Layer 0 first, with one attend: a device without the kernels of a
   * budget configuration (quantized segments, joint) says so here. */
  st = fill_layer(m->cache, 0, cfg->context, b, ctx->cancel);
  if (st == KQ_OK) st = kq_cache_attend(m->cache, 0, 1, b->q, KQ_OUTPUT_FULL, b->out);
  if (st == KQ_ERR_UNSUPPORTED) return member_skip(ctx, m, st, rep);
  for (int32_t l = 1; l < layers && st == KQ_OK; l++)
    st = fill_layer(m->cache, l, cfg->context, b, ctx->cancel);
  return st;
}

/* One decode step (an attend on every layer) or one prefill attend (on
 * layer `step` mod L; the warm-up step -1 uses the last layer filled). */
static kq_status member_step(bench_member *m, bool prefill, int32_t step, const bench_buffers *b) {
  double t0 = kq_now_seconds();
  kq_status st = KQ_OK;
  if (prefill) {
    int32_t layer = step < 0 ? m->layers - 1 : step % m->layers;
    st = kq_cache_attend(m->cache, layer, KQ_BENCH_PREFILL_M, b->q, KQ_OUTPUT_FULL, b->out);
    if (step >= 0) m->prefill_t[step] = kq_now_seconds() - t0;
  } else {
    for (int32_t l = 0; l < m->layers && st == KQ_OK; l++)
      st = kq_cache_attend(m->cache, l, 1, b->q, KQ_OUTPUT_FULL, b->out);
    if (step >= 0) m->decode_t[step] = (kq_now_seconds() - t0) / m->layers;
  }
  return st;
}

/* One copy-ceiling sample right after a round of timed steps (SPEC §5: the
 * ceiling of the same run, on the same device), so that the ceiling sees
 * the machine's load of the moments the steps saw, not one moment at the
 * start of the run. */
static kq_status ceiling_sample(const kq_bench_device_ctx *ctx, kq_bench_report *rep) {
  if (!ctx->copy_bytes) return KQ_OK;
  double gbps = 0.0;
  kq_status st = kq_device_copy_bandwidth(ctx->device, ctx->copy_bytes, 1, &gbps);
  if (st == KQ_OK && gbps > 0.0 && !kq_bench_report_ceiling_sample(rep, ctx->info.name, gbps))
    st = KQ_ERR_OUT_OF_MEMORY;
  return st;
}

kq_status kq_bench_attention(const kq_bench_device_ctx *ctx, const kq_bench_attn_config *cfgs,
                             int n, kq_bench_report *rep) {
  if (n < 1 || n > 8) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "bench: %d ranks in a group", n);
  const kq_bench_attn_config *c0 = &cfgs[0];
  bench_member mem[8];
  memset(mem, 0, sizeof mem);
  bench_buffers b;
  kq_status st = buffers_alloc(c0, c0->prefill ? KQ_BENCH_PREFILL_M : 1, &b);
  if (st) return st;
  for (int i = 0; i < n && st == KQ_OK; i++) {
    mem[i].cfg = &cfgs[i];
    st = member_build(ctx, &mem[i], &b, rep);
  }
  /* Steps of the ranks alternate, so that a change of machine load hits all
   * of them alike. */
  for (int pass = 0; pass < 2 && st == KQ_OK; pass++) {
    bool prefill = pass == 1;
    if (prefill ? !(c0->prefill && c0->context >= KQ_BENCH_PREFILL_M) : !c0->decode) continue;
    int32_t reps = prefill ? c0->prefill_reps : c0->decode_reps;
    for (int32_t s = -1; s < reps && st == KQ_OK; s++) {
      if (ctx->cancel && *ctx->cancel) st = kq_set_error(KQ_ERR_INTERRUPTED, "bench: interrupted");
      for (int i = 0; i < n && st == KQ_OK; i++)
        if (mem[i].cache) st = member_step(&mem[i], prefill, s, &b);
      if (s >= 0 && st == KQ_OK) st = ceiling_sample(ctx, rep);
    }
    for (int i = 0; i < n && st == KQ_OK; i++) {
      if (!mem[i].cache) continue;
      double sec = kq_median(prefill ? mem[i].prefill_t : mem[i].decode_t, reps);
      int32_t m = prefill ? KQ_BENCH_PREFILL_M : 1;
      kq_bench_result r;
      result_init(ctx, mem[i].cfg, mem[i].proj, prefill ? "prefill" : "decode", c0->context, m, sec,
                  &r);
      if (!kq_bench_report_add(rep, &r)) st = KQ_ERR_OUT_OF_MEMORY;
    }
  }
  for (int i = 0; i < n; i++) member_free(&mem[i]);
  buffers_free(&b);
  return st;
}

kq_status kq_bench_overhead(const kq_bench_device_ctx *ctx, const kq_bench_attn_config *cfg,
                            int32_t calls, kq_bench_report *rep) {
  kq_projections *proj = NULL;
  kq_cache *cache = NULL;
  bench_buffers b;
  kq_status st = buffers_alloc(cfg, 1, &b);
  if (st) return st;
  double *t = kq_calloc_array((size_t)calls, sizeof *t, "bench times");
  if (!t) st = KQ_ERR_OUT_OF_MEMORY;
  if (st == KQ_OK) st = make_projections(cfg, 1, &proj);
  if (st == KQ_OK) {
    kq_cache_params p = kq_cache_default_params();
    p.storage = cfg->storage;
    p.capacity = 16;
    st = kq_cache_create(ctx->device, proj, &p, &cache);
  }
  if (skippable(st)) {
    kq_bench_report_note(rep, "%s: overhead rank %d %s skipped: %s: %s", ctx->info.name, cfg->rank,
                         storage_name(cfg->storage), kq_status_string(st), kq_last_error());
    st = KQ_OK;
    goto done;
  }
  if (st == KQ_OK) st = kq_cache_append(cache, 0, 1, b.kv, b.kv);
  for (int32_t i = -3; i < calls && st == KQ_OK; i++) { /* three warm-up calls */
    double t0 = kq_now_seconds();
    st = kq_cache_attend(cache, 0, 1, b.q, KQ_OUTPUT_FULL, b.out);
    if (i >= 0) t[i] = kq_now_seconds() - t0;
  }
  if (st == KQ_OK) {
    kq_bench_result r;
    result_init(ctx, cfg, proj, "overhead", 1, 1, kq_median(t, calls), &r);
    if (!kq_bench_report_add(rep, &r)) st = KQ_ERR_OUT_OF_MEMORY;
  }
done:
  free(t);
  kq_cache_destroy(cache);
  kq_projections_destroy(proj);
  buffers_free(&b);
  return st;
}
