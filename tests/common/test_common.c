/* Properties of the common helpers: half conversions, overflow checks,
 * the error channel and parallel_for. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kq_common.h"
#include "common/test_rng.h"

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

/* A parallel_for inside an iteration of another (a fit step calling a
 * parallel helper) runs on that thread instead of waiting for the team it
 * belongs to: it completes, every inner index once, and an inner failure
 * comes back through both levels. */
static kq_status nested_sum(void *ctx, int64_t i) {
  (void)ctx;
  (void)i;
  return kq_parallel_for(100, 0, add_index, NULL);
}
static kq_status nested_fail(void *ctx, int64_t i) {
  (void)ctx;
  return i == 3 ? kq_parallel_for(100, 0, fail_at_seven, NULL) : KQ_OK;
}

static void nested_parallel_for_completes_and_reports_failure(void **state) {
  (void)state;
  atomic_store(&g_sum, 0);
  assert_int_equal(kq_parallel_for(8, 0, nested_sum, NULL), KQ_OK);
  assert_int_equal(atomic_load(&g_sum), 8 * (99 * 100 / 2));
  kq_clear_error();
  assert_int_equal(kq_parallel_for(8, 0, nested_fail, NULL), KQ_ERR_NUMERIC);
  assert_string_equal(kq_last_error(), "item 7 failed");
  assert_true(kq_pool_threads() >= 1);
}

/* Messages name the file first and once. */
static void error_context_names_the_file_once_and_first(void **state) {
  (void)state;
  kq_set_error(KQ_ERR_FORMAT, "m.gguf: truncated: 4 bytes left");
  kq_error_context(KQ_ERR_FORMAT, "m.gguf", "tensor %d", 136);
  assert_string_equal(kq_last_error(), "m.gguf: tensor 136: truncated: 4 bytes left");
  kq_set_error(KQ_ERR_IO, "no such file");
  kq_error_context(KQ_ERR_IO, "m.gguf", "tensor %d", 1);
  assert_string_equal(kq_last_error(), "m.gguf: tensor 1: no such file");
  kq_set_error(KQ_ERR_FORMAT, "c.st: bad header");
  kq_error_prefix(KQ_ERR_FORMAT, "c.st");
  assert_string_equal(kq_last_error(), "c.st: bad header");
  kq_set_error(KQ_ERR_FORMAT, "c.st: bad header");
  kq_error_prefix(KQ_ERR_FORMAT, "c.st: layers.3.k");
  assert_string_equal(kq_last_error(), "c.st: layers.3.k: bad header");
  kq_set_error(KQ_ERR_FORMAT, "bad header");
  kq_error_prefix(KQ_ERR_FORMAT, "c.st");
  assert_string_equal(kq_last_error(), "c.st: bad header");
}

static void name_parsers_refuse_a_null_output_pointer(void **state) {
  (void)state;
  assert_int_equal(kq_method_parse("kq-svd", NULL), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_layout_parse("joint", NULL), KQ_ERR_INVALID_ARGUMENT);
  kq_method m;
  assert_int_equal(kq_method_parse("quant", &m), KQ_OK);
  assert_int_equal(m, KQ_METHOD_QUANT);
  kq_layout l;
  assert_int_equal(kq_layout_parse("joint", &l), KQ_OK);
  assert_int_equal(l, KQ_LAYOUT_JOINT);
  assert_int_equal(kq_layout_parse("mla", &l), KQ_ERR_INVALID_ARGUMENT);
}

/* The quantizer every backend must match (SPEC §1b), checked against values
 * worked out by hand. */
static void quantize_row_rounds_half_away_and_clamps(void **state) {
  (void)state;
  /* max |x| = 7 -> q4 scale 1 (exact in F16): 2.5 -> 3, -2.5 -> -3, 0.49 -> 0. */
  const float x[6] = {7.0f, 2.5f, -2.5f, 0.49f, -7.0f, 0.5f};
  int8_t q[6];
  uint16_t s = kq_quantize_row(x, 6, 7, q);
  assert_true(kq_f16_to_f32(s) == 1.0f);
  const int8_t want[6] = {7, 3, -3, 0, -7, 1};
  for (int i = 0; i < 6; i++) assert_int_equal(q[i], want[i]);
  /* All zeros: scale 0, zeros stored. */
  const float z[3] = {0, 0, -0.0f};
  assert_int_equal(kq_quantize_row(z, 3, 127, q), 0);
  for (int i = 0; i < 3; i++) assert_int_equal(q[i], 0);
  /* q8: 254/127 = 2 -> 1.0 -> 0 or 1? 1.0 / 2 = 0.5 -> 1 (away from zero). */
  const float y[2] = {254.0f, 1.0f};
  s = kq_quantize_row(y, 2, 127, q);
  assert_true(kq_f16_to_f32(s) == 2.0f);
  assert_int_equal(q[0], 127);
  assert_int_equal(q[1], 1);
}

/* The FIPS 180-2 example messages, one-shot and fed in uneven pieces (every
 * split point crosses the 64-byte block and padding boundaries). */
static void sha256_matches_the_standard_examples(void **state) {
  (void)state;
  static const struct {
    const char *msg;
    const char *hex;
  } cases[] = {
      {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
      {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
      {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
  };
  char hex[65];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    size_t n = strlen(cases[i].msg);
    for (size_t cut = 0; cut <= n; cut++) {
      kq_sha256 s;
      kq_sha256_init(&s);
      kq_sha256_update(&s, cases[i].msg, cut);
      kq_sha256_update(&s, cases[i].msg + cut, n - cut);
      kq_sha256_final(&s, hex);
      assert_string_equal(hex, cases[i].hex);
    }
  }
  kq_sha256 s; /* one million 'a', in 1000-byte pieces */
  kq_sha256_init(&s);
  char a[1000];
  memset(a, 'a', sizeof a);
  for (int i = 0; i < 1000; i++) kq_sha256_update(&s, a, sizeof a);
  kq_sha256_final(&s, hex);
  assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

/* kq_sha256_file agrees with the system's sha256sum on a file longer than
 * its 1 MiB read buffer. */
static void sha256_file_agrees_with_sha256sum(void **state) {
  (void)state;
  char path[] = "/tmp/kq_sha256_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  FILE *f = fdopen(fd, "wb");
  uint64_t rng = 12345;
  for (int i = 0; i < (1 << 20) + 777; i++) fputc((int)(test_rng_u32(&rng) >> 24), f);
  fclose(f);
  char hex[65], cmd[128], want[65] = "";
  assert_int_equal(kq_sha256_file(path, hex), KQ_OK);
  snprintf(cmd, sizeof cmd, "sha256sum %s", path);
  FILE *p = popen(cmd, "r");
  if (p) {
    if (fscanf(p, "%64s", want) != 1) want[0] = '\0';
    pclose(p);
  }
  unlink(path);
  if (!want[0]) skip(); /* no sha256sum on this system */
  assert_string_equal(hex, want);
  assert_int_equal(kq_sha256_file("/nonexistent/kq_model.gguf", hex), KQ_ERR_IO);
  assert_non_null(strstr(kq_last_error(), "/nonexistent/kq_model.gguf"));
}

/* The one median: odd and even counts, unsorted input, NaN for none. */
static void median_of_odd_even_and_empty(void **state) {
  (void)state;
  double odd[] = {5.0, 1.0, 3.0};
  assert_true(kq_median(odd, 3) == 3.0);
  double even[] = {4.0, -2.0, 10.0, 1.0};
  assert_true(kq_median(even, 4) == 2.5); /* (1 + 4) / 2 */
  double one[] = {7.5};
  assert_true(kq_median(one, 1) == 7.5);
  assert_true(isnan(kq_median(one, 0)));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(f16_round_trips_every_finite_half),
      cmocka_unit_test(sha256_matches_the_standard_examples),
      cmocka_unit_test(sha256_file_agrees_with_sha256sum),
      cmocka_unit_test(f16_rounds_to_nearest_even),
      cmocka_unit_test(bf16_round_trips_and_rounds_to_even),
      cmocka_unit_test(size_arithmetic_detects_overflow),
      cmocka_unit_test(error_prefix_keeps_the_original_message),
      cmocka_unit_test(parallel_for_visits_each_index_once_and_reports_failure),
      cmocka_unit_test(nested_parallel_for_completes_and_reports_failure),
      cmocka_unit_test(error_context_names_the_file_once_and_first),
      cmocka_unit_test(name_parsers_refuse_a_null_output_pointer),
      cmocka_unit_test(quantize_row_rounds_half_away_and_clamps),
      cmocka_unit_test(median_of_odd_even_and_empty),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
