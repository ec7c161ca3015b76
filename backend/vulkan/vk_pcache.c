/*
 * vk_pcache.c — the VkPipelineCache of a device, persisted on disk next to
 * the OpenCL program cache: $KQSVD_CACHE_DIR, else $XDG_CACHE_HOME/kqsvd,
 * else $HOME/.cache/kqsvd (the rules of backend/opencl/ocl_program_cache.c),
 * one file per driver and device:
 *   vulkan-<vendorID>-<deviceID>-<pipelineCacheUUID>.pcache
 * holding a header (magic, length and FNV-1a hash of the payload) and the
 * vkGetPipelineCacheData blob. A missing, truncated or foreign file is
 * ignored (the cache starts empty); the file is rewritten atomically
 * (temporary name + rename) when the device closes after new pipelines were
 * built. KQSVD_VULKAN_NO_PIPELINE_CACHE=1 turns the disk cache off.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/kq_kernel_cache.h"
#include "vk_internal.h"

#define VK_PCACHE_MAGIC "KQVKPC01"
#define VK_PCACHE_HEADER 24u /* magic, u64 payload length, u64 payload hash */
#define VK_PCACHE_MAX ((size_t)256 << 20)

int vk_pcache_path(const kq_bdevice *d, char *out, size_t size) {
  char dir[900];
  if (!kq_kernel_cache_dir(dir, sizeof dir)) return 0;
  char uuid[2 * VK_UUID_SIZE + 1];
  for (unsigned i = 0; i < VK_UUID_SIZE; ++i)
    snprintf(uuid + 2 * i, 3, "%02x", d->props.pipelineCacheUUID[i]);
  int n = snprintf(out, size, "%s/vulkan-%04x-%04x-%s.pcache", dir, d->props.vendorID,
                   d->props.deviceID, uuid);
  return n > 0 && (size_t)n < size;
}

/* The payload of a valid file (malloc'd), NULL otherwise. The blob's own
 * header must name this device (Vulkan header version one). */
static unsigned char *load(const kq_bdevice *d, const char *path, size_t *out_n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  unsigned char head[VK_PCACHE_HEADER], *buf = NULL;
  size_t n = 0;
  if (fread(head, 1, sizeof head, f) == sizeof head && !memcmp(head, VK_PCACHE_MAGIC, 8)) {
    n = (size_t)kq_get_le64(head + 8);
    if (n >= 32 && n <= VK_PCACHE_MAX && (buf = malloc(n)) &&
        (fread(buf, 1, n, f) != n || fgetc(f) != EOF ||
         kq_fnv1a64(buf, n) != kq_get_le64(head + 16))) {
      free(buf);
      buf = NULL;
    }
  }
  fclose(f);
  if (!buf) return NULL;
  /* VkPipelineCacheHeaderVersionOne: length, version, vendor, device, UUID. */
  uint32_t w[4];
  memcpy(w, buf, sizeof w);
  if (w[0] < 32 || w[1] != VK_PIPELINE_CACHE_HEADER_VERSION_ONE || w[2] != d->props.vendorID ||
      w[3] != d->props.deviceID || memcmp(buf + 16, d->props.pipelineCacheUUID, VK_UUID_SIZE)) {
    free(buf);
    return NULL;
  }
  *out_n = n;
  return buf;
}

kq_status vk_pcache_open(kq_bdevice *d) {
  char path[1024];
  size_t n = 0;
  unsigned char *blob = NULL;
  const char *off = getenv("KQSVD_VULKAN_NO_PIPELINE_CACHE");
  d->pcache_disk = !(off && off[0] && off[0] != '0') && vk_pcache_path(d, path, sizeof path);
  if (d->pcache_disk) blob = load(d, path, &n);
  VkPipelineCacheCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO,
                                  .initialDataSize = blob ? n : 0,
                                  .pInitialData = blob};
  VkResult r = vkCreatePipelineCache(d->dev, &ci, NULL, &d->pcache);
  if (r != VK_SUCCESS && blob) { /* the driver refused the data: start empty */
    ci.initialDataSize = 0;
    ci.pInitialData = NULL;
    r = vkCreatePipelineCache(d->dev, &ci, NULL, &d->pcache);
  }
  free(blob);
  d->pcache_loaded = blob != NULL;
  if (r != VK_SUCCESS) {
    d->pcache = VK_NULL_HANDLE; /* pipelines are still built, just not cached */
    d->pcache_disk = false;
  }
  return KQ_OK;
}

void vk_pcache_close(kq_bdevice *d) {
  if (!d->pcache) return;
  char path[1024], dir[900], tmp[1100];
  size_t n = 0;
  unsigned char *blob = NULL;
  if (d->pcache_disk && d->pcache_dirty && vk_pcache_path(d, path, sizeof path) &&
      kq_kernel_cache_dir(dir, sizeof dir) && kq_make_dirs(dir) == 0 &&
      vkGetPipelineCacheData(d->dev, d->pcache, &n, NULL) == VK_SUCCESS && n > 0 &&
      n <= VK_PCACHE_MAX && (blob = malloc(n)) &&
      vkGetPipelineCacheData(d->dev, d->pcache, &n, blob) == VK_SUCCESS &&
      snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path) < (int)sizeof tmp) {
    int fd = mkstemp(tmp);
    FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (fd >= 0 && !f) close(fd);
    if (f) {
      unsigned char head[VK_PCACHE_HEADER];
      memcpy(head, VK_PCACHE_MAGIC, 8);
      kq_put_le64(head + 8, n);
      kq_put_le64(head + 16, kq_fnv1a64(blob, n));
      int ok = fwrite(head, 1, sizeof head, f) == sizeof head && fwrite(blob, 1, n, f) == n;
      ok = fflush(f) == 0 && ok;
      ok = fsync(fileno(f)) == 0 && ok;
      ok = fclose(f) == 0 && ok;
      if (!ok || rename(tmp, path) != 0) unlink(tmp);
    }
  }
  free(blob);
  vkDestroyPipelineCache(d->dev, d->pcache, NULL);
  d->pcache = VK_NULL_HANDLE;
}
