/*
 * ocl_module.c — the module's entry point, device enumeration and device info.
 * Only kq_backend_entry is exported (the module is built with hidden
 * visibility). No ICD, no platform or no device simply means zero devices.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ocl_internal.h"

#define KQ_OCL_MAX_DEVICES 64

const kq_backend_host *kq_ocl_host;

static pthread_once_t enum_once = PTHREAD_ONCE_INIT;
static int n_devices;
static cl_platform_id dev_platforms[KQ_OCL_MAX_DEVICES];
static cl_device_id dev_ids[KQ_OCL_MAX_DEVICES];

/* Per-index timings of the last device open in this process (for info). */
static pthread_mutex_t notes_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
  double program_s, gemm_s;
  int origin, have_program, have_gemm;
} notes[KQ_OCL_MAX_DEVICES];

double kq_ocl_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void enumerate(void) {
  cl_uint n_plat = 0;
  if (clGetPlatformIDs(0, NULL, &n_plat) != CL_SUCCESS || n_plat == 0) return;
  cl_platform_id plats[16];
  if (n_plat > 16) n_plat = 16;
  if (clGetPlatformIDs(n_plat, plats, NULL) != CL_SUCCESS) return;
  for (cl_uint p = 0; p < n_plat && n_devices < KQ_OCL_MAX_DEVICES; ++p) {
    cl_uint n = 0;
    cl_device_id ids[KQ_OCL_MAX_DEVICES];
    if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, KQ_OCL_MAX_DEVICES, ids, &n) != CL_SUCCESS)
      continue;
    if (n > KQ_OCL_MAX_DEVICES) n = KQ_OCL_MAX_DEVICES;
    for (cl_uint i = 0; i < n && n_devices < KQ_OCL_MAX_DEVICES; ++i) {
      dev_platforms[n_devices] = plats[p];
      dev_ids[n_devices] = ids[i];
      ++n_devices;
    }
  }
}

int kq_ocl_device_total(void) {
  pthread_once(&enum_once, enumerate);
  return n_devices;
}

kq_status kq_ocl_device_ids(int index, cl_platform_id *out_platform, cl_device_id *out_device) {
  if (index < 0 || index >= kq_ocl_device_total())
    return kq_ocl_host->set_error(KQ_ERR_NOT_FOUND, "opencl:%d: no such device (%d found)", index,
                                  kq_ocl_device_total());
  *out_platform = dev_platforms[index];
  *out_device = dev_ids[index];
  return KQ_OK;
}

void kq_ocl_note_timings(int index, double program_s, int program_origin, double gemm_s) {
  if (index < 0 || index >= KQ_OCL_MAX_DEVICES) return;
  pthread_mutex_lock(&notes_lock);
  if (program_s >= 0) {
    notes[index].program_s = program_s;
    notes[index].origin = program_origin;
    notes[index].have_program = 1;
  }
  if (gemm_s >= 0) {
    notes[index].gemm_s = gemm_s;
    notes[index].have_gemm = 1;
  }
  pthread_mutex_unlock(&notes_lock);
}

/* A device string, truncated to `size` (drivers may return longer ones). */
static void dev_str(cl_device_id dev, cl_device_info what, char *out, size_t size) {
  size_t n = 0;
  out[0] = '\0';
  if (clGetDeviceInfo(dev, what, 0, NULL, &n) != CL_SUCCESS || n == 0) return;
  char *tmp = malloc(n + 1);
  if (!tmp) return;
  if (clGetDeviceInfo(dev, what, n, tmp, NULL) == CL_SUCCESS) {
    tmp[n] = '\0';
    snprintf(out, size, "%s", tmp);
  }
  free(tmp);
}

/* Appends " word" to a space-separated list if it fits. */
static void add_word(char *list, size_t size, const char *word) {
  size_t n = strlen(list);
  if (n + 1 + strlen(word) + 1 > size) return;
  snprintf(list + n, size - n, "%s%s", n ? " " : "", word);
}

static int device_count(void) {
  return kq_ocl_device_total();
}

static kq_status device_info(int index, kq_device_info *info) {
  cl_platform_id plat = NULL;
  cl_device_id dev = NULL;
  kq_status st = kq_ocl_device_ids(index, &plat, &dev);
  if (st != KQ_OK) return st;
  return kq_ocl_describe(plat, dev, index, info);
}

kq_status kq_ocl_describe(cl_platform_id plat, cl_device_id dev, int index, kq_device_info *info) {
  memset(info, 0, sizeof *info);
  if (index >= 0)
    snprintf(info->name, sizeof info->name, "opencl:%d", index);
  else
    snprintf(info->name, sizeof info->name, "opencl:external");
  snprintf(info->backend, sizeof info->backend, "opencl");
  dev_str(dev, CL_DEVICE_NAME, info->description, sizeof info->description);
  dev_str(dev, CL_DEVICE_VENDOR, info->vendor, sizeof info->vendor);
  char pname[64] = "", drv[64], cver[96];
  if (clGetPlatformInfo(plat, CL_PLATFORM_NAME, sizeof pname, pname, NULL) != CL_SUCCESS)
    pname[0] = '\0';
  pname[sizeof pname - 1] = '\0';
  dev_str(dev, CL_DRIVER_VERSION, drv, sizeof drv);
  dev_str(dev, CL_DEVICE_VERSION, cver, sizeof cver);
  snprintf(info->driver, sizeof info->driver, "%.40s %.30s (%.50s)", pname, drv, cver);

  cl_device_type type = 0;
  cl_bool unified = CL_FALSE;
  cl_ulong mem = 0, max_alloc = 0;
  cl_uint cu = 0;
  clGetDeviceInfo(dev, CL_DEVICE_TYPE, sizeof type, &type, NULL);
  clGetDeviceInfo(dev, CL_DEVICE_HOST_UNIFIED_MEMORY, sizeof unified, &unified, NULL);
  clGetDeviceInfo(dev, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof mem, &mem, NULL);
  clGetDeviceInfo(dev, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof max_alloc, &max_alloc, NULL);
  clGetDeviceInfo(dev, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof cu, &cu, NULL);
  if (type & CL_DEVICE_TYPE_CPU)
    info->type = KQ_DEVICE_TYPE_CPU;
  else if (type & CL_DEVICE_TYPE_GPU)
    info->type = unified ? KQ_DEVICE_TYPE_GPU_INTEGRATED : KQ_DEVICE_TYPE_GPU_DISCRETE;
  else
    info->type = KQ_DEVICE_TYPE_OTHER;
  info->memory_bytes = mem;
  info->max_buffer_bytes = max_alloc;
  info->compute_units = (int32_t)cu;
  info->fp16_storage = 1; /* vload_half / vstore_half are core OpenCL C */

  size_t ext_len = 0;
  char *ext = NULL;
  if (clGetDeviceInfo(dev, CL_DEVICE_EXTENSIONS, 0, NULL, &ext_len) == CL_SUCCESS)
    ext = calloc(ext_len + 1, 1);
  if (!ext || clGetDeviceInfo(dev, CL_DEVICE_EXTENSIONS, ext_len, ext, NULL) != CL_SUCCESS) {
    free(ext);
    ext = calloc(1, 1);
    if (!ext) return kq_ocl_host->set_error(KQ_ERR_OUT_OF_MEMORY, "%s: device info", info->name);
  }
  dev_str(dev, CL_DEVICE_OPENCL_C_VERSION, cver, sizeof cver);
  char *list = info->extensions;
  size_t lsize = sizeof info->extensions;
  {
    char w[100];
    snprintf(w, sizeof w, "%s", cver);
    for (char *p = w; *p; ++p)
      if (*p == ' ') *p = '_';
    add_word(list, lsize, w);
  }
  add_word(list, lsize, "f16-storage:vload_half");
  static const char *notable[] = {"cl_khr_fp16",
                                  "cl_khr_fp64",
                                  "cl_khr_subgroups",
                                  "cl_intel_subgroups",
                                  "cl_khr_int64_base_atomics",
                                  "cl_nv_device_attribute_query",
                                  "cl_amd_device_attribute_query"};
  for (size_t i = 0; i < sizeof notable / sizeof notable[0]; ++i)
    if (strstr(ext, notable[i])) add_word(list, lsize, notable[i]);
  if (strstr(ext, "cl_nv_device_attribute_query")) {
    cl_uint warp = 0;
    if (clGetDeviceInfo(dev, 0x4003 /* CL_DEVICE_WARP_SIZE_NV */, sizeof warp, &warp, NULL) ==
        CL_SUCCESS)
      info->subgroup_size = (int32_t)warp;
  } else if (strstr(ext, "cl_amd_device_attribute_query")) {
    cl_uint wave = 0;
    if (clGetDeviceInfo(dev, 0x4043 /* CL_DEVICE_WAVEFRONT_WIDTH_AMD */, sizeof wave, &wave,
                        NULL) == CL_SUCCESS)
      info->subgroup_size = (int32_t)wave;
  }
  free(ext);
  pthread_mutex_lock(&notes_lock);
  if (index >= 0 && index < KQ_OCL_MAX_DEVICES && notes[index].have_program) {
    static const char *origins[] = {"cache", "built", "rebuilt"};
    char w[96];
    int o = notes[index].origin;
    snprintf(w, sizeof w, "program:%s:%.3fs", o >= 0 && o < 3 ? origins[o] : "?",
             notes[index].program_s);
    add_word(list, lsize, w);
  }
  if (index >= 0 && index < KQ_OCL_MAX_DEVICES && notes[index].have_gemm) {
    char w[64];
    snprintf(w, sizeof w, "clblast-warmup:%.3fs", notes[index].gemm_s);
    add_word(list, lsize, w);
  }
  pthread_mutex_unlock(&notes_lock);
  return KQ_OK;
}

static const kq_backend_iface opencl_iface = {
    .abi_version = KQ_BACKEND_ABI_VERSION,
    .struct_size = sizeof(kq_backend_iface),
    .name = "opencl",
    .device_count = device_count,
    .device_info = device_info,
    .device_open = kq_ocl_device_open,
    .device_close = kq_ocl_device_close,
    .buffer_alloc = kq_ocl_buffer_alloc,
    .buffer_free = kq_ocl_buffer_free,
    .buffer_upload = kq_ocl_buffer_upload,
    .buffer_download = kq_ocl_buffer_download,
    .project = kq_ocl_project,
    .attend = kq_ocl_attend,
    .up = kq_ocl_up,
    .copy = kq_ocl_copy,
    .synchronize = kq_ocl_synchronize,
    .get_stats = kq_ocl_get_stats,
    .caps = KQ_BACKEND_CAP_FUSED_UP,
    .device_open_external = kq_ocl_device_open_external,
    .buffer_import = kq_ocl_buffer_import,
};

__attribute__((visibility("default"))) kq_status
kq_backend_entry(const kq_backend_host *host, const kq_backend_iface **out_iface);

kq_status kq_backend_entry(const kq_backend_host *host, const kq_backend_iface **out_iface) {
  if (!host || !out_iface || !host->set_error) return KQ_ERR_INVALID_ARGUMENT;
  if (host->abi_version != KQ_BACKEND_ABI_VERSION)
    return host->set_error(KQ_ERR_ABI, "opencl module: built for backend ABI %u, core has %u",
                           KQ_BACKEND_ABI_VERSION, host->abi_version);
  kq_ocl_host = host;
  *out_iface = &opencl_iface;
  return KQ_OK;
}
