/*
 * test_alloc_failures.c — host allocation failures inside the library are
 * checked. This executable defines malloc/calloc/realloc/posix_memalign/
 * aligned_alloc (which then serve every library loaded into it, libkqsvd and
 * libcjson included) and can make exactly the N-th allocation after arming
 * fail. For each scenario and N = 1, 2, ... a forked child arms failure N and
 * runs the scenario; the child must either succeed or fail with a status and
 * leave no output file, and must not crash. The loop ends when a run
 * completes without reaching allocation N (every allocation was tried).
 *
 * Scenarios (small, so the whole sweep takes seconds): projection load,
 * projection save, kq_fit (1 thread) on a tiny calibration file, host
 * kq_eval, and a cpu cache create/append/attend/destroy cycle.
 * Backend modules are loaded before the sweep (see make_inputs), so GPU
 * driver start-up is not part of it. Not built with sanitizers (they replace
 * malloc themselves).
 */
#include <dirent.h>
#include <errno.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rel_util.h"

/* ---- malloc with a fault at the N-th call ------------------------------ */

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static atomic_long g_countdown = 0; /* > 0: armed; the call that takes it to 0 fails */
static atomic_int g_fired = 0;

static int should_fail(void) {
  if (atomic_load_explicit(&g_countdown, memory_order_relaxed) <= 0) return 0;
  if (atomic_fetch_sub(&g_countdown, 1) == 1) {
    atomic_store(&g_fired, 1);
    errno = ENOMEM;
    return 1;
  }
  return 0;
}

void *malloc(size_t n) {
  return should_fail() ? NULL : __libc_malloc(n);
}
void *calloc(size_t n, size_t size) {
  return should_fail() ? NULL : __libc_calloc(n, size);
}
void *realloc(void *p, size_t n) {
  return should_fail() ? NULL : __libc_realloc(p, n);
}
void *aligned_alloc(size_t align, size_t n) {
  return should_fail() ? NULL : __libc_memalign(align, n);
}
void *memalign(size_t align, size_t n) {
  return should_fail() ? NULL : __libc_memalign(align, n);
}
int posix_memalign(void **out, size_t align, size_t n) {
  if (should_fail()) return ENOMEM;
  void *p = __libc_memalign(align, n);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}

/* ---- scenarios --------------------------------------------------------- */

static char g_dir[64], g_calib[128], g_proj[128], g_out[128];

/* 1 if the folder holds out.st or a temporary of it (called disarmed). */
static int out_exists(void) {
  DIR *d = opendir(g_dir);
  if (!d) return 1;
  int found = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) found |= strncmp(e->d_name, "out", 3) == 0;
  closedir(d);
  return found;
}

static kq_status sc_load(void) {
  kq_projections *p = NULL;
  kq_status st = kq_projections_load(g_proj, &p);
  kq_projections_destroy(p);
  return st;
}

static kq_status sc_save(void) {
  kq_projections *p = NULL;
  kq_status st = kq_projections_load(g_proj, &p);
  if (st == KQ_OK) st = kq_projections_save(p, g_out);
  kq_projections_destroy(p);
  return st;
}

static kq_status sc_fit(void) {
  kq_fit_params fp = kq_fit_default_params();
  fp.rank_k = 2;
  fp.rank_v = 2;
  fp.n_threads = 1;
  return kq_fit(g_calib, g_out, &fp);
}

static kq_status sc_eval(void) {
  kq_eval_params ep = kq_eval_default_params();
  ep.n_threads = 1;
  kq_eval_result *r = NULL;
  kq_status st = kq_eval(g_calib, g_proj, &ep, &r);
  kq_eval_result_destroy(r);
  return st;
}

static kq_status sc_cache(void) {
  kq_device *dev = NULL;
  kq_projections *p = NULL;
  kq_cache *c = NULL;
  kq_cache_params cp = kq_cache_default_params();
  cp.capacity = 16;
  float k[4 * 2 * 8], v[4 * 2 * 8], q[4 * 4 * 8], out[4 * 4 * 8];
  rel_fill(k, sizeof k / sizeof k[0], 1);
  rel_fill(v, sizeof v / sizeof v[0], 2);
  rel_fill(q, sizeof q / sizeof q[0], 3);
  kq_status st = kq_device_create("cpu", &dev);
  if (st == KQ_OK) st = kq_projections_load(g_proj, &p);
  if (st == KQ_OK) st = kq_cache_create(dev, p, &cp, &c);
  if (st == KQ_OK) st = kq_cache_append(c, 0, 4, k, v);
  if (st == KQ_OK) st = kq_cache_attend(c, 0, 4, q, KQ_OUTPUT_FULL, out);
  if (st == KQ_OK) st = kq_cache_attend(c, 0, 1, q, KQ_OUTPUT_LATENT, out);
  kq_cache_destroy(c);
  kq_projections_destroy(p);
  kq_device_destroy(dev);
  return st;
}

static const struct {
  const char *name;
  kq_status (*run)(void);
} g_scenarios[] = {
    {"projections_load", sc_load},
    {"projections_save", sc_save},
    {"fit", sc_fit},
    {"eval", sc_eval},
    {"cpu_cache_cycle", sc_cache},
};

/* Child exit codes. */
enum { CHILD_OK_UNFIRED = 10, CHILD_OK_FIRED = 11, CHILD_FAILED_CLEANLY = 12, CHILD_BAD = 13 };

static int child(int s, long n) {
  atomic_store(&g_countdown, n);
  kq_status st = g_scenarios[s].run();
  atomic_store(&g_countdown, 0);
  int fired = atomic_load(&g_fired);
  if (st != KQ_OK && out_exists()) {
    fprintf(stderr, "%s: allocation %ld failed: %s, but an output file was left behind\n",
            g_scenarios[s].name, n, kq_status_string(st));
    return CHILD_BAD;
  }
  if (st != KQ_OK && !fired) {
    fprintf(stderr, "%s: failed (%s: %s) without an injected fault\n", g_scenarios[s].name,
            kq_status_string(st), kq_last_error());
    return CHILD_BAD;
  }
  if (st != KQ_OK) return CHILD_FAILED_CLEANLY;
  return fired ? CHILD_OK_FIRED : CHILD_OK_UNFIRED;
}

static void make_inputs(void) {
  /* Load the backend modules here, before any fault is armed: their drivers
   * (lavapipe, PoCL: C++ and LLVM) abort on a failed allocation by design,
   * which is outside this library. The children inherit the registry. */
  int n_devices = 0;
  REL_OK(kq_device_count(&n_devices));
  snprintf(g_dir, sizeof g_dir, "/tmp/kq_rel_alloc_XXXXXX");
  REL_CHECK(mkdtemp(g_dir) != NULL, "mkdtemp");
  snprintf(g_calib, sizeof g_calib, "%s/calib.st", g_dir);
  snprintf(g_proj, sizeof g_proj, "%s/proj.st", g_dir);
  snprintf(g_out, sizeof g_out, "%s/out.st", g_dir);
  kq_synth_params sp = kq_synth_default_params();
  sp.n_layers = 2;
  sp.n_heads = 4;
  sp.n_kv_heads = 2;
  sp.head_dim = 8;
  sp.hidden = 16;
  sp.seq_len = 8;
  sp.n_seqs = 2;
  REL_OK(kq_synth(g_calib, &sp));
  kq_fit_params fp = kq_fit_default_params();
  fp.rank_k = 3;
  fp.rank_v = 3;
  fp.n_threads = 1;
  REL_OK(kq_fit(g_calib, g_proj, &fp));
}

int main(void) {
  make_inputs();
  int bad = 0;
  for (size_t s = 0; s < sizeof g_scenarios / sizeof g_scenarios[0]; s++) {
    long n = 1, failed_cleanly = 0, recovered = 0;
    for (;; n++) {
      REL_CHECK(n < 20000, "%s: more than 20000 allocations", g_scenarios[s].name);
      fflush(NULL);
      pid_t pid = fork();
      REL_CHECK(pid >= 0, "fork");
      if (pid == 0) _exit(child((int)s, n));
      int status = 0;
      REL_CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
      if (WIFSIGNALED(status)) {
        fprintf(stderr, "%s: signal %d when allocation %ld failed\n", g_scenarios[s].name,
                WTERMSIG(status), n);
        bad = 1;
        continue;
      }
      int code = WEXITSTATUS(status);
      unlink(g_out);
      if (code == CHILD_OK_UNFIRED) break;
      if (code == CHILD_FAILED_CLEANLY)
        failed_cleanly++;
      else if (code == CHILD_OK_FIRED)
        recovered++;
      else
        bad = 1;
    }
    printf("%s: %ld allocations, each failed once: %ld clean errors, %ld recovered\n",
           g_scenarios[s].name, n - 1, failed_cleanly, recovered);
  }
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
  return bad;
}
