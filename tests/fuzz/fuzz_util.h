/*
 * fuzz_util.h — shared by the fuzz harnesses: puts a fuzz input into an
 * in-memory file so that readers which take a path (and mmap it) see exactly
 * those bytes.
 */
#ifndef KQ_FUZZ_UTIL_H
#define KQ_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* Replaces the contents of one process-wide memfd with data[0, size) and
 * writes its "/proc/self/fd/N" path into path (cap bytes). Aborts if the
 * memfd cannot be made or written: that is a harness failure, not a finding. */
static inline void kq_fuzz_to_file(const uint8_t *data, size_t size, char *path, size_t cap) {
  static int fd = -1;
  if (fd < 0) {
    fd = memfd_create("kq_fuzz_input", 0);
    if (fd < 0) abort();
  }
  if (ftruncate(fd, 0) != 0) abort();
  size_t done = 0;
  while (done < size) {
    ssize_t n = pwrite(fd, data + done, size - done, (off_t)done);
    if (n <= 0) abort();
    done += (size_t)n;
  }
  snprintf(path, cap, "/proc/self/fd/%d", fd);
}

#endif
