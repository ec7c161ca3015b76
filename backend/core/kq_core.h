/*
 * kq_core.h — the device registry behind kq_device_* and kq_cache_*: the
 * built-in CPU backend plus backend modules (libkqsvd-NAME.so) loaded with
 * dlopen from the folder holding libkqsvd and from every folder of
 * KQSVD_BACKEND_PATH. Initialised once, lazily and thread-safely, on the
 * first call that needs it. Not installed.
 */
#ifndef KQ_CORE_H
#define KQ_CORE_H

#include "kqsvd_backend.h"

/* An open device: a backend's device handle plus its info. */
struct kq_device {
  const kq_backend_iface *iface;
  kq_bdevice *bdev;
  kq_device_info info;
};

/* A public device buffer: backend memory plus the device it lives on. */
struct kq_device_buffer {
  kq_device *device;
  kq_buffer *buf;
  size_t bytes;
};

/* Problems met while loading backend modules (refused ABI, failed dlopen,
 * missing entry symbol, failed entry call), in load order. The messages name
 * the module path; they stay valid for the life of the process. */
int kq_backend_problem_count(void);
const char *kq_backend_problem(int index);
/* The status of problem `index` (KQ_ERR_ABI for a refused ABI version). */
kq_status kq_backend_problem_status(int index);

/* Resolves a device name ("cpu", "vulkan:0") to the backend and the index
 * among that backend's devices. KQ_ERR_NOT_FOUND listing the devices when
 * unknown; a refused module's own status (e.g. KQ_ERR_ABI) and message when
 * the name belongs to a backend whose module was refused. */
kq_status kq_registry_find(const char *name, const kq_backend_iface **out_iface,
                           int *out_local_index);

/* The interface of backend `backend` ("vulkan", "opencl"), loading the
 * modules if needed; KQ_ERR_NOT_FOUND when no such backend is loaded (a
 * refused module's own status and message when it was refused). */
kq_status kq_registry_backend(const char *backend, const kq_backend_iface **out_iface);

/* Byte sizes of the buffers an op names (fields an op does not use are
 * ignored): project src/proj/dst; attend q, key_down, query_down, k_cache,
 * v_cache, out, value_up; up: src = latent, value_up, out. */
typedef struct kq_op_sizes {
  size_t src, proj, dst;
  size_t q, key_down, query_down, k_cache, v_cache, out, value_up;
  int32_t layer; /* named in messages */
} kq_op_sizes;

/* The core's one validation of the ops it issues (op_check.c): every
 * promise of kqsvd_backend.h's "What a backend may trust" is checked
 * against the buffers' sizes `z`; fp16 = the device stores F16; caps = the
 * backend's KQ_BACKEND_CAP_* bits. KQ_ERR_INVALID_ARGUMENT naming the op
 * and the broken promise (a bug in the core, never a user error); a
 * sequence table (kq_op_seq) is checked entry by entry, each entry as the
 * single-sequence op it describes, and a broken entry is named by
 * z->layer and its sequence id. */
kq_status kq_core_check_project(const kq_project_op *op, const kq_op_sizes *z, int fp16);
kq_status kq_core_check_attend(const kq_attend_op *op, const kq_op_sizes *z, int fp16,
                               uint32_t caps);
kq_status kq_core_check_up(const kq_up_op *op, const kq_op_sizes *z);

#endif
