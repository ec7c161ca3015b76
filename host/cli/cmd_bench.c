/*
 * cmd_bench.c — `kqsvd bench`: compressed against full attention on every
 * device (decode, prefill, per-call overhead) with the device's own copy
 * ceiling, and the host fitting steps. Options and the run plan live here;
 * the measurements in bench_attention.c / bench_fit.c, output in
 * bench_report.c / bench_svg.c.
 */
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "cli_util.h"
#include "commands.h"
#include "kq_output_file.h"

#define CMD "bench"
#define MAX_CONTEXTS 16
#define MAX_BUDGETS 4

static void usage(FILE *out) {
  fprintf(
      out,
      "usage: kqsvd bench [--device NAME|all] [--op decode|prefill|fit|all] [--json]\n"
      "                   [--quick] [--context LIST] [--bytes LIST] [--reps N] [--svg FILE]\n\n"
      "Measures compressed attention against full attention (identity projections,\n"
      "rank d) on a device, as a model runs it (SPEC section 5): each timed decode step\n"
      "attends once on every layer of a cache whose latents total 4x the CPU's\n"
      "last-level cache (1 GiB on GPUs); prefill (m = 512 queries) times one layer per\n"
      "repetition, cycling through the layers. Medians after a warm-up.\n\n"
      "Grid: shapes H/Hk/d 32/8/128 (Llama-3-8B-like) and 9/3/64 (SmolLM2-like); ranks\n"
      "d, d/2, d/4; storage f32 and f16; RoPE post and pre; decode contexts 1k 4k 16k\n"
      "32k 64k (64k only where memory allows), prefill contexts 1k 4k. Transform-coded\n"
      "caches (SPEC section 1b) at byte budgets 0.375 0.28 0.25 0.19 of a full F16\n"
      "cache, per-head and joint, F16, RoPE post, decode: keys | values segments, as\n"
      "fractions of the latent width w (d per head, Hk*d joint), F16/q8/q4:\n"
      "  0.375: [F16 w/8, q8 w/4, q4 w/2] | [q8 w/4, q4 w/2]\n"
      "  0.28:  [F16 w/16, q8 w/4, q4 w/2] | [q8 w/8, q4 w/2]\n"
      "  0.25:  [q8 w/4, q4 w/2] | [q8 w/8, q4 w/2]\n"
      "  0.19:  [q8 w/8, q4 w/2] | [q4 w/2]\n"
      "shrunk by 2 dims at a time until the bytes (scales included) fit; the fraction\n"
      "reached is printed and recorded (bytes_fraction). Also: attend at\n"
      "context 1 (per-call overhead, op \"overhead\"), the device's copy bandwidth\n"
      "(ceiling), and the host fitting steps: Jacobi SVD n = 128, 256 (op \"svd\"), R\n"
      "factor of 65536 x 128 F16 (op \"rfactor\"), kq_fit of one synthetic layer (op\n"
      "\"fit\").\n\n"
      "options:\n"
      "  --device NAME|all  device to measure (default: KQSVD_DEVICE or cpu); all = every device\n"
      "  --op OP            decode, prefill, fit or all (default all; decode includes overhead)\n"
      "  -c, --context LIST comma-separated contexts (1024 or 1k), for decode and prefill\n"
      "  --bytes LIST       comma-separated byte budgets in (0, 1] (at most 4) for the\n"
      "                     transform-coded rows, or none (default: all four; --quick: 0.28)\n"
      "  --reps N           timed repetitions (default 7 decode, 3 prefill, 5 fitting)\n"
      "  --quick            small subset: contexts 1k 4k, Llama shape, f16, post, ranks d, d/2,\n"
      "                     bytes 0.28 per-head\n"
      "  --json             print {\"machine\": {...}, \"results\": [...]} instead of a table\n"
      "  --svg FILE         write a chart of decode speedup and %% of ceiling against context\n"
      "  -q, --quiet        no progress lines, only errors and the results\n"
      "  -v, --verbose      more detail\n"
      "  -h, --help         this text\n\n"
      "JSON records: device, op (decode, prefill, overhead, svd, rfactor, fit), context,\n"
      "heads, kv_heads, head_dim, rank_k, rank_v, storage, rope, seconds (per layer-attend,\n"
      "or per call), tokens_per_s (query tokens; rows for rfactor/fit), bytes (latent cache\n"
      "read + queries + outputs), gbps, ceiling_gbps, pct_of_ceiling, speedup_vs_full,\n"
      "bytes_fraction (latent bytes per token over a full F16 cache's), bytes_budget\n"
      "(transform-coded rows; else null), layout (per-head, joint). Latent bytes are\n"
      "the true bytes: quantized data plus F16 scales. Fitting records run on device\n"
      "\"host\": context = rows, head_dim = columns, null where a field does not apply.\n"
      "machine.notes lists skipped configurations, including those a device does not\n"
      "support (quantized segments or the joint layout: KQ_ERR_UNSUPPORTED).\n"
      "machine.cpu is the CPU model (/proc/cpuinfo); machine.devices[].driver names the\n"
      "code path (cpu: the kernel set's ISA and the quantized path, f32 or int16; the\n"
      "text output prints it on the device line), so figures of different machines\n"
      "or paths are not mixed up.\n\n"
      "exit status: 0 success, 1 failure, 2 usage error\n");
}

typedef struct bench_options {
  const char *device, *svg;
  bool json, quick, decode, prefill, fit;
  int32_t contexts[MAX_CONTEXTS];
  int n_contexts;
  double budgets[MAX_BUDGETS];
  int n_budgets;    /* with budgets_set: the --bytes list (0 for none) */
  bool budgets_set; /* --bytes given */
  int32_t reps;
} bench_options;

static bool parse_contexts(const char *text, bench_options *o) {
  char buf[256];
  if (strlen(text) >= sizeof buf || !kq_cli_list_well_formed(text)) {
    kq_cli_usage_error(CMD, "--context: expected a comma-separated list like 1k,4k,32768");
    return false;
  }
  snprintf(buf, sizeof buf, "%s", text);
  o->n_contexts = 0;
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    if (o->n_contexts == MAX_CONTEXTS) {
      kq_cli_usage_error(CMD, "--context: at most %d values", MAX_CONTEXTS);
      return false;
    }
    size_t len = strlen(tok);
    long long mult = 1, v;
    if (len > 1 && (tok[len - 1] == 'k' || tok[len - 1] == 'K')) tok[len - 1] = '\0', mult = 1024;
    if (!kq_cli_parse_int(CMD, "--context", tok, 1, (1 << 20) / mult, &v)) return false;
    o->contexts[o->n_contexts++] = (int32_t)(v * mult);
  }
  return true;
}

static bool parse_budgets(const char *text, bench_options *o) {
  char buf[256];
  o->budgets_set = true;
  o->n_budgets = 0;
  if (strcmp(text, "none") == 0) return true;
  if (strlen(text) >= sizeof buf || !kq_cli_list_well_formed(text)) {
    kq_cli_usage_error(CMD, "--bytes: expected a comma-separated list like 0.28,0.19, or none");
    return false;
  }
  snprintf(buf, sizeof buf, "%s", text);
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    if (o->n_budgets == MAX_BUDGETS) {
      kq_cli_usage_error(CMD, "--bytes: at most %d values", MAX_BUDGETS);
      return false;
    }
    double v;
    if (!kq_cli_parse_double(CMD, "--bytes", tok, 1e-3, 1.0, &v)) return false;
    o->budgets[o->n_budgets++] = v;
  }
  return true;
}

/* Returns 0 to run, 1 when help was printed, 2 on a usage error. */
static int parse_options(int argc, char **argv, bench_options *o) {
  memset(o, 0, sizeof *o);
  o->decode = o->prefill = o->fit = true;
  enum { OPT_JSON = 256, OPT_QUICK, OPT_DEVICE, OPT_SVG, OPT_OP, OPT_REPS, OPT_BYTES };
  static const struct option options[] = {{"json", no_argument, NULL, OPT_JSON},
                                          {"quick", no_argument, NULL, OPT_QUICK},
                                          {"device", required_argument, NULL, OPT_DEVICE},
                                          {"svg", required_argument, NULL, OPT_SVG},
                                          {"op", required_argument, NULL, OPT_OP},
                                          {"context", required_argument, NULL, 'c'},
                                          {"reps", required_argument, NULL, OPT_REPS},
                                          {"bytes", required_argument, NULL, OPT_BYTES},
                                          KQ_CLI_COMMON_LONG,
                                          {NULL, 0, NULL, 0}};
  int c;
  long long n;
  kq_cli_getopt_begin();
  while ((c = kq_cli_getopt(CMD, argc, argv, KQ_CLI_COMMON_SHORT "c:", options)) != -1) {
    const char *v = optarg;
    switch (c) {
    case 'h': usage(stdout); return 1;
    case OPT_JSON: o->json = true; break;
    case OPT_QUICK: o->quick = true; break;
    case OPT_DEVICE: o->device = v; break;
    case OPT_SVG: o->svg = v; break;
    case OPT_OP: {
      bool all = strcmp(v, "all") == 0;
      o->decode = all || strcmp(v, "decode") == 0;
      o->prefill = all || strcmp(v, "prefill") == 0;
      o->fit = all || strcmp(v, "fit") == 0;
      if (!o->decode && !o->prefill && !o->fit)
        return kq_cli_usage_error(CMD, "--op: expected decode, prefill, fit or all, got '%s'", v);
      break;
    }
    case 'c':
      if (!parse_contexts(v, o)) return 2;
      break;
    case OPT_BYTES:
      if (!parse_budgets(v, o)) return 2;
      break;
    case OPT_REPS:
      if (!kq_cli_parse_int(CMD, "--reps", v, 1, 1000, &n)) return 2;
      o->reps = (int32_t)n;
      break;
    default: return 2;
    }
  }
  if (optind < argc) return kq_cli_usage_error(CMD, "unknown argument '%s'", argv[optind]);
  return 0;
}

typedef struct shape {
  int32_t heads, kv_heads, head_dim;
} shape;

/* Runs the attention grid on one open device. */
static kq_status bench_device(kq_device *device, const bench_options *o, kq_bench_report *rep) {
  kq_bench_device_ctx ctx = {.device = device, .cancel = kq_cli_cancel_flag()};
  kq_status st = kq_device_get_info(device, &ctx.info);
  if (st) return st;
  kq_cli_note(CMD, "%s: measuring the copy ceiling", ctx.info.name);
  st = kq_bench_device_prepare(&ctx, o->quick ? 5 : 7);
  if (st) return st;
  kq_cli_note(CMD, "%s: copy ceiling %.2f GB/s; %.0f MiB of latents per step", ctx.info.name,
              ctx.ceiling_gbps, (double)ctx.target_bytes / 1048576.0);
  kq_bench_report_device(rep, &ctx.info, ctx.ceiling_gbps, ctx.target_bytes);

  static const shape shapes[] = {{32, 8, 128}, {9, 3, 64}};
  const int n_shapes = o->quick ? 1 : 2;
  kq_storage storages[2] = {KQ_STORAGE_F32, KQ_STORAGE_F16};
  int n_storages = 2, first_storage = o->quick ? 1 : 0;
  if (!ctx.info.fp16_storage) {
    kq_bench_report_note(rep, "%s: no F16 storage; F16 cases skipped", ctx.info.name);
    n_storages = 1, first_storage = 0;
  }
  const kq_rope_mode ropes[2] = {KQ_ROPE_POST, KQ_ROPE_PRE};
  const int n_ropes = o->quick ? 1 : 2, n_rank_divs = o->quick ? 2 : 3;
  static const int32_t defaults_decode[] = {1024, 4096, 16384, 32768, 65536};
  static const int32_t defaults_prefill[] = {1024, 4096};
  int32_t ctxs[MAX_CONTEXTS];
  int n_ctx = 0;
  if (o->n_contexts) {
    memcpy(ctxs, o->contexts, sizeof(int32_t) * (size_t)o->n_contexts);
    n_ctx = o->n_contexts;
  } else {
    n_ctx = o->quick || !o->decode ? 2 : 5;
    memcpy(ctxs, defaults_decode, sizeof(int32_t) * (size_t)n_ctx);
  }
  int32_t reps_decode = o->reps ? o->reps : (o->quick ? 3 : 7);
  int32_t reps_prefill = o->reps ? o->reps : (o->quick ? 2 : 3);

  /* Transform-coded rows: every budget and layout of a shape and context
   * in one group (F16 storage, RoPE post, decode). */
  static const double default_budgets[] = {0.375, 0.28, 0.25, 0.19};
  double budgets[MAX_BUDGETS];
  int n_budgets = 0;
  if (o->budgets_set) {
    n_budgets = o->n_budgets;
    memcpy(budgets, o->budgets, sizeof(double) * (size_t)n_budgets);
  } else if (o->quick) {
    budgets[n_budgets++] = 0.28;
  } else {
    n_budgets = 4;
    memcpy(budgets, default_budgets, sizeof default_budgets);
  }
  const kq_layout layouts[2] = {KQ_LAYOUT_PER_HEAD, KQ_LAYOUT_JOINT};
  const int n_layouts = o->quick ? 1 : 2;
  if (!o->decode) n_budgets = 0;
  if (n_budgets && !ctx.info.fp16_storage) {
    kq_bench_report_note(rep, "%s: no F16 storage; transform-coded (bytes) rows skipped",
                         ctx.info.name);
    n_budgets = 0;
  }
  int total = n_shapes * (n_storages - first_storage) * n_ropes * n_ctx * n_rank_divs +
              n_shapes * n_ctx * n_budgets * n_layouts,
      index = 0;
  for (int s = 0; s < n_shapes && st == KQ_OK; s++)
    for (int si = first_storage; si < n_storages && st == KQ_OK; si++)
      for (int ri = 0; ri < n_ropes && st == KQ_OK; ri++)
        for (int c = 0; c < n_ctx && st == KQ_OK; c++) {
          kq_bench_attn_config group[3];
          bool prefill = o->prefill && ctxs[c] >= KQ_BENCH_PREFILL_M;
          if (prefill && !o->n_contexts) /* compute-bound: default contexts only */
            prefill = ctxs[c] == defaults_prefill[0] || ctxs[c] == defaults_prefill[1];
          for (int k = 0; k < n_rank_divs; k++)
            group[k] = (kq_bench_attn_config){.heads = shapes[s].heads,
                                              .kv_heads = shapes[s].kv_heads,
                                              .head_dim = shapes[s].head_dim,
                                              .rank = shapes[s].head_dim >> k,
                                              .storage = storages[si],
                                              .rope = ropes[ri],
                                              .context = ctxs[c],
                                              .decode = o->decode,
                                              .prefill = prefill,
                                              .decode_reps = reps_decode,
                                              .prefill_reps = reps_prefill,
                                              .index = ++index,
                                              .total = total};
          if (o->decode || prefill) st = kq_bench_attention(&ctx, group, n_rank_divs, rep);
        }
  for (int s = 0; s < n_shapes && n_budgets && st == KQ_OK; s++)
    for (int c = 0; c < n_ctx && st == KQ_OK; c++) {
      kq_bench_attn_config group[MAX_BUDGETS * 2];
      int n = 0;
      for (int b = 0; b < n_budgets; b++)
        for (int li = 0; li < n_layouts; li++, n++)
          group[n] = (kq_bench_attn_config){.heads = shapes[s].heads,
                                            .kv_heads = shapes[s].kv_heads,
                                            .head_dim = shapes[s].head_dim,
                                            .rank = shapes[s].head_dim,
                                            .bytes_budget = budgets[b],
                                            .layout = layouts[li],
                                            .storage = KQ_STORAGE_F16,
                                            .rope = KQ_ROPE_POST,
                                            .context = ctxs[c],
                                            .decode = true,
                                            .decode_reps = reps_decode,
                                            .index = ++index,
                                            .total = total};
      st = kq_bench_attention(&ctx, group, n, rep);
    }
  if (st == KQ_OK && o->decode) {
    for (int k = 0; k < 2 && st == KQ_OK; k++) {
      kq_bench_attn_config cfg = {.heads = 32,
                                  .kv_heads = 8,
                                  .head_dim = 128,
                                  .rank = 128 >> k,
                                  .storage = storages[n_storages - 1],
                                  .rope = KQ_ROPE_POST,
                                  .context = 1};
      st = kq_bench_overhead(&ctx, &cfg, o->quick ? 51 : 201, rep);
    }
  }
  return st;
}

/* Opens and measures one named device. */
static kq_status bench_named(const char *name, const bench_options *o, kq_bench_report *rep) {
  kq_device *device = NULL;
  kq_status st = kq_cli_device_create("bench", name, &device);
  if (st) return st;
  st = bench_device(device, o, rep);
  kq_device_destroy(device);
  return st;
}

int kq_cmd_bench(int argc, char **argv) {
  bench_options o;
  int rc = parse_options(argc, argv, &o);
  if (rc) return rc == 1 ? 0 : rc;
  if (o.svg && kq_output_check(o.svg, NULL) != KQ_OK) {
    fprintf(stderr, "kqsvd bench: --svg: %s\n", kq_last_error());
    return 1;
  }
  kq_bench_report rep = {0};
  kq_status st = KQ_OK;
  if (o.decode || o.prefill) {
    if (o.device && strcmp(o.device, "all") == 0) {
      int n = 0;
      st = kq_device_count(&n);
      for (int i = 0; i < n && st == KQ_OK; i++) {
        kq_device_info info;
        st = kq_device_info_get(i, &info);
        if (st == KQ_OK) st = bench_named(info.name, &o, &rep);
      }
    } else {
      st = bench_named(o.device, &o, &rep);
    }
  }
  if (st == KQ_OK && o.fit) st = kq_bench_fit(o.quick, o.reps, kq_cli_cancel_flag(), &rep);
  if (st) {
    kq_bench_report_free(&rep);
    return kq_cli_fail(CMD, st);
  }
  kq_bench_report_ceilings(&rep);
  kq_bench_report_speedups(&rep);
  rc = 0;
  if (o.svg && !kq_bench_svg_write(&rep, o.svg)) rc = 1;
  if (o.json) {
    if (!kq_bench_report_json(&rep, stdout)) {
      fprintf(stderr, "kqsvd bench: cannot write the JSON report\n");
      rc = 1;
    }
  } else {
    kq_bench_report_text(&rep, stdout);
  }
  kq_bench_report_free(&rep);
  return rc;
}
