/* kq_device_buffer_* and kq_device_synchronize: device memory an engine
 * fills and reads itself (kqsvd.h, "Device buffers"). */
#include <stdlib.h>

#include "kq_common.h"
#include "kq_core.h"

kq_status kq_device_buffer_create(kq_device *device, size_t bytes, kq_device_buffer **out) {
  if (!out) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_device_buffer_create: out is NULL");
  *out = NULL;
  if (!device || bytes == 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "kq_device_buffer_create: needs a device and bytes >= 1");
  if (device->info.max_buffer_bytes && bytes > device->info.max_buffer_bytes)
    return kq_set_error(KQ_ERR_DEVICE_MEMORY,
                        "device %s: a buffer of %zu bytes exceeds its largest buffer (%llu bytes)",
                        device->info.name, bytes,
                        (unsigned long long)device->info.max_buffer_bytes);
  kq_device_buffer *b = calloc(1, sizeof *b);
  if (!b) return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "device %s: buffer handle", device->info.name);
  kq_status st = device->iface->buffer_alloc(device->bdev, bytes, &b->buf);
  if (st != KQ_OK) {
    free(b);
    return kq_error_prefix(KQ_ERR_DEVICE_MEMORY, "device %s: buffer of %zu bytes",
                           device->info.name, bytes);
  }
  b->device = device;
  b->bytes = bytes;
  *out = b;
  return KQ_OK;
}

/* [offset, offset + bytes) inside the buffer. */
static kq_status check_range(const kq_device_buffer *b, size_t offset, size_t bytes, const void *p,
                             const char *fn) {
  if (!b || (!p && bytes))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: NULL buffer or host pointer", fn);
  size_t end;
  if (!kq_add_size(offset, bytes, &end) || end > b->bytes)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "%s: device %s: range [%zu, +%zu) exceeds the buffer of %zu bytes", fn,
                        b->device->info.name, offset, bytes, b->bytes);
  return KQ_OK;
}

kq_status kq_device_buffer_write(kq_device_buffer *b, size_t offset, const void *src,
                                 size_t bytes) {
  kq_status st = check_range(b, offset, bytes, src, "kq_device_buffer_write");
  if (st != KQ_OK || bytes == 0) return st;
  st = b->device->iface->buffer_upload(b->device->bdev, b->buf, offset, src, bytes);
  if (st != KQ_OK) return kq_error_prefix(st, "device %s: buffer write", b->device->info.name);
  return KQ_OK;
}

kq_status kq_device_buffer_read(const kq_device_buffer *b, size_t offset, void *dst, size_t bytes) {
  kq_status st = check_range(b, offset, bytes, dst, "kq_device_buffer_read");
  if (st != KQ_OK || bytes == 0) return st;
  st = b->device->iface->buffer_download(b->device->bdev, b->buf, offset, dst, bytes);
  if (st != KQ_OK) return kq_error_prefix(st, "device %s: buffer read", b->device->info.name);
  return KQ_OK;
}

size_t kq_device_buffer_size(const kq_device_buffer *b) {
  return b ? b->bytes : 0;
}

void kq_device_buffer_destroy(kq_device_buffer *b) {
  if (!b) return;
  b->device->iface->synchronize(b->device->bdev);
  b->device->iface->buffer_free(b->device->bdev, b->buf);
  free(b);
}

kq_status kq_device_synchronize(kq_device *device) {
  if (!device) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_device_synchronize: NULL device");
  kq_status st = device->iface->synchronize(device->bdev);
  if (st != KQ_OK) return kq_error_prefix(st, "device %s: synchronize", device->info.name);
  return KQ_OK;
}
