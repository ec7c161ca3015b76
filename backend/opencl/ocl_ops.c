/*
 * ocl_ops.c — the three compute ops of the backend ABI on OpenCL:
 *   project: latent projection of new tokens (kq_qproj for up to
 *            KQ_OCL_SMALL_PROJECT rows, else CLBlast strided-batched SGEMM
 *            over kv heads), stored as F32, F16 (vstore_half_rte) or
 *            quantized segments (kq_seg_store, the rule of kq_quantize_row);
 *            the sequences of a table 16 per projection and store
 *   attend:  causal attention on latents, PER_HEAD or JOINT (one latent group
 *            shared by every query head), on the stored latents (no F32
 *            copy but for a side of more than KQ_OCL_SEG4 segments):
 *            - kq_attn_decode (ocl_ops_decode.c; float, q8, q4 read in
 *              place) for segmented caches, on GPUs for plain decode and
 *              F16 prefill, and for every sequence table without pre-RoPE;
 *              then kq_attn_reduce_up (merge + Eᵀ in one kernel)
 *            - kq_attn_split (CPU drivers, plain decode / small m, F16
 *              prefill)
 *            - kq_attn_chunk_f32 / _f16 / _seg with pre-RoPE (keys rebuilt
 *              per position, angles from the double-precision table of
 *              rope_table), sequence tables in one launch
 *            - CLBlast Q̃K̃ᵀ → causal softmax → PṼ for F32 prefill
 *            With value_up (KQ_BACKEND_CAP_FUSED_UP) the full output is
 *            written by the same op.
 *   up:      latent-to-full output (Eᵀ)
 * Nothing here waits for the device: ops are enqueued and flushed (one
 * clFlush per op); scratch buffers persist per device and are sized so that
 * decode steps never regrow them.
 * Every op validates shapes, offsets and buffer ranges before enqueueing.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ocl_ops.h"

/* Stores latent rows src[off + h·head_stride + t·row_stride + c] (t <
 * n_rows, h < groups) of the sequences of `tab` (regions in bytes) into
 * every segment's planes (one kq_seg_store per segment). Caller holds
 * dev->lock. */
static kq_status store_segments(kq_bdevice *dev, cl_mem src, cl_ulong off, cl_int row_stride,
                                cl_int head_stride, const kq_project_op *op, const kq_ocl_ptab *tab,
                                cl_int n_rows) {
  kq_status st = KQ_OK;
  const int k = KQ_K_SEG_STORE;
  const cl_int f16 = op->storage == KQ_STORAGE_F16;
  cl_int col = 0;
  for (int32_t s = 0; s < op->n_segments && st == KQ_OK; s++) {
    size_t data = 0, scale = 0;
    kq_segment_planes(op->segments, op->n_segments, op->storage, (size_t)op->n_heads,
                      (size_t)op->capacity, s, &data, &scale, NULL);
    const cl_ulong data_off = op->dst_offset + data, scale_off = op->dst_offset + scale;
    const cl_int width = op->segments[s].width, bits = op->segments[s].bits;
    st = KQ_OCL_ARGS(dev, k, KQ_OCL_VAL(src), KQ_OCL_VAL(off), KQ_OCL_VAL(row_stride),
                     KQ_OCL_VAL(head_stride), KQ_OCL_VAL(col), KQ_OCL_VAL(width), KQ_OCL_VAL(bits),
                     KQ_OCL_VAL(f16), KQ_OCL_VAL(op->dst->mem), KQ_OCL_VAL(data_off),
                     KQ_OCL_VAL(scale_off), KQ_OCL_VAL(op->capacity), KQ_OCL_VAL(*tab));
    if (st == KQ_OK)
      st = kq_ocl_launch(dev, k, (size_t[3]){(size_t)n_rows, (size_t)op->n_heads, 1}, NULL);
    col += width;
  }
  return st;
}

/* Projects and stores sequences i0 .. i0 + n_seq - 1 of `op` (all of it
 * when op->seqs is NULL, n_seq 1): their rows are consecutive in src, so
 * one projection (kq_qproj for up to KQ_OCL_SMALL_PROJECT rows, else one
 * CLBlast strided-batched GEMM) covers them all, and one store launch (per
 * segment) puts every row at its sequence's region and position (kq_ocl_ptab).
 * Only a single F32 plain sequence lets the GEMM write the cache rows
 * directly. Caller holds dev->lock. */
static kq_status project_seqs(kq_bdevice *dev, const kq_project_op *op, int32_t i0, int32_t n_seq) {
  /* The core checked the op (kqsvd_backend.h, "What a backend may trust"):
   * offsets are whole elements inside their buffers, rows consecutive. */
  const int identity = (op->flags & (KQ_OP_IDENTITY_KEYS | KQ_OP_IDENTITY_VALUES)) != 0;
  const int plain = kq_segments_plain(op->n_segments, op->segments);
  const int f16 = op->storage == KQ_STORAGE_F16;
  const size_t esz = f16 ? 2 : 4;
  const int32_t first_row = op->seqs ? op->seqs[i0].row : 0;
  kq_ocl_ptab tab = {.n = n_seq};
  cl_int n = 0;
  for (int32_t i = 0; i < n_seq; ++i) {
    const kq_op_seq *e = op->seqs ? &op->seqs[i0 + i] : NULL;
    tab.row0[i] = n;
    tab.pos[i] = e ? e->pos : op->pos;
    /* kq_store_rows_* address elements, kq_seg_store bytes. */
    tab.reg[i] = e ? (plain ? e->k_region / esz : e->k_region) : 0;
    n += e ? e->n_rows : op->n_tokens;
  }
  const cl_int n_heads = op->n_heads, d = op->head_dim, r = op->rank, cap = op->capacity;
  const cl_ulong src_e = op->src_offset / 4 + (size_t)first_row * n_heads * d;
  const cl_ulong proj_e = identity ? 0 : op->proj_offset / 4;
  const cl_ulong dst_e = plain ? op->dst_offset / esz : 0;
  kq_status st = KQ_OK;
  cl_mem rows_src = op->src->mem;
  cl_ulong rows_off = src_e;
  cl_int row_stride = n_heads * d, head_stride = d;
  if (!identity && n <= KQ_OCL_SMALL_PROJECT) {
    /* Decode-size appends: kq_qproj (one head per group) into F32 rows
     * [n, H, r] in scratch, then stored below; no CLBlast call (which may
     * allocate device memory of its own). */
    cl_mem c;
    const int kp = KQ_K_QPROJ;
    const cl_int one = 1, no = 0;
    st = kq_ocl_scratch(dev, KQ_S_GEMM_OUT, kq_ocl_prod4(n_heads, kq_ocl_batch_rows(n), r, 4), &c);
    if (st == KQ_OK)
      st = KQ_OCL_ARGS(dev, kp, KQ_OCL_VAL(op->src->mem), KQ_OCL_VAL(src_e),
                       KQ_OCL_VAL(op->proj->mem), KQ_OCL_VAL(proj_e), KQ_OCL_VAL(c),
                       KQ_OCL_VAL(n_heads), KQ_OCL_VAL(one), KQ_OCL_VAL(d), KQ_OCL_VAL(r),
                       KQ_OCL_VAL(no));
    if (st == KQ_OK)
      st = kq_ocl_launch(dev, kp, (size_t[3]){((size_t)r + 7) / 8, (size_t)n_heads, (size_t)n},
                         NULL);
    if (st != KQ_OK) return st;
    rows_src = c;
    rows_off = 0;
    row_stride = n_heads * r;
    head_stride = r;
  } else if (!identity) {
    /* One F32 plain sequence: the GEMM writes the cache rows directly;
     * otherwise F32 rows [H, n, r] in scratch, stored below. */
    const int direct = !f16 && plain && n_seq == 1;
    cl_mem c = op->dst->mem;
    size_t c_off = dst_e + tab.reg[0] + (size_t)tab.pos[0] * r, c_stride = (size_t)cap * r;
    if (!direct) {
      st = kq_ocl_scratch(dev, KQ_S_GEMM_OUT, kq_ocl_prod4(n_heads, n, r, 4), &c);
      if (st != KQ_OK) return st;
      c_off = 0;
      c_stride = (size_t)n * r;
    }
    st = kq_ocl_gemm_strided_batched(dev, n, r, d, op->src->mem, src_e, (size_t)n_heads * d, d,
                                     op->proj->mem, proj_e, r, (size_t)d * r, c, c_off, r, c_stride,
                                     n_heads);
    if (st != KQ_OK || direct) return st;
    rows_src = c;
    rows_off = 0;
    row_stride = r;
    head_stride = n * r;
  }
  if (!plain) return store_segments(dev, rows_src, rows_off, row_stride, head_stride, op, &tab, n);
  const int k = f16 ? KQ_K_STORE_ROWS_F16 : KQ_K_STORE_ROWS_F32;
  st = KQ_OCL_ARGS(dev, k, KQ_OCL_VAL(rows_src), KQ_OCL_VAL(rows_off), KQ_OCL_VAL(row_stride),
                   KQ_OCL_VAL(head_stride), KQ_OCL_VAL(op->dst->mem), KQ_OCL_VAL(dst_e),
                   KQ_OCL_VAL(r), KQ_OCL_VAL(cap), KQ_OCL_VAL(tab));
  if (st == KQ_OK)
    st = kq_ocl_launch(dev, k, (size_t[3]){(size_t)r, (size_t)n, (size_t)n_heads}, NULL);
  return st;
}

/* Merges the split-K partials into the latent outputs. */
static kq_status attend_reduce(kq_bdevice *dev, const kq_attend_op *op, cl_mem part_o,
                               cl_mem part_ml, cl_int n_chunks, cl_ulong out_e) {
  kq_status st = KQ_OK;
  const int kr = KQ_K_ATTN_REDUCE;
  st = KQ_OCL_ARGS(dev, kr, KQ_OCL_VAL(part_o), KQ_OCL_VAL(part_ml), KQ_OCL_VAL(op->out->mem),
                   KQ_OCL_VAL(out_e), KQ_OCL_VAL(op->n_heads), KQ_OCL_VAL(op->rank_v),
                   KQ_OCL_VAL(n_chunks));
  if (st != KQ_OK) goto out;
  st = kq_ocl_launch(
      dev, kr, (size_t[3]){(size_t)op->rank_v, (size_t)op->n_heads, (size_t)op->n_queries}, NULL);
out:
  return st;
}

/* Split-K attention without pre-RoPE (decode, small m): kq_attn_split_*.
 * Positions per chunk: 256, doubled up to 1024 while there stay at least
 * 8 work-groups per compute unit (fewer, larger chunks cost less per work-
 * group where there are few compute units), then lowered with the query
 * block until the local memory fits. The value pass splits the chunk over
 * the work-items left when every (columns, row block) unit has one
 * (vsplit); softmax segments likewise (nseg). On CPU devices the score pass
 * also touches the value rows (see the kernel). */
static kq_status attend_split(kq_bdevice *dev, const kq_attend_op *op, cl_mem qp, cl_ulong k_e,
                              cl_ulong v_e, cl_ulong out_e) {
  kq_status st = KQ_OK;
  const cl_int g = op->n_heads / op->n_kv_heads, rk = op->rank_k, rv = op->rank_v;
  const int k = op->storage == KQ_STORAGE_F16 ? KQ_K_ATTN_SPLIT_F16 : KQ_K_ATTN_SPLIT_F32;
  const size_t wg = kq_ocl_wg_size(dev, k, 64), ncb = ((size_t)rv + 7) / 8;
  cl_int qblock = op->n_queries < KQ_OCL_QBLOCK / 2 ? op->n_queries : KQ_OCL_QBLOCK / 2;
  cl_int chunk = KQ_OCL_CHUNK;
  for (;;) {
    const size_t blocks = ((size_t)op->n_queries + qblock - 1) / qblock;
    const size_t next = ((size_t)op->n_ctx + 2 * chunk - 1) / (2 * (size_t)chunk);
    if (chunk >= 4 * KQ_OCL_CHUNK || next * op->n_kv_heads * blocks < 8 * dev->compute_units) break;
    chunk *= 2;
  }
  size_t need = 0, rows = 0, rows4 = 0, s_len = 0, nseg = 1, vsplit = 1;
  for (;;) {
    rows = (size_t)qblock * g;
    rows4 = (rows + 3) / 4 * 4;
    const size_t units = ncb * (rows4 / 4);
    nseg = rows4 / 4 < wg ? wg / (rows4 / 4) : 1;
    if (nseg > (size_t)chunk / 8) nseg = (size_t)chunk / 8;
    vsplit = units >= wg ? 1 : wg / units;
    s_len = rows4 * (size_t)chunk;
    if (s_len < vsplit * rows4 * ncb * 8) s_len = vsplit * rows4 * ncb * 8;
    need = (s_len + rows4 * (size_t)rk + 2 * rows4 * nseg + 64) * sizeof(float);
    if (need <= dev->local_mem) break;
    if (chunk > 32)
      chunk /= 2;
    else if (qblock > 1)
      qblock /= 2, chunk = KQ_OCL_CHUNK;
    else
      break;
  }
  if (need > dev->local_mem) return kq_ocl_local_mem_error(dev, g);
  const cl_int n_chunks = (op->n_ctx + chunk - 1) / chunk;
  const size_t n_blocks = ((size_t)op->n_queries + qblock - 1) / qblock;
  cl_mem part_o, part_ml;
  st = kq_ocl_partials(dev, op, chunk, rv, &part_o, &part_ml);
  if (st != KQ_OK) return st;
  const float qs = op->scale * (float)M_LOG2E;
  const cl_int cl_nseg = (cl_int)nseg, cl_vsplit = (cl_int)vsplit;
  st = KQ_OCL_ARGS(dev, k, KQ_OCL_VAL(qp), KQ_OCL_VAL(op->k_cache->mem), KQ_OCL_VAL(k_e),
                   KQ_OCL_VAL(op->v_cache->mem), KQ_OCL_VAL(v_e), KQ_OCL_VAL(part_o),
                   KQ_OCL_VAL(part_ml), KQ_OCL_VAL(op->n_queries), KQ_OCL_VAL(op->n_ctx),
                   KQ_OCL_VAL(op->n_heads), KQ_OCL_VAL(g), KQ_OCL_VAL(rk), KQ_OCL_VAL(rv),
                   KQ_OCL_VAL(op->capacity), KQ_OCL_VAL(chunk), KQ_OCL_VAL(n_chunks),
                   KQ_OCL_VAL(qs), KQ_OCL_VAL(qblock), KQ_OCL_VAL(cl_nseg), KQ_OCL_VAL(cl_vsplit),
                   KQ_OCL_VAL((cl_int){dev->cpu}), KQ_OCL_LOCAL(s_len * sizeof(float)),
                   KQ_OCL_LOCAL(rows4 * (size_t)rk * sizeof(float)),
                   KQ_OCL_LOCAL(2 * rows4 * nseg * sizeof(float)));
  if (st == KQ_OK)
    st = kq_ocl_launch(dev, k, (size_t[3]){(size_t)n_chunks * wg, (size_t)op->n_kv_heads, n_blocks},
                       (size_t[3]){wg, 1, 1});
  if (st == KQ_OK) st = attend_reduce(dev, op, part_o, part_ml, n_chunks, out_e);
  return st;
}

/* Split-K fused attention with pre-RoPE (keys rebuilt per position) on the
 * stored latents: kq_attn_chunk_f32 / _f16 for plain caches (ks, vs NULL;
 * k_e, v_e their element offsets), kq_attn_chunk_seg for segmented ones
 * (ks, vs: both sides' planes, read in place). */
static kq_status attend_fused(kq_bdevice *dev, const kq_attend_op *op, cl_mem qp, cl_mem rope,
                              cl_int dq, const kq_ocl_seg4 *ks, const kq_ocl_seg4 *vs,
                              const kq_ocl_seqtab *seqs, cl_ulong k_e, cl_ulong v_e, cl_ulong b_e,
                              cl_ulong out_e) {
  kq_status st = KQ_OK;
  const cl_int g = op->n_heads / op->n_kv_heads;
  /* Queries per work-group: they share every latent row the group loads
   * (and, with pre-RoPE, every reconstructed key). Shrink the chunk, then
   * the block (then, for the decoded keys of segmented caches, the
   * work-group), until the local memory fits. */
  const int k = ks                              ? KQ_K_ATTN_CHUNK_SEG
                : op->storage == KQ_STORAGE_F16 ? KQ_K_ATTN_CHUNK_F16
                                                : KQ_K_ATTN_CHUNK_F32;
  size_t wg = kq_ocl_wg_size(dev, k, 64), stage = 0;
  cl_int most = 0; /* queries of the longest sequence */
  for (int i = 0; i < seqs->n; ++i) most = seqs->nq[i] > most ? seqs->nq[i] : most;
  cl_int qblock = most < KQ_OCL_QBLOCK ? most : KQ_OCL_QBLOCK;
  if (op->rope != KQ_ROPE_PRE && qblock > KQ_OCL_QBLOCK / 2) qblock = KQ_OCL_QBLOCK / 2;
  cl_int chunk = KQ_OCL_CHUNK;
  size_t need = 0;
  for (;;) {
    const size_t rows = (size_t)qblock * g;
    stage = ks ? wg * (size_t)op->rank_k : 1;
    need = (rows * (size_t)(dq > 2 ? dq : 2) + rows * (size_t)chunk + stage + 64) * sizeof(float);
    if (need <= dev->local_mem) break;
    if (chunk > 32)
      chunk /= 2;
    else if (qblock > 1)
      qblock /= 2, chunk = KQ_OCL_CHUNK;
    else if (ks && wg > 1)
      wg /= 2, chunk = KQ_OCL_CHUNK;
    else
      break;
  }
  if (need > dev->local_mem) return kq_ocl_local_mem_error(dev, g);
  const cl_int n_chunks = (op->n_ctx + chunk - 1) / chunk;
  /* Query blocks of every sequence one after another; plain caches take
   * their regions in elements. */
  kq_ocl_seqtab tab = *seqs;
  size_t n_blocks = 0;
  const size_t esz = op->storage == KQ_STORAGE_F16 ? 2 : 4;
  for (int i = 0; i < tab.n; ++i) {
    tab.rb0[i] = (cl_int)n_blocks;
    n_blocks += ((size_t)tab.nq[i] + qblock - 1) / qblock;
    if (!ks) tab.kreg[i] /= esz, tab.vreg[i] /= esz;
  }
  const size_t rows = (size_t)qblock * g;
  cl_mem part_o, part_ml;
  st = kq_ocl_partials(dev, op, chunk, op->rank_v, &part_o, &part_ml);
  if (st != KQ_OK) return st;
  const cl_int pre = op->rope == KQ_ROPE_PRE, ident = (op->flags & KQ_OP_IDENTITY_KEYS) != 0,
               halves = op->rope_layout == KQ_ROPE_HALVES;
  cl_mem bmem = op->query_down ? op->query_down->mem : qp;
  const float scale2 = op->scale * (float)M_LOG2E;
  st = KQ_OCL_ARGS(
      dev, k, KQ_OCL_VAL(qp), KQ_OCL_VAL(op->k_cache->mem), ks ? KQ_OCL_VAL(*ks) : KQ_OCL_VAL(k_e),
      KQ_OCL_VAL(op->v_cache->mem), vs ? KQ_OCL_VAL(*vs) : KQ_OCL_VAL(v_e), KQ_OCL_VAL(bmem),
      KQ_OCL_VAL(b_e), KQ_OCL_VAL(part_o), KQ_OCL_VAL(part_ml), KQ_OCL_VAL(tab),
      KQ_OCL_VAL(op->n_heads), KQ_OCL_VAL(g), KQ_OCL_VAL(op->head_dim), KQ_OCL_VAL(op->rank_k),
      KQ_OCL_VAL(op->rank_v), KQ_OCL_VAL(op->capacity), KQ_OCL_VAL(chunk), KQ_OCL_VAL(n_chunks),
      KQ_OCL_VAL(pre), KQ_OCL_VAL(ident), KQ_OCL_VAL(halves), KQ_OCL_VAL(rope), KQ_OCL_VAL(scale2),
      KQ_OCL_VAL(qblock), KQ_OCL_LOCAL(rows * chunk * sizeof(float)),
      KQ_OCL_LOCAL(rows * (size_t)(dq > 2 ? dq : 2) * sizeof(float)),
      KQ_OCL_LOCAL(stage * sizeof(float)));
  if (st != KQ_OK) goto out;
  st = kq_ocl_launch(dev, k, (size_t[3]){(size_t)n_chunks * wg, (size_t)op->n_kv_heads, n_blocks},
                     (size_t[3]){wg, 1, 1});
  if (st == KQ_OK) st = attend_reduce(dev, op, part_o, part_ml, n_chunks, out_e);
out:
  return st;
}

/* Prefill of an F32 cache through CLBlast, reading the cache in place:
 * S = scale·Q̃K̃ᵀ per head, causal softmax, O = PṼ, in blocks of query rows
 * so that S stays within KQ_OCL_SCORE_BUDGET. */
static kq_status attend_gemm(kq_bdevice *dev, const kq_attend_op *op, cl_mem qt, cl_ulong k_e,
                             cl_ulong v_e, cl_ulong out_e) {
  kq_status st = KQ_OK;
  cl_mem kmat = op->k_cache->mem, vmat = op->v_cache->mem, scores;
  const size_t k_off = k_e, v_off = v_e, k_hs = (size_t)op->capacity * op->rank_k,
               v_hs = (size_t)op->capacity * op->rank_v;
  const int64_t H = op->n_heads, m = op->n_queries, g = op->n_heads / op->n_kv_heads;
  int64_t mb = (int64_t)(KQ_OCL_SCORE_BUDGET / ((size_t)H * op->n_ctx * sizeof(float)));
  if (mb < 1) mb = 1;
  if (mb > m) mb = m;
  const size_t wg = kq_ocl_wg_size(dev, KQ_K_SOFTMAX_CAUSAL, 64);
  for (int64_t j0 = 0; j0 < m; j0 += mb) {
    const cl_int rows = (cl_int)(m - j0 < mb ? m - j0 : mb);
    const cl_int first = (cl_int)(op->n_ctx - m + j0);
    const cl_int cols = first + rows;
    st = kq_ocl_scratch(dev, KQ_S_SCORES, kq_ocl_prod4(H, rows, cols, 4), &scores);
    for (int64_t h = 0; h < H && st == KQ_OK; ++h)
      st = kq_ocl_gemm(dev, 1, rows, cols, op->rank_k, op->scale, qt,
                       (size_t)(j0 * H + h) * op->rank_k, (size_t)H * op->rank_k, kmat,
                       k_off + (size_t)(h / g) * k_hs, op->rank_k, scores, (size_t)h * rows * cols,
                       cols);
    if (st != KQ_OK) return st;
    const int k = KQ_K_SOFTMAX_CAUSAL;
    st = KQ_OCL_ARGS(dev, k, KQ_OCL_VAL(scores), KQ_OCL_VAL(rows), KQ_OCL_VAL(cols),
                     KQ_OCL_VAL(first), KQ_OCL_LOCAL(wg * sizeof(float)));
    if (st == KQ_OK)
      st = kq_ocl_launch(dev, k, (size_t[3]){(size_t)rows * wg, (size_t)H, 1},
                         (size_t[3]){wg, 1, 1});
    for (int64_t h = 0; h < H && st == KQ_OK; ++h)
      st = kq_ocl_gemm(dev, 0, rows, op->rank_v, cols, 1.0f, scores, (size_t)h * rows * cols, cols,
                       vmat, v_off + (size_t)(h / g) * v_hs, op->rank_v, op->out->mem,
                       out_e + (size_t)(j0 * H + h) * op->rank_v, (size_t)H * op->rank_v);
    if (st != KQ_OK) return st;
  }
  return st;
}

static void CL_CALLBACK free_table(cl_event ev, cl_int status, void *host) {
  (void)ev, (void)status;
  free(host);
}

/* The RoPE angle table of (theta, head_dim) covering positions below
 * `capacity` (kq_rope_cs in kq_prelude.cl): float2 (cos, sin) rows
 * [256 + ceil(capacity / 256), head_dim / 2], the first 256 rows for the
 * angles p · f_j (p < 256), then one row per multiple of 256, each angle
 * p · kq_rope_inv_freq(theta, head_dim, j) formed in double and its cos and
 * sin rounded once to F32. Built on the first attend that needs it (and
 * again only when a longer capacity comes), uploaded without a host wait;
 * the host copy is freed when the write completes. Caller holds dev->lock. */
static kq_status rope_table(kq_bdevice *dev, float theta, int head_dim, int capacity, cl_mem *out) {
  const int half = head_dim / 2, hi_rows = (capacity + 255) / 256;
  int slot = -1;
  for (int i = 0; i < KQ_OCL_ROPE_TABLES; ++i) {
    const kq_ocl_rope *t = &dev->rope[i];
    if (t->mem && t->theta == theta && t->head_dim == head_dim) {
      if (t->hi_rows >= hi_rows) {
        *out = t->mem;
        return KQ_OK;
      }
      slot = i;
    }
  }
  if (slot < 0) slot = dev->rope_next++ % KQ_OCL_ROPE_TABLES;
  const size_t rows = 256 + (size_t)hi_rows, bytes = rows * (size_t)half * 2 * sizeof(float);
  float *host = malloc(bytes);
  if (!host) return kq_ocl_host->set_error(KQ_ERR_OUT_OF_MEMORY, "%s: RoPE table", dev->label);
  for (int j = 0; j < half; ++j) {
    const double f = kq_rope_inv_freq(theta, head_dim, j);
    for (size_t r = 0; r < rows; ++r) {
      const double a = (double)(r < 256 ? r : 256 * (r - 256)) * f;
      host[(r * half + j) * 2] = (float)cos(a);
      host[(r * half + j) * 2 + 1] = (float)sin(a);
    }
  }
  kq_ocl_rope *t = &dev->rope[slot];
  if (t->mem) clReleaseMemObject(t->mem); /* queued kernels keep it alive */
  *t = (kq_ocl_rope){0};
  cl_int err;
  cl_mem mem = clCreateBuffer(dev->context, CL_MEM_READ_ONLY, bytes, NULL, &err);
  dev->stats.device_allocations++;
  if (err != CL_SUCCESS) {
    free(host);
    return kq_ocl_fail(dev, KQ_ERR_DEVICE_MEMORY, "RoPE table", err);
  }
  cl_event ev = NULL;
  err = clEnqueueWriteBuffer(dev->queue, mem, CL_FALSE, 0, bytes, host, 0, NULL, &ev);
  if (err == CL_SUCCESS) {
    dev->stats.bytes_uploaded += bytes;
    err = clSetEventCallback(ev, CL_COMPLETE, free_table, host);
    clReleaseEvent(ev);
  }
  if (err != CL_SUCCESS) { /* the write may still read host: wait, then free */
    clFinish(dev->queue);
    dev->stats.host_waits++;
    free(host);
    clReleaseMemObject(mem);
    return kq_ocl_fail(dev, KQ_ERR_DEVICE, "RoPE table upload", err);
  }
  *t = (kq_ocl_rope){theta, head_dim, hi_rows, mem};
  *out = mem;
  return KQ_OK;
}

/* F32 copy [groups, capacity, rank] (positions below n_ctx filled) of one
 * side's latent cache (segmented, or plain in `storage`) in scratch `sid`,
 * one kq_seg_widen per segment. */
static kq_status widen_side(kq_bdevice *dev, const kq_buffer *cache, size_t cache_offset,
                            int32_t n_seg, const kq_segment *segs, cl_int rank, kq_storage storage,
                            cl_int groups, cl_int capacity, cl_int n_ctx, int sid, cl_mem *out) {
  kq_segment plain = {rank, KQ_SEG_FLOAT};
  if (kq_segments_plain(n_seg, segs)) n_seg = 1, segs = &plain;
  /* Sized for the whole capacity, so that decode steps never regrow it. */
  kq_status st = kq_ocl_scratch(dev, sid, kq_ocl_prod4(groups, capacity, rank, 4), out);
  if (st != KQ_OK) return st;
  const int k = KQ_K_SEG_WIDEN;
  const cl_int f16 = storage == KQ_STORAGE_F16, p0 = 0;
  cl_int col = 0;
  for (int32_t s = 0; s < n_seg; s++) {
    size_t data = 0, scale = 0;
    kq_segment_planes(segs, n_seg, storage, (size_t)groups, (size_t)capacity, s, &data, &scale,
                      NULL);
    const cl_ulong data_off = cache_offset + data, scale_off = cache_offset + scale;
    const cl_int width = segs[s].width, bits = segs[s].bits;
    st = KQ_OCL_ARGS(dev, k, KQ_OCL_VAL(cache->mem), KQ_OCL_VAL(data_off), KQ_OCL_VAL(scale_off),
                     KQ_OCL_VAL(width), KQ_OCL_VAL(bits), KQ_OCL_VAL(f16), KQ_OCL_VAL(capacity),
                     KQ_OCL_VAL(p0), KQ_OCL_VAL(*out), KQ_OCL_VAL(capacity), KQ_OCL_VAL(rank),
                     KQ_OCL_VAL(col));
    if (st != KQ_OK) goto out;
    st = kq_ocl_launch(dev, k, (size_t[3]){(size_t)width, (size_t)n_ctx, (size_t)groups}, NULL);
    if (st != KQ_OK) break;
    col += width;
  }
out:
  return st;
}

/* out[j, h, :] = latent[j, h, :] · E[h / g]ᵀ (kq_up). Caller holds dev->lock. */
static kq_status launch_up(kq_bdevice *dev, cl_mem latent, cl_ulong l_e, cl_mem emem, cl_ulong e_e,
                           cl_mem out_mem, cl_ulong o_e, cl_int n_q, cl_int n_heads,
                           cl_int n_kv_heads, cl_int head_dim, cl_int rank_v, cl_int identity) {
  kq_status st = KQ_OK;
  const cl_int g = n_heads / n_kv_heads;
  const int k = KQ_K_UP;
  st = KQ_OCL_ARGS(dev, k, KQ_OCL_VAL(latent), KQ_OCL_VAL(l_e), KQ_OCL_VAL(emem), KQ_OCL_VAL(e_e),
                   KQ_OCL_VAL(out_mem), KQ_OCL_VAL(o_e), KQ_OCL_VAL(n_heads), KQ_OCL_VAL(g),
                   KQ_OCL_VAL(head_dim), KQ_OCL_VAL(rank_v), KQ_OCL_VAL(identity));
  if (st != KQ_OK) goto out;
  const size_t hblocks = (size_t)n_kv_heads * (((size_t)g + 3) / 4);
  st = kq_ocl_launch(dev, k, (size_t[3]){(size_t)head_dim, hblocks, (size_t)n_q}, NULL);
out:
  return st;
}

/* One sequence (tab NULL), or the sequences of `tab` (rows consecutive from
 * op's q and out offsets, regions in tab, op's cache offsets without them;
 * at most KQ_OCL_SEG4 segments a side) in one launch per step: qproj, then
 * decode + reduce_up, or with pre-RoPE qrot + chunk + reduce (+ up). */
static kq_status attend_one(kq_bdevice *dev, const kq_attend_op *op, kq_ocl_seqtab *tab) {
  /* The core checked the op (kqsvd_backend.h, "What a backend may trust"):
   * offsets are whole elements inside their buffers. */
  const int joint = op->layout == KQ_LAYOUT_JOINT;
  const int ident = (op->flags & KQ_OP_IDENTITY_KEYS) != 0;
  const int pre = op->rope == KQ_ROPE_PRE;
  /* Same default as the CPU backend when the projections carry no theta. */
  const float theta = op->rope_theta > 0.0f ? op->rope_theta : 10000.0f;
  const size_t esz = op->storage == KQ_STORAGE_F16 ? 2 : 4;
  const cl_int groups = joint ? 1 : op->n_kv_heads;
  const int kplain = kq_segments_plain(op->n_key_segments, op->key_segments);
  const int vplain = kq_segments_plain(op->n_value_segments, op->value_segments);
  const cl_ulong q_e = op->q_offset / 4, out_e = op->out_offset / 4;
  const cl_ulong b_e = ident ? 0 : op->query_down_offset / 4;
  const cl_ulong a_e = !ident && pre ? op->key_down_offset / 4 : 0;
  const cl_ulong e_e = op->value_up ? op->value_up_offset / 4 : 0;
  /* Plain caches are read in place; segmented ones are widened below. */
  cl_ulong k_e = kplain ? op->k_cache_offset / esz : 0, v_e = vplain ? op->v_cache_offset / esz : 0;
  kq_status st = KQ_OK;

  const cl_int H = op->n_heads, g = op->n_heads / op->n_kv_heads, d = op->head_dim, rk = op->rank_k,
               m = op->n_queries;
  const cl_int halves = op->rope_layout == KQ_ROPE_HALVES;
  /* The kernels below see `w`: segmented (or, beside one, F16) caches as
   * their F32 copies, the JOINT layout as one kv head shared by every query
   * head, and the latent output in scratch when the up-projection is fused. */
  kq_attend_op w = *op;
  kq_buffer kwide, vwide, latent;
  pthread_mutex_lock(&dev->lock);
  cl_mem qt, qh;
  st = kq_ocl_scratch(dev, KQ_S_QPREP, kq_ocl_prod4(kq_ocl_batch_rows(m), H, rk, 4), &qt);
  if (st != KQ_OK) goto out;
  {
    const int k = KQ_K_QPROJ;
    cl_mem bmem = ident ? op->q->mem : op->query_down->mem;
    const cl_int id = ident;
    st = KQ_OCL_ARGS(dev, k, KQ_OCL_VAL(op->q->mem), KQ_OCL_VAL(q_e), KQ_OCL_VAL(bmem),
                     KQ_OCL_VAL(b_e), KQ_OCL_VAL(qt), KQ_OCL_VAL(H), KQ_OCL_VAL(g), KQ_OCL_VAL(d),
                     KQ_OCL_VAL(rk), KQ_OCL_VAL(id));
    if (st != KQ_OK) goto out;
    const size_t hblocks = (size_t)op->n_kv_heads * (((size_t)g + 3) / 4);
    st = kq_ocl_launch(dev, k, (size_t[3]){((size_t)rk + 7) / 8, hblocks, (size_t)m}, NULL);
    if (st != KQ_OK) goto out;
  }
  /* No path copies a cache of at most KQ_OCL_SEG4 segments a side to F32:
   * kq_attn_decode reads every storage in place; without pre-RoPE it
   * serves segmented caches at any m on every device, plain caches at
   * decode and small m on GPUs, and F16 prefill on GPUs. F32 prefill reads
   * the cache in place through CLBlast; CPU devices keep kq_attn_split
   * (in place, F32 or F16) for plain decode and F16 prefill. Pre-RoPE:
   * kq_attn_chunk (_seg for segmented caches). Only a side of more than
   * KQ_OCL_SEG4 segments is widened to F32 (widen_side). */
  kq_ocl_seg4 ks4, vs4;
  const int seg4 = kq_ocl_seg4_of(op->n_key_segments, op->key_segments, rk, op->storage,
                                  (size_t)groups, (size_t)op->capacity, op->k_cache_offset, &ks4) &&
                   kq_ocl_seg4_of(op->n_value_segments, op->value_segments, op->rank_v, op->storage,
                                  (size_t)groups, (size_t)op->capacity, op->v_cache_offset, &vs4);
  kq_ocl_seqtab one = {.nq = {m}, .nctx = {op->n_ctx}, .n = 1};
  if (!tab) tab = &one;
  if (seg4 && !pre && (tab != &one || kq_ocl_takes_decode(dev, op))) {
    if (joint) w.n_kv_heads = 1;
    st = kq_ocl_attend_decode(dev, &w, qt, &ks4, &vs4, tab, g, out_e, e_e);
    goto out;
  }
  if ((!kplain || !vplain) && !seg4) {
    st = widen_side(dev, op->k_cache, op->k_cache_offset, op->n_key_segments, op->key_segments, rk,
                    op->storage, groups, op->capacity, op->n_ctx, KQ_S_KWIDE, &kwide.mem);
    if (st == KQ_OK)
      st = widen_side(dev, op->v_cache, op->v_cache_offset, op->n_value_segments,
                      op->value_segments, op->rank_v, op->storage, groups, op->capacity, op->n_ctx,
                      KQ_S_VWIDE, &vwide.mem);
    if (st != KQ_OK) goto out;
    kwide.bytes = kq_ocl_prod4(groups, op->capacity, rk, 4);
    vwide.bytes = kq_ocl_prod4(groups, op->capacity, op->rank_v, 4);
    w.k_cache = &kwide;
    w.v_cache = &vwide;
    w.k_cache_offset = w.v_cache_offset = 0;
    k_e = v_e = 0;
    w.storage = KQ_STORAGE_F32;
  }
  if (joint) w.n_kv_heads = 1;
  if (op->value_up) {
    st = kq_ocl_scratch(dev, KQ_S_LATENT, kq_ocl_prod4(kq_ocl_batch_rows(m), H, op->rank_v, 4),
                        &latent.mem);
    if (st != KQ_OK) goto out;
    latent.bytes = kq_ocl_prod4(m, H, op->rank_v, 4);
    w.out = &latent;
    w.out_offset = 0;
  }
  const cl_ulong wout_e = op->value_up ? 0 : out_e;
  if (pre) {
    cl_mem rope;
    st = kq_ocl_scratch(dev, KQ_S_QROT, kq_ocl_prod4(kq_ocl_batch_rows(m), H, d, 4), &qh);
    if (st == KQ_OK) st = rope_table(dev, theta, d, op->capacity, &rope);
    if (st != KQ_OK) goto out;
    const int k = KQ_K_QROT;
    cl_mem amem = ident ? qt : op->key_down->mem;
    const cl_int id = ident;
    st = KQ_OCL_ARGS(dev, k, KQ_OCL_VAL(qt), KQ_OCL_VAL(amem), KQ_OCL_VAL(a_e), KQ_OCL_VAL(qh),
                     KQ_OCL_VAL(*tab), KQ_OCL_VAL(H), KQ_OCL_VAL(g), KQ_OCL_VAL(d), KQ_OCL_VAL(rk),
                     KQ_OCL_VAL(id), KQ_OCL_VAL(halves), KQ_OCL_VAL(rope));
    if (st != KQ_OK) goto out;
    st = kq_ocl_launch(dev, k, (size_t[3]){(size_t)d / 2, (size_t)H, (size_t)m}, NULL);
    if (st != KQ_OK) goto out;
    const int in_place = seg4 && (!kplain || !vplain);
    st = attend_fused(dev, &w, qh, rope, d, in_place ? &ks4 : NULL, in_place ? &vs4 : NULL, tab,
                      k_e, v_e, b_e, wout_e);
  } else if (m >= KQ_OCL_GEMM_MIN_QUERIES && w.storage == KQ_STORAGE_F32) {
    st = attend_gemm(dev, &w, qt, k_e, v_e, wout_e);
  } else {
    st = attend_split(dev, &w, qt, k_e, v_e, wout_e);
  }
  if (st == KQ_OK && op->value_up)
    st = launch_up(dev, latent.mem, 0, op->value_up->mem, e_e, op->out->mem, out_e, m, H,
                   op->n_kv_heads, d, op->rank_v, 0);
out:
  if (st == KQ_OK) st = kq_ocl_flush(dev);
  pthread_mutex_unlock(&dev->lock);
  return st;
}

/* KQ_OCL_SEQS sequences of a table per projection + store (in order, no
 * wait); one clFlush for the op. */
kq_status kq_ocl_project(kq_bdevice *dev, const kq_project_op *op) {
  kq_status st = KQ_OK;
  pthread_mutex_lock(&dev->lock);
  for (int32_t i0 = 0; i0 < op->n_seqs && st == KQ_OK; i0 += KQ_OCL_SEQS)
    st = project_seqs(dev, op, i0, op->n_seqs - i0 < KQ_OCL_SEQS ? op->n_seqs - i0 : KQ_OCL_SEQS);
  if (st == KQ_OK) st = kq_ocl_flush(dev);
  pthread_mutex_unlock(&dev->lock);
  return st;
}

/* A sequence table (rows consecutive, at most KQ_OCL_SEG4 segments a side)
 * is enqueued KQ_OCL_SEQS sequences per launch of each step (the grid
 * covers the sequences: kq_attn_decode, or with pre-RoPE kq_qrot +
 * kq_attn_chunk_*); any other, sequence by sequence (in order, no wait). */
kq_status kq_ocl_attend(kq_bdevice *dev, const kq_attend_op *op) {
  kq_status st = KQ_OK;
  const int nk = kq_segments_plain(op->n_key_segments, op->key_segments) ? 1 : op->n_key_segments;
  const int nv =
      kq_segments_plain(op->n_value_segments, op->value_segments) ? 1 : op->n_value_segments;
  int batch = op->seqs != NULL && nk <= KQ_OCL_SEG4 && nv <= KQ_OCL_SEG4;
  for (int32_t i = 1; i < op->n_seqs && batch; ++i)
    batch = op->seqs[i].row == op->seqs[i - 1].row + op->seqs[i - 1].n_rows;
  if (!batch) {
    for (int32_t i = 0; i < op->n_seqs && st == KQ_OK; ++i) {
      const kq_attend_op one = kq_attend_op_seq(op, i);
      st = attend_one(dev, &one, NULL);
    }
    return st;
  }
  for (int32_t i0 = 0; i0 < op->n_seqs && st == KQ_OK; i0 += KQ_OCL_SEQS) {
    const int32_t n = op->n_seqs - i0 < KQ_OCL_SEQS ? op->n_seqs - i0 : KQ_OCL_SEQS;
    kq_attend_op sub = kq_attend_op_seq(op, i0);
    sub.k_cache_offset = op->k_cache_offset;
    sub.v_cache_offset = op->v_cache_offset;
    kq_ocl_seqtab tab = {.n = n};
    int32_t rows = 0, ctx = 0;
    for (int32_t i = 0; i < n; ++i) {
      const kq_op_seq *e = &op->seqs[i0 + i];
      tab.kreg[i] = e->k_region;
      tab.vreg[i] = e->v_region;
      tab.row0[i] = e->row - op->seqs[i0].row;
      tab.nq[i] = e->n_rows;
      tab.nctx[i] = e->n_ctx;
      rows += e->n_rows;
      ctx = e->n_ctx > ctx ? e->n_ctx : ctx;
    }
    sub.n_queries = rows;
    sub.n_ctx = ctx;
    st = attend_one(dev, &sub, &tab);
  }
  return st;
}

kq_status kq_ocl_up(kq_bdevice *dev, const kq_up_op *op) {
  /* The core checked the op (kqsvd_backend.h, "What a backend may trust"). */
  const int ident = (op->flags & KQ_OP_IDENTITY_VALUES) != 0;
  const cl_ulong l_e = op->latent_offset / 4, o_e = op->out_offset / 4;
  const cl_ulong e_e = ident ? 0 : op->value_up_offset / 4;
  kq_status st;
  cl_mem emem = ident ? op->latent->mem : op->value_up->mem;
  pthread_mutex_lock(&dev->lock);
  st = launch_up(dev, op->latent->mem, l_e, emem, e_e, op->out->mem, o_e, op->n_queries,
                 op->n_heads, op->n_kv_heads, op->head_dim, op->rank_v, ident);
  if (st == KQ_OK) st = kq_ocl_flush(dev);
  pthread_mutex_unlock(&dev->lock);
  return st;
}
