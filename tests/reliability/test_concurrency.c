/*
 * test_concurrency.c — the thread-safety contract of kqsvd.h on one backend:
 * two threads, each owning its own cache on the SAME kq_device, append and
 * attend concurrently; every output must be bitwise identical to the same
 * work done one thread after the other (and the concurrent round is repeated
 * to give races a chance). Covers F32 and (where the device has it) F16
 * storage, POST and PRE rope, full and latent outputs.
 *
 * usage: test_concurrency BACKEND   (cpu, vulkan, opencl) — every device of
 * that backend is tested; exit 77 (ctest SKIPPED) when there is none.
 */
#include <pthread.h>

#include "rel_util.h"

enum { L = 2, H = 4, HK = 2, D = 32, RK = 12, RV = 10, CAP = 96, ROUNDS = 3 };
/* Tokens appended per step; attention runs for the step's tokens. */
static const int32_t g_steps[] = {17, 1, 1, 8, 1, 5, 1};
#define N_STEPS ((int)(sizeof g_steps / sizeof g_steps[0]))
#define N_TOKENS 34

typedef struct job {
  kq_device *device;
  const kq_projections *proj;
  kq_storage storage;
  kq_output output;
  uint64_t seed;
  size_t out_floats; /* per layer and step, at most N_TOKENS * H * D */
  float *out;        /* [L][N_STEPS][N_TOKENS * H * D] */
  kq_status status;
  char error[256];
} job;

static void *run_job(void *arg) {
  job *j = arg;
  kq_cache_params cp = kq_cache_default_params();
  cp.storage = j->storage;
  cp.capacity = CAP;
  kq_cache *cache = NULL;
  const size_t per_tok = (size_t)HK * D, per_q = (size_t)H * D;
  float *k = malloc(sizeof(float) * N_TOKENS * per_tok);
  float *v = malloc(sizeof(float) * N_TOKENS * per_tok);
  float *q = malloc(sizeof(float) * N_TOKENS * per_q);
  j->status =
      (k && v && q) ? kq_cache_create(j->device, j->proj, &cp, &cache) : KQ_ERR_OUT_OF_MEMORY;
  for (int32_t l = 0; l < L && j->status == KQ_OK; l++) {
    rel_fill(k, N_TOKENS * per_tok, j->seed + 100 * (uint64_t)l + 1);
    rel_fill(v, N_TOKENS * per_tok, j->seed + 100 * (uint64_t)l + 2);
    rel_fill(q, N_TOKENS * per_q, j->seed + 100 * (uint64_t)l + 3);
    int32_t at = 0;
    for (int s = 0; s < N_STEPS && j->status == KQ_OK; s++) {
      int32_t n = g_steps[s];
      j->status = kq_cache_append(cache, l, n, k + (size_t)at * per_tok, v + (size_t)at * per_tok);
      if (j->status == KQ_OK)
        j->status = kq_cache_attend(cache, l, n, q + (size_t)at * per_q, j->output,
                                    j->out + ((size_t)l * N_STEPS + (size_t)s) * N_TOKENS * per_q);
      at += n;
    }
  }
  if (j->status != KQ_OK) snprintf(j->error, sizeof j->error, "%s", kq_last_error());
  kq_cache_destroy(cache);
  free(k);
  free(v);
  free(q);
  return NULL;
}

static size_t out_size(void) {
  return (size_t)L * N_STEPS * N_TOKENS * H * D;
}

static void check_same(const float *a, const float *b, const char *what) {
  /* Bitwise: the same inputs on the same device must give the same bits. */
  size_t n = out_size();
  for (size_t i = 0; i < n; i++)
    REL_CHECK(memcmp(&a[i], &b[i], sizeof(float)) == 0,
              "%s: output %zu differs between concurrent and sequential runs (%.9g vs %.9g)", what,
              i, (double)a[i], (double)b[i]);
}

static void test_device(const char name[32]) {
  kq_device *dev = NULL;
  REL_OK(kq_device_create(name, &dev));
  kq_device_info info;
  REL_OK(kq_device_get_info(dev, &info));
  int cases = 0;
  for (int rope = 0; rope < 2; rope++)
    for (int storage = 0; storage < 2; storage++)
      for (int output = 0; output < 2; output++) {
        if (storage == 1 && !info.fp16_storage) continue;
        kq_projections_info pi = {.method = KQ_METHOD_KQSVD,
                                  .n_layers = L,
                                  .n_heads = H,
                                  .n_kv_heads = HK,
                                  .head_dim = D,
                                  .rope = rope ? KQ_ROPE_PRE : KQ_ROPE_POST,
                                  .rope_layout = KQ_ROPE_HALVES,
                                  .rope_theta = 10000.0f};
        kq_projections *proj = rel_projections(&pi, RK, RV, 7);
        char what[128];
        snprintf(what, sizeof what, "%.31s rope=%s storage=%s output=%s", name,
                 rope ? "pre" : "post", storage ? "f16" : "f32", output ? "latent" : "full");
        job seq[2], con[2];
        for (int t = 0; t < 2; t++) {
          job base = {.device = dev,
                      .proj = proj,
                      .storage = (kq_storage)storage,
                      .output = (kq_output)output,
                      .seed = 1000 + 77 * (uint64_t)t};
          seq[t] = con[t] = base;
          seq[t].out = calloc(out_size(), sizeof(float));
          con[t].out = calloc(out_size(), sizeof(float));
          REL_CHECK(seq[t].out && con[t].out, "out of memory");
        }
        for (int t = 0; t < 2; t++) {
          run_job(&seq[t]);
          REL_CHECK(seq[t].status == KQ_OK, "%s: sequential run %d: %s: %s", what, t,
                    kq_status_string(seq[t].status), seq[t].error);
        }
        for (int round = 0; round < ROUNDS; round++) {
          pthread_t th[2];
          for (int t = 0; t < 2; t++) {
            memset(con[t].out, 0, out_size() * sizeof(float));
            REL_CHECK(pthread_create(&th[t], NULL, run_job, &con[t]) == 0, "pthread_create");
          }
          for (int t = 0; t < 2; t++) pthread_join(th[t], NULL);
          for (int t = 0; t < 2; t++) {
            REL_CHECK(con[t].status == KQ_OK, "%s: concurrent run %d: %s: %s", what, t,
                      kq_status_string(con[t].status), con[t].error);
            check_same(con[t].out, seq[t].out, what);
          }
        }
        /* The two threads worked on different data: a mix-up between the
         * caches would not go unnoticed. */
        REL_CHECK(memcmp(seq[0].out, seq[1].out, out_size() * sizeof(float)) != 0,
                  "%s: both threads produced the same outputs", what);
        for (int t = 0; t < 2; t++) {
          free(seq[t].out);
          free(con[t].out);
        }
        kq_projections_destroy(proj);
        cases++;
      }
  kq_device_destroy(dev);
  printf("%s: %d configurations x %d concurrent rounds bitwise equal to sequential runs\n", name,
         cases, ROUNDS);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: test_concurrency BACKEND\n");
    return 2;
  }
  char names[16][32];
  int n = rel_devices(argv[1], names, 16);
  if (n == 0) {
    printf("no %s device found: SKIPPED\n", argv[1]);
    return REL_SKIP;
  }
  for (int i = 0; i < n; i++) test_device(names[i]);
  return 0;
}
