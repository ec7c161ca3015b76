/*
 * bench_fit.c — host fitting timings for `kqsvd bench`: the one-sided
 * Jacobi SVD (n × n), the R-factor step (rows × 128 F16) and kq_fit of one
 * synthetic Llama-3-8B-like layer. Results use the attention record shape:
 * context = rows (tokens), head_dim = columns, other fields null where they
 * do not apply. LAPACK comparisons live in tests/bench.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "cli_util.h"
#include "common/kq_common.h"
#include "linalg/kq_linalg.h"

static uint64_t g_state = 0x9e3779b97f4a7c15ull;

/* Deterministic value in [-1, 1). */
static double uniform(void) {
  g_state = g_state * 6364136223846793005ull + 1442695040888963407ull;
  return 2.0 * ((double)(g_state >> 11) / 9007199254740992.0) - 1.0;
}

static void result_fit(const char *op, int32_t rows, int32_t cols, const char *storage,
                       double seconds, kq_bench_result *r) {
  memset(r, 0, sizeof *r);
  snprintf(r->device, sizeof r->device, "host");
  snprintf(r->op, sizeof r->op, "%s", op);
  r->context = rows;
  r->heads = r->kv_heads = r->rank_k = r->rank_v = -1;
  r->head_dim = cols;
  r->storage = storage;
  r->rope = NULL;
  r->seconds = seconds;
  r->tokens_per_s = strcmp(op, "svd") == 0 ? NAN : rows / seconds;
  r->bytes = r->gbps = r->ceiling_gbps = r->pct_of_ceiling = r->speedup_vs_full = NAN;
  r->bytes_fraction = r->bytes_budget = NAN;
}

static kq_status interrupted(const volatile int *cancel) {
  return cancel && *cancel ? kq_set_error(KQ_ERR_INTERRUPTED, "bench: interrupted") : KQ_OK;
}

static kq_status bench_svd(int n, int reps, const volatile int *cancel, kq_bench_report *rep) {
  size_t nn = (size_t)n * n;
  double *a0 = kq_calloc_array(nn, sizeof(double), "bench svd input");
  double *a = kq_calloc_array(nn, sizeof(double), "bench svd work");
  double *v = kq_calloc_array(nn, sizeof(double), "bench svd V");
  double *s = kq_calloc_array((size_t)n, sizeof(double), "bench svd sigma");
  double *t = kq_calloc_array((size_t)reps, sizeof(double), "bench times");
  kq_status st = a0 && a && v && s && t ? KQ_OK : KQ_ERR_OUT_OF_MEMORY;
  /* Graded columns, like a fitting problem's spectrum. */
  for (size_t i = 0; i < nn && st == KQ_OK; i++) a0[i] = uniform() / (1.0 + (double)(i % n));
  for (int k = -1; k < reps && st == KQ_OK; k++) {
    if ((st = interrupted(cancel))) break;
    memcpy(a, a0, nn * sizeof(double));
    double t0 = kq_now_seconds();
    st = kq_svd_jacobi(n, n, a, n, s, v, n, NULL, NULL);
    if (k >= 0) t[k] = kq_now_seconds() - t0;
  }
  if (st == KQ_OK) {
    kq_bench_result r;
    result_fit("svd", n, n, NULL, kq_median(t, reps), &r);
    if (!kq_bench_report_add(rep, &r)) st = KQ_ERR_OUT_OF_MEMORY;
  }
  free(a0), free(a), free(v), free(s), free(t);
  return st;
}

static kq_status bench_rfactor(int32_t rows, int reps, const volatile int *cancel,
                               kq_bench_report *rep) {
  const int d = 128;
  size_t n = (size_t)rows * d;
  uint16_t *h = kq_calloc_array(n, sizeof(uint16_t), "bench rfactor input");
  double *r = kq_calloc_array((size_t)d * d, sizeof(double), "bench R");
  double *t = kq_calloc_array((size_t)reps, sizeof(double), "bench times");
  kq_status st = h && r && t ? KQ_OK : KQ_ERR_OUT_OF_MEMORY;
  for (size_t i = 0; i < n && st == KQ_OK; i++)
    h[i] = kq_f32_to_f16((float)(uniform() * (1.0 + (double)(i % 7))));
  kq_matrix_view view = {h, KQ_DTYPE_F16, rows, d, d, 1.0};
  for (int k = -1; k < reps && st == KQ_OK; k++) {
    if ((st = interrupted(cancel))) break;
    double t0 = kq_now_seconds();
    st = kq_rfactor(&view, 1, r, d, NULL);
    if (k >= 0) t[k] = kq_now_seconds() - t0;
  }
  if (st == KQ_OK) {
    kq_bench_result res;
    result_fit("rfactor", rows, d, "f16", kq_median(t, reps), &res);
    if (!kq_bench_report_add(rep, &res)) st = KQ_ERR_OUT_OF_MEMORY;
  }
  free(h), free(r), free(t);
  return st;
}

/* kq_fit of a one-layer synthetic calibration file (H 32, Hk 8, d 128,
 * F16, ranks 64/64) written to a private temporary folder. */
static kq_status bench_layer_fit(int32_t tokens, int reps, const volatile int *cancel,
                                 kq_bench_report *rep) {
  const char *tmp = getenv("TMPDIR");
  char dir[512], calib[600], out[600];
  snprintf(dir, sizeof dir, "%s/kqsvd-bench-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(dir)) return kq_set_error(KQ_ERR_IO, "bench: cannot create a folder in %s", dir);
  snprintf(calib, sizeof calib, "%s/calib.safetensors", dir);
  snprintf(out, sizeof out, "%s/proj.safetensors", dir);
  kq_synth_params sp = kq_synth_default_params();
  sp.n_layers = 1;
  sp.n_heads = 32;
  sp.n_kv_heads = 8;
  sp.head_dim = 128;
  sp.hidden = 4096;
  sp.seq_len = 1024;
  sp.n_seqs = tokens / 1024;
  sp.dtype = KQ_DTYPE_F16;
  sp.with_wo = 0;
  kq_cli_note("bench", "writing a synthetic layer (%d tokens) for the fit timing", tokens);
  kq_status st = kq_synth(calib, &sp);
  double *t = kq_calloc_array((size_t)reps, sizeof(double), "bench times");
  if (!t && st == KQ_OK) st = KQ_ERR_OUT_OF_MEMORY;
  kq_fit_params fp = kq_fit_default_params();
  fp.rank_k = fp.rank_v = 64;
  fp.cancel = cancel;
  for (int k = 0; k < reps && st == KQ_OK; k++) { /* the synth write warmed the file */
    double t0 = kq_now_seconds();
    st = kq_fit(calib, out, &fp);
    t[k] = kq_now_seconds() - t0;
  }
  if (st == KQ_OK) {
    kq_bench_result r;
    result_fit("fit", sp.seq_len * sp.n_seqs, 128, "f16", kq_median(t, reps), &r);
    r.heads = 32, r.kv_heads = 8, r.rank_k = r.rank_v = 64;
    if (!kq_bench_report_add(rep, &r)) st = KQ_ERR_OUT_OF_MEMORY;
  }
  free(t);
  unlink(out);
  unlink(calib);
  rmdir(dir);
  return st;
}

kq_status kq_bench_fit(bool quick, int32_t reps, const volatile int *cancel, kq_bench_report *rep) {
  int r = reps > 0 ? reps : (quick ? 2 : 5);
  kq_cli_note("bench", "fitting: Jacobi SVD, R factor, one-layer fit");
  kq_status st = bench_svd(128, r, cancel, rep);
  if (st == KQ_OK && !quick) st = bench_svd(256, r, cancel, rep);
  if (st == KQ_OK) st = bench_rfactor(quick ? 16384 : 65536, r, cancel, rep);
  if (st == KQ_OK)
    st = bench_layer_fit(quick ? 4096 : 16384, quick ? 1 : (r < 3 ? r : 3), cancel, rep);
  return st;
}
