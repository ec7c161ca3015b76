/*
 * test_opencl_program_cache.c — the on-disk program-binary cache: a first
 * build writes a well-formed entry, a second load uses it, and a corrupt,
 * truncated or stale entry is detected, rebuilt from source and rewritten,
 * never trusted. Exits with 77 (SKIPPED) without an OpenCL device.
 */
#include <CL/cl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "ocl_program_cache.h"

static cl_context ctx;
static cl_device_id device;
static cl_command_queue queue;
static char cache_dir[1024];

static const char *source = "__kernel void add_k(__global int *x, int k) {\n"
                            "  x[get_global_id(0)] += k + KQ_TEST_BIAS;\n}\n";
static const char *options = "-DKQ_TEST_BIAS=3";

/* FNV-1a 64, written from its definition (offset basis, prime) for the test. */
static uint64_t fnv(const unsigned char *p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}
static uint64_t le64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | p[i];
  return v;
}
static uint32_t le32(const unsigned char *p) {
  return (uint32_t)le64(p) & 0xffffffffu;
}

static unsigned char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = malloc((size_t)len + 1);
  if (fread(b, 1, (size_t)len, f) != (size_t)len) len = 0;
  fclose(f);
  *n = (size_t)len;
  return b;
}
static void spit(const char *path, const unsigned char *b, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(b, 1, n, f), n);
  fclose(f);
}

/* Loads through the cache and checks the program really runs (x += 5 + 3). */
static kq_ocl_prog_report load(void) {
  kq_ocl_prog_report rep;
  cl_program prog = NULL;
  assert_int_equal(kq_ocl_program_get(ctx, device, source, options, &prog, &rep), CL_SUCCESS);
  cl_int err;
  cl_kernel k = clCreateKernel(prog, "add_k", &err);
  assert_int_equal(err, CL_SUCCESS);
  int x[4] = {1, 2, 3, 4}, five = 5;
  cl_mem m = clCreateBuffer(ctx, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, sizeof x, x, &err);
  assert_int_equal(err, CL_SUCCESS);
  clSetKernelArg(k, 0, sizeof m, &m);
  clSetKernelArg(k, 1, sizeof five, &five);
  size_t global = 4;
  assert_int_equal(clEnqueueNDRangeKernel(queue, k, 1, NULL, &global, NULL, 0, NULL, NULL),
                   CL_SUCCESS);
  assert_int_equal(clEnqueueReadBuffer(queue, m, CL_TRUE, 0, sizeof x, x, 0, NULL, NULL),
                   CL_SUCCESS);
  for (int i = 0; i < 4; ++i) assert_int_equal(x[i], i + 1 + 8);
  clReleaseMemObject(m);
  clReleaseKernel(k);
  clReleaseProgram(prog);
  return rep;
}

/* The entry on disk is self-consistent: header fields, length and checksum. */
static void assert_entry_valid(const char *path) {
  size_t n = 0;
  unsigned char *b = slurp(path, &n);
  assert_non_null(b);
  assert_true(n > KQ_OCL_CACHE_HEADER_BYTES);
  assert_memory_equal(b, "KQCLBIN1", 8);
  assert_int_equal(le32(b + 8), KQ_OCL_CACHE_VERSION);
  uint32_t key_len = le32(b + 12);
  uint64_t plen = le64(b + 24);
  assert_int_equal(n, KQ_OCL_CACHE_HEADER_BYTES + key_len + plen);
  assert_true(le64(b + 16) == fnv(b + KQ_OCL_CACHE_HEADER_BYTES, key_len));
  assert_true(le64(b + 32) == fnv(b + KQ_OCL_CACHE_HEADER_BYTES + key_len, plen));
  assert_non_null(memmem(b + KQ_OCL_CACHE_HEADER_BYTES, key_len, "driver=", 7));
  free(b);
}

static kq_ocl_prog_report fresh_entry(void) {
  kq_ocl_prog_report rep = load();
  if (rep.origin != KQ_OCL_PROG_CACHE_HIT) rep = load();
  assert_int_equal(rep.origin, KQ_OCL_PROG_CACHE_HIT);
  return rep;
}

static void test_first_build_writes_valid_entry_then_hits(void **s) {
  (void)s;
  kq_ocl_prog_report rep = load();
  assert_int_equal(rep.origin, KQ_OCL_PROG_BUILT);
  assert_int_equal(rep.cache_written, 1);
  assert_true(strncmp(rep.path, cache_dir, strlen(cache_dir)) == 0);
  assert_entry_valid(rep.path);
  rep = load();
  assert_int_equal(rep.origin, KQ_OCL_PROG_CACHE_HIT);
  assert_int_equal(rep.cache_written, 0);
}

/* Corrupts the entry with `edit`, then expects a rebuild for `reason` and a
 * rewritten valid entry that the next load uses. */
static void corrupt_and_expect(void (*edit)(unsigned char *b, size_t *n), const char *reason) {
  kq_ocl_prog_report rep = fresh_entry();
  size_t n = 0;
  unsigned char *b = slurp(rep.path, &n);
  assert_non_null(b);
  edit(b, &n);
  spit(rep.path, b, n);
  free(b);
  kq_ocl_prog_report again = load();
  assert_int_equal(again.origin, KQ_OCL_PROG_REBUILT);
  if (!strstr(again.reject_reason, reason))
    fail_msg("reject reason '%s' does not mention '%s'", again.reject_reason, reason);
  assert_int_equal(again.cache_written, 1);
  assert_entry_valid(again.path);
  assert_int_equal(load().origin, KQ_OCL_PROG_CACHE_HIT);
}

static void flip_payload(unsigned char *b, size_t *n) {
  b[*n - 17] ^= 0x5a;
}
static void truncate_half(unsigned char *b, size_t *n) {
  (void)b;
  *n /= 2;
}
static void truncate_header(unsigned char *b, size_t *n) {
  (void)b;
  *n = 10;
}
static void bad_magic(unsigned char *b, size_t *n) {
  (void)n;
  b[0] = 'X';
}
/* A stale entry: the driver version recorded in the key is not ours. */
static void change_driver(unsigned char *b, size_t *n) {
  unsigned char *p = memmem(b, *n, "driver=", 7);
  assert_non_null(p);
  p[7] ^= 0x01;
}
/* Well-formed entry (consistent checksum) whose payload is not a binary. */
static void garbage_payload(unsigned char *b, size_t *n) {
  uint32_t key_len = le32(b + 12);
  unsigned char *p = b + KQ_OCL_CACHE_HEADER_BYTES + key_len;
  size_t plen = *n - KQ_OCL_CACHE_HEADER_BYTES - key_len;
  for (size_t i = 0; i < plen; ++i) p[i] = (unsigned char)(i * 131 + 17);
  uint64_t sum = fnv(p, plen);
  for (int i = 0; i < 8; ++i) b[32 + i] = (unsigned char)(sum >> (8 * i));
}

static void test_flipped_payload_byte_is_rebuilt(void **s) {
  (void)s;
  corrupt_and_expect(flip_payload, "checksum");
}
static void test_truncated_entry_is_rebuilt(void **s) {
  (void)s;
  corrupt_and_expect(truncate_half, "truncated");
  corrupt_and_expect(truncate_header, "truncated");
}
static void test_bad_magic_is_rebuilt(void **s) {
  (void)s;
  corrupt_and_expect(bad_magic, "magic");
}
static void test_stale_driver_in_key_is_rebuilt(void **s) {
  (void)s;
  corrupt_and_expect(change_driver, "key");
}
static void test_binary_the_driver_rejects_is_rebuilt(void **s) {
  (void)s;
  corrupt_and_expect(garbage_payload, "rejected");
}

static void test_other_build_options_use_another_entry(void **s) {
  (void)s;
  kq_ocl_prog_report a = fresh_entry(), b;
  cl_program prog = NULL;
  assert_int_equal(kq_ocl_program_get(ctx, device, source, "-DKQ_TEST_BIAS=4", &prog, &b),
                   CL_SUCCESS);
  clReleaseProgram(prog);
  assert_string_not_equal(a.path, b.path);
  assert_true(b.origin == KQ_OCL_PROG_BUILT || b.origin == KQ_OCL_PROG_CACHE_HIT);
}

static void test_source_errors_return_build_log(void **s) {
  (void)s;
  kq_ocl_prog_report rep;
  cl_program prog = NULL;
  cl_int err = kq_ocl_program_get(ctx, device, "__kernel void f( { }", "", &prog, &rep);
  assert_int_equal(err, CL_BUILD_PROGRAM_FAILURE);
  assert_null(prog);
}

int main(void) {
  cl_platform_id plat;
  cl_uint n = 0;
  if (clGetPlatformIDs(1, &plat, &n) != CL_SUCCESS || n == 0 ||
      clGetDeviceIDs(plat, CL_DEVICE_TYPE_ALL, 1, &device, &n) != CL_SUCCESS || n == 0) {
    printf("SKIPPED: no OpenCL device\n");
    return 77;
  }
  cl_int err;
  ctx = clCreateContext(NULL, 1, &device, NULL, NULL, &err);
  if (err != CL_SUCCESS) return 1;
  queue = clCreateCommandQueue(ctx, device, 0, &err);
  if (err != CL_SUCCESS) return 1;
  snprintf(cache_dir, sizeof cache_dir, "%s/progcache-XXXXXX", KQ_OCL_TEST_TMP);
  mkdir(KQ_OCL_TEST_TMP, 0755);
  if (!mkdtemp(cache_dir)) return 1;
  setenv("KQSVD_CACHE_DIR", cache_dir, 1);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_first_build_writes_valid_entry_then_hits),
      cmocka_unit_test(test_flipped_payload_byte_is_rebuilt),
      cmocka_unit_test(test_truncated_entry_is_rebuilt),
      cmocka_unit_test(test_bad_magic_is_rebuilt),
      cmocka_unit_test(test_stale_driver_in_key_is_rebuilt),
      cmocka_unit_test(test_binary_the_driver_rejects_is_rebuilt),
      cmocka_unit_test(test_other_build_options_use_another_entry),
      cmocka_unit_test(test_source_errors_return_build_log),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", cache_dir);
  if (system(cmd) != 0) rc = rc ? rc : 0;
  clReleaseCommandQueue(queue);
  clReleaseContext(ctx);
  return rc;
}
