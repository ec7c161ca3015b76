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

/* dst[h, pos + t, c] = src[src_off + h * head_stride + t * row_stride + c]
 * global size (rank, n_tokens, n_heads). Used for identity projections (src =
 * the new keys) and to narrow a F32 GEMM result into F16 storage. */
__kernel void KV_NAME(kq_store_rows)(__global const float *src, ulong src_off, int row_stride,
                                     int head_stride, __global KV_T *dst, ulong dst_off, int rank,
                                     int capacity, int pos) {
  const int c = get_global_id(0), t = get_global_id(1), h = get_global_id(2);
  const float v = src[src_off + (size_t)h * head_stride + (size_t)t * row_stride + c];
  KV_STORE(v, dst, dst_off + ((size_t)h * capacity + pos + t) * rank + c);
}

/* out[h, p, c] = cache[h, p, c] as F32 for p < n_ctx; out is [n_heads, n_ctx, rank].
 * global size (rank, n_ctx, n_heads). Feeds CLBlast on the prefill path. */
__kernel void KV_NAME(kq_widen)(__global const KV_T *cache, ulong cache_off, int capacity,
                                __global float *out, int n_ctx, int rank) {
  const int c = get_global_id(0), p = get_global_id(1), h = get_global_id(2);
  out[((size_t)h * n_ctx + p) * rank + c] =
      KV_LOAD(cache, cache_off + ((size_t)h * capacity + p) * rank + c);
}

/* One split-K chunk of causal attention for a block of queries and the g
 * query heads of one kv head: work-group (group id 0 = chunk c, global id 1 =
 * kv head, group id 2 = query block b) has rows r = jj * g + u for queries
 * j = b * qblock + jj (jj < qblock) and heads u < g, so one load of a latent
 * key or value row serves every row. Row r covers positions
 * [c*chunk, min((c+1)*chunk, pos_j + 1)), pos_j = n_ctx - n_q + j.
 *   qp   [n_q, H, dq] prepared queries: q B (dq = rank_k) or, with pre-RoPE,
 *        rot(q B Aᵀ, pos_j) (dq = head_dim)
 *   pre-RoPE: k̂_p = rot(k̃_p Bᵀ, p) is rebuilt pair by pair in registers,
 *        once per position for all rows, and never stored; identity_k means
 *        B = I (k̂_p = rot(k̃_p, p)).
 * Logits s_p are in log2 units (scale = softmax scale · log2 e). Writes
 * part_o [n_q, H, n_chunks, rank_v] = Σ_p 2^{s_p - m} ṽ_p and
 * part_ml [n_q, H, n_chunks, 2] = (m, Σ_p 2^{s_p - m}); an empty row gives
 * (-inf, 0). rope: the angle table (kq_rope_cs). Local memory: s [rows * chunk],
 * ql [rows * dq]. */
__kernel void KV_NAME(kq_attn_chunk)(__global const float *qp, __global const KV_T *kc,
                                     ulong kc_off, __global const KV_T *vc, ulong vc_off,
                                     __global const float *bmat, ulong b_off,
                                     __global float *part_o, __global float *part_ml, int n_q,
                                     int n_ctx, int n_heads, int group, int head_dim, int rank_k,
                                     int rank_v, int capacity, int chunk, int n_chunks,
                                     int pre_rope, int identity_k, int halves,
                                     __global const float2 *rope, float scale, int qblock,
                                     __local float *s, __local float *ql) {
  const int lid = get_local_id(0), wg = get_local_size(0);
  const int c = get_group_id(0), kvh = get_global_id(1), j0 = get_group_id(2) * qblock;
  const int nqb = min(qblock, n_q - j0), rows = nqb * group;
  const int p0 = c * chunk;
  /* Positions any row of the block needs (the block's last query sees most). */
  const int len = max(min(p0 + chunk, n_ctx - n_q + j0 + nqb) - p0, 0);
  const int dq = pre_rope ? head_dim : rank_k;
  for (int i = lid; i < rows * dq; i += wg) {
    const int r = i / dq, jj = r / group, u = r - jj * group;
    ql[i] = qp[((size_t)(j0 + jj) * n_heads + (size_t)kvh * group + u) * dq + (i - r * dq)];
  }
  barrier(CLK_LOCAL_MEM_FENCE);

  const size_t kbase = kc_off + ((size_t)kvh * capacity + p0) * rank_k;
  if (!pre_rope) {
    /* Rows four at a time: one key load feeds four register accumulators. */
    for (int p = lid; p < len; p += wg) {
      const size_t krow = kbase + (size_t)p * rank_k;
      int r = 0;
      for (; r + 4 <= rows; r += 4) {
        __local const float *q0 = ql + r * rank_k;
        float4 a0 = (float4)(0.0f), a1 = a0, a2 = a0, a3 = a0;
        int i = 0;
        for (; i + 4 <= rank_k; i += 4) {
          const float4 k4 = KV_LOAD4(kc, krow + i);
          a0 += vload4(0, q0 + i) * k4;
          a1 += vload4(0, q0 + rank_k + i) * k4;
          a2 += vload4(0, q0 + 2 * rank_k + i) * k4;
          a3 += vload4(0, q0 + 3 * rank_k + i) * k4;
        }
        float4 acc = (float4)((a0.x + a0.y) + (a0.z + a0.w), (a1.x + a1.y) + (a1.z + a1.w),
                              (a2.x + a2.y) + (a2.z + a2.w), (a3.x + a3.y) + (a3.z + a3.w));
        for (; i < rank_k; ++i) {
          const float k = KV_LOAD(kc, krow + i);
          acc += (float4)(q0[i], q0[rank_k + i], q0[2 * rank_k + i], q0[3 * rank_k + i]) * k;
        }
        s[r * chunk + p] = acc.x * scale;
        s[(r + 1) * chunk + p] = acc.y * scale;
        s[(r + 2) * chunk + p] = acc.z * scale;
        s[(r + 3) * chunk + p] = acc.w * scale;
      }
      for (; r < rows; ++r) {
        __local const float *qr = ql + r * rank_k;
        float4 a4 = (float4)(0.0f);
        int i = 0;
        for (; i + 4 <= rank_k; i += 4) a4 += vload4(0, qr + i) * KV_LOAD4(kc, krow + i);
        float acc = (a4.x + a4.y) + (a4.z + a4.w);
        for (; i < rank_k; ++i) acc += qr[i] * KV_LOAD(kc, krow + i);
        s[r * chunk + p] = acc * scale;
      }
    }
  } else {
    __global const float *bh = bmat + b_off + (size_t)kvh * head_dim * rank_k;
    for (int p = lid; p < len; p += wg) {
      const size_t krow = kbase + (size_t)p * rank_k;
      for (int r = 0; r < rows; ++r) s[r * chunk + p] = 0.0f;
      for (int pr = 0; pr < head_dim / 2; ++pr) {
        const int2 ab = kq_rope_pair(pr, head_dim, halves);
        float xa, xb;
        if (identity_k) {
          xa = KV_LOAD(kc, krow + ab.x);
          xb = KV_LOAD(kc, krow + ab.y);
        } else {
          __global const float *ba = bh + (size_t)ab.x * rank_k, *bb = bh + (size_t)ab.y * rank_k;
          float4 a4 = (float4)(0.0f), b4 = (float4)(0.0f);
          int i = 0;
          for (; i + 4 <= rank_k; i += 4) {
            const float4 k4 = KV_LOAD4(kc, krow + i);
            a4 += k4 * vload4(0, ba + i);
            b4 += k4 * vload4(0, bb + i);
          }
          xa = (a4.x + a4.y) + (a4.z + a4.w);
          xb = (b4.x + b4.y) + (b4.z + b4.w);
          for (; i < rank_k; ++i) {
            const float k = KV_LOAD(kc, krow + i);
            xa += k * ba[i];
            xb += k * bb[i];
          }
        }
        const float2 csn = kq_rope_cs(rope, head_dim / 2, p0 + p, pr);
        const float cs = csn.x, sn = csn.y;
        const float ra = xa * cs - xb * sn, rb = xa * sn + xb * cs;
        for (int r = 0; r < rows; ++r)
          s[r * chunk + p] += ql[r * head_dim + ab.x] * ra + ql[r * head_dim + ab.y] * rb;
      }
      for (int r = 0; r < rows; ++r) s[r * chunk + p] *= scale;
    }
  }
  barrier(CLK_LOCAL_MEM_FENCE);

  /* Softmax pieces, four positions per step (vector exp): per-row max over
   * the row's causal range (ql is free again), the exponentials spread over
   * every work-item (0 past the row's range), then per-row sums. A chunk is
   * a multiple of 4 positions, so the last step stays inside the row. */
  for (int r = lid; r < rows; r += wg) {
    const int lr = max(min(p0 + chunk, n_ctx - n_q + j0 + r / group + 1) - p0, 0);
    __local float *sr = s + r * chunk;
    float4 m4 = (float4)(-INFINITY);
    int p = 0;
    /* NaN / Inf logits in the row's range become KQ_POISON on the way. */
    for (; p + 4 <= lr; p += 4) {
      const float4 v = kq_poisoned4(vload4(0, sr + p));
      vstore4(v, 0, sr + p);
      m4 = fmax(m4, v);
    }
    float mx = fmax(fmax(m4.x, m4.y), fmax(m4.z, m4.w));
    for (; p < lr; ++p) {
      sr[p] = kq_poisoned(sr[p]);
      mx = fmax(mx, sr[p]);
    }
    ql[2 * r] = mx;
    ql[2 * r + 1] = (float)lr;
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  const int len4 = (len + 3) / 4;
  for (int i = lid; i < rows * len4; i += wg) {
    const int r = i / len4, p = (i - r * len4) * 4;
    __local float *sp = s + r * chunk + p;
    const int4 pos4 = (int4)(p, p + 1, p + 2, p + 3);
    const float4 e = exp2(vload4(0, sp) - ql[2 * r]);
    vstore4(select((float4)(0.0f), e, pos4 < (int4)((int)ql[2 * r + 1])), 0, sp);
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  for (int r = lid; r < rows; r += wg) {
    const int jj = r / group, u = r - jj * group;
    const size_t head = (size_t)(j0 + jj) * n_heads + (size_t)kvh * group + u;
    __local const float *sr = s + r * chunk;
    float4 l4 = (float4)(0.0f);
    for (int p = 0; p < len4 * 4; p += 4) l4 += vload4(0, sr + p);
    part_ml[(head * n_chunks + c) * 2 + 0] = ql[2 * r];
    part_ml[(head * n_chunks + c) * 2 + 1] = (l4.x + l4.y) + (l4.z + l4.w);
  }
  barrier(CLK_LOCAL_MEM_FENCE);

  /* Work-item = (4 latent value columns, up to 4 rows of one query): one
   * value load feeds four accumulators. Rows of a query share its range. */
  const size_t vbase = vc_off + ((size_t)kvh * capacity + p0) * rank_v;
  const int nq4 = (rank_v + 3) / 4, rb = (group + 3) / 4;
  for (int t = lid; t < nq4 * rb * nqb; t += wg) {
    const int c0 = (t % nq4) * 4, rblk = t / nq4, jj = rblk / rb, u0 = (rblk - jj * rb) * 4;
    const int nr = min(4, group - u0), r0 = jj * group + u0;
    const int lr = max(min(p0 + chunk, n_ctx - n_q + j0 + jj + 1) - p0, 0);
    __local const float *s0 = s + r0 * chunk, *s1 = s0 + (nr > 1 ? chunk : 0);
    __local const float *s2 = s0 + (nr > 2 ? 2 * chunk : 0), *s3 = s0 + (nr > 3 ? 3 * chunk : 0);
    float4 a0 = (float4)(0.0f), a1 = a0, a2 = a0, a3 = a0;
    for (int p = 0; p < lr; ++p) {
      const size_t vrow = vbase + (size_t)p * rank_v + c0;
      const float4 v4 =
          c0 + 4 <= rank_v
              ? KV_LOAD4(vc, vrow)
              : (float4)(KV_LOAD(vc, vrow), c0 + 1 < rank_v ? KV_LOAD(vc, vrow + 1) : 0.0f,
                         c0 + 2 < rank_v ? KV_LOAD(vc, vrow + 2) : 0.0f, 0.0f);
      a0 += s0[p] * v4;
      a1 += s1[p] * v4;
      a2 += s2[p] * v4;
      a3 += s3[p] * v4;
    }
    const float4 acc[4] = {a0, a1, a2, a3};
    for (int u = 0; u < nr; ++u) {
      const size_t head = (size_t)(j0 + jj) * n_heads + (size_t)kvh * group + u0 + u;
      __global float *o = part_o + (head * n_chunks + c) * rank_v + c0;
      o[0] = acc[u].x;
      if (c0 + 1 < rank_v) o[1] = acc[u].y;
      if (c0 + 2 < rank_v) o[2] = acc[u].z;
      if (c0 + 3 < rank_v) o[3] = acc[u].w;
    }
  }
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
