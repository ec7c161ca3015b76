/* simd.c — run-time CPU feature check for the AVX2 clones in host/linalg. */
#include "kq_simd.h"

bool kq_linalg_have_avx2(void) {
#if KQ_HAVE_AVX2_CLONE
  static int cached = -1;
  int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
  if (v < 0) {
    __builtin_cpu_init();
    v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c");
    __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
  }
  return v != 0;
#else
  return false;
#endif
}
