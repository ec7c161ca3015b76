/*
 * test_vulkan_external.c — kqsvd on an engine's own Vulkan device and
 * buffers (kqsvd_vulkan.h). The test plays the engine: it creates its own
 * VkInstance, VkDevice and queue with the Vulkan API and hands them over.
 *   - the conformance suite passes on that kq_device (KQSVD_TEST_FILTER, a
 *     case-name regex, narrows it for quick local runs);
 *   - the engine's own VkBuffers, imported at aligned offsets inside one
 *     VkBuffer, feed kq_cache_append_device / kq_cache_attend_device, whose
 *     outputs equal the host-pointer calls on the same device; bytes around
 *     the imported output range stay untouched; a misaligned import is
 *     refused;
 *   - after kq_device_destroy the engine's VkDevice still works (a buffer is
 *     created and destroyed on it), the engine destroys it itself, and the
 *     validation layer (VK_INSTANCE_LAYERS=VK_LAYER_KHRONOS_validation, seen
 *     through the test's own debug messenger) reported nothing, including
 *     objects left alive on the device when it was destroyed;
 *   - errors of ops on that device name it "vulkan:external".
 * Exits 77 (ctest SKIP) when there is no Vulkan device.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <vulkan/vulkan.h>

#include "common/test_rng.h"
#include "conformance.h"
#include "kqsvd.h"
#include "kqsvd_vulkan.h"

#define CHECK_OK(expr)                                                                             \
  do {                                                                                             \
    kq_status st_ = (expr);                                                                        \
    if (st_ != KQ_OK) fail_msg("%s -> %d: %s", #expr, (int)st_, kq_last_error());                  \
  } while (0)

/* The engine's objects. */
static struct {
  VkInstance instance;
  VkDebugUtilsMessengerEXT messenger;
  VkPhysicalDevice phys;
  VkPhysicalDeviceProperties props;
  VkDevice device;
  uint32_t family;
  VkQueue queue;
  VkBool32 f16, i8, push;
  int messages;
  char first[1024];
} g;

static VKAPI_ATTR VkBool32 VKAPI_CALL on_message(VkDebugUtilsMessageSeverityFlagBitsEXT severity,
                                                 VkDebugUtilsMessageTypeFlagsEXT types,
                                                 const VkDebugUtilsMessengerCallbackDataEXT *data,
                                                 void *user) {
  (void)user;
  /* The loader's general notes ("VK_INSTANCE_LAYERS adds layers") are not
   * about anyone's usage; everything the layer validates counts. */
  if (!(types & (VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                 VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT)) &&
      severity < VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT)
    return VK_FALSE;
  if (g.messages++ == 0)
    snprintf(g.first, sizeof g.first, "%s", data && data->pMessage ? data->pMessage : "?");
  return VK_FALSE;
}

static int has_instance_ext(const char *name) {
  uint32_t n = 0;
  vkEnumerateInstanceExtensionProperties(NULL, &n, NULL);
  VkExtensionProperties *p = calloc(n ? n : 1, sizeof *p);
  int found = 0;
  if (p && vkEnumerateInstanceExtensionProperties(NULL, &n, p) == VK_SUCCESS)
    for (uint32_t i = 0; i < n; ++i) found |= strcmp(p[i].extensionName, name) == 0;
  free(p);
  return found;
}

static int has_device_ext(const char *name) {
  uint32_t n = 0;
  vkEnumerateDeviceExtensionProperties(g.phys, NULL, &n, NULL);
  VkExtensionProperties *p = calloc(n ? n : 1, sizeof *p);
  int found = 0;
  if (p && vkEnumerateDeviceExtensionProperties(g.phys, NULL, &n, p) == VK_SUCCESS)
    for (uint32_t i = 0; i < n; ++i) found |= strcmp(p[i].extensionName, name) == 0;
  free(p);
  return found;
}

/* 0: the engine's device is up; 77: no Vulkan device; 1: setup failed. */
static int engine_create(void) {
  const int debug = has_instance_ext(VK_EXT_DEBUG_UTILS_EXTENSION_NAME);
  const char *exts[] = {VK_EXT_DEBUG_UTILS_EXTENSION_NAME};
  VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
                           .pApplicationName = "test-engine",
                           .apiVersion = VK_API_VERSION_1_1};
  VkDebugUtilsMessengerCreateInfoEXT dbg = {
      .sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
      .messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                         VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT,
      .messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                     VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                     VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT,
      .pfnUserCallback = on_message};
  VkInstanceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
                             .pNext = debug ? &dbg : NULL,
                             .pApplicationInfo = &app,
                             .enabledExtensionCount = debug ? 1u : 0u,
                             .ppEnabledExtensionNames = exts};
  if (vkCreateInstance(&ci, NULL, &g.instance) != VK_SUCCESS) return 77;
  if (debug) {
    PFN_vkCreateDebugUtilsMessengerEXT create =
        (PFN_vkCreateDebugUtilsMessengerEXT)vkGetInstanceProcAddr(g.instance,
                                                                  "vkCreateDebugUtilsMessengerEXT");
    if (!create || create(g.instance, &dbg, NULL, &g.messenger) != VK_SUCCESS) return 1;
  }
  uint32_t n = 1;
  VkResult r = vkEnumeratePhysicalDevices(g.instance, &n, &g.phys);
  if ((r != VK_SUCCESS && r != VK_INCOMPLETE) || n == 0) return 77;
  vkGetPhysicalDeviceProperties(g.phys, &g.props);
  if (g.props.apiVersion < VK_API_VERSION_1_1) return 77;
  uint32_t nq = 0;
  vkGetPhysicalDeviceQueueFamilyProperties(g.phys, &nq, NULL);
  VkQueueFamilyProperties qf[16];
  if (nq > 16) nq = 16;
  vkGetPhysicalDeviceQueueFamilyProperties(g.phys, &nq, qf);
  g.family = UINT32_MAX;
  for (uint32_t q = 0; q < nq && g.family == UINT32_MAX; ++q)
    if (qf[q].queueFlags & VK_QUEUE_COMPUTE_BIT) g.family = q;
  if (g.family == UINT32_MAX) return 77;

  /* Enable what the device has of kqsvd's optional features. */
  VkPhysicalDevice8BitStorageFeatures f8 = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_8BIT_STORAGE_FEATURES};
  VkPhysicalDevice16BitStorageFeatures f16 = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES};
  const int has8 = has_device_ext(VK_KHR_8BIT_STORAGE_EXTENSION_NAME);
  if (has8) f16.pNext = &f8;
  VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2,
                                  .pNext = &f16};
  vkGetPhysicalDeviceFeatures2(g.phys, &f2);
  g.f16 = f16.storageBuffer16BitAccess;
  g.i8 = has8 && f8.storageBuffer8BitAccess;
  g.push = has_device_ext(VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME);
  VkPhysicalDevice8BitStorageFeatures want8 = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_8BIT_STORAGE_FEATURES,
      .storageBuffer8BitAccess = g.i8};
  VkPhysicalDevice16BitStorageFeatures want16 = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES,
      .pNext = g.i8 ? &want8 : NULL,
      .storageBuffer16BitAccess = g.f16};
  const char *dexts[2];
  uint32_t nd = 0;
  if (g.i8) dexts[nd++] = VK_KHR_8BIT_STORAGE_EXTENSION_NAME;
  if (g.push) dexts[nd++] = VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME;
  float prio = 1.0f;
  VkDeviceQueueCreateInfo qi = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                .queueFamilyIndex = g.family,
                                .queueCount = 1,
                                .pQueuePriorities = &prio};
  VkDeviceCreateInfo di = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
                           .pNext = &want16,
                           .queueCreateInfoCount = 1,
                           .pQueueCreateInfos = &qi,
                           .enabledExtensionCount = nd,
                           .ppEnabledExtensionNames = dexts};
  if (vkCreateDevice(g.phys, &di, NULL, &g.device) != VK_SUCCESS) return 1;
  vkGetDeviceQueue(g.device, g.family, 0, &g.queue);
  return 0;
}

static kq_vulkan_device_handles handles(void) {
  return (kq_vulkan_device_handles){.struct_size = sizeof(kq_vulkan_device_handles),
                                    .instance = g.instance,
                                    .physical_device = g.phys,
                                    .device = g.device,
                                    .queue_family = g.family,
                                    .queue = g.queue,
                                    .get_instance_proc_addr = vkGetInstanceProcAddr,
                                    .storage_buffer_16bit_access = g.f16,
                                    .storage_buffer_8bit_access = g.i8,
                                    .push_descriptor = g.push};
}

static void expect_no_messages(const char *when) {
  if (g.messages)
    fail_msg("%s: validation reported %d message(s), first: %s", when, g.messages, g.first);
}

/* --- (a) the conformance suite on the engine's device --- */

static void test_conformance_on_engine_device(void **state) {
  (void)state;
  kq_vulkan_device_handles h = handles();
  kq_device *dev = NULL;
  CHECK_OK(kq_device_create_vulkan(&h, &dev));
  kq_device_info info;
  CHECK_OK(kq_device_get_info(dev, &info));
  assert_string_equal(info.name, "vulkan:external");
  assert_int_equal(info.fp16_storage, g.f16 ? 1 : 0);

  int count;
  kqc_cases(&count);
  int *idx = calloc((size_t)count, sizeof *idx);
  assert_non_null(idx);
  int n = 0;
  char err[256];
  assert_int_equal(kqc_select(getenv("KQSVD_TEST_FILTER"), idx, &n, err, sizeof err), 0);
  assert_true(n > 0);
  const kqc_case *cases = kqc_cases(&count);
  int passed = 0, failed = 0;
  for (int i = 0; i < n; ++i) {
    kqc_result res;
    kqc_run_case(dev, &cases[idx[i]], &res);
    /* A case counts as skipped only for a feature the engine did not enable. */
    int excused = (res.skipped && !g.f16) || (res.unsupported && !g.i8);
    if (res.pass)
      passed++;
    else if (!excused && failed++ < 5)
      print_error("FAIL %s: nmse %g (threshold %g) %s\n", res.name, res.nmse, res.threshold,
                  res.error);
  }
  free(idx);
  kq_device_destroy(dev);
  print_message("conformance on vulkan:external (%s): %d of %d cases pass\n", g.props.deviceName,
                passed, n);
  assert_int_equal(failed, 0);
  expect_no_messages("conformance");
}

/* --- (b) the engine's own buffers --- */

enum { LAYERS = 2, HK = 2, H = 4, D = 16, RK = 8, RV = 12, CAP = 64 };

/* x[0..n) uniform in [-1, 1], the same for the same seed. */
static void fill(float *x, size_t n, uint32_t seed) {
  uint64_t s = (uint64_t)seed * 2654435761u + 1u;
  test_rng_fill(x, n, &s, 1.0f);
}

static kq_projections *make_projections(void) {
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = LAYERS,
                              .n_heads = H,
                              .n_kv_heads = HK,
                              .head_dim = D,
                              .rope = KQ_ROPE_NONE,
                              .rope_theta = 10000.0f,
                              .layout = KQ_LAYOUT_PER_HEAD};
  int32_t rk[LAYERS] = {RK, RK}, rv[LAYERS] = {RV, RV};
  kq_projections *p = NULL;
  CHECK_OK(kq_projections_create(&info, rk, rv, &p));
  for (int l = 0; l < LAYERS; ++l) {
    kq_projection_layer pl;
    CHECK_OK(kq_projections_layer(p, l, &pl));
    fill(pl.key_down, (size_t)HK * D * RK, 10u + (uint32_t)l);
    fill(pl.query_down, (size_t)HK * D * RK, 20u + (uint32_t)l);
    fill(pl.value_down, (size_t)HK * D * RV, 30u + (uint32_t)l);
    fill(pl.value_up, (size_t)HK * D * RV, 40u + (uint32_t)l);
  }
  return p;
}

static uint32_t find_host_memory(uint32_t bits) {
  VkPhysicalDeviceMemoryProperties mp;
  vkGetPhysicalDeviceMemoryProperties(g.phys, &mp);
  const VkMemoryPropertyFlags want =
      VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
  for (uint32_t i = 0; i < mp.memoryTypeCount; ++i)
    if ((bits & (1u << i)) && (mp.memoryTypes[i].propertyFlags & want) == want) return i;
  return UINT32_MAX;
}

static VkDeviceSize round_up(VkDeviceSize x, VkDeviceSize a) {
  return (x + a - 1) / a * a;
}

static void test_engine_buffers_match_host_calls(void **state) {
  (void)state;
  kq_vulkan_device_handles h = handles();
  kq_device *dev = NULL;
  CHECK_OK(kq_device_create_vulkan(&h, &dev));
  kq_projections *proj = make_projections();
  kq_cache_params cp = kq_cache_default_params();
  cp.capacity = CAP;
  kq_cache *host_cache = NULL, *dev_cache = NULL;
  CHECK_OK(kq_cache_create(dev, proj, &cp, &host_cache));
  CHECK_OK(kq_cache_create(dev, proj, &cp, &dev_cache));

  /* One engine VkBuffer holding four ranges, each at an aligned offset that
   * is not 0, with a guard gap before it. */
  enum { MAXT = 8 };
  const VkDeviceSize align = g.props.limits.minStorageBufferOffsetAlignment > 16
                                 ? g.props.limits.minStorageBufferOffsetAlignment
                                 : 16;
  const VkDeviceSize kv_bytes = (VkDeviceSize)MAXT * HK * D * 4;
  const VkDeviceSize q_bytes = (VkDeviceSize)MAXT * H * D * 4;
  const VkDeviceSize o_bytes = (VkDeviceSize)MAXT * H * D * 4;
  VkDeviceSize off_k = align, off_v = round_up(off_k + kv_bytes, align) + align;
  VkDeviceSize off_q = round_up(off_v + kv_bytes, align) + align;
  VkDeviceSize off_o = round_up(off_q + q_bytes, align) + align;
  VkDeviceSize total = round_up(off_o + o_bytes, align) + align;
  VkBufferCreateInfo bi = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
                           .size = total,
                           .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT |
                                    VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                    VK_BUFFER_USAGE_TRANSFER_DST_BIT,
                           .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
  VkBuffer vb;
  assert_int_equal(vkCreateBuffer(g.device, &bi, NULL, &vb), VK_SUCCESS);
  VkMemoryRequirements req;
  vkGetBufferMemoryRequirements(g.device, vb, &req);
  VkMemoryAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
                             .allocationSize = req.size,
                             .memoryTypeIndex = find_host_memory(req.memoryTypeBits)};
  assert_true(ai.memoryTypeIndex != UINT32_MAX);
  VkDeviceMemory vm;
  assert_int_equal(vkAllocateMemory(g.device, &ai, NULL, &vm), VK_SUCCESS);
  assert_int_equal(vkBindBufferMemory(g.device, vb, vm, 0), VK_SUCCESS);
  unsigned char *map = NULL;
  assert_int_equal(vkMapMemory(g.device, vm, 0, VK_WHOLE_SIZE, 0, (void **)&map), VK_SUCCESS);
  memset(map, 0xA5, (size_t)total);

  kq_device_buffer *bk, *bv, *bq, *bo;
  kq_vulkan_buffer r = {.struct_size = sizeof r, .buffer = vb};
  r.offset = off_k, r.size = kv_bytes;
  CHECK_OK(kq_device_buffer_import_vulkan(dev, &r, &bk));
  r.offset = off_v;
  CHECK_OK(kq_device_buffer_import_vulkan(dev, &r, &bv));
  r.offset = off_q, r.size = q_bytes;
  CHECK_OK(kq_device_buffer_import_vulkan(dev, &r, &bq));
  r.offset = off_o, r.size = o_bytes;
  CHECK_OK(kq_device_buffer_import_vulkan(dev, &r, &bo));
  assert_int_equal(kq_device_buffer_size(bo), (size_t)o_bytes);
  if (g.props.limits.minStorageBufferOffsetAlignment > 4) {
    kq_device_buffer *bad = NULL;
    r.offset = off_o + 4;
    r.size = 64;
    assert_int_equal(kq_device_buffer_import_vulkan(dev, &r, &bad), KQ_ERR_INVALID_ARGUMENT);
    assert_null(bad);
    assert_non_null(strstr(kq_last_error(), "minStorageBufferOffsetAlignment"));
  }

  float keys[MAXT * HK * D], values[MAXT * HK * D], queries[MAXT * H * D];
  float want[MAXT * H * D], got[MAXT * H * D];
  const int steps[] = {5, 1, 1, 3, 1}; /* a prefill, decode steps, a chunk */
  const kq_output outs[] = {KQ_OUTPUT_FULL, KQ_OUTPUT_LATENT};
  uint32_t seed = 100;
  for (size_t s = 0; s < sizeof steps / sizeof *steps; ++s) {
    const int t = steps[s];
    for (int l = 0; l < LAYERS; ++l) {
      const kq_output out = outs[(s + (size_t)l) % 2];
      const int ow = out == KQ_OUTPUT_FULL ? D : RV;
      fill(keys, (size_t)t * HK * D, seed++);
      fill(values, (size_t)t * HK * D, seed++);
      fill(queries, (size_t)t * H * D, seed++);
      CHECK_OK(kq_cache_append(host_cache, l, t, keys, values));
      CHECK_OK(kq_cache_attend(host_cache, l, t, queries, out, want));
      /* The engine writes its buffers itself (mapped memory). */
      memcpy(map + off_k, keys, (size_t)t * HK * D * 4);
      memcpy(map + off_v, values, (size_t)t * HK * D * 4);
      memcpy(map + off_q, queries, (size_t)t * H * D * 4);
      kq_seq_span span = {.seq = 0, .n_tokens = t};
      CHECK_OK(kq_cache_append_device(dev_cache, l, 1, &span, bk, 0, bv, 0));
      CHECK_OK(kq_cache_attend_device(dev_cache, l, 1, &span, bq, 0, out, bo, 0));
      const size_t n = (size_t)t * H * (size_t)ow;
      CHECK_OK(kq_device_buffer_read(bo, 0, got, n * sizeof *got));
      for (size_t i = 0; i < n; ++i) {
        float tol = 1e-6f * (fabsf(want[i]) > 1.0f ? fabsf(want[i]) : 1.0f);
        if (!(fabsf(got[i] - want[i]) <= tol))
          fail_msg("step %zu layer %d (%s): out[%zu] = %g, host call gave %g", s, l,
                   out == KQ_OUTPUT_FULL ? "full" : "latent", i, (double)got[i], (double)want[i]);
      }
    }
  }
  assert_int_equal(kq_cache_length(dev_cache, 0), kq_cache_length(host_cache, 0));
  /* The guard bytes before every range and after the output are untouched:
   * the ops wrote at the import offsets, not at the VkBuffer's start. */
  CHECK_OK(kq_device_synchronize(dev));
  const VkDeviceSize guards[] = {0, off_v - align, off_q - align, off_o - align,
                                 round_up(off_o + o_bytes, align)};
  for (size_t i = 0; i < sizeof guards / sizeof *guards; ++i)
    for (VkDeviceSize b = guards[i]; b < guards[i] + align; ++b)
      if (map[b] != 0xA5)
        fail_msg("byte %llu outside the imported ranges changed", (unsigned long long)b);

  kq_device_buffer_destroy(bk);
  kq_device_buffer_destroy(bv);
  kq_device_buffer_destroy(bq);
  kq_device_buffer_destroy(bo);
  kq_cache_destroy(host_cache);
  kq_cache_destroy(dev_cache);
  kq_projections_destroy(proj);
  kq_device_destroy(dev);
  /* The wrappers are gone; the engine's buffer is still its own. */
  vkUnmapMemory(g.device, vm);
  vkDestroyBuffer(g.device, vb, NULL);
  vkFreeMemory(g.device, vm, NULL);
  expect_no_messages("engine buffers");
}

/* --- (c) the engine's device outlives the kq_device --- */

static void test_engine_device_outlives_kq_device(void **state) {
  (void)state;
  kq_vulkan_device_handles h = handles();
  kq_device *dev = NULL;
  CHECK_OK(kq_device_create_vulkan(&h, &dev));
  kq_device_buffer *b = NULL;
  CHECK_OK(kq_device_buffer_create(dev, 4096, &b));
  float x[16];
  fill(x, 16, 7);
  CHECK_OK(kq_device_buffer_write(b, 0, x, sizeof x));
  kq_device_buffer_destroy(b);
  kq_device_destroy(dev);

  VkBufferCreateInfo bi = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
                           .size = 256,
                           .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT,
                           .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
  VkBuffer vb = VK_NULL_HANDLE;
  assert_int_equal(vkCreateBuffer(g.device, &bi, NULL, &vb), VK_SUCCESS);
  vkDestroyBuffer(g.device, vb, NULL);
  assert_int_equal(vkQueueWaitIdle(g.queue), VK_SUCCESS);
  /* The engine destroys its device itself: the layer reports any object
   * kqsvd left alive on it. */
  vkDestroyDevice(g.device, NULL);
  g.device = VK_NULL_HANDLE;
  expect_no_messages("after the engine destroyed its device");
}

/* The name every message of an engine's device carries: "vulkan:external"
 * (kqsvd_vulkan.h), in the core's prefix and in the backend's own text. An
 * op the device cannot run (q8 segments when the engine did not enable
 * 8-bit storage) fails in the backend, which names the device. */
static void test_errors_name_the_device(void **state) {
  (void)state;
  kq_vulkan_device_handles h = handles();
  h.storage_buffer_8bit_access = 0;
  kq_device *dev = NULL;
  CHECK_OK(kq_device_create_vulkan(&h, &dev));
  kq_projections *proj = make_projections();
  const kq_segment q8 = {.width = RK, .bits = KQ_SEG_Q8};
  for (int l = 0; l < LAYERS; ++l)
    CHECK_OK(kq_projections_set_segments(proj, l, KQ_SIDE_KEYS, 1, &q8));
  kq_cache_params cp = kq_cache_default_params();
  cp.capacity = 8;
  kq_cache *cache = NULL;
  kq_status st = kq_cache_create(dev, proj, &cp, &cache);
  if (st == KQ_OK) {
    float k[HK * D], v[HK * D];
    fill(k, HK * D, 1u);
    fill(v, HK * D, 2u);
    st = kq_cache_append(cache, 0, 1, k, v);
  }
  assert_int_equal(st, KQ_ERR_UNSUPPORTED);
  const char *msg = kq_last_error();
  print_message("error on the engine's device: %s\n", msg);
  /* Twice: the core's prefix ("device vulkan:external: ...") and the
   * backend's own text ("vulkan:external: <op>: quantized ..."). */
  int named = 0;
  for (const char *p = msg; (p = strstr(p, "vulkan:external: ")) != NULL; p++) named++;
  assert_int_equal(named, 2);
  assert_non_null(strstr(msg, "storageBuffer8BitAccess"));
  assert_null(strstr(msg, "vulkan:-1"));
  /* A refused import names it too. */
  kq_vulkan_buffer r = {.struct_size = sizeof r, .buffer = VK_NULL_HANDLE, .offset = 0, .size = 4};
  kq_device_buffer *bad = NULL;
  assert_int_equal(kq_device_buffer_import_vulkan(dev, &r, &bad), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "vulkan:external: import: a VkBuffer"));
  kq_cache_destroy(cache);
  kq_projections_destroy(proj);
  kq_device_destroy(dev);
}

/* Handles that cannot work are refused with a message, nothing opened. */
static void test_bad_handles_refused(void **state) {
  (void)state;
  kq_vulkan_device_handles h = handles();
  kq_device *dev = (kq_device *)&h;
  h.queue_family = 999;
  assert_int_equal(kq_device_create_vulkan(&h, &dev), KQ_ERR_DEVICE);
  assert_null(dev);
  assert_non_null(strstr(kq_last_error(), "queue family 999"));
  h = handles();
  h.device = VK_NULL_HANDLE;
  assert_int_equal(kq_device_create_vulkan(&h, &dev), KQ_ERR_INVALID_ARGUMENT);
  h = handles();
  h.struct_size = 8;
  assert_int_equal(kq_device_create_vulkan(&h, &dev), KQ_ERR_INVALID_ARGUMENT);
}

int main(void) {
  int rc = engine_create();
  if (rc == 77) {
    fprintf(stderr, "no Vulkan device: skipped\n");
    return 77;
  }
  if (rc != 0) {
    fprintf(stderr, "could not create the test's own Vulkan device\n");
    return 1;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bad_handles_refused),
      cmocka_unit_test(test_errors_name_the_device),
      cmocka_unit_test(test_engine_buffers_match_host_calls),
      cmocka_unit_test(test_conformance_on_engine_device),
      cmocka_unit_test(test_engine_device_outlives_kq_device), /* last: destroys the device */
  };
  rc = cmocka_run_group_tests(tests, NULL, NULL);
  if (g.device) vkDestroyDevice(g.device, NULL);
  if (g.messenger) {
    PFN_vkDestroyDebugUtilsMessengerEXT destroy =
        (PFN_vkDestroyDebugUtilsMessengerEXT)vkGetInstanceProcAddr(
            g.instance, "vkDestroyDebugUtilsMessengerEXT");
    if (destroy) destroy(g.instance, g.messenger, NULL);
  }
  vkDestroyInstance(g.instance, NULL);
  return rc;
}
