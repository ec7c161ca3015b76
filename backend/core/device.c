/* kq_device_*: opening devices by name and the copy-bandwidth probe. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "kq_common.h"
#include "kq_core.h"

kq_status kq_device_create(const char *name, kq_device **out_device) {
  if (!out_device)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_device_create: out_device is NULL");
  *out_device = NULL;
  if (!name || !*name) {
    name = getenv("KQSVD_DEVICE");
    if (!name || !*name) name = "cpu";
  }
  const kq_backend_iface *iface;
  int local;
  kq_status st = kq_registry_find(name, &iface, &local);
  if (st != KQ_OK) return st;
  kq_device *dev = calloc(1, sizeof *dev);
  if (!dev) return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "device \"%s\": out of host memory", name);
  dev->iface = iface;
  st = iface->device_info(local, &dev->info);
  if (st == KQ_OK) st = iface->device_open(local, &dev->bdev);
  if (st != KQ_OK) {
    free(dev);
    return kq_error_prefix(st, "device \"%s\"", name);
  }
  /* The registry's naming is authoritative. */
  strncpy(dev->info.name, name, sizeof dev->info.name - 1);
  strncpy(dev->info.backend, iface->name, sizeof dev->info.backend - 1);
  *out_device = dev;
  return KQ_OK;
}

kq_status kq_device_get_info(const kq_device *device, kq_device_info *out_info) {
  if (!device || !out_info)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_device_get_info: NULL argument");
  *out_info = device->info;
  return KQ_OK;
}

kq_status kq_device_copy_bandwidth(kq_device *device, uint64_t bytes, int32_t reps,
                                   double *out_gbps) {
  if (!device || !out_gbps)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_device_copy_bandwidth: NULL argument");
  if (bytes == 0 || bytes > SIZE_MAX || reps < 1 || reps > 10000)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "kq_device_copy_bandwidth: bytes %llu and reps %d must be positive",
                        (unsigned long long)bytes, (int)reps);
  if (device->info.max_buffer_bytes && bytes > device->info.max_buffer_bytes)
    return kq_set_error(KQ_ERR_DEVICE_MEMORY,
                        "device %s: copy buffer of %llu bytes exceeds its largest buffer (%llu)",
                        device->info.name, (unsigned long long)bytes,
                        (unsigned long long)device->info.max_buffer_bytes);
  const kq_backend_iface *ifc = device->iface;
  kq_buffer *src = NULL, *dst = NULL;
  double *times = kq_malloc_array((size_t)reps, sizeof(double), "copy bandwidth timings");
  if (!times) return KQ_ERR_OUT_OF_MEMORY;
  kq_status st = ifc->buffer_alloc(device->bdev, (size_t)bytes, &src);
  if (st == KQ_OK) st = ifc->buffer_alloc(device->bdev, (size_t)bytes, &dst);
  /* Warm-up, both ways: gives both buffers real pages (an untouched source
   * would read the shared zero page and flatter the figure), creates
   * pipelines and raises clocks. */
  if (st == KQ_OK) st = ifc->copy(device->bdev, src, dst, (size_t)bytes);
  if (st == KQ_OK) st = ifc->copy(device->bdev, dst, src, (size_t)bytes);
  if (st == KQ_OK) st = ifc->synchronize(device->bdev);
  for (int32_t r = 0; r < reps && st == KQ_OK; r++) {
    double t0 = kq_now_seconds();
    st = ifc->copy(device->bdev, dst, src, (size_t)bytes);
    if (st == KQ_OK) st = ifc->synchronize(device->bdev);
    times[r] = kq_now_seconds() - t0;
  }
  if (st == KQ_OK) {
    double med = kq_median(times, reps);
    *out_gbps = med > 0.0 ? 2.0 * (double)bytes / med / 1e9 : 0.0;
  } else {
    kq_error_prefix(st, "device %s: copy bandwidth", device->info.name);
  }
  if (dst) ifc->buffer_free(device->bdev, dst);
  if (src) ifc->buffer_free(device->bdev, src);
  free(times);
  return st;
}

kq_status kq_device_get_stats(const kq_device *device, kq_device_stats *out_stats) {
  if (!device || !out_stats)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_device_get_stats: NULL argument");
  size_t want = out_stats->struct_size;
  if (want < offsetof(kq_device_stats, submits))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "kq_device_get_stats: struct_size %zu is too small (set it to "
                        "sizeof(kq_device_stats))",
                        want);
  if (!device->iface->get_stats)
    return kq_set_error(KQ_ERR_UNSUPPORTED, "device %s: the %s backend does not count its work",
                        device->info.name, device->iface->name);
  kq_device_stats all = {.struct_size = sizeof all};
  kq_status st = device->iface->get_stats(device->bdev, &all);
  if (st != KQ_OK) return kq_error_prefix(st, "device %s: stats", device->info.name);
  if (want > sizeof all) want = sizeof all;
  size_t head = offsetof(kq_device_stats, submits);
  memcpy((char *)out_stats + head, (const char *)&all + head, want - head);
  return KQ_OK;
}

void kq_device_destroy(kq_device *device) {
  if (!device) return;
  device->iface->device_close(device->bdev);
  free(device);
}
