/* GGUF parser: every length and count is checked against the bytes left
 * before it is used, so a lying header fails with a message instead of a
 * huge allocation or a read past the mapping. */
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kq_gguf.h"

struct kq_gguf {
  char *path;
  const uint8_t *map;
  size_t size;
  uint32_t version;
  uint64_t alignment;
  int64_t n_kv;
  kq_gguf_kv *kv;
  int64_t n_tensors;
  kq_gguf_tensor *tensors;
  size_t data_offset;
};

typedef struct cursor {
  const kq_gguf *file;
  size_t pos;
} cursor;

static size_t left(const cursor *c) {
  return c->file->size - c->pos;
}

static kq_status need(cursor *c, size_t n, const char *what) {
  if (n > left(c))
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: truncated: %s needs %zu bytes at offset %zu, %zu left in the file",
                        c->file->path, what, n, c->pos, left(c));
  return KQ_OK;
}

static uint64_t load_le(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int b = n - 1; b >= 0; b--) v = (v << 8) | p[b];
  return v;
}

static kq_status read_uint(cursor *c, int n, const char *what, uint64_t *out) {
  kq_status st = need(c, (size_t)n, what);
  if (st != KQ_OK) return st;
  *out = load_le(c->file->map + c->pos, n);
  c->pos += (size_t)n;
  return KQ_OK;
}

static kq_status read_str(cursor *c, const char *what, kq_gguf_str *out) {
  uint64_t len;
  kq_status st = read_uint(c, 8, what, &len);
  if (st != KQ_OK) return st;
  if (len > left(c))
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: %s: string length %llu at offset %zu exceeds the %zu bytes left",
                        c->file->path, what, (unsigned long long)len, c->pos - 8, left(c));
  out->ptr = (const char *)c->file->map + c->pos;
  out->len = len;
  c->pos += (size_t)len;
  return KQ_OK;
}

static const char *vtype_name(uint32_t t) {
  static const char *names[] = {"uint8",  "int8",    "uint16", "int16",  "uint32",
                                "int32",  "float32", "bool",   "string", "array",
                                "uint64", "int64",   "float64"};
  return t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

/* Size of a fixed-size value type; 0 for string/array/unknown. */
static size_t vtype_size(uint32_t t) {
  switch (t) {
  case KQ_GGUF_UINT8:
  case KQ_GGUF_INT8:
  case KQ_GGUF_BOOL: return 1;
  case KQ_GGUF_UINT16:
  case KQ_GGUF_INT16: return 2;
  case KQ_GGUF_UINT32:
  case KQ_GGUF_INT32:
  case KQ_GGUF_FLOAT32: return 4;
  case KQ_GGUF_UINT64:
  case KQ_GGUF_INT64:
  case KQ_GGUF_FLOAT64: return 8;
  default: return 0;
  }
}

static int vtype_signed(uint32_t t) {
  return t == KQ_GGUF_INT8 || t == KQ_GGUF_INT16 || t == KQ_GGUF_INT32 || t == KQ_GGUF_INT64;
}

static kq_status read_scalar(cursor *c, kq_gguf_kv *kv) {
  size_t sz = vtype_size(kv->type);
  uint64_t raw;
  kq_status st = read_uint(c, (int)sz, kv->key, &raw);
  if (st != KQ_OK) return st;
  kv->u = raw;
  if (vtype_signed(kv->type)) {
    int shift = 64 - 8 * (int)sz;
    kv->i = (int64_t)(raw << shift) >> shift; /* sign-extend */
  } else {
    kv->i = (int64_t)raw;
  }
  if (kv->type == KQ_GGUF_FLOAT32) {
    uint32_t b = (uint32_t)raw;
    float f;
    memcpy(&f, &b, 4);
    kv->f = f;
  } else if (kv->type == KQ_GGUF_FLOAT64) {
    memcpy(&kv->f, &raw, 8);
  } else {
    kv->f = vtype_signed(kv->type) ? (double)kv->i : (double)raw;
  }
  if (kv->type == KQ_GGUF_BOOL && raw > 1)
    return kq_set_error(KQ_ERR_FORMAT, "%s: key '%s': bool value %llu is neither 0 nor 1",
                        c->file->path, kv->key, (unsigned long long)raw);
  return KQ_OK;
}

static kq_status read_array(cursor *c, kq_gguf_kv *kv) {
  uint64_t et, n;
  kq_status st = read_uint(c, 4, kv->key, &et);
  if (st == KQ_OK) st = read_uint(c, 8, kv->key, &n);
  if (st != KQ_OK) return st;
  kv->elem_type = (kq_gguf_vtype)et;
  kv->n = n;
  if (et == KQ_GGUF_ARRAY)
    return kq_set_error(KQ_ERR_FORMAT, "%s: key '%s': nested arrays are not supported",
                        c->file->path, kv->key);
  if (et == KQ_GGUF_STRING) {
    /* Each string takes at least its 8-byte length: bound n before allocating. */
    if (n > left(c) / 8)
      return kq_set_error(KQ_ERR_FORMAT,
                          "%s: key '%s': array of %llu strings cannot fit in the %zu bytes left",
                          c->file->path, kv->key, (unsigned long long)n, left(c));
    kq_gguf_str *strs = kq_malloc_array((size_t)n, sizeof *strs, kv->key);
    if (!strs) return KQ_ERR_OUT_OF_MEMORY;
    kv->strs = strs;
    for (uint64_t j = 0; j < n; j++) {
      st = read_str(c, kv->key, &strs[j]);
      if (st != KQ_OK)
        return kq_error_context(st, c->file->path, "key '%s': element %llu", kv->key,
                                (unsigned long long)j);
    }
    return KQ_OK;
  }
  size_t esz = vtype_size((uint32_t)et);
  if (esz == 0)
    return kq_set_error(KQ_ERR_FORMAT, "%s: key '%s': unknown array element type %llu",
                        c->file->path, kv->key, (unsigned long long)et);
  size_t bytes;
  if (!kq_mul_size((size_t)n, esz, &bytes) || bytes > left(c))
    return kq_set_error(
        KQ_ERR_FORMAT, "%s: key '%s': array of %llu %s values exceeds the %zu bytes left",
        c->file->path, kv->key, (unsigned long long)n, vtype_name((uint32_t)et), left(c));
  kv->data = c->file->map + c->pos;
  if (et == KQ_GGUF_BOOL)
    for (uint64_t j = 0; j < n; j++)
      if (c->file->map[c->pos + j] > 1)
        return kq_set_error(KQ_ERR_FORMAT, "%s: key '%s': bool element %llu is neither 0 nor 1",
                            c->file->path, kv->key, (unsigned long long)j);
  c->pos += bytes;
  return KQ_OK;
}

static kq_status read_kv(kq_gguf *f, cursor *c, int64_t index) {
  kq_gguf_kv *kv = &f->kv[index];
  kq_gguf_str key;
  kq_status st = read_str(c, "key", &key);
  if (st != KQ_OK) return kq_error_context(st, f->path, "key/value %lld", (long long)index);
  if (key.len == 0 || key.len > 65535 || memchr(key.ptr, 0, (size_t)key.len))
    return kq_set_error(KQ_ERR_FORMAT, "%s: key/value %lld: key is empty, too long or has NUL",
                        f->path, (long long)index);
  char *name = kq_malloc_array((size_t)key.len + 1, 1, "gguf key");
  if (!name) return KQ_ERR_OUT_OF_MEMORY;
  memcpy(name, key.ptr, (size_t)key.len);
  name[key.len] = 0;
  kv->key = name;
  for (int64_t j = 0; j < index; j++)
    if (!strcmp(f->kv[j].key, name))
      return kq_set_error(KQ_ERR_FORMAT, "%s: duplicate key '%s'", f->path, name);
  uint64_t type;
  st = read_uint(c, 4, name, &type);
  if (st != KQ_OK) return st;
  kv->type = (kq_gguf_vtype)type;
  if (type == KQ_GGUF_STRING) return read_str(c, name, &kv->str);
  if (type == KQ_GGUF_ARRAY) return read_array(c, kv);
  if (vtype_size((uint32_t)type) == 0)
    return kq_set_error(KQ_ERR_FORMAT, "%s: key '%s': unknown value type %llu", f->path, name,
                        (unsigned long long)type);
  return read_scalar(c, kv);
}

static kq_status read_tensor_info(kq_gguf *f, cursor *c, int64_t index) {
  kq_gguf_tensor *t = &f->tensors[index];
  kq_gguf_str name;
  kq_status st = read_str(c, "tensor name", &name);
  if (st != KQ_OK) return kq_error_context(st, f->path, "tensor %lld", (long long)index);
  if (name.len == 0 || name.len >= KQ_GGUF_MAX_NAME || memchr(name.ptr, 0, (size_t)name.len))
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: tensor %lld: name length %llu is not in [1, %d] or has NUL", f->path,
                        (long long)index, (unsigned long long)name.len, KQ_GGUF_MAX_NAME - 1);
  memcpy(t->name, name.ptr, (size_t)name.len);
  t->name[name.len] = 0;
  uint64_t n_dims;
  st = read_uint(c, 4, t->name, &n_dims);
  if (st != KQ_OK) return st;
  if (n_dims < 1 || n_dims > KQ_GGUF_MAX_DIMS)
    return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': %llu dimensions (expected 1..%d)", f->path,
                        t->name, (unsigned long long)n_dims, KQ_GGUF_MAX_DIMS);
  t->n_dims = (int)n_dims;
  size_t count = 1;
  for (int d = 0; d < KQ_GGUF_MAX_DIMS; d++) {
    t->ne[d] = 1;
    if (d >= t->n_dims) continue;
    st = read_uint(c, 8, t->name, &t->ne[d]);
    if (st != KQ_OK) return st;
    if (t->ne[d] == 0 || t->ne[d] > (uint64_t)INT64_MAX || !kq_mul_size(count, t->ne[d], &count))
      return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': dimension %d = %llu is invalid", f->path,
                          t->name, d, (unsigned long long)t->ne[d]);
  }
  t->n_elements = count;
  uint64_t type;
  st = read_uint(c, 4, t->name, &type);
  if (st == KQ_OK) st = read_uint(c, 8, t->name, &t->offset);
  if (st != KQ_OK) return st;
  t->type = (uint32_t)type;
  uint32_t be, bb;
  if (type > UINT32_MAX || !kq_gguf_type_layout((uint32_t)type, &be, &bb)) {
    const char *tn = type <= UINT32_MAX ? kq_gguf_type_name((uint32_t)type) : NULL;
    return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': unknown or unsupported type %llu%s%s%s",
                        f->path, t->name, (unsigned long long)type, tn ? " (" : "", tn ? tn : "",
                        tn ? ")" : "");
  }
  if (t->ne[0] % be != 0)
    return kq_set_error(
        KQ_ERR_FORMAT, "%s: tensor '%s': row length %llu is not a multiple of the %s block (%u)",
        f->path, t->name, (unsigned long long)t->ne[0], kq_gguf_type_name(t->type), be);
  if (!kq_mul_size(count / be, bb, &t->nbytes))
    return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': byte size overflows", f->path, t->name);
  for (int64_t j = 0; j < index; j++)
    if (!strcmp(f->tensors[j].name, t->name))
      return kq_set_error(KQ_ERR_FORMAT, "%s: duplicate tensor '%s'", f->path, t->name);
  return KQ_OK;
}

static kq_status parse(kq_gguf *f) {
  cursor c = {.file = f, .pos = 0};
  kq_status st = need(&c, 4, "magic");
  if (st != KQ_OK) return st;
  if (memcmp(f->map, "GGUF", 4))
    return kq_set_error(KQ_ERR_FORMAT, "%s: not a GGUF file (bad magic)", f->path);
  c.pos = 4;
  uint64_t version, n_tensors, n_kv;
  st = read_uint(&c, 4, "version", &version);
  if (st != KQ_OK) return st;
  if (version != 2 && version != 3)
    return kq_set_error(KQ_ERR_FORMAT, "%s: GGUF version %llu is not supported (2 or 3)", f->path,
                        (unsigned long long)version);
  f->version = (uint32_t)version;
  st = read_uint(&c, 8, "tensor_count", &n_tensors);
  if (st == KQ_OK) st = read_uint(&c, 8, "kv_count", &n_kv);
  if (st != KQ_OK) return st;
  /* A key/value takes at least 8 + 1 + 4 + 1 bytes, a tensor info at least
   * 8 + 1 + 4 + 8 + 4 + 8: counts beyond what the file can hold are lies. */
  if (n_kv > left(&c) / 14)
    return kq_set_error(KQ_ERR_FORMAT, "%s: kv_count %llu cannot fit in a %zu-byte file", f->path,
                        (unsigned long long)n_kv, f->size);
  if (n_tensors > left(&c) / 33)
    return kq_set_error(KQ_ERR_FORMAT, "%s: tensor_count %llu cannot fit in a %zu-byte file",
                        f->path, (unsigned long long)n_tensors, f->size);
  f->kv = kq_calloc_array((size_t)n_kv, sizeof *f->kv, "gguf key/values");
  f->tensors = kq_calloc_array((size_t)n_tensors, sizeof *f->tensors, "gguf tensor infos");
  if (!f->kv || !f->tensors) return KQ_ERR_OUT_OF_MEMORY;
  for (uint64_t j = 0; j < n_kv; j++) {
    f->n_kv = (int64_t)j + 1; /* so close() frees what was read */
    st = read_kv(f, &c, (int64_t)j);
    if (st != KQ_OK) return st;
  }
  f->alignment = 32;
  const kq_gguf_kv *al = kq_gguf_find_kv(f, "general.alignment");
  if (al) {
    if (al->type != KQ_GGUF_UINT32)
      return kq_set_error(KQ_ERR_FORMAT, "%s: general.alignment has type %s, expected uint32",
                          f->path, vtype_name(al->type));
    if (al->u == 0 || (al->u & (al->u - 1)) != 0)
      return kq_set_error(KQ_ERR_FORMAT, "%s: general.alignment = %llu is not a power of two",
                          f->path, (unsigned long long)al->u);
    f->alignment = al->u;
  }
  f->n_tensors = (int64_t)n_tensors;
  for (uint64_t j = 0; j < n_tensors; j++) {
    st = read_tensor_info(f, &c, (int64_t)j);
    if (st != KQ_OK) return st;
  }
  size_t pad = (size_t)((f->alignment - c.pos % f->alignment) % f->alignment);
  size_t data;
  if (!kq_add_size(c.pos, pad, &data) || (n_tensors > 0 && data > f->size))
    return kq_set_error(KQ_ERR_FORMAT, "%s: truncated: data section would start at %zu past EOF",
                        f->path, c.pos + pad);
  f->data_offset = data;
  size_t avail = data <= f->size ? f->size - data : 0;
  for (int64_t j = 0; j < f->n_tensors; j++) {
    kq_gguf_tensor *t = &f->tensors[j];
    size_t end;
    if (t->offset % f->alignment != 0)
      return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': offset %llu is not aligned to %llu",
                          f->path, t->name, (unsigned long long)t->offset,
                          (unsigned long long)f->alignment);
    if (!kq_add_size((size_t)t->offset, t->nbytes, &end) || end > avail)
      return kq_set_error(KQ_ERR_FORMAT,
                          "%s: tensor '%s': data [%llu, +%zu) runs past the end of the file "
                          "(data section holds %zu bytes)",
                          f->path, t->name, (unsigned long long)t->offset, t->nbytes, avail);
    t->data = f->map + data + t->offset;
  }
  /* Overlapping tensors mean a corrupt offset table. Sort-free check: n is a
   * few hundred at most in practice, but bound the quadratic cost anyway. */
  if (f->n_tensors <= 4096)
    for (int64_t a = 0; a < f->n_tensors; a++)
      for (int64_t b = a + 1; b < f->n_tensors; b++) {
        const kq_gguf_tensor *x = &f->tensors[a], *y = &f->tensors[b];
        if (x->offset < y->offset + y->nbytes && y->offset < x->offset + x->nbytes)
          return kq_set_error(KQ_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap", f->path, x->name,
                              y->name);
      }
  return KQ_OK;
}

kq_status kq_gguf_open(const char *path, kq_gguf **out_file) {
  if (!path || !out_file) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "gguf: NULL argument");
  *out_file = NULL;
  kq_gguf *f = calloc(1, sizeof *f);
  if (!f) return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
  f->path = strdup(path);
  if (!f->path) {
    free(f);
    return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat sb;
  kq_status st = KQ_OK;
  if (fd < 0 || fstat(fd, &sb) != 0) {
    st = kq_set_error(KQ_ERR_IO, "%s: cannot open: %m", path);
  } else if (!S_ISREG(sb.st_mode)) {
    st = kq_set_error(KQ_ERR_IO, "%s: not a regular file", path);
  } else if (sb.st_size == 0) {
    st = kq_set_error(KQ_ERR_FORMAT, "%s: empty file", path);
  } else {
    f->size = (size_t)sb.st_size;
    void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      f->size = 0;
      st = kq_set_error(KQ_ERR_IO, "%s: mmap failed: %m", path);
    } else {
      f->map = m;
    }
  }
  if (fd >= 0) close(fd);
  if (st == KQ_OK) st = parse(f);
  if (st != KQ_OK) {
    kq_gguf_close(f);
    return st;
  }
  *out_file = f;
  return KQ_OK;
}

void kq_gguf_close(kq_gguf *f) {
  if (!f) return;
  for (int64_t j = 0; j < f->n_kv; j++) {
    free((void *)f->kv[j].key);
    free((void *)f->kv[j].strs);
  }
  free(f->kv);
  free(f->tensors);
  if (f->map) munmap((void *)f->map, f->size);
  free(f->path);
  free(f);
}

const char *kq_gguf_path(const kq_gguf *f) {
  return f->path;
}
uint32_t kq_gguf_version(const kq_gguf *f) {
  return f->version;
}
uint64_t kq_gguf_alignment(const kq_gguf *f) {
  return f->alignment;
}
int64_t kq_gguf_kv_count(const kq_gguf *f) {
  return f->n_kv;
}
int64_t kq_gguf_tensor_count(const kq_gguf *f) {
  return f->n_tensors;
}

const kq_gguf_kv *kq_gguf_kv_at(const kq_gguf *f, int64_t index) {
  return index >= 0 && index < f->n_kv ? &f->kv[index] : NULL;
}

const kq_gguf_tensor *kq_gguf_tensor_at(const kq_gguf *f, int64_t index) {
  return index >= 0 && index < f->n_tensors ? &f->tensors[index] : NULL;
}

const kq_gguf_kv *kq_gguf_find_kv(const kq_gguf *f, const char *key) {
  for (int64_t j = 0; j < f->n_kv; j++)
    if (f->kv[j].key && !strcmp(f->kv[j].key, key)) return &f->kv[j];
  return NULL;
}

const kq_gguf_tensor *kq_gguf_find_tensor(const kq_gguf *f, const char *name) {
  for (int64_t j = 0; j < f->n_tensors; j++)
    if (!strcmp(f->tensors[j].name, name)) return &f->tensors[j];
  return NULL;
}

static kq_status find_typed(const kq_gguf *f, const char *key, const kq_gguf_kv **out) {
  *out = kq_gguf_find_kv(f, key);
  if (!*out) return kq_set_error(KQ_ERR_NOT_FOUND, "%s: missing key '%s'", f->path, key);
  return KQ_OK;
}

kq_status kq_gguf_get_u32(const kq_gguf *f, const char *key, uint32_t *out) {
  const kq_gguf_kv *kv;
  kq_status st = find_typed(f, key, &kv);
  if (st != KQ_OK) return st;
  if (vtype_size(kv->type) == 0 || kv->type == KQ_GGUF_FLOAT32 || kv->type == KQ_GGUF_FLOAT64 ||
      kv->type == KQ_GGUF_BOOL)
    return kq_set_error(KQ_ERR_FORMAT, "%s: key '%s' has type %s, expected an integer", f->path,
                        key, vtype_name(kv->type));
  if ((vtype_signed(kv->type) && kv->i < 0) || kv->u > UINT32_MAX)
    return kq_set_error(KQ_ERR_FORMAT, "%s: key '%s' = %lld is out of range", f->path, key,
                        (long long)kv->i);
  *out = (uint32_t)kv->u;
  return KQ_OK;
}

kq_status kq_gguf_get_f32(const kq_gguf *f, const char *key, float *out) {
  const kq_gguf_kv *kv;
  kq_status st = find_typed(f, key, &kv);
  if (st != KQ_OK) return st;
  if (kv->type != KQ_GGUF_FLOAT32 && kv->type != KQ_GGUF_FLOAT64)
    return kq_set_error(KQ_ERR_FORMAT, "%s: key '%s' has type %s, expected a float", f->path, key,
                        vtype_name(kv->type));
  *out = (float)kv->f;
  return KQ_OK;
}

kq_status kq_gguf_get_bool(const kq_gguf *f, const char *key, int *out) {
  const kq_gguf_kv *kv;
  kq_status st = find_typed(f, key, &kv);
  if (st != KQ_OK) return st;
  if (kv->type != KQ_GGUF_BOOL)
    return kq_set_error(KQ_ERR_FORMAT, "%s: key '%s' has type %s, expected bool", f->path, key,
                        vtype_name(kv->type));
  *out = kv->u != 0;
  return KQ_OK;
}

kq_status kq_gguf_get_str(const kq_gguf *f, const char *key, kq_gguf_str *out) {
  const kq_gguf_kv *kv;
  kq_status st = find_typed(f, key, &kv);
  if (st != KQ_OK) return st;
  if (kv->type != KQ_GGUF_STRING)
    return kq_set_error(KQ_ERR_FORMAT, "%s: key '%s' has type %s, expected string", f->path, key,
                        vtype_name(kv->type));
  *out = kv->str;
  return KQ_OK;
}

kq_status kq_gguf_get_array(const kq_gguf *f, const char *key, kq_gguf_vtype elem_type,
                            const kq_gguf_kv **out) {
  const kq_gguf_kv *kv;
  kq_status st = find_typed(f, key, &kv);
  if (st != KQ_OK) return st;
  if (kv->type != KQ_GGUF_ARRAY || kv->elem_type != elem_type)
    return kq_set_error(KQ_ERR_FORMAT, "%s: key '%s' is not an array of %s", f->path, key,
                        vtype_name(elem_type));
  *out = kv;
  return KQ_OK;
}

kq_status kq_gguf_dequantize(const kq_gguf *f, const kq_gguf_tensor *t, float *dst) {
  if (!kq_gguf_type_can_dequantize(t->type)) {
    const char *tn = kq_gguf_type_name(t->type);
    return kq_set_error(KQ_ERR_UNSUPPORTED, "%s: tensor '%s': type %s (%u) cannot be dequantised",
                        f->path, t->name, tn ? tn : "unknown", t->type);
  }
  kq_status st = kq_gguf_dequantize_raw(t->type, t->data, dst, (size_t)t->n_elements);
  if (st != KQ_OK) return kq_error_prefix(st, "%s: tensor '%s'", f->path, t->name);
  return kq_gguf_check_finite(f, t, dst, (size_t)t->n_elements, 0);
}

kq_status kq_gguf_check_finite(const kq_gguf *f, const kq_gguf_tensor *t, const float *x, size_t n,
                               uint64_t first) {
  if (!kq_any_nonfinite_f32(x, n)) return KQ_OK; /* the vectorised common case */
  for (size_t i = 0; i < n; i++)
    if (!isfinite(x[i]))
      return kq_set_error(KQ_ERR_NUMERIC,
                          "%s: tensor '%s': %s at element %llu (weights must be "
                          "finite)",
                          f->path, t->name, isnan(x[i]) ? "NaN" : "Inf",
                          (unsigned long long)(first + i));
  return KQ_OK;
}

kq_status kq_gguf_load_f32(const kq_gguf *f, const char *name, int n_dims,
                           const uint64_t *expect_ne, float **out_data) {
  *out_data = NULL;
  const kq_gguf_tensor *t = kq_gguf_find_tensor(f, name);
  if (!t) return kq_set_error(KQ_ERR_NOT_FOUND, "%s: missing tensor '%s'", f->path, name);
  int bad = t->n_dims > n_dims;
  for (int d = 0; d < n_dims && !bad; d++)
    if (expect_ne[d] != 0 && t->ne[d] != expect_ne[d]) bad = 1;
  if (bad)
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: tensor '%s': shape [%llu, %llu, %llu, %llu] does not match the model",
                        f->path, name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                        (unsigned long long)t->ne[2], (unsigned long long)t->ne[3]);
  float *data = kq_malloc_array((size_t)t->n_elements, sizeof(float), name);
  if (!data) return KQ_ERR_OUT_OF_MEMORY;
  kq_status st = kq_gguf_dequantize(f, t, data);
  if (st != KQ_OK) {
    free(data);
    return st;
  }
  *out_data = data;
  return KQ_OK;
}
