/* Shared CLI helpers: parsing, error printing, signals, progress. */
#include "cli_util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

bool kq_cli_parse_int(const char *cmd, const char *option, const char *text, long long lo,
                      long long hi, long long *out) {
  char *end = NULL;
  errno = 0;
  long long v = text ? strtoll(text, &end, 10) : 0;
  if (!text || !*text || *end || errno) {
    fprintf(stderr, "kqsvd %s: %s: '%s' is not an integer\n", cmd, option, text ? text : "");
    return false;
  }
  if (v < lo || v > hi) {
    fprintf(stderr, "kqsvd %s: %s: %lld is out of range [%lld, %lld]\n", cmd, option, v, lo, hi);
    return false;
  }
  *out = v;
  return true;
}

bool kq_cli_json_add_number(cJSON *obj, const char *key, double value) {
  return (isfinite(value) ? cJSON_AddNumberToObject(obj, key, value)
                          : cJSON_AddNullToObject(obj, key)) != NULL;
}

bool kq_cli_parse_double(const char *cmd, const char *option, const char *text, double lo,
                         double hi, double *out) {
  char *end = NULL;
  errno = 0;
  double v = text ? strtod(text, &end) : 0;
  if (!text || !*text || *end || errno || !isfinite(v)) {
    fprintf(stderr, "kqsvd %s: %s: '%s' is not a finite number\n", cmd, option, text ? text : "");
    return false;
  }
  if (v < lo || v > hi) {
    fprintf(stderr, "kqsvd %s: %s: %g is out of range [%g, %g]\n", cmd, option, v, lo, hi);
    return false;
  }
  *out = v;
  return true;
}

bool kq_cli_parse_storage(const char *cmd, const char *option, const char *text, kq_storage *out) {
  if (text && !strcmp(text, "f32")) {
    *out = KQ_STORAGE_F32;
    return true;
  }
  if (text && !strcmp(text, "f16")) {
    *out = KQ_STORAGE_F16;
    return true;
  }
  fprintf(stderr, "kqsvd %s: %s: '%s' (expected f32 or f16)\n", cmd, option, text ? text : "");
  return false;
}

int kq_cli_fail(const char *cmd, kq_status status) {
  kq_cli_progress_end();
  const char *msg = kq_last_error();
  fprintf(stderr, "kqsvd %s: %s%s%s\n", cmd, kq_status_string(status), *msg ? ": " : "", msg);
  return 1;
}

int kq_cli_usage_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "kqsvd %s: ", cmd);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n(see 'kqsvd %s --help')\n", cmd);
  return 2;
}

static volatile sig_atomic_t g_cancel;
static volatile int g_cancel_int;

static void on_signal(int sig) {
  g_cancel = 1;
  g_cancel_int = 1;
  signal(sig, SIG_DFL); /* a second Ctrl-C ends the process the usual way */
}

const volatile int *kq_cli_cancel_flag(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  return &g_cancel_int;
}

static int g_progress_open;
static char g_progress_stage[64];

void kq_cli_progress(void *user, int32_t done, int32_t total, const char *stage) {
  const char *cmd = user ? (const char *)user : "kqsvd";
  if (!stage) stage = "";
  if (isatty(STDERR_FILENO)) {
    int width = 30, filled = total > 0 ? (int)((long long)width * done / total) : 0;
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < filled ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr, "\r%s: %-24.24s [%s] %d/%d", cmd, stage, bar, done, total);
    g_progress_open = 1;
    if (done >= total) kq_cli_progress_end();
  } else if (strcmp(stage, g_progress_stage) != 0 || done >= total || done == 0) {
    fprintf(stderr, "%s: %s %d/%d\n", cmd, stage, done, total);
  }
  snprintf(g_progress_stage, sizeof g_progress_stage, "%s", stage);
  fflush(stderr);
}

void kq_cli_progress_end(void) {
  if (g_progress_open) fputc('\n', stderr);
  g_progress_open = 0;
}
