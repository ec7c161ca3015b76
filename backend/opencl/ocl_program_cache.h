/*
 * ocl_program_cache.h — on-disk cache of compiled OpenCL program binaries.
 *
 * Directory: $KQSVD_CACHE_DIR, else $XDG_CACHE_HOME/kqsvd, else
 * $HOME/.cache/kqsvd (created on demand). One file per key,
 * "ocl-<16 hex digits of the key hash>.bin". The key is a text that names the
 * platform (name, version), the device (name, vendor, version), the driver
 * version, the build options and a hash of the source; a different value of
 * any of them is another entry.
 *
 * Entry layout (little-endian):
 *   char     magic[8]      "KQCLBIN1"
 *   uint32   version       KQ_OCL_CACHE_VERSION
 *   uint32   key_len       bytes of the key text
 *   uint64   key_hash      FNV-1a 64 of the key text
 *   uint64   payload_len   bytes of the program binary
 *   uint64   payload_sum   FNV-1a 64 of the program binary
 *   char     key[key_len]
 *   uint8    payload[payload_len]
 * An entry is used only if every field matches, the file is exactly that
 * long, and the driver accepts and builds the binary. Anything else is
 * rejected, the program is built from source and the entry rewritten
 * (temporary file + rename, so readers never see half an entry). Failing to
 * write the cache is not an error: the program still works.
 */
#ifndef KQ_OCL_PROGRAM_CACHE_H
#define KQ_OCL_PROGRAM_CACHE_H

#include <CL/cl.h>
#include <stddef.h>
#include <stdint.h>

#define KQ_OCL_CACHE_MAGIC "KQCLBIN1"
#define KQ_OCL_CACHE_VERSION 1u
#define KQ_OCL_CACHE_HEADER_BYTES 40u

typedef enum kq_ocl_prog_origin {
  KQ_OCL_PROG_CACHE_HIT = 0, /* loaded from a valid entry */
  KQ_OCL_PROG_BUILT = 1,     /* no entry: built from source */
  KQ_OCL_PROG_REBUILT = 2,   /* an entry existed but was rejected: built from source */
} kq_ocl_prog_origin;

typedef struct kq_ocl_prog_report {
  kq_ocl_prog_origin origin;
  char reject_reason[96]; /* why an existing entry was rejected, "" otherwise */
  int cache_written;      /* 1 if a new entry was written */
  char path[1024];        /* the entry's path, "" without a cache directory */
  char build_log[2048];   /* compiler log when building from source failed */
} kq_ocl_prog_report;

/* Returns a built program for `device` from `source` with `options`, through
 * the cache. On CL_SUCCESS *out_program is built and owned by the caller.
 * On failure returns the OpenCL error of the source build
 * (CL_BUILD_PROGRAM_FAILURE with report->build_log filled, or another code).
 * report must not be NULL. */
cl_int kq_ocl_program_get(cl_context context, cl_device_id device, const char *source,
                          const char *options, cl_program *out_program, kq_ocl_prog_report *report);

#endif /* KQ_OCL_PROGRAM_CACHE_H */
