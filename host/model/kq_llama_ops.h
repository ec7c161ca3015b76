/*
 * kq_llama_ops.h — the dense kernels of the decoder, float32 in and out:
 * row-major matrix product against a weight matrix on a thread team,
 * RMSNorm and SwiGLU. Internal to host/model.
 */
#ifndef KQ_LLAMA_OPS_H
#define KQ_LLAMA_OPS_H

#include <stdint.h>

#include "../common/kq_common.h"

/* y[n, rows] = x[n, cols] · w[rows, cols]ᵀ (each output row r of token t is
 * dot(w[r], x[t])), split over n_threads by blocks of weight rows. */
kq_status kq_llama_matmul(float *y, const float *x, const float *w, int32_t n, int32_t rows,
                          int32_t cols, int n_threads);

/* y[t] = x[t] / sqrt(mean(x[t]²) + eps) * weight, for n rows of width dim;
 * y may equal x. */
void kq_llama_rmsnorm(float *y, const float *x, const float *weight, int32_t n, int32_t dim,
                      float eps);

/* gate[j] = silu(gate[j]) * up[j] for j < count. */
void kq_llama_swiglu(float *gate, const float *up, size_t count);

#endif /* KQ_LLAMA_OPS_H */
