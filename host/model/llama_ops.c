/* Dense kernels of the decoder. The matrix product walks one weight row
 * against four tokens at a time so each weight element loaded serves four
 * dot products; eight partial sums per dot let the compiler vectorise
 * without reassociating a single sum. */
#include <math.h>

#include "kq_llama_ops.h"

#define ROW_BLOCK 16

typedef struct matmul_job {
  float *y;
  const float *x, *w;
  int32_t n, rows, cols;
  int avx2; /* use the AVX2+FMA kernel (decided once per call, on the caller) */
} matmul_job;

static float dot1(const float *a, const float *b, int32_t n) {
  float acc[8] = {0};
  int32_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int u = 0; u < 8; u++) acc[u] += a[k + u] * b[k + u];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; k < n; k++) s += a[k] * b[k];
  return s;
}

/* Four dots of w against x0..x3. */
static void dot4(const float *w, const float *x0, const float *x1, const float *x2, const float *x3,
                 int32_t n, float out[4]) {
  float a0[8] = {0}, a1[8] = {0}, a2[8] = {0}, a3[8] = {0};
  int32_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int u = 0; u < 8; u++) {
      float wv = w[k + u];
      a0[u] += wv * x0[k + u];
      a1[u] += wv * x1[k + u];
      a2[u] += wv * x2[k + u];
      a3[u] += wv * x3[k + u];
    }
  float *acc[4] = {a0, a1, a2, a3};
  const float *xs[4] = {x0, x1, x2, x3};
  for (int t = 0; t < 4; t++) {
    float *a = acc[t];
    float s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    for (int32_t j = k; j < n; j++) s += w[j] * xs[t][j];
    out[t] = s;
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(KQ_MODEL_NO_SIMD)
#include <immintrin.h>
#define KQ_HAVE_AVX2_PATH 1

__attribute__((target("avx2,fma"))) static float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* Rows [r0, r1) for all tokens, cols a multiple of 8: two weight rows
 * against four tokens per pass (8 accumulators, 14 of 16 registers). */
__attribute__((target("avx2,fma"))) static void block_avx2(const matmul_job *j, int32_t r0,
                                                           int32_t r1) {
  int32_t c = j->cols;
  for (int32_t t = 0; t < j->n; t += 4) {
    int32_t nt = j->n - t < 4 ? j->n - t : 4;
    const float *x[4];
    for (int u = 0; u < 4; u++) x[u] = j->x + (size_t)(t + (u < nt ? u : 0)) * c;
    for (int32_t r = r0; r < r1; r += 2) {
      const float *w0 = j->w + (size_t)r * c;
      const float *w1 = r + 1 < r1 ? w0 + c : w0;
      __m256 a0[4], a1[4];
      for (int u = 0; u < 4; u++) a0[u] = a1[u] = _mm256_setzero_ps();
      for (int32_t k = 0; k < c; k += 8) {
        __m256 v0 = _mm256_loadu_ps(w0 + k), v1 = _mm256_loadu_ps(w1 + k);
        for (int u = 0; u < 4; u++) {
          __m256 xv = _mm256_loadu_ps(x[u] + k);
          a0[u] = _mm256_fmadd_ps(v0, xv, a0[u]);
          a1[u] = _mm256_fmadd_ps(v1, xv, a1[u]);
        }
      }
      for (int u = 0; u < nt; u++) {
        j->y[(size_t)(t + u) * j->rows + r] = hsum256(a0[u]);
        if (r + 1 < r1) j->y[(size_t)(t + u) * j->rows + r + 1] = hsum256(a1[u]);
      }
    }
  }
}
#endif

static kq_status matmul_block(void *ctx, int64_t block) {
  const matmul_job *j = ctx;
  int32_t r0 = (int32_t)block * ROW_BLOCK;
  int32_t r1 = r0 + ROW_BLOCK < j->rows ? r0 + ROW_BLOCK : j->rows;
#ifdef KQ_HAVE_AVX2_PATH
  if (j->avx2) {
    block_avx2(j, r0, r1);
    return KQ_OK;
  }
#endif
  int32_t c = j->cols;
  int32_t t = 0;
  for (; t + 4 <= j->n; t += 4) {
    const float *x0 = j->x + (size_t)t * c;
    for (int32_t r = r0; r < r1; r++) {
      float o[4];
      dot4(j->w + (size_t)r * c, x0, x0 + c, x0 + 2 * (size_t)c, x0 + 3 * (size_t)c, c, o);
      for (int u = 0; u < 4; u++) j->y[(size_t)(t + u) * j->rows + r] = o[u];
    }
  }
  for (; t < j->n; t++)
    for (int32_t r = r0; r < r1; r++)
      j->y[(size_t)t * j->rows + r] = dot1(j->w + (size_t)r * c, j->x + (size_t)t * c, c);
  return KQ_OK;
}

kq_status kq_llama_matmul(float *y, const float *x, const float *w, int32_t n, int32_t rows,
                          int32_t cols, int n_threads) {
  matmul_job job = {.y = y, .x = x, .w = w, .n = n, .rows = rows, .cols = cols};
#ifdef KQ_HAVE_AVX2_PATH
  job.avx2 = cols % 8 == 0 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  int64_t blocks = (rows + ROW_BLOCK - 1) / ROW_BLOCK;
  return kq_parallel_for(blocks, n_threads, matmul_block, &job);
}

void kq_llama_rmsnorm(float *y, const float *x, const float *weight, int32_t n, int32_t dim,
                      float eps) {
  for (int32_t t = 0; t < n; t++) {
    const float *xr = x + (size_t)t * dim;
    float *yr = y + (size_t)t * dim;
    double ss = 0;
    for (int32_t j = 0; j < dim; j++) ss += (double)xr[j] * xr[j];
    float scale = (float)(1.0 / sqrt(ss / dim + eps));
    for (int32_t j = 0; j < dim; j++) yr[j] = xr[j] * scale * weight[j];
  }
}

void kq_llama_swiglu(float *gate, const float *up, size_t count) {
  for (size_t j = 0; j < count; j++) {
    float g = gate[j];
    gate[j] = g / (1.0f + expf(-g)) * up[j];
  }
}
