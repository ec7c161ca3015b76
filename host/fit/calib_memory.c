/* kq_calib_open_memory: the rows of a public kq_calib_view presented as a
 * calibration (SPEC §2) without a file. The view's arrays become the
 * tensors of an in-memory kq_st_file (head-major rows in place, token-major
 * rows transposed into copies), its fields become the metadata strings
 * kq_calib_writer writes, and kq_calib_from_st validates the result with
 * the file path's own code: the fit downstream cannot tell the two apart. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kq_fit.h"

#define MEMORY_NAME "in-memory calibration"

kq_calib_view kq_calib_view_default(void) {
  kq_calib_view v;
  memset(&v, 0, sizeof v);
  v.struct_size = sizeof v;
  v.rope = KQ_ROPE_POST;
  v.rope_layout = KQ_ROPE_PAIRS;
  v.rope_theta = 10000.0f;
  v.rows = KQ_CALIB_ROWS_TOKEN_MAJOR;
  return v;
}

enum { KIND_K, KIND_Q, KIND_V, KIND_WO, KIND_COUNT };
static const char *const g_kind_names[KIND_COUNT] = {"k", "q", "v", "wo"};

/* The arguments a file cannot get wrong (its shapes come with its data):
 * counts, pointers, enum values. Shape relations (H % Hk, seq_len) are left
 * to the file path's validation. */
static kq_status check_view(const kq_calib_view *v, const char *name) {
  if (v->n_layers < 1)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: n_layers %d (need at least one layer)", name,
                        (int)v->n_layers);
  if (v->n_heads < 1 || v->n_kv_heads < 1 || v->head_dim < 1 || v->n_tokens < 1 || v->hidden < 0 ||
      v->seq_len < 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "%s: heads %d/%d, head_dim %d, n_tokens %lld, hidden %d, seq_len %lld "
                        "(need >= 1 each, hidden and seq_len >= 0)",
                        name, (int)v->n_heads, (int)v->n_kv_heads, (int)v->head_dim,
                        (long long)v->n_tokens, (int)v->hidden, (long long)v->seq_len);
  if (v->rows != KQ_CALIB_ROWS_TOKEN_MAJOR && v->rows != KQ_CALIB_ROWS_HEAD_MAJOR)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: unknown row order %d", name, (int)v->rows);
  if (v->rope != KQ_ROPE_NONE && v->rope != KQ_ROPE_POST && v->rope != KQ_ROPE_PRE)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: unknown rope mode %d", name, (int)v->rope);
  if (v->rope_layout != KQ_ROPE_PAIRS && v->rope_layout != KQ_ROPE_HALVES)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: unknown rope layout %d", name,
                        (int)v->rope_layout);
  /* Before any row is read: the row counts below follow from the heads. */
  kq_status st = kq_calib_check_heads(name, v->n_heads, v->n_kv_heads);
  if (st) return st;
  if (!v->layers) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: layers is NULL", name);
  for (int32_t l = 0; l < v->n_layers; l++) {
    const float *rows[KIND_COUNT] = {v->layers[l].k, v->layers[l].q, v->layers[l].v,
                                     v->layers[l].wo};
    for (int kind = 0; kind < KIND_COUNT; kind++)
      if (!rows[kind] && (kind != KIND_WO || v->hidden > 0))
        return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: layers.%d.%s: rows are NULL%s", name,
                            (int)l, g_kind_names[kind],
                            kind == KIND_WO ? " (hidden > 0: every layer needs wo)" : "");
  }
  return KQ_OK;
}

/* [n, heads, d] -> [heads, n, d]. */
static void to_head_major(float *dst, const float *src, size_t n, size_t heads, size_t d) {
  for (size_t h = 0; h < heads; h++)
    for (size_t t = 0; t < n; t++)
      memcpy(dst + (h * n + t) * d, src + (t * heads + h) * d, d * sizeof(float));
}

static kq_status own(kq_calib *c, void *buf) {
  void **p = realloc(c->owned, ((size_t)c->n_owned + 1) * sizeof *p);
  if (!p) {
    free(buf);
    return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: calibration copies", c->path);
  }
  c->owned = p;
  c->owned[c->n_owned++] = buf;
  return KQ_OK;
}

/* The metadata kq_calib_writer writes for the same parameters, in its
 * order, then the model identity. keys/values hold up to 6 entries; text
 * is scratch for the numbers. */
static int view_meta(const kq_calib_view *v, const char **keys, const char **values,
                     char text[2][64]) {
  static const char *const rope[] = {"none", "post", "pre"};
  int n = 0;
  if (v->seq_len > 0) {
    snprintf(text[0], 64, "%lld", (long long)v->seq_len);
    keys[n] = "seq_len", values[n++] = text[0];
  }
  keys[n] = "rope", values[n++] = rope[v->rope];
  snprintf(text[1], 64, "%.9g", (double)v->rope_theta);
  keys[n] = "rope_theta", values[n++] = text[1];
  keys[n] = "rope_layout", values[n++] = v->rope_layout == KQ_ROPE_HALVES ? "halves" : "pairs";
  if (v->model_name) keys[n] = "model_name", values[n++] = v->model_name;
  if (v->model_sha256) keys[n] = "model_sha256", values[n++] = v->model_sha256;
  return n;
}

static kq_st_tensor tensor_of(const char *name, int n_dims, const int64_t *shape,
                              const void *data) {
  kq_st_tensor t;
  memset(&t, 0, sizeof t);
  t.name = name;
  t.dtype = KQ_DTYPE_F32;
  t.n_dims = n_dims;
  t.n_elements = 1;
  for (int i = 0; i < n_dims; i++) {
    t.shape[i] = shape[i];
    t.n_elements *= (uint64_t)shape[i];
  }
  t.nbytes = t.n_elements * sizeof(float);
  t.data = data;
  return t;
}

/* Tensors of `calib` with layers.{l}.k and .q taken from bufs (rotated) and
 * rope "post" in the metadata: what kq_calib_open_positions writes to its
 * temporary file, as a new in-memory file. */
static kq_status rotated_file(const kq_calib *c, void **bufs, kq_st_file **out) {
  int count = kq_st_count(c->file), meta = kq_st_meta_count(c->file);
  kq_st_tensor *ts = kq_calloc_array((size_t)count + 1, sizeof *ts, "rotated calibration");
  const char **keys = kq_calloc_array((size_t)meta + 1, sizeof *keys, "rotated metadata");
  const char **values = kq_calloc_array((size_t)meta + 1, sizeof *values, "rotated metadata");
  kq_status st = ts && keys && values ? KQ_OK : KQ_ERR_OUT_OF_MEMORY;
  for (int i = 0; !st && i < meta; i++) {
    kq_st_meta_at(c->file, i, &keys[i], &values[i]);
    if (strcmp(keys[i], "rope") == 0) values[i] = "post";
  }
  for (int i = 0; !st && i < count; i++) ts[i] = *kq_st_at(c->file, i);
  for (int32_t l = 0; !st && l < c->n_layers; l++) {
    kq_calib_layer lt;
    kq_calib_get_layer(c, l, &lt);
    for (int i = 0; i < count; i++) {
      if (strcmp(ts[i].name, lt.k->name) == 0) ts[i].data = bufs[(size_t)l * 2];
      if (strcmp(ts[i].name, lt.q->name) == 0) ts[i].data = bufs[(size_t)l * 2 + 1];
    }
  }
  if (!st) st = kq_st_open_memory(c->path, count, ts, meta, keys, values, out);
  free(ts);
  free(keys);
  free(values);
  return st;
}

/* kq_calib_open_positions for an in-memory calibration: the rotated rows
 * stay in memory, owned by the new calib. */
static kq_status rotate_in_memory(kq_calib *src, int64_t positions, uint64_t seed, int n_threads,
                                  kq_calib *out) {
  if (src->rope != KQ_ROPE_PRE)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "%s: positions %lld needs a calibration captured with rope pre (un-rotated "
                        "keys and queries); this one has rope %s",
                        src->path, (long long)positions,
                        src->rope == KQ_ROPE_POST ? "post" : "none");
  size_t n = (size_t)src->n_layers * 2;
  void **bufs = kq_calloc_array(n, sizeof *bufs, "rotated layers");
  if (!bufs) return KQ_ERR_OUT_OF_MEMORY;
  kq_st_file *file = NULL;
  kq_status st = kq_calib_rotate_rows(src, positions, seed, n_threads, bufs);
  if (st)
    st = kq_error_prefix(st, "%s: rotating to positions < %lld", src->path, (long long)positions);
  if (!st) st = rotated_file(src, bufs, &file);
  if (!st) st = kq_calib_from_st(file, out);
  if (st) {
    for (size_t i = 0; i < n; i++) free(bufs[i]);
    free(bufs);
    return st;
  }
  out->in_memory = 1;
  /* The new calib owns the rotated rows and takes over the old one's
   * copies (its v rows may be among them). */
  for (size_t i = 0; i < n; i++) {
    if (st == KQ_OK)
      st = own(out, bufs[i]);
    else
      free(bufs[i]);
  }
  free(bufs);
  for (int32_t i = 0; st == KQ_OK && i < src->n_owned; i++) {
    st = own(out, src->owned[i]);
    src->owned[i] = NULL;
  }
  if (st) kq_calib_close(out);
  return st;
}

kq_status kq_calib_open_memory(const kq_calib_view *view, int64_t positions, uint64_t seed,
                               int n_threads, kq_calib *out) {
  memset(out, 0, sizeof *out);
  if (!view) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "calibration view is NULL");
  kq_calib_view v = kq_calib_view_default();
  kq_status st =
      kq_params_adopt(&v, sizeof v, sizeof v, view, "kq_calib_view", "kq_calib_view_default");
  if (st) return st;
  const char *name = v.name ? v.name : MEMORY_NAME;
  if ((st = check_view(&v, name)) != KQ_OK) return st;

  /* Row copies first (token-major), owned by a scratch calib until the
   * validated one takes them over. */
  const int32_t L = v.n_layers;
  const size_t T = (size_t)v.n_tokens, d = (size_t)v.head_dim;
  const size_t heads[3] = {(size_t)v.n_kv_heads, (size_t)v.n_heads, (size_t)v.n_kv_heads};
  kq_calib scratch;
  memset(&scratch, 0, sizeof scratch);
  scratch.path = name;
  kq_st_tensor *ts = kq_calloc_array((size_t)L * KIND_COUNT, sizeof *ts, "calibration tensors");
  char(*names)[48] = kq_calloc_array((size_t)L * KIND_COUNT, sizeof *names, "tensor names");
  if (!ts || !names) st = KQ_ERR_OUT_OF_MEMORY;
  int count = 0;
  for (int32_t l = 0; !st && l < L; l++) {
    const float *rows[KIND_COUNT] = {v.layers[l].k, v.layers[l].q, v.layers[l].v, v.layers[l].wo};
    for (int kind = 0; !st && kind < KIND_COUNT; kind++) {
      if (kind == KIND_WO && v.hidden == 0) continue;
      char *tname = names[(size_t)l * KIND_COUNT + (size_t)kind];
      snprintf(tname, 48, "layers.%d.%s", (int)l, g_kind_names[kind]);
      const float *data = rows[kind];
      if (kind == KIND_WO) {
        int64_t shape[2] = {v.hidden, (int64_t)v.n_heads * v.head_dim};
        ts[count++] = tensor_of(tname, 2, shape, data);
        continue;
      }
      size_t floats;
      if (!kq_mul_size(T, heads[kind] * d, &floats)) {
        st = kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: %s: %lld tokens overflow", name, tname,
                          (long long)v.n_tokens);
        break;
      }
      if (v.rows == KQ_CALIB_ROWS_TOKEN_MAJOR) {
        float *copy = kq_malloc_array(floats, sizeof(float), "calibration copy");
        if (!copy) {
          st = kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s: %s", name, tname);
          break;
        }
        to_head_major(copy, data, T, heads[kind], d);
        if ((st = own(&scratch, copy)) != KQ_OK) break;
        data = copy;
      }
      int64_t shape[3] = {(int64_t)heads[kind], v.n_tokens, v.head_dim};
      ts[count++] = tensor_of(tname, 3, shape, data);
    }
  }
  const char *keys[6], *values[6];
  char text[2][64];
  int n_meta = view_meta(&v, keys, values, text);
  kq_st_file *file = NULL;
  if (!st) st = kq_st_open_memory(name, count, ts, n_meta, keys, values, &file);
  free(ts);
  free(names);
  if (!st) st = kq_calib_from_st(file, out);
  if (st) {
    kq_calib_close(&scratch);
    return st;
  }
  out->in_memory = 1;
  out->owned = scratch.owned;
  out->n_owned = scratch.n_owned;
  if (positions <= 0) return KQ_OK;
  kq_calib rotated;
  st = rotate_in_memory(out, positions, seed, n_threads, &rotated);
  kq_calib_close(out);
  if (st == KQ_OK) *out = rotated;
  return st;
}
