/*
 * kq_llama_ops.h — the dense kernels of the decoder, float32 in and out:
 * row-major matrix product against a weight matrix on a thread team,
 * RMSNorm and SwiGLU. Internal to host/model.
 */
#ifndef KQ_LLAMA_OPS_H
#define KQ_LLAMA_OPS_H

#include <stdint.h>

#include "../common/kq_common.h"
#include "kq_gguf.h"

/* y[n, rows] = x[n, cols] · w[rows, cols]ᵀ (each output row r of token t is
 * dot(w[r], x[t])), split over n_threads by blocks of weight rows. */
kq_status kq_llama_matmul(float *y, const float *x, const float *w, int32_t n, int32_t rows,
                          int32_t cols, int n_threads);

/* A weight matrix [rows, cols] (GGUF ne = {cols, rows}). Q4_0, Q4_1 and
 * Q8_0 tensors are kept as their blocks (a quarter to a half of the float32
 * bytes: decode reads every weight once per token); other types are
 * dequantised to float32 at load. */
typedef struct kq_llama_weight {
  int32_t rows, cols;
  uint32_t type; /* KQ_GGML_F32 or the kept block type */
  size_t row_bytes;
  void *data; /* owned */
} kq_llama_weight;

/* Loads tensor `name` of `file` as a [rows, cols] weight. Errors name the
 * file and tensor (missing, other shape, unsupported type). */
kq_status kq_llama_weight_load(const kq_gguf *file, const char *name, int32_t rows, int32_t cols,
                               kq_llama_weight *out);
void kq_llama_weight_free(kq_llama_weight *w);
/* Row `row` as float32 into dst[cols]. */
void kq_llama_weight_row(const kq_llama_weight *w, int32_t row, float *dst);

/* y[n, w->rows] = x[n, w->cols] · wᵀ, any weight type, on n_threads. */
kq_status kq_llama_matmul_w(float *y, const float *x, const kq_llama_weight *w, int32_t n,
                            int n_threads);

/* y[t] = x[t] / sqrt(mean(x[t]²) + eps) * weight, for n rows of width dim;
 * y may equal x. */
void kq_llama_rmsnorm(float *y, const float *x, const float *weight, int32_t n, int32_t dim,
                      float eps);

/* gate[j] = silu(gate[j]) * up[j] for j < count. */
void kq_llama_swiglu(float *gate, const float *up, size_t count);

#endif /* KQ_LLAMA_OPS_H */
