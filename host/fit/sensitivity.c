/* fit --sensitivity: the model's measured sensitivity to each layer's keys
 * and values (a text file, see kq_fit_params.sensitivity) and what the byte
 * allocator makes of it.
 *
 * The allocator predicts a relative error per layer and side and treats a
 * unit of it alike in every layer. The model does not: the measured KL of
 * compressing one layer's side alone, divided by the error predicted for
 * that compression, is how much output damage a unit of predicted error
 * does in that layer. Weighing each layer's errors by that ratio and
 * allocating again moves bytes to the layers the output depends on. The
 * square root damps the step: the ratio is measured at one allocation and
 * on a few hundred tokens, so it is both noisy and only locally true.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kq_fit.h"

/* A multiplier never falls below this fraction of its side's mean: a layer
 * measured at (near) zero KL keeps some weight. */
#define KQ_SENSITIVITY_FLOOR 0.0625

kq_status kq_sensitivity_load(const char *path, int32_t n_layers, double *kl) {
  FILE *f = fopen(path, "r");
  if (!f) return kq_set_error(KQ_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
  for (int32_t i = 0; i < 2 * n_layers; i++) kl[i] = -1;
  char line[256];
  kq_status st = KQ_OK;
  for (int line_no = 1; !st && fgets(line, sizeof line, f); line_no++) {
    char side[16], extra[2];
    long layer;
    double v;
    char *hash = strchr(line, '#');
    if (hash) *hash = '\0';
    int n = sscanf(line, "%15s %ld %lf %1s", side, &layer, &v, extra);
    if (n <= 0) continue; /* blank or comment */
    int s = strcmp(side, "keys") == 0 ? 0 : strcmp(side, "values") == 0 ? 1 : -1;
    if (n != 3 || s < 0)
      st = kq_set_error(KQ_ERR_FORMAT, "%s:%d: expected \"keys|values LAYER KL\"", path, line_no);
    else if (layer < 0 || layer >= n_layers)
      st = kq_set_error(KQ_ERR_FORMAT, "%s:%d: layer %ld does not exist (the calibration has %d)",
                        path, line_no, layer, (int)n_layers);
    else if (!(isfinite(v) && v >= 0))
      st = kq_set_error(KQ_ERR_FORMAT, "%s:%d: KL %g of %s layer %ld is not a finite number >= 0",
                        path, line_no, v, side, layer);
    else if (kl[s * n_layers + layer] >= 0)
      st = kq_set_error(KQ_ERR_FORMAT, "%s:%d: %s layer %ld given twice", path, line_no, side,
                        layer);
    else
      kl[s * n_layers + layer] = v;
  }
  if (!st && ferror(f)) st = kq_set_error(KQ_ERR_IO, "%s: read error", path);
  fclose(f);
  for (int32_t i = 0; !st && i < 2 * n_layers; i++)
    if (kl[i] < 0)
      st = kq_set_error(KQ_ERR_FORMAT, "%s: no line for %s layer %d", path,
                        i < n_layers ? "keys" : "values", (int)(i % n_layers));
  return st;
}

void kq_sensitivity_multipliers(const double *kl, const double *predicted, int32_t n, double *m) {
  double mean = 0;
  for (int32_t l = 0; l < n; l++) {
    m[l] = predicted[l] > 0 ? sqrt(kl[l] / predicted[l]) : 0;
    mean += m[l] / n;
  }
  for (int32_t l = 0; l < n; l++) {
    m[l] = mean > 0 ? m[l] / mean : 1;
    if (m[l] < KQ_SENSITIVITY_FLOOR) m[l] = KQ_SENSITIVITY_FLOOR;
  }
}
