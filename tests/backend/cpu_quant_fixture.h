/*
 * cpu_quant_fixture.h — the fixture of the CPU backend tests that drive its
 * kq_backend_iface directly (test_cpu_quant.c, test_cpu_quant_project.c):
 * one opened cpu device per test program, buffers with optional contents,
 * and a status check that fails with the library's message. Header-only;
 * include after <cmocka.h>.
 */
#ifndef KQ_TEST_CPU_QUANT_FIXTURE_H
#define KQ_TEST_CPU_QUANT_FIXTURE_H

#include <stddef.h>

#include "kq_cpu_backend.h"
#include "kqsvd.h"

static const kq_backend_iface *g_if;
static kq_bdevice *g_dev;

/* Group setup / teardown: g_dev is device 0 of the CPU backend. */
static int setup(void **state) {
  (void)state;
  g_if = kq_cpu_backend_iface();
  return g_if->device_open(0, &g_dev) == KQ_OK ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  g_if->device_close(g_dev);
  return 0;
}

/* A buffer of `bytes` (4 when 0) on g_dev, holding `data` unless NULL. */
static kq_buffer *buffer_with(size_t bytes, const void *data) {
  kq_buffer *b = NULL;
  assert_int_equal(g_if->buffer_alloc(g_dev, bytes ? bytes : 4, &b), KQ_OK);
  if (data) assert_int_equal(g_if->buffer_upload(g_dev, b, 0, data, bytes), KQ_OK);
  return b;
}

/* Fails the test with the library's message unless st is KQ_OK. */
static void expect_ok(kq_status st) {
  if (st != KQ_OK) fail_msg("status %d: %s", (int)st, kq_last_error());
}

#endif /* KQ_TEST_CPU_QUANT_FIXTURE_H */
