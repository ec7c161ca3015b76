/*
 * ocl_harness.h — loads libkqsvd-opencl.so directly (dlopen + kq_backend_entry)
 * for the backend tests, and their float64 reference (tests/common's).
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

#include "common/attn_reference.h"
#include "common/test_rng.h"
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

/* Deterministic uniform values in [-scale, scale], the same for the same
 * seed (the first number of the seed's stream is skipped). */
static void harness_fill(float *x, size_t n, uint64_t seed, float scale) {
  uint64_t s = seed;
  (void)test_rng_u64(&s);
  test_rng_fill(x, n, &s, scale);
}

/* Float64 causal latent attention (SPEC §4) from full keys/values, by the
 * tests' one reference (kqc_ref_attend_kv, exact latents): k, v [n_ctx, Hk,
 * d]; q [m, H, d]; A, B [Hk, d, rk]; C [Hk, d, rv]; out [m, H, rv] = P Ṽ.
 * identity_k: A = B = I (rk == d; A and B are not read). pre: RoPE PRE
 * (else none: POST latents arrive rotated). NaN everywhere on failure. */
static void harness_reference(const float *k, const float *v, const float *q, const float *A,
                              const float *B, const float *C, int n_ctx, int m, int H, int Hk,
                              int d, int rk, int rv, int identity_k, int pre, double theta,
                              int halves, double *out) {
  float *eye = NULL;
  if (identity_k) {
    eye = calloc((size_t)Hk * d * rk, sizeof(float));
    for (int i = 0; eye && i < Hk; ++i)
      for (int e = 0; e < d && e < rk; ++e) eye[((size_t)i * d + e) * rk + e] = 1.0f;
    A = B = eye;
  }
  kqc_ref_problem pb = {.n_heads = H,
                        .n_kv_heads = Hk,
                        .head_dim = d,
                        .rank_k = rk,
                        .rank_v = rv,
                        .rope = pre ? KQ_ROPE_PRE : KQ_ROPE_NONE,
                        .layout = halves ? KQ_ROPE_HALVES : KQ_ROPE_PAIRS,
                        .theta = theta,
                        .key_down = A,
                        .query_down = B,
                        .value_up = C, /* not read for the latent output */
                        .latent_layout = KQ_LAYOUT_PER_HEAD};
  if ((identity_k && !eye) ||
      kqc_ref_attend_kv(&pb, C, KQ_STORAGE_F32, k, v, n_ctx, m, q, KQ_OUTPUT_LATENT, out) != 0)
    for (size_t i = 0; i < (size_t)m * H * rv; ++i) out[i] = NAN;
  free(eye);
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
