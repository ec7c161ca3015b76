/*
 * test_opencl_external.c — kqsvd on the test's own OpenCL context, device and
 * queue (kqsvd_opencl.h, issue 15): the conformance table passes on that
 * kq_device; the test's own cl_mem buffers, imported without a copy (whole
 * buffers and aligned ranges of one pool), carry queries, keys, values and
 * outputs of device-resident calls that equal the host-pointer calls; after
 * kq_device_destroy the context and queue still work and hold no reference
 * of kqsvd's; an out-of-order queue, a foreign queue, a misaligned or
 * out-of-range import and a cl_mem of another context are refused, with
 * messages naming the device "opencl:external".
 *
 * Exit 77 (skipped) without an OpenCL device.
 */
#include <CL/cl.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/test_rng.h"
#include "conformance.h"
#include "kqsvd.h"
#include "kqsvd_opencl.h"

enum { NL = 2, H = 4, HK = 2, D = 16, RK = 10, RV = 12, NS = 2, CAP = 32, STEPS = 4 };

#define OK(call)                                                                                   \
  do {                                                                                             \
    kq_status st_ = (call);                                                                        \
    if (st_ != KQ_OK) fail_msg("%s: %s", #call, kq_last_error());                                  \
  } while (0)

#define CL_OK(call)                                                                                \
  do {                                                                                             \
    cl_int e_ = (call);                                                                            \
    if (e_ != CL_SUCCESS) fail_msg("%s: OpenCL error %d", #call, (int)e_);                         \
  } while (0)

/* The engine's handles (the test's own). */
static cl_platform_id g_platform;
static cl_device_id g_cl_device;
static cl_context g_context;
static cl_command_queue g_queue;

static cl_uint context_refs(cl_context c) {
  cl_uint n = 0;
  CL_OK(clGetContextInfo(c, CL_CONTEXT_REFERENCE_COUNT, sizeof n, &n, NULL));
  return n;
}

static cl_uint queue_refs(cl_command_queue q) {
  cl_uint n = 0;
  CL_OK(clGetCommandQueueInfo(q, CL_QUEUE_REFERENCE_COUNT, sizeof n, &n, NULL));
  return n;
}

static cl_uint mem_refs(cl_mem m) {
  cl_uint n = 0;
  CL_OK(clGetMemObjectInfo(m, CL_MEM_REFERENCE_COUNT, sizeof n, &n, NULL));
  return n;
}

static kq_device *open_external(void) {
  kq_opencl_device_handles h = {
      .struct_size = sizeof h, .context = g_context, .device = g_cl_device, .queue = g_queue};
  kq_device *dev = NULL;
  OK(kq_device_create_opencl(&h, &dev));
  kq_device_info info;
  OK(kq_device_get_info(dev, &info));
  assert_string_equal(info.name, "opencl:external");
  assert_string_equal(info.backend, "opencl");
  return dev;
}

static void conformance_passes_on_external_device(void **state) {
  (void)state;
  kq_device *dev = open_external();
  int count = 0;
  kqc_cases(&count);
  kqc_result *res = calloc((size_t)count, sizeof *res);
  assert_non_null(res);
  kqc_run_all_on_device(dev, NULL, count, res, NULL, NULL);
  int passed = 0, skipped = 0, failed = 0;
  for (int i = 0; i < count; i++) {
    if (res[i].pass) {
      passed++;
    } else if (res[i].skipped) {
      skipped++;
    } else {
      failed++;
      fprintf(stderr, "FAIL %s: nmse %g (threshold %g) %s%s\n", res[i].name, res[i].nmse,
              res[i].threshold, res[i].unsupported ? "unsupported " : "", res[i].error);
    }
  }
  printf("opencl:external: %d cases, %d passed, %d skipped, %d failed\n", count, passed, skipped,
         failed);
  free(res);
  kq_device_destroy(dev);
  assert_int_equal(failed, 0);
  assert_true(passed > 0);
}

static void fill(float *x, size_t n, uint64_t seed) {
  uint64_t rng = seed * 0x9E3779B97F4A7C15ULL + 1;
  test_rng_fill(x, n, &rng, 1.0f);
}

static kq_projections *projections(void) {
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = NL,
                              .n_heads = H,
                              .n_kv_heads = HK,
                              .head_dim = D,
                              .rope = KQ_ROPE_PRE,
                              .rope_layout = KQ_ROPE_HALVES,
                              .rope_theta = 10000.0f};
  int32_t rk[NL] = {RK, RK}, rv[NL] = {RV, RV};
  kq_projections *p = NULL;
  OK(kq_projections_create(&info, rk, rv, &p));
  for (int l = 0; l < NL; l++) {
    kq_projection_layer v;
    OK(kq_projections_layer(p, l, &v));
    fill(v.key_down, HK * D * RK, 10 + (uint64_t)l);
    fill(v.query_down, HK * D * RK, 20 + (uint64_t)l);
    fill(v.value_down, HK * D * RV, 30 + (uint64_t)l);
    fill(v.value_up, HK * D * RV, 40 + (uint64_t)l);
  }
  return p;
}

static double rel_diff(const float *a, const float *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    den += (double)b[i] * b[i];
  }
  return sqrt(num / (den > 0 ? den : 1));
}

static size_t round_up(size_t x, size_t a) {
  return (x + a - 1) / a * a;
}

/* A prefill of 3 tokens per sequence, then decode steps, with the engine's
 * cl_mem buffers: keys and values are whole buffers, queries and outputs
 * aligned ranges of one pool. The engine writes and reads them with its own
 * commands on its own queue, ordered with kqsvd's work by the in-order queue. */
static void imported_buffers_equal_host_calls(void **state) {
  (void)state;
  kq_device *dev = open_external();
  kq_projections *p = projections();
  kq_cache_params cp = kq_cache_default_params();
  cp.capacity = CAP;
  cp.n_seqs = NS;
  kq_cache *ref = NULL, *c = NULL;
  OK(kq_cache_create(dev, p, &cp, &ref));
  OK(kq_cache_create(dev, p, &cp, &c));

  enum { ROWS = 3 * NS }; /* the most rows of one call */
  const size_t qbytes = (size_t)NL * ROWS * H * D * sizeof(float);
  const size_t kvbytes = (size_t)NL * ROWS * HK * D * sizeof(float);
  cl_uint align_bits = 0;
  CL_OK(clGetDeviceInfo(g_cl_device, CL_DEVICE_MEM_BASE_ADDR_ALIGN, sizeof align_bits, &align_bits,
                        NULL));
  const size_t align = align_bits >= 8 ? align_bits / 8 : 1;
  /* pool: [guard | queries | guard | outputs]; the ranges start at aligned,
   * non-zero offsets */
  const size_t q_off = align, o_off = round_up(q_off + qbytes + 1, align);
  const size_t pool_bytes = o_off + qbytes;
  cl_int err;
  cl_mem pool = clCreateBuffer(g_context, CL_MEM_READ_WRITE, pool_bytes, NULL, &err);
  CL_OK(err);
  cl_mem mk = clCreateBuffer(g_context, CL_MEM_READ_WRITE, kvbytes, NULL, &err);
  CL_OK(err);
  cl_mem mv = clCreateBuffer(g_context, CL_MEM_READ_WRITE, kvbytes, NULL, &err);
  CL_OK(err);
  const cl_uint mk_refs = mem_refs(mk);

  kq_device_buffer *bq = NULL, *bo = NULL, *bk = NULL, *bv = NULL;
  kq_opencl_buffer nq = {.struct_size = sizeof nq, .mem = pool, .offset = q_off, .size = qbytes};
  kq_opencl_buffer no = {.struct_size = sizeof no, .mem = pool, .offset = o_off, .size = qbytes};
  kq_opencl_buffer nk = {.struct_size = sizeof nk, .mem = mk, .offset = 0, .size = kvbytes};
  kq_opencl_buffer nv = {.struct_size = sizeof nv, .mem = mv, .offset = 0, .size = kvbytes};
  OK(kq_device_buffer_import_opencl(dev, &nq, &bq));
  OK(kq_device_buffer_import_opencl(dev, &no, &bo));
  OK(kq_device_buffer_import_opencl(dev, &nk, &bk));
  OK(kq_device_buffer_import_opencl(dev, &nv, &bv));
  assert_int_equal(kq_device_buffer_size(bq), qbytes);
  assert_int_equal(kq_device_buffer_size(bk), kvbytes);
  assert_int_equal(mem_refs(mk), mk_refs + 1); /* the wrapper holds one reference */

  /* guards the device calls must not touch */
  const size_t guard_bytes = o_off - (q_off + qbytes);
  unsigned char *guard = malloc(guard_bytes), *back = malloc(guard_bytes);
  assert_non_null(guard);
  assert_non_null(back);
  memset(guard, 0xA5, guard_bytes);
  CL_OK(clEnqueueWriteBuffer(g_queue, pool, CL_TRUE, q_off + qbytes, guard_bytes, guard, 0, NULL,
                             NULL));

  static float q[NL][ROWS * H * D], k[NL][ROWS * HK * D], v[NL][ROWS * HK * D];
  static float out_host[NL][ROWS * H * D], out_dev[NL][ROWS * H * D];
  /* counters of the device-resident part of the steps after the first (the
   * host-pointer calls of `ref` run on the same device and are left out) */
  uint64_t allocations = 0, uploaded = 0, downloaded = 0;
  for (int step = 0; step <= STEPS; step++) {
    const int m = step == 0 ? 3 : 1; /* tokens per sequence */
    kq_seq_span spans[NS] = {{.seq = 1, .n_tokens = m}, {.seq = 0, .n_tokens = m}};
    const size_t rows = (size_t)m * NS;
    fill(q[0], sizeof q / sizeof(float), 1000 + (uint64_t)step);
    fill(k[0], sizeof k / sizeof(float), 2000 + (uint64_t)step);
    fill(v[0], sizeof v / sizeof(float), 3000 + (uint64_t)step);
    for (int l = 0; l < NL; l++) {
      OK(kq_cache_append_batch(ref, l, NS, spans, k[l], v[l]));
      OK(kq_cache_attend_batch(ref, l, NS, spans, q[l], KQ_OUTPUT_FULL, out_host[l]));
    }
    kq_device_stats before = {.struct_size = sizeof before}, after = before;
    OK(kq_device_get_stats(dev, &before));
    /* the engine's own uploads on its queue, non-blocking */
    CL_OK(clEnqueueWriteBuffer(g_queue, pool, CL_FALSE, q_off, sizeof q, q, 0, NULL, NULL));
    CL_OK(clEnqueueWriteBuffer(g_queue, mk, CL_FALSE, 0, sizeof k, k, 0, NULL, NULL));
    CL_OK(clEnqueueWriteBuffer(g_queue, mv, CL_FALSE, 0, sizeof v, v, 0, NULL, NULL));
    for (int l = 0; l < NL; l++) {
      OK(kq_cache_append_device(c, l, NS, spans, bk, sizeof k[0] * (size_t)l, bv,
                                sizeof v[0] * (size_t)l));
      OK(kq_cache_attend_device(c, l, NS, spans, bq, sizeof q[0] * (size_t)l, KQ_OUTPUT_FULL, bo,
                                sizeof out_dev[0] * (size_t)l));
    }
    /* the engine's own blocking read, after kqsvd's work on the same queue */
    memset(out_dev, 0, sizeof out_dev);
    CL_OK(
        clEnqueueReadBuffer(g_queue, pool, CL_TRUE, o_off, sizeof out_dev, out_dev, 0, NULL, NULL));
    OK(kq_device_get_stats(dev, &after));
    if (step > 0) {
      allocations += after.device_allocations - before.device_allocations;
      uploaded += after.bytes_uploaded - before.bytes_uploaded;
      downloaded += after.bytes_downloaded - before.bytes_downloaded;
    }
    for (int l = 0; l < NL; l++) {
      double e = rel_diff(out_dev[l], out_host[l], rows * H * D);
      if (!(e <= 1e-6))
        fail_msg("step %d layer %d: imported-buffer output differs by %g", step, l, e);
    }
    CL_OK(clEnqueueReadBuffer(g_queue, pool, CL_TRUE, q_off + qbytes, guard_bytes, back, 0, NULL,
                              NULL));
    assert_memory_equal(guard, back, guard_bytes);
  }
  /* no copy of the engine's data and no allocation in the steps after the first */
  assert_int_equal(allocations, 0);
  assert_int_equal(uploaded, 0);
  assert_int_equal(downloaded, 0);

  /* kqsvd's own read of an imported range sees the engine's data */
  float first[4];
  OK(kq_device_buffer_read(bo, 0, first, sizeof first));
  assert_memory_equal(first, out_dev[0], sizeof first);

  /* refused imports */
  kq_device_buffer *bad = NULL;
  kq_opencl_buffer nbad = nq;
  nbad.offset = q_off + 4; /* not a multiple of the base-address alignment when it exceeds 4 */
  if (align > 4) {
    assert_int_equal(kq_device_buffer_import_opencl(dev, &nbad, &bad), KQ_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kq_last_error(), "CL_DEVICE_MEM_BASE_ADDR_ALIGN"));
    assert_null(bad);
  }
  nbad = nq;
  nbad.size = pool_bytes; /* past the end */
  assert_int_equal(kq_device_buffer_import_opencl(dev, &nbad, &bad), KQ_ERR_INVALID_ARGUMENT);
  nbad.size = 0;
  assert_int_equal(kq_device_buffer_import_opencl(dev, &nbad, &bad), KQ_ERR_INVALID_ARGUMENT);
  nbad = nq;
  nbad.mem = NULL;
  assert_int_equal(kq_device_buffer_import_opencl(dev, &nbad, &bad), KQ_ERR_INVALID_ARGUMENT);
  cl_context other = clCreateContext(NULL, 1, &g_cl_device, NULL, NULL, &err);
  CL_OK(err);
  cl_mem foreign = clCreateBuffer(other, CL_MEM_READ_WRITE, 256, NULL, &err);
  CL_OK(err);
  kq_opencl_buffer nf = {.struct_size = sizeof nf, .mem = foreign, .offset = 0, .size = 256};
  assert_int_equal(kq_device_buffer_import_opencl(dev, &nf, &bad), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "another context"));
  assert_null(bad);
  clReleaseMemObject(foreign);
  clReleaseContext(other);

  kq_device_buffer_destroy(bq);
  kq_device_buffer_destroy(bo);
  kq_device_buffer_destroy(bk);
  kq_device_buffer_destroy(bv);
  assert_int_equal(mem_refs(mk), mk_refs); /* the wrapper's reference is gone */
  kq_cache_destroy(ref);
  kq_cache_destroy(c);
  kq_projections_destroy(p);
  kq_device_destroy(dev);
  /* the engine's buffers are still its own and usable */
  float one = 1.5f, got = 0;
  CL_OK(clEnqueueWriteBuffer(g_queue, mk, CL_TRUE, 0, sizeof one, &one, 0, NULL, NULL));
  CL_OK(clEnqueueReadBuffer(g_queue, mk, CL_TRUE, 0, sizeof got, &got, 0, NULL, NULL));
  assert_true(got == one);
  free(guard);
  free(back);
  clReleaseMemObject(pool);
  clReleaseMemObject(mk);
  clReleaseMemObject(mv);
}

/* kqsvd retains the handles and gives every reference back; the engine's
 * context and queue work after kq_device_destroy. */
static void handles_outlive_the_device(void **state) {
  (void)state;
  const cl_uint ctx0 = context_refs(g_context), q0 = queue_refs(g_queue);
  kq_device *dev = open_external();
  assert_true(context_refs(g_context) > ctx0);
  assert_true(queue_refs(g_queue) > q0);
  /* some work, so that programs, scratch and CLBlast state exist */
  kq_device_buffer *b = NULL;
  OK(kq_device_buffer_create(dev, 64, &b));
  float x[16] = {1, 2, 3}, y[16] = {0};
  OK(kq_device_buffer_write(b, 0, x, sizeof x));
  OK(kq_device_buffer_read(b, 0, y, sizeof y));
  assert_memory_equal(x, y, sizeof x);
  kq_device_buffer_destroy(b);
  kq_device_destroy(dev);
  /* kqsvd has released its references; an event of a staged upload may
   * still hold the queue inside the driver until the driver retires it, so
   * wait (bounded) for the counts to settle rather than read them once */
  for (int i = 0; i < 200 && (queue_refs(g_queue) != q0 || context_refs(g_context) != ctx0); i++) {
    CL_OK(clFinish(g_queue));
    usleep(10000);
  }
  assert_int_equal(queue_refs(g_queue), q0);
  assert_int_equal(context_refs(g_context), ctx0);
  cl_int err;
  cl_mem m = clCreateBuffer(g_context, CL_MEM_READ_WRITE, sizeof x, NULL, &err);
  CL_OK(err);
  CL_OK(clEnqueueWriteBuffer(g_queue, m, CL_TRUE, 0, sizeof x, x, 0, NULL, NULL));
  memset(y, 0, sizeof y);
  CL_OK(clEnqueueReadBuffer(g_queue, m, CL_TRUE, 0, sizeof y, y, 0, NULL, NULL));
  assert_memory_equal(x, y, sizeof x);
  CL_OK(clFinish(g_queue));
  clReleaseMemObject(m);
}

static void wrong_handles_are_refused(void **state) {
  (void)state;
  kq_device *dev = NULL;
  cl_int err;
  cl_command_queue ooo =
      clCreateCommandQueue(g_context, g_cl_device, CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE, &err);
  if (err == CL_SUCCESS) {
    kq_opencl_device_handles h = {
        .struct_size = sizeof h, .context = g_context, .device = g_cl_device, .queue = ooo};
    assert_int_equal(kq_device_create_opencl(&h, &dev), KQ_ERR_DEVICE);
    assert_null(dev);
    assert_non_null(strstr(kq_last_error(), "CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE"));
    clReleaseCommandQueue(ooo);
  } else {
    printf("the driver has no out-of-order queues (%d); that refusal is not exercised\n", (int)err);
  }
  /* a queue of another context */
  cl_context other = clCreateContext(NULL, 1, &g_cl_device, NULL, NULL, &err);
  CL_OK(err);
  cl_command_queue oq = clCreateCommandQueue(other, g_cl_device, 0, &err);
  CL_OK(err);
  kq_opencl_device_handles h = {
      .struct_size = sizeof h, .context = g_context, .device = g_cl_device, .queue = oq};
  assert_int_equal(kq_device_create_opencl(&h, &dev), KQ_ERR_INVALID_ARGUMENT);
  assert_null(dev);
  clReleaseCommandQueue(oq);
  clReleaseContext(other);
  h.queue = NULL;
  assert_int_equal(kq_device_create_opencl(&h, &dev), KQ_ERR_INVALID_ARGUMENT);
  h.queue = g_queue;
  h.struct_size = 4;
  assert_int_equal(kq_device_create_opencl(&h, &dev), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_device_create_opencl(NULL, &dev), KQ_ERR_INVALID_ARGUMENT);
  /* a cpu device imports nothing of OpenCL's */
  kq_device *cpu = NULL;
  OK(kq_device_create("cpu", &cpu));
  kq_device_buffer *b = NULL;
  kq_opencl_buffer nb = {.struct_size = sizeof nb, .mem = NULL, .offset = 0, .size = 4};
  assert_int_equal(kq_device_buffer_import_opencl(cpu, &nb, &b), KQ_ERR_INVALID_ARGUMENT);
  assert_null(b);
  kq_device_destroy(cpu);
}

/* Messages of the backend about the engine's device name it
 * "opencl:external (driver device name)", after the core's
 * "device opencl:external" prefix. */
static void errors_name_the_device(void **state) {
  (void)state;
  kq_device *dev = open_external();
  cl_int err;
  cl_context other = clCreateContext(NULL, 1, &g_cl_device, NULL, NULL, &err);
  CL_OK(err);
  cl_mem foreign = clCreateBuffer(other, CL_MEM_READ_WRITE, 256, NULL, &err);
  CL_OK(err);
  kq_opencl_buffer nf = {.struct_size = sizeof nf, .mem = foreign, .offset = 0, .size = 256};
  kq_device_buffer *bad = NULL;
  assert_int_equal(kq_device_buffer_import_opencl(dev, &nf, &bad), KQ_ERR_INVALID_ARGUMENT);
  const char *msg = kq_last_error();
  printf("error on the engine's device: %s\n", msg);
  assert_non_null(strstr(msg, "device opencl:external: opencl:external ("));
  assert_null(strstr(msg, "opencl:-1"));
  clReleaseMemObject(foreign);
  clReleaseContext(other);
  kq_device_destroy(dev);
}

int main(void) {
  cl_uint n = 0;
  if (clGetPlatformIDs(1, &g_platform, &n) != CL_SUCCESS || n == 0 ||
      clGetDeviceIDs(g_platform, CL_DEVICE_TYPE_ALL, 1, &g_cl_device, &n) != CL_SUCCESS || n == 0) {
    printf("no OpenCL device: skipped\n");
    return 77;
  }
  cl_int err;
  cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)g_platform, 0};
  g_context = clCreateContext(props, 1, &g_cl_device, NULL, NULL, &err);
  if (err != CL_SUCCESS) return 77;
  g_queue = clCreateCommandQueue(g_context, g_cl_device, 0, &err);
  if (err != CL_SUCCESS) return 77;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(wrong_handles_are_refused),
      cmocka_unit_test(errors_name_the_device),
      cmocka_unit_test(handles_outlive_the_device),
      cmocka_unit_test(imported_buffers_equal_host_calls),
      cmocka_unit_test(conformance_passes_on_external_device),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  /* the engine releases its own handles; kqsvd holds none by now */
  clReleaseCommandQueue(g_queue);
  clReleaseContext(g_context);
  return rc;
}
