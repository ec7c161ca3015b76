/*
 * vk_device.c — logical devices, memory, frames (command submission) and the
 * buffer entry points of the backend ABI.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vk_internal.h"
#include "vk_split.h"

#define VK_STAGING_PIECE ((VkDeviceSize)64 << 20)
#define VK_SETS_PER_POOL 64u

static kq_status vk_fail(VkResult r, const char *what) {
  if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY)
    return VK_ERR(KQ_ERR_DEVICE_MEMORY, "%s: out of memory (VkResult %d)", what, (int)r);
  return VK_ERR(KQ_ERR_DEVICE, "%s failed (VkResult %d)", what, (int)r);
}

static int find_type(const kq_bdevice *d, uint32_t bits, VkMemoryPropertyFlags want) {
  for (uint32_t i = 0; i < d->mem_props.memoryTypeCount; ++i)
    if ((bits & (1u << i)) && (d->mem_props.memoryTypes[i].propertyFlags & want) == want)
      return (int)i;
  return -1;
}

kq_status vk_mem_alloc(kq_bdevice *d, VkDeviceSize bytes, vk_mem_kind kind, vk_mem *out,
                       const char *what) {
  memset(out, 0, sizeof *out);
  if (bytes < 16) bytes = 16;
  if (bytes > d->max_alloc)
    return VK_ERR(KQ_ERR_DEVICE_MEMORY, "%s: %s: %llu bytes exceed maxMemoryAllocationSize (%llu)",
                  d->name, what, (unsigned long long)bytes, (unsigned long long)d->max_alloc);
  VkBufferCreateInfo bi = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
                           .size = bytes,
                           .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT |
                                    VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                    VK_BUFFER_USAGE_TRANSFER_DST_BIT,
                           .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
  VkResult r = vkCreateBuffer(d->dev, &bi, NULL, &out->buffer);
  if (r != VK_SUCCESS) return vk_fail(r, what);
  VkMemoryRequirements req;
  vkGetBufferMemoryRequirements(d->dev, out->buffer, &req);
  const VkMemoryPropertyFlags hv =
      VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
  int type = -1;
  if (kind == VK_MEM_DEVICE) {
    type = find_type(d, req.memoryTypeBits, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
    if (type < 0) type = find_type(d, req.memoryTypeBits, 0);
  } else {
    if (kind == VK_MEM_DOWNLOAD)
      type = find_type(d, req.memoryTypeBits, hv | VK_MEMORY_PROPERTY_HOST_CACHED_BIT);
    if (type < 0) type = find_type(d, req.memoryTypeBits, hv);
  }
  if (type < 0) {
    vkDestroyBuffer(d->dev, out->buffer, NULL);
    out->buffer = VK_NULL_HANDLE;
    return VK_ERR(KQ_ERR_DEVICE, "%s: %s: no suitable memory type", d->name, what);
  }
  VkMemoryAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
                             .allocationSize = req.size,
                             .memoryTypeIndex = (uint32_t)type};
  VK_COUNT(d, allocations, 1);
  r = vkAllocateMemory(d->dev, &ai, NULL, &out->memory);
  if (r == VK_SUCCESS) r = vkBindBufferMemory(d->dev, out->buffer, out->memory, 0);
  if (r == VK_SUCCESS && kind != VK_MEM_DEVICE)
    r = vkMapMemory(d->dev, out->memory, 0, VK_WHOLE_SIZE, 0, &out->mapped);
  if (r != VK_SUCCESS) {
    vk_mem_free(d, out);
    if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY)
      return VK_ERR(KQ_ERR_DEVICE_MEMORY, "%s: %s: cannot allocate %llu bytes", d->name, what,
                    (unsigned long long)bytes);
    return vk_fail(r, what);
  }
  out->size = bytes;
  return KQ_OK;
}

void vk_mem_free(kq_bdevice *d, vk_mem *m) {
  if (m->buffer) vkDestroyBuffer(d->dev, m->buffer, NULL);
  if (m->memory) vkFreeMemory(d->dev, m->memory, NULL); /* implicitly unmaps */
  memset(m, 0, sizeof *m);
}

VkDeviceSize vk_max_binding(const kq_bdevice *d) {
  VkDeviceSize align = d->props.limits.minStorageBufferOffsetAlignment;
  VkDeviceSize max = (VkDeviceSize)d->props.limits.maxStorageBufferRange;
  /* Test knob: a smaller binding limit exercises the split paths cheaply. */
  const char *env = getenv("KQSVD_VULKAN_MAX_BINDING");
  if (env && env[0]) {
    unsigned long long v = strtoull(env, NULL, 10);
    if (v >= 4096 && v < max) max = v;
  }
  return max - (align > 16 ? align : 16);
}

kq_status vk_bind_range(const kq_bdevice *d, const vk_mem *buf, VkDeviceSize offset,
                        VkDeviceSize bytes, uint32_t elem_size, vk_binding *out, uint32_t *out_elem,
                        const char *what) {
  if (offset % elem_size)
    return VK_ERR(KQ_ERR_INVALID_ARGUMENT, "%s: %s: offset %llu is not a multiple of %u", d->name,
                  what, (unsigned long long)offset, elem_size);
  if (offset > buf->size || bytes > buf->size - offset)
    return VK_ERR(KQ_ERR_INVALID_ARGUMENT,
                  "%s: %s: range [%llu, +%llu) exceeds the buffer (%llu bytes)", d->name, what,
                  (unsigned long long)offset, (unsigned long long)bytes,
                  (unsigned long long)buf->size);
  return vk_bind_own(d, buf, offset, bytes, elem_size, out, out_elem, what);
}

kq_status vk_bind_own(const kq_bdevice *d, const vk_mem *buf, VkDeviceSize offset,
                      VkDeviceSize bytes, uint32_t elem_size, vk_binding *out, uint32_t *out_elem,
                      const char *what) {
  VkDeviceSize align = d->props.limits.minStorageBufferOffsetAlignment;
  if (align == 0) align = 1;
  /* buf->base (an import's start) is a multiple of the alignment. */
  const VkDeviceSize at = buf->base + offset, end = buf->base + buf->size;
  VkDeviceSize base = at / align * align;
  VkDeviceSize range = at - base + bytes;
  if (range < elem_size) range = end - base < 16 ? end - base : 16;
  if (range > d->props.limits.maxStorageBufferRange)
    return VK_ERR(KQ_ERR_UNSUPPORTED,
                  "%s: %s: binding of %llu bytes exceeds maxStorageBufferRange (%u)", d->name, what,
                  (unsigned long long)range, d->props.limits.maxStorageBufferRange);
  out->buffer = buf->buffer;
  out->offset = base;
  out->range = range;
  *out_elem = (uint32_t)((at - base) / elem_size);
  return KQ_OK;
}

/* --- frames --- */

#define VK_FRAME_MAX_OPS 256u

static kq_status wait_fence(kq_bdevice *d, vk_frame *f) {
  if (!f->in_flight) return KQ_OK;
  VK_COUNT(d, host_waits, 1);
  VkResult r = vkWaitForFences(d->dev, 1, &f->fence, VK_TRUE, UINT64_MAX);
  f->in_flight = false;
  return r == VK_SUCCESS ? KQ_OK : vk_fail(r, "vkWaitForFences");
}

/* Caller holds the lock. Waits for the frame and recycles its pools. */
static kq_status frame_retire(kq_bdevice *d, vk_frame *f) {
  kq_status st = wait_fence(d, f);
  for (int i = 0; i < f->n_pools; ++i) vkResetDescriptorPool(d->dev, f->pools[i], 0);
  f->pool_used = 0;
  return st;
}

/* Caller holds the lock: opens the next frame of the ring for recording. */
static kq_status frame_open(kq_bdevice *d, vk_frame **out) {
  const int idx = d->next_frame;
  vk_frame *f = &d->frames[idx];
  d->next_frame = (d->next_frame + 1) % VK_FRAMES;
  kq_status st = frame_retire(d, f);
  if (st != KQ_OK) return st;
  VkResult r = vkResetCommandBuffer(f->cmd, 0);
  VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                 .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
  if (r == VK_SUCCESS) r = vkBeginCommandBuffer(f->cmd, &bi);
  if (r != VK_SUCCESS) return vk_fail(r, "vkBeginCommandBuffer");
  f->open = true;
  f->n_ops = 0;
  f->upload_used = 0;
  d->open_frame = idx;
  *out = f;
  return KQ_OK;
}

/* Caller holds the lock: submits the open frame (one vkQueueSubmit). */
static kq_status frame_flush(kq_bdevice *d, vk_frame *f, bool wait) {
  if (!f->open) return KQ_OK;
  f->open = false;
  d->open_frame = -1;
  VkResult r = vkEndCommandBuffer(f->cmd);
  if (r == VK_SUCCESS) r = vkResetFences(d->dev, 1, &f->fence);
  VkSubmitInfo si = {
      .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &f->cmd};
  if (r == VK_SUCCESS) r = vkQueueSubmit(d->queue, 1, &si, f->fence);
  if (r != VK_SUCCESS) return vk_fail(r, "vkQueueSubmit");
  VK_COUNT(d, submits, 1);
  f->in_flight = true;
  return wait ? wait_fence(d, f) : KQ_OK;
}

static const VkMemoryBarrier k_full_barrier = {
    .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
    .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
    .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                     VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT};

void vk_frame_barrier(vk_frame *f) {
  const VkPipelineStageFlags stages =
      VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
  vkCmdPipelineBarrier(f->cmd, stages, stages, 0, 1, &k_full_barrier, 0, NULL, 0, NULL);
}

kq_status vk_frame_begin(kq_bdevice *d, vk_frame **out) {
  kq_status st = vk_validation_check("vulkan");
  if (st != KQ_OK) return st;
  pthread_mutex_lock(&d->lock);
  vk_frame *f = d->open_frame >= 0 ? &d->frames[d->open_frame] : NULL;
  if (!f && (st = frame_open(d, &f)) != KQ_OK) {
    pthread_mutex_unlock(&d->lock);
    return st;
  }
  /* Orders this op after every earlier one (same frame or submitted). */
  vk_frame_barrier(f);
  f->n_ops++;
  *out = f;
  return KQ_OK;
}

/* Caller holds the lock: when ops before the current one are recorded in
 * *f, submits it and continues the current op in a fresh frame. */
static kq_status frame_fresh(kq_bdevice *d, vk_frame **f) {
  if ((*f)->n_ops <= 1 && (*f)->upload_used == 0) return KQ_OK;
  kq_status st = frame_flush(d, *f, false);
  if (st == KQ_OK) st = frame_open(d, f);
  if (st == KQ_OK) (*f)->n_ops = 1;
  return st;
}

kq_status vk_frame_scratch(kq_bdevice *d, vk_frame **f, VkDeviceSize bytes) {
  if (d->scratch.size >= bytes) return KQ_OK;
  /* Queued work may still use the old scratch: submit, wait, continue in a
   * fresh frame (only while the sizes grow during warm-up). */
  kq_status st = (*f)->open ? frame_flush(d, *f, false) : KQ_OK;
  for (int i = 0; i < VK_FRAMES && st == KQ_OK; ++i) st = wait_fence(d, &d->frames[i]);
  if (st == KQ_OK) st = frame_open(d, f);
  if (st != KQ_OK) return st;
  (*f)->n_ops = 1;
  vk_mem_free(d, &d->scratch);
  VkDeviceSize grow = bytes + bytes / 4;
  if (grow > d->max_alloc) grow = bytes;
  return vk_mem_alloc(d, grow, VK_MEM_DEVICE, &d->scratch, "scratch buffer");
}

kq_status vk_frame_stage(kq_bdevice *d, vk_frame **f, VkDeviceSize bytes, vk_mem **out_mem,
                         VkDeviceSize *out_offset) {
  VkDeviceSize at = ((*f)->upload_used + 15) / 16 * 16;
  if (at + bytes > (*f)->upload.size) {
    kq_status st = frame_fresh(d, f);
    if (st != KQ_OK) return st;
    at = 0;
    if ((*f)->upload.size < bytes) {
      vk_mem_free(d, &(*f)->upload);
      VkDeviceSize grow = bytes < ((VkDeviceSize)1 << 20) ? ((VkDeviceSize)1 << 20) : bytes;
      st = vk_mem_alloc(d, grow, VK_MEM_UPLOAD, &(*f)->upload, "upload staging");
      if (st != KQ_OK) return st;
    }
  }
  (*f)->upload_used = at + bytes;
  *out_mem = &(*f)->upload;
  *out_offset = at;
  return KQ_OK;
}

kq_status vk_frame_submit(kq_bdevice *d, vk_frame *f, bool wait, const char *what) {
  kq_status st = KQ_OK;
  if (wait || f->n_ops >= VK_FRAME_MAX_OPS || f->pool_used >= VK_MAX_POOLS - 1)
    st = frame_flush(d, f, wait);
  pthread_mutex_unlock(&d->lock);
  if (st != KQ_OK) return st;
  return vk_validation_check(what);
}

void vk_frame_abort(kq_bdevice *d, vk_frame *f) {
  (void)f;
  pthread_mutex_unlock(&d->lock);
}

/* Descriptor sets come from the frame's pools, reset when the frame retires. */
kq_status vk_frame_descriptor(kq_bdevice *d, vk_frame *f, VkDescriptorSet *out) {
  for (;;) {
    if (f->pool_used == f->n_pools) {
      if (f->n_pools == VK_MAX_POOLS)
        return VK_ERR(KQ_ERR_DEVICE, "%s: too many dispatches in one op", d->name);
      VkDescriptorPoolSize size = {VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                   VK_SETS_PER_POOL * VK_MAX_BINDINGS};
      VkDescriptorPoolCreateInfo pi = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
                                       .maxSets = VK_SETS_PER_POOL,
                                       .poolSizeCount = 1,
                                       .pPoolSizes = &size};
      VkResult r = vkCreateDescriptorPool(d->dev, &pi, NULL, &f->pools[f->n_pools]);
      if (r != VK_SUCCESS) return vk_fail(r, "vkCreateDescriptorPool");
      f->n_pools++;
    }
    VkDescriptorSetAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
                                      .descriptorPool = f->pools[f->pool_used],
                                      .descriptorSetCount = 1,
                                      .pSetLayouts = &d->set_layout};
    VkResult r = vkAllocateDescriptorSets(d->dev, &ai, out);
    if (r == VK_SUCCESS) return KQ_OK;
    if (r != VK_ERROR_OUT_OF_POOL_MEMORY && r != VK_ERROR_FRAGMENTED_POOL)
      return vk_fail(r, "vkAllocateDescriptorSets");
    f->pool_used++;
  }
}

/* --- devices --- */

static bool device_has_extension(VkPhysicalDevice phys, const char *name);

/* Compute units (SMs, CUs, Xe cores) that a decode grid must fill: from
 * VK_NV_shader_sm_builtins or VK_AMD_shader_core_properties when the driver
 * has them. Otherwise a heuristic: a CPU device (lavapipe) counts its online
 * cores; a discrete GPU 64 (an H100 has 132 SMs, an RTX 4090 128, a 7900 XTX
 * 96 CUs, so 64 keeps at least ~2 workgroups per unit with
 * VK_DECODE_WG_PER_CU = 4 without reading the real count); an integrated or
 * other GPU 16. */
static uint32_t count_compute_units(VkPhysicalDevice phys, const VkPhysicalDeviceProperties *pr) {
  if (device_has_extension(phys, VK_NV_SHADER_SM_BUILTINS_EXTENSION_NAME)) {
    VkPhysicalDeviceShaderSMBuiltinsPropertiesNV sm = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_SM_BUILTINS_PROPERTIES_NV};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
                                      .pNext = &sm};
    vkGetPhysicalDeviceProperties2(phys, &p2);
    if (sm.shaderSMCount) return sm.shaderSMCount;
  }
  if (device_has_extension(phys, VK_AMD_SHADER_CORE_PROPERTIES_EXTENSION_NAME)) {
    VkPhysicalDeviceShaderCorePropertiesAMD core = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_CORE_PROPERTIES_AMD};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
                                      .pNext = &core};
    vkGetPhysicalDeviceProperties2(phys, &p2);
    uint32_t n =
        core.shaderEngineCount * core.shaderArraysPerEngineCount * core.computeUnitsPerShaderArray;
    if (n) return n;
  }
  if (pr->deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (uint32_t)n : 1u;
  }
  return pr->deviceType == VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU ? 64u : 16u;
}

/* The back-edge limit of the driver's shaders (vk_split.h): Mesa llvmpipe
 * VK_LLVMPIPE_LOOP_LIMIT, others none; `driver` is VK_DRIVER_ID_MESA_LLVMPIPE
 * or another id, 0 when the device does not report one (then llvmpipe is
 * known by its device name, "llvmpipe (...)"). KQSVD_VULKAN_LOOP_LIMIT=N
 * overrides it (0: none), so that tests can show what the cap prevents. */
static uint32_t loop_limit(VkDriverId driver, const char *device_name) {
  const char *env = getenv("KQSVD_VULKAN_LOOP_LIMIT");
  if (env && *env) {
    char *end = NULL;
    unsigned long v = strtoul(env, &end, 10);
    if (end && *end == '\0' && v <= UINT32_MAX) return (uint32_t)v;
  }
  const bool llvmpipe =
      driver ? driver == VK_DRIVER_ID_MESA_LLVMPIPE : strncmp(device_name, "llvmpipe", 8) == 0;
  return llvmpipe ? VK_LLVMPIPE_LOOP_LIMIT : 0;
}

static bool device_has_extension(VkPhysicalDevice phys, const char *name) {
  uint32_t n = 0;
  if (vkEnumerateDeviceExtensionProperties(phys, NULL, &n, NULL) != VK_SUCCESS || n == 0)
    return false;
  VkExtensionProperties *props = calloc(n, sizeof *props);
  bool found = false;
  if (props && vkEnumerateDeviceExtensionProperties(phys, NULL, &n, props) == VK_SUCCESS)
    for (uint32_t i = 0; i < n && !found; ++i) found = strcmp(props[i].extensionName, name) == 0;
  free(props);
  return found;
}

static kq_status open_fail(kq_bdevice *d, kq_status st) {
  vk_device_close(d);
  return st;
}

static kq_bdevice *device_new(int index, VkPhysicalDevice phys) {
  kq_bdevice *d = calloc(1, sizeof *d);
  if (!d) return NULL;
  d->index = index;
  /* What every message of the device names: the name kq_device_create
   * takes, or "vulkan:external" for an engine's device (kqsvd_vulkan.h). */
  if (index >= 0)
    snprintf(d->name, sizeof d->name, "vulkan:%d", index);
  else
    snprintf(d->name, sizeof d->name, "vulkan:external");
  d->phys = phys;
  d->open_frame = -1;
  pthread_mutex_init(&d->lock, NULL);
  pthread_mutex_init(&d->pipe_lock, NULL);
  pthread_mutex_init(&d->rope_lock, NULL);
  return d;
}

/* Properties of d->phys, and which optional storage features it supports
 * (d->fp16_storage, d->int8_storage: to be narrowed to what is enabled). */
static void probe_physical(kq_bdevice *d) {
  VkPhysicalDevice phys = d->phys;
  vkGetPhysicalDeviceProperties(phys, &d->props);
  vkGetPhysicalDeviceMemoryProperties(phys, &d->mem_props);
  VkPhysicalDeviceMaintenance3Properties m3 = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES};
  VkPhysicalDeviceSubgroupProperties sub = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
  VkPhysicalDeviceDriverProperties drv = {.sType =
                                              VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES};
  m3.pNext = &sub;
  if (d->props.apiVersion >= VK_API_VERSION_1_2 ||
      device_has_extension(phys, VK_KHR_DRIVER_PROPERTIES_EXTENSION_NAME))
    sub.pNext = &drv;
  VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
                                    .pNext = &m3};
  vkGetPhysicalDeviceProperties2(phys, &p2);
  d->subgroup_arith = (sub.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) &&
                      (sub.supportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT) &&
                      (sub.supportedOperations & VK_SUBGROUP_FEATURE_BASIC_BIT) &&
                      !getenv("KQSVD_VULKAN_NO_SUBGROUPS");
  d->max_alloc = m3.maxMemoryAllocationSize ? m3.maxMemoryAllocationSize : ((VkDeviceSize)1 << 30);
  d->subgroup_size = sub.subgroupSize ? sub.subgroupSize : 1;
  d->subgroup_shuffle = (sub.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) &&
                        (sub.supportedOperations & VK_SUBGROUP_FEATURE_SHUFFLE_BIT) &&
                        (sub.supportedOperations & VK_SUBGROUP_FEATURE_BASIC_BIT) &&
                        !getenv("KQSVD_VULKAN_NO_SUBGROUPS");
  d->compute_units = count_compute_units(phys, &d->props);
  d->loop_limit = loop_limit(drv.driverID, d->props.deviceName);
  VkPhysicalDevice8BitStorageFeaturesKHR f8 = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_8BIT_STORAGE_FEATURES_KHR};
  VkPhysicalDevice16BitStorageFeatures f16 = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES};
  const bool has8 = device_has_extension(phys, VK_KHR_8BIT_STORAGE_EXTENSION_NAME);
  if (has8) f16.pNext = &f8;
  VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2,
                                  .pNext = &f16};
  vkGetPhysicalDeviceFeatures2(phys, &f2);
  d->fp16_storage = f16.storageBuffer16BitAccess == VK_TRUE;
  d->int8_storage = has8 && f8.storageBuffer8BitAccess == VK_TRUE;
}

/* Everything the backend creates on d->dev: command pool, frames, the dummy
 * binding, pipelines. */
static kq_status device_setup(kq_bdevice *d) {
  VkCommandPoolCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                                .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
                                .queueFamilyIndex = d->queue_family};
  VkResult r = vkCreateCommandPool(d->dev, &ci, NULL, &d->cmd_pool);
  if (r != VK_SUCCESS) return vk_fail(r, "vkCreateCommandPool");
  for (int i = 0; i < VK_FRAMES; ++i) {
    vk_frame *f = &d->frames[i];
    VkCommandBufferAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                                      .commandPool = d->cmd_pool,
                                      .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                                      .commandBufferCount = 1};
    r = vkAllocateCommandBuffers(d->dev, &ai, &f->cmd);
    VkFenceCreateInfo fi = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    if (r == VK_SUCCESS) r = vkCreateFence(d->dev, &fi, NULL, &f->fence);
    if (r != VK_SUCCESS) return vk_fail(r, "frame setup");
  }
  kq_status st = vk_mem_alloc(d, 256, VK_MEM_DEVICE, &d->dummy, "dummy binding");
  if (st == KQ_OK) st = vk_pipelines_init(d);
  return st;
}

kq_status vk_device_open(int index, kq_bdevice **out_device) {
  *out_device = NULL;
  VkPhysicalDevice phys = vk_physical(index);
  if (!phys) return VK_ERR(KQ_ERR_NOT_FOUND, "vulkan:%d: no such Vulkan device", index);
  kq_bdevice *d = device_new(index, phys);
  if (!d) return VK_ERR(KQ_ERR_OUT_OF_MEMORY, "vulkan:%d: device state", index);
  probe_physical(d);

  /* A compute queue: a compute-only family if there is one, else any. */
  uint32_t nq = 0;
  vkGetPhysicalDeviceQueueFamilyProperties(phys, &nq, NULL);
  VkQueueFamilyProperties qf[32];
  if (nq > 32) nq = 32;
  vkGetPhysicalDeviceQueueFamilyProperties(phys, &nq, qf);
  int family = -1;
  for (uint32_t q = 0; q < nq; ++q) {
    if (!(qf[q].queueFlags & VK_QUEUE_COMPUTE_BIT)) continue;
    if (family < 0 || !(qf[q].queueFlags & VK_QUEUE_GRAPHICS_BIT)) family = (int)q;
    if (!(qf[q].queueFlags & VK_QUEUE_GRAPHICS_BIT)) break;
  }
  if (family < 0) return open_fail(d, VK_ERR(KQ_ERR_DEVICE, "vulkan:%d: no compute queue", index));
  d->queue_family = (uint32_t)family;

  float prio = 1.0f;
  VkDeviceQueueCreateInfo qi = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                .queueFamilyIndex = d->queue_family,
                                .queueCount = 1,
                                .pQueuePriorities = &prio};
  VkPhysicalDevice8BitStorageFeaturesKHR want8 = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_8BIT_STORAGE_FEATURES_KHR,
      .storageBuffer8BitAccess = VK_TRUE};
  VkPhysicalDevice16BitStorageFeatures want16 = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES,
      .pNext = d->int8_storage ? &want8 : NULL,
      .storageBuffer16BitAccess = d->fp16_storage ? VK_TRUE : VK_FALSE};
  const char *exts[2];
  uint32_t n_exts = 0;
  if (d->int8_storage) exts[n_exts++] = VK_KHR_8BIT_STORAGE_EXTENSION_NAME;
  d->push_desc = device_has_extension(phys, VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME) &&
                 !getenv("KQSVD_VULKAN_NO_PUSH_DESCRIPTORS");
  if (d->push_desc) exts[n_exts++] = VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME;
  VkDeviceCreateInfo di = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
                           .pNext = &want16,
                           .queueCreateInfoCount = 1,
                           .pQueueCreateInfos = &qi,
                           .enabledExtensionCount = n_exts,
                           .ppEnabledExtensionNames = exts};
  VkResult r = vkCreateDevice(phys, &di, NULL, &d->dev);
  if (r != VK_SUCCESS) {
    d->dev = VK_NULL_HANDLE;
    return open_fail(d, vk_fail(r, "vkCreateDevice"));
  }
  vkGetDeviceQueue(d->dev, d->queue_family, 0, &d->queue);
  kq_status st = device_setup(d);
  if (st != KQ_OK) return open_fail(d, st);
  *out_device = d;
  return KQ_OK;
}

/* The fields of kq_vulkan_device_handles this module reads, in order: a
 * caller built against an older kqsvd_vulkan.h passes a smaller struct_size
 * and gets the optional features off. */
#define VK_HANDLES_BASE_SIZE                                                                       \
  (offsetof(kq_vulkan_device_handles, get_instance_proc_addr) + sizeof(PFN_vkGetInstanceProcAddr))

kq_status vk_device_open_external(const void *handles, kq_device_info *out_info,
                                  kq_bdevice **out_device) {
  *out_device = NULL;
  kq_vulkan_device_handles h = {0};
  uint32_t size = *(const uint32_t *)handles;
  if (size < VK_HANDLES_BASE_SIZE)
    return VK_ERR(KQ_ERR_INVALID_ARGUMENT,
                  "vulkan:external: handles.struct_size %u is smaller than the smallest "
                  "kq_vulkan_device_handles (%zu)",
                  size, (size_t)VK_HANDLES_BASE_SIZE);
  memcpy(&h, handles, size < sizeof h ? size : sizeof h);
  if (!h.instance || !h.physical_device || !h.device || !h.queue)
    return VK_ERR(KQ_ERR_INVALID_ARGUMENT,
                  "vulkan:external: instance, physical_device, device and queue must all be set");
  kq_status st = vk_load_external(h.instance, h.get_instance_proc_addr);
  if (st != KQ_OK) return st;

  kq_bdevice *d = device_new(-1, h.physical_device);
  if (!d) return VK_ERR(KQ_ERR_OUT_OF_MEMORY, "vulkan:external: device state");
  d->external = true;
  probe_physical(d);
  if (d->props.apiVersion < VK_API_VERSION_1_1)
    return open_fail(d, VK_ERR(KQ_ERR_DEVICE,
                               "vulkan:external: %s supports Vulkan %u.%u; kqsvd needs 1.1 "
                               "(subgroup operations, 16-bit storage, maintenance3)",
                               d->props.deviceName, VK_API_VERSION_MAJOR(d->props.apiVersion),
                               VK_API_VERSION_MINOR(d->props.apiVersion)));
  uint32_t nq = 0;
  vkGetPhysicalDeviceQueueFamilyProperties(h.physical_device, &nq, NULL);
  VkQueueFamilyProperties qf[32];
  if (nq > 32) nq = 32;
  vkGetPhysicalDeviceQueueFamilyProperties(h.physical_device, &nq, qf);
  if (h.queue_family >= nq || !(qf[h.queue_family].queueFlags & VK_QUEUE_COMPUTE_BIT))
    return open_fail(d, VK_ERR(KQ_ERR_DEVICE,
                               "vulkan:external: queue family %u of %s has no "
                               "VK_QUEUE_COMPUTE_BIT (%u families)",
                               h.queue_family, d->props.deviceName, nq));
  /* What the engine enabled (fields beyond struct_size read as 0),
   * narrowed by what the device supports. */
  d->fp16_storage = d->fp16_storage && h.storage_buffer_16bit_access;
  d->int8_storage = d->int8_storage && h.storage_buffer_8bit_access;
  d->push_desc = h.push_descriptor &&
                 device_has_extension(h.physical_device, VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME) &&
                 !getenv("KQSVD_VULKAN_NO_PUSH_DESCRIPTORS");
  d->dev = h.device;
  d->queue_family = h.queue_family;
  d->queue = h.queue;
  st = device_setup(d);
  if (st != KQ_OK) return open_fail(d, st);
  vk_info_physical(h.physical_device, "vulkan:external", out_info);
  out_info->fp16_storage = d->fp16_storage ? 1 : 0;
  *out_device = d;
  return KQ_OK;
}

void vk_device_close(kq_bdevice *d) {
  if (!d) return;
  if (d->dev) {
    if (d->open_frame >= 0) frame_flush(d, &d->frames[d->open_frame], false);
    /* An engine's device may be busy with the engine's own work on other
     * queues: wait only for kqsvd's frames there. */
    if (d->external)
      for (int i = 0; i < VK_FRAMES; ++i) wait_fence(d, &d->frames[i]);
    else
      vkDeviceWaitIdle(d->dev);
    for (int i = 0; i < VK_FRAMES; ++i) {
      vk_frame *f = &d->frames[i];
      f->in_flight = false;
      frame_retire(d, f);
      vk_mem_free(d, &f->upload);
      for (int p = 0; p < f->n_pools; ++p) vkDestroyDescriptorPool(d->dev, f->pools[p], NULL);
      if (f->fence) vkDestroyFence(d->dev, f->fence, NULL);
    }
    for (int i = 0; i < d->n_ropes; ++i) {
      vk_buffer_free(d, d->ropes[i]->buffer);
      free(d->ropes[i]);
    }
    free(d->ropes);
    vk_mem_free(d, &d->download);
    vk_mem_free(d, &d->scratch);
    vk_pipelines_destroy(d);
    vk_mem_free(d, &d->dummy);
    if (d->cmd_pool) vkDestroyCommandPool(d->dev, d->cmd_pool, NULL);
    if (!d->external) vkDestroyDevice(d->dev, NULL);
  }
  pthread_mutex_destroy(&d->lock);
  pthread_mutex_destroy(&d->pipe_lock);
  pthread_mutex_destroy(&d->rope_lock);
  free(d);
}

/* --- buffers --- */

kq_status vk_buffer_alloc(kq_bdevice *d, size_t bytes, kq_buffer **out_buffer) {
  *out_buffer = NULL;
  kq_buffer *b = calloc(1, sizeof *b);
  if (!b) return VK_ERR(KQ_ERR_OUT_OF_MEMORY, "%s: buffer handle", d->name);
  kq_status st = vk_mem_alloc(d, bytes, VK_MEM_DEVICE, &b->mem, "device buffer");
  if (st != KQ_OK) {
    free(b);
    return st;
  }
  *out_buffer = b;
  return KQ_OK;
}

void vk_buffer_free(kq_bdevice *d, kq_buffer *b) {
  if (!b) return;
  /* The buffer may still be read by recorded or queued work. */
  vk_synchronize(d);
  if (!b->imported) vk_mem_free(d, &b->mem);
  free(b);
}

#define VK_BUFFER_BASE_SIZE (offsetof(kq_vulkan_buffer, size) + sizeof(VkDeviceSize))

kq_status vk_buffer_import(kq_bdevice *d, const void *native, size_t *out_bytes,
                           kq_buffer **out_buffer) {
  *out_buffer = NULL;
  kq_vulkan_buffer nb = {0};
  uint32_t size = *(const uint32_t *)native;
  if (size < VK_BUFFER_BASE_SIZE)
    return VK_ERR(KQ_ERR_INVALID_ARGUMENT,
                  "%s: import: struct_size %u is smaller than kq_vulkan_buffer (%zu)", d->name,
                  size, (size_t)VK_BUFFER_BASE_SIZE);
  memcpy(&nb, native, size < sizeof nb ? size : sizeof nb);
  const VkDeviceSize align = d->props.limits.minStorageBufferOffsetAlignment;
  if (!nb.buffer || nb.size == 0 || nb.size == VK_WHOLE_SIZE)
    return VK_ERR(KQ_ERR_INVALID_ARGUMENT,
                  "%s: import: a VkBuffer and a size in bytes (not 0 or VK_WHOLE_SIZE) are "
                  "needed",
                  d->name);
  if (align > 1 && nb.offset % align)
    return VK_ERR(KQ_ERR_INVALID_ARGUMENT,
                  "%s: import: offset %llu is not a multiple of the device's "
                  "minStorageBufferOffsetAlignment (%llu)",
                  d->name, (unsigned long long)nb.offset, (unsigned long long)align);
  if (nb.size > (VkDeviceSize)SIZE_MAX)
    return VK_ERR(KQ_ERR_INVALID_ARGUMENT, "%s: import: size %llu does not fit in size_t", d->name,
                  (unsigned long long)nb.size);
  kq_buffer *b = calloc(1, sizeof *b);
  if (!b) return VK_ERR(KQ_ERR_OUT_OF_MEMORY, "%s: import: buffer handle", d->name);
  b->imported = true;
  b->mem.buffer = nb.buffer;
  b->mem.base = nb.offset;
  b->mem.size = nb.size;
  *out_bytes = (size_t)nb.size;
  *out_buffer = b;
  return KQ_OK;
}

static kq_status check_range(const kq_bdevice *d, const kq_buffer *b, size_t offset, size_t bytes,
                             const char *what) {
  if (!b || offset > b->mem.size || bytes > b->mem.size - offset)
    return VK_ERR(KQ_ERR_INVALID_ARGUMENT, "%s: %s of %zu bytes at %zu outside the buffer", d->name,
                  what, bytes, offset);
  return KQ_OK;
}

kq_status vk_buffer_upload(kq_bdevice *d, kq_buffer *dst, size_t offset, const void *src,
                           size_t bytes) {
  kq_status st = check_range(d, dst, offset, bytes, "upload");
  if (st != KQ_OK || bytes == 0) return st;
  const char *p = src;
  VK_COUNT(d, bytes_up, bytes);
  while (bytes > 0) {
    vk_frame *f;
    if ((st = vk_frame_begin(d, &f)) != KQ_OK) return st;
    size_t n;
    if (bytes <= 65536 && bytes % 4 == 0 && offset % 4 == 0) {
      n = bytes; /* small: inline in the command buffer, no staging */
      vkCmdUpdateBuffer(f->cmd, dst->mem.buffer, dst->mem.base + offset, n, p);
    } else {
      n = bytes < VK_STAGING_PIECE ? bytes : VK_STAGING_PIECE;
      vk_mem *stage;
      VkDeviceSize at;
      if ((st = vk_frame_stage(d, &f, n, &stage, &at)) != KQ_OK) {
        vk_frame_abort(d, f);
        return st;
      }
      memcpy((char *)stage->mapped + at, p, n);
      VkBufferCopy region = {at, dst->mem.base + offset, n};
      vkCmdCopyBuffer(f->cmd, stage->buffer, dst->mem.buffer, 1, &region);
    }
    if ((st = vk_frame_submit(d, f, false, "upload")) != KQ_OK) return st;
    p += n;
    offset += n;
    bytes -= n;
  }
  return KQ_OK;
}

kq_status vk_buffer_download(kq_bdevice *d, const kq_buffer *src, size_t offset, void *dst,
                             size_t bytes) {
  kq_status st = check_range(d, src, offset, bytes, "download");
  if (st != KQ_OK) return st;
  if (bytes == 0) return vk_synchronize(d);
  char *p = dst;
  VK_COUNT(d, bytes_down, bytes);
  while (bytes > 0) {
    size_t n = bytes < VK_STAGING_PIECE ? bytes : VK_STAGING_PIECE;
    vk_frame *f;
    if ((st = vk_frame_begin(d, &f)) != KQ_OK) return st;
    /* The staging buffer is only touched by downloads, which complete before
     * they return: growing it cannot pull memory from under queued work. */
    if (d->download.size < n) {
      vk_mem_free(d, &d->download);
      VkDeviceSize grow = n < ((VkDeviceSize)1 << 20) ? ((VkDeviceSize)1 << 20) : n;
      st = vk_mem_alloc(d, grow, VK_MEM_DOWNLOAD, &d->download, "download staging");
      if (st != KQ_OK) {
        vk_frame_abort(d, f);
        return st;
      }
    }
    VkBufferCopy region = {src->mem.base + offset, 0, n};
    vkCmdCopyBuffer(f->cmd, src->mem.buffer, d->download.buffer, 1, &region);
    VkMemoryBarrier hb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                          .srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT,
                          .dstAccessMask = VK_ACCESS_HOST_READ_BIT};
    vkCmdPipelineBarrier(f->cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_HOST_BIT, 0, 1,
                         &hb, 0, NULL, 0, NULL);
    /* The lock is held until the copy is out of the staging buffer. */
    st = frame_flush(d, f, true);
    if (st == KQ_OK) memcpy(p, d->download.mapped, n);
    pthread_mutex_unlock(&d->lock);
    if (st == KQ_OK) st = vk_validation_check("download");
    if (st != KQ_OK) return st;
    p += n;
    offset += n;
    bytes -= n;
  }
  return KQ_OK;
}

kq_status vk_copy(kq_bdevice *d, kq_buffer *dst, const kq_buffer *src, size_t bytes) {
  kq_status st = check_range(d, src, 0, bytes, "copy source");
  if (st == KQ_OK) st = check_range(d, dst, 0, bytes, "copy destination");
  if (st != KQ_OK || bytes == 0) return st;
  vk_frame *f;
  if ((st = vk_frame_begin(d, &f)) != KQ_OK) return st;
  VkBufferCopy region = {src->mem.base, dst->mem.base, bytes};
  vkCmdCopyBuffer(f->cmd, src->mem.buffer, dst->mem.buffer, 1, &region);
  return vk_frame_submit(d, f, false, "copy");
}

kq_status vk_synchronize(kq_bdevice *d) {
  pthread_mutex_lock(&d->lock);
  kq_status st = KQ_OK;
  if (d->open_frame >= 0) st = frame_flush(d, &d->frames[d->open_frame], false);
  for (int i = 0; i < VK_FRAMES && st == KQ_OK; ++i) st = wait_fence(d, &d->frames[i]);
  pthread_mutex_unlock(&d->lock);
  if (st != KQ_OK) return st;
  return vk_validation_check("synchronize");
}

kq_status vk_get_stats(kq_bdevice *d, kq_device_stats *out) {
  out->submits = __atomic_load_n(&d->counters.submits, __ATOMIC_RELAXED);
  out->dispatches = __atomic_load_n(&d->counters.dispatches, __ATOMIC_RELAXED);
  out->host_waits = __atomic_load_n(&d->counters.host_waits, __ATOMIC_RELAXED);
  out->bytes_uploaded = __atomic_load_n(&d->counters.bytes_up, __ATOMIC_RELAXED);
  out->bytes_downloaded = __atomic_load_n(&d->counters.bytes_down, __ATOMIC_RELAXED);
  out->device_allocations = __atomic_load_n(&d->counters.allocations, __ATOMIC_RELAXED);
  out->pipelines_created = __atomic_load_n(&d->counters.pipelines, __ATOMIC_RELAXED);
  return KQ_OK;
}

kq_status vk_upload_new(kq_bdevice *d, const void *src, size_t bytes, kq_buffer **out) {
  kq_status st = vk_buffer_alloc(d, bytes, out);
  if (st == KQ_OK) st = vk_buffer_upload(d, *out, 0, src, bytes);
  if (st != KQ_OK) {
    vk_buffer_free(d, *out);
    *out = NULL;
  }
  return st;
}
