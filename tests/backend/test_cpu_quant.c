/*
 * CPU backend with quantized latent segments (SPEC §1b) and the joint
 * layout, driven through its kq_backend_iface: append (project) writes every
 * segment's planes by the quantization rule, attend matches a float64
 * reference that dequantizes the stored planes with the SPEC rule. The
 * quantizer's bit-exactness is tested in test_cpu_quant_project.c, the
 * kernels of the quantized path one by one in test_cpu_quant_kernels.c.
 *
 * Thresholds (NMSE = Σ(a−b)²/Σb²):
 *   attend 1e-8: the reference reads the very latents the backend stored, so
 *     the only differences are F32 accumulation and the 2^x polynomial
 *     (relative ~2e-7 per term, NMSE ~1e-13); with KQSVD_CPU_QUANT=int16 the
 *     query and softmax weights of quantized segments are rounded to int16
 *     (error 2^-16 of a row's largest element: NMSE ~1e-10); a wrong scale,
 *     segment offset or nibble order gives NMSE >= 1e-3.
 *   project: stored (dequantized) vs float64 latents, the quantization noise
 *     (step s = amax/qmax, uniform error s²/12): for rows of uniform values
 *     amax ≈ max|x| ≈ sqrt(3)·rms, so NMSE ≈ 3/(12 qmax²): 1.6e-5 (q8),
 *     5e-3 (q4); thresholds 1e-4 and 2e-2. Float F32 segments 1e-12, F16 1e-6.
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

#include "attn_ref.h"
#include "cpu_quant_fixture.h"

typedef struct qcase {
  kq_layout layout;
  kq_rope_mode rope;
  kq_rope_layout rope_layout;
  kq_storage storage;
  int H, Hk, d, n_ctx, m;
  int nks, nvs;
  kq_segment ks[4], vs[4];
} qcase;

static int seg_rank(const kq_segment *s, int n) {
  int r = 0;
  for (int i = 0; i < n; i++) r += s[i].width;
  return r;
}

/* Dequantized latents [groups, cap, rank] (double) of a downloaded buffer. */
static double *dequantize(const unsigned char *buf, const kq_segment *segs, int n, int rank,
                          kq_storage storage, int groups, int cap) {
  double *out = calloc((size_t)groups * cap * rank, sizeof *out);
  int col = 0;
  for (int s = 0; s < n; s++) {
    size_t data, scale;
    kq_segment_planes(segs, n, storage, (size_t)groups, (size_t)cap, s, &data, &scale, NULL);
    size_t rb = kq_segment_row_bytes(segs[s], storage);
    for (size_t slot = 0; slot < (size_t)groups * cap; slot++) {
      const unsigned char *row = buf + data + slot * rb;
      double *o = out + slot * rank + col;
      double sc = 1.0;
      if (segs[s].bits != KQ_SEG_FLOAT) {
        uint16_t h;
        memcpy(&h, buf + scale + slot * 2, 2);
        sc = kq_f16_to_f32(h);
      }
      for (int i = 0; i < segs[s].width; i++) {
        if (segs[s].bits == KQ_SEG_Q8) {
          o[i] = sc * (int8_t)row[i];
        } else if (segs[s].bits == KQ_SEG_Q4) {
          int nib = i % 2 ? row[i / 2] >> 4 : row[i / 2] & 15;
          o[i] = sc * (nib - 8);
        } else if (storage == KQ_STORAGE_F16) {
          uint16_t h;
          memcpy(&h, row + 2 * i, 2);
          o[i] = kq_f16_to_f32(h);
        } else {
          float f;
          memcpy(&f, row + 4 * i, 4);
          o[i] = f;
        }
      }
    }
    col += segs[s].width;
  }
  return out;
}

static double nmse(const double *a, const double *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return den > 0 ? num / den : num;
}

/* Projects keys and values of one case in two appends, attends, and checks
 * both against float64. */
static void run_case(const qcase *k) {
  int joint = k->layout == KQ_LAYOUT_JOINT;
  int G = joint ? 1 : k->Hk, D = joint ? k->Hk * k->d : k->d, d = k->d, H = k->H, Hk = k->Hk;
  int g = H / Hk, rk = seg_rank(k->ks, k->nks), rv = seg_rank(k->vs, k->nvs);
  int cap = k->n_ctx + 7, m = k->m;
  uint64_t rs = 0x5eedu + (uint64_t)rk * 31u + (uint64_t)rv + (uint64_t)k->n_ctx;
  size_t nkv = (size_t)k->n_ctx * Hk * d;
  float *keys = malloc(nkv * 4), *vals = malloc(nkv * 4);
  float *A = malloc((size_t)G * D * rk * 4), *C = malloc((size_t)G * D * rv * 4);
  float *B = malloc((size_t)Hk * d * rk * 4), *q = malloc((size_t)m * H * d * 4);
  ref_fill(keys, nkv, &rs, 1.0);
  ref_fill(vals, nkv, &rs, 1.0);
  ref_fill(A, (size_t)G * D * rk, &rs, 1.0 / sqrt(D));
  ref_fill(C, (size_t)G * D * rv, &rs, 1.0 / sqrt(D));
  ref_fill(B, (size_t)Hk * d * rk, &rs, 2.0 / sqrt(d));
  ref_fill(q, (size_t)m * H * d, &rs, 2.0);

  size_t kbytes, vbytes;
  kq_segment_planes(k->ks, k->nks, k->storage, (size_t)G, (size_t)cap, 0, NULL, NULL, &kbytes);
  kq_segment_planes(k->vs, k->nvs, k->storage, (size_t)G, (size_t)cap, 0, NULL, NULL, &vbytes);
  kq_buffer *bk = buffer_with(nkv * 4, keys), *bv = buffer_with(nkv * 4, vals);
  kq_buffer *bA = buffer_with((size_t)G * D * rk * 4, A),
            *bC = buffer_with((size_t)G * D * rv * 4, C);
  kq_buffer *bB = buffer_with((size_t)Hk * d * rk * 4, B),
            *bq = buffer_with((size_t)m * H * d * 4, q);
  kq_buffer *kc = buffer_with(kbytes, NULL), *vc = buffer_with(vbytes, NULL);
  kq_buffer *bo = buffer_with((size_t)m * H * rv * 4, NULL);

  /* Two appends: the second at pos > 0. */
  int n1 = k->n_ctx / 3 + 1;
  for (int part = 0; part < 2; part++) {
    int pos = part ? n1 : 0, n = part ? k->n_ctx - n1 : n1;
    size_t off = (size_t)pos * Hk * d * 4;
    kq_project_op op = {.src = bk,
                        .src_offset = off,
                        .proj = bA,
                        .dst = kc,
                        .n_tokens = n,
                        .n_heads = G,
                        .head_dim = D,
                        .rank = rk,
                        .capacity = cap,
                        .pos = pos,
                        .storage = k->storage,
                        .n_seqs = 1,
                        .n_segments = k->nks,
                        .segments = k->ks};
    expect_ok(g_if->project(g_dev, &op));
    op.src = bv, op.proj = bC, op.dst = vc, op.rank = rv, op.n_segments = k->nvs;
    op.segments = k->vs;
    expect_ok(g_if->project(g_dev, &op));
  }
  kq_attend_op at = {.q = bq,
                     .key_down = bA,
                     .query_down = bB,
                     .k_cache = kc,
                     .v_cache = vc,
                     .out = bo,
                     .n_queries = m,
                     .n_ctx = k->n_ctx,
                     .n_heads = H,
                     .n_kv_heads = Hk,
                     .head_dim = d,
                     .rank_k = rk,
                     .rank_v = rv,
                     .capacity = cap,
                     .storage = k->storage,
                     .rope = k->rope,
                     .rope_layout = k->rope_layout,
                     .rope_theta = 10000.0f,
                     .scale = 1.0f / sqrtf((float)d),
                     .n_seqs = 1,
                     .layout = k->layout,
                     .n_key_segments = k->nks,
                     .n_value_segments = k->nvs,
                     .key_segments = k->ks,
                     .value_segments = k->vs};
  expect_ok(g_if->attend(g_dev, &at));

  unsigned char *hk = malloc(kbytes), *hv = malloc(vbytes);
  float *out = malloc((size_t)m * H * rv * 4);
  assert_int_equal(g_if->buffer_download(g_dev, kc, 0, hk, kbytes), KQ_OK);
  assert_int_equal(g_if->buffer_download(g_dev, vc, 0, hv, vbytes), KQ_OK);
  assert_int_equal(g_if->buffer_download(g_dev, bo, 0, out, (size_t)m * H * rv * 4), KQ_OK);
  double *kl = dequantize(hk, k->ks, k->nks, rk, k->storage, G, cap);
  double *vl = dequantize(hv, k->vs, k->nvs, rv, k->storage, G, cap);

  /* Project: stored latents against x·A in float64, per segment kind. */
  const kq_segment *sides[2] = {k->ks, k->vs};
  const double *stored[2] = {kl, vl};
  const float *srcs[2] = {keys, vals}, *mats[2] = {A, C};
  int ns[2] = {k->nks, k->nvs}, rr[2] = {rk, rv};
  for (int side = 0; side < 2; side++) {
    int col = 0;
    for (int s = 0; s < ns[side]; s++) {
      int w = sides[side][s].width, r = rr[side];
      size_t cnt = (size_t)G * k->n_ctx * w;
      double *got = malloc(cnt * 8), *want = malloc(cnt * 8), *lat = malloc((size_t)r * 8);
      size_t at_i = 0;
      for (int grp = 0; grp < G; grp++)
        for (int p = 0; p < k->n_ctx; p++) {
          ref_latent(srcs[side] + ((size_t)p * G + grp) * D, mats[side] + (size_t)grp * D * r, D, r,
                     0, lat);
          for (int i = 0; i < w; i++, at_i++) {
            got[at_i] = stored[side][((size_t)grp * cap + p) * r + col + i];
            want[at_i] = lat[col + i];
          }
        }
      double lim = sides[side][s].bits == KQ_SEG_Q8   ? 1e-4
                   : sides[side][s].bits == KQ_SEG_Q4 ? 2e-2
                   : k->storage == KQ_STORAGE_F16     ? 1e-6
                                                      : 1e-12;
      double e = nmse(got, want, cnt);
      if (!(e < lim))
        fail_msg("project side %d segment %d (width %d, bits %d): NMSE %.3g >= %.3g", side, s, w,
                 sides[side][s].bits, e, lim);
      col += w;
      free(got), free(want), free(lat);
    }
  }

  /* Attend: float64 attention on the stored (dequantized) latents. */
  double *ref = calloc((size_t)m * H * rv, sizeof *ref), *got = malloc((size_t)m * H * rv * 8);
  int kd = k->rope == KQ_ROPE_PRE ? d : rk;
  double *qt = malloc((size_t)rk * 8), *qv = malloc((size_t)kd * 8), *kv = malloc((size_t)kd * 8);
  double *lg = malloc((size_t)k->n_ctx * 8);
  for (int j = 0; j < m; j++)
    for (int h = 0; h < H; h++) {
      int pos = k->n_ctx - m + j, grp = joint ? 0 : h / g;
      const float *Bh = B + (size_t)(h / g) * d * rk, *Ah = A + (size_t)(h / g) * d * rk;
      const float *qh = q + ((size_t)j * H + h) * d;
      for (int c = 0; c < rk; c++) {
        double s = 0;
        for (int i = 0; i < d; i++) s += (double)qh[i] * Bh[(size_t)i * rk + c];
        qt[c] = s;
      }
      if (k->rope != KQ_ROPE_PRE) {
        memcpy(qv, qt, (size_t)rk * 8);
      } else { /* q̂ = rot(q B Aᵀ) */
        for (int i = 0; i < d; i++) {
          double s = 0;
          for (int c = 0; c < rk; c++) s += qt[c] * Ah[(size_t)i * rk + c];
          qv[i] = s;
        }
        ref_rotate(qv, d, pos, 10000.0, k->rope_layout);
      }
      double mx = -INFINITY;
      for (int p = 0; p <= pos; p++) {
        const double *lat = kl + ((size_t)grp * cap + p) * rk;
        if (k->rope == KQ_ROPE_PRE) {
          for (int i = 0; i < d; i++) {
            double s = 0;
            for (int c = 0; c < rk; c++) s += lat[c] * Bh[(size_t)i * rk + c];
            kv[i] = s;
          }
          ref_rotate(kv, d, p, 10000.0, k->rope_layout);
        } else {
          memcpy(kv, lat, (size_t)kd * 8);
        }
        double s = 0;
        for (int c = 0; c < kd; c++) s += qv[c] * kv[c];
        lg[p] = s / sqrt(d);
        mx = lg[p] > mx ? lg[p] : mx;
      }
      double sum = 0;
      for (int p = 0; p <= pos; p++) sum += (lg[p] = exp(lg[p] - mx));
      double *o = ref + ((size_t)j * H + h) * rv;
      for (int p = 0; p <= pos; p++)
        for (int c = 0; c < rv; c++) o[c] += lg[p] / sum * vl[((size_t)grp * cap + p) * rv + c];
    }
  for (size_t i = 0; i < (size_t)m * H * rv; i++) got[i] = out[i];
  double e = nmse(got, ref, (size_t)m * H * rv);
  if (!(e < 1e-8)) fail_msg("attend NMSE %.3g >= 1e-8 (isa %s)", e, getenv("KQSVD_CPU_ISA"));

  free(qt), free(qv), free(kv), free(lg), free(ref), free(got);
  free(kl), free(vl), free(hk), free(hv), free(out);
  kq_buffer *bufs[] = {bk, bv, bA, bC, bB, bq, kc, vc, bo};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) g_if->buffer_free(g_dev, bufs[i]);
  free(keys), free(vals), free(A), free(C), free(B), free(q);
}

/* Segments from a list such as "5f 19q8 16q4" (width, then f / q8 / q4). */
static int parse_segments(const char *text, kq_segment *out) {
  int n = 0;
  while (*text) {
    char *end;
    long w = strtol(text, &end, 10);
    out[n].width = (int32_t)w;
    out[n].bits = end[0] == 'f' ? KQ_SEG_FLOAT : end[1] == '8' ? KQ_SEG_Q8 : KQ_SEG_Q4;
    text = end + (end[0] == 'f' ? 1 : 2);
    while (*text == ' ') text++;
    n++;
  }
  return n;
}

static void run(kq_layout layout, kq_rope_mode rope, kq_rope_layout rope_layout, kq_storage storage,
                int H, int Hk, int d, int n_ctx, int m, const char *keys, const char *values) {
  qcase k = {layout, rope, rope_layout, storage, H, Hk, d, n_ctx, m, 0, 0, {{0}}, {{0}}};
  k.nks = parse_segments(keys, k.ks);
  k.nvs = parse_segments(values, k.vs);
  run_case(&k);
}

/* Per head, decode, F32: keys [float, q8, q4] with odd widths, values [q8, q4]. */
static void test_per_head_decode_mixed_segments_match_reference(void **state) {
  (void)state;
  run(KQ_LAYOUT_PER_HEAD, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_STORAGE_F32, 8, 2, 64, 301, 1,
      "5f 19q8 16q4", "12q8 32q4");
}

/* Widths by 8 and at most 4 query rows per task: the kernels read the
 * planes in place (no widened tile); F16 and F32, tails of 1-3 keys. */
static void test_decode_reading_planes_in_place_matches_reference(void **state) {
  (void)state;
  run(KQ_LAYOUT_PER_HEAD, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_STORAGE_F16, 8, 2, 64, 1031, 1,
      "16f 24q8 16q4", "8q8 48q4");
  run(KQ_LAYOUT_PER_HEAD, KQ_ROPE_NONE, KQ_ROPE_PAIRS, KQ_STORAGE_F32, 4, 2, 64, 203, 2,
      "8f 8q8 32q4", "16f 8q8 40q4");
  run(KQ_LAYOUT_PER_HEAD, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_STORAGE_F16, 3, 3, 32, 66, 1, "32q4",
      "32q8");
}

/* Per head, prefill, F16 float segments, GQA 3, rope none. */
static void test_per_head_prefill_f16_matches_reference(void **state) {
  (void)state;
  run(KQ_LAYOUT_PER_HEAD, KQ_ROPE_NONE, KQ_ROPE_PAIRS, KQ_STORAGE_F16, 6, 2, 48, 150, 37,
      "16f 13q8 10q4", "7f 24q4 9q8");
}

/* Only one side quantized: plain keys, q4 values; and q8 keys, plain values. */
static void test_one_side_quantized_matches_reference(void **state) {
  (void)state;
  run(KQ_LAYOUT_PER_HEAD, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_STORAGE_F16, 4, 2, 32, 200, 3, "24f",
      "32q4");
  run(KQ_LAYOUT_PER_HEAD, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_STORAGE_F32, 4, 2, 32, 200, 1, "27q8",
      "20f");
}

/* PRE rope: the quantized latent tile is dequantized, then rebuilt and rotated. */
static void test_per_head_pre_rope_quantized_matches_reference(void **state) {
  (void)state;
  run(KQ_LAYOUT_PER_HEAD, KQ_ROPE_PRE, KQ_ROPE_PAIRS, KQ_STORAGE_F32, 4, 2, 32, 130, 1,
      "4f 11q8 8q4", "16q8 8q4");
  run(KQ_LAYOUT_PER_HEAD, KQ_ROPE_PRE, KQ_ROPE_HALVES, KQ_STORAGE_F16, 4, 1, 32, 90, 9, "12q8 14q4",
      "20q4");
}

/* JOINT: one latent group of Hk·d columns shared by every query head (rank
 * above d), decode and prefill; with plain float latents too. */
static void test_joint_decode_and_prefill_match_reference(void **state) {
  (void)state;
  run(KQ_LAYOUT_JOINT, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_STORAGE_F16, 8, 2, 48, 333, 1,
      "8f 29q8 40q4", "16q8 48q4");
  run(KQ_LAYOUT_JOINT, KQ_ROPE_NONE, KQ_ROPE_PAIRS, KQ_STORAGE_F32, 6, 3, 16, 120, 21, "20q8 10q4",
      "3f 30q4");
  run(KQ_LAYOUT_JOINT, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_STORAGE_F16, 4, 2, 16, 100, 2, "24f", "28f");
}

/* The JOINT value_up E is [Hk, d, R_v] with R_v up to Hk·d: up accepts a
 * rank above head_dim (odd and a multiple of 8). */
static void test_up_accepts_joint_rank_above_head_dim(void **state) {
  (void)state;
  const int H = 6, Hk = 2, d = 16, m = 3, g = H / Hk;
  const int ranks[2] = {24, 29};
  for (int k = 0; k < 2; k++) {
    int rv = ranks[k];
    uint64_t rs = 99 + (uint64_t)rv;
    float *lat = malloc((size_t)m * H * rv * 4), *E = malloc((size_t)Hk * d * rv * 4);
    float *out = malloc((size_t)m * H * d * 4);
    ref_fill(lat, (size_t)m * H * rv, &rs, 1.0);
    ref_fill(E, (size_t)Hk * d * rv, &rs, 1.0);
    kq_buffer *bl = buffer_with((size_t)m * H * rv * 4, lat);
    kq_buffer *be = buffer_with((size_t)Hk * d * rv * 4, E);
    kq_buffer *bo = buffer_with((size_t)m * H * d * 4, NULL);
    kq_up_op op = {.latent = bl,
                   .value_up = be,
                   .out = bo,
                   .n_queries = m,
                   .n_heads = H,
                   .n_kv_heads = Hk,
                   .head_dim = d,
                   .rank_v = rv,
                   .n_seqs = 1};
    expect_ok(g_if->up(g_dev, &op));
    assert_int_equal(g_if->buffer_download(g_dev, bo, 0, out, (size_t)m * H * d * 4), KQ_OK);
    double *got = malloc((size_t)m * H * d * 8), *want = malloc((size_t)m * H * d * 8);
    for (int j = 0; j < m; j++)
      for (int h = 0; h < H; h++)
        for (int i = 0; i < d; i++) {
          double acc = 0;
          for (int c = 0; c < rv; c++)
            acc +=
                (double)lat[((size_t)j * H + h) * rv + c] * E[((size_t)(h / g) * d + i) * rv + c];
          size_t o = ((size_t)j * H + h) * d + i;
          want[o] = acc;
          got[o] = out[o];
        }
    double e = nmse(got, want, (size_t)m * H * d);
    if (!(e < 1e-10)) fail_msg("up rank %d: NMSE %.3g", rv, e);
    free(got), free(want), free(lat), free(E), free(out);
    g_if->buffer_free(g_dev, bl);
    g_if->buffer_free(g_dev, be);
    g_if->buffer_free(g_dev, bo);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_per_head_decode_mixed_segments_match_reference),
      cmocka_unit_test(test_decode_reading_planes_in_place_matches_reference),
      cmocka_unit_test(test_per_head_prefill_f16_matches_reference),
      cmocka_unit_test(test_one_side_quantized_matches_reference),
      cmocka_unit_test(test_per_head_pre_rope_quantized_matches_reference),
      cmocka_unit_test(test_joint_decode_and_prefill_match_reference),
      cmocka_unit_test(test_up_accepts_joint_rank_above_head_dim),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
