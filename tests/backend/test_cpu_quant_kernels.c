/*
 * The kernels of the CPU backend's quantized path, called one by one on the
 * kernel set KQSVD_CPU_ISA selects (kq_cpu_kernels_get): the int16 query
 * layout, the int16 and int8 logits and P·V kernels against float64, and the
 * non-finite check of a logit tile. A set without a kernel checks only that
 * it is one documented to lack it (cpu_kernels.h: the portable set has none
 * of them; pv_plane_i8 needs VNNI) and says so.
 *
 * Thresholds: int16 logits are exact integer sums times F32 scales
 * (relative 1e-6) plus the query's rounding (half a step per product); P·V
 * 2^-16 of the largest weight per position. The int8 bounds are derived
 * above each test.
 */
#include <float.h>
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
#include "cpu_kernels.h"

/* Element c of a q4 query chunk layout: chunks of 32 while 32 elements
 * remain, then 16; even elements first within a chunk. */
static int q4_slot(int w, int c) {
  int c0 = 0;
  for (;;) {
    int n = c0 + 32 <= w ? 32 : 16;
    if (c < c0 + n) return c0 + ((c - c0) % 2 ? n / 2 + (c - c0) / 2 : (c - c0) / 2);
    c0 += n;
  }
}

/* kq_cpu_query_i16 by its contract: round(x / s), s = max|x| / 32767, at
 * the documented slot, zeros elsewhere, and Σ q. */
static void test_int16_query_follows_its_layout(void **state) {
  (void)state;
  uint64_t st = 7;
  int widths[] = {1, 2, 7, 14, 16, 17, 30, 32, 34, 48, 62, 64, 96, 100, 512};
  for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++)
    for (int bits = KQ_SEG_Q4; bits <= KQ_SEG_Q8; bits += 4) {
      int w = widths[wi];
      if (bits == KQ_SEG_Q4 && w % 2) continue;
      float x[512];
      int16_t q[512 + 16];
      for (int c = 0; c < w; c++) x[c] = (float)(3.0 * test_rng_signed(&st));
      float scale;
      int32_t sum;
      kq_cpu_query_i16(bits, x, w, q, &scale, &sum);
      double amax = 0;
      for (int c = 0; c < w; c++) amax = fmax(amax, fabs(x[c]));
      assert_true(fabs(scale - amax / 32767.0) <= 1e-6 * scale);
      assert_int_equal(kq_cpu_i16_width(w) % 16, 0);
      int seen[512 + 16] = {0};
      int64_t total = 0;
      for (int c = 0; c < w; c++) {
        int at = bits == KQ_SEG_Q4 ? q4_slot(w, c) : c;
        assert_true(at < kq_cpu_i16_width(w));
        double want = round((double)x[c] / scale);
        if (fabs(q[at] - want) > 1)
          fail_msg("w %d bits %d element %d: %d, want %.0f", w, bits, c, q[at], want);
        seen[at] = 1;
        total += q[at];
      }
      for (int c = 0; c < kq_cpu_i16_width(w); c++)
        if (!seen[c]) assert_int_equal(q[c], 0);
      assert_int_equal(sum, total);
    }
}

/* 1 when the selected set has the kernel (`present`) (the test then runs); else fails
 * unless the set is one cpu_kernels.h documents as lacking it: the portable
 * set lacks every integer kernel, and pv_plane_i8 needs VNNI. A set that
 * lost a kernel by mistake would otherwise pass these tests untested. */
static int have_kernel(const kq_cpu_kernels *k, int present, int needs_vnni, const char *what) {
  if (present) return 1;
  int generic = strcmp(k->isa, "generic") == 0;
  int vnni = strstr(k->isa, "vnni") != NULL;
  if (!generic && !(needs_vnni && !vnni))
    fail_msg("isa %s has no %s, which only the portable set%s may lack", k->isa, what,
             needs_vnni ? " or a set without VNNI" : "");
  print_message("isa %s has no %s (documented)\n", k->isa, what);
  return 0;
}

/* The int16 kernels of the selected set against float64 on odd widths, 1-5
 * rows, tiles of 1-64 positions (including tails of 1-3 keys and an odd
 * count for the position pairs of P·V). */
static void test_int16_kernels_match_float64_for_odd_shapes(void **state) {
  (void)state;
  const kq_cpu_kernels *k = kq_cpu_kernels_get();
  if (!have_kernel(k, k->logits_plane_i16 != NULL, 0, "int16 kernels")) return;
  uint64_t st = 11;
  int widths[] = {2, 8, 14, 16, 30, 32, 40, 64, 66, 510, 512};
  int nts[] = {1, 3, 5, 33, 64};
  for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++)
    for (int bits = KQ_SEG_Q4; bits <= KQ_SEG_Q8; bits += 4)
      for (size_t ni = 0; ni < sizeof nts / sizeof nts[0]; ni++)
        for (int rows = 1; rows <= 5; rows += 2) {
          int w = widths[wi], nt = nts[ni], wp = kq_cpu_i16_width(w);
          size_t rb = bits == KQ_SEG_Q8 ? (size_t)w : (size_t)w / 2;
          unsigned char *plane = malloc(rb * nt);
          double *val = malloc(sizeof(double) * w * nt);
          for (int t = 0; t < nt; t++)
            for (int c = 0; c < w; c++) {
              int v = bits == KQ_SEG_Q8 ? (int)(127.0 * test_rng_signed(&st))
                                        : (int)(8.0 * test_rng_signed(&st));
              if (bits == KQ_SEG_Q4 && v > 7) v = 7;
              val[(size_t)t * w + c] = v;
              if (bits == KQ_SEG_Q8) {
                plane[(size_t)t * rb + c] = (unsigned char)(int8_t)v;
              } else {
                unsigned char *b = &plane[(size_t)t * rb + c / 2];
                unsigned u = (unsigned)(v + 8);
                *b = c % 2 ? (unsigned char)((*b & 15u) | (u << 4)) : (unsigned char)u;
              }
            }
          float x[5][512], qs[5], ks[64], s[5 * 64], p[5 * 64], acc[5 * 512];
          int16_t q16[5 * 528], wtmp[KQ_CPU_I16_ROWS * 66];
          int32_t qsum[5];
          for (int r = 0; r < rows; r++) {
            for (int c = 0; c < w; c++) x[r][c] = (float)test_rng_signed(&st);
            kq_cpu_query_i16(bits, x[r], w, q16 + (size_t)r * wp, &qs[r], &qsum[r]);
          }
          for (int t = 0; t < nt; t++) ks[t] = (float)(0.01 * (1.5 + test_rng_signed(&st)));
          for (int i = 0; i < rows * 64; i++) p[i] = (float)(0.5 + 0.5 * test_rng_signed(&st));
          for (int i = 0; i < rows * w; i++) acc[i] = 0.25f;
          k->logits_plane_i16(bits, q16, rows, wp, qs, qsum, plane, rb, nt, w, ks, s, 64, 0);
          k->pv_plane_i16(bits, p, rows, 64, plane, rb, nt, w, acc, w, wtmp);
          /* Per element: the int16 rounding (half a step per product, the
           * step qs for the query, max p / 32767 for the weights) plus F32
           * rounding of the scale products (1e-6 of Σ|terms|). */
          for (int r = 0; r < rows; r++) {
            for (int t = 0; t < nt; t++) {
              double ref = 0, mag = 0, vabs = 0;
              for (int c = 0; c < w; c++) {
                double v = val[(size_t)t * w + c];
                ref += (double)x[r][c] * v, mag += fabs((double)x[r][c] * v), vabs += fabs(v);
              }
              double got = s[r * 64 + t], bound = ks[t] * (0.5 * qs[r] * vabs + 1e-6 * mag);
              if (!(fabs(got - ks[t] * ref) <= bound))
                fail_msg("isa %s bits %d w %d nt %d rows %d: logit %d,%d %.9g, want %.9g", k->isa,
                         bits, w, nt, rows, r, t, got, ks[t] * ref);
            }
            double pmax = 0;
            for (int t = 0; t < nt; t++) pmax = fmax(pmax, p[r * 64 + t]);
            for (int c = 0; c < w; c++) {
              double ref = 0.25, mag = 0.25, vabs = 0;
              for (int t = 0; t < nt; t++) {
                double v = val[(size_t)t * w + c];
                ref += (double)p[r * 64 + t] * v, mag += fabs(p[r * 64 + t] * v), vabs += fabs(v);
              }
              double bound = 0.5 * pmax / 32767.0 * vabs * 1.001 + 1e-6 * mag;
              if (!(fabs(acc[r * w + c] - ref) <= bound))
                fail_msg("isa %s bits %d w %d nt %d rows %d: P·V %d,%d %.9g, want %.9g", k->isa,
                         bits, w, nt, rows, r, c, acc[r * w + c], ref);
            }
          }
          free(plane), free(val);
        }
}

/* A key segment list for the int8 logits test: bits (0 float), width, F16
 * when float. */
typedef struct i8seg {
  int bits, width, f16;
} i8seg;

/* logits_planes_i8 of the selected set (whichever KQSVD_CPU_ISA forces)
 * against float64 on mixed segment lists with odd widths (a q8 tail of 1-31
 * bytes, q4 tails, float segments of 3 and 5), 1-6 rows (blocks of 4 and
 * the remainders) and tiles of 1-64 positions (tails of a block of 8). The
 * bound is the two-digit query's rounding, s / 508 per element with s =
 * max |x| / 127 of the row's segment, times Σ|k| and the position's scale,
 * plus F32 rounding (1e-6 of Σ|terms|): a wrong offset correction, a
 * dropped digit or a misplaced nibble is off by at least ~100x that. */
static void test_int8_logits_match_float64_for_mixed_segments(void **state) {
  (void)state;
  const kq_cpu_kernels *k = kq_cpu_kernels_get();
  if (!have_kernel(k, k->logits_planes_i8 != NULL, 0, "int8 logits")) return;
  static const i8seg lists[][4] = {
      {{KQ_SEG_Q8, 32, 0}},
      {{KQ_SEG_Q4, 64, 0}},
      {{KQ_SEG_Q8, 1, 0}},
      {{KQ_SEG_Q4, 2, 0}},
      {{KQ_SEG_FLOAT, 8, 1}, {KQ_SEG_Q8, 32, 0}, {KQ_SEG_Q4, 64, 0}},
      {{KQ_SEG_FLOAT, 4, 1}, {KQ_SEG_Q8, 16, 0}, {KQ_SEG_Q4, 30, 0}},
      {{KQ_SEG_FLOAT, 3, 0}, {KQ_SEG_Q8, 17, 0}, {KQ_SEG_Q4, 46, 0}},
      {{KQ_SEG_Q8, 100, 0}, {KQ_SEG_Q4, 130, 0}, {KQ_SEG_FLOAT, 5, 1}},
      {{KQ_SEG_Q4, 66, 0}, {KQ_SEG_Q8, 63, 0}, {KQ_SEG_Q4, 200, 0}, {KQ_SEG_Q8, 8, 0}},
  };
  int nts[] = {1, 7, 8, 13, 64};
  uint64_t st = 23;
  for (size_t li = 0; li < sizeof lists / sizeof lists[0]; li++)
    for (size_t ni = 0; ni < sizeof nts / sizeof nts[0]; ni++)
      for (int rows = 1; rows <= 6; rows++) {
        int nt = nts[ni], npl = 0, ldq = 0;
        kq_cpu_plane pl[4];
        double *val[4] = {NULL};
        float ks[4][64];
        for (int g = 0; g < 4 && lists[li][g].width; g++, npl++) {
          const i8seg *sg = &lists[li][g];
          int w = sg->width;
          size_t rb = sg->bits == KQ_SEG_Q8   ? (size_t)w
                      : sg->bits == KQ_SEG_Q4 ? (size_t)w / 2
                                              : (size_t)w * (sg->f16 ? 2 : 4);
          /* 64 bytes of slack: the masked loads read whole dwords */
          unsigned char *plane = calloc(rb * nt + 64, 1);
          val[g] = malloc(sizeof(double) * w * nt);
          for (int t = 0; t < nt; t++) {
            ks[g][t] = sg->bits ? (float)(0.01 * (1.5 + test_rng_signed(&st))) : 1.0f;
            for (int c = 0; c < w; c++) {
              double v;
              unsigned char *row = plane + (size_t)t * rb;
              if (sg->bits == KQ_SEG_Q8) {
                int iv = (int)(127.0 * test_rng_signed(&st));
                v = iv;
                row[c] = (unsigned char)(int8_t)iv;
              } else if (sg->bits == KQ_SEG_Q4) {
                int iv = (int)(8.0 * test_rng_signed(&st));
                iv = iv > 7 ? 7 : iv;
                v = iv;
                unsigned u = (unsigned)(iv + 8);
                row[c / 2] =
                    c % 2 ? (unsigned char)((row[c / 2] & 15u) | (u << 4)) : (unsigned char)u;
              } else if (sg->f16) {
                uint16_t h = kq_f32_to_f16((float)test_rng_signed(&st));
                v = kq_f16_to_f32(h);
                memcpy(row + 2 * c, &h, 2);
              } else {
                float f = (float)test_rng_signed(&st);
                v = f;
                memcpy(row + 4 * c, &f, 4);
              }
              val[g][(size_t)t * w + c] = v;
            }
          }
          pl[g] = (kq_cpu_plane){sg->bits, sg->f16, w, ldq, plane, rb, sg->bits ? ks[g] : NULL};
          ldq += (w + 7) / 8 * 8;
        }
        float *q = calloc((size_t)rows * ldq, sizeof *q), s[6 * 64];
        for (int r = 0; r < rows; r++)
          for (int g = 0; g < npl; g++)
            for (int c = 0; c < pl[g].width; c++)
              q[(size_t)r * ldq + pl[g].qoff + c] = (float)test_rng_signed(&st) * (float)(g + 1);
        size_t ldqd = kq_cpu_query_i8_bytes(pl, npl);
        unsigned char *qd = malloc((size_t)rows * ldqd);
        kq_cpu_query_i8(pl, npl, q, rows, ldq, qd, ldqd);
        k->logits_planes_i8(pl, npl, q, ldq, qd, ldqd, rows, nt, s, 64);
        for (int r = 0; r < rows; r++)
          for (int t = 0; t < nt; t++) {
            double ref = 0, mag = 0, bound = 0;
            for (int g = 0; g < npl; g++) {
              const float *x = q + (size_t)r * ldq + pl[g].qoff;
              double amax = 0, part = 0, vabs = 0;
              for (int c = 0; c < pl[g].width; c++) {
                double v = val[g][(size_t)t * pl[g].width + c];
                amax = fmax(amax, fabs(x[c]));
                part += x[c] * v, vabs += fabs(v), mag += fabs(ks[g][t] * x[c] * v);
              }
              ref += ks[g][t] * part;
              if (pl[g].bits) bound += ks[g][t] * (amax / 127.0 / 508.0) * vabs;
            }
            bound += 1e-6 * mag;
            if (!(fabs(s[r * 64 + t] - ref) <= bound))
              fail_msg("isa %s list %zu nt %d rows %d: logit %d,%d %.9g, want %.9g (bound %.3g)",
                       k->isa, li, nt, rows, r, t, s[r * 64 + t], ref, bound);
          }
        for (int g = 0; g < npl; g++) free((void *)pl[g].data), free(val[g]);
        free(q), free(qd);
      }
}

/* pv_plane_i8 of the selected set against float64: q8 and q4 segments of
 * widths 1-200 (tails of a 16-byte load, pieces of KQ_CPU_PV_I8_COLS), 1-4
 * rows, tiles of 1-64 positions (tails of a group of 4), weights with zeros
 * and a spread of 1e4, accumulators that must be added to. The bound is the
 * weights' 16-bit rounding, (max_t w) / 131070 per weight, times Σ_t |v|,
 * plus F32 rounding (1e-6 of Σ |terms|): a dropped digit (~256x), a column
 * off by one in the transpose, a missing value scale or q4 offset is off by
 * far more. Then a NaN weight turns its row, and only its row, to NaN. */
static void test_int8_pv_matches_float64_for_odd_shapes(void **state) {
  (void)state;
  const kq_cpu_kernels *k = kq_cpu_kernels_get();
  if (!have_kernel(k, k->pv_plane_i8 != NULL, 1, "int8 P.V")) return;
  enum { LDA = 208, LDS = 64 };
  static const int widths[] = {1, 2, 8, 14, 16, 17, 30, 33, 64, 80, 130, 200};
  static const int nts[] = {1, 3, 4, 5, 13, 64};
  uint64_t st = 71;
  unsigned char *tmp = malloc(KQ_CPU_PV_I8_SCRATCH);
  float p[4 * LDS], sc[64], acc[4 * LDA];
  double ref[4 * LDA];
  for (int bits = KQ_SEG_Q4; bits <= KQ_SEG_Q8; bits += KQ_SEG_Q8 - KQ_SEG_Q4)
    for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++)
      for (size_t ni = 0; ni < sizeof nts / sizeof nts[0]; ni++)
        for (int rows = 1; rows <= KQ_CPU_PV_I8_ROWS; rows++) {
          int w = widths[wi], nt = nts[ni];
          if (bits == KQ_SEG_Q4 && w % 2) continue;
          size_t rb = bits == KQ_SEG_Q8 ? (size_t)w : (size_t)w / 2;
          unsigned char *plane = calloc(rb * nt + 64, 1); /* slack: whole-dword loads */
          int *val = malloc(sizeof(int) * w * nt);
          for (int t = 0; t < nt; t++) {
            sc[t] = (float)(0.01 * (1.5 + test_rng_signed(&st)));
            for (int c = 0; c < w; c++) {
              int iv = bits == KQ_SEG_Q8 ? (int)(127.0 * test_rng_signed(&st))
                                         : (int)(8.0 * test_rng_signed(&st));
              iv = iv > 7 && bits == KQ_SEG_Q4 ? 7 : iv;
              val[t * w + c] = iv;
              unsigned char *row = plane + (size_t)t * rb;
              if (bits == KQ_SEG_Q8) {
                row[c] = (unsigned char)(int8_t)iv;
              } else {
                unsigned u = (unsigned)(iv + 8);
                row[c / 2] =
                    c % 2 ? (unsigned char)((row[c / 2] & 15u) | (u << 4)) : (unsigned char)u;
              }
            }
          }
          for (int r = 0; r < rows; r++)
            for (int t = 0; t < nt; t++) {
              double u = test_rng_signed(&st);
              p[r * LDS + t] = u < -0.8 ? 0.0f : (float)pow(10.0, 2.0 * u - 2.0);
            }
          for (int i = 0; i < rows * LDA; i++)
            acc[i] = (float)test_rng_signed(&st), ref[i] = acc[i];
          k->pv_plane_i8(bits, p, rows, LDS, plane, rb, nt, w, sc, acc, LDA, tmp);
          for (int r = 0; r < rows; r++) {
            double wmax = 0;
            for (int t = 0; t < nt; t++) wmax = fmax(wmax, (double)p[r * LDS + t] * sc[t]);
            for (int c = 0; c < w; c++) {
              double want = ref[r * LDA + c], mag = fabs(want), vabs = 0;
              for (int t = 0; t < nt; t++) {
                double term = (double)p[r * LDS + t] * sc[t] * val[t * w + c];
                want += term, mag += fabs(term), vabs += abs(val[t * w + c]);
              }
              double bound = wmax / 131070.0 * vabs + 1e-6 * mag;
              if (!(fabs(acc[r * LDA + c] - want) <= bound))
                fail_msg("isa %s q%d w %d nt %d rows %d: acc %d,%d %.9g, want %.9g (bound %.3g)",
                         k->isa, bits == KQ_SEG_Q8 ? 8 : 4, w, nt, rows, r, c, acc[r * LDA + c],
                         want, bound);
            }
            for (int c = w; c < LDA; c++) /* past the padded width: untouched */
              if (c >= (w + 7) / 8 * 8 && acc[r * LDA + c] != (float)ref[r * LDA + c])
                fail_msg("isa %s w %d: column %d written", k->isa, w, c);
          }
          if (rows == 3 && nt > 1) { /* a NaN weight in row 1 */
            for (int i = 0; i < rows * LDA; i++) acc[i] = 0.0f;
            p[1 * LDS + nt / 2] = NAN;
            k->pv_plane_i8(bits, p, rows, LDS, plane, rb, nt, w, sc, acc, LDA, tmp);
            for (int r = 0; r < rows; r++)
              for (int c = 0; c < w; c++)
                if ((r == 1) != isnan(acc[r * LDA + c]))
                  fail_msg("isa %s w %d nt %d: NaN weight in row 1, acc %d,%d = %g", k->isa, w, nt,
                           r, c, acc[r * LDA + c]);
          }
          free(plane), free(val);
        }
  free(tmp);
}

/* any_nonfinite_rows of the selected set: 0 on finite logits (the largest
 * and smallest magnitudes, -0, subnormals), 1 for inf, -inf or NaN planted
 * at any position inside [rows, nt), 0 for one planted just outside (the
 * next column or row: other tiles' leftovers there must not count). */
static void test_nonfinite_check_sees_exactly_its_rows_and_columns(void **state) {
  (void)state;
  const kq_cpu_kernels *k = kq_cpu_kernels_get();
  enum { LDS = 72 };
  static const float finite[] = {FLT_MAX, -FLT_MAX, 0.0f, -0.0f, 1e-45f, -1e-40f, 3.5f, -1e30f};
  const float bad[] = {INFINITY, -INFINITY, NAN};
  int nts[] = {1, 3, 7, 8, 9, 15, 16, 33, 64};
  float s[7 * LDS];
  for (size_t ni = 0; ni < sizeof nts / sizeof nts[0]; ni++)
    for (int rows = 1; rows <= 6; rows++) {
      int nt = nts[ni];
      for (int i = 0; i < 7 * LDS; i++) s[i] = finite[i % 8];
      if (k->any_nonfinite_rows(s, rows, LDS, nt))
        fail_msg("isa %s nt %d rows %d: finite logits reported", k->isa, nt, rows);
      for (size_t b = 0; b < 3; b++) {
        for (int r = 0; r < rows; r++)
          for (int t = 0; t < nt; t++) {
            float keep = s[r * LDS + t];
            s[r * LDS + t] = bad[b];
            if (!k->any_nonfinite_rows(s, rows, LDS, nt))
              fail_msg("isa %s nt %d rows %d: %g at %d,%d missed", k->isa, nt, rows, bad[b], r, t);
            s[r * LDS + t] = keep;
          }
        int outside[2] = {(rows - 1) * LDS + nt, rows * LDS};
        for (int o = 0; o < 2; o++) {
          float keep = s[outside[o]];
          s[outside[o]] = bad[b];
          if (k->any_nonfinite_rows(s, rows, LDS, nt))
            fail_msg("isa %s nt %d rows %d: %g outside (%d) reported", k->isa, nt, rows, bad[b],
                     outside[o]);
          s[outside[o]] = keep;
        }
      }
    }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_int16_query_follows_its_layout),
      cmocka_unit_test(test_int16_kernels_match_float64_for_odd_shapes),
      cmocka_unit_test(test_int8_logits_match_float64_for_mixed_segments),
      cmocka_unit_test(test_int8_pv_matches_float64_for_odd_shapes),
      cmocka_unit_test(test_nonfinite_check_sees_exactly_its_rows_and_columns),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
