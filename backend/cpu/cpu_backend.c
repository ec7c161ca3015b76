/* The CPU backend's device, buffers and copy; the ops live in cpu_attend.c
 * and cpu_project.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cpu_kernels.h"
#include "cpu_pool.h"
#include "kq_common.h"
#include "kq_cpu_backend.h"

/* All opens share one static device: the CPU and its thread team. */
struct kq_bdevice {
  /* kq_device_stats counters, shared by every open of the one CPU device. */
  _Atomic uint64_t dispatches, bytes_uploaded, bytes_downloaded, allocations;
};
static struct kq_bdevice g_cpu_device;

kq_status kq_cpu_check_range(const kq_buffer *buf, size_t offset, size_t bytes, const char *what) {
  size_t end;
  if (!buf) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "cpu: %s: buffer is NULL", what);
  if (!kq_add_size(offset, bytes, &end) || end > buf->size)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "cpu: %s: range [%zu, +%zu) exceeds the buffer of %zu bytes", what, offset,
                        bytes, buf->size);
  return KQ_OK;
}

static int cpu_device_count(void) {
  return 1;
}

/* Copies the value of the first "key : value" line of /proc/cpuinfo. */
static void cpuinfo_field(const char *key, char *out, size_t cap) {
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (!f) return;
  char line[512];
  size_t klen = strlen(key);
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, key, klen) != 0) continue;
    char *colon = strchr(line, ':');
    if (!colon) continue;
    colon++;
    while (*colon == ' ' || *colon == '\t') colon++;
    size_t n = strcspn(colon, "\n");
    if (n >= cap) n = cap - 1;
    memcpy(out, colon, n);
    out[n] = '\0';
    break;
  }
  fclose(f);
}

static kq_status cpu_device_info(int index, kq_device_info *out) {
  if (index != 0)
    return kq_set_error(KQ_ERR_NOT_FOUND, "cpu: device index %d out of range (1 device)", index);
  memset(out, 0, sizeof *out);
  snprintf(out->name, sizeof out->name, "cpu");
  snprintf(out->backend, sizeof out->backend, "cpu");
  snprintf(out->description, sizeof out->description, "host CPU");
  cpuinfo_field("model name", out->description, sizeof out->description);
  snprintf(out->vendor, sizeof out->vendor, "unknown");
  cpuinfo_field("vendor_id", out->vendor, sizeof out->vendor);
  const kq_cpu_kernels *k = kq_cpu_kernels_get();
  int threads = kq_cpu_pool_threads();
  snprintf(out->driver, sizeof out->driver, "kqsvd cpu %s (%s, %d threads)", kq_version(),
           kq_cpu_code_path(), threads);
  snprintf(out->extensions, sizeof out->extensions, "%s", k->isa);
  out->type = KQ_DEVICE_TYPE_CPU;
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  out->memory_bytes = (pages > 0 && page > 0) ? (uint64_t)pages * (uint64_t)page : 0;
  out->max_buffer_bytes = out->memory_bytes;
  out->fp16_storage = 1;
  out->subgroup_size = 0;
  out->compute_units = threads;
  return KQ_OK;
}

static kq_status cpu_device_open(int index, kq_bdevice **out_device) {
  if (index != 0)
    return kq_set_error(KQ_ERR_NOT_FOUND, "cpu: device index %d out of range (1 device)", index);
  kq_cpu_pool_threads(); /* start the team now rather than inside the first op */
  *out_device = &g_cpu_device;
  return KQ_OK;
}

static void cpu_device_close(kq_bdevice *device) {
  (void)device;
}

static kq_status cpu_buffer_alloc(kq_bdevice *device, size_t bytes, kq_buffer **out_buffer) {
  device->allocations++;
  kq_buffer *b = calloc(1, sizeof *b);
  size_t rounded;
  if (!b || !kq_add_size(bytes, 63, &rounded)) {
    free(b);
    return kq_set_error(KQ_ERR_DEVICE_MEMORY, "cpu: cannot allocate a buffer of %zu bytes", bytes);
  }
  rounded &= ~(size_t)63;
  /* Large buffers (latent caches) on 2 MiB pages where the kernel allows:
   * decode streams through them, and with 4 KiB pages a TLB walk every few
   * dozen rows (costly under virtualisation) bounds the bandwidth. */
  size_t align = 64, huge = (size_t)2 << 20;
  if (rounded >= 2 * huge && rounded <= SIZE_MAX - huge) {
    align = huge;
    rounded = (rounded + huge - 1) & ~(huge - 1);
  }
  b->data = aligned_alloc(align, rounded ? rounded : 64);
#ifdef MADV_HUGEPAGE
  if (b->data && align == huge) madvise(b->data, rounded, MADV_HUGEPAGE);
#endif
  if (!b->data) {
    free(b);
    return kq_set_error(KQ_ERR_DEVICE_MEMORY, "cpu: cannot allocate a buffer of %zu bytes", bytes);
  }
  b->size = bytes;
  *out_buffer = b;
  return KQ_OK;
}

static void cpu_buffer_free(kq_bdevice *device, kq_buffer *buffer) {
  (void)device;
  if (!buffer) return;
  free(buffer->data);
  free(buffer);
}

static kq_status cpu_buffer_upload(kq_bdevice *device, kq_buffer *dst, size_t offset,
                                   const void *src, size_t bytes) {
  kq_status st = kq_cpu_check_range(dst, offset, bytes, "upload");
  if (st != KQ_OK) return st;
  device->bytes_uploaded += bytes;
  if (bytes) memcpy(dst->data + offset, src, bytes);
  return KQ_OK;
}

static kq_status cpu_buffer_download(kq_bdevice *device, const kq_buffer *src, size_t offset,
                                     void *dst, size_t bytes) {
  kq_status st = kq_cpu_check_range(src, offset, bytes, "download");
  if (st != KQ_OK) return st;
  device->bytes_downloaded += bytes;
  if (bytes) memcpy(dst, src->data + offset, bytes);
  return KQ_OK;
}

typedef struct copy_ctx {
  unsigned char *dst;
  const unsigned char *src;
  size_t bytes, piece;
} copy_ctx;

static void copy_task(void *ctx, int64_t index, int worker, void *scratch) {
  (void)worker;
  (void)scratch;
  copy_ctx *c = ctx;
  size_t begin = (size_t)index * c->piece;
  size_t n = c->bytes - begin < c->piece ? c->bytes - begin : c->piece;
  memcpy(c->dst + begin, c->src + begin, n);
}

static kq_status cpu_copy(kq_bdevice *device, kq_buffer *dst, const kq_buffer *src, size_t bytes) {
  device->dispatches++;
  kq_status st = kq_cpu_check_range(dst, 0, bytes, "copy destination");
  if (st == KQ_OK) st = kq_cpu_check_range(src, 0, bytes, "copy source");
  if (st != KQ_OK) return st;
  copy_ctx c = {.dst = dst->data, .src = src->data, .bytes = bytes, .piece = (size_t)1 << 21};
  if (bytes == 0) return KQ_OK;
  return kq_cpu_pool_run((int64_t)((bytes + c.piece - 1) / c.piece), 0, 0, copy_task, &c);
}

static kq_status cpu_synchronize(kq_bdevice *device) {
  (void)device;
  return KQ_OK; /* every op runs to completion before it returns */
}

/* The ops, counted (kq_device_stats: every op is one dispatch). */
static kq_status cpu_project(kq_bdevice *device, const kq_project_op *op) {
  device->dispatches++;
  return kq_cpu_project(device, op);
}

static kq_status cpu_attend(kq_bdevice *device, const kq_attend_op *op) {
  device->dispatches++;
  return kq_cpu_attend(device, op);
}

static kq_status cpu_up(kq_bdevice *device, const kq_up_op *op) {
  device->dispatches++;
  return kq_cpu_up(device, op);
}

static kq_status cpu_get_stats(kq_bdevice *device, kq_device_stats *out) {
  out->submits = 0;
  out->host_waits = 0;
  out->dispatches = device->dispatches;
  out->bytes_uploaded = device->bytes_uploaded;
  out->bytes_downloaded = device->bytes_downloaded;
  out->device_allocations = device->allocations;
  return KQ_OK;
}

static const kq_backend_iface g_cpu_iface = {
    .abi_version = KQ_BACKEND_ABI_VERSION,
    .struct_size = sizeof(kq_backend_iface),
    .name = "cpu",
    .device_count = cpu_device_count,
    .device_info = cpu_device_info,
    .device_open = cpu_device_open,
    .device_close = cpu_device_close,
    .buffer_alloc = cpu_buffer_alloc,
    .buffer_free = cpu_buffer_free,
    .buffer_upload = cpu_buffer_upload,
    .buffer_download = cpu_buffer_download,
    .project = cpu_project,
    .attend = cpu_attend,
    .up = cpu_up,
    .copy = cpu_copy,
    .synchronize = cpu_synchronize,
    .get_stats = cpu_get_stats,
};

const kq_backend_iface *kq_cpu_backend_iface(void) {
  return &g_cpu_iface;
}
