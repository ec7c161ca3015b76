/*
 * ocl_ops.h — what the op files of the OpenCL backend share (internal):
 * ocl_ops.c (project, prefill paths, up, the op entry points) and
 * ocl_ops_decode.c (kq_attn_decode on the stored latents + the merge and
 * up-projection in kq_attn_reduce_up). Callers hold dev->lock.
 */
#ifndef KQ_OCL_OPS_H
#define KQ_OCL_OPS_H

#include "ocl_internal.h"

/* Appends of at most this many tokens project with kq_qproj, larger ones
 * with CLBlast. */
#define KQ_OCL_SMALL_PROJECT 16
/* Prefill (n_queries >= this, no pre-RoPE) goes through CLBlast. */
#define KQ_OCL_GEMM_MIN_QUERIES 32
/* Largest prefill score block [H, rows, cols] in bytes. */
#define KQ_OCL_SCORE_BUDGET ((size_t)64 << 20)
/* Positions per split-K chunk (lowered when local memory is small). */
#define KQ_OCL_CHUNK 256
/* Most queries sharing one work-group of the fused kernel (pre-RoPE; half
 * that otherwise). */
#define KQ_OCL_QBLOCK 16

/* a*b*c*d as size_t; SIZE_MAX on overflow. */
static inline size_t kq_ocl_prod4(int64_t a, int64_t b, int64_t c, int64_t d) {
  size_t r = 1;
  int64_t v[4] = {a, b, c, d};
  for (int i = 0; i < 4; ++i)
    if (v[i] < 0 || __builtin_mul_overflow(r, (size_t)v[i], &r)) return SIZE_MAX;
  return r;
}

/* Rows that a scratch buffer sized by a batch's rows is allocated for: at
 * least KQ_OCL_SMALL_PROJECT (16: a launch of KQ_OCL_SEQS one-row sequences), so that a
 * decode batch that grows as sequences join reuses the buffers of its first
 * step instead of regrowing them (no device allocation after warm-up). */
static inline int64_t kq_ocl_batch_rows(int64_t rows) {
  return rows < KQ_OCL_SMALL_PROJECT ? KQ_OCL_SMALL_PROJECT : rows;
}

/* Largest power of two <= min(limit, what kernel k allows on the device). */
static inline size_t kq_ocl_wg_size(const kq_bdevice *dev, int k, size_t limit) {
  size_t w = 1;
  while (w * 2 <= limit && w * 2 <= dev->kernel_wg[k]) w *= 2;
  return w;
}

/* Mirror of kq_seg4 in kq_decode.cl (by-value kernel argument; 128 bytes,
 * no padding on either side). */
#define KQ_OCL_SEG4 4
typedef struct kq_ocl_seg4 {
  cl_ulong data[KQ_OCL_SEG4];
  cl_ulong scale[KQ_OCL_SEG4];
  cl_int width[KQ_OCL_SEG4];
  cl_int bits[KQ_OCL_SEG4];
  cl_int col[KQ_OCL_SEG4];
  cl_int n, f16, pad0, pad1;
} kq_ocl_seg4;

/* Mirror of kq_seqtab in kq_prelude.cl (by-value kernel argument, 520
 * bytes): the sequences of one attend launch (kq_attn_decode, kq_qrot,
 * kq_attn_chunk_*). */
#define KQ_OCL_SEQS 16
typedef struct kq_ocl_seqtab {
  cl_ulong kreg[KQ_OCL_SEQS];
  cl_ulong vreg[KQ_OCL_SEQS];
  cl_int rb0[KQ_OCL_SEQS];
  cl_int row0[KQ_OCL_SEQS];
  cl_int nq[KQ_OCL_SEQS];
  cl_int nctx[KQ_OCL_SEQS];
  cl_int n, pad0;
} kq_ocl_seqtab;

/* Mirror of kq_ptab in kq_prelude.cl (by-value kernel argument, 264
 * bytes): the sequences of one project launch (kq_store_rows_*,
 * kq_seg_store). */
typedef struct kq_ocl_ptab {
  cl_ulong reg[KQ_OCL_SEQS];
  cl_int row0[KQ_OCL_SEQS];
  cl_int pos[KQ_OCL_SEQS];
  cl_int n, pad0;
} kq_ocl_ptab;

/* The error when even the smallest query block and chunk of a split-K
 * kernel overflow local memory (a group of g heads). */
kq_status kq_ocl_local_mem_error(const kq_bdevice *dev, cl_int g);

/* Split-K partials in scratch: outputs (rank_v floats per query head and
 * chunk of `chunk` positions) and running (max, sum) pairs. Sized for the
 * whole capacity at decode-size m (decode steps never regrow them), for
 * the context otherwise. */
kq_status kq_ocl_partials(kq_bdevice *dev, const kq_attend_op *op, cl_int chunk, cl_int rv,
                          cl_mem *part_o, cl_mem *part_ml);

/* The planes of one side (plain: one float segment of the rank) for
 * kq_attn_decode, at byte `offset` of the cache; 0 when the side has more
 * than KQ_OCL_SEG4 segments. */
int kq_ocl_seg4_of(int32_t n, const kq_segment *segs, int32_t rank, kq_storage storage,
                   size_t groups, size_t capacity, size_t offset, kq_ocl_seg4 *out);

/* Whether the attend of one sequence `op` is served by kq_attn_decode (see
 * ocl_ops_decode.c). */
int kq_ocl_takes_decode(const kq_bdevice *dev, const kq_attend_op *op);

/* Split-K attention on the stored latents (kq_attn_decode) for the
 * sequences of `tab` (row blocks filled in here), then the merge into
 * op->out (kq_attn_reduce_up: the latent, or with value_up the full output
 * through E, group_e query heads per E matrix). qt: prepared queries
 * q B [n_queries, H, rank_k]; `op` with the JOINT layout already seen as one
 * kv group; out_e, e_e in floats. */
kq_status kq_ocl_attend_decode(kq_bdevice *dev, const kq_attend_op *op, cl_mem qt,
                               const kq_ocl_seg4 *ks, const kq_ocl_seg4 *vs, kq_ocl_seqtab *tab,
                               cl_int group_e, cl_ulong out_e, cl_ulong e_e);

#endif /* KQ_OCL_OPS_H */
