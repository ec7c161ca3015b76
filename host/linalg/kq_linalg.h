/*
 * kq_linalg.h — dense linear algebra in double for fitting: one-sided
 * Jacobi SVD (Hestenes, as LAPACK dgesvj), Householder QR, Cholesky, and
 * streamed R factors of tall F32/F16/BF16 matrices. No LAPACK.
 *
 * Storage: column-major with a leading dimension (lda >= max(1, rows)).
 * Every function is single-threaded and reentrant (no global state beyond a
 * cached CPU-feature flag), so callers parallelise over heads and layers.
 * Hot loops run AVX2/FMA/F16C clones when the CPU has them (chosen at run
 * time), baseline x86-64 or portable C otherwise.
 */
#ifndef KQ_LINALG_H
#define KQ_LINALG_H

#include <stdint.h>

#include "kq_common.h"

typedef struct kq_svd_params {
  int max_sweeps;      /* default 30 */
  int qr_precondition; /* 1: factor A·P = QR first (P sorts columns by norm) and run
                        Jacobi on Rᵀ, which needs fewer sweeps on ill-conditioned input;
                        the QR itself is unblocked, so this is not faster for m >> n */
} kq_svd_params;

kq_svd_params kq_svd_default_params(void);

/* ‖x‖₂ of n doubles without overflow or harmful underflow (subnormal and
 * near-overflow entries included); NaN/Inf propagate. */
double kq_vec_norm2(const double *x, int64_t n);

typedef struct kq_svd_info {
  int sweeps;    /* sweeps used */
  int rotations; /* rotations applied */
} kq_svd_info;

/* Thin SVD A = U Σ Vᵀ of an m×n matrix with m >= n (a: m×n, lda).
 * On return the first n columns of `a` hold U (columns for σ_j = 0 are zero),
 * sigma[0..n) is sorted descending, v (n×n, ldv) holds V (always
 * orthogonal). `info` may be NULL. Columns that rotations reduce to rounding
 * noise (numerically rank-deficient A) get σ_j = 0 exactly. Accuracy is
 * LAPACK dgesvj's: backward stable, and small σ of column-graded matrices
 * (A = B·D, B well conditioned) are found to high relative accuracy.
 * Errors: KQ_ERR_NUMERIC on NaN/Inf input, KQ_ERR_NO_CONVERGENCE after
 * max_sweeps (outputs still hold the last iterate), KQ_ERR_INVALID_ARGUMENT
 * for m < n or bad leading dimensions, KQ_ERR_OUT_OF_MEMORY. */
kq_status kq_svd_jacobi(int m, int n, double *a, int lda, double *sigma, double *v, int ldv,
                        const kq_svd_params *params, kq_svd_info *info);

/* Householder QR of an m×n matrix (m >= n) in place: R in the upper
 * triangle, reflectors below it, tau[0..n) (LAPACK dgeqr2 layout, unblocked:
 * meant for small matrices). KQ_ERR_INVALID_ARGUMENT on a bad shape. */
kq_status kq_qr_householder(int m, int n, double *a, int lda, double *tau);

/* C := Q·C for the Q of kq_qr_householder (m×n reflectors in a, tau) and an
 * m×ncols matrix C (ldc >= m). Q = H_0·H_1·…·H_{n-1}, H_k = I − τ_k v_k v_kᵀ,
 * v_k = [0…0, 1, a(k+1:m, k)]. */
kq_status kq_qr_apply_q(int m, int n, const double *a, int lda, const double *tau, int ncols,
                        double *c, int ldc);

/* Cholesky G = RᵀR of a symmetric positive-definite n×n matrix (upper
 * triangle used; R written there, the strict lower triangle is untouched).
 * Returns KQ_ERR_NUMERIC if a pivot is not positive (g then holds a partial
 * factor); *out_min_pivot_ratio (may be NULL) = min_j R_jj² / max_j G_jj. */
kq_status kq_cholesky_upper(int n, double *g, int ldg, double *out_min_pivot_ratio);

/* A view of a tall row-major matrix part in any float dtype:
 * element (i, j) = scale * data[i * row_stride + j] for i < rows, j < cols. */
typedef struct kq_matrix_view {
  const void *data;
  kq_dtype dtype; /* F32, F16, BF16 or F64 */
  int64_t rows;
  int32_t cols;
  int64_t row_stride; /* in elements */
  double scale;
} kq_matrix_view;

typedef enum kq_rfactor_method {
  KQ_RFACTOR_CHOLESKY = 0, /* Gram in double + Cholesky (safe case) */
  KQ_RFACTOR_TSQR = 1,     /* Householder on row blocks (fallback) */
} kq_rfactor_method;

typedef struct kq_rfactor_info {
  kq_rfactor_method method; /* the route that produced R */
  double min_pivot_ratio;   /* of the Gram's Cholesky (0 when it failed) */
} kq_rfactor_info;

/* Upper-triangular R (cols×cols, column-major, ldr; the strict lower
 * triangle is set to zero) with RᵀR = XᵀX for X = the vertical stack of
 * parts[0..n_parts) (all with the same cols; parts may have 0 rows), never
 * forming anything rows×rows: memory is O(cols² + 256·cols) doubles.
 * One pass with Gram (in double) + Cholesky when that is numerically safe —
 * κ(R), estimated as ‖R‖_F‖R⁻¹‖_F, small enough that the Gram's κ²-scaled
 * rounding stays below the storage precision of the data (see rfactor.c);
 * otherwise a second pass of blocked Householder updates (TSQR). The
 * diagonal of R is non-negative. Rank-deficient inputs (fewer rows than
 * cols, duplicate or zero columns) take TSQR and give R with zero or tiny
 * diagonal entries, never NaN. Errors: KQ_ERR_NUMERIC naming the part, row
 * and column of a NaN/Inf value (after scaling), KQ_ERR_INVALID_ARGUMENT
 * (mismatched cols, row_stride < cols, ldr < cols, no parts),
 * KQ_ERR_UNSUPPORTED (dtype), KQ_ERR_OUT_OF_MEMORY. `info` may be NULL. */
kq_status kq_rfactor(const kq_matrix_view *parts, int n_parts, double *r, int ldr,
                     kq_rfactor_info *info);

#endif /* KQ_LINALG_H */
