/*
 * The CPU backend's project op stores quantized latent segments (SPEC §1b)
 * bit for bit by the rule: the F16 scale and every q8 / q4 value equal the
 * rule written from the SPEC text here and kq_quantize_row, on rows chosen
 * to stress it (exact ties, zeros, huge and tiny values) and on every width
 * of the vectorised quantizer's body and tails. Identity projections, so a
 * stored latent is the row itself. Run on every kernel set (KQSVD_CPU_ISA).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/kq_common.h"
#include "common/test_rng.h"
#include "cpu_quant_fixture.h"

/* The SPEC §1b rule, written from the text: s = F16(max|x| / qmax), q =
 * clamp(round half away from zero of x / s in F32). */
static uint16_t spec_quantize(const float *x, int n, int qmax, int *q) {
  float amax = 0.0f;
  for (int j = 0; j < n; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
  uint16_t sh = kq_f32_to_f16(amax / (float)qmax);
  float s = kq_f16_to_f32(sh);
  for (int j = 0; j < n; j++) {
    if (s == 0.0f) {
      q[j] = 0;
      continue;
    }
    float v = x[j] / s;
    double a = floor(fabs((double)v) + 0.5);
    int k = (int)(v < 0 ? -a : a);
    q[j] = k > qmax ? qmax : k < -qmax ? -qmax : k;
  }
  return sh;
}

#define SEG(w, b)                                                                                  \
  { (w), (b) }

/* Rows that stress the rule: exact ties x/s = k + 1/2, zeros, one huge
 * value, negatives; identity projection so the latent is the row itself. */
static void test_project_quantizes_bit_exactly_by_the_rule(void **state) {
  (void)state;
  enum { G = 2, D = 40, T = 9, CAP = 12 };
  kq_segment segs[4] = {SEG(6, 0), SEG(15, 8), SEG(14, 4), SEG(5, 8)};
  float x[T][G][D];
  uint64_t rs = 77;
  for (int t = 0; t < T; t++)
    for (int h = 0; h < G; h++)
      for (int i = 0; i < D; i++) x[t][h][i] = (float)test_rng_signed(&rs) * 3.0f;
  /* Row 0: ties. In the q8 segment amax 127 gives s = 1 exactly, so
   * x = k + 0.5 is a tie; in the q4 segment amax 7 gives s = 1 too. */
  for (int i = 6; i < 21; i++) x[0][0][i] = (float)(i - 13) + 0.5f;
  x[0][0][6] = 127.0f;
  for (int i = 21; i < 35; i++) x[0][0][i] = (float)(i - 28) + 0.5f;
  x[0][0][21] = -7.0f;
  for (int i = 0; i < D; i++) x[1][0][i] = 0.0f;                       /* zeros */
  x[2][1][10] = 6.0e4f, x[2][1][25] = -3.0e4f, x[2][1][37] = 1.0e-3f;  /* huge values */
  for (int i = 0; i < D; i++) x[3][1][i] = i % 2 ? -1.5e-6f : 2.5e-6f; /* tiny scales */
  for (int st = 0; st < 2; st++) {
    kq_storage storage = st ? KQ_STORAGE_F16 : KQ_STORAGE_F32;
    size_t bytes;
    kq_segment_planes(segs, 4, storage, G, CAP, 0, NULL, NULL, &bytes);
    kq_buffer *src = buffer_with(sizeof x, x), *dst = buffer_with(bytes, NULL);
    kq_project_op op = {.src = src,
                        .dst = dst,
                        .n_tokens = T,
                        .n_heads = G,
                        .head_dim = D,
                        .rank = D,
                        .capacity = CAP,
                        .pos = 2,
                        .storage = storage,
                        .flags = KQ_OP_IDENTITY_KEYS,
                        .n_seqs = 1,
                        .n_segments = 4,
                        .segments = segs};
    expect_ok(g_if->project(g_dev, &op));
    unsigned char *h = malloc(bytes);
    assert_int_equal(g_if->buffer_download(g_dev, dst, 0, h, bytes), KQ_OK);
    for (int t = 0; t < T; t++)
      for (int grp = 0; grp < G; grp++) {
        size_t slot = (size_t)grp * CAP + 2 + t;
        int col = 0;
        for (int s = 0; s < 4; s++) {
          size_t data, scale;
          kq_segment_planes(segs, 4, storage, G, CAP, s, &data, &scale, NULL);
          const float *xs = x[t][grp] + col;
          const unsigned char *row = h + data + slot * kq_segment_row_bytes(segs[s], storage);
          int w = segs[s].width;
          if (segs[s].bits == KQ_SEG_FLOAT) {
            for (int i = 0; i < w; i++) {
              if (storage == KQ_STORAGE_F16) {
                uint16_t v;
                memcpy(&v, row + 2 * i, 2);
                assert_int_equal(v, kq_f32_to_f16(xs[i]));
              } else {
                float v;
                memcpy(&v, row + 4 * i, 4);
                assert_true(v == xs[i]);
              }
            }
          } else {
            int qmax = segs[s].bits == KQ_SEG_Q8 ? 127 : 7, want[64];
            int8_t lib[64];
            uint16_t sw = spec_quantize(xs, w, qmax, want);
            assert_int_equal(kq_quantize_row(xs, w, qmax, lib), sw);
            uint16_t sg;
            memcpy(&sg, h + scale + slot * 2, 2);
            assert_int_equal(sg, sw);
            for (int i = 0; i < w; i++) {
              int got = segs[s].bits == KQ_SEG_Q8 ? (int8_t)row[i]
                        : i % 2                   ? (row[i / 2] >> 4) - 8
                                                  : (row[i / 2] & 15) - 8;
              if (got != want[i] || lib[i] != want[i])
                fail_msg("t %d group %d segment %d elem %d: stored %d, rule %d, kq_quantize_row %d",
                         t, grp, s, i, got, want[i], lib[i]);
            }
          }
          col += w;
        }
      }
    /* The ties really were ties, rounded away from zero. */
    if (st == 0) {
      size_t data;
      kq_segment_planes(segs, 4, storage, G, CAP, 1, &data, NULL, NULL);
      const int8_t *row = (const int8_t *)(h + data + (size_t)2 * 15);
      assert_int_equal(row[1], -6); /* -5.5 */
      assert_int_equal(row[8], 2);  /* 1.5 */
      assert_int_equal(row[7], 1);  /* 0.5 */
      assert_int_equal(row[6], -1); /* -0.5 */
    }
    free(h);
    g_if->buffer_free(g_dev, src);
    g_if->buffer_free(g_dev, dst);
  }
}

/* Every width 1..72 (vector body and tails of the vectorised quantizer),
 * q8 and q4, on rows with exact ties at an F16-exact scale, zeros, one huge
 * value and random values: the stored bytes and scale equal kq_quantize_row
 * and the SPEC rule written above. */
static void test_project_quantizer_is_bit_exact_for_every_width(void **state) {
  (void)state;
  enum { T = 6, MAXW = 72 };
  uint64_t rs = 4242;
  for (int w = 1; w <= MAXW; w++)
    for (int bits = 8; bits >= 4; bits -= 4) {
      if (bits == 4 && w % 2) continue;
      int qmax = bits == 8 ? 127 : 7;
      float x[T][MAXW];
      float s = 0.0078125f * (float)(1 + w % 5); /* F16-exact */
      for (int i = 0; i < w; i++) {
        int k = (int)((test_rng_signed(&rs) + 1.0) * qmax) - qmax;
        x[0][i] = ((float)k + (k < 0 ? -0.5f : 0.5f)) * s; /* ties */
        x[1][i] = 0.0f;
        x[2][i] = (float)test_rng_signed(&rs) * 1e-3f;
        x[3][i] = (float)test_rng_signed(&rs) * 50.0f;
        x[4][i] = (float)test_rng_signed(&rs);
        x[5][i] = (float)k * s; /* exact integers */
      }
      x[0][(7 * w) / 9] = (float)qmax * s; /* amax: the scale is exactly s */
      x[2][w / 2] = 6.0e4f;
      kq_segment seg = {w, bits};
      size_t bytes, scale;
      kq_segment_planes(&seg, 1, KQ_STORAGE_F32, 1, T, 0, NULL, &scale, &bytes);
      kq_buffer *src = buffer_with(sizeof x, NULL), *dst = buffer_with(bytes, NULL);
      for (int t = 0; t < T; t++)
        assert_int_equal(g_if->buffer_upload(g_dev, src, (size_t)t * w * 4, x[t], (size_t)w * 4),
                         KQ_OK);
      kq_project_op op = {.src = src,
                          .dst = dst,
                          .n_tokens = T,
                          .n_heads = 1,
                          .head_dim = w,
                          .rank = w,
                          .capacity = T,
                          .storage = KQ_STORAGE_F32,
                          .flags = KQ_OP_IDENTITY_VALUES,
                          .n_seqs = 1,
                          .n_segments = 1,
                          .segments = &seg};
      expect_ok(g_if->project(g_dev, &op));
      unsigned char h[4096];
      assert_true(bytes <= sizeof h);
      assert_int_equal(g_if->buffer_download(g_dev, dst, 0, h, bytes), KQ_OK);
      for (int t = 0; t < T; t++) {
        int want[MAXW];
        int8_t lib[MAXW];
        uint16_t sw = spec_quantize(x[t], w, qmax, want), sg;
        assert_int_equal(kq_quantize_row(x[t], w, qmax, lib), sw);
        memcpy(&sg, h + scale + (size_t)t * 2, 2);
        if (sg != sw)
          fail_msg("width %d bits %d row %d: scale %04x, rule %04x", w, bits, t, sg, sw);
        const unsigned char *row = h + (size_t)t * kq_segment_row_bytes(seg, KQ_STORAGE_F32);
        for (int i = 0; i < w; i++) {
          int got = bits == 8 ? (int8_t)row[i]
                    : i % 2   ? (row[i / 2] >> 4) - 8
                              : (row[i / 2] & 15) - 8;
          if (got != want[i] || lib[i] != want[i])
            fail_msg("width %d bits %d row %d elem %d: stored %d, rule %d, kq_quantize_row %d", w,
                     bits, t, i, got, want[i], lib[i]);
        }
      }
      g_if->buffer_free(g_dev, src);
      g_if->buffer_free(g_dev, dst);
    }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_project_quantizes_bit_exactly_by_the_rule),
      cmocka_unit_test(test_project_quantizer_is_bit_exact_for_every_width),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
