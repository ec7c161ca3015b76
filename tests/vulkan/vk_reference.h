/*
 * vk_reference.h — the Vulkan tests' cases and helpers around the tests'
 * one float64 attention reference (tests/common/attn_reference.h).
 */
#ifndef KQ_VK_REFERENCE_H
#define KQ_VK_REFERENCE_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/attn_reference.h"
#include "common/test_check.h"
#include "kqsvd.h"

typedef struct vk_ref_case {
  int n_ctx, n_q, H, Hk, d, rk, rv;
  int rope; /* 0 none, 1 post, 2 pre */
  int halves;
  double theta;
} vk_ref_case;

/* The name of the first registered Vulkan device into name[size]: 1 when
 * there is one, 0 when there is none, -1 when the registry fails (its
 * message on stderr). The tests' main()s share this device lookup. */
static inline int vk_test_first_device(char *name, size_t size) {
  int n = 0;
  name[0] = '\0';
  if (kq_device_count(&n) != KQ_OK) {
    fprintf(stderr, "kq_device_count: %s\n", kq_last_error());
    return -1;
  }
  for (int i = 0; i < n && !name[0]; ++i) {
    kq_device_info info;
    if (kq_device_info_get(i, &info) == KQ_OK && !strcmp(info.backend, "vulkan"))
      snprintf(name, size, "%s", info.name);
  }
  return name[0] != '\0';
}

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

/* out_lat [n_q, H, rv] and out_full [n_q, H, d] from full keys/values
 * K, V [n_ctx, Hk, d], queries Q [n_q, H, d], A, B [Hk, d, rk], C, E
 * [Hk, d, rv]: the tests' one float64 reference (kqc_ref_attend_kv, exact
 * latents). Returns 0, or -1 on allocation failure. */
static inline int vk_ref_attend(const vk_ref_case *c, const float *K, const float *V,
                                const float *Q, const float *A, const float *B, const float *C,
                                const float *E, double *out_lat, double *out_full) {
  kqc_ref_problem pb = {.n_heads = c->H,
                        .n_kv_heads = c->Hk,
                        .head_dim = c->d,
                        .rank_k = c->rk,
                        .rank_v = c->rv,
                        .rope = c->rope == 2   ? KQ_ROPE_PRE
                                : c->rope == 1 ? KQ_ROPE_POST
                                               : KQ_ROPE_NONE,
                        .layout = c->halves ? KQ_ROPE_HALVES : KQ_ROPE_PAIRS,
                        .theta = c->theta,
                        .key_down = A,
                        .query_down = B,
                        .value_up = E,
                        .latent_layout = KQ_LAYOUT_PER_HEAD};
  if (kqc_ref_attend_kv(&pb, C, KQ_STORAGE_F32, K, V, c->n_ctx, c->n_q, Q, KQ_OUTPUT_LATENT,
                        out_lat) != 0)
    return -1;
  return kqc_ref_attend_kv(&pb, C, KQ_STORAGE_F32, K, V, c->n_ctx, c->n_q, Q, KQ_OUTPUT_FULL,
                           out_full) != 0
             ? -1
             : 0;
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
