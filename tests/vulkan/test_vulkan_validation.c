/*
 * test_vulkan_validation.c — a message from the Vulkan debug messenger makes
 * the next op fail with KQ_ERR_DEVICE and the message text, and is consumed.
 * The message is injected through vkSubmitDebugUtilsMessageEXT (the module's
 * KQSVD_VULKAN_VALIDATION_INJECT hook), which travels the same loader ->
 * messenger -> module path as a real validation-layer report.
 * Exits 77 (ctest SKIP) when no Vulkan device exists.
 */
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kqsvd_backend.h"

static char g_err[2048];
static kq_status host_set_error(kq_status st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_err, sizeof g_err, fmt, ap);
  va_end(ap);
  return st;
}
static const kq_backend_host g_host = {KQ_BACKEND_ABI_VERSION, host_set_error};

#define EXPECT(cond)                                                                               \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "FAIL %s:%d: %s (last error: %s)\n", __FILE__, __LINE__, #cond, g_err);      \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

int main(void) {
  setenv("KQSVD_VULKAN_VALIDATION", "1", 1);
  setenv("KQSVD_VULKAN_VALIDATION_INJECT", "kqsvd test message 42", 1);
  void *lib = dlopen(KQ_VK_MODULE_PATH, RTLD_NOW | RTLD_LOCAL);
  EXPECT(lib != NULL);
  kq_backend_entry_fn entry = (kq_backend_entry_fn)dlsym(lib, KQ_BACKEND_ENTRY_SYMBOL);
  const kq_backend_iface *vk = NULL;
  EXPECT(entry && entry(&g_host, &vk) == KQ_OK);
  if (vk->device_count() == 0) {
    fprintf(stderr, "SKIP: no Vulkan device\n");
    return 77;
  }
  kq_bdevice *dev = NULL;
  EXPECT(vk->device_open(0, &dev) == KQ_OK);
  kq_buffer *b = NULL;
  EXPECT(vk->buffer_alloc(dev, 64, &b) == KQ_OK);
  float x[16] = {1, 2, 3}, y[16] = {0};
  /* The injected message fails the first op, naming the message. */
  EXPECT(vk->buffer_upload(dev, b, 0, x, sizeof x) == KQ_ERR_DEVICE);
  EXPECT(strstr(g_err, "kqsvd test message 42") != NULL);
  /* Consumed: the device works again, and no real validation message came. */
  g_err[0] = 0;
  EXPECT(vk->buffer_upload(dev, b, 0, x, sizeof x) == KQ_OK);
  EXPECT(vk->buffer_download(dev, b, 0, y, sizeof y) == KQ_OK);
  EXPECT(memcmp(x, y, sizeof x) == 0);
  vk->buffer_free(dev, b);
  vk->device_close(dev);
  dlclose(lib);
  printf("validation message -> KQ_ERR_DEVICE: ok\n");
  return 0;
}
