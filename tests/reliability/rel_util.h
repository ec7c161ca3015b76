/*
 * rel_util.h — shared by the reliability tests: failure reporting, device
 * lookup by backend, and deterministic projections / token data.
 */
#ifndef KQ_REL_UTIL_H
#define KQ_REL_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kqsvd.h"

/* ctest's SKIP_RETURN_CODE for "no such device here". */
#define REL_SKIP 77

#define REL_CHECK(cond, ...)                                                                       \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);                     \
      fprintf(stderr, __VA_ARGS__);                                                                \
      fprintf(stderr, "\n");                                                                       \
      exit(1);                                                                                     \
    }                                                                                              \
  } while (0)

#define REL_OK(call)                                                                               \
  do {                                                                                             \
    kq_status rel_st_ = (call);                                                                    \
    REL_CHECK(rel_st_ == KQ_OK, "%s -> %s: %s", #call, kq_status_string(rel_st_),                  \
              kq_last_error());                                                                    \
  } while (0)

/* Names of every device of `backend` ("cpu", "vulkan", "opencl"), at most
 * `cap`; returns how many. */
static inline int rel_devices(const char *backend, char names[][32], int cap) {
  int count = 0, n = 0;
  REL_OK(kq_device_count(&count));
  for (int i = 0; i < count && n < cap; i++) {
    kq_device_info info;
    REL_OK(kq_device_info_get(i, &info));
    if (strcmp(info.backend, backend) == 0) snprintf(names[n++], 32, "%s", info.name);
  }
  return n;
}

/* xorshift64* uniform in [-1, 1). */
static inline float rel_rand(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return (float)((double)((*s * 2685821657736338717ull) >> 11) / (double)(1ull << 52)) - 1.0f;
}

static inline void rel_fill(float *x, size_t n, uint64_t seed) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; i++) x[i] = rel_rand(&s);
}

/* Projections with ranks rank_k / rank_v in every layer, filled with
 * deterministic random values (spectra positive, decreasing). */
static inline kq_projections *rel_projections(const kq_projections_info *info, int32_t rank_k,
                                              int32_t rank_v, uint64_t seed) {
  int32_t *rk = malloc(sizeof(int32_t) * (size_t)info->n_layers);
  int32_t *rv = malloc(sizeof(int32_t) * (size_t)info->n_layers);
  REL_CHECK(rk && rv, "out of memory");
  for (int32_t l = 0; l < info->n_layers; l++) rk[l] = rank_k, rv[l] = rank_v;
  kq_projections *p = NULL;
  REL_OK(kq_projections_create(info, rk, rv, &p));
  free(rk);
  free(rv);
  size_t d = (size_t)info->head_dim, hk = (size_t)info->n_kv_heads;
  for (int32_t l = 0; l < info->n_layers; l++) {
    kq_projection_layer v;
    REL_OK(kq_projections_layer(p, l, &v));
    rel_fill(v.key_down, hk * d * (size_t)rank_k, seed + 10 * (uint64_t)l + 1);
    rel_fill(v.query_down, hk * d * (size_t)rank_k, seed + 10 * (uint64_t)l + 2);
    rel_fill(v.value_down, hk * d * (size_t)rank_v, seed + 10 * (uint64_t)l + 3);
    rel_fill(v.value_up, hk * d * (size_t)rank_v, seed + 10 * (uint64_t)l + 4);
    for (size_t i = 0; i < hk * d; i++)
      v.key_spectrum[i] = v.value_spectrum[i] = 1.0f / (float)(1 + i % d);
  }
  return p;
}

#endif
