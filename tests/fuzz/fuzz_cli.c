/*
 * fuzz_cli.c — libFuzzer harness for the CLI argument parsers of `fit`,
 * `eval`, `synth` and `info`.
 *
 * Input: NUL-separated strings; the first names the command, the rest are
 * its arguments (at most 64). The commands run for real, in a private temp
 * folder holding a tiny valid calibration file (c.st) and projection file
 * (p.st), except that the heavy library entry points are replaced at link
 * time (-Wl,--wrap): __wrap_kq_fit / __wrap_kq_eval / __wrap_kq_synth check
 * the contract the parser must guarantee (non-NULL paths, exactly one rank
 * mode, values in the documented ranges) and then fail with KQ_ERR_IO or,
 * for eval, return a small fake result so the printers run too; nothing is
 * ever written. `info` reads the real files (they are tiny).
 *
 * Properties checked on every input: no crash / sanitizer report / leak; the
 * exit code is 0, 1 or 2 (commands.h); the folder holds only c.st and p.st
 * afterwards (a failed or parse-only run leaves no file).
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kq_common.h"
#include "io/kq_safetensors.h"
#include "kqsvd.h"

int kq_cmd_fit(int argc, char **argv);
int kq_cmd_eval(int argc, char **argv);
int kq_cmd_info(int argc, char **argv);
int kq_cmd_synth(int argc, char **argv);

/* ---- link-time replacements for the heavy calls ------------------------ */

kq_status __wrap_kq_fit(const char *calib, const char *out, const kq_fit_params *p);
kq_status __wrap_kq_fit_ex(const char *calib, const char *out, const kq_fit_params *p,
                           kq_fit_summary *summary);
kq_status __wrap_kq_eval(const char *calib, const char *proj, const kq_eval_params *p,
                         kq_eval_result **out);
kq_status __wrap_kq_synth(const char *out, const kq_synth_params *p);
const volatile int *__wrap_kq_cli_cancel_flag(void);

static void require(int ok, const char *what) {
  if (!ok) {
    fprintf(stderr, "fuzz_cli: parser broke its contract: %s\n", what);
    abort();
  }
}

kq_status __wrap_kq_fit(const char *calib, const char *out, const kq_fit_params *p) {
  require(calib && out && p, "fit: NULL path or params");
  require(kq_method_name(p->method) != NULL, "fit: invalid method");
  int modes = (p->rank_k > 0 || p->rank_v > 0) + (p->epsilon > 0) + (p->ratio > 0) + (p->bytes > 0);
  require(modes == 1, "fit: not exactly one rank mode");
  require((p->rank_k > 0) == (p->rank_v > 0), "fit: only one of rank_k / rank_v");
  require(p->ratio <= 1.0 && p->epsilon < 1.0 && p->bytes <= 1.0 && p->alpha > 0,
          "fit: value out of range");
  require(kq_layout_name(p->layout) != NULL, "fit: invalid layout");
  require(p->n_threads >= 0, "fit: negative thread count");
  return kq_set_error(KQ_ERR_IO, "%s: parse-only fuzzing build", calib);
}

kq_status __wrap_kq_fit_ex(const char *calib, const char *out, const kq_fit_params *p,
                           kq_fit_summary *summary) {
  (void)summary;
  return __wrap_kq_fit(calib, out, p);
}

kq_status __wrap_kq_eval(const char *calib, const char *proj, const kq_eval_params *p,
                         kq_eval_result **out) {
  require(calib && proj && p && out, "eval: NULL path or params");
  require(p->max_seqs >= 0 && p->n_threads >= 0, "eval: negative count");
  require(p->storage == KQ_STORAGE_F32 || p->storage == KQ_STORAGE_F16, "eval: storage");
  if (calib[0] != 'c') return kq_set_error(KQ_ERR_IO, "%s: parse-only fuzzing build", calib);
  kq_eval_result *r = calloc(1, sizeof *r);
  if (r) r->layers = calloc(2, sizeof *r->layers);
  if (!r || !r->layers) abort();
  r->n_layers = 2;
  r->seqs_used = 1;
  r->seqs_total = 2;
  r->has_wo = proj[0] == 'p';
  r->mean.layer = -1;
  r->layers[1].layer = 1;
  *out = r;
  return KQ_OK;
}

kq_status __wrap_kq_synth(const char *out, const kq_synth_params *p) {
  require(out && p, "synth: NULL path or params");
  require(p->n_layers >= 1 && p->n_heads >= 1 && p->n_kv_heads >= 1 && p->head_dim >= 2,
          "synth: non-positive size");
  require(p->n_heads % p->n_kv_heads == 0, "synth: heads not a multiple of kv heads");
  require(p->head_dim % 2 == 0, "synth: odd head_dim");
  require(p->dtype == KQ_DTYPE_F32 || p->dtype == KQ_DTYPE_F16 || p->dtype == KQ_DTYPE_BF16,
          "synth: dtype");
  return kq_set_error(KQ_ERR_IO, "%s: parse-only fuzzing build", out);
}

const volatile int *__wrap_kq_cli_cancel_flag(void) {
  static volatile int never = 0; /* no signal handlers inside the fuzzer */
  return &never;
}

/* ---- the temp folder ---------------------------------------------------- */

static char g_dir[64];

static void make_files(void) {
  float k[2 * 4 * 2], q[2 * 4 * 2], v[2 * 4 * 2];
  for (int i = 0; i < 16; i++) k[i] = q[i] = v[i] = (float)(i % 5) - 2.0f;
  const int64_t shape[3] = {2, 4, 2};
  kq_st_writer *w = NULL;
  if (kq_st_writer_create("c.st", &w) || kq_st_writer_meta(w, "seq_len", "4") ||
      kq_st_writer_add(w, "layers.0.k", KQ_DTYPE_F32, 3, shape, k) ||
      kq_st_writer_add(w, "layers.0.q", KQ_DTYPE_F32, 3, shape, q) ||
      kq_st_writer_add(w, "layers.0.v", KQ_DTYPE_F32, 3, shape, v) || kq_st_writer_commit(w, NULL))
    abort();
  kq_st_writer_destroy(w);
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = 1,
                              .n_heads = 2,
                              .n_kv_heads = 2,
                              .head_dim = 2,
                              .rope = KQ_ROPE_POST,
                              .rope_layout = KQ_ROPE_PAIRS,
                              .rope_theta = 10000.0f};
  kq_projections *p = NULL;
  if (kq_projections_create_identity(&info, &p) || kq_projections_save(p, "p.st")) abort();
  kq_projections_destroy(p);
}

static void remove_folder(void) {
  if (chdir(g_dir) == 0) {
    unlink("c.st");
    unlink("p.st");
  }
  if (chdir("/") == 0) rmdir(g_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  const char *tmp = getenv("TMPDIR");
  snprintf(g_dir, sizeof g_dir, "%s/kq_fuzz_cli_XXXXXX", tmp && strlen(tmp) < 40 ? tmp : "/tmp");
  if (!mkdtemp(g_dir) || chdir(g_dir) != 0) abort();
  make_files();
  atexit(remove_folder);
  return 0;
}

static void check_folder(void) {
  DIR *d = opendir(".");
  if (!d) abort();
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    const char *n = e->d_name;
    if (strcmp(n, ".") && strcmp(n, "..") && strcmp(n, "c.st") && strcmp(n, "p.st")) {
      fprintf(stderr, "fuzz_cli: a run left '%s' behind\n", n);
      abort();
    }
  }
  closedir(d);
}

/* ---- the harness ------------------------------------------------------- */

#define MAX_ARGS 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 4096) return 0;
  char *text = malloc(size + 1);
  if (!text) abort();
  memcpy(text, data, size);
  text[size] = '\0';
  char *argv[MAX_ARGS + 1];
  int argc = 0;
  for (size_t at = 0; at <= size && argc < MAX_ARGS;) {
    argv[argc++] = text + at;
    at += strlen(text + at) + 1;
  }
  argv[argc] = NULL;
  int rc = -1;
  if (!strcmp(argv[0], "fit"))
    rc = kq_cmd_fit(argc, argv);
  else if (!strcmp(argv[0], "eval"))
    rc = kq_cmd_eval(argc, argv);
  else if (!strcmp(argv[0], "synth"))
    rc = kq_cmd_synth(argc, argv);
  else if (!strcmp(argv[0], "info"))
    rc = kq_cmd_info(argc, argv);
  free(text);
  if (rc != -1 && rc != 0 && rc != 1 && rc != 2) {
    fprintf(stderr, "fuzz_cli: exit code %d outside {0, 1, 2}\n", rc);
    abort();
  }
  check_folder();
  return 0;
}
