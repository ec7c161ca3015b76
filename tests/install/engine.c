/* A stand-in inference engine built against an installed kqsvd (only
 * <kqsvd.h>): it opens a device, creates projections (identity and random
 * rank-r ones), a cache, appends tokens one by one and decodes, and checks
 * every decode output against a small float64 attention written here.
 * Then it fits its own projections in memory (kq_fit_memory) from q/k/v rows
 * it made itself, and on cpu and on vulkan:0 / opencl:0 where present
 * decodes three sequences of different lengths in one cache with those
 * projections and with queries, keys, values and outputs in device buffers
 * (batched device-resident calls), checked against the same reference per
 * sequence; on the GPU devices every step waits on the host exactly once
 * (its read) and allocates nothing after the first, counted with
 * kq_device_get_stats. Exit 0 when everything matches, 1 otherwise. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kqsvd.h>

enum { H = 4, HK = 2, D = 16, TOKENS = 40 };

static double rnd(unsigned long long *s) {
  *s = *s * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(*s >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static int fail(const char *what, kq_status st) {
  fprintf(stderr, "engine: %s: %s: %s\n", what, kq_status_string(st), kq_last_error());
  return 1;
}

/* Float64 decode of the last token: per head, softmax over positions of
 * (q B)·(k A)/sqrt(d), values (v C), output (P V C) Eᵀ. */
static void reference(const kq_projection_layer *L, int n, const float *keys, const float *values,
                      const float *q, double *out) {
  int rk = L->rank_k, rv = L->rank_v, g = H / HK;
  for (int head = 0; head < H; head++) {
    int h = head / g;
    const float *A = L->key_down + h * D * rk, *B = L->query_down + h * D * rk;
    const float *C = L->value_down + h * D * rv, *E = L->value_up + h * D * rv;
    double qt[D], logits[TOKENS], acc[D] = {0}, mx = -INFINITY, sum = 0.0;
    for (int k = 0; k < rk; k++) {
      qt[k] = 0.0;
      for (int i = 0; i < D; i++) qt[k] += q[head * D + i] * (double)B[i * rk + k];
    }
    for (int t = 0; t < n; t++) {
      double s = 0.0;
      for (int k = 0; k < rk; k++) {
        double kt = 0.0;
        for (int i = 0; i < D; i++) kt += keys[(t * HK + h) * D + i] * (double)A[i * rk + k];
        s += qt[k] * kt;
      }
      logits[t] = s / sqrt((double)D);
      if (logits[t] > mx) mx = logits[t];
    }
    for (int t = 0; t < n; t++) sum += (logits[t] = exp(logits[t] - mx));
    for (int t = 0; t < n; t++)
      for (int k = 0; k < rv; k++) {
        double vt = 0.0;
        for (int i = 0; i < D; i++) vt += values[(t * HK + h) * D + i] * (double)C[i * rv + k];
        acc[k] += logits[t] / sum * vt;
      }
    for (int i = 0; i < D; i++) {
      double s = 0.0;
      for (int k = 0; k < rv; k++) s += acc[k] * E[i * rv + k];
      out[head * D + i] = s;
    }
  }
}

static int make_projections(int rank, unsigned long long *seed, kq_projections **out_proj) {
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = 1,
                              .n_heads = H,
                              .n_kv_heads = HK,
                              .head_dim = D,
                              .rope = KQ_ROPE_POST,
                              .rope_layout = KQ_ROPE_PAIRS,
                              .rope_theta = 10000.0f};
  int32_t r[1] = {rank};
  kq_status st = kq_projections_create(&info, r, r, out_proj);
  if (st != KQ_OK) return fail("projections", st);
  kq_projection_layer L;
  if ((st = kq_projections_layer(*out_proj, 0, &L)) != KQ_OK) return fail("layer", st);
  for (int i = 0; i < HK * D * rank; i++) {
    L.key_down[i] = (float)(0.5 * rnd(seed));
    L.query_down[i] = (float)(0.5 * rnd(seed));
    L.value_down[i] = (float)(0.5 * rnd(seed));
    L.value_up[i] = (float)(0.5 * rnd(seed));
  }
  return 0;
}

enum { CAL_T = 256, HIDDEN = 24 };

/* The engine's own "forward pass": q/k/v rows of CAL_T tokens in its
 * natural layout [T, heads, d] with a few dominant directions per head
 * (so a low rank keeps most of them), and its W_O; then a rank-6 KQ-SVD
 * fit in memory, no calibration file. */
static int fit_in_memory(kq_projections **out_proj) {
  static float q[CAL_T * H * D], k[CAL_T * HK * D], v[CAL_T * HK * D], wo[HIDDEN * H * D];
  unsigned long long seed = 4242u;
  float dirs[4][D];
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < D; j++) dirs[i][j] = (float)rnd(&seed);
  for (int t = 0; t < CAL_T; t++) {
    for (int h = 0; h < H; h++)
      for (int j = 0; j < D; j++)
        q[(t * H + h) * D + j] = (float)(2.0 * rnd(&seed) * dirs[h % 4][j] +
                                         rnd(&seed) * dirs[(h + 1) % 4][j] + 0.1 * rnd(&seed));
    for (int h = 0; h < HK; h++)
      for (int j = 0; j < D; j++) {
        k[(t * HK + h) * D + j] = (float)(2.0 * rnd(&seed) * dirs[(h + 2) % 4][j] +
                                          rnd(&seed) * dirs[h % 4][j] + 0.1 * rnd(&seed));
        v[(t * HK + h) * D + j] = (float)(rnd(&seed) * dirs[(h + 3) % 4][j] + 0.1 * rnd(&seed));
      }
  }
  for (int i = 0; i < HIDDEN * H * D; i++) wo[i] = (float)(0.2 * rnd(&seed));
  kq_calib_view_layer layer = {.q = q, .k = k, .v = v, .wo = wo};
  kq_calib_view view = kq_calib_view_default();
  view.n_layers = 1;
  view.n_heads = H;
  view.n_kv_heads = HK;
  view.head_dim = D;
  view.hidden = HIDDEN;
  view.n_tokens = CAL_T;
  view.layers = &layer;
  view.name = "engine rows";
  kq_fit_params fp = kq_fit_default_params();
  fp.rank_k = 6;
  fp.rank_v = 6;
  kq_fit_summary sum;
  kq_status st = kq_fit_memory(&view, &fp, out_proj, &sum);
  if (st != KQ_OK) return fail("fit in memory", st);
  kq_projection_layer L;
  if ((st = kq_projections_layer(*out_proj, 0, &L)) != KQ_OK) return fail("fitted layer", st);
  if (L.rank_k != 6 || L.rank_v != 6) {
    fprintf(stderr, "engine: fitted ranks %d/%d, asked 6/6\n", (int)L.rank_k, (int)L.rank_v);
    return 1;
  }
  printf("engine: fitted rank 6 in memory from %d tokens, predicted error keys %.3f values %.3f\n",
         CAL_T, sum.predicted_error_k, sum.predicted_error_v);
  return 0;
}

enum { NSEQ = 3, STEPS = 24 };

/* Three sequences in one cache, device-resident: sequence s joins at step
 * 4s, so every batched step mixes different lengths. */
static int run_sequences(const char *name, kq_projections *proj) {
  kq_device *dev = NULL;
  kq_status st = kq_device_create(name, &dev);
  if (st != KQ_OK) {
    printf("engine: %s: absent, skipped\n", name);
    return 0;
  }
  unsigned long long seed = 77u;
  kq_projection_layer L;
  kq_projections_layer(proj, 0, &L);
  kq_cache_params params = kq_cache_default_params();
  params.capacity = STEPS;
  params.n_seqs = NSEQ;
  kq_cache *cache = NULL;
  kq_device_buffer *bk = NULL, *bv = NULL, *bq = NULL, *bo = NULL;
  if ((st = kq_cache_create(dev, proj, &params, &cache)) != KQ_OK) return fail("cache", st);
  if ((st = kq_device_buffer_create(dev, NSEQ * HK * D * 4, &bk)) != KQ_OK ||
      (st = kq_device_buffer_create(dev, NSEQ * HK * D * 4, &bv)) != KQ_OK ||
      (st = kq_device_buffer_create(dev, NSEQ * H * D * 4, &bq)) != KQ_OK ||
      (st = kq_device_buffer_create(dev, NSEQ * H * D * 4, &bo)) != KQ_OK)
    return fail("device buffers", st);
  static float keys[NSEQ][STEPS * HK * D], values[NSEQ][STEPS * HK * D];
  float k[NSEQ * HK * D], v[NSEQ * HK * D], q[NSEQ * H * D], out[NSEQ * H * D];
  int len[NSEQ] = {0};
  double ref[H * D], worst = 0.0;
  /* The CPU backend never waits on a device (0 host waits) and allocates
   * a sequence's storage when it joins; the GPU backends wait once per
   * step (the read) and allocate nothing after the first step. */
  int gpu = strcmp(name, "cpu") != 0, bad_steps = 0;
  for (int t = 0; t < STEPS; t++) {
    kq_device_stats s0 = {.struct_size = sizeof s0}, s1 = {.struct_size = sizeof s1};
    if ((st = kq_device_get_stats(dev, &s0)) != KQ_OK) return fail("stats", st);
    kq_seq_span spans[NSEQ];
    int n = 0;
    for (int sq = 0; sq < NSEQ; sq++) {
      if (t < 4 * sq) continue;
      spans[n] = (kq_seq_span){.seq = sq, .n_tokens = 1};
      for (int i = 0; i < HK * D; i++) {
        k[n * HK * D + i] = keys[sq][len[sq] * HK * D + i] = (float)rnd(&seed);
        v[n * HK * D + i] = values[sq][len[sq] * HK * D + i] = (float)rnd(&seed);
      }
      for (int i = 0; i < H * D; i++) q[n * H * D + i] = (float)rnd(&seed);
      len[sq]++;
      n++;
    }
    if ((st = kq_device_buffer_write(bk, 0, k, (size_t)n * HK * D * 4)) != KQ_OK ||
        (st = kq_device_buffer_write(bv, 0, v, (size_t)n * HK * D * 4)) != KQ_OK ||
        (st = kq_device_buffer_write(bq, 0, q, (size_t)n * H * D * 4)) != KQ_OK)
      return fail("write", st);
    if ((st = kq_cache_append_device(cache, 0, n, spans, bk, 0, bv, 0)) != KQ_OK)
      return fail("append_device", st);
    if ((st = kq_cache_attend_device(cache, 0, n, spans, bq, 0, KQ_OUTPUT_FULL, bo, 0)) != KQ_OK)
      return fail("attend_device", st);
    if ((st = kq_device_buffer_read(bo, 0, out, (size_t)n * H * D * 4)) != KQ_OK)
      return fail("read", st);
    if ((st = kq_device_get_stats(dev, &s1)) != KQ_OK) return fail("stats", st);
    uint64_t waits = s1.host_waits - s0.host_waits;
    uint64_t allocs = s1.device_allocations - s0.device_allocations;
    if (waits != (gpu ? 1u : 0u) || (gpu && t > 0 && allocs != 0)) {
      fprintf(stderr, "engine: %s: step %d: %llu host waits, %llu device allocations\n", name, t,
              (unsigned long long)waits, (unsigned long long)allocs);
      bad_steps++;
    }
    for (int i = 0; i < n; i++) {
      int sq = spans[i].seq;
      reference(&L, len[sq], keys[sq], values[sq], q + i * H * D, ref);
      double num = 0.0, den = 0.0;
      for (int j = 0; j < H * D; j++) {
        num += (out[i * H * D + j] - ref[j]) * (out[i * H * D + j] - ref[j]);
        den += ref[j] * ref[j];
      }
      if (num / den > worst) worst = num / den;
    }
  }
  kq_device_buffer_destroy(bk);
  kq_device_buffer_destroy(bv);
  kq_device_buffer_destroy(bq);
  kq_device_buffer_destroy(bo);
  kq_cache_destroy(cache);
  kq_device_destroy(dev);
  printf("engine: %s: %d sequences, %d device-resident batched steps with fitted projections, "
         "%s host wait per step, worst NMSE %.3e\n",
         name, NSEQ, STEPS, gpu ? "one" : "no", worst);
  return worst <= 1e-9 && bad_steps == 0 ? 0 : 1;
}

static int run(kq_device *dev, int rank) {
  kq_projections *proj = NULL;
  kq_status st;
  unsigned long long seed = 2024u + (unsigned)rank;
  if (rank == D) {
    kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                                .n_layers = 1,
                                .n_heads = H,
                                .n_kv_heads = HK,
                                .head_dim = D,
                                .rope = KQ_ROPE_POST,
                                .rope_layout = KQ_ROPE_PAIRS,
                                .rope_theta = 10000.0f};
    if ((st = kq_projections_create_identity(&info, &proj)) != KQ_OK)
      return fail("projections", st);
  } else if (make_projections(rank, &seed, &proj)) {
    return 1;
  }
  kq_projection_layer L;
  if ((st = kq_projections_layer(proj, 0, &L)) != KQ_OK) return fail("layer", st);
  kq_cache_params params = kq_cache_default_params();
  params.capacity = TOKENS;
  kq_cache *cache = NULL;
  if ((st = kq_cache_create(dev, proj, &params, &cache)) != KQ_OK) return fail("cache", st);

  static float keys[TOKENS * HK * D], values[TOKENS * HK * D];
  float q[H * D], out[H * D];
  double ref[H * D], worst = 0.0;
  for (int t = 0; t < TOKENS; t++) {
    for (int i = 0; i < HK * D; i++) {
      keys[t * HK * D + i] = (float)rnd(&seed);
      values[t * HK * D + i] = (float)rnd(&seed);
    }
    for (int i = 0; i < H * D; i++) q[i] = (float)rnd(&seed);
    if ((st = kq_cache_append(cache, 0, 1, keys + t * HK * D, values + t * HK * D)) != KQ_OK)
      return fail("append", st);
    if ((st = kq_cache_attend(cache, 0, 1, q, KQ_OUTPUT_FULL, out)) != KQ_OK)
      return fail("attend", st);
    reference(&L, t + 1, keys, values, q, ref);
    double num = 0.0, den = 0.0;
    for (int i = 0; i < H * D; i++) {
      num += (out[i] - ref[i]) * (out[i] - ref[i]);
      den += ref[i] * ref[i];
    }
    if (num / den > worst) worst = num / den;
  }
  kq_cache_destroy(cache);
  kq_projections_destroy(proj);
  printf("engine: rank %2d: %d decode steps, worst NMSE %.3e\n", rank, TOKENS, worst);
  return worst <= 1e-9 ? 0 : 1; /* float32 arithmetic vs float64: ~1e-13 expected */
}

int main(void) {
  kq_device *dev = NULL;
  kq_status st = kq_device_create("cpu", &dev);
  if (st != KQ_OK) return fail("device", st);
  printf("engine: kqsvd %s\n", kq_version());
  int rc = run(dev, D) | run(dev, 5);
  kq_device_destroy(dev);
  kq_projections *fitted = NULL;
  if (fit_in_memory(&fitted)) return 1;
  rc |= run_sequences("cpu", fitted) | run_sequences("vulkan:0", fitted) |
        run_sequences("opencl:0", fitted);
  kq_projections_destroy(fitted);
  return rc;
}
