/*
 * test_opencl_bounds.c — an attend over several sequences (regions) writes
 * exactly its output rows: the output buffer carries guard floats past the
 * last row, and every kernel layout (KQSVD_OPENCL_LAYOUT cpu and gpu) must
 * leave them as uploaded. On PoCL a write past a buffer lands in the host
 * heap; inside one buffer it lands in the guard, where this test sees it
 * (kq_attn_reduce_up once wrote there, issue 14).
 *
 * usage: test_opencl_bounds   (exit 77 when there is no OpenCL device)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "ocl_harness.h"

static const kq_backend_iface *ifc;
static kq_bdevice *dev;

enum { H = 4, HK = 2, D = 16, RK = 8, RV = 6, CAP = 40, NS = 3, GUARD = 256 };
#define SENTINEL 12345.0f

static kq_buffer *upload(const void *data, size_t bytes) {
  kq_buffer *b = NULL;
  assert_int_equal(ifc->buffer_alloc(dev, bytes, &b), KQ_OK);
  if (data) assert_int_equal(ifc->buffer_upload(dev, b, 0, data, bytes), KQ_OK);
  return b;
}

/* Bytes of one sequence's region of a side (planes of HK groups at CAP). */
static size_t region_bytes(int32_t n_seg, const kq_segment *segs, int32_t rank) {
  if (n_seg == 0) return sizeof(float) * HK * CAP * (size_t)rank;
  size_t total = 0;
  kq_segment_planes(segs, n_seg, KQ_STORAGE_F32, HK, CAP, 0, NULL, NULL, &total);
  return total;
}

/* Attend with value_up over NS sequences of n_rows queries each (rows
 * consecutive in q and out), caches of the given segments; checks that
 * every output row was written and the guard after them kept. */
static void attend_checks_guard(int32_t nks, const kq_segment *ks, int32_t nvs,
                                const kq_segment *vs) {
  const int32_t n_rows[NS] = {1, 3, 2}, n_ctx[NS] = {5, 17, 9};
  int32_t rows = 0;
  for (int s = 0; s < NS; ++s) rows += n_rows[s];
  const size_t kreg = region_bytes(nks, ks, RK), vreg = region_bytes(nvs, vs, RV);
  unsigned char *kz = calloc(NS, kreg), *vz = calloc(NS, vreg);
  float *q = malloc(sizeof(float) * rows * H * D), *B = malloc(sizeof(float) * HK * D * RK);
  float *E = malloc(sizeof(float) * HK * D * RV);
  const size_t n_out = (size_t)rows * H * D + GUARD;
  float *out = malloc(sizeof(float) * n_out);
  assert_non_null(kz), assert_non_null(vz), assert_non_null(q), assert_non_null(out);
  /* Latent rows from random bytes would hold NaN scales; zeros are finite. */
  harness_fill(q, (size_t)rows * H * D, 1, 1.0f);
  harness_fill(B, (size_t)HK * D * RK, 2, 0.5f);
  harness_fill(E, (size_t)HK * D * RV, 3, 0.5f);
  for (size_t i = 0; i < n_out; ++i) out[i] = SENTINEL;
  kq_buffer *kc = upload(kz, NS * kreg), *vc = upload(vz, NS * vreg);
  kq_buffer *bq = upload(q, sizeof(float) * rows * H * D),
            *bB = upload(B, sizeof(float) * HK * D * RK);
  kq_buffer *bE = upload(E, sizeof(float) * HK * D * RV), *bo = upload(out, sizeof(float) * n_out);
  kq_op_seq seqs[NS];
  int32_t row = 0;
  for (int s = 0; s < NS; ++s) {
    /* Regions in reverse order: the last rows read the first region. */
    seqs[s] = (kq_op_seq){.k_region = (size_t)(NS - 1 - s) * kreg,
                          .v_region = (size_t)(NS - 1 - s) * vreg,
                          .row = row,
                          .n_rows = n_rows[s],
                          .n_ctx = n_ctx[s],
                          .seq = s};
    row += n_rows[s];
  }
  kq_attend_op op = {.q = bq,
                     .key_down = bB,
                     .query_down = bB,
                     .k_cache = kc,
                     .v_cache = vc,
                     .value_up = bE,
                     .out = bo,
                     .n_queries = rows,
                     .n_ctx = 17,
                     .n_heads = H,
                     .n_kv_heads = HK,
                     .head_dim = D,
                     .rank_k = RK,
                     .rank_v = RV,
                     .capacity = CAP,
                     .storage = KQ_STORAGE_F32,
                     .rope = KQ_ROPE_NONE,
                     .scale = 0.25f,
                     .n_seqs = NS,
                     .n_key_segments = nks,
                     .key_segments = ks,
                     .n_value_segments = nvs,
                     .value_segments = vs,
                     .seqs = seqs};
  kq_status st = ifc->attend(dev, &op);
  if (st != KQ_OK) fprintf(stderr, "attend: %s\n", harness_error);
  assert_int_equal(st, KQ_OK);
  assert_int_equal(ifc->buffer_download(dev, bo, 0, out, sizeof(float) * n_out), KQ_OK);
  for (size_t i = 0; i < (size_t)rows * H * D; ++i)
    if (out[i] == SENTINEL) fail_msg("output float %zu not written", i);
  for (size_t i = (size_t)rows * H * D; i < n_out; ++i)
    if (out[i] != SENTINEL)
      fail_msg("guard float %zu (past %d rows) overwritten: %g", i - (size_t)rows * H * D, rows,
               out[i]);
  kq_buffer *bufs[] = {kc, vc, bq, bB, bE, bo};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; ++i) ifc->buffer_free(dev, bufs[i]);
  free(kz), free(vz), free(q), free(B), free(E), free(out);
}

static void quantized_attend_keeps_the_guard(void **state) {
  (void)state;
  const kq_segment ks[2] = {{4, KQ_SEG_Q8}, {4, KQ_SEG_Q4}};
  const kq_segment vs[2] = {{2, KQ_SEG_Q8}, {4, KQ_SEG_Q4}};
  attend_checks_guard(2, ks, 2, vs);
}

static void float_attend_keeps_the_guard(void **state) {
  (void)state;
  attend_checks_guard(0, NULL, 0, NULL);
}

int main(void) {
  (void)harness_reference, (void)harness_nmse; /* the harness's reference: unused here */
  ifc = harness_load();
  if (!ifc) return 1;
  if (ifc->device_count() == 0) {
    printf("SKIPPED: no OpenCL device\n");
    return KQ_OCL_SKIP;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(quantized_attend_keeps_the_guard),
      cmocka_unit_test(float_attend_keeps_the_guard),
  };
  int rc = 0;
  const char *layouts[2] = {"cpu", "gpu"};
  for (int i = 0; i < 2; ++i) {
    /* Read when the device opens (ocl_device.c). */
    setenv("KQSVD_OPENCL_LAYOUT", layouts[i], 1);
    if (ifc->device_open(0, &dev) != KQ_OK) {
      fprintf(stderr, "device_open: %s\n", harness_error);
      return 1;
    }
    printf("# layout %s\n", layouts[i]);
    rc |= cmocka_run_group_tests_name(layouts[i], tests, NULL, NULL);
    ifc->device_close(dev);
  }
  return rc;
}
