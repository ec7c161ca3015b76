/* Position-robust calibration (fit --positions): a rope pre calibration
 * (un-rotated keys and queries) becomes a rope post one in which every key
 * and query row sits at its own position drawn uniformly from [0, N).
 *
 * Why independent positions per row: KQ-SVD factors the Gram matrices of
 * the keys and of the queries (R_K, R_Q), i.e. its objective sums over
 * every (query, key) pair of the calibration. With independent uniform
 * positions, each pair's relative distance is the difference of two
 * uniforms on [0, N), so the fitted basis sees every distance |m − n| < N
 * a post-RoPE cache can meet, and every absolute key position, instead of
 * the few hundred the capture's sequences held. Sampling the distance of
 * one token's query and key together would add nothing: a token's query
 * meets the other tokens' keys, not (only) its own.
 *
 * The rotated layers go to a temporary safetensors file next to the
 * output (removed from its folder once mapped), so every reader of the
 * calibration (factors, joint, byte allocation) sees the same rotated data
 * through the usual mapping, page release included. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kq_fit.h"

int64_t kq_calib_row_position(uint64_t seed, int64_t positions, int32_t layer, int32_t side,
                              int32_t head, int64_t token) {
  if (positions <= 1) return 0;
  /* The segment-rotation seed mixer doubles as a hash of the row; a token
   * index above 2^31 folds its high half into the head. */
  uint64_t h = kq_rotation_seed(seed, layer, side, head ^ (int32_t)(token >> 31),
                                (int32_t)(token & 0x7fffffff));
  return (int64_t)(h % (uint64_t)positions);
}

typedef struct rotate_job {
  const kq_calib *calib;
  const kq_st_tensor *src;
  void *dst;
  int32_t layer, side; /* side 0 keys, 1 queries */
  int64_t positions;
  uint64_t seed;
} rotate_job;

static void store_row(kq_dtype dtype, const double *x, void *dst, int32_t d) {
  for (int32_t i = 0; i < d; i++) {
    float f = (float)x[i];
    if (dtype == KQ_DTYPE_F32)
      ((float *)dst)[i] = f;
    else if (dtype == KQ_DTYPE_F16)
      ((uint16_t *)dst)[i] = kq_f32_to_f16(f);
    else
      ((uint16_t *)dst)[i] = kq_f32_to_bf16(f);
  }
}

/* One head of one tensor: [T, d] rows rotated into dst. */
static kq_status rotate_head(void *ctx, int64_t head) {
  rotate_job *job = ctx;
  const kq_calib *c = job->calib;
  int32_t d = c->head_dim;
  size_t es = kq_dtype_size(job->src->dtype), row_bytes = (size_t)d * es;
  double *x = kq_malloc_array((size_t)d, sizeof *x, "rotated row");
  if (!x) return KQ_ERR_OUT_OF_MEMORY;
  for (int64_t t = 0; t < c->n_tokens; t++) {
    size_t off = ((size_t)head * (size_t)c->n_tokens + (size_t)t) * row_bytes;
    kq_convert_to_f64(job->src->dtype, (const char *)job->src->data + off, x, (size_t)d);
    int64_t pos =
        kq_calib_row_position(job->seed, job->positions, job->layer, job->side, (int32_t)head, t);
    kq_rope_rotate(x, d, pos, c->rope_theta, c->rope_layout);
    store_row(job->src->dtype, x, (char *)job->dst + off, d);
  }
  free(x);
  kq_calib_release_range(c, (const char *)job->src->data + (size_t)head * c->n_tokens * row_bytes,
                         (uint64_t)c->n_tokens * row_bytes);
  return KQ_OK;
}

kq_status kq_calib_rotate_rows(const kq_calib *src, int64_t positions, uint64_t seed, int n_threads,
                               void **bufs) {
  kq_status st = KQ_OK;
  for (int32_t l = 0; !st && l < src->n_layers; l++) {
    kq_calib_layer lt;
    kq_calib_get_layer(src, l, &lt);
    const kq_st_tensor *ts[2] = {lt.k, lt.q};
    for (int i = 0; !st && i < 2; i++) {
      const kq_st_tensor *t = ts[i];
      void *buf = kq_malloc_array((size_t)t->nbytes, 1, "rotated calibration");
      if (!buf) return KQ_ERR_OUT_OF_MEMORY;
      bufs[(size_t)l * 2 + (size_t)i] = buf;
      rotate_job job = {.calib = src,
                        .src = t,
                        .dst = buf,
                        .layer = l,
                        .side = i,
                        .positions = positions,
                        .seed = seed};
      st = kq_parallel_for(t->shape[0], n_threads, rotate_head, &job);
    }
  }
  return st;
}

/* Writes the rotated copy of `src` (opened, rope pre) to tmp_path. */
static kq_status write_rotated(const kq_calib *src, int64_t positions, uint64_t seed, int n_threads,
                               const char *tmp_path) {
  int32_t L = src->n_layers;
  void **bufs = kq_calloc_array((size_t)L * 2, sizeof *bufs, "rotated layers");
  if (!bufs) return KQ_ERR_OUT_OF_MEMORY;
  kq_status st = kq_calib_rotate_rows(src, positions, seed, n_threads, bufs);
  kq_st_writer *w = NULL;
  if (!st) st = kq_st_writer_create(tmp_path, &w);
  for (int i = 0; !st && i < kq_st_meta_count(src->file); i++) {
    const char *key, *value;
    kq_st_meta_at(src->file, i, &key, &value);
    st = kq_st_writer_meta(w, key, value);
  }
  if (!st) st = kq_st_writer_meta(w, "rope", "post");
  for (int32_t l = 0; !st && l < L; l++) {
    kq_calib_layer lt;
    kq_calib_get_layer(src, l, &lt);
    const kq_st_tensor *ts[4] = {lt.k, lt.q, lt.v, lt.wo};
    for (int i = 0; !st && i < 4; i++) {
      const kq_st_tensor *t = ts[i];
      if (!t) continue;
      const void *data = i < 2 ? bufs[(size_t)l * 2 + (size_t)i] : t->data;
      st = kq_st_writer_add(w, t->name, t->dtype, t->n_dims, t->shape, data);
    }
  }
  if (!st) st = kq_st_writer_commit(w, NULL);
  kq_st_writer_destroy(w);
  for (size_t i = 0; i < (size_t)L * 2; i++) free(bufs[i]);
  free(bufs);
  return st;
}

kq_status kq_calib_open_positions(const char *path, int64_t positions, uint64_t seed, int n_threads,
                                  const char *tmp_near, kq_calib *out) {
  if (positions <= 0) return kq_calib_open(path, out);
  kq_calib src;
  kq_status st = kq_calib_open(path, &src);
  if (st) return st;
  if (src.rope != KQ_ROPE_PRE) {
    st = kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                      "%s: positions %lld needs a calibration captured with rope pre (un-rotated "
                      "keys and queries); this file has rope %s",
                      src.path, (long long)positions, src.rope == KQ_ROPE_POST ? "post" : "none");
    kq_calib_close(&src);
    return st;
  }
  size_t n = strlen(tmp_near) + 48;
  char *tmp = kq_malloc_array(n, 1, "temporary path");
  if (!tmp) {
    kq_calib_close(&src);
    return KQ_ERR_OUT_OF_MEMORY;
  }
  snprintf(tmp, n, "%s.positions.%ld", tmp_near, (long)getpid());
  st = write_rotated(&src, positions, seed, n_threads, tmp);
  kq_calib_close(&src);
  if (st) {
    free(tmp);
    return kq_error_prefix(st, "%s: rotating to positions < %lld", path, (long long)positions);
  }
  st = kq_calib_open(tmp, out);
  unlink(tmp); /* the mapping stays valid; nothing is left behind */
  free(tmp);
  if (st) return st;
  out->path = path;
  return KQ_OK;
}
