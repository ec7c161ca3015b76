/*
 * vk_module.c — module entry, the process-wide Vulkan instance, device
 * enumeration and info, and the validation-layer message channel.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vk_internal.h"

const kq_backend_host *vk_host;

#define VK_MAX_PHYS 16

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static VkInstance g_instance;
static VkPhysicalDevice g_phys[VK_MAX_PHYS];
static int g_n_phys;
static VkDebugUtilsMessengerEXT g_messenger;

/* Validation messages: the first one since the last check is kept. */
static pthread_mutex_t g_msg_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_msg[1024];
static int g_msg_count;

static VKAPI_ATTR VkBool32 VKAPI_CALL vk_on_message(
    VkDebugUtilsMessageSeverityFlagBitsEXT severity, VkDebugUtilsMessageTypeFlagsEXT types,
    const VkDebugUtilsMessengerCallbackDataEXT *data, void *user) {
  (void)user;
  if (severity < VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT) return VK_FALSE;
  /* General warnings come from the loader itself (e.g. "VK_INSTANCE_LAYERS
   * adds layers"), not from validating our usage; their errors still count. */
  if (!(types & (VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                 VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT)) &&
      severity < VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT)
    return VK_FALSE;
  pthread_mutex_lock(&g_msg_lock);
  if (g_msg_count++ == 0)
    snprintf(g_msg, sizeof g_msg, "%s", data && data->pMessage ? data->pMessage : "(no text)");
  pthread_mutex_unlock(&g_msg_lock);
  return VK_FALSE;
}

kq_status vk_validation_check(const char *what) {
  if (!g_messenger) return KQ_OK;
  pthread_mutex_lock(&g_msg_lock);
  int count = g_msg_count;
  char msg[sizeof g_msg];
  memcpy(msg, g_msg, sizeof msg);
  g_msg_count = 0;
  g_msg[0] = 0;
  pthread_mutex_unlock(&g_msg_lock);
  if (count == 0) return KQ_OK;
  return VK_ERR(KQ_ERR_DEVICE, "%s: Vulkan validation reported %d message(s), first: %s", what,
                count, msg);
}

static bool has_layer(const char *name) {
  uint32_t n = 0;
  if (vkEnumerateInstanceLayerProperties(&n, NULL) != VK_SUCCESS || n == 0) return false;
  VkLayerProperties *props = calloc(n, sizeof *props);
  bool found = false;
  if (props && vkEnumerateInstanceLayerProperties(&n, props) == VK_SUCCESS)
    for (uint32_t i = 0; i < n && !found; ++i) found = strcmp(props[i].layerName, name) == 0;
  free(props);
  return found;
}

static bool has_instance_ext(const char *layer, const char *name) {
  uint32_t n = 0;
  if (vkEnumerateInstanceExtensionProperties(layer, &n, NULL) != VK_SUCCESS || n == 0) return false;
  VkExtensionProperties *props = calloc(n, sizeof *props);
  bool found = false;
  if (props && vkEnumerateInstanceExtensionProperties(layer, &n, props) == VK_SUCCESS)
    for (uint32_t i = 0; i < n && !found; ++i) found = strcmp(props[i].extensionName, name) == 0;
  free(props);
  return found;
}

static const char *k_validation_layer = "VK_LAYER_KHRONOS_validation";

static void vk_init_once(void) {
  if (volkInitialize() != VK_SUCCESS) return;
  const char *env = getenv("KQSVD_VULKAN_VALIDATION");
  bool validate = env && env[0] && strcmp(env, "0") != 0;
  const char *layers[1];
  uint32_t n_layers = 0;
  const char *exts[2];
  uint32_t n_exts = 0;
  VkInstanceCreateFlags flags = 0;
  if (validate) {
    if (has_layer(k_validation_layer)) layers[n_layers++] = k_validation_layer;
    if (has_instance_ext(NULL, VK_EXT_DEBUG_UTILS_EXTENSION_NAME) ||
        (n_layers && has_instance_ext(k_validation_layer, VK_EXT_DEBUG_UTILS_EXTENSION_NAME)))
      exts[n_exts++] = VK_EXT_DEBUG_UTILS_EXTENSION_NAME;
    else
      validate = false;
  }
  if (has_instance_ext(NULL, "VK_KHR_portability_enumeration")) {
    exts[n_exts++] = "VK_KHR_portability_enumeration";
    flags |= 0x00000001; /* VK_INSTANCE_CREATE_ENUMERATE_PORTABILITY_BIT_KHR */
  }
  uint32_t api = VK_API_VERSION_1_1;
  if (vkEnumerateInstanceVersion) {
    uint32_t have = 0;
    if (vkEnumerateInstanceVersion(&have) == VK_SUCCESS && have >= VK_API_VERSION_1_2)
      api = VK_API_VERSION_1_2;
  }
  VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
                           .pApplicationName = "kqsvd",
                           .pEngineName = "kqsvd",
                           .apiVersion = api};
  VkDebugUtilsMessengerCreateInfoEXT dbg = {
      .sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
      .messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                         VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT,
      .messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                     VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                     VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT,
      .pfnUserCallback = vk_on_message};
  VkInstanceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
                             .pNext = validate ? &dbg : NULL,
                             .flags = flags,
                             .pApplicationInfo = &app,
                             .enabledLayerCount = n_layers,
                             .ppEnabledLayerNames = layers,
                             .enabledExtensionCount = n_exts,
                             .ppEnabledExtensionNames = exts};
  if (vkCreateInstance(&ci, NULL, &g_instance) != VK_SUCCESS) {
    g_instance = VK_NULL_HANDLE;
    return;
  }
  volkLoadInstance(g_instance);
  if (validate && vkCreateDebugUtilsMessengerEXT) {
    if (vkCreateDebugUtilsMessengerEXT(g_instance, &dbg, NULL, &g_messenger) != VK_SUCCESS)
      g_messenger = VK_NULL_HANDLE;
    /* Test hook: proves the messenger -> op failure path end to end. */
    const char *inject = getenv("KQSVD_VULKAN_VALIDATION_INJECT");
    if (g_messenger && inject && inject[0] && vkSubmitDebugUtilsMessageEXT) {
      VkDebugUtilsMessengerCallbackDataEXT data = {
          .sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CALLBACK_DATA_EXT,
          .pMessageIdName = "kqsvd-injected",
          .pMessage = inject};
      vkSubmitDebugUtilsMessageEXT(g_instance, VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT,
                                   VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT, &data);
    }
  }
  uint32_t n = 0;
  if (vkEnumeratePhysicalDevices(g_instance, &n, NULL) != VK_SUCCESS || n == 0) return;
  VkPhysicalDevice all[VK_MAX_PHYS];
  if (n > VK_MAX_PHYS) n = VK_MAX_PHYS;
  VkResult r = vkEnumeratePhysicalDevices(g_instance, &n, all);
  if (r != VK_SUCCESS && r != VK_INCOMPLETE) return;
  for (uint32_t i = 0; i < n; ++i) {
    VkPhysicalDeviceProperties props;
    vkGetPhysicalDeviceProperties(all[i], &props);
    if (props.apiVersion < VK_API_VERSION_1_1)
      continue; /* subgroup and 16-bit storage need Vulkan 1.1 */
    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(all[i], &nq, NULL);
    VkQueueFamilyProperties qf[32];
    if (nq > 32) nq = 32;
    vkGetPhysicalDeviceQueueFamilyProperties(all[i], &nq, qf);
    bool compute = false;
    for (uint32_t q = 0; q < nq; ++q)
      compute = compute || (qf[q].queueFlags & VK_QUEUE_COMPUTE_BIT);
    if (compute) g_phys[g_n_phys++] = all[i];
  }
}

int vk_physical_count(void) {
  pthread_once(&g_once, vk_init_once);
  return g_n_phys;
}

VkPhysicalDevice vk_physical(int index) {
  return index >= 0 && index < vk_physical_count() ? g_phys[index] : VK_NULL_HANDLE;
}

static int vk_count(void) {
  return vk_physical_count();
}

static kq_device_type map_type(VkPhysicalDeviceType t) {
  switch (t) {
  case VK_PHYSICAL_DEVICE_TYPE_CPU: return KQ_DEVICE_TYPE_CPU;
  case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return KQ_DEVICE_TYPE_GPU_DISCRETE;
  case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return KQ_DEVICE_TYPE_GPU_INTEGRATED;
  case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return KQ_DEVICE_TYPE_GPU_VIRTUAL;
  default: return KQ_DEVICE_TYPE_OTHER;
  }
}

static const char *vendor_name(uint32_t id) {
  switch (id) {
  case 0x1002: return "AMD";
  case 0x10DE: return "NVIDIA";
  case 0x8086: return "Intel";
  case 0x13B5: return "ARM";
  case 0x5143: return "Qualcomm";
  case 0x106B: return "Apple";
  case 0x10005: return "Mesa";
  default: return NULL;
  }
}

static pthread_mutex_t g_ext_lock = PTHREAD_MUTEX_INITIALIZER;

kq_status vk_load_external(VkInstance instance, PFN_vkGetInstanceProcAddr get_instance_proc_addr) {
  /* kqsvd's own instance, when the system loader has one: its entry points
   * are the loader's trampolines, which dispatch on any instance and device
   * of that loader, the engine's included. */
  vk_physical_count();
  kq_status st = KQ_OK;
  pthread_mutex_lock(&g_ext_lock);
  if (!volkGetLoadedInstance()) {
    if (get_instance_proc_addr) volkInitializeCustom(get_instance_proc_addr);
    if (!vkGetInstanceProcAddr)
      st = VK_ERR(KQ_ERR_DEVICE, "vulkan:external: no Vulkan loader (libvulkan.so.1 not found and "
                                 "no get_instance_proc_addr given)");
    else
      volkLoadInstance(instance);
  } else if (get_instance_proc_addr && get_instance_proc_addr != vkGetInstanceProcAddr) {
    st =
        VK_ERR(KQ_ERR_DEVICE, "vulkan:external: the engine's vkGetInstanceProcAddr is not the "
                              "Vulkan loader kqsvd already uses (pass NULL for the system loader)");
  }
  pthread_mutex_unlock(&g_ext_lock);
  return st;
}

static kq_status vk_info(int index, kq_device_info *out) {
  VkPhysicalDevice phys = vk_physical(index);
  if (!phys)
    return VK_ERR(KQ_ERR_NOT_FOUND, "vulkan:%d: no such Vulkan device (%d found)", index,
                  vk_physical_count());
  char name[32];
  snprintf(name, sizeof name, "vulkan:%d", index);
  vk_info_physical(phys, name, out);
  return KQ_OK;
}

void vk_info_physical(VkPhysicalDevice phys, const char *name, kq_device_info *out) {
  memset(out, 0, sizeof *out);
  VkPhysicalDeviceProperties props;
  vkGetPhysicalDeviceProperties(phys, &props);
  VkPhysicalDeviceDriverProperties drv = {.sType =
                                              VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES};
  VkPhysicalDeviceSubgroupProperties sub = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
  VkPhysicalDeviceMaintenance3Properties m3 = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES, .pNext = &sub};
  bool have_driver = props.apiVersion >= VK_API_VERSION_1_2;
  if (have_driver) sub.pNext = &drv;
  VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
                                    .pNext = &m3};
  vkGetPhysicalDeviceProperties2(phys, &p2);
  VkPhysicalDevice16BitStorageFeatures f16 = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES};
  VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2,
                                  .pNext = &f16};
  vkGetPhysicalDeviceFeatures2(phys, &f2);
  VkPhysicalDeviceMemoryProperties mp;
  vkGetPhysicalDeviceMemoryProperties(phys, &mp);

  snprintf(out->name, sizeof out->name, "%s", name);
  snprintf(out->backend, sizeof out->backend, "vulkan");
  snprintf(out->description, sizeof out->description, "%s", props.deviceName);
  const char *vendor = vendor_name(props.vendorID);
  if (vendor)
    snprintf(out->vendor, sizeof out->vendor, "%s", vendor);
  else
    snprintf(out->vendor, sizeof out->vendor, "0x%04x", props.vendorID);
  if (have_driver)
    snprintf(out->driver, sizeof out->driver, "%.40s %.80s", drv.driverName, drv.driverInfo);
  else
    snprintf(out->driver, sizeof out->driver, "driver 0x%08x", props.driverVersion);
  out->type = map_type(props.deviceType);
  for (uint32_t h = 0; h < mp.memoryHeapCount; ++h)
    if ((mp.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) &&
        mp.memoryHeaps[h].size > out->memory_bytes)
      out->memory_bytes = mp.memoryHeaps[h].size;
  out->max_buffer_bytes = m3.maxMemoryAllocationSize;
  out->fp16_storage = f16.storageBuffer16BitAccess ? 1 : 0;
  out->subgroup_size = (int32_t)sub.subgroupSize;
  out->compute_units = 0; /* Vulkan does not report it */
  bool arith = (sub.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) &&
               (sub.supportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT);
  snprintf(out->extensions, sizeof out->extensions,
           "vulkan-%u.%u.%u%s%s max-binding=%llu max-shared=%u max-invocations=%u",
           VK_API_VERSION_MAJOR(props.apiVersion), VK_API_VERSION_MINOR(props.apiVersion),
           VK_API_VERSION_PATCH(props.apiVersion), out->fp16_storage ? " fp16-storage" : "",
           arith ? " subgroup-arithmetic" : "",
           (unsigned long long)props.limits.maxStorageBufferRange,
           props.limits.maxComputeSharedMemorySize, props.limits.maxComputeWorkGroupInvocations);
}

static kq_status vk_project_entry(kq_bdevice *d, const kq_project_op *op) {
  return vk_op_project(d, op);
}
static kq_status vk_attend_entry(kq_bdevice *d, const kq_attend_op *op) {
  return vk_op_attend(d, op);
}
static kq_status vk_up_entry(kq_bdevice *d, const kq_up_op *op) {
  return vk_op_up(d, op);
}

static const kq_backend_iface g_iface = {
    .abi_version = KQ_BACKEND_ABI_VERSION,
    .struct_size = sizeof(kq_backend_iface),
    .name = "vulkan",
    .device_count = vk_count,
    .device_info = vk_info,
    .device_open = vk_device_open,
    .device_close = vk_device_close,
    .buffer_alloc = vk_buffer_alloc,
    .buffer_free = vk_buffer_free,
    .buffer_upload = vk_buffer_upload,
    .buffer_download = vk_buffer_download,
    .project = vk_project_entry,
    .attend = vk_attend_entry,
    .up = vk_up_entry,
    .copy = vk_copy,
    .synchronize = vk_synchronize,
    .get_stats = vk_get_stats,
    .caps = KQ_BACKEND_CAP_FUSED_UP,
    .device_open_external = vk_device_open_external,
    .buffer_import = vk_buffer_import,
    .prepare = vk_prepare,
};

__attribute__((visibility("default"))) kq_status kq_backend_entry(const kq_backend_host *host,
                                                                  const kq_backend_iface **out) {
  if (!host || !out || !host->set_error) return KQ_ERR_INVALID_ARGUMENT;
  if (host->abi_version != KQ_BACKEND_ABI_VERSION)
    return host->set_error(KQ_ERR_ABI, "vulkan module: built for backend ABI %u, core has %u",
                           KQ_BACKEND_ABI_VERSION, host->abi_version);
  vk_host = host;
  *out = &g_iface;
  return KQ_OK;
}
