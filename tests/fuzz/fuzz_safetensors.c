/*
 * fuzz_safetensors.c — libFuzzer harness for the safetensors reader and the
 * projection-file loader: the input is the whole file. Every tensor the
 * reader accepts is checked for NaN/Inf and looked up again by name, and the
 * metadata is walked, so that any accepted header/offset combination is
 * actually read through. Then the same bytes go to kq_projections_load and,
 * if accepted, every layer view is read.
 */
#include <string.h>

#include "fuzz_util.h"
#include "io/kq_projections_internal.h"
#include "io/kq_safetensors.h"
#include "kqsvd.h"

static volatile float g_sink;

static void read_file(const char *path) {
  kq_st_file *f = NULL;
  if (kq_st_open(path, &f) != KQ_OK) {
    if (strlen(kq_last_error()) == 0) abort(); /* every failure has a message */
    return;
  }
  for (int i = 0; i < kq_st_count(f); i++) {
    const kq_st_tensor *t = kq_st_at(f, i);
    if (kq_st_find(f, t->name) != t) abort();
    (void)kq_st_check_finite(f, t);
    const kq_st_tensor *req = NULL;
    (void)kq_st_require(f, t->name, t->n_dims, t->shape, 1, &req);
    const uint8_t *bytes = t->data;
    uint8_t x = 0;
    for (uint64_t b = 0; b < t->nbytes; b += 4093) x ^= bytes[b];
    if (t->nbytes) x ^= bytes[t->nbytes - 1];
    g_sink = x;
  }
  for (int i = 0; i < kq_st_meta_count(f); i++) {
    const char *k = NULL, *v = NULL;
    kq_st_meta_at(f, i, &k, &v);
    if (!k || !v || kq_st_meta(f, k) == NULL) abort();
  }
  kq_st_close(f);
}

static void read_projections(const char *path) {
  kq_projections *p = NULL;
  if (kq_projections_load(path, &p) != KQ_OK) return;
  kq_projections_info info;
  if (kq_projections_get_info(p, &info) != KQ_OK) abort();
  float acc = 0;
  for (int32_t l = 0; l < info.n_layers; l++) {
    kq_projection_layer v;
    if (kq_projections_layer(p, l, &v) != KQ_OK) abort();
    if (v.rank_k < 1 || v.rank_k > info.head_dim || v.rank_v < 1 || v.rank_v > info.head_dim)
      abort(); /* the loader promises ranks in [1, d] */
    size_t nk = (size_t)info.n_kv_heads * info.head_dim * v.rank_k;
    size_t nv = (size_t)info.n_kv_heads * info.head_dim * v.rank_v;
    acc += v.key_down[nk - 1] + v.query_down[nk - 1] + v.value_down[nv - 1] + v.value_up[nv - 1];
  }
  g_sink = acc;
  kq_projections_destroy(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char path[64];
  kq_fuzz_to_file(data, size, path, sizeof path);
  read_file(path);
  read_projections(path);
  return 0;
}
