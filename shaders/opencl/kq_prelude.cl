/*
 * kq_prelude.cl — shared definitions for every kqsvd OpenCL kernel (OpenCL C 1.2).
 * The host builds one program from: this prelude, kq_kv_body.cl instantiated for
 * F32 and for F16 storage, then kq_attend.cl, kq_up.cl and kq_copy.cl.
 * F16 storage goes through vload_half / vstore_half_rte, which are core
 * OpenCL C and need no cl_khr_fp16.
 */

/* (cos, sin) of rotary pair `pair`'s angle at position pos, from the host's
 * two-level table (ocl_ops.c rope_table: angles pos · kq_rope_inv_freq
 * formed in double, cos/sin rounded once to F32): rope[(pos & 255)·npairs +
 * pair] holds the angle of pos mod 256, rope[(256 + pos / 256)·npairs + pair]
 * that of 256·(pos / 256); one angle addition joins them, a few F32
 * roundings from the exact value at any position below the capacity. */
inline float2 kq_rope_cs(__global const float2 *rope, int npairs, int pos, int pair) {
  const float2 lo = rope[(size_t)(pos & 255) * npairs + pair];
  const float2 hi = rope[(size_t)(256 + (pos >> 8)) * npairs + pair];
  return (float2)(lo.x * hi.x - lo.y * hi.y, lo.y * hi.x + lo.x * hi.y);
}

/* Indices (a, b) of rotary pair `pair`: PAIRS layout = (2j, 2j+1), HALVES = (j, j + d/2). */
inline int2 kq_rope_pair(int pair, int dim, int halves) {
  return halves ? (int2)(pair, pair + dim / 2) : (int2)(2 * pair, 2 * pair + 1);
}

/* Causal lengths of rows r0 .. r0 + 3 (query (r0 + k) / group at position
 * first + (r0 + k) / group) in the chunk at p0; 0 for padding rows >= rows. */
inline int4 kq_row_len4(int r0, int rows, int group, int first, int p0, int chunk) {
  const int4 r = (int4)(r0) + (int4)(0, 1, 2, 3);
  return select((int4)(0), clamp((int4)(first + 1 - p0) + r / group, 0, chunk), r < rows);
}

/* Non-finite logits (kqsvd.h: a row that meets a NaN or Inf logit outputs
 * NaN): the kernels replace such a logit by the finite marker KQ_POISON,
 * which rides through the running maximum; a row or chunk maximum at or
 * above KQ_POISON / 2 then yields NaN. Decided on the bits (exponent all
 * ones). */
#define KQ_POISON 1.0e30f
inline int kq_nonfinite(float x) {
  return (as_uint(x) & 0x7f800000u) == 0x7f800000u;
}
inline float kq_poisoned(float x) {
  return kq_nonfinite(x) ? KQ_POISON : x;
}
inline float4 kq_poisoned4(float4 x) {
  return select(x, (float4)(KQ_POISON), (as_uint4(x) & 0x7f800000u) == 0x7f800000u);
}

/* The sequences of one attend launch (ocl_ops.h kq_ocl_seqtab): sequence i
 * owns the row blocks from rb0[i] (to rb0[i + 1]), its queries are rows
 * row0[i] .. row0[i] + nq[i] - 1 of the prepared queries, the partials and
 * the output, its context nctx[i] positions, its latents kreg[i] / vreg[i]
 * past the caches' offsets (bytes, or elements where a kernel says so). */
#define KQ_SEQS 16
typedef struct kq_seqtab {
  ulong kreg[KQ_SEQS];
  ulong vreg[KQ_SEQS];
  int rb0[KQ_SEQS];
  int row0[KQ_SEQS];
  int nq[KQ_SEQS];
  int nctx[KQ_SEQS];
  int n;
  int pad0;
} kq_seqtab;

/* The sequences of one project launch (ocl_ops.h kq_ocl_ptab): sequence i's
 * tokens are rows row0[i] .. row0[i + 1] - 1 (the last up to the grid's
 * end), stored from position pos[i] of the region reg[i] past the
 * destination's offset (bytes, or elements where a kernel says so). */
typedef struct kq_ptab {
  ulong reg[KQ_SEQS];
  int row0[KQ_SEQS];
  int pos[KQ_SEQS];
  int n;
  int pad0;
} kq_ptab;

/* Sequence index of row t of a project launch. */
inline int kq_ptab_seq(const kq_ptab *tab, int t) {
  int si = 0;
  while (si + 1 < tab->n && t >= tab->row0[si + 1]) ++si;
  return si;
}
