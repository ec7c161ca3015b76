/*
 * runner.c — runs conformance cases on a device through the public cache API
 * (kq_cache_append / attend / truncate) and compares every attend with the
 * float64 reference.
 */
#include <math.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attn_reference.h"
#include "conformance.h"
#include "data.h"

#define KQC_THETA 10000.0

/* One sequence of tokens and what the reference makes of it. Latents are
 * [G, n, r] (G = n_kv heads, or 1 in the JOINT layout). */
typedef struct kqc_data {
  float *keys, *values;
  double *klat, *vlat;
  double *khat;                /* PRE: rotated keys (kqc_ref_logit_keys), else NULL */
  double *klat_alt, *vlat_alt; /* at-risk roundings taken the other way; NULL: none */
  double *khat_alt;
} kqc_data;

/* Everything one case owns. */
typedef struct kqc_state {
  const kqc_case *c;
  kqc_result *res;
  int32_t n, ow;     /* tokens generated (>= 1), output width per head */
  int32_t groups, D; /* latent groups and the width one group projects (JOINT: 1, Hk·d) */
  int32_t n_kseg, n_vseg;
  kq_segment kseg[KQ_MAX_SEGMENTS], vseg[KQ_MAX_SEGMENTS];
  float *A, *B, *C, *E;
  float *own; /* identity matrices of an identity case, owned */
  float *queries;
  kqc_data data, stale; /* stale: truncate cases, what is cut off */
  float *junk;          /* [n, Hk, d] tokens for the layers below the tested one */
  float *out;
  double *ref, *ref_alt;
  double num, den; /* Σ(a−b)², Σb² over every compared attend */
  double alt_num;  /* Σ(alt − b)² over the same attends */
  double worst;    /* other NMSEs that must stay below the threshold */
  kqc_ref_stats stats;
  kqc_quant_stats quant;
  /* Non-finite cases: what the device gets (one element replaced); the
   * reference keeps the clean data. NULL otherwise. */
  float *dev_keys, *dev_values, *dev_queries;
  int32_t nf_token;            /* the token whose key, value or query is bad */
  int64_t nf_rows, nf_checked; /* affected output rows seen / compared rows */
} kqc_state;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Marks the case failed with a message; the first failure is kept. */
static int fail(kqc_state *r, const char *fmt, ...) {
  if (r->res->error[0]) return -1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->res->error, sizeof r->res->error, fmt, ap);
  va_end(ap);
  r->res->pass = 0;
  return -1;
}

static int fail_status(kqc_state *r, const char *what, kq_status st) {
  return fail(r, "%s: %s: %s", what, kq_status_string(st), kq_last_error());
}

/* A failed device call (cache create / append / attend). A quantized or
 * JOINT case that the device does not implement yet is "unsupported",
 * neither passed nor failed; any other status is a failure. */
static int fail_device(kqc_state *r, const char *what, kq_status st) {
  if (st == KQ_ERR_UNSUPPORTED && kqc_case_uses_v2(r->c) && !r->res->error[0]) {
    r->res->unsupported = 1;
    (void)what; /* kq_last_error names the call, device and layer */
    snprintf(r->res->error, sizeof r->res->error, "unsupported: %s", kq_last_error());
    return -1;
  }
  return fail_status(r, what, st);
}

static void *alloc(kqc_state *r, size_t count, size_t size) {
  void *p = calloc(count ? count : 1, size);
  if (!p) fail(r, "out of host memory (%zu x %zu bytes)", count, size);
  return p;
}

static void data_free(kqc_data *d) {
  free(d->keys), free(d->values), free(d->klat), free(d->vlat), free(d->khat);
  free(d->klat_alt), free(d->vlat_alt), free(d->khat_alt);
}

static void release(kqc_state *r) {
  free(r->own), free(r->queries), free(r->junk);
  data_free(&r->data), data_free(&r->stale);
  free(r->out), free(r->ref), free(r->ref_alt);
  free(r->dev_keys), free(r->dev_values), free(r->dev_queries);
}

/* Non-finite case: copies of the device's keys, values and queries with
 * one element replaced (kqc_nonfinite). */
static int inject_nonfinite(kqc_state *r) {
  const kqc_case *c = r->c;
  size_t nkv = (size_t)r->n * c->n_kv_heads * c->head_dim;
  size_t nq = (size_t)r->n * c->n_heads * c->head_dim;
  r->dev_keys = alloc(r, nkv, sizeof(float));
  r->dev_values = alloc(r, nkv, sizeof(float));
  r->dev_queries = alloc(r, nq, sizeof(float));
  if (!r->dev_keys || !r->dev_values || !r->dev_queries) return -1;
  memcpy(r->dev_keys, r->data.keys, nkv * sizeof(float));
  memcpy(r->dev_values, r->data.values, nkv * sizeof(float));
  memcpy(r->dev_queries, r->queries, nq * sizeof(float));
  /* Late enough that the first queries of the final attend never see it. */
  r->nf_token = r->n >= 2 ? r->n - 2 : 0;
  size_t kv_at = (size_t)r->nf_token * c->n_kv_heads * c->head_dim; /* kv head 0, dim 0 */
  switch (c->nonfinite) {
  case KQC_NF_KEY_NAN: r->dev_keys[kv_at] = NAN; break;
  case KQC_NF_KEY_INF: r->dev_keys[kv_at] = INFINITY; break;
  case KQC_NF_VALUE_NAN: r->dev_values[kv_at] = NAN; break;
  case KQC_NF_QUERY_NAN:
    r->nf_token = r->n - 1;
    r->dev_queries[(size_t)(r->n - 1) * c->n_heads * c->head_dim] = NAN;
    break;
  default: break;
  }
  return 0;
}

/* Whether output row (query j of the m at the end of len tokens, head h)
 * sees the bad element of a non-finite case (kqsvd.h's rule). */
static int row_affected(const kqc_state *r, int32_t len, int32_t m, int32_t j, int32_t h) {
  const kqc_case *c = r->c;
  int32_t pos = len - m + j;
  if (c->nonfinite == KQC_NF_QUERY_NAN) return pos == r->nf_token && h == 0;
  int32_t g = c->n_heads / c->n_kv_heads;
  int in_group = c->latent == KQ_LAYOUT_JOINT || h / g == 0; /* joint: one latent for all */
  return in_group && r->nf_token <= pos;
}

/* Segments of layer l's keys or values: the case's recipe on the layer
 * under test; lower layers take it too where it fits their rank, else q8. */
static int set_segments(kqc_state *r, kq_projections *proj, int32_t l, kq_side side,
                        kqc_recipe recipe, int32_t rank) {
  kq_segment segs[KQ_MAX_SEGMENTS];
  int32_t n = kqc_recipe_segments(recipe, rank, segs);
  if (n < 0 && l == r->c->layer)
    return fail(r, "recipe %s does not fit rank %d", kqc_recipe_name(recipe), (int)rank);
  if (n < 0) n = kqc_recipe_segments(KQC_Q8, rank, segs);
  if (l == r->c->layer) {
    memcpy(side == KQ_SIDE_KEYS ? r->kseg : r->vseg, segs, sizeof(kq_segment) * (size_t)n);
    *(side == KQ_SIDE_KEYS ? &r->n_kseg : &r->n_vseg) = n;
  }
  kq_status st = n > 0 ? kq_projections_set_segments(proj, l, side, n, segs) : KQ_OK;
  return st == KQ_OK ? 0 : fail_status(r, "kq_projections_set_segments", st);
}

/* Identity matrices of every projection: per head [Hk, d, d], JOINT
 * [Hk·d, Hk·d] (which is also query_down / value_up [Hk, d, Hk·d]: kv head
 * i's block selects its own dims). */
static int make_identity(kqc_state *r, kq_projections **out, const kq_projections_info *info) {
  const kqc_case *c = r->c;
  int32_t G = r->groups, D = r->D;
  size_t sz = (size_t)G * D * D;
  kq_status st;
  if (!(r->own = alloc(r, sz, sizeof(float)))) return -1;
  for (int32_t h = 0; h < G; h++)
    for (int32_t i = 0; i < D; i++) r->own[((size_t)h * D + i) * D + i] = 1.0f;
  r->A = r->B = r->C = r->E = r->own;
  if (c->latent != KQ_LAYOUT_JOINT) {
    if ((st = kq_projections_create_identity(info, out)) != KQ_OK)
      return fail_status(r, "kq_projections_create_identity", st);
  } else {
    int32_t rk = D, rv = D;
    kq_projection_layer L;
    if ((st = kq_projections_create(info, &rk, &rv, out)) != KQ_OK)
      return fail_status(r, "kq_projections_create", st);
    if ((st = kq_projections_layer(*out, 0, &L)) != KQ_OK)
      return fail_status(r, "kq_projections_layer", st);
    memcpy(L.key_down, r->own, sz * sizeof(float));
    memcpy(L.query_down, r->own, sz * sizeof(float));
    memcpy(L.value_down, r->own, sz * sizeof(float));
    memcpy(L.value_up, r->own, sz * sizeof(float));
  }
  if (set_segments(r, *out, 0, KQ_SIDE_KEYS, c->key_recipe, D) ||
      set_segments(r, *out, 0, KQ_SIDE_VALUES, c->value_recipe, D))
    return -1;
  return 0;
}

/* Projections on the host: random pairs (data.h), or identity. The matrices
 * the reference reads are r->A..E: for identity cases the suite's own
 * identity matrices, never the library's. JOINT: key_down / value_down
 * [Hk·d, R] and query_down / value_up [Hk, d, R] are one pair in the
 * Hk·d-dimensional space (the same bytes as [Hk, d, R]). */
static int make_projections(kqc_state *r, kqc_rng *rng, kq_projections **out) {
  const kqc_case *c = r->c;
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = c->layer + 1,
                              .n_heads = c->n_heads,
                              .n_kv_heads = c->n_kv_heads,
                              .head_dim = c->head_dim,
                              .rope = c->rope,
                              .rope_layout = c->layout,
                              .rope_theta = (float)KQC_THETA,
                              .layout = c->latent};
  int32_t D = r->D, G = r->groups;
  kq_status st;
  if (c->identity) return make_identity(r, out, &info);
  /* Layers below the one under test get other ranks and their own random
   * matrices: a device that mixes layers up gets the wrong answer. */
  int32_t rk[2], rv[2];
  for (int32_t l = 0; l <= c->layer; l++) {
    int other = l != c->layer;
    rk[l] = other ? (c->rank_k + 3 <= D ? c->rank_k + 3 : D / 2) : c->rank_k;
    rv[l] = other ? (c->rank_v + 5 <= D ? c->rank_v + 5 : D / 2) : c->rank_v;
  }
  if ((st = kq_projections_create(&info, rk, rv, out)) != KQ_OK)
    return fail_status(r, "kq_projections_create", st);
  for (int32_t l = 0; l <= c->layer; l++) {
    kq_projection_layer L;
    if ((st = kq_projections_layer(*out, l, &L)) != KQ_OK)
      return fail_status(r, "kq_projections_layer", st);
    if (L.rank_k != rk[l] || L.rank_v != rv[l])
      return fail(r, "kq_projections_layer %d: ranks %d/%d, expected %d/%d", (int)l, (int)L.rank_k,
                  (int)L.rank_v, (int)rk[l], (int)rv[l]);
    if (kqc_make_projection_pair(rng, G, D, rk[l], sqrt((double)D / rk[l]), L.key_down,
                                 L.query_down) ||
        kqc_make_projection_pair(rng, G, D, rv[l], 1.0, L.value_down, L.value_up))
      return fail(r, "out of host memory (projections)");
    if (set_segments(r, *out, l, KQ_SIDE_KEYS, c->key_recipe, rk[l]) ||
        set_segments(r, *out, l, KQ_SIDE_VALUES, c->value_recipe, rv[l]))
      return -1;
    r->A = L.key_down, r->B = L.query_down, r->C = L.value_down, r->E = L.value_up;
  }
  return 0;
}

static kqc_ref_problem ref_problem(const kqc_state *r, const double *khat) {
  const kqc_case *c = r->c;
  kqc_ref_problem pb = {.n_heads = c->n_heads,
                        .n_kv_heads = c->n_kv_heads,
                        .head_dim = c->head_dim,
                        .rank_k = c->rank_k,
                        .rank_v = c->rank_v,
                        .rope = c->rope,
                        .layout = c->layout,
                        .theta = KQC_THETA,
                        .key_down = r->A,
                        .query_down = r->B,
                        .value_up = r->E,
                        .logit_keys = khat,
                        .latent_layout = c->latent};
  return pb;
}

/* PRE keys are rebuilt and rotated once per data set, not per attend. */
static double *rotated_keys(kqc_state *r, const double *klat) {
  kqc_ref_problem pb = ref_problem(r, NULL);
  double *khat = alloc(r, (size_t)r->groups * r->n * r->c->head_dim, sizeof(double));
  if (khat) kqc_ref_logit_keys(&pb, klat, r->n, r->n, khat);
  return khat;
}

/* The reference's latents of one data set, and their alternatives when any
 * rounding is at risk (kqc_ref_project_seg). */
static int project_data(kqc_state *r, kqc_data *dt, kqc_quant_stats *qs) {
  const kqc_case *c = r->c;
  int32_t G = r->groups, D = r->D, v2 = kqc_case_uses_v2(c);
  size_t kn = (size_t)G * r->n * c->rank_k, vn = (size_t)G * r->n * c->rank_v;
  dt->klat = alloc(r, kn, sizeof(double));
  dt->vlat = alloc(r, vn, sizeof(double));
  if (v2) dt->klat_alt = alloc(r, kn, sizeof(double)), dt->vlat_alt = alloc(r, vn, sizeof(double));
  if (!dt->klat || !dt->vlat || (v2 && (!dt->klat_alt || !dt->vlat_alt))) return -1;
  int64_t risk = qs->keys.at_risk + qs->values.at_risk;
  if (kqc_ref_project_seg(dt->keys, r->A, r->n, G, D, c->rank_k, c->storage, r->kseg, r->n_kseg,
                          dt->klat, dt->klat_alt, r->n, 0, &qs->keys) ||
      kqc_ref_project_seg(dt->values, r->C, r->n, G, D, c->rank_v, c->storage, r->vseg, r->n_vseg,
                          dt->vlat, dt->vlat_alt, r->n, 0, &qs->values))
    return fail(r, "out of host memory (reference projection)");
  if (qs->keys.at_risk + qs->values.at_risk == risk) { /* nothing at risk: no alternative */
    free(dt->klat_alt), free(dt->vlat_alt);
    dt->klat_alt = dt->vlat_alt = NULL;
  }
  if (c->rope == KQ_ROPE_PRE) {
    if (!(dt->khat = rotated_keys(r, dt->klat))) return -1;
    if (dt->klat_alt && !(dt->khat_alt = rotated_keys(r, dt->klat_alt))) return -1;
  }
  return 0;
}

/* Inputs and the reference's latents of the final sequence (and of the
 * stale one that a truncate case cuts off). */
static int make_data(kqc_state *r, kqc_rng *rng) {
  const kqc_case *c = r->c;
  int32_t d = c->head_dim, Hk = c->n_kv_heads, H = c->n_heads;
  size_t nkv = (size_t)r->n * Hk * d;
  kqc_data *dt = &r->data;
  dt->keys = alloc(r, nkv, sizeof(float));
  dt->values = alloc(r, nkv, sizeof(float));
  /* Error cases may ask for more queries than tokens: rows for max(n, m). */
  int32_t rows = r->n > c->m ? r->n : c->m;
  r->queries = alloc(r, (size_t)rows * H * d, sizeof(float));
  r->out = alloc(r, (size_t)rows * H * r->ow, sizeof(float));
  r->ref = alloc(r, (size_t)rows * H * r->ow, sizeof(double));
  r->ref_alt = alloc(r, (size_t)rows * H * r->ow, sizeof(double));
  if (!dt->keys || !dt->values || !r->queries || !r->out || !r->ref || !r->ref_alt) return -1;
  if (c->ties) {
    kqc_fill_ties(rng, dt->keys, 0, r->n, r->groups, r->D, r->kseg, r->n_kseg);
    kqc_fill_ties(rng, dt->values, 0, r->n, r->groups, r->D, r->vseg, r->n_vseg);
  } else {
    kqc_fill_normal(rng, dt->keys, nkv, 1.0);
    kqc_fill_normal(rng, dt->values, nkv, 1.0);
  }
  kqc_fill_normal(rng, r->queries, (size_t)rows * H * d, c->qscale > 0 ? c->qscale : 1.5);
  if (project_data(r, dt, &r->quant)) return -1;
  if (c->layer > 0) {
    if (!(r->junk = alloc(r, nkv, sizeof(float)))) return -1;
    kqc_fill_normal(rng, r->junk, nkv, 3.0);
  }
  if (c->truncate_to > 0) {
    /* Same first truncate_to tokens, different ones after. */
    kqc_data *sd = &r->stale;
    sd->keys = alloc(r, nkv, sizeof(float));
    sd->values = alloc(r, nkv, sizeof(float));
    if (!sd->keys || !sd->values) return -1;
    size_t keep = (size_t)c->truncate_to * Hk * d;
    memcpy(sd->keys, dt->keys, keep * sizeof(float));
    memcpy(sd->values, dt->values, keep * sizeof(float));
    if (c->ties) {
      kqc_fill_ties(rng, sd->keys, c->truncate_to, r->n, r->groups, r->D, r->kseg, r->n_kseg);
      kqc_fill_ties(rng, sd->values, c->truncate_to, r->n, r->groups, r->D, r->vseg, r->n_vseg);
    } else {
      kqc_fill_normal(rng, sd->keys + keep, nkv - keep, 1.0);
      kqc_fill_normal(rng, sd->values + keep, nkv - keep, 1.0);
    }
    kqc_quant_stats ignored = {0}; /* thresholds use the final sequence's figures */
    if (project_data(r, sd, &ignored)) return -1;
    r->quant.keys.at_risk += ignored.keys.at_risk;
    r->quant.values.at_risk += ignored.values.at_risk;
  }
  return 0;
}

static double nmse_of(const float *a, const double *b, size_t count, double *num, double *den) {
  double nu = 0, de = 0;
  for (size_t i = 0; i < count; i++) {
    double e = (double)a[i] - b[i];
    nu += e * e;
    de += b[i] * b[i];
  }
  if (num) *num += nu, *den += de;
  return nu / de;
}

/* Attends the last m of `len` tokens on the device and the reference
 * (data set dt) and accumulates the squared errors; with at-risk roundings
 * also the reference's distance to its alternative. */
static int attend_and_compare(kqc_state *r, kq_cache *cache, int32_t len, int32_t m,
                              const kqc_data *dt) {
  const kqc_case *c = r->c;
  int32_t H = c->n_heads;
  size_t count = (size_t)m * H * r->ow;
  for (size_t i = 0; i < count; i++) r->out[i] = NAN; /* unwritten outputs fail */
  const float *q = r->queries + (size_t)(len - m) * H * c->head_dim;
  const float *dq = r->dev_queries ? r->dev_queries + (q - r->queries) : q;
  double t0 = now();
  kq_status st = kq_cache_attend(cache, c->layer, m, dq, c->output, r->out);
  r->res->device_seconds += now() - t0;
  if (st != KQ_OK) return fail_device(r, "kq_cache_attend", st);
  kqc_ref_problem pb = ref_problem(r, dt->khat);
  kqc_ref_stats stats;
  if (kqc_ref_attend(&pb, dt->klat, dt->vlat, r->n, len, m, q, c->output, r->ref, &stats))
    return fail(r, "reference attention failed (len %d, m %d)", (int)len, (int)m);
  r->stats.logit_max = fmax(r->stats.logit_max, stats.logit_max);
  r->stats.logit_rms = fmax(r->stats.logit_rms, stats.logit_rms);
  if (c->nonfinite) { /* affected rows all non-finite; the rest as usual */
    for (int32_t j = 0; j < m; j++)
      for (int32_t h = 0; h < H; h++) {
        size_t at = ((size_t)j * H + h) * r->ow;
        if (row_affected(r, len, m, j, h)) {
          r->nf_rows++;
          int32_t finite = 0;
          for (int32_t i = 0; i < r->ow; i++) finite += isfinite(r->out[at + i]) != 0;
          /* A bad logit makes the whole row NaN; a bad value at least the
           * outputs it feeds (all of them unless the projection is I). */
          int whole = c->nonfinite != KQC_NF_VALUE_NAN || !c->identity;
          if (whole ? finite > 0 : finite == r->ow)
            return fail(r,
                        "attend at length %d: query %d head %d sees the bad element but %d "
                        "of its %d outputs are finite",
                        (int)len, (int)j, (int)h, (int)finite, (int)r->ow);
        } else {
          r->nf_checked++;
          double e = nmse_of(r->out + at, r->ref + at, (size_t)r->ow, &r->num, &r->den);
          if (!(e == e))
            return fail(r,
                        "attend at length %d: query %d head %d never sees the bad element "
                        "but its output is not finite",
                        (int)len, (int)j, (int)h);
        }
      }
    return 0;
  }
  double e = nmse_of(r->out, r->ref, count, &r->num, &r->den);
  if (!(e == e)) return fail(r, "attend at length %d, m %d: non-finite output", (int)len, (int)m);
  if (dt->klat_alt) {
    pb.logit_keys = dt->khat_alt;
    if (kqc_ref_attend(&pb, dt->klat_alt, dt->vlat_alt, r->n, len, m, q, c->output, r->ref_alt,
                       NULL))
      return fail(r, "reference attention failed (len %d, m %d)", (int)len, (int)m);
    for (size_t i = 0; i < count; i++)
      r->alt_num += (r->ref_alt[i] - r->ref[i]) * (r->ref_alt[i] - r->ref[i]);
  }
  return 0;
}

/* Appends tokens [from, to) of data set dt (one call or growing chunks,
 * each followed by an attend) and ends with an attend of the case's m
 * queries. */
static int fill(kqc_state *r, kq_cache *cache, int32_t from, int32_t to, kqc_append mode,
                const kqc_data *dt) {
  static const int32_t chunks[] = {1, 3, 8, 21, 55, 144, 377, 987};
  const kqc_case *c = r->c;
  size_t row = (size_t)c->n_kv_heads * c->head_dim;
  int32_t len = from;
  for (int k = 0; len < to; k++) {
    int32_t step = mode == KQC_APPEND_ONE ? to - len : chunks[k % 8];
    if (step > to - len) step = to - len;
    /* Lower layers take other tokens at the same time (junk: never checked,
     * but it must not leak into the layer under test). */
    kq_status st = KQ_OK;
    double t0 = now();
    for (int32_t l = 0; l < c->layer && st == KQ_OK; l++)
      st = kq_cache_append(cache, l, step, r->junk + len * row, r->junk + (to - len - step) * row);
    const float *keys = dt == &r->data && r->dev_keys ? r->dev_keys : dt->keys;
    const float *values = dt == &r->data && r->dev_values ? r->dev_values : dt->values;
    if (st == KQ_OK)
      st = kq_cache_append(cache, c->layer, step, keys + len * row, values + len * row);
    r->res->device_seconds += now() - t0;
    if (st != KQ_OK) return fail_device(r, "kq_cache_append", st);
    len += step;
    if (kq_cache_length(cache, c->layer) != len)
      return fail(r, "kq_cache_length is %d after appending up to %d",
                  (int)kq_cache_length(cache, c->layer), (int)len);
    /* Between chunks: attend the newest few tokens (decode, small prefill);
     * at most 8 keeps software devices fast. */
    int32_t mi = step < c->m ? step : c->m;
    if (len < to && attend_and_compare(r, cache, len, mi < 8 ? mi : 8, dt)) return -1;
  }
  return attend_and_compare(r, cache, to, c->m, dt);
}

static kq_status new_cache(kq_device *dev, const kq_projections *proj, const kqc_case *c,
                           kq_cache **out) {
  kq_cache_params params = kq_cache_default_params();
  params.storage = c->storage;
  params.capacity = c->n_ctx > 0 ? c->n_ctx : 1; /* exactly full at the end */
  return kq_cache_create(dev, proj, &params, out);
}

/* An error case: the attend must fail with a status and a message. */
static void run_error_case(kqc_state *r, kq_cache *cache) {
  const kqc_case *c = r->c;
  if (c->n_ctx > 0) {
    kq_status st = kq_cache_append(cache, c->layer, c->n_ctx, r->data.keys, r->data.values);
    if (st != KQ_OK) {
      fail_status(r, "kq_cache_append", st);
      return;
    }
  }
  kq_status st = kq_cache_attend(cache, c->layer, c->m, r->queries, c->output, r->out);
  if (st == KQ_OK) {
    fail(r, "kq_cache_attend of %d queries on %d tokens returned KQ_OK, expected an error",
         (int)c->m, (int)c->n_ctx);
  } else if (!kq_last_error()[0]) {
    fail(r, "kq_cache_attend failed with %s but left no message", kq_status_string(st));
  } else {
    r->res->pass = 1;
    snprintf(r->res->error, sizeof r->res->error, "expected error: %s: %s", kq_status_string(st),
             kq_last_error());
  }
}

static void run_case(kqc_state *r, kq_device *dev, kq_projections *proj) {
  const kqc_case *c = r->c;
  kq_cache *cache = NULL, *one = NULL;
  kq_status st = new_cache(dev, proj, c, &cache);
  if (st == KQ_ERR_UNSUPPORTED && c->storage == KQ_STORAGE_F16) {
    /* A device may lack F16 storage, but only if it says so. */
    kq_device_info info;
    if (kq_device_get_info(dev, &info) == KQ_OK && !info.fp16_storage) {
      r->res->skipped = 1;
      snprintf(r->res->error, sizeof r->res->error, "skipped: %s", kq_last_error());
      return;
    }
  }
  if (st != KQ_OK) {
    fail_device(r, "kq_cache_create", st);
    return;
  }
  if (c->expect_error) {
    run_error_case(r, cache);
    kq_cache_destroy(cache);
    return;
  }
  int32_t from = 0;
  if (c->truncate_to > 0) {
    if (fill(r, cache, 0, c->n_ctx, KQC_APPEND_ONE, &r->stale)) goto done;
    if ((st = kq_cache_truncate(cache, c->truncate_to)) != KQ_OK) {
      fail_status(r, "kq_cache_truncate", st);
      goto done;
    }
    if (kq_cache_length(cache, c->layer) != c->truncate_to) {
      fail(r, "kq_cache_length is %d after truncating to %d", (int)kq_cache_length(cache, c->layer),
           (int)c->truncate_to);
      goto done;
    }
    from = c->truncate_to;
  }
  if (fill(r, cache, from, c->n_ctx, c->append, &r->data)) goto done;
  if (c->append == KQC_APPEND_CHUNKS) {
    /* The chunked cache against a cache filled in one append. */
    size_t count = (size_t)c->m * c->n_heads * r->ow;
    float *chunked = malloc(count * sizeof(float));
    double *chunked_d = malloc(count * sizeof(double));
    if (!chunked || !chunked_d) {
      free(chunked), free(chunked_d);
      fail(r, "out of host memory");
      goto done;
    }
    memcpy(chunked, r->out, count * sizeof(float));
    int bad = (st = new_cache(dev, proj, c, &one)) != KQ_OK;
    if (bad) fail_device(r, "kq_cache_create", st);
    if (!bad) bad = fill(r, one, 0, c->n_ctx, KQC_APPEND_ONE, &r->data);
    if (!bad) {
      for (size_t i = 0; i < count; i++) chunked_d[i] = r->out[i];
      r->worst = fmax(r->worst, nmse_of(chunked, chunked_d, count, NULL, NULL));
    }
    free(chunked), free(chunked_d);
    if (bad) goto done;
  }
  r->res->nmse = fmax(r->num / r->den, r->worst);
  r->quant.alt_nmse = r->alt_num / r->den;
  r->res->threshold = kqc_case_threshold(c, &r->stats, kqc_case_uses_v2(c) ? &r->quant : NULL);
  r->res->pass = r->res->nmse <= r->res->threshold;
  if (r->res->pass && c->nonfinite && (r->nf_rows == 0 || r->nf_checked == 0))
    fail(r, "non-finite case checked %lld affected and %lld clean rows: both must be > 0",
         (long long)r->nf_rows, (long long)r->nf_checked);
  if (!r->res->pass)
    fail(r, "NMSE %.3e above threshold %.3e (logits max %.3g, rms %.3g; %lld roundings at risk)",
         r->res->nmse, r->res->threshold, r->stats.logit_max, r->stats.logit_rms,
         (long long)(r->quant.keys.at_risk + r->quant.values.at_risk));
done:
  kq_cache_destroy(one);
  kq_cache_destroy(cache);
}

void kqc_run_case(kq_device *device, const kqc_case *c, kqc_result *out) {
  double t0 = now();
  memset(out, 0, sizeof *out);
  out->nmse = NAN;
  kqc_case_name(c, out->name, sizeof out->name);
  kqc_state r = {.c = c, .res = out};
  r.n = c->n_ctx > 0 ? c->n_ctx : 1;
  r.ow = c->output == KQ_OUTPUT_FULL ? c->head_dim : c->rank_v;
  r.groups = c->latent == KQ_LAYOUT_JOINT ? 1 : c->n_kv_heads;
  r.D = c->latent == KQ_LAYOUT_JOINT ? c->n_kv_heads * c->head_dim : c->head_dim;
  kqc_rng rng;
  kqc_rng_seed(&rng, kqc_hash(out->name));
  kq_projections *proj = NULL;
  if (!make_projections(&r, &rng, &proj) && !make_data(&r, &rng) &&
      (!c->nonfinite || !inject_nonfinite(&r)))
    run_case(&r, device, proj);
  kq_projections_destroy(proj);
  release(&r);
  out->seconds = now() - t0;
}

int kqc_select(const char *filter, int *indices, int *out_n, char *err, size_t err_size) {
  int count;
  const kqc_case *cases = kqc_cases(&count);
  regex_t re;
  int use = filter && filter[0];
  if (use) {
    int rc = regcomp(&re, filter, REG_EXTENDED | REG_NOSUB);
    if (rc) {
      char msg[256];
      regerror(rc, &re, msg, sizeof msg);
      snprintf(err, err_size, "invalid filter '%s': %s", filter, msg);
      return -1;
    }
  }
  int n = 0;
  for (int i = 0; i < count; i++) {
    char name[128];
    kqc_case_name(&cases[i], name, sizeof name);
    if (!use || regexec(&re, name, 0, NULL, 0) == 0) indices[n++] = i;
  }
  if (use) regfree(&re);
  *out_n = n;
  return 0;
}

kq_status kqc_run(const char *device_name, const int *indices, int n, kqc_result *results,
                  kqc_progress_fn progress, void *user) {
  kq_device *dev = NULL;
  kq_status st = kq_device_create(device_name, &dev);
  if (st != KQ_OK) return st;
  kqc_run_all_on_device(dev, indices, n, results, progress, user);
  kq_device_destroy(dev);
  return KQ_OK;
}

void kqc_run_all_on_device(kq_device *device, const int *indices, int n, kqc_result *results,
                           kqc_progress_fn progress, void *user) {
  int count;
  const kqc_case *cases = kqc_cases(&count);
  if (!indices && n > count) n = count;
  for (int i = 0; i < n; i++) {
    kqc_run_case(device, &cases[indices ? indices[i] : i], &results[i]);
    if (progress) progress(user, &results[i], i + 1, n);
  }
}
