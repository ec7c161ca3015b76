/* kq_fit: streams a calibration file layer by layer (one layer's factors
 * alive at a time), solves every kv head in parallel, chooses ranks and
 * writes the projection file atomically. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kq_fit.h"

kq_fit_params kq_fit_default_params(void) {
  kq_fit_params p;
  memset(&p, 0, sizeof p);
  p.method = KQ_METHOD_KQSVD;
  p.alpha = 1.0;
  return p;
}

/* What is kept of a layer once its factors are gone: projections at the
 * layer's rank (at rank d in --ratio mode until the budget is spread) and
 * the spectra. Row-major [Hk, d, rank] floats as in the projection file. */
typedef struct layer_result {
  int32_t rank_k, rank_v;
  float *a, *b, *c, *e;
  double *sigma_k, *sigma_v; /* [Hk][d] */
} layer_result;

typedef struct solve_job {
  const kq_calib *calib;
  const kq_layer_factors *f;
  const kq_fit_params *params;
  int32_t layer;
  double *a, *b, *c, *e; /* [Hk][d*d] column-major, full rank */
  double *sigma_k, *sigma_v;
} solve_job;

static kq_status solve_task(void *ctx, int64_t kv) {
  solve_job *job = ctx;
  if (job->params->cancel && *job->params->cancel)
    return kq_set_error(KQ_ERR_INTERRUPTED, "interrupted");
  int32_t d = job->calib->head_dim;
  size_t dd = (size_t)d * d, off = (size_t)kv * dd;
  double *work = kq_malloc_array(kq_solve_work_size(d), sizeof *work, "SVD work");
  if (!work) return KQ_ERR_OUT_OF_MEMORY;
  const kq_layer_factors *f = job->f;
  kq_status st = kq_solve_keys(job->params->method, job->params->alpha, d, f->r_key + off,
                               f->r_query ? f->r_query + off : NULL, work, job->a + off,
                               job->b + off, job->sigma_k + (size_t)kv * d);
  if (st) {
    free(work);
    return kq_error_prefix(st, "%s: layers.%d: keys of kv head %lld", job->calib->path,
                           (int)job->layer, (long long)kv);
  }
  /* Only KQ-SVD fits V W_Oᵀ; the baselines use the plain SVD of V (SPEC §1). */
  const double *r_wo = job->params->method == KQ_METHOD_KQSVD && f->r_wo ? f->r_wo + off : NULL;
  st = kq_solve_values(d, f->r_value + off, r_wo, work, job->c + off, job->e + off,
                       job->sigma_v + (size_t)kv * d);
  free(work);
  if (st)
    return kq_error_prefix(st, "%s: layers.%d: values of kv head %lld", job->calib->path,
                           (int)job->layer, (long long)kv);
  return KQ_OK;
}

/* dst [Hk, d, r] row-major <- first r columns of each column-major d×d. */
static void truncate_to(float *dst, const void *src, int src_is_double, int32_t hk, int32_t d,
                        int32_t src_cols, int32_t r) {
  for (int32_t i = 0; i < hk; i++)
    for (int32_t row = 0; row < d; row++)
      for (int32_t col = 0; col < r; col++) {
        size_t o = ((size_t)i * d + row) * (size_t)r + col;
        if (src_is_double)
          dst[o] = (float)((const double *)src)[(size_t)i * d * d + row + (size_t)col * d];
        else
          dst[o] = ((const float *)src)[((size_t)i * d + row) * (size_t)src_cols + col];
      }
}

static void layer_result_free(layer_result *r) {
  free(r->a);
  free(r->b);
  free(r->c);
  free(r->e);
  free(r->sigma_k);
  free(r->sigma_v);
  memset(r, 0, sizeof *r);
}

static kq_status fit_layer(const kq_calib *calib, const kq_fit_params *p, int32_t layer,
                           int n_threads, layer_result *out) {
  int32_t d = calib->head_dim, hk = calib->n_kv_heads;
  size_t dd = (size_t)d * d;
  kq_calib_layer lt;
  kq_calib_get_layer(calib, layer, &lt);
  if (lt.wo) {
    kq_status st = kq_st_check_finite(calib->file, lt.wo);
    if (st) return st;
  }
  kq_layer_factors f;
  kq_status st = kq_layer_factors_compute(calib, &lt, layer, p->method != KQ_METHOD_KSVD, n_threads,
                                          p->cancel, &f);
  kq_calib_release_layer(calib, &lt);
  if (st) return st;

  solve_job job = {.calib = calib, .f = &f, .params = p, .layer = layer};
  job.a = kq_malloc_array((size_t)hk, dd * sizeof(double), "key projections");
  job.b = kq_malloc_array((size_t)hk, dd * sizeof(double), "query projections");
  job.c = kq_malloc_array((size_t)hk, dd * sizeof(double), "value projections");
  job.e = kq_malloc_array((size_t)hk, dd * sizeof(double), "value projections");
  out->sigma_k = job.sigma_k = kq_calloc_array((size_t)hk * d, sizeof(double), "key spectrum");
  out->sigma_v = job.sigma_v = kq_calloc_array((size_t)hk * d, sizeof(double), "value spectrum");
  if (!job.a || !job.b || !job.c || !job.e || !job.sigma_k || !job.sigma_v) {
    st = KQ_ERR_OUT_OF_MEMORY;
    goto done;
  }
  st = kq_parallel_for(hk, n_threads, solve_task, &job);
  if (st) goto done;

  if (p->rank_k > 0) {
    out->rank_k = p->rank_k;
    out->rank_v = p->rank_v;
  } else if (p->epsilon > 0) {
    out->rank_k = kq_rank_for_epsilon(job.sigma_k, hk, d, p->epsilon);
    out->rank_v = kq_rank_for_epsilon(job.sigma_v, hk, d, p->epsilon);
  } else { /* --ratio: keep rank d until every layer's spectrum is known */
    out->rank_k = out->rank_v = d;
  }
  size_t nk = (size_t)hk * d * (size_t)out->rank_k, nv = (size_t)hk * d * (size_t)out->rank_v;
  out->a = kq_malloc_array(nk, sizeof(float), "key_down");
  out->b = kq_malloc_array(nk, sizeof(float), "query_down");
  out->c = kq_malloc_array(nv, sizeof(float), "value_down");
  out->e = kq_malloc_array(nv, sizeof(float), "value_up");
  if (!out->a || !out->b || !out->c || !out->e) {
    st = KQ_ERR_OUT_OF_MEMORY;
    goto done;
  }
  truncate_to(out->a, job.a, 1, hk, d, d, out->rank_k);
  truncate_to(out->b, job.b, 1, hk, d, d, out->rank_k);
  truncate_to(out->c, job.c, 1, hk, d, d, out->rank_v);
  truncate_to(out->e, job.e, 1, hk, d, d, out->rank_v);
done:
  free(job.a);
  free(job.b);
  free(job.c);
  free(job.e);
  kq_layer_factors_free(&f);
  return st;
}

static kq_status check_params(const kq_fit_params *p) {
  int modes = (p->rank_k != 0 || p->rank_v != 0) + (p->epsilon != 0) + (p->ratio != 0);
  if (modes != 1)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "choose exactly one rank mode: rank_k and rank_v, epsilon, or ratio");
  if ((p->rank_k != 0 || p->rank_v != 0) && (p->rank_k < 1 || p->rank_v < 1))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "rank_k (%d) and rank_v (%d) must both be >= 1",
                        (int)p->rank_k, (int)p->rank_v);
  if (p->epsilon != 0 && !(p->epsilon > 0 && p->epsilon < 1))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "epsilon %g must be in (0, 1)", p->epsilon);
  if (p->ratio != 0 && !(p->ratio > 0 && p->ratio <= 1))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "ratio %g must be in (0, 1]", p->ratio);
  if (!(p->alpha > 0 && isfinite(p->alpha)))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "alpha %g must be a positive number", p->alpha);
  if (!kq_method_name(p->method))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "unknown method %d", (int)p->method);
  return KQ_OK;
}

static kq_status write_projections(const kq_calib *calib, const kq_fit_params *p, layer_result *res,
                                   const int32_t *rank_k, const int32_t *rank_v,
                                   const char *out_path) {
  int32_t d = calib->head_dim, hk = calib->n_kv_heads;
  kq_projections_info info = {.method = p->method,
                              .n_layers = calib->n_layers,
                              .n_heads = calib->n_heads,
                              .n_kv_heads = hk,
                              .head_dim = d,
                              .rope = calib->rope,
                              .rope_layout = calib->rope_layout,
                              .rope_theta = calib->rope_theta};
  kq_projections *proj = NULL;
  kq_status st = kq_projections_create(&info, rank_k, rank_v, &proj);
  if (st) return st;
  for (int32_t l = 0; l < calib->n_layers; l++) {
    kq_projection_layer v;
    st = kq_projections_layer(proj, l, &v);
    if (st) break;
    truncate_to(v.key_down, res[l].a, 0, hk, d, res[l].rank_k, rank_k[l]);
    truncate_to(v.query_down, res[l].b, 0, hk, d, res[l].rank_k, rank_k[l]);
    truncate_to(v.value_down, res[l].c, 0, hk, d, res[l].rank_v, rank_v[l]);
    truncate_to(v.value_up, res[l].e, 0, hk, d, res[l].rank_v, rank_v[l]);
    for (size_t x = 0; x < (size_t)hk * d; x++) {
      v.key_spectrum[x] = (float)res[l].sigma_k[x];
      v.value_spectrum[x] = (float)res[l].sigma_v[x];
    }
  }
  if (st == KQ_OK && p->cancel && *p->cancel)
    st = kq_set_error(KQ_ERR_INTERRUPTED, "interrupted before writing %s", out_path);
  if (st == KQ_OK) st = kq_projections_save(proj, out_path);
  kq_projections_destroy(proj);
  return st;
}

kq_status kq_fit(const char *calib_path, const char *out_path, const kq_fit_params *params) {
  kq_fit_params p = params ? *params : kq_fit_default_params();
  kq_status st = check_params(&p);
  if (st) return st;
  if (!out_path) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "output path is NULL");
  kq_calib calib;
  st = kq_calib_open(calib_path, &calib);
  if (st) return st;
  int32_t n_layers = calib.n_layers, d = calib.head_dim;
  if (p.rank_k > d || p.rank_v > d) {
    st = kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: rank_k %d / rank_v %d exceed head_dim %d",
                      calib.path, (int)p.rank_k, (int)p.rank_v, (int)d);
    kq_calib_close(&calib);
    return st;
  }
  int n_threads = kq_thread_count(p.n_threads);
  layer_result *res = kq_calloc_array((size_t)n_layers, sizeof *res, "layer results");
  int32_t *rank_k = kq_calloc_array((size_t)n_layers, sizeof *rank_k, "ranks");
  int32_t *rank_v = kq_calloc_array((size_t)n_layers, sizeof *rank_v, "ranks");
  if (!res || !rank_k || !rank_v) {
    st = KQ_ERR_OUT_OF_MEMORY;
    goto done;
  }
  if (p.progress) p.progress(p.progress_user, 0, n_layers, "fit layers");
  for (int32_t l = 0; l < n_layers && st == KQ_OK; l++) {
    if (p.cancel && *p.cancel) {
      st = kq_set_error(KQ_ERR_INTERRUPTED, "interrupted at layer %d", (int)l);
      break;
    }
    st = fit_layer(&calib, &p, l, n_threads, &res[l]);
    rank_k[l] = res[l].rank_k;
    rank_v[l] = res[l].rank_v;
    if (st == KQ_OK && p.progress) p.progress(p.progress_user, l + 1, n_layers, "fit layers");
  }
  if (st == KQ_OK && p.ratio > 0) {
    size_t stride = (size_t)calib.n_kv_heads * d;
    double *sk = kq_malloc_array((size_t)n_layers * stride, sizeof *sk, "spectra");
    double *sv = kq_malloc_array((size_t)n_layers * stride, sizeof *sv, "spectra");
    if (!sk || !sv) st = KQ_ERR_OUT_OF_MEMORY;
    for (int32_t l = 0; st == KQ_OK && l < n_layers; l++) {
      memcpy(sk + l * stride, res[l].sigma_k, stride * sizeof *sk);
      memcpy(sv + l * stride, res[l].sigma_v, stride * sizeof *sv);
    }
    int64_t budget = (int64_t)floor(p.ratio * 2.0 * d * n_layers + 1e-9);
    if (st == KQ_OK)
      st = kq_rank_for_budget(sk, sv, n_layers, calib.n_kv_heads, d, budget, rank_k, rank_v);
    free(sk);
    free(sv);
  }
  if (st == KQ_OK) st = write_projections(&calib, &p, res, rank_k, rank_v, out_path);
done:
  if (res)
    for (int32_t l = 0; l < n_layers; l++) layer_result_free(&res[l]);
  free(res);
  free(rank_k);
  free(rank_v);
  kq_calib_close(&calib);
  return st;
}
