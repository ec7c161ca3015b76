/*
 * kq_kv_body.cl — kernels that read or write latent caches. Included twice by
 * the host, once per storage type, with these macros defined:
 *   KV_T            element type of a cache pointer (float or half)
 *   KV_LOAD(p, i)   element i of p as float
 *   KV_LOAD4(p, i)  elements i..i+3 of p as float4
 *   KV_STORE(v,p,i) store float v as element i of p (F16: round to nearest even)
 *   KV_NAME(n)      kernel name with the storage suffix (n_f32 / n_f16)
 * All offsets are in elements. Caches are [n_kv_heads, capacity, rank].
 */

/* Row t of the launch, of sequence i of tab (regions in elements):
 * dst[reg_i + (h, pos_i + t - row0_i, c)] = src[src_off + h * head_stride +
 * t * row_stride + c]; global size (rank, rows, n_heads). Used for identity
 * projections (src = the new keys) and to store projected F32 rows. */
__kernel void KV_NAME(kq_store_rows)(__global const float *src, ulong src_off, int row_stride,
                                     int head_stride, __global KV_T *dst, ulong dst_off, int rank,
                                     int capacity, kq_ptab tab) {
  const int c = get_global_id(0), t = get_global_id(1), h = get_global_id(2);
  const int si = kq_ptab_seq(&tab, t);
  const float v = src[src_off + (size_t)h * head_stride + (size_t)t * row_stride + c];
  const size_t slot = (size_t)h * capacity + tab.pos[si] + t - tab.row0[si];
  KV_STORE(v, dst, dst_off + tab.reg[si] + slot * rank + c);
}

/* Elements [i, i + n) of p as float, n in 1..8; the rest of the vector is 0. */
inline float8 KV_NAME(kq_load8_part)(__global const KV_T *p, size_t i, int n) {
  return (float8)(KV_LOAD(p, i), n > 1 ? KV_LOAD(p, i + 1) : 0.0f, n > 2 ? KV_LOAD(p, i + 2) : 0.0f,
                  n > 3 ? KV_LOAD(p, i + 3) : 0.0f, n > 4 ? KV_LOAD(p, i + 4) : 0.0f,
                  n > 5 ? KV_LOAD(p, i + 5) : 0.0f, n > 6 ? KV_LOAD(p, i + 6) : 0.0f, 0.0f);
}

/* One split-K chunk of causal attention on latents for queries prepared as
 * q B (no pre-RoPE: decode and small m). Same grid, rows and outputs as
 * kq_attn_chunk, except that logits are in log2 units (qs = scale·log2 e is
 * folded into the local copy of the queries), as kq_attn_reduce expects.
 * Rows are padded to rows4, a multiple of 4, with zero queries; a block of
 * four rows is one float4 of s [chunk, rows4] (position-major), and one load
 * of a latent key or value row (8 elements at a time) feeds four rows.
 *   scores   work-item = a contiguous run of positions
 *   softmax  work-item = (row block, segment of positions): segment maxima,
 *            then 2^(s - row max) in place (0 past a row's causal range)
 *            and segment sums
 *   values   work-item = (8 value columns, row block, contiguous slice of
 *            the positions); with vsplit > 1 slices (the host keeps
 *            units·vsplit <= work-group size) the partial sums meet in
 *            local memory.
 * touch (CPU devices): the score pass also loads one element per 64-byte
 * line of each value row, so that the value pass finds them in cache.
 * Local memory: s [max(rows4·chunk, vsplit·rows4·rank_v8)], ql [rows4·rank_k],
 * red [2·rows4·nseg]. */
__kernel void KV_NAME(kq_attn_split)(__global const float *qp, __global const KV_T *kc,
                                     ulong kc_off, __global const KV_T *vc, ulong vc_off,
                                     __global float *part_o, __global float *part_ml, int n_q,
                                     int n_ctx, int n_heads, int group, int rank_k, int rank_v,
                                     int capacity, int chunk, int n_chunks, float qs, int qblock,
                                     int nseg, int vsplit, int touch, __local float *s,
                                     __local float *ql, __local float *red) {
  const int lid = get_local_id(0), wg = get_local_size(0);
  const int c = get_group_id(0), kvh = get_group_id(1), j0 = get_group_id(2) * qblock;
  const int nqb = min(qblock, n_q - j0), rows = nqb * group, rows4 = (rows + 3) & ~3;
  const int p0 = c * chunk, first = n_ctx - n_q + j0; /* position of query j0 */
  const int len = clamp(first + nqb - p0, 0, chunk);
  for (int i = lid; i < rows4 * rank_k; i += wg) {
    const int r = i / rank_k, jj = r / group, u = r - jj * group;
    ql[i] = r < rows ? qs * qp[((size_t)(j0 + jj) * n_heads + (size_t)kvh * group + u) * rank_k +
                               (i - r * rank_k)]
                     : 0.0f;
  }
  barrier(CLK_LOCAL_MEM_FENCE);

  const size_t kbase = kc_off + ((size_t)kvh * capacity + p0) * rank_k;
  const size_t vbase = vc_off + ((size_t)kvh * capacity + p0) * rank_v;
  const int rk8 = rank_k & ~7, per = (len + wg - 1) / wg;
  uint warm = 0;
  for (int p = lid * per; p < min(len, lid * per + per); ++p) {
    const size_t krow = kbase + (size_t)p * rank_k;
    for (int r = 0; r < rows4; r += 4) {
      __local const float *q0 = ql + r * rank_k;
      float8 a0 = (float8)(0.0f), a1 = a0, a2 = a0, a3 = a0;
      for (int i = 0; i < rk8; i += 8) {
        const float8 k8 = KV_LOAD8(kc, krow + i);
        a0 += vload8(0, q0 + i) * k8;
        a1 += vload8(0, q0 + rank_k + i) * k8;
        a2 += vload8(0, q0 + 2 * rank_k + i) * k8;
        a3 += vload8(0, q0 + 3 * rank_k + i) * k8;
      }
      /* Four horizontal sums at once: (Σa0, Σa1, Σa2, Σa3). */
      const float4 b0 = a0.lo + a0.hi, b1 = a1.lo + a1.hi, b2 = a2.lo + a2.hi, b3 = a3.lo + a3.hi;
      const float4 u01 = (float4)(b0.even, b1.even) + (float4)(b0.odd, b1.odd);
      const float4 u23 = (float4)(b2.even, b3.even) + (float4)(b2.odd, b3.odd);
      float4 acc = (float4)(u01.even, u23.even) + (float4)(u01.odd, u23.odd);
      for (int i = rk8; i < rank_k; ++i)
        acc += (float4)(q0[i], q0[rank_k + i], q0[2 * rank_k + i], q0[3 * rank_k + i]) *
               KV_LOAD(kc, krow + i);
      vstore4(acc, 0, s + (size_t)p * rows4 + r);
    }
    if (touch) { /* raw bytes: no conversion */
      __global const uchar *vb = (__global const uchar *)(vc + vbase + (size_t)p * rank_v);
      for (int e = 0; e < rank_v * (int)sizeof(KV_T); e += 64) warm += vb[e];
    }
  }
  if (warm == 0xffffffffu) red[0] = 0.0f; /* keeps the loads; red is rewritten below */
  barrier(CLK_LOCAL_MEM_FENCE);

  /* Softmax: segments of seg positions (even), two positions per exp2. */
  const int nrb = rows4 / 4, seg = (((len + nseg - 1) / nseg) + 1) & ~1;
  __local float *rmax = red, *rsum = red + rows4 * nseg;
  for (int i = lid; i < nrb * nseg; i += wg) {
    const int rb = i / nseg, a = (i - rb * nseg) * seg, b = min(a + seg, len);
    const int4 lr = kq_row_len4(rb * 4, rows, group, first, p0, chunk);
    float4 m4 = (float4)(-INFINITY);
    for (int p = a; p < b; ++p) { /* NaN / Inf logits become KQ_POISON on the way */
      const float4 v = kq_poisoned4(vload4(0, s + (size_t)p * rows4 + rb * 4));
      vstore4(v, 0, s + (size_t)p * rows4 + rb * 4);
      m4 = select(m4, v, (v > m4) & ((int4)(p) < lr));
    }
    vstore4(m4, i, rmax);
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  for (int i = lid; i < nrb * nseg; i += wg) {
    const int rb = i / nseg, a = (i - rb * nseg) * seg, b = min(a + seg, len);
    const int4 lr = kq_row_len4(rb * 4, rows, group, first, p0, chunk);
    float4 mx = (float4)(-INFINITY);
    for (int k = 0; k < nseg; ++k) mx = fmax(mx, vload4(rb * nseg + k, rmax));
    float4 l4 = (float4)(0.0f);
    /* b - a is odd only at the end of the context; p + 1 = len < chunk then. */
    for (int p = a; p < b; p += 2) {
      __local float *s0 = s + (size_t)p * rows4 + rb * 4, *s1 = s0 + rows4;
      const float8 e = exp2((float8)(vload4(0, s0), vload4(0, s1)) - (float8)(mx, mx));
      const float4 e0 = select((float4)(0.0f), e.lo, (int4)(p) < lr);
      const float4 e1 = select((float4)(0.0f), e.hi, (int4)(p + 1) < lr);
      vstore4(e0, 0, s0);
      vstore4(e1, 0, s1);
      l4 += e0 + e1;
    }
    vstore4(l4, i, rsum);
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  for (int r = lid; r < rows; r += wg) {
    const int jj = r / group, u = r - jj * group, rb = r / 4, lane = r - rb * 4;
    const size_t head = (size_t)(j0 + jj) * n_heads + (size_t)kvh * group + u;
    float mx = -INFINITY, l = 0.0f;
    for (int k = 0; k < nseg; ++k) {
      mx = fmax(mx, rmax[(rb * nseg + k) * 4 + lane]);
      l += rsum[(rb * nseg + k) * 4 + lane];
    }
    part_ml[(head * n_chunks + c) * 2 + 0] = mx;
    part_ml[(head * n_chunks + c) * 2 + 1] = l;
  }

  /* Values: a (columns, row block) unit per work-item and slice. */
  const int ncb = (rank_v + 7) / 8, units = ncb * nrb, sl = (len + vsplit - 1) / vsplit;
  float8 a0 = (float8)(0.0f), a1 = a0, a2 = a0, a3 = a0;
  int c0 = 0, r0 = 0, ps = 0;
  for (int t = lid; t < units * vsplit; t += wg) {
    const int un = t % units;
    ps = t / units;
    c0 = (un % ncb) * 8;
    r0 = (un / ncb) * 4;
    const int nc = min(8, rank_v - c0), pa = ps * sl, pb = min(len, pa + sl);
    a0 = (float8)(0.0f), a1 = a0, a2 = a0, a3 = a0;
    __local const float *w = s + r0;
    if (nc == 8) {
      for (int p = pa; p < pb; ++p) {
        const float8 v8 = KV_LOAD8(vc, vbase + (size_t)p * rank_v + c0);
        __local const float *wp = w + (size_t)p * rows4;
        a0 += wp[0] * v8;
        a1 += wp[1] * v8;
        a2 += wp[2] * v8;
        a3 += wp[3] * v8;
      }
    } else {
      for (int p = pa; p < pb; ++p) {
        const float8 v8 = KV_NAME(kq_load8_part)(vc, vbase + (size_t)p * rank_v + c0, nc);
        __local const float *wp = w + (size_t)p * rows4;
        a0 += wp[0] * v8;
        a1 += wp[1] * v8;
        a2 += wp[2] * v8;
        a3 += wp[3] * v8;
      }
    }
    if (vsplit == 1) {
      const float8 acc[4] = {a0, a1, a2, a3};
      for (int k = 0; k < 4 && r0 + k < rows; ++k) {
        const int jj = (r0 + k) / group, u = r0 + k - jj * group;
        const size_t head = (size_t)(j0 + jj) * n_heads + (size_t)kvh * group + u;
        __global float *o = part_o + (head * n_chunks + c) * rank_v + c0;
        if (nc == 8) {
          vstore8(acc[k], 0, o);
        } else {
          const float va[8] = {acc[k].s0, acc[k].s1, acc[k].s2, acc[k].s3,
                               acc[k].s4, acc[k].s5, acc[k].s6, acc[k].s7};
          for (int e = 0; e < nc; ++e) o[e] = va[e];
        }
      }
    }
  }
  /* Slices: every work-item holds at most one unit (host guarantee). No
   * return before the barriers (PoCL miscompiles a barrier after an early
   * return: the work-items then write past their ranges). */
  const int rv8 = ncb * 8;
  barrier(CLK_LOCAL_MEM_FENCE);
  if (vsplit > 1 && lid < units * vsplit) {
    __local float *d = s + ((size_t)ps * rows4 + r0) * rv8 + c0;
    vstore8(a0, 0, d);
    vstore8(a1, 0, d + rv8);
    vstore8(a2, 0, d + 2 * rv8);
    vstore8(a3, 0, d + 3 * rv8);
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  for (int i = lid; vsplit > 1 && i < rows * rank_v; i += wg) {
    const int r = i / rank_v, col = i - r * rank_v, jj = r / group, u = r - jj * group;
    float acc = 0.0f;
    for (int k = 0; k < vsplit; ++k) acc += s[((size_t)k * rows4 + r) * rv8 + col];
    const size_t head = (size_t)(j0 + jj) * n_heads + (size_t)kvh * group + u;
    part_o[(head * n_chunks + c) * rank_v + col] = acc;
  }
}
