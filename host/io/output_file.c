/* Safe output files (kq_output_file.h): fresh O_EXCL temporary file in the
 * target's folder, fsync, rename, fsync of the folder. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kq_output_file.h"

#define KQ_OUT_CHUNK ((size_t)8 << 20)

static char *dup_text(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = kq_malloc_array(n, 1, "path");
  if (d) memcpy(d, s, n);
  return d;
}

static const char *kind_name(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISSOCK(m)) return "a socket";
  return "not a regular file";
}

/* KQ_OK when path is absent or (following links) a regular file. */
static kq_status check_target(const char *path) {
  struct stat sb;
  if (stat(path, &sb) != 0) {
    if (errno == ENOENT) return KQ_OK;
    return kq_set_error(KQ_ERR_IO, "%s: cannot check the output: %s", path, strerror(errno));
  }
  if (!S_ISREG(sb.st_mode))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "%s: the output is %s; kqsvd writes regular files only", path,
                        kind_name(sb.st_mode));
  return KQ_OK;
}

kq_status kq_output_check(const char *path, const char *const *inputs) {
  if (!path || !*path) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "the output path is empty");
  kq_status st = check_target(path);
  if (st != KQ_OK) return st;
  char *copy = dup_text(path);
  if (!copy) return KQ_ERR_OUT_OF_MEMORY;
  const char *dir = dirname(copy);
  struct stat db;
  if (stat(dir, &db) != 0 || !S_ISDIR(db.st_mode)) {
    st = kq_set_error(KQ_ERR_IO, "%s: the output folder %s does not exist", path, dir);
  } else if (access(dir, W_OK) != 0) {
    st = kq_set_error(KQ_ERR_IO, "%s: the output folder %s is not writable: %s", path, dir,
                      strerror(errno));
  }
  free(copy);
  if (st != KQ_OK) return st;
  struct stat ob;
  if (!inputs || stat(path, &ob) != 0) return KQ_OK;
  for (const char *const *in = inputs; *in; in++) {
    struct stat ib;
    if (stat(*in, &ib) == 0 && ib.st_dev == ob.st_dev && ib.st_ino == ob.st_ino)
      return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                          "%s: the output is the input %s; choose another output path", path, *in);
  }
  return KQ_OK;
}

kq_status kq_output_open(const char *path, kq_output_file *out) {
  memset(out, 0, sizeof *out);
  out->fd = out->dir_fd = -1;
  kq_status st = kq_output_check(path, NULL);
  if (st != KQ_OK) return st;
  size_t n = strlen(path) + 16;
  out->path = dup_text(path);
  out->tmp = kq_malloc_array(n, 1, "temporary path");
  if (!out->path || !out->tmp) {
    kq_output_abort(out);
    return kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s", path);
  }
  /* "<target>.XXXXXX" in the target's folder, so the rename stays on one
   * file system; mkostemp opens it O_CREAT | O_EXCL. */
  snprintf(out->tmp, n, "%s.XXXXXX", path);
  int fd = mkostemp(out->tmp, O_CLOEXEC);
  if (fd < 0) {
    st = kq_set_error(KQ_ERR_IO, "%s: cannot create a temporary file beside it: %s", path,
                      strerror(errno));
    free(out->tmp);
    out->tmp = NULL;
    kq_output_abort(out);
    return st;
  }
  out->fd = fd;
  char *copy = dup_text(path);
  out->dir_fd = copy ? open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
  free(copy);
  if (out->dir_fd < 0) {
    st = copy ? kq_set_error(KQ_ERR_IO, "%s: cannot open its folder: %s", path, strerror(errno))
              : kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s", path);
    kq_output_abort(out);
    return st;
  }
  if (fchmod(fd, 0644) != 0) {
    st = kq_set_error(KQ_ERR_IO, "%s: cannot set the mode of %s: %s", path, out->tmp,
                      strerror(errno));
    kq_output_abort(out);
    return st;
  }
  return KQ_OK;
}

kq_status kq_output_write(kq_output_file *f, const void *data, size_t n,
                          const volatile int *cancel) {
  const char *p = data;
  while (n > 0) {
    if (cancel && *cancel) return kq_set_error(KQ_ERR_INTERRUPTED, "%s: write cancelled", f->path);
    size_t chunk = n < KQ_OUT_CHUNK ? n : KQ_OUT_CHUNK;
    ssize_t w = write(f->fd, p, chunk);
    if (w < 0) {
      if (errno == EINTR) continue;
      return kq_set_error(KQ_ERR_IO, "%s: write failed: %s", f->path, strerror(errno));
    }
    p += w;
    n -= (size_t)w;
  }
  return KQ_OK;
}

FILE *kq_output_stream(kq_output_file *f) {
  if (!f->stream) {
    f->stream = fdopen(f->fd, "w");
    if (!f->stream)
      kq_set_error(KQ_ERR_IO, "%s: cannot open a stream: %s", f->path, strerror(errno));
  }
  return f->stream;
}

kq_status kq_output_commit(kq_output_file *f) {
  kq_status st = KQ_OK;
  if (f->stream && fflush(f->stream) != 0)
    st = kq_set_error(KQ_ERR_IO, "%s: write failed: %s", f->path, strerror(errno));
  if (st == KQ_OK && fsync(f->fd) != 0)
    st = kq_set_error(KQ_ERR_IO, "%s: fsync failed: %s", f->path, strerror(errno));
  int rc = f->stream ? fclose(f->stream) : close(f->fd);
  f->stream = NULL;
  f->fd = -1;
  if (rc != 0 && st == KQ_OK)
    st = kq_set_error(KQ_ERR_IO, "%s: close failed: %s", f->path, strerror(errno));
  if (st == KQ_OK) st = check_target(f->path); /* replaced while we wrote? */
  if (st == KQ_OK && rename(f->tmp, f->path) != 0)
    st = kq_set_error(KQ_ERR_IO, "%s: cannot rename the temporary file into place: %s", f->path,
                      strerror(errno));
  if (st == KQ_OK) {
    free(f->tmp); /* renamed: nothing to remove */
    f->tmp = NULL;
    if (fsync(f->dir_fd) != 0) { /* not durable: report no output rather than a maybe */
      st = kq_set_error(KQ_ERR_IO, "%s: cannot fsync its folder: %s", f->path, strerror(errno));
      unlink(f->path);
    }
  }
  kq_output_abort(f);
  return st;
}

void kq_output_abort(kq_output_file *f) {
  if (f->stream)
    fclose(f->stream);
  else if (f->fd >= 0)
    close(f->fd);
  if (f->dir_fd >= 0) close(f->dir_fd);
  if (f->tmp) unlink(f->tmp);
  free(f->tmp);
  free(f->path);
  memset(f, 0, sizeof *f);
  f->fd = f->dir_fd = -1;
}
