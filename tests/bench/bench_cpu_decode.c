/* Decode throughput of a device's compressed cache at long context, as a
 * model runs it (SPEC §5): each timed step attends one query in every layer,
 * and the layers' caches together are several times the last-level cache.
 *
 *   bench_cpu_decode [device] [ctx] [layers] [steps] [rank] [storage f16|f32]
 *
 * Prints, for rank r (random projections) and rank d (identity, plain
 * attention): median step time, GB/s (latent cache bytes read + queries +
 * outputs) and the percentage of the device's copy bandwidth, then the
 * speedup of rank r over rank d. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/kq_common.h"
#include "kqsvd.h"

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void fill(float *x, size_t n, uint64_t *s, float amp) {
  for (size_t i = 0; i < n; i++) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    x[i] = amp * ((float)(*s >> 40) / (float)(1u << 24) - 0.5f);
  }
}

#define CHECK(call)                                                                                \
  do {                                                                                             \
    kq_status st_ = (call);                                                                        \
    if (st_ != KQ_OK) {                                                                            \
      fprintf(stderr, "%s: %s: %s\n", #call, kq_status_string(st_), kq_last_error());              \
      exit(1);                                                                                     \
    }                                                                                              \
  } while (0)

/* Returns the median decode step time in seconds. */
static double cpu_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double run(kq_device *dev, int ctx, int layers, int steps, int rank, kq_storage storage,
                  double *out_bytes, double *out_cpu) {
  const int H = 32, Hk = 8, d = 128;
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = layers,
                              .n_heads = H,
                              .n_kv_heads = Hk,
                              .head_dim = d,
                              .rope = KQ_ROPE_POST,
                              .rope_layout = KQ_ROPE_PAIRS,
                              .rope_theta = 10000.0f};
  kq_projections *proj;
  uint64_t seed = 42;
  if (rank == d) {
    CHECK(kq_projections_create_identity(&info, &proj));
  } else {
    int32_t *rk = calloc((size_t)layers, sizeof(int32_t));
    if (!rk) return 0.0;
    for (int l = 0; l < layers; l++) rk[l] = rank;
    CHECK(kq_projections_create(&info, rk, rk, &proj));
    free(rk);
    for (int l = 0; l < layers; l++) {
      kq_projection_layer L;
      CHECK(kq_projections_layer(proj, l, &L));
      size_t n = (size_t)Hk * d * rank;
      fill(L.key_down, n, &seed, 0.2f), fill(L.query_down, n, &seed, 0.2f);
      fill(L.value_down, n, &seed, 0.2f), fill(L.value_up, n, &seed, 0.2f);
    }
  }
  kq_cache_params p = kq_cache_default_params();
  p.storage = storage;
  p.capacity = ctx;
  kq_cache *cache;
  CHECK(kq_cache_create(dev, proj, &p, &cache));
  const int block = 1024;
  float *kv = malloc(sizeof(float) * (size_t)block * Hk * d);
  float *q = malloc(sizeof(float) * (size_t)H * d);
  float *out = malloc(sizeof(float) * (size_t)H * d);
  fill(kv, (size_t)block * Hk * d, &seed, 2.0f);
  fill(q, (size_t)H * d, &seed, 2.0f);
  double a0 = kq_now_seconds();
  for (int l = 0; l < layers; l++)
    for (int t = 0; t < ctx; t += block) {
      int n = ctx - t < block ? ctx - t : block;
      CHECK(kq_cache_append(cache, l, n, kv, kv));
    }
  double append_s = kq_now_seconds() - a0;
  printf("rank %3d: append %.0f tokens/s per layer (blocks of %d)\n", rank,
         (double)ctx * layers / append_s, block);
  double *times = malloc(sizeof(double) * (size_t)steps);
  double *cpu = malloc(sizeof(double) * (size_t)steps);
  for (int s = -1; s < steps; s++) { /* step -1 is the warm-up */
    double t0 = kq_now_seconds(), c0 = cpu_seconds();
    for (int l = 0; l < layers; l++) CHECK(kq_cache_attend(cache, l, 1, q, KQ_OUTPUT_FULL, out));
    if (s >= 0) times[s] = kq_now_seconds() - t0, cpu[s] = cpu_seconds() - c0;
  }
  qsort(times, (size_t)steps, sizeof times[0], cmp_double);
  qsort(cpu, (size_t)steps, sizeof cpu[0], cmp_double);
  *out_cpu = cpu[steps / 2];
  free(cpu);
  double med = times[steps / 2];
  double esize = storage == KQ_STORAGE_F16 ? 2.0 : 4.0;
  *out_bytes = (double)layers * ((double)Hk * ctx * 2.0 * rank * esize + 2.0 * H * d * 4.0);
  free(times), free(kv), free(q), free(out);
  kq_cache_destroy(cache);
  kq_projections_destroy(proj);
  return med;
}

int main(int argc, char **argv) {
  const char *device = argc > 1 ? argv[1] : "cpu";
  int ctx = argc > 2 ? atoi(argv[2]) : 32768;
  int layers = argc > 3 ? atoi(argv[3]) : 4;
  int steps = argc > 4 ? atoi(argv[4]) : 9;
  int rank = argc > 5 ? atoi(argv[5]) : 64;
  kq_storage storage = argc > 6 && strcmp(argv[6], "f32") == 0 ? KQ_STORAGE_F32 : KQ_STORAGE_F16;
  kq_device *dev;
  CHECK(kq_device_create(device, &dev));
  kq_device_info info;
  CHECK(kq_device_get_info(dev, &info));
  double ceiling;
  CHECK(kq_device_copy_bandwidth(dev, (uint64_t)256 << 20, 7, &ceiling));
  printf("device %s (%s), %s; copy ceiling %.2f GB/s (256 MiB, median of 7)\n", info.name,
         info.description, info.driver, ceiling);
  printf("H 32, Hk 8, d 128, ctx %d, layers %d, storage %s, median of %d steps\n", ctx, layers,
         storage == KQ_STORAGE_F16 ? "F16" : "F32", steps);
  double bytes_r, bytes_d, cpu_r, cpu_d;
  double t_r = run(dev, ctx, layers, steps, rank, storage, &bytes_r, &cpu_r);
  printf("rank %3d: %8.3f ms/step  %7.2f GB/s  %5.1f%% of copy  (%.3f CPU-ms/step)\n", rank,
         1e3 * t_r, bytes_r / t_r / 1e9, 100.0 * bytes_r / t_r / 1e9 / ceiling, 1e3 * cpu_r);
  double t_d = run(dev, ctx, layers, steps, 128, storage, &bytes_d, &cpu_d);
  printf("rank 128: %8.3f ms/step  %7.2f GB/s  %5.1f%% of copy  (%.3f CPU-ms/step; identity = "
         "plain attention)\n",
         1e3 * t_d, bytes_d / t_d / 1e9, 100.0 * bytes_d / t_d / 1e9 / ceiling, 1e3 * cpu_d);
  printf("speedup rank %d over rank 128: %.2fx\n", rank, t_d / t_r);
  kq_device_destroy(dev);
  return 0;
}
