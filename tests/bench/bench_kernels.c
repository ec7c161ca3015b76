/*
 * bench_kernels — CPU time per cached position of the CPU backend's decode
 * kernels on one L1-resident tile (one thread, CLOCK_THREAD_CPUTIME_ID,
 * fastest of 15 trials): 4 query rows (a GQA group of 4), 64 positions,
 * full F16 rank 128 against a quantized recipe (default the Llama shape at
 * bytes 0.28: keys [8 F16, 32 q8, 64 q4], values [16 q8, 64 q4]).
 *
 *   bench_kernels [--keys "8f 32q8 64q4"] [--values "16q8 64q4"] [--rows R]
 *
 * Prints ns per position for logits (F16 full, quantized F32, quantized
 * int8 digits) and P·V (F16 full, quantized F32 with the weight x value
 * scale pass it needs, quantized int8 with the scale folded in) with the
 * kernel set in use (KQSVD_CPU_ISA forces one). On x86-64 it then measures
 * the core's peak rate of 256-bit vfmadd231ps and (with AVX-512 VNNI)
 * vpdpbusd (12 independent chains, registers only) and prints each
 * kernel's floor: its multiply-add instructions per position at that rate,
 * so a kernel's distance from its floor is overhead, not arithmetic.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu_kernels.h"
#include "kq_common.h"
#include "kqsvd.h"

enum { NT = 64, TRIALS = 15 };

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* 12 independent 256-bit multiply-adds per loop iteration, n iterations,
 * on zeroed registers (no NaN or denormal operands, which some cores run
 * through slow assists). */
#define PEAK_LOOP(INS, n)                                                                          \
  __asm__ volatile("vpxor %%xmm0, %%xmm0, %%xmm0\n\tvpxor %%xmm1, %%xmm1, %%xmm1\n\t"              \
                   "vpxor %%xmm2, %%xmm2, %%xmm2\n\tvpxor %%xmm3, %%xmm3, %%xmm3\n\t"              \
                   "vpxor %%xmm4, %%xmm4, %%xmm4\n\tvpxor %%xmm5, %%xmm5, %%xmm5\n\t"              \
                   "vpxor %%xmm6, %%xmm6, %%xmm6\n\tvpxor %%xmm7, %%xmm7, %%xmm7\n\t"              \
                   "vpxor %%xmm8, %%xmm8, %%xmm8\n\tvpxor %%xmm9, %%xmm9, %%xmm9\n\t"              \
                   "vpxor %%xmm10, %%xmm10, %%xmm10\n\tvpxor %%xmm11, %%xmm11, %%xmm11\n\t"        \
                   "vpxor %%xmm12, %%xmm12, %%xmm12\n\tvpxor %%xmm13, %%xmm13, %%xmm13\n\t"        \
                   "1:\n\t" INS " %%ymm8, %%ymm9, %%ymm0\n\t" INS                                  \
                   " %%ymm8, %%ymm9, %%ymm1\n\t" INS " %%ymm8, %%ymm9, %%ymm2\n\t" INS             \
                   " %%ymm8, %%ymm9, %%ymm3\n\t" INS " %%ymm8, %%ymm9, %%ymm4\n\t" INS             \
                   " %%ymm8, %%ymm9, %%ymm5\n\t" INS " %%ymm8, %%ymm9, %%ymm6\n\t" INS             \
                   " %%ymm8, %%ymm9, %%ymm7\n\t" INS " %%ymm8, %%ymm9, %%ymm10\n\t" INS            \
                   " %%ymm8, %%ymm9, %%ymm11\n\t" INS " %%ymm8, %%ymm9, %%ymm12\n\t" INS           \
                   " %%ymm8, %%ymm9, %%ymm13\n\t"                                                  \
                   "dec %0\n\tjnz 1b"                                                              \
                   : "+r"(n)                                                                       \
                   :                                                                               \
                   : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",       \
                     "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "cc")

/* Instructions per ns of one kind (fastest of TRIALS runs of 12 x 2^20). */
static double peak_rate(int vnni) {
  double best = INFINITY;
  for (int trial = 0; trial < TRIALS; trial++) {
    long n = 1L << 20;
    double t0 = now_s();
    if (vnni)
      PEAK_LOOP("vpdpbusd", n);
    else
      PEAK_LOOP("vfmadd231ps", n);
    double dt = now_s() - t0;
    best = dt < best ? dt : best;
  }
  return 12.0 * (double)(1L << 20) / best * 1e-9;
}
#endif

/* "8f 32q8 64q4" -> planes (widths, bits); returns the count, 0 if malformed. */
static int parse(const char *text, kq_cpu_plane *pl) {
  int n = 0;
  while (*text && n < KQ_MAX_SEGMENTS) {
    char *end;
    long w = strtol(text, &end, 10);
    if (end == text || w < 1) return 0;
    memset(&pl[n], 0, sizeof pl[n]);
    pl[n].width = (int)w;
    if (end[0] == 'f') {
      pl[n].bits = KQ_SEG_FLOAT, pl[n].f16 = 1, end += 1;
    } else if (end[0] == 'q' && (end[1] == '8' || end[1] == '4')) {
      pl[n].bits = end[1] == '8' ? KQ_SEG_Q8 : KQ_SEG_Q4, end += 2;
    } else {
      return 0;
    }
    n++;
    text = end;
    while (*text == ' ' || *text == ',') text++;
  }
  return n;
}

static size_t row_bytes(const kq_cpu_plane *p) {
  return p->bits == KQ_SEG_Q8   ? (size_t)p->width
         : p->bits == KQ_SEG_Q4 ? (size_t)p->width / 2
                                : (size_t)p->width * 2;
}

/* Fills planes with random bytes (F16: small values), scales, query
 * columns; returns the padded query row length. */
static int build(kq_cpu_plane *pl, int n, float *scale) {
  int qoff = 0;
  for (int g = 0; g < n; g++) {
    size_t rb = row_bytes(&pl[g]), bytes = rb * NT + 64;
    unsigned char *d = calloc(bytes, 1);
    for (size_t i = 0; i < rb * NT; i++) d[i] = (unsigned char)(rand() & 0xff);
    if (pl[g].bits == KQ_SEG_Q8)
      for (size_t i = 0; i < rb * NT; i++)
        if (d[i] == 0x80) d[i] = 0x81; /* -128 is never stored */
    if (pl[g].bits == KQ_SEG_FLOAT)
      for (size_t i = 0; i < rb * NT / 2; i++)
        ((uint16_t *)(void *)d)[i] = kq_f32_to_f16((float)(rand() % 2001 - 1000) * 1e-3f);
    pl[g].data = d;
    pl[g].stride = rb;
    pl[g].qoff = qoff;
    pl[g].scale = pl[g].bits == KQ_SEG_FLOAT ? NULL : scale;
    qoff += (pl[g].width + 7) / 8 * 8;
  }
  return qoff;
}

int main(int argc, char **argv) {
  const char *keys = "8f 32q8 64q4", *values = "16q8 64q4";
  int rows = 4;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--keys") == 0)
      keys = argv[i + 1];
    else if (strcmp(argv[i], "--values") == 0)
      values = argv[i + 1];
    else if (strcmp(argv[i], "--rows") == 0)
      rows = atoi(argv[i + 1]);
  }
  if (rows < 1 || rows > 64) return 1;
  const kq_cpu_kernels *k = kq_cpu_kernels_get();
  kq_cpu_plane kp[KQ_MAX_SEGMENTS], vp[KQ_MAX_SEGMENTS];
  int nk = parse(keys, kp), nv = parse(values, vp);
  if (!nk || !nv) {
    fprintf(stderr, "bench_kernels: bad segment list\n");
    return 1;
  }
  float scale[NT];
  for (int t = 0; t < NT; t++) scale[t] = 0.01f + 1e-4f * (float)t;
  int ldq = build(kp, nk, scale), lda = build(vp, nv, scale);
  float *q = calloc((size_t)rows * (ldq > 128 ? ldq : 128), sizeof *q);
  for (int i = 0; i < rows * ldq; i++) q[i] = (float)(rand() % 2001 - 1000) * 1e-3f;
  for (int r = 0; r < rows; r++)
    for (int g = 0; g < nk; g++)
      for (int c = kp[g].width; c < (kp[g].width + 7) / 8 * 8; c++) q[r * ldq + kp[g].qoff + c] = 0;
  float *s = calloc((size_t)rows * NT, sizeof *s), *acc = calloc((size_t)rows * 128 + lda, 4);
  float *p = calloc((size_t)rows * NT, sizeof *p), *pw = calloc((size_t)rows * NT, sizeof *pw);
  unsigned char *tmp = malloc(KQ_CPU_PV_I8_SCRATCH);
  for (int i = 0; i < rows * NT; i++) p[i] = (float)(rand() % 1000) * 1e-3f;
  uint16_t *kv = calloc((size_t)NT * 128, 2);
  for (int i = 0; i < NT * 128; i++) kv[i] = kq_f32_to_f16((float)(rand() % 2001 - 1000) * 1e-3f);
  size_t ldqd = kq_cpu_query_i8_bytes(kp, nk);
  unsigned char *qd = calloc((size_t)rows * ldqd + 64, 1);
  kq_cpu_query_i8(kp, nk, q, rows, ldq, qd, ldqd);

  const char *names[] = {"logits F16 rank 128",   "logits quantized f32",
                         "logits quantized int8", "query int8 digits (per task)",
                         "P.V F16 rank 128",      "P.V quantized f32",
                         "P.V quantized int8"};
  printf("kernel set %s, %d rows, %d positions, keys [%s] values [%s]\n", k->isa, rows, NT, keys,
         values);
  for (int which = 0; which < 7; which++) {
    if ((which == 0 || which == 4) && !k->logits_f16) continue;
    if (which == 1 && !k->logits_planes) continue;
    if ((which == 2 || which == 3) && !k->logits_planes_i8) continue;
    if (which == 5 && !k->pv_plane) continue;
    if (which == 6 && !k->pv_plane_i8) continue;
    int reps = 2000;
    double best = INFINITY;
    for (int trial = 0; trial < TRIALS; trial++) {
      double t0 = now_s();
      for (int i = 0; i < reps; i++) {
        switch (which) {
        case 0: k->logits_f16(q, rows, kv, NT, 128, s, NT); break;
        case 1: k->logits_planes(kp, nk, q, rows, ldq, NT, s, NT); break;
        case 2: k->logits_planes_i8(kp, nk, q, ldq, qd, ldqd, rows, NT, s, NT); break;
        case 3: kq_cpu_query_i8(kp, nk, q, rows, ldq, qd, ldqd); break;
        case 4: k->pv_f16(p, rows, NT, kv, NT, 128, acc); break;
        case 5:
          for (int g = 0; g < nv; g++) { /* with the weight x value scale pass it needs */
            const float *w = p;
            if (vp[g].scale) {
              for (int r = 0; r < rows; r++) /* as cpu_attend.c's pv_planes */
                for (int t = 0; t < NT; t++) pw[r * NT + t] = p[r * NT + t] * vp[g].scale[t];
              w = pw;
            }
            k->pv_plane(vp[g].bits, vp[g].f16, w, rows, NT, vp[g].data, vp[g].stride, NT,
                        vp[g].width, acc + vp[g].qoff, lda);
          }
          break;
        default:
          for (int g = 0; g < nv; g++)
            if (vp[g].scale && rows <= KQ_CPU_PV_I8_ROWS)
              k->pv_plane_i8(vp[g].bits, p, rows, NT, vp[g].data, vp[g].stride, NT, vp[g].width,
                             vp[g].scale, acc + vp[g].qoff, lda, tmp);
            else
              k->pv_plane(vp[g].bits, vp[g].f16, p, rows, NT, vp[g].data, vp[g].stride, NT,
                          vp[g].width, acc + vp[g].qoff, lda);
        }
      }
      double dt = now_s() - t0;
      best = dt < best ? dt : best;
    }
    printf("  %-30s %8.2f ns per position\n", names[which], best / reps / NT * 1e9);
  }
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  /* Multiply-add instructions per position: F32 FMAs do 8, vpdpbusd 32
   * (byte pairs) per instruction; the int8 logits take KQ_CPU_I8_DIGITS
   * query digits per byte, and a q4 byte's two nibbles separately. */
  int fk = 0, ik = 0, fv = 0;
  for (int g = 0; g < nk; g++) {
    if (kp[g].bits == KQ_SEG_FLOAT) fk += (kp[g].width + 7) / 8;
    if (kp[g].bits == KQ_SEG_Q8) ik += (kp[g].width + 31) / 32 * KQ_CPU_I8_DIGITS;
    if (kp[g].bits == KQ_SEG_Q4) ik += 2 * ((kp[g].width / 2 + 31) / 32) * KQ_CPU_I8_DIGITS;
  }
  for (int g = 0; g < nv; g++) fv += (vp[g].width + 7) / 8;
  double fma = peak_rate(0);
  printf("peak 256-bit vfmadd231ps: %.2f per ns; floors at that rate: logits and P.V F16 rank 128 "
         "%.2f ns each, P.V quantized f32 %.2f ns per position\n",
         fma, rows * (128 / 8) / fma, rows * fv / fma);
  if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl")) {
    double dp = peak_rate(1);
    printf("peak 256-bit vpdpbusd: %.2f per ns; floor of logits quantized int8: %.2f ns per "
           "position\n",
           dp, rows * (ik / dp + fk / fma));
  }
#endif
  return 0;
}
