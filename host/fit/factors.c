/* R factors of one calibration layer, in parallel over heads: one task per
 * key, value and W_O head and one per query head; a group's query factors
 * are then merged by factoring their stack (TSQR style), which keeps the
 * tasks small and even. Nothing T×T is ever formed. */
#include <stdlib.h>
#include <string.h>

#include "kq_fit.h"
#include "kq_linalg.h"

typedef enum task_kind { TASK_KEY, TASK_VALUE, TASK_WO, TASK_QUERY } task_kind;

typedef struct factor_job {
  const kq_calib *calib;
  const kq_calib_layer *layer;
  int32_t layer_index;
  const volatile int *cancel;
  kq_layer_factors *out;
  double *r_query_head; /* [H][d*d] per query head before merging */
  int32_t n_tasks_kv;   /* 2 or 3 per kv head */
  int need_query;
} factor_job;

static const void *head_data(const kq_st_tensor *t, int64_t head, int64_t rows, int32_t d) {
  return (const char *)t->data + (size_t)head * (size_t)rows * (size_t)d * kq_dtype_size(t->dtype);
}

/* Turns a numeric failure into the canonical "file: tensor: NaN at ..."
 * message when the tensor is the culprit; otherwise adds context. */
static kq_status factor_error(const factor_job *job, const kq_st_tensor *t, int64_t head,
                              kq_status st) {
  if (st == KQ_ERR_NUMERIC) {
    kq_status fin = kq_st_check_finite(job->calib->file, t);
    if (fin) return fin;
  }
  return kq_error_prefix(st, "%s: %s (head %lld)", job->calib->path, t->name, (long long)head);
}

static kq_status factor_tensor_head(const factor_job *job, const kq_st_tensor *t, int64_t head,
                                    double *r) {
  const kq_calib *c = job->calib;
  kq_matrix_view view = {.data = head_data(t, head, c->n_tokens, c->head_dim),
                         .dtype = t->dtype,
                         .rows = c->n_tokens,
                         .cols = c->head_dim,
                         .row_stride = c->head_dim,
                         .scale = 1.0};
  kq_status st = kq_rfactor(&view, 1, r, c->head_dim, NULL);
  if (st) return factor_error(job, t, head, st);
  /* Done with this head's rows: drop them from the resident set now, so a
   * streamed fit holds about one head per thread, not a whole layer. */
  kq_calib_release_range(c, view.data,
                         (uint64_t)c->n_tokens * (uint64_t)c->head_dim * kq_dtype_size(t->dtype));
  return KQ_OK;
}

/* W_i = mean over the group's query heads h of wo[:, h*d:(h+1)*d] (D×d),
 * formed in double, then factored. */
static kq_status factor_wo_head(const factor_job *job, int64_t kv, double *r) {
  const kq_calib *c = job->calib;
  const kq_st_tensor *t = job->layer->wo;
  int32_t d = c->head_dim, g = c->n_heads / c->n_kv_heads;
  size_t es = kq_dtype_size(t->dtype), row_len = (size_t)c->n_heads * (size_t)d;
  double *w = kq_calloc_array((size_t)c->hidden * (size_t)d, sizeof *w, "W_O head");
  double *tmp = kq_malloc_array((size_t)d, sizeof *tmp, "W_O row");
  if (!w || !tmp) {
    free(w);
    free(tmp);
    return KQ_ERR_OUT_OF_MEMORY;
  }
  for (int64_t row = 0; row < c->hidden; row++) {
    double *dst = w + (size_t)row * (size_t)d;
    for (int32_t j = 0; j < g; j++) {
      int64_t h = kv * g + j;
      const char *src =
          (const char *)t->data + ((size_t)row * row_len + (size_t)h * (size_t)d) * es;
      kq_convert_to_f64(t->dtype, src, tmp, (size_t)d);
      for (int32_t x = 0; x < d; x++) dst[x] += tmp[x];
    }
    for (int32_t x = 0; x < d; x++) dst[x] /= g;
  }
  free(tmp);
  kq_matrix_view view = {.data = w,
                         .dtype = KQ_DTYPE_F64,
                         .rows = c->hidden,
                         .cols = d,
                         .row_stride = d,
                         .scale = 1.0};
  kq_status st = kq_rfactor(&view, 1, r, d, NULL);
  free(w);
  return st ? factor_error(job, t, kv, st) : KQ_OK;
}

static kq_status factor_task(void *ctx, int64_t index) {
  factor_job *job = ctx;
  if (job->cancel && *job->cancel) return kq_set_error(KQ_ERR_INTERRUPTED, "interrupted");
  const kq_calib *c = job->calib;
  size_t dd = (size_t)c->head_dim * (size_t)c->head_dim;
  if (job->need_query) {
    if (index < c->n_heads)
      return factor_tensor_head(job, job->layer->q, index, job->r_query_head + (size_t)index * dd);
    index -= c->n_heads;
  }
  int64_t kv = index / job->n_tasks_kv;
  task_kind kind = (task_kind)(index % job->n_tasks_kv);
  switch (kind) {
  case TASK_KEY: return factor_tensor_head(job, job->layer->k, kv, job->out->r_key + kv * dd);
  case TASK_VALUE: return factor_tensor_head(job, job->layer->v, kv, job->out->r_value + kv * dd);
  case TASK_WO: return factor_wo_head(job, kv, job->out->r_wo + kv * dd);
  default: return KQ_OK;
  }
}

/* R of the group's stacked queries from the per-head R's: the stack
 * [R_1; …; R_g] has the same Gram matrix as the stacked queries. */
static kq_status merge_query_task(void *ctx, int64_t kv) {
  factor_job *job = ctx;
  const kq_calib *c = job->calib;
  int32_t d = c->head_dim, g = c->n_heads / c->n_kv_heads;
  size_t dd = (size_t)d * (size_t)d;
  double *dst = job->out->r_query + (size_t)kv * dd;
  if (g == 1) {
    memcpy(dst, job->r_query_head + (size_t)kv * dd, dd * sizeof *dst);
    return KQ_OK;
  }
  /* Row-major stack: row i of R_j (column-major) is R_j[i + x*d]. */
  double *stack = kq_malloc_array((size_t)g * dd, sizeof *stack, "query factor stack");
  if (!stack) return KQ_ERR_OUT_OF_MEMORY;
  for (int32_t j = 0; j < g; j++) {
    const double *r = job->r_query_head + (size_t)(kv * g + j) * dd;
    double *s = stack + (size_t)j * dd;
    for (int32_t i = 0; i < d; i++)
      for (int32_t x = 0; x < d; x++) s[(size_t)i * d + x] = r[i + (size_t)x * d];
  }
  kq_matrix_view view = {.data = stack,
                         .dtype = KQ_DTYPE_F64,
                         .rows = (int64_t)g * d,
                         .cols = d,
                         .row_stride = d,
                         .scale = 1.0};
  kq_status st = kq_rfactor(&view, 1, dst, d, NULL);
  free(stack);
  if (st)
    return kq_error_prefix(st, "%s: layers.%d.q: merging the factors of kv group %lld", c->path,
                           (int)job->layer_index, (long long)kv);
  return KQ_OK;
}

void kq_layer_factors_free(kq_layer_factors *f) {
  if (!f) return;
  free(f->r_key);
  free(f->r_query);
  free(f->r_value);
  free(f->r_wo);
  memset(f, 0, sizeof *f);
}

kq_status kq_layer_factors_compute(const kq_calib *calib, const kq_calib_layer *layer,
                                   int32_t layer_index, int need_query, int n_threads,
                                   const volatile int *cancel, kq_layer_factors *out) {
  memset(out, 0, sizeof *out);
  int32_t d = calib->head_dim, hk = calib->n_kv_heads;
  size_t dd = (size_t)d * (size_t)d;
  out->n_kv_heads = hk;
  out->head_dim = d;
  out->r_key = kq_calloc_array((size_t)hk, dd * sizeof(double), "key factors");
  out->r_value = kq_calloc_array((size_t)hk, dd * sizeof(double), "value factors");
  if (need_query) out->r_query = kq_calloc_array((size_t)hk, dd * sizeof(double), "query factors");
  if (calib->has_wo) out->r_wo = kq_calloc_array((size_t)hk, dd * sizeof(double), "W_O factors");
  factor_job job = {.calib = calib,
                    .layer = layer,
                    .layer_index = layer_index,
                    .cancel = cancel,
                    .out = out,
                    .n_tasks_kv = calib->has_wo ? 3 : 2,
                    .need_query = need_query};
  if (need_query)
    job.r_query_head =
        kq_calloc_array((size_t)calib->n_heads, dd * sizeof(double), "query head factors");
  if (!out->r_key || !out->r_value || (need_query && (!out->r_query || !job.r_query_head)) ||
      (calib->has_wo && !out->r_wo)) {
    free(job.r_query_head);
    kq_layer_factors_free(out);
    return KQ_ERR_OUT_OF_MEMORY;
  }
  /* Query heads first: they are the bulk of the work when g > 1, and the
   * dynamic hand-out then evens out the tail with the smaller kv tasks. */
  int64_t n_tasks = (int64_t)hk * job.n_tasks_kv + (need_query ? calib->n_heads : 0);
  kq_status st = kq_parallel_for(n_tasks, n_threads, factor_task, &job);
  if (st == KQ_OK && need_query) st = kq_parallel_for(hk, n_threads, merge_query_task, &job);
  free(job.r_query_head);
  if (st) kq_layer_factors_free(out);
  return st;
}
