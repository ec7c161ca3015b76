/*
 * kq_kernel_cache.h — helpers the on-disk kernel caches of the backends share
 * (the OpenCL program-binary cache, the Vulkan pipeline cache). Backend
 * modules share code only through headers, so everything here is static
 * inline. The cache folder itself is kq_kernel_cache_dir (kqsvd_backend.h).
 */
#ifndef KQ_KERNEL_CACHE_H
#define KQ_KERNEL_CACHE_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

/* FNV-1a 64-bit hash of n bytes (offset basis 0xcbf29ce484222325, prime
 * 0x100000001b3): the checksum of cache entries and of their keys. */
static inline uint64_t kq_fnv1a64(const void *data, size_t n) {
  const unsigned char *p = data;
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

/* Little-endian u32 / u64 at p (cache file headers). */
static inline void kq_put_le32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = (unsigned char)(v >> (8 * i));
}
static inline void kq_put_le64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = (unsigned char)(v >> (8 * i));
}
static inline uint32_t kq_get_le32(const unsigned char *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
static inline uint64_t kq_get_le64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

/* mkdir -p `path` with mode 0755 (existing folders are fine); 0 on
 * success, -1 when a component cannot be made or the path is empty or
 * 1024 bytes or longer. */
static inline int kq_make_dirs(const char *path) {
  char tmp[1024];
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof tmp) return -1;
  memcpy(tmp, path, n + 1);
  for (size_t i = 1; i <= n; ++i) {
    if (tmp[i] != '/' && tmp[i] != '\0') continue;
    char c = tmp[i];
    tmp[i] = '\0';
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
    tmp[i] = c;
  }
  return 0;
}

#endif /* KQ_KERNEL_CACHE_H */
