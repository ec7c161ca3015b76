/* The per-thread error channel behind kq_last_error(). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "kq_common.h"

#define KQ_ERROR_CAPACITY 1024

static _Thread_local char g_error[KQ_ERROR_CAPACITY];

kq_status kq_set_error(kq_status status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_error, sizeof g_error, fmt, ap);
  va_end(ap);
  return status;
}

/* g_error = a + b + c (each may be empty), cut to the capacity. */
static void set_joined(const char *a, const char *b, const char *c) {
  char out[KQ_ERROR_CAPACITY];
  size_t n = 0;
  const char *parts[3] = {a, b, c};
  for (int i = 0; i < 3; i++) {
    size_t m = strnlen(parts[i], sizeof out - 1 - n);
    memcpy(out + n, parts[i], m);
    n += m;
  }
  out[n] = '\0';
  memcpy(g_error, out, n + 1);
}

kq_status kq_error_prefix(kq_status status, const char *fmt, ...) {
  char prefix[KQ_ERROR_CAPACITY];
  char old[KQ_ERROR_CAPACITY];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(old, g_error, sizeof old);
  /* The message already names what the prefix starts with (usually the
   * file): say it once, "X: context: rest" rather than "X: context: X: rest". */
  const char *sep = strstr(old, ": ");
  size_t head = sep ? (size_t)(sep - old) : 0;
  if (head > 0 && strncmp(prefix, old, head) == 0 &&
      (prefix[head] == '\0' || (prefix[head] == ':' && prefix[head + 1] == ' '))) {
    set_joined(prefix, ": ", old + head + 2);
    return status;
  }
  set_joined(prefix, *old ? ": " : "", old);
  return status;
}

kq_status kq_error_context(kq_status status, const char *path, const char *fmt, ...) {
  char ctx[KQ_ERROR_CAPACITY];
  char old[KQ_ERROR_CAPACITY];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ctx, sizeof ctx, fmt, ap);
  va_end(ap);
  memcpy(old, g_error, sizeof old);
  size_t n = strlen(path);
  const char *rest =
      strncmp(old, path, n) == 0 && old[n] == ':' && old[n + 1] == ' ' ? old + n + 2 : old;
  char tail[KQ_ERROR_CAPACITY];
  set_joined(ctx, ": ", rest);
  memcpy(tail, g_error, sizeof tail);
  set_joined(path, ": ", tail);
  return status;
}

void kq_clear_error(void) {
  g_error[0] = '\0';
}

const char *kq_last_error(void) {
  return g_error;
}

const char *kq_status_string(kq_status status) {
  switch (status) {
  case KQ_OK: return "ok";
  case KQ_ERR_INVALID_ARGUMENT: return "invalid argument";
  case KQ_ERR_IO: return "I/O error";
  case KQ_ERR_FORMAT: return "malformed file";
  case KQ_ERR_NUMERIC: return "non-finite value";
  case KQ_ERR_NO_CONVERGENCE: return "no convergence";
  case KQ_ERR_OUT_OF_MEMORY: return "out of host memory";
  case KQ_ERR_DEVICE_MEMORY: return "out of device memory";
  case KQ_ERR_DEVICE: return "device error";
  case KQ_ERR_NOT_FOUND: return "not found";
  case KQ_ERR_UNSUPPORTED: return "unsupported";
  case KQ_ERR_CAPACITY: return "capacity exceeded";
  case KQ_ERR_ABI: return "backend ABI mismatch";
  case KQ_ERR_INTERRUPTED: return "interrupted";
  }
  return "unknown status";
}

const char *kq_version(void) {
#define KQ_STR2(x) #x
#define KQ_STR(x) KQ_STR2(x)
  return KQ_STR(KQ_VERSION_MAJOR) "." KQ_STR(KQ_VERSION_MINOR) "." KQ_STR(KQ_VERSION_PATCH);
}

/* Index of `name` in names[0, n), or -1. */
static int name_index(const char *const *names, int n, const char *name) {
  for (int i = 0; name && i < n; i++)
    if (strcmp(name, names[i]) == 0) return i;
  return -1;
}

static const char *const g_method_names[] = {"kq-svd", "k-svd", "eigen", "quant"};
static const char *const g_layout_names[] = {"per-head", "joint"};
#define KQ_COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

const char *kq_method_name(kq_method method) {
  return (unsigned)method < (unsigned)KQ_COUNT(g_method_names) ? g_method_names[method] : NULL;
}

const char *kq_layout_name(kq_layout layout) {
  return (unsigned)layout < (unsigned)KQ_COUNT(g_layout_names) ? g_layout_names[layout] : NULL;
}

kq_status kq_method_parse(const char *name, kq_method *out_method) {
  if (!out_method)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "method name: the output pointer is NULL");
  int i = name_index(g_method_names, KQ_COUNT(g_method_names), name);
  if (i < 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "unknown method '%s' (expected kq-svd, k-svd, eigen or quant)",
                        name ? name : "");
  *out_method = (kq_method)i;
  return KQ_OK;
}

kq_status kq_layout_parse(const char *name, kq_layout *out_layout) {
  if (!out_layout)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "layout name: the output pointer is NULL");
  int i = name_index(g_layout_names, KQ_COUNT(g_layout_names), name);
  if (i < 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "unknown layout '%s' (expected per-head or joint)",
                        name ? name : "");
  *out_layout = (kq_layout)i;
  return KQ_OK;
}
