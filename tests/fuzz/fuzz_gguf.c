/*
 * fuzz_gguf.c — libFuzzer harness for the GGUF reader: the input is the
 * whole file. Every accepted key/value is read through (strings, arrays of
 * strings and numbers), the typed getters are tried on every key, and every
 * tensor whose type can be dequantised and which is small (<= 1 MiB of
 * floats) is dequantised, so that any accepted extent is really touched.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "model/kq_gguf.h"

static volatile uint64_t g_sink;

static void read_kvs(const kq_gguf *f) {
  uint64_t x = 0;
  for (int64_t i = 0; i < kq_gguf_kv_count(f); i++) {
    const kq_gguf_kv *kv = kq_gguf_kv_at(f, i);
    if (!kv || !kv->key || kq_gguf_find_kv(f, kv->key) == NULL) abort();
    if (kv->type == KQ_GGUF_STRING && kv->str.len) x += (uint8_t)kv->str.ptr[kv->str.len - 1];
    if (kv->type == KQ_GGUF_ARRAY && kv->n) {
      if (kv->elem_type == KQ_GGUF_STRING) {
        const kq_gguf_str *s = &kv->strs[kv->n - 1];
        if (s->len) x += (uint8_t)s->ptr[s->len - 1];
      } else if (kv->data) {
        x += ((const uint8_t *)kv->data)[0];
      }
    }
    uint32_t u;
    float fl;
    int b;
    kq_gguf_str s;
    const kq_gguf_kv *arr;
    if (kq_gguf_get_u32(f, kv->key, &u) == KQ_OK) x += u;
    if (kq_gguf_get_f32(f, kv->key, &fl) == KQ_OK) x += (uint64_t)isnan(fl);
    if (kq_gguf_get_bool(f, kv->key, &b) == KQ_OK) x += (uint64_t)b;
    if (kq_gguf_get_str(f, kv->key, &s) == KQ_OK) x += s.len;
    if (kq_gguf_get_array(f, kv->key, KQ_GGUF_STRING, &arr) == KQ_OK) x += arr->n;
  }
  g_sink = x;
}

static void read_tensors(const kq_gguf *f) {
  for (int64_t i = 0; i < kq_gguf_tensor_count(f); i++) {
    const kq_gguf_tensor *t = kq_gguf_tensor_at(f, i);
    if (!t || kq_gguf_find_tensor(f, t->name) == NULL) abort();
    if (!kq_gguf_type_can_dequantize(t->type) || t->n_elements == 0 || t->n_elements > (1u << 18))
      continue;
    float *dst = malloc(t->n_elements * sizeof *dst);
    if (!dst) abort();
    if (kq_gguf_dequantize(f, t, dst) == KQ_OK) g_sink += (uint64_t)isnan(dst[t->n_elements - 1]);
    free(dst);
    float *loaded = NULL;
    if (kq_gguf_load_f32(f, t->name, t->n_dims, t->ne, &loaded) == KQ_OK) free(loaded);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char path[64];
  kq_fuzz_to_file(data, size, path, sizeof path);
  kq_gguf *f = NULL;
  if (kq_gguf_open(path, &f) != KQ_OK) return 0;
  (void)kq_gguf_version(f);
  (void)kq_gguf_alignment(f);
  read_kvs(f);
  read_tensors(f);
  kq_gguf_close(f);
  return 0;
}
