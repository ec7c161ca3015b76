/*
 * test_opencl_prefill.c — a prefill attend (m = 64 queries) reads the stored
 * latents in place: no scratch buffer of the size of an F32 copy of a cache
 * side is created, for F16 caches, quantized (q8 / q4 / float) segments,
 * and quantized segments with RoPE PRE, in both kernel layouts (cpu and
 * gpu). White-box: the module's per-device scratch sizes (ocl_internal.h)
 * after the op. Exits 77 (SKIPPED) when there is no OpenCL device.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "ocl_harness.h"
#include "ocl_internal.h"

static const kq_backend_iface *ifc;

enum { H = 4, HK = 2, D = 32, RK = 16, RV = 12, CAP = 4096, N_CTX = 100, M = 64 };

static kq_buffer *upload(kq_bdevice *dev, const void *data, size_t bytes) {
  kq_buffer *b = NULL;
  assert_int_equal(ifc->buffer_alloc(dev, bytes, &b), KQ_OK);
  if (data) assert_int_equal(ifc->buffer_upload(dev, b, 0, data, bytes), KQ_OK);
  return b;
}

/* Bytes of one side's cache (HK groups at CAP). */
static size_t side_bytes(int32_t n_seg, const kq_segment *segs, int32_t rank, kq_storage st) {
  if (n_seg == 0) return (st == KQ_STORAGE_F16 ? 2 : 4) * (size_t)HK * CAP * (size_t)rank;
  size_t total = 0;
  kq_segment_planes(segs, n_seg, st, HK, CAP, 0, NULL, NULL, &total);
  return total;
}

/* Appends N_CTX tokens, attends the last M on a fresh device opened with
 * KQSVD_OPENCL_LAYOUT=layout: the F32-copy scratch (KQ_S_KWIDE / _VWIDE,
 * which the widened copies of F16 and quantized caches used) is never
 * created, and every scratch buffer stays below an F32 copy of the smaller
 * side at the capacity. */
static void prefill_makes_no_f32_copy(const char *layout, kq_storage storage, kq_rope_mode rope,
                                      int32_t nks, const kq_segment *ks, int32_t nvs,
                                      const kq_segment *vs) {
  setenv("KQSVD_OPENCL_LAYOUT", layout, 1);
  kq_bdevice *dev = NULL;
  assert_int_equal(ifc->device_open(0, &dev), KQ_OK);
  float *k = malloc(sizeof(float) * N_CTX * HK * D), *v = malloc(sizeof(float) * N_CTX * HK * D);
  float *q = malloc(sizeof(float) * M * H * D), *A = malloc(sizeof(float) * HK * D * RK);
  float *B = malloc(sizeof(float) * HK * D * RK), *C = malloc(sizeof(float) * HK * D * RV);
  float *out = malloc(sizeof(float) * M * H * RV);
  assert_non_null(k), assert_non_null(v), assert_non_null(q), assert_non_null(out);
  harness_fill(k, (size_t)N_CTX * HK * D, 1, 1.0f);
  harness_fill(v, (size_t)N_CTX * HK * D, 2, 1.0f);
  harness_fill(q, (size_t)M * H * D, 3, 1.0f);
  harness_fill(A, (size_t)HK * D * RK, 4, 0.5f);
  harness_fill(B, (size_t)HK * D * RK, 5, 0.5f);
  harness_fill(C, (size_t)HK * D * RV, 6, 0.5f);
  kq_buffer *bk = upload(dev, k, sizeof(float) * N_CTX * HK * D);
  kq_buffer *bv = upload(dev, v, sizeof(float) * N_CTX * HK * D);
  kq_buffer *bq = upload(dev, q, sizeof(float) * M * H * D);
  kq_buffer *bA = upload(dev, A, sizeof(float) * HK * D * RK);
  kq_buffer *bB = upload(dev, B, sizeof(float) * HK * D * RK);
  kq_buffer *bC = upload(dev, C, sizeof(float) * HK * D * RV);
  kq_buffer *kc = upload(dev, NULL, side_bytes(nks, ks, RK, storage));
  kq_buffer *vc = upload(dev, NULL, side_bytes(nvs, vs, RV, storage));
  kq_buffer *bo = upload(dev, NULL, sizeof(float) * M * H * RV);
  kq_project_op pk = {.src = bk,
                      .proj = bA,
                      .dst = kc,
                      .n_tokens = N_CTX,
                      .n_heads = HK,
                      .head_dim = D,
                      .rank = RK,
                      .capacity = CAP,
                      .storage = storage,
                      .n_seqs = 1,
                      .n_segments = nks,
                      .segments = ks};
  assert_int_equal(ifc->project(dev, &pk), KQ_OK);
  kq_project_op pv = pk;
  pv.src = bv, pv.proj = bC, pv.dst = vc, pv.rank = RV, pv.n_segments = nvs, pv.segments = vs;
  assert_int_equal(ifc->project(dev, &pv), KQ_OK);
  kq_attend_op op = {.q = bq,
                     .key_down = bA,
                     .query_down = bB,
                     .k_cache = kc,
                     .v_cache = vc,
                     .out = bo,
                     .n_queries = M,
                     .n_ctx = N_CTX,
                     .n_heads = H,
                     .n_kv_heads = HK,
                     .head_dim = D,
                     .rank_k = RK,
                     .rank_v = RV,
                     .capacity = CAP,
                     .storage = storage,
                     .rope = rope,
                     .rope_layout = KQ_ROPE_HALVES,
                     .rope_theta = 1e4f,
                     .scale = 1.0f / sqrtf((float)D),
                     .n_seqs = 1,
                     .n_key_segments = nks,
                     .n_value_segments = nvs,
                     .key_segments = ks,
                     .value_segments = vs};
  kq_status st = ifc->attend(dev, &op);
  if (st != KQ_OK) fail_msg("attend: %s", harness_error);
  assert_int_equal(ifc->buffer_download(dev, bo, 0, out, sizeof(float) * M * H * RV), KQ_OK);
  /* And it is the attention: against the float64 reference on exact
   * latents, within the storage's rounding (q4 / q8 loosely). */
  double *ref = malloc(sizeof(double) * M * H * RV);
  assert_non_null(ref);
  harness_reference(k, v, q, A, B, C, N_CTX, M, H, HK, D, RK, RV, 0, rope == KQ_ROPE_PRE, 1e4, 1,
                    ref);
  const double e = harness_nmse(out, ref, (size_t)M * H * RV), tol = nks ? 5e-2 : 1e-5;
  if (!(e < tol)) fail_msg("%s layout: nmse %.3g >= %.1g", layout, e, tol);
  free(ref);
  /* The widened copies' own scratch (F32 latents) stays unused ... */
  assert_int_equal(dev->scratch_bytes[KQ_S_KWIDE], 0);
  assert_int_equal(dev->scratch_bytes[KQ_S_VWIDE], 0);
  /* ... and no other scratch is as large as an F32 copy of a side. */
  const size_t copy = sizeof(float) * HK * CAP * RV;
  for (int i = 0; i < KQ_S_COUNT; ++i)
    if (dev->scratch_bytes[i] >= copy)
      fail_msg("%s layout: scratch %d holds %zu bytes (an F32 copy of a side: %zu)", layout, i,
               dev->scratch_bytes[i], copy);
  kq_buffer *bufs[] = {bk, bv, bq, bA, bB, bC, kc, vc, bo};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; ++i) ifc->buffer_free(dev, bufs[i]);
  ifc->device_close(dev);
  free(k), free(v), free(q), free(A), free(B), free(C), free(out);
}

static const kq_segment KSEG[3] = {{4, KQ_SEG_FLOAT}, {8, KQ_SEG_Q8}, {4, KQ_SEG_Q4}};
static const kq_segment VSEG[2] = {{4, KQ_SEG_Q8}, {8, KQ_SEG_Q4}};

static void test_f16_prefill_reads_the_cache_in_place(void **s) {
  (void)s;
  prefill_makes_no_f32_copy("cpu", KQ_STORAGE_F16, KQ_ROPE_NONE, 0, NULL, 0, NULL);
  prefill_makes_no_f32_copy("gpu", KQ_STORAGE_F16, KQ_ROPE_NONE, 0, NULL, 0, NULL);
}
static void test_quantized_prefill_reads_the_cache_in_place(void **s) {
  (void)s;
  prefill_makes_no_f32_copy("cpu", KQ_STORAGE_F16, KQ_ROPE_NONE, 3, KSEG, 2, VSEG);
  prefill_makes_no_f32_copy("gpu", KQ_STORAGE_F32, KQ_ROPE_NONE, 3, KSEG, 2, VSEG);
}
static void test_quantized_pre_rope_prefill_reads_the_cache_in_place(void **s) {
  (void)s;
  prefill_makes_no_f32_copy("cpu", KQ_STORAGE_F16, KQ_ROPE_PRE, 3, KSEG, 2, VSEG);
  prefill_makes_no_f32_copy("gpu", KQ_STORAGE_F32, KQ_ROPE_PRE, 3, KSEG, 2, VSEG);
}
static void test_f16_pre_rope_prefill_reads_the_cache_in_place(void **s) {
  (void)s;
  prefill_makes_no_f32_copy("cpu", KQ_STORAGE_F16, KQ_ROPE_PRE, 0, NULL, 0, NULL);
}

int main(void) {
  ifc = harness_load();
  if (!ifc || ifc->device_count() < 1) {
    printf("SKIPPED: no OpenCL device\n");
    return KQ_OCL_SKIP;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_f16_prefill_reads_the_cache_in_place),
      cmocka_unit_test(test_quantized_prefill_reads_the_cache_in_place),
      cmocka_unit_test(test_quantized_pre_rope_prefill_reads_the_cache_in_place),
      cmocka_unit_test(test_f16_pre_rope_prefill_reads_the_cache_in_place),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
