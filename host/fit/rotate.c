/* Rotations of quantized latent segments (SPEC §1b): an orthogonal w×w
 * matrix per segment spreads the energy of a few large latent dims over the
 * whole segment, so one per-token scale fits every dim. Folded into the
 * projections at fit time; backends never see them. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kq_fit.h"
#include "kq_linalg.h"

/* splitmix64: a small, well-mixed generator; every draw is reproducible from
 * the seed alone. */
static uint64_t next_u64(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

static double next_uniform(uint64_t *state) { /* (0, 1) */
  return ((double)(next_u64(state) >> 11) + 0.5) * 0x1.0p-53;
}

static double next_normal(uint64_t *state) {
  double u = next_uniform(state), v = next_uniform(state);
  return sqrt(-2.0 * log(u)) * cos(2.0 * 3.14159265358979323846 * v);
}

uint64_t kq_rotation_seed(uint64_t seed, int32_t layer, int32_t side, int32_t start,
                          int32_t width) {
  uint64_t st = seed;
  uint64_t h = next_u64(&st);
  const int32_t parts[4] = {layer, side, start, width};
  for (int i = 0; i < 4; i++) {
    st = h ^ ((uint64_t)(uint32_t)parts[i] * 0xD6E8FEB86659FD93ULL);
    h = next_u64(&st);
  }
  return h;
}

static int is_pow2(int32_t w) {
  return w > 0 && (w & (w - 1)) == 0;
}

kq_status kq_rotation_make(int32_t width, uint64_t seed, double *r) {
  if (width < 1) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "rotation: width %d < 1", (int)width);
  int32_t w = width;
  uint64_t st = seed;
  if (is_pow2(w)) {
    /* R[i][j] = s_i · (−1)^popcount(i & j) / sqrt(w): rows of a Sylvester
     * Hadamard matrix with random signs. */
    double inv = 1.0 / sqrt((double)w);
    for (int32_t i = 0; i < w; i++) {
      double s = (next_u64(&st) >> 63) ? -inv : inv;
      for (int32_t j = 0; j < w; j++)
        r[i + (size_t)j * w] = (__builtin_popcount((unsigned)(i & j)) & 1) ? -s : s;
    }
    return KQ_OK;
  }
  size_t ww = (size_t)w * w;
  double *g = kq_malloc_array(ww + (size_t)w, sizeof *g, "rotation");
  if (!g) return KQ_ERR_OUT_OF_MEMORY;
  double *tau = g + ww;
  for (size_t i = 0; i < ww; i++) g[i] = next_normal(&st);
  kq_status s = kq_qr_householder(w, w, g, w, tau);
  if (s == KQ_OK) {
    memset(r, 0, ww * sizeof *r);
    for (int32_t j = 0; j < w; j++) r[j + (size_t)j * w] = 1.0;
    s = kq_qr_apply_q(w, w, g, w, tau, w, r, w);
  }
  /* Q·diag(sign(R_jj)) is Haar-distributed (Mezzadri); only the sign fix
   * depends on R. */
  if (s == KQ_OK)
    for (int32_t j = 0; j < w; j++)
      if (g[j + (size_t)j * w] < 0)
        for (int32_t i = 0; i < w; i++) r[i + (size_t)j * w] = -r[i + (size_t)j * w];
  free(g);
  return s;
}

kq_status kq_rotation_apply(float *m, int64_t rows, int32_t cols, int32_t start, int32_t width,
                            const double *r) {
  if (start < 0 || width < 1 || start + width > cols)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "rotation: columns [%d, %d) outside [0, %d)",
                        (int)start, (int)(start + width), (int)cols);
  double *tmp = kq_malloc_array((size_t)width * 2, sizeof *tmp, "rotation row");
  if (!tmp) return KQ_ERR_OUT_OF_MEMORY;
  double *out = tmp + width;
  for (int64_t i = 0; i < rows; i++) {
    float *row = m + (size_t)i * (size_t)cols + start;
    for (int32_t j = 0; j < width; j++) tmp[j] = row[j];
    for (int32_t j = 0; j < width; j++) {
      const double *col = r + (size_t)j * width;
      double s = 0;
      for (int32_t x = 0; x < width; x++) s += tmp[x] * col[x];
      out[j] = s;
    }
    for (int32_t j = 0; j < width; j++) row[j] = (float)out[j];
  }
  free(tmp);
  return KQ_OK;
}

kq_status kq_fold_rotations(kq_projections *proj, uint64_t seed) {
  kq_projections_info info;
  kq_status st = kq_projections_get_info(proj, &info);
  if (st) return st;
  int64_t rows = (int64_t)info.n_kv_heads * info.head_dim;
  for (int32_t l = 0; l < info.n_layers; l++) {
    kq_projection_layer v;
    if ((st = kq_projections_layer(proj, l, &v))) return st;
    for (int32_t side = 0; side < 2; side++) {
      int32_t n = side ? v.n_value_segments : v.n_key_segments;
      const kq_segment *segs = side ? v.value_segments : v.key_segments;
      int32_t rank = side ? v.rank_v : v.rank_k;
      float *down = side ? v.value_down : v.key_down, *up = side ? v.value_up : v.query_down;
      for (int32_t i = 0, start = 0; i < n; start += segs[i].width, i++) {
        if (segs[i].bits == KQ_SEG_FLOAT) continue;
        int32_t w = segs[i].width;
        double *r = kq_malloc_array((size_t)w * w, sizeof *r, "rotation");
        if (!r) return KQ_ERR_OUT_OF_MEMORY;
        st = kq_rotation_make(w, kq_rotation_seed(seed, l, side, start, w), r);
        if (!st) st = kq_rotation_apply(down, rows, rank, start, w, r);
        if (!st) st = kq_rotation_apply(up, rows, rank, start, w, r);
        free(r);
        if (st) return st;
      }
    }
  }
  return KQ_OK;
}
