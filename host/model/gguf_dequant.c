/* Block formats of ggml tensor types and their dequantisation to float32,
 * written from the GGUF/ggml format description: each block stores a few
 * float16 scales followed by packed integer codes; value = scale * code
 * (+ minimum) per block or sub-block. */
#include <string.h>

#include "kq_gguf.h"

typedef struct type_info {
  uint32_t type;
  const char *name;
  uint32_t block_elems, block_bytes;
} type_info;

/* Every type ggml names, with the sizes of those whose layout is known. */
static const type_info g_types[] = {
    {0, "F32", 1, 4},         {1, "F16", 1, 2},       {2, "Q4_0", 32, 18},
    {3, "Q4_1", 32, 20},      {6, "Q5_0", 32, 22},    {7, "Q5_1", 32, 24},
    {8, "Q8_0", 32, 34},      {9, "Q8_1", 32, 36},    {10, "Q2_K", 256, 84},
    {11, "Q3_K", 256, 110},   {12, "Q4_K", 256, 144}, {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210},   {15, "Q8_K", 256, 292}, {16, "IQ2_XXS", 0, 0},
    {17, "IQ2_XS", 0, 0},     {18, "IQ3_XXS", 0, 0},  {19, "IQ1_S", 0, 0},
    {20, "IQ4_NL", 32, 18},   {21, "IQ3_S", 0, 0},    {22, "IQ2_S", 0, 0},
    {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},       {25, "I16", 1, 2},
    {26, "I32", 1, 4},        {27, "I64", 1, 8},      {28, "F64", 1, 8},
    {29, "IQ1_M", 0, 0},      {30, "BF16", 1, 2},     {34, "TQ1_0", 0, 0},
    {35, "TQ2_0", 0, 0},
};

static const type_info *find_type(uint32_t type) {
  for (size_t j = 0; j < sizeof g_types / sizeof g_types[0]; j++)
    if (g_types[j].type == type) return &g_types[j];
  return NULL;
}

const char *kq_gguf_type_name(uint32_t type) {
  const type_info *t = find_type(type);
  return t ? t->name : NULL;
}

int kq_gguf_type_layout(uint32_t type, uint32_t *out_block_elems, uint32_t *out_block_bytes) {
  const type_info *t = find_type(type);
  if (!t || t->block_elems == 0) return 0;
  *out_block_elems = t->block_elems;
  *out_block_bytes = t->block_bytes;
  return 1;
}

int kq_gguf_type_can_dequantize(uint32_t type) {
  switch (type) {
  case KQ_GGML_F32:
  case KQ_GGML_F16:
  case KQ_GGML_BF16:
  case KQ_GGML_Q4_0:
  case KQ_GGML_Q4_1:
  case KQ_GGML_Q5_0:
  case KQ_GGML_Q5_1:
  case KQ_GGML_Q8_0:
  case KQ_GGML_Q4_K:
  case KQ_GGML_Q5_K:
  case KQ_GGML_Q6_K: return 1;
  default: return 0;
  }
}

static float f16_at(const uint8_t *p) {
  return kq_f16_to_f32((uint16_t)(p[0] | (p[1] << 8)));
}

/* Q4_0: f16 d, 16 bytes of nibbles; low nibbles are elements 0..15, high
 * nibbles 16..31; value = (code - 8) * d. */
static void dq_q4_0(const uint8_t *b, float *y) {
  float d = f16_at(b);
  const uint8_t *q = b + 2;
  for (int j = 0; j < 16; j++) {
    y[j] = (float)((q[j] & 0x0F) - 8) * d;
    y[j + 16] = (float)((q[j] >> 4) - 8) * d;
  }
}

/* Q4_1: f16 d, f16 m, nibbles as Q4_0; value = code * d + m. */
static void dq_q4_1(const uint8_t *b, float *y) {
  float d = f16_at(b), m = f16_at(b + 2);
  const uint8_t *q = b + 4;
  for (int j = 0; j < 16; j++) {
    y[j] = (float)(q[j] & 0x0F) * d + m;
    y[j + 16] = (float)(q[j] >> 4) * d + m;
  }
}

/* Q5_0 / Q5_1: as Q4_x with a fifth bit per element in a 32-bit word
 * (bit j for element j); Q5_0 codes are centred on 16. */
static void dq_q5(const uint8_t *b, float *y, int has_min) {
  float d = f16_at(b), m = has_min ? f16_at(b + 2) : 0.0f;
  const uint8_t *p = b + (has_min ? 4 : 2);
  uint32_t qh =
      (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
  const uint8_t *q = p + 4;
  int bias = has_min ? 0 : 16;
  for (int j = 0; j < 16; j++) {
    int lo = (q[j] & 0x0F) | (int)(((qh >> j) & 1u) << 4);
    int hi = (q[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
    y[j] = (float)(lo - bias) * d + m;
    y[j + 16] = (float)(hi - bias) * d + m;
  }
}

/* Q8_0: f16 d, 32 signed bytes; value = code * d. */
static void dq_q8_0(const uint8_t *b, float *y) {
  float d = f16_at(b);
  const int8_t *q = (const int8_t *)(b + 2);
  for (int j = 0; j < 32; j++) y[j] = (float)q[j] * d;
}

/* K-quants with 8 sub-blocks of 32: 12 bytes pack eight 6-bit scales and
 * eight 6-bit minimums. Sub-blocks 0..3 use the low 6 bits of bytes 0..3
 * (scales) and 4..7 (mins); sub-blocks 4..7 take their low 4 bits from
 * bytes 8..11 (scale low nibble, min high nibble) and their top 2 bits from
 * the top 2 bits of bytes 0..3 (scales) and 4..7 (mins). */
static void k_scale_min(int j, const uint8_t *s, int *sc, int *mn) {
  if (j < 4) {
    *sc = s[j] & 63;
    *mn = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

/* Q4_K: f16 d, f16 dmin, 12 scale bytes, 128 nibble bytes. Each group of 32
 * bytes holds two sub-blocks: low nibbles then high nibbles.
 * value = d * scale * code - dmin * min. */
static void dq_q4_k(const uint8_t *b, float *y) {
  float d = f16_at(b), dmin = f16_at(b + 2);
  const uint8_t *s = b + 4, *q = b + 16;
  for (int g = 0; g < 4; g++, q += 32, y += 64) {
    int sc0, mn0, sc1, mn1;
    k_scale_min(2 * g, s, &sc0, &mn0);
    k_scale_min(2 * g + 1, s, &sc1, &mn1);
    float d0 = d * (float)sc0, m0 = dmin * (float)mn0;
    float d1 = d * (float)sc1, m1 = dmin * (float)mn1;
    for (int l = 0; l < 32; l++) {
      y[l] = d0 * (float)(q[l] & 0x0F) - m0;
      y[l + 32] = d1 * (float)(q[l] >> 4) - m1;
    }
  }
}

/* Q5_K: Q4_K plus 32 bytes of fifth bits: bit 2g of byte l is the high bit
 * of element l of sub-block 2g, bit 2g+1 that of sub-block 2g+1. */
static void dq_q5_k(const uint8_t *b, float *y) {
  float d = f16_at(b), dmin = f16_at(b + 2);
  const uint8_t *s = b + 4, *qh = b + 16, *q = b + 48;
  for (int g = 0; g < 4; g++, q += 32, y += 64) {
    int sc0, mn0, sc1, mn1;
    k_scale_min(2 * g, s, &sc0, &mn0);
    k_scale_min(2 * g + 1, s, &sc1, &mn1);
    float d0 = d * (float)sc0, m0 = dmin * (float)mn0;
    float d1 = d * (float)sc1, m1 = dmin * (float)mn1;
    for (int l = 0; l < 32; l++) {
      int h0 = (qh[l] >> (2 * g)) & 1, h1 = (qh[l] >> (2 * g + 1)) & 1;
      y[l] = d0 * (float)((q[l] & 0x0F) | (h0 << 4)) - m0;
      y[l + 32] = d1 * (float)((q[l] >> 4) | (h1 << 4)) - m1;
    }
  }
}

/* Q6_K: 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 signed
 * 8-bit scales (one per 16 elements), f16 d. Per half of 128 elements,
 * element l (l < 32) and l+32, l+64, l+96 come from ql[l] low, ql[l+32]
 * low, ql[l] high, ql[l+32] high, with high bits qh[l] bits 0-1, 2-3, 4-5,
 * 6-7; codes are centred on 32; value = d * scale * code. */
static void dq_q6_k(const uint8_t *b, float *y) {
  const uint8_t *ql = b, *qh = b + 128;
  const int8_t *sc = (const int8_t *)(b + 192);
  float d = f16_at(b + 208);
  for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, y += 128) {
    for (int l = 0; l < 32; l++) {
      int is = l / 16;
      int c0 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
      int c1 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
      int c2 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      int c3 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * (float)sc[is] * (float)c0;
      y[l + 32] = d * (float)sc[is + 2] * (float)c1;
      y[l + 64] = d * (float)sc[is + 4] * (float)c2;
      y[l + 96] = d * (float)sc[is + 6] * (float)c3;
    }
  }
}

kq_status kq_gguf_dequantize_raw(uint32_t type, const void *src, float *dst, size_t n) {
  uint32_t be, bb;
  if (!kq_gguf_type_can_dequantize(type) || !kq_gguf_type_layout(type, &be, &bb)) {
    const char *tn = kq_gguf_type_name(type);
    return kq_set_error(KQ_ERR_UNSUPPORTED, "type %s (%u) cannot be dequantised",
                        tn ? tn : "unknown", type);
  }
  if (n % be != 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%zu elements are not whole %s blocks", n,
                        kq_gguf_type_name(type));
  const uint8_t *p = src;
  size_t blocks = n / be;
  switch (type) {
  case KQ_GGML_F32: memcpy(dst, src, n * sizeof(float)); break;
  case KQ_GGML_F16:
    for (size_t j = 0; j < n; j++) dst[j] = f16_at(p + 2 * j);
    break;
  case KQ_GGML_BF16:
    for (size_t j = 0; j < n; j++)
      dst[j] = kq_bf16_to_f32((uint16_t)(p[2 * j] | (p[2 * j + 1] << 8)));
    break;
  default:
    for (size_t k = 0; k < blocks; k++) {
      const uint8_t *b = p + k * bb;
      float *y = dst + k * be;
      switch (type) {
      case KQ_GGML_Q4_0: dq_q4_0(b, y); break;
      case KQ_GGML_Q4_1: dq_q4_1(b, y); break;
      case KQ_GGML_Q5_0: dq_q5(b, y, 0); break;
      case KQ_GGML_Q5_1: dq_q5(b, y, 1); break;
      case KQ_GGML_Q8_0: dq_q8_0(b, y); break;
      case KQ_GGML_Q4_K: dq_q4_k(b, y); break;
      case KQ_GGML_Q5_K: dq_q5_k(b, y); break;
      case KQ_GGML_Q6_K: dq_q6_k(b, y); break;
      default: break;
      }
    }
  }
  return KQ_OK;
}
