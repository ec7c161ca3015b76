/*
 * ocl_ops_decode.c — attention on the stored latents with kq_attn_decode
 * (float, F16, q8 and q4 segments read in place, up to KQ_OCL_SEQS
 * sequences per launch), and the merge of its split-K partials with the
 * up-projection (kq_attn_reduce_up). ocl_ops.c decides when it serves.
 */
#include <math.h>

#include "ocl_ops.h"

kq_status kq_ocl_local_mem_error(const kq_bdevice *dev, cl_int g) {
  return kq_ocl_host->set_error(KQ_ERR_UNSUPPORTED,
                                "%s: attend: group of %d heads needs more local memory than "
                                "the device's %zu bytes",
                                dev->label, g, dev->local_mem);
}

kq_status kq_ocl_partials(kq_bdevice *dev, const kq_attend_op *op, cl_int chunk, cl_int rv,
                          cl_mem *part_o, cl_mem *part_ml) {
  /* Decode-size m: sized for the whole capacity (the chunk only grows with
   * the context, so decode steps never regrow them); prefill: the context. */
  const int32_t upto = op->n_queries <= KQ_OCL_QBLOCK ? op->capacity : op->n_ctx;
  const size_t parts =
      kq_ocl_prod4(kq_ocl_batch_rows(op->n_queries), op->n_heads, (upto + chunk - 1) / chunk, 1);
  kq_status st = kq_ocl_scratch(dev, KQ_S_PART_O, kq_ocl_prod4(parts, rv, 4, 1), part_o);
  return st == KQ_OK ? kq_ocl_scratch(dev, KQ_S_PART_ML, kq_ocl_prod4(parts, 2, 4, 1), part_ml)
                     : st;
}

int kq_ocl_seg4_of(int32_t n, const kq_segment *segs, int32_t rank, kq_storage storage,
                   size_t groups, size_t capacity, size_t offset, kq_ocl_seg4 *out) {
  const kq_segment plain = {rank, KQ_SEG_FLOAT};
  if (kq_segments_plain(n, segs)) n = 1, segs = &plain;
  if (n > KQ_OCL_SEG4) return 0;
  *out = (kq_ocl_seg4){.n = n, .f16 = storage == KQ_STORAGE_F16};
  cl_int col = 0;
  for (int32_t s = 0; s < n; s++) {
    size_t data = 0, scale = 0;
    kq_segment_planes(segs, n, storage, groups, capacity, s, &data, &scale, NULL);
    out->data[s] = offset + data;
    out->scale[s] = offset + scale;
    out->width[s] = segs[s].width;
    out->bits[s] = segs[s].bits;
    out->col[s] = col;
    col += segs[s].width;
  }
  return 1;
}

/* Merges split-K partials into op->out: the latent, or with value_up the
 * full output (kq_attn_reduce_up; group = query heads per E matrix). */
static kq_status reduce_up(kq_bdevice *dev, const kq_attend_op *op, cl_mem part_o, cl_mem part_ml,
                           cl_int n_chunks, cl_int group, cl_ulong out_e, cl_ulong e_e) {
  kq_status st = KQ_OK;
  const int k = KQ_K_ATTN_REDUCE_UP;
  const cl_int use_e = op->value_up != NULL;
  cl_mem emem = use_e ? op->value_up->mem : part_o;
  const size_t wg = kq_ocl_wg_size(dev, k, 64);
  st = KQ_OCL_ARGS(dev, k, KQ_OCL_VAL(part_o), KQ_OCL_VAL(part_ml), KQ_OCL_VAL(op->out->mem),
                   KQ_OCL_VAL(out_e), KQ_OCL_VAL(emem), KQ_OCL_VAL(e_e), KQ_OCL_VAL(use_e),
                   KQ_OCL_VAL(op->n_heads), KQ_OCL_VAL(group), KQ_OCL_VAL(op->head_dim),
                   KQ_OCL_VAL(op->rank_v), KQ_OCL_VAL(n_chunks),
                   KQ_OCL_LOCAL((size_t)op->rank_v * sizeof(float)));
  if (st == KQ_OK)
    st = kq_ocl_launch(dev, k, (size_t[3]){wg, (size_t)op->n_heads, (size_t)op->n_queries},
                       (size_t[3]){wg, 1, 1});
  return st;
}

/* Split-K attention on the stored latents (kq_attn_decode), for decode and
 * small m without pre-RoPE; `op` with the JOINT layout already seen as one
 * kv group (n_kv_heads 1), `group_e` the query heads per E matrix.
 * Split count from the device: chunks of 64..512 positions (multiples of
 * 64), as short as gives at least 4 work-groups per compute unit over
 * (chunks, kv groups, row blocks), so that a GPU has work-groups to switch
 * between while loads are in flight, and as long as that allows, so that the
 * reduce reads few partials. A team of lanes per position (16-byte loads
 * over the row) on GPUs; one work-item per position on CPU devices, whose
 * drivers run a work-group's items as loop iterations (team = 1 there). */
kq_status kq_ocl_attend_decode(kq_bdevice *dev, const kq_attend_op *op, cl_mem qt,
                               const kq_ocl_seg4 *ks, const kq_ocl_seg4 *vs, kq_ocl_seqtab *tab,
                               cl_int group_e, cl_ulong out_e, cl_ulong e_e) {
  kq_status st = KQ_OK;
  const int k = dev->cpu ? KQ_K_ATTN_DECODE_ONE : KQ_K_ATTN_DECODE, rows_max = 8;
  const cl_int g = op->n_heads / op->n_kv_heads;
  /* Row blocks of every sequence of the table, one after another; the
   * chunk length and count follow the longest context (op->n_ctx). */
  size_t rblocks = 0;
  for (int i = 0; i < tab->n; ++i) {
    tab->rb0[i] = (cl_int)rblocks;
    rblocks += ((size_t)tab->nq[i] * g + rows_max - 1) / rows_max;
  }
  size_t wg = kq_ocl_wg_size(dev, k, dev->cpu ? 64 : 256);
  /* Lanes per position: a 16-byte piece each over the key row. */
  size_t row_bytes = 0;
  for (int s = 0; s < ks->n; ++s)
    row_bytes += kq_segment_row_bytes((kq_segment){ks->width[s], ks->bits[s]},
                                      ks->f16 ? KQ_STORAGE_F16 : KQ_STORAGE_F32);
  cl_int team = 1;
  if (!dev->cpu)
    while (team < 16 && (size_t)team * 2 * 16 <= row_bytes && (size_t)team * 2 <= wg) team *= 2;
  const size_t groups = (size_t)op->n_kv_heads * rblocks, want = 4 * dev->compute_units;
  const size_t splits = want > groups ? (want + groups - 1) / groups : 1;
  cl_int chunk = (cl_int)(((size_t)op->n_ctx + splits - 1) / splits);
  chunk = (chunk + 63) / 64 * 64;
  if (chunk < 64) chunk = 64;
  if (chunk > 512) chunk = 512;
  const size_t rmax = (size_t)(op->rank_k > op->rank_v ? op->rank_k : op->rank_v);
  size_t need = 0;
  for (;;) {
    need = (size_t)rows_max * ((size_t)chunk + rmax + wg) * sizeof(float) + 256;
    if (need <= dev->local_mem) break;
    if (chunk > 64)
      chunk /= 2;
    else if (wg > (size_t)team && wg > 16)
      wg /= 2;
    else
      return kq_ocl_local_mem_error(dev, g);
  }
  const cl_int n_chunks = (op->n_ctx + chunk - 1) / chunk;
  cl_mem part_o, part_ml;
  st = kq_ocl_partials(dev, op, chunk, op->rank_v, &part_o, &part_ml);
  if (st != KQ_OK) return st;
  const float qs = op->scale * (float)M_LOG2E;
  st = KQ_OCL_ARGS(dev, k, KQ_OCL_VAL(qt), KQ_OCL_VAL(op->k_cache->mem), KQ_OCL_VAL(*ks),
                   KQ_OCL_VAL(op->v_cache->mem), KQ_OCL_VAL(*vs), KQ_OCL_VAL(part_o),
                   KQ_OCL_VAL(part_ml), KQ_OCL_VAL(*tab), KQ_OCL_VAL(op->n_heads), KQ_OCL_VAL(g),
                   KQ_OCL_VAL(op->rank_k), KQ_OCL_VAL(op->rank_v), KQ_OCL_VAL(op->capacity),
                   KQ_OCL_VAL(chunk), KQ_OCL_VAL(n_chunks), KQ_OCL_VAL(qs), KQ_OCL_VAL(team),
                   KQ_OCL_LOCAL((size_t)rows_max * chunk * sizeof(float)),
                   KQ_OCL_LOCAL((size_t)rows_max * rmax * sizeof(float)),
                   KQ_OCL_LOCAL((size_t)rows_max * wg * sizeof(float)));
  if (st == KQ_OK)
    st = kq_ocl_launch(dev, k, (size_t[3]){(size_t)n_chunks * wg, (size_t)op->n_kv_heads, rblocks},
                       (size_t[3]){wg, 1, 1});
  if (st == KQ_OK) st = reduce_up(dev, op, part_o, part_ml, n_chunks, group_e, out_e, e_e);
  return st;
}

/* Whether attend_one serves `op` (one sequence) with kq_attn_decode: no
 * pre-RoPE, at most KQ_OCL_SEG4 segments a side, and in place (see
 * attend_one in ocl_ops.c). */
int kq_ocl_takes_decode(const kq_bdevice *dev, const kq_attend_op *op) {
  const int kplain = kq_segments_plain(op->n_key_segments, op->key_segments);
  const int vplain = kq_segments_plain(op->n_value_segments, op->value_segments);
  const int small_m = op->n_queries < KQ_OCL_GEMM_MIN_QUERIES, f32 = op->storage == KQ_STORAGE_F32;
  const int in_place = !kplain || !vplain || (!dev->cpu && (small_m || !f32));
  const int nk = kplain ? 1 : op->n_key_segments, nv = vplain ? 1 : op->n_value_segments;
  return op->rope != KQ_ROPE_PRE && in_place && nk <= KQ_OCL_SEG4 && nv <= KQ_OCL_SEG4;
}
