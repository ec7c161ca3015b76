/* Properties of the common helpers: half conversions, overflow checks,
 * the error channel and parallel_for. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "common/kq_common.h"

static void f16_round_trips_every_finite_half(void **state) {
  (void)state;
  for (uint32_t h = 0; h < 0x10000u; h++) {
    if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu)) continue; /* NaN payloads */
    float f = kq_f16_to_f32((uint16_t)h);
    assert_int_equal(kq_f32_to_f16(f), h);
  }
}

static void f16_rounds_to_nearest_even(void **state) {
  (void)state;
  /* 1 + 2^-11 is halfway between 1 and the next half (1 + 2^-10): ties to even = 1. */
  assert_int_equal(kq_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00);
  /* 1 + 3*2^-11 is halfway between 1+2^-10 and 1+2^-9: ties to even = 1+2^-9. */
  assert_int_equal(kq_f32_to_f16(1.0f + 3.0f * ldexpf(1.0f, -11)), 0x3c02);
  assert_int_equal(kq_f32_to_f16(65520.0f), 0x7c00);          /* overflow -> Inf */
  assert_int_equal(kq_f32_to_f16(65504.0f), 0x7bff);          /* max half */
  assert_int_equal(kq_f32_to_f16(ldexpf(1.0f, -24)), 0x0001); /* smallest subnormal */
  assert_int_equal(kq_f32_to_f16(ldexpf(1.0f, -26)), 0x0000);
  assert_true(isnan(kq_f16_to_f32(kq_f32_to_f16(NAN))));
}

static void bf16_round_trips_and_rounds_to_even(void **state) {
  (void)state;
  assert_true(kq_bf16_to_f32(kq_f32_to_bf16(1.5f)) == 1.5f);
  /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even = 1. */
  assert_true(kq_bf16_to_f32(kq_f32_to_bf16(1.0f + ldexpf(1.0f, -8))) == 1.0f);
  assert_true(isnan(kq_bf16_to_f32(kq_f32_to_bf16(NAN))));
}

static void size_arithmetic_detects_overflow(void **state) {
  (void)state;
  size_t out;
  assert_false(kq_mul_size(SIZE_MAX / 2 + 1, 2, &out));
  assert_true(kq_mul_size(3, 5, &out));
  assert_int_equal(out, 15);
  assert_false(kq_add_size(SIZE_MAX, 1, &out));
  assert_null(kq_malloc_array(SIZE_MAX / 4, 8, "huge"));
  assert_non_null(strstr(kq_last_error(), "huge"));
}

static void error_prefix_keeps_the_original_message(void **state) {
  (void)state;
  kq_set_error(KQ_ERR_FORMAT, "bad shape");
  assert_int_equal(kq_error_prefix(KQ_ERR_FORMAT, "calib.safetensors: layers.0.k"), KQ_ERR_FORMAT);
  assert_string_equal(kq_last_error(), "calib.safetensors: layers.0.k: bad shape");
}

static atomic_int g_sum;
static kq_status add_index(void *ctx, int64_t i) {
  (void)ctx;
  atomic_fetch_add(&g_sum, (int)i);
  return KQ_OK;
}
static kq_status fail_at_seven(void *ctx, int64_t i) {
  (void)ctx;
  if (i == 7) return kq_set_error(KQ_ERR_NUMERIC, "item %d failed", (int)i);
  return KQ_OK;
}

static void parallel_for_visits_each_index_once_and_reports_failure(void **state) {
  (void)state;
  atomic_store(&g_sum, 0);
  assert_int_equal(kq_parallel_for(1000, 4, add_index, NULL), KQ_OK);
  assert_int_equal(atomic_load(&g_sum), 999 * 1000 / 2);
  kq_clear_error();
  assert_int_equal(kq_parallel_for(100, 3, fail_at_seven, NULL), KQ_ERR_NUMERIC);
  assert_string_equal(kq_last_error(), "item 7 failed");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(f16_round_trips_every_finite_half),
      cmocka_unit_test(f16_rounds_to_nearest_even),
      cmocka_unit_test(bf16_round_trips_and_rounds_to_even),
      cmocka_unit_test(size_arithmetic_detects_overflow),
      cmocka_unit_test(error_prefix_keeps_the_original_message),
      cmocka_unit_test(parallel_for_visits_each_index_once_and_reports_failure),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
