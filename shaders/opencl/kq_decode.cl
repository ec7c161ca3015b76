/*
 * kq_decode.cl — split-K attention laid out for GPUs, reading the stored
 * latents in place: float segments (F32 or F16), q8 and q4 segments with
 * their F16 scales (SPEC §1b), no widened copy. Used for decode and small m
 * without pre-RoPE (ocl_ops.c attend_decode says when), then
 * kq_attn_reduce_up merges the chunks and applies Eᵀ in the same kernel.
 *
 * Work-group = (chunk c, kv group, block of at most KQ_DEC_ROWS rows); a row
 * is (query jj, head u) of the kv group, flattened r = jj·g + u.
 *   logits  a team of `team` work-items per position: lane l of the team
 *           reads 16-byte pieces l, l + team, ... of each segment's row, so
 *           that consecutive lanes read consecutive bytes and consecutive
 *           teams consecutive rows (coalesced); the team's partial dot
 *           products meet in local memory (red), batch by batch of
 *           positions. team = 1 (CPU devices): one work-item per position.
 *   softmax per row over the chunk, maxima and sums reduced over the
 *           work-group for all rows at once (tree in local memory).
 *   values  work-item = 4 latent value dims of one segment for a slice of
 *           positions (interleaved: slice k takes p = k, k + nslice, ...);
 *           slices meet in local memory (big, which held the queries).
 * Outputs as kq_attn_split: part_o [n_q, H, n_chunks, rank_v] and part_ml
 * (max in log2 units, sum), (-inf, 0) for a chunk a row does not see.
 */
#define KQ_DEC_ROWS 8
#define KQ_SEG4 4

/* Up to four segments of one side, as the host lays them out (ocl_ops.c
 * kq_ocl_seg4): byte offsets of the data and scale planes (cache offset
 * included), widths, bits (0 float, 8, 4), first latent column; f16: float
 * segments are F16. */
typedef struct kq_seg4 {
  ulong data[KQ_SEG4];
  ulong scale[KQ_SEG4];
  int width[KQ_SEG4];
  int bits[KQ_SEG4];
  int col[KQ_SEG4];
  int n;
  int f16;
  int pad0;
  int pad1;
} kq_seg4;

/* kq_seqtab (the sequences of one launch) is in kq_prelude.cl. */

/* Elements per 16-byte piece of a segment row. */
inline int kq_piece_elems(int bits, int f16) {
  return bits == 8 ? 16 : bits == 4 ? 32 : f16 ? 8 : 4;
}

/* Unscaled element i of row `slot` of segment s (float value, or q). */
inline float kq_seg_raw(__global const uchar *base, const kq_seg4 *sg, int s, size_t slot, int i) {
  const int w = sg->width[s];
  if (sg->bits[s] == 0)
    return sg->f16 ? vload_half(slot * w + i, (__global const half *)(base + sg->data[s]))
                   : ((__global const float *)(base + sg->data[s]))[slot * w + i];
  if (sg->bits[s] == 8) return (float)((__global const char *)(base + sg->data[s]))[slot * w + i];
  const uchar b = base[sg->data[s] + slot * (size_t)(w / 2) + i / 2];
  return (float)((int)((i & 1) ? b >> 4 : b & 15) - 8);
}

/* Scale of row `slot` of segment s (1 for a float segment). */
inline float kq_seg_scale(__global const uchar *base, const kq_seg4 *sg, int s, size_t slot) {
  return sg->bits[s] == 0 ? 1.0f : vload_half(slot, (__global const half *)(base + sg->scale[s]));
}

/* Dot products of rows 0..rows-1 of q (local, stride ld, from column col +
 * e) with elements [e, e + n) of row `slot` of segment s, unscaled, added to
 * acc. A full piece (n == kq_piece_elems) is one vector load. */
inline void kq_piece_dot(__global const uchar *base, const kq_seg4 *sg, int s, size_t slot, int e,
                         int n, __local const float *q, int ld, int rows,
                         float acc[KQ_DEC_ROWS]) {
  const int w = sg->width[s], bits = sg->bits[s];
  __local const float *qc = q + sg->col[s] + e;
  if (bits == 8 && n == 16) {
    const float16 x = convert_float16(
        vload16(0, (__global const char *)(base + sg->data[s]) + slot * w + e));
    for (int r = 0; r < KQ_DEC_ROWS; ++r)
      if (r < rows) {
        const float16 t = vload16(0, qc + r * ld) * x;
        const float8 u = t.lo + t.hi;
        const float4 v = u.lo + u.hi;
        acc[r] += (v.x + v.y) + (v.z + v.w);
      }
  } else if (bits == 4 && n == 32) {
    const uchar16 b = vload16(0, base + sg->data[s] + slot * (size_t)(w / 2) + e / 2);
    const float16 lo = convert_float16(convert_int16(b & (uchar)15) - 8);
    const float16 hi = convert_float16(convert_int16(b >> (uchar)4) - 8);
    for (int r = 0; r < KQ_DEC_ROWS; ++r)
      if (r < rows) {
        const float16 qa = vload16(0, qc + r * ld), qb = vload16(0, qc + r * ld + 16);
        const float16 t = (float16)(qa.even, qb.even) * lo + (float16)(qa.odd, qb.odd) * hi;
        const float8 u = t.lo + t.hi;
        const float4 v = u.lo + u.hi;
        acc[r] += (v.x + v.y) + (v.z + v.w);
      }
  } else if (bits == 0 && sg->f16 && n == 8) {
    const float8 x = vload_half8(0, (__global const half *)(base + sg->data[s]) + slot * w + e);
    for (int r = 0; r < KQ_DEC_ROWS; ++r)
      if (r < rows) {
        const float8 t = vload8(0, qc + r * ld) * x;
        const float4 v = t.lo + t.hi;
        acc[r] += (v.x + v.y) + (v.z + v.w);
      }
  } else if (bits == 0 && !sg->f16 && n == 4) {
    const float4 x = vload4(0, (__global const float *)(base + sg->data[s]) + slot * w + e);
    for (int r = 0; r < KQ_DEC_ROWS; ++r)
      if (r < rows) {
        const float4 t = vload4(0, qc + r * ld) * x;
        acc[r] += (t.x + t.y) + (t.z + t.w);
      }
  } else {
    for (int i = 0; i < n; ++i) {
      const float x = kq_seg_raw(base, sg, s, slot, e + i);
      for (int r = 0; r < KQ_DEC_ROWS; ++r)
        if (r < rows) acc[r] += qc[r * ld + i] * x;
    }
  }
}

/* Elements [e, e + n) (n <= 4) of row `slot` of segment s, scaled. */
inline float4 kq_value4(__global const uchar *base, const kq_seg4 *sg, int s, size_t slot, int e,
                        int n) {
  const int w = sg->width[s], bits = sg->bits[s];
  float4 x;
  if (n == 4 && bits == 0 && !sg->f16) {
    x = vload4(0, (__global const float *)(base + sg->data[s]) + slot * w + e);
  } else if (n == 4 && bits == 0) {
    x = vload_half4(0, (__global const half *)(base + sg->data[s]) + slot * w + e);
  } else if (n == 4 && bits == 8) {
    x = convert_float4(vload4(0, (__global const char *)(base + sg->data[s]) + slot * w + e));
  } else if (n == 4 && bits == 4) {
    const uchar2 b = vload2(0, base + sg->data[s] + slot * (size_t)(w / 2) + e / 2);
    const int4 q = (int4)(b.x & 15, b.x >> 4, b.y & 15, b.y >> 4) - 8;
    x = convert_float4(q);
  } else {
    x = (float4)(kq_seg_raw(base, sg, s, slot, e), n > 1 ? kq_seg_raw(base, sg, s, slot, e + 1) : 0.0f,
                 n > 2 ? kq_seg_raw(base, sg, s, slot, e + 2) : 0.0f, 0.0f);
  }
  return x * kq_seg_scale(base, sg, s, slot);
}

/* Element i (latent column) of row `slot` of the side sg, scaled: the
 * reads of kq_attn_chunk_seg. */
inline int kq_seg4_find(const kq_seg4 *sg, int i) {
  int s = 0;
  while (s + 1 < sg->n && i >= sg->col[s + 1]) ++s;
  return s;
}
inline float kq_seg4_elem(__global const uchar *base, const kq_seg4 *sg, size_t slot, int i) {
  const int s = kq_seg4_find(sg, i);
  return kq_seg_raw(base, sg, s, slot, i - sg->col[s]) * kq_seg_scale(base, sg, s, slot);
}

/* Elements i .. i + 3 of row `slot`: one vector load and one scale when
 * they lie in one segment (a q4 run starting on a whole byte), else one by
 * one (they span two segments). */
inline float4 kq_seg4_elem4(__global const uchar *base, const kq_seg4 *sg, size_t slot, int i) {
  const int s = kq_seg4_find(sg, i), e = i - sg->col[s];
  if (e + 4 <= sg->width[s] && (sg->bits[s] != 4 || (e & 1) == 0))
    return kq_value4(base, sg, s, slot, e, 4);
  return (float4)(kq_seg4_elem(base, sg, slot, i), kq_seg4_elem(base, sg, slot, i + 1),
                  kq_seg4_elem(base, sg, slot, i + 2), kq_seg4_elem(base, sg, slot, i + 3));
}

/* Merges the chunks of kq_attn_decode (or kq_attn_split / kq_attn_chunk)
 * for one (query j, head h) per work-group (group ids (0, h, j)) and, with
 * use_e, applies the up-projection in the same kernel:
 *   lat = Σ_c 2^{m_c - M} o_c / Σ_c 2^{m_c - M} l_c   (local, rank_v)
 *   out[j, h, a] = lat · E[h / group, a, :]   (use_e; a < head_dim)
 *   out[j, h, :] = lat                       (otherwise)
 * A chunk maximum at KQ_POISON (non-finite logit) makes the row NaN. */
__kernel void kq_attn_reduce_up(__global const float *part_o, __global const float *part_ml,
                                __global float *out, ulong out_off, __global const float *emat,
                                ulong e_off, int use_e, int n_heads, int group, int head_dim,
                                int rank_v, int n_chunks, __local float *lat) {
  const int lid = get_local_id(0), wg = get_local_size(0);
  const int h = get_group_id(1), j = get_group_id(2);
  const size_t head = (size_t)j * n_heads + h;
  __global const float *ml = part_ml + head * n_chunks * 2;
  float mx = -INFINITY, l = 0.0f;
  for (int c = 0; c < n_chunks; ++c)
    if (ml[2 * c + 1] > 0.0f) mx = fmax(mx, ml[2 * c]);
  for (int c = 0; c < n_chunks; ++c)
    if (ml[2 * c + 1] > 0.0f) l += exp2(ml[2 * c] - mx) * ml[2 * c + 1];
  const int poison = mx >= 0.5f * KQ_POISON;
  for (int d = lid; d < rank_v; d += wg) {
    float acc = 0.0f;
    for (int c = 0; c < n_chunks; ++c)
      if (ml[2 * c + 1] > 0.0f) acc += exp2(ml[2 * c] - mx) * part_o[(head * n_chunks + c) * rank_v + d];
    const float v = poison ? NAN : acc / l;
    if (use_e)
      lat[d] = v;
    else
      out[out_off + head * rank_v + d] = v;
  }
  /* No return before this barrier: PoCL miscompiles a barrier after an
   * early return (the merged rows were then written past `out`). */
  barrier(CLK_LOCAL_MEM_FENCE);
  __global const float *eh = emat + e_off + (size_t)(h / group) * head_dim * rank_v;
  for (int a = lid; use_e && a < head_dim; a += wg) {
    __global const float *er = eh + (size_t)a * rank_v;
    float4 a4 = (float4)(0.0f);
    int c = 0;
    for (; c + 4 <= rank_v; c += 4) a4 += vload4(0, er + c) * vload4(0, lat + c);
    float acc = (a4.x + a4.y) + (a4.z + a4.w);
    for (; c < rank_v; ++c) acc += er[c] * lat[c];
    out[out_off + head * head_dim + a] = acc;
  }
}
