/* Devices and buffers on an engine's own handles (kqsvd_vulkan.h,
 * kqsvd_opencl.h). The core never sees a vendor type: it hands the engine's
 * handle struct to the backend that owns that API. */
#include <stdlib.h>
#include <string.h>

#include "kq_common.h"
#include "kq_core.h"

/* Tags of the public handle structs; their layouts belong to the backends. */
struct kq_vulkan_device_handles;
struct kq_vulkan_buffer;
struct kq_opencl_device_handles;
struct kq_opencl_buffer;

static kq_status open_external(const char *backend, const char *fn, const void *handles,
                               kq_device **out_device) {
  if (!out_device) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: out_device is NULL", fn);
  *out_device = NULL;
  if (!handles) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: handles is NULL", fn);
  const kq_backend_iface *iface = NULL;
  kq_status st = kq_registry_backend(backend, &iface);
  if (st != KQ_OK) return kq_error_prefix(KQ_ERR_UNSUPPORTED, "%s", fn);
  if (!iface->device_open_external)
    return kq_set_error(KQ_ERR_UNSUPPORTED, "%s: the %s backend cannot adopt an engine's device",
                        fn, backend);
  kq_device *dev = calloc(1, sizeof *dev);
  if (!dev) return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
  dev->iface = iface;
  st = iface->device_open_external(handles, &dev->info, &dev->bdev);
  if (st != KQ_OK) {
    free(dev);
    return kq_error_prefix(st, "%s", fn);
  }
  snprintf(dev->info.name, sizeof dev->info.name, "%s:external", backend);
  snprintf(dev->info.backend, sizeof dev->info.backend, "%s", backend);
  *out_device = dev;
  return KQ_OK;
}

static kq_status import_buffer(const char *backend, const char *fn, kq_device *device,
                               const void *native, kq_device_buffer **out_buffer) {
  if (!out_buffer) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: out_buffer is NULL", fn);
  *out_buffer = NULL;
  if (!device || !native)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: NULL device or buffer", fn);
  if (strcmp(device->iface->name, backend) != 0 || !device->iface->buffer_import)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: device %s is not a %s device", fn,
                        device->info.name, backend);
  kq_device_buffer *b = calloc(1, sizeof *b);
  if (!b) return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: buffer handle", fn);
  size_t bytes = 0;
  kq_status st = device->iface->buffer_import(device->bdev, native, &bytes, &b->buf);
  if (st != KQ_OK) {
    free(b);
    return kq_error_prefix(st, "%s: device %s", fn, device->info.name);
  }
  b->device = device;
  b->bytes = bytes;
  *out_buffer = b;
  return KQ_OK;
}

KQ_API kq_status kq_device_create_vulkan(const struct kq_vulkan_device_handles *handles,
                                         kq_device **out_device) {
  return open_external("vulkan", "kq_device_create_vulkan", handles, out_device);
}

KQ_API kq_status kq_device_buffer_import_vulkan(kq_device *device,
                                                const struct kq_vulkan_buffer *buffer,
                                                kq_device_buffer **out_buffer) {
  return import_buffer("vulkan", "kq_device_buffer_import_vulkan", device, buffer, out_buffer);
}

KQ_API kq_status kq_device_create_opencl(const struct kq_opencl_device_handles *handles,
                                         kq_device **out_device) {
  return open_external("opencl", "kq_device_create_opencl", handles, out_device);
}

KQ_API kq_status kq_device_buffer_import_opencl(kq_device *device,
                                                const struct kq_opencl_buffer *buffer,
                                                kq_device_buffer **out_buffer) {
  return import_buffer("opencl", "kq_device_buffer_import_opencl", device, buffer, out_buffer);
}
