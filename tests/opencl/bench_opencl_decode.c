/*
 * bench_opencl_decode.c — decode throughput of a device's compressed cache at
 * long context (SPEC §5), written for the OpenCL backend but device-agnostic.
 *
 *   bench_opencl_decode [device=opencl:0] [ctx=32768] [layers=4] [steps=7]
 *                       [rank=64] [storage=f16] [copy_mib=512]
 *
 * H = 32, Hk = 8, d = 128. Each timed step attends one query (full output) in
 * every layer; the layers' caches together are several times the last-level
 * cache. Prints the median step time, GB/s (latent cache bytes read +
 * queries + outputs) and the share of the device's copy bandwidth measured in
 * the same run, for rank r (random projections) and rank d (identity = plain
 * attention), then the speedup. Also prints the CLBlast warm-up the device
 * recorded (device info extensions). Not a test: it is not run by ctest.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kqsvd.h"

#define CHECK(call)                                                                                \
  do {                                                                                             \
    kq_status st_ = (call);                                                                        \
    if (st_ != KQ_OK) {                                                                            \
      fprintf(stderr, "%s: %s: %s\n", #call, kq_status_string(st_), kq_last_error());              \
      exit(1);                                                                                     \
    }                                                                                              \
  } while (0)

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void fill(float *x, size_t n, uint64_t seed, float amp) {
  for (size_t i = 0; i < n; i++) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    x[i] = amp * ((float)(seed >> 40) / (float)(1u << 24) - 0.5f);
  }
}

enum { H = 32, HK = 8, D = 128, BATCH = 1024 };

/* Median seconds per decode step over `steps`; *bytes per step. */
static double run(kq_device *dev, int ctx, int layers, int steps, int rank, kq_storage storage,
                  double *bytes, double *append_s) {
  kq_projections_info info = {KQ_METHOD_KQSVD, layers, H, HK, D, KQ_ROPE_POST, KQ_ROPE_PAIRS, 1e4f};
  kq_projections *proj = NULL;
  if (rank == D) {
    CHECK(kq_projections_create_identity(&info, &proj));
  } else {
    int32_t *r = calloc((size_t)layers, sizeof(int32_t));
    if (!r) exit(1);
    for (int l = 0; l < layers; ++l) r[l] = rank;
    CHECK(kq_projections_create(&info, r, r, &proj));
    free(r);
    for (int l = 0; l < layers; ++l) {
      kq_projection_layer pl;
      CHECK(kq_projections_layer(proj, l, &pl));
      fill(pl.key_down, (size_t)HK * D * rank, 1 + l, 0.2f);
      fill(pl.query_down, (size_t)HK * D * rank, 2 + l, 0.2f);
      fill(pl.value_down, (size_t)HK * D * rank, 3 + l, 0.2f);
      fill(pl.value_up, (size_t)HK * D * rank, 4 + l, 0.2f);
    }
  }
  kq_cache_params cp = kq_cache_default_params();
  cp.storage = storage;
  cp.capacity = ctx;
  kq_cache *cache = NULL;
  CHECK(kq_cache_create(dev, proj, &cp, &cache));
  float *k = malloc(sizeof(float) * BATCH * HK * D), *v = malloc(sizeof(float) * BATCH * HK * D);
  float *q = malloc(sizeof(float) * H * D), *out = malloc(sizeof(float) * H * D);
  fill(k, (size_t)BATCH * HK * D, 5, 2.0f);
  fill(v, (size_t)BATCH * HK * D, 6, 2.0f);
  fill(q, (size_t)H * D, 7, 2.0f);
  double t0 = now();
  for (int l = 0; l < layers; ++l)
    for (int p = 0; p < ctx; p += BATCH) {
      int n = ctx - p < BATCH ? ctx - p : BATCH;
      CHECK(kq_cache_append(cache, l, n, k, v));
    }
  for (int l = 0; l < layers; ++l) CHECK(kq_cache_attend(cache, l, 1, q, KQ_OUTPUT_FULL, out));
  *append_s = now() - t0;
  double *t = malloc(sizeof(double) * steps);
  for (int s = 0; s < steps; ++s) {
    double a = now();
    for (int l = 0; l < layers; ++l) CHECK(kq_cache_attend(cache, l, 1, q, KQ_OUTPUT_FULL, out));
    t[s] = now() - a;
  }
  qsort(t, (size_t)steps, sizeof(double), by_value);
  double med = t[steps / 2];
  const double esz = storage == KQ_STORAGE_F16 ? 2.0 : 4.0;
  *bytes = (double)layers * ((double)HK * ctx * 2 * rank * esz + 2.0 * H * D * 4);
  free(t), free(k), free(v), free(q), free(out);
  kq_cache_destroy(cache);
  kq_projections_destroy(proj);
  return med;
}

int main(int argc, char **argv) {
  const char *device = argc > 1 ? argv[1] : "opencl:0";
  int ctx = argc > 2 ? atoi(argv[2]) : 32768, layers = argc > 3 ? atoi(argv[3]) : 4;
  int steps = argc > 4 ? atoi(argv[4]) : 7, rank = argc > 5 ? atoi(argv[5]) : 64;
  kq_storage storage = argc > 6 && strcmp(argv[6], "f32") == 0 ? KQ_STORAGE_F32 : KQ_STORAGE_F16;
  int copy_mib = argc > 7 ? atoi(argv[7]) : 512;
  if (ctx <= 0 || layers <= 0 || steps <= 0 || rank <= 0 || rank > D || copy_mib <= 0) {
    fprintf(stderr, "usage: bench_opencl_decode [device] [ctx] [layers] [steps] [rank] "
                    "[f16|f32] [copy_mib]\n");
    return 2;
  }
  kq_device *dev = NULL;
  double t0 = now();
  CHECK(kq_device_create(device, &dev));
  double open_s = now() - t0;
  double ceiling = 0;
  CHECK(kq_device_copy_bandwidth(dev, (uint64_t)copy_mib << 20, 5, &ceiling));
  double bytes_r, bytes_d, app_r, app_d;
  double t_r = run(dev, ctx, layers, steps, rank, storage, &bytes_r, &app_r);
  double t_d = run(dev, ctx, layers, steps, D, storage, &bytes_d, &app_d);
  /* A second handle reports what the first one recorded (program build or
   * cache load, CLBlast warm-up) in its info. */
  kq_device *again = NULL;
  kq_device_info info;
  CHECK(kq_device_create(device, &again));
  CHECK(kq_device_get_info(again, &info));
  kq_device_destroy(again);
  printf("device %s (%s), open %.3f s\n", info.name, info.description, open_s);
  printf("info: %s\n", info.extensions);
  printf("ctx %d layers %d H %d Hk %d d %d storage %s steps %d\n", ctx, layers, H, HK, D,
         storage == KQ_STORAGE_F16 ? "f16" : "f32", steps);
  printf("copy ceiling (%d MiB, median of 5): %.2f GB/s\n", copy_mib, ceiling);
  printf("%-10s %12s %10s %10s %12s\n", "rank", "step_ms", "GB/s", "pct_ceil", "fill_s");
  printf("r=%-8d %12.3f %10.2f %10.1f %12.2f\n", rank, 1e3 * t_r, bytes_r / t_r / 1e9,
         100.0 * bytes_r / t_r / 1e9 / ceiling, app_r);
  printf("d=%-8d %12.3f %10.2f %10.1f %12.2f\n", D, 1e3 * t_d, bytes_d / t_d / 1e9,
         100.0 * bytes_d / t_d / 1e9 / ceiling, app_d);
  printf("speedup (rank %d over full attention): %.2fx\n", rank, t_d / t_r);
  kq_device_destroy(dev);
  return 0;
}
