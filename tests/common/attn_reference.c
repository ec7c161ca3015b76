/*
 * attn_reference.c — float64 reference of latent projection, RoPE and
 * causal latent attention (see attn_reference.h). Plain loops, written for clarity, not
 * speed: the suite keeps its sizes small enough for that.
 */
#include "attn_reference.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

double kqc_round_f16(double x) {
  if (x == 0.0 || !isfinite(x)) return x;
  double a = fabs(x);
  /* Halfway between the largest finite binary16 (65504) and the next step. */
  if (a >= 65520.0) return copysign(INFINITY, x);
  int e2;
  (void)frexp(a, &e2); /* a = f * 2^e2, f in [0.5, 1): exponent of a is e2 - 1 */
  int e = e2 - 1;
  if (e < -14) e = -14; /* subnormal range: fixed spacing 2^-24 */
  double ulp = ldexp(1.0, e - 10);
  /* rint rounds to nearest, ties to even, in the default rounding mode; a/ulp
   * and the product are exact in double (powers of two, 11-bit result). */
  return copysign(rint(a / ulp) * ulp, x);
}

int kqc_ref_project(const float *x, const float *proj, int32_t n, int32_t n_kv, int32_t d,
                    int32_t r, kq_storage storage, double *out, int32_t ld, int32_t row0) {
  return kqc_ref_project_seg(x, proj, n, n_kv, d, r, storage, NULL, 0, out, NULL, ld, row0, NULL);
}

/* round(a) for a >= 0, ties away from zero (a + 0.5 is exact here: a is a
 * float32 value below 2^8). */
static double round_half_away(double a) {
  return floor(a + 0.5);
}

double kqc_ref_quantize(const double *x, int32_t w, int32_t qmax, double *out) {
  double amax = 0.0;
  for (int32_t j = 0; j < w; j++) amax = fmax(amax, fabs(x[j]));
  /* amax and qmax are float32 values: the double quotient rounded to
   * float32 is the correctly rounded float32 quotient (double has more than
   * twice the precision), then binary16. */
  double s = kqc_round_f16((double)(float)(amax / qmax));
  for (int32_t j = 0; j < w; j++) {
    double q = 0.0;
    if (s > 0.0) {
      double y = (double)(float)(x[j] / s);
      q = copysign(fmin(round_half_away(fabs(y)), (double)qmax), y);
    }
    out[j] = q * s;
  }
  return s;
}

static int32_t seg_qmax(int32_t bits) {
  return bits == KQ_SEG_Q8 ? 127 : bits == KQ_SEG_Q4 ? 7 : 0;
}

/* One quantized segment of a row: xf [w] float32 latents, dev [w] their
 * deviation bounds; writes out (and alt, when not NULL) and the stats. */
static void store_quantized(const double *xf, const double *dev, int32_t w, int32_t bits,
                            double *out, double *alt, kqc_ref_qstats *st) {
  int32_t qmax = seg_qmax(bits);
  double s = kqc_ref_quantize(xf, w, qmax, out);
  double amax = 0.0, dmax = 0.0;
  for (int32_t j = 0; j < w; j++) amax = fmax(amax, fabs(xf[j])), dmax = fmax(dmax, dev[j]);
  if (st && dmax > 0.0) {
    int f = bits == KQ_SEG_Q8 ? 0 : 1;
    st->scale_step2[f] += w * s * s;
    for (int32_t j = 0; j < w; j++) {
      st->scale_energy += xf[j] * xf[j];
      if (dev[j] > 0.0) st->step2[f] += s * s;
    }
  }
  if (!alt) return;
  /* The scale: max|x'| of the device lies in [amax − dmax, amax + dmax]. */
  double lo = kqc_round_f16((double)(float)(fmax(amax - dmax, 0.0) / qmax));
  double hi = kqc_round_f16((double)(float)((amax + dmax) / qmax));
  if (lo != hi) {
    double s2 = s == lo ? hi : lo;
    for (int32_t j = 0; j < w; j++) {
      double q = 0.0;
      if (s2 > 0.0) {
        double y = (double)(float)(xf[j] / s2);
        q = copysign(fmin(round_half_away(fabs(y)), (double)qmax), y);
      }
      alt[j] = q * s2;
    }
    if (st) st->at_risk++;
    return;
  }
  for (int32_t j = 0; j < w; j++) {
    alt[j] = out[j];
    if (s <= 0.0 || dev[j] <= 0.0) continue;
    double a = fabs(xf[j] / s), half = floor(a) + 0.5;
    if (half > qmax || fabs(a - half) > dev[j] / s) continue;
    double q = fabs(out[j]) / s, other = q > half ? q - 1 : q + 1; /* the other side */
    if (other > qmax) continue;
    alt[j] = copysign(other * s, xf[j]);
    if (st) st->at_risk++;
  }
}

int kqc_ref_project_seg(const float *x, const float *proj, int32_t n, int32_t n_kv, int32_t d,
                        int32_t r, kq_storage storage, const kq_segment *segments,
                        int32_t n_segments, double *out, double *alt, int32_t ld, int32_t row0,
                        kqc_ref_qstats *stats) {
  const double u32 = 0x1p-24;
  kq_segment plain = {r, KQ_SEG_FLOAT};
  if (n_segments == 0) segments = &plain, n_segments = 1;
  double *sq = malloc(sizeof(double) * (size_t)r * 3); /* Σt², nnz, float32 latent / dev */
  int32_t *exact = malloc(sizeof(int32_t) * (size_t)r);
  if (!sq || !exact) {
    free(sq), free(exact);
    return -1;
  }
  double *nnz = sq + r, *xf = sq + 2 * (size_t)r;
  for (int32_t h = 0; h < n_kv; h++) {
    const float *p = proj + (size_t)h * d * r;
    for (int32_t t = 0; t < n; t++) {
      const float *xt = x + ((size_t)t * n_kv + h) * d;
      double *o = out + ((size_t)h * ld + row0 + t) * r;
      double *oa = alt ? alt + ((size_t)h * ld + row0 + t) * r : NULL;
      /* Row-wise accumulation (contiguous in proj); each o[j] still sums
       * its d terms in order i = 0, 1, ... */
      for (int32_t j = 0; j < r; j++) o[j] = 0.0, sq[j] = 0.0, nnz[j] = 0.0, exact[j] = 1;
      for (int32_t i = 0; i < d; i++) {
        const float *pi = p + (size_t)i * r;
        double xi = xt[i];
        for (int32_t j = 0; j < r; j++) {
          double term = xi * (double)pi[j];
          o[j] += term;
          if (term != 0.0) {
            sq[j] += term * term, nnz[j] += 1.0;
            exact[j] &= (double)(float)term == term;
          }
        }
      }
      for (int32_t j = 0, start = 0; j < n_segments; start += segments[j].width, j++) {
        int32_t w = segments[j].width;
        double *os = o + start, *as = oa ? oa + start : NULL;
        if (stats)
          for (int32_t c = 0; c < w; c++) stats->energy += os[c] * os[c];
        if (segments[j].bits == KQ_SEG_FLOAT) {
          if (storage == KQ_STORAGE_F16)
            for (int32_t c = 0; c < w; c++) os[c] = kqc_round_f16(os[c]);
          if (as) memcpy(as, os, sizeof(double) * (size_t)w);
          continue;
        }
        /* The float32 latent and how far a device's may be from it. */
        double *dev = sq + start;
        for (int32_t c = 0; c < w; c++) {
          int32_t k = start + c;
          xf[k] = (double)(float)os[c];
          int single = nnz[k] <= 1.0 && exact[k];
          dev[c] = single ? 0.0 : 4 * u32 * sqrt(nnz[k]) * sqrt(sq[k]) + u32 * fabs(os[c]);
        }
        store_quantized(xf + start, dev, w, segments[j].bits, os, as, stats);
      }
    }
  }
  free(sq), free(exact);
  return 0;
}

void kqc_ref_rope(double *x, int32_t d, double pos, double theta, kq_rope_layout layout) {
  int32_t half = d / 2;
  for (int32_t j = 0; j < half; j++) {
    double angle = pos * pow(theta, -2.0 * j / d);
    double c = cos(angle), s = sin(angle);
    int32_t i0 = layout == KQ_ROPE_PAIRS ? 2 * j : j;
    int32_t i1 = layout == KQ_ROPE_PAIRS ? 2 * j + 1 : j + half;
    double a = x[i0], b = x[i1];
    x[i0] = a * c - b * s;
    x[i1] = a * s + b * c;
  }
}

/* v[d] = lat[r] · M[d, r]ᵀ  (M row-major [d, r] float32). */
static void times_transpose(const double *lat, const float *m, int32_t d, int32_t r, double *v) {
  for (int32_t i = 0; i < d; i++) {
    double s = 0.0;
    for (int32_t j = 0; j < r; j++) s += lat[j] * (double)m[(size_t)i * r + j];
    v[i] = s;
  }
}

/* out[r] = x[d] · M[d, r]. */
static void times(const double *x, const float *m, int32_t d, int32_t r, double *out) {
  for (int32_t j = 0; j < r; j++) out[j] = 0.0;
  for (int32_t i = 0; i < d; i++)
    for (int32_t j = 0; j < r; j++) out[j] += x[i] * (double)m[(size_t)i * r + j];
}

int32_t kqc_ref_logit_width(const kqc_ref_problem *pb) {
  return pb->rope == KQ_ROPE_PRE ? pb->head_dim : pb->rank_k;
}

/* Logit keys of kv head kv, positions [0, n): out [n, width]. */
static void logit_keys_of_head(const kqc_ref_problem *pb, int32_t kv, const double *klat,
                               int32_t ld, int32_t n, double *out) {
  int32_t d = pb->head_dim, rk = pb->rank_k;
  const float *B = pb->query_down + (size_t)kv * d * rk;
  const double *kl = klat + (size_t)kv * ld * rk;
  for (int32_t p = 0; p < n; p++) {
    if (pb->rope == KQ_ROPE_PRE) {
      times_transpose(kl + (size_t)p * rk, B, d, rk, out + (size_t)p * d);
      kqc_ref_rope(out + (size_t)p * d, d, p, pb->theta, pb->layout);
    } else {
      memcpy(out + (size_t)p * rk, kl + (size_t)p * rk, sizeof(double) * rk);
    }
  }
}

/* Latent groups: one per kv head, or one shared (JOINT). */
static int32_t groups(const kqc_ref_problem *pb) {
  return pb->latent_layout == KQ_LAYOUT_JOINT ? 1 : pb->n_kv_heads;
}

void kqc_ref_logit_keys(const kqc_ref_problem *pb, const double *klat, int32_t ld, int32_t n,
                        double *out) {
  int32_t w = kqc_ref_logit_width(pb);
  for (int32_t kv = 0; kv < groups(pb); kv++)
    logit_keys_of_head(pb, kv, klat, ld, n, out + (size_t)kv * ld * w);
}

int kqc_ref_attend(const kqc_ref_problem *pb, const double *klat, const double *vlat, int32_t ld,
                   int32_t n_ctx, int32_t m, const float *q, kq_output output, double *out,
                   kqc_ref_stats *stats) {
  int32_t H = pb->n_heads, Hk = pb->n_kv_heads, d = pb->head_dim, rk = pb->rank_k, rv = pb->rank_v;
  int joint = pb->latent_layout == KQ_LAYOUT_JOINT;
  /* PRE rotation needs pairs (POST latents arrive rotated); otherwise any
   * head_dim >= 1 is valid. */
  if (m < 1 || m > n_ctx || n_ctx > ld || Hk < 1 || H % Hk != 0 || d < 1 ||
      (pb->rope == KQ_ROPE_PRE && d % 2 != 0) || (joint && pb->rope == KQ_ROPE_PRE))
    return -1;
  int32_t g = H / Hk;
  int pre = pb->rope == KQ_ROPE_PRE;
  /* The width of the vectors the logits dot: d for PRE (rotated in the full
   * space), rank_k otherwise. */
  int32_t w = kqc_ref_logit_width(pb);
  double *scratch = pb->logit_keys ? NULL : malloc(sizeof(double) * (size_t)n_ctx * w);
  double *qv = malloc(sizeof(double) * (size_t)(d > rk ? d : rk) * 2);
  /* The latents of the group kv head kv reads (JOINT: the one group). */
#define GROUP(kv) (joint ? 0 : (kv))
  double *logits = malloc(sizeof(double) * (size_t)n_ctx);
  double *z = malloc(sizeof(double) * (size_t)rv);
  if ((!scratch && !pb->logit_keys) || !qv || !logits || !z) {
    free(scratch), free(qv), free(logits), free(z);
    return -1;
  }
  double *qt = qv, *qh = qv + (d > rk ? d : rk);
  double scale = 1.0 / sqrt((double)d), smax = 0.0, ssq = 0.0, count = 0.0;
  size_t out_w = output == KQ_OUTPUT_FULL ? (size_t)d : (size_t)rv;
  for (int32_t kv = 0; kv < Hk; kv++) {
    const float *A = pb->key_down + (size_t)kv * d * rk;
    const float *B = pb->query_down + (size_t)kv * d * rk;
    const float *E = pb->value_up + (size_t)kv * d * rv;
    const double *vl = vlat + (size_t)GROUP(kv) * ld * rv;
    /* The keys the logits read: latents, or (PRE) k̂_p = rot(k̃_p Bᵀ, p). */
    const double *keys = scratch;
    if (pb->logit_keys)
      keys = pb->logit_keys + (size_t)GROUP(kv) * ld * w;
    else
      logit_keys_of_head(pb, GROUP(kv), klat, ld, n_ctx, scratch);
    for (int32_t hh = 0; hh < g; hh++) {
      int32_t h = kv * g + hh;
      for (int32_t j = 0; j < m; j++) {
        int32_t pos = n_ctx - m + j;
        const float *qf = q + ((size_t)j * H + h) * d;
        for (int32_t i = 0; i < d; i++) qh[i] = qf[i];
        times(qh, B, d, rk, qt); /* q̃ = q B */
        const double *qq = qt;
        if (pre) { /* q̂ = rot(q̃ Aᵀ, pos) */
          times_transpose(qt, A, d, rk, qh);
          kqc_ref_rope(qh, d, pos, pb->theta, pb->layout);
          qq = qh;
        }
        double mx = -INFINITY;
        for (int32_t p = 0; p <= pos; p++) {
          double s = 0.0;
          for (int32_t i = 0; i < w; i++) s += qq[i] * keys[(size_t)p * w + i];
          s *= scale;
          logits[p] = s;
          if (s > mx) mx = s;
          if (fabs(s) > smax) smax = fabs(s);
          ssq += s * s;
          count += 1.0;
        }
        double den = 0.0;
        for (int32_t c = 0; c < rv; c++) z[c] = 0.0;
        for (int32_t p = 0; p <= pos; p++) {
          double e = exp(logits[p] - mx);
          den += e;
          const double *vp = vl + (size_t)p * rv;
          for (int32_t c = 0; c < rv; c++) z[c] += e * vp[c];
        }
        for (int32_t c = 0; c < rv; c++) z[c] /= den;
        double *o = out + ((size_t)j * H + h) * out_w;
        if (output == KQ_OUTPUT_FULL)
          times_transpose(z, E, d, rv, o);
        else
          memcpy(o, z, sizeof(double) * rv);
      }
    }
  }
  if (stats) {
    stats->logit_max = smax;
    stats->logit_rms = count > 0 ? sqrt(ssq / count) : 0.0;
  }
  free(scratch), free(qv), free(logits), free(z);
  return 0;
#undef GROUP
}

int kqc_ref_attend_kv(const kqc_ref_problem *pb, const float *value_down, kq_storage storage,
                      const float *keys, const float *values, int32_t n_ctx, int32_t m,
                      const float *q, kq_output output, double *out) {
  if (pb->latent_layout != KQ_LAYOUT_PER_HEAD || n_ctx < 1) return -1;
  int32_t hk = pb->n_kv_heads, d = pb->head_dim;
  double *klat = malloc(sizeof(double) * (size_t)hk * n_ctx * pb->rank_k);
  double *vlat = malloc(sizeof(double) * (size_t)hk * n_ctx * pb->rank_v);
  int rc = klat && vlat ? 0 : -1;
  if (rc == 0)
    rc = kqc_ref_project(keys, pb->key_down, n_ctx, hk, d, pb->rank_k, storage, klat, n_ctx, 0);
  if (rc == 0)
    rc = kqc_ref_project(values, value_down, n_ctx, hk, d, pb->rank_v, storage, vlat, n_ctx, 0);
  if (rc == 0) rc = kqc_ref_attend(pb, klat, vlat, n_ctx, n_ctx, m, q, output, out, NULL);
  free(klat);
  free(vlat);
  return rc;
}
