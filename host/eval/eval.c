/* kq_eval: the SPEC §3 fidelity metrics of a projection file on a
 * calibration file, layer by layer. The key/query/value/logits/value_out
 * errors come from the d×d R factors (exact over all calibration rows, no
 * T×T product): for X = Q_X R_X, ‖X M Yᵀ‖_F = ‖R_X M R_Yᵀ‖_F. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kq_eval.h"
#include "kq_projections_internal.h"

kq_eval_params kq_eval_default_params(void) {
  kq_eval_params p;
  memset(&p, 0, sizeof p);
  p.struct_size = sizeof p;
  p.storage = KQ_STORAGE_F32;
  return p;
}

void kq_eval_result_destroy(kq_eval_result *result) {
  if (!result) return;
  free(result->layers);
  free(result);
}

/* Pooled relative error sqrt(Σ num / Σ den). A zero reference with a zero
 * error is exact (0); a zero reference with a non-zero error is +Inf. */
static double ratio(double num, double den) {
  if (den > 0) return sqrt(num / den);
  return num > 0 ? INFINITY : 0.0;
}

typedef struct metric_job {
  const kq_layer_factors *f;
  const kq_projection_layer *pl;
  int32_t d;
  double *sums; /* [Hk][10]: num/den of key, query, value, logits, value_out */
} metric_job;

static double frob2(const double *m, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += m[i] * m[i];
  return s;
}

/* out = R·X for upper-triangular R, X d×d (all column-major). */
static void mul_r_x(int32_t d, const double *r, const double *x, double *out) {
  for (int32_t j = 0; j < d; j++)
    for (int32_t i = 0; i < d; i++) {
      double s = 0;
      for (int32_t k = i; k < d; k++) s += r[i + (size_t)k * d] * x[k + (size_t)j * d];
      out[i + (size_t)j * d] = s;
    }
}

/* out = X·Rᵀ for upper-triangular R: out[i,j] = Σ_{k>=j} X[i,k] R[j,k]. */
static void mul_x_rt(int32_t d, const double *x, const double *r, double *out) {
  for (int32_t j = 0; j < d; j++)
    for (int32_t i = 0; i < d; i++) {
      double s = 0;
      for (int32_t k = j; k < d; k++) s += x[i + (size_t)k * d] * r[j + (size_t)k * d];
      out[i + (size_t)j * d] = s;
    }
}

/* out = I − X Yᵀ for row-major [d][r] floats X, Y (column-major result). */
static void residual(int32_t d, int32_t r, const float *x, const float *y, double *out) {
  for (int32_t j = 0; j < d; j++)
    for (int32_t i = 0; i < d; i++) {
      double s = 0;
      for (int32_t c = 0; c < r; c++) s += (double)x[(size_t)i * r + c] * y[(size_t)j * r + c];
      out[i + (size_t)j * d] = (i == j) - s;
    }
}

static void transpose(int32_t d, const double *x, double *out) {
  for (int32_t j = 0; j < d; j++)
    for (int32_t i = 0; i < d; i++) out[j + (size_t)i * d] = x[i + (size_t)j * d];
}

static kq_status metric_task(void *ctx, int64_t kv) {
  metric_job *job = ctx;
  int32_t d = job->d, rk = job->pl->rank_k, rv = job->pl->rank_v;
  size_t dd = (size_t)d * d;
  double *buf = kq_malloc_array(4 * dd, sizeof *buf, "metric scratch");
  if (!buf) return KQ_ERR_OUT_OF_MEMORY;
  double *p = buf, *pt = buf + dd, *t1 = buf + 2 * dd, *t2 = buf + 3 * dd;
  const double *rkf = job->f->r_key + kv * dd, *rq = job->f->r_query + kv * dd;
  const double *rvf = job->f->r_value + kv * dd;
  double *s = job->sums + kv * 10;
  /* key: K(I − ABᵀ); query: Q(I − BAᵀ) = Q Pᵀ; logits: Q(I − BAᵀ)Kᵀ = (K P Qᵀ)ᵀ. */
  residual(d, rk, job->pl->key_down + kv * d * rk, job->pl->query_down + kv * d * rk, p);
  transpose(d, p, pt);
  mul_r_x(d, rkf, p, t1);
  s[0] = frob2(t1, dd);
  s[1] = frob2(rkf, dd);
  mul_r_x(d, rq, pt, t2);
  s[2] = frob2(t2, dd);
  s[3] = frob2(rq, dd);
  mul_x_rt(d, t1, rq, t2);
  s[6] = frob2(t2, dd);
  kq_mul_rrt(d, rkf, rq, t2);
  s[7] = frob2(t2, dd);
  /* value: V(I − CEᵀ); value_out: V(I − CEᵀ)W_iᵀ (see kq_eval for pooling). */
  residual(d, rv, job->pl->value_down + kv * d * rv, job->pl->value_up + kv * d * rv, p);
  mul_r_x(d, rvf, p, t1);
  s[4] = frob2(t1, dd);
  s[5] = frob2(rvf, dd);
  if (job->f->r_wo) {
    const double *rw = job->f->r_wo + kv * dd;
    mul_x_rt(d, t1, rw, t2);
    s[8] = frob2(t2, dd);
    kq_mul_rrt(d, rvf, rw, t2);
    s[9] = frob2(t2, dd);
  }
  free(buf);
  return KQ_OK;
}

/* Projections fitted for one model say little about another's activations:
 * when both files record a model (SPEC §1b), it must be the same. */
static kq_status check_same_model(const kq_calib *c, const kq_projections *proj,
                                  const char *proj_path) {
  const kq_model_identity *id = kq_projections_get_model(proj);
  const char *sha = kq_st_meta(c->file, "model_sha256");
  if (!sha || !id->sha256[0] || !strcmp(sha, id->sha256)) return KQ_OK;
  const char *name = kq_st_meta(c->file, "model_name");
  return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                      "%s was fitted for model '%s' (sha256 %s), but %s was captured from '%s' "
                      "(sha256 %.64s)",
                      proj_path, id->name, id->sha256, c->path, name ? name : "", sha);
}

static kq_status check_match(const kq_calib *c, const kq_projections_info *info,
                             const char *proj_path) {
  if (info->n_layers != c->n_layers || info->n_heads != c->n_heads ||
      info->n_kv_heads != c->n_kv_heads || info->head_dim != c->head_dim)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "%s (layers %d, heads %d, kv heads %d, head_dim %d) does not match %s "
                        "(layers %d, heads %d, kv heads %d, head_dim %d)",
                        proj_path, (int)info->n_layers, (int)info->n_heads, (int)info->n_kv_heads,
                        (int)info->head_dim, c->path, (int)c->n_layers, (int)c->n_heads,
                        (int)c->n_kv_heads, (int)c->head_dim);
  /* The host path rotates with the calibration's RoPE, the device path with
   * the projections': they must be the same. */
  if (info->rope != c->rope || (c->rope == KQ_ROPE_PRE && (info->rope_layout != c->rope_layout ||
                                                           info->rope_theta != c->rope_theta)))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "%s: rope metadata (mode %d, layout %d, theta %g) differs from %s (mode "
                        "%d, layout %d, theta %g)",
                        proj_path, (int)info->rope, (int)info->rope_layout,
                        (double)info->rope_theta, c->path, (int)c->rope, (int)c->rope_layout,
                        (double)c->rope_theta);
  return KQ_OK;
}

/* eval's metrics are those of per-head float latents (SPEC §3): a joint
 * file or quantized segments would get numbers that silently ignore the
 * shared latent or the quantization error, so they are refused. */
static kq_status check_evaluable(kq_projections *proj, const kq_projections_info *info,
                                 const char *proj_path) {
  if (info->layout != KQ_LAYOUT_PER_HEAD)
    return kq_set_error(KQ_ERR_UNSUPPORTED,
                        "%s: eval measures per-head projections only; this file has layout %s "
                        "(use ppl to judge it)",
                        proj_path, kq_layout_name(info->layout));
  for (int32_t l = 0; l < info->n_layers; l++) {
    kq_projection_layer pl;
    kq_status st = kq_projections_layer(proj, l, &pl);
    if (st) return st;
    for (int side = 0; side < 2; side++) {
      int32_t n = side ? pl.n_value_segments : pl.n_key_segments;
      const kq_segment *seg = side ? pl.value_segments : pl.key_segments;
      for (int32_t i = 0; i < n; i++)
        if (seg[i].bits != KQ_SEG_FLOAT)
          return kq_set_error(KQ_ERR_UNSUPPORTED,
                              "%s: layers.%d: %s segment %d is q%d; eval measures float latents "
                              "only (use ppl to judge quantized files)",
                              proj_path, (int)l, side ? "value" : "key", (int)i, (int)seg[i].bits);
    }
  }
  return KQ_OK;
}

static kq_status eval_layer(const kq_calib *calib, kq_projections *proj, int32_t l, int32_t n_seqs,
                            kq_cache *cache, const kq_eval_params *p, int n_threads,
                            kq_eval_layer *out) {
  kq_projection_layer pl;
  kq_status st = kq_projections_layer(proj, l, &pl);
  if (st) return st;
  kq_calib_layer lt;
  kq_calib_get_layer(calib, l, &lt);
  if ((st = kq_calib_layer_check_finite(calib, &lt))) return st;
  kq_layer_factors f;
  st = kq_layer_factors_compute(calib, &lt, l, 1, n_threads, p->cancel, &f);
  if (st) return st;
  int32_t hk = calib->n_kv_heads;
  metric_job job = {.f = &f, .pl = &pl, .d = calib->head_dim};
  job.sums = kq_calloc_array((size_t)hk * 10, sizeof(double), "metric sums");
  if (!job.sums) st = KQ_ERR_OUT_OF_MEMORY;
  if (st == KQ_OK) st = kq_parallel_for(hk, n_threads, metric_task, &job);
  double tot[10] = {0};
  for (int32_t i = 0; st == KQ_OK && i < hk; i++)
    for (int x = 0; x < 10; x++) tot[x] += job.sums[i * 10 + x];
  free(job.sums);
  kq_layer_factors_free(&f);
  if (st) return st;
  out->layer = l;
  out->rank_k = pl.rank_k;
  out->rank_v = pl.rank_v;
  out->key = ratio(tot[0], tot[1]);
  out->query = ratio(tot[2], tot[3]);
  out->value = ratio(tot[4], tot[5]);
  out->logits = ratio(tot[6], tot[7]);
  /* value_out per kv head i: Σ_{h in group} (V_i − V_iCEᵀ)W_hᵀ = g·(V_i − V_iCEᵀ)W_iᵀ, the
   * quantity KQ-SVD fits; heads pooled by summing squares like every metric
   * (the common factor g cancels). */
  out->value_out = calib->has_wo ? ratio(tot[8], tot[9]) : -1.0;
  double sm[2], y[2];
  st = kq_eval_attention(calib, &lt, &pl, l, n_seqs, cache, n_threads, p->cancel, sm, y);
  kq_calib_release_layer(calib, &lt);
  if (st) return st;
  out->softmax = ratio(sm[0], sm[1]);
  out->output = ratio(y[0], y[1]);
  return KQ_OK;
}

static kq_status open_device(const kq_eval_params *p, const kq_projections *proj, int64_t seq_len,
                             kq_device **dev, kq_cache **cache) {
  kq_status st = kq_device_create(p->device, dev);
  if (st) return st;
  kq_cache_params cp = kq_cache_default_params();
  cp.storage = p->storage;
  cp.capacity = (int32_t)seq_len;
  return kq_cache_create(*dev, proj, &cp, cache);
}

kq_status kq_eval(const char *calib_path, const char *proj_path, const kq_eval_params *params,
                  kq_eval_result **out_result) {
  if (!out_result) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "eval: out_result is NULL");
  *out_result = NULL;
  kq_eval_params p = kq_eval_default_params();
  kq_status adopt =
      kq_params_adopt(&p, sizeof p, sizeof p, params, "kq_eval_params", "kq_eval_default_params");
  if (adopt) return adopt;
  if (p.max_seqs < 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "eval: max_seqs %d < 0", (int)p.max_seqs);
  if (p.n_threads < 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "eval: n_threads %d is negative (0 = all cores)",
                        (int)p.n_threads);
  kq_calib calib;
  kq_status st = kq_calib_open(calib_path, &calib);
  if (st) return st;
  kq_projections *proj = NULL;
  kq_device *dev = NULL;
  kq_cache *cache = NULL;
  kq_eval_result *res = NULL;
  kq_projections_info info;
  if ((st = kq_projections_load(proj_path, &proj))) goto done;
  if ((st = kq_projections_get_info(proj, &info))) goto done;
  if ((st = check_match(&calib, &info, proj_path))) goto done;
  if ((st = check_same_model(&calib, proj, proj_path))) goto done;
  if ((st = check_evaluable(proj, &info, proj_path))) goto done;
  if (calib.seq_len > INT32_MAX) {
    st = kq_set_error(KQ_ERR_UNSUPPORTED, "%s: seq_len %lld too large for eval", calib.path,
                      (long long)calib.seq_len);
    goto done;
  }
  res = kq_calloc_array(1, sizeof *res, "eval result");
  if (res) res->layers = kq_calloc_array((size_t)calib.n_layers, sizeof *res->layers, "layers");
  if (!res || !res->layers) {
    st = KQ_ERR_OUT_OF_MEMORY;
    goto done;
  }
  res->method = info.method;
  res->n_layers = calib.n_layers;
  res->has_wo = calib.has_wo;
  res->seqs_total = (int32_t)(calib.n_tokens / calib.seq_len);
  res->seqs_used = p.max_seqs > 0 && p.max_seqs < res->seqs_total ? p.max_seqs : res->seqs_total;
  if (p.device) {
    if ((st = open_device(&p, proj, calib.seq_len, &dev, &cache))) goto done;
    kq_device_info di;
    if (kq_device_get_info(dev, &di) == KQ_OK)
      snprintf(res->device, sizeof res->device, "%s", di.name);
    else
      snprintf(res->device, sizeof res->device, "%s", p.device);
  }
  int n_threads = kq_thread_count(p.n_threads);
  if (p.progress) p.progress(p.progress_user, 0, calib.n_layers, "eval layers");
  kq_eval_layer *m = &res->mean;
  memset(m, 0, sizeof *m);
  m->layer = -1;
  double rk = 0, rv = 0;
  for (int32_t l = 0; l < calib.n_layers; l++) {
    if (p.cancel && *p.cancel) {
      st = kq_set_error(KQ_ERR_INTERRUPTED, "interrupted at layer %d", (int)l);
      goto done;
    }
    kq_eval_layer *e = &res->layers[l];
    if ((st = eval_layer(&calib, proj, l, res->seqs_used, cache, &p, n_threads, e))) goto done;
    m->key += e->key / calib.n_layers;
    m->query += e->query / calib.n_layers;
    m->value += e->value / calib.n_layers;
    m->logits += e->logits / calib.n_layers;
    m->softmax += e->softmax / calib.n_layers;
    m->output += e->output / calib.n_layers;
    m->value_out += e->value_out / calib.n_layers;
    rk += e->rank_k;
    rv += e->rank_v;
    if (p.progress) p.progress(p.progress_user, l + 1, calib.n_layers, "eval layers");
  }
  /* The mean row's ranks are the rounded mean ranks. */
  m->rank_k = (int32_t)lround(rk / calib.n_layers);
  m->rank_v = (int32_t)lround(rv / calib.n_layers);
done:
  kq_cache_destroy(cache);
  kq_device_destroy(dev);
  kq_projections_destroy(proj);
  kq_calib_close(&calib);
  if (st) {
    kq_eval_result_destroy(res);
    return st;
  }
  *out_result = res;
  return KQ_OK;
}
