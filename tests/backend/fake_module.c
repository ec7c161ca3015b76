/* Deliberately broken backend modules for test_backend_modules, one per
 * compile definition:
 *   FAKE_BAD_ABI     reports abi_version KQ_BACKEND_ABI_VERSION + 98
 *   FAKE_SHORT       right version, struct_size too small
 *   FAKE_EMPTY       a valid module whose driver is "missing": 0 devices
 *   FAKE_NO_ENTRY    exports no kq_backend_entry at all
 * Any op reached through a refused module aborts, so the test fails loudly
 * if the core touched it. */
#include <stdlib.h>

#include "kqsvd_backend.h"

__attribute__((unused)) static int zero_devices(void) {
  return 0;
}

#if defined(FAKE_BAD_ABI) || defined(FAKE_SHORT)
static int crash_count(void) {
  abort(); /* a refused module must never be entered beyond its version */
}
#endif

#if !defined(FAKE_NO_ENTRY) && !defined(FAKE_BAD_ABI) && !defined(FAKE_SHORT)
/* Never called: the module has no devices. */
static kq_status fake_info(int i, kq_device_info *o) {
  (void)i, (void)o;
  abort();
}
static kq_status fake_open(int i, kq_bdevice **o) {
  (void)i, (void)o;
  abort();
}
static void fake_close(kq_bdevice *d) {
  (void)d;
  abort();
}
static kq_status fake_alloc(kq_bdevice *d, size_t n, kq_buffer **o) {
  (void)d, (void)n, (void)o;
  abort();
}
static void fake_free(kq_bdevice *d, kq_buffer *b) {
  (void)d, (void)b;
  abort();
}
static kq_status fake_upload(kq_bdevice *d, kq_buffer *b, size_t o, const void *s, size_t n) {
  (void)d, (void)b, (void)o, (void)s, (void)n;
  abort();
}
static kq_status fake_download(kq_bdevice *d, const kq_buffer *b, size_t o, void *s, size_t n) {
  (void)d, (void)b, (void)o, (void)s, (void)n;
  abort();
}
static kq_status fake_project(kq_bdevice *d, const kq_project_op *op) {
  (void)d, (void)op;
  abort();
}
static kq_status fake_attend(kq_bdevice *d, const kq_attend_op *op) {
  (void)d, (void)op;
  abort();
}
static kq_status fake_up(kq_bdevice *d, const kq_up_op *op) {
  (void)d, (void)op;
  abort();
}
static kq_status fake_copy(kq_bdevice *d, kq_buffer *a, const kq_buffer *b, size_t n) {
  (void)d, (void)a, (void)b, (void)n;
  abort();
}
static kq_status fake_sync(kq_bdevice *d) {
  (void)d;
  abort();
}
#endif

#ifndef FAKE_NO_ENTRY
static kq_backend_iface g_iface = {
#if defined(FAKE_BAD_ABI)
    .abi_version = KQ_BACKEND_ABI_VERSION + 98u,
    .struct_size = sizeof(kq_backend_iface),
    .device_count = crash_count,
#elif defined(FAKE_SHORT)
    .abi_version = KQ_BACKEND_ABI_VERSION,
    .struct_size = 16,
    .device_count = crash_count,
#else
    .abi_version = KQ_BACKEND_ABI_VERSION,
    .struct_size = sizeof(kq_backend_iface),
    .device_count = zero_devices,
    .device_info = fake_info,
    .device_open = fake_open,
    .device_close = fake_close,
    .buffer_alloc = fake_alloc,
    .buffer_free = fake_free,
    .buffer_upload = fake_upload,
    .buffer_download = fake_download,
    .project = fake_project,
    .attend = fake_attend,
    .up = fake_up,
    .copy = fake_copy,
    .synchronize = fake_sync,
#endif
    .name = "fake",
};

__attribute__((visibility("default"))) kq_status
kq_backend_entry(const kq_backend_host *host, const kq_backend_iface **out_iface) {
  (void)host;
  *out_iface = &g_iface;
  return KQ_OK;
}
#else
__attribute__((visibility("default"))) int kq_some_other_symbol(void) {
  return zero_devices();
}
#endif
