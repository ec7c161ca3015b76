/*
 * attn_ref.h — helpers of the backend tests around the tests' one float64
 * attention reference (tests/common/attn_reference.h): random fills (by
 * tests/common/test_rng.h), one row's latent, and ref_attend, the
 * compressed cache of one layer (SPEC §1, §4) computed by kqc_ref_attend_kv.
 */
#ifndef KQ_TEST_ATTN_REF_H
#define KQ_TEST_ATTN_REF_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/attn_reference.h"
#include "common/kq_common.h"
#include "common/test_rng.h"
#include "kqsvd.h"

/* x[0..n) = amp · test_rng_signed(state), rounded to float. */
static inline void ref_fill(float *x, size_t n, uint64_t *state, double amp) {
  for (size_t i = 0; i < n; i++) x[i] = (float)(amp * test_rng_signed(state));
}

static inline void ref_rotate(double *x, int d, double pos, double theta, kq_rope_layout layout) {
  kqc_ref_rope(x, d, pos, theta, layout);
}

/* Latent of one row x[d] through M[d, r] (float64), optionally F16-rounded. */
static inline void ref_latent(const float *x, const float *M, int d, int r, int f16, double *out) {
  for (int k = 0; k < r; k++) {
    double s = 0.0;
    for (int i = 0; i < d; i++) s += (double)x[i] * M[(size_t)i * r + k];
    out[k] = f16 ? (double)kq_f16_to_f32(kq_f32_to_f16((float)s)) : (double)(float)s;
  }
}

/* Reference attention for one layer: keys/values [n_ctx, Hk, d], queries
 * [m, H, d] for the last m positions; out [m, H, full ? d : r_v]; latents
 * rounded to F16 when f16. NaN everywhere when the reference fails. */
static inline void ref_attend(const kq_projections_info *info, const kq_projection_layer *L,
                              int n_ctx, const float *keys, const float *values, int m,
                              const float *queries, int f16, int full, double *out) {
  kqc_ref_problem pb = {.n_heads = info->n_heads,
                        .n_kv_heads = info->n_kv_heads,
                        .head_dim = info->head_dim,
                        .rank_k = L->rank_k,
                        .rank_v = L->rank_v,
                        .rope = info->rope,
                        .layout = info->rope_layout,
                        .theta = info->rope_theta > 0 ? info->rope_theta : 10000.0,
                        .key_down = L->key_down,
                        .query_down = L->query_down,
                        .value_up = L->value_up,
                        .latent_layout = KQ_LAYOUT_PER_HEAD};
  if (kqc_ref_attend_kv(&pb, L->value_down, f16 ? KQ_STORAGE_F16 : KQ_STORAGE_F32, keys, values,
                        n_ctx, m, queries, full ? KQ_OUTPUT_FULL : KQ_OUTPUT_LATENT, out) != 0) {
    size_t n = (size_t)m * info->n_heads * (full ? info->head_dim : L->rank_v);
    for (size_t i = 0; i < n; i++) out[i] = NAN;
  }
}

/* NMSE = Σ(a-b)²/Σb². */
static inline double ref_nmse(const float *a, const double *b, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; i++) {
    double e = (double)a[i] - b[i];
    num += e * e;
    den += b[i] * b[i];
  }
  return den > 0.0 ? num / den : num;
}

#endif
