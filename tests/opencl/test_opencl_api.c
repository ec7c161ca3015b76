/*
 * test_opencl_api.c — opencl:0 through the public API (registry → module →
 * cache): append + attend agree with a float64 reference and with the cpu
 * device, for F32 and F16 storage and both output kinds. Exits 77 (SKIPPED)
 * when there is no OpenCL device.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "kqsvd.h"
#include "opencl/ocl_harness.h"

enum { L = 2, H = 8, HK = 2, D = 32, RK = 12, RV = 10, N = 150, M = 3 };

static kq_projections *proj;

static void make_projections(void) {
  kq_projections_info info = {KQ_METHOD_KQSVD,   L, H, HK, D, KQ_ROPE_POST, KQ_ROPE_PAIRS, 1e4f,
                              KQ_LAYOUT_PER_HEAD};
  int32_t rk[L] = {RK, RK}, rv[L] = {RV, RV};
  assert_int_equal(kq_projections_create(&info, rk, rv, &proj), KQ_OK);
  for (int l = 0; l < L; ++l) {
    kq_projection_layer pl;
    assert_int_equal(kq_projections_layer(proj, l, &pl), KQ_OK);
    harness_fill(pl.key_down, HK * D * RK, 10 + l, 0.4f);
    harness_fill(pl.query_down, HK * D * RK, 20 + l, 0.4f);
    harness_fill(pl.value_down, HK * D * RV, 30 + l, 0.4f);
    harness_fill(pl.value_up, HK * D * RV, 40 + l, 0.4f);
  }
}

/* Runs layer 1 on `device` and returns full outputs [M, H, D]. */
static void run(const char *device, kq_storage storage, kq_output kind, float *out) {
  kq_device *dev = NULL;
  assert_int_equal(kq_device_create(device, &dev), KQ_OK);
  kq_cache_params cp = kq_cache_default_params();
  cp.storage = storage;
  cp.capacity = 256;
  kq_cache *cache = NULL;
  kq_status st = kq_cache_create(dev, proj, &cp, &cache);
  if (st != KQ_OK) fail_msg("kq_cache_create(%s): %s", device, kq_last_error());
  float *k = malloc(sizeof(float) * N * HK * D), *v = malloc(sizeof(float) * N * HK * D);
  float q[M * H * D];
  harness_fill(k, N * HK * D, 1, 1.0f);
  harness_fill(v, N * HK * D, 2, 1.0f);
  harness_fill(q, M * H * D, 3, 2.0f);
  for (int l = 0; l < L; ++l) {
    assert_int_equal(kq_cache_append(cache, l, 100, k, v), KQ_OK);
    assert_int_equal(kq_cache_append(cache, l, N - 100, k + 100 * HK * D, v + 100 * HK * D), KQ_OK);
  }
  assert_int_equal(kq_cache_length(cache, 1), N);
  st = kq_cache_attend(cache, 1, M, q, kind, out);
  if (st != KQ_OK) fail_msg("attend(%s): %s", device, kq_last_error());
  kq_cache_destroy(cache);
  kq_device_destroy(dev);
  free(k);
  free(v);
}

/* Float64 reference of layer 1: latent outputs, then (full) times Eᵀ. */
static void reference(kq_output kind, double *out) {
  kq_projection_layer pl;
  assert_int_equal(kq_projections_layer(proj, 1, &pl), KQ_OK);
  float *k = malloc(sizeof(float) * N * HK * D), *v = malloc(sizeof(float) * N * HK * D);
  float q[M * H * D];
  harness_fill(k, N * HK * D, 1, 1.0f);
  harness_fill(v, N * HK * D, 2, 1.0f);
  harness_fill(q, M * H * D, 3, 2.0f);
  double lat[M * H * RV];
  harness_reference(k, v, q, pl.key_down, pl.query_down, pl.value_down, N, M, H, HK, D, RK, RV, 0,
                    0, 1e4, 0, lat);
  if (kind == KQ_OUTPUT_LATENT) {
    memcpy(out, lat, sizeof lat);
  } else {
    for (int j = 0; j < M; ++j)
      for (int h = 0; h < H; ++h)
        for (int a = 0; a < D; ++a) {
          double acc = 0;
          for (int c = 0; c < RV; ++c)
            acc += lat[(j * H + h) * RV + c] * pl.value_up[((h / (H / HK)) * D + a) * RV + c];
          out[(j * H + h) * D + a] = acc;
        }
  }
  free(k);
  free(v);
}

static void check(kq_storage storage, kq_output kind, double tol) {
  float out[M * H * D], cpu[M * H * D];
  double ref[M * H * D];
  size_t n = kind == KQ_OUTPUT_LATENT ? M * H * RV : M * H * D;
  run("opencl:0", storage, kind, out);
  run("cpu", storage, kind, cpu);
  reference(kind, ref);
  double e = harness_nmse(out, ref, n);
  if (!(e < tol)) fail_msg("opencl vs float64: nmse %.3g >= %.1g", e, tol);
  /* Agreement with the cpu device, relative to the output's size. */
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += ((double)out[i] - cpu[i]) * ((double)out[i] - cpu[i]);
    den += (double)cpu[i] * cpu[i];
  }
  if (!(sqrt(num / den) < 1e-4)) fail_msg("opencl vs cpu: relative error %.3g", sqrt(num / den));
}

static void test_f32_full_output_matches_reference_and_cpu(void **s) {
  (void)s;
  check(KQ_STORAGE_F32, KQ_OUTPUT_FULL, 1e-9);
}
static void test_f32_latent_output_matches_reference_and_cpu(void **s) {
  (void)s;
  check(KQ_STORAGE_F32, KQ_OUTPUT_LATENT, 1e-9);
}
static void test_f16_full_output_matches_reference(void **s) {
  (void)s;
  check(KQ_STORAGE_F16, KQ_OUTPUT_FULL, 1e-5);
}

static void test_device_listing_includes_opencl(void **s) {
  (void)s;
  int n = 0, found = 0;
  assert_int_equal(kq_device_count(&n), KQ_OK);
  for (int i = 0; i < n; ++i) {
    kq_device_info info;
    assert_int_equal(kq_device_info_get(i, &info), KQ_OK);
    if (strcmp(info.backend, "opencl") == 0) {
      found = 1;
      assert_int_equal(strncmp(info.name, "opencl:", 7), 0);
    }
  }
  assert_true(found);
}

static void test_copy_bandwidth_is_positive(void **s) {
  (void)s;
  kq_device *dev = NULL;
  assert_int_equal(kq_device_create("opencl:0", &dev), KQ_OK);
  double gbps = 0;
  assert_int_equal(kq_device_copy_bandwidth(dev, 1 << 20, 3, &gbps), KQ_OK);
  assert_true(gbps > 0 && isfinite(gbps));
  kq_device_destroy(dev);
}

int main(void) {
  kq_device *dev = NULL;
  if (kq_device_create("opencl:0", &dev) != KQ_OK) {
    printf("SKIPPED: no OpenCL device (%s)\n", kq_last_error());
    return KQ_OCL_SKIP;
  }
  kq_device_destroy(dev);
  make_projections();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_device_listing_includes_opencl),
      cmocka_unit_test(test_f32_full_output_matches_reference_and_cpu),
      cmocka_unit_test(test_f32_latent_output_matches_reference_and_cpu),
      cmocka_unit_test(test_f16_full_output_matches_reference),
      cmocka_unit_test(test_copy_bandwidth_is_positive),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  kq_projections_destroy(proj);
  return rc;
}
