/*
 * io_test_util.h — helpers shared by the host/io tests: a private scratch
 * directory, raw safetensors files built byte by byte (so malformed headers
 * can be written), and directory listings to prove nothing was left behind.
 */
#ifndef KQ_IO_TEST_UTIL_H
#define KQ_IO_TEST_UTIL_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Creates a fresh directory under $TMPDIR (or /tmp); returns a static path. */
static inline const char *io_test_dir(const char *tag) {
  static char dir[512];
  const char *base = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/kq_%s_XXXXXX", base && *base ? base : "/tmp", tag);
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    abort();
  }
  return dir;
}

/* Number of entries (other than . and ..) in `dir`. */
static inline int io_test_count_entries(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
  closedir(d);
  return n;
}

/* Removes every plain file in `dir`, then `dir`. */
static inline void io_test_remove_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  char p[1024];
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    unlink(p);
  }
  closedir(d);
  rmdir(dir);
}

/* Writes an 8-byte little-endian header length `len8`, `json` (strlen bytes)
 * and `data_bytes` bytes of data (byte i = i & 0xff). Returns 0 on success. */
static inline int io_test_write_raw(const char *path, uint64_t len8, const char *json,
                                    size_t data_bytes) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  unsigned char b[8];
  for (int i = 0; i < 8; i++) b[i] = (unsigned char)(len8 >> (8 * i));
  int ok = fwrite(b, 1, 8, f) == 8;
  size_t jl = strlen(json);
  if (ok && jl) ok = fwrite(json, 1, jl, f) == jl;
  for (size_t i = 0; ok && i < data_bytes; i++) ok = fputc((int)(i & 0xff), f) != EOF;
  return fclose(f) == 0 && ok ? 0 : -1;
}

/* Like io_test_write_raw with the header length equal to strlen(json). */
static inline int io_test_write_st(const char *path, const char *json, size_t data_bytes) {
  return io_test_write_raw(path, strlen(json), json, data_bytes);
}

#endif /* KQ_IO_TEST_UTIL_H */
