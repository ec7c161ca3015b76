/* Shared CLI helpers: parsing, error printing, signals, progress. */
#include "cli_util.h"

#include "kqsvd_backend.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static kq_cli_verbosity g_verbosity = KQ_CLI_NORMAL;

kq_cli_verbosity kq_cli_get_verbosity(void) {
  return g_verbosity;
}

/* The option text a getopt error is about: "--name" (without "=value") or "-c". */
static void bad_option(char **argv, int argc, char *buf, size_t cap) {
  const char *a = optind - 1 >= 0 && optind - 1 < argc ? argv[optind - 1] : "";
  if (!strncmp(a, "--", 2) && strlen(a) > 2) {
    size_t n = strcspn(a, "=");
    snprintf(buf, cap, "%.*s", (int)(n < cap ? n : cap - 1), a);
  } else if (optopt > 0) {
    snprintf(buf, cap, "-%c", optopt);
  } else {
    snprintf(buf, cap, "%s", a);
  }
}

void kq_cli_getopt_begin(void) {
  g_verbosity = KQ_CLI_NORMAL;
  optind = 0; /* glibc: 0 re-initializes getopt's global state completely */
}

int kq_cli_getopt(const char *cmd, int argc, char **argv, const char *shortopts,
                  const struct option *longopts) {
  opterr = 0;
  char spec[128];
  snprintf(spec, sizeof spec, ":%s", shortopts); /* ':' reports a missing value apart */
  for (;;) {
    int c = getopt_long(argc, argv, spec, longopts, NULL);
    if (c == 'q') {
      g_verbosity = KQ_CLI_QUIET;
    } else if (c == 'v') {
      g_verbosity = KQ_CLI_VERBOSE;
    } else if (c == ':' || c == '?') {
      char name[64];
      bad_option(argv, argc, name, sizeof name);
      const char *what = "unknown argument '%s'";
      if (c == ':') {
        what = "%s needs a value";
      } else if (name[0] == '-' && name[1] == '-') {
        /* getopt_long takes unique prefixes (--rat for --ratio): say which failed */
        size_t len = strlen(name + 2);
        int prefix_of = 0, exact = 0;
        for (const struct option *o = longopts; o && o->name; o++) {
          if (!strcmp(o->name, name + 2)) exact = 1;
          if (!strcmp(o->name, name + 2) && o->has_arg == no_argument) what = "%s takes no value";
          prefix_of += !strncmp(o->name, name + 2, len);
        }
        if (prefix_of > 1 && !exact) what = "ambiguous option '%s' (spell it out)";
      }
      kq_cli_usage_error(cmd, what, name);
      return KQ_CLI_OPT_ERROR;
    } else {
      return c;
    }
  }
}

static void vnote(const char *cmd, const char *fmt, va_list ap) {
  kq_cli_progress_end();
  fprintf(stderr, "kqsvd %s: ", cmd);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

void kq_cli_note(const char *cmd, const char *fmt, ...) {
  if (g_verbosity < KQ_CLI_NORMAL) return;
  va_list ap;
  va_start(ap, fmt);
  vnote(cmd, fmt, ap);
  va_end(ap);
}

void kq_cli_detail(const char *cmd, const char *fmt, ...) {
  if (g_verbosity < KQ_CLI_VERBOSE) return;
  va_list ap;
  va_start(ap, fmt);
  vnote(cmd, fmt, ap);
  va_end(ap);
}

int kq_cli_json_print(const char *cmd, cJSON *root) {
  char *text = root ? cJSON_Print(root) : NULL;
  cJSON_Delete(root);
  if (!text) {
    fprintf(stderr, "kqsvd %s: out of memory writing JSON\n", cmd);
    return 1;
  }
  printf("%s\n", text);
  cJSON_free(text);
  return 0;
}

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

bool kq_cli_list_well_formed(const char *text) {
  if (!text || !*text || text[0] == ',' || text[strlen(text) - 1] == ',') return false;
  return strstr(text, ",,") == NULL;
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
static double g_stage_start, g_last_print;

double kq_cli_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double progress_interval(void) {
  const char *e = getenv("KQSVD_PROGRESS_INTERVAL");
  char *end = NULL;
  double v = e && *e ? strtod(e, &end) : 5.0;
  return end && *end == '\0' && isfinite(v) && v >= 0 ? v : 5.0;
}

/* "12.3/s ETA 0:42" from the progress of the current stage, or "" too early. */
static void rate_text(int32_t done, int32_t total, double elapsed, char *buf, size_t cap) {
  buf[0] = '\0';
  if (done <= 0 || elapsed <= 0) return;
  double rate = done / elapsed;
  long eta = (long)((total - done) / rate + 0.5);
  if (done >= total)
    snprintf(buf, cap, "%.3g/s in %.1f s", rate, elapsed);
  else
    snprintf(buf, cap, "%.3g/s ETA %ld:%02ld", rate, eta / 60, eta % 60);
}

void kq_cli_progress(void *user, int32_t done, int32_t total, const char *stage) {
  kq_cli_progress_note(user, done, total, stage, NULL);
}

void kq_cli_progress_note(void *user, int32_t done, int32_t total, const char *stage,
                          const char *note) {
  const char *cmd = user ? (const char *)user : "kqsvd";
  if (!stage) stage = "";
  if (!note) note = "";
  if (g_verbosity < KQ_CLI_NORMAL) return;
  double now = kq_cli_seconds();
  int new_stage = strncmp(stage, g_progress_stage, sizeof g_progress_stage - 1) != 0 || done == 0;
  if (new_stage) {
    g_stage_start = now;
    g_last_print = -1e300;
    snprintf(g_progress_stage, sizeof g_progress_stage, "%s", stage);
  }
  int finished = done >= total;
  char rate[64];
  rate_text(done, total, now - g_stage_start, rate, sizeof rate);
  if (isatty(STDERR_FILENO)) {
    if (!finished && !new_stage && now - g_last_print < 0.1) return; /* no flicker */
    int width = 24, filled = total > 0 ? (int)((long long)width * done / total) : 0;
    char bar[64], line[512];
    for (int i = 0; i < width; i++) bar[i] = i < filled ? '#' : '.';
    bar[width] = '\0';
    snprintf(line, sizeof line, "%s: %s [%s] %d/%d %s%s%s", cmd, stage, bar, done, total, rate,
             note[0] ? "  " : "", note);
    /* One row of the terminal: a wrapped line would not be redrawn by \r. */
    struct winsize ws;
    int cols = ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 ? ws.ws_col : 80;
    if (cols > (int)sizeof line) cols = (int)sizeof line;
    fprintf(stderr, "\r%-*.*s", cols - 1, cols - 1, line);
    g_progress_open = 1;
    if (finished) kq_cli_progress_end();
  } else {
    if (!new_stage && !finished && now - g_last_print < progress_interval()) return;
    fprintf(stderr, "%s: %s %d/%d%s%s%s%s\n", cmd, stage, done, total, rate[0] ? " " : "", rate,
            note[0] ? ", " : "", note);
  }
  g_last_print = now;
  fflush(stderr);
}

void kq_cli_progress_end(void) {
  if (g_progress_open) fputc('\n', stderr);
  g_progress_open = 0;
}

/* 1 when `dir` holds a file named PREFIX...SUFFIX. */
static int dir_has(const char *dir, const char *prefix, const char *suffix) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  int found = 0;
  size_t np = strlen(prefix), ns = strlen(suffix);
  for (struct dirent *e; !found && (e = readdir(d));) {
    size_t n = strlen(e->d_name);
    found = n >= np + ns && !strncmp(e->d_name, prefix, np) && !strcmp(e->d_name + n - ns, suffix);
  }
  closedir(d);
  return found;
}

kq_status kq_cli_device_create(const char *cmd, const char *name, kq_device **out_device) {
  const char *n = name && *name ? name : getenv("KQSVD_DEVICE");
  /* The file names the Vulkan and OpenCL backends give their caches; the
   * check comes first because OpenCL builds its programs as it opens. */
  int vk = n && !strncmp(n, "vulkan", 6), cl = n && !strncmp(n, "opencl", 6);
  char dir[1024];
  if ((vk || cl) && kq_kernel_cache_dir(dir, sizeof dir) &&
      !dir_has(dir, vk ? "vulkan-" : "ocl-", vk ? ".pcache" : ".bin"))
    kq_cli_note(cmd,
                "%s: first use: compiling its kernels, which can take a minute (kept in %s for "
                "later runs)",
                n, dir);
  return kq_device_create(name, out_device);
}
