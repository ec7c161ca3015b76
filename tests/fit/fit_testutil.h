/*
 * fit_testutil.h — helpers shared by the host/fit tests: calibration files
 * built from double arrays (rounded to F32, the test keeps the rounded
 * values), projections read back in double, and float64 reference maths
 * (explicit products and LAPACK singular values) that never go through the
 * code under test.
 */
#ifndef FIT_TESTUTIL_H
#define FIT_TESTUTIL_H

#include <lapacke.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/test_rng.h"
#include "io/kq_safetensors.h"
#include "kqsvd.h"

/* Calibration data in double, laid out as the file: k[l] = [Hk][T][d]. */
typedef struct tcalib {
  int L, H, Hk, T, d, D; /* D = 0: no wo */
  double **k, **q, **v, **wo;
  const char *seq_len, *rope, *rope_layout, *rope_theta; /* NULL: absent */
} tcalib;

/* One generator state per test program (tests/common/test_rng.h). */
static uint64_t t_rng_state = 0x1234567;

/* Uniform in (0, 1). */
static inline double t_uniform(void) {
  return test_rng_uniform_open(&t_rng_state);
}

/* Standard normal. */
static inline double t_normal(void) {
  return test_rng_gauss(&t_rng_state);
}

static inline double *t_alloc(size_t n) {
  double *p = calloc(n ? n : 1, sizeof *p);
  if (!p) abort();
  return p;
}

/* Allocates the arrays of c (shape fields set) filled with Gaussian data
 * whose column j is scaled by colscale^j (anisotropic), rounded to float. */
static inline void tcalib_random(tcalib *c, double colscale) {
  c->k = calloc((size_t)c->L, sizeof *c->k);
  c->q = calloc((size_t)c->L, sizeof *c->q);
  c->v = calloc((size_t)c->L, sizeof *c->v);
  c->wo = calloc((size_t)c->L, sizeof *c->wo);
  for (int l = 0; l < c->L; l++) {
    size_t nk = (size_t)c->Hk * c->T * c->d, nq = (size_t)c->H * c->T * c->d;
    c->k[l] = t_alloc(nk);
    c->q[l] = t_alloc(nq);
    c->v[l] = t_alloc(nk);
    for (size_t i = 0; i < nk; i++) {
      c->k[l][i] = (float)(t_normal() * pow(colscale, (double)(i % c->d)));
      c->v[l][i] = (float)(t_normal() * pow(colscale, (double)(i % c->d)));
    }
    for (size_t i = 0; i < nq; i++)
      c->q[l][i] = (float)(t_normal() * pow(colscale, (double)((c->d - 1 - i % c->d))));
    if (c->D) {
      size_t nw = (size_t)c->D * c->H * c->d;
      c->wo[l] = t_alloc(nw);
      for (size_t i = 0; i < nw; i++) c->wo[l][i] = (float)t_normal();
    }
  }
}

static inline void tcalib_free(tcalib *c) {
  for (int l = 0; l < c->L; l++) {
    free(c->k[l]);
    free(c->q[l]);
    free(c->v[l]);
    free(c->wo[l]);
  }
  free(c->k);
  free(c->q);
  free(c->v);
  free(c->wo);
}

static inline float *t_to_f32(const double *x, size_t n) {
  float *f = malloc((n ? n : 1) * sizeof *f);
  if (!f) abort();
  for (size_t i = 0; i < n; i++) f[i] = (float)x[i];
  return f;
}

/* Writes c as an F32 calibration file; returns the writer's status. */
static inline kq_status tcalib_write(const tcalib *c, const char *path) {
  kq_st_writer *w = NULL;
  kq_status st = kq_st_writer_create(path, &w);
  if (st) return st;
  if (c->seq_len) kq_st_writer_meta(w, "seq_len", c->seq_len);
  if (c->rope) kq_st_writer_meta(w, "rope", c->rope);
  if (c->rope_layout) kq_st_writer_meta(w, "rope_layout", c->rope_layout);
  if (c->rope_theta) kq_st_writer_meta(w, "rope_theta", c->rope_theta);
  float **bufs = calloc((size_t)c->L * 4, sizeof *bufs);
  for (int l = 0; l < c->L && st == KQ_OK; l++) {
    char name[64];
    int64_t sk[3] = {c->Hk, c->T, c->d}, sq[3] = {c->H, c->T, c->d};
    int64_t sw[2] = {c->D, (int64_t)c->H * c->d};
    size_t nk = (size_t)c->Hk * c->T * c->d, nq = (size_t)c->H * c->T * c->d;
    bufs[4 * l] = t_to_f32(c->k[l], nk);
    bufs[4 * l + 1] = t_to_f32(c->q[l], nq);
    bufs[4 * l + 2] = t_to_f32(c->v[l], nk);
    snprintf(name, sizeof name, "layers.%d.k", l);
    st = kq_st_writer_add(w, name, KQ_DTYPE_F32, 3, sk, bufs[4 * l]);
    snprintf(name, sizeof name, "layers.%d.q", l);
    if (!st) st = kq_st_writer_add(w, name, KQ_DTYPE_F32, 3, sq, bufs[4 * l + 1]);
    snprintf(name, sizeof name, "layers.%d.v", l);
    if (!st) st = kq_st_writer_add(w, name, KQ_DTYPE_F32, 3, sk, bufs[4 * l + 2]);
    if (c->D && !st) {
      bufs[4 * l + 3] = t_to_f32(c->wo[l], (size_t)c->D * c->H * c->d);
      snprintf(name, sizeof name, "layers.%d.wo", l);
      st = kq_st_writer_add(w, name, KQ_DTYPE_F32, 2, sw, bufs[4 * l + 3]);
    }
  }
  if (!st) st = kq_st_writer_commit(w, NULL);
  kq_st_writer_destroy(w);
  for (int i = 0; i < c->L * 4; i++) free(bufs[i]);
  free(bufs);
  return st;
}

/* C[m×n] = A[m×k] · B[n×k]ᵀ (row-major). */
static inline void t_gemm_nt(int m, int n, int k, const double *a, const double *b, double *c) {
  for (int i = 0; i < m; i++)
    for (int j = 0; j < n; j++) {
      double s = 0;
      for (int x = 0; x < k; x++) s += a[(size_t)i * k + x] * b[(size_t)j * k + x];
      c[(size_t)i * n + j] = s;
    }
}

/* C[m×n] = A[m×k] · B[k×n] (row-major). */
static inline void t_gemm_nn(int m, int n, int k, const double *a, const double *b, double *c) {
  for (int i = 0; i < m; i++)
    for (int j = 0; j < n; j++) {
      double s = 0;
      for (int x = 0; x < k; x++) s += a[(size_t)i * k + x] * b[(size_t)x * n + j];
      c[(size_t)i * n + j] = s;
    }
}

static inline double t_frob2(const double *x, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += x[i] * x[i];
  return s;
}

/* Singular values (descending) of a row-major m×n matrix via LAPACK. */
static inline int t_singular_values(int m, int n, const double *a, double *s) {
  double *tmp = t_alloc((size_t)m * n);
  memcpy(tmp, a, (size_t)m * n * sizeof *tmp);
  int mn = m < n ? m : n;
  double *superb = t_alloc((size_t)mn);
  int info =
      (int)LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'N', 'N', m, n, tmp, n, s, NULL, 1, NULL, 1, superb);
  free(tmp);
  free(superb);
  return info;
}

/* Σ_{j>=r} s_j² of the first n values. */
static inline double t_tail2(const double *s, int n, int r) {
  double t = 0;
  for (int j = r; j < n; j++) t += s[j] * s[j];
  return t;
}

/* The group's queries stacked along time: [g·T][d]. */
static inline double *t_query_stack(const tcalib *c, int l, int kv) {
  int g = c->H / c->Hk;
  size_t td = (size_t)c->T * c->d;
  double *qs = t_alloc((size_t)g * td);
  for (int j = 0; j < g; j++) memcpy(qs + j * td, c->q[l] + (size_t)(kv * g + j) * td, td * 8);
  return qs;
}

/* W_i [D][d]: mean of the group's wo column slices. */
static inline double *t_wo_mean(const tcalib *c, int l, int kv) {
  int g = c->H / c->Hk, hd = c->H * c->d;
  double *w = t_alloc((size_t)c->D * c->d);
  for (int row = 0; row < c->D; row++)
    for (int j = 0; j < g; j++)
      for (int x = 0; x < c->d; x++)
        w[(size_t)row * c->d + x] += c->wo[l][(size_t)row * hd + (kv * g + j) * c->d + x] / g;
  return w;
}

/* One layer of a projection file as doubles, row-major [Hk][d][r]. */
typedef struct tproj_layer {
  int rk, rv;
  double *a, *b, *c, *e, *ks, *vs;
} tproj_layer;

static inline int t_all_finite(const float *x, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!isfinite(x[i])) return 0;
  return 1;
}

/* Reads layer l of `proj`; returns 0 if any value is not finite. */
static inline int tproj_get(kq_projections *proj, int l, int hk, int d, tproj_layer *out) {
  kq_projection_layer v;
  memset(out, 0, sizeof *out);
  if (kq_projections_layer(proj, l, &v) != KQ_OK) return 0;
  out->rk = v.rank_k;
  out->rv = v.rank_v;
  size_t nk = (size_t)hk * d * v.rank_k, nv = (size_t)hk * d * v.rank_v, ns = (size_t)hk * d;
  int ok = t_all_finite(v.key_down, nk) && t_all_finite(v.query_down, nk) &&
           t_all_finite(v.value_down, nv) && t_all_finite(v.value_up, nv) &&
           t_all_finite(v.key_spectrum, ns) && t_all_finite(v.value_spectrum, ns);
  out->a = t_alloc(nk);
  out->b = t_alloc(nk);
  out->c = t_alloc(nv);
  out->e = t_alloc(nv);
  out->ks = t_alloc(ns);
  out->vs = t_alloc(ns);
  for (size_t i = 0; i < nk; i++) out->a[i] = v.key_down[i], out->b[i] = v.query_down[i];
  for (size_t i = 0; i < nv; i++) out->c[i] = v.value_down[i], out->e[i] = v.value_up[i];
  for (size_t i = 0; i < ns; i++) out->ks[i] = v.key_spectrum[i], out->vs[i] = v.value_spectrum[i];
  return ok;
}

static inline void tproj_free(tproj_layer *p) {
  free(p->a);
  free(p->b);
  free(p->c);
  free(p->e);
  free(p->ks);
  free(p->vs);
}

/* A temporary path unique to this process. */
static inline const char *t_path(const char *name) {
  static char buf[8][256];
  static int i;
  char *p = buf[i++ % 8];
  const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(p, 256, "%s/kqfit_%d_%s", dir, (int)getpid(), name);
  return p;
}

static inline int t_exists(const char *path) {
  return access(path, F_OK) == 0;
}

#endif /* FIT_TESTUTIL_H */
