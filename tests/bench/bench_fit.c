/*
 * bench_fit — a full `kq_fit` (KQ-SVD, fixed ranks) on a synthetic F16
 * calibration file against an OpenBLAS/LAPACK pipeline doing the same
 * maths on the same mapped data in the same run (per head: F16 → double,
 * dsyrk Gram, dpotrf R factor; per kv head: R_K R_Qᵀ, dgesdd, A/B; values:
 * dgesdd of R_V), and the peak RSS of kq_fit on 2 vs 4 layers (child
 * processes, ru_maxrss), to show memory does not grow with the layer count.
 *
 * usage: bench_fit [--tokens N] [--reps R] [--dir DIR] [--threads N]
 * defaults: 65,536 tokens, 32 query heads, 8 kv heads, d = 128, F16,
 * 4 layers, ranks 32/32, 3 repetitions (medians reported), DIR = /tmp.
 * The calibration files are generated once with kq_synth and reused.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "kq_common.h"
#include <sys/wait.h>
#include <unistd.h>

#include "io/kq_safetensors.h"
#include "kqsvd.h"

#ifdef KQ_HAVE_LAPACKE
#include <cblas.h>
#include <immintrin.h>
#include <lapacke.h>
#endif

enum { HEADS = 32, KV_HEADS = 8, HEAD_DIM = 128, RANK = 32 };

/* CPU seconds (user + system, all threads) of this process so far. */
static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
         (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
}

static int make_file(const char *path, int layers, int tokens) {
  if (access(path, R_OK) == 0) return 0;
  kq_synth_params p = kq_synth_default_params();
  p.n_layers = layers;
  p.n_heads = HEADS;
  p.n_kv_heads = KV_HEADS;
  p.head_dim = HEAD_DIM;
  p.hidden = 4096;
  p.seq_len = 1024;
  p.n_seqs = tokens / 1024;
  p.dtype = KQ_DTYPE_F16;
  p.with_wo = 0;
  fprintf(stderr, "bench_fit: generating %s (%d layers, %d tokens)...\n", path, layers, tokens);
  double t0 = kq_now_seconds();
  kq_status st = kq_synth(path, &p);
  if (st) {
    fprintf(stderr, "bench_fit: synth: %s\n", kq_last_error());
    return 1;
  }
  fprintf(stderr, "bench_fit: generated in %.1f s\n", kq_now_seconds() - t0);
  return 0;
}

static double time_kq_fit(const char *calib, const char *out, int threads) {
  kq_fit_params p = kq_fit_default_params();
  p.rank_k = p.rank_v = RANK;
  p.n_threads = threads;
  double t0 = kq_now_seconds();
  kq_status st = kq_fit(calib, out, &p);
  double t = kq_now_seconds() - t0;
  if (st) {
    fprintf(stderr, "bench_fit: kq_fit: %s\n", kq_last_error());
    exit(1);
  }
  return t;
}

#ifdef KQ_HAVE_LAPACKE
__attribute__((target("avx,f16c"))) static void f16_to_f64(const uint16_t *src, double *dst,
                                                           size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 f = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i)));
    _mm256_storeu_pd(dst + i, _mm256_cvtps_pd(_mm256_castps256_ps128(f)));
    _mm256_storeu_pd(dst + i + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
  }
  for (; i < n; i++) dst[i] = kq_f16_to_f32(src[i]);
}

typedef struct convert_job {
  const uint16_t *src;
  double *dst;
  size_t n, chunk;
} convert_job;

static kq_status convert_task(void *ctx, int64_t i) {
  convert_job *j = ctx;
  size_t b = (size_t)i * j->chunk, e = b + j->chunk < j->n ? b + j->chunk : j->n;
  f16_to_f64(j->src + b, j->dst + b, e - b);
  return KQ_OK;
}

/* g += XᵀX (upper) over the T rows of one F16 head, in row blocks. */
static void gram_head(const uint16_t *head, int64_t tokens, double *x, double *g, int threads) {
  const int64_t block = 8192;
  for (int64_t r0 = 0; r0 < tokens; r0 += block) {
    int64_t rows = tokens - r0 < block ? tokens - r0 : block;
    size_t n = (size_t)rows * HEAD_DIM;
    convert_job job = {head + (size_t)r0 * HEAD_DIM, x, n, (n + 7) / 8};
    kq_parallel_for(8, threads, convert_task, &job);
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, HEAD_DIM, (int)rows, 1.0, x, HEAD_DIM, 1.0,
                g, HEAD_DIM);
  }
}

static void potrf_upper(double *g) {
  if (LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', HEAD_DIM, g, HEAD_DIM) != 0) {
    fprintf(stderr, "bench_fit: dpotrf failed\n");
    exit(1);
  }
  for (int i = 0; i < HEAD_DIM; i++)
    for (int j = 0; j < i; j++) g[i * HEAD_DIM + j] = 0;
}

/* The same maths as kq_fit, with OpenBLAS/LAPACK doing the work. */
static double time_blas_pipeline(const char *calib, int threads) {
  const int d = HEAD_DIM, dd = HEAD_DIM * HEAD_DIM, g = HEADS / KV_HEADS;
  double t0 = kq_now_seconds();
  kq_st_file *f = NULL;
  if (kq_st_open(calib, &f)) {
    fprintf(stderr, "bench_fit: %s\n", kq_last_error());
    exit(1);
  }
  double *x = malloc(8192 * (size_t)d * sizeof *x);
  double *rk = malloc(3 * (size_t)dd * sizeof *rk), *rq = rk + dd, *rv = rq + dd;
  double *m = malloc(5 * (size_t)dd * sizeof *m), *u = m + dd, *vt = u + dd, *a = vt + dd,
         *b = a + dd;
  double s[HEAD_DIM];
  double checksum = 0;
  for (int l = 0;; l++) {
    char name[64];
    snprintf(name, sizeof name, "layers.%d.k", l);
    const kq_st_tensor *tk = kq_st_find(f, name);
    if (!tk) break;
    snprintf(name, sizeof name, "layers.%d.q", l);
    const kq_st_tensor *tq = kq_st_find(f, name);
    snprintf(name, sizeof name, "layers.%d.v", l);
    const kq_st_tensor *tv = kq_st_find(f, name);
    int64_t T = tk->shape[1];
    size_t head = (size_t)T * d;
    for (int i = 0; i < KV_HEADS; i++) {
      memset(rk, 0, 3 * (size_t)dd * sizeof *rk);
      gram_head((const uint16_t *)tk->data + i * head, T, x, rk, threads);
      for (int j = 0; j < g; j++)
        gram_head((const uint16_t *)tq->data + (size_t)(i * g + j) * head, T, x, rq, threads);
      gram_head((const uint16_t *)tv->data + i * head, T, x, rv, threads);
      potrf_upper(rk);
      potrf_upper(rq);
      potrf_upper(rv);
      /* M = R_K R_Qᵀ = U Σ Vᵀ; A = R_Qᵀ V_r Σ_r⁻¹, B = R_Kᵀ U_r. */
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d, d, d, 1.0, rk, d, rq, d, 0.0, m, d);
      if (LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', d, d, m, d, s, u, d, vt, d) != 0) exit(1);
      cblas_dgemm(CblasRowMajor, CblasTrans, CblasTrans, d, RANK, d, 1.0, rq, d, vt, d, 0.0, a,
                  RANK);
      for (int r = 0; r < d; r++)
        for (int c = 0; c < RANK; c++) a[r * RANK + c] /= s[c] > 0 ? s[c] : 1.0;
      cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, RANK, d, 1.0, rk, d, u, d, 0.0, b,
                  RANK);
      /* values without wo: C = E = top right singular vectors of R_V. */
      memcpy(m, rv, (size_t)dd * sizeof *m);
      if (LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', d, d, m, d, s, u, d, vt, d) != 0) exit(1);
      checksum += a[0] + b[0] + vt[0];
    }
  }
  double t = kq_now_seconds() - t0;
  if (checksum == 12345.678) puts(""); /* keep the results alive */
  free(x);
  free(rk);
  free(m);
  kq_st_close(f);
  return t;
}
#endif

/* Peak RSS (KiB) of a fresh process running kq_fit on `calib`. */
static long child_peak_rss(const char *self, const char *calib, const char *out, int threads) {
  pid_t pid = fork();
  if (pid == 0) {
    char th[16];
    snprintf(th, sizeof th, "%d", threads);
    execl(self, self, "--child-fit", calib, out, th, (char *)NULL);
    _exit(127);
  }
  int status = 0;
  struct rusage ru;
  if (pid < 0 || wait4(pid, &status, 0, &ru) != pid || !WIFEXITED(status) ||
      WEXITSTATUS(status) != 0) {
    fprintf(stderr, "bench_fit: child fit failed\n");
    exit(1);
  }
  return ru.ru_maxrss;
}

int main(int argc, char **argv) {
  int tokens = 65536, reps = 3, threads = 0;
  const char *dir = "/tmp";
  if (argc == 5 && !strcmp(argv[1], "--child-fit")) {
    time_kq_fit(argv[2], argv[3], atoi(argv[4]));
    return 0;
  }
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--tokens"))
      tokens = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--reps"))
      reps = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--dir"))
      dir = argv[i + 1];
    else if (!strcmp(argv[i], "--threads"))
      threads = atoi(argv[i + 1]);
  }
  if (tokens < 1024 || reps < 1 || reps > 50) {
    fprintf(stderr, "usage: bench_fit [--tokens N>=1024] [--reps R] [--dir DIR] [--threads N]\n");
    return 2;
  }
  threads = kq_thread_count(threads);
  char f4[512], f2[512], out[512];
  snprintf(f4, sizeof f4, "%s/kq_bench_fit_L4_T%d.safetensors", dir, tokens);
  snprintf(f2, sizeof f2, "%s/kq_bench_fit_L2_T%d.safetensors", dir, tokens);
  snprintf(out, sizeof out, "%s/kq_bench_fit_proj_%d.safetensors", dir, (int)getpid());
  if (make_file(f4, 4, tokens) || make_file(f2, 2, tokens)) return 1;

  printf("bench_fit: 4 layers, %d tokens, %d/%d heads, d = %d, F16, ranks %d/%d, %d threads\n",
         tokens, HEADS, KV_HEADS, HEAD_DIM, RANK, RANK, threads);
  /* Wall time is what a user waits; CPU time (all threads) is reported too
   * because on a shared machine wall time also measures the neighbours. */
  double t_fit[50], t_blas[50], c_fit[50], c_blas[50];
  for (int r = 0; r < reps; r++) {
    double c0 = cpu_seconds();
    t_fit[r] = time_kq_fit(f4, out, threads);
    c_fit[r] = cpu_seconds() - c0;
#ifdef KQ_HAVE_LAPACKE
    c0 = cpu_seconds();
    t_blas[r] = time_blas_pipeline(f4, threads);
    c_blas[r] = cpu_seconds() - c0;
    printf("  rep %d: kq_fit %.3f s (cpu %.3f s), OpenBLAS/LAPACK pipeline %.3f s (cpu %.3f s)\n",
           r, t_fit[r], c_fit[r], t_blas[r], c_blas[r]);
#else
    printf("  rep %d: kq_fit %.3f s (cpu %.3f s)\n", r, t_fit[r], c_fit[r]);
#endif
    fflush(stdout);
  }
  double mf = kq_median(t_fit, reps), mcf = kq_median(c_fit, reps);
  printf("kq_fit median:                 wall %.3f s, cpu %.3f s\n", mf, mcf);
#ifdef KQ_HAVE_LAPACKE
  double mb = kq_median(t_blas, reps), mcb = kq_median(c_blas, reps);
  printf("OpenBLAS/LAPACK median:        wall %.3f s, cpu %.3f s\n", mb, mcb);
  printf("ratio kq_fit / pipeline:       wall %.2fx, cpu %.2fx (goal <= 1.5x)\n", mf / mb,
         mcf / mcb);
#endif
  long rss2 = child_peak_rss("/proc/self/exe", f2, out, threads);
  long rss4 = child_peak_rss("/proc/self/exe", f4, out, threads);
  printf("peak RSS kq_fit, 2 layers:     %.1f MiB\n", rss2 / 1024.0);
  printf("peak RSS kq_fit, 4 layers:     %.1f MiB\n", rss4 / 1024.0);
  unlink(out);
  return 0;
}
