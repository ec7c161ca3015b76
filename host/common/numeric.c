/* Half-precision conversion, dtype tables and overflow-safe allocation. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kq_common.h"

float kq_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else { /* subnormal: normalise */
      int e = -1;
      do {
        e++;
        man <<= 1;
      } while ((man & 0x400u) == 0);
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

uint16_t kq_f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) /* Inf or NaN (keep NaN quiet and non-zero) */
    return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u | ((absx >> 13) & 0x3ffu) : 0));
  if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to Inf */
    return (uint16_t)(sign | 0x7c00u);
  if (absx < 0x38800000u) {                        /* result is subnormal or zero */
    if (absx < 0x33000000u) return (uint16_t)sign; /* < 2^-25 rounds to 0 */
    uint32_t e = absx >> 23;
    uint32_t man = (absx & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t half = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1u);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) half++;
    return (uint16_t)(sign | half);
  }
  uint32_t r = absx - 0x38000000u; /* rebias exponent 127 -> 15 */
  uint32_t half = r >> 13;
  uint32_t rem = r & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) half++;
  return (uint16_t)(sign | half);
}

float kq_bf16_to_f32(uint16_t b) {
  uint32_t bits = (uint32_t)b << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

uint16_t kq_f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
  x += 0x7fffu + ((x >> 16) & 1u);
  return (uint16_t)(x >> 16);
}

static const struct {
  const char *name;
  size_t size;
} g_dtypes[] = {
    [KQ_DTYPE_F32] = {"F32", 4}, [KQ_DTYPE_F16] = {"F16", 2}, [KQ_DTYPE_BF16] = {"BF16", 2},
    [KQ_DTYPE_F64] = {"F64", 8}, [KQ_DTYPE_I32] = {"I32", 4}, [KQ_DTYPE_I64] = {"I64", 8},
    [KQ_DTYPE_U8] = {"U8", 1},   [KQ_DTYPE_I8] = {"I8", 1},
};
#define KQ_N_DTYPES (sizeof g_dtypes / sizeof g_dtypes[0])

size_t kq_dtype_size(kq_dtype dtype) {
  return (unsigned)dtype < KQ_N_DTYPES ? g_dtypes[dtype].size : 0;
}

const char *kq_dtype_name(kq_dtype dtype) {
  return (unsigned)dtype < KQ_N_DTYPES ? g_dtypes[dtype].name : NULL;
}

bool kq_dtype_parse(const char *name, kq_dtype *out) {
  for (size_t i = 0; i < KQ_N_DTYPES; i++) {
    if (strcmp(name, g_dtypes[i].name) == 0) {
      *out = (kq_dtype)i;
      return true;
    }
  }
  return false;
}

void kq_convert_to_f32(kq_dtype dtype, const void *src, float *dst, size_t n) {
  switch (dtype) {
  case KQ_DTYPE_F32: memcpy(dst, src, n * sizeof(float)); break;
  case KQ_DTYPE_F16: {
    const uint16_t *s = src;
    for (size_t i = 0; i < n; i++) dst[i] = kq_f16_to_f32(s[i]);
  } break;
  case KQ_DTYPE_BF16: {
    const uint16_t *s = src;
    for (size_t i = 0; i < n; i++) dst[i] = kq_bf16_to_f32(s[i]);
  } break;
  case KQ_DTYPE_F64: {
    const double *s = src;
    for (size_t i = 0; i < n; i++) dst[i] = (float)s[i];
  } break;
  default: memset(dst, 0, n * sizeof(float)); break;
  }
}

void kq_convert_to_f64(kq_dtype dtype, const void *src, double *dst, size_t n) {
  switch (dtype) {
  case KQ_DTYPE_F32: {
    const float *s = src;
    for (size_t i = 0; i < n; i++) dst[i] = s[i];
  } break;
  case KQ_DTYPE_F16: {
    const uint16_t *s = src;
    for (size_t i = 0; i < n; i++) dst[i] = kq_f16_to_f32(s[i]);
  } break;
  case KQ_DTYPE_BF16: {
    const uint16_t *s = src;
    for (size_t i = 0; i < n; i++) dst[i] = kq_bf16_to_f32(s[i]);
  } break;
  case KQ_DTYPE_F64: memcpy(dst, src, n * sizeof(double)); break;
  default: memset(dst, 0, n * sizeof(double)); break;
  }
}

bool kq_mul_size(size_t a, size_t b, size_t *out) {
  return !__builtin_mul_overflow(a, b, out);
}

bool kq_add_size(size_t a, size_t b, size_t *out) {
  return !__builtin_add_overflow(a, b, out);
}

void *kq_malloc_array(size_t count, size_t size, const char *what) {
  size_t bytes;
  if (!kq_mul_size(count, size, &bytes)) {
    kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: %zu x %zu bytes overflows size_t", what, count, size);
    return NULL;
  }
  void *p = malloc(bytes ? bytes : 1);
  if (!p) kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes", what, bytes);
  return p;
}

void *kq_calloc_array(size_t count, size_t size, const char *what) {
  size_t bytes;
  if (!kq_mul_size(count, size, &bytes)) {
    kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: %zu x %zu bytes overflows size_t", what, count, size);
    return NULL;
  }
  void *p = calloc(bytes ? count : 1, bytes ? size : 1);
  if (!p) kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes", what, bytes);
  return p;
}

int kq_any_nonfinite_f32(const float *x, size_t n) {
  /* On the bits (exponent all ones), so it vectorises and no fast-math
   * setting can fold it away. */
  const uint32_t *u = (const uint32_t *)(const void *)x;
  uint32_t hit = 0;
  for (size_t i = 0; i < n; i++) hit |= (u[i] & 0x7f800000u) == 0x7f800000u;
  return hit != 0;
}

uint16_t kq_quantize_row(const float *x, int n, int qmax, int8_t *q) {
  if (kq_any_nonfinite_f32(x, (size_t)n)) { /* IEEE: the segment reads back as NaN */
    memset(q, 0, (size_t)n);
    return KQ_F16_NAN;
  }
  float amax = 0.0f;
  for (int j = 0; j < n; j++) amax = fmaxf(amax, fabsf(x[j]));
  uint16_t sh = kq_f32_to_f16(amax / (float)qmax);
  float s = kq_f16_to_f32(sh);
  for (int j = 0; j < n; j++) {
    float v = s > 0.0f ? roundf(x[j] / s) : 0.0f; /* roundf: half away from zero */
    q[j] = (int8_t)(v > (float)qmax ? qmax : v < -(float)qmax ? -qmax : v);
  }
  return sh;
}

static int compare_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double kq_median(double *x, int n) {
  if (n <= 0) return NAN;
  qsort(x, (size_t)n, sizeof *x, compare_double);
  return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}
