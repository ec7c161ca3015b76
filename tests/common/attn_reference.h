/*
 * attn_reference.h — THE float64 reference of compressed attention (SPEC
 * §1, §4) of the tests, written independently of the library: the
 * conformance suite, the backend, Vulkan and OpenCL tests all compare with
 * it. Test code only: never linked into libkqsvd.
 *
 * Inputs are the exact float32 arrays handed to a device; everything is
 * computed in double. F16 storage is modelled: each latent element is the
 * exact (double) projection rounded once to the nearest binary16 value (ties
 * to even), which is what a correct device stores up to its own float32
 * rounding of the projection before the conversion.
 */
#ifndef KQC_REFERENCE_H
#define KQC_REFERENCE_H

#include <stdint.h>

#include "kqsvd.h"

/* Rounds x to the nearest IEEE binary16 value (ties to even, subnormals
 * kept, overflow to ±Inf), returned as a double. */
double kqc_round_f16(double x);

/* Latent projection of n tokens for every kv head:
 *   out[h, row0 + t, :] = x[t, h, :] · proj[h]        t < n
 * x [n, n_kv, d] float32, proj [n_kv, d, r] float32, out [n_kv, ld, r]
 * double (ld = rows reserved per head, row0 + n <= ld). With F16 storage
 * every element of out is rounded by kqc_round_f16. Returns 0, or -1 when
 * out of memory. */
int kqc_ref_project(const float *x, const float *proj, int32_t n, int32_t n_kv, int32_t d,
                    int32_t r, kq_storage storage, double *out, int32_t ld, int32_t row0);

/* Quantizes one row segment x[w] (float32 values held in doubles) as SPEC
 * §1b and kqsvd_backend.h define it, written here independently of the
 * library: s = max|x| / qmax in float32, rounded to binary16 (ties to
 * even); q_j = clamp(round_half_away(x_j / s), −qmax, qmax) with x_j / s
 * correctly rounded to float32; q = 0 when s = 0. out[j] = q_j · s (the
 * dequantized value; out may alias x). Returns s. */
double kqc_ref_quantize(const double *x, int32_t w, int32_t qmax, double *out);

/* What the latent storage of a reference run looked like, for thresholds
 * (cases.c). Sums run over every stored latent element. */
typedef struct kqc_ref_qstats {
  double energy; /* Σ x² of the exact latents */
  /* Σ s² (s: the segment's step) over the elements of q8 [0] and q4 [1]
   * segments whose float32 latent may differ on a device (dev > 0 below;
   * exact latents, as in tie cases, cannot flip) */
  double step2[2];
  /* Σ w·s² and Σ x² over the q8 [0] / q4 [1] segments whose scale may
   * differ on a device (some dev > 0) */
  double scale_step2[2];
  double scale_energy;
  int64_t at_risk; /* elements (or segment scales) the device may round the other way */
} kqc_ref_qstats;

/* Latent projection with storage segments (SPEC §1b), one row per token and
 * kv head, as kqc_ref_project (n_segments = 0: one float segment of width
 * r, i.e. exactly kqc_ref_project). Float segments keep the exact value
 * (F32 storage) or its binary16 rounding (F16); quantized segments
 * quantize the exact latent rounded to float32 (what a device computes)
 * with kqc_ref_quantize.
 *
 * alt (may be NULL; same shape as out) receives the same rows with every
 * AT-RISK rounding taken the other way: a device's float32 latent differs
 * from the exact one by at most dev = 4·u32·sqrt(nnz)·sqrt(Σ_i t_i²) +
 * u32·|x| (t_i = x_i·p_ij the nnz non-zero terms of the dot product: about
 * ten standard deviations of float32 rounding in any summation order; 0 when
 * a single term is exact in float32), so an element whose x/s lies within
 * dev/s of a rounding boundary may land on the other side (alt: the other
 * integer), and a scale whose max|x|/qmax lies within max(dev)/qmax of a
 * binary16 rounding boundary may become the other neighbour (alt: the
 * whole segment re-quantized with it). stats (may be NULL) accumulates.
 * Returns 0, or -1 when out of memory. */
int kqc_ref_project_seg(const float *x, const float *proj, int32_t n, int32_t n_kv, int32_t d,
                        int32_t r, kq_storage storage, const kq_segment *segments,
                        int32_t n_segments, double *out, double *alt, int32_t ld, int32_t row0,
                        kqc_ref_qstats *stats);

/* Rotates x[d] in place by RoPE at position pos (SPEC §1): pair j (j < d/2)
 * is (x[2j], x[2j+1]) for PAIRS or (x[j], x[j+d/2]) for HALVES, turned by
 * the angle pos · theta^(-2j/d): (a, b) -> (a cos − b sin, a sin + b cos).
 * d must be even. */
void kqc_ref_rope(double *x, int32_t d, double pos, double theta, kq_rope_layout layout);

/* The attention problem: shapes, RoPE, and the projections that attention
 * itself reads (A, B for queries and PRE keys, E for full outputs), each
 * [n_kv_heads, head_dim, rank] float32. */
typedef struct kqc_ref_problem {
  int32_t n_heads, n_kv_heads, head_dim, rank_k, rank_v;
  kq_rope_mode rope;
  kq_rope_layout layout;
  double theta;
  const float *key_down;   /* A */
  const float *query_down; /* B */
  const float *value_up;   /* E */
  /* Optional: the keys as the logits read them, from kqc_ref_logit_keys()
   * for the same latents (saves rebuilding PRE keys on every call). NULL:
   * kqc_ref_attend builds them itself. */
  const double *logit_keys;
  /* KQ_LAYOUT_JOINT (NONE/POST only): one latent group shared by every
   * head (klat [1, ld, rank_k], vlat [1, ld, rank_v]); query_down and
   * value_up stay [n_kv_heads, head_dim, rank] and query head h uses block
   * h / g. key_down is then [n_kv_heads·head_dim, rank_k] (unused). */
  kq_layout latent_layout;
} kqc_ref_problem;

/* Width of the keys the logits dot: head_dim for PRE, rank_k otherwise. */
int32_t kqc_ref_logit_width(const kqc_ref_problem *pb);

/* The keys the logits read for positions 0..n−1, out [n_kv, ld, width]:
 * PRE k̂_p = rot(k̃_p Bᵀ, p), otherwise the latents k̃_p themselves.
 * klat [n_kv, ld, rank_k]. */
void kqc_ref_logit_keys(const kqc_ref_problem *pb, const double *klat, int32_t ld, int32_t n,
                        double *out);

/* Statistics of the logits the reference computed (for thresholds). */
typedef struct kqc_ref_stats {
  double logit_max; /* max |logit| over every (query, head, position) */
  double logit_rms; /* root mean square logit */
} kqc_ref_stats;

/* Causal attention for the last m of n_ctx positions (query j sits at
 * position n_ctx − m + j and sees positions 0..itself):
 *   klat [G, ld, rank_k], vlat [G, ld, rank_v] double latents (G = n_kv,
 *   or 1 in the JOINT layout; rows
 *   0..n_ctx−1 valid), q [m, n_heads, head_dim] float32.
 *   out [m, n_heads, rank_v] (KQ_OUTPUT_LATENT: P Ṽ) or
 *   [m, n_heads, head_dim] (KQ_OUTPUT_FULL: (P Ṽ) Eᵀ).
 * Query head h reads kv head h / (n_heads / n_kv_heads); scale 1/sqrt(d).
 * NONE/POST: logit = (q B)·k̃ / sqrt(d). PRE: logit = rot(q B Aᵀ, pos_q) ·
 * rot(k̃ Bᵀ, p) / sqrt(d). Returns 0, or -1 on bad arguments (m < 1,
 * m > n_ctx, ...) or allocation failure; stats may be NULL. */
int kqc_ref_attend(const kqc_ref_problem *pb, const double *klat, const double *vlat, int32_t ld,
                   int32_t n_ctx, int32_t m, const float *q, kq_output output, double *out,
                   kqc_ref_stats *stats);

/* The whole per-head pipeline from full keys and values, for tests that
 * hand a device keys/values and compare its attention: latents k̃ = k A,
 * ṽ = v C of every position as kqc_ref_project computes them (`storage`
 * F16: rounded to binary16), then kqc_ref_attend. pb->latent_layout must
 * be PER_HEAD; keys, values [n_ctx, n_kv_heads, head_dim]; value_down C
 * [n_kv_heads, head_dim, rank_v]; q, output, out as kqc_ref_attend.
 * Returns 0, or -1 on bad arguments or allocation failure. */
int kqc_ref_attend_kv(const kqc_ref_problem *pb, const float *value_down, kq_storage storage,
                      const float *keys, const float *values, int32_t n_ctx, int32_t m,
                      const float *q, kq_output output, double *out);

#endif /* KQC_REFERENCE_H */
