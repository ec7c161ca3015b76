/*
 * cli_testutil.h — what the CLI tests share: a private temp folder (g_dir,
 * made by setup, removed by teardown) and run(), which runs the built
 * `kqsvd` (KQ_CLI_PATH) in it the way a user's shell would.
 * Include after <cmocka.h>.
 */
#ifndef KQ_CLI_TESTUTIL_H
#define KQ_CLI_TESTUTIL_H

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static char g_dir[256];

/* Runs `kqsvd ARGS` through the shell, in the test folder, with stdout/stderr
 * captured; returns the exit code. *out / *err (may be NULL) receive the
 * texts (free them). */
static inline int run(char **out, char **err, const char *fmt, ...) {
  char args[2048], cmd[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(args, sizeof args, fmt, ap);
  va_end(ap);
  snprintf(cmd, sizeof cmd, "cd '%s' && '%s' %s >'%s/stdout' 2>'%s/stderr'", g_dir, KQ_CLI_PATH,
           args, g_dir, g_dir);
  int rc = system(cmd);
  const char *names[2] = {"stdout", "stderr"};
  char **dst[2] = {out, err};
  for (int i = 0; i < 2; i++) {
    if (!dst[i]) continue;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", g_dir, names[i]);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *dst[i] = calloc((size_t)n + 1, 1);
    assert_int_equal(fread(*dst[i], 1, (size_t)n, f), (size_t)n);
    fclose(f);
  }
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
}

static inline const char *path_in(const char *name) {
  static char buf[8][512];
  static int i;
  char *p = buf[i++ % 8];
  snprintf(p, 512, "%s/%s", g_dir, name);
  return p;
}

/* Number of directory entries whose name starts with `prefix`. */
static inline int count_files(const char *prefix) {
  DIR *d = opendir(g_dir);
  int n = 0;
  for (struct dirent *e; d && (e = readdir(d));)
    if (!strncmp(e->d_name, prefix, strlen(prefix))) n++;
  if (d) closedir(d);
  return n;
}

static inline int setup(void **state) {
  (void)state;
  snprintf(g_dir, sizeof g_dir, "%s/kqcli_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  return mkdtemp(g_dir) ? 0 : -1;
}

static inline int teardown(void **state) {
  (void)state;
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

#endif /* KQ_CLI_TESTUTIL_H */
