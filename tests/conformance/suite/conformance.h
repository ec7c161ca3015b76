/*
 * conformance.h — run the conformance case table (cases.h) on a device and
 * compare every output with the float64 reference (reference.h) by NMSE.
 * Test code, linked into the CLI (`kqsvd conformance`), never into libkqsvd.
 */
#ifndef KQC_CONFORMANCE_H
#define KQC_CONFORMANCE_H

#include <stdint.h>

#include "cases.h"
#include "kqsvd.h"

typedef struct kqc_result {
  char name[128];        /* kqc_case_name() */
  double nmse;           /* worst NMSE of the case's checks; NaN if not computed */
  double threshold;      /* kqc_case_threshold(); 0 for error cases */
  int pass;              /* 1 if the case passed */
  int skipped;           /* 1: F16 storage on a device that reports none (neither pass nor fail) */
  int unsupported;       /* 1: a quantized / JOINT case (kqc_case_uses_v2) the device answered
                            with KQ_ERR_UNSUPPORTED (neither pass nor fail, counted apart) */
  double seconds;        /* wall time of the case: device work and reference */
  double device_seconds; /* wall time inside kq_cache_append and kq_cache_attend */
  char error[512];       /* why it failed (status and kq_last_error), or "" */
} kqc_result;

/* Runs one case on an open device. Never fails as a call: every problem
 * (including allocation failure) is a failed result. */
void kqc_run_case(kq_device *device, const kqc_case *c, kqc_result *out);

/* Indices of the cases whose name matches `filter` (POSIX extended regex,
 * unanchored; NULL or "" matches all). indices must hold as many entries as
 * the table; *out_n receives the count. Returns 0, or -1 with a message in
 * err[err_size] for an invalid expression. */
int kqc_select(const char *filter, int *indices, int *out_n, char *err, size_t err_size);

/* Opens device `device_name`, runs the cases `indices[0..n)` in order and
 * fills results[0..n). progress (may be NULL) is called after each case.
 * Returns KQ_OK, or the status of kq_device_create (then no results). */
typedef void (*kqc_progress_fn)(void *user, const kqc_result *result, int done, int total);
kq_status kqc_run(const char *device_name, const int *indices, int n, kqc_result *results,
                  kqc_progress_fn progress, void *user);

/* Runs the cases `indices[0..n)` (indices NULL: the first n cases of the
 * table, at most all of them) on an already open device, such as one made
 * from an engine's own handles, and fills results[0..n). The device stays
 * open; progress as for kqc_run. */
void kqc_run_all_on_device(kq_device *device, const int *indices, int n, kqc_result *results,
                           kqc_progress_fn progress, void *user);

#endif /* KQC_CONFORMANCE_H */
