/*
 * cpu_kernels.h — the CPU backend's inner loops, chosen once at run time:
 * an AVX2/FMA/F16C version on x86-64 CPUs that have it (built three times:
 * AVX2, with AVX-512VL for its 32 registers, and with AVX-512VL + VNNI for
 * the int16 dot products of quantized segments), portable C elsewhere. The
 * library is built for the baseline ISA; only these functions are compiled
 * for the wider ones (target attributes), so one binary runs everywhere.
 *
 * Shapes: row-major float32 with explicit leading dimensions. `dp` (padded
 * dimension) is always a multiple of KQ_CPU_PAD and the padding columns of
 * both operands are zero.
 */
#ifndef KQ_CPU_KERNELS_H
#define KQ_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define KQ_CPU_PAD 8

/* One segment of a widened latent tile (quantized caches, SPEC §1b): its
 * columns [off, off + width) of every F32 row, off and width multiples of
 * KQ_CPU_PAD (the padding columns are zero in both operands), and the scale
 * of each position of the tile (NULL: 1, a float segment). */
typedef struct kq_cpu_seg {
  int off, width;
  const float *scale;
} kq_cpu_seg;

/* One segment of a key tile read in place (logits_planes): rows every
 * `stride` bytes at `data`, formats as in widen_rows, any width; its query
 * columns start at qoff; scale[t] per position (NULL: 1). */
typedef struct kq_cpu_plane {
  int bits, f16, width, qoff;
  const unsigned char *data;
  size_t stride;
  const float *scale;
} kq_cpu_plane;

typedef struct kq_cpu_kernels {
  const char *isa; /* "avx2+fma+f16c+avx512vl", "avx2+fma+f16c" or "generic" */
  /* dst[i] = f16 src[i] for i < n (round trip exact). */
  void (*f16_to_f32)(const uint16_t *src, float *dst, int n);
  /* dst[i] = round-to-nearest-even f16 of src[i] for i < n. */
  void (*f32_to_f16)(const float *src, uint16_t *dst, int n);
  /* s[i * lds + t] = q[i * dp ..] · k[t * dp ..] for i < rows, t < nt. */
  void (*logits)(const float *q, int rows, const float *k, int nt, int dp, float *s, int lds);
  /* acc[i * dp ..] += Σ_t p[i * lds + t] · v[t * dp ..] for i < rows. */
  void (*pv)(const float *p, int rows, int lds, const float *v, int nt, int dp, float *acc);
  /* x[i] = exp(x[i]) for i < n; exp(-inf) = 0. Inputs are <= 0 here. */
  void (*exp_inplace)(float *x, int n);
  /* Σ a[i] b[i] for i < n (any n). */
  float (*dot)(const float *a, const float *b, int n);
  /* One online-softmax step in base 2 over a tile of logits s[r * lds + t],
   * t < nt, given in units of log2 (the caller folds log2 e into the query
   * scale, so 2^s is the natural-base weight; masked positions hold -inf;
   * lds >= nt rounded up to 8, the columns past nt may be overwritten):
   * mnew = max(m[r], max_t s), alpha[r] = 2^(m[r] - mnew) (0 when m[r] =
   * -inf), s = 2^(s - mnew), l[r] = l[r] alpha[r] + Σ_t s, m[r] = mnew. A
   * row with every position masked gets s = 0, alpha = 1 and keeps m, l. */
  void (*softmax_update)(float *s, int rows, int lds, int nt, float *m, float *l, float *alpha);
  /* 1 when some s[r * lds + t], r < rows, t < nt, is not finite (exponent
   * all ones: inf or NaN), else 0; on the bits, as kq_any_nonfinite_f32. */
  int (*any_nonfinite_rows)(const float *s, int rows, int lds, int nt);
  /* out[t * ldo + k] = Σ_i x[t * ldx + i] · m[i * r + k] for t < n, k < r
   * (any r): n rows of length d times a [d, r] matrix. */
  void (*matmul_rows)(const float *x, int n, int ldx, const float *m, int d, int r, float *out,
                      int ldo);
  /* logits / pv reading F16 key / value rows directly (dp = the rank, a
   * multiple of 8); NULL when the ISA has no fast F16 loads. */
  void (*logits_f16)(const float *q, int rows, const uint16_t *k, int nt, int dp, float *s,
                     int lds);
  void (*pv_f16)(const float *p, int rows, int lds, const uint16_t *v, int nt, int dp, float *acc);
  /* RoPE on nt rows x[t * ldx + i], i < d (d even), at successive
   * positions: row t is rotated by the angles whose cosines and sines are
   * cs[j], sn[j] (j < d / 2), which then advance by one step (angle
   * addition in double with step_cos[j], step_sin[j]). On return cs, sn hold
   * the angles one position past the last row. Pairs are (2j, 2j + 1), or
   * (j, j + d / 2) when `halves`. The rotation itself is done in F32. */
  void (*rope_rows)(float *x, int nt, int ldx, int d, int halves, double *cs, double *sn,
                    const double *step_cos, const double *step_sin);
  /* dst[t * ld + i] = element i of row t (t < nt, i < width) of a latent
   * plane whose rows start every `stride` bytes at src, as F32, unscaled:
   * `bits` KQ_SEG_Q8 (int8), KQ_SEG_Q4 (width even; element 2j in the low
   * nibble of byte j, 2j + 1 in the high one, each stored as q + 8), or
   * KQ_SEG_FLOAT with f16 = 1 (F16) or 0 (F32). */
  void (*widen_rows)(int bits, int f16, const unsigned char *src, size_t stride, int nt, int width,
                     float *dst, int ld);
  /* kq_quantize_row (SPEC §1b), bit for bit: q[j] for j < n and the F16
   * scale returned. */
  uint16_t (*quantize_row)(const float *x, int n, int qmax, int8_t *q);
  /* s[i * lds + t] = Σ_g scale_g[t] · (q[i, seg g] · k[t, seg g]) for
   * i < rows, t < nt: logits of a widened tile whose segments carry
   * per-position scales, each scale applied once per segment and position. */
  void (*logits_seg)(const float *q, int rows, const float *k, int nt, int dp,
                     const kq_cpu_seg *seg, int nseg, float *s, int lds);
  /* acc[i, seg g] += Σ_t (p[i * lds + t] · scale_g[t]) · v[t, seg g] for
   * i < rows: the scale folds into the softmax weight. ptmp holds
   * [rows, lds] floats of scratch. */
  void (*pv_seg)(const float *p, int rows, int lds, const float *v, int nt, int dp,
                 const kq_cpu_seg *seg, int nseg, float *acc, float *ptmp);
  /* One segment read in place from its plane (rows every `stride` bytes at
   * k / v, formats as in widen_rows, any w: the last w % 8 elements through
   * a zero-padded copy, never read past a row), each row converted
   * once per block of query rows; NULL in the portable set (then the
   * widened tile is used):
   *   logits_plane: s[i * lds + t] (+ when accumulate) = scale[t] ·
   *     Σ_c q[i * ldq + c] k_t[c] (scale NULL: 1), i < rows, t < nt;
   *   pv_plane: acc[i * lda + c] += Σ_t p[i * lds + t] v_t[c], c < w. */
  void (*logits_plane)(int bits, int f16, const float *q, int rows, int ldq, const unsigned char *k,
                       size_t stride, int nt, int w, const float *scale, float *s, int lds,
                       int accumulate);
  void (*pv_plane)(int bits, int f16, const float *p, int rows, int lds, const unsigned char *v,
                   size_t stride, int nt, int w, float *acc, int lda);
  /* s[i * lds + t] = Σ_g Σ_c q[i * ldq + pl[g].qoff + c] · scale_g[t] k_g,t[c]
   * for i < rows, t < nt: every segment of a key tile in one pass, each key
   * vector scaled once as it is loaded (shared by the rows) and one
   * horizontal reduction per row and key for all segments. NULL in the
   * portable set. */
  void (*logits_planes)(const kq_cpu_plane *pl, int npl, const float *q, int rows, int ldq, int nt,
                        float *s, int lds);
  /* Integer versions of logits_plane / pv_plane for one quantized segment
   * (bits KQ_SEG_Q8 or KQ_SEG_Q4, any width w <= KQ_CPU_I16_MAX_WIDTH, even
   * for q4), int16 x int16 -> int32 products (VNNI vpdpwssd where present,
   * else vpmaddwd): NULL when the set has none.
   *   logits_plane_i16: s[i * lds + t] (+ when accumulate) = kscale[t] ·
   *     qscale[i] · (Σ_c q[i * ldq + c] k_t[c]), q from kq_cpu_query_i16
   *     (ldq >= kq_cpu_i16_width(w)), k_t the stored integers (q4: u - 8);
   *   pv_plane_i16: acc[i * lda + c] += Σ_t p[i * lds + t] v_t[c], c < w, the
   *     weights rounded per row and call to int16 (max -> 32767; nt <= 64);
   *     wtmp holds KQ_CPU_I16_ROWS * 66 int16 of scratch. */
  void (*logits_plane_i16)(int bits, const int16_t *q, int rows, int ldq, const float *qscale,
                           const int32_t *qsum, const unsigned char *k, size_t stride, int nt,
                           int w, const float *kscale, float *s, int lds, int accumulate);
  void (*pv_plane_i16)(int bits, const float *p, int rows, int lds, const unsigned char *v,
                       size_t stride, int nt, int w, float *acc, int lda, int16_t *wtmp);
  /* logits_planes with int8 dot products on the quantized segments: the
   * stored integers (q8 + 128, q4 nibbles as stored) on the unsigned side
   * of vpdpbusd (AVX-512 VNNI; vpmaddubsw + vpmaddwd on the other sets, q8
   * then as |k| times the query digit with k's sign), the query on the
   * signed side as KQ_CPU_I8_DIGITS int8 digits (qd from kq_cpu_query_i8,
   * rows every ldqd bytes), the offsets removed once per sum as offset ·
   * Σ digits. Float segments as in logits_planes (q, ldq; the query
   * padded with zeros to a multiple of 8). Blocks of 8 positions whose key
   * bytes are transposed once (dword i of the 8 positions in one vector), so
   * each lane accumulates one position: no horizontal reductions, and each
   * segment's scale[t] (read for t < nt only) multiplies 8 logits as a
   * vector. Integer sums are exact, so every set gives the same logits.
   * NULL in the portable set. */
  void (*logits_planes_i8)(const kq_cpu_plane *pl, int npl, const float *q, int ldq,
                           const unsigned char *qd, size_t ldqd, int rows, int nt, float *s,
                           int lds);
  /* acc[i * lda + c] += Σ_t p[i * lds + t] · scale[t] · v_t[c], c < w, for
   * one quantized value segment (bits KQ_SEG_Q8 or KQ_SEG_Q4, w even for
   * q4) read in place (rows every `stride` bytes at v; v_t the stored
   * integers, q4 as u - 8), i < rows <= KQ_CPU_PV_I8_ROWS, nt <= 64, with
   * int8 dot products (vpdpbusd): each row's weights p · scale rounded to
   * 16 bits per call (x = round(w · 65535 / max_t w), error <= 2^-17 of
   * the row's largest weight) in two unsigned digits, the values signed, the
   * exact int32 sum times one F32 step per row. A non-finite weight makes
   * the row's sums NaN. Columns [w, pad to 8) of acc are written with
   * finite values. tmp holds KQ_CPU_PV_I8_SCRATCH bytes. NULL without
   * VNNI (vpmaddubsw's int16 pair sums would saturate on q8 values). */
  void (*pv_plane_i8)(int bits, const float *p, int rows, int lds, const unsigned char *v,
                      size_t stride, int nt, int w, const float *scale, float *acc, int lda,
                      unsigned char *tmp);
} kq_cpu_kernels;

/* Rows and columns pv_plane_i8 handles at once (more columns are done in
 * pieces), and its scratch: the rows' weight digits, then the value bytes
 * of a 64-position tile transposed (one column of 4 positions a dword). */
#define KQ_CPU_PV_I8_ROWS 4
#define KQ_CPU_PV_I8_COLS 64
#define KQ_CPU_PV_I8_SCRATCH (KQ_CPU_PV_I8_ROWS * 128 + 16 * KQ_CPU_PV_I8_COLS * 4)

/* Int8 digits per query element for logits_planes_i8, and their base: x ≈
 * s (a0 + a1 / 254) with s = max |x| / 127 per row and segment, both
 * digits in [-127, 127]: error <= s / 508, 2^-16 of the row's largest
 * element, as the int16 query but with int8 products. The conformance
 * suite passes with its thresholds (its tightest quantized case,
 * kq8-vq4_ties at F32 level, measures 1.2e-9 against 1.9e-9); three digits
 * (2^-24) cost 1.3x the multiply-adds and were slower than the F32 kernels
 * on Zen 4 (docs/results.md). */
#define KQ_CPU_I8_DIGITS 2
#define KQ_CPU_I8_BASE 254

/* Bytes of one query row's int8 digits for key segments pl[0, npl) (only
 * bits and width are read): per quantized segment, KQ_CPU_I8_DIGITS digit
 * runs (q8: its w elements; q4: the even elements then the odd ones, each
 * of the two padded to a multiple of 32 digits; every 4 digits stored 8
 * times over, as the broadcast vector the kernel multiplies), then 32
 * bytes: the F32 scales s · 254^-k and the int32 digit sums Σ a_k. A
 * multiple of 32. */
size_t kq_cpu_query_i8_bytes(const kq_cpu_plane *pl, int npl);

/* The int8 digits of rows query rows q[r * ldq + pl[g].qoff + c], c <
 * pl[g].width, of every quantized segment g, into out[r * ld ..] (ld >=
 * kq_cpu_query_i8_bytes, the layout described there; padding zeroed). A
 * non-finite element makes that segment's scales NaN (its logits NaN). */
void kq_cpu_query_i8(const kq_cpu_plane *pl, int npl, const float *q, int rows, int ldq,
                     unsigned char *out, size_t ld);

/* Widest quantized segment piece the int16 kernels take at once: int32 sums
 * of 32767 · 127 · 512 stay below 2^31. Wider segments are cut in pieces. */
#define KQ_CPU_I16_MAX_WIDTH 512
/* Rows whose int16 weights pv_plane_i16 holds at once. */
#define KQ_CPU_I16_ROWS 16

/* Elements of the int16 query of a quantized segment of width w: w rounded
 * up to 16. */
static inline int kq_cpu_i16_width(int w) {
  return (w + 15) & ~15;
}

/* The int16 query of one quantized segment piece for logits_plane_i16: x[c],
 * c < w, rounded to q = round(x / s) with s = max |x| / 32767 (*scale = s;
 * all zero when x is), padded with zeros to kq_cpu_i16_width(w). For q4
 * each chunk of 32 (then 16) elements is stored even elements first, then
 * odd ones: the order in which the kernels expand a byte's two nibbles.
 * *sum = Σ q, the kernels' correction for the +8 of stored nibbles. */
void kq_cpu_query_i16(int bits, const float *x, int w, int16_t *q, float *scale, int32_t *sum);

/* The kernels for this CPU (detected once; thread-safe): the AVX2 set,
 * compiled again with AVX-512VL (32 vector registers) and with AVX-512VL +
 * VNNI, else portable C. On an AVX-512 CPU the AVX-512 set and the AVX2 set
 * (bit-identical results) are timed on F16 decode tiles at first use (a
 * few ms of one thread's CPU time) and the faster is kept.
 * KQSVD_CPU_ISA=generic, avx2, avx512novnni or avx512 forces a set (the
 * widest the CPU has at most) without timing. */
const kq_cpu_kernels *kq_cpu_kernels_get(void);

/* 1 when quantized segments go through the int16 kernels of the set
 * (logits_plane_i16 / pv_plane_i16), 0 for the F32 ones (the default: the
 * int16 rounding of queries and softmax weights, 2^-16 of a row's largest
 * element, is above the F32 error the conformance suite allows where no
 * storage rounding is at risk, and measured at most ~1.1x faster on Zen 4).
 * KQSVD_CPU_QUANT=int16 selects them, =auto times both on a decode tile on
 * first use and takes the faster (results then depend on that timing).
 * Always 0 for a set without them. Decided once per process; thread-safe. */
int kq_cpu_quant_int16(void);

/* 1 when quantized key segments of decode tasks go through
 * logits_planes_i8: the default on a set that has it (when the F16 timing
 * keeps the AVX2 set on a VNNI CPU, with VNNI's kernel: same integer sums).
 * KQSVD_CPU_QUANT=int8 (or int8-pv) asks for it, =f32 keeps the F32
 * kernels, =int16 and =auto (int16 against f32, as above) turn it off. Decided once per
 * process; thread-safe. */
int kq_cpu_quant_int8(void);

/* 1 when quantized value segments of decode tasks (<= KQ_CPU_PV_I8_ROWS
 * rows) go through pv_plane_i8 (with the int8 logits): opt-in,
 * KQSVD_CPU_QUANT=int8-pv, on a set that has it (VNNI). Not the default:
 * on Zen 4 its weight rounding and value transposes cost what the
 * vpdpbusd save (bench_kernels: 8.0 ns per position against 7.5 for the
 * F32 kernel with its weight x scale pass, Llama recipe; 5.3 against
 * 4.4, SmolLM2). Decided once per process; thread-safe. */
int kq_cpu_quant_int8_pv(void);

/* The code path in words for reports, e.g. "avx2+fma+f16c+avx512vl+vnni,
 * quantized int16 (measured 2.3x f32)"; a static string. */
const char *kq_cpu_code_path(void);

#endif
