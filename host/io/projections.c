/*
 * projections.c — projection sets in memory and the projection file of
 * SPEC §2 (kq_projections_* in include/kqsvd.h).
 *
 * Each layer owns one float32 block holding A, B, C, E and the two spectra
 * back to back, so a layer view is six pointers into it. A file is
 * validated completely (metadata, shapes against metadata and against each
 * other, ranks, finiteness) before a projection set is returned, and save
 * refuses what load would refuse, so every file we write can be read back.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kq_projections_internal.h"
#include "kq_safetensors.h"

#define KQ_PROJ_FORMAT "kqsvd-projections"
#define KQ_PROJ_VERSION "2" /* written; "1" is still read */
/* Sanity caps on metadata, far above any real model. */
#define KQ_PROJ_MAX_LAYERS 65536
#define KQ_PROJ_MAX_HEADS 65536
#define KQ_PROJ_MAX_DIM 65536

struct kq_projections {
  kq_projections_info info;
  int32_t *rank_k, *rank_v; /* [n_layers] */
  float **blocks;           /* [n_layers], one allocation per layer */
  int32_t *n_segments;      /* [n_layers][2] (keys, values) */
  kq_segment *segments;     /* [n_layers][2][KQ_MAX_SEGMENTS] */
  kq_model_identity model;  /* metadata model_name / model_sha256, "" if unknown */
};

/* The six matrices of every version, then the two v2 segment tables. */
#define KQ_PROJ_KINDS 8
static const char *const g_tensor_kinds[KQ_PROJ_KINDS] = {
    "key_down",     "query_down",     "value_down",   "value_up",
    "key_spectrum", "value_spectrum", "key_segments", "value_segments"};

/* Largest rank of a layout: d per head, Hk·d for the joint latent. */
static int32_t max_rank(const kq_projections_info *info) {
  return info->layout == KQ_LAYOUT_JOINT ? info->n_kv_heads * info->head_dim : info->head_dim;
}

static const char *rope_name(kq_rope_mode m) {
  switch (m) {
  case KQ_ROPE_NONE: return "none";
  case KQ_ROPE_POST: return "post";
  case KQ_ROPE_PRE: return "pre";
  }
  return NULL;
}

static const char *layout_name(kq_rope_layout l) {
  switch (l) {
  case KQ_ROPE_PAIRS: return "pairs";
  case KQ_ROPE_HALVES: return "halves";
  }
  return NULL;
}

static kq_status check_info(const kq_projections_info *info, const char *where) {
  if (!kq_method_name(info->method))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: invalid method %d", where, (int)info->method);
  if (info->n_layers < 1 || info->n_layers > KQ_PROJ_MAX_LAYERS)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: n_layers %d outside [1, %d]", where,
                        info->n_layers, KQ_PROJ_MAX_LAYERS);
  if (info->n_heads < 1 || info->n_heads > KQ_PROJ_MAX_HEADS || info->n_kv_heads < 1 ||
      info->n_kv_heads > info->n_heads)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "%s: n_heads %d / n_kv_heads %d (need 1 <= n_kv_heads <= n_heads <= %d)",
                        where, info->n_heads, info->n_kv_heads, KQ_PROJ_MAX_HEADS);
  if (info->n_heads % info->n_kv_heads != 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "%s: n_heads %d is not a multiple of n_kv_heads %d", where, info->n_heads,
                        info->n_kv_heads);
  if (info->head_dim < 1 || info->head_dim > KQ_PROJ_MAX_DIM)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: head_dim %d outside [1, %d]", where,
                        info->head_dim, KQ_PROJ_MAX_DIM);
  if (!rope_name(info->rope))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: invalid rope mode %d", where,
                        (int)info->rope);
  if (!layout_name(info->rope_layout))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: invalid rope layout %d", where,
                        (int)info->rope_layout);
  if (!isfinite(info->rope_theta) || info->rope_theta <= 0.0f)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: rope_theta %g is not a positive number",
                        where, (double)info->rope_theta);
  if (!kq_layout_name(info->layout))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: invalid layout %d", where, (int)info->layout);
  if (info->layout == KQ_LAYOUT_JOINT && info->rope == KQ_ROPE_PRE)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "%s: the joint layout supports rope post or none, not pre (a shared "
                        "latent cannot be rotated per head)",
                        where);
  if ((int64_t)info->n_kv_heads * info->head_dim > KQ_PROJ_MAX_DIM)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: n_kv_heads x head_dim = %lld exceeds %d",
                        where, (long long)info->n_kv_heads * info->head_dim, KQ_PROJ_MAX_DIM);
  return KQ_OK;
}

/* Checks a segment list against a rank (SPEC §1b); `what` names the file or
 * call, layer and side in the message. */
static kq_status check_segments(const char *what, int32_t layer, const char *side, int32_t rank,
                                int32_t n, const kq_segment *segs, kq_status bad) {
  if (n < 1 || n > KQ_MAX_SEGMENTS)
    return kq_set_error(bad, "%s: layer %d: %s: %d segments (need 1..%d)", what, (int)layer, side,
                        (int)n, KQ_MAX_SEGMENTS);
  int64_t sum = 0;
  for (int32_t i = 0; i < n; i++) {
    if (segs[i].bits != KQ_SEG_FLOAT && segs[i].bits != KQ_SEG_Q8 && segs[i].bits != KQ_SEG_Q4)
      return kq_set_error(bad,
                          "%s: layer %d: %s: segment %d has bits %d (expected 0 = float, 8 "
                          "or 4)",
                          what, (int)layer, side, (int)i, (int)segs[i].bits);
    if (segs[i].width < 1)
      return kq_set_error(bad, "%s: layer %d: %s: segment %d has width %d (must be >= 1)", what,
                          (int)layer, side, (int)i, (int)segs[i].width);
    if (segs[i].bits == KQ_SEG_Q4 && segs[i].width % 2)
      return kq_set_error(bad,
                          "%s: layer %d: %s: q4 segment %d has odd width %d (two dims per "
                          "byte)",
                          what, (int)layer, side, (int)i, (int)segs[i].width);
    sum += segs[i].width;
  }
  if (sum != rank)
    return kq_set_error(bad, "%s: layer %d: %s: segment widths sum to %lld, the rank is %d", what,
                        (int)layer, side, (long long)sum, (int)rank);
  return KQ_OK;
}

/* Floats in one layer's block: A, B [Hk,d,rk], C, E [Hk,d,rv], 2 x [Hk,d]. */
static size_t block_floats(const kq_projections_info *info, int32_t rk, int32_t rv) {
  size_t hd = (size_t)info->n_kv_heads * (size_t)info->head_dim;
  return hd * (2 * (size_t)rk + 2 * (size_t)rv + 2);
}

void kq_projections_destroy(kq_projections *proj) {
  if (!proj) return;
  if (proj->blocks)
    for (int32_t l = 0; l < proj->info.n_layers; l++) free(proj->blocks[l]);
  free(proj->blocks);
  free(proj->rank_k);
  free(proj->rank_v);
  free(proj->n_segments);
  free(proj->segments);
  free(proj);
}

/* Allocates the set with zeroed layers of the given ranks. */
static kq_status alloc_projections(const kq_projections_info *info, const int32_t *rank_k,
                                   const int32_t *rank_v, const char *where, kq_projections **out) {
  kq_status st = check_info(info, where);
  if (st != KQ_OK) return st;
  int32_t rmax = max_rank(info);
  for (int32_t l = 0; l < info->n_layers; l++) {
    if (rank_k[l] < 1 || rank_k[l] > rmax)
      return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: layer %d: rank_k %d outside [1, %d]", where,
                          l, rank_k[l], rmax);
    if (rank_v[l] < 1 || rank_v[l] > rmax)
      return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: layer %d: rank_v %d outside [1, %d]", where,
                          l, rank_v[l], rmax);
  }
  kq_projections *p = calloc(1, sizeof *p);
  if (!p) return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "%s: cannot allocate projections", where);
  p->info = *info;
  p->rank_k = kq_malloc_array((size_t)info->n_layers, sizeof(int32_t), "projection ranks");
  p->rank_v = kq_malloc_array((size_t)info->n_layers, sizeof(int32_t), "projection ranks");
  p->blocks = kq_calloc_array((size_t)info->n_layers, sizeof(float *), "projection layers");
  p->n_segments = kq_calloc_array((size_t)info->n_layers * 2, sizeof(int32_t), "segment counts");
  p->segments = kq_calloc_array((size_t)info->n_layers * 2 * KQ_MAX_SEGMENTS, sizeof(kq_segment),
                                "segment tables");
  if (!p->rank_k || !p->rank_v || !p->blocks || !p->n_segments || !p->segments) {
    kq_projections_destroy(p);
    return kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s", where);
  }
  for (int32_t l = 0; l < info->n_layers; l++) {
    p->rank_k[l] = rank_k[l];
    p->rank_v[l] = rank_v[l];
    for (int side = 0; side < 2; side++) {
      p->n_segments[2 * l + side] = 1;
      p->segments[((size_t)2 * l + side) * KQ_MAX_SEGMENTS] =
          (kq_segment){side ? rank_v[l] : rank_k[l], KQ_SEG_FLOAT};
    }
    p->blocks[l] = kq_calloc_array(block_floats(info, rank_k[l], rank_v[l]), sizeof(float),
                                   "projection layer");
    if (!p->blocks[l]) {
      kq_projections_destroy(p);
      return kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s: layer %d", where, l);
    }
  }
  *out = p;
  return KQ_OK;
}

kq_status kq_projections_create(const kq_projections_info *info, const int32_t *rank_k,
                                const int32_t *rank_v, kq_projections **out_proj) {
  if (!info || !rank_k || !rank_v || !out_proj)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_projections_create: NULL argument");
  *out_proj = NULL;
  return alloc_projections(info, rank_k, rank_v, "kq_projections_create", out_proj);
}

kq_status kq_projections_layer_view(const kq_projections *proj, int32_t layer,
                                    kq_projection_layer *out) {
  if (!proj || !out)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_projections_layer: NULL argument");
  if (layer < 0 || layer >= proj->info.n_layers)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_projections_layer: layer %d outside [0, %d)",
                        layer, proj->info.n_layers);
  size_t hd = (size_t)proj->info.n_kv_heads * (size_t)proj->info.head_dim;
  size_t nk = hd * (size_t)proj->rank_k[layer], nv = hd * (size_t)proj->rank_v[layer];
  float *b = proj->blocks[layer];
  out->rank_k = proj->rank_k[layer];
  out->rank_v = proj->rank_v[layer];
  out->key_down = b;
  out->query_down = b + nk;
  out->value_down = b + 2 * nk;
  out->value_up = b + 2 * nk + nv;
  out->key_spectrum = b + 2 * nk + 2 * nv;
  out->value_spectrum = b + 2 * nk + 2 * nv + hd;
  out->n_key_segments = proj->n_segments[2 * layer];
  out->n_value_segments = proj->n_segments[2 * layer + 1];
  out->key_segments = proj->segments + (size_t)2 * layer * KQ_MAX_SEGMENTS;
  out->value_segments = proj->segments + ((size_t)2 * layer + 1) * KQ_MAX_SEGMENTS;
  return KQ_OK;
}

kq_status kq_projections_set_segments(kq_projections *proj, int32_t layer, kq_side side,
                                      int32_t n_segments, const kq_segment *segments) {
  if (!proj || !segments)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_projections_set_segments: NULL argument");
  if (layer < 0 || layer >= proj->info.n_layers)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "kq_projections_set_segments: layer %d outside [0, %d)", (int)layer,
                        (int)proj->info.n_layers);
  if (side != KQ_SIDE_KEYS && side != KQ_SIDE_VALUES)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_projections_set_segments: unknown side %d",
                        (int)side);
  int32_t rank = side == KQ_SIDE_KEYS ? proj->rank_k[layer] : proj->rank_v[layer];
  kq_status st = check_segments("kq_projections_set_segments", layer,
                                side == KQ_SIDE_KEYS ? "key segments" : "value segments", rank,
                                n_segments, segments, KQ_ERR_INVALID_ARGUMENT);
  if (st != KQ_OK) return st;
  proj->n_segments[2 * layer + side] = n_segments;
  memcpy(proj->segments + ((size_t)2 * layer + side) * KQ_MAX_SEGMENTS, segments,
         (size_t)n_segments * sizeof *segments);
  return KQ_OK;
}

/* Bytes per token per group of one side's segments, float dims at `esize`. */
static uint64_t side_bytes(const kq_segment *segs, int32_t n, uint64_t esize) {
  uint64_t b = 0;
  for (int32_t i = 0; i < n; i++)
    b += segs[i].bits == KQ_SEG_FLOAT ? (uint64_t)segs[i].width * esize
                                      : (uint64_t)segs[i].width * (uint64_t)segs[i].bits / 8 + 2;
  return b;
}

uint64_t kq_projections_layer_bytes(const kq_projections *proj, int32_t layer, kq_storage storage) {
  if (!proj || layer < 0 || layer >= proj->info.n_layers) return 0;
  uint64_t esize = storage == KQ_STORAGE_F32 ? 4 : 2;
  uint64_t groups = proj->info.layout == KQ_LAYOUT_JOINT ? 1 : (uint64_t)proj->info.n_kv_heads;
  const kq_segment *segs = proj->segments + (size_t)2 * layer * KQ_MAX_SEGMENTS;
  return groups * (side_bytes(segs, proj->n_segments[2 * layer], esize) +
                   side_bytes(segs + KQ_MAX_SEGMENTS, proj->n_segments[2 * layer + 1], esize));
}

double kq_projections_fraction_of_f16(const kq_projections *proj, kq_storage storage) {
  if (!proj) return 0.0;
  double total = 0;
  for (int32_t l = 0; l < proj->info.n_layers; l++)
    total += (double)kq_projections_layer_bytes(proj, l, storage);
  return total / (4.0 * proj->info.head_dim * proj->info.n_kv_heads * proj->info.n_layers);
}

kq_status kq_projections_layer(kq_projections *proj, int32_t layer, kq_projection_layer *out) {
  return kq_projections_layer_view(proj, layer, out);
}

kq_status kq_projections_get_info(const kq_projections *proj, kq_projections_info *out_info) {
  if (!proj || !out_info)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_projections_get_info: NULL argument");
  *out_info = proj->info;
  return KQ_OK;
}

kq_status kq_projections_create_identity(const kq_projections_info *info,
                                         kq_projections **out_proj) {
  if (!info || !out_proj)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_projections_create_identity: NULL argument");
  *out_proj = NULL;
  kq_status st = check_info(info, "kq_projections_create_identity");
  if (st != KQ_OK) return st;
  if (info->layout != KQ_LAYOUT_PER_HEAD)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "kq_projections_create_identity: identity projections are per head "
                        "(layout per-head)");
  int32_t *ranks = kq_malloc_array((size_t)info->n_layers, sizeof(int32_t), "identity ranks");
  if (!ranks) return KQ_ERR_OUT_OF_MEMORY;
  for (int32_t l = 0; l < info->n_layers; l++) ranks[l] = info->head_dim;
  kq_projections *p = NULL;
  st = alloc_projections(info, ranks, ranks, "kq_projections_create_identity", &p);
  free(ranks);
  if (st != KQ_OK) return st;
  int32_t d = info->head_dim;
  for (int32_t l = 0; l < info->n_layers; l++) {
    kq_projection_layer v;
    kq_projections_layer_view(p, l, &v);
    float *mats[4] = {v.key_down, v.query_down, v.value_down, v.value_up};
    for (int m = 0; m < 4; m++)
      for (int32_t h = 0; h < info->n_kv_heads; h++)
        for (int32_t i = 0; i < d; i++) mats[m][((size_t)h * d + i) * d + i] = 1.0f;
  }
  *out_proj = p;
  return KQ_OK;
}

/* ------------------------------------------------------------------------ */
/* Loading                                                                  */
/* ------------------------------------------------------------------------ */

static kq_status meta_required(const kq_st_file *f, const char *key, const char **out) {
  *out = kq_st_meta(f, key);
  if (!*out)
    return kq_set_error(KQ_ERR_FORMAT, "%s: metadata field '%s' is missing", kq_st_path(f), key);
  return KQ_OK;
}

static kq_status meta_int(const kq_st_file *f, const char *key, long lo, long hi, int32_t *out) {
  const char *s;
  kq_status st = meta_required(f, key, &s);
  if (st != KQ_OK) return st;
  /* Plain decimal digits only: strtol alone would take " 2" or "+2". */
  char *end = NULL;
  errno = 0;
  long v = strspn(s, "0123456789") == strlen(s) ? strtol(s, &end, 10) : 0;
  if (!*s || !end || *end || errno || v < lo || v > hi)
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: metadata field '%s' = \"%.40s\" is not an integer "
                        "in [%ld, %ld]",
                        kq_st_path(f), key, s, lo, hi);
  *out = (int32_t)v;
  return KQ_OK;
}

static kq_status parse_meta(const kq_st_file *f, kq_projections_info *info, int *out_version) {
  const char *path = kq_st_path(f);
  const char *s;
  kq_status st;
  if ((st = meta_required(f, "format", &s)) != KQ_OK) return st;
  if (strcmp(s, KQ_PROJ_FORMAT) != 0)
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: metadata field 'format' = \"%.40s\", expected \"" KQ_PROJ_FORMAT
                        "\" (not a projection file)",
                        path, s);
  if ((st = meta_required(f, "version", &s)) != KQ_OK) return st;
  if (strcmp(s, "1") != 0 && strcmp(s, "2") != 0)
    return kq_set_error(KQ_ERR_UNSUPPORTED,
                        "%s: metadata field 'version' = \"%.40s\": versions 1 and 2 are supported",
                        path, s);
  *out_version = s[0] - '0';
  if ((st = meta_required(f, "method", &s)) != KQ_OK) return st;
  if (kq_method_parse(s, &info->method) != KQ_OK)
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: metadata field 'method' = \"%.40s\" (expected kq-svd, k-svd, eigen "
                        "or quant)",
                        path, s);
  info->layout = KQ_LAYOUT_PER_HEAD;
  if (*out_version >= 2) {
    if ((st = meta_required(f, "layout", &s)) != KQ_OK) return st;
    if (kq_layout_parse(s, &info->layout) != KQ_OK)
      return kq_set_error(KQ_ERR_FORMAT,
                          "%s: metadata field 'layout' = \"%.40s\" (expected per-head or joint)",
                          path, s);
  }
  if ((st = meta_int(f, "n_layers", 1, KQ_PROJ_MAX_LAYERS, &info->n_layers)) != KQ_OK ||
      (st = meta_int(f, "n_heads", 1, KQ_PROJ_MAX_HEADS, &info->n_heads)) != KQ_OK ||
      (st = meta_int(f, "n_kv_heads", 1, KQ_PROJ_MAX_HEADS, &info->n_kv_heads)) != KQ_OK ||
      (st = meta_int(f, "head_dim", 1, KQ_PROJ_MAX_DIM, &info->head_dim)) != KQ_OK)
    return st;
  if (info->n_heads % info->n_kv_heads != 0)
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: metadata field 'n_heads' (%d) is not a multiple of 'n_kv_heads' "
                        "(%d)",
                        path, info->n_heads, info->n_kv_heads);
  if ((st = meta_required(f, "rope", &s)) != KQ_OK) return st;
  if (!strcmp(s, "none"))
    info->rope = KQ_ROPE_NONE;
  else if (!strcmp(s, "post"))
    info->rope = KQ_ROPE_POST;
  else if (!strcmp(s, "pre"))
    info->rope = KQ_ROPE_PRE;
  else
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: metadata field 'rope' = \"%.40s\" (expected post, pre or none)", path,
                        s);
  if ((st = meta_required(f, "rope_layout", &s)) != KQ_OK) return st;
  if (!strcmp(s, "pairs"))
    info->rope_layout = KQ_ROPE_PAIRS;
  else if (!strcmp(s, "halves"))
    info->rope_layout = KQ_ROPE_HALVES;
  else
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: metadata field 'rope_layout' = \"%.40s\" (expected pairs or halves)",
                        path, s);
  if ((st = meta_required(f, "rope_theta", &s)) != KQ_OK) return st;
  char *end = NULL;
  errno = 0;
  float theta = strtof(s, &end);
  if (!*s || *end || errno || !isfinite(theta) || theta <= 0.0f)
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: metadata field 'rope_theta' = \"%.40s\" is not a positive number",
                        path, s);
  info->rope_theta = theta;
  if (info->layout == KQ_LAYOUT_JOINT && info->rope == KQ_ROPE_PRE)
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: metadata: layout 'joint' with rope 'pre' (the joint layout supports "
                        "rope post or none)",
                        path);
  if ((int64_t)info->n_kv_heads * info->head_dim > KQ_PROJ_MAX_DIM)
    return kq_set_error(KQ_ERR_FORMAT, "%s: metadata: n_kv_heads x head_dim exceeds %d", path,
                        KQ_PROJ_MAX_DIM);
  return KQ_OK;
}

/* Finds layer l's tensor of the given kind as F32 with shape [Hk, d, rank]
 * (n_dims 3) or [Hk, d] (spectra); in the joint layout key_down /
 * value_down are [1, Hk·d, rank] and the spectra [1, Hk·d]. rank < 0
 * accepts any rank. */
static kq_status require_f32(const kq_st_file *f, const kq_projections_info *info, int32_t layer,
                             const char *kind, int n_dims, int64_t rank, const kq_st_tensor **out) {
  char name[64];
  snprintf(name, sizeof name, "layers.%d.%s", layer, kind);
  int64_t shape[3] = {info->n_kv_heads, info->head_dim, rank};
  int shared = info->layout == KQ_LAYOUT_JOINT &&
               (!strcmp(kind, "key_down") || !strcmp(kind, "value_down") || n_dims == 2);
  if (shared) {
    shape[0] = 1;
    shape[1] = (int64_t)info->n_kv_heads * info->head_dim;
  }
  kq_status st = kq_st_require(f, name, n_dims, shape, 0, out);
  if (st != KQ_OK) {
    if (st == KQ_ERR_FORMAT) {
      char msg[768];
      snprintf(msg, sizeof msg, "%s", kq_last_error());
      kq_set_error(st, "%s (metadata: n_kv_heads %d, head_dim %d, layout %s)", msg,
                   info->n_kv_heads, info->head_dim, kq_layout_name(info->layout));
    }
    return st == KQ_ERR_NOT_FOUND ? KQ_ERR_FORMAT : st;
  }
  if ((*out)->dtype != KQ_DTYPE_F32)
    return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': dtype %s, projection files hold F32",
                        kq_st_path(f), name, kq_dtype_name((*out)->dtype));
  return kq_st_check_finite(f, *out);
}

/* Reads and checks the ranks of layer l (before anything is allocated). */
static kq_status layer_ranks(const kq_st_file *f, const kq_projections_info *info, int32_t l,
                             const kq_st_tensor *t[6], int32_t *rk, int32_t *rv) {
  const char *path = kq_st_path(f);
  kq_status st;
  if ((st = require_f32(f, info, l, "key_down", 3, -1, &t[0])) != KQ_OK) return st;
  int64_t r = t[0]->shape[2], rmax = max_rank(info);
  if (r < 1 || r > rmax)
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: tensor 'layers.%d.key_down': rank %lld outside [1, %lld]", path, l,
                        (long long)r, (long long)rmax);
  *rk = (int32_t)r;
  if ((st = require_f32(f, info, l, "query_down", 3, -1, &t[1])) != KQ_OK) return st;
  if (t[1]->shape[2] != r)
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: tensor 'layers.%d.query_down': rank %lld differs from key_down's "
                        "rank %lld",
                        path, l, (long long)t[1]->shape[2], (long long)r);
  if ((st = require_f32(f, info, l, "value_down", 3, -1, &t[2])) != KQ_OK) return st;
  r = t[2]->shape[2];
  if (r < 1 || r > rmax)
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: tensor 'layers.%d.value_down': rank %lld outside [1, %lld]", path, l,
                        (long long)r, (long long)rmax);
  *rv = (int32_t)r;
  if ((st = require_f32(f, info, l, "value_up", 3, -1, &t[3])) != KQ_OK) return st;
  if (t[3]->shape[2] != r)
    return kq_set_error(KQ_ERR_FORMAT,
                        "%s: tensor 'layers.%d.value_up': rank %lld differs from value_down's "
                        "rank %lld",
                        path, l, (long long)t[3]->shape[2], (long long)r);
  if ((st = require_f32(f, info, l, "key_spectrum", 2, -1, &t[4])) != KQ_OK) return st;
  return require_f32(f, info, l, "value_spectrum", 2, -1, &t[5]);
}

/* Reads layer l's segment table of one side (v2: I32 [S, 2], rows (width,
 * bits)) into segs and checks it against the rank. */
static kq_status read_segments(const kq_st_file *f, int32_t l, int side, int32_t rank,
                               int32_t *out_n, kq_segment *segs) {
  char name[64];
  snprintf(name, sizeof name, "layers.%d.%s", l, g_tensor_kinds[6 + side]);
  int64_t shape[2] = {-1, 2};
  const kq_st_tensor *t = NULL;
  kq_status st = kq_st_require(f, name, 2, shape, 0, &t);
  if (st != KQ_OK) return st == KQ_ERR_NOT_FOUND ? KQ_ERR_FORMAT : st;
  if (t->dtype != KQ_DTYPE_I32)
    return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': dtype %s, segment tables hold I32",
                        kq_st_path(f), name, kq_dtype_name(t->dtype));
  if (t->shape[0] < 1 || t->shape[0] > KQ_MAX_SEGMENTS)
    return kq_set_error(KQ_ERR_FORMAT, "%s: tensor '%s': %lld segments (need 1..%d)", kq_st_path(f),
                        name, (long long)t->shape[0], KQ_MAX_SEGMENTS);
  int32_t n = (int32_t)t->shape[0];
  int32_t raw[2 * KQ_MAX_SEGMENTS];
  memcpy(raw, t->data, (size_t)n * 2 * sizeof(int32_t));
  for (int32_t i = 0; i < n; i++) segs[i] = (kq_segment){raw[2 * i], raw[2 * i + 1]};
  char what[600];
  snprintf(what, sizeof what, "%s: tensor '%s'", kq_st_path(f), name);
  st = check_segments(what, l, side ? "value segments" : "key segments", rank, n, segs,
                      KQ_ERR_FORMAT);
  *out_n = n;
  return st;
}

/* Every tensor must belong to a layer below n_layers and be one of the
 * kinds of the file's version: anything else means the file contradicts
 * its metadata. */
static kq_status check_no_extra(const kq_st_file *f, const kq_projections_info *info, int n_kinds) {
  for (int i = 0; i < kq_st_count(f); i++) {
    const char *name = kq_st_at(f, i)->name;
    int layer = -1, used = 0;
    bool ok = false;
    if (sscanf(name, "layers.%d.%n", &layer, &used) == 1 && used > 0 && layer >= 0 &&
        layer < info->n_layers) {
      char expect[64];
      snprintf(expect, sizeof expect, "layers.%d.", layer);
      if (strncmp(name, expect, strlen(expect)) == 0)
        for (int k = 0; k < n_kinds && !ok; k++) ok = strcmp(name + used, g_tensor_kinds[k]) == 0;
    }
    if (!ok)
      return kq_set_error(KQ_ERR_FORMAT,
                          "%s: tensor '%s' is not part of a version %d projection file with "
                          "n_layers = %d%s",
                          kq_st_path(f), name, n_kinds == KQ_PROJ_KINDS ? 2 : 1, info->n_layers,
                          layer >= info->n_layers ? " (no such layer)" : "");
  }
  return KQ_OK;
}

kq_status kq_projections_load(const char *path, kq_projections **out_proj) {
  if (!path || !out_proj)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_projections_load: NULL argument");
  *out_proj = NULL;
  kq_st_file *f = NULL;
  kq_status st = kq_st_open(path, &f);
  if (st != KQ_OK) return st;
  kq_projections_info info = {0};
  kq_projections *p = NULL;
  int32_t *rk = NULL, *rv = NULL;
  const kq_st_tensor **tens = NULL; /* [n_layers][6] */
  int version = 1;
  if ((st = parse_meta(f, &info, &version)) != KQ_OK) goto done;
  rk = kq_malloc_array((size_t)info.n_layers, sizeof(int32_t), "projection ranks");
  rv = kq_malloc_array((size_t)info.n_layers, sizeof(int32_t), "projection ranks");
  tens = kq_malloc_array((size_t)info.n_layers * 6, sizeof *tens, "projection tensors");
  if (!rk || !rv || !tens) {
    st = kq_error_prefix(KQ_ERR_OUT_OF_MEMORY, "%s", path);
    goto done;
  }
  /* Validate every layer before allocating: sizes then come from the file's
   * own (already bounded) tensors, never from metadata alone. */
  for (int32_t l = 0; l < info.n_layers; l++)
    if ((st = layer_ranks(f, &info, l, tens + 6 * (size_t)l, &rk[l], &rv[l])) != KQ_OK) goto done;
  if ((st = check_no_extra(f, &info, version >= 2 ? KQ_PROJ_KINDS : 6)) != KQ_OK) goto done;
  if ((st = alloc_projections(&info, rk, rv, path, &p)) != KQ_OK) goto done;
  for (int32_t l = 0; l < info.n_layers && version >= 2; l++)
    for (int side = 0; side < 2; side++) {
      kq_segment *segs = p->segments + ((size_t)2 * l + side) * KQ_MAX_SEGMENTS;
      if ((st = read_segments(f, l, side, side ? rv[l] : rk[l], &p->n_segments[2 * l + side],
                              segs)) != KQ_OK)
        goto done;
    }
  const char *model_name = kq_st_meta(f, "model_name"), *model_sha = kq_st_meta(f, "model_sha256");
  if (model_sha && !kq_model_sha256_valid(model_sha)) {
    st = kq_set_error(KQ_ERR_FORMAT,
                      "%s: metadata field 'model_sha256' = \"%.70s\" is not 64 hex digits", path,
                      model_sha);
    goto done;
  }
  snprintf(p->model.name, sizeof p->model.name, "%s", model_name ? model_name : "");
  snprintf(p->model.sha256, sizeof p->model.sha256, "%s", model_sha ? model_sha : "");
  for (int32_t l = 0; l < info.n_layers; l++) {
    const kq_st_tensor **t = tens + 6 * (size_t)l;
    kq_projection_layer v;
    kq_projections_layer_view(p, l, &v);
    float *dst[6] = {v.key_down, v.query_down,   v.value_down,
                     v.value_up, v.key_spectrum, v.value_spectrum};
    for (int k = 0; k < 6; k++) memcpy(dst[k], t[k]->data, (size_t)t[k]->nbytes);
  }
done:
  free(rk);
  free(rv);
  free(tens);
  kq_st_close(f);
  if (st == KQ_OK)
    *out_proj = p;
  else
    kq_projections_destroy(p);
  return st;
}

/* ------------------------------------------------------------------------ */
/* Saving                                                                   */
/* ------------------------------------------------------------------------ */

static kq_status check_finite_f32(const char *path, const char *name, const float *x, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!isfinite(x[i]))
      return kq_set_error(KQ_ERR_NUMERIC, "%s: tensor '%s': %s at flat index %zu", path, name,
                          isnan(x[i]) ? "NaN" : "Inf", i);
  return KQ_OK;
}

kq_status kq_projections_save(const kq_projections *proj, const char *path) {
  if (!proj || !path)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_projections_save: NULL argument");
  const kq_projections_info *info = &proj->info;
  kq_st_writer *w = NULL;
  kq_status st = kq_st_writer_create(path, &w);
  if (st != KQ_OK) return st;
  char buf[64];
  struct {
    const char *key;
    const char *value;
  } meta[10] = {{"format", KQ_PROJ_FORMAT},
                {"version", KQ_PROJ_VERSION},
                {"method", kq_method_name(info->method)},
                {"rope", rope_name(info->rope)},
                {"rope_layout", layout_name(info->rope_layout)},
                {"layout", kq_layout_name(info->layout)}};
  for (int i = 0; i < 6 && st == KQ_OK; i++) st = kq_st_writer_meta(w, meta[i].key, meta[i].value);
  const char *int_keys[4] = {"n_layers", "n_heads", "n_kv_heads", "head_dim"};
  const int32_t ints[4] = {info->n_layers, info->n_heads, info->n_kv_heads, info->head_dim};
  for (int i = 0; i < 4 && st == KQ_OK; i++) {
    snprintf(buf, sizeof buf, "%d", ints[i]);
    st = kq_st_writer_meta(w, int_keys[i], buf);
  }
  /* %.9g round-trips every float exactly. */
  snprintf(buf, sizeof buf, "%.9g", (double)info->rope_theta);
  if (st == KQ_OK) st = kq_st_writer_meta(w, "rope_theta", buf);
  if (st == KQ_OK && proj->model.name[0]) st = kq_st_writer_meta(w, "model_name", proj->model.name);
  if (st == KQ_OK && proj->model.sha256[0])
    st = kq_st_writer_meta(w, "model_sha256", proj->model.sha256);
  for (int32_t l = 0; l < info->n_layers && st == KQ_OK; l++) {
    kq_projection_layer v;
    kq_projections_layer_view(proj, l, &v);
    const float *src[6] = {v.key_down, v.query_down,   v.value_down,
                           v.value_up, v.key_spectrum, v.value_spectrum};
    int64_t rank[6] = {v.rank_k, v.rank_k, v.rank_v, v.rank_v, 0, 0};
    for (int k = 0; k < 6 && st == KQ_OK; k++) {
      char name[64];
      snprintf(name, sizeof name, "layers.%d.%s", l, g_tensor_kinds[k]);
      int64_t shape[3] = {info->n_kv_heads, info->head_dim, rank[k]};
      int n_dims = k < 4 ? 3 : 2;
      if (info->layout == KQ_LAYOUT_JOINT && (k == 0 || k == 2 || k >= 4)) {
        shape[0] = 1;
        shape[1] = (int64_t)info->n_kv_heads * info->head_dim;
      }
      size_t n = (size_t)info->n_kv_heads * (size_t)info->head_dim * (k < 4 ? (size_t)rank[k] : 1);
      st = check_finite_f32(path, name, src[k], n);
      if (st == KQ_OK) st = kq_st_writer_add(w, name, KQ_DTYPE_F32, n_dims, shape, src[k]);
    }
    for (int side = 0; side < 2 && st == KQ_OK; side++) {
      char name[64];
      snprintf(name, sizeof name, "layers.%d.%s", l, g_tensor_kinds[6 + side]);
      int32_t n = side ? v.n_value_segments : v.n_key_segments;
      const kq_segment *segs = side ? v.value_segments : v.key_segments;
      /* The writer reads the data at commit: pass the set's own table, whose
       * rows are (width, bits) int32 pairs. */
      _Static_assert(sizeof(kq_segment) == 2 * sizeof(int32_t), "kq_segment is two int32");
      int64_t shape[2] = {n, 2};
      st = kq_st_writer_add(w, name, KQ_DTYPE_I32, 2, shape, segs);
    }
  }
  if (st == KQ_OK) st = kq_st_writer_commit(w, NULL);
  kq_st_writer_destroy(w);
  return st;
}

int kq_model_sha256_valid(const char *s) {
  size_t n = 0;
  for (; s[n]; n++)
    if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f'))) return 0;
  return n == 64;
}

kq_status kq_projections_set_model(kq_projections *proj, const kq_model_identity *id) {
  if (!proj) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_projections_set_model: NULL");
  if (id && id->sha256[0] && !kq_model_sha256_valid(id->sha256))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "model sha256 '%.70s' is not 64 hex digits",
                        id->sha256);
  memset(&proj->model, 0, sizeof proj->model);
  if (id) {
    snprintf(proj->model.name, sizeof proj->model.name, "%s", id->name);
    snprintf(proj->model.sha256, sizeof proj->model.sha256, "%s", id->sha256);
  }
  return KQ_OK;
}

const kq_model_identity *kq_projections_get_model(const kq_projections *proj) {
  return &proj->model;
}
