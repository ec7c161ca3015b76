/*
 * vk_ops.c — the compute ops of the backend ABI (project, attend, up):
 * argument checks, splitting into dispatches that respect the device limits
 * (binding range, workgroup counts, shared memory), and recording.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vk_internal.h"

#define VK_WG 64u

static uint32_t cdiv(uint64_t a, uint64_t b) {
  return (uint32_t)((a + b - 1) / b);
}

static bool rank_ok(int32_t r, int32_t d) {
  return r >= 1 && r <= d;
}

static kq_status check_storage(const kq_bdevice *d, kq_storage s, uint32_t *elem) {
  if (s == KQ_STORAGE_F32) {
    *elem = 4;
    return KQ_OK;
  }
  if (s == KQ_STORAGE_F16) {
    if (!d->fp16_storage)
      return VK_ERR(KQ_ERR_UNSUPPORTED, "vulkan:%d: F16 storage needs storageBuffer16BitAccess",
                    d->index);
    *elem = 2;
    return KQ_OK;
  }
  return VK_ERR(KQ_ERR_INVALID_ARGUMENT, "vulkan:%d: unknown storage type %d", d->index, (int)s);
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
  if (!b) return VK_ERR(KQ_ERR_INVALID_ARGUMENT, "vulkan:%d: %s buffer missing", d->index, what);
  return vk_bind_range(d, &b->mem, offset, bytes, 4, out, elem, what);
}

kq_status vk_op_project(kq_bdevice *d, const kq_project_op *op) {
  uint32_t elem = 0;
  kq_status st = check_storage(d, op->storage, &elem);
  if (st != KQ_OK) return st;
  if (!kq_segments_plain(op->n_segments, op->segments))
    return VK_ERR(KQ_ERR_UNSUPPORTED,
                  "vulkan:%d: project: quantized latent segments (q8/q4) are not implemented "
                  "in the Vulkan backend yet",
                  d->index);
  const bool ident = (op->flags & (KQ_OP_IDENTITY_KEYS | KQ_OP_IDENTITY_VALUES)) != 0;
  if (op->n_tokens < 0 || op->n_heads < 1 || op->head_dim < 1 || !rank_ok(op->rank, op->head_dim) ||
      (ident && op->rank != op->head_dim) || op->pos < 0 || op->capacity < 1 ||
      (int64_t)op->pos + op->n_tokens > op->capacity || op->n_seqs > 1 || !op->src || !op->dst)
    return VK_ERR(KQ_ERR_INVALID_ARGUMENT,
                  "vulkan:%d: project: bad shape (tokens %d, heads %d, dim %d, rank %d, pos %d, "
                  "capacity %d)",
                  d->index, op->n_tokens, op->n_heads, op->head_dim, op->rank, op->pos,
                  op->capacity);
  if (op->n_tokens == 0) return KQ_OK;
  const uint64_t D = (uint64_t)op->head_dim, R = (uint64_t)op->rank, Hs = (uint64_t)op->n_heads;
  const uint64_t row = Hs * D * 4, max_bind = vk_max_binding(d);
  uint32_t tt = 16;
  while (tt > 1 && tt * D * 4 > d->props.limits.maxComputeSharedMemorySize) tt /= 2;
  uint64_t tb = (uint64_t)op->n_tokens;
  if (tb > max_bind / row) tb = max_bind / row;
  if (tb > max_bind / (R * elem)) tb = max_bind / (R * elem);
  if (tb > (uint64_t)d->props.limits.maxComputeWorkGroupCount[0] * tt)
    tb = (uint64_t)d->props.limits.maxComputeWorkGroupCount[0] * tt;
  if (tb == 0 || tt * D * 4 > d->props.limits.maxComputeSharedMemorySize)
    return VK_ERR(KQ_ERR_UNSUPPORTED, "vulkan:%d: project: head_dim %d too large for this device",
                  d->index, op->head_dim);
  /* 4 outputs per invocation when the projection rows allow 4-vector loads. */
  const uint32_t vec4 = !ident && R % 4 == 0 && op->proj_offset % 16 == 0;
  const uint32_t spec[VK_SPEC_COUNT] = {VK_WG, (uint32_t)D, (uint32_t)R, tt, ident, vec4};
  const vk_shader shader =
      op->storage == KQ_STORAGE_F16 ? VK_SHADER_PROJECT_F16 : VK_SHADER_PROJECT_F32;
  vk_frame *f;
  if ((st = vk_frame_begin(d, &f)) != KQ_OK) return st;
  for (uint64_t t0 = 0; t0 < (uint64_t)op->n_tokens && st == KQ_OK; t0 += tb) {
    uint64_t nb = (uint64_t)op->n_tokens - t0 < tb ? (uint64_t)op->n_tokens - t0 : tb;
    vk_binding b[3];
    uint32_t push[VK_PUSH_WORDS] = {0};
    st = vk_bind_range(d, &op->src->mem, op->src_offset + t0 * row, nb * row, 4, &b[0], &push[0],
                       "project source");
    for (uint64_t h = 0; h < Hs && st == KQ_OK; ++h) {
      st = bind_opt(d, op->proj, op->proj_offset + h * D * R * 4, D * R * 4, !ident, &b[1],
                    &push[1], "projection");
      if (st == KQ_OK)
        st = vk_bind_range(d, &op->dst->mem,
                           op->dst_offset +
                               ((h * (uint64_t)op->capacity) + (uint64_t)op->pos + t0) * R * elem,
                           nb * R * elem, elem, &b[2], &push[2], "cache");
      push[3] = (uint32_t)nb;
      push[4] = (uint32_t)h;
      push[5] = (uint32_t)Hs;
      if (st == KQ_OK) st = vk_dispatch(d, f, shader, spec, b, 3, push, cdiv(nb, tt), 1, 1);
    }
  }
  if (st != KQ_OK) {
    vk_frame_abort(d, f);
    return st;
  }
  return vk_frame_submit(d, f, false, "project");
}

/* --- RoPE tables --- */

static kq_status rope_table(kq_bdevice *d, float theta, uint32_t head_dim, uint32_t n_pos,
                            const vk_rope_table **out) {
  const uint32_t half = head_dim / 2, need_hi = cdiv(n_pos, 256);
  kq_status st = KQ_OK;
  pthread_mutex_lock(&d->rope_lock);
  for (int i = d->n_ropes - 1; i >= 0; --i)
    if (d->ropes[i].theta == theta && d->ropes[i].half_dim == half && d->ropes[i].n_hi >= need_hi) {
      *out = &d->ropes[i];
      pthread_mutex_unlock(&d->rope_lock);
      return KQ_OK;
    }
  uint32_t n_hi = 16;
  while (n_hi < need_hi) n_hi *= 2;
  size_t n = (size_t)(256 + n_hi) * half * 2;
  float *tab = malloc(n * sizeof *tab);
  vk_rope_table *grown = realloc(d->ropes, (size_t)(d->n_ropes + 1) * sizeof *grown);
  if (grown) d->ropes = grown;
  if (!tab || !grown) {
    free(tab);
    pthread_mutex_unlock(&d->rope_lock);
    return VK_ERR(KQ_ERR_OUT_OF_MEMORY, "vulkan:%d: RoPE table", d->index);
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
  vk_rope_table t = {.theta = theta, .half_dim = half, .n_hi = n_hi};
  st = vk_upload_new(d, tab, n * sizeof *tab, &t.buffer);
  free(tab);
  if (st == KQ_OK) {
    d->ropes[d->n_ropes] = t;
    *out = &d->ropes[d->n_ropes++];
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

static kq_status plan_attend(const kq_bdevice *d, const kq_attend_op *op, attend_plan *p) {
  const VkPhysicalDeviceLimits *lim = &d->props.limits;
  const uint64_t H = (uint64_t)op->n_heads, rk = (uint64_t)op->rank_k, rv = (uint64_t)op->rank_v;
  const uint32_t group = (uint32_t)(op->n_heads / op->n_kv_heads);
  p->G = group;
  p->pre = op->rope == KQ_ROPE_PRE;
  p->ident = (op->flags & KQ_OP_IDENTITY_KEYS) != 0;
  p->QK = p->pre ? (uint32_t)op->head_dim : (uint32_t)rk;
  /* 4-vector loads when the rows and the cache offsets allow them. */
  p->vec4 = !p->pre && rk % 4 == 0 && rv % 4 == 0 && op->k_cache_offset % (4 * p->elem) == 0 &&
            op->v_cache_offset % (4 * p->elem) == 0;
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
                  "vulkan:%d: attend: group of %u heads with head_dim %d exceeds shared memory "
                  "(%u bytes)",
                  d->index, p->G, op->head_dim, lim->maxComputeSharedMemorySize);
  /* Enough chunks to fill the device, chunks a multiple of the key tile. */
  uint64_t tiles = (uint64_t)op->n_kv_heads * p->n_sub * cdiv((uint64_t)op->n_queries, p->QT);
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
    return VK_ERR(KQ_ERR_UNSUPPORTED, "vulkan:%d: attend: chunk exceeds maxStorageBufferRange",
                  d->index);
  uint64_t qb = (uint64_t)op->n_queries;
  const uint64_t per_q[] = {H * p->QK * 4, H * nch * p->ntg * (rv + 2) * 4, H * rv * 4,
                            H * (uint64_t)op->head_dim * 4};
  for (int i = 0; i < 4; ++i)
    if (qb > max_bind / per_q[i]) qb = max_bind / per_q[i];
  if (qb > lim->maxComputeWorkGroupCount[1]) qb = lim->maxComputeWorkGroupCount[1];
  if (qb == 0 || H > lim->maxComputeWorkGroupCount[0])
    return VK_ERR(KQ_ERR_UNSUPPORTED, "vulkan:%d: attend: one query exceeds the device limits",
                  d->index);
  p->qbatch = qb;
  return KQ_OK;
}

static VkDeviceSize align_up(VkDeviceSize v, VkDeviceSize a) {
  return (v + a - 1) / a * a;
}

kq_status vk_op_attend(kq_bdevice *d, const kq_attend_op *op) {
  attend_plan p = {0};
  kq_status st = check_storage(d, op->storage, &p.elem);
  if (st != KQ_OK) return st;
  if (!kq_segments_plain(op->n_key_segments, op->key_segments) ||
      !kq_segments_plain(op->n_value_segments, op->value_segments) ||
      op->layout != KQ_LAYOUT_PER_HEAD)
    return VK_ERR(KQ_ERR_UNSUPPORTED,
                  "vulkan:%d: attend: %s are not implemented in the Vulkan backend yet", d->index,
                  op->layout != KQ_LAYOUT_PER_HEAD ? "joint-layout latents"
                                                   : "quantized latent segments (q8/q4)");
  const bool ident = (op->flags & KQ_OP_IDENTITY_KEYS) != 0;
  if (op->n_queries < 1 || op->n_ctx < op->n_queries || op->n_ctx > op->capacity ||
      op->n_heads < 1 || op->n_kv_heads < 1 || op->n_heads % op->n_kv_heads || op->head_dim < 1 ||
      !rank_ok(op->rank_k, op->head_dim) || !rank_ok(op->rank_v, op->head_dim) ||
      (ident && op->rank_k != op->head_dim) || op->n_seqs > 1 || !op->q || !op->k_cache ||
      !op->v_cache || !op->out || (op->rope == KQ_ROPE_PRE && op->head_dim % 2))
    return VK_ERR(KQ_ERR_INVALID_ARGUMENT,
                  "vulkan:%d: attend: bad shape (queries %d, ctx %d, capacity %d, heads %d/%d, "
                  "dim %d, ranks %d/%d)",
                  d->index, op->n_queries, op->n_ctx, op->capacity, op->n_heads, op->n_kv_heads,
                  op->head_dim, op->rank_k, op->rank_v);
  if ((st = plan_attend(d, op, &p)) != KQ_OK) return st;
  const uint64_t H = (uint64_t)op->n_heads, Hk = (uint64_t)op->n_kv_heads;
  const uint64_t D = (uint64_t)op->head_dim, rk = (uint64_t)op->rank_k, rv = (uint64_t)op->rank_v;
  const uint64_t cap = (uint64_t)op->capacity, nq = (uint64_t)op->n_queries;
  const vk_rope_table *rope = NULL;
  if (p.pre &&
      (st = rope_table(d, op->rope_theta, (uint32_t)D, (uint32_t)op->n_ctx, &rope)) != KQ_OK)
    return st;
  const bool halves = op->rope_layout == KQ_ROPE_HALVES;
  const VkDeviceSize align = d->props.limits.minStorageBufferOffsetAlignment > 16
                                 ? d->props.limits.minStorageBufferOffsetAlignment
                                 : 16;
  const uint64_t nch_max = cdiv((uint64_t)op->n_ctx, p.CH);
  const VkDeviceSize qbytes = p.qbatch * H * p.QK * 4;
  const VkDeviceSize poff = align_up(qbytes, align);
  const VkDeviceSize pbytes = p.qbatch * H * nch_max * p.ntg * (rv + 2) * 4;

  const uint32_t qspec[VK_SPEC_COUNT] = {VK_WG, (uint32_t)D, (uint32_t)rk, p.pre, halves, ident};
  const uint32_t aspec[VK_SPEC_COUNT] = {VK_WG,   (uint32_t)D, (uint32_t)rk, (uint32_t)rv, p.G,
                                         p.QT,    p.TK,        p.pre,        halves,       ident,
                                         p.slots, p.QK,        p.vec4,       p.ntg};
  const uint32_t rspec[VK_SPEC_COUNT] = {VK_WG, (uint32_t)rv};
  const bool f16 = op->storage == KQ_STORAGE_F16;
  const vk_shader ashader = d->subgroup_arith
                                ? (f16 ? VK_SHADER_ATTEND_F16_SG : VK_SHADER_ATTEND_F32_SG)
                                : (f16 ? VK_SHADER_ATTEND_F16 : VK_SHADER_ATTEND_F32);
  const uint32_t hi_off = 256u * (uint32_t)(D / 2) * 2u;
  float scale = op->scale;
  uint32_t scale_bits;
  memcpy(&scale_bits, &scale, 4);

  vk_frame *f;
  if ((st = vk_frame_begin(d, &f)) != KQ_OK) return st;
  st = vk_frame_scratch(d, f, poff + pbytes);
  vk_mem *scratch = &f->scratch;
  for (uint64_t j0 = 0; j0 < nq && st == KQ_OK; j0 += p.qbatch) {
    const uint64_t nqb = nq - j0 < p.qbatch ? nq - j0 : p.qbatch;
    const uint64_t kctx = (uint64_t)op->n_ctx - nq + j0 + nqb;
    const uint64_t nch = cdiv(kctx, p.CH);
    vk_binding b[VK_MAX_BINDINGS] = {0};
    uint32_t u[VK_PUSH_WORDS] = {0}, e_rope = 0, e_b = 0, e_a = 0, e_q = 0, e_part = 0;
    /* 1. prepared queries q B (or rotated q B Aᵀ) into scratch */
    st = vk_bind_range(d, &op->q->mem, op->q_offset + j0 * H * D * 4, nqb * H * D * 4, 4, &b[0],
                       &u[0], "queries");
    if (st == KQ_OK)
      st = bind_opt(d, op->query_down, op->query_down_offset, Hk * D * rk * 4, !ident, &b[1], &e_b,
                    "query_down");
    if (st == KQ_OK)
      st = bind_opt(d, op->key_down, op->key_down_offset, Hk * D * rk * 4, !ident && p.pre, &b[2],
                    &e_a, "key_down");
    if (st == KQ_OK)
      st = vk_bind_range(d, scratch, 0, nqb * H * p.QK * 4, 4, &b[3], &e_q, "query scratch");
    if (st == KQ_OK && rope)
      st = vk_bind_range(d, &rope->buffer->mem, 0, rope->buffer->mem.size, 4, &b[4], &e_rope,
                         "rope table");
    if (st != KQ_OK) break;
    u[1] = e_b;
    u[2] = e_a;
    u[3] = e_q;
    u[4] = (uint32_t)H;
    u[5] = p.G;
    u[6] = (uint32_t)(kctx - nqb);
    u[7] = hi_off;
    st = vk_dispatch(d, f, VK_SHADER_QPREP, qspec, b, 5, u, (uint32_t)H, (uint32_t)nqb, 1);
    vk_frame_barrier(f);
    /* 2. partial attention per kv head and cache window */
    vk_binding ab[VK_MAX_BINDINGS] = {b[3], {0}, {0}, {0}, b[4], b[1]};
    if (st == KQ_OK)
      st = vk_bind_range(d, scratch, poff, nqb * H * nch * p.ntg * (rv + 2) * 4, 4, &ab[3], &e_part,
                         "partials");
    for (uint64_t kvs = 0; kvs < Hk * p.n_sub && st == KQ_OK; ++kvs) {
      const uint64_t kv = kvs / p.n_sub, head0 = kv * (H / Hk) + (kvs % p.n_sub) * p.G;
      for (uint64_t w0 = 0; w0 < kctx && st == KQ_OK; w0 += p.window) {
        const uint64_t wl = kctx - w0 < p.window ? kctx - w0 : p.window;
        uint32_t v[VK_PUSH_WORDS] = {0};
        st = vk_bind_range(d, &op->k_cache->mem, op->k_cache_offset + (kv * cap + w0) * rk * p.elem,
                           wl * rk * p.elem, p.elem, &ab[1], &v[1], "key cache");
        if (st == KQ_OK)
          st = vk_bind_range(d, &op->v_cache->mem,
                             op->v_cache_offset + (kv * cap + w0) * rv * p.elem, wl * rv * p.elem,
                             p.elem, &ab[2], &v[2], "value cache");
        v[0] = e_q;
        v[3] = e_part;
        v[4] = e_b + (uint32_t)(kv * D * rk);
        v[5] = (uint32_t)kctx;
        v[6] = (uint32_t)nqb;
        v[7] = (uint32_t)H;
        v[8] = (uint32_t)head0;
        v[9] = (uint32_t)(w0 / p.CH);
        v[10] = (uint32_t)w0;
        v[11] = (uint32_t)(nch * p.ntg);
        v[12] = hi_off;
        v[13] = scale_bits;
        v[14] = p.CH;
        if (st == KQ_OK)
          st = vk_dispatch(d, f, ashader, aspec, ab, 6, v, cdiv(wl, p.CH), cdiv(nqb, p.QT), 1);
      }
    }
    vk_frame_barrier(f);
    /* 3. merge the chunks into the latent output */
    vk_binding rb[2] = {ab[3], {0}};
    uint32_t w[VK_PUSH_WORDS] = {0};
    if (st == KQ_OK)
      st = vk_bind_range(d, &op->out->mem, op->out_offset + j0 * H * rv * 4, nqb * H * rv * 4, 4,
                         &rb[1], &w[1], "output");
    w[0] = e_part;
    w[2] = (uint32_t)(nch * p.ntg);
    w[3] = (uint32_t)H;
    if (st == KQ_OK)
      st = vk_dispatch(d, f, VK_SHADER_REDUCE, rspec, rb, 2, w, (uint32_t)H, (uint32_t)nqb, 1);
    vk_frame_barrier(f);
  }
  if (st != KQ_OK) {
    vk_frame_abort(d, f);
    return st;
  }
  return vk_frame_submit(d, f, false, "attend");
}

kq_status vk_op_up(kq_bdevice *d, const kq_up_op *op) {
  const bool ident = (op->flags & KQ_OP_IDENTITY_VALUES) != 0;
  if (op->n_queries < 0 || op->n_heads < 1 || op->n_kv_heads < 1 || op->n_heads % op->n_kv_heads ||
      op->head_dim < 1 || !rank_ok(op->rank_v, op->head_dim) ||
      (ident && op->rank_v != op->head_dim) || op->n_seqs > 1 || !op->latent || !op->out)
    return VK_ERR(KQ_ERR_INVALID_ARGUMENT,
                  "vulkan:%d: up: bad shape (queries %d, heads %d/%d, dim %d, rank %d)", d->index,
                  op->n_queries, op->n_heads, op->n_kv_heads, op->head_dim, op->rank_v);
  if (op->n_queries == 0) return KQ_OK;
  const uint64_t H = (uint64_t)op->n_heads, D = (uint64_t)op->head_dim, rv = (uint64_t)op->rank_v;
  const uint64_t max_bind = vk_max_binding(d);
  uint64_t qb = (uint64_t)op->n_queries;
  if (qb > max_bind / (H * D * 4)) qb = max_bind / (H * D * 4);
  if (qb > d->props.limits.maxComputeWorkGroupCount[1])
    qb = d->props.limits.maxComputeWorkGroupCount[1];
  if (qb == 0 || H > d->props.limits.maxComputeWorkGroupCount[0])
    return VK_ERR(KQ_ERR_UNSUPPORTED, "vulkan:%d: up: one query exceeds the device limits",
                  d->index);
  const uint32_t spec[VK_SPEC_COUNT] = {VK_WG, (uint32_t)D, (uint32_t)rv, ident};
  vk_frame *f;
  kq_status st = vk_frame_begin(d, &f);
  if (st != KQ_OK) return st;
  for (uint64_t j0 = 0; j0 < (uint64_t)op->n_queries && st == KQ_OK; j0 += qb) {
    const uint64_t n = (uint64_t)op->n_queries - j0 < qb ? (uint64_t)op->n_queries - j0 : qb;
    vk_binding b[3];
    uint32_t u[VK_PUSH_WORDS] = {0};
    st = vk_bind_range(d, &op->latent->mem, op->latent_offset + j0 * H * rv * 4, n * H * rv * 4, 4,
                       &b[0], &u[0], "latent output");
    if (st == KQ_OK)
      st = bind_opt(d, op->value_up, op->value_up_offset, (uint64_t)op->n_kv_heads * D * rv * 4,
                    !ident, &b[1], &u[1], "value_up");
    if (st == KQ_OK)
      st = vk_bind_range(d, &op->out->mem, op->out_offset + j0 * H * D * 4, n * H * D * 4, 4, &b[2],
                         &u[2], "output");
    u[3] = (uint32_t)H;
    u[4] = (uint32_t)(op->n_heads / op->n_kv_heads);
    if (st == KQ_OK)
      st = vk_dispatch(d, f, VK_SHADER_UP, spec, b, 3, u, (uint32_t)H, (uint32_t)n, 1);
  }
  if (st != KQ_OK) {
    vk_frame_abort(d, f);
    return st;
  }
  return vk_frame_submit(d, f, false, "up");
}
