/*
 * test_check.h — the tests' check of a library call: fails the running
 * cmocka test with the library's own message (kq_last_error) when the call
 * does not return KQ_OK; and the probe of a test program's device.
 * Include after cmocka.h (fail_msg).
 */
#ifndef KQ_TEST_CHECK_H
#define KQ_TEST_CHECK_H

#include <stdio.h>

#include "kqsvd.h"

#define KQ_TEST_OK(expr)                                                                           \
  do {                                                                                             \
    kq_status st_ = (expr);                                                                        \
    if (st_ != KQ_OK) fail_msg("%s -> %d: %s", #expr, (int)st_, kq_last_error());                  \
  } while (0)

/* 1 when device `name` opens (it is closed again at once); else 0, after
 * printing the SKIP line: the caller then exits 77, which ctest reports as
 * skipped (SKIP_RETURN_CODE), never as a pass. */
static inline int kq_test_device_present(const char *name) {
  kq_device *probe = NULL;
  if (kq_device_create(name, &probe) != KQ_OK) {
    printf("SKIP: device %s: %s\n", name, kq_last_error());
    return 0;
  }
  kq_device_destroy(probe);
  return 1;
}

#endif /* KQ_TEST_CHECK_H */
