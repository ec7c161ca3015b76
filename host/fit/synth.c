/*
 * kq_synth: a synthetic calibration file with the structure that matters
 * for KV-cache compression.
 *
 * Per layer, hidden states are anisotropic: x_t = z_t·diag(s)·Pᵀ with z_t
 * standard normal, s_j = (1 + j)^(−0.8) for j < D_lat = min(D, 64) and a
 * random orthonormal frame P (D×D_lat). With Gaussian weights W (D×d),
 * x W = z diag(s) (PᵀW) and PᵀW is again Gaussian, so the file is drawn as
 * z diag(s) G with G Gaussian: the same distribution at a fraction of the
 * cost. Then per head:
 *   keys    k = x W_k,i + 0.05·noise (noise: centred sum of four uniforms); a few rotary pairs (the
 * lowest frequencies, max(1, d/32) pairs) get 8× the variance; queries q = x W_k,i·diag(u_h) +
 * 0.5·x W'_h + 0.05·noise (u_h > 0), with the hot pairs' columns zero: the queries ignore the
 * channels where the keys vary most, which is where K-SVD wastes rank; values  v = x W_v,i +
 * 0.05·noise; keys and queries are then rotated (RoPE 'post', pairs layout, angle
 * pos·theta^(−2j/d), pos = position inside the sequence). W_O (optional)
 * is Gaussian with the columns of each head scaled by exp(−2c/d), so the
 * value directions it reads differ from V's principal directions.
 * Deterministic: xoshiro256** seeded through splitmix64 per (layer, stream).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kq_fit.h"
#include "kq_output_file.h"

kq_synth_params kq_synth_default_params(void) {
  kq_synth_params p = {.struct_size = sizeof p,
                       .n_layers = 4,
                       .n_heads = 8,
                       .n_kv_heads = 2,
                       .head_dim = 64,
                       .hidden = 512,
                       .seq_len = 256,
                       .n_seqs = 8,
                       .dtype = KQ_DTYPE_F32,
                       .seed = 1,
                       .rope_theta = 10000.0f,
                       .with_wo = 1};
  return p;
}

typedef struct rng {
  uint64_t s[4];
  int has_spare;
  double spare;
} rng;

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static void rng_seed(rng *r, uint64_t seed, uint64_t a, uint64_t b) {
  uint64_t x = seed ^ (a * 0x9e3779b97f4a7c15ULL) ^ (b * 0xd1b54a32d192ed03ULL);
  for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
  r->has_spare = 0;
}

static uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(rng *r) {
  uint64_t *s = r->s, result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

/* Uniform in (0, 1). */
static double rng_uniform(rng *r) {
  return ((double)(rng_next(r) >> 11) + 0.5) * 0x1.0p-53;
}

/* Standard normal (Box–Muller). */
static double rng_normal(rng *r) {
  if (r->has_spare) {
    r->has_spare = 0;
    return r->spare;
  }
  double u = rng_uniform(r), v = rng_uniform(r), m = sqrt(-2.0 * log(u));
  r->spare = m * sin(2 * M_PI * v);
  r->has_spare = 1;
  return m * cos(2 * M_PI * v);
}

enum { STREAM_WEIGHTS = 1, STREAM_HIDDEN, STREAM_NOISE_K, STREAM_NOISE_Q, STREAM_NOISE_V };

#define NOISE 0.05f
#define HOT_SCALE 8.0f

typedef struct synth_job {
  const kq_synth_params *p;
  int32_t layer, d_lat, n_hot_pairs;
  int64_t T;
  const float *y;                   /* [T][d_lat] = z diag(s) */
  const float *gk, *gq, *gv;        /* [Hk|H|Hk][d_lat][d] */
  void *k_out, *q_out, *v_out;      /* [Hk|H|Hk][T][d] in p->dtype */
  const float *rope_cos, *rope_sin; /* [seq_len][d/2] or NULL */
} synth_job;

static int is_hot(const synth_job *job, int32_t c) {
  int32_t pair = c / 2, half = job->p->head_dim / 2;
  return pair >= half - job->n_hot_pairs;
}

static void store(kq_dtype dtype, const float *src, void *dst, size_t n) {
  if (dtype == KQ_DTYPE_F32) {
    memcpy(dst, src, n * sizeof *src);
  } else {
    uint16_t *o = dst;
    for (size_t i = 0; i < n; i++)
      o[i] = dtype == KQ_DTYPE_F16 ? kq_f32_to_f16(src[i]) : kq_f32_to_bf16(src[i]);
  }
}

/* Cheap approximately normal noise: the centred sum of four 16-bit
 * uniforms (variance 1). */
static float fast_noise(rng *r) {
  uint64_t x = rng_next(r);
  double s = (double)(x & 0xffff) + (double)((x >> 16) & 0xffff) + (double)((x >> 32) & 0xffff) +
             (double)(x >> 48);
  return (float)((s - 131070.0) / 37837.23);
}

/* One head of keys (kind 0), queries (1) or values (2). */
static kq_status synth_task(void *ctx, int64_t index) {
  synth_job *job = ctx;
  const kq_synth_params *p = job->p;
  int32_t d = p->head_dim, hk = p->n_kv_heads, h = p->n_heads, dl = job->d_lat, half = d / 2;
  int kind = index < hk ? 0 : index < hk + h ? 1 : 2;
  int64_t head = kind == 0 ? index : kind == 1 ? index - hk : index - hk - h;
  const float *g = (kind == 0 ? job->gk : kind == 1 ? job->gq : job->gv) + head * dl * d;
  void *out = kind == 0 ? job->k_out : kind == 1 ? job->q_out : job->v_out;
  size_t es = kq_dtype_size(p->dtype);
  float *row = kq_malloc_array((size_t)d, sizeof *row, "synth row");
  double *rot = kq_malloc_array((size_t)d, sizeof *rot, "synth row");
  if (!row || !rot) {
    free(row);
    free(rot);
    return KQ_ERR_OUT_OF_MEMORY;
  }
  rng r;
  rng_seed(&r, p->seed, (uint64_t)job->layer, (uint64_t)((STREAM_NOISE_K + kind) << 20) + head);
  for (int64_t t = 0; t < job->T; t++) {
    const float *yt = job->y + t * dl;
    memset(row, 0, (size_t)d * sizeof *row);
    for (int32_t j = 0; j < dl; j++) {
      float a = yt[j];
      const float *gj = g + (size_t)j * d;
      for (int32_t c = 0; c < d; c++) row[c] += a * gj[c];
    }
    if (kind != 2)
      for (int32_t c = 0; c < d; c++)
        if (is_hot(job, c)) row[c] = kind == 0 ? row[c] * HOT_SCALE : 0.0f;
    /* noise after the hot-channel edit: queries keep full rank */
    for (int32_t c = 0; c < d; c++) row[c] += NOISE * fast_noise(&r);
    if (kind != 2) {
      int64_t pos = t % p->seq_len;
      if (job->rope_cos) {
        const float *cs = job->rope_cos + pos * half, *sn = job->rope_sin + pos * half;
        for (int32_t j = 0; j < half; j++) {
          float x0 = row[2 * j], x1 = row[2 * j + 1];
          row[2 * j] = x0 * cs[j] - x1 * sn[j];
          row[2 * j + 1] = x0 * sn[j] + x1 * cs[j];
        }
      } else {
        for (int32_t c = 0; c < d; c++) rot[c] = row[c];
        kq_rope_rotate(rot, d, pos, p->rope_theta, KQ_ROPE_PAIRS);
        for (int32_t c = 0; c < d; c++) row[c] = (float)rot[c];
      }
    }
    store(p->dtype, row, (char *)out + ((size_t)head * job->T + t) * d * es, (size_t)d);
  }
  free(row);
  free(rot);
  return KQ_OK;
}

/* cos/sin of every (position, pair) when the table is small enough. */
static void rope_table(const kq_synth_params *p, float **out_cos, float **out_sin) {
  int32_t half = p->head_dim / 2;
  *out_cos = *out_sin = NULL;
  if ((int64_t)p->seq_len * half > (1 << 22)) return;
  float *c = malloc((size_t)p->seq_len * half * sizeof *c);
  float *s = malloc((size_t)p->seq_len * half * sizeof *s);
  if (!c || !s) {
    free(c);
    free(s);
    return; /* fall back to computing each rotation */
  }
  for (int64_t pos = 0; pos < p->seq_len; pos++)
    for (int32_t j = 0; j < half; j++) {
      double angle = (double)pos * pow(p->rope_theta, -2.0 * j / p->head_dim);
      c[pos * half + j] = (float)cos(angle);
      s[pos * half + j] = (float)sin(angle);
    }
  *out_cos = c;
  *out_sin = s;
}

static kq_status check_params(const kq_synth_params *p) {
  if (p->n_layers < 1 || p->n_heads < 1 || p->n_kv_heads < 1 || p->hidden < 1 || p->seq_len < 1 ||
      p->n_seqs < 1)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "synth: layers, heads, kv heads, hidden, seq_len and n_seqs must be >= 1");
  if (p->n_heads % p->n_kv_heads)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "synth: %d heads is not a multiple of %d kv heads",
                        (int)p->n_heads, (int)p->n_kv_heads);
  if (p->head_dim < 2 || p->head_dim % 2 || p->head_dim > 4096)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "synth: head_dim %d must be even, in [2, 4096]",
                        (int)p->head_dim);
  if (p->dtype != KQ_DTYPE_F32 && p->dtype != KQ_DTYPE_F16 && p->dtype != KQ_DTYPE_BF16)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "synth: dtype must be F32, F16 or BF16");
  if (!(p->rope_theta > 0) || !isfinite(p->rope_theta))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "synth: rope_theta must be positive");
  return KQ_OK;
}

/* Layer weights: G_k, G_q, G_v (Gaussian, 1/sqrt(d_lat)) and wo. */
static void make_weights(const kq_synth_params *p, int32_t layer, int32_t dl, float *gk, float *gq,
                         float *gv, float *wo) {
  int32_t d = p->head_dim, g = p->n_heads / p->n_kv_heads;
  rng r;
  rng_seed(&r, p->seed, (uint64_t)layer, STREAM_WEIGHTS);
  float sc = 1.0f / sqrtf((float)dl);
  size_t n_kv = (size_t)p->n_kv_heads * dl * d;
  for (size_t i = 0; i < n_kv; i++) gk[i] = sc * (float)rng_normal(&r);
  for (size_t i = 0; i < n_kv; i++) gv[i] = sc * (float)rng_normal(&r);
  float u[4096]; /* head_dim <= 4096 (check_params) */
  for (int32_t h = 0; h < p->n_heads; h++) {
    for (int32_t c = 0; c < d; c++) u[c] = (float)fabs(rng_normal(&r));
    const float *k = gk + (size_t)(h / g) * dl * d;
    float *q = gq + (size_t)h * dl * d;
    for (int32_t j = 0; j < dl; j++)
      for (int32_t c = 0; c < d; c++)
        q[(size_t)j * d + c] = k[(size_t)j * d + c] * u[c] + 0.5f * sc * (float)rng_normal(&r);
  }
  if (wo) {
    size_t hd = (size_t)p->n_heads * d;
    float sw = 1.0f / sqrtf((float)hd);
    for (int32_t row = 0; row < p->hidden; row++)
      for (size_t x = 0; x < hd; x++)
        wo[(size_t)row * hd + x] =
            sw * expf(-2.0f * (float)(x % (size_t)d) / (float)d) * (float)rng_normal(&r);
  }
}

kq_status kq_synth(const char *out_path, const kq_synth_params *params) {
  kq_synth_params p = kq_synth_default_params();
  kq_status st =
      kq_params_adopt(&p, sizeof p, sizeof p, params, "kq_synth_params", "kq_synth_default_params");
  if (st) return st;
  st = check_params(&p);
  if (st) return st;
  if (!out_path) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "synth: output path is NULL");
  st = kq_output_check(out_path, NULL); /* before generating anything */
  if (st) return st;
  int32_t d = p.head_dim, dl = p.hidden < 64 ? p.hidden : 64;
  int64_t T = (int64_t)p.seq_len * p.n_seqs;
  size_t es = kq_dtype_size(p.dtype), kv_bytes, q_bytes, tmp;
  if (!kq_mul_size((size_t)T, (size_t)d * es, &tmp) ||
      !kq_mul_size(tmp, (size_t)p.n_kv_heads, &kv_bytes) ||
      !kq_mul_size(tmp, (size_t)p.n_heads, &q_bytes))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "synth: file size overflows");
  size_t hd = (size_t)p.n_heads * d, n_layers = (size_t)p.n_layers;
  void **bufs = kq_calloc_array(n_layers * 4, sizeof *bufs, "synth buffers");
  float *y = kq_malloc_array((size_t)T * dl, sizeof *y, "synth hidden states");
  float *gk = kq_malloc_array((size_t)p.n_kv_heads * dl * d, sizeof *gk, "synth weights");
  float *gv = kq_malloc_array((size_t)p.n_kv_heads * dl * d, sizeof *gv, "synth weights");
  float *gq = kq_malloc_array((size_t)p.n_heads * dl * d, sizeof *gq, "synth weights");
  float *wo32 = p.with_wo ? kq_malloc_array((size_t)p.hidden * hd, sizeof *wo32, "synth wo") : NULL;
  kq_st_writer *w = NULL;
  float *rope_c = NULL, *rope_s = NULL;
  rope_table(&p, &rope_c, &rope_s);
  if (!bufs || !y || !gk || !gv || !gq || (p.with_wo && !wo32)) {
    st = KQ_ERR_OUT_OF_MEMORY;
    goto done;
  }
  if ((st = kq_st_writer_create(out_path, &w))) goto done;
  char text[64];
  snprintf(text, sizeof text, "%d", (int)p.seq_len);
  if ((st = kq_st_writer_meta(w, "seq_len", text))) goto done;
  if ((st = kq_st_writer_meta(w, "rope", "post"))) goto done;
  snprintf(text, sizeof text, "%.9g", (double)p.rope_theta);
  if ((st = kq_st_writer_meta(w, "rope_theta", text))) goto done;
  if ((st = kq_st_writer_meta(w, "rope_layout", "pairs"))) goto done;
  for (int32_t l = 0; l < p.n_layers; l++) {
    void **b = bufs + 4 * (size_t)l;
    b[0] = kq_malloc_array(kv_bytes, 1, "synth keys");
    b[1] = kq_malloc_array(q_bytes, 1, "synth queries");
    b[2] = kq_malloc_array(kv_bytes, 1, "synth values");
    if (p.with_wo) b[3] = kq_malloc_array((size_t)p.hidden * hd, es, "synth wo");
    if (!b[0] || !b[1] || !b[2] || (p.with_wo && !b[3])) {
      st = KQ_ERR_OUT_OF_MEMORY;
      goto done;
    }
    make_weights(&p, l, dl, gk, gq, gv, wo32);
    rng r;
    rng_seed(&r, p.seed, (uint64_t)l, STREAM_HIDDEN);
    for (int64_t t = 0; t < T; t++)
      for (int32_t j = 0; j < dl; j++) y[t * dl + j] = (float)(pow(1.0 + j, -0.8) * rng_normal(&r));
    synth_job job = {.rope_cos = rope_c,
                     .rope_sin = rope_s,
                     .p = &p,
                     .layer = l,
                     .d_lat = dl,
                     .n_hot_pairs = d / 32 > 1 ? d / 32 : 1,
                     .T = T,
                     .y = y,
                     .gk = gk,
                     .gq = gq,
                     .gv = gv,
                     .k_out = b[0],
                     .q_out = b[1],
                     .v_out = b[2]};
    st = kq_parallel_for(2 * (int64_t)p.n_kv_heads + p.n_heads, 0, synth_task, &job);
    if (st) goto done;
    if (p.with_wo) store(p.dtype, wo32, b[3], (size_t)p.hidden * hd);
    const char *names[4] = {"k", "q", "v", "wo"};
    int64_t shapes[4][3] = {
        {p.n_kv_heads, T, d}, {p.n_heads, T, d}, {p.n_kv_heads, T, d}, {p.hidden, (int64_t)hd, 0}};
    for (int x = 0; x < (p.with_wo ? 4 : 3); x++) {
      char name[64];
      snprintf(name, sizeof name, "layers.%d.%s", (int)l, names[x]);
      if ((st = kq_st_writer_add(w, name, p.dtype, x == 3 ? 2 : 3, shapes[x], b[x]))) goto done;
    }
  }
  st = kq_st_writer_commit(w, NULL);
done:
  kq_st_writer_destroy(w);
  if (bufs)
    for (size_t i = 0; i < n_layers * 4; i++) free(bufs[i]);
  free(bufs);
  free(y);
  free(gk);
  free(gv);
  free(gq);
  free(wo32);
  free(rope_c);
  free(rope_s);
  return st;
}
