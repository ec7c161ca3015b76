// kq_reduce.glsl — workgroup-wide max/sum of R values per invocation
// (needs R, and a power-of-two workgroup size). Every invocation gets the
// result. With KQ_SUBGROUP the subgroup arithmetic ops reduce inside each
// subgroup and shared memory combines the subgroups; otherwise a shared-memory
// tree does all of it. Never uses clustered operations.
#if KQ_SUBGROUP
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif

// Two scratch areas so that a max and the following sum need no extra
// barrier between them; the caller places a barrier before reusing one.
shared float kq_red[2][R * gl_WorkGroupSize.x];

#define KQ_RED_MAX 0u
#define KQ_RED_SUM 1u

float kq_red_op(uint op, float a, float b) {
  return op == KQ_RED_MAX ? max(a, b) : a + b;
}

void kq_reduce_rows(uint op, inout float x[R]) {
  const uint lid = gl_LocalInvocationID.x, wg = gl_WorkGroupSize.x;
#if KQ_SUBGROUP
  [[unroll]] for (uint row = 0u; row < R; ++row) {
    float v = op == KQ_RED_MAX ? subgroupMax(x[row]) : subgroupAdd(x[row]);
    if (subgroupElect()) kq_red[op][row * wg + gl_SubgroupID] = v;
  }
  barrier();
  const uint n = gl_NumSubgroups;
  [[unroll]] for (uint row = 0u; row < R; ++row) {
    float v = kq_red[op][row * wg];
    for (uint s = 1u; s < n; ++s) v = kq_red_op(op, v, kq_red[op][row * wg + s]);
    x[row] = v;
  }
#else
  [[unroll]] for (uint row = 0u; row < R; ++row) kq_red[op][row * wg + lid] = x[row];
  barrier();
  for (uint s = wg / 2u; s > 0u; s >>= 1u) {
    if (lid < s)
      [[unroll]] for (uint row = 0u; row < R; ++row)
        kq_red[op][row * wg + lid] = kq_red_op(op, kq_red[op][row * wg + lid],
                                                kq_red[op][row * wg + lid + s]);
    barrier();
  }
  [[unroll]] for (uint row = 0u; row < R; ++row) x[row] = kq_red[op][row * wg];
#endif
}
