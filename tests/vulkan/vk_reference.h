/*
 * vk_reference.h — float64 reference of compressed attention for the Vulkan
 * tests, written from SPEC §1/§4 independently of any backend.
 */
#ifndef KQ_VK_REFERENCE_H
#define KQ_VK_REFERENCE_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct vk_ref_case {
  int n_ctx, n_q, H, Hk, d, rk, rv;
  int rope; /* 0 none, 1 post, 2 pre */
  int halves;
  double theta;
} vk_ref_case;

/* Deterministic uniform numbers in [-1, 1). */
static inline double vk_ref_rand(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return (double)(*s >> 11) / 4503599627370496.0 - 1.0;
}

static inline void vk_ref_fill(float *x, size_t n, double amp, uint64_t *s) {
  for (size_t i = 0; i < n; ++i) x[i] = (float)(amp * vk_ref_rand(s));
}

/* Rotates x[d] at position pos (angle pos * theta^(-2j/d)). */
static inline void vk_ref_rotate(double *x, int d, int halves, double theta, double pos) {
  for (int j = 0; j < d / 2; ++j) {
    int a = halves ? j : 2 * j, b = halves ? j + d / 2 : 2 * j + 1;
    double ang = pos * pow(theta, -2.0 * j / d);
    double c = cos(ang), s = sin(ang), x0 = x[a], x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
  }
}

/* out_lat [n_q, H, rv] and out_full [n_q, H, d] from full keys/values
 * K, V [n_ctx, Hk, d], queries Q [n_q, H, d], A, B [Hk, d, rk], C, E
 * [Hk, d, rv]. Returns 0, or -1 on allocation failure. */
static inline int vk_ref_attend(const vk_ref_case *c, const float *K, const float *V,
                                const float *Q, const float *A, const float *B, const float *C,
                                const float *E, double *out_lat, double *out_full) {
  const int d = c->d, rk = c->rk, rv = c->rv, g = c->H / c->Hk;
  const int qk = c->rope == 2 ? d : rk;
  double *kt = calloc((size_t)c->n_ctx * c->Hk * qk, sizeof(double));
  double *vt = calloc((size_t)c->n_ctx * c->Hk * rv, sizeof(double));
  double *qt = calloc((size_t)qk + rk, sizeof(double));
  double *p = calloc((size_t)c->n_ctx, sizeof(double));
  double *tmp = calloc((size_t)rk, sizeof(double));
  if (!kt || !vt || !qt || !p || !tmp) {
    free(kt), free(vt), free(qt), free(p), free(tmp);
    return -1;
  }
  for (int t = 0; t < c->n_ctx; ++t)
    for (int i = 0; i < c->Hk; ++i) {
      const float *k = K + ((size_t)t * c->Hk + i) * d, *v = V + ((size_t)t * c->Hk + i) * d;
      for (int r = 0; r < rk; ++r) {
        double s = 0;
        for (int e = 0; e < d; ++e) s += (double)k[e] * A[((size_t)i * d + e) * rk + r];
        tmp[r] = s;
      }
      double *dst = kt + ((size_t)t * c->Hk + i) * qk;
      if (c->rope == 2) {
        for (int e = 0; e < d; ++e) {
          double s = 0;
          for (int r = 0; r < rk; ++r) s += tmp[r] * B[((size_t)i * d + e) * rk + r];
          dst[e] = s;
        }
        vk_ref_rotate(dst, d, c->halves, c->theta, t);
      } else {
        for (int r = 0; r < rk; ++r) dst[r] = tmp[r];
      }
      for (int r = 0; r < rv; ++r) {
        double s = 0;
        for (int e = 0; e < d; ++e) s += (double)v[e] * C[((size_t)i * d + e) * rv + r];
        vt[((size_t)t * c->Hk + i) * rv + r] = s;
      }
    }
  const double scale = 1.0 / sqrt((double)d);
  for (int j = 0; j < c->n_q; ++j) {
    const int pos = c->n_ctx - c->n_q + j;
    for (int h = 0; h < c->H; ++h) {
      const int i = h / g;
      const float *q = Q + ((size_t)j * c->H + h) * d;
      for (int r = 0; r < rk; ++r) {
        double s = 0;
        for (int e = 0; e < d; ++e) s += (double)q[e] * B[((size_t)i * d + e) * rk + r];
        tmp[r] = s;
      }
      if (c->rope == 2) {
        for (int e = 0; e < d; ++e) {
          double s = 0;
          for (int r = 0; r < rk; ++r) s += tmp[r] * A[((size_t)i * d + e) * rk + r];
          qt[e] = s;
        }
        vk_ref_rotate(qt, d, c->halves, c->theta, pos);
      } else {
        for (int r = 0; r < rk; ++r) qt[r] = tmp[r];
      }
      double mx = -INFINITY;
      for (int t = 0; t <= pos; ++t) {
        double s = 0;
        const double *k = kt + ((size_t)t * c->Hk + i) * qk;
        for (int e = 0; e < qk; ++e) s += qt[e] * k[e];
        p[t] = s * scale;
        mx = p[t] > mx ? p[t] : mx;
      }
      double sum = 0;
      for (int t = 0; t <= pos; ++t) sum += p[t] = exp(p[t] - mx);
      double *ol = out_lat + ((size_t)j * c->H + h) * rv;
      for (int r = 0; r < rv; ++r) {
        double s = 0;
        for (int t = 0; t <= pos; ++t) s += p[t] * vt[((size_t)t * c->Hk + i) * rv + r];
        ol[r] = s / sum;
      }
      double *of = out_full + ((size_t)j * c->H + h) * d;
      for (int e = 0; e < d; ++e) {
        double s = 0;
        for (int r = 0; r < rv; ++r) s += ol[r] * E[((size_t)i * d + e) * rv + r];
        of[e] = s;
      }
    }
  }
  free(kt), free(vt), free(qt), free(p), free(tmp);
  return 0;
}

/* NMSE = Σ(a-b)² / Σb². */
static inline double vk_ref_nmse(const float *a, const double *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    double e = a[i] - b[i];
    num += e * e;
    den += b[i] * b[i];
  }
  return den > 0 ? num / den : num;
}

#endif /* KQ_VK_REFERENCE_H */
