/* The quantization-only baseline (KQ_METHOD_QUANT): no low-rank basis, the
 * cache keeps the channels themselves, sorted so the byte allocator gives
 * the most bits to the channels whose error costs the most.
 *
 * Importance weight (the "σ²" the allocator and the spectra see):
 *   key channel j of kv head i:   (K_iᵀK_i)_jj · (Q_iᵀQ_i)_jj
 *   value channel j of kv head i: (V_iᵀV_i)_jj · (W_iᵀW_i)_jj  (without wo: (V_iᵀV_i)_jj)
 * An error δ on channel j of every cached key changes the logits by
 * Σ_t Σ_q (δ_tj q_j)², which for δ of relative size ε is ε·(KᵀK)_jj·(QᵀQ)_jj;
 * likewise for a value channel through W_O. Diagonals of Gram matrices are
 * column norms of the R factors (RᵀR = XᵀX).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kq_fit.h"

static double col_norm2(const double *r, int32_t d, int32_t j) {
  double s = 0;
  for (int32_t i = 0; i <= j; i++) s += r[i + (size_t)j * d] * r[i + (size_t)j * d];
  return s;
}

typedef struct channel {
  double weight;
  int32_t index;
} channel;

static int by_weight_desc(const void *pa, const void *pb) {
  const channel *a = pa, *b = pb;
  if (a->weight != b->weight) return a->weight < b->weight ? 1 : -1;
  return a->index < b->index ? -1 : a->index > b->index;
}

/* down = up = the permutation putting channel ch[c].index at latent dim c;
 * sigma_c = sqrt(weight). */
static void permutation_basis(const channel *ch, int32_t n, double *down, double *up,
                              double *sigma) {
  memset(down, 0, (size_t)n * n * sizeof *down);
  memset(up, 0, (size_t)n * n * sizeof *up);
  for (int32_t c = 0; c < n; c++) {
    down[ch[c].index + (size_t)c * n] = 1.0;
    up[ch[c].index + (size_t)c * n] = 1.0;
    sigma[c] = sqrt(ch[c].weight);
  }
}

kq_status kq_quant_basis(const kq_layer_factors *f, kq_layout layout, kq_layer_solution *out) {
  int32_t hk = f->n_kv_heads, d = f->head_dim;
  if (!f->r_query)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "quant basis: query factors are missing");
  int joint = layout == KQ_LAYOUT_JOINT;
  int32_t groups = joint ? 1 : hk, n = joint ? hk * d : d;
  kq_status st = kq_layer_solution_alloc(groups, n, out);
  if (st) return st;
  channel *ck = kq_malloc_array((size_t)hk * d, sizeof *ck, "channel weights");
  channel *cv = kq_malloc_array((size_t)hk * d, sizeof *cv, "channel weights");
  if (!ck || !cv) {
    free(ck);
    free(cv);
    kq_layer_solution_free(out);
    return KQ_ERR_OUT_OF_MEMORY;
  }
  size_t dd = (size_t)d * d;
  for (int32_t i = 0; i < hk; i++)
    for (int32_t j = 0; j < d; j++) {
      int32_t x = i * d + j, local = joint ? x : j;
      ck[x].weight = col_norm2(f->r_key + i * dd, d, j) * col_norm2(f->r_query + i * dd, d, j);
      cv[x].weight = col_norm2(f->r_value + i * dd, d, j) *
                     (f->r_wo ? col_norm2(f->r_wo + i * dd, d, j) : 1.0);
      ck[x].index = cv[x].index = local;
    }
  size_t nn = (size_t)n * n;
  for (int32_t g = 0; g < groups; g++) {
    channel *gk = ck + (size_t)g * n, *gv = cv + (size_t)g * n;
    qsort(gk, (size_t)n, sizeof *gk, by_weight_desc);
    qsort(gv, (size_t)n, sizeof *gv, by_weight_desc);
    permutation_basis(gk, n, out->a + g * nn, out->b + g * nn, out->sigma_k + (size_t)g * n);
    permutation_basis(gv, n, out->c + g * nn, out->e + g * nn, out->sigma_v + (size_t)g * n);
  }
  free(ck);
  free(cv);
  return KQ_OK;
}

/* Balances the columns of one group's permutation basis (down, up: n×n,
 * column c holds channel `row` with down[row, c] = 1) by the energies e /
 * partner energies p of the group's n channels. */
static void balance_group(double *down, double *up, int32_t n, const double *e, const double *p,
                          double *tmp, double *weight) {
  double *scale = tmp, *w = tmp + n;
  kq_balance_scales(e, p, n, scale, w);
  for (int32_t c = 0; c < n; c++) {
    int32_t row = 0;
    while (row < n - 1 && down[row + (size_t)c * n] == 0) row++;
    down[row + (size_t)c * n] *= scale[row];
    up[row + (size_t)c * n] /= scale[row];
    weight[c] = w[row];
  }
}

kq_status kq_quant_balance(const kq_layer_factors *f, kq_layout layout, kq_layer_solution *out) {
  int32_t hk = f->n_kv_heads, d = f->head_dim;
  int joint = layout == KQ_LAYOUT_JOINT;
  int32_t groups = joint ? 1 : hk, n = joint ? hk * d : d;
  size_t hd = (size_t)hk * d, dd = (size_t)d * d, nn = (size_t)n * n;
  out->wk = kq_malloc_array(hd, sizeof *out->wk, "balance weights");
  out->wv = kq_malloc_array(hd, sizeof *out->wv, "balance weights");
  double *buf = kq_malloc_array(6 * hd, sizeof *buf, "channel energies");
  if (!out->wk || !out->wv || !buf) {
    free(buf);
    return KQ_ERR_OUT_OF_MEMORY;
  }
  double *ek = buf, *pk = buf + hd, *ev = buf + 2 * hd, *pv = buf + 3 * hd, *tmp = buf + 4 * hd;
  for (int32_t i = 0; i < hk; i++)
    for (int32_t j = 0; j < d; j++) {
      size_t x = (size_t)i * d + j;
      ek[x] = col_norm2(f->r_key + i * dd, d, j);
      pk[x] = col_norm2(f->r_query + i * dd, d, j);
      ev[x] = col_norm2(f->r_value + i * dd, d, j);
      pv[x] = f->r_wo ? col_norm2(f->r_wo + i * dd, d, j) : 1.0;
    }
  for (int32_t g = 0; g < groups; g++) {
    size_t o = (size_t)g * n;
    balance_group(out->a + g * nn, out->b + g * nn, n, ek + o, pk + o, tmp, out->wk + o);
    balance_group(out->c + g * nn, out->e + g * nn, n, ev + o, pv + o, tmp, out->wv + o);
  }
  free(buf);
  return KQ_OK;
}
