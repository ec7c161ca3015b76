/*
 * kq_copy.cl — streaming copy of n 16-byte words (the bandwidth ceiling).
 * Grid-stride loop so any global size covers any n.
 */
__kernel void kq_copy_u4(__global const uint4 *src, __global uint4 *dst, ulong n) {
  const size_t stride = get_global_size(0);
  for (size_t i = get_global_id(0); i < n; i += stride) dst[i] = src[i];
}
