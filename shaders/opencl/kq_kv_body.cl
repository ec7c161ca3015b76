/*
 * kq_kv_body.cl — kernels that read or write latent caches. Included twice by
 * the host, once per storage type, with these macros defined:
 *   KV_T            element type of a cache pointer (float or half)
 *   KV_LOAD(p, i)   element i of p as float
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

/* One split-K chunk of causal attention for the g query heads of one kv head.
 * Work-group (get_group_id(0) = chunk c, global id 1 = kv head, 2 = query j)
 * covers positions [c*chunk, min((c+1)*chunk, pos_j + 1)), pos_j = n_ctx - n_q + j.
 *   qp   [n_q, H, dq] prepared queries: q B (dq = rank_k) or, with pre-RoPE,
 *        rot(q B Aᵀ, pos_j) (dq = head_dim)
 *   pre-RoPE: k̂_p = rot(k̃_p Bᵀ, p) is rebuilt pair by pair in registers and
 *        never stored; identity_k means B = I (k̂_p = rot(k̃_p, p)).
 * Writes part_o [n_q, H, n_chunks, rank_v] = Σ_p e^{s_p - m} ṽ_p and
 * part_ml [n_q, H, n_chunks, 2] = (m, Σ_p e^{s_p - m}); an empty chunk gives
 * (-inf, 0). Local memory: s [g * chunk], ql [g * dq], freq [head_dim / 2]. */
__kernel void KV_NAME(kq_attn_chunk)(
    __global const float *qp, __global const KV_T *kc, ulong kc_off, __global const KV_T *vc,
    ulong vc_off, __global const float *bmat, ulong b_off, __global float *part_o,
    __global float *part_ml, int n_q, int n_ctx, int n_heads, int group, int head_dim, int rank_k,
    int rank_v, int capacity, int chunk, int n_chunks, int pre_rope, int identity_k, int halves,
    float theta, float scale, __local float *s, __local float *ql, __local float *freq) {
  const int lid = get_local_id(0), wg = get_local_size(0);
  const int c = get_group_id(0), kvh = get_global_id(1), j = get_global_id(2);
  const int pos_j = n_ctx - n_q + j;
  const int p0 = c * chunk;
  const int len = max(min(p0 + chunk, pos_j + 1) - p0, 0);
  const int dq = pre_rope ? head_dim : rank_k;
  const size_t qbase = ((size_t)j * n_heads + (size_t)kvh * group) * dq;
  for (int i = lid; i < group * dq; i += wg) ql[i] = qp[qbase + i];
  if (pre_rope)
    for (int i = lid; i < head_dim / 2; i += wg) freq[i] = kq_rope_freq(i, head_dim, theta);
  barrier(CLK_LOCAL_MEM_FENCE);

  const size_t kbase = kc_off + ((size_t)kvh * capacity + p0) * rank_k;
  if (!pre_rope) {
    for (int p = lid; p < len; p += wg) {
      const size_t krow = kbase + (size_t)p * rank_k;
      for (int hh = 0; hh < group; ++hh) {
        float acc = 0.0f;
        for (int i = 0; i < rank_k; ++i) acc += ql[hh * rank_k + i] * KV_LOAD(kc, krow + i);
        s[hh * chunk + p] = acc * scale;
      }
    }
  } else {
    __global const float *bh = bmat + b_off + (size_t)kvh * head_dim * rank_k;
    for (int p = lid; p < len; p += wg) {
      const size_t krow = kbase + (size_t)p * rank_k;
      const float posf = (float)(p0 + p);
      for (int hh = 0; hh < group; ++hh) s[hh * chunk + p] = 0.0f;
      for (int pr = 0; pr < head_dim / 2; ++pr) {
        const int2 ab = kq_rope_pair(pr, head_dim, halves);
        float xa, xb;
        if (identity_k) {
          xa = KV_LOAD(kc, krow + ab.x);
          xb = KV_LOAD(kc, krow + ab.y);
        } else {
          xa = 0.0f;
          xb = 0.0f;
          for (int i = 0; i < rank_k; ++i) {
            const float k = KV_LOAD(kc, krow + i);
            xa += k * bh[(size_t)ab.x * rank_k + i];
            xb += k * bh[(size_t)ab.y * rank_k + i];
          }
        }
        float cs;
        const float sn = sincos(posf * freq[pr], &cs);
        const float ra = xa * cs - xb * sn, rb = xa * sn + xb * cs;
        for (int hh = 0; hh < group; ++hh)
          s[hh * chunk + p] += ql[hh * head_dim + ab.x] * ra + ql[hh * head_dim + ab.y] * rb;
      }
      for (int hh = 0; hh < group; ++hh) s[hh * chunk + p] *= scale;
    }
  }
  barrier(CLK_LOCAL_MEM_FENCE);

  const size_t head0 = (size_t)j * n_heads + (size_t)kvh * group;
  for (int hh = lid; hh < group; hh += wg) {
    float mx = -INFINITY;
    for (int p = 0; p < len; ++p) mx = fmax(mx, s[hh * chunk + p]);
    float l = 0.0f;
    for (int p = 0; p < len; ++p) {
      const float e = exp(s[hh * chunk + p] - mx);
      s[hh * chunk + p] = e;
      l += e;
    }
    part_ml[((head0 + hh) * n_chunks + c) * 2 + 0] = mx;
    part_ml[((head0 + hh) * n_chunks + c) * 2 + 1] = l;
  }
  barrier(CLK_LOCAL_MEM_FENCE);

  const size_t vbase = vc_off + ((size_t)kvh * capacity + p0) * rank_v;
  for (int i = lid; i < group * rank_v; i += wg) {
    const int hh = i / rank_v, d = i - hh * rank_v;
    float acc = 0.0f;
    for (int p = 0; p < len; ++p) acc += s[hh * chunk + p] * KV_LOAD(vc, vbase + (size_t)p * rank_v + d);
    part_o[((head0 + hh) * n_chunks + c) * rank_v + d] = acc;
  }
}
