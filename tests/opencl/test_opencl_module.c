/*
 * test_opencl_module.c — the OpenCL backend module on its own: loaded with
 * dlopen and driven through kq_backend_iface, checked against a float64
 * reference of SPEC §4. Exits with KQ_OCL_SKIP (reported as SKIPPED by
 * ctest) when the machine has no OpenCL device.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "ocl_harness.h"

static const kq_backend_iface *ifc;
static kq_bdevice *dev;

enum { H = 4, HK = 2, D = 16, RK = 8, RV = 6, CAP = 320 };

static kq_buffer *upload(const void *data, size_t bytes) {
  kq_buffer *b = NULL;
  assert_int_equal(ifc->buffer_alloc(dev, bytes, &b), KQ_OK);
  if (data) assert_int_equal(ifc->buffer_upload(dev, b, 0, data, bytes), KQ_OK);
  return b;
}

typedef struct attn_case {
  kq_storage storage;
  kq_rope_mode rope;
  int halves, identity, m, n_ctx;
} attn_case;

/* Appends n_ctx tokens (in two batches) through project, attends for the last
 * m, returns the NMSE of the latent output against the float64 reference. */
static double run_case(const attn_case *tc) {
  const int rk = tc->identity ? D : RK, n = tc->n_ctx, m = tc->m;
  const double theta = 10000.0;
  float *k = malloc(sizeof(float) * n * HK * D), *v = malloc(sizeof(float) * n * HK * D);
  float *q = malloc(sizeof(float) * m * H * D), *A = malloc(sizeof(float) * HK * D * rk);
  float *B = malloc(sizeof(float) * HK * D * rk), *C = malloc(sizeof(float) * HK * D * RV);
  float *out = malloc(sizeof(float) * m * H * RV);
  double *ref = malloc(sizeof(double) * m * H * RV);
  harness_fill(k, (size_t)n * HK * D, 1, 1.0f);
  harness_fill(v, (size_t)n * HK * D, 2, 1.0f);
  harness_fill(q, (size_t)m * H * D, 3, 3.0f);
  harness_fill(A, (size_t)HK * D * rk, 4, 0.5f);
  harness_fill(B, (size_t)HK * D * rk, 5, 0.5f);
  harness_fill(C, (size_t)HK * D * RV, 6, 0.5f);
  const size_t esz = tc->storage == KQ_STORAGE_F16 ? 2 : 4;
  kq_buffer *bk = upload(k, sizeof(float) * n * HK * D),
            *bv = upload(v, sizeof(float) * n * HK * D);
  kq_buffer *bq = upload(q, sizeof(float) * m * H * D),
            *bA = upload(A, sizeof(float) * HK * D * rk);
  kq_buffer *bB = upload(B, sizeof(float) * HK * D * rk),
            *bC = upload(C, sizeof(float) * HK * D * RV);
  kq_buffer *kc = upload(NULL, esz * HK * CAP * rk), *vc = upload(NULL, esz * HK * CAP * RV);
  kq_buffer *bo = upload(NULL, sizeof(float) * m * H * RV);
  const int first = n / 3;
  for (int part = 0; part < 2; ++part) {
    int pos = part ? first : 0, cnt = part ? n - first : first;
    size_t off = sizeof(float) * (size_t)pos * HK * D;
    kq_project_op pk = {.src = bk,
                        .src_offset = off,
                        .proj = bA,
                        .dst = kc,
                        .n_tokens = cnt,
                        .n_heads = HK,
                        .head_dim = D,
                        .rank = rk,
                        .capacity = CAP,
                        .pos = pos,
                        .storage = tc->storage,
                        .n_seqs = 1,
                        .flags = tc->identity ? KQ_OP_IDENTITY_KEYS : 0};
    assert_int_equal(ifc->project(dev, &pk), KQ_OK);
    kq_project_op pv = pk;
    pv.src = bv;
    pv.proj = bC;
    pv.dst = vc;
    pv.rank = RV;
    pv.flags = 0;
    assert_int_equal(ifc->project(dev, &pv), KQ_OK);
  }
  kq_attend_op op = {.q = bq,
                     .key_down = bA,
                     .query_down = bB,
                     .k_cache = kc,
                     .v_cache = vc,
                     .out = bo,
                     .n_queries = m,
                     .n_ctx = n,
                     .n_heads = H,
                     .n_kv_heads = HK,
                     .head_dim = D,
                     .rank_k = rk,
                     .rank_v = RV,
                     .capacity = CAP,
                     .storage = tc->storage,
                     .rope = tc->rope,
                     .rope_layout = tc->halves ? KQ_ROPE_HALVES : KQ_ROPE_PAIRS,
                     .rope_theta = (float)theta,
                     .scale = 1.0f / sqrtf((float)D),
                     .flags = tc->identity ? KQ_OP_IDENTITY_KEYS : 0,
                     .n_seqs = 1};
  kq_status st = ifc->attend(dev, &op);
  if (st != KQ_OK) fprintf(stderr, "attend: %s\n", harness_error);
  assert_int_equal(st, KQ_OK);
  assert_int_equal(ifc->buffer_download(dev, bo, 0, out, sizeof(float) * m * H * RV), KQ_OK);
  harness_reference(k, v, q, A, B, C, n, m, H, HK, D, rk, RV, tc->identity, tc->rope == KQ_ROPE_PRE,
                    theta, tc->halves, ref);
  double e = harness_nmse(out, ref, (size_t)m * H * RV);
  kq_buffer *bufs[] = {bk, bv, bq, bA, bB, bC, kc, vc, bo};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; ++i) ifc->buffer_free(dev, bufs[i]);
  free(k), free(v), free(q), free(A), free(B), free(C), free(out), free(ref);
  return e;
}

#define F32_NMSE 1e-9 /* float accumulation of O(100)-term sums */
#define F16_NMSE 1e-5 /* binary16 rounding of the latents (2^-11 relative) */

static void check(attn_case tc) {
  double e = run_case(&tc);
  double tol = tc.storage == KQ_STORAGE_F16 ? F16_NMSE : F32_NMSE;
  if (!(e < tol))
    fail_msg("nmse %.3g >= %.1g (storage %d rope %d m %d ctx %d)", e, tol, tc.storage, tc.rope,
             tc.m, tc.n_ctx);
}

static void test_device_info_reports_opencl_devices(void **state) {
  (void)state;
  int n = ifc->device_count();
  assert_true(n >= 1);
  assert_string_equal(ifc->name, "opencl");
  for (int i = 0; i < n; ++i) {
    kq_device_info info;
    assert_int_equal(ifc->device_info(i, &info), KQ_OK);
    char want[32];
    snprintf(want, sizeof want, "opencl:%d", i);
    assert_string_equal(info.name, want);
    assert_string_equal(info.backend, "opencl");
    assert_true(info.description[0] != '\0');
    assert_true(info.memory_bytes > 0 && info.max_buffer_bytes > 0);
    assert_int_equal(info.fp16_storage, 1);
    assert_true(info.compute_units > 0);
    printf("# %s: %s | %s | %s\n", info.name, info.description, info.driver, info.extensions);
  }
  kq_device_info info;
  assert_int_equal(ifc->device_info(n, &info), KQ_ERR_NOT_FOUND);
}

static void test_decode_f32_post_rope_splits_context(void **s) {
  (void)s;
  check((attn_case){KQ_STORAGE_F32, KQ_ROPE_POST, 0, 0, 1, 300});
}
static void test_decode_f16_storage(void **s) {
  (void)s;
  check((attn_case){KQ_STORAGE_F16, KQ_ROPE_POST, 0, 0, 1, 300});
}
static void test_small_m_is_causal(void **s) {
  (void)s;
  check((attn_case){KQ_STORAGE_F32, KQ_ROPE_NONE, 0, 0, 5, 270});
}
/* Queries of one work-group block straddle a chunk boundary: some rows see
 * none of the chunk's positions. */
static void test_query_block_straddling_chunk_is_causal(void **s) {
  (void)s;
  check((attn_case){KQ_STORAGE_F32, KQ_ROPE_NONE, 0, 0, 5, 258});
  check((attn_case){KQ_STORAGE_F16, KQ_ROPE_PRE, 0, 0, 20, 262});
}
static void test_prefill_through_clblast_f32(void **s) {
  (void)s;
  check((attn_case){KQ_STORAGE_F32, KQ_ROPE_POST, 0, 0, 40, 300});
}
static void test_prefill_through_clblast_f16(void **s) {
  (void)s;
  check((attn_case){KQ_STORAGE_F16, KQ_ROPE_POST, 0, 0, 40, 100});
}
static void test_pre_rope_pairs_reconstructs_keys(void **s) {
  (void)s;
  check((attn_case){KQ_STORAGE_F32, KQ_ROPE_PRE, 0, 0, 3, 280});
}
static void test_pre_rope_halves_f16(void **s) {
  (void)s;
  check((attn_case){KQ_STORAGE_F16, KQ_ROPE_PRE, 1, 0, 1, 200});
}
static void test_identity_is_full_attention(void **s) {
  (void)s;
  check((attn_case){KQ_STORAGE_F32, KQ_ROPE_POST, 0, 1, 2, 300});
  check((attn_case){KQ_STORAGE_F32, KQ_ROPE_PRE, 1, 1, 1, 150});
}

static void test_up_applies_value_up_transpose(void **s) {
  (void)s;
  enum { M = 3 };
  float lat[M * H * RV], E[HK * D * RV], out[M * H * D];
  double ref[M * H * D];
  harness_fill(lat, M * H * RV, 11, 1.0f);
  harness_fill(E, HK * D * RV, 12, 1.0f);
  for (int j = 0; j < M; ++j)
    for (int h = 0; h < H; ++h)
      for (int a = 0; a < D; ++a) {
        double acc = 0;
        for (int c = 0; c < RV; ++c)
          acc += (double)lat[(j * H + h) * RV + c] * E[((h / (H / HK)) * D + a) * RV + c];
        ref[(j * H + h) * D + a] = acc;
      }
  kq_buffer *bl = upload(lat, sizeof lat), *be = upload(E, sizeof E),
            *bo = upload(NULL, sizeof out);
  kq_up_op op = {.latent = bl,
                 .value_up = be,
                 .out = bo,
                 .n_queries = M,
                 .n_heads = H,
                 .n_kv_heads = HK,
                 .head_dim = D,
                 .rank_v = RV,
                 .n_seqs = 1};
  assert_int_equal(ifc->up(dev, &op), KQ_OK);
  assert_int_equal(ifc->buffer_download(dev, bo, 0, out, sizeof out), KQ_OK);
  assert_true(harness_nmse(out, ref, M * H * D) < F32_NMSE);
  ifc->buffer_free(dev, bl), ifc->buffer_free(dev, be), ifc->buffer_free(dev, bo);
}

static void test_copy_is_bit_exact_with_tail(void **s) {
  (void)s;
  enum { N = 4096 + 7 };
  unsigned char src[N], dst[N];
  for (int i = 0; i < N; ++i) src[i] = (unsigned char)(i * 31 + 7);
  kq_buffer *a = upload(src, N), *b = upload(NULL, N);
  assert_int_equal(ifc->copy(dev, b, a, N), KQ_OK);
  assert_int_equal(ifc->buffer_download(dev, b, 0, dst, N), KQ_OK);
  assert_memory_equal(src, dst, N);
  ifc->buffer_free(dev, a), ifc->buffer_free(dev, b);
}

/* Op arguments are checked once, in the core (tests/engine/test_op_check.c);
 * buffer copies are the backend's own and fail naming the device. */
static void test_out_of_range_copies_fail_naming_device(void **s) {
  (void)s;
  kq_buffer *a = upload(NULL, 64);
  unsigned char big[128];
  harness_error[0] = '\0';
  assert_int_equal(ifc->buffer_upload(dev, a, 32, big, 64), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(harness_error, "opencl:0"));
  harness_error[0] = '\0';
  assert_int_equal(ifc->buffer_download(dev, a, 0, big, 128), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(harness_error, "opencl:0"));
  ifc->buffer_free(dev, a);
}

static void *thread_main(void *arg) {
  double *e = arg;
  for (int i = 0; i < 3; ++i) {
    attn_case tc = {i % 2 ? KQ_STORAGE_F16 : KQ_STORAGE_F32, KQ_ROPE_POST, 0, 0, 1, 260};
    double v = run_case(&tc);
    if (v > *e) *e = v;
  }
  return NULL;
}

static void test_two_threads_share_one_device(void **s) {
  (void)s;
  pthread_t t[2];
  double e[2] = {0, 0};
  for (int i = 0; i < 2; ++i) assert_int_equal(pthread_create(&t[i], NULL, thread_main, &e[i]), 0);
  for (int i = 0; i < 2; ++i) pthread_join(t[i], NULL);
  assert_true(e[0] < F16_NMSE && e[1] < F16_NMSE);
}

int main(void) {
  ifc = harness_load();
  if (!ifc) return 1;
  if (ifc->device_count() == 0) {
    printf("SKIPPED: no OpenCL device\n");
    return KQ_OCL_SKIP;
  }
  if (ifc->device_open(0, &dev) != KQ_OK) {
    fprintf(stderr, "device_open: %s\n", harness_error);
    return 1;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_device_info_reports_opencl_devices),
      cmocka_unit_test(test_decode_f32_post_rope_splits_context),
      cmocka_unit_test(test_decode_f16_storage),
      cmocka_unit_test(test_small_m_is_causal),
      cmocka_unit_test(test_query_block_straddling_chunk_is_causal),
      cmocka_unit_test(test_prefill_through_clblast_f32),
      cmocka_unit_test(test_prefill_through_clblast_f16),
      cmocka_unit_test(test_pre_rope_pairs_reconstructs_keys),
      cmocka_unit_test(test_pre_rope_halves_f16),
      cmocka_unit_test(test_identity_is_full_attention),
      cmocka_unit_test(test_up_applies_value_up_transpose),
      cmocka_unit_test(test_copy_is_bit_exact_with_tail),
      cmocka_unit_test(test_out_of_range_copies_fail_naming_device),
      cmocka_unit_test(test_two_threads_share_one_device),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  kq_device_info info;
  if (ifc->device_info(0, &info) == KQ_OK) printf("# after the tests: %s\n", info.extensions);
  ifc->device_close(dev);
  return rc;
}
