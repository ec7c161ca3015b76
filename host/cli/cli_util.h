/*
 * cli_util.h — small helpers every CLI command shares: strict number
 * parsing with messages that name the option, error reporting from the
 * library's status channel, SIGINT handling and a stderr progress line.
 */
#ifndef KQ_CLI_UTIL_H
#define KQ_CLI_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kqsvd.h"

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

/* Writes the folder that will hold the file `path` ("." when `path` names
 * none) to dir[cap] and returns whether it exists and is writable, so that a
 * long run does not end in a failed write. False when the path does not fit. */
bool kq_cli_output_folder_writable(const char *path, char *dir, size_t cap);

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

/* A kq_progress_fn drawing "stage [#####.....] done/total" on stderr when it
 * is a terminal, one line per stage change otherwise. user = command name. */
void kq_cli_progress(void *user, int32_t done, int32_t total, const char *stage);
/* Ends a progress line (newline on a terminal). */
void kq_cli_progress_end(void);

#endif
