/*
 * The command-line conventions users know from getopt_long tools and
 * llama.cpp, checked on the built `kqsvd`: --opt=value, `--` ends options,
 * short aliases, -q / -v, progress lines off a terminal, --version, `help
 * CMD`, and `fit --json`. (capture / generate / ppl need the model:
 * cli_json_model_test.py.)
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "kqsvd.h"

#include "cli_testutil.h"

/* A small calibration file: 4 layers, head_dim 32. */
static const char *calib(void) {
  static char path[512];
  if (!path[0]) {
    snprintf(path, sizeof path, "%s/c.st", g_dir);
    assert_int_equal(run(NULL, NULL,
                         "synth '%s' --layers 4 --heads 4 --kv-heads 2 --head-dim 32 --hidden 64 "
                         "--seq-len 32 --n-seqs 2",
                         path),
                     0);
  }
  return path;
}

/* Reads a whole file; NULL when it cannot be read. */
static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = calloc((size_t)n + 1, 1);
  if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
    free(b);
    b = NULL;
  }
  fclose(f);
  *len = (size_t)n;
  return b;
}

static void test_value_after_equals_sign_is_the_same_as_after_a_space(void **state) {
  (void)state;
  const char *c = calib();
  assert_int_equal(run(NULL, NULL, "fit '%s' --output=eq.st --ratio=0.5 --threads=1 --seed=3", c),
                   0);
  assert_int_equal(run(NULL, NULL, "fit '%s' --output sp.st --ratio 0.5 --threads 1 --seed 3", c),
                   0);
  size_t n1, n2;
  char *a = slurp(path_in("eq.st"), &n1), *b = slurp(path_in("sp.st"), &n2);
  assert_non_null(a);
  assert_non_null(b);
  assert_int_equal(n1, n2);
  assert_memory_equal(a, b, n1);
  free(a);
  free(b);
}

static void test_option_errors_are_usage_errors_naming_the_option(void **state) {
  (void)state;
  const char *c = calib();
  struct {
    const char *args, *message;
  } cases[] = {
      {"fit '%s' -o x.st --ratio", "kqsvd fit: --ratio needs a value"},
      {"fit '%s' -o x.st --ratio=0.5 --json=yes", "kqsvd fit: --json takes no value"},
      {"fit '%s' -o x.st --ratio=0.5 --bogus=1", "kqsvd fit: unknown argument '--bogus'"},
      {"fit '%s' -o x.st --ratio=2", "kqsvd fit: --ratio: 2 is out of range"},
      {"eval '%s' -t", "kqsvd eval: -t needs a value"},
      {"fit '%s' -o x.st --r 4", "kqsvd fit: ambiguous option '--r'"}, /* --rank-k/v, --ratio */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *err = NULL;
    assert_int_equal(run(NULL, &err, cases[i].args, c), 2);
    if (!strstr(err, cases[i].message))
      fail_msg("%s: stderr lacks '%s':\n%s", cases[i].args, cases[i].message, err);
    free(err);
    assert_int_equal(access(path_in("x.st"), F_OK), -1);
  }
}

static void test_double_dash_ends_the_options(void **state) {
  (void)state;
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "cp '%s' '%s/-dash.st'", calib(), g_dir);
  assert_int_equal(system(cmd), 0);
  char *err = NULL;
  /* Without `--`, "-dash.st" reads as options and is refused. */
  assert_int_equal(run(NULL, &err, "fit -o d.st --ratio 0.5 -dash.st"), 2);
  assert_non_null(strstr(err, "unknown argument"));
  free(err);
  assert_int_equal(access(path_in("d.st"), F_OK), -1);
  assert_int_equal(run(NULL, NULL, "fit -o d.st --ratio 0.5 -- -dash.st"), 0);
  assert_int_equal(access(path_in("d.st"), F_OK), 0);
  /* After `--` an option spelling is a file name too. */
  assert_int_equal(run(NULL, &err, "info -- --json"), 1);
  assert_non_null(strstr(err, "--json"));
  free(err);
}

/* Each short alias reaches its long option: a bad value names the option. */
static void test_short_aliases_reach_their_long_options(void **state) {
  (void)state;
  struct {
    const char *args, *message;
  } cases[] = {
      {"fit c.st -o x.st --ratio 0.5 -t 0", "--threads: 0 is out of range"},
      {"eval c.st p.st -t 0", "--threads: 0 is out of range"},
      {"ppl -m m.gguf -f t.txt -c 1", "--ctx: 1 is out of range"},
      {"ppl -m m.gguf -f t.txt -b 0", "--batch: 0 is out of range"},
      {"ppl -m m.gguf -f t.txt -t 0", "--threads: 0 is out of range"},
      {"generate -m m.gguf -p hi -n 0", "-n: 0 is out of range"},
      {"generate -m m.gguf -p hi -t 0", "--threads: 0 is out of range"},
      {"capture -m m.gguf -f t.txt -o x.st -t 0", "--threads: 0 is out of range"},
      {"bench -c 1,,2", "--context"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *err = NULL;
    assert_int_equal(run(NULL, &err, "%s", cases[i].args), 2);
    if (!strstr(err, cases[i].message))
      fail_msg("%s: stderr lacks '%s':\n%s", cases[i].args, cases[i].message, err);
    free(err);
  }
  /* -m / -p / -f give the files: the missing model or text is named. */
  char *err = NULL;
  assert_int_equal(run(NULL, &err, "generate -m /nonexistent/m.gguf -p hi -n 1"), 1);
  assert_non_null(strstr(err, "/nonexistent/m.gguf"));
  free(err);
  assert_int_equal(run(NULL, &err, "ppl -m /nonexistent/m.gguf -f /nonexistent/t.txt"), 1);
  assert_non_null(strstr(err, "/nonexistent/t.txt"));
  free(err);
  /* -o gives synth its output. */
  assert_int_equal(run(NULL, NULL, "synth -o s.st --layers 1 --seq-len 8 --n-seqs 1"), 0);
  assert_int_equal(access(path_in("s.st"), F_OK), 0);
}

static void test_quiet_prints_only_results_and_verbose_adds_detail(void **state) {
  (void)state;
  const char *c = calib();
  setenv("KQSVD_PROGRESS_INTERVAL", "0", 1);
  char *err = NULL;
  assert_int_equal(run(NULL, &err, "fit '%s' -o n.st --rank-k 4 --rank-v 4", c), 0);
  assert_non_null(strstr(err, "fit layers"));
  assert_non_null(strstr(err, "wrote"));
  free(err);
  assert_int_equal(run(NULL, &err, "fit -q '%s' -o q.st --rank-k 4 --rank-v 4", c), 0);
  assert_null(strstr(err, "fit layers"));
  assert_null(strstr(err, "wrote"));
  assert_non_null(strstr(err, "bytes 0.125 of F16")); /* the result: 2·4 of 2·32 dims */
  free(err);
  assert_int_equal(run(NULL, &err, "synth --quiet q2.st --layers 1 --seq-len 8 --n-seqs 1"), 0);
  assert_string_equal(err, "");
  free(err);
  assert_int_equal(run(NULL, &err, "fit '%s' -o v.st --rank-k 4 --rank-v 4 -v -t 1", c), 0);
  assert_non_null(strstr(err, "threads 1"));
  assert_non_null(strstr(err, "fit layers"));
  free(err);
  unsetenv("KQSVD_PROGRESS_INTERVAL");
}

static void test_progress_off_a_terminal_prints_lines_between_first_and_last(void **state) {
  (void)state;
  const char *c = calib();
  setenv("KQSVD_PROGRESS_INTERVAL", "0", 1); /* every update, not every 5 s */
  char *err = NULL;
  assert_int_equal(run(NULL, &err, "fit '%s' -o g.st --rank-k 4 --rank-v 4", c), 0);
  unsetenv("KQSVD_PROGRESS_INTERVAL");
  const char *want[] = {"fit: fit layers 0/4\n", "fit: fit layers 1/4 ", "fit: fit layers 2/4 ",
                        "fit: fit layers 3/4 ", "fit: fit layers 4/4 "};
  const char *at = err;
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    const char *hit = strstr(at, want[i]);
    if (!hit) fail_msg("progress lacks '%s' in order:\n%s", want[i], err);
    at = hit + 1;
  }
  assert_non_null(strstr(err, "/s")); /* a rate */
  assert_null(strchr(err, '\r'));     /* no terminal redraws in a file */
  free(err);
}

static void test_version_names_commit_backends_and_compiler(void **state) {
  (void)state;
  char *out = NULL;
  assert_int_equal(run(&out, NULL, "--version"), 0);
  char first[64];
  snprintf(first, sizeof first, "kqsvd %s\n", kq_version());
  assert_true(!strncmp(out, first, strlen(first)));
  const char *keys[] = {"\ncommit:   ", "\nbackends: ", "\ncompiler: "};
  for (int i = 0; i < 3; i++) {
    const char *v = strstr(out, keys[i]);
    if (!v) fail_msg("--version lacks '%s':\n%s", keys[i] + 1, out);
    v += strlen(keys[i]);
    assert_true(*v != '\n' && *v != '\0'); /* a value follows */
  }
  assert_non_null(strstr(strstr(out, "backends:"), "cpu"));
  free(out);
}

static void test_help_command_prints_the_command_help(void **state) {
  (void)state;
  const char *cmds[] = {"synth",       "fit",   "eval",    "info", "devices",
                        "conformance", "bench", "capture", "ppl",  "generate"};
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
    char *a = NULL, *b = NULL;
    assert_int_equal(run(&a, NULL, "help %s", cmds[i]), 0);
    assert_int_equal(run(&b, NULL, "%s --help", cmds[i]), 0);
    assert_string_equal(a, b);
    char want[64];
    snprintf(want, sizeof want, "usage: kqsvd %s", cmds[i]);
    assert_non_null(strstr(a, want));
    free(a);
    free(b);
  }
  char *err = NULL;
  assert_int_equal(run(NULL, &err, "help nosuchcommand"), 2);
  assert_non_null(strstr(err, "nosuchcommand"));
  free(err);
}

static void test_fit_json_is_the_summary(void **state) {
  (void)state;
  char *out = NULL, *err = NULL;
  assert_int_equal(run(&out, &err, "fit '%s' -o j.st --rank-k 8 --rank-v 6 --json -q", calib()), 0);
  assert_string_equal(err, ""); /* -q: the JSON is the whole output */
  cJSON *j = cJSON_Parse(out);
  if (!j) fail_msg("fit --json is not JSON:\n%s", out);
  assert_string_equal(cJSON_GetObjectItem(j, "method")->valuestring, "kq-svd");
  assert_string_equal(cJSON_GetObjectItem(j, "layout")->valuestring, "per-head");
  assert_non_null(strstr(cJSON_GetObjectItem(j, "output")->valuestring, "j.st"));
  assert_true(cJSON_GetObjectItem(j, "mean_rank_k")->valuedouble == 8.0);
  assert_true(cJSON_GetObjectItem(j, "mean_rank_v")->valuedouble == 6.0);
  /* F16 latents, (8 + 6) of 2·32 dims per kv head */
  assert_true(fabs(cJSON_GetObjectItem(j, "fraction_of_f16")->valuedouble - 14.0 / 64.0) < 1e-9);
  const char *errs[] = {"predicted_error_k", "predicted_error_v"};
  for (int i = 0; i < 2; i++) {
    double e = cJSON_GetObjectItem(j, errs[i])->valuedouble;
    assert_true(e > 0 && e < 1);
  }
  cJSON_Delete(j);
  free(out);
  free(err);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_value_after_equals_sign_is_the_same_as_after_a_space),
      cmocka_unit_test(test_option_errors_are_usage_errors_naming_the_option),
      cmocka_unit_test(test_double_dash_ends_the_options),
      cmocka_unit_test(test_short_aliases_reach_their_long_options),
      cmocka_unit_test(test_quiet_prints_only_results_and_verbose_adds_detail),
      cmocka_unit_test(test_progress_off_a_terminal_prints_lines_between_first_and_last),
      cmocka_unit_test(test_version_names_commit_backends_and_compiler),
      cmocka_unit_test(test_help_command_prints_the_command_help),
      cmocka_unit_test(test_fit_json_is_the_summary),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
