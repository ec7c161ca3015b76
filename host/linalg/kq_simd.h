/*
 * kq_simd.h — internal to host/linalg: a 4-wide double vector type (GCC/Clang
 * vector extensions) and the attribute that compiles a function a second
 * time for AVX2, so that hot loops written once run 4-wide where the CPU
 * allows it and still build for baseline x86-64 or other architectures.
 *
 * Pattern: write the loop body as a KQ_INLINE function that only takes
 * pointers and scalars (never vectors by value, which would change the ABI
 * between targets and trips -Wpsabi), then wrap it twice: once plain and once KQ_TARGET_AVX2,
 * and pick one at run time with kq_linalg_have_avx2().
 */
#ifndef KQ_SIMD_H
#define KQ_SIMD_H

#include <stdbool.h>
#include <string.h>

typedef double kq_v4d __attribute__((vector_size(32)));

#define KQ_INLINE static inline __attribute__((always_inline))

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define KQ_HAVE_AVX2_CLONE 1
#define KQ_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define KQ_HAVE_AVX2_CLONE 0
#define KQ_TARGET_AVX2
#endif

/* True when the CPU runs AVX2+FMA+F16C code (always false without the clone)
 * and kq_linalg_allow_avx2(false) has not been called. */
bool kq_linalg_have_avx2(void);

/* Tests only: false makes every kernel take the baseline path, so both
 * clones get exercised on an AVX2 machine. Not for use while other threads
 * run linalg code. */
void kq_linalg_allow_avx2(bool allow);

/* Vectors never cross a function boundary (see above), so the helpers are
 * macros: load/store unaligned, broadcast, horizontal sum. */
#define KQ_V4D_LOAD(v, p) memcpy(&(v), (p), sizeof(kq_v4d))
#define KQ_V4D_STORE(p, v) memcpy((p), &(v), sizeof(kq_v4d))
#define KQ_V4D_SET1(x) ((kq_v4d){(x), (x), (x), (x)})
#define KQ_V4D_SUM(v) (((v)[0] + (v)[2]) + ((v)[1] + (v)[3]))

#endif /* KQ_SIMD_H */
