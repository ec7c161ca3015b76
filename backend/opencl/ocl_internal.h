/*
 * ocl_internal.h — shared state of the OpenCL backend module (internal).
 *
 * The module enumerates every OpenCL platform and device once, through the
 * ICD loader. An open device owns one context and one in-order queue; a mutex
 * serialises everything enqueued on that queue (kernel arguments, CLBlast
 * calls, scratch buffers), so two threads with a cache each may share it.
 * Because the queue is in order, a scratch buffer reused by the next op is
 * never overwritten while an earlier op still reads it.
 */
#ifndef KQ_OCL_INTERNAL_H
#define KQ_OCL_INTERNAL_H

#include <CL/cl.h>
#include <pthread.h>
#include <stddef.h>

#include "kqsvd_backend.h"

/* The core's error channel (set by kq_backend_entry). */
extern const kq_backend_host *kq_ocl_host;

/* "CL_OUT_OF_RESOURCES" for an OpenCL error code; "CL_UNKNOWN_ERROR" otherwise. */
const char *kq_ocl_error_name(cl_int code);

/* Records "opencl:N (device name): what: CL_ERROR_NAME (code)" and returns `status`. */
typedef struct kq_bdevice kq_bdevice;
kq_status kq_ocl_fail(const kq_bdevice *dev, kq_status status, const char *what, cl_int code);

/* Kernels of the built program. */
enum kq_ocl_kernel_id {
  KQ_K_STORE_ROWS_F32,
  KQ_K_STORE_ROWS_F16,
  KQ_K_ATTN_CHUNK_F32,
  KQ_K_ATTN_CHUNK_F16,
  KQ_K_ATTN_CHUNK_SEG, /* segmented caches read in place (kq_seg4) */
  KQ_K_ATTN_SPLIT_F32,
  KQ_K_ATTN_SPLIT_F16,
  KQ_K_QPROJ,
  KQ_K_QROT,
  KQ_K_ATTN_REDUCE,
  KQ_K_SOFTMAX_CAUSAL,
  KQ_K_UP,
  KQ_K_COPY_U4,
  KQ_K_SEG_STORE,
  KQ_K_SEG_WIDEN,
  KQ_K_ATTN_DECODE,     /* GPU layout: a team of lanes per position */
  KQ_K_ATTN_DECODE_ONE, /* CPU layout: one work-item per position */
  KQ_K_ATTN_REDUCE_UP,
  KQ_K_COUNT
};

/* Scratch buffers of a device, grown on demand and reused by every op. */
enum kq_ocl_scratch_id {
  KQ_S_GEMM_OUT, /* F32 GEMM result before narrowing to F16 */
  KQ_S_QPREP,    /* q B  [m, H, rank_k] */
  KQ_S_QROT,     /* rot(q B Aᵀ) [m, H, d] */
  KQ_S_PART_O,   /* split-K partial outputs */
  KQ_S_PART_ML,  /* split-K partial (max, sum) */
  KQ_S_KWIDE,    /* F32 copy of latent keys of more than KQ_OCL_SEG4 segments */
  KQ_S_VWIDE,    /* F32 copy of such latent values */
  KQ_S_SCORES,   /* prefill logits / probabilities [H, rows, cols] */
  KQ_S_CLBLAST,  /* CLBlast's GEMM temporary buffer */
  KQ_S_LATENT,   /* P Ṽ before the fused up-projection [m, H, rank_v] */
  KQ_S_COUNT
};

/* RoPE angle tables kept per device (ocl_ops.c rope_table), one per
 * (theta, head_dim), grown with the largest capacity seen. */
#define KQ_OCL_ROPE_TABLES 4
typedef struct kq_ocl_rope {
  float theta;
  int head_dim;
  int hi_rows; /* positions covered: 256 · hi_rows */
  cl_mem mem;
} kq_ocl_rope;

struct kq_buffer {
  cl_mem mem;
  size_t bytes;
};

struct kq_bdevice {
  int index;       /* -1 for an engine's device */
  char name[32];   /* "opencl:N" or "opencl:external" */
  char label[160]; /* "opencl:N (driver device name)" for messages */
  cl_platform_id platform;
  cl_device_id id;
  cl_context context;
  cl_command_queue queue;
  pthread_mutex_t lock;
  cl_program program;
  cl_kernel kernels[KQ_K_COUNT];
  size_t kernel_wg[KQ_K_COUNT]; /* CL_KERNEL_WORK_GROUP_SIZE of each kernel */
  size_t max_wg;                /* CL_DEVICE_MAX_WORK_GROUP_SIZE */
  size_t local_mem;             /* CL_DEVICE_LOCAL_MEM_SIZE */
  size_t compute_units;
  int cpu; /* CL_DEVICE_TYPE_CPU (or KQSVD_OPENCL_LAYOUT=cpu): the kernel layouts tuned for
              CPU drivers (attend_split, attend_decode) */
  kq_ocl_rope rope[KQ_OCL_ROPE_TABLES];
  int rope_next; /* slot the next new table replaces */
  cl_mem scratch[KQ_S_COUNT];
  size_t scratch_bytes[KQ_S_COUNT];
  int external;          /* context, queue and device are an engine's (retained here) */
  int counted;           /* counted among the open devices */
  int gemm_warm;         /* CLBlast kernels compiled for this device */
  double gemm_warmup_s;  /* how long that took */
  double program_load_s; /* building or loading our own program */
  int program_origin;    /* kq_ocl_prog_origin */
  /* kq_device_stats counters, updated under `lock`: submits = clFlush calls
   * (one at the end of every op), dispatches = clEnqueueNDRangeKernel calls
   * plus one per CLBlast routine call, host_waits = event waits and clFinish,
   * device_allocations = clCreateBuffer calls (buffers, scratch, warm-up). */
  kq_device_stats stats;
};

/* Fills *info for device `dev` of platform `plat`: named "opencl:INDEX", or
 * "opencl:external" when index < 0 (an engine's device). */
kq_status kq_ocl_describe(cl_platform_id plat, cl_device_id dev, int index, kq_device_info *info);

/* Device list (filled once by kq_ocl_enumerate). */
int kq_ocl_device_total(void);
kq_status kq_ocl_device_ids(int index, cl_platform_id *out_platform, cl_device_id *out_device);

/* Iface functions implemented in ocl_device.c / ocl_ops.c / ocl_module.c. */
kq_status kq_ocl_device_open(int index, kq_bdevice **out_device);
/* A device on an engine's kq_opencl_device_handles (retained, released at
 * close); fills *out_info. */
kq_status kq_ocl_device_open_external(const void *handles, kq_device_info *out_info,
                                      kq_bdevice **out_device);
/* Wraps an engine's kq_opencl_buffer range without a copy: the cl_mem
 * itself (retained) for a whole buffer, a sub-buffer otherwise. */
kq_status kq_ocl_buffer_import(kq_bdevice *device, const void *native, size_t *out_bytes,
                               kq_buffer **out_buffer);
void kq_ocl_device_close(kq_bdevice *device);
kq_status kq_ocl_buffer_alloc(kq_bdevice *device, size_t bytes, kq_buffer **out_buffer);
void kq_ocl_buffer_free(kq_bdevice *device, kq_buffer *buffer);
kq_status kq_ocl_buffer_upload(kq_bdevice *device, kq_buffer *dst, size_t offset, const void *src,
                               size_t bytes);
kq_status kq_ocl_buffer_download(kq_bdevice *device, const kq_buffer *src, size_t offset, void *dst,
                                 size_t bytes);
kq_status kq_ocl_copy(kq_bdevice *device, kq_buffer *dst, const kq_buffer *src, size_t bytes);
kq_status kq_ocl_synchronize(kq_bdevice *device);
kq_status kq_ocl_project(kq_bdevice *device, const kq_project_op *op);
kq_status kq_ocl_attend(kq_bdevice *device, const kq_attend_op *op);
kq_status kq_ocl_up(kq_bdevice *device, const kq_up_op *op);

/* Flushes the queue at the end of an op, so that a GPU driver starts the
 * work without waiting for a host sync; counts one submit. Caller holds
 * dev->lock. */
kq_status kq_ocl_flush(kq_bdevice *dev);

/* Reads the counters (iface get_stats). */
kq_status kq_ocl_get_stats(kq_bdevice *dev, kq_device_stats *out_stats);

/* Makes scratch buffer `id` at least `bytes` large (caller holds dev->lock). */
kq_status kq_ocl_scratch(kq_bdevice *dev, int id, size_t bytes, cl_mem *out);

/* Enqueues kernel `k` with a 3-D global size and optional local size (NULL =
 * driver's choice); names the kernel in the error. Caller holds dev->lock. */
kq_status kq_ocl_launch(kq_bdevice *dev, int k, const size_t global[3], const size_t *local);

/* Sets argument i of kernel k (caller holds dev->lock). */
kq_status kq_ocl_arg(kq_bdevice *dev, int k, cl_uint i, size_t size, const void *value);

/* One kernel argument: `size` bytes at `value`, or (value NULL) a local
 * memory argument of `size` bytes. KQ_OCL_VAL(x) takes an lvalue or a
 * compound literal, e.g. KQ_OCL_VAL((cl_int){n}). */
typedef struct kq_ocl_karg {
  size_t size;
  const void *value;
} kq_ocl_karg;
#define KQ_OCL_VAL(x) ((kq_ocl_karg){sizeof(x), &(x)})
#define KQ_OCL_LOCAL(bytes) ((kq_ocl_karg){(bytes), NULL})

/* Sets arguments 0 .. n - 1 of kernel k from args[0 .. n - 1], in order;
 * stops at the first failure, naming the kernel and the argument (caller
 * holds dev->lock). KQ_OCL_ARGS(dev, k, a, b, ...) passes the list inline. */
kq_status kq_ocl_args(kq_bdevice *dev, int k, const kq_ocl_karg *args, size_t n);
#define KQ_OCL_ARGS(dev, k, ...)                                                                   \
  kq_ocl_args((dev), (k), (const kq_ocl_karg[]){__VA_ARGS__},                                      \
              sizeof((const kq_ocl_karg[]){__VA_ARGS__}) / sizeof(kq_ocl_karg))

/* CLBlast wrappers (ocl_gemm.c); caller holds dev->lock. Offsets in floats.
 * Compiles CLBlast's kernels for the device on first use (timed). */
kq_status kq_ocl_gemm_warmup(kq_bdevice *dev);
/* Row-major C[b] = A[b] · B[b] for b < batch, A m×k (ld lda, stride sa), B k×n, C m×n. */
kq_status kq_ocl_gemm_strided_batched(kq_bdevice *dev, size_t m, size_t n, size_t k, cl_mem a,
                                      size_t a_off, size_t lda, size_t sa, cl_mem b, size_t b_off,
                                      size_t ldb, size_t sb, cl_mem c, size_t c_off, size_t ldc,
                                      size_t sc, size_t batch);
/* Row-major C = alpha · A · op(B), op = transpose when b_trans; uses the
 * device's persistent CLBlast temporary buffer. */
kq_status kq_ocl_gemm(kq_bdevice *dev, int b_trans, size_t m, size_t n, size_t k, float alpha,
                      cl_mem a, size_t a_off, size_t lda, cl_mem b, size_t b_off, size_t ldb,
                      cl_mem c, size_t c_off, size_t ldc);

/* Seconds since an arbitrary origin (monotonic). */
double kq_ocl_now(void);

/* Notes recorded per device index for device_info (warm-up timings). */
void kq_ocl_note_timings(int index, double program_s, int program_origin, double gemm_s);

#endif /* KQ_OCL_INTERNAL_H */
