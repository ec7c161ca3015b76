/*
 * cli_util.h — small helpers every CLI command shares: option parsing
 * (getopt_long, -q/-v), strict number parsing with messages that name the
 * option, one JSON printer, error reporting from the library's status
 * channel, SIGINT handling and a stderr progress line.
 */
#ifndef KQ_CLI_UTIL_H
#define KQ_CLI_UTIL_H

#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kqsvd.h"

/* Options every command takes, for its getopt_long tables: -h/--help is the
 * command's to handle ('h'); -q/--quiet and -v/--verbose are taken by
 * kq_cli_getopt itself. */
#define KQ_CLI_COMMON_SHORT "hqv"
/* clang-format off */
#define KQ_CLI_COMMON_LONG                                                                         \
  {"help", no_argument, NULL, 'h'},                                                                \
  {"quiet", no_argument, NULL, 'q'},                                                               \
  {"verbose", no_argument, NULL, 'v'}
/* clang-format on */

/* kq_cli_getopt's answer after it printed a usage error. */
#define KQ_CLI_OPT_ERROR (-2)

/* How much a command prints on stderr besides errors and its results. */
typedef enum kq_cli_verbosity {
  KQ_CLI_QUIET = 0,   /* -q: only errors, warnings and results */
  KQ_CLI_NORMAL = 1,  /* progress and what was written */
  KQ_CLI_VERBOSE = 2, /* -v: also the settings in effect and timings */
} kq_cli_verbosity;

/* The level set by the last parse (-q / -v); KQ_CLI_NORMAL before one. */
kq_cli_verbosity kq_cli_get_verbosity(void);

/* Starts a fresh parse (getopt's state is global and a process may run
 * several commands, as the fuzz harness does) and resets the verbosity to
 * normal. Call it before the first kq_cli_getopt of a command. */
void kq_cli_getopt_begin(void);

/* getopt_long over argv[0..argc) (argv[0] = command name) with the shared
 * conventions: --opt=value and --opt value, clustered short options, `--`
 * ends options, non-options are moved behind the options (read them from
 * argv[optind..argc) once it returns -1). -q and -v are consumed here.
 * Returns the option's value (optarg holds its argument), -1 at the end, or
 * KQ_CLI_OPT_ERROR after printing "kqsvd CMD: ..." naming an unknown option,
 * a missing value or a value given to a flag. */
int kq_cli_getopt(const char *cmd, int argc, char **argv, const char *shortopts,
                  const struct option *longopts);

/* Prints "kqsvd CMD: message" on stderr at normal verbosity or above. */
void kq_cli_note(const char *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Opens device `name` (kq_device_create). When it names a Vulkan or OpenCL
 * device and the kernel cache folder (kq_kernel_cache_dir) holds no compiled
 * kernels of that backend yet, first says on stderr (normal verbosity) that
 * this run compiles them, so the wait is not silent. */
kq_status kq_cli_device_create(const char *cmd, const char *name, kq_device **out_device);

/* Prints "kqsvd CMD: message" on stderr only with -v. */
void kq_cli_detail(const char *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Monotonic wall-clock seconds (differences only). */
double kq_cli_seconds(void);

/* Prints `root` on stdout as formatted JSON and a newline, the one JSON
 * formatting of every command, and deletes it (NULL = out of memory).
 * Returns 0, or 1 after "kqsvd CMD: out of memory writing JSON". */
struct cJSON;
int kq_cli_json_print(const char *cmd, struct cJSON *root);

/* Parses all of `text` as an integer in [lo, hi]; on failure prints
 * "kqsvd CMD: OPTION: ..." to stderr and returns false. */
bool kq_cli_parse_int(const char *cmd, const char *option, const char *text, long long lo,
                      long long hi, long long *out);
/* Parses all of `text` as a finite double in [lo, hi]. */
bool kq_cli_parse_double(const char *cmd, const char *option, const char *text, double lo,
                         double hi, double *out);

/* Parses a latent storage name, "f32" or "f16"; on failure prints
 * "kqsvd CMD: OPTION: ..." to stderr and returns false. */
bool kq_cli_parse_storage(const char *cmd, const char *option, const char *text, kq_storage *out);

/* True when `text` is a comma-separated list of non-empty items ("1k,4k"):
 * not empty, no leading or trailing comma, no empty item ("1,,2", ","). */
bool kq_cli_list_well_formed(const char *text);

/* Adds `value` to the cJSON object `obj` under `key`, as null when it is not
 * finite (NaN and infinities are not JSON; a reader then sees "no value").
 * Returns false when out of memory. */
struct cJSON;
bool kq_cli_json_add_number(struct cJSON *obj, const char *key, double value);

/* Prints "kqsvd CMD: <status string>: <kq_last_error()>" to stderr; returns 1. */
int kq_cli_fail(const char *cmd, kq_status status);

/* Prints "kqsvd CMD: message" to stderr and a hint to run --help; returns 2. */
int kq_cli_usage_error(const char *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Installs SIGINT/SIGTERM handlers that set the returned flag (pass it as
 * a kq_*_params.cancel). A second signal restores the default action. */
const volatile int *kq_cli_cancel_flag(void);

/* A kq_progress_fn; user = command name. Silent with -q. On a terminal it
 * redraws "cmd: stage [####....] done/total rate/s ETA m:ss" on stderr; off a
 * terminal it prints a line when a stage starts and ends and every
 * $KQSVD_PROGRESS_INTERVAL seconds between (default 5; 0 = every update). */
void kq_cli_progress(void *user, int32_t done, int32_t total, const char *stage);
/* kq_cli_progress with a `note` after the rate (NULL: none) that may change
 * on every call without starting a new stage (ppl's running perplexity). */
void kq_cli_progress_note(void *user, int32_t done, int32_t total, const char *stage,
                          const char *note);
/* Ends a progress line (newline on a terminal). */
void kq_cli_progress_end(void);

#endif
