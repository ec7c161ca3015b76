/*
 * ocl_device.c — opening a device (context, in-order queue, program through
 * the binary cache, kernels), buffers, transfers, the copy kernel, scratch.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <clblast_c.h>

#include "kq_ocl_sources.h"
#include "kqsvd_opencl.h"
#include "ocl_internal.h"
#include "ocl_program_cache.h"

static const char *const kernel_names[KQ_K_COUNT] = {
    [KQ_K_STORE_ROWS_F32] = "kq_store_rows_f32",
    [KQ_K_STORE_ROWS_F16] = "kq_store_rows_f16",
    [KQ_K_ATTN_CHUNK_F32] = "kq_attn_chunk_f32",
    [KQ_K_ATTN_CHUNK_F16] = "kq_attn_chunk_f16",
    [KQ_K_ATTN_CHUNK_SEG] = "kq_attn_chunk_seg",
    [KQ_K_ATTN_SPLIT_F32] = "kq_attn_split_f32",
    [KQ_K_ATTN_SPLIT_F16] = "kq_attn_split_f16",
    [KQ_K_QPROJ] = "kq_qproj",
    [KQ_K_QROT] = "kq_qrot",
    [KQ_K_ATTN_REDUCE] = "kq_attn_reduce",
    [KQ_K_SOFTMAX_CAUSAL] = "kq_softmax_causal",
    [KQ_K_UP] = "kq_up",
    [KQ_K_COPY_U4] = "kq_copy_u4",
    [KQ_K_SEG_STORE] = "kq_seg_store",
    [KQ_K_SEG_WIDEN] = "kq_seg_widen",
    [KQ_K_ATTN_DECODE] = "kq_attn_decode_team",
    [KQ_K_ATTN_DECODE_ONE] = "kq_attn_decode_one",
    [KQ_K_ATTN_REDUCE_UP] = "kq_attn_reduce_up",
};

static const char kv_f32_defs[] = "\n#define KV_T float\n#define KV_LOAD(p, i) ((p)[(i)])\n"
                                  "#define KV_LOAD4(p, i) vload4(0, (p) + (i))\n"
                                  "#define KV_LOAD8(p, i) vload8(0, (p) + (i))\n"
                                  "#define KV_STORE(v, p, i) ((p)[(i)] = (v))\n"
                                  "#define KV_NAME(n) n##_f32\n";
static const char kv_f16_defs[] =
    "\n#undef KV_T\n#undef KV_LOAD\n#undef KV_LOAD4\n#undef KV_LOAD8\n#undef KV_STORE\n"
    "#undef KV_NAME\n"
    "#define KV_T half\n#define KV_LOAD(p, i) vload_half((i), (p))\n"
    "#define KV_LOAD4(p, i) vload_half4(0, (p) + (i))\n"
    "#define KV_LOAD8(p, i) vload_half8(0, (p) + (i))\n"
    "#define KV_STORE(v, p, i) vstore_half_rte((v), (i), (p))\n#define KV_NAME(n) n##_f16\n";

/* kq_chunk_body.cl instantiated for F32, F16 and segmented caches. */
static const char ch_f32_defs[] =
    "\n#define CH_NAME(n) n##_f32\n"
    "#define CH_CACHES __global const float *kc, ulong kc_off, __global const float *vc, "
    "ulong vc_off\n"
    "#define CH_KEY(s, i) kc[kc_off + (s) * rank_k + (i)]\n"
    "#define CH_KEY4(s, i) vload4(0, kc + kc_off + (s) * rank_k + (i))\n"
    "#define CH_VAL(s, i) vc[vc_off + (s) * rank_v + (i)]\n"
    "#define CH_VAL4(s, i) vload4(0, vc + vc_off + (s) * rank_v + (i))\n"
    "#define CH_SEEK(kr, vr) (kc_off += (kr), vc_off += (vr))\n#define CH_STAGE 0\n";
static const char ch_f16_defs[] =
    "\n#undef CH_NAME\n#undef CH_CACHES\n#undef CH_KEY\n#undef CH_KEY4\n#undef CH_VAL\n"
    "#undef CH_VAL4\n#undef CH_SEEK\n#undef CH_STAGE\n#define CH_NAME(n) n##_f16\n"
    "#define CH_CACHES __global const half *kc, ulong kc_off, __global const half *vc, "
    "ulong vc_off\n"
    "#define CH_KEY(s, i) vload_half(kc_off + (s) * rank_k + (i), kc)\n"
    "#define CH_KEY4(s, i) vload_half4(0, kc + kc_off + (s) * rank_k + (i))\n"
    "#define CH_VAL(s, i) vload_half(vc_off + (s) * rank_v + (i), vc)\n"
    "#define CH_VAL4(s, i) vload_half4(0, vc + vc_off + (s) * rank_v + (i))\n"
    "#define CH_SEEK(kr, vr) (kc_off += (kr), vc_off += (vr))\n#define CH_STAGE 0\n";
static const char ch_seg_defs[] =
    "\n#undef CH_NAME\n#undef CH_CACHES\n#undef CH_KEY\n#undef CH_KEY4\n#undef CH_VAL\n"
    "#undef CH_VAL4\n#undef CH_SEEK\n#undef CH_STAGE\n#define CH_NAME(n) n##_seg\n"
    "#define CH_CACHES __global const uchar *kc, kq_seg4 ks, __global const uchar *vc, "
    "kq_seg4 vs\n"
    "#define CH_KEY(s, i) kq_seg4_elem(kc, &ks, (s), (i))\n"
    "#define CH_KEY4(s, i) kq_seg4_elem4(kc, &ks, (s), (i))\n"
    "#define CH_VAL(s, i) kq_seg4_elem(vc, &vs, (s), (i))\n"
    "#define CH_VAL4(s, i) kq_seg4_elem4(vc, &vs, (s), (i))\n"
    "#define CH_SEEK(kr, vr) (kc += (kr), vc += (vr))\n#define CH_STAGE 1\n";

/* kq_decode_body.cl instantiated for the GPU and the CPU layout. */
static const char dec_team_defs[] = "\n#define DEC_TEAM1 0\n#define DEC_NAME(n) n##_team\n";
static const char dec_one_defs[] = "\n#undef DEC_TEAM1\n#undef DEC_NAME\n#define DEC_TEAM1 1\n"
                                   "#define DEC_NAME(n) n##_one\n";

#define KQ_OCL_BUILD_OPTIONS "-cl-std=CL1.2"

/* Devices open in this process. CLBlast keeps the programs it compiled (and
 * through them their contexts) in a process-wide cache; when the last device
 * closes, that cache is cleared so that opening and closing devices in a
 * long-lived process does not pile up dead contexts. */
static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
static int open_devices;

/* The whole program text (malloc'd). */
static char *program_source(void) {
  const char *parts[] = {kq_ocl_src_kq_prelude,
                         kv_f32_defs,
                         kq_ocl_src_kq_kv_body,
                         kv_f16_defs,
                         kq_ocl_src_kq_kv_body,
                         kq_ocl_src_kq_attend,
                         kq_ocl_src_kq_up,
                         kq_ocl_src_kq_copy,
                         kq_ocl_src_kq_segments,
                         kq_ocl_src_kq_decode,
                         dec_team_defs,
                         kq_ocl_src_kq_decode_body,
                         dec_one_defs,
                         kq_ocl_src_kq_decode_body,
                         ch_f32_defs,
                         kq_ocl_src_kq_chunk_body,
                         ch_f16_defs,
                         kq_ocl_src_kq_chunk_body,
                         ch_seg_defs,
                         kq_ocl_src_kq_chunk_body};
  size_t n = 1;
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; ++i) n += strlen(parts[i]) + 1;
  char *s = malloc(n);
  if (!s) return NULL;
  s[0] = '\0';
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; ++i) {
    strcat(s, parts[i]);
    strcat(s, "\n");
  }
  return s;
}

static kq_status build_program(kq_bdevice *dev) {
  char *src = program_source();
  if (!src) return kq_ocl_host->set_error(KQ_ERR_OUT_OF_MEMORY, "%s: program source", dev->label);
  kq_ocl_prog_report *rep = malloc(sizeof *rep);
  if (!rep) {
    free(src);
    return kq_ocl_host->set_error(KQ_ERR_OUT_OF_MEMORY, "%s: program report", dev->label);
  }
  double t0 = kq_ocl_now();
  cl_int err =
      kq_ocl_program_get(dev->context, dev->id, src, KQ_OCL_BUILD_OPTIONS, &dev->program, rep);
  free(src);
  if (err != CL_SUCCESS) {
    kq_status st =
        kq_ocl_host->set_error(KQ_ERR_DEVICE, "%s: building kernels: %s (%d): %.1500s", dev->label,
                               kq_ocl_error_name(err), (int)err, rep->build_log);
    free(rep);
    return st;
  }
  dev->program_load_s = kq_ocl_now() - t0;
  dev->program_origin = (int)rep->origin;
  free(rep);
  kq_ocl_note_timings(dev->index, dev->program_load_s, dev->program_origin, -1.0);
  for (int k = 0; k < KQ_K_COUNT; ++k) {
    dev->kernels[k] = clCreateKernel(dev->program, kernel_names[k], &err);
    if (err != CL_SUCCESS) return kq_ocl_fail(dev, KQ_ERR_DEVICE, kernel_names[k], err);
    size_t wg = 0;
    err = clGetKernelWorkGroupInfo(dev->kernels[k], dev->id, CL_KERNEL_WORK_GROUP_SIZE, sizeof wg,
                                   &wg, NULL);
    dev->kernel_wg[k] = err == CL_SUCCESS && wg > 0 && wg < dev->max_wg ? wg : dev->max_wg;
  }
  return KQ_OK;
}

/* A device record for `id` with its limits and kernel layout, before any
 * context or queue. */
static kq_status device_new(int index, cl_platform_id plat, cl_device_id id, kq_bdevice **out_dev) {
  kq_bdevice *dev = calloc(1, sizeof *dev);
  if (!dev) return kq_ocl_host->set_error(KQ_ERR_OUT_OF_MEMORY, "opencl: device");
  dev->index = index;
  dev->platform = plat;
  dev->id = id;
  if (index >= 0)
    snprintf(dev->name, sizeof dev->name, "opencl:%d", index);
  else
    snprintf(dev->name, sizeof dev->name, "opencl:external");
  char dname[120] = "";
  if (clGetDeviceInfo(id, CL_DEVICE_NAME, sizeof dname, dname, NULL) != CL_SUCCESS) dname[0] = '\0';
  dname[sizeof dname - 1] = '\0';
  snprintf(dev->label, sizeof dev->label, "%s (%s)", dev->name, dname);
  if (pthread_mutex_init(&dev->lock, NULL) != 0) {
    kq_status st = kq_ocl_host->set_error(KQ_ERR_DEVICE, "%s: mutex", dev->label);
    free(dev);
    return st;
  }
  cl_uint cu = 0;
  cl_ulong lmem = 0;
  clGetDeviceInfo(id, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof dev->max_wg, &dev->max_wg, NULL);
  clGetDeviceInfo(id, CL_DEVICE_LOCAL_MEM_SIZE, sizeof lmem, &lmem, NULL);
  clGetDeviceInfo(id, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof cu, &cu, NULL);
  dev->local_mem = (size_t)lmem;
  dev->compute_units = cu ? cu : 1;
  cl_device_type type = 0;
  clGetDeviceInfo(id, CL_DEVICE_TYPE, sizeof type, &type, NULL);
  dev->cpu = (type & CL_DEVICE_TYPE_CPU) != 0;
  /* KQSVD_OPENCL_LAYOUT=gpu|cpu overrides the kernel layout chosen by
   * device type, so that the GPU-shaped kernels are tested on a CPU driver
   * (tests/opencl: conformance_opencl_gpu_layout). */
  const char *layout = getenv("KQSVD_OPENCL_LAYOUT");
  if (layout && strcmp(layout, "gpu") == 0) dev->cpu = 0;
  if (layout && strcmp(layout, "cpu") == 0) dev->cpu = 1;
  if (dev->max_wg == 0) dev->max_wg = 1;
  *out_dev = dev;
  return KQ_OK;
}

/* Builds the program in dev->context and counts the device as open. */
static kq_status device_finish(kq_bdevice *dev, kq_bdevice **out_device) {
  kq_status st = build_program(dev);
  if (st != KQ_OK) {
    kq_ocl_device_close(dev);
    return st;
  }
  pthread_mutex_lock(&open_lock);
  ++open_devices;
  pthread_mutex_unlock(&open_lock);
  dev->counted = 1;
  *out_device = dev;
  return KQ_OK;
}

kq_status kq_ocl_device_open(int index, kq_bdevice **out_device) {
  cl_platform_id plat = NULL;
  cl_device_id id = NULL;
  kq_status st = kq_ocl_device_ids(index, &plat, &id);
  if (st != KQ_OK) return st;
  kq_bdevice *dev = NULL;
  st = device_new(index, plat, id, &dev);
  if (st != KQ_OK) return st;
  cl_int err;
  cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)plat, 0};
  dev->context = clCreateContext(props, 1, &id, NULL, NULL, &err);
  if (err != CL_SUCCESS) {
    st = kq_ocl_fail(dev, KQ_ERR_DEVICE, "clCreateContext", err);
    kq_ocl_device_close(dev);
    return st;
  }
  dev->queue = clCreateCommandQueue(dev->context, id, 0, &err);
  if (err != CL_SUCCESS) {
    st = kq_ocl_fail(dev, KQ_ERR_DEVICE, "clCreateCommandQueue", err);
    kq_ocl_device_close(dev);
    return st;
  }
  return device_finish(dev, out_device);
}

/* Checks that the engine's queue belongs to its context and device and
 * executes in order; *out_platform is the device's platform. */
static kq_status check_handles(const kq_opencl_device_handles *h, cl_platform_id *out_platform) {
  if (h->struct_size < sizeof *h)
    return kq_ocl_host->set_error(KQ_ERR_INVALID_ARGUMENT,
                                  "opencl:external: handles.struct_size %u, expected %zu",
                                  (unsigned)h->struct_size, sizeof *h);
  if (!h->context || !h->device || !h->queue)
    return kq_ocl_host->set_error(KQ_ERR_INVALID_ARGUMENT,
                                  "opencl:external: NULL context, device or queue");
  cl_int err =
      clGetDeviceInfo(h->device, CL_DEVICE_PLATFORM, sizeof *out_platform, out_platform, NULL);
  if (err != CL_SUCCESS)
    return kq_ocl_host->set_error(KQ_ERR_DEVICE, "opencl:external: device: %s (%d)",
                                  kq_ocl_error_name(err), (int)err);
  cl_context qctx = NULL;
  cl_device_id qdev = NULL;
  cl_command_queue_properties qprops = 0;
  err = clGetCommandQueueInfo(h->queue, CL_QUEUE_CONTEXT, sizeof qctx, &qctx, NULL);
  if (err == CL_SUCCESS)
    err = clGetCommandQueueInfo(h->queue, CL_QUEUE_DEVICE, sizeof qdev, &qdev, NULL);
  if (err == CL_SUCCESS)
    err = clGetCommandQueueInfo(h->queue, CL_QUEUE_PROPERTIES, sizeof qprops, &qprops, NULL);
  if (err != CL_SUCCESS)
    return kq_ocl_host->set_error(KQ_ERR_DEVICE, "opencl:external: queue: %s (%d)",
                                  kq_ocl_error_name(err), (int)err);
  if (qctx != h->context || qdev != h->device)
    return kq_ocl_host->set_error(KQ_ERR_INVALID_ARGUMENT,
                                  "opencl:external: the queue belongs to another %s",
                                  qctx != h->context ? "context" : "device");
  if (qprops & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE)
    return kq_ocl_host->set_error(KQ_ERR_DEVICE,
                                  "opencl:external: the queue has "
                                  "CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE; kqsvd needs an "
                                  "in-order queue");
  return KQ_OK;
}

kq_status kq_ocl_device_open_external(const void *handles, kq_device_info *out_info,
                                      kq_bdevice **out_device) {
  const kq_opencl_device_handles *h = handles;
  cl_platform_id plat = NULL;
  kq_status st = check_handles(h, &plat);
  if (st == KQ_OK) st = kq_ocl_describe(plat, h->device, -1, out_info);
  if (st != KQ_OK) return st;
  kq_bdevice *dev = NULL;
  st = device_new(-1, plat, h->device, &dev);
  if (st != KQ_OK) return st;
  /* Retained before anything can fail: close releases exactly these. */
  dev->external = 1;
  clRetainDevice(h->device);
  clRetainContext(h->context);
  clRetainCommandQueue(h->queue);
  dev->context = h->context;
  dev->queue = h->queue;
  return device_finish(dev, out_device);
}

void kq_ocl_device_close(kq_bdevice *dev) {
  if (!dev) return;
  if (dev->queue) clFinish(dev->queue);
  for (int i = 0; i < KQ_S_COUNT; ++i)
    if (dev->scratch[i]) clReleaseMemObject(dev->scratch[i]);
  for (int i = 0; i < KQ_OCL_ROPE_TABLES; ++i)
    if (dev->rope[i].mem) clReleaseMemObject(dev->rope[i].mem);
  for (int k = 0; k < KQ_K_COUNT; ++k)
    if (dev->kernels[k]) clReleaseKernel(dev->kernels[k]);
  if (dev->program) clReleaseProgram(dev->program);
  if (dev->queue) clReleaseCommandQueue(dev->queue);
  if (dev->context) clReleaseContext(dev->context);
  if (dev->external) clReleaseDevice(dev->id);
  pthread_mutex_destroy(&dev->lock);
  if (dev->counted) {
    pthread_mutex_lock(&open_lock);
    if (--open_devices == 0) CLBlastClearCache();
    pthread_mutex_unlock(&open_lock);
  }
  free(dev);
}

kq_status kq_ocl_buffer_alloc(kq_bdevice *dev, size_t bytes, kq_buffer **out_buffer) {
  kq_buffer *buf = calloc(1, sizeof *buf);
  if (!buf) return kq_ocl_host->set_error(KQ_ERR_OUT_OF_MEMORY, "%s: buffer", dev->label);
  cl_int err;
  buf->bytes = bytes;
  buf->mem = clCreateBuffer(dev->context, CL_MEM_READ_WRITE, bytes ? bytes : 16, NULL, &err);
  pthread_mutex_lock(&dev->lock);
  dev->stats.device_allocations++;
  pthread_mutex_unlock(&dev->lock);
  if (err != CL_SUCCESS) {
    free(buf);
    kq_status st = err == CL_INVALID_BUFFER_SIZE || err == CL_MEM_OBJECT_ALLOCATION_FAILURE ||
                           err == CL_OUT_OF_RESOURCES
                       ? KQ_ERR_DEVICE_MEMORY
                       : KQ_ERR_DEVICE;
    return kq_ocl_host->set_error(st, "%s: allocating %zu bytes: %s (%d)", dev->label, bytes,
                                  kq_ocl_error_name(err), (int)err);
  }
  *out_buffer = buf;
  return KQ_OK;
}

void kq_ocl_buffer_free(kq_bdevice *dev, kq_buffer *buf) {
  (void)dev;
  if (!buf) return;
  clReleaseMemObject(buf->mem);
  free(buf);
}

kq_status kq_ocl_buffer_import(kq_bdevice *dev, const void *native, size_t *out_bytes,
                               kq_buffer **out_buffer) {
  const kq_opencl_buffer *nb = native;
  if (nb->struct_size < sizeof *nb || !nb->mem)
    return kq_ocl_host->set_error(KQ_ERR_INVALID_ARGUMENT, "%s: import: %s", dev->label,
                                  nb->mem ? "struct_size too small" : "NULL cl_mem");
  cl_context ctx = NULL;
  cl_mem_object_type type = 0;
  size_t mem_size = 0, base_off = 0;
  cl_mem mem = nb->mem, parent = NULL;
  cl_int err = clGetMemObjectInfo(mem, CL_MEM_CONTEXT, sizeof ctx, &ctx, NULL);
  if (err == CL_SUCCESS) err = clGetMemObjectInfo(mem, CL_MEM_TYPE, sizeof type, &type, NULL);
  if (err == CL_SUCCESS)
    err = clGetMemObjectInfo(mem, CL_MEM_SIZE, sizeof mem_size, &mem_size, NULL);
  if (err == CL_SUCCESS)
    err = clGetMemObjectInfo(mem, CL_MEM_ASSOCIATED_MEMOBJECT, sizeof parent, &parent, NULL);
  if (err == CL_SUCCESS && parent)
    err = clGetMemObjectInfo(mem, CL_MEM_OFFSET, sizeof base_off, &base_off, NULL);
  if (err != CL_SUCCESS) return kq_ocl_fail(dev, KQ_ERR_INVALID_ARGUMENT, "import: cl_mem", err);
  if (ctx != dev->context || type != CL_MEM_OBJECT_BUFFER)
    return kq_ocl_host->set_error(KQ_ERR_INVALID_ARGUMENT, "%s: import: the cl_mem is %s",
                                  dev->label,
                                  ctx != dev->context ? "in another context" : "not a buffer");
  if (nb->size == 0 || nb->offset > mem_size || nb->size > mem_size - nb->offset)
    return kq_ocl_host->set_error(KQ_ERR_INVALID_ARGUMENT,
                                  "%s: import: range of %zu bytes at %zu outside a cl_mem of "
                                  "%zu bytes (or empty)",
                                  dev->label, nb->size, nb->offset, mem_size);
  kq_buffer *buf = calloc(1, sizeof *buf);
  if (!buf) return kq_ocl_host->set_error(KQ_ERR_OUT_OF_MEMORY, "%s: import", dev->label);
  buf->bytes = nb->size;
  if (nb->offset == 0 && nb->size == mem_size) {
    clRetainMemObject(mem);
    buf->mem = mem;
  } else {
    /* A sub-buffer of the root buffer (a sub-buffer cannot have one), at an
     * origin aligned to CL_DEVICE_MEM_BASE_ADDR_ALIGN. It keeps its parent
     * alive, which is the retain the contract asks for. */
    if (parent) mem = parent;
    cl_uint align_bits = 0;
    clGetDeviceInfo(dev->id, CL_DEVICE_MEM_BASE_ADDR_ALIGN, sizeof align_bits, &align_bits, NULL);
    size_t align = align_bits >= 8 ? align_bits / 8 : 1;
    cl_buffer_region region = {base_off + nb->offset, nb->size};
    if (region.origin % align != 0) {
      free(buf);
      return kq_ocl_host->set_error(
          KQ_ERR_INVALID_ARGUMENT,
          "%s: import: offset %zu is not a multiple of "
          "CL_DEVICE_MEM_BASE_ADDR_ALIGN (%zu bytes); import an aligned range "
          "and pass the rest as the call's byte offset",
          dev->label, region.origin, align);
    }
    buf->mem = clCreateSubBuffer(mem, 0, CL_BUFFER_CREATE_TYPE_REGION, &region, &err);
    if (err != CL_SUCCESS) {
      free(buf);
      return kq_ocl_fail(dev, KQ_ERR_DEVICE, "import: clCreateSubBuffer", err);
    }
  }
  *out_bytes = buf->bytes;
  *out_buffer = buf;
  return KQ_OK;
}

static kq_status check_range(kq_bdevice *dev, const kq_buffer *buf, size_t offset, size_t bytes,
                             const char *what) {
  if (!buf || offset > buf->bytes || bytes > buf->bytes - offset)
    return kq_ocl_host->set_error(KQ_ERR_INVALID_ARGUMENT,
                                  "%s: %s of %zu bytes at %zu outside a buffer of %zu", dev->label,
                                  what, bytes, offset, buf ? buf->bytes : 0);
  return KQ_OK;
}

/* Waits for `ev` outside the device lock so other threads keep enqueueing. */
static kq_status wait_event(kq_bdevice *dev, cl_event ev, const char *what) {
  pthread_mutex_lock(&dev->lock);
  dev->stats.host_waits++;
  pthread_mutex_unlock(&dev->lock);
  cl_int err = clWaitForEvents(1, &ev);
  cl_int status = CL_COMPLETE;
  if (err == CL_SUCCESS)
    clGetEventInfo(ev, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof status, &status, NULL);
  clReleaseEvent(ev);
  if (err != CL_SUCCESS) return kq_ocl_fail(dev, KQ_ERR_DEVICE, what, err);
  if (status < 0) return kq_ocl_fail(dev, KQ_ERR_DEVICE, what, status);
  return KQ_OK;
}

/* Uploads up to this size go through a private host copy and return
 * without waiting (one host/device round trip less per attend). */
#define KQ_OCL_UPLOAD_STAGE ((size_t)256 << 10)

static void CL_CALLBACK free_stage(cl_event ev, cl_int status, void *copy) {
  (void)ev, (void)status;
  free(copy);
}

kq_status kq_ocl_buffer_upload(kq_bdevice *dev, kq_buffer *dst, size_t offset, const void *src,
                               size_t bytes) {
  kq_status st = check_range(dev, dst, offset, bytes, "upload");
  if (st != KQ_OK || bytes == 0) return st;
  /* Small uploads: the caller may reuse src at once, so copy it and free
   * the copy when the write completes; large ones wait. */
  void *copy = bytes <= KQ_OCL_UPLOAD_STAGE ? malloc(bytes) : NULL;
  if (copy) memcpy(copy, src, bytes);
  cl_event ev = NULL;
  pthread_mutex_lock(&dev->lock);
  cl_int err = clEnqueueWriteBuffer(dev->queue, dst->mem, CL_FALSE, offset, bytes,
                                    copy ? copy : src, 0, NULL, &ev);
  if (err == CL_SUCCESS) dev->stats.bytes_uploaded += bytes;
  pthread_mutex_unlock(&dev->lock);
  if (err != CL_SUCCESS) {
    free(copy);
    return kq_ocl_fail(dev, KQ_ERR_DEVICE, "clEnqueueWriteBuffer", err);
  }
  if (copy && clSetEventCallback(ev, CL_COMPLETE, free_stage, copy) == CL_SUCCESS) {
    clReleaseEvent(ev);
    return KQ_OK;
  }
  st = wait_event(dev, ev, "upload");
  free(copy);
  return st;
}

kq_status kq_ocl_buffer_download(kq_bdevice *dev, const kq_buffer *src, size_t offset, void *dst,
                                 size_t bytes) {
  kq_status st = check_range(dev, src, offset, bytes, "download");
  if (st != KQ_OK || bytes == 0) return st;
  cl_event ev = NULL;
  pthread_mutex_lock(&dev->lock);
  cl_int err =
      clEnqueueReadBuffer(dev->queue, src->mem, CL_FALSE, offset, bytes, dst, 0, NULL, &ev);
  if (err == CL_SUCCESS) dev->stats.bytes_downloaded += bytes;
  pthread_mutex_unlock(&dev->lock);
  if (err != CL_SUCCESS) return kq_ocl_fail(dev, KQ_ERR_DEVICE, "clEnqueueReadBuffer", err);
  return wait_event(dev, ev, "download");
}

kq_status kq_ocl_synchronize(kq_bdevice *dev) {
  cl_event ev = NULL;
  pthread_mutex_lock(&dev->lock);
  cl_int err = clEnqueueMarkerWithWaitList(dev->queue, 0, NULL, &ev);
  pthread_mutex_unlock(&dev->lock);
  if (err != CL_SUCCESS) return kq_ocl_fail(dev, KQ_ERR_DEVICE, "clEnqueueMarker", err);
  return wait_event(dev, ev, "synchronize");
}

kq_status kq_ocl_arg(kq_bdevice *dev, int k, cl_uint i, size_t size, const void *value) {
  cl_int err = clSetKernelArg(dev->kernels[k], i, size, value);
  if (err != CL_SUCCESS) {
    char what[96];
    snprintf(what, sizeof what, "%s argument %u", kernel_names[k], (unsigned)i);
    return kq_ocl_fail(dev, KQ_ERR_DEVICE, what, err);
  }
  return KQ_OK;
}

kq_status kq_ocl_args(kq_bdevice *dev, int k, const kq_ocl_karg *args, size_t n) {
  kq_status st = KQ_OK;
  for (size_t i = 0; i < n && st == KQ_OK; ++i)
    st = kq_ocl_arg(dev, k, (cl_uint)i, args[i].size, args[i].value);
  return st;
}

kq_status kq_ocl_launch(kq_bdevice *dev, int k, const size_t global[3], const size_t *local) {
  if (global[0] == 0 || global[1] == 0 || global[2] == 0) return KQ_OK;
  cl_int err =
      clEnqueueNDRangeKernel(dev->queue, dev->kernels[k], 3, NULL, global, local, 0, NULL, NULL);
  dev->stats.dispatches++;
  if (err != CL_SUCCESS) return kq_ocl_fail(dev, KQ_ERR_DEVICE, kernel_names[k], err);
  return KQ_OK;
}

kq_status kq_ocl_scratch(kq_bdevice *dev, int id, size_t bytes, cl_mem *out) {
  if (bytes == 0) bytes = 16;
  if (dev->scratch_bytes[id] < bytes) {
    if (dev->scratch[id]) clReleaseMemObject(dev->scratch[id]);
    dev->scratch[id] = NULL;
    dev->scratch_bytes[id] = 0;
    cl_int err;
    cl_mem m = clCreateBuffer(dev->context, CL_MEM_READ_WRITE, bytes, NULL, &err);
    dev->stats.device_allocations++;
    if (err != CL_SUCCESS)
      return kq_ocl_host->set_error(KQ_ERR_DEVICE_MEMORY,
                                    "%s: scratch buffer of %zu bytes: %s (%d)", dev->label, bytes,
                                    kq_ocl_error_name(err), (int)err);
    dev->scratch[id] = m;
    dev->scratch_bytes[id] = bytes;
  }
  *out = dev->scratch[id];
  return KQ_OK;
}

kq_status kq_ocl_copy(kq_bdevice *dev, kq_buffer *dst, const kq_buffer *src, size_t bytes) {
  kq_status st = check_range(dev, src, 0, bytes, "copy source");
  if (st == KQ_OK) st = check_range(dev, dst, 0, bytes, "copy destination");
  if (st != KQ_OK || bytes == 0) return st;
  cl_ulong words = bytes / 16;
  size_t tail = bytes - (size_t)words * 16;
  pthread_mutex_lock(&dev->lock);
  if (words) {
    size_t global[3] = {((size_t)words + 255) / 256 * 256, 1, 1};
    st = KQ_OCL_ARGS(dev, KQ_K_COPY_U4, KQ_OCL_VAL(src->mem), KQ_OCL_VAL(dst->mem),
                     KQ_OCL_VAL(words));
    if (st == KQ_OK) st = kq_ocl_launch(dev, KQ_K_COPY_U4, global, NULL);
  }
  if (st == KQ_OK && tail) {
    size_t off = (size_t)words * 16;
    cl_int err = clEnqueueCopyBuffer(dev->queue, src->mem, dst->mem, off, off, tail, 0, NULL, NULL);
    if (err != CL_SUCCESS) st = kq_ocl_fail(dev, KQ_ERR_DEVICE, "clEnqueueCopyBuffer", err);
  }
  if (st == KQ_OK) st = kq_ocl_flush(dev);
  pthread_mutex_unlock(&dev->lock);
  return st;
}

kq_status kq_ocl_flush(kq_bdevice *dev) {
  cl_int err = clFlush(dev->queue);
  dev->stats.submits++;
  return err == CL_SUCCESS ? KQ_OK : kq_ocl_fail(dev, KQ_ERR_DEVICE, "clFlush", err);
}

kq_status kq_ocl_get_stats(kq_bdevice *dev, kq_device_stats *out_stats) {
  pthread_mutex_lock(&dev->lock);
  const uint32_t size = out_stats->struct_size, reserved = out_stats->reserved;
  *out_stats = dev->stats;
  out_stats->struct_size = size;
  out_stats->reserved = reserved;
  pthread_mutex_unlock(&dev->lock);
  return KQ_OK;
}
