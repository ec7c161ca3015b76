/*
 * kq_decode_body.cl — the kq_attn_decode kernel (see kq_decode.cl), included
 * twice by the host: DEC_TEAM1 0 with DEC_NAME(n) = n##_team (GPU layout: a
 * team of lanes per position) and DEC_TEAM1 1 with n##_one (CPU layout: one
 * work-item per position; the logits loop then has no barrier, which CPU
 * drivers run as a plain loop instead of splitting it per work-item).
 */
/* Local memory: s [KQ_DEC_ROWS·chunk], big [KQ_DEC_ROWS·max(rank_k,
 * rank_v)], red [KQ_DEC_ROWS·wg]. qs = softmax scale · log2 e. */
__kernel void DEC_NAME(kq_attn_decode)(__global const float *qp, __global const uchar *kc, kq_seg4 ks,
                             __global const uchar *vc, kq_seg4 vs, __global float *part_o,
                             __global float *part_ml, kq_seqtab tab, int n_heads, int group,
                             int rank_k, int rank_v, int capacity, int chunk, int n_chunks,
                             float qs, int team, __local float *s, __local float *big,
                             __local float *red) {
  const int lid = get_local_id(0), wg = get_local_size(0);
  const int c = get_group_id(0), kvh = get_group_id(1);
  /* The sequence of this row block; a chunk past its context has len 0 and
   * writes the empty partial (no return before the barriers). */
  int si = 0;
  while (si + 1 < tab.n && (int)get_group_id(2) >= tab.rb0[si + 1]) ++si;
  const int rb = (int)get_group_id(2) - tab.rb0[si], n_q = tab.nq[si], n_ctx = tab.nctx[si];
  const int row0 = tab.row0[si];
  kc += tab.kreg[si];
  vc += tab.vreg[si];
  const int r0 = rb * KQ_DEC_ROWS, rows = min(KQ_DEC_ROWS, n_q * group - r0);
  const int p0 = c * chunk, first = n_ctx - n_q;
  /* Positions the block needs: up to its last row's query. */
  const int len = clamp(first + (r0 + rows - 1) / group + 1 - p0, 0, chunk);
  int lr[KQ_DEC_ROWS]; /* causal length of each row in the chunk */
  for (int r = 0; r < KQ_DEC_ROWS; ++r)
    lr[r] = r < rows ? clamp(first + (r0 + r) / group + 1 - p0, 0, chunk) : 0;
  /* Queries of the block, pre-scaled to log2 units. */
  for (int i = lid; i < rows * rank_k; i += wg) {
    const int r = i / rank_k, rr = r0 + r, jj = rr / group, u = rr - jj * group;
    big[i] = qs * qp[((size_t)(row0 + jj) * n_heads + (size_t)kvh * group + u) * rank_k +
                     (i - r * rank_k)];
  }
  barrier(CLK_LOCAL_MEM_FENCE);

#if DEC_TEAM1
  /* Logits: one work-item per position, no barrier inside the loop. */
  (void)team;
  for (int p = lid; p < len; p += wg) {
    const size_t slot = (size_t)kvh * capacity + p0 + p;
    float acc[KQ_DEC_ROWS];
    for (int r = 0; r < KQ_DEC_ROWS; ++r) acc[r] = 0.0f;
    for (int sgi = 0; sgi < ks.n; ++sgi) {
      const int ep = kq_piece_elems(ks.bits[sgi], ks.f16), w = ks.width[sgi];
      float part[KQ_DEC_ROWS];
      for (int r = 0; r < KQ_DEC_ROWS; ++r) part[r] = 0.0f;
      for (int e = 0; e < w; e += ep)
        kq_piece_dot(kc, &ks, sgi, slot, e, min(ep, w - e), big, rank_k, rows, part);
      const float sc = kq_seg_scale(kc, &ks, sgi, slot);
      for (int r = 0; r < KQ_DEC_ROWS; ++r) acc[r] += sc * part[r];
    }
    for (int r = 0; r < KQ_DEC_ROWS; ++r)
      if (r < rows) s[r * chunk + p] = acc[r];
  }
#else
  /* Logits: a batch of nteams positions per round, one per team. */
  const int nteams = wg / team, t = lid / team, l = lid - t * team;
  for (int base = 0; base < len; base += nteams) {
    const int p = base + t;
    float acc[KQ_DEC_ROWS];
    for (int r = 0; r < KQ_DEC_ROWS; ++r) acc[r] = 0.0f;
    if (p < len && t < nteams) {
      const size_t slot = (size_t)kvh * capacity + p0 + p;
      for (int sgi = 0; sgi < ks.n; ++sgi) {
        const int ep = kq_piece_elems(ks.bits[sgi], ks.f16), w = ks.width[sgi];
        float part[KQ_DEC_ROWS];
        for (int r = 0; r < KQ_DEC_ROWS; ++r) part[r] = 0.0f;
        for (int e = l * ep; e < w; e += team * ep)
          kq_piece_dot(kc, &ks, sgi, slot, e, min(ep, w - e), big, rank_k, rows, part);
        const float sc = kq_seg_scale(kc, &ks, sgi, slot);
        for (int r = 0; r < KQ_DEC_ROWS; ++r) acc[r] += sc * part[r];
      }
    }
    for (int r = 0; r < KQ_DEC_ROWS; ++r) red[(t * KQ_DEC_ROWS + r) * team + l] = acc[r];
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int i = lid; i < nteams * KQ_DEC_ROWS; i += wg) {
      const int tt = i / KQ_DEC_ROWS, r = i - tt * KQ_DEC_ROWS, pp = base + tt;
      if (pp < len && r < rows) {
        float sum = 0.0f;
        for (int k = 0; k < team; ++k) sum += red[i * team + k];
        s[r * chunk + pp] = sum;
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
  }
#endif
  barrier(CLK_LOCAL_MEM_FENCE);

  /* Softmax per row: maxima (NaN / Inf logits become KQ_POISON), then
   * 2^(s - max) in place (0 past the row's range) and sums. */
  float mx[KQ_DEC_ROWS];
  for (int r = 0; r < KQ_DEC_ROWS; ++r) mx[r] = -INFINITY;
  for (int p = lid; p < len; p += wg)
    for (int r = 0; r < KQ_DEC_ROWS; ++r)
      if (p < lr[r]) {
        const float v = kq_poisoned(s[r * chunk + p]);
        s[r * chunk + p] = v;
        mx[r] = fmax(mx[r], v);
      }
  for (int r = 0; r < KQ_DEC_ROWS; ++r) red[r * wg + lid] = mx[r];
  barrier(CLK_LOCAL_MEM_FENCE);
  for (int k = wg / 2; k > 0; k /= 2) {
    if (lid < k)
      for (int r = 0; r < KQ_DEC_ROWS; ++r)
        red[r * wg + lid] = fmax(red[r * wg + lid], red[r * wg + lid + k]);
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  for (int r = 0; r < KQ_DEC_ROWS; ++r) mx[r] = red[r * wg];
  barrier(CLK_LOCAL_MEM_FENCE);
  float sum[KQ_DEC_ROWS];
  for (int r = 0; r < KQ_DEC_ROWS; ++r) sum[r] = 0.0f;
  for (int p = lid; p < len; p += wg)
    for (int r = 0; r < KQ_DEC_ROWS; ++r)
      if (r < rows) {
        const float e = p < lr[r] ? exp2(s[r * chunk + p] - mx[r]) : 0.0f;
        s[r * chunk + p] = e;
        sum[r] += e;
      }
  for (int r = 0; r < KQ_DEC_ROWS; ++r) red[r * wg + lid] = sum[r];
  barrier(CLK_LOCAL_MEM_FENCE);
  for (int k = wg / 2; k > 0; k /= 2) {
    if (lid < k)
      for (int r = 0; r < KQ_DEC_ROWS; ++r) red[r * wg + lid] += red[r * wg + lid + k];
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  if (lid < rows) {
    const int rr = r0 + lid, jj = rr / group, u = rr - jj * group;
    const size_t head = (size_t)(row0 + jj) * n_heads + (size_t)kvh * group + u;
    part_ml[(head * n_chunks + c) * 2 + 0] = lr[lid] > 0 ? mx[lid] : -INFINITY;
    part_ml[(head * n_chunks + c) * 2 + 1] = lr[lid] > 0 ? red[lid * wg] : 0.0f;
  }

  /* Values: units of 4 dims of one segment; slices of positions meet in
   * big (the queries are no longer needed). */
  int n_units = 0;
  for (int sgi = 0; sgi < vs.n; ++sgi) n_units += (vs.width[sgi] + 3) / 4;
  const int nslice = max(1, wg / n_units);
  for (int i = lid; i < rows * rank_v; i += wg) big[i] = 0.0f;
  barrier(CLK_LOCAL_MEM_FENCE);
  /* nslice > 1 only when every work-item holds at most one unit; the
   * slices then add their sums one after another. */
  for (int it = lid; it < (nslice > 1 ? wg : n_units); it += wg) {
    const int active = it < n_units * nslice, un = it % n_units, slice = it / n_units;
    int col = 0, n = 0;
    float4 a[KQ_DEC_ROWS];
    for (int r = 0; r < KQ_DEC_ROWS; ++r) a[r] = (float4)(0.0f);
    if (active) {
      int sgi = 0, start = 0;
      while (un >= start + (vs.width[sgi] + 3) / 4) start += (vs.width[sgi++] + 3) / 4;
      const int e = (un - start) * 4;
      n = min(4, vs.width[sgi] - e);
      col = vs.col[sgi] + e;
      for (int p = slice; p < len; p += nslice) {
        const float4 v = kq_value4(vc, &vs, sgi, (size_t)kvh * capacity + p0 + p, e, n);
        for (int r = 0; r < KQ_DEC_ROWS; ++r)
          if (r < rows) a[r] += s[r * chunk + p] * v;
      }
    }
    for (int k = 0; k < nslice; ++k) {
      if (active && k == slice)
        for (int r = 0; r < rows; ++r) {
          const float va[4] = {a[r].x, a[r].y, a[r].z, a[r].w};
          for (int i = 0; i < n; ++i) big[r * rank_v + col + i] += va[i];
        }
      if (nslice > 1) barrier(CLK_LOCAL_MEM_FENCE);
    }
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  for (int i = lid; i < rows * rank_v; i += wg) {
    const int r = i / rank_v, rr = r0 + r, jj = rr / group, u = rr - jj * group;
    const size_t head = (size_t)(row0 + jj) * n_heads + (size_t)kvh * group + u;
    part_o[(head * n_chunks + c) * rank_v + (i - r * rank_v)] = big[i];
  }
}

