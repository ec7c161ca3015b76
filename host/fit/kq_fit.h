/*
 * kq_fit.h — internal pieces of host/fit: the calibration file (SPEC §2),
 * per-layer R factors, the per-head KQ-SVD / K-SVD / Eigen solutions
 * (SPEC §1), the joint layout, the quant baseline, segment rotations and the
 * byte allocator (SPEC §1b), rank choice and RoPE. Host-only maths: the
 * device evaluation of kq_eval lives in host/eval.
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
  /* In-memory calibrations (kq_calib_open_memory): 1, and the row copies
   * the calib owns (n_owned buffers); their pages are never released. */
  int32_t in_memory;
  int32_t n_owned;
  void **owned;
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
/* The same for one byte range inside the mapping (whole pages only). A
 * no-op for an in-memory calibration (its rows are the caller's). */
void kq_calib_release_range(const kq_calib *calib, const void *data, uint64_t nbytes);

/* Opens the rows of a kq_calib_view (public kqsvd.h) as a calibration:
 * argument checks (NULL rows, shapes, layer count) first, then the rows
 * become the tensors layers.{l}.q/k/v [heads, T, d] and wo [D, H·d] (F32)
 * of an in-memory kq_st_file whose metadata is what kq_calib_writer would
 * write, validated by the code kq_calib_open runs, so every later message
 * is the file path's with the view's name in place of the path.
 * Head-major rows are referenced (they must outlive *out); token-major ones
 * are transposed into copies *out owns (memory: one F32 copy of q, k, v of
 * every layer). positions > 0: as kq_calib_open_positions, the rotated
 * keys and queries held in memory (no temporary file). */
kq_status kq_calib_open_memory(const kq_calib_view *view, int64_t positions, uint64_t seed,
                               int n_threads, kq_calib *out);

/* Position-robust calibration (fit --positions, positions.c). positions
 * <= 0: kq_calib_open. Otherwise `path` must have rope pre; every key
 * (side 0) and query (side 1) row of layer l, head h, token t is rotated by
 * kq_rope_rotate to position kq_calib_row_position(seed, positions, l,
 * side, h, t), the result is written (in the file's dtype, with values and
 * wo unchanged) to a temporary file "<tmp_near>.positions.<pid>" that is
 * unlinked once mapped, and *out describes it as rope post; out->path is
 * `path` (which must outlive *out). n_threads as kq_thread_count's result.
 * Memory: the rotated keys and queries of all layers until the file is
 * written; disk: a copy of the calibration in the output's folder. */
kq_status kq_calib_open_positions(const char *path, int64_t positions, uint64_t seed, int n_threads,
                                  const char *tmp_near, kq_calib *out);

/* The rotation of kq_calib_open_positions into memory: bufs[2·l] and
 * bufs[2·l + 1] (caller-owned, freed by the caller even on failure) receive
 * layer l's rotated keys and queries, in the dtype and [heads, T, d] layout
 * of `src`'s tensors. */
kq_status kq_calib_rotate_rows(const kq_calib *src, int64_t positions, uint64_t seed, int n_threads,
                               void **bufs);

/* KQ_ERR_FORMAT naming `path` unless n_heads is a multiple of n_kv_heads
 * (both >= 1): the one check and message of the file and in-memory
 * calibration readers. */
kq_status kq_calib_check_heads(const char *path, int32_t n_heads, int32_t n_kv_heads);

/* kq_calib_open's validation of an already opened calibration `file`
 * (ownership passes to *out, closed on failure too); out->path is the
 * file's. */
kq_status kq_calib_from_st(kq_st_file *file, kq_calib *out);

/* The position in [0, positions) of one calibration row: a hash of (seed,
 * layer, side, head, token); 0 when positions <= 1. */
int64_t kq_calib_row_position(uint64_t seed, int64_t positions, int32_t layer, int32_t side,
                              int32_t head, int64_t token);

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
/* Full-rank solutions of one layer, per-head or joint (SPEC §1, §1b)       */
/* ------------------------------------------------------------------------ */

/* A layer's full-rank solution in `groups` blocks of `dim` dims: per-head
 * groups = Hk, dim = d; joint groups = 1, dim = Hk·d (A, C act on a token's
 * kv heads concatenated; B, E as [Hk·d, dim] are the row blocks B_i, E_i
 * stacked). Column j of each dim×dim (column-major) matrix is latent dim j
 * in σ order. Owned by the struct (kq_layer_solution_free). */
typedef struct kq_layer_solution {
  int32_t groups, dim;
  double *a, *b, *c, *e;     /* [groups][dim*dim] */
  double *sigma_k, *sigma_v; /* [groups][dim], descending */
  /* Balanced solutions (balance.c): [groups][dim] energy of each latent
   * dim's partner (the query latent dim; for values the row of E through
   * W_O) after the scaling, which bytes.c weighs measured rounding errors
   * by. NULL when not balanced (errors unweighted). */
  double *wk, *wv;
} kq_layer_solution;

/* Allocates zeroed arrays for groups × dim. */
kq_status kq_layer_solution_alloc(int32_t groups, int32_t dim, kq_layer_solution *out);
void kq_layer_solution_free(kq_layer_solution *s);

/* Joint KQ-SVD of SPEC §1b from the layer's per-group factors f (r_query
 * needed; r_wo used when present) and the R factors of the T × Hk·d
 * concatenated keys and values, read from `layer` here. out: groups 1,
 * dim Hk·d. Errors name the calibration file and layer. */
kq_status kq_joint_solve(const kq_calib *calib, const kq_calib_layer *layer, int32_t layer_index,
                         const kq_layer_factors *f, kq_layer_solution *out);

/* The quantization-only basis (KQ_METHOD_QUANT): A = B and C = E are
 * permutations sorting channels by the importance weight documented in
 * quant_basis.c, which is also the returned "spectrum" squared. f needs
 * r_query (and r_wo if the calibration has wo). layout JOINT ranks the
 * Hk·d channels of all heads together (groups 1). */
kq_status kq_quant_basis(const kq_layer_factors *f, kq_layout layout, kq_layer_solution *out);

/* ------------------------------------------------------------------------ */
/* Latent balancing (balance.c)                                             */
/* ------------------------------------------------------------------------ */

/* Balancing scales of n latent dims from each dim's energy over the
 * calibration rows and its partner's energy: scale_i ∝ (partner_i /
 * energy_i)^(1/4), normalised so Σ energy_i·scale_i² = Σ energy_i over the
 * dims where both are > 0 (others get scale 1). weight_i := partner_i /
 * scale_i², the partner energy after scaling. */
void kq_balance_scales(const double *energy, const double *partner, int32_t n, double *scale,
                       double *weight);

/* Column j of down (rows×n, column-major) *= scale_j, column j of up /=
 * scale_j: down·upᵀ is unchanged. */
void kq_balance_apply(double *down, double *up, int32_t rows, int32_t n, const double *scale);

/* Balances a KQ-SVD solution (per-head or joint) in place from its spectra:
 * key latents are whitened (energy 1, partner σ²), value latents too when
 * the calibration has wo (has_wo), else they carry σ² (partner 1). Fills
 * sol->wk, sol->wv. */
kq_status kq_balance_kqsvd(kq_layer_solution *sol, int has_wo);

/* The quant basis balanced per channel (energy (KᵀK)_jj, partner (QᵀQ)_jj;
 * values (VᵀV)_jj and (WᵀW)_jj, or 1 without wo). Each channel has its own
 * scale: tying the two channels of a RoPE pair (equal scales, which keeps
 * the scaling commuting with RoPE at any position) measured worse on
 * SmolLM2 (docs/quality.md), and the scaling is exact without it (keys are
 * cached post-RoPE, or for rope pre reconstructed before RoPE). Fills
 * out->wk, out->wv. out as from kq_quant_basis(f, layout, out). */
kq_status kq_quant_balance(const kq_layer_factors *f, kq_layout layout, kq_layer_solution *out);

/* ------------------------------------------------------------------------ */
/* Segment rotations (SPEC §1b)                                             */
/* ------------------------------------------------------------------------ */

/* The seed of one segment's rotation, from the fit seed and where the
 * segment sits (layer, side 0 keys / 1 values, first dim, width). */
uint64_t kq_rotation_seed(uint64_t seed, int32_t layer, int32_t side, int32_t start, int32_t width);

/* r (width×width, column-major) := an orthogonal matrix drawn from `seed`:
 * a randomised Hadamard diag(±1)·H/sqrt(w) when width is a power of two,
 * else the Q of a Householder QR of a Gaussian matrix (signs fixed so the
 * draw is Haar). KQ_ERR_INVALID_ARGUMENT for width < 1. */
kq_status kq_rotation_make(int32_t width, uint64_t seed, double *r);

/* m[:, start:start+width] := m[:, start:start+width] · r for a row-major
 * rows × cols float matrix (r as from kq_rotation_make). */
kq_status kq_rotation_apply(float *m, int64_t rows, int32_t cols, int32_t start, int32_t width,
                            const double *r);

/* ------------------------------------------------------------------------ */
/* Byte allocation (SPEC §1b, fit --bytes)                                  */
/* ------------------------------------------------------------------------ */

enum { KQ_FMT_F16 = 0, KQ_FMT_Q8 = 1, KQ_FMT_Q4 = 2, KQ_FMT_COUNT = 3 };

/* One side (keys or values) of one layer, as the allocator sees it. */
typedef struct kq_alloc_side {
  int32_t dim;                 /* latent dims available */
  int32_t groups;              /* scale groups per token (Hk per head, 1 joint) */
  const double *weight;        /* [dim] predicted error of dropping dim j, relative: Σ_j = 1 */
  double relerr[KQ_FMT_COUNT]; /* rounding error per unit of energy, as the allocator counts it
                                  (kq_alloc_side_set_relerr) */
  /* State and result: dims [0, bound[0]) F16, then q8 to bound[1], q4 to
   * bound[2], the rest dropped. */
  int32_t bound[KQ_FMT_COUNT];
} kq_alloc_side;

/* Weight of rounding error (F16, q8, q4) against the error of dropped dims,
 * per unit of squared error: rounding noise is independent from token to
 * token (the segment rotations spread it), so attention, a weighted mean over
 * tokens, averages much of it away, while a dropped dim's error is the same
 * direction in every token and passes through. Measured on held-out text
 * (SmolLM2-135M, Apache-2.0 at --bytes 0.28; 1 and 2 were worse). */
#define KQ_ALLOC_ROUNDING_WEIGHT 0.25

/* relerr[fmt] := `measured` (E‖x−deq(q(x))‖²/E‖x‖² over calibration
 * latents) times KQ_ALLOC_ROUNDING_WEIGHT. */
void kq_alloc_side_set_relerr(kq_alloc_side *s, int fmt, double measured);

/* Minimal state: 8 (or dim) dims of q4 (q8 when that width is odd). */
void kq_alloc_side_init(kq_alloc_side *s);
/* Bytes per token of the side's state, all groups (SPEC §1b). */
double kq_alloc_side_bytes(const kq_alloc_side *s);
/* Predicted relative squared error of the side's state. */
double kq_alloc_side_error(const kq_alloc_side *s);
/* The state as segments (F16 as KQ_SEG_FLOAT, in the order float, q8, q4);
 * returns the count (<= 3); rank = bound[2]. */
int32_t kq_alloc_side_segments(const kq_alloc_side *s, kq_segment *segments);

/* Spreads `budget` bytes per token over keys[l] and values[l] (l <
 * n_layers, states initialised by kq_alloc_side_init): half to keys and half
 * to values (what one side cannot use goes to the other), each spent
 * greedily on the move (8 more dims of a format) that removes the most
 * predicted error per byte over that side's layers. KQ_ERR_INVALID_ARGUMENT
 * when the budget is below the minimal states' bytes. */
kq_status kq_allocate_bytes(kq_alloc_side *keys, kq_alloc_side *values, int32_t n_layers,
                            double budget);

/* ------------------------------------------------------------------------ */
/* The bytes mode of kq_fit (SPEC §1b)                                      */
/* ------------------------------------------------------------------------ */

/* What kq_fit keeps of a layer once its factors are gone. */
typedef struct kq_layer_fit {
  int32_t groups, dim;       /* as kq_layer_solution */
  int32_t rank_k, rank_v;    /* columns held in a, b / c, e */
  float *a, *b, *c, *e;      /* [groups, dim, rank] row-major */
  double *sigma_k, *sigma_v; /* [groups][dim] */
  double *wk, *wv;           /* as kq_layer_solution (NULL: unweighted) */
  int32_t n_seg_k, n_seg_v;  /* 0: one float segment of the whole rank */
  kq_segment seg_k[KQ_MAX_SEGMENTS], seg_v[KQ_MAX_SEGMENTS];
} kq_layer_fit;

/* Chooses every layer's ranks and segments for p->bytes from layers at full
 * rank (rank = dim): measures each format's relative error on up to 4096
 * calibration tokens' latents (rotated, quantized with kq_quantize_row),
 * allocates (kq_allocate_bytes), measures again on the chosen segments and
 * allocates once more. Writes rank_k/rank_v [n_layers], the layers'
 * segments, and the predicted relative errors (mean over layers of
 * sqrt(predicted relative squared error, rounding error weighted by
 * KQ_ALLOC_ROUNDING_WEIGHT)). */
kq_status kq_fit_bytes(const kq_calib *calib, const kq_fit_params *p, int n_threads,
                       kq_layer_fit *layers, int32_t *rank_k, int32_t *rank_v, double *out_error_k,
                       double *out_error_v);

/* Reads a sensitivity file (kq_fit_params.sensitivity) of a model with
 * n_layers layers into kl[2 * n_layers] (keys of layers 0.., then values).
 * Every layer of both sides must appear exactly once with a finite KL >= 0;
 * errors name the file and line. */
kq_status kq_sensitivity_load(const char *path, int32_t n_layers, double *kl);

/* m[l] := sqrt(kl[l] / predicted[l]) over l < n, normalised to mean 1 and
 * floored at 1/16 (a layer with no predicted error gets the floor). */
void kq_sensitivity_multipliers(const double *kl, const double *predicted, int32_t n, double *m);

/* Folds the rotation of every quantized segment of every layer into the
 * columns of key_down/query_down (keys) and value_down/value_up (values),
 * seeds from kq_rotation_seed(seed, layer, side, start, width). */
kq_status kq_fold_rotations(kq_projections *proj, uint64_t seed);

/* ------------------------------------------------------------------------ */
/* RoPE                                                                     */
/* ------------------------------------------------------------------------ */

/* Rotates x [d] in place for position `pos` (angle pos·theta^(−2j/d)). */
void kq_rope_rotate(double *x, int32_t d, int64_t pos, double theta, kq_rope_layout layout);

#endif /* KQ_FIT_H */
