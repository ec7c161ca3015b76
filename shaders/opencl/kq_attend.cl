/*
 * kq_attend.cl — storage-independent attention kernels: query preparation,
 * the split-K reduce, and the causal softmax of the CLBlast prefill path.
 * Offsets are in elements; q is [n_q, H, head_dim], projections [Hk, d, r].
 */

/* Elements [0, n) of p, n in 1..8; the rest of the vector is 0. */
inline float8 kq_load8f(__global const float *p, int n) {
  return n >= 8 ? vload8(0, p)
                : (float8)(p[0], n > 1 ? p[1] : 0.0f, n > 2 ? p[2] : 0.0f, n > 3 ? p[3] : 0.0f,
                           n > 4 ? p[4] : 0.0f, n > 5 ? p[5] : 0.0f, n > 6 ? p[6] : 0.0f, 0.0f);
}

/* Stores elements [0, n) of v at p, n in 1..8. */
inline void kq_store8f(float8 v, __global float *p, int n) {
  if (n >= 8) {
    vstore8(v, 0, p);
    return;
  }
  const float e[8] = {v.s0, v.s1, v.s2, v.s3, v.s4, v.s5, v.s6, v.s7};
  for (int i = 0; i < n; ++i) p[i] = e[i];
}

/* t[j, h, c] = Σ_i q[j, h, i] B[h / g, i, c]   (identity: t = q, rank == d)
 * Work-item = 8 columns c0 = 8·x .. of up to 4 heads of one kv head (head
 * block y: kv head y / ceil(g/4)), so that one B row load feeds 4 heads;
 * global size (ceil(rank / 8), Hk · ceil(g / 4), n_q). */
__kernel void kq_qproj(__global const float *q, ulong q_off, __global const float *bmat,
                       ulong b_off, __global float *t, int n_heads, int group, int head_dim,
                       int rank, int identity) {
  const int c0 = 8 * get_global_id(0), hb = get_global_id(1), j = get_global_id(2);
  const int gb = (group + 3) / 4, kvh = hb / gb, u0 = (hb - kvh * gb) * 4;
  const int nh = min(4, group - u0), nc = min(8, rank - c0), h0 = kvh * group + u0;
  __global const float *q0 = q + q_off + ((size_t)j * n_heads + h0) * head_dim;
  __global const float *q1 = q0 + (nh > 1 ? head_dim : 0), *q2 = q0 + (nh > 2 ? 2 * head_dim : 0),
                       *q3 = q0 + (nh > 3 ? 3 * head_dim : 0);
  float8 a0 = (float8)(0.0f), a1 = a0, a2 = a0, a3 = a0;
  if (identity) {
    a0 = kq_load8f(q0 + c0, nc);
    a1 = kq_load8f(q1 + c0, nc);
    a2 = kq_load8f(q2 + c0, nc);
    a3 = kq_load8f(q3 + c0, nc);
  } else {
    __global const float *bh = bmat + b_off + (size_t)kvh * head_dim * rank + c0;
    for (int i = 0; i < head_dim; ++i) {
      const float8 b8 = kq_load8f(bh + (size_t)i * rank, nc);
      a0 += q0[i] * b8;
      a1 += q1[i] * b8;
      a2 += q2[i] * b8;
      a3 += q3[i] * b8;
    }
  }
  __global float *t0 = t + ((size_t)j * n_heads + h0) * rank + c0;
  const float8 acc[4] = {a0, a1, a2, a3};
  for (int u = 0; u < nh; ++u) kq_store8f(acc[u], t0 + (size_t)u * rank, nc);
}

/* Pre-RoPE query: qh[j, h, :] = rot(t[j, h, :] Aᵀ, position of row j), one
 * rotary pair per work-item; identity: A = I. Row j of sequence i of tab
 * sits at nctx_i - nq_i + j - row0_i. global size (head_dim / 2, H, rows). */
__kernel void kq_qrot(__global const float *t, __global const float *amat, ulong a_off,
                      __global float *qh, kq_seqtab tab, int n_heads, int group, int head_dim,
                      int rank, int identity, int halves, __global const float2 *rope) {
  const int pr = get_global_id(0), h = get_global_id(1), j = get_global_id(2);
  int si = 0;
  while (si + 1 < tab.n && j >= tab.row0[si + 1]) ++si;
  const int pos = tab.nctx[si] - tab.nq[si] + j - tab.row0[si];
  const int2 ab = kq_rope_pair(pr, head_dim, halves);
  __global const float *tr = t + ((size_t)j * n_heads + h) * rank;
  float xa, xb;
  if (identity) {
    xa = tr[ab.x];
    xb = tr[ab.y];
  } else {
    __global const float *ah = amat + a_off + (size_t)(h / group) * head_dim * rank;
    xa = 0.0f;
    xb = 0.0f;
    for (int c = 0; c < rank; ++c) {
      xa += tr[c] * ah[(size_t)ab.x * rank + c];
      xb += tr[c] * ah[(size_t)ab.y * rank + c];
    }
  }
  const float2 csn = kq_rope_cs(rope, head_dim / 2, pos, pr);
  const float cs = csn.x, sn = csn.y;
  __global float *o = qh + ((size_t)j * n_heads + h) * head_dim;
  o[ab.x] = xa * cs - xb * sn;
  o[ab.y] = xa * sn + xb * cs;
}

/* Merges the split-K partials of kq_attn_chunk_* / kq_attn_split_* (maxima
 * in log2 units): out[j, h, d] = Σ_c 2^{m_c - M} o_c[d] / Σ_c 2^{m_c - M} l_c,
 * M = max m_c.
 * global size (rank_v, H, n_q). */
__kernel void kq_attn_reduce(__global const float *part_o, __global const float *part_ml,
                             __global float *out, ulong out_off, int n_heads, int rank_v,
                             int n_chunks) {
  const int d = get_global_id(0), h = get_global_id(1), j = get_global_id(2);
  const size_t head = (size_t)j * n_heads + h;
  __global const float *ml = part_ml + head * n_chunks * 2;
  float mx = -INFINITY;
  for (int c = 0; c < n_chunks; ++c)
    if (ml[2 * c + 1] > 0.0f) mx = fmax(mx, ml[2 * c]);
  float l = 0.0f, acc = 0.0f;
  for (int c = 0; c < n_chunks; ++c) {
    if (ml[2 * c + 1] > 0.0f) {
      const float w = exp2(ml[2 * c] - mx);
      l += w * ml[2 * c + 1];
      acc += w * part_o[(head * n_chunks + c) * rank_v + d];
    }
  }
  out[out_off + head * rank_v + d] = mx >= 0.5f * KQ_POISON ? NAN : acc / l;
}

/* Causal softmax in place over the rows of s [H, rows, cols]: row r of every
 * head is query j0 + r at position first_pos + r and keeps columns <= that
 * position (later ones become 0). Logits are already scaled. One work-group
 * per row (group id 0 = row, 1 = head). */
__kernel void kq_softmax_causal(__global float *s, int rows, int cols, int first_pos,
                                __local float *red) {
  const int lid = get_local_id(0), wg = get_local_size(0);
  const int r = get_group_id(0), h = get_group_id(1);
  __global float *row = s + ((size_t)h * rows + r) * cols;
  const int n = min(first_pos + r + 1, cols);
  float mx = -INFINITY;
  for (int p = lid; p < n; p += wg) {
    const float v = kq_poisoned(row[p]); /* NaN / Inf logits: the row becomes NaN */
    row[p] = v;
    mx = fmax(mx, v);
  }
  red[lid] = mx;
  barrier(CLK_LOCAL_MEM_FENCE);
  for (int k = wg / 2; k > 0; k /= 2) {
    if (lid < k) red[lid] = fmax(red[lid], red[lid + k]);
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  mx = red[0];
  barrier(CLK_LOCAL_MEM_FENCE);
  float l = 0.0f;
  for (int p = lid; p < n; p += wg) {
    const float e = exp(row[p] - mx);
    row[p] = e;
    l += e;
  }
  red[lid] = l;
  barrier(CLK_LOCAL_MEM_FENCE);
  for (int k = wg / 2; k > 0; k /= 2) {
    if (lid < k) red[lid] += red[lid + k];
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  const float inv = mx >= 0.5f * KQ_POISON ? NAN : 1.0f / red[0];
  for (int p = lid; p < cols; p += wg) row[p] = p < n ? row[p] * inv : 0.0f;
}
