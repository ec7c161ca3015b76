/*
 * kq_copy.cl — streaming copy of n 16-byte words (the bandwidth ceiling).
 * One work-item per word: consecutive work-items touch consecutive words,
 * which is the coalesced pattern on GPUs and a sequential stream for CPU
 * drivers that run a work-group's items in order.
 */
__kernel void kq_copy_u4(__global const uint4 *src, __global uint4 *dst, ulong n) {
  const size_t i = get_global_id(0);
  if (i < n) dst[i] = src[i];
}
