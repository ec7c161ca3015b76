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
 * ABI versioning: any change to a struct layout or the meaning of a field
 * bumps KQ_BACKEND_ABI_VERSION. Fields named reserved must be zero.
 */
#ifndef KQSVD_BACKEND_H
#define KQSVD_BACKEND_H

#include "kqsvd.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KQ_BACKEND_ABI_VERSION 1u
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

/* Latent projection of new tokens, for every kv head h:
 *   dst[h, pos + t, :] = src[t, h, :] · proj[h]       (t < n_tokens)
 * src  F32 [n_tokens, n_heads, head_dim]
 * proj F32 [n_heads, head_dim, rank]   (ignored with KQ_OP_IDENTITY_*; then rank == head_dim)
 * dst  storage [n_seqs, n_heads, capacity, rank]
 * Rows are written in `storage` (F16: round to nearest even). */
typedef struct kq_project_op {
  const kq_buffer *src;
  size_t src_offset;
  const kq_buffer *proj;
  size_t proj_offset;
  kq_buffer *dst;
  size_t dst_offset;
  int32_t n_tokens, n_heads, head_dim, rank, capacity, pos;
  kq_storage storage;
  uint32_t flags; /* KQ_OP_IDENTITY_KEYS or KQ_OP_IDENTITY_VALUES means proj == I */
  int32_t n_seqs; /* 1 in ABI v1 */
  int32_t reserved[3];
} kq_project_op;

/* Causal attention on latents for the last n_queries positions.
 * q          F32 [n_queries, n_heads, head_dim]       query j is at position n_ctx - n_queries + j
 * key_down   F32 [n_kv_heads, head_dim, rank_k]  (A)
 * query_down F32 [n_kv_heads, head_dim, rank_k]  (B)
 * k_cache    storage [n_seqs, n_kv_heads, capacity, rank_k]   positions [0, n_ctx) valid
 * v_cache    storage [n_seqs, n_kv_heads, capacity, rank_v]
 * out        F32 [n_queries, n_heads, rank_v]  = P Ṽ (latent output)
 * Query head h uses kv head h / (n_heads / n_kv_heads).
 *   rope NONE/POST:  q̃ = q B,  logit(j, p) = scale · q̃_j · k̃_p
 *   rope PRE:        q̂ = rot(q B Aᵀ, pos_j), k̂_p = rot(k̃_p Bᵀ, p),
 *                    logit = scale · q̂_j · k̂_p   (never materialise k̂ in memory)
 * softmax over p <= pos_j, accumulated in F32. */
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
  int32_t n_seqs; /* 1 in ABI v1 */
  int32_t reserved[3];
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

  /* Called once when the core unloads the module (may be NULL). */
  void (*shutdown)(void);
} kq_backend_iface;

typedef kq_status (*kq_backend_entry_fn)(const kq_backend_host *host,
                                         const kq_backend_iface **out_iface);

#ifdef __cplusplus
}
#endif

#endif /* KQSVD_BACKEND_H */
