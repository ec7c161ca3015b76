/*
 * The kqsvd CLI's synth / fit / eval commands as a user runs them: exit
 * codes, messages naming the file and tensor, no output file after a
 * failure or Ctrl-C, the exact SPEC §3 JSON keys, and device eval agreeing
 * with the host eval.
 */
#include <dirent.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/wait.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "fit/fit_testutil.h"

#include "cli_testutil.h"

static void test_help_and_version(void **state) {
  (void)state;
  char *out = NULL;
  assert_int_equal(run(&out, NULL, "--version"), 0);
  assert_non_null(strstr(out, kq_version()));
  free(out);
  const char *cmds[3] = {"fit", "eval", "synth"};
  for (int i = 0; i < 3; i++) {
    assert_int_equal(run(&out, NULL, "%s --help", cmds[i]), 0);
    char want[32];
    snprintf(want, sizeof want, "usage: kqsvd %s", cmds[i]);
    assert_non_null(strstr(out, want));
    free(out);
  }
}

static void test_fit_usage_errors_exit_2(void **state) {
  (void)state;
  const char *calib = path_in("u.st");
  assert_int_equal(run(NULL, NULL, "synth '%s' --layers 1 --seq-len 16 --n-seqs 1", calib), 0);
  const char *bad[] = {"",
                       "--rank-k 4",
                       "--rank-k 4 --rank-v 4 --epsilon 0.1",
                       "--ratio 0.5 --epsilon 0.1",
                       "--ratio 2",
                       "--method svd --ratio 0.5",
                       "--rank-k 4 --rank-v 4 --bogus"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char *err = NULL;
    assert_int_equal(run(NULL, &err, "fit '%s' -o '%s' %s", calib, path_in("u_p.st"), bad[i]), 2);
    assert_non_null(strstr(err, "kqsvd fit"));
    free(err);
    assert_false(t_exists(path_in("u_p.st")));
  }
  assert_int_equal(run(NULL, NULL, "fit '%s' --ratio 0.5", calib), 2); /* no -o */
}

static void test_fit_on_garbage_file_fails_naming_it(void **state) {
  (void)state;
  const char *calib = path_in("garbage.st"), *proj = path_in("garbage_p.st");
  FILE *f = fopen(calib, "wb");
  fputs("\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", f);
  fclose(f);
  char *err = NULL;
  assert_int_equal(run(NULL, &err, "fit '%s' -o '%s' --ratio 0.5", calib, proj), 1);
  assert_non_null(strstr(err, calib));
  free(err);
  assert_int_equal(count_files("garbage_p"), 0);
}

static void test_fit_on_nan_file_names_file_and_tensor(void **state) {
  (void)state;
  tcalib c = {.L = 2, .H = 2, .Hk = 1, .T = 16, .d = 4};
  tcalib_random(&c, 1.0);
  c.q[1][3] = NAN;
  const char *calib = path_in("nan.st"), *proj = path_in("nan_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  char *err = NULL;
  assert_int_equal(run(NULL, &err, "fit '%s' -o '%s' --rank-k 2 --rank-v 2", calib, proj), 1);
  assert_non_null(strstr(err, calib));
  assert_non_null(strstr(err, "layers.1.q"));
  free(err);
  assert_int_equal(count_files("nan_p"), 0);
  tcalib_free(&c);
}

static void test_heads_not_multiple_of_kv_heads_fails(void **state) {
  (void)state;
  tcalib c = {.L = 1, .H = 3, .Hk = 2, .T = 16, .d = 4};
  tcalib_random(&c, 1.0);
  const char *calib = path_in("gqa.st"), *proj = path_in("gqa_p.st");
  assert_int_equal(tcalib_write(&c, calib), KQ_OK);
  char *err = NULL;
  assert_int_equal(run(NULL, &err, "fit '%s' -o '%s' --rank-k 2 --rank-v 2", calib, proj), 1);
  assert_non_null(strstr(err, "layers.0.q"));
  assert_non_null(strstr(err, "multiple"));
  free(err);
  assert_int_equal(count_files("gqa_p"), 0);
  tcalib_free(&c);
}

static const char *const layer_keys[] = {"layer", "rank_k", "rank_v",  "key",    "query",
                                         "value", "logits", "softmax", "output", "value_out"};

/* obj has exactly the keys names[0..n). */
static void assert_keys(const cJSON *obj, const char *const *names, int n) {
  assert_true(cJSON_IsObject(obj));
  assert_int_equal(cJSON_GetArraySize(obj), n);
  for (int i = 0; i < n; i++) assert_non_null(cJSON_GetObjectItemCaseSensitive(obj, names[i]));
}

static cJSON *eval_json(const char *calib, const char *proj, const char *extra) {
  char *out = NULL;
  assert_int_equal(run(&out, NULL, "eval '%s' '%s' --json %s", calib, proj, extra), 0);
  cJSON *root = cJSON_Parse(out);
  free(out);
  assert_non_null(root);
  return root;
}

static void test_eval_json_has_exactly_the_spec_keys(void **state) {
  (void)state;
  const char *calib = path_in("j.st"), *proj = path_in("j_p.st");
  assert_int_equal(run(NULL, NULL,
                       "synth '%s' --layers 2 --heads 4 --kv-heads 2 --head-dim 16 "
                       "--hidden 32 --seq-len 32 --n-seqs 2",
                       calib),
                   0);
  assert_int_equal(run(NULL, NULL, "fit '%s' -o '%s' --rank-k 4 --rank-v 4", calib, proj), 0);
  cJSON *root = eval_json(calib, proj, "");
  const char *top[3] = {"method", "layers", "mean"};
  assert_keys(root, top, 3);
  assert_string_equal(cJSON_GetObjectItem(root, "method")->valuestring, "kq-svd");
  const cJSON *layers = cJSON_GetObjectItem(root, "layers");
  assert_int_equal(cJSON_GetArraySize(layers), 2);
  for (int l = 0; l < 2; l++) {
    const cJSON *o = cJSON_GetArrayItem(layers, l);
    assert_keys(o, layer_keys, 10);
    assert_int_equal(cJSON_GetObjectItem(o, "layer")->valueint, l);
    assert_int_equal(cJSON_GetObjectItem(o, "rank_k")->valueint, 4);
    for (int k = 3; k < 10; k++) {
      double v = cJSON_GetObjectItem(o, layer_keys[k])->valuedouble;
      assert_true(v >= 0 && v < 1);
    }
  }
  assert_keys(cJSON_GetObjectItem(root, "mean"), layer_keys + 3, 7);
  cJSON_Delete(root);
  /* The table: a header and a mean row. */
  char *out = NULL;
  assert_int_equal(run(&out, NULL, "eval '%s' '%s'", calib, proj), 0);
  assert_non_null(strstr(out, "logits"));
  assert_non_null(strstr(out, "mean"));
  free(out);
}

/* T < d and all-zero tensors both fit (documented: finite results, not an
 * error) and eval to finite numbers. */
static void test_short_and_all_zero_data_fit_to_finite_results(void **state) {
  (void)state;
  for (int zero = 0; zero < 2; zero++) {
    tcalib c = {.L = 1, .H = 2, .Hk = 1, .T = zero ? 16 : 3, .d = 8};
    tcalib_random(&c, 1.0);
    if (zero) {
      memset(c.k[0], 0, (size_t)c.T * c.d * sizeof(double));
      memset(c.q[0], 0, 2 * (size_t)c.T * c.d * sizeof(double));
      memset(c.v[0], 0, (size_t)c.T * c.d * sizeof(double));
    }
    const char *calib = path_in("deg.st"), *proj = path_in("deg_p.st");
    assert_int_equal(tcalib_write(&c, calib), KQ_OK);
    assert_int_equal(run(NULL, NULL, "fit '%s' -o '%s' --rank-k 2 --rank-v 2", calib, proj), 0);
    cJSON *root = eval_json(calib, proj, "");
    const cJSON *o = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "layers"), 0);
    for (int k = 3; k < 9; k++) {
      const cJSON *v = cJSON_GetObjectItem(o, layer_keys[k]);
      assert_true(cJSON_IsNumber(v) && isfinite(v->valuedouble));
      if (zero) assert_true(v->valuedouble == 0.0);
    }
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "value_out")));
    cJSON_Delete(root);
    tcalib_free(&c);
  }
}

static void test_sigint_during_fit_leaves_no_file(void **state) {
  (void)state;
  const char *calib = path_in("big.st"), *proj = path_in("big_p.st");
  assert_int_equal(run(NULL, NULL,
                       "synth '%s' --layers 3 --heads 4 --kv-heads 2 --head-dim 128 "
                       "--seq-len 1024 --n-seqs 16 --dtype f16 --no-wo",
                       calib),
                   0);
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(fds[1], 2);
    close(fds[0]);
    close(fds[1]);
    execl(KQ_CLI_PATH, "kqsvd", "fit", calib, "-o", proj, "--rank-k", "8", "--rank-v", "8",
          "--threads", "1", (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  /* Wait for the first progress line (fitting has started), then Ctrl-C. */
  char buf[4096];
  size_t n = 0;
  ssize_t got;
  while (n < sizeof buf - 1 && (got = read(fds[0], buf + n, sizeof buf - 1 - n)) > 0) {
    n += (size_t)got;
    buf[n] = '\0';
    if (strstr(buf, " 0/3")) break;
  }
  assert_non_null(strstr(buf, " 0/3"));
  /* The handler is installed before kq_fit starts, which prints "0/3". */
  kill(pid, SIGINT);
  while ((got = read(fds[0], buf, sizeof buf)) > 0) {
  }
  close(fds[0]);
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 130);
  assert_int_equal(count_files("big_p"), 0); /* neither the file nor a temporary */
}

/* Device eval (the cpu backend's append + attend) against the host's
 * float64 attention: outputs agree to 1e-4 relative with F32 storage; the
 * R-factor metrics and softmax are the host's in both. */
static void test_eval_on_cpu_device_agrees_with_host(void **state) {
  (void)state;
  const char *calib = path_in("dev.st"), *proj = path_in("dev_p.st");
  assert_int_equal(run(NULL, NULL,
                       "synth '%s' --layers 2 --heads 4 --kv-heads 2 --head-dim 32 "
                       "--hidden 64 --seq-len 64 --n-seqs 2",
                       calib),
                   0);
  assert_int_equal(run(NULL, NULL, "fit '%s' -o '%s' --rank-k 8 --rank-v 8", calib, proj), 0);
  cJSON *host = eval_json(calib, proj, "");
  cJSON *dev = eval_json(calib, proj, "--device cpu --storage f32");
  for (int l = 0; l < 2; l++) {
    const cJSON *a = cJSON_GetArrayItem(cJSON_GetObjectItem(host, "layers"), l);
    const cJSON *b = cJSON_GetArrayItem(cJSON_GetObjectItem(dev, "layers"), l);
    for (int k = 3; k < 10; k++) {
      double x = cJSON_GetObjectItem(a, layer_keys[k])->valuedouble;
      double y = cJSON_GetObjectItem(b, layer_keys[k])->valuedouble;
      assert_true(x > 0);
      if (fabs(x - y) > 1e-4 * x)
        fprintf(stderr, "%s: host %.9g device %.9g\n", layer_keys[k], x, y);
      assert_true(fabs(x - y) <= 1e-4 * x);
    }
  }
  cJSON_Delete(host);
  cJSON_Delete(dev);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_help_and_version),
      cmocka_unit_test(test_fit_usage_errors_exit_2),
      cmocka_unit_test(test_fit_on_garbage_file_fails_naming_it),
      cmocka_unit_test(test_fit_on_nan_file_names_file_and_tensor),
      cmocka_unit_test(test_heads_not_multiple_of_kv_heads_fails),
      cmocka_unit_test(test_eval_json_has_exactly_the_spec_keys),
      cmocka_unit_test(test_short_and_all_zero_data_fit_to_finite_results),
      cmocka_unit_test(test_sigint_during_fit_leaves_no_file),
      cmocka_unit_test(test_eval_on_cpu_device_agrees_with_host),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
