/*
 * kqsvd_opencl.h — kqsvd on an engine's own OpenCL context, device, queue
 * and buffers.
 *
 * An engine with a cl_context, cl_device_id and an in-order
 * cl_command_queue hands them to kq_device_create_opencl and gets a
 * kq_device whose caches, ops and buffers live there; its own cl_mem buffers
 * become kq_device_buffers with kq_device_buffer_import_opencl, without a
 * copy. Include after <CL/cl.h>.
 *
 * Ownership: kqsvd retains the context, device and queue it is given
 * (clRetain*) and releases them in kq_device_destroy, so the engine may
 * release its own references at any time. An imported cl_mem is retained
 * by its kq_device_buffer and released by kq_device_buffer_destroy.
 *
 * Ordering: kqsvd enqueues on the engine's queue, which must be in-order;
 * kqsvd's work is therefore ordered with the engine's own commands on that
 * queue. kq_device_synchronize waits for everything on the queue.
 */
#ifndef KQSVD_OPENCL_H
#define KQSVD_OPENCL_H

#include "kqsvd.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kq_opencl_device_handles {
  uint32_t struct_size; /* sizeof(kq_opencl_device_handles) */
  cl_context context;
  cl_device_id device;
  cl_command_queue queue; /* in-order */
} kq_opencl_device_handles;

/* A range of an engine's buffer: [offset, offset + size) of `mem`. */
typedef struct kq_opencl_buffer {
  uint32_t struct_size; /* sizeof(kq_opencl_buffer) */
  cl_mem mem;
  size_t offset, size;
} kq_opencl_buffer;

/* Opens a kq_device on the engine's OpenCL handles (named
 * "opencl:external"). KQ_ERR_UNSUPPORTED when kqsvd was built without the
 * OpenCL module; KQ_ERR_DEVICE naming the problem when the queue is
 * out-of-order or the device lacks what kqsvd needs. */
KQ_API kq_status kq_device_create_opencl(const kq_opencl_device_handles *handles,
                                         kq_device **out_device);

/* Wraps a range of the engine's cl_mem (in `device`'s context) as a
 * kq_device_buffer of `size` bytes, usable wherever kqsvd takes one. */
KQ_API kq_status kq_device_buffer_import_opencl(kq_device *device, const kq_opencl_buffer *buffer,
                                                kq_device_buffer **out_buffer);

#ifdef __cplusplus
}
#endif

#endif /* KQSVD_OPENCL_H */
