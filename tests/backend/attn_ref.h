/*
 * attn_ref.h — a float64 reference of the compressed cache (SPEC §1, §4)
 * for the backend tests, written from the maths rather than from the
 * backend: latents k̃ = kA, ṽ = vC (optionally rounded to F16 as stored),
 * logits q̃·k̃/sqrt(d) (or rotated reconstructions for PRE rope), a plain
 * two-pass softmax, outputs PṼ or (PṼ)Eᵀ.
 */
#ifndef KQ_TEST_ATTN_REF_H
#define KQ_TEST_ATTN_REF_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/kq_common.h"
#include "kqsvd.h"

/* Deterministic uniform numbers in [-1, 1). */
static inline double ref_rand(uint64_t *state) {
  *state = *state * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(*state >> 11) / (double)(1ull << 52) - 1.0;
}

static inline void ref_fill(float *x, size_t n, uint64_t *state, double amp) {
  for (size_t i = 0; i < n; i++) x[i] = (float)(amp * ref_rand(state));
}

static inline void ref_rotate(double *x, int d, double pos, double theta, kq_rope_layout layout) {
  for (int j = 0; j < d / 2; j++) {
    double ang = pos * pow(theta, -2.0 * j / d);
    int i0 = layout == KQ_ROPE_PAIRS ? 2 * j : j;
    int i1 = layout == KQ_ROPE_PAIRS ? 2 * j + 1 : j + d / 2;
    double a = x[i0], b = x[i1];
    x[i0] = a * cos(ang) - b * sin(ang);
    x[i1] = a * sin(ang) + b * cos(ang);
  }
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
 * [m, H, d] for the last m positions; out [m, H, full ? d : r_v]. */
static inline void ref_attend(const kq_projections_info *info, const kq_projection_layer *L,
                              int n_ctx, const float *keys, const float *values, int m,
                              const float *queries, int f16, int full, double *out) {
  int H = info->n_heads, Hk = info->n_kv_heads, d = info->head_dim, g = H / Hk;
  int rk = L->rank_k, rv = L->rank_v;
  double theta = info->rope_theta > 0 ? info->rope_theta : 10000.0;
  int pre = info->rope == KQ_ROPE_PRE;
  int kdim = pre ? d : rk;
  double *kl = malloc(sizeof(double) * (size_t)n_ctx * Hk * kdim);
  double *vl = malloc(sizeof(double) * (size_t)n_ctx * Hk * rv);
  double *tmp = malloc(sizeof(double) * (size_t)d);
  double *qv = malloc(sizeof(double) * (size_t)d);
  double *p = malloc(sizeof(double) * (size_t)n_ctx);
  double *acc = malloc(sizeof(double) * (size_t)rv);
  for (int t = 0; t < n_ctx; t++) {
    for (int h = 0; h < Hk; h++) {
      const float *A = L->key_down + (size_t)h * d * rk, *B = L->query_down + (size_t)h * d * rk;
      const float *C = L->value_down + (size_t)h * d * rv;
      double *kd = kl + ((size_t)t * Hk + h) * kdim;
      ref_latent(keys + ((size_t)t * Hk + h) * d, A, d, rk, f16, tmp);
      if (pre) {
        for (int i = 0; i < d; i++) {
          double s = 0.0;
          for (int k = 0; k < rk; k++) s += tmp[k] * B[(size_t)i * rk + k];
          kd[i] = s;
        }
        ref_rotate(kd, d, t, theta, info->rope_layout);
      } else {
        memcpy(kd, tmp, sizeof(double) * (size_t)rk);
      }
      ref_latent(values + ((size_t)t * Hk + h) * d, C, d, rv, f16, vl + ((size_t)t * Hk + h) * rv);
    }
  }
  for (int j = 0; j < m; j++) {
    int pos = n_ctx - m + j;
    for (int head = 0; head < H; head++) {
      int h = head / g;
      const float *A = L->key_down + (size_t)h * d * rk, *B = L->query_down + (size_t)h * d * rk;
      const float *E = L->value_up + (size_t)h * d * rv;
      const float *q = queries + ((size_t)j * H + head) * d;
      for (int k = 0; k < rk; k++) {
        double s = 0.0;
        for (int i = 0; i < d; i++) s += (double)q[i] * B[(size_t)i * rk + k];
        tmp[k] = s;
      }
      if (pre) {
        for (int i = 0; i < d; i++) {
          double s = 0.0;
          for (int k = 0; k < rk; k++) s += tmp[k] * A[(size_t)i * rk + k];
          qv[i] = s;
        }
        ref_rotate(qv, d, pos, theta, info->rope_layout);
      } else {
        memcpy(qv, tmp, sizeof(double) * (size_t)rk);
      }
      double mx = -INFINITY;
      for (int t = 0; t <= pos; t++) {
        const double *kd = kl + ((size_t)t * Hk + h) * kdim;
        double s = 0.0;
        for (int i = 0; i < kdim; i++) s += qv[i] * kd[i];
        p[t] = s / sqrt((double)d);
        if (p[t] > mx) mx = p[t];
      }
      double sum = 0.0;
      for (int t = 0; t <= pos; t++) sum += (p[t] = exp(p[t] - mx));
      for (int k = 0; k < rv; k++) acc[k] = 0.0;
      for (int t = 0; t <= pos; t++)
        for (int k = 0; k < rv; k++) acc[k] += p[t] / sum * vl[((size_t)t * Hk + h) * rv + k];
      if (full) {
        double *o = out + ((size_t)j * H + head) * d;
        for (int i = 0; i < d; i++) {
          double s = 0.0;
          for (int k = 0; k < rv; k++) s += acc[k] * E[(size_t)i * rv + k];
          o[i] = s;
        }
      } else {
        memcpy(out + ((size_t)j * H + head) * rv, acc, sizeof(double) * (size_t)rv);
      }
    }
  }
  free(kl), free(vl), free(tmp), free(qv), free(p), free(acc);
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
