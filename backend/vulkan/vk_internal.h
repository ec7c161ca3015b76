/*
 * vk_internal.h — shared state of the Vulkan backend module.
 *
 * One process-wide instance (vk_module.c) lists the physical devices; each
 * opened device (kq_bdevice) owns a logical device with one compute queue.
 * Work is recorded into "frames": a command buffer, its fence, descriptor
 * pools and upload staging, reused round-robin once their fence signalled.
 * Every op takes the device mutex while it records into the open frame, so
 * ops from several threads are serialised on the host and ordered on the
 * queue; the frame is submitted when the host needs a result.
 */
#ifndef KQ_VK_INTERNAL_H
#define KQ_VK_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kqsvd_backend.h"
#include "volk.h"
/* after volk.h: the public handle structs use its Vulkan types */
#include "kqsvd_vulkan.h"

#define VK_FRAMES 4
#define VK_MAX_BINDINGS 8  /* attend_dec.comp with RoPE pre binds 8 */
#define VK_PUSH_BYTES 128u /* push-constant range (kq_push.h structs) */
#define VK_SPEC_COUNT 64
#define VK_MAX_POOLS 16
/* Most query tokens that take the decode path (one workgroup row per query;
 * longer prefills share key loads across queries in attend.comp). */
#define VK_DECODE_MAX_QUERIES 8

/* Set once by kq_backend_entry: the core's error channel. */
extern const kq_backend_host *vk_host;
#define VK_ERR(status, ...) vk_host->set_error((status), __VA_ARGS__)

typedef struct vk_mem {
  VkBuffer buffer;
  VkDeviceMemory memory;
  VkDeviceSize size;
  void *mapped;      /* host-visible allocations only */
  VkDeviceSize base; /* where the range starts in `buffer` (an engine's import; else 0) */
} vk_mem;

struct kq_buffer {
  vk_mem mem;
  bool imported; /* an engine's VkBuffer range: freeing releases only this wrapper */
};

/* A frame is recorded by successive ops and submitted only when the host
 * needs a result (download, synchronize, buffer_free) or when it grows past
 * VK_FRAME_MAX_OPS: a decode step is one submit. States: idle, open
 * (recording; d->open_frame), in flight (submitted, fence pending). */
typedef struct vk_frame {
  VkCommandBuffer cmd;
  VkFence fence;
  bool in_flight, open;
  uint32_t n_ops; /* ops recorded since the frame was opened */
  VkDescriptorPool pools[VK_MAX_POOLS];
  int n_pools, pool_used;
  vk_mem upload;            /* persistent mapped staging of the frame's uploads (grow-only) */
  VkDeviceSize upload_used; /* bytes of `upload` taken since the frame was opened */
} vk_frame;

/* Counters of kq_device_stats (relaxed atomics). */
typedef struct vk_counters {
  uint64_t submits, dispatches, host_waits, bytes_up, bytes_down, allocations;
  uint64_t pipelines; /* VkPipelines created (vk_pipeline.c) */
} vk_counters;
#define VK_COUNT(d, field, n) __atomic_fetch_add(&(d)->counters.field, (n), __ATOMIC_RELAXED)

typedef enum vk_shader {
  VK_SHADER_PROJECT_F32,
  VK_SHADER_PROJECT_F16,
  VK_SHADER_QPREP,
  VK_SHADER_ATTEND_F32,
  VK_SHADER_ATTEND_F16,
  VK_SHADER_ATTEND_F32_SG, /* subgroup-arithmetic reductions */
  VK_SHADER_ATTEND_F16_SG,
  VK_SHADER_REDUCE,
  VK_SHADER_UP,
  VK_SHADER_PROJECT_SEG_F32, /* segmented (q8/q4) latent store */
  VK_SHADER_PROJECT_SEG_F16,
  VK_SHADER_DEQUANT_F32, /* segmented latent -> F32 rows */
  VK_SHADER_DEQUANT_F16,
  VK_SHADER_ATTEND_DEC_F32, /* decode: one dispatch over (chunk, row group, query) */
  VK_SHADER_ATTEND_DEC_F16,
  VK_SHADER_ATTEND_DEC_F32_SG, /* clusters reduce by subgroup shuffles */
  VK_SHADER_ATTEND_DEC_F16_SG,
  VK_SHADER_MERGE_UP, /* merge of the decode chunks fused with the Eᵀ up-projection */
  VK_SHADER_COUNT
} vk_shader;

typedef struct vk_pipeline_entry {
  vk_shader shader;
  uint32_t spec[VK_SPEC_COUNT];
  VkPipeline pipeline;
} vk_pipeline_entry;

/* RoPE angle tables, one per (theta, head_dim), grown by replacement: a
 * table is never moved or freed while the device is open, so a pointer
 * returned under rope_lock stays valid after the lock is released. */
typedef struct vk_rope_table {
  float theta;
  uint32_t half_dim, n_hi;
  kq_buffer *buffer; /* [256][half][2] then [n_hi][half][2] */
} vk_rope_table;

struct kq_bdevice {
  int index;     /* -1 for an engine's device */
  char name[32]; /* "vulkan:N", or "vulkan:external" for an engine's device: in every message */
  bool external; /* the VkDevice and queue belong to an engine: never destroyed here */
  VkPhysicalDevice phys;
  VkPhysicalDeviceProperties props;
  VkPhysicalDeviceMemoryProperties mem_props;
  VkDeviceSize max_alloc;
  bool fp16_storage;
  bool int8_storage;     /* storageBuffer8BitAccess: quantized (q8/q4) latent segments */
  bool subgroup_arith;   /* subgroup arithmetic in compute shaders */
  bool subgroup_shuffle; /* subgroup shuffles in compute shaders (attend_dec.comp) */
  uint32_t subgroup_size;
  uint32_t compute_units; /* vk_device.c: count_compute_units */
  uint32_t loop_limit;    /* back edges an invocation may take (vk_split.h), 0: no limit */
  VkDevice dev;
  VkQueue queue;
  uint32_t queue_family;

  pthread_mutex_t lock; /* queue, command pool, frames, download staging */
  VkCommandPool cmd_pool;
  vk_frame frames[VK_FRAMES];
  int next_frame;
  int open_frame;  /* index of the frame being recorded, -1 when none */
  vk_mem download; /* persistent mapped download staging (grow-only) */
  vk_mem scratch;  /* device-local work memory of the ops (grow-only) */
  bool push_desc;  /* VK_KHR_push_descriptor: no descriptor sets are allocated */
  vk_counters counters;

  pthread_mutex_t pipe_lock; /* pipeline cache */
  VkPipelineCache pcache;    /* vk_pcache.c: persisted on disk */
  bool pcache_disk;          /* a cache file path is known and enabled */
  bool pcache_loaded;        /* the file held valid data for this device */
  bool pcache_dirty;         /* pipelines were built since the load */
  VkShaderModule modules[VK_SHADER_COUNT];
  vk_pipeline_entry *pipes;
  int n_pipes, cap_pipes;
  VkDescriptorSetLayout set_layout;
  VkPipelineLayout pipe_layout;

  vk_mem dummy;              /* bound to unused bindings */
  pthread_mutex_t rope_lock; /* taken before (never inside) `lock` */
  vk_rope_table **ropes;     /* each table allocated on its own (stable addresses) */
  int n_ropes;
};

/* One storage-buffer binding of a dispatch: [offset, offset + range) of a
 * buffer, offset aligned to minStorageBufferOffsetAlignment. */
typedef struct vk_binding {
  VkBuffer buffer;
  VkDeviceSize offset, range;
} vk_binding;

/* --- vk_module.c --- */
/* The instance-level state, created on first use (thread-safe). Returns the
 * number of usable physical devices (0 without a driver). */
int vk_physical_count(void);
VkPhysicalDevice vk_physical(int index);
/* KQ_ERR_DEVICE with the recorded validation message if the validation layer
 * reported anything since the last call; KQ_OK otherwise. */
kq_status vk_validation_check(const char *what);
/* Makes volk's function pointers usable on an engine's instance: the system
 * loader's (get_instance_proc_addr NULL or that loader's own), or the
 * engine's loader when kqsvd has not loaded one yet. KQ_ERR_DEVICE when
 * there is no loader or the engine's differs from the one already in use. */
kq_status vk_load_external(VkInstance instance, PFN_vkGetInstanceProcAddr get_instance_proc_addr);
/* kq_device_info of a physical device under `name` (device_info's fields). */
void vk_info_physical(VkPhysicalDevice phys, const char *name, kq_device_info *out);

/* --- vk_device.c --- */
typedef enum vk_mem_kind { VK_MEM_DEVICE, VK_MEM_UPLOAD, VK_MEM_DOWNLOAD } vk_mem_kind;
/* A buffer with its own memory of `kind` (host-visible kinds are mapped and
 * coherent). KQ_ERR_DEVICE_MEMORY naming `what` when it does not fit. */
kq_status vk_mem_alloc(kq_bdevice *d, VkDeviceSize bytes, vk_mem_kind kind, vk_mem *out,
                       const char *what);
void vk_mem_free(kq_bdevice *d, vk_mem *m);
/* Takes the device lock and the open frame (opening one if none is),
 * recording a barrier against all earlier work. On failure the lock is
 * released. */
kq_status vk_frame_begin(kq_bdevice *d, vk_frame **out);
/* Ensures the device scratch (d->scratch) holds `bytes`. Every op starts
 * with a barrier against all earlier work on the queue, so ops share one
 * scratch; growing it submits and waits for queued work first and continues
 * in a fresh frame (*f changes). */
kq_status vk_frame_scratch(kq_bdevice *d, vk_frame **f, VkDeviceSize bytes);
/* `bytes` of mapped upload staging in the frame, valid until it retires;
 * may submit the frame and continue in a fresh one like vk_frame_scratch. */
kq_status vk_frame_stage(kq_bdevice *d, vk_frame **f, VkDeviceSize bytes, vk_mem **out_mem,
                         VkDeviceSize *out_offset);
/* A descriptor set of the device layout, valid until the frame retires
 * (only without push descriptors). */
kq_status vk_frame_descriptor(kq_bdevice *d, vk_frame *f, VkDescriptorSet *out);
/* Full compute/transfer memory barrier inside the frame. */
void vk_frame_barrier(vk_frame *f);
/* Ends the op: leaves the frame open for the next op (submitting it when it
 * is full, or when `wait`, then also waiting for it); releases the lock. */
kq_status vk_frame_submit(kq_bdevice *d, vk_frame *f, bool wait, const char *what);
/* Ends an op that failed while recording; the work recorded so far stays
 * queued. Releases the lock. */
void vk_frame_abort(kq_bdevice *d, vk_frame *f);
/* Binding of [offset, offset + bytes) of a caller's buffer `buf` with the
 * offset rounded down to the device alignment; *out_elem = elements between
 * the bound offset and `offset`. Fails (naming `what`) when the offset is
 * not a multiple of elem_size, the range leaves the buffer, or the binding
 * would exceed maxStorageBufferRange. */
kq_status vk_bind_range(const kq_bdevice *d, const vk_mem *buf, VkDeviceSize offset,
                        VkDeviceSize bytes, uint32_t elem_size, vk_binding *out, uint32_t *out_elem,
                        const char *what);
/* vk_bind_range for the backend's own buffers (scratch, RoPE tables), whose
 * offsets and sizes the backend chose itself: only the device's binding
 * limit is checked, not the range against the buffer. Offsets a multiple of
 * elem_size. */
kq_status vk_bind_own(const kq_bdevice *d, const vk_mem *buf, VkDeviceSize offset,
                      VkDeviceSize bytes, uint32_t elem_size, vk_binding *out, uint32_t *out_elem,
                      const char *what);
/* Largest byte range one binding may have after alignment slack. */
VkDeviceSize vk_max_binding(const kq_bdevice *d);

/* The iface entry points implemented in vk_device.c (see kqsvd_backend.h). */
kq_status vk_device_open(int index, kq_bdevice **out_device);
kq_status vk_device_open_external(const void *handles, kq_device_info *out_info,
                                  kq_bdevice **out_device);
kq_status vk_buffer_import(kq_bdevice *d, const void *native, size_t *out_bytes,
                           kq_buffer **out_buffer);
void vk_device_close(kq_bdevice *d);
kq_status vk_buffer_alloc(kq_bdevice *d, size_t bytes, kq_buffer **out_buffer);
void vk_buffer_free(kq_bdevice *d, kq_buffer *b);
kq_status vk_buffer_upload(kq_bdevice *d, kq_buffer *dst, size_t offset, const void *src,
                           size_t bytes);
kq_status vk_buffer_download(kq_bdevice *d, const kq_buffer *src, size_t offset, void *dst,
                             size_t bytes);
kq_status vk_copy(kq_bdevice *d, kq_buffer *dst, const kq_buffer *src, size_t bytes);
kq_status vk_synchronize(kq_bdevice *d);
kq_status vk_get_stats(kq_bdevice *d, kq_device_stats *out);
/* Uploads host data into a fresh device buffer and waits (small tables). */
kq_status vk_upload_new(kq_bdevice *d, const void *src, size_t bytes, kq_buffer **out);

/* --- vk_shaders.c --- */
/* Embedded SPIR-V of a shader and its display name. */
const uint32_t *vk_shader_code(vk_shader s, size_t *out_bytes, const char **out_name);

/* --- vk_pcache.c --- */
/* The on-disk path of the device's pipeline cache; 0 without a cache dir. */
int vk_pcache_path(const kq_bdevice *d, char *out, size_t size);
/* Creates d->pcache from the file when it is valid for this device, else
 * empty. Never fails: without a cache pipelines are simply not cached. */
kq_status vk_pcache_open(kq_bdevice *d);
/* Writes the cache back atomically when new pipelines were built; destroys it. */
void vk_pcache_close(kq_bdevice *d);

/* --- vk_pipeline.c --- */
/* Records one dispatch: descriptor set for `bindings` (unused = dummy),
 * pipeline for (shader, spec), push constants (a kq_push.h struct of
 * push_bytes <= VK_PUSH_BYTES), group counts. */
kq_status vk_dispatch(kq_bdevice *d, vk_frame *f, vk_shader shader,
                      const uint32_t spec[VK_SPEC_COUNT], const vk_binding *bindings,
                      int n_bindings, const void *push, uint32_t push_bytes, uint32_t gx,
                      uint32_t gy, uint32_t gz);
kq_status vk_pipelines_init(kq_bdevice *d);
/* The iface prepare hook (kqsvd_backend.h): runs the described ops once
 * through vk_op_* (NULL inputs and outputs replaced by zeroed buffers of its
 * own, freed before it returns), so the pipelines built are exactly those
 * the real ops ask for, compiled down to the driver's machine code. Writes
 * latent position 0 of the op's cache; waits for the device. */
kq_status vk_prepare(kq_bdevice *d, const kq_project_op *append_keys,
                     const kq_project_op *append_values, const kq_attend_op *attend,
                     const kq_up_op *up);
void vk_pipelines_destroy(kq_bdevice *d);

/* --- vk_ops.c (what the op files share among themselves: vk_ops.h) --- */
kq_status vk_op_project(kq_bdevice *d, const kq_project_op *op);
kq_status vk_op_attend(kq_bdevice *d, const kq_attend_op *op);
kq_status vk_op_up(kq_bdevice *d, const kq_up_op *op);

#endif /* KQ_VK_INTERNAL_H */
