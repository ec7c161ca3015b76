/* The calibration file of SPEC §2: discovery of layers, shape and metadata
 * validation, finiteness checks and page release for streamed reading. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kq_fit.h"

#define KQ_CALIB_MAX_HEAD_DIM 4096

static const kq_st_tensor *find_layer_tensor(const kq_st_file *f, int32_t layer, const char *what) {
  char name[64];
  snprintf(name, sizeof name, "layers.%d.%s", (int)layer, what);
  return kq_st_find(f, name);
}

static bool is_float(kq_dtype t) {
  return t == KQ_DTYPE_F32 || t == KQ_DTYPE_F16 || t == KQ_DTYPE_BF16;
}

/* Checks one tensor's dtype and rank; shapes are compared by the caller. */
static kq_status check_tensor(const kq_calib *c, const kq_st_tensor *t, int dims) {
  if (!is_float(t->dtype))
    return kq_set_error(KQ_ERR_FORMAT, "%s: %s: dtype %s, expected F32, F16 or BF16", c->path,
                        t->name, kq_dtype_name(t->dtype) ? kq_dtype_name(t->dtype) : "?");
  /* SPEC §2: q, v and wo have the dtype of k (one file, one storage type). */
  const kq_st_tensor *k0 = find_layer_tensor(c->file, 0, "k");
  if (k0 && t != k0 && t->dtype != k0->dtype)
    return kq_set_error(KQ_ERR_FORMAT, "%s: %s: dtype %s, but layers.0.k is %s (all must match)",
                        c->path, t->name, kq_dtype_name(t->dtype), kq_dtype_name(k0->dtype));
  if (t->n_dims != dims)
    return kq_set_error(KQ_ERR_FORMAT, "%s: %s: %d dimensions, expected %d", c->path, t->name,
                        t->n_dims, dims);
  for (int i = 0; i < dims; i++)
    if (t->shape[i] < 1)
      return kq_set_error(KQ_ERR_FORMAT, "%s: %s: dimension %d is %lld (must be >= 1)", c->path,
                          t->name, i, (long long)t->shape[i]);
  return KQ_OK;
}

static kq_status shape_error(const kq_calib *c, const kq_st_tensor *t, const char *expect) {
  char got[128];
  int n = snprintf(got, sizeof got, "[");
  for (int i = 0; i < t->n_dims && n < (int)sizeof got - 24; i++)
    n += snprintf(got + n, sizeof got - (size_t)n, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
  snprintf(got + n, sizeof got - (size_t)n, "]");
  return kq_set_error(KQ_ERR_FORMAT, "%s: %s: shape %s, expected %s", c->path, t->name, got,
                      expect);
}

static kq_status parse_meta(kq_calib *c) {
  const char *s = kq_st_meta(c->file, "seq_len");
  c->seq_len = c->n_tokens;
  if (s) {
    char *end = NULL;
    errno = 0;
    long long v = strspn(s, "0123456789") == strlen(s) ? strtoll(s, &end, 10) : 0;
    if (!*s || !end || *end || errno || v < 1)
      return kq_set_error(KQ_ERR_FORMAT, "%s: metadata seq_len: '%s' is not a positive integer",
                          c->path, s);
    if (c->n_tokens % v != 0)
      return kq_set_error(KQ_ERR_FORMAT,
                          "%s: metadata seq_len: %lld does not divide the %lld calibration tokens",
                          c->path, v, (long long)c->n_tokens);
    c->seq_len = v;
  }
  s = kq_st_meta(c->file, "rope");
  c->rope = KQ_ROPE_POST;
  if (s) {
    if (!strcmp(s, "post"))
      c->rope = KQ_ROPE_POST;
    else if (!strcmp(s, "pre"))
      c->rope = KQ_ROPE_PRE;
    else if (!strcmp(s, "none"))
      c->rope = KQ_ROPE_NONE;
    else
      return kq_set_error(KQ_ERR_FORMAT, "%s: metadata rope: '%s' (expected post, pre or none)",
                          c->path, s);
  }
  s = kq_st_meta(c->file, "rope_theta");
  c->rope_theta = 10000.0f;
  if (s) {
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v) || v <= 0 || v > 3e38)
      return kq_set_error(KQ_ERR_FORMAT, "%s: metadata rope_theta: '%s' is not a positive number",
                          c->path, s);
    c->rope_theta = (float)v;
  }
  s = kq_st_meta(c->file, "rope_layout");
  c->rope_layout = KQ_ROPE_PAIRS;
  if (s) {
    if (!strcmp(s, "pairs"))
      c->rope_layout = KQ_ROPE_PAIRS;
    else if (!strcmp(s, "halves"))
      c->rope_layout = KQ_ROPE_HALVES;
    else
      return kq_set_error(KQ_ERR_FORMAT,
                          "%s: metadata rope_layout: '%s' (expected pairs or halves)", c->path, s);
  }
  if (c->rope == KQ_ROPE_PRE && c->head_dim % 2 != 0)
    return kq_set_error(KQ_ERR_FORMAT, "%s: metadata rope: 'pre' needs an even head_dim, got %d",
                        c->path, (int)c->head_dim);
  return KQ_OK;
}

kq_status kq_calib_check_heads(const char *path, int32_t n_heads, int32_t n_kv_heads) {
  if (n_heads % n_kv_heads != 0)
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: layers.0.q: %d query heads is not a multiple of the %d kv heads of "
                        "layers.0.k",
                        path, (int)n_heads, (int)n_kv_heads);
  return KQ_OK;
}

static kq_status validate(kq_calib *c) {
  const kq_st_tensor *k0 = find_layer_tensor(c->file, 0, "k");
  if (!k0)
    return kq_set_error(KQ_ERR_FORMAT, "%s: layers.0.k: missing (not a calibration file)", c->path);
  kq_status st = check_tensor(c, k0, 3);
  if (st) return st;
  c->n_kv_heads = (int32_t)k0->shape[0];
  c->n_tokens = k0->shape[1];
  if (k0->shape[0] > INT32_MAX || k0->shape[2] > KQ_CALIB_MAX_HEAD_DIM)
    return kq_set_error(KQ_ERR_FORMAT, "%s: layers.0.k: head_dim %lld exceeds %d", c->path,
                        (long long)k0->shape[2], KQ_CALIB_MAX_HEAD_DIM);
  c->head_dim = (int32_t)k0->shape[2];
  const kq_st_tensor *q0 = find_layer_tensor(c->file, 0, "q");
  if (!q0) return kq_set_error(KQ_ERR_FORMAT, "%s: layers.0.q: missing", c->path);
  if ((st = check_tensor(c, q0, 3))) return st;
  if (q0->shape[0] > INT32_MAX)
    return kq_set_error(KQ_ERR_FORMAT, "%s: layers.0.q: too many heads", c->path);
  c->n_heads = (int32_t)q0->shape[0];
  if ((st = kq_calib_check_heads(c->path, c->n_heads, c->n_kv_heads))) return st;
  const kq_st_tensor *wo0 = find_layer_tensor(c->file, 0, "wo");
  c->has_wo = wo0 != NULL;
  if (wo0) {
    if ((st = check_tensor(c, wo0, 2))) return st;
    if (wo0->shape[0] > INT32_MAX)
      return kq_set_error(KQ_ERR_FORMAT, "%s: layers.0.wo: width too large", c->path);
    c->hidden = (int32_t)wo0->shape[0];
  }

  int32_t n = 0;
  while (find_layer_tensor(c->file, n, "k") || find_layer_tensor(c->file, n, "q") ||
         find_layer_tensor(c->file, n, "v"))
    n++;
  c->n_layers = n;

  char expect[128];
  for (int32_t l = 0; l < n; l++) {
    const char *names[4] = {"k", "q", "v", "wo"};
    int64_t shapes[4][3] = {{c->n_kv_heads, c->n_tokens, c->head_dim},
                            {c->n_heads, c->n_tokens, c->head_dim},
                            {c->n_kv_heads, c->n_tokens, c->head_dim},
                            {c->hidden, (int64_t)c->n_heads * c->head_dim, 0}};
    for (int w = 0; w < 4; w++) {
      const kq_st_tensor *t = find_layer_tensor(c->file, l, names[w]);
      int dims = w == 3 ? 2 : 3;
      if (!t) {
        if (w == 3 && !c->has_wo) continue;
        return kq_set_error(KQ_ERR_FORMAT, "%s: layers.%d.%s: missing%s", c->path, (int)l, names[w],
                            w == 3 ? " (layers.0.wo exists: wo must be in every layer)" : "");
      }
      if (w == 3 && !c->has_wo)
        return kq_set_error(KQ_ERR_FORMAT,
                            "%s: %s: present but layers.0.wo is not (wo must be in every layer "
                            "or none)",
                            c->path, t->name);
      if ((st = check_tensor(c, t, dims))) return st;
      bool ok = true;
      for (int i = 0; i < dims; i++) ok = ok && t->shape[i] == shapes[w][i];
      if (!ok) {
        if (dims == 3)
          snprintf(expect, sizeof expect, "[%lld, %lld, %lld] (as layers.0.k/q)",
                   (long long)shapes[w][0], (long long)shapes[w][1], (long long)shapes[w][2]);
        else
          snprintf(expect, sizeof expect, "[%lld, %lld] (D as layers.0.wo, H·d = %d·%d)",
                   (long long)shapes[w][0], (long long)shapes[w][1], (int)c->n_heads,
                   (int)c->head_dim);
        return shape_error(c, t, expect);
      }
    }
  }
  return parse_meta(c);
}

kq_status kq_calib_from_st(kq_st_file *file, kq_calib *out) {
  memset(out, 0, sizeof *out);
  out->file = file;
  out->path = kq_st_path(file);
  kq_status st = validate(out);
  if (st) kq_calib_close(out);
  return st;
}

kq_status kq_calib_open(const char *path, kq_calib *out) {
  memset(out, 0, sizeof *out);
  if (!path) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "calibration path is NULL");
  kq_st_file *file = NULL;
  kq_status st = kq_st_open(path, &file);
  if (st) return st;
  return kq_calib_from_st(file, out);
}

void kq_calib_close(kq_calib *calib) {
  if (!calib) return;
  if (calib->file) kq_st_close(calib->file);
  for (int32_t i = 0; i < calib->n_owned; i++) free(calib->owned[i]);
  free(calib->owned);
  memset(calib, 0, sizeof *calib);
}

void kq_calib_get_layer(const kq_calib *calib, int32_t layer, kq_calib_layer *out) {
  out->k = find_layer_tensor(calib->file, layer, "k");
  out->q = find_layer_tensor(calib->file, layer, "q");
  out->v = find_layer_tensor(calib->file, layer, "v");
  out->wo = calib->has_wo ? find_layer_tensor(calib->file, layer, "wo") : NULL;
}

kq_status kq_calib_layer_check_finite(const kq_calib *calib, const kq_calib_layer *layer) {
  const kq_st_tensor *ts[4] = {layer->k, layer->q, layer->v, layer->wo};
  for (int i = 0; i < 4; i++) {
    if (!ts[i]) continue;
    kq_status st = kq_st_check_finite(calib->file, ts[i]);
    if (st) return st;
  }
  return KQ_OK;
}

void kq_calib_release_range(const kq_calib *calib, const void *data, uint64_t nbytes) {
  long page = sysconf(_SC_PAGESIZE);
  /* Never on memory that is not a read-only file mapping: MADV_DONTNEED
   * on anonymous memory zeroes it. */
  if (calib->in_memory || page <= 0 || !data) return;
  uintptr_t begin = ((uintptr_t)data + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
  uintptr_t end = ((uintptr_t)data + nbytes) & ~((uintptr_t)page - 1);
  /* The reader maps the file read-only and private: dropped pages are
   * re-read from the file on the next access, never lost. */
  if (end > begin) madvise((void *)begin, end - begin, MADV_DONTNEED);
}

void kq_calib_release_layer(const kq_calib *calib, const kq_calib_layer *layer) {
  const kq_st_tensor *ts[4] = {layer->k, layer->q, layer->v, layer->wo};
  for (int i = 0; i < 4; i++)
    if (ts[i]) kq_calib_release_range(calib, ts[i]->data, ts[i]->nbytes);
}
