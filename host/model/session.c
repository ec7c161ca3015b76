/* A model bound to a kqsvd cache, and reading text files for the commands. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kq_model_run.h"

kq_status kq_model_session_create(kq_llama *model, kq_device *device, const char *proj_path,
                                  kq_storage storage, int32_t capacity, kq_model_session *out) {
  memset(out, 0, sizeof *out);
  out->model = model;
  out->proj_path = proj_path;
  kq_status st;
  kq_projections_info info;
  if (proj_path) {
    st = kq_projections_load(proj_path, &out->proj);
    if (st == KQ_OK) st = kq_projections_get_info(out->proj, &info);
    if (st == KQ_OK) st = kq_llama_check_projections(model, &info);
    if (st != KQ_OK) {
      kq_model_session_destroy(out);
      return kq_error_prefix(st, "%s", proj_path);
    }
  } else {
    info = kq_llama_projection_info(model);
    st = kq_projections_create_identity(&info, &out->proj);
    if (st != KQ_OK) return st;
  }
  kq_cache_params cp = kq_cache_default_params();
  cp.storage = storage;
  cp.capacity = capacity;
  st = kq_cache_create(device, out->proj, &cp, &out->cache);
  kq_cache_memory mem;
  if (st == KQ_OK) st = kq_cache_get_memory(out->cache, &mem);
  if (st != KQ_OK) {
    kq_model_session_destroy(out);
    return proj_path ? kq_error_prefix(st, "%s", proj_path) : st;
  }
  out->kv_bytes = mem.kv_bytes;
  out->rope = info.rope;
  out->attn = kq_llama_cache_attention(out->cache, info.rope);
  return KQ_OK;
}

void kq_model_session_destroy(kq_model_session *s) {
  kq_cache_destroy(s->cache);
  kq_projections_destroy(s->proj);
  s->cache = NULL;
  s->proj = NULL;
}

kq_status kq_model_read_text(const char *path, char **out_text, size_t *out_len) {
  *out_text = NULL;
  *out_len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return kq_set_error(KQ_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap);
  while (buf) {
    if (len + 1 >= cap) {
      char *nb = cap < (SIZE_MAX >> 1) ? realloc(buf, cap * 2) : NULL;
      if (!nb) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
    size_t got = fread(buf + len, 1, cap - 1 - len, f);
    len += got;
    if (got == 0) break;
  }
  int err = ferror(f);
  fclose(f);
  if (!buf) return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: out of memory reading the text", path);
  if (err) {
    free(buf);
    return kq_set_error(KQ_ERR_IO, "%s: read error", path);
  }
  buf[len] = 0;
  *out_text = buf;
  *out_len = len;
  return KQ_OK;
}
