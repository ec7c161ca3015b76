/*
 * kq_cache_*: the compressed KV cache on a device.
 *
 * Per layer the device holds A, B, C, E (F32, omitted when exactly the
 * identity) and one latent buffer per side (keys, values). A side's buffer
 * is [n_seqs] regions, one per sequence, each a complete latent buffer of
 * `capacity` positions in the planar layout of kqsvd_backend.h (planes
 * [groups, capacity, row] per segment) padded to KQ_PLANE_ALIGN: an op on
 * sequence s is the single-sequence op with dst/cache offset s · region, so
 * every backend runs it unchanged. Inputs and outputs pass through staging
 * buffers that grow as needed (device buffers of the *_device calls are used
 * in place); a batched call uploads each input once, issues one backend op
 * per side (append) or one attend for all its sequences, their regions and
 * rows in the op's sequence table (kqsvd_backend.h, kq_op_seq), and
 * downloads once. Thread safety (kqsvd.h): a cache is
 * driven by one thread at a time; several caches may share a device from
 * different threads, since every backend call made here is safe to issue
 * concurrently on one device.
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
  size_t k_region, v_region;       /* bytes of one sequence's region, KQ_PLANE_ALIGN multiples */
  size_t k_bytes, v_bytes;         /* of k_cache, v_cache: n_seqs regions */
  size_t kproj_bytes, vproj_bytes; /* of A and B, of C and E (0 when omitted) */
  int32_t *length;                 /* [n_seqs], into kq_cache.lengths */
} cache_layer;

struct kq_cache {
  kq_device *device;
  kq_projections_info info;
  kq_cache_params params;
  cache_layer *layers;
  int32_t *lengths;       /* [n_layers, n_seqs] */
  unsigned char *in_call; /* [n_seqs]: sequences already named by the current batch */
  kq_op_seq *table;       /* [n_seqs]: the sequence table of the op being issued */
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

/* A sequence's region: the planes padded so that every region, and so every
 * plane in it, starts at a multiple of KQ_PLANE_ALIGN. */
static size_t region_bytes(uint64_t bytes) {
  return (size_t)((bytes + KQ_PLANE_ALIGN - 1) / KQ_PLANE_ALIGN * KQ_PLANE_ALIGN);
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
  if (p->n_seqs < 1)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_cache_create: n_seqs %d must be >= 1",
                        (int)p->n_seqs);
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
  if (!kq_mul_size(total, (size_t)p->n_seqs, &total)) return UINT64_MAX;
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
  free(cache->lengths);
  free(cache->in_call);
  free(cache->table);
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
  if (!L->key_flags) L->kproj_bytes = (size_t)kbytes;
  if (!L->value_flags) L->vproj_bytes = (size_t)vbytes;
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
  L->k_region = region_bytes(side_buffer_bytes(L->kseg, L->n_kseg, v.rank_k, sto, groups, cap));
  L->v_region = region_bytes(side_buffer_bytes(L->vseg, L->n_vseg, v.rank_v, sto, groups, cap));
  size_t kb, vb;
  if (!kq_mul_size(L->k_region, (size_t)c->params.n_seqs, &kb) ||
      !kq_mul_size(L->v_region, (size_t)c->params.n_seqs, &vb))
    return kq_set_error(KQ_ERR_DEVICE_MEMORY,
                        "device %s: layer %d latent cache of %d sequences overflows size_t",
                        c->device->info.name, (int)l, (int)c->params.n_seqs);
  L->k_bytes = kb;
  L->v_bytes = vb;
  st = alloc_buffer(c, kb, &L->k_cache, "latent key cache", l);
  if (st == KQ_OK) st = alloc_buffer(c, vb, &L->v_cache, "latent value cache", l);
  return st;
}

static kq_status prepare_layer(kq_cache *c, int32_t l, int32_t n);

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
  c->lengths = c->layers ? kq_calloc_array((size_t)info.n_layers * (size_t)p.n_seqs,
                                           sizeof(int32_t), "cache sequence lengths")
                         : NULL;
  c->in_call = c->lengths ? kq_calloc_array((size_t)p.n_seqs, 1, "cache sequence flags") : NULL;
  c->table =
      c->in_call ? kq_calloc_array((size_t)p.n_seqs, sizeof *c->table, "sequence table") : NULL;
  if (!c->table) {
    kq_cache_destroy(c);
    return KQ_ERR_OUT_OF_MEMORY;
  }
  for (int32_t l = 0; l < info.n_layers; l++)
    c->layers[l].length = c->lengths + (size_t)l * (size_t)p.n_seqs;
  for (int32_t l = 0; l < info.n_layers && st == KQ_OK; l++) st = create_layer(c, proj, l);
  /* Every count up to the capacity: the first prefill compiles nothing either. */
  for (int32_t l = 0; l < info.n_layers && st == KQ_OK; l++) st = prepare_layer(c, l, p.capacity);
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

static kq_status check_seq(const kq_cache *cache, int32_t seq, const char *fn) {
  if (!cache) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: cache is NULL", fn);
  if (seq < 0 || seq >= cache->params.n_seqs)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: sequence %d outside [0, %d)", fn, (int)seq,
                        (int)cache->params.n_seqs);
  return KQ_OK;
}

/* Checks every span of a batch (sequence in range, n_tokens >= 1) and sums
 * their rows into *out_rows. */
static kq_status check_spans(const kq_cache *c, int32_t layer, int32_t n_spans,
                             const kq_seq_span *spans, const char *fn, int32_t *out_rows) {
  if (n_spans < 1 || !spans)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: layer %d: %d spans (need >= 1, non-NULL)", fn,
                        (int)layer, (int)n_spans);
  int64_t rows = 0;
  for (int32_t i = 0; i < n_spans; i++) {
    if (spans[i].seq < 0 || spans[i].seq >= c->params.n_seqs)
      return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                          "%s: layer %d: span %d: sequence %d outside "
                          "[0, %d)",
                          fn, (int)layer, (int)i, (int)spans[i].seq, (int)c->params.n_seqs);
    if (spans[i].n_tokens < 1)
      return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                          "%s: layer %d, sequence %d: n_tokens %d must be >= 1", fn, (int)layer,
                          (int)spans[i].seq, (int)spans[i].n_tokens);
    rows += spans[i].n_tokens;
    if (rows > INT32_MAX)
      return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: layer %d: more than %d rows in one batch",
                          fn, (int)layer, (int)INT32_MAX);
  }
  *out_rows = (int32_t)rows;
  return KQ_OK;
}

/* KQ_ERR_INVALID_ARGUMENT when a sequence is named twice in one batch. */
static kq_status check_distinct(kq_cache *c, int32_t layer, int32_t n_spans,
                                const kq_seq_span *spans, const char *fn) {
  kq_status st = KQ_OK;
  int32_t i = 0;
  for (; i < n_spans; i++) {
    if (c->in_call[spans[i].seq]) {
      st = kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "%s: layer %d: sequence %d appears twice in one batch", fn, (int)layer,
                        (int)spans[i].seq);
      break;
    }
    c->in_call[spans[i].seq] = 1;
  }
  for (int32_t j = 0; j < i; j++) c->in_call[spans[j].seq] = 0;
  return st;
}

/* Where a batched call's input or output lives: host memory (staged by
 * the core) or the caller's device buffer at a byte offset. */
typedef struct io {
  void *host; /* NULL with a device buffer */
  const kq_device_buffer *dev;
  size_t offset;
} io;

static io host_io(const void *p) {
  io x = {.host = (void *)(uintptr_t)p};
  return x;
}

static io device_io(const kq_device_buffer *b, size_t offset) {
  io x = {.dev = b, .offset = offset};
  return x;
}

/* A device buffer holds `bytes` at its offset, on the cache's device. */
static kq_status check_io(const kq_cache *c, io x, size_t bytes, const char *what, const char *fn,
                          int32_t layer) {
  if (!x.dev && !x.host)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: layer %d: %s is NULL", fn, (int)layer, what);
  if (!x.dev) return KQ_OK;
  size_t end;
  if (x.dev->device != c->device)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "%s: layer %d: the %s buffer is on device %s, the cache on %s", fn,
                        (int)layer, what, x.dev->device->info.name, c->device->info.name);
  if (x.offset % 4 || !kq_add_size(x.offset, bytes, &end) || end > x.dev->bytes)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "%s: layer %d: %s needs %zu bytes at offset %zu (a multiple of 4) of a "
                        "buffer of %zu bytes",
                        fn, (int)layer, what, bytes, x.offset, x.dev->bytes);
  return KQ_OK;
}

/* The project op of one side of a layer (keys: side 0, values: side 1)
 * without its per-call fields (src, offsets, n_tokens, pos). JOINT: a
 * token's keys of every kv head are one row of Hk·d. */
static kq_project_op layer_project_op(const kq_cache *c, const cache_layer *L, int values) {
  int joint = c->info.layout == KQ_LAYOUT_JOINT;
  kq_project_op op = {
      .proj = values ? L->C : L->A,
      .dst = values ? L->v_cache : L->k_cache,
      .n_heads = joint ? 1 : c->info.n_kv_heads,
      .head_dim = joint ? c->info.n_kv_heads * c->info.head_dim : c->info.head_dim,
      .rank = values ? L->rank_v : L->rank_k,
      .capacity = c->params.capacity,
      .storage = c->params.storage,
      .flags = values ? L->value_flags : L->key_flags,
      .n_seqs = 1,
      .n_segments = values ? L->n_vseg : L->n_kseg,
  };
  op.segments = op.n_segments ? (values ? L->vseg : L->kseg) : NULL;
  return op;
}

/* The attend op of a layer without its per-call fields (q, out, offsets,
 * n_queries, n_ctx); value_up set when the backend fuses the up-projection
 * of a full output. */
static kq_attend_op layer_attend_op(const kq_cache *c, const cache_layer *L, bool fused) {
  int32_t d = c->info.head_dim;
  kq_attend_op op = {
      .key_down = L->A,
      .query_down = L->B,
      .k_cache = L->k_cache,
      .v_cache = L->v_cache,
      .n_heads = c->info.n_heads,
      .n_kv_heads = c->info.n_kv_heads,
      .head_dim = d,
      .rank_k = L->rank_k,
      .rank_v = L->rank_v,
      .capacity = c->params.capacity,
      .storage = c->params.storage,
      .rope = c->info.rope,
      .rope_layout = c->info.rope_layout,
      .rope_theta = c->info.rope_theta,
      .scale = 1.0f / sqrtf((float)d),
      .flags = L->key_flags | L->value_flags,
      .n_seqs = 1,
      .layout = c->info.layout,
      .n_key_segments = L->n_kseg,
      .n_value_segments = L->n_vseg,
      .key_segments = L->n_kseg ? L->kseg : NULL,
      .value_segments = L->n_vseg ? L->vseg : NULL,
      .value_up = fused ? L->E : NULL,
  };
  return op;
}

/* A full output is fused into attend when the backend can and the values
 * are projected; otherwise the core issues an up op after attend. */
static bool fuses_up(const kq_cache *c, const cache_layer *L) {
  return (c->device->iface->caps & KQ_BACKEND_CAP_FUSED_UP) &&
         !(L->value_flags & KQ_OP_IDENTITY_VALUES);
}

/* Lets the backend build the kernels of a layer's ops now (kqsvd_backend.h,
 * prepare): appends and attends of 1 to n tokens, full output. The latent
 * output (no fused up-projection) is not prepared. */
static kq_status prepare_layer(kq_cache *c, int32_t l, int32_t n) {
  const kq_backend_iface *ifc = c->device->iface;
  if (!ifc->prepare) return KQ_OK;
  const cache_layer *L = &c->layers[l];
  kq_project_op kop = layer_project_op(c, L, 0), vop = layer_project_op(c, L, 1);
  kop.n_tokens = vop.n_tokens = n;
  const bool fused = fuses_up(c, L);
  kq_attend_op aop = layer_attend_op(c, L, fused);
  aop.n_queries = aop.n_ctx = n;
  kq_up_op up = {
      .value_up = L->E,
      .n_queries = n,
      .n_heads = c->info.n_heads,
      .n_kv_heads = c->info.n_kv_heads,
      .head_dim = c->info.head_dim,
      .rank_v = L->rank_v,
      .flags = L->value_flags,
      .n_seqs = 1,
  };
  kq_status st = ifc->prepare(c->device->bdev, &kop, &vop, &aop, fused ? NULL : &up);
  if (st != KQ_OK)
    return kq_error_prefix(st, "kq_cache_create: device %s: layer %d: preparing kernels",
                           c->device->info.name, (int)l);
  return KQ_OK;
}

static kq_status append_spans(kq_cache *cache, int32_t layer, int32_t n_spans,
                              const kq_seq_span *spans, io keys, io values, const char *fn) {
  kq_status st = check_layer(cache, layer, fn);
  int32_t rows = 0;
  if (st == KQ_OK) st = check_spans(cache, layer, n_spans, spans, fn, &rows);
  if (st != KQ_OK) return st;
  size_t row_bytes = (size_t)cache->info.n_kv_heads * cache->info.head_dim * 4, bytes;
  if (!kq_mul_size((size_t)rows, row_bytes, &bytes))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: %d tokens overflow", fn, (int)rows);
  st = check_io(cache, keys, bytes, "keys", fn, layer);
  if (st == KQ_OK) st = check_io(cache, values, bytes, "values", fn, layer);
  if (st == KQ_OK) st = check_distinct(cache, layer, n_spans, spans, fn);
  if (st != KQ_OK) return st;
  cache_layer *L = &cache->layers[layer];
  for (int32_t i = 0; i < n_spans; i++) {
    int32_t len = L->length[spans[i].seq];
    if (spans[i].n_tokens > cache->params.capacity - len)
      return kq_set_error(KQ_ERR_CAPACITY,
                          "%s: layer %d, sequence %d: appending %d tokens to length %d exceeds the "
                          "capacity of %d tokens",
                          fn, (int)layer, (int)spans[i].seq, (int)spans[i].n_tokens, (int)len,
                          (int)cache->params.capacity);
  }
  const kq_backend_iface *ifc = cache->device->iface;
  kq_bdevice *bd = cache->device->bdev;
  /* Host inputs go through the staging buffers; device inputs are read in place. */
  if (!keys.dev) {
    st = ensure_stage(cache, STAGE_KEYS, bytes);
    if (st == KQ_OK) st = ifc->buffer_upload(bd, cache->stage[STAGE_KEYS], 0, keys.host, bytes);
  }
  if (st == KQ_OK && !values.dev) {
    st = ensure_stage(cache, STAGE_VALUES, bytes);
    if (st == KQ_OK) st = ifc->buffer_upload(bd, cache->stage[STAGE_VALUES], 0, values.host, bytes);
  }
  const kq_buffer *ksrc = keys.dev ? keys.dev->buf : cache->stage[STAGE_KEYS];
  const kq_buffer *vsrc = values.dev ? values.dev->buf : cache->stage[STAGE_VALUES];
  size_t ksize = keys.dev ? keys.dev->bytes : cache->stage_bytes[STAGE_KEYS];
  size_t vsize = values.dev ? values.dev->bytes : cache->stage_bytes[STAGE_VALUES];
  kq_project_op kop = layer_project_op(cache, L, 0), vop = layer_project_op(cache, L, 1);
  kop.src = ksrc;
  vop.src = vsrc;
  kop.src_offset = keys.offset;
  vop.src_offset = values.offset;
  kop.n_tokens = vop.n_tokens = rows;
  kop.n_seqs = vop.n_seqs = n_spans;
  /* One table serves both sides: a value region is found at v_region. */
  int32_t row0 = 0;
  for (int32_t i = 0; i < n_spans; i++) {
    int32_t seq = spans[i].seq;
    cache->table[i] = (kq_op_seq){.k_region = (size_t)seq * L->k_region,
                                  .row = row0,
                                  .n_rows = spans[i].n_tokens,
                                  .pos = L->length[seq],
                                  .seq = seq};
    row0 += spans[i].n_tokens;
  }
  kop.seqs = vop.seqs = cache->table;
  const int fp16 = cache->device->info.fp16_storage;
  kq_op_sizes kz = {.src = ksize, .proj = L->kproj_bytes, .dst = L->k_bytes, .layer = layer};
  kq_op_sizes vz = {.src = vsize, .proj = L->vproj_bytes, .dst = L->v_bytes, .layer = layer};
  if (st == KQ_OK) st = kq_core_check_project(&kop, &kz, fp16);
  if (st == KQ_OK) st = ifc->project(bd, &kop);
  if (st == KQ_OK) {
    for (int32_t i = 0; i < n_spans; i++)
      cache->table[i].k_region = (size_t)spans[i].seq * L->v_region;
    st = kq_core_check_project(&vop, &vz, fp16);
  }
  if (st == KQ_OK) st = ifc->project(bd, &vop);
  if (st != KQ_OK)
    return kq_error_prefix(st, "%s: device %s: layer %d (%d sequences)", fn,
                           cache->device->info.name, (int)layer, (int)n_spans);
  for (int32_t i = 0; i < n_spans; i++) L->length[spans[i].seq] += spans[i].n_tokens;
  return KQ_OK;
}

static kq_status attend_spans(kq_cache *cache, int32_t layer, int32_t n_spans,
                              const kq_seq_span *spans, io queries, kq_output output, io out,
                              const char *fn) {
  kq_status st = check_layer(cache, layer, fn);
  int32_t rows = 0;
  if (st == KQ_OK) st = check_spans(cache, layer, n_spans, spans, fn, &rows);
  if (st != KQ_OK) return st;
  cache_layer *L = &cache->layers[layer];
  if (output != KQ_OUTPUT_FULL && output != KQ_OUTPUT_LATENT)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: layer %d: unknown output kind %d", fn,
                        (int)layer, (int)output);
  for (int32_t i = 0; i < n_spans; i++) {
    int32_t seq = spans[i].seq, len = L->length[seq];
    if (len == 0)
      return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                          "%s: layer %d, sequence %d: the cache is empty (append tokens first)", fn,
                          (int)layer, (int)seq);
    if (spans[i].n_tokens > len)
      return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                          "%s: layer %d, sequence %d: n_queries %d outside [1, length %d]", fn,
                          (int)layer, (int)seq, (int)spans[i].n_tokens, (int)len);
  }
  const kq_backend_iface *ifc = cache->device->iface;
  kq_bdevice *bd = cache->device->bdev;
  int32_t H = cache->info.n_heads, d = cache->info.head_dim;
  size_t q_row = (size_t)H * d * 4, l_row = (size_t)H * L->rank_v * 4, qbytes, lbytes;
  if (!kq_mul_size((size_t)rows, q_row, &qbytes) || !kq_mul_size((size_t)rows, l_row, &lbytes))
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: %d queries overflow", fn, (int)rows);
  const size_t obytes = output == KQ_OUTPUT_FULL ? qbytes : lbytes;
  st = check_io(cache, queries, qbytes, "queries", fn, layer);
  if (st == KQ_OK) st = check_io(cache, out, obytes, "out", fn, layer);
  if (st == KQ_OK && out.dev && out.dev == queries.dev)
    st = kq_set_error(KQ_ERR_INVALID_ARGUMENT, "%s: layer %d: out is the queries' buffer", fn,
                      (int)layer);
  if (st != KQ_OK) return st;
  /* A backend that fuses the up-projection writes the full output itself. */
  const bool fused = output == KQ_OUTPUT_FULL && fuses_up(cache, L);
  const bool up_op = output == KQ_OUTPUT_FULL && !fused;
  /* Host queries and outputs go through staging buffers; device ones are used in place. */
  if (!queries.dev) {
    st = ensure_stage(cache, STAGE_QUERIES, qbytes);
    if (st == KQ_OK)
      st = ifc->buffer_upload(bd, cache->stage[STAGE_QUERIES], 0, queries.host, qbytes);
  }
  if (st == KQ_OK && (up_op || (!out.dev && output == KQ_OUTPUT_LATENT)))
    st = ensure_stage(cache, STAGE_LATENT, lbytes);
  if (st == KQ_OK && !out.dev && output == KQ_OUTPUT_FULL)
    st = ensure_stage(cache, STAGE_OUT, qbytes);
  if (st != KQ_OK) return st;
  /* Where the final rows go, and where the attend op writes. */
  const int final_stage = output == KQ_OUTPUT_FULL ? STAGE_OUT : STAGE_LATENT;
  kq_buffer *final_buf = out.dev ? out.dev->buf : cache->stage[final_stage];
  size_t final_off = out.dev ? out.offset : 0;
  size_t final_size = out.dev ? out.dev->bytes : cache->stage_bytes[final_stage];
  kq_buffer *att_buf = up_op ? cache->stage[STAGE_LATENT] : final_buf;
  size_t att_off = up_op ? 0 : final_off;
  size_t att_size = up_op ? cache->stage_bytes[STAGE_LATENT] : final_size;
  kq_attend_op op = layer_attend_op(cache, L, fused);
  op.q = queries.dev ? queries.dev->buf : cache->stage[STAGE_QUERIES];
  op.out = att_buf;
  kq_op_sizes z = {.q = queries.dev ? queries.dev->bytes : cache->stage_bytes[STAGE_QUERIES],
                   .key_down = L->kproj_bytes,
                   .query_down = L->kproj_bytes,
                   .k_cache = L->k_bytes,
                   .v_cache = L->v_bytes,
                   .out = att_size,
                   .value_up = L->vproj_bytes,
                   .layer = layer};
  op.q_offset = queries.offset;
  op.out_offset = att_off;
  op.n_queries = rows;
  op.n_seqs = n_spans;
  op.n_ctx = 0;
  int32_t row0 = 0;
  for (int32_t i = 0; i < n_spans; i++) {
    int32_t seq = spans[i].seq;
    cache->table[i] = (kq_op_seq){.k_region = (size_t)seq * L->k_region,
                                  .v_region = (size_t)seq * L->v_region,
                                  .row = row0,
                                  .n_rows = spans[i].n_tokens,
                                  .n_ctx = L->length[seq],
                                  .seq = seq};
    if (L->length[seq] > op.n_ctx) op.n_ctx = L->length[seq];
    row0 += spans[i].n_tokens;
  }
  op.seqs = cache->table;
  st = kq_core_check_attend(&op, &z, cache->device->info.fp16_storage, ifc->caps);
  if (st == KQ_OK) st = ifc->attend(bd, &op);
  if (st == KQ_OK && up_op) {
    /* The up-projection is per row: one op serves every sequence. */
    kq_up_op up = {
        .latent = cache->stage[STAGE_LATENT],
        .value_up = L->E,
        .out = final_buf,
        .out_offset = final_off,
        .n_queries = rows,
        .n_heads = H,
        .n_kv_heads = cache->info.n_kv_heads,
        .head_dim = d,
        .rank_v = L->rank_v,
        .flags = L->value_flags,
        .n_seqs = 1,
    };
    kq_op_sizes uz = {.src = cache->stage_bytes[STAGE_LATENT],
                      .value_up = L->vproj_bytes,
                      .out = final_size,
                      .layer = layer};
    st = kq_core_check_up(&up, &uz);
    if (st == KQ_OK) st = ifc->up(bd, &up);
  }
  if (st == KQ_OK && !out.dev) st = ifc->buffer_download(bd, final_buf, 0, out.host, obytes);
  if (st != KQ_OK)
    return kq_error_prefix(st, "%s: device %s: layer %d (%d sequences)", fn,
                           cache->device->info.name, (int)layer, (int)n_spans);
  return KQ_OK;
}

kq_status kq_cache_append(kq_cache *cache, int32_t layer, int32_t n_tokens, const float *keys,
                          const float *values) {
  kq_seq_span span = {.seq = 0, .n_tokens = n_tokens};
  return append_spans(cache, layer, 1, &span, host_io(keys), host_io(values), "kq_cache_append");
}

kq_status kq_cache_append_batch(kq_cache *cache, int32_t layer, int32_t n_spans,
                                const kq_seq_span *spans, const float *keys, const float *values) {
  return append_spans(cache, layer, n_spans, spans, host_io(keys), host_io(values),
                      "kq_cache_append_batch");
}

kq_status kq_cache_append_device(kq_cache *cache, int32_t layer, int32_t n_spans,
                                 const kq_seq_span *spans, const kq_device_buffer *keys,
                                 size_t keys_offset, const kq_device_buffer *values,
                                 size_t values_offset) {
  if (!keys || !values)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_cache_append_device: NULL buffer");
  return append_spans(cache, layer, n_spans, spans, device_io(keys, keys_offset),
                      device_io(values, values_offset), "kq_cache_append_device");
}

kq_status kq_cache_attend(kq_cache *cache, int32_t layer, int32_t n_queries, const float *queries,
                          kq_output output, float *out) {
  kq_seq_span span = {.seq = 0, .n_tokens = n_queries};
  return attend_spans(cache, layer, 1, &span, host_io(queries), output, host_io(out),
                      "kq_cache_attend");
}

kq_status kq_cache_attend_batch(kq_cache *cache, int32_t layer, int32_t n_spans,
                                const kq_seq_span *spans, const float *queries, kq_output output,
                                float *out) {
  return attend_spans(cache, layer, n_spans, spans, host_io(queries), output, host_io(out),
                      "kq_cache_attend_batch");
}

kq_status kq_cache_attend_device(kq_cache *cache, int32_t layer, int32_t n_spans,
                                 const kq_seq_span *spans, const kq_device_buffer *queries,
                                 size_t queries_offset, kq_output output, kq_device_buffer *out,
                                 size_t out_offset) {
  if (!queries || !out)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_cache_attend_device: NULL buffer");
  return attend_spans(cache, layer, n_spans, spans, device_io(queries, queries_offset), output,
                      device_io(out, out_offset), "kq_cache_attend_device");
}

static void truncate_seq(kq_cache *cache, int32_t seq, int32_t length) {
  for (int32_t l = 0; l < cache->info.n_layers; l++)
    if (cache->layers[l].length[seq] > length) cache->layers[l].length[seq] = length;
}

kq_status kq_cache_truncate(kq_cache *cache, int32_t length) {
  if (!cache) return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_cache_truncate: cache is NULL");
  if (length < 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "kq_cache_truncate: length %d is negative",
                        (int)length);
  truncate_seq(cache, 0, length);
  return KQ_OK;
}

kq_status kq_cache_seq_truncate(kq_cache *cache, int32_t seq, int32_t length) {
  kq_status st = check_seq(cache, seq, "kq_cache_seq_truncate");
  if (st != KQ_OK) return st;
  if (length < 0)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "kq_cache_seq_truncate: sequence %d: length %d is negative", (int)seq,
                        (int)length);
  truncate_seq(cache, seq, length);
  return KQ_OK;
}

kq_status kq_cache_seq_clear(kq_cache *cache, int32_t seq) {
  kq_status st = check_seq(cache, seq, "kq_cache_seq_clear");
  if (st != KQ_OK) return st;
  truncate_seq(cache, seq, 0);
  return KQ_OK;
}

/* Copies rows [0, n) of every plane and group of one side of a layer from
 * sequence src's region to dst's, through the host. */
static kq_status copy_side(kq_cache *c, kq_buffer *buf, size_t region, const kq_segment *segs,
                           int32_t n_segs, int32_t rank, int32_t src, int32_t dst, int32_t n) {
  const kq_backend_iface *ifc = c->device->iface;
  kq_bdevice *bd = c->device->bdev;
  kq_segment plain = {rank, KQ_SEG_FLOAT};
  if (n_segs == 0) {
    segs = &plain;
    n_segs = 1;
  }
  size_t groups = c->info.layout == KQ_LAYOUT_JOINT ? 1 : (size_t)c->info.n_kv_heads;
  size_t cap = (size_t)c->params.capacity, per_row = 0;
  for (int32_t s = 0; s < n_segs; s++)
    per_row += kq_segment_row_bytes(segs[s], c->params.storage) + (segs[s].bits ? 2 : 0);
  unsigned char *host = kq_malloc_array(groups * (size_t)n, per_row, "sequence copy");
  if (!host) return KQ_ERR_OUT_OF_MEMORY;
  kq_status st = KQ_OK;
  /* Every download first (the first one waits for queued work), then every
   * upload: one pass over the planes each way. */
  for (int pass = 0; pass < 2 && st == KQ_OK; pass++) {
    unsigned char *p = host;
    for (int32_t s = 0; s < n_segs && st == KQ_OK; s++) {
      size_t data, scale;
      kq_segment_planes(segs, n_segs, c->params.storage, groups, cap, s, &data, &scale, NULL);
      size_t planes[2] = {data, scale},
             rows[2] = {kq_segment_row_bytes(segs[s], c->params.storage), 2};
      for (int k = 0; k < (segs[s].bits ? 2 : 1) && st == KQ_OK; k++)
        for (size_t g = 0; g < groups && st == KQ_OK; g++) {
          size_t off = planes[k] + g * cap * rows[k], bytes = (size_t)n * rows[k];
          if (pass == 0)
            st = ifc->buffer_download(bd, buf, (size_t)src * region + off, p, bytes);
          else
            st = ifc->buffer_upload(bd, buf, (size_t)dst * region + off, p, bytes);
          p += bytes;
        }
    }
  }
  free(host);
  return st;
}

kq_status kq_cache_seq_copy(kq_cache *cache, int32_t src_seq, int32_t dst_seq, int32_t n_tokens) {
  const char *fn = "kq_cache_seq_copy";
  kq_status st = check_seq(cache, src_seq, fn);
  if (st == KQ_OK) st = check_seq(cache, dst_seq, fn);
  if (st != KQ_OK) return st;
  for (int32_t l = 0; l < cache->info.n_layers; l++)
    if (n_tokens < 0 || n_tokens > cache->layers[l].length[src_seq])
      return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                          "%s: %d tokens outside [0, length %d] of sequence %d in layer %d", fn,
                          (int)n_tokens, (int)cache->layers[l].length[src_seq], (int)src_seq,
                          (int)l);
  if (src_seq == dst_seq || n_tokens == 0) {
    truncate_seq(cache, dst_seq, n_tokens);
    return KQ_OK;
  }
  /* dst is emptied first: after a failure it holds nothing, never a mix. */
  truncate_seq(cache, dst_seq, 0);
  for (int32_t l = 0; l < cache->info.n_layers && st == KQ_OK; l++) {
    cache_layer *L = &cache->layers[l];
    st = copy_side(cache, L->k_cache, L->k_region, L->kseg, L->n_kseg, L->rank_k, src_seq, dst_seq,
                   n_tokens);
    if (st == KQ_OK)
      st = copy_side(cache, L->v_cache, L->v_region, L->vseg, L->n_vseg, L->rank_v, src_seq,
                     dst_seq, n_tokens);
    if (st != KQ_OK)
      return kq_error_prefix(st, "%s: device %s: layer %d, sequence %d to %d", fn,
                             cache->device->info.name, (int)l, (int)src_seq, (int)dst_seq);
  }
  for (int32_t l = 0; l < cache->info.n_layers; l++) cache->layers[l].length[dst_seq] = n_tokens;
  return KQ_OK;
}

int32_t kq_cache_length(const kq_cache *cache, int32_t layer) {
  return kq_cache_seq_length(cache, layer, 0);
}

int32_t kq_cache_seq_length(const kq_cache *cache, int32_t layer, int32_t seq) {
  if (!cache || layer < 0 || layer >= cache->info.n_layers || seq < 0 ||
      seq >= cache->params.n_seqs)
    return 0;
  return cache->layers[layer].length[seq];
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
