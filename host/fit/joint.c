/* Joint KQ-SVD (SPEC §1b): one latent per layer shared by every kv head.
 * With K = [K_1 … K_Hk] (T × Hk·d) and R_Qbd = blockdiag(R_Q1 … R_QHk), the
 * best rank-R approximation of Q_bd Kᵀ is the per-head recipe of §1 applied
 * to M = R_K R_Qbdᵀ; values likewise with W_bd = blockdiag(W_i). Both
 * factors are upper triangular, so the per-head solver runs unchanged at
 * dimension Hk·d. */
#include <stdlib.h>
#include <string.h>

#include "kq_fit.h"
#include "kq_linalg.h"

/* R factor of the T × Hk·d concatenation of tensor t ([Hk, T, d]). The
 * concatenation is held in F32 (exact for F32/F16/BF16 inputs). */
static kq_status concat_rfactor(const kq_calib *calib, const kq_st_tensor *t, int32_t layer,
                                const char *what, double *r) {
  int32_t hk = calib->n_kv_heads, d = calib->head_dim, n = hk * d;
  int64_t T = calib->n_tokens;
  size_t es = kq_dtype_size(t->dtype);
  float *x = kq_malloc_array((size_t)T * (size_t)n, sizeof *x, "joint concatenation");
  if (!x) return KQ_ERR_OUT_OF_MEMORY;
  for (int32_t i = 0; i < hk; i++)
    for (int64_t row = 0; row < T; row++)
      kq_convert_to_f32(t->dtype, (const char *)t->data + (((size_t)i * T + row) * d) * es,
                        x + (size_t)row * n + (size_t)i * d, (size_t)d);
  kq_matrix_view view = {
      .data = x, .dtype = KQ_DTYPE_F32, .rows = T, .cols = n, .row_stride = n, .scale = 1.0};
  kq_status st = kq_rfactor(&view, 1, r, n, NULL);
  free(x);
  if (st)
    return kq_error_prefix(st, "%s: layers.%d.%s: R factor of the concatenated kv heads",
                           calib->path, (int)layer, what);
  return KQ_OK;
}

/* blockdiag(r[0..hk)) of d×d column-major blocks as an n×n matrix. */
static void block_diag(const double *r, int32_t hk, int32_t d, double *out) {
  int32_t n = hk * d;
  memset(out, 0, (size_t)n * n * sizeof *out);
  for (int32_t i = 0; i < hk; i++)
    for (int32_t col = 0; col < d; col++)
      memcpy(out + (size_t)(i * d + col) * n + (size_t)i * d, r + ((size_t)i * d + col) * d,
             (size_t)d * sizeof *out);
}

kq_status kq_joint_solve(const kq_calib *calib, const kq_calib_layer *layer, int32_t layer_index,
                         const kq_layer_factors *f, kq_layer_solution *out) {
  int32_t hk = calib->n_kv_heads, d = calib->head_dim, n = hk * d;
  if (!f->r_query)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "joint solve: query factors are missing");
  kq_status st = kq_layer_solution_alloc(1, n, out);
  if (st) return st;
  size_t nn = (size_t)n * n;
  double *r1 = kq_malloc_array(nn, sizeof *r1, "joint factor");
  double *r2 = kq_malloc_array(nn, sizeof *r2, "joint factor");
  double *work = kq_malloc_array(kq_solve_work_size(n), sizeof *work, "joint SVD work");
  if (!r1 || !r2 || !work) {
    st = KQ_ERR_OUT_OF_MEMORY;
    goto done;
  }
  if ((st = concat_rfactor(calib, layer->k, layer_index, "k", r1))) goto done;
  block_diag(f->r_query, hk, d, r2);
  st = kq_solve_keys(KQ_METHOD_KQSVD, 1.0, n, r1, r2, work, out->a, out->b, out->sigma_k);
  if (st) {
    st = kq_error_prefix(st, "%s: layers.%d: joint keys", calib->path, (int)layer_index);
    goto done;
  }
  if ((st = concat_rfactor(calib, layer->v, layer_index, "v", r1))) goto done;
  if (f->r_wo) block_diag(f->r_wo, hk, d, r2);
  st = kq_solve_values(n, r1, f->r_wo ? r2 : NULL, work, out->c, out->e, out->sigma_v);
  if (st) st = kq_error_prefix(st, "%s: layers.%d: joint values", calib->path, (int)layer_index);
done:
  free(r1);
  free(r2);
  free(work);
  if (st) kq_layer_solution_free(out);
  return st;
}
