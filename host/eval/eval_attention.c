/* The attention metrics of kq_eval (SPEC §3): for each calibration sequence,
 * causal softmax attention with the exact keys/queries/values and with the
 * projected ones (SPEC §1, including RoPE 'pre'), compared on P and on the
 * layer output Y = [o_1 … o_H] woᵀ. Heads run in parallel inside one
 * sequence, so memory is one sequence's outputs whatever the file size. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kq_eval.h"

#define Y_BLOCK 16

typedef struct attn_job {
  const kq_calib *calib;
  const kq_calib_layer *lt;
  const kq_projection_layer *pl;
  int64_t seq;
  int32_t len, d, hk, g, rk, rv;
  int32_t hd;         /* H·d */
  double *o, *o_hat;  /* [len][H·d] exact / projected head outputs */
  const float *o_dev; /* [len][H·d] device outputs, or NULL */
  const double *wo;   /* [D][H·d] or NULL */
  double *sm;         /* [H][2]: Σ(P−P̂)², ΣP² */
  double *y;          /* [n_blocks][2]: Σ(Y−Ŷ)², ΣY² */
  const volatile int *cancel;
} attn_job;

static void load_rows(const kq_st_tensor *t, int64_t head, int64_t n_tokens, int64_t row0,
                      int32_t len, int32_t d, double *dst) {
  size_t es = kq_dtype_size(t->dtype);
  const char *src = (const char *)t->data + ((size_t)head * n_tokens + row0) * d * es;
  kq_convert_to_f64(t->dtype, src, dst, (size_t)len * d);
}

/* out[len][cols] = x[len][d] · m where m is row-major [d][cols] floats. */
static void mul_rows(const double *x, int32_t len, int32_t d, const float *m, int32_t cols,
                     double *out) {
  for (int32_t t = 0; t < len; t++) {
    double *o = out + (size_t)t * cols;
    memset(o, 0, (size_t)cols * sizeof *o);
    for (int32_t i = 0; i < d; i++) {
      double xi = x[(size_t)t * d + i];
      const float *mr = m + (size_t)i * cols;
      for (int32_t c = 0; c < cols; c++) o[c] += xi * mr[c];
    }
  }
}

/* out[len][d] = x[len][cols] · mᵀ, m row-major [d][cols]. */
static void mul_rows_t(const double *x, int32_t len, int32_t cols, const float *m, int32_t d,
                       double *out) {
  for (int32_t t = 0; t < len; t++)
    for (int32_t i = 0; i < d; i++) {
      double s = 0;
      for (int32_t c = 0; c < cols; c++) s += x[(size_t)t * cols + c] * m[(size_t)i * cols + c];
      out[(size_t)t * d + i] = s;
    }
}

/* Causal softmax row t of logits q_t·k_s·scale, s <= t, into p[0..t]. */
static void softmax_row(const double *q, const double *k, int32_t t, int32_t dim, double scale,
                        double *p) {
  double mx = -INFINITY;
  for (int32_t s = 0; s <= t; s++) {
    double v = 0;
    for (int32_t x = 0; x < dim; x++) v += q[x] * k[(size_t)s * dim + x];
    p[s] = v * scale;
    if (p[s] > mx) mx = p[s];
  }
  double sum = 0;
  for (int32_t s = 0; s <= t; s++) sum += (p[s] = exp(p[s] - mx));
  for (int32_t s = 0; s <= t; s++) p[s] /= sum;
}

static kq_status head_task(void *ctx, int64_t h) {
  attn_job *job = ctx;
  if (job->cancel && *job->cancel) return kq_set_error(KQ_ERR_INTERRUPTED, "interrupted");
  const kq_calib *c = job->calib;
  int32_t len = job->len, d = job->d, rk = job->rk, rv = job->rv;
  int64_t kv = h / job->g;
  int pre = c->rope == KQ_ROPE_PRE;
  int32_t dk = pre ? d : rk; /* width of the projected keys/queries */
  size_t ld = (size_t)len * d;
  double *buf = kq_malloc_array(5 * ld + 2 * (size_t)len * dk + (size_t)len * rv + 2 * (size_t)len +
                                    (size_t)rv + (size_t)len * rk,
                                sizeof *buf, "attention scratch");
  if (!buf) return KQ_ERR_OUT_OF_MEMORY;
  double *k = buf, *q = k + ld, *v = q + ld, *kx = v + ld, *qx = kx + ld;
  double *ka = qx + ld, *qa = ka + (size_t)len * dk, *va = qa + (size_t)len * dk;
  double *p = va + (size_t)len * rv, *ph = p + len, *lat = ph + len, *tmp = lat + rv;
  int64_t row0 = job->seq * len;
  load_rows(job->lt->k, kv, c->n_tokens, row0, len, d, k);
  load_rows(job->lt->q, h, c->n_tokens, row0, len, d, q);
  load_rows(job->lt->v, kv, c->n_tokens, row0, len, d, v);
  const float *A = job->pl->key_down + (size_t)kv * d * rk;
  const float *B = job->pl->query_down + (size_t)kv * d * rk;
  const float *C = job->pl->value_down + (size_t)kv * d * rv;
  const float *E = job->pl->value_up + (size_t)kv * d * rv;
  memcpy(kx, k, ld * sizeof *k);
  memcpy(qx, q, ld * sizeof *q);
  if (pre) {
    /* SPEC §1 'pre': k̂ = k A Bᵀ, q̂ = q B Aᵀ, both rotated at their position. */
    mul_rows(k, len, d, A, rk, tmp);
    mul_rows_t(tmp, len, rk, B, d, ka);
    mul_rows(q, len, d, B, rk, tmp);
    mul_rows_t(tmp, len, rk, A, d, qa);
    for (int32_t t = 0; t < len; t++) {
      kq_rope_rotate(kx + (size_t)t * d, d, t, c->rope_theta, c->rope_layout);
      kq_rope_rotate(qx + (size_t)t * d, d, t, c->rope_theta, c->rope_layout);
      kq_rope_rotate(ka + (size_t)t * d, d, t, c->rope_theta, c->rope_layout);
      kq_rope_rotate(qa + (size_t)t * d, d, t, c->rope_theta, c->rope_layout);
    }
  } else {
    mul_rows(k, len, d, A, rk, ka);
    mul_rows(q, len, d, B, rk, qa);
  }
  mul_rows(v, len, d, C, rv, va);
  double scale = 1.0 / sqrt((double)d), num = 0, den = 0;
  for (int32_t t = 0; t < len; t++) {
    softmax_row(qx + (size_t)t * d, kx, t, d, scale, p);
    softmax_row(qa + (size_t)t * dk, ka, t, dk, scale, ph);
    double *o = job->o + (size_t)t * job->hd + (size_t)h * d;
    double *oh = job->o_hat + (size_t)t * job->hd + (size_t)h * d;
    memset(o, 0, (size_t)d * sizeof *o);
    memset(lat, 0, (size_t)rv * sizeof *lat);
    for (int32_t s = 0; s <= t; s++) {
      double e = p[s] - ph[s];
      num += e * e;
      den += p[s] * p[s];
      for (int32_t x = 0; x < d; x++) o[x] += p[s] * v[(size_t)s * d + x];
      for (int32_t x = 0; x < rv; x++) lat[x] += ph[s] * va[(size_t)s * rv + x];
    }
    /* ô = (P̂ Ṽ) Eᵀ */
    for (int32_t x = 0; x < d; x++) {
      double sum = 0;
      for (int32_t y = 0; y < rv; y++) sum += lat[y] * E[(size_t)x * rv + y];
      oh[x] = sum;
    }
  }
  job->sm[2 * h] = num;
  job->sm[2 * h + 1] = den;
  free(buf);
  return KQ_OK;
}

static kq_status y_task(void *ctx, int64_t block) {
  attn_job *job = ctx;
  int32_t t0 = (int32_t)block * Y_BLOCK, t1 = t0 + Y_BLOCK < job->len ? t0 + Y_BLOCK : job->len;
  int32_t hd = job->hd, width = job->wo ? job->calib->hidden : hd;
  double num = 0, den = 0;
  double *diff = kq_malloc_array((size_t)hd, sizeof *diff, "output row");
  if (!diff) return KQ_ERR_OUT_OF_MEMORY;
  for (int32_t t = t0; t < t1; t++) {
    const double *o = job->o + (size_t)t * hd;
    for (int32_t x = 0; x < hd; x++) {
      double approx = job->o_dev ? job->o_dev[(size_t)t * hd + x] : job->o_hat[(size_t)t * hd + x];
      diff[x] = o[x] - approx;
    }
    for (int32_t row = 0; row < width; row++) {
      double y, dy;
      if (job->wo) {
        const double *w = job->wo + (size_t)row * hd;
        y = dy = 0;
        for (int32_t x = 0; x < hd; x++) {
          y += w[x] * o[x];
          dy += w[x] * diff[x];
        }
      } else {
        y = o[row];
        dy = diff[row];
      }
      num += dy * dy;
      den += y * y;
    }
  }
  free(diff);
  job->y[2 * block] = num;
  job->y[2 * block + 1] = den;
  return KQ_OK;
}

/* Runs the device's append + attend for one sequence of one layer. */
static kq_status device_outputs(attn_job *job, kq_cache *cache, int32_t layer, float *keys,
                                float *values, float *queries, float *out) {
  const kq_calib *c = job->calib;
  int32_t len = job->len, d = job->d, hk = job->hk, h_all = c->n_heads;
  size_t es = kq_dtype_size(job->lt->k->dtype);
  int64_t row0 = job->seq * len;
  for (int32_t t = 0; t < len; t++) {
    for (int32_t i = 0; i < hk; i++) {
      size_t src = ((size_t)i * c->n_tokens + row0 + t) * d * es;
      size_t dst = ((size_t)t * hk + i) * d;
      kq_convert_to_f32(job->lt->k->dtype, (const char *)job->lt->k->data + src, keys + dst, d);
      kq_convert_to_f32(job->lt->v->dtype, (const char *)job->lt->v->data + src, values + dst, d);
    }
    for (int32_t h = 0; h < h_all; h++) {
      size_t src = ((size_t)h * c->n_tokens + row0 + t) * d * es;
      kq_convert_to_f32(job->lt->q->dtype, (const char *)job->lt->q->data + src,
                        queries + ((size_t)t * h_all + h) * d, d);
    }
  }
  kq_status st = kq_cache_truncate(cache, 0);
  if (st == KQ_OK) st = kq_cache_append(cache, layer, len, keys, values);
  if (st == KQ_OK) st = kq_cache_attend(cache, layer, len, queries, KQ_OUTPUT_FULL, out);
  if (st)
    return kq_error_prefix(st, "eval: layer %d, sequence %lld on the device", (int)layer,
                           (long long)job->seq);
  return KQ_OK;
}

kq_status kq_eval_attention(const kq_calib *calib, const kq_calib_layer *layer,
                            const kq_projection_layer *proj, int32_t layer_index, int32_t n_seqs,
                            kq_cache *cache, int n_threads, const volatile int *cancel,
                            double out_softmax[2], double out_output[2]) {
  int32_t len = (int32_t)calib->seq_len, d = calib->head_dim, h_all = calib->n_heads;
  int32_t hd = h_all * d, n_blocks = (len + Y_BLOCK - 1) / Y_BLOCK;
  attn_job job = {.calib = calib,
                  .lt = layer,
                  .pl = proj,
                  .len = len,
                  .d = d,
                  .hk = calib->n_kv_heads,
                  .g = h_all / calib->n_kv_heads,
                  .rk = proj->rank_k,
                  .rv = proj->rank_v,
                  .hd = hd,
                  .cancel = cancel};
  out_softmax[0] = out_softmax[1] = out_output[0] = out_output[1] = 0;
  size_t lhd = (size_t)len * hd;
  job.o = kq_malloc_array(lhd, sizeof(double), "exact outputs");
  job.o_hat = kq_malloc_array(lhd, sizeof(double), "projected outputs");
  job.sm = kq_calloc_array(2 * (size_t)h_all, sizeof(double), "softmax sums");
  job.y = kq_calloc_array(2 * (size_t)n_blocks, sizeof(double), "output sums");
  double *wo = NULL;
  float *dev = NULL;
  kq_status st = KQ_OK;
  if (!job.o || !job.o_hat || !job.sm || !job.y) st = KQ_ERR_OUT_OF_MEMORY;
  if (st == KQ_OK && layer->wo) {
    wo = kq_malloc_array((size_t)calib->hidden * hd, sizeof *wo, "W_O");
    if (!wo)
      st = KQ_ERR_OUT_OF_MEMORY;
    else
      kq_convert_to_f64(layer->wo->dtype, layer->wo->data, wo, (size_t)calib->hidden * hd);
    job.wo = wo;
  }
  size_t lkv = (size_t)len * calib->n_kv_heads * d;
  if (st == KQ_OK && cache) {
    dev = kq_malloc_array(2 * lkv + 2 * lhd, sizeof *dev, "device staging");
    if (!dev) st = KQ_ERR_OUT_OF_MEMORY;
  }
  for (int64_t s = 0; s < n_seqs && st == KQ_OK; s++) {
    if (cancel && *cancel) {
      st = kq_set_error(KQ_ERR_INTERRUPTED, "interrupted");
      break;
    }
    job.seq = s;
    if (cache) {
      float *out = dev + 2 * lkv + lhd;
      st = device_outputs(&job, cache, layer_index, dev, dev + lkv, dev + 2 * lkv, out);
      job.o_dev = out;
      if (st) break;
    }
    st = kq_parallel_for(h_all, n_threads, head_task, &job);
    if (st == KQ_OK) st = kq_parallel_for(n_blocks, n_threads, y_task, &job);
    for (int32_t h = 0; st == KQ_OK && h < h_all; h++) {
      out_softmax[0] += job.sm[2 * h];
      out_softmax[1] += job.sm[2 * h + 1];
    }
    for (int32_t b = 0; st == KQ_OK && b < n_blocks; b++) {
      out_output[0] += job.y[2 * b];
      out_output[1] += job.y[2 * b + 1];
    }
  }
  free(job.o);
  free(job.o_hat);
  free(job.sm);
  free(job.y);
  free(wo);
  free(dev);
  return st;
}
