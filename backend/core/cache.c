/*
 * kq_cache_*: the compressed KV cache on a device.
 *
 * Per layer the device holds A, B, C, E (F32, omitted when exactly the
 * identity) and the latent caches k [Hk, cap, r_k], v [Hk, cap, r_v] in the
 * storage type. Inputs and outputs pass through staging buffers that grow
 * as needed. Thread safety (kqsvd.h): a cache is driven by one thread at a
 * time; several caches may share a device from different threads, since
 * every backend call made here is safe to issue concurrently on one device.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kq_common.h"
#include "kq_core.h"
#include "kq_projections_internal.h"

enum { STAGE_KEYS, STAGE_VALUES, STAGE_QUERIES, STAGE_LATENT, STAGE_OUT, STAGE_COUNT };
static const char *const g_stage_names[STAGE_COUNT] = {"keys", "values", "queries", "latent output",
                                                       "output"};

typedef struct cache_layer {
  int32_t rank_k, rank_v;
  /* Storage segments with adjacent float runs merged; n = 0 when a side is
   * one float segment (the plain ABI v1 layout). */
  int32_t n_kseg, n_vseg;
  kq_segment kseg[KQ_MAX_SEGMENTS], vseg[KQ_MAX_SEGMENTS];
  uint32_t key_flags, value_flags;
  kq_buffer *A, *B, *C, *E; /* NULL when the identity flag is set */
  kq_buffer *k_cache, *v_cache;
  int32_t length;
} cache_layer;

struct kq_cache {
  kq_device *device;
  kq_projections_info info;
  kq_cache_params params;
  cache_layer *layers;
  kq_buffer *stage[STAGE_COUNT];
  size_t stage_bytes[STAGE_COUNT];
  uint64_t kv_bytes, projection_bytes;
};

kq_cache_params kq_cache_default_params(void) {
  kq_cache_params p = {
      .struct_size = sizeof p, .storage = KQ_STORAGE_F32, .capacity = 4096, .n_seqs = 1};
  return p;
}

/* Copies segs, merging adjacent float segments (equivalent: backends never
 * see the rotations, and float dims have no scale); returns the count, 0
 * when the result is one float segment. */
static int32_t normalize_segments(const kq_segment *segs, int32_t n, kq_segment *out) {
  int32_t m = 0;
  for (int32_t i = 0; i < n; i++) {
    if (m > 0 && segs[i].bits == KQ_SEG_FLOAT && out[m - 1].bits == KQ_SEG_FLOAT)
      out[m - 1].width += segs[i].width;
    else
      out[m++] = segs[i];
  }
  return kq_segments_plain(m, out) ? 0 : m;
}

/* Bytes of one side's latent buffer (planes of kqsvd_backend.h). */
static uint64_t side_buffer_bytes(const kq_segment *segs, int32_t n, int32_t rank,
                                  kq_storage storage, uint64_t groups, uint64_t cap) {
  kq_segment plain = {rank, KQ_SEG_FLOAT};
  size_t total = 0;
  if (n == 0)
    kq_segment_planes(&plain, 1, storage, groups, cap, 0, NULL, NULL, &total);
  else
    kq_segment_planes(segs, n, storage, groups, cap, 0, NULL, NULL, &total);
  return total;
}

/* 1 when every head's [d, d] matrix of `m` is exactly the identity. */
static int is_identity(const float *m, int32_t heads, int32_t d, int32_t rank) {
  if (rank != d) return 0;
  for (int32_t h = 0; h < heads; h++)
    for (int32_t i = 0; i < d; i++)
      for (int32_t j = 0; j < d; j++)
        if (m[((size_t)h * d + i) * d + j] != (i == j ? 1.0f : 0.0f)) return 0;
  return 1;
}

static kq_status alloc_buffer(kq_cache *c, uint64_t bytes, kq_buffer **out, const char *what,
                              int32_t layer) {
  const kq_device_info *info = &c->device->info;
  if (bytes > SIZE_MAX || (info->max_buffer_bytes && bytes > info->max_buffer_bytes))
    return kq_set_error(KQ_ERR_DEVICE_MEMORY,
                        "device %s: layer %d %s needs %llu bytes, more than its largest buffer "
                        "(%llu bytes)",
                        info->name, (int)layer, what, (unsigned long long)bytes,
                        (unsigned long long)info->max_buffer_bytes);
  kq_status st = c->device->iface->buffer_alloc(c->device->bdev, (size_t)bytes, out);
  if (st != KQ_OK) {
    *out = NULL;
    return kq_error_prefix(KQ_ERR_DEVICE_MEMORY, "device %s: layer %d %s (%llu bytes)", info->name,
                           (int)layer, what, (unsigned long long)bytes);
  }
  return KQ_OK;
}

static kq_status upload_matrix(kq_cache *c, const float *m, uint64_t bytes, kq_buffer **out,
                               const char *what, int32_t layer) {
  kq_status st = alloc_buffer(c, bytes, out, what, layer);
  if (st != KQ_OK) return st;
  c->projection_bytes += bytes;
  st = c->device->iface->buffer_upload(c->device->bdev, *out, 0, m, (size_t)bytes);
  if (st != KQ_OK)
    return kq_error_prefix(st, "device %s: layer %d %s upload", c->device->info.name, (int)layer,
                           what);
  return KQ_OK;
}

static kq_status validate_params(const kq_device *device, const kq_projections_info *info,
                                 const kq_cache_params *p) {
  if (p->storage != KQ_STORAGE_F32 && p->storage != KQ_STORAGE_F16)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_cache_create: unknown storage type %d",
                        (int)p->storage);
  if (p->capacity < 1)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_cache_create: capacity %d must be >= 1",
                        (int)p->capacity);
  if (p->n_seqs != 1)
    return kq_set_error(KQ_ERR_UNSUPPORTED,
                        "kq_cache_create: n_seqs = %d (this version supports 1)", (int)p->n_seqs);
  if (p->storage == KQ_STORAGE_F16 && !device->info.fp16_storage)
    return kq_set_error(KQ_ERR_UNSUPPORTED, "device %s: F16 storage is not supported",
                        device->info.name);
  if (info->n_layers < 1 || info->n_kv_heads < 1 || info->n_heads < info->n_kv_heads ||
      info->n_heads % info->n_kv_heads != 0 || info->head_dim < 1 ||
      (info->rope == KQ_ROPE_PRE && info->head_dim % 2 != 0) ||
      (info->layout == KQ_LAYOUT_JOINT && info->rope == KQ_ROPE_PRE))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "kq_cache_create: projections have inconsistent shape (layers %d, heads "
                        "%d/%d, head_dim %d)",
                        (int)info->n_layers, (int)info->n_heads, (int)info->n_kv_heads,
                        (int)info->head_dim);
  return KQ_OK;
}

/* Latent cache bytes of all layers at capacity (SPEC §1b: quantized data
 * plus F16 scales, without plane alignment), or UINT64_MAX on overflow. */
static uint64_t total_kv_bytes(const kq_projections *proj, const kq_projections_info *info,
                               const kq_cache_params *p) {
  size_t total = 0;
  for (int32_t l = 0; l < info->n_layers; l++) {
    size_t bytes;
    if (!kq_mul_size((size_t)kq_projections_layer_bytes(proj, l, p->storage), (size_t)p->capacity,
                     &bytes) ||
        !kq_add_size(total, bytes, &total))
      return UINT64_MAX;
  }
  return total;
}

void kq_cache_destroy(kq_cache *cache) {
  if (!cache) return;
  const kq_backend_iface *ifc = cache->device->iface;
  kq_bdevice *bd = cache->device->bdev;
  ifc->synchronize(bd);
  if (cache->layers) {
    for (int32_t l = 0; l < cache->info.n_layers; l++) {
      cache_layer *L = &cache->layers[l];
      kq_buffer *bufs[] = {L->A, L->B, L->C, L->E, L->k_cache, L->v_cache};
      for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) ifc->buffer_free(bd, bufs[i]);
    }
  }
  for (int s = 0; s < STAGE_COUNT; s++)
    if (cache->stage[s]) ifc->buffer_free(bd, cache->stage[s]);
  free(cache->layers);
  free(cache);
}

static kq_status create_layer(kq_cache *c, const kq_projections *proj, int32_t l) {
  const kq_projections_info *info = &c->info;
  cache_layer *L = &c->layers[l];
  kq_projection_layer v;
  kq_status st = kq_projections_layer_view(proj, l, &v);
  if (st != KQ_OK) return st;
  int32_t Hk = info->n_kv_heads, d = info->head_dim;
  int joint = info->layout == KQ_LAYOUT_JOINT;
  int32_t rmax = joint ? Hk * d : d;
  if (v.rank_k < 1 || v.rank_k > rmax || v.rank_v < 1 || v.rank_v > rmax)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "layer %d: ranks %d/%d outside [1, %d]", (int)l,
                        (int)v.rank_k, (int)v.rank_v, (int)rmax);
  L->rank_k = v.rank_k;
  L->rank_v = v.rank_v;
  L->n_kseg = normalize_segments(v.key_segments, v.n_key_segments, L->kseg);
  L->n_vseg = normalize_segments(v.value_segments, v.n_value_segments, L->vseg);
  if (!joint && L->n_kseg == 0 && is_identity(v.key_down, Hk, d, v.rank_k) &&
      is_identity(v.query_down, Hk, d, v.rank_k))
    L->key_flags = KQ_OP_IDENTITY_KEYS;
  if (!joint && L->n_vseg == 0 && is_identity(v.value_down, Hk, d, v.rank_v) &&
      is_identity(v.value_up, Hk, d, v.rank_v))
    L->value_flags = KQ_OP_IDENTITY_VALUES;
  uint64_t kbytes = (uint64_t)Hk * d * v.rank_k * 4, vbytes = (uint64_t)Hk * d * v.rank_v * 4;
  if (!L->key_flags) {
    st = upload_matrix(c, v.key_down, kbytes, &L->A, "key_down", l);
    if (st == KQ_OK) st = upload_matrix(c, v.query_down, kbytes, &L->B, "query_down", l);
    if (st != KQ_OK) return st;
  }
  if (!L->value_flags) {
    st = upload_matrix(c, v.value_down, vbytes, &L->C, "value_down", l);
    if (st == KQ_OK) st = upload_matrix(c, v.value_up, vbytes, &L->E, "value_up", l);
    if (st != KQ_OK) return st;
  }
  uint64_t cap = (uint64_t)c->params.capacity, groups = joint ? 1 : (uint64_t)Hk;
  kq_storage sto = c->params.storage;
  st = alloc_buffer(c, side_buffer_bytes(L->kseg, L->n_kseg, v.rank_k, sto, groups, cap),
                    &L->k_cache, "latent key cache", l);
  if (st == KQ_OK)
    st = alloc_buffer(c, side_buffer_bytes(L->vseg, L->n_vseg, v.rank_v, sto, groups, cap),
                      &L->v_cache, "latent value cache", l);
  return st;
}

kq_status kq_cache_create(kq_device *device, const kq_projections *proj,
                          const kq_cache_params *params, kq_cache **out_cache) {
  if (!device || !proj || !out_cache)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_cache_create: NULL argument");
  *out_cache = NULL;
  kq_cache_params p = kq_cache_default_params();
  kq_status st =
      kq_params_adopt(&p, sizeof p, sizeof p, params, "kq_cache_params", "kq_cache_default_params");
  if (st != KQ_OK) return st;
  kq_projections_info info;
  st = kq_projections_get_info(proj, &info);
  if (st != KQ_OK) return st;
  st = validate_params(device, &info, &p);
  if (st != KQ_OK) return st;

  uint64_t kv = total_kv_bytes(proj, &info, &p);
  if (kv == UINT64_MAX || (device->info.memory_bytes && kv > device->info.memory_bytes))
    return kq_set_error(KQ_ERR_DEVICE_MEMORY,
                        "device %s: a cache of %d tokens needs %s%llu bytes of latent keys and "
                        "values, the device has %llu bytes",
                        device->info.name, (int)p.capacity, kv == UINT64_MAX ? "more than " : "",
                        (unsigned long long)(kv == UINT64_MAX ? UINT64_MAX - 1 : kv),
                        (unsigned long long)device->info.memory_bytes);

  kq_cache *c = calloc(1, sizeof *c);
  if (!c) return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "kq_cache_create: out of host memory");
  c->device = device;
  c->info = info;
  c->params = p;
  c->kv_bytes = kv;
  c->layers = kq_calloc_array((size_t)info.n_layers, sizeof *c->layers, "cache layers");
  if (!c->layers) {
    free(c);
    return KQ_ERR_OUT_OF_MEMORY;
  }
  for (int32_t l = 0; l < info.n_layers && st == KQ_OK; l++) st = create_layer(c, proj, l);
  if (st != KQ_OK) {
    kq_cache_destroy(c);
    return st;
  }
  *out_cache = c;
  return KQ_OK;
}

/* Makes staging buffer `s` at least `bytes` long (grows by doubling). */
static kq_status ensure_stage(kq_cache *c, int s, size_t bytes) {
  if (c->stage[s] && c->stage_bytes[s] >= bytes) return KQ_OK;
  const kq_backend_iface *ifc = c->device->iface;
  size_t want = c->stage_bytes[s] * 2 > bytes ? c->stage_bytes[s] * 2 : bytes;
  if (c->stage[s]) {
    ifc->synchronize(c->device->bdev); /* earlier ops may still read it */
    ifc->buffer_free(c->device->bdev, c->stage[s]);
    c->stage[s] = NULL;
    c->stage_bytes[s] = 0;
  }
  kq_status st = ifc->buffer_alloc(c->device->bdev, want, &c->stage[s]);
  if (st != KQ_OK && want > bytes) {
    want = bytes;
    st = ifc->buffer_alloc(c->device->bdev, want, &c->stage[s]);
  }
  if (st != KQ_OK) {
    c->stage[s] = NULL;
    return kq_error_prefix(KQ_ERR_DEVICE_MEMORY, "device %s: %s staging buffer (%zu bytes)",
                           c->device->info.name, g_stage_names[s], bytes);
  }
  c->stage_bytes[s] = want;
  return KQ_OK;
}

static kq_status check_layer(const kq_cache *cache, int32_t layer, const char *fn) {
  if (!cache) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: cache is NULL", fn);
  if (layer < 0 || layer >= cache->info.n_layers)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: layer %d outside [0, %d)", fn, (int)layer,
                        (int)cache->info.n_layers);
  return KQ_OK;
}

kq_status kq_cache_append(kq_cache *cache, int32_t layer, int32_t n_tokens, const float *keys,
                          const float *values) {
  kq_status st = check_layer(cache, layer, "kq_cache_append");
  if (st != KQ_OK) return st;
  if (n_tokens < 1 || !keys || !values)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "kq_cache_append: layer %d: n_tokens %d must be >= 1 with non-NULL keys "
                        "and values",
                        (int)layer, (int)n_tokens);
  cache_layer *L = &cache->layers[layer];
  if (n_tokens > cache->params.capacity - L->length)
    return kq_set_error(KQ_ERR_CAPACITY,
                        "kq_cache_append: layer %d: appending %d tokens to length %d exceeds the "
                        "capacity of %d tokens",
                        (int)layer, (int)n_tokens, (int)L->length, (int)cache->params.capacity);
  const kq_backend_iface *ifc = cache->device->iface;
  kq_bdevice *bd = cache->device->bdev;
  size_t bytes;
  if (!kq_mul_size((size_t)n_tokens, (size_t)cache->info.n_kv_heads * cache->info.head_dim * 4,
                   &bytes))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_cache_append: %d tokens overflow",
                        (int)n_tokens);
  st = ensure_stage(cache, STAGE_KEYS, bytes);
  if (st == KQ_OK) st = ensure_stage(cache, STAGE_VALUES, bytes);
  if (st == KQ_OK) st = ifc->buffer_upload(bd, cache->stage[STAGE_KEYS], 0, keys, bytes);
  if (st == KQ_OK) st = ifc->buffer_upload(bd, cache->stage[STAGE_VALUES], 0, values, bytes);
  /* JOINT: a token's keys of every kv head are one row of Hk·d. */
  int joint = cache->info.layout == KQ_LAYOUT_JOINT;
  kq_project_op op = {
      .src = cache->stage[STAGE_KEYS],
      .proj = L->A,
      .dst = L->k_cache,
      .n_tokens = n_tokens,
      .n_heads = joint ? 1 : cache->info.n_kv_heads,
      .head_dim = joint ? cache->info.n_kv_heads * cache->info.head_dim : cache->info.head_dim,
      .rank = L->rank_k,
      .capacity = cache->params.capacity,
      .pos = L->length,
      .storage = cache->params.storage,
      .flags = L->key_flags,
      .n_seqs = 1,
      .n_segments = L->n_kseg,
      .segments = L->n_kseg ? L->kseg : NULL,
  };
  if (st == KQ_OK) st = ifc->project(bd, &op);
  op.src = cache->stage[STAGE_VALUES];
  op.proj = L->C;
  op.dst = L->v_cache;
  op.rank = L->rank_v;
  op.flags = L->value_flags;
  op.n_segments = L->n_vseg;
  op.segments = L->n_vseg ? L->vseg : NULL;
  if (st == KQ_OK) st = ifc->project(bd, &op);
  if (st != KQ_OK)
    return kq_error_prefix(st, "kq_cache_append: device %s: layer %d", cache->device->info.name,
                           (int)layer);
  L->length += n_tokens;
  return KQ_OK;
}

kq_status kq_cache_attend(kq_cache *cache, int32_t layer, int32_t n_queries, const float *queries,
                          kq_output output, float *out) {
  kq_status st = check_layer(cache, layer, "kq_cache_attend");
  if (st != KQ_OK) return st;
  cache_layer *L = &cache->layers[layer];
  if (!queries || !out || (output != KQ_OUTPUT_FULL && output != KQ_OUTPUT_LATENT))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "kq_cache_attend: layer %d: NULL queries/out or unknown output kind %d",
                        (int)layer, (int)output);
  if (L->length == 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "kq_cache_attend: layer %d: the cache is empty (append tokens first)",
                        (int)layer);
  if (n_queries < 1 || n_queries > L->length)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "kq_cache_attend: layer %d: n_queries %d outside [1, length %d]",
                        (int)layer, (int)n_queries, (int)L->length);
  const kq_backend_iface *ifc = cache->device->iface;
  kq_bdevice *bd = cache->device->bdev;
  int32_t H = cache->info.n_heads, d = cache->info.head_dim;
  size_t qbytes = (size_t)n_queries * H * d * 4;
  size_t lbytes = (size_t)n_queries * H * L->rank_v * 4;
  st = ensure_stage(cache, STAGE_QUERIES, qbytes);
  if (st == KQ_OK) st = ensure_stage(cache, STAGE_LATENT, lbytes);
  if (st == KQ_OK && output == KQ_OUTPUT_FULL) st = ensure_stage(cache, STAGE_OUT, qbytes);
  if (st == KQ_OK) st = ifc->buffer_upload(bd, cache->stage[STAGE_QUERIES], 0, queries, qbytes);
  kq_attend_op op = {
      .q = cache->stage[STAGE_QUERIES],
      .key_down = L->A,
      .query_down = L->B,
      .k_cache = L->k_cache,
      .v_cache = L->v_cache,
      .out = cache->stage[STAGE_LATENT],
      .n_queries = n_queries,
      .n_ctx = L->length,
      .n_heads = H,
      .n_kv_heads = cache->info.n_kv_heads,
      .head_dim = d,
      .rank_k = L->rank_k,
      .rank_v = L->rank_v,
      .capacity = cache->params.capacity,
      .storage = cache->params.storage,
      .rope = cache->info.rope,
      .rope_layout = cache->info.rope_layout,
      .rope_theta = cache->info.rope_theta,
      .scale = 1.0f / sqrtf((float)d),
      .flags = L->key_flags | L->value_flags,
      .n_seqs = 1,
      .layout = cache->info.layout,
      .n_key_segments = L->n_kseg,
      .n_value_segments = L->n_vseg,
      .key_segments = L->n_kseg ? L->kseg : NULL,
      .value_segments = L->n_vseg ? L->vseg : NULL,
  };
  if (st == KQ_OK) st = ifc->attend(bd, &op);
  if (st == KQ_OK && output == KQ_OUTPUT_FULL) {
    kq_up_op up = {
        .latent = cache->stage[STAGE_LATENT],
        .value_up = L->E,
        .out = cache->stage[STAGE_OUT],
        .n_queries = n_queries,
        .n_heads = H,
        .n_kv_heads = cache->info.n_kv_heads,
        .head_dim = d,
        .rank_v = L->rank_v,
        .flags = L->value_flags,
        .n_seqs = 1,
    };
    st = ifc->up(bd, &up);
    if (st == KQ_OK) st = ifc->buffer_download(bd, cache->stage[STAGE_OUT], 0, out, qbytes);
  } else if (st == KQ_OK) {
    st = ifc->buffer_download(bd, cache->stage[STAGE_LATENT], 0, out, lbytes);
  }
  if (st != KQ_OK)
    return kq_error_prefix(st, "kq_cache_attend: device %s: layer %d", cache->device->info.name,
                           (int)layer);
  return KQ_OK;
}

kq_status kq_cache_truncate(kq_cache *cache, int32_t length) {
  if (!cache) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_cache_truncate: cache is NULL");
  if (length < 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_cache_truncate: length %d is negative",
                        (int)length);
  for (int32_t l = 0; l < cache->info.n_layers; l++)
    if (cache->layers[l].length > length) cache->layers[l].length = length;
  return KQ_OK;
}

int32_t kq_cache_length(const kq_cache *cache, int32_t layer) {
  if (!cache || layer < 0 || layer >= cache->info.n_layers) return 0;
  return cache->layers[layer].length;
}

kq_status kq_cache_get_memory(const kq_cache *cache, kq_cache_memory *out_memory) {
  if (!cache || !out_memory)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_cache_get_memory: NULL argument");
  out_memory->kv_bytes = cache->kv_bytes;
  out_memory->projection_bytes = cache->projection_bytes;
  uint64_t scratch = 0;
  for (int s = 0; s < STAGE_COUNT; s++) scratch += cache->stage_bytes[s];
  out_memory->scratch_bytes = scratch;
  return KQ_OK;
}
