/*
 * safetensors_read.c — the safetensors reader: maps a file and validates
 * every byte of its header before any tensor is handed out.
 *
 * A file downloaded from anywhere must never crash us, so nothing in the
 * header is trusted: the header length is checked against the file size
 * and a cap, numbers must be exact non-negative integers, byte sizes are
 * computed with overflow checks, offsets must lie inside the data section
 * and tensors may neither overlap nor share a name.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "kq_safetensors.h"

/* Largest header we accept; the biggest real checkpoints are a few MB. */
#define KQ_ST_MAX_HEADER ((uint64_t)100 << 20)
/* cJSON keeps numbers as doubles: integers above 2^53 are not exact. */
#define KQ_ST_MAX_EXACT ((double)(1ull << 53))

struct kq_st_file {
  char *path;
  unsigned char *map;
  size_t map_size;
  int count;
  kq_st_tensor *tensors; /* data-offset order */
  int *by_name;          /* indices into tensors, sorted by name */
  void **copies;         /* aligned copies of misaligned tensors (or NULL) */
  int meta_count;
  char **meta_keys;
  char **meta_values;
};

typedef struct st_entry {
  char *name;
  kq_dtype dtype;
  int n_dims;
  int64_t shape[KQ_ST_MAX_DIMS];
  uint64_t n_elements, nbytes, begin, end;
} st_entry;

static char *dup_string(const char *s, const char *what) {
  size_t n = strlen(s) + 1;
  char *p = kq_malloc_array(n, 1, what);
  if (p) memcpy(p, s, n);
  return p;
}

/* Exact non-negative integer below 2^53, or false. */
static bool json_uint(const cJSON *item, uint64_t *out) {
  if (!cJSON_IsNumber(item)) return false;
  double v = item->valuedouble;
  if (!isfinite(v) || v < 0.0 || v > KQ_ST_MAX_EXACT || floor(v) != v) return false;
  *out = (uint64_t)v;
  return true;
}

static kq_status parse_tensor(const char *path, const cJSON *item, uint64_t data_size,
                              st_entry *e) {
  const char *name = item->string;
  if (!cJSON_IsObject(item))
    return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': header entry is not a JSON object", path,
                        name);
  const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
  const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
  const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
  if (!dtype) return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': no \"dtype\"", path, name);
  if (!shape) return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': no \"shape\"", path, name);
  if (!offsets)
    return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': no \"data_offsets\"", path, name);
  if (!cJSON_IsString(dtype))
    return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': \"dtype\" is not a string", path, name);
  if (!kq_dtype_parse(dtype->valuestring, &e->dtype))
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: tensor '%s': unsupported dtype \"%.32s\" (expected F64, F32, F16, "
                        "BF16, I64, I32, I8 or U8)",
                        path, name, dtype->valuestring);
  if (!cJSON_IsArray(shape))
    return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': \"shape\" is not an array", path, name);
  int n_dims = cJSON_GetArraySize(shape);
  if (n_dims > KQ_ST_MAX_DIMS)
    return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': %d dimensions (at most %d supported)",
                        path, name, n_dims, KQ_ST_MAX_DIMS);
  e->n_dims = n_dims;
  size_t elements = 1;
  int k = 0;
  const cJSON *dim;
  cJSON_ArrayForEach(dim, shape) {
    uint64_t v;
    if (!json_uint(dim, &v))
      return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer",
                          path, name, k);
    e->shape[k++] = (int64_t)v;
    if (v > SIZE_MAX || !kq_mul_size(elements, (size_t)v, &elements))
      return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': element count of the shape overflows",
                          path, name);
  }
  size_t bytes;
  if (!kq_mul_size(elements, kq_dtype_size(e->dtype), &bytes))
    return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': byte size of the shape overflows", path,
                        name);
  e->n_elements = elements;
  e->nbytes = bytes;
  if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2 ||
      !json_uint(cJSON_GetArrayItem(offsets, 0), &e->begin) ||
      !json_uint(cJSON_GetArrayItem(offsets, 1), &e->end))
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: tensor '%s': \"data_offsets\" is not [begin, end] with "
                        "non-negative integers",
                        path, name);
  if (e->begin > e->end)
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: tensor '%s': data_offsets go backwards (begin %llu > end %llu)", path,
                        name, (unsigned long long)e->begin, (unsigned long long)e->end);
  if (e->end > data_size)
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: tensor '%s': data_offsets [%llu, %llu] outside the data section "
                        "(%llu bytes)",
                        path, name, (unsigned long long)e->begin, (unsigned long long)e->end,
                        (unsigned long long)data_size);
  if (e->end - e->begin != e->nbytes)
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: tensor '%s': shape and dtype give %llu bytes but data_offsets span "
                        "%llu",
                        path, name, (unsigned long long)e->nbytes,
                        (unsigned long long)(e->end - e->begin));
  e->name = dup_string(name, "safetensors tensor name");
  return e->name ? KQ_OK : kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s", path);
}

static kq_status parse_metadata(kq_st_file *f, const cJSON *meta) {
  const char *path = f->path;
  if (!cJSON_IsObject(meta))
    return kq_set_error(KQ_ERR_FORMAT, "%s: \"__metadata__\" is not a JSON object", path);
  int n = cJSON_GetArraySize(meta);
  f->meta_keys = kq_calloc_array((size_t)n + 1, sizeof(char *), "safetensors metadata");
  f->meta_values = kq_calloc_array((size_t)n + 1, sizeof(char *), "safetensors metadata");
  if (!f->meta_keys || !f->meta_values) return kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s", path);
  const cJSON *item;
  cJSON_ArrayForEach(item, meta) {
    if (!cJSON_IsString(item))
      return kq_set_error(KQ_ERR_FORMAT, "%s: metadata '%s': value is not a string", path,
                          item->string);
    for (int i = 0; i < f->meta_count; i++)
      if (strcmp(f->meta_keys[i], item->string) == 0)
        return kq_set_error(KQ_ERR_FORMAT, "%s: metadata '%s': key appears twice", path,
                            item->string);
    int i = f->meta_count;
    f->meta_keys[i] = dup_string(item->string, "safetensors metadata key");
    f->meta_values[i] = f->meta_keys[i] ? dup_string(item->valuestring, "metadata value") : NULL;
    if (!f->meta_values[i]) {
      free(f->meta_keys[i]);
      f->meta_keys[i] = NULL;
      return kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s", path);
    }
    f->meta_count++;
  }
  return KQ_OK;
}

static int cmp_offset(const void *a, const void *b) {
  const st_entry *x = a, *y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;
  return strcmp(x->name, y->name);
}

/* Merge sort of tensor indices by name (C11 qsort has no context
 * argument). tmp holds n ints. */
static void sort_by_name(const kq_st_tensor *t, int *idx, int *tmp, int n) {
  if (n < 2) return;
  int half = n / 2;
  sort_by_name(t, idx, tmp, half);
  sort_by_name(t, idx + half, tmp, n - half);
  int i = 0, j = half, k = 0;
  while (i < half && j < n)
    tmp[k++] = strcmp(t[idx[i]].name, t[idx[j]].name) <= 0 ? idx[i++] : idx[j++];
  while (i < half) tmp[k++] = idx[i++];
  while (j < n) tmp[k++] = idx[j++];
  memcpy(idx, tmp, (size_t)n * sizeof *tmp);
}

/* Builds the name index and rejects duplicate names. */
static kq_status index_names(kq_st_file *f) {
  f->by_name = kq_malloc_array((size_t)f->count + 1, sizeof(int), "safetensors name index");
  int *tmp = kq_malloc_array((size_t)f->count + 1, sizeof(int), "safetensors name index");
  if (!f->by_name || !tmp) {
    free(tmp);
    return kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s", f->path);
  }
  for (int i = 0; i < f->count; i++) f->by_name[i] = i;
  sort_by_name(f->tensors, f->by_name, tmp, f->count);
  free(tmp);
  for (int i = 1; i < f->count; i++)
    if (strcmp(f->tensors[f->by_name[i - 1]].name, f->tensors[f->by_name[i]].name) == 0)
      return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': name appears twice in the header",
                          f->path, f->tensors[f->by_name[i]].name);
  return KQ_OK;
}

/* The numbers of a safetensors header (shapes, data offsets) are plain
 * integers. cJSON reads 2.0 and 2e0 as 2, so the raw text is scanned before
 * parsing for a number literal with a fraction or exponent; the error names
 * the tensor (the last key at depth 1) and the literal. A leading '-' is
 * left to the shape checks. */
static kq_status check_integer_literals(const char *path, const char *json, size_t len) {
  bool in_string = false;
  int depth = 0;
  size_t str_start = 0, key = 0, key_len = 0;
  for (size_t i = 0; i < len; i++) {
    char c = json[i];
    if (in_string) {
      if (c == '\\') {
        i++;
      } else if (c == '"') {
        in_string = false;
        if (depth == 1) {
          key = str_start;
          key_len = i - str_start;
        }
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
      str_start = i + 1;
    } else if (c == '{' || c == '[') {
      depth++;
    } else if (c == '}' || c == ']') {
      depth--;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      size_t start = i;
      bool plain = true;
      while (i + 1 < len && json[i + 1] && strchr("0123456789.eE+-", json[i + 1])) {
        i++;
        if (json[i] < '0' || json[i] > '9') plain = false;
      }
      if (!plain)
        return kq_set_error(KQ_ERR_FORMAT,
                            "%s: tensor '%.*s': number '%.*s' in the header is not a plain "
                            "integer",
                            path, (int)(key_len < 200 ? key_len : 200), json + key,
                            (int)(i + 1 - start < 40 ? i + 1 - start : 40), json + start);
    }
  }
  return KQ_OK;
}

static kq_status parse_header(kq_st_file *f, const char *json, size_t len, uint64_t data_size) {
  const char *path = f->path;
  const char *end = NULL;
  kq_status lit = check_integer_literals(path, json, len);
  if (lit != KQ_OK) return lit;
  cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
  if (!root) {
    /* On failure cJSON points `end` at the error (its global error pointer
     * is not thread-safe). */
    size_t at = end && end >= json ? (size_t)(end - json) : 0;
    if (at > len) at = len;
    return kq_set_error(KQ_ERR_FORMAT, "%s: header is not valid JSON (near byte %zu of %zu)", path,
                        at, len);
  }
  /* Only whitespace (the writer's padding) may follow the JSON value. */
  for (const char *p = end; p && p < json + len; p++) {
    if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
      cJSON_Delete(root);
      return kq_set_error(KQ_ERR_FORMAT, "%s: header has trailing bytes after the JSON object",
                          path);
    }
  }
  kq_status st = KQ_OK;
  st_entry *entries = NULL;
  int n = 0;
  if (!cJSON_IsObject(root)) {
    st = kq_set_error(KQ_ERR_FORMAT, "%s: header is not a JSON object", path);
    goto done;
  }
  int total = cJSON_GetArraySize(root);
  entries = kq_calloc_array((size_t)total + 1, sizeof *entries, "safetensors header");
  if (!entries) {
    st = kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s", path);
    goto done;
  }
  const cJSON *item;
  bool have_meta = false;
  cJSON_ArrayForEach(item, root) {
    if (strcmp(item->string, "__metadata__") == 0) {
      if (have_meta) {
        st = kq_set_error(KQ_ERR_FORMAT, "%s: \"__metadata__\" appears twice", path);
        goto done;
      }
      have_meta = true;
      if ((st = parse_metadata(f, item)) != KQ_OK) goto done;
      continue;
    }
    if ((st = parse_tensor(path, item, data_size, &entries[n])) != KQ_OK) goto done;
    n++;
  }
  qsort(entries, (size_t)n, sizeof *entries, cmp_offset);
  /* Sorted by begin: a non-empty tensor overlaps an earlier one exactly when
   * it starts before the furthest end seen so far. */
  uint64_t reach = 0;
  const char *reach_name = NULL;
  for (int i = 0; i < n; i++) {
    if (entries[i].nbytes == 0) continue;
    if (reach_name && entries[i].begin < reach) {
      st = kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': data overlaps tensor '%s'", path,
                        entries[i].name, reach_name);
      goto done;
    }
    reach = entries[i].end;
    reach_name = entries[i].name;
  }
  f->tensors = kq_calloc_array((size_t)n + 1, sizeof *f->tensors, "safetensors tensors");
  if (!f->tensors) {
    st = kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s", path);
    goto done;
  }
  const unsigned char *data = f->map + 8 + len;
  for (int i = 0; i < n; i++) {
    kq_st_tensor *t = &f->tensors[i];
    t->name = entries[i].name;
    entries[i].name = NULL;
    t->dtype = entries[i].dtype;
    t->n_dims = entries[i].n_dims;
    memcpy(t->shape, entries[i].shape, sizeof t->shape);
    t->n_elements = entries[i].n_elements;
    t->nbytes = entries[i].nbytes;
    t->data = data + entries[i].begin;
    f->count = i + 1;
  }
  st = index_names(f);
done:
  if (entries)
    for (int i = 0; i < n; i++) free(entries[i].name);
  free(entries);
  cJSON_Delete(root);
  return st;
}

/* Tensors whose data is not aligned to their element size (legal in foreign
 * files) get an aligned private copy, so readers may cast t->data. */
static kq_status align_tensors(kq_st_file *f) {
  f->copies = kq_calloc_array((size_t)f->count + 1, sizeof(void *), "safetensors copies");
  if (!f->copies) return kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s", f->path);
  for (int i = 0; i < f->count; i++) {
    kq_st_tensor *t = &f->tensors[i];
    size_t es = kq_dtype_size(t->dtype);
    if (t->nbytes == 0 || (uintptr_t)t->data % es == 0) continue;
    void *copy = kq_malloc_array((size_t)t->nbytes, 1, "aligned tensor copy");
    if (!copy) return kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s: tensor '%s'", f->path, t->name);
    memcpy(copy, t->data, (size_t)t->nbytes);
    f->copies[i] = copy;
    t->data = copy;
  }
  return KQ_OK;
}

kq_status kq_st_open(const char *path, kq_st_file **out_file) {
  if (!path || !out_file)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "safetensors file: no path given");
  *out_file = NULL;
  kq_st_file *f = calloc(1, sizeof *f);
  if (!f) return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: cannot allocate reader", path);
  kq_status st = KQ_OK;
  f->path = dup_string(path, "safetensors path");
  if (!f->path) {
    free(f);
    return KQ_ERR_OUT_OF_MEMORY;
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    st = kq_set_error(errno == ENOENT ? KQ_ERR_NOT_FOUND : KQ_ERR_IO, "%s: cannot open: %s", path,
                      strerror(errno));
    goto fail;
  }
  struct stat sb;
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    st = kq_set_error(KQ_ERR_IO, "%s: not a regular file", path);
    close(fd);
    goto fail;
  }
  uint64_t size = (uint64_t)sb.st_size;
  if (size < 8) {
    close(fd);
    st = kq_set_error(KQ_ERR_FORMAT,
                      "%s: truncated: %llu bytes, shorter than the 8-byte header "
                      "length",
                      path, (unsigned long long)size);
    goto fail;
  }
  if (size > SIZE_MAX) {
    close(fd);
    st = kq_set_error(KQ_ERR_IO, "%s: too large to map", path);
    goto fail;
  }
  void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) {
    st = kq_set_error(KQ_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
    goto fail;
  }
  f->map = map;
  f->map_size = (size_t)size;
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | f->map[i];
  if (header_len > size - 8) {
    st = kq_set_error(KQ_ERR_FORMAT,
                      "%s: header length %llu runs past the end of the file (%llu bytes): "
                      "truncated or not a safetensors file",
                      path, (unsigned long long)header_len, (unsigned long long)size);
    goto fail;
  }
  if (header_len > KQ_ST_MAX_HEADER) {
    st = kq_set_error(KQ_ERR_FORMAT, "%s: header length %llu exceeds the %llu-byte limit", path,
                      (unsigned long long)header_len, (unsigned long long)KQ_ST_MAX_HEADER);
    goto fail;
  }
  if (header_len < 2) {
    st = kq_set_error(KQ_ERR_FORMAT, "%s: header of %llu bytes cannot hold a JSON object", path,
                      (unsigned long long)header_len);
    goto fail;
  }
  st = parse_header(f, (const char *)f->map + 8, (size_t)header_len, size - 8 - header_len);
  if (st == KQ_OK) st = align_tensors(f);
  if (st != KQ_OK) goto fail;
  *out_file = f;
  return KQ_OK;
fail:
  kq_st_close(f);
  return st;
}

kq_status kq_st_open_memory(const char *name, int count, const kq_st_tensor *tensors,
                            int meta_count, const char *const *meta_keys,
                            const char *const *meta_values, kq_st_file **out_file) {
  if (!name || !out_file || count < 0 || meta_count < 0 || (count > 0 && !tensors) ||
      (meta_count > 0 && (!meta_keys || !meta_values)))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "safetensors in memory: missing argument");
  *out_file = NULL;
  kq_st_file *f = calloc(1, sizeof *f);
  if (!f) return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: cannot allocate reader", name);
  kq_status st = KQ_OK;
  f->path = dup_string(name, "safetensors name");
  f->tensors = kq_calloc_array((size_t)count + 1, sizeof *f->tensors, "safetensors tensors");
  f->meta_keys = kq_calloc_array((size_t)meta_count + 1, sizeof(char *), "safetensors metadata");
  f->meta_values = kq_calloc_array((size_t)meta_count + 1, sizeof(char *), "safetensors metadata");
  if (!f->path || !f->tensors || !f->meta_keys || !f->meta_values) {
    st = KQ_ERR_OUT_OF_MEMORY;
    goto fail;
  }
  for (int i = 0; i < count; i++) {
    f->tensors[i] = tensors[i];
    f->tensors[i].name = dup_string(tensors[i].name, "safetensors tensor name");
    if (!f->tensors[i].name) {
      st = KQ_ERR_OUT_OF_MEMORY;
      goto fail;
    }
    f->count++;
  }
  for (int i = 0; i < meta_count; i++) {
    f->meta_keys[i] = dup_string(meta_keys[i], "safetensors metadata key");
    f->meta_values[i] = f->meta_keys[i] ? dup_string(meta_values[i], "metadata value") : NULL;
    if (!f->meta_values[i]) {
      free(f->meta_keys[i]);
      f->meta_keys[i] = NULL;
      st = KQ_ERR_OUT_OF_MEMORY;
      goto fail;
    }
    f->meta_count++;
  }
  st = index_names(f);
  if (st != KQ_OK) goto fail;
  *out_file = f;
  return KQ_OK;
fail:
  kq_st_close(f);
  return st;
}

void kq_st_close(kq_st_file *f) {
  if (!f) return;
  for (int i = 0; i < f->count; i++) {
    free((char *)f->tensors[i].name);
    if (f->copies) free(f->copies[i]);
  }
  for (int i = 0; i < f->meta_count; i++) {
    free(f->meta_keys[i]);
    free(f->meta_values[i]);
  }
  free(f->meta_keys);
  free(f->meta_values);
  free(f->copies);
  free(f->tensors);
  free(f->by_name);
  if (f->map) munmap(f->map, f->map_size);
  free(f->path);
  free(f);
}

const char *kq_st_path(const kq_st_file *f) {
  return f ? f->path : "";
}

int kq_st_count(const kq_st_file *f) {
  return f ? f->count : 0;
}

const kq_st_tensor *kq_st_at(const kq_st_file *f, int index) {
  if (!f || index < 0 || index >= f->count) return NULL;
  return &f->tensors[index];
}

const kq_st_tensor *kq_st_find(const kq_st_file *f, const char *name) {
  if (!f || !name) return NULL;
  int lo = 0, hi = f->count - 1;
  while (lo <= hi) {
    int mid = lo + (hi - lo) / 2;
    const kq_st_tensor *t = &f->tensors[f->by_name[mid]];
    int c = strcmp(name, t->name);
    if (c == 0) return t;
    if (c < 0)
      hi = mid - 1;
    else
      lo = mid + 1;
  }
  return NULL;
}

static void format_shape(char *buf, size_t cap, int n_dims, const int64_t *shape) {
  size_t used = 0;
  buf[0] = '\0';
  used += (size_t)snprintf(buf, cap, "[");
  for (int i = 0; i < n_dims && used < cap; i++) {
    if (shape[i] < 0)
      used += (size_t)snprintf(buf + used, cap - used, "%s*", i ? ", " : "");
    else
      used +=
          (size_t)snprintf(buf + used, cap - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
  }
  if (used < cap) snprintf(buf + used, cap - used, "]");
}

kq_status kq_st_require(const kq_st_file *f, const char *name, int expect_dims,
                        const int64_t *expect_shape, int float_only,
                        const kq_st_tensor **out_tensor) {
  if (!f || !name || !out_tensor)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "safetensors: no file or tensor name given");
  *out_tensor = NULL;
  const kq_st_tensor *t = kq_st_find(f, name);
  if (!t) return kq_set_error(KQ_ERR_NOT_FOUND, "%s: tensor '%s' is missing", f->path, name);
  if (float_only && t->dtype != KQ_DTYPE_F32 && t->dtype != KQ_DTYPE_F16 &&
      t->dtype != KQ_DTYPE_BF16)
    return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': dtype %s, expected F32, F16 or BF16",
                        f->path, name, kq_dtype_name(t->dtype));
  bool ok = expect_dims < 0 || t->n_dims == expect_dims;
  for (int i = 0; ok && expect_dims >= 0 && expect_shape && i < t->n_dims; i++)
    if (expect_shape[i] >= 0 && expect_shape[i] != t->shape[i]) ok = false;
  if (!ok) {
    char want[160], have[160];
    format_shape(want, sizeof want, expect_dims, expect_shape ? expect_shape : t->shape);
    format_shape(have, sizeof have, t->n_dims, t->shape);
    return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': shape %s, expected %s", f->path, name,
                        have, expect_shape ? want : "another rank");
  }
  *out_tensor = t;
  return KQ_OK;
}

const char *kq_st_meta(const kq_st_file *f, const char *key) {
  if (!f || !key) return NULL;
  for (int i = 0; i < f->meta_count; i++)
    if (strcmp(f->meta_keys[i], key) == 0) return f->meta_values[i];
  return NULL;
}

int kq_st_meta_count(const kq_st_file *f) {
  return f ? f->meta_count : 0;
}

void kq_st_meta_at(const kq_st_file *f, int index, const char **out_key, const char **out_value) {
  const char *k = NULL, *v = NULL;
  if (f && index >= 0 && index < f->meta_count) {
    k = f->meta_keys[index];
    v = f->meta_values[index];
  }
  if (out_key) *out_key = k;
  if (out_value) *out_value = v;
}

kq_status kq_st_check_finite(const kq_st_file *f, const kq_st_tensor *t) {
  if (!f || !t)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "safetensors: no file or tensor given");
  const unsigned char *p = t->data;
  uint64_t n = t->n_elements;
  uint64_t bad = n;
  switch (t->dtype) {
  case KQ_DTYPE_F32:
    for (uint64_t i = 0; i < n; i++) {
      uint32_t b;
      memcpy(&b, p + 4 * i, 4);
      if ((b & 0x7f800000u) == 0x7f800000u) {
        bad = i;
        break;
      }
    }
    break;
  case KQ_DTYPE_F16:
  case KQ_DTYPE_BF16: {
    uint16_t mask = t->dtype == KQ_DTYPE_F16 ? 0x7c00u : 0x7f80u;
    for (uint64_t i = 0; i < n; i++) {
      uint16_t b;
      memcpy(&b, p + 2 * i, 2);
      if ((b & mask) == mask) {
        bad = i;
        break;
      }
    }
  } break;
  case KQ_DTYPE_F64:
    for (uint64_t i = 0; i < n; i++) {
      uint64_t b;
      memcpy(&b, p + 8 * i, 8);
      if ((b & 0x7ff0000000000000ull) == 0x7ff0000000000000ull) {
        bad = i;
        break;
      }
    }
    break;
  default: return KQ_OK; /* integers are always finite */
  }
  if (bad == n) return KQ_OK;
  double v = 0.0;
  kq_convert_to_f64(t->dtype, p + bad * kq_dtype_size(t->dtype), &v, 1);
  return kq_set_error(KQ_ERR_NUMERIC, "%s: tensor '%s': %s at flat index %llu", f->path, t->name,
                      isnan(v) ? "NaN" : "Inf", (unsigned long long)bad);
}
