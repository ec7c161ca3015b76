/*
 * kq_calib_writer_*: the SPEC §2 calibration file written from an engine's
 * forward passes. Each add spills one record to an unlinked temporary file
 * beside the target, transposed to the file's head-major order:
 *   q [H, n, d] | k [Hk, n, d] | v [Hk, n, d]   (F32)
 * so that at close every head's rows of a layer are one read per record.
 * Close streams each tensor from the spill through the safetensors writer
 * (kq_st_writer_add_source), which writes through kq_output_file: a
 * temporary name, fsync, rename. Tensor order and metadata are those the
 * capture command always wrote.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kq_output_file.h"
#include "kq_safetensors.h"

/* Floats converted per read while streaming a tensor out. */
#define SOURCE_FLOATS 65536

typedef struct spill_record {
  uint64_t offset; /* bytes into the spill file */
  int32_t n;       /* tokens */
} spill_record;

typedef struct writer_layer {
  spill_record *records;
  int32_t n_records, cap_records;
  int64_t tokens;
  int64_t wo_offset; /* -1: not set */
} writer_layer;

enum { KIND_Q, KIND_K, KIND_V, KIND_WO, KIND_COUNT };
static const char *const g_kind_names[KIND_COUNT] = {"q", "k", "v", "wo"};

/* One tensor being streamed out: a cursor over (head, record, element). */
typedef struct tensor_source {
  struct kq_calib_writer *w;
  int32_t layer, kind;
  int32_t head, record;
  uint64_t element; /* within the current piece */
} tensor_source;

struct kq_calib_writer {
  char *path;
  kq_calib_writer_params p;
  int spill_fd;
  uint64_t spill_bytes;
  writer_layer *layers;
  float *scratch; /* a transposed record, then the streaming buffer */
  size_t scratch_floats;
  kq_st_writer *st; /* metadata collected from open on */
};

kq_calib_writer_params kq_calib_writer_default_params(void) {
  kq_calib_writer_params p = {.rope = KQ_ROPE_POST,
                              .rope_layout = KQ_ROPE_PAIRS,
                              .rope_theta = 10000.0f,
                              .dtype = KQ_DTYPE_F32};
  return p;
}

static kq_status check_params(const char *path, const kq_calib_writer_params *p) {
  if (p->n_layers < 1 || p->n_heads < 1 || p->n_kv_heads < 1 || p->head_dim < 1 ||
      p->n_heads % p->n_kv_heads != 0 || p->hidden < 0 || p->seq_len < 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "%s: calibration writer: layers %d, heads %d/%d, head_dim %d, hidden %d, "
                        "seq_len %d (need >= 1 each, hidden and seq_len >= 0, heads a multiple "
                        "of kv heads)",
                        path, (int)p->n_layers, (int)p->n_heads, (int)p->n_kv_heads,
                        (int)p->head_dim, (int)p->hidden, (int)p->seq_len);
  if (p->dtype != KQ_DTYPE_F32 && p->dtype != KQ_DTYPE_F16 && p->dtype != KQ_DTYPE_BF16)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "%s: calibration writer: dtype %d (F32, F16 or BF16)", path, (int)p->dtype);
  if (p->rope != KQ_ROPE_NONE && p->rope != KQ_ROPE_POST && p->rope != KQ_ROPE_PRE)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: calibration writer: unknown rope mode %d",
                        path, (int)p->rope);
  if (p->rope_layout != KQ_ROPE_PAIRS && p->rope_layout != KQ_ROPE_HALVES)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: calibration writer: unknown rope layout %d",
                        path, (int)p->rope_layout);
  if (!(p->rope_theta > 0.0f) || p->rope_theta > 1e30f)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: calibration writer: rope_theta %g", path,
                        (double)p->rope_theta);
  return KQ_OK;
}

/* The params' own metadata, in the order capture always wrote it. */
static kq_status write_param_meta(kq_calib_writer *w) {
  char text[64];
  kq_status st = KQ_OK;
  if (w->p.seq_len > 0) {
    snprintf(text, sizeof text, "%d", (int)w->p.seq_len);
    st = kq_st_writer_meta(w->st, "seq_len", text);
  }
  static const char *const rope[] = {"none", "post", "pre"};
  if (st == KQ_OK) st = kq_st_writer_meta(w->st, "rope", rope[w->p.rope]);
  snprintf(text, sizeof text, "%.9g", (double)w->p.rope_theta);
  if (st == KQ_OK) st = kq_st_writer_meta(w->st, "rope_theta", text);
  if (st == KQ_OK)
    st = kq_st_writer_meta(w->st, "rope_layout",
                           w->p.rope_layout == KQ_ROPE_HALVES ? "halves" : "pairs");
  return st;
}

/* An unlinked file beside `path`: spilled rows stay on the target's file
 * system, not in a RAM-backed /tmp. */
static kq_status open_spill(const char *path, int *out_fd) {
  size_t n = strlen(path) + 16;
  char *tmpl = kq_malloc_array(n, 1, "spill file name");
  if (!tmpl) return KQ_ERR_OUT_OF_MEMORY;
  snprintf(tmpl, n, "%s.spill.XXXXXX", path);
  int fd = mkostemp(tmpl, O_CLOEXEC);
  if (fd < 0) {
    kq_status st = kq_set_error(KQ_ERR_IO, "%s: cannot create the spill file %s: %s", path, tmpl,
                                strerror(errno));
    free(tmpl);
    return st;
  }
  unlink(tmpl);
  free(tmpl);
  *out_fd = fd;
  return KQ_OK;
}

void kq_calib_writer_abort(kq_calib_writer *w) {
  if (!w) return;
  if (w->spill_fd >= 0) close(w->spill_fd);
  if (w->layers)
    for (int32_t l = 0; l < w->p.n_layers; l++) free(w->layers[l].records);
  free(w->layers);
  free(w->scratch);
  kq_st_writer_destroy(w->st);
  free(w->path);
  free(w);
}

kq_status kq_calib_writer_open(const char *path, const kq_calib_writer_params *params,
                               kq_calib_writer **out_writer) {
  if (!out_writer || !path || !params)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_calib_writer_open: NULL argument");
  *out_writer = NULL;
  kq_status st = check_params(path, params);
  if (st != KQ_OK) return st;
  kq_calib_writer *w = calloc(1, sizeof *w);
  if (!w) return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: calibration writer", path);
  w->spill_fd = -1;
  w->p = *params;
  size_t n = strlen(path) + 1;
  w->path = kq_malloc_array(n, 1, "calibration writer path");
  w->layers = kq_calloc_array((size_t)params->n_layers, sizeof *w->layers, "calibration layers");
  if (!w->path || !w->layers) {
    kq_calib_writer_abort(w);
    return KQ_ERR_OUT_OF_MEMORY;
  }
  memcpy(w->path, path, n);
  for (int32_t l = 0; l < params->n_layers; l++) w->layers[l].wo_offset = -1;
  st = kq_st_writer_create(path, &w->st);
  if (st == KQ_OK) st = write_param_meta(w);
  if (st == KQ_OK) st = open_spill(path, &w->spill_fd);
  if (st != KQ_OK) {
    kq_calib_writer_abort(w);
    return st;
  }
  *out_writer = w;
  return KQ_OK;
}

static kq_status ensure_scratch(kq_calib_writer *w, size_t floats) {
  if (w->scratch_floats >= floats) return KQ_OK;
  float *p = kq_malloc_array(floats, sizeof(float), "calibration writer scratch");
  if (!p) return kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s", w->path);
  free(w->scratch);
  w->scratch = p;
  w->scratch_floats = floats;
  return KQ_OK;
}

static kq_status spill_write(kq_calib_writer *w, const void *data, size_t bytes, uint64_t at) {
  const unsigned char *p = data;
  while (bytes > 0) {
    ssize_t got = pwrite(w->spill_fd, p, bytes, (off_t)at);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0)
      return kq_set_error(KQ_ERR_IO, "%s: writing the spill file: %s", w->path,
                          got < 0 ? strerror(errno) : "no progress");
    p += got;
    at += (uint64_t)got;
    bytes -= (size_t)got;
  }
  return KQ_OK;
}

static kq_status spill_read(const kq_calib_writer *w, void *data, size_t bytes, uint64_t at) {
  unsigned char *p = data;
  while (bytes > 0) {
    ssize_t got = pread(w->spill_fd, p, bytes, (off_t)at);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0)
      return kq_set_error(KQ_ERR_IO, "%s: reading the spill file back: %s", w->path,
                          got < 0 ? strerror(errno) : "short file");
    p += got;
    at += (uint64_t)got;
    bytes -= (size_t)got;
  }
  return KQ_OK;
}

static kq_status check_layer(const kq_calib_writer *w, int32_t layer, const char *fn) {
  if (!w) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: writer is NULL", fn);
  if (layer < 0 || layer >= w->p.n_layers)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: %s: layer %d outside [0, %d)", w->path, fn,
                        (int)layer, (int)w->p.n_layers);
  return KQ_OK;
}

/* KQ_ERR_NUMERIC naming the first non-finite row of x [n, heads, d]. */
static kq_status check_finite(const kq_calib_writer *w, int32_t layer, const char *what,
                              const float *x, size_t n, size_t row) {
  if (!kq_any_nonfinite_f32(x, n * row)) return KQ_OK;
  size_t i = 0;
  while (i < n * row && isfinite(x[i])) i++;
  return kq_set_error(KQ_ERR_NUMERIC, "%s: layer %d: %s of row %zu is not finite", w->path,
                      (int)layer, what, i / row);
}

kq_status kq_calib_writer_add(kq_calib_writer *w, int32_t layer, int32_t n_tokens, const float *q,
                              const float *k, const float *v) {
  kq_status st = check_layer(w, layer, "kq_calib_writer_add");
  if (st != KQ_OK) return st;
  if (n_tokens < 1 || !q || !k || !v)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "%s: layer %d: %d tokens (need >= 1 with non-NULL q, k, v)", w->path,
                        (int)layer, (int)n_tokens);
  const size_t n = (size_t)n_tokens, d = (size_t)w->p.head_dim;
  const size_t H = (size_t)w->p.n_heads, Hk = (size_t)w->p.n_kv_heads;
  st = check_finite(w, layer, "q", q, n, H * d);
  if (st == KQ_OK) st = check_finite(w, layer, "k", k, n, Hk * d);
  if (st == KQ_OK) st = check_finite(w, layer, "v", v, n, Hk * d);
  size_t floats;
  if (st == KQ_OK && !kq_mul_size(n, (H + 2 * Hk) * d, &floats))
    st = kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: layer %d: %d tokens overflow", w->path,
                      (int)layer, (int)n_tokens);
  if (st == KQ_OK) st = ensure_scratch(w, floats);
  writer_layer *L = &w->layers[layer];
  if (st == KQ_OK && L->n_records == L->cap_records) {
    int32_t cap = L->cap_records ? L->cap_records * 2 : 64;
    spill_record *r = realloc(L->records, (size_t)cap * sizeof *r);
    if (!r)
      st = kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: layer %d: record list", w->path, (int)layer);
    else
      L->records = r, L->cap_records = cap;
  }
  if (st != KQ_OK) return st;
  /* [n, heads, d] -> [heads, n, d] for each of q, k, v. */
  const float *src[3] = {q, k, v};
  const size_t heads[3] = {H, Hk, Hk};
  float *dst = w->scratch;
  for (int s = 0; s < 3; s++) {
    for (size_t h = 0; h < heads[s]; h++)
      for (size_t t = 0; t < n; t++)
        memcpy(dst + (h * n + t) * d, src[s] + (t * heads[s] + h) * d, d * sizeof(float));
    dst += heads[s] * n * d;
  }
  uint64_t at = w->spill_bytes;
  st = spill_write(w, w->scratch, floats * sizeof(float), at);
  if (st != KQ_OK) return kq_error_prefix(st, "layer %d", (int)layer);
  w->spill_bytes += floats * sizeof(float);
  L->records[L->n_records++] = (spill_record){.offset = at, .n = n_tokens};
  L->tokens += n_tokens;
  return KQ_OK;
}

kq_status kq_calib_writer_set_wo(kq_calib_writer *w, int32_t layer, const float *wo) {
  kq_status st = check_layer(w, layer, "kq_calib_writer_set_wo");
  if (st != KQ_OK) return st;
  if (w->p.hidden == 0 || !wo)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "%s: layer %d: wo needs hidden > 0 in the params and non-NULL data",
                        w->path, (int)layer);
  size_t rows = (size_t)w->p.hidden, cols = (size_t)w->p.n_heads * w->p.head_dim;
  st = check_finite(w, layer, "wo", wo, rows, cols);
  if (st != KQ_OK) return st;
  uint64_t at = w->spill_bytes;
  st = spill_write(w, wo, rows * cols * sizeof(float), at);
  if (st != KQ_OK) return kq_error_prefix(st, "layer %d wo", (int)layer);
  w->spill_bytes += rows * cols * sizeof(float);
  w->layers[layer].wo_offset = (int64_t)at;
  return KQ_OK;
}

kq_status kq_calib_writer_set_meta(kq_calib_writer *w, const char *key, const char *value) {
  if (!w || !key || !value || !*key)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "kq_calib_writer_set_meta: NULL or empty argument");
  static const char *const owned[] = {"seq_len", "rope", "rope_theta", "rope_layout"};
  for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++)
    if (strcmp(key, owned[i]) == 0)
      return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                          "%s: metadata '%s' comes from the writer's params", w->path, key);
  return kq_st_writer_meta(w->st, key, value);
}

int64_t kq_calib_writer_tokens(const kq_calib_writer *w, int32_t layer) {
  if (!w || layer < 0 || layer >= w->p.n_layers) return 0;
  return w->layers[layer].tokens;
}

/* Next `bytes` of a tensor: q/k/v are pieces (head h, record r) in h-major
 * order, each n_r · d floats; wo is one piece. */
static kq_status source_next(void *user, void *dst, size_t bytes) {
  tensor_source *s = user;
  kq_calib_writer *w = s->w;
  const writer_layer *L = &w->layers[s->layer];
  const size_t esz = kq_dtype_size(w->p.dtype), d = (size_t)w->p.head_dim;
  const size_t H = (size_t)w->p.n_heads, Hk = (size_t)w->p.n_kv_heads;
  size_t left = bytes / esz;
  unsigned char *out = dst;
  while (left > 0) {
    uint64_t piece_at, piece_elems;
    if (s->kind == KIND_WO) {
      piece_at = (uint64_t)L->wo_offset;
      piece_elems = (uint64_t)w->p.hidden * H * d;
    } else {
      const spill_record *r = &L->records[s->record];
      uint64_t n = (uint64_t)r->n,
               before = s->kind == KIND_Q ? 0 : (H + (s->kind - 1) * Hk) * n * d;
      piece_at = r->offset + (before + (uint64_t)s->head * n * d) * sizeof(float);
      piece_elems = n * d;
    }
    size_t take = piece_elems - s->element < left ? (size_t)(piece_elems - s->element) : left;
    if (take > SOURCE_FLOATS) take = SOURCE_FLOATS;
    kq_status st =
        spill_read(w, w->scratch, take * sizeof(float), piece_at + s->element * sizeof(float));
    if (st != KQ_OK) return st;
    if (w->p.dtype == KQ_DTYPE_F32) {
      memcpy(out, w->scratch, take * sizeof(float));
    } else {
      uint16_t *h = (uint16_t *)(void *)out;
      for (size_t i = 0; i < take; i++)
        h[i] = w->p.dtype == KQ_DTYPE_F16 ? kq_f32_to_f16(w->scratch[i])
                                          : kq_f32_to_bf16(w->scratch[i]);
    }
    out += take * esz;
    left -= take;
    s->element += take;
    if (s->element == piece_elems) {
      s->element = 0;
      if (++s->record == L->n_records) {
        s->record = 0;
        s->head++;
      }
    }
  }
  return KQ_OK;
}

static kq_status check_complete(const kq_calib_writer *w) {
  int64_t T = w->layers[0].tokens;
  for (int32_t l = 0; l < w->p.n_layers; l++) {
    const writer_layer *L = &w->layers[l];
    if (L->tokens < 1 || L->tokens != T)
      return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                          "%s: layer %d has %lld tokens, layer 0 has %lld (every layer needs the "
                          "same tokens, at least one)",
                          w->path, (int)l, (long long)L->tokens, (long long)T);
    if (w->p.hidden > 0 && L->wo_offset < 0)
      return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: layer %d: wo was never set", w->path,
                          (int)l);
  }
  if (w->p.seq_len > 0 && T % w->p.seq_len != 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "%s: %lld tokens are not whole sequences of seq_len %d", w->path,
                        (long long)T, (int)w->p.seq_len);
  return KQ_OK;
}

kq_status kq_calib_writer_close(kq_calib_writer *w) {
  if (!w) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_calib_writer_close: writer is NULL");
  kq_status st = check_complete(w);
  const int32_t nl = w->p.n_layers, kinds = w->p.hidden > 0 ? KIND_COUNT : KIND_WO;
  tensor_source *src =
      st == KQ_OK ? kq_calloc_array((size_t)nl * KIND_COUNT, sizeof *src, "tensor sources") : NULL;
  if (st == KQ_OK && !src) st = KQ_ERR_OUT_OF_MEMORY;
  if (st == KQ_OK) st = ensure_scratch(w, SOURCE_FLOATS);
  const int64_t T = w->layers[0].tokens, H = w->p.n_heads, Hk = w->p.n_kv_heads, d = w->p.head_dim;
  for (int32_t l = 0; l < nl && st == KQ_OK; l++) {
    for (int32_t kind = 0; kind < kinds && st == KQ_OK; kind++) {
      tensor_source *s = &src[(size_t)l * KIND_COUNT + (size_t)kind];
      *s = (tensor_source){.w = w, .layer = l, .kind = kind};
      int64_t shape[3] = {kind == KIND_Q ? H : Hk, T, d};
      int n_dims = 3;
      if (kind == KIND_WO) {
        shape[0] = w->p.hidden;
        shape[1] = H * d;
        n_dims = 2;
      }
      char name[64];
      snprintf(name, sizeof name, "layers.%d.%s", (int)l, g_kind_names[kind]);
      st = kq_st_writer_add_source(w->st, name, w->p.dtype, n_dims, shape, source_next, s);
    }
  }
  if (st == KQ_OK) st = kq_st_writer_commit(w->st, w->p.cancel);
  free(src);
  kq_calib_writer_abort(w);
  return st;
}
