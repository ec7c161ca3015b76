/*
 * kq_up.cl — latent-to-full output.
 * out[j, h, a] = Σ_c latent[j, h, c] E[h / g, a, c]   (identity: out = latent)
 * latent [n_q, H, rank_v], E [Hk, head_dim, rank_v], out [n_q, H, head_dim];
 * global size (head_dim, H, n_q). Offsets in elements.
 */
__kernel void kq_up(__global const float *latent, ulong lat_off, __global const float *emat,
                    ulong e_off, __global float *out, ulong out_off, int n_heads, int group,
                    int head_dim, int rank_v, int identity) {
  const int a = get_global_id(0), h = get_global_id(1), j = get_global_id(2);
  __global const float *lr = latent + lat_off + ((size_t)j * n_heads + h) * rank_v;
  float acc;
  if (identity) {
    acc = lr[a];
  } else {
    __global const float *er = emat + e_off + ((size_t)(h / group) * head_dim + a) * rank_v;
    float4 a4 = (float4)(0.0f);
    int c = 0;
    for (; c + 4 <= rank_v; c += 4) a4 += vload4(0, lr + c) * vload4(0, er + c);
    acc = (a4.x + a4.y) + (a4.z + a4.w);
    for (; c < rank_v; ++c) acc += lr[c] * er[c];
  }
  out[out_off + ((size_t)j * n_heads + h) * head_dim + a] = acc;
}
