/*
 * kqsvd_vulkan.h — kqsvd on an engine's own Vulkan device and buffers.
 *
 * An engine that already has a VkInstance, VkPhysicalDevice, VkDevice and a
 * compute-capable queue hands them to kq_device_create_vulkan and gets a
 * kq_device whose caches, ops and buffers live on that device; its own
 * VkBuffers become kq_device_buffers with kq_device_buffer_import_vulkan,
 * without a copy. Include after <vulkan/vulkan.h> (or volk.h).
 *
 * Ownership: kqsvd never destroys the engine's handles. kq_device_destroy
 * frees only what kqsvd created on the device (its pipelines, its own
 * buffers, command pools); an imported buffer's kq_device_buffer_destroy
 * frees only the wrapper. The engine keeps every handle alive until the
 * kq_device (and every imported buffer) is destroyed.
 *
 * Requirements on the handles: the VkDevice was created with the queue
 * family `queue_family` and an API version of at least 1.1; imported
 * buffers have VK_BUFFER_USAGE_STORAGE_BUFFER_BIT (and TRANSFER_SRC/DST
 * for kq_device_buffer_read/write) and are bound to memory. kqsvd submits to
 * `queue` from the calling threads while holding its own lock: if the engine
 * submits to the same queue from other threads, it must serialise those
 * submissions with kqsvd calls (Vulkan's external synchronisation rule).
 * Work kqsvd queues is ordered after the engine's earlier submissions only
 * through the queue; kq_device_synchronize waits for kqsvd's work.
 */
#ifndef KQSVD_VULKAN_H
#define KQSVD_VULKAN_H

#include "kqsvd.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kq_vulkan_device_handles {
  uint32_t struct_size; /* sizeof(kq_vulkan_device_handles) */
  VkInstance instance;
  VkPhysicalDevice physical_device;
  VkDevice device;
  uint32_t queue_family;
  VkQueue queue;
  /* The loader's entry point the engine uses (NULL: the system loader's
   * vkGetInstanceProcAddr). */
  PFN_vkGetInstanceProcAddr get_instance_proc_addr;
  /* Optional features the engine enabled when it created `device` (a
   * VkDevice cannot be asked which): kqsvd uses one only when it is set here.
   * Without 16-bit storage the device reports no fp16_storage (F32 latents
   * only); without 8-bit storage q8/q4 segments are KQ_ERR_UNSUPPORTED. */
  VkBool32 storage_buffer_16bit_access; /* VkPhysicalDevice16BitStorageFeatures */
  VkBool32 storage_buffer_8bit_access;  /* VK_KHR_8bit_storage and its storageBuffer8BitAccess */
  VkBool32 push_descriptor;             /* VK_KHR_push_descriptor */
} kq_vulkan_device_handles;

/* A range of an engine's VkBuffer: [offset, offset + size). offset is a
 * multiple of the device's minStorageBufferOffsetAlignment (an import at
 * another offset is refused with KQ_ERR_INVALID_ARGUMENT); size is in bytes,
 * never VK_WHOLE_SIZE. */
typedef struct kq_vulkan_buffer {
  uint32_t struct_size; /* sizeof(kq_vulkan_buffer) */
  VkBuffer buffer;
  VkDeviceSize offset, size;
} kq_vulkan_buffer;

/* Opens a kq_device on the engine's Vulkan handles (named
 * "vulkan:external"). KQ_ERR_UNSUPPORTED when kqsvd was built without the
 * Vulkan module; KQ_ERR_DEVICE naming the missing feature when the device
 * lacks one kqsvd needs. */
KQ_API kq_status kq_device_create_vulkan(const kq_vulkan_device_handles *handles,
                                         kq_device **out_device);

/* Wraps a range of the engine's VkBuffer (on `device`'s VkDevice) as a
 * kq_device_buffer of `size` bytes, usable wherever kqsvd takes one. */
KQ_API kq_status kq_device_buffer_import_vulkan(kq_device *device, const kq_vulkan_buffer *buffer,
                                                kq_device_buffer **out_buffer);

#ifdef __cplusplus
}
#endif

#endif /* KQSVD_VULKAN_H */
