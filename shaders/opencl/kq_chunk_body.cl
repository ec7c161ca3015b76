/*
 * kq_chunk_body.cl — the kq_attn_chunk kernel, included three times by the
 * host (ocl_device.c), once per way a latent cache is stored, with:
 *   CH_NAME(n)      kernel name with the storage suffix (_f32, _f16, _seg)
 *   CH_CACHES       the cache parameters (kc, where its keys are, vc, where
 *                   its values are): a plain cache and its element offset
 *                   (F32, F16), or the bytes and a kq_seg4 (segments, F32 or
 *                   F16 float planes, q8, q4 read in place: no F32 copy)
 *   CH_KEY(s, i)    element i of the latent key of cache slot s, as float
 *   CH_KEY4(s, i)   elements i .. i + 3 (i a multiple of 4)
 *   CH_VAL(s, i), CH_VAL4(s, i)  the same for values
 *   CH_STAGE        1: with pre-RoPE, each work-item first decodes its
 *                   position's latent key into local memory (kl, rank_k
 *                   floats per work-item), read once per rotary pair from
 *                   there (segmented planes: decoding is dearer than a load)
 *   CH_SEEK(kr, vr) moves both caches to a sequence's regions (kreg / vreg
 *                   of the table: elements for plain caches, bytes for
 *                   segmented ones)
 * A slot is kv group · capacity + position.
 */

/* One split-K chunk of causal attention for a block of queries and the g
 * query heads of one kv head: work-group (group id 0 = chunk c, global id 1 =
 * kv head, group id 2 = query block b) has rows r = jj * g + u for queries
 * j = b * qblock + jj (jj < qblock) and heads u < g, so one load of a latent
 * key or value row serves every row. Row r covers positions
 * [c*chunk, min((c+1)*chunk, pos_j + 1)), pos_j = n_ctx - n_q + j, for the
 * sequences of `tab` (kq_seqtab: query block b of sequence i is block
 * rb0[i] + b of the grid; n_q, n_ctx, first row and regions per sequence).
 *   qp   [rows, H, dq] prepared queries: q B (dq = rank_k) or, with pre-RoPE,
 *        rot(q B Aᵀ, pos_j) (dq = head_dim)
 *   pre-RoPE: k̂_p = rot(k̃_p Bᵀ, p) is rebuilt pair by pair in registers,
 *        once per position for all rows, and never stored; identity_k means
 *        B = I (k̂_p = rot(k̃_p, p)).
 * Logits s_p are in log2 units (scale = softmax scale · log2 e). Writes
 * part_o [n_q, H, n_chunks, rank_v] = Σ_p 2^{s_p - m} ṽ_p and
 * part_ml [n_q, H, n_chunks, 2] = (m, Σ_p 2^{s_p - m}); an empty row gives
 * (-inf, 0). rope: the angle table (kq_rope_cs). Local memory: s [rows * chunk],
 * ql [rows * dq], kl [wg * rank_k] with CH_STAGE (else unused). */
__kernel void CH_NAME(kq_attn_chunk)(__global const float *qp, CH_CACHES,
                                     __global const float *bmat, ulong b_off,
                                     __global float *part_o, __global float *part_ml,
                                     kq_seqtab tab, int n_heads, int group, int head_dim, int rank_k,
                                     int rank_v, int capacity, int chunk, int n_chunks,
                                     int pre_rope, int identity_k, int halves,
                                     __global const float2 *rope, float scale, int qblock,
                                     __local float *s, __local float *ql, __local float *kl) {
  const int lid = get_local_id(0), wg = get_local_size(0);
  const int c = get_group_id(0), kvh = get_global_id(1);
  /* The sequence of this query block (blocks of every sequence of the
   * table one after another); its queries are rows row0 + j of qp and the
   * partials. A chunk past its context writes the empty partial. */
  int si = 0;
  while (si + 1 < tab.n && (int)get_group_id(2) >= tab.rb0[si + 1]) ++si;
  const int n_q = tab.nq[si], n_ctx = tab.nctx[si], row0 = tab.row0[si];
  const int j0 = ((int)get_group_id(2) - tab.rb0[si]) * qblock;
  CH_SEEK(tab.kreg[si], tab.vreg[si]);
  const int nqb = min(qblock, n_q - j0), rows = nqb * group;
  const int p0 = c * chunk;
  /* Positions any row of the block needs (the block's last query sees most). */
  const int len = max(min(p0 + chunk, n_ctx - n_q + j0 + nqb) - p0, 0);
  const int dq = pre_rope ? head_dim : rank_k;
  for (int i = lid; i < rows * dq; i += wg) {
    const int r = i / dq, jj = r / group, u = r - jj * group;
    ql[i] = qp[((size_t)(row0 + j0 + jj) * n_heads + (size_t)kvh * group + u) * dq + (i - r * dq)];
  }
  barrier(CLK_LOCAL_MEM_FENCE);

  const size_t kbase = (size_t)kvh * capacity + p0; /* slot of position p0 */
  if (!pre_rope) {
    /* Rows four at a time: one key load feeds four register accumulators. */
    for (int p = lid; p < len; p += wg) {
      const size_t krow = kbase + p;
      int r = 0;
      for (; r + 4 <= rows; r += 4) {
        __local const float *q0 = ql + r * rank_k;
        float4 a0 = (float4)(0.0f), a1 = a0, a2 = a0, a3 = a0;
        int i = 0;
        for (; i + 4 <= rank_k; i += 4) {
          const float4 k4 = CH_KEY4(krow, i);
          a0 += vload4(0, q0 + i) * k4;
          a1 += vload4(0, q0 + rank_k + i) * k4;
          a2 += vload4(0, q0 + 2 * rank_k + i) * k4;
          a3 += vload4(0, q0 + 3 * rank_k + i) * k4;
        }
        float4 acc = (float4)((a0.x + a0.y) + (a0.z + a0.w), (a1.x + a1.y) + (a1.z + a1.w),
                              (a2.x + a2.y) + (a2.z + a2.w), (a3.x + a3.y) + (a3.z + a3.w));
        for (; i < rank_k; ++i) {
          const float k = CH_KEY(krow, i);
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
        for (; i + 4 <= rank_k; i += 4) a4 += vload4(0, qr + i) * CH_KEY4(krow, i);
        float acc = (a4.x + a4.y) + (a4.z + a4.w);
        for (; i < rank_k; ++i) acc += qr[i] * CH_KEY(krow, i);
        s[r * chunk + p] = acc * scale;
      }
    }
  } else {
    __global const float *bh = bmat + b_off + (size_t)kvh * head_dim * rank_k;
    __local float *kr = kl + (CH_STAGE ? (size_t)lid * rank_k : 0);
    for (int p = lid; p < len; p += wg) {
      const size_t krow = kbase + p;
      for (int r = 0; r < rows; ++r) s[r * chunk + p] = 0.0f;
      if (CH_STAGE) {
        int i = 0;
        for (; i + 4 <= rank_k; i += 4) vstore4(CH_KEY4(krow, i), 0, kr + i);
        for (; i < rank_k; ++i) kr[i] = CH_KEY(krow, i);
      }
      for (int pr = 0; pr < head_dim / 2; ++pr) {
        const int2 ab = kq_rope_pair(pr, head_dim, halves);
        float xa, xb;
        if (identity_k) {
          xa = CH_STAGE ? kr[ab.x] : CH_KEY(krow, ab.x);
          xb = CH_STAGE ? kr[ab.y] : CH_KEY(krow, ab.y);
        } else {
          __global const float *ba = bh + (size_t)ab.x * rank_k, *bb = bh + (size_t)ab.y * rank_k;
          float4 a4 = (float4)(0.0f), b4 = (float4)(0.0f);
          int i = 0;
          for (; i + 4 <= rank_k; i += 4) {
            const float4 k4 = CH_STAGE ? vload4(0, kr + i) : CH_KEY4(krow, i);
            a4 += k4 * vload4(0, ba + i);
            b4 += k4 * vload4(0, bb + i);
          }
          xa = (a4.x + a4.y) + (a4.z + a4.w);
          xb = (b4.x + b4.y) + (b4.z + b4.w);
          for (; i < rank_k; ++i) {
            const float k = CH_STAGE ? kr[i] : CH_KEY(krow, i);
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
    const size_t head = (size_t)(row0 + j0 + jj) * n_heads + (size_t)kvh * group + u;
    __local const float *sr = s + r * chunk;
    float4 l4 = (float4)(0.0f);
    for (int p = 0; p < len4 * 4; p += 4) l4 += vload4(0, sr + p);
    part_ml[(head * n_chunks + c) * 2 + 0] = ql[2 * r];
    part_ml[(head * n_chunks + c) * 2 + 1] = (l4.x + l4.y) + (l4.z + l4.w);
  }
  barrier(CLK_LOCAL_MEM_FENCE);

  /* Work-item = (4 latent value columns, up to 4 rows of one query): one
   * value load feeds four accumulators. Rows of a query share its range. */
  const size_t vbase = (size_t)kvh * capacity + p0;
  const int nq4 = (rank_v + 3) / 4, rb = (group + 3) / 4;
  for (int t = lid; t < nq4 * rb * nqb; t += wg) {
    const int c0 = (t % nq4) * 4, rblk = t / nq4, jj = rblk / rb, u0 = (rblk - jj * rb) * 4;
    const int nr = min(4, group - u0), r0 = jj * group + u0;
    const int lr = max(min(p0 + chunk, n_ctx - n_q + j0 + jj + 1) - p0, 0);
    __local const float *s0 = s + r0 * chunk, *s1 = s0 + (nr > 1 ? chunk : 0);
    __local const float *s2 = s0 + (nr > 2 ? 2 * chunk : 0), *s3 = s0 + (nr > 3 ? 3 * chunk : 0);
    float4 a0 = (float4)(0.0f), a1 = a0, a2 = a0, a3 = a0;
    for (int p = 0; p < lr; ++p) {
      const size_t vrow = vbase + p;
      const float4 v4 =
          c0 + 4 <= rank_v
              ? CH_VAL4(vrow, c0)
              : (float4)(CH_VAL(vrow, c0), c0 + 1 < rank_v ? CH_VAL(vrow, c0 + 1) : 0.0f,
                         c0 + 2 < rank_v ? CH_VAL(vrow, c0 + 2) : 0.0f, 0.0f);
      a0 += s0[p] * v4;
      a1 += s1[p] * v4;
      a2 += s2[p] * v4;
      a3 += s3[p] * v4;
    }
    const float4 acc[4] = {a0, a1, a2, a3};
    for (int u = 0; u < nr; ++u) {
      const size_t head = (size_t)(row0 + j0 + jj) * n_heads + (size_t)kvh * group + u0 + u;
      __global float *o = part_o + (head * n_chunks + c) * rank_v + c0;
      o[0] = acc[u].x;
      if (c0 + 1 < rank_v) o[1] = acc[u].y;
      if (c0 + 2 < rank_v) o[2] = acc[u].z;
      if (c0 + 3 < rank_v) o[3] = acc[u].w;
    }
  }
}

