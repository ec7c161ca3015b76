/* Deliberately broken or minimal backend modules for test_backend_modules,
 * one per compile definition:
 *   FAKE_BAD_ABI     reports abi_version KQ_BACKEND_ABI_VERSION + 98
 *   FAKE_SHORT       right version, struct_size too small
 *   FAKE_EMPTY       a valid module whose driver is "missing": 0 devices
 *   FAKE_NO_ENTRY    exports no kq_backend_entry at all
 *   FAKE_NO_FP16     one device ("fakegpu:0", 1 GiB, no F16 storage) that
 *                    can be opened; anything needing a buffer aborts
 * Every function the core must not reach aborts, so the test fails loudly
 * if the core touches a refused module or allocates when it should refuse. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kqsvd_backend.h"

#if defined(FAKE_BAD_ABI) || defined(FAKE_SHORT)

static int crash_count(void) {
  abort(); /* a refused module must never be entered beyond its version */
}

#elif !defined(FAKE_NO_ENTRY)

#if defined(FAKE_NO_FP16)
static int device_count(void) {
  return 1;
}
static kq_status fake_info(int i, kq_device_info *o) {
  memset(o, 0, sizeof *o);
  snprintf(o->name, sizeof o->name, "fakegpu:%d", i);
  snprintf(o->backend, sizeof o->backend, "fakegpu");
  snprintf(o->description, sizeof o->description, "test device without F16");
  o->type = KQ_DEVICE_TYPE_GPU_VIRTUAL;
  o->memory_bytes = o->max_buffer_bytes = (uint64_t)1 << 30;
  return KQ_OK;
}
static struct kq_bdevice { int unused; } g_dev;
static kq_status fake_open(int i, kq_bdevice **o) {
  (void)i;
  *o = &g_dev;
  return KQ_OK;
}
static void fake_close(kq_bdevice *d) {
  (void)d;
}
#define FAKE_NAME "fakegpu"
#else
static int device_count(void) {
  return 0;
}
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
#define FAKE_NAME "fake"
#endif

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
static const kq_backend_iface g_iface = {
#if defined(FAKE_BAD_ABI)
    .abi_version = KQ_BACKEND_ABI_VERSION + 98u,
    .struct_size = sizeof(kq_backend_iface),
    .name = "badabi",
    .device_count = crash_count,
#elif defined(FAKE_SHORT)
    .abi_version = KQ_BACKEND_ABI_VERSION,
    .struct_size = 16,
    .name = "short",
    .device_count = crash_count,
#else
    .abi_version = KQ_BACKEND_ABI_VERSION,
    .struct_size = sizeof(kq_backend_iface),
    .name = FAKE_NAME,
    .device_count = device_count,
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
};

__attribute__((visibility("default"))) kq_status
kq_backend_entry(const kq_backend_host *host, const kq_backend_iface **out_iface) {
  (void)host;
  *out_iface = &g_iface;
  return KQ_OK;
}
#else
__attribute__((visibility("default"))) int kq_some_other_symbol(void) {
  return 0;
}
#endif
