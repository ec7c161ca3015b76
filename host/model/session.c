/* A model bound to a kqsvd cache, and reading text files for the commands. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kq_model_run.h"

kq_status kq_model_check_identity(kq_llama *model, const kq_projections *proj,
                                  const char *proj_path, int *out_unknown) {
  const kq_model_identity *want = kq_projections_get_model(proj), *have = NULL;
  *out_unknown = !want->sha256[0] && !want->name[0];
  if (*out_unknown) return KQ_OK;
  kq_status st = kq_llama_identity(model, &have);
  if (st != KQ_OK) return st;
  int same =
      want->sha256[0] ? !strcmp(want->sha256, have->sha256) : !strcmp(want->name, have->name);
  if (same) return KQ_OK;
  return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                      "%s was fitted for model '%s' (sha256 %s), not for %s: '%s' (sha256 %s); "
                      "capture and fit again with this model",
                      proj_path, want->name, want->sha256[0] ? want->sha256 : "not recorded",
                      kq_llama_path(model), have->name, have->sha256);
}

static kq_status load_checked(kq_llama *model, const char *proj_path, kq_projections **out_proj,
                              kq_projections_info *out_info, int *out_unknown) {
  kq_status st = kq_projections_load(proj_path, out_proj);
  if (st == KQ_OK) st = kq_projections_get_info(*out_proj, out_info);
  if (st == KQ_OK) st = kq_llama_check_projections(model, out_info);
  if (st != KQ_OK) return kq_error_prefix(st, "%s", proj_path);
  return kq_model_check_identity(model, *out_proj, proj_path, out_unknown);
}

kq_status kq_model_check_projection_file(kq_llama *model, const char *proj_path, int *out_unknown) {
  kq_projections *proj = NULL;
  kq_projections_info info;
  kq_status st = load_checked(model, proj_path, &proj, &info, out_unknown);
  kq_projections_destroy(proj);
  return st;
}

kq_status kq_model_session_create(kq_llama *model, kq_device *device, const char *proj_path,
                                  kq_storage storage, int32_t capacity, kq_model_session *out) {
  return kq_model_session_create_seqs(model, device, proj_path, storage, capacity, 1, out);
}

kq_status kq_model_session_create_seqs(kq_llama *model, kq_device *device, const char *proj_path,
                                       kq_storage storage, int32_t capacity, int32_t n_seqs,
                                       kq_model_session *out) {
  memset(out, 0, sizeof *out);
  out->model = model;
  out->proj_path = proj_path;
  kq_status st;
  kq_projections_info info;
  if (proj_path) {
    st = load_checked(model, proj_path, &out->proj, &info, &out->no_identity);
    if (st != KQ_OK) {
      kq_model_session_destroy(out);
      return st;
    }
  } else {
    info = kq_llama_projection_info(model);
    st = kq_projections_create_identity(&info, &out->proj);
    if (st != KQ_OK) return st;
  }
  kq_cache_params cp = kq_cache_default_params();
  cp.storage = storage;
  cp.capacity = capacity;
  cp.n_seqs = n_seqs;
  st = kq_cache_create(device, out->proj, &cp, &out->cache);
  kq_cache_memory mem;
  if (st == KQ_OK) st = kq_cache_get_memory(out->cache, &mem);
  if (st != KQ_OK) {
    kq_model_session_destroy(out);
    return proj_path ? kq_error_prefix(st, "%s", proj_path) : st;
  }
  out->kv_bytes = mem.kv_bytes;
  out->n_seqs = n_seqs;
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
  /* O_NONBLOCK: a FIFO without a writer must not hang the open; it is then
   * refused below like every file that is not regular (/dev/zero would be
   * read until memory runs out). */
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return kq_set_error(KQ_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    close(fd);
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: not a regular file (text inputs are files)",
                        path);
  }
  if ((uint64_t)sb.st_size > KQ_MAX_TEXT_BYTES) {
    close(fd);
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "%s: %lld bytes, more than the %llu a text may have", path,
                        (long long)sb.st_size, (unsigned long long)KQ_MAX_TEXT_BYTES);
  }
  size_t size = (size_t)sb.st_size;
  char *buf = malloc(size + 1);
  if (!buf) {
    close(fd);
    return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: out of memory reading %zu bytes of text", path,
                        size);
  }
  size_t len = 0;
  while (len < size) { /* a file that shrinks while read ends early; one that grows is cut */
    ssize_t got = read(fd, buf + len, size - len);
    if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (got < 0) {
      int err = errno;
      free(buf);
      close(fd);
      return kq_set_error(KQ_ERR_IO, "%s: read error: %s", path, strerror(err));
    }
    if (got == 0) break;
    len += (size_t)got;
  }
  close(fd);
  buf[len] = 0;
  *out_text = buf;
  *out_len = len;
  return KQ_OK;
}
