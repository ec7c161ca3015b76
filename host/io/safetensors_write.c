/*
 * safetensors_write.c — the safetensors writer. Output goes through
 * kq_output_file (a fresh O_EXCL temporary file beside `path`, fsynced and
 * renamed), so a reader never sees a half-written file, a failed or
 * cancelled write leaves nothing and no planted link is followed.
 *
 * The header is emitted by hand rather than through cJSON: cJSON prints
 * large integers in exponent notation, which other safetensors readers
 * reject as offsets.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kq_output_file.h"
#include "kq_safetensors.h"

/* Bytes written per write() call; the cancel flag is polled between them. */
#define KQ_ST_CHUNK ((size_t)8 << 20)

typedef struct st_out_tensor {
  char *name;
  kq_dtype dtype;
  int n_dims;
  int64_t shape[KQ_ST_MAX_DIMS];
  size_t nbytes;
  const void *data;
  kq_st_source_fn source; /* instead of data when non-NULL */
  void *source_user;
} st_out_tensor;

struct kq_st_writer {
  char *path;
  int n_meta, cap_meta;
  char **meta_keys, **meta_values;
  int n_tensors, cap_tensors;
  st_out_tensor *tensors;
};

/* A growable text buffer for the JSON header. */
typedef struct st_text {
  char *buf;
  size_t len, cap;
  bool failed;
} st_text;

static void text_reserve(st_text *t, size_t extra) {
  if (t->failed) return;
  size_t need;
  if (!kq_add_size(t->len, extra + 1, &need)) {
    t->failed = true;
    return;
  }
  if (need <= t->cap) return;
  size_t cap = t->cap ? t->cap : 256;
  while (cap < need) cap *= 2;
  char *p = realloc(t->buf, cap);
  if (!p) {
    t->failed = true;
    return;
  }
  t->buf = p;
  t->cap = cap;
}

static void text_printf(st_text *t, const char *fmt, ...) KQ_PRINTF(2, 3);
static void text_printf(st_text *t, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) {
    t->failed = true;
    return;
  }
  text_reserve(t, (size_t)n);
  if (t->failed) return;
  va_start(ap, fmt);
  vsnprintf(t->buf + t->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  t->len += (size_t)n;
}

/* A JSON string literal: quotes, backslashes and control bytes escaped,
 * other bytes (UTF-8) passed through. */
static void text_string(st_text *t, const char *s) {
  text_printf(t, "\"");
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\')
      text_printf(t, "\\%c", *p);
    else if (*p < 0x20)
      text_printf(t, "\\u%04x", *p);
    else
      text_printf(t, "%c", *p);
  }
  text_printf(t, "\"");
}

static char *dup_string(const char *s, const char *what) {
  size_t n = strlen(s) + 1;
  char *p = kq_malloc_array(n, 1, what);
  if (p) memcpy(p, s, n);
  return p;
}

kq_status kq_st_writer_create(const char *path, kq_st_writer **out_writer) {
  if (!out_writer) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "no place for the writer");
  *out_writer = NULL;
  kq_status st = kq_output_check(path, NULL);
  if (st != KQ_OK) return st;
  kq_st_writer *w = calloc(1, sizeof *w);
  if (!w) return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: cannot allocate writer", path);
  w->path = dup_string(path, "writer path");
  if (!w->path) {
    free(w);
    return kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s", path);
  }
  *out_writer = w;
  return KQ_OK;
}

static bool grow(void **array, int *cap, int count, size_t elem) {
  if (count < *cap) return true;
  int ncap = *cap ? *cap * 2 : 16;
  void *p = kq_malloc_array((size_t)ncap, elem, "safetensors writer");
  if (!p) return false;
  if (*array) memcpy(p, *array, (size_t)count * elem);
  free(*array);
  *array = p;
  *cap = ncap;
  return true;
}

kq_status kq_st_writer_meta(kq_st_writer *w, const char *key, const char *value) {
  if (!w || !key || !value)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "output file: metadata without a key or value");
  char *v = dup_string(value, "metadata value");
  if (!v) return kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s: metadata '%s'", w->path, key);
  for (int i = 0; i < w->n_meta; i++) {
    if (strcmp(w->meta_keys[i], key) == 0) { /* a repeated key replaces the value */
      free(w->meta_values[i]);
      w->meta_values[i] = v;
      return KQ_OK;
    }
  }
  int cap_k = w->cap_meta, cap_v = w->cap_meta;
  char *k = dup_string(key, "metadata key");
  if (!k || !grow((void **)&w->meta_keys, &cap_k, w->n_meta, sizeof(char *)) ||
      !grow((void **)&w->meta_values, &cap_v, w->n_meta, sizeof(char *)) || cap_k != cap_v) {
    free(k);
    free(v);
    return kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s: metadata '%s'", w->path, key);
  }
  w->cap_meta = cap_k;
  w->meta_keys[w->n_meta] = k;
  w->meta_values[w->n_meta] = v;
  w->n_meta++;
  return KQ_OK;
}

static kq_status add_tensor(kq_st_writer *w, const char *name, kq_dtype dtype, int n_dims,
                            const int64_t *shape, const void *data, kq_st_source_fn source,
                            void *source_user) {
  if (!w || !name || (n_dims > 0 && !shape))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "output file: a tensor without a name or data");
  const char *path = w->path;
  if (!*name || strcmp(name, "__metadata__") == 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: invalid tensor name '%s'", path, name);
  if (kq_dtype_size(dtype) == 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: tensor '%s': invalid dtype %d", path, name,
                        (int)dtype);
  if (n_dims < 0 || n_dims > KQ_ST_MAX_DIMS)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: tensor '%s': %d dimensions (0..%d)", path,
                        name, n_dims, KQ_ST_MAX_DIMS);
  size_t bytes = kq_dtype_size(dtype);
  for (int i = 0; i < n_dims; i++) {
    if (shape[i] < 0 || (uint64_t)shape[i] > ((uint64_t)1 << 53) ||
        !kq_mul_size(bytes, (size_t)shape[i], &bytes))
      return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: tensor '%s': invalid shape[%d] = %lld",
                          path, name, i, (long long)shape[i]);
  }
  if (bytes > 0 && !data && !source)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: tensor '%s': NULL data", path, name);
  for (int i = 0; i < w->n_tensors; i++)
    if (strcmp(w->tensors[i].name, name) == 0)
      return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: tensor '%s' added twice", path, name);
  if (!grow((void **)&w->tensors, &w->cap_tensors, w->n_tensors, sizeof *w->tensors))
    return kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s: tensor '%s'", path, name);
  st_out_tensor *t = &w->tensors[w->n_tensors];
  memset(t, 0, sizeof *t);
  t->name = dup_string(name, "tensor name");
  if (!t->name) return kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s: tensor '%s'", path, name);
  t->dtype = dtype;
  t->n_dims = n_dims;
  for (int i = 0; i < n_dims; i++) t->shape[i] = shape[i];
  t->nbytes = bytes;
  t->data = data;
  t->source = source;
  t->source_user = source_user;
  w->n_tensors++;
  return KQ_OK;
}

kq_status kq_st_writer_add(kq_st_writer *w, const char *name, kq_dtype dtype, int n_dims,
                           const int64_t *shape, const void *data) {
  return add_tensor(w, name, dtype, n_dims, shape, data, NULL, NULL);
}

kq_status kq_st_writer_add_source(kq_st_writer *w, const char *name, kq_dtype dtype, int n_dims,
                                  const int64_t *shape, kq_st_source_fn source, void *user) {
  if (!source)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "output file: tensor '%s' without a source",
                        name ? name : "?");
  return add_tensor(w, name, dtype, n_dims, shape, NULL, source, user);
}

/* Pulls a streamed tensor through one chunk-sized buffer. */
static kq_status write_source(kq_output_file *out, const st_out_tensor *t, unsigned char **chunk,
                              const volatile int *cancel) {
  if (!*chunk && t->nbytes > 0) {
    *chunk = kq_malloc_array(KQ_ST_CHUNK, 1, "tensor chunk");
    if (!*chunk) return KQ_ERR_OUT_OF_MEMORY;
  }
  kq_status st = KQ_OK;
  for (size_t done = 0; done < t->nbytes && st == KQ_OK; done += KQ_ST_CHUNK) {
    size_t n = t->nbytes - done < KQ_ST_CHUNK ? t->nbytes - done : KQ_ST_CHUNK;
    st = t->source(t->source_user, *chunk, n);
    if (st == KQ_OK) st = kq_output_write(out, *chunk, n, cancel);
  }
  return st;
}

/* The header JSON padded with spaces so the data section starts at a
 * multiple of 8 bytes from the start of the file. */
static kq_status build_header(const kq_st_writer *w, st_text *t) {
  text_printf(t, "{");
  bool first = true;
  if (w->n_meta > 0) {
    text_printf(t, "\"__metadata__\":{");
    for (int i = 0; i < w->n_meta; i++) {
      if (i) text_printf(t, ",");
      text_string(t, w->meta_keys[i]);
      text_printf(t, ":");
      text_string(t, w->meta_values[i]);
    }
    text_printf(t, "}");
    first = false;
  }
  uint64_t offset = 0;
  for (int i = 0; i < w->n_tensors; i++) {
    const st_out_tensor *o = &w->tensors[i];
    if (!first) text_printf(t, ",");
    first = false;
    text_string(t, o->name);
    text_printf(t, ":{\"dtype\":\"%s\",\"shape\":[", kq_dtype_name(o->dtype));
    for (int k = 0; k < o->n_dims; k++) text_printf(t, "%s%" PRId64, k ? "," : "", o->shape[k]);
    if (offset + o->nbytes < offset)
      return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: total tensor size overflows", w->path);
    text_printf(t, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", offset,
                offset + (uint64_t)o->nbytes);
    offset += o->nbytes;
  }
  text_printf(t, "}");
  while (!t->failed && (8 + t->len) % 8 != 0) text_printf(t, " ");
  if (t->failed)
    return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: cannot allocate the header", w->path);
  return KQ_OK;
}

kq_status kq_st_writer_commit(kq_st_writer *w, const volatile int *cancel) {
  if (!w) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "output file: nothing to write");
  st_text header = {0};
  kq_status st = build_header(w, &header);
  if (st != KQ_OK) {
    free(header.buf);
    return st;
  }
  kq_output_file out;
  st = kq_output_open(w->path, &out);
  if (st != KQ_OK) {
    free(header.buf);
    return st;
  }
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)header.len >> (8 * i));
  st = kq_output_write(&out, len8, 8, cancel);
  if (st == KQ_OK) st = kq_output_write(&out, header.buf, header.len, cancel);
  free(header.buf);
  unsigned char *chunk = NULL;
  for (int i = 0; st == KQ_OK && i < w->n_tensors; i++) {
    if (w->tensors[i].source)
      st = write_source(&out, &w->tensors[i], &chunk, cancel);
    else
      st = kq_output_write(&out, w->tensors[i].data, w->tensors[i].nbytes, cancel);
    if (st != KQ_OK && st != KQ_ERR_INTERRUPTED)
      kq_error_prefix(st, "tensor '%s'", w->tensors[i].name);
  }
  free(chunk);
  if (st == KQ_OK && cancel && *cancel)
    st = kq_set_error(KQ_ERR_INTERRUPTED, "%s: write cancelled", w->path);
  if (st == KQ_OK) return kq_output_commit(&out);
  kq_output_abort(&out);
  return st;
}

void kq_st_writer_destroy(kq_st_writer *w) {
  if (!w) return;
  for (int i = 0; i < w->n_meta; i++) {
    free(w->meta_keys[i]);
    free(w->meta_values[i]);
  }
  free(w->meta_keys);
  free(w->meta_values);
  for (int i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
  free(w->tensors);
  free(w->path);
  free(w);
}
