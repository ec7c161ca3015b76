/* Weights kept in their GGUF blocks and the matrix product on them: each
 * block's 32 weights are expanded in registers (w = d·q + m) and used
 * against up to four tokens at once, so decode streams the quantised bytes
 * instead of four times as many float32 bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kq_llama_ops.h"

#define QROW_BLOCK 16

static int kept_type(uint32_t type) {
  return type == KQ_GGML_Q4_0 || type == KQ_GGML_Q4_1 || type == KQ_GGML_Q8_0;
}

kq_status kq_llama_weight_load(const kq_gguf *f, const char *name, int32_t rows, int32_t cols,
                               kq_llama_weight *out) {
  memset(out, 0, sizeof *out);
  const kq_gguf_tensor *t = kq_gguf_find_tensor(f, name);
  if (!t) return kq_set_error(KQ_ERR_NOT_FOUND, "%s: missing tensor '%s'", kq_gguf_path(f), name);
  if (t->n_dims > 2 || t->ne[0] != (uint64_t)cols || t->ne[1] != (uint64_t)rows) {
    char shape[128];
    int n = 0;
    for (int d = 0; d < t->n_dims && n < (int)sizeof shape; d++) /* every dim, ne0 first */
      n += snprintf(shape + n, sizeof shape - (size_t)n, "%s%llu", d ? ", " : "",
                    (unsigned long long)t->ne[d]);
    return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': shape [%s] (ne0 first), expected [%d, %d]",
                        kq_gguf_path(f), name, shape, cols, rows);
  }
  out->rows = rows;
  out->cols = cols;
  if (kept_type(t->type) && cols % 32 == 0) {
    out->type = t->type;
    out->row_bytes = t->nbytes / (size_t)rows;
    out->data = kq_malloc_array(t->nbytes, 1, name);
    if (!out->data) return KQ_ERR_OUT_OF_MEMORY;
    memcpy(out->data, t->data, t->nbytes);
    /* Kept quantized for the matmul, but checked once through the
     * dequantiser: a NaN scale would otherwise poison every product. */
    float *row = kq_malloc_array((size_t)cols, sizeof(float), name);
    kq_status st = row ? KQ_OK : KQ_ERR_OUT_OF_MEMORY;
    for (int32_t r = 0; r < rows && st == KQ_OK; r++) {
      kq_llama_weight_row(out, r, row);
      st = kq_gguf_check_finite(f, t, row, (size_t)cols, (uint64_t)r * (uint64_t)cols);
    }
    free(row);
    if (st != KQ_OK) kq_llama_weight_free(out);
    return st;
  }
  out->type = KQ_GGML_F32;
  out->row_bytes = (size_t)cols * sizeof(float);
  out->data = kq_malloc_array((size_t)t->n_elements, sizeof(float), name);
  if (!out->data) return KQ_ERR_OUT_OF_MEMORY;
  kq_status st = kq_gguf_dequantize(f, t, out->data);
  if (st != KQ_OK) kq_llama_weight_free(out);
  return st;
}

void kq_llama_weight_free(kq_llama_weight *w) {
  free(w->data);
  w->data = NULL;
}

void kq_llama_weight_row(const kq_llama_weight *w, int32_t row, float *dst) {
  const uint8_t *src = (const uint8_t *)w->data + (size_t)row * w->row_bytes;
  /* The type and length were validated at load: this cannot fail. */
  (void)kq_gguf_dequantize_raw(w->type, src, dst, (size_t)w->cols);
}

typedef struct qjob {
  float *y;
  const float *x;
  const kq_llama_weight *w;
  int32_t n;
  int avx2;
} qjob;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(KQ_MODEL_NO_SIMD)
#include <immintrin.h>
#define KQ_HAVE_QAVX2 1

__attribute__((target("avx2,fma,f16c"))) static float qhsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma,f16c"))) static float f16_scalar(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

/* The 32 weights of one block as four vectors of 8 (element order). */
__attribute__((target("avx2,fma,f16c"))) static void expand_block(uint32_t type, const uint8_t *b,
                                                                  __m256 w[4]) {
  if (type == KQ_GGML_Q8_0) {
    __m256 d = _mm256_set1_ps(f16_scalar(b));
    for (int k = 0; k < 4; k++) {
      __m128i q = _mm_loadl_epi64((const __m128i *)(b + 2 + 8 * k));
      w[k] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d);
    }
    return;
  }
  int has_min = type == KQ_GGML_Q4_1;
  __m256 d = _mm256_set1_ps(f16_scalar(b));
  __m256 m = has_min ? _mm256_set1_ps(f16_scalar(b + 2)) : _mm256_set1_ps(-8.0f * f16_scalar(b));
  __m128i q = _mm_loadu_si128((const __m128i *)(b + (has_min ? 4 : 2)));
  __m128i mask = _mm_set1_epi8(0x0F);
  __m128i lo = _mm_and_si128(q, mask), hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
  __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  /* Q4_1: d·q + m; Q4_0: d·(q − 8) = d·q − 8d. */
  for (int k = 0; k < 4; k++)
    w[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[k])), d, m);
}

__attribute__((target("avx2,fma,f16c"))) static void qblock_avx2(const qjob *j, int32_t r0,
                                                                 int32_t r1) {
  const kq_llama_weight *w = j->w;
  int32_t c = w->cols, nb = c / 32;
  size_t bb = w->row_bytes / (size_t)nb;
  for (int32_t t = 0; t < j->n; t += 4) {
    int32_t nt = j->n - t < 4 ? j->n - t : 4;
    const float *x[4];
    for (int u = 0; u < 4; u++) x[u] = j->x + (size_t)(t + (u < nt ? u : 0)) * c;
    for (int32_t r = r0; r < r1; r++) {
      const uint8_t *row = (const uint8_t *)w->data + (size_t)r * w->row_bytes;
      __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                       _mm256_setzero_ps()};
      for (int32_t b = 0; b < nb; b++) {
        __m256 wv[4];
        expand_block(w->type, row + (size_t)b * bb, wv);
        for (int u = 0; u < nt; u++) {
          const float *xb = x[u] + 32 * b;
          for (int k = 0; k < 4; k++)
            acc[u] = _mm256_fmadd_ps(wv[k], _mm256_loadu_ps(xb + 8 * k), acc[u]);
        }
      }
      for (int u = 0; u < nt; u++) j->y[(size_t)(t + u) * w->rows + r] = qhsum(acc[u]);
    }
  }
}
#endif

/* Portable path: expand each row to float32, then plain dots. */
static kq_status qblock_generic(const qjob *j, int32_t r0, int32_t r1) {
  const kq_llama_weight *w = j->w;
  float *row = kq_malloc_array((size_t)w->cols, sizeof(float), "matmul row");
  if (!row) return KQ_ERR_OUT_OF_MEMORY;
  for (int32_t r = r0; r < r1; r++) {
    kq_llama_weight_row(w, r, row);
    for (int32_t t = 0; t < j->n; t++) {
      const float *x = j->x + (size_t)t * w->cols;
      float acc[8] = {0};
      int32_t k = 0;
      for (; k + 8 <= w->cols; k += 8)
        for (int u = 0; u < 8; u++) acc[u] += row[k + u] * x[k + u];
      float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      for (; k < w->cols; k++) s += row[k] * x[k];
      j->y[(size_t)t * w->rows + r] = s;
    }
  }
  free(row);
  return KQ_OK;
}

static kq_status qtask(void *ctx, int64_t block) {
  const qjob *j = ctx;
  int32_t r0 = (int32_t)block * QROW_BLOCK;
  int32_t r1 = r0 + QROW_BLOCK < j->w->rows ? r0 + QROW_BLOCK : j->w->rows;
#ifdef KQ_HAVE_QAVX2
  if (j->avx2) {
    qblock_avx2(j, r0, r1);
    return KQ_OK;
  }
#endif
  return qblock_generic(j, r0, r1);
}

kq_status kq_llama_matmul_w(float *y, const float *x, const kq_llama_weight *w, int32_t n,
                            int n_threads) {
  if (w->type == KQ_GGML_F32) return kq_llama_matmul(y, x, w->data, n, w->rows, w->cols, n_threads);
  qjob job = {.y = y, .x = x, .w = w, .n = n};
#ifdef KQ_HAVE_QAVX2
  job.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
#endif
  return kq_parallel_for((w->rows + QROW_BLOCK - 1) / QROW_BLOCK, n_threads, qtask, &job);
}
