/*
 * vk_ops.h — what the op files of the Vulkan backend share (internal):
 * vk_ops.c (the op entry points, project, up, and the helpers below),
 * vk_ops_decode.c (the decode grid: attend_dec.comp + merge_up.comp) and
 * vk_ops_tiled.c (the tiled prefill path: qprep, attend, reduce, up).
 * Callers do not hold the device lock: the recording functions take it
 * through vk_frame_begin.
 */
#ifndef KQ_VK_OPS_H
#define KQ_VK_OPS_H

#include "vk_internal.h"

/* Workgroup size of the project, prefill attention, reduce, up and dequant
 * kernels. */
#define VK_WG 64u

/* ceil(a / b) as the uint32_t of a workgroup count (b > 0). */
static inline uint32_t vk_cdiv(uint64_t a, uint64_t b) {
  return (uint32_t)((a + b - 1) / b);
}

/* Bytes of one latent element; the core sends F16 only to a device with
 * storageBuffer16BitAccess (kqsvd_backend.h, "What a backend may trust"). */
static inline uint32_t vk_storage_elem(kq_storage s) {
  return s == KQ_STORAGE_F16 ? 2 : 4;
}

/* v rounded up to a multiple of a (a > 0). */
static inline VkDeviceSize vk_align_up(VkDeviceSize v, VkDeviceSize a) {
  return (v + a - 1) / a * a;
}

/* --- vk_ops.c: helpers of every op file --- */

/* Binding of a whole small matrix set (projections) of `bytes` at `offset`
 * of `b`, *elem its first float from the bound offset; when !use (the op
 * runs with identity projections and the buffer is absent) a zeroed binding
 * (the dispatch binds the dummy) and *elem = 0. Errors name `what`. */
kq_status vk_bind_opt(const kq_bdevice *d, const kq_buffer *b, size_t offset, size_t bytes,
                      bool use, vk_binding *out, uint32_t *elem, const char *what);

/* Writes the specialization constants of a segment table (kq_seg.glsl) of
 * n segments: the count at spec[at], then one word width | bits << 16 per
 * segment. A plain list (v1 layout) is one float segment of `rank`. spec
 * holds VK_SPEC_COUNT words. */
void vk_seg_spec(uint32_t *spec, int at, int32_t n, const kq_segment *segs, int32_t rank);

/* Bytes of one latent buffer (one sequence's region) of `groups` latent
 * groups and `capacity` positions: the segment planes of `segs`, or plain
 * [groups, capacity, rank] elements of `storage`. */
uint64_t vk_latent_total(int32_t n, const kq_segment *segs, int32_t rank, kq_storage storage,
                         uint64_t groups, uint64_t capacity);

/* vk_latent_total of the keys (values = 0) or values (values = 1) of an
 * attend op with `cgroups` latent groups. */
uint64_t vk_latent_bytes(const kq_attend_op *op, int values, uint32_t cgroups);

/* Bytes of a cache an attend grid reads of one side, from `lo` (relative to
 * the op's cache offset). */
typedef struct vk_latent_span {
  uint64_t lo, bytes;
} vk_latent_span;

/* What one grid over the n sequences of `seqs` reads of a side (values: 1):
 * from the lowest region to the end of the highest (the kernels address
 * every region from one binding). */
vk_latent_span vk_side_span(const kq_attend_op *op, const kq_op_seq *seqs, int32_t n, int values,
                            uint32_t cgroups);

/* Records the write of `bytes` of a host table into the device scratch at
 * `offset` inside the open frame f (the scratch must already hold it,
 * vk_frame_scratch). The table travels in the command buffer, like push
 * constants (vkCmdUpdateBuffer, at most 64 KiB per update), so there is no
 * staging, allocation or wait; the host table may be freed on return. A
 * barrier orders it before the op's later dispatches. */
void vk_record_table(vk_frame *f, const kq_bdevice *d, VkDeviceSize offset, const void *table,
                     VkDeviceSize bytes);

/* The device's RoPE table of (theta, head_dim) covering n_pos positions,
 * made and uploaded (waiting for the device) the first time a longer
 * context comes. Takes d->rope_lock: call it before vk_frame_begin, never
 * while holding the device lock. *out stays valid until device_close. */
kq_status vk_rope_table_for(kq_bdevice *d, float theta, uint32_t head_dim, uint32_t n_pos,
                            const vk_rope_table **out);

/* --- vk_ops_decode.c: the decode grid --- */

/* Shape of a decode grid (attend_dec.comp), from vk_decode_fits. */
typedef struct vk_decode_plan {
  uint32_t rows, lpr, wg, npar;
  bool subgroups;
  /* 16-byte loads per side (attend_dec.comp KVEC / VVEC): 0 scalar, 1 one
   * float segment of whole 16-byte rows, 2 a segment table whose segments
   * all have whole 16-byte rows. */
  uint32_t kvec, vvec;
  /* Most positions per chunk (vk_loop_chunk_cap for the device's loop
   * limit; UINT64_MAX without one). */
  uint64_t chunk_cap;
  /* Of the op's sequences (vk_decode_fits): the grid's positions (Σ rows ·
   * n_ctx, which each sequence's share of chunks follows) and the most
   * chunks of one sequence (partials per query row and head, the merge's
   * grid). */
  uint64_t positions;
  uint32_t max_chunks;
} vk_decode_plan;

/* Whether the decode grid takes the attend op over the n_seqs sequences of
 * `seqs` (`cgroups` latent groups: n_kv_heads, or 1 for JOINT): every
 * sequence is a decode (at most VK_DECODE_MAX_QUERIES queries), the shape
 * fits the kernels and each side's regions fit one binding. Fills *pl when
 * it does. KQSVD_VULKAN_NO_DECODE_KERNEL set: never. */
bool vk_decode_fits(const kq_bdevice *d, const kq_attend_op *op, const kq_op_seq *seqs,
                    int32_t n_seqs, uint32_t cgroups, vk_decode_plan *pl);

/* Records the attend op over every one of the n_seqs sequences of `seqs`
 * (one built from the op's scalar fields for an op without a table) in two
 * dispatches (attend_dec.comp, then merge_up.comp with Eᵀ when op->value_up
 * is set) and ends the op (vk_frame_submit). `pl` from vk_decode_fits on the
 * same arguments. */
kq_status vk_attend_decode(kq_bdevice *d, const kq_attend_op *op, const kq_op_seq *seqs,
                           int32_t n_seqs, uint32_t cgroups, const vk_decode_plan *pl);

/* --- vk_ops_tiled.c: the tiled (prefill) path --- */

/* Tiles, chunks and batches of a tiled attend (attend.comp). */
typedef struct vk_attend_plan {
  uint32_t G;     /* query heads per dispatch: the group, or a divisor of it (MQA) */
  uint32_t n_sub; /* dispatches per kv head: group / G */
  uint32_t QK, QT, TK, CH, slots, ntg, vec4, elem;
  uint64_t window; /* cache positions per binding */
  uint64_t qbatch; /* queries per batch */
  bool pre, ident;
} vk_attend_plan;

/* A tiled attend over a set of sequences: its plan and what it reads. */
typedef struct vk_tiled_shape {
  vk_attend_plan p;
  bool seg;                   /* dequantized to F32 rows in scratch */
  vk_latent_span ks, vs;      /* the sequences' regions of each side */
  uint64_t n_total, ctx0_max; /* seg: dequantized positions per group; last sequence's first */
} vk_tiled_shape;

/* Shapes the tiled attend of the n_seqs sequences of `seqs` (rows, n_ctx,
 * regions from the op's cache offsets) into *s. KQ_ERR_UNSUPPORTED when the
 * shape exceeds the device's shared memory or binding limits. */
kq_status vk_shape_tiled(const kq_bdevice *d, const kq_attend_op *op, const kq_op_seq *seqs,
                         int32_t n_seqs, uint32_t cgroups, vk_tiled_shape *s);

/* Whether the n_seqs sequences shaped in *s take one tiled grid: always for
 * one; for more, when their queries make one query batch and every side's
 * rows fit one binding (one cache window). */
bool vk_tiled_batch_fits(const kq_bdevice *d, const kq_attend_op *op, int32_t n_seqs,
                         uint32_t cgroups, const vk_tiled_shape *s);

/* Records the tiled attend of the n_seqs sequences of `seqs` shaped in *s
 * (vk_shape_tiled, vk_tiled_batch_fits) and ends the op (vk_frame_submit). */
kq_status vk_attend_tiled(kq_bdevice *d, const kq_attend_op *op, const kq_op_seq *seqs,
                          int32_t n_seqs, uint32_t cgroups, const vk_tiled_shape *s);

#endif /* KQ_VK_OPS_H */
