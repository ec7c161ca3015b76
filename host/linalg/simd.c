/* simd.c — run-time CPU feature check for the AVX2 clones in host/linalg. */
#include "kq_simd.h"

#if KQ_HAVE_AVX2_CLONE
#include <cpuid.h>
#endif

static int allowed = 1;

void kq_linalg_allow_avx2(bool allow) {
  __atomic_store_n(&allowed, allow ? 1 : 0, __ATOMIC_RELAXED);
}

bool kq_linalg_have_avx2(void) {
#if KQ_HAVE_AVX2_CLONE
  if (!__atomic_load_n(&allowed, __ATOMIC_RELAXED)) return false;
  static int cached = -1;
  int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
  if (v < 0) {
    __builtin_cpu_init();
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    /* F16C is CPUID.1:ECX bit 29 (not every compiler's cpu_supports knows it). */
    bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
    v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
    __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
  }
  return v != 0;
#else
  return false;
#endif
}
