/*
 * CPU backend with quantized latent segments (SPEC §1b) and the joint
 * layout, driven through its kq_backend_iface: append (project) writes every
 * segment's planes by the quantization rule, attend matches a float64
 * reference that dequantizes the stored planes with the SPEC rule.
 *
 * Thresholds (NMSE = Σ(a−b)²/Σb²):
 *   attend 1e-8: the reference reads the very latents the backend stored, so
 *     the only differences are F32 accumulation and the 2^x polynomial
 *     (relative ~2e-7 per term, NMSE ~1e-13); with KQSVD_CPU_QUANT=int16 the
 *     query and softmax weights of quantized segments are rounded to int16
 *     (error 2^-16 of a row's largest element: NMSE ~1e-10); a wrong scale,
 *     segment offset or nibble order gives NMSE >= 1e-3.
 *   int16 kernels alone: logits are exact integer sums times F32 scales
 *     (relative 1e-6); P·V 2^-16 of the largest weight per position.
 *   project: stored (dequantized) vs float64 latents, the quantization noise
 *     (step s = amax/qmax, uniform error s²/12): for rows of uniform values
 *     amax ≈ max|x| ≈ sqrt(3)·rms, so NMSE ≈ 3/(12 qmax²): 1.6e-5 (q8),
 *     5e-3 (q4); thresholds 1e-4 and 2e-2. Float F32 segments 1e-12, F16 1e-6.
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

#include "attn_ref.h"
#include "cpu_kernels.h"
#include "kq_cpu_backend.h"

typedef struct qcase {
  kq_layout layout;
  kq_rope_mode rope;
  kq_rope_layout rope_layout;
  kq_storage storage;
  int H, Hk, d, n_ctx, m;
  int nks, nvs;
  kq_segment ks[4], vs[4];
} qcase;

static const kq_backend_iface *g_if;
static kq_bdevice *g_dev;

static int setup(void **state) {
  (void)state;
  g_if = kq_cpu_backend_iface();
  return g_if->device_open(0, &g_dev) == KQ_OK ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  g_if->device_close(g_dev);
  return 0;
}

static kq_buffer *buffer_with(size_t bytes, const void *data) {
  kq_buffer *b = NULL;
  assert_int_equal(g_if->buffer_alloc(g_dev, bytes ? bytes : 4, &b), KQ_OK);
  if (data) assert_int_equal(g_if->buffer_upload(g_dev, b, 0, data, bytes), KQ_OK);
  return b;
}

static void expect_ok(kq_status st) {
  if (st != KQ_OK) fail_msg("status %d: %s", (int)st, kq_last_error());
}

static int seg_rank(const kq_segment *s, int n) {
  int r = 0;
  for (int i = 0; i < n; i++) r += s[i].width;
  return r;
}

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

#define SEG(w, b)                                                                                  \
  { (w), (b) }

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

/* The int16 kernels of the selected set against float64 on odd widths, 1-5
 * rows, tiles of 1-64 positions (including tails of 1-3 keys and an odd
 * count for the position pairs of P·V). */
static void test_int16_kernels_match_float64_for_odd_shapes(void **state) {
  (void)state;
  const kq_cpu_kernels *k = kq_cpu_kernels_get();
  if (!k->logits_plane_i16) {
    print_message("isa %s has no int16 kernels\n", k->isa);
    return;
  }
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
  if (!k->logits_planes_i8) {
    print_message("isa %s has no int8 logits\n", k->isa);
    return;
  }
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
  if (!k->pv_plane_i8) {
    print_message("isa %s has no int8 P.V\n", k->isa);
    return;
  }
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
      cmocka_unit_test(test_project_quantizes_bit_exactly_by_the_rule),
      cmocka_unit_test(test_project_quantizer_is_bit_exact_for_every_width),
      cmocka_unit_test(test_per_head_decode_mixed_segments_match_reference),
      cmocka_unit_test(test_decode_reading_planes_in_place_matches_reference),
      cmocka_unit_test(test_per_head_prefill_f16_matches_reference),
      cmocka_unit_test(test_one_side_quantized_matches_reference),
      cmocka_unit_test(test_per_head_pre_rope_quantized_matches_reference),
      cmocka_unit_test(test_joint_decode_and_prefill_match_reference),
      cmocka_unit_test(test_up_accepts_joint_rank_above_head_dim),
      cmocka_unit_test(test_int16_query_follows_its_layout),
      cmocka_unit_test(test_int16_kernels_match_float64_for_odd_shapes),
      cmocka_unit_test(test_int8_logits_match_float64_for_mixed_segments),
      cmocka_unit_test(test_int8_pv_matches_float64_for_odd_shapes),
      cmocka_unit_test(test_nonfinite_check_sees_exactly_its_rows_and_columns),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
