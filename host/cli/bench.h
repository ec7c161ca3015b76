/*
 * bench.h — the pieces of `kqsvd bench`: attention timing on a device
 * (bench_attention.c), host fitting timings (bench_fit.c), the result list,
 * JSON and text output (bench_report.c) and the SVG chart (bench_svg.c).
 * Byte counts and ceilings follow SPEC §5.
 */
#ifndef KQ_CLI_BENCH_H
#define KQ_CLI_BENCH_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/kq_common.h"
#include "kqsvd.h"

/* One measured figure. Integer fields < 0 and double fields that are NaN are
 * written as JSON null (not applicable). `storage` and `rope` are static
 * strings or NULL. */
typedef struct kq_bench_result {
  char device[32]; /* device name, "host" for fitting */
  char op[16];     /* decode, prefill, overhead, svd, rfactor, fit */
  int32_t context, heads, kv_heads, head_dim, rank_k, rank_v;
  const char *storage; /* "f32", "f16" */
  const char *rope;    /* "post", "pre" */
  double seconds;      /* median seconds per layer-attend (per call for fitting) */
  double tokens_per_s; /* query tokens per second (rows per second for rfactor/fit) */
  double bytes;        /* SPEC §5 bytes per layer-attend */
  double gbps, ceiling_gbps, pct_of_ceiling, speedup_vs_full;
  /* Attention rows: the latent cache's bytes per token over a full F16
   * cache's (kq_projections_fraction_of_f16) and its layout ("per-head",
   * "joint"); bytes_budget is the byte budget of a transform-coded row
   * (kq_bench_budget_segments), NaN for the rank rows. NaN / NULL for
   * fitting. */
  double bytes_fraction, bytes_budget;
  const char *layout;
} kq_bench_result;

/* A growing list of results plus free-form notes (skipped configurations). */
typedef struct kq_bench_report {
  kq_bench_result *items;
  int count, capacity;
  char **notes;
  int n_notes, notes_capacity;
  struct kq_bench_device_entry { /* devices measured, for "machine" */
    kq_device_info info;
    double ceiling_gbps; /* median of ceiling_samples */
    uint64_t target_bytes;
    double *ceiling_samples; /* copy bandwidths (GB/s) measured during the run */
    int n_ceiling_samples, ceiling_samples_capacity;
  } devices[16];
  int n_devices;
} kq_bench_report;

/* Appends a copy of `r`; false when out of memory. */
bool kq_bench_report_add(kq_bench_report *rep, const kq_bench_result *r);
/* Appends a note (printf format) and echoes it on stderr; false when out of memory. */
bool kq_bench_report_note(kq_bench_report *rep, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void kq_bench_report_free(kq_bench_report *rep);
/* Records a measured device (info, ceiling, bytes per step) for "machine";
 * the ceiling is its first ceiling sample. Devices past the 16th are not
 * listed. */
void kq_bench_report_device(kq_bench_report *rep, const kq_device_info *info, double ceiling_gbps,
                            uint64_t target_bytes);

/* Adds a copy-bandwidth sample (GB/s) of the listed device named `device`,
 * measured next to timed steps: its ceiling becomes the median of all its
 * samples so far. False when out of memory or the device is not listed
 * (nothing changes). */
bool kq_bench_report_ceiling_sample(kq_bench_report *rep, const char *device, double gbps);

/* Sets ceiling_gbps and pct_of_ceiling of every result that has a ceiling to
 * its device's run-wide ceiling (the median of all its samples), so every
 * result of a device carries one ceiling that spans the whole run. Call
 * once, after the last sample. */
void kq_bench_report_ceilings(kq_bench_report *rep);

/* Fills speedup_vs_full of every attention result: the seconds of the
 * rank-d (not transform-coded) result of the same device, op, context,
 * shape, storage and rope divided by its own seconds (NaN when that
 * baseline is missing). */
void kq_bench_report_speedups(kq_bench_report *rep);

/* Writes {"machine": {...}, "results": [...]} to `out`; false on failure. */
bool kq_bench_report_json(const kq_bench_report *rep, FILE *out);
/* Writes a human-readable table to `out`. */
void kq_bench_report_text(const kq_bench_report *rep, FILE *out);

/* Size of the last-level CPU cache in bytes (sysfs index3 of cpu0, else
 * sysconf), 32 MiB when neither is known. */
uint64_t kq_bench_llc_bytes(void);

/* Writes the SVG chart (decode speedup and % of ceiling against context, one
 * row of two panels per device) to `path` through a temporary file and
 * rename. Returns false with a message on stderr on failure. */
bool kq_bench_svg_write(const kq_bench_report *rep, const char *path);

/* The storage segments of a transform-coded cache at byte budget `budget`
 * (a fraction of a full F16 cache, SPEC §1b) for latent groups of width
 * `width` (head_dim per head, n_kv_heads·head_dim joint), F16 float
 * segments. Recipes, as fractions of the width, keys | values:
 *   >= 0.375: [F16 1/8, q8 1/4, q4 1/2] | [q8 1/4, q4 1/2]
 *   >= 0.28:  [F16 1/16, q8 1/4, q4 1/2] | [q8 1/8, q4 1/2]
 *   >= 0.25:  [q8 1/4, q4 1/2] | [q8 1/8, q4 1/2]
 *   below:    [q8 1/8, q4 1/2] | [q4 1/2]
 * then, while the bytes per token exceed the budget (scales at small
 * widths), the last segment of the larger side shrinks by 2 dims. Writes
 * the segments and ranks; false when the budget cannot be met. */
bool kq_bench_budget_segments(double budget, int32_t width, kq_segment *keys, int32_t *n_keys,
                              int32_t *rank_k, kq_segment *values, int32_t *n_values,
                              int32_t *rank_v);

/* One attention configuration on an open device. */
typedef struct kq_bench_attn_config {
  int32_t heads, kv_heads, head_dim, rank; /* rank == head_dim: identity (full) */
  double bytes_budget; /* > 0: transform-coded at this budget (rank unused), F16 storage */
  kq_layout layout;    /* with bytes_budget: PER_HEAD or JOINT */
  kq_storage storage;
  kq_rope_mode rope;
  int32_t context;
  bool decode, prefill; /* which ops to time on the filled cache */
  int32_t decode_reps, prefill_reps;
  int32_t index, total; /* position in the run, for the progress line */
} kq_bench_attn_config;

/* What every attention run on a device shares. */
typedef struct kq_bench_device_ctx {
  kq_device *device;
  kq_device_info info;
  double ceiling_gbps;   /* median copy bandwidth of this device at the start */
  uint64_t copy_bytes;   /* buffer size of the copy-ceiling measurements */
  uint64_t target_bytes; /* latent bytes one timed step should cover */
  uint64_t budget_bytes; /* most latent bytes a cache may hold */
  const volatile int *cancel;
} kq_bench_device_ctx;

/* Prefill query count (m). */
#define KQ_BENCH_PREFILL_M 512

/* Measures the copy ceiling of ctx->device and sets target/budget bytes
 * (4x LLC for CPU-type devices, 1 GiB for GPUs; budget a quarter of device
 * memory, at most 4 GiB). */
kq_status kq_bench_device_prepare(kq_bench_device_ctx *ctx, int32_t copy_reps);

/* Times a group of configurations that differ only in rank or budget and
 * layout (n in [1, 8]):
 * for each, a cache of enough layers (SPEC §5) filled to the context; then
 * decode steps and/or prefill attends of the ranks alternate (so load
 * changes hit them alike), each round of steps followed by one copy-ceiling
 * sample of the device (kq_bench_report_ceiling_sample), and one result per
 * rank and op is appended. A configuration that does not fit, or that the
 * device answers with KQ_ERR_UNSUPPORTED (quantized segments, joint layout),
 * adds a note and is left out. */
kq_status kq_bench_attention(const kq_bench_device_ctx *ctx, const kq_bench_attn_config *cfgs,
                             int n, kq_bench_report *rep);

/* Per-call overhead: attend (m = 1) on a cache holding one token, median of
 * `calls` single calls; appends an "overhead" result. */
kq_status kq_bench_overhead(const kq_bench_device_ctx *ctx, const kq_bench_attn_config *cfg,
                            int32_t calls, kq_bench_report *rep);

/* Host fitting timings: Jacobi SVD (n = 128, 256), R factor of a
 * rows x 128 F16 matrix and kq_fit of one synthetic layer; appends "svd",
 * "rfactor" and "fit" results. `quick` shrinks sizes and repetitions. */
kq_status kq_bench_fit(bool quick, int32_t reps, const volatile int *cancel, kq_bench_report *rep);

#endif
