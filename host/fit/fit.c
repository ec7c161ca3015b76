/* kq_fit: streams a calibration file layer by layer (one layer's factors
 * alive at a time), solves every kv head in parallel (or the layer jointly,
 * or the quant baseline's permutation basis), chooses ranks (and, for
 * --bytes, segments: bytes.c), folds the segment rotations in and writes the
 * projection file atomically. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kq_fit.h"
#include "kq_output_file.h"
#include "kq_projections_internal.h"

kq_fit_params kq_fit_default_params(void) {
  kq_fit_params p;
  memset(&p, 0, sizeof p);
  p.struct_size = sizeof p;
  p.method = KQ_METHOD_KQSVD;
  p.alpha = 1.0;
  p.layout = KQ_LAYOUT_PER_HEAD;
  p.seed = 1;
  p.balance = 1;
  return p;
}

kq_status kq_layer_solution_alloc(int32_t groups, int32_t dim, kq_layer_solution *out) {
  memset(out, 0, sizeof *out);
  out->groups = groups;
  out->dim = dim;
  size_t nn = (size_t)dim * (size_t)dim;
  out->a = kq_calloc_array((size_t)groups, nn * sizeof(double), "key projections");
  out->b = kq_calloc_array((size_t)groups, nn * sizeof(double), "query projections");
  out->c = kq_calloc_array((size_t)groups, nn * sizeof(double), "value projections");
  out->e = kq_calloc_array((size_t)groups, nn * sizeof(double), "value projections");
  out->sigma_k = kq_calloc_array((size_t)groups * dim, sizeof(double), "key spectrum");
  out->sigma_v = kq_calloc_array((size_t)groups * dim, sizeof(double), "value spectrum");
  if (!out->a || !out->b || !out->c || !out->e || !out->sigma_k || !out->sigma_v) {
    kq_layer_solution_free(out);
    return KQ_ERR_OUT_OF_MEMORY;
  }
  return KQ_OK;
}

void kq_layer_solution_free(kq_layer_solution *s) {
  if (!s) return;
  free(s->a);
  free(s->b);
  free(s->c);
  free(s->e);
  free(s->sigma_k);
  free(s->sigma_v);
  free(s->wk);
  free(s->wv);
  memset(s, 0, sizeof *s);
}

typedef struct solve_job {
  const kq_calib *calib;
  const kq_layer_factors *f;
  const kq_fit_params *params;
  int32_t layer;
  kq_layer_solution *sol;
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
  kq_layer_solution *sol = job->sol;
  kq_status st = kq_solve_keys(job->params->method, job->params->alpha, d, f->r_key + off,
                               f->r_query ? f->r_query + off : NULL, work, sol->a + off,
                               sol->b + off, sol->sigma_k + (size_t)kv * d);
  if (st) {
    free(work);
    return kq_error_prefix(st, "%s: layers.%d: keys of kv head %lld", job->calib->path,
                           (int)job->layer, (long long)kv);
  }
  /* Only KQ-SVD fits V W_Oᵀ; the baselines use the plain SVD of V (SPEC §1). */
  const double *r_wo = job->params->method == KQ_METHOD_KQSVD && f->r_wo ? f->r_wo + off : NULL;
  st = kq_solve_values(d, f->r_value + off, r_wo, work, sol->c + off, sol->e + off,
                       sol->sigma_v + (size_t)kv * d);
  free(work);
  if (st)
    return kq_error_prefix(st, "%s: layers.%d: values of kv head %lld", job->calib->path,
                           (int)job->layer, (long long)kv);
  return KQ_OK;
}

/* dst [g, n, r] row-major <- first r columns of each group's n×src_cols
 * matrix: column-major doubles (src_is_double) or row-major floats. */
static void truncate_to(float *dst, const void *src, int src_is_double, int32_t g, int32_t n,
                        int32_t src_cols, int32_t r) {
  for (int32_t i = 0; i < g; i++)
    for (int32_t row = 0; row < n; row++)
      for (int32_t col = 0; col < r; col++) {
        size_t o = ((size_t)i * n + row) * (size_t)r + col;
        if (src_is_double)
          dst[o] = (float)((const double *)src)[(size_t)i * n * n + row + (size_t)col * n];
        else
          dst[o] = ((const float *)src)[((size_t)i * n + row) * (size_t)src_cols + col];
      }
}

static void layer_fit_free(kq_layer_fit *r) {
  free(r->a);
  free(r->b);
  free(r->c);
  free(r->e);
  free(r->sigma_k);
  free(r->sigma_v);
  free(r->wk);
  free(r->wv);
  memset(r, 0, sizeof *r);
}

/* The layer's full-rank solution for p's method and layout. */
static kq_status solve_layer(const kq_calib *calib, const kq_fit_params *p, int32_t layer,
                             int n_threads, kq_layer_solution *sol) {
  int32_t d = calib->head_dim, hk = calib->n_kv_heads;
  memset(sol, 0, sizeof *sol);
  kq_calib_layer lt;
  kq_calib_get_layer(calib, layer, &lt);
  if (lt.wo) {
    kq_status st = kq_st_check_finite(calib->file, lt.wo);
    if (st) return st;
  }
  kq_layer_factors f;
  kq_status st = kq_layer_factors_compute(calib, &lt, layer, p->method != KQ_METHOD_KSVD, n_threads,
                                          p->cancel, &f);
  if (st) {
    kq_calib_release_layer(calib, &lt);
    return st;
  }
  if (p->method == KQ_METHOD_QUANT) {
    st = kq_quant_basis(&f, p->layout, sol);
    if (!st && p->balance == 2) st = kq_quant_balance(&f, p->layout, sol);
  } else if (p->layout == KQ_LAYOUT_JOINT) {
    st = kq_joint_solve(calib, &lt, layer, &f, sol);
  } else {
    st = kq_layer_solution_alloc(hk, d, sol);
    solve_job job = {.calib = calib, .f = &f, .params = p, .layer = layer, .sol = sol};
    if (!st) st = kq_parallel_for(hk, n_threads, solve_task, &job);
  }
  if (!st && p->balance && p->method == KQ_METHOD_KQSVD) st = kq_balance_kqsvd(sol, f.r_wo != NULL);
  if (st) kq_layer_solution_free(sol);
  kq_calib_release_layer(calib, &lt);
  kq_layer_factors_free(&f);
  return st;
}

static kq_status fit_layer(const kq_calib *calib, const kq_fit_params *p, int32_t layer,
                           int n_threads, kq_layer_fit *out) {
  kq_layer_solution sol;
  kq_status st = solve_layer(calib, p, layer, n_threads, &sol);
  if (st) return st;
  int32_t g = sol.groups, n = sol.dim;
  out->groups = g;
  out->dim = n;
  out->sigma_k = sol.sigma_k;
  out->sigma_v = sol.sigma_v;
  out->wk = sol.wk;
  out->wv = sol.wv;
  sol.sigma_k = sol.sigma_v = sol.wk = sol.wv = NULL;
  if (p->rank_k > 0) {
    out->rank_k = p->rank_k;
    out->rank_v = p->rank_v;
  } else if (p->epsilon > 0) {
    out->rank_k = kq_rank_for_epsilon(out->sigma_k, g, n, p->epsilon);
    out->rank_v = kq_rank_for_epsilon(out->sigma_v, g, n, p->epsilon);
  } else { /* --ratio, --bytes: keep full rank until every layer's spectrum is known */
    out->rank_k = out->rank_v = n;
  }
  size_t nk = (size_t)g * n * (size_t)out->rank_k, nv = (size_t)g * n * (size_t)out->rank_v;
  out->a = kq_malloc_array(nk, sizeof(float), "key_down");
  out->b = kq_malloc_array(nk, sizeof(float), "query_down");
  out->c = kq_malloc_array(nv, sizeof(float), "value_down");
  out->e = kq_malloc_array(nv, sizeof(float), "value_up");
  if (!out->a || !out->b || !out->c || !out->e) {
    st = KQ_ERR_OUT_OF_MEMORY;
  } else {
    truncate_to(out->a, sol.a, 1, g, n, n, out->rank_k);
    truncate_to(out->b, sol.b, 1, g, n, n, out->rank_k);
    truncate_to(out->c, sol.c, 1, g, n, n, out->rank_v);
    truncate_to(out->e, sol.e, 1, g, n, n, out->rank_v);
  }
  kq_layer_solution_free(&sol);
  return st;
}

static kq_status check_params(const kq_fit_params *p) {
  int modes =
      (p->rank_k != 0 || p->rank_v != 0) + (p->epsilon != 0) + (p->ratio != 0) + (p->bytes != 0);
  if (modes != 1)
    return kq_set_error(
        KQ_ERR_INVALID_ARGUMENT,
        "choose exactly one rank mode: rank_k and rank_v, epsilon, ratio, or bytes");
  if ((p->rank_k != 0 || p->rank_v != 0) && (p->rank_k < 1 || p->rank_v < 1))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "rank_k (%d) and rank_v (%d) must both be >= 1",
                        (int)p->rank_k, (int)p->rank_v);
  if (p->epsilon != 0 && !(p->epsilon > 0 && p->epsilon < 1))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "epsilon %g must be in (0, 1)", p->epsilon);
  if (p->ratio != 0 && !(p->ratio > 0 && p->ratio <= 1))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "ratio %g must be in (0, 1]", p->ratio);
  if (p->bytes != 0 && !(p->bytes > 0 && p->bytes <= 1))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "bytes %g must be in (0, 1]", p->bytes);
  if (p->sensitivity && p->bytes == 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "sensitivity %s needs a byte budget (bytes): it weighs the byte allocation",
                        p->sensitivity);
  if (p->positions < 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "positions %lld is negative (0 = off)",
                        (long long)p->positions);
  if (!(p->alpha > 0 && isfinite(p->alpha)))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "alpha %g must be a positive number", p->alpha);
  if (p->balance < 0 || p->balance > 2)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "balance %d must be 0, 1 or 2", (int)p->balance);
  if (p->n_threads < 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "n_threads %d is negative (0 = all cores)",
                        (int)p->n_threads);
  if (!kq_method_name(p->method))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "unknown method %d", (int)p->method);
  if (!kq_layout_name(p->layout))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "unknown layout %d", (int)p->layout);
  if (p->method == KQ_METHOD_QUANT && p->bytes == 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "method quant needs a byte budget (bytes): it has no rank spectrum to cut");
  if (p->layout == KQ_LAYOUT_JOINT && p->method != KQ_METHOD_KQSVD && p->method != KQ_METHOD_QUANT)
    return kq_set_error(KQ_ERR_UNSUPPORTED,
                        "layout joint supports the methods kq-svd and quant, not %s",
                        kq_method_name(p->method));
  return KQ_OK;
}

/* Bits per kept latent dim of one side's segments, scales included (a float
 * segment counts F16). */
static double side_bits(const kq_layer_fit *r, int side, int32_t rank) {
  int32_t n = side ? r->n_seg_v : r->n_seg_k;
  const kq_segment *s = side ? r->seg_v : r->seg_k;
  if (n == 0) return 16.0 * rank;
  double bits = 0;
  for (int32_t i = 0; i < n; i++)
    bits += s[i].bits == KQ_SEG_FLOAT ? 16.0 * s[i].width : (double)s[i].width * s[i].bits + 16;
  return bits;
}

/* sqrt of the mean over groups of the predicted relative squared error at
 * rank r. */
static double rank_error(const double *sigma, int32_t groups, int32_t n, int32_t r) {
  double s = 0;
  for (int32_t g = 0; g < groups; g++) {
    double e = kq_predicted_error(sigma + (size_t)g * n, n, r);
    s += e * e;
  }
  return sqrt(s / groups);
}

/* The model the calibration data came from (capture records it) is the
 * model the projections are for: SPEC §1b model_name / model_sha256. */
static kq_status copy_model_identity(const kq_calib *calib, kq_projections *proj) {
  const char *name = kq_st_meta(calib->file, "model_name");
  const char *sha = kq_st_meta(calib->file, "model_sha256");
  if (!name && !sha) return KQ_OK;
  if (sha && !kq_model_sha256_valid(sha))
    return kq_set_error(KQ_ERR_FORMAT, "%s: metadata model_sha256: '%.70s' is not 64 hex digits",
                        calib->path, sha);
  kq_model_identity id;
  snprintf(id.name, sizeof id.name, "%s", name ? name : "");
  snprintf(id.sha256, sizeof id.sha256, "%s", sha ? sha : "");
  return kq_projections_set_model(proj, &id);
}

/* The projections of the fitted layers; *out_proj on success only. */
static kq_status make_projections(const kq_calib *calib, const kq_fit_params *p, kq_layer_fit *res,
                                  const int32_t *rank_k, const int32_t *rank_v, kq_fit_summary *sum,
                                  kq_projections **out_proj) {
  int32_t d = calib->head_dim, hk = calib->n_kv_heads, L = calib->n_layers;
  kq_projections_info info = {.method = p->method,
                              .n_layers = L,
                              .n_heads = calib->n_heads,
                              .n_kv_heads = hk,
                              .head_dim = d,
                              .rope = calib->rope,
                              .rope_layout = calib->rope_layout,
                              .rope_theta = calib->rope_theta,
                              .layout = p->layout};
  kq_projections *proj = NULL;
  kq_status st = kq_projections_create(&info, rank_k, rank_v, &proj);
  if (st) return st;
  st = copy_model_identity(calib, proj);
  double bits_k = 0, bits_v = 0, dims_k = 0, dims_v = 0;
  for (int32_t l = 0; l < L && !st; l++) {
    kq_projection_layer v;
    st = kq_projections_layer(proj, l, &v);
    if (st) break;
    kq_layer_fit *r = &res[l];
    int32_t g = r->groups, n = r->dim;
    truncate_to(v.key_down, r->a, 0, g, n, r->rank_k, rank_k[l]);
    truncate_to(v.query_down, r->b, 0, g, n, r->rank_k, rank_k[l]);
    truncate_to(v.value_down, r->c, 0, g, n, r->rank_v, rank_v[l]);
    truncate_to(v.value_up, r->e, 0, g, n, r->rank_v, rank_v[l]);
    for (size_t x = 0; x < (size_t)g * n; x++) {
      v.key_spectrum[x] = (float)r->sigma_k[x];
      v.value_spectrum[x] = (float)r->sigma_v[x];
    }
    if (r->n_seg_k) st = kq_projections_set_segments(proj, l, KQ_SIDE_KEYS, r->n_seg_k, r->seg_k);
    if (!st && r->n_seg_v)
      st = kq_projections_set_segments(proj, l, KQ_SIDE_VALUES, r->n_seg_v, r->seg_v);
    bits_k += side_bits(r, 0, rank_k[l]);
    bits_v += side_bits(r, 1, rank_v[l]);
    dims_k += rank_k[l];
    dims_v += rank_v[l];
  }
  if (!st) st = kq_fold_rotations(proj, p->seed);
  if (st == KQ_OK && sum) {
    sum->layout = p->layout;
    sum->fraction_of_f16 = kq_projections_fraction_of_f16(proj, KQ_STORAGE_F16);
    sum->mean_rank_k = dims_k / L;
    sum->mean_rank_v = dims_v / L;
    sum->mean_bits_k = bits_k / dims_k;
    sum->mean_bits_v = bits_v / dims_v;
  }
  if (st == KQ_OK)
    *out_proj = proj;
  else
    kq_projections_destroy(proj);
  return st;
}

kq_status kq_fit(const char *calib_path, const char *out_path, const kq_fit_params *params) {
  return kq_fit_ex(calib_path, out_path, params, NULL);
}

/* The fit of an opened calibration: projections into *out_proj, the
 * summary into *out_summary (may be NULL) on success. */
static kq_status fit_calib(const kq_calib *calib, const kq_fit_params *p, kq_projections **out_proj,
                           kq_fit_summary *out_summary) {
  kq_status st = KQ_OK;
  int joint = p->layout == KQ_LAYOUT_JOINT;
  int32_t n_layers = calib->n_layers, d = calib->head_dim;
  int32_t groups = joint ? 1 : calib->n_kv_heads, dim = joint ? calib->n_kv_heads * d : d;
  if (joint && calib->rope == KQ_ROPE_PRE) {
    return kq_set_error(KQ_ERR_UNSUPPORTED,
                        "%s: layout joint needs keys and queries calibrated after RoPE (rope post "
                        "or none); this calibration has rope pre",
                        calib->path);
  }
  if (p->rank_k > dim || p->rank_v > dim) {
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: rank_k %d / rank_v %d exceed %s %d",
                        calib->path, (int)p->rank_k, (int)p->rank_v,
                        joint ? "n_kv_heads·head_dim" : "head_dim", (int)dim);
  }
  int n_threads = kq_thread_count(p->n_threads);
  kq_layer_fit *res = kq_calloc_array((size_t)n_layers, sizeof *res, "layer results");
  int32_t *rank_k = kq_calloc_array((size_t)n_layers, sizeof *rank_k, "ranks");
  int32_t *rank_v = kq_calloc_array((size_t)n_layers, sizeof *rank_v, "ranks");
  kq_fit_summary sum;
  memset(&sum, 0, sizeof sum);
  if (!res || !rank_k || !rank_v) {
    st = KQ_ERR_OUT_OF_MEMORY;
    goto done;
  }
  if (p->progress) p->progress(p->progress_user, 0, n_layers, "fit layers");
  for (int32_t l = 0; l < n_layers && st == KQ_OK; l++) {
    if (p->cancel && *p->cancel) {
      st = kq_set_error(KQ_ERR_INTERRUPTED, "interrupted at layer %d", (int)l);
      break;
    }
    st = fit_layer(calib, p, l, n_threads, &res[l]);
    rank_k[l] = res[l].rank_k;
    rank_v[l] = res[l].rank_v;
    if (st == KQ_OK && p->progress) p->progress(p->progress_user, l + 1, n_layers, "fit layers");
  }
  if (st == KQ_OK && p->ratio > 0) {
    size_t stride = (size_t)groups * dim;
    double *sk = kq_malloc_array((size_t)n_layers * stride, sizeof *sk, "spectra");
    double *sv = kq_malloc_array((size_t)n_layers * stride, sizeof *sv, "spectra");
    if (!sk || !sv) st = KQ_ERR_OUT_OF_MEMORY;
    for (int32_t l = 0; st == KQ_OK && l < n_layers; l++) {
      memcpy(sk + l * stride, res[l].sigma_k, stride * sizeof *sk);
      memcpy(sv + l * stride, res[l].sigma_v, stride * sizeof *sv);
    }
    /* Budget in latent dims per group; a joint latent dim stands for Hk
     * per-head ones. */
    int64_t budget = (int64_t)floor(p->ratio * 2.0 * dim * n_layers + 1e-9);
    if (st == KQ_OK) st = kq_rank_for_budget(sk, sv, n_layers, groups, dim, budget, rank_k, rank_v);
    free(sk);
    free(sv);
  }
  if (st == KQ_OK && p->bytes > 0) {
    st = kq_fit_bytes(calib, p, n_threads, res, rank_k, rank_v, &sum.predicted_error_k,
                      &sum.predicted_error_v);
  } else if (st == KQ_OK) {
    for (int32_t l = 0; l < n_layers; l++) {
      sum.predicted_error_k += rank_error(res[l].sigma_k, groups, dim, rank_k[l]) / n_layers;
      sum.predicted_error_v += rank_error(res[l].sigma_v, groups, dim, rank_v[l]) / n_layers;
    }
  }
  if (st == KQ_OK) st = make_projections(calib, p, res, rank_k, rank_v, &sum, out_proj);
  if (st == KQ_OK && out_summary) *out_summary = sum;
done:
  if (res)
    for (int32_t l = 0; l < n_layers; l++) layer_fit_free(&res[l]);
  free(res);
  free(rank_k);
  free(rank_v);
  return st;
}

kq_status kq_fit_ex(const char *calib_path, const char *out_path, const kq_fit_params *params,
                    kq_fit_summary *out_summary) {
  kq_fit_params p = kq_fit_default_params();
  kq_status st =
      kq_params_adopt(&p, sizeof p, sizeof p, params, "kq_fit_params", "kq_fit_default_params");
  if (st) return st;
  st = check_params(&p);
  if (st) return st;
  if (!out_path) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "output path is NULL");
  /* Before any work: a writable regular target that is not the input. */
  const char *inputs[] = {calib_path, NULL};
  if (calib_path && (st = kq_output_check(out_path, inputs)) != KQ_OK) return st;
  kq_calib calib;
  st = kq_calib_open_positions(calib_path, p.positions, p.seed, kq_thread_count(p.n_threads),
                               out_path, &calib);
  if (st) return st;
  kq_projections *proj = NULL;
  kq_fit_summary sum;
  st = fit_calib(&calib, &p, &proj, &sum);
  kq_calib_close(&calib);
  if (st == KQ_OK && p.cancel && *p.cancel)
    st = kq_set_error(KQ_ERR_INTERRUPTED, "interrupted before writing %s", out_path);
  if (st == KQ_OK) st = kq_projections_save(proj, out_path);
  if (st == KQ_OK && out_summary) *out_summary = sum;
  kq_projections_destroy(proj);
  return st;
}

kq_status kq_fit_memory(const kq_calib_view *view, const kq_fit_params *params,
                        kq_projections **out_proj, kq_fit_summary *out_summary) {
  if (!out_proj) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_fit_memory: out_proj is NULL");
  *out_proj = NULL;
  kq_fit_params p = kq_fit_default_params();
  kq_status st =
      kq_params_adopt(&p, sizeof p, sizeof p, params, "kq_fit_params", "kq_fit_default_params");
  if (st) return st;
  st = check_params(&p);
  if (st) return st;
  kq_calib calib;
  st = kq_calib_open_memory(view, p.positions, p.seed, kq_thread_count(p.n_threads), &calib);
  if (st) return st;
  kq_projections *proj = NULL;
  kq_fit_summary sum;
  st = fit_calib(&calib, &p, &proj, &sum);
  kq_calib_close(&calib);
  if (st == KQ_OK && p.cancel && *p.cancel) st = kq_set_error(KQ_ERR_INTERRUPTED, "interrupted");
  if (st != KQ_OK) {
    kq_projections_destroy(proj);
    return st;
  }
  if (out_summary) *out_summary = sum;
  *out_proj = proj;
  return KQ_OK;
}
