/*
 * kqsvd_backend.h — the ABI between the kqsvd core and a compute backend.
 *
 * A backend is one struct of function pointers (kq_backend_iface). The core
 * never knows which backend it talks to. The CPU backend is compiled into
 * libkqsvd; every other backend is a shared module (libkqsvd-NAME.so) found
 * next to libkqsvd or in a directory of KQSVD_BACKEND_PATH (':'-separated),
 * loaded with dlopen, and entered through one exported symbol:
 *
 *   kq_status kq_backend_entry(const kq_backend_host *host,
 *                              const kq_backend_iface **out_iface);
 *
 * The core checks out_iface->abi_version == KQ_BACKEND_ABI_VERSION before
 * touching anything else and refuses the module otherwise. A module whose
 * driver is missing returns KQ_OK with device_count() == 0; it never crashes
 * and never exits.
 *
 * Rules for every backend:
 *   - Report failures through host->set_error(status, fmt, ...), which records
 *     a message for kq_last_error() and returns `status`. Never print.
 *   - Ops are queued in order on the device and may run asynchronously;
 *     buffer_download and synchronize wait for all earlier work.
 *     buffer_upload is ordered after earlier work too: it never changes data
 *     that an op queued before it still reads (the core re-fills its staging
 *     buffers between ops without synchronising).
 *   - A device handle may be used from several threads at once (one thread per
 *     cache); the backend serialises what must be serialised.
 *   - Buffers may be as large as the device's max_buffer_bytes. Limits on a
 *     single binding (Vulkan maxStorageBufferRange) are the backend's to
 *     respect, by splitting dispatches or binding with offsets.
 *   - All offsets are in bytes. Matrices are row-major.
 *
 * What a backend may trust. The core validates user arguments once, in the
 * public calls, and checks every op it issues against the list below before
 * the backend sees it (backend/core/op_check.c; a broken promise is a core
 * bug reported as KQ_ERR_INVALID_ARGUMENT, never passed on). A backend need
 * not re-check these; it checks only its own limits (shared memory, work
 * group counts, binding ranges, which features it implements):
 *   - Buffers an op reads or writes are non-NULL; a projection matrix is
 *     NULL exactly when its identity flag is set (then rank == head_dim;
 *     never in the JOINT layout); attend's key_down is non-NULL for a
 *     per-head op without KQ_OP_IDENTITY_KEYS.
 *   - Every range the op addresses lies inside its buffer: src/q/out/latent
 *     and matrices at offsets that are multiples of 4 bytes; latent caches
 *     at multiples of KQ_PLANE_ALIGN, with the whole buffer of the op's
 *     segments (kq_segment_planes at `capacity`) in bounds.
 *   - project: n_tokens >= 1, n_heads >= 1, 1 <= rank <= head_dim,
 *     0 <= pos <= capacity - n_tokens. attend: 1 <= n_queries <= n_ctx <=
 *     capacity (with a sequence table: per entry, see kq_op_seq), n_heads a multiple of n_kv_heads,
 * 1 <= rank_k, rank_v <= head_dim (JOINT: <= n_kv_heads·head_dim), PRE only with an even head_dim
 * and the per-head layout, rope and layout values known. up: n_queries >= 1, 1 <= rank_v <=
 * n_kv_heads·head_dim, n_seqs == 1.
 *   - project and attend: n_seqs >= 1; `seqs` is NULL exactly for a
 *     single-sequence op described by the scalar fields, else a table of
 *     n_seqs entries obeying kq_op_seq's contract (rows consecutive,
 *     positions inside the capacity, every region in bounds, no sequence or
 *     region named twice).
 *   - storage is F32, or F16 on a device reporting fp16_storage.
 *   - Segments are 0 (one float segment) or a normalized list: 1..16
 *     segments, widths >= 1 summing to the rank, bits in {float, 8, 4}, Q4
 *     widths even, never two adjacent float segments, never a single float
 *     segment.
 *   - attend's value_up is set only for a backend with
 *     KQ_BACKEND_CAP_FUSED_UP and never with KQ_OP_IDENTITY_VALUES; `out`
 *     then holds head_dim floats per query head.
 *   - An op's output range never overlaps its inputs.
 *
 * ABI versioning: any change to a struct layout or the meaning of a field
 * bumps KQ_BACKEND_ABI_VERSION. Fields named reserved must be zero.
 */
#ifndef KQSVD_BACKEND_H
#define KQSVD_BACKEND_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "kqsvd.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KQ_BACKEND_ABI_VERSION 5u
#define KQ_BACKEND_ENTRY_SYMBOL "kq_backend_entry"

typedef struct kq_backend_host {
  uint32_t abi_version; /* KQ_BACKEND_ABI_VERSION of the core */
  /* Records a message for kq_last_error() on the calling thread; returns status. */
  kq_status (*set_error)(kq_status status, const char *fmt, ...)
#if defined(__GNUC__)
      __attribute__((format(printf, 2, 3)))
#endif
      ;
} kq_backend_host;

typedef struct kq_bdevice kq_bdevice; /* backend-defined */
typedef struct kq_buffer kq_buffer;   /* backend-defined */

/* Op flags. */
#define KQ_OP_IDENTITY_KEYS 1u   /* A = B = I (rank_k == head_dim): skip key/query projection */
#define KQ_OP_IDENTITY_VALUES 2u /* C = E = I (rank_v == head_dim): skip value projection */
/* With an identity flag set the core passes NULL for the matching matrices
 * (proj; key_down and query_down; value_up): the backend must not read them. */

/*
 * Latent storage (SPEC §1b). A latent buffer holds, for `groups` groups (kv
 * heads; 1 in the JOINT layout) and `capacity` positions, the segments of
 * one side (keys or values) as PLANES, one after another in segment order:
 *   segment s data  [groups, capacity, row_bytes(s)]
 *   segment s scale [groups, capacity] F16            (quantized segments only)
 * each plane starting at a multiple of KQ_PLANE_ALIGN bytes. Row bytes:
 * KQ_SEG_FLOAT width · (4 for F32, 2 for F16) in `storage`; KQ_SEG_Q8 width
 * (int8, two's complement); KQ_SEG_Q4 width / 2 (element 2i in the low
 * nibble, 2i + 1 in the high nibble, each stored as q + 8, q in [-7, 7]).
 * Quantization of a row x of a segment (computed from the F32 latent):
 *   s = max_j |x_j| / qmax in F32, rounded to F16 (stored);
 *   q_j = clamp(round_half_away(x_j / s), -qmax, qmax), q_j = 0 when s = 0;
 * with x_j / s computed in F32 from the F16-rounded s. Dequantized: q_j · s.
 * A v1 cache (n_segments == 0) is one float segment of width rank: exactly
 * the ABI v1 layout [groups, capacity, rank].
 */
#define KQ_PLANE_ALIGN 256u

/* Bytes of one row of segment `seg` in the data plane. */
static inline size_t kq_segment_row_bytes(kq_segment seg, kq_storage storage) {
  switch (seg.bits) {
  case KQ_SEG_Q8: return (size_t)seg.width;
  case KQ_SEG_Q4: return (size_t)seg.width / 2;
  default: return (size_t)seg.width * (storage == KQ_STORAGE_F16 ? 2u : 4u);
  }
}

/* Offsets of segment `index`'s data and scale planes (scale: 0 for a float
 * segment) in a latent buffer, and the buffer's total bytes (may be NULL). */
static inline void kq_segment_planes(const kq_segment *segs, int32_t n_segments, kq_storage storage,
                                     size_t groups, size_t capacity, int32_t index,
                                     size_t *out_data, size_t *out_scale, size_t *out_total) {
  size_t off = 0, data = 0, scale = 0;
  for (int32_t s = 0; s < n_segments; s++) {
    off = (off + KQ_PLANE_ALIGN - 1) / KQ_PLANE_ALIGN * KQ_PLANE_ALIGN;
    if (s == index) data = off;
    off += groups * capacity * kq_segment_row_bytes(segs[s], storage);
    if (segs[s].bits != KQ_SEG_FLOAT) {
      off = (off + KQ_PLANE_ALIGN - 1) / KQ_PLANE_ALIGN * KQ_PLANE_ALIGN;
      if (s == index) scale = off;
      off += groups * capacity * 2;
    }
  }
  if (out_data) *out_data = data;
  if (out_scale) *out_scale = scale;
  if (out_total) *out_total = off;
}

/* 1 when a segment list is the ABI v1 layout (no segments, or one float
 * segment): backends without quantized kernels accept exactly these and
 * report KQ_ERR_UNSUPPORTED for anything else. The core merges adjacent
 * float segments, so a float-only list always arrives as one. */
static inline int kq_segments_plain(int32_t n_segments, const kq_segment *segs) {
  return n_segments == 0 || (n_segments == 1 && segs && segs[0].bits == KQ_SEG_FLOAT);
}

/* The folder where backends keep compiled kernels across runs (OpenCL
 * program binaries, the Vulkan pipeline cache): $KQSVD_CACHE_DIR, else
 * $XDG_CACHE_HOME/kqsvd, else $HOME/.cache/kqsvd. Writes it to out; 0 when
 * no variable gives one or it does not fit in `size`. The CLI reads the same
 * folder to say when a first run will compile kernels. */
static inline int kq_kernel_cache_dir(char *out, size_t size) {
  const char *dir = getenv("KQSVD_CACHE_DIR");
  int n;
  if (dir && dir[0])
    n = snprintf(out, size, "%s", dir);
  else if ((dir = getenv("XDG_CACHE_HOME")) && dir[0])
    n = snprintf(out, size, "%s/kqsvd", dir);
  else if ((dir = getenv("HOME")) && dir[0])
    n = snprintf(out, size, "%s/.cache/kqsvd", dir);
  else
    return 0;
  return n > 0 && (size_t)n < size;
}

/* The one RoPE angle scheme of every backend and of the host model: pair j
 * (elements (2j, 2j+1) in the interleaved layout, (j, j + d/2) in the
 * half-split one) of a vector at position p is rotated by the angle
 *   p · kq_rope_inv_freq(theta, head_dim, j),
 * both factors in double; cos and sin are taken in double and rounded to F32
 * once. Backends that tabulate angles (two-level tables, recurrences) must
 * stay within F32 rounding of this definition for every position below the
 * cache's capacity. theta <= 0 means the default 10000. */
static inline double kq_rope_inv_freq(double theta, int32_t head_dim, int32_t j) {
  if (!(theta > 0.0)) theta = 10000.0;
  return pow(theta, -2.0 * (double)j / (double)head_dim);
}

/*
 * One sequence of a batched op (kq_project_op.seqs, kq_attend_op.seqs). A
 * cache keeps each sequence in its own latent REGION: a complete latent
 * buffer of `capacity` positions (planes above) at a byte offset of the
 * layer's buffer. An op over n_seqs sequences carries one entry per
 * sequence, so that one kernel grid covers them all:
 *   project: sequence i's tokens are src rows [row, row + n_rows); token t
 *            goes to position pos + t of the region at dst_offset + k_region.
 *   attend:  its queries are q rows [row, row + n_rows), its outputs the out
 *            rows of the same indices; query t sits at position
 *            n_ctx - n_rows + t of the regions at k_cache_offset + k_region
 *            and v_cache_offset + v_region, positions [0, n_ctx) valid.
 * Rows are consecutive: entry 0 starts at row 0 and entry i + 1 at
 * row + n_rows of entry i; the op's n_tokens / n_queries is their sum.
 * Regions are KQ_PLANE_ALIGN multiples; two entries never share a sequence
 * id or a region. Paging (blocks from a pool with a block table per
 * sequence) will replace the one region offset by a block table; a region
 * is then the special case of one block of `capacity` positions.
 */
typedef struct kq_op_seq {
  size_t k_region; /* bytes: project: added to dst_offset; attend: to k_cache_offset */
  size_t v_region; /* bytes: attend: added to v_cache_offset; project: 0 */
  int32_t row;     /* first row of the sequence in src (project) or q and out (attend) */
  int32_t n_rows;  /* tokens (project) or queries (attend), >= 1 */
  int32_t pos;     /* project: position of the first token; attend: 0 */
  int32_t n_ctx;   /* attend: valid positions, n_rows <= n_ctx <= capacity; project: 0 */
  int32_t seq;     /* the cache's sequence id, for messages; distinct within the op */
  int32_t reserved;
} kq_op_seq;

/* Latent projection of new tokens, for every kv head h:
 *   dst[h, pos + t, :] = src[t, h, :] · proj[h]       (t < n_tokens)
 * src  F32 [n_tokens, n_heads, head_dim]
 * proj F32 [n_heads, head_dim, rank]   (ignored with KQ_OP_IDENTITY_*; then rank == head_dim)
 * dst  the latent buffer of `segments` (planes above), n_heads groups; with
 *      n_segments == 0: storage [n_seqs, n_heads, capacity, rank].
 * Float rows are written in `storage` (F16: round to nearest even),
 * quantized segments as above. The JOINT layout uses this op with n_heads =
 * 1 and head_dim = n_kv_heads · d (a token's keys of every kv head are one
 * row). */
typedef struct kq_project_op {
  const kq_buffer *src;
  size_t src_offset;
  const kq_buffer *proj;
  size_t proj_offset;
  kq_buffer *dst;
  size_t dst_offset;
  int32_t n_tokens, n_heads, head_dim, rank, capacity, pos;
  kq_storage storage;
  uint32_t flags;             /* KQ_OP_IDENTITY_KEYS or KQ_OP_IDENTITY_VALUES means proj == I */
  int32_t n_seqs;             /* sequences in the op, >= 1 */
  int32_t n_segments;         /* 0: one float segment of width rank */
  const kq_segment *segments; /* host array [n_segments], widths sum to rank */
  /* Host array [n_seqs] (kq_op_seq), or NULL for one sequence described by
   * n_tokens, pos and dst_offset. With a table, n_tokens is the sum of its
   * n_rows and pos is 0. */
  const kq_op_seq *seqs;
  int32_t reserved[2];
} kq_project_op;

/* Causal attention on latents for the last n_queries positions.
 * q          F32 [n_queries, n_heads, head_dim]       query j is at position n_ctx - n_queries + j
 * key_down   F32 [n_kv_heads, head_dim, rank_k]  (A)
 * query_down F32 [n_kv_heads, head_dim, rank_k]  (B)
 * k_cache    latent buffer of key_segments (planes above), groups = n_kv_heads
 *            (JOINT: 1); positions [0, n_ctx) valid
 * v_cache    latent buffer of value_segments, likewise
 * out        F32 [n_queries, n_heads, rank_v]  = P Ṽ (latent output)
 * Query head h uses kv head h / (n_heads / n_kv_heads).
 *   rope NONE/POST:  q̃ = q B,  logit(j, p) = scale · q̃_j · k̃_p
 *   rope PRE:        q̂ = rot(q B Aᵀ, pos_j), k̂_p = rot(k̃_p Bᵀ, p),
 *                    logit = scale · q̂_j · k̂_p   (never materialise k̂ in memory)
 * softmax over p <= pos_j, accumulated in F32.
 * layout JOINT (rope NONE/POST only): the caches hold one group shared by
 * every query head; q̃ for query head h is q_h · B[h / g] (query_down stays
 * [n_kv_heads, head_dim, rank_k]); key_down is not read. Quantized segments
 * enter the logits as scale(p) · (q̃_seg · int_seg(p)) and P·Ṽ likewise. */
typedef struct kq_attend_op {
  const kq_buffer *q;
  size_t q_offset;
  const kq_buffer *key_down;
  size_t key_down_offset;
  const kq_buffer *query_down;
  size_t query_down_offset;
  const kq_buffer *k_cache;
  size_t k_cache_offset;
  const kq_buffer *v_cache;
  size_t v_cache_offset;
  kq_buffer *out;
  size_t out_offset;
  int32_t n_queries, n_ctx, n_heads, n_kv_heads, head_dim, rank_k, rank_v, capacity;
  kq_storage storage;
  kq_rope_mode rope;
  kq_rope_layout rope_layout;
  float rope_theta;
  float scale; /* 1/sqrt(head_dim) */
  uint32_t flags;
  int32_t n_seqs; /* sequences in the op, >= 1 */
  kq_layout layout;
  int32_t n_key_segments, n_value_segments; /* 0: one float segment of the rank */
  const kq_segment *key_segments, *value_segments;
  /* Fused up-projection: only for a backend with KQ_BACKEND_CAP_FUSED_UP,
   * and only with KQ_OP_IDENTITY_VALUES clear. When value_up is non-NULL,
   * `out` receives the full output F32 [n_queries, n_heads, head_dim] =
   * (P Ṽ)[j, h, :] · E[h / g]ᵀ (value_up laid out as in kq_up_op) instead of
   * the latent; the latent need not be stored anywhere. */
  const kq_buffer *value_up;
  size_t value_up_offset;
  /* Host array [n_seqs] (kq_op_seq), or NULL for one sequence described by
   * n_queries, n_ctx and the cache offsets. With a table, n_queries is the
   * sum of its n_rows and n_ctx the largest n_ctx (a bound for planning). */
  const kq_op_seq *seqs;
  int32_t reserved[2];
} kq_attend_op;

/* Latent-to-full output: out[j, h, :] = latent[j, h, :] · E[h / g]ᵀ
 * latent F32 [n_queries, n_heads, rank_v], value_up F32 [n_kv_heads, head_dim, rank_v],
 * out F32 [n_queries, n_heads, head_dim]. */
typedef struct kq_up_op {
  const kq_buffer *latent;
  size_t latent_offset;
  const kq_buffer *value_up;
  size_t value_up_offset;
  kq_buffer *out;
  size_t out_offset;
  int32_t n_queries, n_heads, n_kv_heads, head_dim, rank_v;
  uint32_t flags;
  int32_t n_seqs;
  int32_t reserved[3];
} kq_up_op;

/* The single-sequence op of entry i of a batched project op (the op itself
 * when it has no table): offsets moved to the sequence's rows and region,
 * n_tokens and pos from the entry, n_seqs 1, seqs NULL. Backends whose
 * kernels do not read the table yet loop over these. */
static inline kq_project_op kq_project_op_seq(const kq_project_op *op, int32_t i) {
  kq_project_op s = *op;
  if (!op->seqs) return s;
  const kq_op_seq *e = &op->seqs[i];
  s.src_offset += (size_t)e->row * (size_t)op->n_heads * (size_t)op->head_dim * 4;
  s.dst_offset += e->k_region;
  s.n_tokens = e->n_rows;
  s.pos = e->pos;
  s.n_seqs = 1;
  s.seqs = NULL;
  return s;
}

/* Likewise for attend: q and out rows, both regions, n_queries and n_ctx
 * from entry i. */
static inline kq_attend_op kq_attend_op_seq(const kq_attend_op *op, int32_t i) {
  kq_attend_op s = *op;
  if (!op->seqs) return s;
  const kq_op_seq *e = &op->seqs[i];
  const size_t row = (size_t)e->row * (size_t)op->n_heads;
  s.q_offset += row * (size_t)op->head_dim * 4;
  s.out_offset += row * (size_t)(op->value_up ? op->head_dim : op->rank_v) * 4;
  s.k_cache_offset += e->k_region;
  s.v_cache_offset += e->v_region;
  s.n_queries = e->n_rows;
  s.n_ctx = e->n_ctx;
  s.n_seqs = 1;
  s.seqs = NULL;
  return s;
}

typedef struct kq_backend_iface {
  uint32_t abi_version; /* KQ_BACKEND_ABI_VERSION the module was built with */
  uint32_t struct_size; /* sizeof(kq_backend_iface) of the module */
  const char *name;     /* "cpu", "vulkan", "opencl" */

  int (*device_count)(void);
  kq_status (*device_info)(int index, kq_device_info *out_info); /* name = NAME:index */
  kq_status (*device_open)(int index, kq_bdevice **out_device);
  void (*device_close)(kq_bdevice *device);

  kq_status (*buffer_alloc)(kq_bdevice *device, size_t bytes, kq_buffer **out_buffer);
  void (*buffer_free)(kq_bdevice *device, kq_buffer *buffer);
  kq_status (*buffer_upload)(kq_bdevice *device, kq_buffer *dst, size_t offset, const void *src,
                             size_t bytes);
  kq_status (*buffer_download)(kq_bdevice *device, const kq_buffer *src, size_t offset, void *dst,
                               size_t bytes); /* blocking */

  kq_status (*project)(kq_bdevice *device, const kq_project_op *op);
  kq_status (*attend)(kq_bdevice *device, const kq_attend_op *op);
  kq_status (*up)(kq_bdevice *device, const kq_up_op *op);

  /* Streaming copy of `bytes` (bandwidth ceiling for benchmarks). */
  kq_status (*copy)(kq_bdevice *device, kq_buffer *dst, const kq_buffer *src, size_t bytes);
  kq_status (*synchronize)(kq_bdevice *device);

  /* Counters since device_open (kqsvd.h, kq_device_stats): fill every field
   * after struct_size/reserved. May be NULL (kq_device_get_stats then
   * reports KQ_ERR_UNSUPPORTED). */
  kq_status (*get_stats)(kq_bdevice *device, kq_device_stats *out_stats);

  uint32_t caps; /* KQ_BACKEND_CAP_* */

  /* An engine's own device and buffers (may be NULL: the backend cannot
   * adopt them; the core then reports KQ_ERR_UNSUPPORTED).
   * device_open_external: `handles` is the backend's public handle struct
   * (kqsvd_vulkan.h: kq_vulkan_device_handles; kqsvd_opencl.h:
   * kq_opencl_device_handles), struct_size first; fills *out_info like
   * device_info (name "NAME:external") and opens a device that uses those
   * handles. device_close then destroys only what the backend created itself,
   * never the engine's handles.
   * buffer_import: `native` is the backend's public buffer struct
   * (kq_vulkan_buffer; kq_opencl_buffer), on the device's own context;
   * returns a kq_buffer usable in every op and its usable size in
   * *out_bytes; buffer_free releases only the wrapper. */
  kq_status (*device_open_external)(const void *handles, kq_device_info *out_info,
                                    kq_bdevice **out_device);
  kq_status (*buffer_import)(kq_bdevice *device, const void *native, size_t *out_bytes,
                             kq_buffer **out_buffer);

  /* Called by kq_cache_create once per layer, before the cache is used: the
   * backend creates (or loads from its kernel cache) every pipeline or kernel
   * that the ops described here will need, so the first append or attend
   * compiles nothing. May be NULL. The ops describe shapes; a backend may
   * run them once on data of its own (some drivers compile at the first
   * dispatch), writing latent positions [0, n_tokens) of the cache, which
   * hold nothing yet. append_keys / append_values are the layer's project
   * ops, attend its attend op (value_up set as for a full output), up the up
   * op the core issues after attend (NULL when it issues none); any of them
   * may be NULL. Counts are upper bounds: the backend prepares for every
   * n_tokens in [1, append->n_tokens] and every n_queries in
   * [1, attend->n_queries] (n_ctx == n_queries, pos 0). The matrices and
   * latent buffers are the cache's own, at the offsets of sequence 0; src,
   * q and out are NULL (the caller's data is not known yet); seqs is NULL. */
  kq_status (*prepare)(kq_bdevice *device, const kq_project_op *append_keys,
                       const kq_project_op *append_values, const kq_attend_op *attend,
                       const kq_up_op *up);
} kq_backend_iface;

/* The backend's attend honours kq_attend_op.value_up (fused up-projection),
 * so the core issues one attend instead of attend + up. */
#define KQ_BACKEND_CAP_FUSED_UP 1u

typedef kq_status (*kq_backend_entry_fn)(const kq_backend_host *host,
                                         const kq_backend_iface **out_iface);

#ifdef __cplusplus
}
#endif

#endif /* KQSVD_BACKEND_H */
