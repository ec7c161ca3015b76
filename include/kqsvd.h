/*
 * kqsvd.h — compressed attention for LLM inference on every GPU vendor.
 *
 * kqsvd implements KQ-SVD (Lesens, Rakhshan, Rabusseau, AISTATS 2026): the
 * closed-form best rank-r compression of the attention logits QKᵀ, and the
 * same treatment of the values through W_O. The library does two things:
 *
 *   1. Fitting, on the host: read calibration activations, fit per-layer
 *      projections (KQ-SVD or the K-SVD / Eigen baselines), measure fidelity.
 *        kq_fit(), kq_fit_memory() (rows in memory), kq_eval(), kq_synth()
 *
 *   2. Compressed attention, on a device (cpu, vulkan:N, opencl:N): keys and
 *      values are stored as latents (K A, V C) and attention runs on them.
 *        kq_device_create()      pick a device ("cpu", "vulkan:0", NULL = default)
 *        kq_projections_load()   read a projection file written by kq_fit()
 *        kq_cache_create()       a latent KV cache on that device
 *        kq_cache_append()       compress the keys/values of new tokens
 *        kq_cache_attend()       causal attention for the last m tokens
 *      Engines: a cache holds n_seqs sequences (kq_cache_append_batch /
 *      kq_cache_attend_batch serve many in one call), inputs and outputs may
 *      stay in device buffers (kq_device_buffer_*, kq_cache_*_device), and
 *      kq_calib_writer_* writes calibration from the engine's own passes.
 *
 * Conventions (see ../shared/SPEC.md in the project for the maths):
 *   - Every fallible function returns kq_status. On failure a message naming
 *     the file, tensor, field or device is kept for kq_last_error().
 *   - Objects are made by *_create / *_load and released by *_destroy; a
 *     destroy function accepts NULL.
 *   - Host arrays are row-major float32 unless said otherwise; shapes are
 *     written [outer, ..., inner].
 *   - The library never prints and never exits the process.
 *   - Params structs (kq_cache_params, kq_fit_params, kq_eval_params,
 *     kq_synth_params) grow with new options: start from their
 *     *_default_params(), which sets the leading struct_size, and change
 *     fields by name. A struct_size the library does not know fails with
 *     KQ_ERR_ABI.
 *
 * Thread safety:
 *   - kq_last_error() is per thread: it reports the last failure on the
 *     calling thread.
 *   - A kq_device may be shared by any number of threads. Different caches on
 *     one device may be used concurrently from different threads.
 *   - One kq_cache must not be used by two threads at the same time (the
 *     caller serialises; no call on a cache is re-entrant).
 *   - kq_projections are immutable once a cache has been created from them and
 *     may then be read from any thread.
 *   - kq_fit / kq_eval / kq_synth are independent calls with no shared state.
 */
#ifndef KQSVD_H
#define KQSVD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* KQ_API marks the functions libkqsvd exports; everything else in the
 * library is hidden (built with -fvisibility=hidden). */
#ifndef KQ_API
#if defined(__GNUC__) || defined(__clang__)
#define KQ_API __attribute__((visibility("default")))
#else
#define KQ_API
#endif
#endif

#define KQ_VERSION_MAJOR 0
#define KQ_VERSION_MINOR 1
#define KQ_VERSION_PATCH 0

/* ------------------------------------------------------------------------ */
/* Status and errors                                                        */
/* ------------------------------------------------------------------------ */

typedef enum kq_status {
  KQ_OK = 0,
  KQ_ERR_INVALID_ARGUMENT, /* a parameter is out of range or inconsistent */
  KQ_ERR_IO,               /* open/read/write/rename failed */
  KQ_ERR_FORMAT,           /* a file is malformed (header, dtype, shape, offset) */
  KQ_ERR_NUMERIC,          /* NaN or Inf in input data */
  KQ_ERR_NO_CONVERGENCE,   /* an iterative method did not converge */
  KQ_ERR_OUT_OF_MEMORY,    /* host allocation failed */
  KQ_ERR_DEVICE_MEMORY,    /* device allocation failed or exceeds a device limit */
  KQ_ERR_DEVICE,           /* a driver / device call failed */
  KQ_ERR_NOT_FOUND,        /* unknown device name, missing tensor or key */
  KQ_ERR_UNSUPPORTED,      /* valid request this build or device cannot do */
  KQ_ERR_CAPACITY,         /* cache capacity or length exceeded */
  KQ_ERR_ABI,              /* backend module built for another ABI version */
  KQ_ERR_INTERRUPTED,      /* cancelled through a cancel flag */
} kq_status;

/* A static English name for a status ("KQ_ERR_FORMAT" -> "malformed file"). */
KQ_API const char *kq_status_string(kq_status status);

/* The message of the last failure on the calling thread ("" if none). The
 * pointer stays valid until the next kqsvd call on this thread. */
KQ_API const char *kq_last_error(void);

/* "MAJOR.MINOR.PATCH". */
KQ_API const char *kq_version(void);

/* ------------------------------------------------------------------------ */
/* Common enums                                                             */
/* ------------------------------------------------------------------------ */

/* Storage type of latent caches. Accumulation is always float32. */
typedef enum kq_storage { KQ_STORAGE_F32 = 0, KQ_STORAGE_F16 = 1 } kq_storage;

/* RoPE handling (SPEC §1): POST = calibration keys/queries were already
 * rotated, attention runs on latents directly; PRE = projections fitted on
 * un-rotated vectors, keys are reconstructed (k̃Bᵀ) and rotated inside
 * attention; NONE = no rotation. */
typedef enum kq_rope_mode { KQ_ROPE_NONE = 0, KQ_ROPE_POST = 1, KQ_ROPE_PRE = 2 } kq_rope_mode;

/* PAIRS rotates (2j, 2j+1) (GGUF / llama.cpp); HALVES rotates (j, j+d/2)
 * (NeoX / Hugging Face). Angle = pos * theta^(-2j/d). */
typedef enum kq_rope_layout { KQ_ROPE_PAIRS = 0, KQ_ROPE_HALVES = 1 } kq_rope_layout;

/* KQ_METHOD_QUANT is the quantization-only baseline of the transform-coded
 * cache: an identity basis (up to a permutation and the segment rotations)
 * with the same byte allocator, so a table shows what low rank adds. */
typedef enum kq_method {
  KQ_METHOD_KQSVD = 0,
  KQ_METHOD_KSVD = 1,
  KQ_METHOD_EIGEN = 2,
  KQ_METHOD_QUANT = 3,
} kq_method;

/* "kq-svd", "k-svd", "eigen", "quant"; NULL for an invalid value. */
KQ_API const char *kq_method_name(kq_method method);
/* Parses a method name; KQ_ERR_INVALID_ARGUMENT for an unknown one. */
KQ_API kq_status kq_method_parse(const char *name, kq_method *out_method);

/* Latent layout (SPEC §1b). PER_HEAD: one latent per kv head (A, B, C, E
 * are [n_kv_heads, head_dim, rank]). JOINT: one latent per layer shared by
 * every head, MLA-like: key_down and value_down are [1, n_kv_heads·head_dim,
 * R] and act on a token's keys/values of all kv heads concatenated;
 * query_down and value_up stay per kv head [n_kv_heads, head_dim, R]. JOINT
 * supports RoPE POST and NONE only. */
typedef enum kq_layout { KQ_LAYOUT_PER_HEAD = 0, KQ_LAYOUT_JOINT = 1 } kq_layout;

/* "per-head", "joint"; NULL for an invalid value. */
KQ_API const char *kq_layout_name(kq_layout layout);
/* Parses a layout name; KQ_ERR_INVALID_ARGUMENT for an unknown one. */
KQ_API kq_status kq_layout_parse(const char *name, kq_layout *out_layout);

/* Storage format of a run of latent dims (SPEC §1b). */
#define KQ_SEG_FLOAT 0 /* the cache's storage type (F32 or F16) */
#define KQ_SEG_Q8 8    /* int8, qmax 127, one F16 scale per token and group */
#define KQ_SEG_Q4 4    /* int4, qmax 7, one F16 scale per token and group; width even */
#define KQ_MAX_SEGMENTS 16

/* A segment: `width` consecutive latent dims (in σ order) stored in format
 * `bits` (KQ_SEG_FLOAT, KQ_SEG_Q8 or KQ_SEG_Q4). The segments of one layer's
 * keys (or values) cover its rank exactly, in order. */
typedef struct kq_segment {
  int32_t width;
  int32_t bits;
} kq_segment;

/* ------------------------------------------------------------------------ */
/* Devices                                                                  */
/* ------------------------------------------------------------------------ */

typedef enum kq_device_type {
  KQ_DEVICE_TYPE_CPU = 0,
  KQ_DEVICE_TYPE_GPU_DISCRETE = 1,
  KQ_DEVICE_TYPE_GPU_INTEGRATED = 2,
  KQ_DEVICE_TYPE_GPU_VIRTUAL = 3,
  KQ_DEVICE_TYPE_OTHER = 4,
} kq_device_type;

typedef struct kq_device_info {
  char name[32];         /* "cpu", "vulkan:0", "opencl:1" — what kq_device_create takes */
  char backend[16];      /* "cpu", "vulkan", "opencl" */
  char description[256]; /* the driver's device name ("llvmpipe (LLVM 15.0.7, 256 bits)") */
  char vendor[64];
  char driver[128];     /* driver name and version */
  char extensions[512]; /* notable extensions / features, space separated (may be truncated) */
  kq_device_type type;
  uint64_t memory_bytes;     /* device-local memory (host RAM for CPU devices) */
  uint64_t max_buffer_bytes; /* largest single allocation */
  int32_t fp16_storage;      /* 1 if F16 storage runs natively */
  int32_t subgroup_size;     /* 0 if unknown / not applicable */
  int32_t compute_units;
} kq_device_info;

typedef struct kq_device kq_device;

/* Number of devices over all backends found (CPU first). Backend modules are
 * loaded on first use; a module whose driver is missing contributes 0. */
KQ_API kq_status kq_device_count(int *out_count);

/* Info of the device at index [0, count). */
KQ_API kq_status kq_device_info_get(int index, kq_device_info *out_info);

/* Opens a device by name ("cpu", "vulkan:N", "opencl:N"). name == NULL or ""
 * means the KQSVD_DEVICE environment variable, or "cpu" if unset. Unknown
 * names fail with KQ_ERR_NOT_FOUND and a message listing the devices. */
KQ_API kq_status kq_device_create(const char *name, kq_device **out_device);

/* Info of an open device. */
KQ_API kq_status kq_device_get_info(const kq_device *device, kq_device_info *out_info);

/* Streaming-copy bandwidth of the device (the benchmark ceiling, SPEC §5):
 * copies `bytes` between two device buffers `reps` times after one warm-up
 * copy and returns the median GB/s, counting bytes read plus written
 * (2 * bytes per copy, 1e9 bytes per GB). */
KQ_API kq_status kq_device_copy_bandwidth(kq_device *device, uint64_t bytes, int32_t reps,
                                          double *out_gbps);

/*
 * Structural costs of a device, counted since it was created (cumulative:
 * take differences around the work of interest). The counters say what the
 * backend did, not what was asked: a backend that batches two ops into one
 * submission counts one submit.
 *   submits             queue submissions (Vulkan vkQueueSubmit, OpenCL
 *                       clFlush of a batch); the CPU backend counts 0
 *   dispatches          kernel launches (CPU: ops run)
 *   host_waits          times the host blocked on the device (fence or event
 *                       wait, clFinish, a blocking read)
 *   bytes_uploaded      host -> device bytes
 *   bytes_downloaded    device -> host bytes
 *   device_allocations  device memory allocations of any kind (buffers,
 *                       staging, scratch)
 *   pipelines_created   compute pipelines built (compiled, or loaded from
 *                       the kernel cache on disk); kq_cache_create builds
 *                       those its cache's appends and full-output attends
 *                       need, so they build none. The CPU and OpenCL
 *                       backends count 0
 * Set struct_size = sizeof(kq_device_stats) before the call; the library
 * fills the fields that fit in struct_size and leaves the rest alone.
 */
typedef struct kq_device_stats {
  uint32_t struct_size;
  uint32_t reserved;
  uint64_t submits;
  uint64_t dispatches;
  uint64_t host_waits;
  uint64_t bytes_uploaded;
  uint64_t bytes_downloaded;
  uint64_t device_allocations;
  uint64_t pipelines_created;
} kq_device_stats;

/* Reads the device's counters into *out_stats (struct_size set by the
 * caller, at least offsetof(kq_device_stats, submits)). KQ_ERR_UNSUPPORTED
 * when the device's backend does not count. */
KQ_API kq_status kq_device_get_stats(const kq_device *device, kq_device_stats *out_stats);

/* Closes a device. Every cache created on it must be destroyed first. */
KQ_API void kq_device_destroy(kq_device *device);

/* ------------------------------------------------------------------------ */
/* Projections (SPEC §2, projection file)                                   */
/* ------------------------------------------------------------------------ */

typedef struct kq_projections_info {
  kq_method method;
  int32_t n_layers;
  int32_t n_heads;    /* query heads H */
  int32_t n_kv_heads; /* key/value heads Hk, H % Hk == 0 */
  int32_t head_dim;   /* d */
  kq_rope_mode rope;
  kq_rope_layout rope_layout;
  float rope_theta;
  kq_layout layout; /* PER_HEAD (v1 files) or JOINT */
} kq_projections_info;

/* Host views of one layer's matrices. PER_HEAD: each [n_kv_heads, head_dim,
 * rank]. JOINT: key_down / value_down [n_kv_heads·head_dim, rank], query_down
 * / value_up [n_kv_heads, head_dim, rank]; spectra [n_kv_heads·head_dim]
 * either way (PER_HEAD: [n_kv_heads, head_dim]). */
typedef struct kq_projection_layer {
  int32_t rank_k;
  int32_t rank_v;
  float *key_down;       /* A  [Hk, d, rank_k]: k̃ = k A */
  float *query_down;     /* B  [Hk, d, rank_k]: q̃ = q B */
  float *value_down;     /* C  [Hk, d, rank_v]: ṽ = v C */
  float *value_up;       /* E  [Hk, d, rank_v]: out = (P Ṽ) Eᵀ */
  float *key_spectrum;   /* [Hk, d] singular values of the fitted key problem (may be zero) */
  float *value_spectrum; /* [Hk, d] */
  /* Storage segments (read-only here; change them with
   * kq_projections_set_segments). A new set has one KQ_SEG_FLOAT segment
   * of the full rank per side. */
  int32_t n_key_segments, n_value_segments;
  const kq_segment *key_segments, *value_segments;
} kq_projection_layer;

typedef struct kq_projections kq_projections;

/* Reads and validates a projection file (shapes against metadata, ranks in
 * [1, d], finite values). Errors name the file and tensor. */
KQ_API kq_status kq_projections_load(const char *path, kq_projections **out_proj);

/* Creates zero-filled projections with the given per-layer ranks
 * (rank_k[l], rank_v[l] in [1, head_dim], or [1, n_kv_heads·head_dim] for
 * the JOINT layout); fill them through kq_projections_layer(). */
KQ_API kq_status kq_projections_create(const kq_projections_info *info, const int32_t *rank_k,
                                       const int32_t *rank_v, kq_projections **out_proj);

/* Creates identity projections (rank = head_dim everywhere): plain full
 * attention, the baseline every speedup is measured against. */
KQ_API kq_status kq_projections_create_identity(const kq_projections_info *info,
                                                kq_projections **out_proj);

/* Metadata of a projection set. */
KQ_API kq_status kq_projections_get_info(const kq_projections *proj, kq_projections_info *out_info);

/* Writable host views of layer `layer`; valid until the projections are
 * destroyed. */
KQ_API kq_status kq_projections_layer(kq_projections *proj, int32_t layer,
                                      kq_projection_layer *out_layer);

/* Which side of a layer a segment list describes. */
typedef enum kq_side { KQ_SIDE_KEYS = 0, KQ_SIDE_VALUES = 1 } kq_side;

/* Sets the storage segments of one side of layer `layer` (copied). The
 * widths must be >= 1 and sum to that side's rank, bits in {KQ_SEG_FLOAT,
 * KQ_SEG_Q8, KQ_SEG_Q4}, Q4 widths even, 1 <= n <= KQ_MAX_SEGMENTS.
 * KQ_ERR_INVALID_ARGUMENT otherwise, naming the layer and segment. */
KQ_API kq_status kq_projections_set_segments(kq_projections *proj, int32_t layer, kq_side side,
                                             int32_t n_segments, const kq_segment *segments);

/* Bytes per token that layer `layer` stores for keys plus values, all kv
 * groups, with float segments in `storage` (SPEC §1b: a quantized segment
 * costs width·bits/8 + 2 bytes per group). */
KQ_API uint64_t kq_projections_layer_bytes(const kq_projections *proj, int32_t layer,
                                           kq_storage storage);

/* The cache's bytes per token over all layers divided by those of a full
 * F16 cache (2·2·head_dim·n_kv_heads·n_layers): SPEC §1b fraction_of_f16. */
KQ_API double kq_projections_fraction_of_f16(const kq_projections *proj, kq_storage storage);

/* Writes a projection file, version 2 (temporary name + rename; never a
 * half file). */
KQ_API kq_status kq_projections_save(const kq_projections *proj, const char *path);

KQ_API void kq_projections_destroy(kq_projections *proj);

/* ------------------------------------------------------------------------ */
/* Compressed KV cache                                                      */
/* ------------------------------------------------------------------------ */

typedef enum kq_output {
  KQ_OUTPUT_FULL = 0,   /* (P Ṽ) Eᵀ: [m, H, head_dim] */
  KQ_OUTPUT_LATENT = 1, /* P Ṽ: [m, H, rank_v(layer)], for engines folding Eᵀ into W_O */
} kq_output;

typedef struct kq_cache_params {
  size_t struct_size; /* sizeof(kq_cache_params): set by kq_cache_default_params() */
  kq_storage storage; /* latent storage type, default F32 */
  int32_t capacity;   /* tokens per layer, default 4096 */
  int32_t n_seqs;     /* sequences (ids [0, n_seqs)), each with `capacity` positions; default 1 */
} kq_cache_params;

KQ_API kq_cache_params kq_cache_default_params(void);

typedef struct kq_cache kq_cache;

/* Creates a latent cache for every layer of `proj` on `device`. The
 * projections are copied to the device; `proj` may be destroyed afterwards.
 * Fails with KQ_ERR_DEVICE_MEMORY (naming the device and size) when the cache
 * does not fit, KQ_ERR_UNSUPPORTED for F16 on a device without it. */
KQ_API kq_status kq_cache_create(kq_device *device, const kq_projections *proj,
                                 const kq_cache_params *params, kq_cache **out_cache);

/* Compresses n_tokens new tokens of layer `layer` and stores them at the
 * next positions. keys, values: [n_tokens, n_kv_heads, head_dim]. In PRE
 * rope mode the keys are un-rotated; in POST mode already rotated. Position
 * of a token = its index in the cache. KQ_ERR_CAPACITY past capacity. */
KQ_API kq_status kq_cache_append(kq_cache *cache, int32_t layer, int32_t n_tokens,
                                 const float *keys, const float *values);

/* Causal attention for the last n_queries appended tokens of `layer`
 * (n_queries = 1 is decode): query j sits at position len - n_queries + j and
 * attends to positions 0..its own. queries: [n_queries, n_heads, head_dim]
 * (rotated in POST mode, un-rotated in PRE mode). out: [n_queries, n_heads,
 * head_dim] for KQ_OUTPUT_FULL or [n_queries, n_heads, rank_v] for
 * KQ_OUTPUT_LATENT. Scale 1/sqrt(head_dim). Errors (KQ_ERR_INVALID_ARGUMENT,
 * `out` untouched): empty cache, n_queries < 1 or > length, layer out of
 * range.
 * Non-finite data follows IEEE propagation, the same on every device: if
 * any logit a query head computes over its causal range is NaN or ±Inf (a
 * NaN or Inf in its query, in a key in range, or an overflow), that head's
 * output row is NaN; NaN or Inf in a value in range makes the outputs it
 * feeds non-finite (with a projection that mixes dims, the whole row). Rows
 * that never see the bad data are unaffected. A quantized
 * latent segment holding NaN/Inf stores a NaN scale, so it propagates the
 * same way. Nothing is treated as masked. */
KQ_API kq_status kq_cache_attend(kq_cache *cache, int32_t layer, int32_t n_queries,
                                 const float *queries, kq_output output, float *out);

/* Shortens every layer to `length` tokens (no-op for layers already shorter). */
KQ_API kq_status kq_cache_truncate(kq_cache *cache, int32_t length);

/* Tokens stored in `layer` (0 for an invalid layer). */
KQ_API int32_t kq_cache_length(const kq_cache *cache, int32_t layer);

typedef struct kq_cache_memory {
  uint64_t kv_bytes;         /* latent keys + values at full capacity, all layers: the true
                                bytes of SPEC §1b (quantized data + F16 scales) */
  uint64_t projection_bytes; /* A, B, C, E on the device */
  uint64_t scratch_bytes;    /* staging and work buffers currently held */
} kq_cache_memory;

KQ_API kq_status kq_cache_get_memory(const kq_cache *cache, kq_cache_memory *out_memory);

KQ_API void kq_cache_destroy(kq_cache *cache);

/* ------------------------------------------------------------------------ */
/* Sequences: many independent sequences in one cache                       */
/* ------------------------------------------------------------------------ */

/*
 * A cache created with n_seqs = S holds S sequences with ids [0, S). Each
 * has its own length per layer and `capacity` positions of its own (the
 * latent memory is S times that of one sequence); a token's position is its
 * index in its sequence. The single-sequence calls above (kq_cache_append,
 * kq_cache_attend, kq_cache_truncate, kq_cache_length) act on sequence 0.
 *
 * A batch is a list of spans, each naming a sequence and a token count; the
 * host arrays of a batched call hold the spans' rows one after another in
 * span order. One batched call uploads each input once and downloads the
 * outputs once, however many sequences it serves.
 */
typedef struct kq_seq_span {
  int32_t seq;      /* sequence id in [0, n_seqs) */
  int32_t n_tokens; /* rows of this sequence in the batch, >= 1 */
} kq_seq_span;

/* Appends the keys/values of n_spans spans to layer `layer`: span i's
 * n_tokens rows go to the next positions of sequence spans[i].seq. keys,
 * values: [Σ n_tokens, n_kv_heads, head_dim] (rotation as kq_cache_append).
 * A sequence appears at most once per call. Every span is checked before
 * anything is stored: on an error no sequence's length changes
 * (KQ_ERR_CAPACITY naming the sequence when one would exceed capacity). */
KQ_API kq_status kq_cache_append_batch(kq_cache *cache, int32_t layer, int32_t n_spans,
                                       const kq_seq_span *spans, const float *keys,
                                       const float *values);

/* Causal attention of layer `layer` for n_spans spans: span i's n_tokens
 * queries are the last n_tokens appended positions of sequence
 * spans[i].seq, each attending to its own sequence only (positions 0..its
 * own). queries: [Σ n_tokens, n_heads, head_dim]; out: [Σ n_tokens,
 * n_heads, head_dim] (KQ_OUTPUT_FULL) or [Σ n_tokens, n_heads, rank_v]
 * (KQ_OUTPUT_LATENT), rows in span order. Errors as kq_cache_attend, naming
 * the sequence; `out` untouched on an argument error. */
KQ_API kq_status kq_cache_attend_batch(kq_cache *cache, int32_t layer, int32_t n_spans,
                                       const kq_seq_span *spans, const float *queries,
                                       kq_output output, float *out);

/* Shortens sequence `seq` to `length` tokens in every layer (no-op for
 * layers already shorter). */
KQ_API kq_status kq_cache_seq_truncate(kq_cache *cache, int32_t seq, int32_t length);

/* Empties sequence `seq` in every layer (kq_cache_seq_truncate to 0). */
KQ_API kq_status kq_cache_seq_clear(kq_cache *cache, int32_t seq);

/* Prefix sharing: copies the first n_tokens positions of sequence src_seq
 * into sequence dst_seq in every layer; dst_seq then holds exactly those
 * n_tokens (its former contents are dropped). n_tokens must be <= the
 * length of src_seq in every layer; src_seq == dst_seq is a truncate. The
 * copy is exact (latents, quantization scales), made on the device's queue
 * through the host (one download and one upload per plane and group). */
KQ_API kq_status kq_cache_seq_copy(kq_cache *cache, int32_t src_seq, int32_t dst_seq,
                                   int32_t n_tokens);

/* Tokens stored in sequence `seq` of `layer` (0 for an invalid layer or
 * sequence). */
KQ_API int32_t kq_cache_seq_length(const kq_cache *cache, int32_t layer, int32_t seq);

/* ------------------------------------------------------------------------ */
/* Device buffers and device-resident ops                                   */
/* ------------------------------------------------------------------------ */

/*
 * A device buffer is memory on a kq_device that an engine fills and reads
 * itself, so queries, keys, values and outputs can stay on the device
 * between layers. Work on a device is queued in order: the *_device cache
 * calls and kq_device_buffer_write return without waiting for the device;
 * kq_device_buffer_read and kq_device_synchronize wait for everything
 * queued before them. Ownership: the caller creates and destroys a buffer;
 * destroy it before its device (destroy waits for queued work that may
 * still use it). A buffer may be used by one cache call at a time as
 * output; inputs may be shared.
 */
typedef struct kq_device_buffer kq_device_buffer;

/* Allocates `bytes` (>= 1) of device memory (contents undefined).
 * KQ_ERR_DEVICE_MEMORY naming the device and size when it does not fit. */
KQ_API kq_status kq_device_buffer_create(kq_device *device, size_t bytes,
                                         kq_device_buffer **out_buffer);

/* Copies `bytes` from host `src` to buffer bytes [offset, offset + bytes),
 * queued after earlier work; `src` may be reused when the call returns. */
KQ_API kq_status kq_device_buffer_write(kq_device_buffer *buffer, size_t offset, const void *src,
                                        size_t bytes);

/* Copies buffer bytes [offset, offset + bytes) to host `dst`, after all
 * earlier work on the device has finished (one host wait). */
KQ_API kq_status kq_device_buffer_read(const kq_device_buffer *buffer, size_t offset, void *dst,
                                       size_t bytes);

/* Size in bytes (0 for NULL). */
KQ_API size_t kq_device_buffer_size(const kq_device_buffer *buffer);

/* Waits for queued work, then frees the buffer. Accepts NULL. */
KQ_API void kq_device_buffer_destroy(kq_device_buffer *buffer);

/* Waits until all work queued on the device has finished. */
KQ_API kq_status kq_device_synchronize(kq_device *device);

/* kq_cache_append_batch with keys and values in device buffers of the
 * cache's device: F32 [Σ n_tokens, n_kv_heads, head_dim] at byte offsets
 * keys_offset / values_offset (multiples of 4). Queued; returns without
 * waiting. Same checks and errors as kq_cache_append_batch. */
KQ_API kq_status kq_cache_append_device(kq_cache *cache, int32_t layer, int32_t n_spans,
                                        const kq_seq_span *spans, const kq_device_buffer *keys,
                                        size_t keys_offset, const kq_device_buffer *values,
                                        size_t values_offset);

/* kq_cache_attend_batch reading queries F32 [Σ n_tokens, n_heads, head_dim]
 * from a device buffer and writing the output (layout as
 * kq_cache_attend_batch) into `out` at out_offset (offsets multiples of 4;
 * `out` distinct from `queries`). Queued; returns without waiting: read
 * `out` with kq_device_buffer_read or after kq_device_synchronize. */
KQ_API kq_status kq_cache_attend_device(kq_cache *cache, int32_t layer, int32_t n_spans,
                                        const kq_seq_span *spans, const kq_device_buffer *queries,
                                        size_t queries_offset, kq_output output,
                                        kq_device_buffer *out, size_t out_offset);

/* ------------------------------------------------------------------------ */
/* Fitting (host)                                                           */
/* ------------------------------------------------------------------------ */

typedef void (*kq_progress_fn)(void *user, int32_t done, int32_t total, const char *stage);

typedef struct kq_fit_params {
  size_t struct_size; /* sizeof(kq_fit_params): set by kq_fit_default_params() */
  kq_method method;   /* default KQ_METHOD_KQSVD */
  double alpha;       /* eigen: stack [alpha K; Q / alpha], default 1 */
  /* Rank choice, exactly one of: fixed ranks (rank_k, rank_v > 0), epsilon
   * (> 0: per layer smallest rank with predicted relative error <= epsilon),
   * ratio (in (0, 1]: latent cache <= ratio of the full cache; half the
   * budget to keys, half to values, each spread over the layers where it
   * removes the most predicted error). */
  int32_t rank_k, rank_v;
  double epsilon;
  double ratio;
  /* bytes (in (0, 1]), the fourth rank mode: a byte budget as a fraction of
   * a full F16 cache, scales included (SPEC §1b). Latent dims get formats
   * (F16, q8, q4, dropped) where they remove the most predicted error per
   * byte; quantized segments are rotated (seeded by `seed`). The only mode
   * for KQ_METHOD_QUANT. */
  double bytes;
  kq_layout layout; /* PER_HEAD (default) or JOINT (kq-svd, quant; RoPE post/none) */
  uint64_t seed;    /* rotations of quantized segments; default 1 */
  /* positions (> 0, calibration rope pre only): every calibration key and
   * query row is first rotated by RoPE to its own position drawn from
   * [0, positions) (seeded by `seed`); the fit is then a rope post one,
   * meant for any position < positions. 0 (default): off. */
  int64_t positions;
  /* sensitivity (bytes mode only, optional): path of a text file of the
   * model's measured sensitivity to each layer's compressed keys and values
   * (lines "keys L KL" / "values L KL", every layer of both sides once; KL =
   * mean KL(full ‖ compressed) of the next-token distribution on calibration
   * text with only that side of layer L compressed as this fit without
   * `sensitivity` compresses it). The allocator then weighs each layer's
   * predicted error by sqrt(KL / predicted error), normalised to mean 1 per
   * side, and allocates again. NULL (default): off. */
  const char *sensitivity;
  int32_t n_threads;       /* 0 = all cores */
  kq_progress_fn progress; /* optional, called from the calling thread */
  void *progress_user;
  const volatile int *cancel; /* optional: non-zero aborts with KQ_ERR_INTERRUPTED */
  /* balance: scale each latent dim so that it and its partner (query
   * latent dim; for values the output through W_O) carry equal energy, A·D /
   * B·D⁻¹ and C·D / E·D⁻¹. Exact logits and outputs are unchanged;
   * quantized segments lose less. 1 (default): kq-svd only; 2: also the
   * quant baseline, per channel (better at ctx 256, worse at ctx 2048 on
   * SmolLM2: docs/quality.md); 0: the latents as solved (keys whitened, σ on
   * the query side). */
  int32_t balance;
} kq_fit_params;

KQ_API kq_fit_params kq_fit_default_params(void);

/* What kq_fit chose, for its one-line summary. */
typedef struct kq_fit_summary {
  kq_layout layout;
  double fraction_of_f16; /* bytes reached (F16 float segments) */
  double mean_rank_k, mean_rank_v;
  double mean_bits_k, mean_bits_v;             /* bits per kept latent dim, scales included */
  double predicted_error_k, predicted_error_v; /* relative, mean over layers */
} kq_fit_summary;

/* Fits projections from calibration file `calib_path` (SPEC §2) and writes
 * `out_path` atomically. On any failure no output file exists. */
KQ_API kq_status kq_fit(const char *calib_path, const char *out_path, const kq_fit_params *params);

/* kq_fit, also filling *out_summary (may be NULL) on success. */
KQ_API kq_status kq_fit_ex(const char *calib_path, const char *out_path,
                           const kq_fit_params *params, kq_fit_summary *out_summary);

/*
 * Fitting from calibration rows in memory: an engine with its own model code
 * hands the q/k/v rows (and W_O) of every layer it computed to
 * kq_fit_memory and gets projections back, with no calibration file and no
 * temporary file. The fit is the one kq_fit runs on a calibration file with
 * the same rows (F32) and metadata: the projections are identical.
 * Ownership: the view and its arrays stay the caller's; the library only
 * reads them during the call.
 */

/* Order of the q/k/v arrays of a kq_calib_view. */
typedef enum kq_calib_rows {
  /* [n_tokens, heads, head_dim]: token-major, an engine's natural layout
   * (as kq_calib_writer_add). The fit transposes them into a copy it owns
   * during the call (memory: one F32 copy of every layer's q, k, v). */
  KQ_CALIB_ROWS_TOKEN_MAJOR = 0,
  /* [heads, n_tokens, head_dim]: head-major, the calibration file's layout;
   * read in place, no copy. */
  KQ_CALIB_ROWS_HEAD_MAJOR = 1,
} kq_calib_rows;

/* One layer's rows, F32, in the view's `rows` order. */
typedef struct kq_calib_view_layer {
  const float *q;  /* n_heads heads */
  const float *k;  /* n_kv_heads heads */
  const float *v;  /* n_kv_heads heads */
  const float *wo; /* [hidden, n_heads·head_dim] (PyTorch o_proj.weight); ignored when hidden = 0 */
} kq_calib_view_layer;

typedef struct kq_calib_view {
  size_t struct_size; /* sizeof(kq_calib_view): set by kq_calib_view_default() */
  int32_t n_layers, n_heads, n_kv_heads, head_dim; /* >= 1 each, H % Hk == 0 */
  int32_t hidden;    /* model width D of every layer's wo; 0 = no wo */
  int64_t n_tokens;  /* T >= 1 rows per layer: every layer the same tokens in the same order */
  int64_t seq_len;   /* tokens per calibration sequence, dividing T; 0 = T */
  kq_rope_mode rope; /* POST: q/k rows already rotated; PRE: un-rotated; NONE */
  kq_rope_layout rope_layout;
  float rope_theta;                  /* > 0 */
  kq_calib_rows rows;                /* default token-major */
  const kq_calib_view_layer *layers; /* [n_layers] */
  /* Optional (NULL = absent): the model's identity, copied into the
   * projections as capture's metadata is (64 hex digits for the sha256). */
  const char *model_name, *model_sha256;
  /* Optional: names the calibration in error messages where a file fit
   * names the file; NULL = "in-memory calibration". */
  const char *name;
} kq_calib_view;

/* Zero shapes and layers (fill them), rope POST, PAIRS, theta 10000,
 * token-major rows. */
KQ_API kq_calib_view kq_calib_view_default(void);

/* Fits projections from the rows of `calib` with `params` (every option of
 * kq_fit, positions included) and returns them in *out_proj (the caller
 * destroys them; kq_projections_save writes the file kq_fit would have
 * written). out_summary may be NULL. Checked before any work, with
 * KQ_ERR_INVALID_ARGUMENT: a NULL view or layers, NULL rows (naming the
 * layer and tensor, "layers.3.k"), counts < 1, unknown enum values. Shape
 * relations (H % Hk, seq_len dividing T, model_sha256) fail with the
 * KQ_ERR_FORMAT message of the file path, the view's name in place of the
 * file's; non-finite rows with KQ_ERR_NUMERIC naming the tensor. *out_proj
 * is NULL on failure. */
KQ_API kq_status kq_fit_memory(const kq_calib_view *calib, const kq_fit_params *params,
                               kq_projections **out_proj, kq_fit_summary *out_summary);

typedef struct kq_eval_layer {
  int32_t layer, rank_k, rank_v;
  double key, query, value, logits, softmax, output, value_out; /* value_out < 0: no wo */
} kq_eval_layer;

typedef struct kq_eval_result {
  kq_method method;
  int32_t n_layers;
  kq_eval_layer *layers; /* [n_layers] */
  kq_eval_layer mean;    /* mean over layers (layer = -1) */
  int32_t seqs_used, seqs_total;
  int32_t has_wo;
  char device[32]; /* "" = host-only softmax/output, else the device used */
} kq_eval_result;

typedef struct kq_eval_params {
  size_t struct_size; /* sizeof(kq_eval_params): set by kq_eval_default_params() */
  int32_t max_seqs;   /* 0 = all sequences */
  const char *device; /* NULL: host float64 attention; else softmax/output go
                         through that device's append + attend */
  kq_storage storage; /* cache storage when device != NULL */
  int32_t n_threads;
  kq_progress_fn progress;
  void *progress_user;
  const volatile int *cancel;
} kq_eval_params;

KQ_API kq_eval_params kq_eval_default_params(void);

/* Computes the SPEC §3 metrics of projection file `proj_path` on calibration
 * file `calib_path`. Free the result with kq_eval_result_destroy. */
KQ_API kq_status kq_eval(const char *calib_path, const char *proj_path,
                         const kq_eval_params *params, kq_eval_result **out_result);

KQ_API void kq_eval_result_destroy(kq_eval_result *result);

/* ------------------------------------------------------------------------ */
/* Synthetic calibration data                                               */
/* ------------------------------------------------------------------------ */

typedef enum kq_dtype {
  KQ_DTYPE_F32 = 0,
  KQ_DTYPE_F16 = 1,
  KQ_DTYPE_BF16 = 2,
  KQ_DTYPE_F64 = 3,
  KQ_DTYPE_I32 = 4,
  KQ_DTYPE_I64 = 5,
  KQ_DTYPE_U8 = 6,
  KQ_DTYPE_I8 = 7,
} kq_dtype;

typedef struct kq_synth_params {
  size_t struct_size; /* sizeof(kq_synth_params): set by kq_synth_default_params() */
  int32_t n_layers, n_heads, n_kv_heads, head_dim, hidden; /* hidden = model width D */
  int32_t seq_len, n_seqs;
  kq_dtype dtype; /* F32, F16 or BF16 */
  uint64_t seed;
  float rope_theta;
  int32_t with_wo; /* write layers.{l}.wo */
} kq_synth_params;

KQ_API kq_synth_params kq_synth_default_params(void);

/* Writes a synthetic calibration file with realistic structure: anisotropic
 * hidden states, GQA, post-RoPE keys/queries, and a few high-variance key
 * channels the queries ignore (where K-SVD wastes rank). */
KQ_API kq_status kq_synth(const char *out_path, const kq_synth_params *params);

/* ------------------------------------------------------------------------ */
/* Calibration from an engine                                               */
/* ------------------------------------------------------------------------ */

/*
 * An engine with its own model code writes the calibration file of SPEC §2
 * (the input of kq_fit / kq_eval) without the kqsvd CLI: open, add the
 * q/k/v rows of every layer batch by batch as its forward passes make them,
 * set each layer's W_O, close. Rows are spilled as they arrive to an
 * unlinked temporary file beside the target (memory stays at one batch);
 * close writes the file atomically (temporary name + rename) and any
 * failure, or abort, leaves no file. `kqsvd capture` is built on it.
 */
typedef struct kq_calib_writer kq_calib_writer;

typedef struct kq_calib_writer_params {
  int32_t n_layers, n_heads, n_kv_heads, head_dim; /* H % Hk == 0 */
  int32_t hidden;             /* model width D: every layer's wo [D, H·d] must be set; 0 = no wo */
  int32_t seq_len;            /* tokens per calibration sequence (metadata seq_len); 0 = T */
  kq_rope_mode rope;          /* POST: q/k rows already rotated; PRE: un-rotated; NONE */
  kq_rope_layout rope_layout; /* metadata rope_layout */
  float rope_theta;           /* metadata rope_theta (> 0) */
  kq_dtype dtype;             /* stored type: F32 (default), F16 or BF16 */
  const volatile int *cancel; /* optional: non-zero makes close fail with KQ_ERR_INTERRUPTED */
} kq_calib_writer_params;

/* Zero shapes (fill them), rope POST, PAIRS, theta 10000, F32. */
KQ_API kq_calib_writer_params kq_calib_writer_default_params(void);

/* Starts a calibration file at `path` (checked at once: a directory, device
 * or unwritable folder is refused). Nothing appears at `path` before
 * kq_calib_writer_close. */
KQ_API kq_status kq_calib_writer_open(const char *path, const kq_calib_writer_params *params,
                                      kq_calib_writer **out_writer);

/* Adds n_tokens rows of layer `layer`: q [n_tokens, n_heads, head_dim],
 * k and v [n_tokens, n_kv_heads, head_dim] (an engine's natural layout; the
 * file stores [heads, T, d]). Rows of a layer are kept in the order added;
 * every layer must receive the same tokens in the same order. Non-finite
 * values fail with KQ_ERR_NUMERIC naming the layer and row; on any error
 * nothing of this call is kept. */
KQ_API kq_status kq_calib_writer_add(kq_calib_writer *writer, int32_t layer, int32_t n_tokens,
                                     const float *q, const float *k, const float *v);

/* Sets layer `layer`'s W_O, [hidden, n_heads·head_dim] (PyTorch
 * o_proj.weight); a second call replaces the first. */
KQ_API kq_status kq_calib_writer_set_wo(kq_calib_writer *writer, int32_t layer, const float *wo);

/* Adds a metadata string (model identity: "model_name", "model_sha256",
 * ...); a repeated key replaces the value. The keys the params own
 * (seq_len, rope, rope_theta, rope_layout) are refused. */
KQ_API kq_status kq_calib_writer_set_meta(kq_calib_writer *writer, const char *key,
                                          const char *value);

/* Tokens added so far to layer `layer` (0 for an invalid layer). */
KQ_API int64_t kq_calib_writer_tokens(const kq_calib_writer *writer, int32_t layer);

/* Checks the file is complete (every layer the same T >= 1 rows, T a
 * multiple of seq_len, every wo set when hidden > 0), writes it atomically
 * and frees the writer, whatever the outcome. On failure no file exists at
 * the path (an earlier file there is left unchanged). */
KQ_API kq_status kq_calib_writer_close(kq_calib_writer *writer);

/* Drops everything written and frees the writer; no file appears. Accepts
 * NULL. */
KQ_API void kq_calib_writer_abort(kq_calib_writer *writer);

#ifdef __cplusplus
}
#endif

#endif /* KQSVD_H */
