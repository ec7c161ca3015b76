/*
 * vk_ops.c — the compute ops of the backend ABI (project, attend, up):
 * argument checks, splitting into dispatches that respect the device limits
 * (binding range, workgroup counts, shared memory), and recording.
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "kq_push.h"
#include "vk_internal.h"
#include "vk_split.h"

/* The C and GLSL views of the typed push constants agree (kq_push.h: all
 * fields 32-bit scalars, std430 = C layout); both fit the 128 bytes every
 * device offers. */
_Static_assert(sizeof(kq_push_decode) == 13 * 4, "kq_push_decode layout");
_Static_assert(offsetof(kq_push_decode, gc) == 7 * 4, "kq_push_decode.gc offset");
_Static_assert(offsetof(kq_push_decode, scale_bits) == 10 * 4, "kq_push_decode.scale_bits");
_Static_assert(sizeof(kq_push_merge) == 7 * 4, "kq_push_merge layout");
_Static_assert(offsetof(kq_push_merge, n_chunks) == 5 * 4, "kq_push_merge.n_chunks offset");
_Static_assert(sizeof(kq_push_attend) == 14 * 4, "kq_push_attend layout");
_Static_assert(offsetof(kq_push_attend, chunk) == 13 * 4, "kq_push_attend.chunk offset");
_Static_assert(sizeof(kq_push_project) == 8 * 4, "kq_push_project layout");
_Static_assert(sizeof(kq_push_project_seg) == 8 * 4, "kq_push_project_seg layout");
_Static_assert(sizeof(kq_push_qprep) == 8 * 4, "kq_push_qprep layout");
_Static_assert(sizeof(kq_push_dequant) == 7 * 4, "kq_push_dequant layout");
_Static_assert(sizeof(kq_push_decode) <= VK_PUSH_BYTES && sizeof(kq_push_attend) <= VK_PUSH_BYTES,
               "push constants exceed the 128 bytes every device offers");

#define VK_WG 64u

static uint32_t cdiv(uint64_t a, uint64_t b) {
  return (uint32_t)((a + b - 1) / b);
}

/* Bytes of one latent element; the core sends F16 only to a device with
 * storageBuffer16BitAccess (kqsvd_backend.h, "What a backend may trust"). */
static uint32_t storage_elem(kq_storage s) {
  return s == KQ_STORAGE_F16 ? 2 : 4;
}

/* Binding of a whole small matrix set (projections), or the dummy when the
 * op runs with identity projections and the buffer is absent. */
static kq_status bind_opt(const kq_bdevice *d, const kq_buffer *b, size_t offset, size_t bytes,
                          bool use, vk_binding *out, uint32_t *elem, const char *what) {
  if (!use) {
    memset(out, 0, sizeof *out);
    *elem = 0;
    return KQ_OK;
  }
  return vk_bind_range(d, &b->mem, offset, bytes, 4, out, elem, what);
}

/* Specialization constants of a segment table (kq_seg.glsl): the count at
 * spec[at], then one word width | bits << 16 per segment. A plain list (v1
 * layout) is one float segment of the rank. */
static void seg_spec(uint32_t *spec, int at, int32_t n, const kq_segment *segs, int32_t rank) {
  if (kq_segments_plain(n, segs)) {
    spec[at] = 1;
    spec[at + 1] = (uint32_t)rank;
    return;
  }
  spec[at] = (uint32_t)n;
  for (int32_t i = 0; i < n; ++i)
    spec[at + 1 + i] = (uint32_t)segs[i].width | ((uint32_t)segs[i].bits << 16);
}

/* Quantized segments (the core checked the list) need 8-bit storage
 * buffers. */
static kq_status check_segments(const kq_bdevice *d, int32_t n, const kq_segment *segs,
                                const char *what) {
  if (kq_segments_plain(n, segs) || d->int8_storage) return KQ_OK;
  return VK_ERR(KQ_ERR_UNSUPPORTED,
                "%s: %s: quantized latent segments need storageBuffer8BitAccess", d->name, what);
}

/* Bytes of one latent buffer (segmented, or plain [groups, capacity,
 * rank]): one sequence's region. */
static uint64_t latent_total(int32_t n, const kq_segment *segs, int32_t rank, kq_storage storage,
                             uint64_t groups, uint64_t capacity) {
  const kq_segment plain = {.width = rank, .bits = KQ_SEG_FLOAT};
  if (kq_segments_plain(n, segs)) {
    n = 1;
    segs = &plain;
  }
  size_t total = 0;
  kq_segment_planes(segs, n, storage, groups, capacity, 0, NULL, NULL, &total);
  return total;
}

static VkDeviceSize align_up(VkDeviceSize v, VkDeviceSize a) {
  return (v + a - 1) / a * a;
}

/* Writes `bytes` of a host table into the scratch at `offset` inside the
 * frame: the table travels in the command buffer, like push constants (at
 * most 64 KiB per update), so there is no staging, allocation or wait. A
 * barrier orders it before the op's dispatches. */
static void record_table(vk_frame *f, const kq_bdevice *d, VkDeviceSize offset, const void *table,
                         VkDeviceSize bytes) {
  for (VkDeviceSize o = 0; o < bytes; o += 65536) {
    const VkDeviceSize n = bytes - o < 65536 ? bytes - o : 65536;
    vkCmdUpdateBuffer(f->cmd, d->scratch.buffer, d->scratch.base + offset + o, n,
                      (const char *)table + o);
  }
  vk_frame_barrier(f);
}

/* What a project grid over `seqs` and kv heads [h0, h0 + nh) writes, as
 * [lo, lo + bytes) from dst_offset: the rows written of a plain latent
 * buffer, the whole buffers of a segmented one (its planes are spread over
 * the region). One binding addresses it. */
typedef struct project_range {
  int32_t h0, nh;
  uint64_t lo, bytes;
} project_range;

static project_range project_span(const kq_project_op *op, const kq_op_seq *seqs, int32_t n_seqs,
                                  int32_t h0, int32_t nh) {
  const bool seg = !kq_segments_plain(op->n_segments, op->segments);
  const uint64_t cap = (uint64_t)op->capacity;
  const uint64_t rb = (uint64_t)op->rank * storage_elem(op->storage);
  const uint64_t total =
      latent_total(op->n_segments, op->segments, op->rank, op->storage, (uint64_t)op->n_heads, cap);
  uint64_t lo = UINT64_MAX, hi = 0;
  for (int32_t i = 0; i < n_seqs; ++i) {
    const uint64_t r = seqs[i].k_region, pos = (uint64_t)seqs[i].pos;
    const uint64_t a = seg ? r : r + ((uint64_t)h0 * cap + pos) * rb;
    const uint64_t b =
        seg ? r + total : r + ((uint64_t)(h0 + nh - 1) * cap + pos + (uint64_t)seqs[i].n_rows) * rb;
    if (a < lo) lo = a;
    if (b > hi) hi = b;
  }
  return (project_range){.h0 = h0, .nh = nh, .lo = lo, .bytes = hi - lo};
}

/* One grid over every source row of `seqs` and kv heads [h0, h0 + nh):
 * project.comp (plain float latents) or project_seg.comp (segmented, q8/q4;
 * always every head), workgroups over (row tile, kv head), a row table
 * (KQ_PROJECT_SEQ_WORDS per row, written with vkCmdUpdateBuffer) giving each
 * row its sequence's latent buffer and position. More dispatches only when
 * the source rows exceed one binding or the workgroup count. */
static kq_status project_grid(kq_bdevice *d, const kq_project_op *op, const kq_op_seq *seqs,
                              int32_t n_seqs, project_range span) {
  const VkPhysicalDeviceLimits *lim = &d->props.limits;
  const bool seg = !kq_segments_plain(op->n_segments, op->segments);
  const uint32_t elem = storage_elem(op->storage);
  const bool ident = (op->flags & (KQ_OP_IDENTITY_KEYS | KQ_OP_IDENTITY_VALUES)) != 0;
  const uint64_t D = (uint64_t)op->head_dim, R = (uint64_t)op->rank, Hs = (uint64_t)op->n_heads;
  const uint64_t N = (uint64_t)op->n_tokens, row = Hs * D * 4, max_bind = vk_max_binding(d);
  const uint64_t shared = lim->maxComputeSharedMemorySize, per_tt = (seg ? D + R : D) * 4;
  uint32_t tt = 16;
  while (tt > 1 && tt * per_tt > shared) tt /= 2;
  uint64_t tb = N;
  if (tb > max_bind / row) tb = max_bind / row;
  if (tb > (uint64_t)lim->maxComputeWorkGroupCount[0] * tt)
    tb = (uint64_t)lim->maxComputeWorkGroupCount[0] * tt;
  if (tb == 0 || tt * per_tt > shared || Hs > lim->maxComputeWorkGroupCount[1])
    return VK_ERR(KQ_ERR_UNSUPPORTED, "%s: project: head_dim %d too large for this device", d->name,
                  op->head_dim);
  const VkDeviceSize tbytes = N * KQ_PROJECT_SEQ_WORDS * 4;
  vk_binding b[4];
  uint32_t proj_off = 0, dst_base = 0, seq_off = 0;
  kq_status st = bind_opt(d, op->proj, op->proj_offset, Hs * D * R * 4, !ident, &b[1], &proj_off,
                          "projection");
  if (st == KQ_OK)
    st = vk_bind_range(d, &op->dst->mem, op->dst_offset + span.lo, span.bytes, seg ? 1 : elem,
                       &b[2], &dst_base, "latent cache");
  if (st != KQ_OK) return st;
  uint32_t *table = malloc((size_t)tbytes);
  if (!table) return VK_ERR(KQ_ERR_OUT_OF_MEMORY, "%s: project: row table", d->name);
  /* Word 0: the latent buffer's first byte (segmented) or element (plain)
   * from the binding's start; a plain binding may start inside the buffer,
   * so the word wraps modulo 2^32 like the shader's index arithmetic. */
  for (int32_t i = 0; i < n_seqs; ++i)
    for (int32_t r = 0; r < seqs[i].n_rows; ++r) {
      uint32_t *t = table + (size_t)(seqs[i].row + r) * KQ_PROJECT_SEQ_WORDS;
      const int64_t rel = (int64_t)seqs[i].k_region - (int64_t)span.lo;
      t[0] = dst_base + (uint32_t)(rel / (seg ? 1 : (int64_t)elem));
      t[1] = (uint32_t)(seqs[i].pos + r);
    }
  uint32_t spec[VK_SPEC_COUNT] = {VK_WG, (uint32_t)D, (uint32_t)R, tt, ident};
  vk_shader shader;
  if (seg) {
    seg_spec(spec, 16, op->n_segments, op->segments, op->rank);
    shader = op->storage == KQ_STORAGE_F16 ? VK_SHADER_PROJECT_SEG_F16 : VK_SHADER_PROJECT_SEG_F32;
  } else {
    /* 4 outputs per invocation when the projection rows allow 4-vector loads. */
    spec[5] = !ident && R % 4 == 0 && proj_off % 4 == 0;
    shader = op->storage == KQ_STORAGE_F16 ? VK_SHADER_PROJECT_F16 : VK_SHADER_PROJECT_F32;
  }
  vk_frame *f;
  if ((st = vk_frame_begin(d, &f)) != KQ_OK) {
    free(table);
    return st;
  }
  st = vk_frame_scratch(d, &f, tbytes);
  if (st == KQ_OK) st = vk_bind_own(d, &d->scratch, 0, tbytes, 4, &b[3], &seq_off, "row table");
  if (st == KQ_OK) record_table(f, d, 0, table, tbytes);
  free(table);
  for (uint64_t t0 = 0; t0 < N && st == KQ_OK; t0 += tb) {
    const uint64_t nb = N - t0 < tb ? N - t0 : tb;
    uint32_t src_off = 0;
    st = vk_bind_range(d, &op->src->mem, op->src_offset + t0 * row, nb * row, 4, &b[0], &src_off,
                       "project source");
    if (st != KQ_OK) break;
    if (seg) {
      kq_push_project_seg push = {.src_off = src_off,
                                  .proj_off = proj_off,
                                  .seq_off = seq_off,
                                  .row0 = (uint32_t)t0,
                                  .n_tokens = (uint32_t)nb,
                                  .n_heads = (uint32_t)Hs,
                                  .gc = (uint32_t)(Hs * (uint64_t)op->capacity),
                                  .capacity = (uint32_t)op->capacity};
      st = vk_dispatch(d, f, shader, spec, b, 4, &push, sizeof push, cdiv(nb, tt), (uint32_t)Hs, 1);
    } else {
      kq_push_project push = {.src_off = src_off,
                              .proj_off = proj_off,
                              .seq_off = seq_off,
                              .row0 = (uint32_t)t0,
                              .n_tokens = (uint32_t)nb,
                              .n_heads = (uint32_t)Hs,
                              .capacity = (uint32_t)op->capacity,
                              .head0 = (uint32_t)span.h0};
      st = vk_dispatch(d, f, shader, spec, b, 4, &push, sizeof push, cdiv(nb, tt),
                       (uint32_t)span.nh, 1);
    }
  }
  if (st != KQ_OK) {
    vk_frame_abort(d, f);
    return st;
  }
  return vk_frame_submit(d, f, false, "project");
}

/* --- RoPE tables --- */

/* The table of (theta, head_dim) covering n_pos positions. Tables are
 * allocated one by one and never moved or freed before device_close, so the
 * pointer stays valid after rope_lock is released while another thread adds
 * a table (the pointer array may be reallocated, the tables are not). */
static kq_status rope_table(kq_bdevice *d, float theta, uint32_t head_dim, uint32_t n_pos,
                            const vk_rope_table **out) {
  const uint32_t half = head_dim / 2, need_hi = cdiv(n_pos, 256);
  kq_status st = KQ_OK;
  pthread_mutex_lock(&d->rope_lock);
  for (int i = d->n_ropes - 1; i >= 0; --i)
    if (d->ropes[i]->theta == theta && d->ropes[i]->half_dim == half &&
        d->ropes[i]->n_hi >= need_hi) {
      *out = d->ropes[i];
      pthread_mutex_unlock(&d->rope_lock);
      return KQ_OK;
    }
  uint32_t n_hi = 16;
  while (n_hi < need_hi) n_hi *= 2;
  size_t n = (size_t)(256 + n_hi) * half * 2;
  float *tab = malloc(n * sizeof *tab);
  vk_rope_table *t = calloc(1, sizeof *t);
  vk_rope_table **grown = realloc(d->ropes, (size_t)(d->n_ropes + 1) * sizeof *grown);
  if (grown) d->ropes = grown;
  if (!tab || !t || !grown) {
    free(tab);
    free(t);
    pthread_mutex_unlock(&d->rope_lock);
    return VK_ERR(KQ_ERR_OUT_OF_MEMORY, "%s: RoPE table", d->name);
  }
  for (uint32_t j = 0; j < half; ++j) {
    double inv = kq_rope_inv_freq(theta, (int32_t)head_dim, (int32_t)j);
    for (uint32_t p = 0; p < 256 + n_hi; ++p) {
      double pos = p < 256 ? (double)p : 256.0 * (double)(p - 256);
      double a = pos * inv;
      tab[((size_t)p * half + j) * 2] = (float)cos(a);
      tab[((size_t)p * half + j) * 2 + 1] = (float)sin(a);
    }
  }
  *t = (vk_rope_table){.theta = theta, .half_dim = half, .n_hi = n_hi};
  st = vk_upload_new(d, tab, n * sizeof *tab, &t->buffer);
  free(tab);
  if (st == KQ_OK) {
    d->ropes[d->n_ropes++] = t;
    *out = t;
  } else {
    free(t);
  }
  pthread_mutex_unlock(&d->rope_lock);
  return st;
}

/* --- attention --- */

typedef struct attend_plan {
  uint32_t G;     /* query heads per dispatch: the group, or a divisor of it (MQA) */
  uint32_t n_sub; /* dispatches per kv head: group / G */
  uint32_t QK, QT, TK, CH, slots, ntg, vec4, elem;
  uint64_t window; /* cache positions per binding */
  uint64_t qbatch; /* queries per batch */
  bool pre, ident;
} attend_plan;

static uint64_t attend_shared(uint32_t R, uint32_t QK, uint32_t TK, uint32_t rk, bool pre) {
  return 4ull * (R * QK + R * TK + (pre ? TK * QK + TK * rk : 2) + 2 * R * VK_WG);
}

static kq_status plan_attend(const kq_bdevice *d, const kq_attend_op *op, uint64_t koff,
                             uint64_t voff, uint32_t cache_groups, attend_plan *p) {
  const VkPhysicalDeviceLimits *lim = &d->props.limits;
  const uint64_t H = (uint64_t)op->n_heads, rk = (uint64_t)op->rank_k, rv = (uint64_t)op->rank_v;
  const uint32_t group = (uint32_t)op->n_heads / cache_groups;
  p->G = group;
  p->pre = op->rope == KQ_ROPE_PRE;
  p->ident = (op->flags & KQ_OP_IDENTITY_KEYS) != 0;
  p->QK = p->pre ? (uint32_t)op->head_dim : (uint32_t)rk;
  /* 4-vector loads when the rows and the cache offsets allow them. */
  p->vec4 = !p->pre && rk % 4 == 0 && rv % 4 == 0 && koff % (4 * p->elem) == 0 &&
            voff % (4 * p->elem) == 0;
  const uint64_t eu = p->vec4 ? rv / 4 : rv;
  p->slots = eu >= VK_WG ? cdiv(eu, VK_WG) : 1;
  p->ntg = eu >= VK_WG ? 1 : (uint32_t)(VK_WG / eu);
  p->QT = op->n_queries == 1 ? 1 : (p->G >= 16 ? 1 : 16 / p->G);
  /* Key tile: wide (fewer barriers) when keys are read straight from the
   * cache; with PRE the rebuilt keys live in shared memory. */
  p->TK = 0;
  for (;;) {
    for (uint32_t tk = p->pre ? 64 : 4 * VK_WG; tk >= 8 && !p->TK; tk /= 2)
      if (attend_shared(p->QT * p->G, p->QK, tk, (uint32_t)rk, p->pre) <=
          lim->maxComputeSharedMemorySize)
        p->TK = tk;
    if (p->TK) break;
    if (p->QT > 1) {
      p->QT /= 2;
    } else if (p->G > 1) { /* many heads on one kv head (MQA): split the group */
      uint32_t g = p->G - 1;
      while (group % g) g--;
      p->G = g;
    } else {
      break;
    }
  }
  p->n_sub = group / p->G;
  if (!p->TK || VK_WG > lim->maxComputeWorkGroupInvocations ||
      VK_WG > lim->maxComputeWorkGroupSize[0])
    return VK_ERR(KQ_ERR_UNSUPPORTED,
                  "%s: attend: group of %u heads with head_dim %d exceeds shared memory "
                  "(%u bytes)",
                  d->name, p->G, op->head_dim, lim->maxComputeSharedMemorySize);
  /* Enough chunks to fill the device, chunks a multiple of the key tile. */
  uint64_t tiles = (uint64_t)cache_groups * p->n_sub * cdiv((uint64_t)op->n_queries, p->QT);
  uint64_t target = tiles >= 512 ? 1 : 512 / tiles;
  uint64_t ch = cdiv(cdiv((uint64_t)op->n_ctx, target), p->TK) * (uint64_t)p->TK;
  if (ch < 2ull * p->TK) ch = 2ull * p->TK;
  const uint64_t max_bind = vk_max_binding(d), wide = (rk > rv ? rk : rv) * p->elem;
  uint64_t nch = cdiv((uint64_t)op->n_ctx, ch);
  while (nch > lim->maxComputeWorkGroupCount[0]) {
    ch *= 2;
    nch = cdiv((uint64_t)op->n_ctx, ch);
  }
  p->CH = (uint32_t)ch;
  p->window = (max_bind / wide) / ch * ch;
  if (p->window == 0)
    return VK_ERR(KQ_ERR_UNSUPPORTED, "%s: attend: chunk exceeds maxStorageBufferRange", d->name);
  uint64_t qb = (uint64_t)op->n_queries;
  const uint64_t per_q[] = {H * p->QK * 4 + KQ_TILE_WORDS * 4, H * nch * p->ntg * (rv + 2) * 4,
                            H * rv * 4, H * (uint64_t)op->head_dim * 4};
  for (int i = 0; i < 4; ++i)
    if (qb > max_bind / per_q[i]) qb = max_bind / per_q[i];
  if (qb > lim->maxComputeWorkGroupCount[1]) qb = lim->maxComputeWorkGroupCount[1];
  if (qb == 0 || H > lim->maxComputeWorkGroupCount[0])
    return VK_ERR(KQ_ERR_UNSUPPORTED, "%s: attend: one query exceeds the device limits", d->name);
  p->qbatch = qb;
  return KQ_OK;
}

/* --- decode: attend_dec.comp + merge_up.comp --- */

typedef struct decode_plan {
  uint32_t rows, lpr, wg, npar;
  bool subgroups;
  /* 16-byte loads per side (attend_dec.comp KVEC / VVEC): 0 scalar, 1 one
   * float segment of whole 16-byte rows, 2 a segment table whose segments
   * all have whole 16-byte rows. */
  uint32_t kvec, vvec;
} decode_plan;

/* Which 16-byte loads the decode kernel may use: KQSVD_VULKAN_LOADS=vec4
 * (every side whose rows allow them, q8/q4 segment tables included),
 * =scalar (none), otherwise plain float sides only. The q8/q4 unit loads are
 * opt-in on every device type until a GPU has measured them: on Mesa
 * llvmpipe (the one device that ran them) a 4k decode with them did not
 * finish in minutes where byte loads take 0.12 s (docs/results.md). */
static void decode_loads(bool *plain, bool *segmented) {
  const char *env = getenv("KQSVD_VULKAN_LOADS");
  const bool vec4 = env && !strcmp(env, "vec4"), scalar = env && !strcmp(env, "scalar");
  *plain = !scalar;
  *segmented = vec4;
}

/* 16-byte units of one latent row of a segment table when every segment's
 * row is whole units (q8: 16 dims, q4: 32, float: 16 / elem), else 0. */
static uint64_t seg_units(int32_t n, const kq_segment *segs, uint64_t elem) {
  uint64_t units = 0;
  for (int32_t i = 0; i < n; ++i) {
    const uint64_t w = (uint64_t)segs[i].width;
    const uint64_t bytes = segs[i].bits == KQ_SEG_Q8   ? w
                           : segs[i].bits == KQ_SEG_Q4 ? w / 2
                                                       : w * elem;
    if (bytes % 16) return 0;
    units += bytes / 16;
  }
  return units;
}

static uint64_t decode_shared(uint32_t rows, uint32_t npar, uint32_t lpr, uint64_t D, uint64_t rk,
                              uint64_t rv, bool subgroups, bool pre) {
  return 4ull * (rows * D + rows * rk + (uint64_t)npar * rows * (rv + 2) +
                 (subgroups ? 0 : (uint64_t)npar * rows * lpr) + (pre ? (uint64_t)npar * rk : 0));
}

/* Shapes the decode grid; false when the shape does not fit (the caller
 * then takes the tiled path). */
static bool plan_decode(const kq_bdevice *d, const kq_attend_op *op, uint32_t cgroups,
                        decode_plan *p) {
  const VkPhysicalDeviceLimits *lim = &d->props.limits;
  const uint64_t D = (uint64_t)op->head_dim, rk = (uint64_t)op->rank_k, rv = (uint64_t)op->rank_v;
  const uint32_t H = (uint32_t)op->n_heads, G = H / cgroups;
  const bool joint = op->layout == KQ_LAYOUT_JOINT, pre = op->rope == KQ_ROPE_PRE;
  if ((pre && joint) || op->n_queries > VK_DECODE_MAX_QUERIES) return false;
  p->subgroups = d->subgroup_shuffle && d->subgroup_size >= 1 && d->subgroup_size <= 128;
  const uint32_t sg = p->subgroups ? d->subgroup_size : 1;
  /* A multiple of the subgroup size, at least 64 invocations. */
  p->wg = sg >= 64 ? sg : 64 / sg * sg;
  if (p->wg > lim->maxComputeWorkGroupInvocations || p->wg > lim->maxComputeWorkGroupSize[0])
    return false;
  /* Lanes per row: a power of two, at most one subgroup, so that each lane
   * gets at least one 16-byte unit of a vectorised side or 4 dims of a
   * scalar one (PRE keys: 2 RoPE pairs of the rebuilt key). */
  const uint64_t elem = op->storage == KQ_STORAGE_F16 ? 2 : 4;
  bool plain16, seg16;
  decode_loads(&plain16, &seg16);
  const bool kplain = kq_segments_plain(op->n_key_segments, op->key_segments);
  const bool vplain = kq_segments_plain(op->n_value_segments, op->value_segments);
  const uint64_t ku = kplain ? 0 : seg_units(op->n_key_segments, op->key_segments, elem);
  const uint64_t vu = vplain ? 0 : seg_units(op->n_value_segments, op->value_segments, elem);
  p->kvec = pre ? 0 : kplain && plain16 && rk * elem % 16 == 0 ? 1 : !kplain && seg16 && ku ? 2 : 0;
  p->vvec = vplain && plain16 && rv * elem % 16 == 0 ? 1 : !vplain && seg16 && vu ? 2 : 0;
  const uint64_t kslots = pre            ? D / 4
                          : p->kvec == 1 ? rk * elem / 16
                          : p->kvec == 2 ? ku
                                         : rk / 4,
                 vslots = p->vvec == 1   ? rv * elem / 16
                          : p->vvec == 2 ? vu
                                         : rv / 4;
  const uint64_t widest = kslots > vslots ? kslots : vslots;
  uint32_t lpr = 1;
  while (lpr * 2 <= (p->subgroups ? sg : 32u) && lpr * 2 <= widest) lpr *= 2;
  for (p->rows = joint ? 1 : (G < 8 ? G : 8); p->rows >= 1; --p->rows) {
    if (G % p->rows) continue;
    for (p->lpr = lpr; p->lpr <= (p->subgroups ? sg : p->wg); p->lpr *= 2) {
      p->npar = p->wg / p->lpr;
      if (p->npar >= 1 && decode_shared(p->rows, p->npar, p->lpr, D, rk, rv, p->subgroups, pre) <=
                              lim->maxComputeSharedMemorySize)
        goto fits;
    }
  }
  return false;
fits:
  /* Chunks are per sequence (attend_decode). */
  return H / p->rows <= lim->maxComputeWorkGroupCount[1] &&
         (uint32_t)op->n_queries <= lim->maxComputeWorkGroupCount[2] &&
         H <= lim->maxComputeWorkGroupCount[0];
}

/* Bytes of one latent buffer (one sequence's region) of a side. */
static uint64_t latent_bytes(const kq_attend_op *op, int values, uint32_t cgroups) {
  return values ? latent_total(op->n_value_segments, op->value_segments, op->rank_v, op->storage,
                               cgroups, (uint64_t)op->capacity)
                : latent_total(op->n_key_segments, op->key_segments, op->rank_k, op->storage,
                               cgroups, (uint64_t)op->capacity);
}

/* What one decode grid reads of a side: the bytes from the lowest region of
 * the op's sequences to the end of the highest (the kernel addresses
 * regions from one binding). */
typedef struct latent_span {
  uint64_t lo, bytes;
} latent_span;

static latent_span side_span(const kq_attend_op *op, const kq_op_seq *seqs, int32_t n, int values,
                             uint32_t cgroups) {
  uint64_t lo = UINT64_MAX, hi = 0;
  for (int32_t i = 0; i < n; ++i) {
    const uint64_t r = values ? seqs[i].v_region : seqs[i].k_region;
    if (r < lo) lo = r;
    if (r > hi) hi = r;
  }
  latent_span sp = {lo, hi - lo + latent_bytes(op, values, cgroups)};
  return sp;
}

/* Two dispatches for every sequence of the op at once: attend_dec.comp over
 * (chunk, row group, query row), q·B folded in, latents read in place from
 * their segments; then merge_up.comp over (head, query row), chunks merged,
 * Eᵀ applied when op->value_up is set. A row table in the scratch buffer
 * (kq_push.h, KQ_SEQ_WORDS; written by vkCmdUpdateBuffer in the frame)
 * gives each query row its sequence's regions, position and chunking; a sequence's chunk count
 * follows its n_ctx (vk_decode_seq_chunks). `seqs` has n_seqs entries (one built from the scalar
 * fields for an op without a table). RoPE pre (per-head) rebuilds and rotates the keys inside
 * attend_dec.comp: still two dispatches. */
static kq_status attend_decode(kq_bdevice *d, const kq_attend_op *op, const kq_op_seq *seqs,
                               int32_t n_seqs, uint32_t cgroups, const decode_plan *pl) {
  const VkPhysicalDeviceLimits *lim = &d->props.limits;
  const uint64_t H = (uint64_t)op->n_heads, Hk = (uint64_t)op->n_kv_heads;
  const uint64_t D = (uint64_t)op->head_dim, rk = (uint64_t)op->rank_k, rv = (uint64_t)op->rank_v;
  const uint64_t nq = (uint64_t)op->n_queries, cap = (uint64_t)op->capacity;
  const bool ident_k = (op->flags & KQ_OP_IDENTITY_KEYS) != 0;
  const bool ident_v = (op->flags & KQ_OP_IDENTITY_VALUES) != 0;
  const bool up = op->value_up != NULL && !ident_v;
  const bool f16 = op->storage == KQ_STORAGE_F16, pre = op->rope == KQ_ROPE_PRE;
  const latent_span ks = side_span(op, seqs, n_seqs, 0, cgroups);
  const latent_span vs = side_span(op, seqs, n_seqs, 1, cgroups);
  /* Chunks per sequence, from its share of the grid's positions. */
  uint64_t positions = 0;
  for (int32_t i = 0; i < n_seqs; ++i) positions += (uint64_t)seqs[i].n_rows * seqs[i].n_ctx;
  uint32_t max_chunks = 1;
  for (int32_t i = 0; i < n_seqs; ++i) {
    uint32_t n = vk_decode_seq_chunks((uint64_t)seqs[i].n_ctx, positions, (uint32_t)(H / pl->rows),
                                      d->compute_units);
    if (n > lim->maxComputeWorkGroupCount[0]) n = lim->maxComputeWorkGroupCount[0];
    if (n > max_chunks) max_chunks = n;
  }
  uint32_t aspec[VK_SPEC_COUNT] = {0};
  aspec[KQ_SPEC_WG] = pl->wg;
  aspec[KQ_SPEC_D] = (uint32_t)D;
  aspec[KQ_SPEC_RK] = (uint32_t)rk;
  aspec[KQ_SPEC_RV] = (uint32_t)rv;
  aspec[KQ_SPEC_ROWS] = pl->rows;
  aspec[KQ_SPEC_LPR] = pl->lpr;
  aspec[KQ_SPEC_IDENT] = ident_k;
  aspec[KQ_SPEC_PRE] = pre;
  aspec[KQ_SPEC_HALVES] = pre && op->rope_layout == KQ_ROPE_HALVES;
  seg_spec(aspec, KQ_SPEC_KEY_SEGS, op->n_key_segments, op->key_segments, op->rank_k);
  seg_spec(aspec, KQ_SPEC_VALUE_SEGS, op->n_value_segments, op->value_segments, op->rank_v);
  uint32_t mspec[VK_SPEC_COUNT] = {0};
  mspec[KQ_SPEC_WG] = 64;
  mspec[KQ_SPEC_D] = (uint32_t)D;
  mspec[KQ_SPEC_RV] = (uint32_t)rv;
  mspec[KQ_SPEC_IDENT] = ident_v;
  mspec[KQ_SPEC_UP] = up;
  const vk_shader ashader = pl->subgroups
                                ? (f16 ? VK_SHADER_ATTEND_DEC_F16_SG : VK_SHADER_ATTEND_DEC_F32_SG)
                                : (f16 ? VK_SHADER_ATTEND_DEC_F16 : VK_SHADER_ATTEND_DEC_F32);
  kq_push_decode pa = {.n_heads = (uint32_t)H,
                       .b_group = (uint32_t)(H / Hk),
                       .c_group = (uint32_t)(H / cgroups),
                       .gc = (uint32_t)(cgroups * cap),
                       .capacity = (uint32_t)cap,
                       .n_chunks = max_chunks,
                       .rope_hi = pre ? 256u * (uint32_t)(D / 2) * 2u : 0u};
  float scale = op->scale;
  memcpy(&pa.scale_bits, &scale, 4);
  vk_binding ab[8], mb[4];
  uint32_t k_base = 0, v_base = 0;
  kq_status st =
      vk_bind_range(d, &op->q->mem, op->q_offset, nq * H * D * 4, 4, &ab[0], &pa.q_off, "queries");
  if (st == KQ_OK)
    st = bind_opt(d, op->query_down, op->query_down_offset, Hk * D * rk * 4, !ident_k, &ab[1],
                  &pa.b_off, "query_down");
  if (st == KQ_OK)
    st = vk_bind_range(d, &op->k_cache->mem, op->k_cache_offset + ks.lo, ks.bytes, 1, &ab[2],
                       &k_base, "key cache");
  if (st == KQ_OK)
    st = vk_bind_range(d, &op->v_cache->mem, op->v_cache_offset + vs.lo, vs.bytes, 1, &ab[3],
                       &v_base, "value cache");
  /* PRE: key_down and the device's RoPE table covering every position of
   * the op (made once, when a longer context first comes). */
  if (st == KQ_OK)
    st = bind_opt(d, op->key_down, op->key_down_offset, Hk * D * rk * 4, pre && !ident_k, &ab[6],
                  &pa.a_off, "key_down");
  memset(&ab[7], 0, sizeof ab[7]);
  if (st == KQ_OK && pre) {
    uint64_t n_pos = 1;
    for (int32_t i = 0; i < n_seqs; ++i)
      if ((uint64_t)seqs[i].n_ctx > n_pos) n_pos = (uint64_t)seqs[i].n_ctx;
    const vk_rope_table *rope = NULL;
    uint32_t rope_elem = 0;
    st = rope_table(d, op->rope_theta, (uint32_t)D, (uint32_t)n_pos, &rope);
    if (st == KQ_OK)
      st = vk_bind_own(d, &rope->buffer->mem, 0, rope->buffer->mem.size, 4, &ab[7], &rope_elem,
                       "rope table");
  }
  /* Regions are KQ_PLANE_ALIGN multiples: every row's base keeps the
   * binding's 16-byte alignment. */
  aspec[KQ_SPEC_KVEC] = k_base % 16 == 0 ? pl->kvec : 0;
  aspec[KQ_SPEC_VVEC] = v_base % 16 == 0 ? pl->vvec : 0;
  kq_push_merge pm = {
      .n_heads = (uint32_t)H, .e_group = (uint32_t)(H / Hk), .n_chunks = max_chunks};
  const uint64_t out_row = up ? D : rv;
  if (st == KQ_OK)
    st = bind_opt(d, op->value_up, op->value_up_offset, Hk * D * rv * 4, up, &mb[1], &pm.e_off,
                  "value_up");
  if (st == KQ_OK)
    st = vk_bind_range(d, &op->out->mem, op->out_offset, nq * H * out_row * 4, 4, &mb[2],
                       &pm.out_off, "output");
  if (st != KQ_OK) return st;
  const VkDeviceSize pbytes = nq * H * max_chunks * (rv + 2) * 4;
  const VkDeviceSize tbytes = nq * KQ_SEQ_WORDS * 4;
  const VkDeviceSize align =
      lim->minStorageBufferOffsetAlignment > 16 ? lim->minStorageBufferOffsetAlignment : 16;
  const VkDeviceSize toff = align_up(pbytes, align);
  uint32_t *table = malloc((size_t)tbytes);
  if (!table) return VK_ERR(KQ_ERR_OUT_OF_MEMORY, "vulkan:%d: attend: row table", d->index);
  vk_frame *f;
  if ((st = vk_frame_begin(d, &f)) != KQ_OK) {
    free(table);
    return st;
  }
  st = vk_frame_scratch(d, &f, toff + tbytes);
  if (st == KQ_OK) st = vk_bind_own(d, &d->scratch, 0, pbytes, 4, &ab[4], &pa.part_off, "partials");
  if (st == KQ_OK)
    st = vk_bind_own(d, &d->scratch, toff, tbytes, 4, &ab[5], &pa.seq_off, "row table");
  if (st == KQ_OK) {
    uint32_t *t = table;
    for (int32_t i = 0; i < n_seqs; ++i) {
      const kq_op_seq *e = &seqs[i];
      uint32_t n = vk_decode_seq_chunks((uint64_t)e->n_ctx, positions, (uint32_t)(H / pl->rows),
                                        d->compute_units);
      if (n > lim->maxComputeWorkGroupCount[0]) n = lim->maxComputeWorkGroupCount[0];
      const uint32_t chunk = vk_decode_chunk_len((uint64_t)e->n_ctx, n);
      n = cdiv((uint64_t)e->n_ctx, chunk);
      for (int32_t r = 0; r < e->n_rows; ++r, t += KQ_SEQ_WORDS) {
        t[0] = k_base + (uint32_t)(e->k_region - ks.lo);
        t[1] = v_base + (uint32_t)(e->v_region - vs.lo);
        t[2] = (uint32_t)(e->n_ctx - e->n_rows + r);
        t[3] = chunk;
        t[4] = n;
      }
    }
    record_table(f, d, toff, table, tbytes);
  }
  free(table);
  mb[0] = ab[4];
  mb[3] = ab[5];
  pm.part_off = pa.part_off;
  pm.seq_off = pa.seq_off;
  if (st == KQ_OK)
    st = vk_dispatch(d, f, ashader, aspec, ab, 8, &pa, sizeof pa, max_chunks,
                     (uint32_t)(H / pl->rows), (uint32_t)nq);
  vk_frame_barrier(f);
  if (st == KQ_OK)
    st = vk_dispatch(d, f, VK_SHADER_MERGE_UP, mspec, mb, 4, &pm, sizeof pm, (uint32_t)H,
                     (uint32_t)nq, 1);
  if (st != KQ_OK) {
    vk_frame_abort(d, f);
    return st;
  }
  return vk_frame_submit(d, f, false, "attend");
}

/* The decode grid takes the op when every sequence is a decode (at most
 * VK_DECODE_MAX_QUERIES queries), the shape fits the kernels and both sides'
 * regions fit one binding each. */
static bool decode_fits(const kq_bdevice *d, const kq_attend_op *op, const kq_op_seq *seqs,
                        int32_t n_seqs, uint32_t cgroups, decode_plan *pl) {
  if (getenv("KQSVD_VULKAN_NO_DECODE_KERNEL")) return false;
  kq_attend_op shape = *op;
  shape.n_queries = 1;
  for (int32_t i = 0; i < n_seqs; ++i)
    if (seqs[i].n_rows > shape.n_queries) shape.n_queries = seqs[i].n_rows;
  const uint64_t max = vk_max_binding(d);
  return plan_decode(d, &shape, cgroups, pl) &&
         (uint64_t)op->n_queries <= d->props.limits.maxComputeWorkGroupCount[2] &&
         side_span(op, seqs, n_seqs, 0, cgroups).bytes <= max &&
         side_span(op, seqs, n_seqs, 1, cgroups).bytes <= max;
}

/* A tiled (prefill) attend over `seqs` (n_seqs entries: rows, n_ctx, regions
 * from the op's cache offsets): qprep.comp; attend.comp over (chunk, query
 * tile) per kv head (or part of its group) and cache window; reduce.comp;
 * up.comp for a fused up-projection. Segmented caches are dequantized to F32
 * rows first (dequant.comp, one grid per side over every sequence). A query
 * tile never straddles sequences: its table (KQ_TILE_WORDS) and the
 * queries' positions are written per query batch with vkCmdUpdateBuffer, so
 * the dispatches of a batch of sequences are those of one sequence. */
typedef struct tiled_shape {
  attend_plan p;
  bool seg;                   /* dequantized to F32 rows in scratch */
  latent_span ks, vs;         /* the sequences' regions of each side */
  uint64_t n_total, ctx0_max; /* seg: dequantized positions per group; last sequence's first */
} tiled_shape;

static kq_status shape_tiled(const kq_bdevice *d, const kq_attend_op *op, const kq_op_seq *seqs,
                             int32_t n_seqs, uint32_t cgroups, tiled_shape *s) {
  memset(s, 0, sizeof *s);
  s->seg = !kq_segments_plain(op->n_key_segments, op->key_segments) ||
           !kq_segments_plain(op->n_value_segments, op->value_segments);
  s->p.elem = s->seg ? 4 : storage_elem(op->storage);
  s->ks = side_span(op, seqs, n_seqs, 0, cgroups);
  s->vs = side_span(op, seqs, n_seqs, 1, cgroups);
  for (int32_t i = 0; i < n_seqs; ++i) {
    s->ctx0_max = s->n_total;
    s->n_total += (uint64_t)seqs[i].n_ctx;
  }
  return plan_attend(d, op, s->seg ? 0 : op->k_cache_offset, s->seg ? 0 : op->v_cache_offset,
                     cgroups, &s->p);
}

/* Bytes of a key (values: 1) binding of the tiled path from the first
 * sequence's rows of a kv head to the last sequence's. */
static uint64_t tiled_lead(const kq_attend_op *op, const tiled_shape *s, int values,
                           uint32_t cgroups) {
  if (s->seg) return s->ctx0_max * (uint64_t)(values ? op->rank_v : op->rank_k) * 4;
  return (values ? s->vs : s->ks).bytes - latent_bytes(op, values, cgroups);
}

/* Many sequences take one tiled grid when their queries make one query
 * batch and every side's rows fit one binding (one cache window). */
static bool tiled_batch_fits(const kq_bdevice *d, const kq_attend_op *op, int32_t n_seqs,
                             uint32_t cgroups, const tiled_shape *s) {
  if (n_seqs == 1) return true;
  const uint64_t max = vk_max_binding(d), n_ctx = (uint64_t)op->n_ctx;
  if ((uint64_t)op->n_queries > s->p.qbatch || n_ctx > s->p.window) return false;
  if (tiled_lead(op, s, 0, cgroups) + n_ctx * (uint64_t)op->rank_k * s->p.elem > max ||
      tiled_lead(op, s, 1, cgroups) + n_ctx * (uint64_t)op->rank_v * s->p.elem > max)
    return false;
  return !s->seg || (s->ks.bytes <= max && s->vs.bytes <= max &&
                     (uint64_t)n_seqs <= d->props.limits.maxComputeWorkGroupCount[2]);
}

/* Dequantizes positions [0, n_ctx) of every sequence's buffer of one side
 * (the sequence table at `table_off` of the scratch, KQ_DEQUANT_SEQ_WORDS
 * per sequence, word `base_word` its buffer in the `span` binding) into F32
 * rows [groups, n_total, rank] at `out_offset` of the scratch. */
static kq_status record_dequant(kq_bdevice *d, vk_frame *f, const vk_binding *span, int32_t n_seg,
                                const kq_segment *segs, kq_storage storage, uint64_t groups,
                                uint64_t capacity, uint64_t n_total, uint64_t max_ctx,
                                int32_t n_seqs, uint32_t rank, VkDeviceSize out_offset,
                                VkDeviceSize table_off, uint32_t base_word) {
  uint32_t spec[VK_SPEC_COUNT] = {VK_WG, 0, rank};
  seg_spec(spec, 16, n_seg, segs, (int32_t)rank);
  vk_binding b[3] = {*span, {0}, {0}};
  kq_push_dequant u = {.gc = (uint32_t)(groups * capacity),
                       .capacity = (uint32_t)capacity,
                       .n_total = (uint32_t)n_total,
                       .groups = (uint32_t)groups,
                       .base_word = base_word};
  kq_status st = vk_bind_own(d, &d->scratch, out_offset, groups * n_total * rank * 4, 4, &b[1],
                             &u.out_off, "dequantized latents");
  if (st == KQ_OK)
    st = vk_bind_own(d, &d->scratch, table_off, (uint64_t)n_seqs * KQ_DEQUANT_SEQ_WORDS * 4, 4,
                     &b[2], &u.seq_off, "sequence table");
  if (st != KQ_OK) return st;
  uint64_t gx = cdiv(max_ctx * rank, VK_WG);
  if (gx > d->props.limits.maxComputeWorkGroupCount[0])
    gx = d->props.limits.maxComputeWorkGroupCount[0];
  const vk_shader sh = storage == KQ_STORAGE_F16 ? VK_SHADER_DEQUANT_F16 : VK_SHADER_DEQUANT_F32;
  return vk_dispatch(d, f, sh, spec, b, 3, &u, sizeof u, (uint32_t)gx, (uint32_t)groups,
                     (uint32_t)n_seqs);
}

/* The query tiles and positions of rows [j0, j0 + nqb) of the op; returns
 * the tiles, *out_kctx the positions they reach. */
static uint32_t build_tiles(const kq_op_seq *seqs, int32_t n_seqs, const tiled_shape *s,
                            uint64_t rk, uint64_t rv, uint64_t j0, uint64_t nqb, uint32_t *tiles,
                            uint32_t *pos, uint64_t *out_kctx) {
  uint32_t n = 0;
  uint64_t kctx = 0, ctx0 = 0;
  for (int32_t i = 0; i < n_seqs; ++i) {
    const kq_op_seq *e = &seqs[i];
    const uint64_t a = (uint64_t)e->row, b = a + (uint64_t)e->n_rows;
    const uint64_t r0 = a > j0 ? a : j0, r1 = b < j0 + nqb ? b : j0 + nqb;
    const uint64_t p0 = (uint64_t)(e->n_ctx - e->n_rows); /* position of row a */
    for (uint64_t r = r0; r < r1; ++r) pos[r - j0] = (uint32_t)(p0 + r - a);
    for (uint64_t r = r0; r < r1; r += s->p.QT, ++n) {
      uint32_t *t = tiles + (size_t)n * KQ_TILE_WORDS;
      const uint64_t nt = r1 - r < s->p.QT ? r1 - r : s->p.QT;
      t[0] = (uint32_t)(s->seg ? ctx0 * rk : (e->k_region - s->ks.lo) / s->p.elem);
      t[1] = (uint32_t)(s->seg ? ctx0 * rv : (e->v_region - s->vs.lo) / s->p.elem);
      t[2] = (uint32_t)(r - j0);
      t[3] = (uint32_t)nt;
      t[4] = (uint32_t)(p0 + r - a);
      if (p0 + r - a + nt > kctx) kctx = p0 + r - a + nt;
    }
    ctx0 += (uint64_t)e->n_ctx;
  }
  *out_kctx = kctx;
  return n;
}

static kq_status attend_tiled(kq_bdevice *d, const kq_attend_op *op, const kq_op_seq *seqs,
                              int32_t n_seqs, uint32_t cgroups, const tiled_shape *s) {
  const attend_plan *p = &s->p;
  const bool seg = s->seg;
  kq_status st;
  const uint64_t H = (uint64_t)op->n_heads, Hk = (uint64_t)op->n_kv_heads;
  const uint64_t D = (uint64_t)op->head_dim, rk = (uint64_t)op->rank_k, rv = (uint64_t)op->rank_v;
  const uint64_t cap = (uint64_t)op->capacity, nq = (uint64_t)op->n_queries;
  const vk_rope_table *rope = NULL;
  if (p->pre &&
      (st = rope_table(d, op->rope_theta, (uint32_t)D, (uint32_t)op->n_ctx, &rope)) != KQ_OK)
    return st;
  const bool halves = op->rope_layout == KQ_ROPE_HALVES;
  const VkDeviceSize align = d->props.limits.minStorageBufferOffsetAlignment > 16
                                 ? d->props.limits.minStorageBufferOffsetAlignment
                                 : 16;
  /* Scratch: prepared queries and the tile table (one binding of attend),
   * query positions, the dequant table, partials, dequantized latents, the
   * latent output of a fused up-projection. */
  const uint64_t nch_max = cdiv((uint64_t)op->n_ctx, p->CH);
  const VkDeviceSize qbytes = p->qbatch * H * p->QK * 4;
  const VkDeviceSize tbytes = p->qbatch * KQ_TILE_WORDS * 4;
  const VkDeviceSize posoff = align_up(qbytes + tbytes, align);
  const VkDeviceSize dqoff = align_up(posoff + p->qbatch * 4, align);
  const VkDeviceSize poff =
      align_up(dqoff + (seg ? (uint64_t)n_seqs * KQ_DEQUANT_SEQ_WORDS * 4 : 0), align);
  const VkDeviceSize pbytes = p->qbatch * H * nch_max * p->ntg * (rv + 2) * 4;
  const VkDeviceSize kdeq = align_up(poff + pbytes, align);
  const VkDeviceSize vdeq = align_up(kdeq + cgroups * s->n_total * rk * 4, align);
  const VkDeviceSize seg_end = seg ? vdeq + cgroups * s->n_total * rv * 4 : poff + pbytes;
  /* Fused up-projection: the latent output goes to scratch, up.comp writes out. */
  const bool up = op->value_up != NULL;
  const VkDeviceSize latoff = align_up(seg_end, align);
  const VkDeviceSize scratch_bytes = up ? latoff + p->qbatch * H * rv * 4 : seg_end;

  const bool ident = p->ident;
  const uint32_t qspec[VK_SPEC_COUNT] = {VK_WG, (uint32_t)D, (uint32_t)rk, p->pre, halves, ident};
  const uint32_t aspec[VK_SPEC_COUNT] = {VK_WG,    (uint32_t)D, (uint32_t)rk, (uint32_t)rv, p->G,
                                         p->QT,    p->TK,       p->pre,       halves,       ident,
                                         p->slots, p->QK,       p->vec4,      p->ntg};
  const uint32_t rspec[VK_SPEC_COUNT] = {VK_WG, (uint32_t)rv};
  const bool f16 = op->storage == KQ_STORAGE_F16 && !seg;
  const vk_shader ashader = d->subgroup_arith
                                ? (f16 ? VK_SHADER_ATTEND_F16_SG : VK_SHADER_ATTEND_F32_SG)
                                : (f16 ? VK_SHADER_ATTEND_F16 : VK_SHADER_ATTEND_F32);
  const uint32_t hi_off = 256u * (uint32_t)(D / 2) * 2u;
  float scale = op->scale;
  uint32_t scale_bits;
  memcpy(&scale_bits, &scale, 4);

  /* Host tables: tiles and positions of one query batch, the dequant table. */
  const size_t twords = (size_t)p->qbatch * (KQ_TILE_WORDS + 1);
  const size_t dwords = seg ? (size_t)n_seqs * KQ_DEQUANT_SEQ_WORDS : 0;
  uint32_t *tiles = malloc((twords + dwords) * sizeof *tiles);
  if (!tiles) return VK_ERR(KQ_ERR_OUT_OF_MEMORY, "%s: attend: query tile table", d->name);
  uint32_t *pos = tiles + (size_t)p->qbatch * KQ_TILE_WORDS, *dq = tiles + twords;

  vk_frame *f;
  if ((st = vk_frame_begin(d, &f)) != KQ_OK) {
    free(tiles);
    return st;
  }
  st = vk_frame_scratch(d, &f, scratch_bytes);
  vk_mem *scratch = &d->scratch;
  const vk_mem *kmem = seg ? scratch : &op->k_cache->mem;
  const vk_mem *vmem = seg ? scratch : &op->v_cache->mem;
  /* Each side's rows: from the first sequence's (kv head 0, position 0),
   * `lead` bytes to the last sequence's, `kcap` positions per group. */
  const uint64_t koff = seg ? kdeq : op->k_cache_offset + s->ks.lo;
  const uint64_t voff = seg ? vdeq : op->v_cache_offset + s->vs.lo;
  const uint64_t klead = tiled_lead(op, s, 0, cgroups), vlead = tiled_lead(op, s, 1, cgroups);
  const uint64_t kcap = seg ? s->n_total : cap;
  if (seg && st == KQ_OK) {
    vk_binding kspan, vspan;
    uint32_t kb = 0, vb = 0;
    st = vk_bind_range(d, &op->k_cache->mem, op->k_cache_offset + s->ks.lo, s->ks.bytes, 1, &kspan,
                       &kb, "key cache");
    if (st == KQ_OK)
      st = vk_bind_range(d, &op->v_cache->mem, op->v_cache_offset + s->vs.lo, s->vs.bytes, 1,
                         &vspan, &vb, "value cache");
    uint64_t ctx0 = 0, max_ctx = 0;
    for (int32_t i = 0; i < n_seqs; ++i) {
      uint32_t *t = dq + (size_t)i * KQ_DEQUANT_SEQ_WORDS;
      t[0] = kb + (uint32_t)(seqs[i].k_region - s->ks.lo);
      t[1] = vb + (uint32_t)(seqs[i].v_region - s->vs.lo);
      t[2] = (uint32_t)ctx0;
      t[3] = (uint32_t)seqs[i].n_ctx;
      ctx0 += (uint64_t)seqs[i].n_ctx;
      if ((uint64_t)seqs[i].n_ctx > max_ctx) max_ctx = (uint64_t)seqs[i].n_ctx;
    }
    if (st == KQ_OK) {
      record_table(f, d, dqoff, dq, dwords * 4);
      st = record_dequant(d, f, &kspan, op->n_key_segments, op->key_segments, op->storage, cgroups,
                          cap, s->n_total, max_ctx, n_seqs, (uint32_t)rk, kdeq, dqoff, 0);
    }
    if (st == KQ_OK)
      st = record_dequant(d, f, &vspan, op->n_value_segments, op->value_segments, op->storage,
                          cgroups, cap, s->n_total, max_ctx, n_seqs, (uint32_t)rv, vdeq, dqoff, 1);
    vk_frame_barrier(f);
  }
  for (uint64_t j0 = 0; j0 < nq && st == KQ_OK; j0 += p->qbatch) {
    const uint64_t nqb = nq - j0 < p->qbatch ? nq - j0 : p->qbatch;
    uint64_t kctx = 0;
    const uint32_t ntiles = build_tiles(seqs, n_seqs, s, rk, rv, j0, nqb, tiles, pos, &kctx);
    const uint64_t nch = cdiv(kctx, p->CH);
    record_table(f, d, qbytes, tiles, (VkDeviceSize)ntiles * KQ_TILE_WORDS * 4);
    record_table(f, d, posoff, pos, nqb * 4);
    vk_binding b[VK_MAX_BINDINGS] = {0};
    kq_push_qprep u = {0};
    uint32_t e_rope = 0, e_b = 0, e_a = 0, e_q = 0, e_part = 0, e_qt = 0;
    /* 1. prepared queries q B (or rotated q B Aᵀ) into scratch */
    st = vk_bind_range(d, &op->q->mem, op->q_offset + j0 * H * D * 4, nqb * H * D * 4, 4, &b[0],
                       &u.q_off, "queries");
    if (st == KQ_OK)
      st = bind_opt(d, op->query_down, op->query_down_offset, Hk * D * rk * 4, !ident, &b[1], &e_b,
                    "query_down");
    if (st == KQ_OK)
      st = bind_opt(d, op->key_down, op->key_down_offset, Hk * D * rk * 4, !ident && p->pre, &b[2],
                    &e_a, "key_down");
    if (st == KQ_OK)
      st = vk_bind_own(d, scratch, 0, nqb * H * p->QK * 4, 4, &b[3], &e_q, "query scratch");
    if (st == KQ_OK && rope)
      st = vk_bind_own(d, &rope->buffer->mem, 0, rope->buffer->mem.size, 4, &b[4], &e_rope,
                       "rope table");
    if (st == KQ_OK)
      st = vk_bind_own(d, scratch, posoff, nqb * 4, 4, &b[5], &u.pos_off, "query positions");
    if (st != KQ_OK) break;
    u.b_off = e_b;
    u.a_off = e_a;
    u.out_off = e_q;
    u.n_heads = (uint32_t)H;
    u.group = (uint32_t)(H / Hk); /* B of query head h: kv head h / group */
    u.rope_hi = hi_off;
    st = vk_dispatch(d, f, VK_SHADER_QPREP, qspec, b, 6, &u, sizeof u, (uint32_t)H, (uint32_t)nqb,
                     1);
    vk_frame_barrier(f);
    /* 2. partial attention per kv head and cache window */
    vk_binding ab[VK_MAX_BINDINGS] = {{0}, {0}, {0}, {0}, b[4], b[1]};
    if (st == KQ_OK)
      st = vk_bind_own(d, scratch, 0, qbytes + (VkDeviceSize)ntiles * KQ_TILE_WORDS * 4, 4, &ab[0],
                       &e_qt, "query scratch and tiles");
    if (st == KQ_OK)
      st = vk_bind_own(d, scratch, poff, nqb * H * nch * p->ntg * (rv + 2) * 4, 4, &ab[3], &e_part,
                       "partials");
    for (uint64_t kvs = 0; kvs < cgroups * p->n_sub && st == KQ_OK; ++kvs) {
      const uint64_t kv = kvs / p->n_sub, head0 = kv * (H / cgroups) + (kvs % p->n_sub) * p->G;
      /* Windows only for one sequence (tiled_batch_fits); klead, vlead
       * are the bytes from the first sequence's rows to the last's. */
      for (uint64_t w0 = 0; w0 < kctx && st == KQ_OK; w0 += p->window) {
        const uint64_t wl = kctx - w0 < p->window ? kctx - w0 : p->window;
        const uint64_t kl = n_seqs > 1 ? klead : 0, vl = n_seqs > 1 ? vlead : 0;
        kq_push_attend v = {0};
        st = vk_bind_range(d, kmem, koff + (kv * kcap + w0) * rk * p->elem, kl + wl * rk * p->elem,
                           p->elem, &ab[1], &v.k_off, "key cache");
        if (st == KQ_OK)
          st = vk_bind_range(d, vmem, voff + (kv * kcap + w0) * rv * p->elem,
                             vl + wl * rv * p->elem, p->elem, &ab[2], &v.v_off, "value cache");
        v.q_off = e_qt;
        v.tile_off = e_qt + (uint32_t)(qbytes / 4);
        v.part_off = e_part;
        v.b_off = e_b + (uint32_t)(kv * D * rk);
        v.n_heads = (uint32_t)H;
        v.head0 = (uint32_t)head0;
        v.chunk0 = (uint32_t)(w0 / p->CH);
        v.tok_base = (uint32_t)w0;
        v.n_parts = (uint32_t)(nch * p->ntg);
        v.rope_hi = hi_off;
        v.scale_bits = scale_bits;
        v.chunk = p->CH;
        if (st == KQ_OK)
          st = vk_dispatch(d, f, ashader, aspec, ab, 6, &v, sizeof v, cdiv(wl, p->CH), ntiles, 1);
      }
    }
    vk_frame_barrier(f);
    /* 3. merge the chunks into the latent output */
    vk_binding rb[2] = {ab[3], {0}};
    kq_push_reduce w = {0};
    if (st == KQ_OK && up)
      st =
          vk_bind_own(d, scratch, latoff, nqb * H * rv * 4, 4, &rb[1], &w.out_off, "latent output");
    else if (st == KQ_OK)
      st = vk_bind_range(d, &op->out->mem, op->out_offset + j0 * H * rv * 4, nqb * H * rv * 4, 4,
                         &rb[1], &w.out_off, "output");
    w.part_off = e_part;
    w.n_parts = (uint32_t)(nch * p->ntg);
    w.n_heads = (uint32_t)H;
    if (st == KQ_OK)
      st = vk_dispatch(d, f, VK_SHADER_REDUCE, rspec, rb, 2, &w, sizeof w, (uint32_t)H,
                       (uint32_t)nqb, 1);
    vk_frame_barrier(f);
    if (st == KQ_OK && up) { /* 4. fused up-projection: out = latent · Eᵀ */
      const uint32_t uspec[VK_SPEC_COUNT] = {VK_WG, (uint32_t)D, (uint32_t)rv, 0};
      vk_binding ub[3] = {rb[1], {0}, {0}};
      kq_push_up x = {0};
      x.lat_off = w.out_off;
      st = vk_bind_range(d, &op->value_up->mem, op->value_up_offset, Hk * D * rv * 4, 4, &ub[1],
                         &x.e_off, "value_up");
      if (st == KQ_OK)
        st = vk_bind_range(d, &op->out->mem, op->out_offset + j0 * H * D * 4, nqb * H * D * 4, 4,
                           &ub[2], &x.out_off, "output");
      x.n_heads = (uint32_t)H;
      x.group = (uint32_t)(H / Hk);
      if (st == KQ_OK)
        st = vk_dispatch(d, f, VK_SHADER_UP, uspec, ub, 3, &x, sizeof x, (uint32_t)H, (uint32_t)nqb,
                         1);
      vk_frame_barrier(f);
    }
  }
  free(tiles);
  if (st != KQ_OK) {
    vk_frame_abort(d, f);
    return st;
  }
  return vk_frame_submit(d, f, false, "attend");
}

/* One grid over every sequence and head (project_grid) when what it writes
 * fits one binding; else one grid per sequence, and for a plain latent
 * buffer larger than a binding one per sequence, kv head and as many tokens
 * as a binding holds. All in one frame. */
kq_status vk_op_project(kq_bdevice *d, const kq_project_op *op) {
  kq_status st = check_segments(d, op->n_segments, op->segments, "project latent segments");
  if (st != KQ_OK) return st;
  const bool seg = !kq_segments_plain(op->n_segments, op->segments);
  const uint64_t max = vk_max_binding(d);
  const kq_op_seq one = {.n_rows = op->n_tokens, .pos = op->pos};
  const kq_op_seq *seqs = op->seqs ? op->seqs : &one;
  const int32_t n = op->seqs ? op->n_seqs : 1;
  project_range all = project_span(op, seqs, n, 0, op->n_heads);
  if (all.bytes <= max) return project_grid(d, op, seqs, n, all);
  for (int32_t i = 0; i < n && st == KQ_OK; ++i) {
    const kq_project_op s = kq_project_op_seq(op, i);
    const kq_op_seq e = {.n_rows = s.n_tokens, .pos = s.pos};
    all = project_span(&s, &e, 1, 0, s.n_heads);
    if (seg || all.bytes <= max) {
      st = project_grid(d, &s, &e, 1, all); /* a segmented buffer over a binding: the error */
      continue;
    }
    /* Rows of one kv head: as many tokens as one binding holds. */
    const uint64_t rb = (uint64_t)s.rank * storage_elem(s.storage);
    const uint64_t src_row = (uint64_t)s.n_heads * (uint64_t)s.head_dim * 4;
    const int32_t tb = max / rb < (uint64_t)s.n_tokens ? (int32_t)(max / rb) : s.n_tokens;
    for (int32_t h = 0; h < s.n_heads && st == KQ_OK; ++h)
      for (int32_t t0 = 0; t0 < s.n_tokens && st == KQ_OK; t0 += tb > 0 ? tb : s.n_tokens) {
        kq_project_op part = s;
        part.n_tokens = tb > 0 && s.n_tokens - t0 > tb ? tb : s.n_tokens - t0;
        part.pos = s.pos + t0;
        part.src_offset = s.src_offset + (uint64_t)t0 * src_row;
        const kq_op_seq pe = {.n_rows = part.n_tokens, .pos = part.pos};
        st = project_grid(d, &part, &pe, 1, project_span(&part, &pe, 1, h, 1));
      }
  }
  return st;
}

/* Decode shapes take the decode grid (attend_decode), the others the tiled
 * one (attend_tiled), each over every sequence of the op at once; a batch
 * that does not fit one tiled grid is attended sequence by sequence, in one
 * frame. */
kq_status vk_op_attend(kq_bdevice *d, const kq_attend_op *op) {
  kq_status st;
  if ((st = check_segments(d, op->n_key_segments, op->key_segments, "attend key segments")) !=
          KQ_OK ||
      (st = check_segments(d, op->n_value_segments, op->value_segments, "attend value segments")) !=
          KQ_OK)
    return st;
  const uint32_t cgroups = op->layout == KQ_LAYOUT_JOINT ? 1u : (uint32_t)op->n_kv_heads;
  const kq_op_seq one = {.n_rows = op->n_queries, .n_ctx = op->n_ctx};
  const kq_op_seq *seqs = op->seqs ? op->seqs : &one;
  const int32_t n = op->seqs ? op->n_seqs : 1;
  decode_plan dp;
  if (decode_fits(d, op, seqs, n, cgroups, &dp)) return attend_decode(d, op, seqs, n, cgroups, &dp);
  tiled_shape ts;
  if ((st = shape_tiled(d, op, seqs, n, cgroups, &ts)) != KQ_OK) return st;
  if (tiled_batch_fits(d, op, n, cgroups, &ts)) return attend_tiled(d, op, seqs, n, cgroups, &ts);
  for (int32_t i = 0; i < n && st == KQ_OK; ++i) {
    const kq_attend_op s = kq_attend_op_seq(op, i);
    const kq_op_seq e = {.n_rows = s.n_queries, .n_ctx = s.n_ctx};
    if (decode_fits(d, &s, &e, 1, cgroups, &dp)) {
      st = attend_decode(d, &s, &e, 1, cgroups, &dp);
      continue;
    }
    if ((st = shape_tiled(d, &s, &e, 1, cgroups, &ts)) == KQ_OK)
      st = attend_tiled(d, &s, &e, 1, cgroups, &ts);
  }
  return st;
}

kq_status vk_op_up(kq_bdevice *d, const kq_up_op *op) {
  const bool ident = (op->flags & KQ_OP_IDENTITY_VALUES) != 0;
  const uint64_t H = (uint64_t)op->n_heads, D = (uint64_t)op->head_dim, rv = (uint64_t)op->rank_v;
  const uint64_t max_bind = vk_max_binding(d);
  uint64_t qb = (uint64_t)op->n_queries;
  if (qb > max_bind / (H * D * 4)) qb = max_bind / (H * D * 4);
  if (qb > d->props.limits.maxComputeWorkGroupCount[1])
    qb = d->props.limits.maxComputeWorkGroupCount[1];
  if (qb == 0 || H > d->props.limits.maxComputeWorkGroupCount[0])
    return VK_ERR(KQ_ERR_UNSUPPORTED, "%s: up: one query exceeds the device limits", d->name);
  const uint32_t spec[VK_SPEC_COUNT] = {VK_WG, (uint32_t)D, (uint32_t)rv, ident};
  vk_frame *f;
  kq_status st = vk_frame_begin(d, &f);
  if (st != KQ_OK) return st;
  for (uint64_t j0 = 0; j0 < (uint64_t)op->n_queries && st == KQ_OK; j0 += qb) {
    const uint64_t n = (uint64_t)op->n_queries - j0 < qb ? (uint64_t)op->n_queries - j0 : qb;
    vk_binding b[3];
    kq_push_up u = {0};
    st = vk_bind_range(d, &op->latent->mem, op->latent_offset + j0 * H * rv * 4, n * H * rv * 4, 4,
                       &b[0], &u.lat_off, "latent output");
    if (st == KQ_OK)
      st = bind_opt(d, op->value_up, op->value_up_offset, (uint64_t)op->n_kv_heads * D * rv * 4,
                    !ident, &b[1], &u.e_off, "value_up");
    if (st == KQ_OK)
      st = vk_bind_range(d, &op->out->mem, op->out_offset + j0 * H * D * 4, n * H * D * 4, 4, &b[2],
                         &u.out_off, "output");
    u.n_heads = (uint32_t)H;
    u.group = (uint32_t)(op->n_heads / op->n_kv_heads);
    if (st == KQ_OK)
      st = vk_dispatch(d, f, VK_SHADER_UP, spec, b, 3, &u, sizeof u, (uint32_t)H, (uint32_t)n, 1);
  }
  if (st != KQ_OK) {
    vk_frame_abort(d, f);
    return st;
  }
  return vk_frame_submit(d, f, false, "up");
}
