/* Latent balancing (fit, on by default): a diagonal scaling D of each latent
 * space, A → A·D, B → B·D⁻¹ (keys), C → C·D, E → E·D⁻¹ (values). The exact
 * logits and value outputs are unchanged; what changes is how a shared
 * per-segment quantization scale spends its error.
 *
 * Quantizing a rotated segment of width w gives a per-token error that is
 * roughly isotropic inside the segment with variance ∝ Σ_seg k_i / w (k_i:
 * energy of latent dim i over the calibration rows), and each dim's error
 * reaches the logits through its partner (the query latent dim, or for
 * values the row of E·W_O) with energy p_i. The error is then
 * ∝ (Σ_seg p_i)(Σ_seg k_i) / w, which for the fixed products p_i k_i is
 * smallest (Cauchy–Schwarz) when p_i ∝ k_i: d_i = (p_i / k_i)^(1/4). KQ-SVD
 * puts all of σ on the partner side (k_i = 1, p_i = σ_i²), so balancing
 * gives both sides σ_i. The common factor keeps the total latent energy
 * Σ k_i d_i² = Σ k_i, so balanced latents stay on the scale of the
 * unbalanced ones (F16 range). */
#include <math.h>
#include <stdlib.h>

#include "kq_fit.h"

void kq_balance_scales(const double *energy, const double *partner, int32_t n, double *scale,
                       double *weight) {
  double before = 0, after = 0;
  for (int32_t i = 0; i < n; i++) {
    int ok = energy[i] > 0 && partner[i] > 0 && isfinite(energy[i]) && isfinite(partner[i]);
    scale[i] = ok ? pow(partner[i] / energy[i], 0.25) : 0;
    if (ok) {
      before += energy[i];
      after += energy[i] * scale[i] * scale[i];
    }
  }
  double c = after > 0 ? sqrt(before / after) : 1;
  for (int32_t i = 0; i < n; i++) {
    scale[i] = scale[i] > 0 ? scale[i] * c : 1;
    weight[i] = partner[i] / (scale[i] * scale[i]);
  }
}

void kq_balance_apply(double *down, double *up, int32_t rows, int32_t n, const double *scale) {
  for (int32_t j = 0; j < n; j++)
    for (int32_t i = 0; i < rows; i++) {
      down[i + (size_t)j * rows] *= scale[j];
      up[i + (size_t)j * rows] /= scale[j];
    }
}

/* One side of a KQ-SVD solution: the latent dims of `down` have energy
 * `down_is_whitened ? 1 : σ²` over the calibration rows, their partners
 * the other one (dims with σ = 0 are zero columns and keep scale 1). */
static void balance_kqsvd_side(double *down, double *up, const double *sigma, int32_t n,
                               int down_is_whitened, double *tmp, double *weight) {
  double *energy = tmp, *partner = tmp + n, *scale = tmp + 2 * (size_t)n;
  for (int32_t i = 0; i < n; i++) {
    double s2 = sigma[i] * sigma[i];
    energy[i] = s2 > 0 ? (down_is_whitened ? 1.0 : s2) : 0;
    partner[i] = s2 > 0 ? (down_is_whitened ? s2 : 1.0) : 0;
  }
  kq_balance_scales(energy, partner, n, scale, weight);
  kq_balance_apply(down, up, n, n, scale);
}

kq_status kq_balance_kqsvd(kq_layer_solution *sol, int has_wo) {
  int32_t g = sol->groups, n = sol->dim;
  size_t nn = (size_t)n * n;
  sol->wk = kq_malloc_array((size_t)g * n, sizeof *sol->wk, "balance weights");
  sol->wv = kq_malloc_array((size_t)g * n, sizeof *sol->wv, "balance weights");
  double *tmp = kq_malloc_array(3 * (size_t)n, sizeof *tmp, "balance scales");
  if (!sol->wk || !sol->wv || !tmp) {
    free(tmp);
    return KQ_ERR_OUT_OF_MEMORY;
  }
  for (int32_t x = 0; x < g; x++) {
    /* Keys: K A = Q_K U (whitened), Q B = Q_Q W Σ. Values with W_O likewise;
     * without it C = E = V's right singular vectors, latent energy σ². */
    balance_kqsvd_side(sol->a + x * nn, sol->b + x * nn, sol->sigma_k + (size_t)x * n, n, 1, tmp,
                       sol->wk + (size_t)x * n);
    balance_kqsvd_side(sol->c + x * nn, sol->e + x * nn, sol->sigma_v + (size_t)x * n, n, has_wo,
                       tmp, sol->wv + (size_t)x * n);
  }
  free(tmp);
  return KQ_OK;
}
