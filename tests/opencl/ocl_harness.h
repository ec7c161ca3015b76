/*
 * ocl_harness.h — loads libkqsvd-opencl.so directly (dlopen + kq_backend_entry)
 * for the backend tests, and a float64 reference of the backend ops.
 * Header-only test helper; KQ_OCL_MODULE_PATH is set by tests/opencl/CMakeLists.txt.
 */
#ifndef KQ_OCL_HARNESS_H
#define KQ_OCL_HARNESS_H

#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kqsvd_backend.h"

/* ctest's SKIP_RETURN_CODE for "no OpenCL device here". */
#define KQ_OCL_SKIP 77

#ifdef KQ_OCL_MODULE_PATH
static _Thread_local char harness_error[1024];

static kq_status harness_set_error(kq_status status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(harness_error, sizeof harness_error, fmt, ap);
  va_end(ap);
  return status;
}

static const kq_backend_host harness_host = {KQ_BACKEND_ABI_VERSION, harness_set_error};

/* Loads the module; NULL (with a message on stderr) if it cannot be loaded. */
static const kq_backend_iface *harness_load(void) {
  void *h = dlopen(KQ_OCL_MODULE_PATH, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr, "dlopen %s: %s\n", KQ_OCL_MODULE_PATH, dlerror());
    return NULL;
  }
  void *sym = dlsym(h, KQ_BACKEND_ENTRY_SYMBOL);
  if (!sym) return NULL;
  kq_backend_entry_fn entry;
  memcpy(&entry, &sym, sizeof entry);
  const kq_backend_iface *ifc = NULL;
  if (entry(&harness_host, &ifc) != KQ_OK) return NULL;
  return ifc;
}
#endif /* KQ_OCL_MODULE_PATH */

/* Deterministic uniform values in [-scale, scale]. */
static void harness_fill(float *x, size_t n, uint64_t seed, float scale) {
  uint64_t s = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (size_t i = 0; i < n; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x[i] = scale * (float)((double)(s >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
  }
}

/* x (d values) rotated at position pos, float64. */
static void harness_rope(double *x, int d, double pos, double theta, int halves) {
  for (int j = 0; j < d / 2; ++j) {
    int a = halves ? j : 2 * j, b = halves ? j + d / 2 : 2 * j + 1;
    double ang = pos * pow(theta, -2.0 * j / d), c = cos(ang), s = sin(ang);
    double xa = x[a], xb = x[b];
    x[a] = xa * c - xb * s;
    x[b] = xa * s + xb * c;
  }
}

/* Float64 causal latent attention (SPEC §4) from full keys/values:
 * k, v [n_ctx, Hk, d]; q [m, H, d]; A, B [Hk, d, rk]; C [Hk, d, rv];
 * out [m, H, rv] = P Ṽ. identity_k: A = B = I (rk == d). */
static void harness_reference(const float *k, const float *v, const float *q, const float *A,
                              const float *B, const float *C, int n_ctx, int m, int H, int Hk,
                              int d, int rk, int rv, int identity_k, int pre, double theta,
                              int halves, double *out) {
  int g = H / Hk;
  double *kl = calloc((size_t)n_ctx * Hk * rk, sizeof(double));
  double *vl = calloc((size_t)n_ctx * Hk * rv, sizeof(double));
  double *w = calloc((size_t)n_ctx, sizeof(double));
  double *qq = calloc((size_t)d, sizeof(double)), *t = calloc((size_t)d, sizeof(double));
  double *kh = calloc((size_t)d, sizeof(double));
  for (int p = 0; p < n_ctx; ++p)
    for (int i = 0; i < Hk; ++i) {
      for (int c = 0; c < rk; ++c) {
        double acc = 0;
        for (int e = 0; e < d; ++e)
          acc += (double)k[((size_t)p * Hk + i) * d + e] *
                 (identity_k ? (e == c) : A[((size_t)i * d + e) * rk + c]);
        kl[((size_t)i * n_ctx + p) * rk + c] = acc;
      }
      for (int c = 0; c < rv; ++c) {
        double acc = 0;
        for (int e = 0; e < d; ++e)
          acc += (double)v[((size_t)p * Hk + i) * d + e] * C[((size_t)i * d + e) * rv + c];
        vl[((size_t)i * n_ctx + p) * rv + c] = acc;
      }
    }
  double scale = 1.0 / sqrt((double)d);
  for (int j = 0; j < m; ++j)
    for (int h = 0; h < H; ++h) {
      int i = h / g, pos = n_ctx - m + j;
      const float *qr = q + ((size_t)j * H + h) * d;
      for (int c = 0; c < rk; ++c) { /* t = q B */
        double acc = 0;
        for (int e = 0; e < d; ++e)
          acc += (double)qr[e] * (identity_k ? (e == c) : B[((size_t)i * d + e) * rk + c]);
        t[c] = acc;
      }
      if (pre) { /* q̂ = rot(t Aᵀ, pos) */
        for (int e = 0; e < d; ++e) {
          double acc = 0;
          for (int c = 0; c < rk; ++c)
            acc += t[c] * (identity_k ? (e == c) : A[((size_t)i * d + e) * rk + c]);
          qq[e] = acc;
        }
        harness_rope(qq, d, pos, theta, halves);
      }
      double mx = -INFINITY;
      for (int p = 0; p <= pos; ++p) {
        const double *kr = kl + ((size_t)i * n_ctx + p) * rk;
        double s = 0;
        if (pre) { /* k̂ = rot(k̃ Bᵀ, p) */
          for (int e = 0; e < d; ++e) {
            double acc = 0;
            for (int c = 0; c < rk; ++c)
              acc += kr[c] * (identity_k ? (e == c) : B[((size_t)i * d + e) * rk + c]);
            kh[e] = acc;
          }
          harness_rope(kh, d, p, theta, halves);
          for (int e = 0; e < d; ++e) s += qq[e] * kh[e];
        } else {
          for (int c = 0; c < rk; ++c) s += t[c] * kr[c];
        }
        w[p] = s * scale;
        if (w[p] > mx) mx = w[p];
      }
      double l = 0;
      for (int p = 0; p <= pos; ++p) l += (w[p] = exp(w[p] - mx));
      for (int c = 0; c < rv; ++c) {
        double acc = 0;
        for (int p = 0; p <= pos; ++p) acc += w[p] * vl[((size_t)i * n_ctx + p) * rv + c];
        out[((size_t)j * H + h) * rv + c] = acc / l;
      }
    }
  free(kl);
  free(vl);
  free(w);
  free(qq);
  free(t);
  free(kh);
}

/* Σ(a-b)² / Σb². */
static double harness_nmse(const float *a, const double *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    double e = (double)a[i] - b[i];
    num += e * e;
    den += b[i] * b[i];
  }
  return den > 0 ? num / den : num;
}

#endif /* KQ_OCL_HARNESS_H */
