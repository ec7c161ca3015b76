/* fit --bytes (SPEC §1b): the formats' relative errors measured on the
 * calibration latents, then the byte allocator (allocate.c) on the
 * method's spectra. Relative errors depend on the segments (width, which
 * dims, the rotation), so they are measured twice: first on nominal
 * segments (each format over all latent dims in chunks of 32), then on the
 * segments the first allocation chose; formats a side does not use keep the
 * nominal figure. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kq_fit.h"

#define KQ_BYTES_SAMPLE 4096 /* calibration tokens measured per layer */
#define KQ_NOMINAL_WIDTH 32

typedef struct measure_seg {
  int32_t start, width, fmt;
} measure_seg;

/* Segments to measure of one layer and side. */
typedef struct measure_list {
  int32_t n;
  measure_seg seg[KQ_FMT_COUNT * 64];
} measure_list;

typedef struct measure_job {
  const kq_calib *calib;
  const kq_fit_params *p;
  const kq_layer_fit *layers;
  const measure_list *lists; /* [n_layers][2] */
  double *sums;              /* [n_layers][2][KQ_FMT_COUNT][2]: error, energy */
} measure_job;

static int qmax_of(int fmt) {
  return fmt == KQ_FMT_Q8 ? 127 : 7;
}

/* Error and energy of one segment of one latent row. pw (balanced fits:
 * the partner energy of each of the segment's latent dims, or NULL) weighs
 * each dim's error and energy in the latent's own coordinates, so the ratio
 * is the share of the segment's logits (value output) energy the rounding
 * costs; unweighted, the rotation keeps both sums. ey: w doubles. */
static void measure_row(const float *lat, const measure_seg *s, const double *rot, const double *pw,
                        float *y, double *ey, int8_t *q, double *sums) {
  int32_t w = s->width;
  const float *x = lat + s->start;
  double err = 0, energy = 0;
  if (s->fmt == KQ_FMT_F16) {
    for (int32_t j = 0; j < w; j++) {
      double e = (double)x[j] - kq_f16_to_f32(kq_f32_to_f16(x[j])), wj = pw ? pw[j] : 1.0;
      err += wj * e * e;
      energy += wj * (double)x[j] * x[j];
    }
  } else {
    for (int32_t j = 0; j < w; j++) {
      double acc = 0;
      for (int32_t i = 0; i < w; i++) acc += x[i] * rot[i + (size_t)j * w];
      y[j] = (float)acc;
    }
    float scale = kq_f16_to_f32(kq_quantize_row(y, w, qmax_of(s->fmt), q));
    if (!pw) {
      for (int32_t j = 0; j < w; j++) {
        double e = (double)y[j] - (double)q[j] * scale;
        err += e * e;
        energy += (double)y[j] * y[j];
      }
    } else {
      /* Back to the latent's coordinates: x = R y. */
      for (int32_t j = 0; j < w; j++) ey[j] = (double)y[j] - (double)q[j] * scale;
      for (int32_t i = 0; i < w; i++) {
        double e = 0;
        for (int32_t j = 0; j < w; j++) e += rot[i + (size_t)j * w] * ey[j];
        err += pw[i] * e * e;
        energy += pw[i] * (double)x[i] * x[i];
      }
    }
  }
  sums[2 * s->fmt] += err;
  sums[2 * s->fmt + 1] += energy;
}

static kq_status measure_task(void *ctx, int64_t l) {
  measure_job *job = ctx;
  const kq_calib *c = job->calib;
  if (job->p->cancel && *job->p->cancel) return kq_set_error(KQ_ERR_INTERRUPTED, "interrupted");
  const kq_layer_fit *lf = &job->layers[l];
  int32_t g = lf->groups, n = lf->dim, hk = c->n_kv_heads, d = c->head_dim;
  int64_t T = c->n_tokens, S = T < KQ_BYTES_SAMPLE ? T : KQ_BYTES_SAMPLE;
  kq_calib_layer lt;
  kq_calib_get_layer(c, (int32_t)l, &lt);
  float *x = kq_malloc_array((size_t)hk * d, sizeof *x, "latent sample");
  float *lat = kq_malloc_array((size_t)n * 2, sizeof *lat, "latent sample");
  int8_t *q = kq_malloc_array((size_t)n, 1, "quantized sample");
  double *ey = kq_malloc_array((size_t)n, sizeof *ey, "rounding errors");
  double *rot[2][KQ_FMT_COUNT * 64] = {{0}};
  kq_status st = x && lat && q && ey ? KQ_OK : KQ_ERR_OUT_OF_MEMORY;
  for (int side = 0; side < 2 && !st; side++) {
    const measure_list *ml = &job->lists[2 * l + side];
    for (int32_t i = 0; i < ml->n && !st; i++) {
      const measure_seg *s = &ml->seg[i];
      if (s->fmt == KQ_FMT_F16) continue;
      rot[side][i] = kq_malloc_array((size_t)s->width * s->width, sizeof(double), "rotation");
      if (!rot[side][i]) st = KQ_ERR_OUT_OF_MEMORY;
      if (!st)
        st = kq_rotation_make(s->width,
                              kq_rotation_seed(job->p->seed, (int32_t)l, side, s->start, s->width),
                              rot[side][i]);
    }
  }
  for (int side = 0; side < 2 && !st; side++) {
    const kq_st_tensor *t = side ? lt.v : lt.k;
    const float *down = side ? lf->c : lf->a;
    int32_t rank = side ? lf->rank_v : lf->rank_k;
    size_t es = kq_dtype_size(t->dtype);
    const measure_list *ml = &job->lists[2 * l + side];
    double *sums = job->sums + ((size_t)l * 2 + side) * KQ_FMT_COUNT * 2;
    for (int64_t k = 0; k < S; k++) {
      int64_t row = k * T / S;
      for (int32_t i = 0; i < hk; i++)
        kq_convert_to_f32(t->dtype, (const char *)t->data + (((size_t)i * T + row) * d) * es,
                          x + (size_t)i * d, (size_t)d);
      for (int32_t gi = 0; gi < g; gi++) {
        const float *in = x + (size_t)gi * n;
        const float *a = down + (size_t)gi * n * rank;
        memset(lat, 0, (size_t)rank * sizeof *lat);
        for (int32_t r = 0; r < n; r++) {
          float xr = in[r];
          const float *arow = a + (size_t)r * rank;
          for (int32_t j = 0; j < rank; j++) lat[j] += xr * arow[j];
        }
        const double *pw = side ? lf->wv : lf->wk;
        if (pw) pw += (size_t)gi * n;
        for (int32_t i = 0; i < ml->n; i++)
          measure_row(lat, &ml->seg[i], rot[side][i], pw ? pw + ml->seg[i].start : NULL, lat + n,
                      ey, q, sums);
      }
    }
  }
  for (int side = 0; side < 2; side++)
    for (int32_t i = 0; i < KQ_FMT_COUNT * 64; i++) free(rot[side][i]);
  free(x);
  free(lat);
  free(q);
  free(ey);
  kq_calib_release_layer(c, &lt);
  return st;
}

static void nominal_list(int32_t n, measure_list *ml) {
  ml->n = 0;
  for (int f = 0; f < KQ_FMT_COUNT; f++)
    for (int32_t s = 0; s < n && ml->n < KQ_FMT_COUNT * 64; s += KQ_NOMINAL_WIDTH) {
      int32_t w = n - s < KQ_NOMINAL_WIDTH ? n - s : KQ_NOMINAL_WIDTH;
      ml->seg[ml->n++] = (measure_seg){s, w, f};
    }
}

static void chosen_list(const kq_alloc_side *a, measure_list *ml) {
  ml->n = 0;
  int32_t lo = 0;
  for (int f = 0; f < KQ_FMT_COUNT; f++) {
    if (a->bound[f] > lo) ml->seg[ml->n++] = (measure_seg){lo, a->bound[f] - lo, f};
    lo = a->bound[f] > lo ? a->bound[f] : lo;
  }
}

/* Relative squared error weights of one side: mean over groups of
 * σ_j² / Σσ² (groups with an all-zero spectrum add nothing). */
static void side_weights(const double *sigma, int32_t groups, int32_t n, double *w) {
  memset(w, 0, (size_t)n * sizeof *w);
  for (int32_t g = 0; g < groups; g++) {
    const double *s = sigma + (size_t)g * n;
    double total = 0;
    for (int32_t j = 0; j < n; j++) total += s[j] * s[j];
    if (total > 0)
      for (int32_t j = 0; j < n; j++) w[j] += s[j] * s[j] / total / groups;
  }
}

/* Updates relerr of every format the measured sums cover. */
static void take_relerr(const double *sums, kq_alloc_side *a) {
  for (int f = 0; f < KQ_FMT_COUNT; f++)
    if (sums[2 * f + 1] > 0) kq_alloc_side_set_relerr(a, f, sums[2 * f] / sums[2 * f + 1]);
}

kq_status kq_fit_bytes(const kq_calib *calib, const kq_fit_params *p, int n_threads,
                       kq_layer_fit *layers, int32_t *rank_k, int32_t *rank_v, double *out_error_k,
                       double *out_error_v) {
  int32_t L = calib->n_layers;
  size_t n_sides = (size_t)L * 2;
  measure_list *lists = kq_calloc_array(n_sides, sizeof *lists, "measured segments");
  double *sums = kq_calloc_array(n_sides * KQ_FMT_COUNT * 2, sizeof *sums, "measured errors");
  double *weights = kq_calloc_array(n_sides * (size_t)layers[0].dim, sizeof *weights, "weights");
  kq_alloc_side *keys = kq_calloc_array((size_t)L, sizeof *keys, "byte allocation");
  kq_alloc_side *values = kq_calloc_array((size_t)L, sizeof *values, "byte allocation");
  kq_status st = lists && sums && weights && keys && values ? KQ_OK : KQ_ERR_OUT_OF_MEMORY;
  double budget = p->bytes * 4.0 * calib->head_dim * calib->n_kv_heads * L;
  for (int round = 0; round < 2 && !st; round++) {
    for (int32_t l = 0; l < L; l++)
      for (int side = 0; side < 2; side++) {
        kq_alloc_side *a = side ? &values[l] : &keys[l];
        if (round == 0) {
          int32_t n = layers[l].dim;
          double *w = weights + ((size_t)l * 2 + side) * n;
          side_weights(side ? layers[l].sigma_v : layers[l].sigma_k, layers[l].groups, n, w);
          *a = (kq_alloc_side){.dim = n, .groups = layers[l].groups, .weight = w};
          nominal_list(n, &lists[2 * l + side]);
        } else {
          chosen_list(a, &lists[2 * l + side]);
        }
      }
    memset(sums, 0, n_sides * KQ_FMT_COUNT * 2 * sizeof *sums);
    measure_job job = {.calib = calib, .p = p, .layers = layers, .lists = lists, .sums = sums};
    if ((st = kq_parallel_for(L, n_threads, measure_task, &job))) break;
    for (int32_t l = 0; l < L; l++)
      for (int side = 0; side < 2; side++) {
        kq_alloc_side *a = side ? &values[l] : &keys[l];
        take_relerr(sums + ((size_t)l * 2 + side) * KQ_FMT_COUNT * 2, a);
        kq_alloc_side_init(a);
      }
    st = kq_allocate_bytes(keys, values, L, budget);
    if (st) st = kq_error_prefix(st, "%s: bytes %g", calib->path, p->bytes);
    if (p->progress) p->progress(p->progress_user, round + 1, 2, "allocate bytes");
  }
  /* The model's measured sensitivity: reweigh each layer and side (the
   * allocation just made is the one the sensitivity was measured at) and
   * allocate once more with the same measured rounding errors. */
  double *kl = NULL, *mult = NULL;
  if (!st && p->sensitivity) {
    kl = kq_malloc_array(n_sides * 3, sizeof *kl, "sensitivity");
    if (!kl) st = KQ_ERR_OUT_OF_MEMORY;
    if (!st) st = kq_sensitivity_load(p->sensitivity, L, kl);
  }
  if (kl && !st) {
    double *pred = kl + n_sides;
    mult = pred + n_sides;
    for (int32_t l = 0; l < L; l++) {
      pred[l] = kq_alloc_side_error(&keys[l]);
      pred[L + l] = kq_alloc_side_error(&values[l]);
    }
    kq_sensitivity_multipliers(kl, pred, L, mult);
    kq_sensitivity_multipliers(kl + L, pred + L, L, mult + L);
    for (int32_t l = 0; l < L; l++)
      for (int side = 0; side < 2; side++) {
        int32_t n = layers[l].dim;
        double *w = weights + ((size_t)l * 2 + side) * n;
        for (int32_t j = 0; j < n; j++) w[j] *= mult[side * L + l];
        kq_alloc_side_init(side ? &values[l] : &keys[l]);
      }
    st = kq_allocate_bytes(keys, values, L, budget);
    if (st) st = kq_error_prefix(st, "%s: bytes %g", calib->path, p->bytes);
  }
  if (!st) {
    double ek = 0, ev = 0;
    for (int32_t l = 0; l < L; l++) {
      kq_layer_fit *lf = &layers[l];
      lf->n_seg_k = kq_alloc_side_segments(&keys[l], lf->seg_k);
      lf->n_seg_v = kq_alloc_side_segments(&values[l], lf->seg_v);
      rank_k[l] = keys[l].bound[2];
      rank_v[l] = values[l].bound[2];
      /* The summary's errors stay relative: without the multipliers. */
      ek += sqrt(kq_alloc_side_error(&keys[l]) / (mult ? mult[l] : 1));
      ev += sqrt(kq_alloc_side_error(&values[l]) / (mult ? mult[L + l] : 1));
    }
    *out_error_k = ek / L;
    *out_error_v = ev / L;
  }
  free(kl);
  free(lists);
  free(sums);
  free(weights);
  free(keys);
  free(values);
  return st;
}
