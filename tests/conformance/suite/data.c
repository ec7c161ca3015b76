/* data.c — seeded random inputs for the conformance suite (see data.h). */
#include "data.h"

#include <math.h>
#include <stdlib.h>

static uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

void kqc_rng_seed(kqc_rng *rng, uint64_t seed) {
  for (int i = 0; i < 4; i++) {
    seed += 0x9e3779b97f4a7c15ull;
    uint64_t z = seed;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    rng->s[i] = z ^ (z >> 31);
  }
}

static uint64_t next(kqc_rng *rng) {
  uint64_t *s = rng->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0], s[3] ^= s[1], s[1] ^= s[2], s[0] ^= s[3], s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

double kqc_rng_uniform(kqc_rng *rng) {
  return (double)(next(rng) >> 11) * 0x1p-53;
}

double kqc_rng_normal(kqc_rng *rng) {
  double u1 = 1.0 - kqc_rng_uniform(rng); /* (0, 1]: log is finite */
  double u2 = kqc_rng_uniform(rng);
  return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

void kqc_fill_normal(kqc_rng *rng, float *x, size_t n, double sigma) {
  for (size_t i = 0; i < n; i++) x[i] = (float)(sigma * kqc_rng_normal(rng));
}

/* Orthonormalises the r columns of q (column-major d×r) in place by two
 * passes of modified Gram–Schmidt. */
static void orthonormalise(double *q, int32_t d, int32_t r) {
  for (int pass = 0; pass < 2; pass++) {
    for (int32_t j = 0; j < r; j++) {
      double *cj = q + (size_t)j * d;
      for (int32_t k = 0; k < j; k++) {
        const double *ck = q + (size_t)k * d;
        double dot = 0;
        for (int32_t i = 0; i < d; i++) dot += ck[i] * cj[i];
        for (int32_t i = 0; i < d; i++) cj[i] -= dot * ck[i];
      }
      double norm = 0;
      for (int32_t i = 0; i < d; i++) norm += cj[i] * cj[i];
      norm = sqrt(norm);
      for (int32_t i = 0; i < d; i++) cj[i] /= norm;
    }
  }
}

int kqc_make_projection_pair(kqc_rng *rng, int32_t n_kv, int32_t d, int32_t r, double gain,
                             float *down, float *up) {
  double *q = malloc(sizeof(double) * (size_t)d * r);
  double *q2 = malloc(sizeof(double) * (size_t)d * r);
  double *diag = malloc(sizeof(double) * (size_t)r);
  if (!q || !q2 || !diag) {
    free(q), free(q2), free(diag);
    return -1;
  }
  for (int32_t h = 0; h < n_kv; h++) {
    for (size_t i = 0; i < (size_t)d * r; i++) q[i] = kqc_rng_normal(rng);
    orthonormalise(q, d, r);
    for (size_t i = 0; i < (size_t)d * r; i++)
      q2[i] = q[i] + 0.5 * kqc_rng_normal(rng) / sqrt((double)d);
    orthonormalise(q2, d, r);
    for (int32_t j = 0; j < r; j++) diag[j] = exp((2 * kqc_rng_uniform(rng) - 1) * log(2.0));
    float *dn = down + (size_t)h * d * r, *upp = up + (size_t)h * d * r;
    for (int32_t i = 0; i < d; i++)
      for (int32_t j = 0; j < r; j++) {
        dn[(size_t)i * r + j] = (float)(gain * q[(size_t)j * d + i] * diag[j]);
        upp[(size_t)i * r + j] = (float)(q2[(size_t)j * d + i] / diag[j]);
      }
  }
  free(q), free(q2), free(diag);
  return 0;
}

void kqc_fill_ties(kqc_rng *rng, float *x, int32_t from, int32_t n, int32_t G, int32_t D,
                   const kq_segment *segs, int32_t n_segs) {
  for (int32_t t = from; t < n; t++)
    for (int32_t g = 0; g < G; g++) {
      float *row = x + ((size_t)t * G + g) * D;
      for (int32_t k = 0, start = 0; k < n_segs; start += segs[k].width, k++) {
        int32_t w = segs[k].width, qmax = segs[k].bits == KQ_SEG_Q8 ? 127 : 7;
        if (segs[k].bits == KQ_SEG_FLOAT) {
          kqc_fill_normal(rng, row + start, (size_t)w, 1.0);
          continue;
        }
        double s0 = ldexp(1.0, -((qmax == 127 ? 6 : 2) + (kqc_rng_uniform(rng) < 0.5)));
        for (int32_t j = 0; j < w; j++) {
          double sign = kqc_rng_uniform(rng) < 0.5 ? -1.0 : 1.0;
          double q = floor(kqc_rng_uniform(rng) * qmax) + 0.5;
          row[start + j] = (float)(sign * q * s0);
        }
        int32_t at = (int32_t)(kqc_rng_uniform(rng) * w);
        row[start + at] = (float)((kqc_rng_uniform(rng) < 0.5 ? -qmax : qmax) * s0);
      }
    }
}

uint64_t kqc_hash(const char *text) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (; *text; text++) h = (h ^ (uint8_t)*text) * 0x100000001b3ull;
  return h;
}
