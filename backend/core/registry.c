/* The backend registry: the built-in CPU backend first, then every module
 * libkqsvd-NAME<suffix> found next to libkqsvd and in KQSVD_BACKEND_PATH.
 * Modules are refused (never entered beyond the version check) when built
 * for another ABI; a refused or broken module leaves a problem message and
 * costs nothing else. */
#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kq_common.h"
#include "kq_core.h"
#include "kq_cpu_backend.h"

#ifndef KQ_BACKEND_MODULE_SUFFIX
#define KQ_BACKEND_MODULE_SUFFIX ".so"
#endif
#define KQ_MODULE_PREFIX "libkqsvd-"
#define KQ_MAX_BACKENDS 16
#define KQ_MAX_DEVICES 64
#define KQ_MAX_PROBLEMS 32

typedef struct backend_rec {
  const kq_backend_iface *iface;
  void *handle; /* dlopen handle; NULL for the built-in CPU backend */
  char path[PATH_MAX];
} backend_rec;

typedef struct device_rec {
  int backend;
  int local;
  kq_device_info info;
} device_rec;

typedef struct problem_rec {
  kq_status status;
  char backend[32]; /* NAME from libkqsvd-NAME.so */
  char message[640];
} problem_rec;

static struct {
  backend_rec backends[KQ_MAX_BACKENDS];
  int n_backends;
  device_rec devices[KQ_MAX_DEVICES];
  int n_devices;
  problem_rec problems[KQ_MAX_PROBLEMS];
  int n_problems;
} g_reg;

static pthread_once_t g_reg_once = PTHREAD_ONCE_INIT;

static const kq_backend_host g_host = {
    .abi_version = KQ_BACKEND_ABI_VERSION,
    .set_error = kq_set_error,
};

static void add_problem(kq_status status, const char *backend, const char *fmt, ...)
    KQ_PRINTF(3, 4);

static void add_problem(kq_status status, const char *backend, const char *fmt, ...) {
  if (g_reg.n_problems >= KQ_MAX_PROBLEMS) return;
  problem_rec *p = &g_reg.problems[g_reg.n_problems++];
  p->status = status;
  snprintf(p->backend, sizeof p->backend, "%s", backend);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(p->message, sizeof p->message, fmt, ap);
  va_end(ap);
}

/* Registers a backend's devices; names are NAME:index except the CPU's. */
static void add_backend(const kq_backend_iface *iface, void *handle, const char *path) {
  if (g_reg.n_backends >= KQ_MAX_BACKENDS) return;
  int b = g_reg.n_backends++;
  g_reg.backends[b].iface = iface;
  g_reg.backends[b].handle = handle;
  snprintf(g_reg.backends[b].path, sizeof g_reg.backends[b].path, "%s", path);
  int n = iface->device_count ? iface->device_count() : 0;
  for (int i = 0; i < n && g_reg.n_devices < KQ_MAX_DEVICES; i++) {
    device_rec *d = &g_reg.devices[g_reg.n_devices];
    memset(d, 0, sizeof *d);
    if (iface->device_info(i, &d->info) != KQ_OK) {
      add_problem(KQ_ERR_DEVICE, iface->name, "%s: device %d: info failed: %s", path, i,
                  kq_last_error());
      continue;
    }
    d->backend = b;
    d->local = i;
    if (handle)
      snprintf(d->info.name, sizeof d->info.name, "%s:%d", iface->name, i);
    else
      snprintf(d->info.name, sizeof d->info.name, "%s", iface->name);
    snprintf(d->info.backend, sizeof d->info.backend, "%s", iface->name);
    g_reg.n_devices++;
  }
}

static void load_module(const char *path, const char *backend_name) {
  for (int b = 0; b < g_reg.n_backends; b++)
    if (strcmp(g_reg.backends[b].path, path) == 0) return; /* same file seen twice */
  void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char *why = dlerror();
    add_problem(KQ_ERR_IO, backend_name, "%s: cannot load: %s", path, why ? why : "dlopen failed");
    return;
  }
  kq_backend_entry_fn entry;
  void *sym = dlsym(handle, KQ_BACKEND_ENTRY_SYMBOL);
  memcpy(&entry, &sym, sizeof entry); /* object-to-function pointer, POSIX-sanctioned */
  if (!sym) {
    add_problem(KQ_ERR_FORMAT, backend_name, "%s: no symbol %s", path, KQ_BACKEND_ENTRY_SYMBOL);
    dlclose(handle);
    return;
  }
  const kq_backend_iface *iface = NULL;
  kq_status st = entry(&g_host, &iface);
  if (st != KQ_OK || !iface) {
    add_problem(st != KQ_OK ? st : KQ_ERR_DEVICE, backend_name, "%s: %s failed: %s", path,
                KQ_BACKEND_ENTRY_SYMBOL, st != KQ_OK ? kq_last_error() : "no interface returned");
    dlclose(handle);
    return;
  }
  /* Only the two leading fields may be read before the version is known. */
  if (iface->abi_version != KQ_BACKEND_ABI_VERSION) {
    add_problem(KQ_ERR_ABI, backend_name,
                "%s: refused: module built for backend ABI version %u, this library uses "
                "version %u",
                path, iface->abi_version, KQ_BACKEND_ABI_VERSION);
    dlclose(handle);
    return;
  }
  if (iface->struct_size < sizeof(kq_backend_iface)) {
    add_problem(KQ_ERR_ABI, backend_name,
                "%s: refused: interface of %u bytes is smaller than the %zu bytes of backend ABI "
                "version %u",
                path, iface->struct_size, sizeof(kq_backend_iface), KQ_BACKEND_ABI_VERSION);
    dlclose(handle);
    return;
  }
  if (!iface->name || !iface->device_count || !iface->device_info || !iface->device_open ||
      !iface->device_close || !iface->buffer_alloc || !iface->buffer_free ||
      !iface->buffer_upload || !iface->buffer_download || !iface->project || !iface->attend ||
      !iface->up || !iface->copy || !iface->synchronize) {
    add_problem(KQ_ERR_ABI, backend_name, "%s: refused: interface has a NULL name or function",
                path);
    dlclose(handle);
    return;
  }
  for (int b = 0; b < g_reg.n_backends; b++) {
    if (strcmp(g_reg.backends[b].iface->name, iface->name) == 0) {
      add_problem(KQ_ERR_ABI, backend_name, "%s: skipped: backend \"%s\" already loaded from %s",
                  path, iface->name, g_reg.backends[b].path);
      dlclose(handle);
      return;
    }
  }
  add_backend(iface, handle, path);
}

static int compare_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Loads every libkqsvd-NAME<suffix> of `dir`, in name order. */
static void scan_dir(const char *dir) {
  DIR *dp = opendir(dir);
  if (!dp) return;
  char *names[64];
  int n = 0;
  size_t plen = strlen(KQ_MODULE_PREFIX), slen = strlen(KQ_BACKEND_MODULE_SUFFIX);
  struct dirent *de;
  while ((de = readdir(dp)) && n < 64) {
    size_t len = strlen(de->d_name);
    if (len <= plen + slen || strncmp(de->d_name, KQ_MODULE_PREFIX, plen) != 0 ||
        strcmp(de->d_name + len - slen, KQ_BACKEND_MODULE_SUFFIX) != 0)
      continue;
    names[n] = strdup(de->d_name);
    if (names[n]) n++;
  }
  closedir(dp);
  qsort(names, (size_t)n, sizeof names[0], compare_names);
  for (int i = 0; i < n; i++) {
    char path[PATH_MAX], resolved[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    const char *use = realpath(path, resolved) ? resolved : path;
    char backend[32];
    size_t blen = strlen(names[i]) - plen - slen;
    if (blen >= sizeof backend) blen = sizeof backend - 1;
    memcpy(backend, names[i] + plen, blen);
    backend[blen] = '\0';
    load_module(use, backend);
    free(names[i]);
  }
}

static void registry_init(void) {
  add_backend(kq_cpu_backend_iface(), NULL, "(built in)");
  /* The folder that holds libkqsvd (or the program, when linked statically). */
  Dl_info dl;
  void *self;
  kq_status (*fn)(int *) = kq_device_count;
  memcpy(&self, &fn, sizeof self);
  if (dladdr(self, &dl) && dl.dli_fname) {
    char resolved[PATH_MAX];
    if (realpath(dl.dli_fname, resolved)) {
      char *slash = strrchr(resolved, '/');
      if (slash) {
        *slash = '\0';
        scan_dir(resolved[0] ? resolved : "/");
      }
    }
  }
  const char *env = getenv("KQSVD_BACKEND_PATH");
  if (env && *env) {
    char *copy = strdup(env);
    if (copy) {
      char *save = NULL;
      for (char *dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save))
        if (*dir) scan_dir(dir);
      free(copy);
    }
  }
}

/* Modules stay loaded for the life of the process: unloading GPU drivers from exit handlers is a
 * classic source of crashes at exit, and the handles cost nothing. */
static void registry_ensure(void) {
  pthread_once(&g_reg_once, registry_init);
}

int kq_backend_problem_count(void) {
  registry_ensure();
  return g_reg.n_problems;
}

const char *kq_backend_problem(int index) {
  registry_ensure();
  if (index < 0 || index >= g_reg.n_problems) return NULL;
  return g_reg.problems[index].message;
}

kq_status kq_backend_problem_status(int index) {
  registry_ensure();
  if (index < 0 || index >= g_reg.n_problems) return KQ_OK;
  return g_reg.problems[index].status;
}

kq_status kq_device_count(int *out_count) {
  if (!out_count)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_device_count: out_count is NULL");
  registry_ensure();
  *out_count = g_reg.n_devices;
  return KQ_OK;
}

kq_status kq_device_info_get(int index, kq_device_info *out_info) {
  if (!out_info)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_device_info_get: out_info is NULL");
  registry_ensure();
  if (index < 0 || index >= g_reg.n_devices)
    return kq_set_error(KQ_ERR_NOT_FOUND, "device index %d out of range (%d devices)", index,
                        g_reg.n_devices);
  *out_info = g_reg.devices[index].info;
  return KQ_OK;
}

kq_status kq_registry_backend(const char *backend, const kq_backend_iface **out_iface) {
  if (strcmp(backend, "cpu") == 0) {
    *out_iface = kq_cpu_backend_iface();
    return KQ_OK;
  }
  registry_ensure();
  for (int b = 0; b < g_reg.n_backends; b++)
    if (strcmp(g_reg.backends[b].iface->name, backend) == 0) {
      *out_iface = g_reg.backends[b].iface;
      return KQ_OK;
    }
  for (int p = 0; p < g_reg.n_problems; p++)
    if (strcmp(g_reg.problems[p].backend, backend) == 0)
      return kq_set_error(g_reg.problems[p].status, "backend %s: %s", backend,
                          g_reg.problems[p].message);
  return kq_set_error(KQ_ERR_NOT_FOUND,
                      "backend %s: no module loaded (built with it? see "
                      "'kqsvd devices')",
                      backend);
}

kq_status kq_registry_find(const char *name, const kq_backend_iface **out_iface,
                           int *out_local_index) {
  /* The built-in CPU device needs no module scan: a CPU-only user never pays
   * for starting GPU drivers (lavapipe, PoCL) it does not use. */
  if (strcmp(name, "cpu") == 0) {
    *out_iface = kq_cpu_backend_iface();
    *out_local_index = 0;
    return KQ_OK;
  }
  registry_ensure();
  for (int i = 0; i < g_reg.n_devices; i++) {
    if (strcmp(g_reg.devices[i].info.name, name) == 0) {
      *out_iface = g_reg.backends[g_reg.devices[i].backend].iface;
      *out_local_index = g_reg.devices[i].local;
      return KQ_OK;
    }
  }
  /* A name of a backend whose module was refused: report why. */
  size_t blen = strcspn(name, ":");
  for (int p = 0; p < g_reg.n_problems; p++) {
    const problem_rec *pr = &g_reg.problems[p];
    if (strlen(pr->backend) == blen && strncmp(pr->backend, name, blen) == 0)
      return kq_set_error(pr->status, "device \"%s\": %s", name, pr->message);
  }
  char list[512] = "";
  size_t used = 0;
  for (int i = 0; i < g_reg.n_devices && used < sizeof list; i++)
    used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "",
                             g_reg.devices[i].info.name);
  return kq_set_error(KQ_ERR_NOT_FOUND, "unknown device \"%s\" (available: %s)", name, list);
}
