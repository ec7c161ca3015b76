/*
 * kq_up.cl — latent-to-full output.
 * out[j, h, a] = Σ_c latent[j, h, c] E[h / g, a, c]   (identity: out = latent)
 * latent [n_q, H, rank_v], E [Hk, head_dim, rank_v], out [n_q, H, head_dim].
 * Work-item = output a of up to 4 heads of one kv head (head block y: kv
 * head y / ceil(g/4)), so that one load of E row a feeds 4 heads; global size
 * (head_dim, Hk · ceil(g / 4), n_q). Offsets in elements.
 */
__kernel void kq_up(__global const float *latent, ulong lat_off, __global const float *emat,
                    ulong e_off, __global float *out, ulong out_off, int n_heads, int group,
                    int head_dim, int rank_v, int identity) {
  const int a = get_global_id(0), hb = get_global_id(1), j = get_global_id(2);
  const int gb = (group + 3) / 4, kvh = hb / gb, u0 = (hb - kvh * gb) * 4;
  const int nh = min(4, group - u0), h0 = kvh * group + u0;
  __global const float *l0 = latent + lat_off + ((size_t)j * n_heads + h0) * rank_v;
  __global const float *l1 = l0 + (nh > 1 ? rank_v : 0), *l2 = l0 + (nh > 2 ? 2 * rank_v : 0),
                       *l3 = l0 + (nh > 3 ? 3 * rank_v : 0);
  float4 acc;
  if (identity) {
    acc = (float4)(l0[a], l1[a], l2[a], l3[a]);
  } else {
    __global const float *er = emat + e_off + ((size_t)kvh * head_dim + a) * rank_v;
    float4 a0 = (float4)(0.0f), a1 = a0, a2 = a0, a3 = a0;
    int c = 0;
    for (; c + 4 <= rank_v; c += 4) {
      const float4 e4 = vload4(0, er + c);
      a0 += vload4(0, l0 + c) * e4;
      a1 += vload4(0, l1 + c) * e4;
      a2 += vload4(0, l2 + c) * e4;
      a3 += vload4(0, l3 + c) * e4;
    }
    const float4 u01 = (float4)(a0.even, a1.even) + (float4)(a0.odd, a1.odd);
    const float4 u23 = (float4)(a2.even, a3.even) + (float4)(a2.odd, a3.odd);
    acc = (float4)(u01.even, u23.even) + (float4)(u01.odd, u23.odd);
    for (; c < rank_v; ++c) acc += (float4)(l0[c], l1[c], l2[c], l3[c]) * er[c];
  }
  __global float *o = out + out_off + ((size_t)j * n_heads + h0) * head_dim + a;
  const float va[4] = {acc.x, acc.y, acc.z, acc.w};
  for (int u = 0; u < nh; ++u) o[(size_t)u * head_dim] = va[u];
}
