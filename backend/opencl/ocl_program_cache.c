/*
 * ocl_program_cache.c — the on-disk program-binary cache (see ocl_program_cache.h).
 */
#include "ocl_program_cache.h"
#include "../common/kq_kernel_cache.h"
#include "kqsvd_backend.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Entries larger than this are rejected without reading them. */
#define KQ_OCL_CACHE_MAX_BYTES ((size_t)256 << 20)

static void info_str(cl_device_id dev, cl_device_info what, char *out, size_t size) {
  out[0] = '\0';
  if (clGetDeviceInfo(dev, what, size, out, NULL) != CL_SUCCESS) out[0] = '\0';
  out[size - 1] = '\0';
}

/* The key text: everything that makes a binary valid for this build. */
static int make_key(cl_device_id dev, const char *source, const char *options, char *key,
                    size_t size) {
  char pname[256] = "", pver[256] = "", dname[256], dvendor[256], dver[256], drv[256];
  cl_platform_id plat = NULL;
  if (clGetDeviceInfo(dev, CL_DEVICE_PLATFORM, sizeof plat, &plat, NULL) == CL_SUCCESS) {
    if (clGetPlatformInfo(plat, CL_PLATFORM_NAME, sizeof pname, pname, NULL) != CL_SUCCESS)
      pname[0] = '\0';
    if (clGetPlatformInfo(plat, CL_PLATFORM_VERSION, sizeof pver, pver, NULL) != CL_SUCCESS)
      pver[0] = '\0';
    pname[sizeof pname - 1] = pver[sizeof pver - 1] = '\0';
  }
  info_str(dev, CL_DEVICE_NAME, dname, sizeof dname);
  info_str(dev, CL_DEVICE_VENDOR, dvendor, sizeof dvendor);
  info_str(dev, CL_DEVICE_VERSION, dver, sizeof dver);
  info_str(dev, CL_DRIVER_VERSION, drv, sizeof drv);
  unsigned long long src_hash = kq_fnv1a64(source, strlen(source));
  int n = snprintf(key, size,
                   "kqsvd-opencl-program v%u\nplatform=%s\nplatform_version=%s\ndevice=%s\n"
                   "vendor=%s\ndevice_version=%s\ndriver=%s\noptions=%s\nsource=%016llx:%zu\n",
                   KQ_OCL_CACHE_VERSION, pname, pver, dname, dvendor, dver, drv,
                   options ? options : "", src_hash, strlen(source));
  return n > 0 && (size_t)n < size;
}

/* Reads a whole file; NULL if absent or too large. */
static unsigned char *read_file(const char *path, size_t *out_n, int *out_absent) {
  *out_absent = 0;
  FILE *f = fopen(path, "rb");
  if (!f) {
    *out_absent = errno == ENOENT;
    return NULL;
  }
  unsigned char *buf = NULL;
  long len = -1;
  if (fseek(f, 0, SEEK_END) == 0) len = ftell(f);
  if (len >= 0 && (size_t)len <= KQ_OCL_CACHE_MAX_BYTES && fseek(f, 0, SEEK_SET) == 0) {
    buf = malloc((size_t)len + 1);
    if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) {
      free(buf);
      buf = NULL;
    }
  }
  fclose(f);
  *out_n = (size_t)(len < 0 ? 0 : len);
  return buf;
}

/* Checks an entry against `key`; on success points *payload into buf. */
static const char *check_entry(const unsigned char *buf, size_t n, const char *key,
                               const unsigned char **payload, size_t *payload_len) {
  size_t key_len = strlen(key);
  if (n < KQ_OCL_CACHE_HEADER_BYTES) return "truncated header";
  if (memcmp(buf, KQ_OCL_CACHE_MAGIC, 8) != 0) return "bad magic";
  if (kq_get_le32(buf + 8) != KQ_OCL_CACHE_VERSION) return "format version mismatch";
  if (kq_get_le32(buf + 12) != key_len) return "key length mismatch (stale entry)";
  if (kq_get_le64(buf + 16) != kq_fnv1a64(key, key_len)) return "key hash mismatch";
  uint64_t plen = kq_get_le64(buf + 24);
  if (plen == 0 || plen > n || n - KQ_OCL_CACHE_HEADER_BYTES - key_len != plen)
    return "payload length mismatch (truncated)";
  if (memcmp(buf + KQ_OCL_CACHE_HEADER_BYTES, key, key_len) != 0)
    return "key mismatch (stale entry)";
  const unsigned char *p = buf + KQ_OCL_CACHE_HEADER_BYTES + key_len;
  if (kq_get_le64(buf + 32) != kq_fnv1a64(p, (size_t)plen)) return "payload checksum mismatch";
  *payload = p;
  *payload_len = (size_t)plen;
  return NULL;
}

/* Writes the entry atomically; returns 1 on success. */
static int write_entry(const char *dir, const char *path, const char *key, const unsigned char *bin,
                       size_t bin_len) {
  if (kq_make_dirs(dir) != 0) return 0;
  char tmp[1100];
  if (snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path) >= (int)sizeof tmp) return 0;
  int fd = mkstemp(tmp);
  if (fd < 0) return 0;
  size_t key_len = strlen(key);
  unsigned char head[KQ_OCL_CACHE_HEADER_BYTES];
  memcpy(head, KQ_OCL_CACHE_MAGIC, 8);
  kq_put_le32(head + 8, KQ_OCL_CACHE_VERSION);
  kq_put_le32(head + 12, (uint32_t)key_len);
  kq_put_le64(head + 16, kq_fnv1a64(key, key_len));
  kq_put_le64(head + 24, bin_len);
  kq_put_le64(head + 32, kq_fnv1a64(bin, bin_len));
  FILE *f = fdopen(fd, "wb");
  if (!f) {
    close(fd);
    unlink(tmp);
    return 0;
  }
  int ok = fwrite(head, 1, sizeof head, f) == sizeof head &&
           fwrite(key, 1, key_len, f) == key_len && fwrite(bin, 1, bin_len, f) == bin_len;
  ok = fflush(f) == 0 && ok;
  ok = fsync(fileno(f)) == 0 && ok;
  ok = fclose(f) == 0 && ok;
  if (!ok || rename(tmp, path) != 0) {
    unlink(tmp);
    return 0;
  }
  return 1;
}

static cl_int build_from_source(cl_context ctx, cl_device_id dev, const char *source,
                                const char *options, cl_program *out, kq_ocl_prog_report *report) {
  cl_int err;
  cl_program prog = clCreateProgramWithSource(ctx, 1, &source, NULL, &err);
  if (err != CL_SUCCESS) return err;
  err = clBuildProgram(prog, 1, &dev, options, NULL, NULL);
  if (err != CL_SUCCESS) {
    size_t n = 0;
    report->build_log[0] = '\0';
    if (clGetProgramBuildInfo(prog, dev, CL_PROGRAM_BUILD_LOG, sizeof report->build_log,
                              report->build_log, &n) != CL_SUCCESS)
      report->build_log[0] = '\0';
    report->build_log[sizeof report->build_log - 1] = '\0';
    clReleaseProgram(prog);
    return err;
  }
  *out = prog;
  return CL_SUCCESS;
}

/* The built program's binary for its single device (malloc'd), or NULL. */
static unsigned char *program_binary(cl_program prog, size_t *out_len) {
  size_t len = 0;
  if (clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof len, &len, NULL) != CL_SUCCESS ||
      len == 0)
    return NULL;
  unsigned char *bin = malloc(len);
  if (!bin) return NULL;
  if (clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof bin, &bin, NULL) != CL_SUCCESS) {
    free(bin);
    return NULL;
  }
  *out_len = len;
  return bin;
}

cl_int kq_ocl_program_get(cl_context context, cl_device_id device, const char *source,
                          const char *options, cl_program *out_program,
                          kq_ocl_prog_report *report) {
  memset(report, 0, sizeof *report);
  report->origin = KQ_OCL_PROG_BUILT;
  char dir[900];
  enum { KEY_MAX = 8192 };
  char *keybuf = malloc(KEY_MAX);
  int have_dir = kq_kernel_cache_dir(dir, sizeof dir);
  int have_key = keybuf && make_key(device, source, options, keybuf, KEY_MAX);
  if (have_dir && have_key) {
    unsigned long long h = kq_fnv1a64(keybuf, strlen(keybuf));
    snprintf(report->path, sizeof report->path, "%s/ocl-%016llx.bin", dir, h);
    size_t n = 0;
    int absent = 0;
    unsigned char *buf = read_file(report->path, &n, &absent);
    if (!buf && !absent)
      snprintf(report->reject_reason, sizeof report->reject_reason, "unreadable entry");
    if (buf) {
      const unsigned char *payload = NULL;
      size_t plen = 0;
      const char *why = check_entry(buf, n, keybuf, &payload, &plen);
      if (!why) {
        cl_int err, bin_status = CL_SUCCESS;
        cl_program prog =
            clCreateProgramWithBinary(context, 1, &device, &plen, &payload, &bin_status, &err);
        if (err == CL_SUCCESS && bin_status == CL_SUCCESS) {
          err = clBuildProgram(prog, 1, &device, options, NULL, NULL);
          if (err == CL_SUCCESS) {
            free(buf);
            free(keybuf);
            report->origin = KQ_OCL_PROG_CACHE_HIT;
            *out_program = prog;
            return CL_SUCCESS;
          }
        }
        if (prog) clReleaseProgram(prog);
        why = "binary rejected by the driver";
      }
      snprintf(report->reject_reason, sizeof report->reject_reason, "%s", why);
      free(buf);
    }
    if (report->reject_reason[0]) report->origin = KQ_OCL_PROG_REBUILT;
  }
  cl_program prog = NULL;
  cl_int err = build_from_source(context, device, source, options, &prog, report);
  if (err != CL_SUCCESS) {
    free(keybuf);
    return err;
  }
  if (have_dir && have_key) {
    size_t len = 0;
    unsigned char *bin = program_binary(prog, &len);
    if (bin) report->cache_written = write_entry(dir, report->path, keybuf, bin, len);
    free(bin);
  }
  free(keybuf);
  *out_program = prog;
  return CL_SUCCESS;
}
