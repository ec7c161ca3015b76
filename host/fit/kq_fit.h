/*
 * kq_fit.h — internal pieces of host/fit: the calibration file (SPEC §2),
 * per-layer R factors, the per-head KQ-SVD / K-SVD / Eigen solutions
 * (SPEC §1), rank choice, RoPE, and the attention used by kq_eval.
 *
 * Matrix storage: d×d R factors and SVD results are column-major doubles
 * (as host/linalg); projection matrices handed to files are row-major
 * [d, rank] floats as in the projection file.
 */
#ifndef KQ_FIT_H
#define KQ_FIT_H

#include <stdint.h>

#include "kq_common.h"
#include "kq_safetensors.h"

/* ------------------------------------------------------------------------ */
/* Calibration file                                                         */
/* ------------------------------------------------------------------------ */

typedef struct kq_calib {
  kq_st_file *file;
  const char *path;
  int32_t n_layers, n_heads, n_kv_heads, head_dim;
  int32_t hidden; /* D of wo; 0 without wo */
  int64_t n_tokens, seq_len;
  int32_t has_wo;
  kq_rope_mode rope;
  kq_rope_layout rope_layout;
  float rope_theta;
} kq_calib;

typedef struct kq_calib_layer {
  const kq_st_tensor *k, *q, *v; /* [Hk,T,d], [H,T,d], [Hk,T,d] */
  const kq_st_tensor *wo;        /* [D, H·d] or NULL */
} kq_calib_layer;

/* Opens and validates `path` as a calibration file: layers.{l}.k/q/v for
 * l = 0.. with consistent shapes over layers, H % Hk == 0, T >= 1, seq_len
 * dividing T, wo in all layers or none, metadata values parsed (errors name
 * the field). Data is not scanned here (see kq_calib_layer_check_finite). */
kq_status kq_calib_open(const char *path, kq_calib *out);
void kq_calib_close(kq_calib *calib);

/* The tensors of one layer (views into the mapping of `calib`). */
void kq_calib_get_layer(const kq_calib *calib, int32_t layer, kq_calib_layer *out);

/* KQ_ERR_NUMERIC naming the file and tensor if any tensor of the layer holds
 * NaN/Inf; KQ_OK otherwise. Used to turn a numeric failure seen while
 * factoring into the canonical message. */
kq_status kq_calib_layer_check_finite(const kq_calib *calib, const kq_calib_layer *layer);

/* Hints the kernel that the layer's pages may be dropped from this process
 * (read-only file mapping: they are re-read on the next touch). Keeps the
 * resident set of a streamed fit at one layer. */
void kq_calib_release_layer(const kq_calib *calib, const kq_calib_layer *layer);
/* The same for one byte range inside the mapping (whole pages only). */
void kq_calib_release_range(const void *data, uint64_t nbytes);

/* ------------------------------------------------------------------------ */
/* R factors of one layer                                                   */
/* ------------------------------------------------------------------------ */

typedef struct kq_layer_factors {
  int32_t n_kv_heads, head_dim;
  double *r_key;   /* [Hk][d*d] column-major upper triangular, R_KᵀR_K = K_iᵀK_i */
  double *r_query; /* [Hk][d*d] of the group's stacked queries, or NULL if not asked */
  double *r_value; /* [Hk][d*d] */
  double *r_wo;    /* [Hk][d*d] of W_i (mean of the group's wo slices), NULL without wo */
} kq_layer_factors;

/* Computes the R factors of layer `layer` in parallel over heads. need_query
 * = 0 skips the queries (K-SVD does not read them). `cancel` is polled
 * between heads. Errors name the file, tensor and head. */
kq_status kq_layer_factors_compute(const kq_calib *calib, const kq_calib_layer *layer,
                                   int32_t layer_index, int need_query, int n_threads,
                                   const volatile int *cancel, kq_layer_factors *out);
void kq_layer_factors_free(kq_layer_factors *f);

/* ------------------------------------------------------------------------ */
/* Per-head solutions (SPEC §1)                                             */
/* ------------------------------------------------------------------------ */

/* Full-rank solution of one kv head: column j of each d×d (column-major)
 * matrix is direction j, sorted by descending sigma; the rank-r projection
 * is the first r columns. Directions with sigma_j = 0 (within rounding) are
 * zero columns (SPEC §1 guard). */
typedef struct kq_head_solution {
  double *key_down, *query_down;   /* A, B: d×d */
  double *value_down, *value_up;   /* C, E: d×d */
  double *key_sigma, *value_sigma; /* [d] the method's own spectra */
} kq_head_solution;

/* Key side for `method`. r_query may be NULL for K-SVD. work: scratch of
 * kq_solve_work_size(d) doubles. */
kq_status kq_solve_keys(kq_method method, double alpha, int32_t d, const double *r_key,
                        const double *r_query, double *work, double *a, double *b, double *sigma);
/* Value side: r_wo == NULL gives the plain SVD of V (C = E). */
kq_status kq_solve_values(int32_t d, const double *r_value, const double *r_wo, double *work,
                          double *c, double *e, double *sigma);
size_t kq_solve_work_size(int32_t d);

/* M = R1 R2ᵀ for d×d column-major upper-triangular R1, R2. */
void kq_mul_rrt(int32_t d, const double *r1, const double *r2, double *m);

/* ------------------------------------------------------------------------ */
/* Rank choice (SPEC §1)                                                    */
/* ------------------------------------------------------------------------ */

/* Predicted relative error of keeping the first r of d singular values:
 * sqrt(Σ_{j>=r} σ_j² / Σ σ_j²); 0 when all σ are 0. */
double kq_predicted_error(const double *sigma, int32_t d, int32_t r);

/* Smallest r in [1, d] whose mean over the n_heads spectra (sigma:
 * [n_heads][d]) of kq_predicted_error is <= epsilon (d if none is). */
int32_t kq_rank_for_epsilon(const double *sigma, int32_t n_heads, int32_t d, double epsilon);

/* Ranks over all layers with Σ_l (rank_k[l] + rank_v[l]) <= budget, each
 * >= 1 and <= d. sigma_k, sigma_v: [n_layers][n_heads][d]. Fails with
 * KQ_ERR_INVALID_ARGUMENT if budget < 2·n_layers. See rank.c for the
 * objective. */
kq_status kq_rank_for_budget(const double *sigma_k, const double *sigma_v, int32_t n_layers,
                             int32_t n_heads, int32_t d, int64_t budget, int32_t *rank_k,
                             int32_t *rank_v);

/* ------------------------------------------------------------------------ */
/* RoPE and attention for kq_eval                                           */
/* ------------------------------------------------------------------------ */

/* Softmax and output metrics of one layer over the first n_seqs sequences
 * (SPEC §3): causal attention inside each sequence, exact vs projected.
 * cache != NULL: the projected outputs come from the device (append +
 * attend of this layer, truncated to 0 per sequence); the softmax metric is
 * always the host's (the device returns outputs, not P). Sums of squares are
 * returned so layers/heads pool before the ratio. */
kq_status kq_eval_attention(const kq_calib *calib, const kq_calib_layer *layer,
                            const kq_projection_layer *proj, int32_t layer_index, int32_t n_seqs,
                            kq_cache *cache, int n_threads, const volatile int *cancel,
                            double out_softmax[2], double out_output[2]);

/* Rotates x [d] in place for position `pos` (angle pos·theta^(−2j/d)). */
void kq_rope_rotate(double *x, int32_t d, int64_t pos, double theta, kq_rope_layout layout);

#endif /* KQ_FIT_H */
