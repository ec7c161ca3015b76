/*
 * vk_ops_tiled.c — the tiled (prefill) path of attend, and its plan (query
 * and key tiles, chunks, cache windows and query batches that fit the
 * device's shared memory, workgroup counts and binding range). Over the op's
 * sequences (rows, n_ctx, regions from the op's cache offsets): qprep.comp;
 * attend.comp over (chunk, query tile) per kv head (or part of its group)
 * and cache window; reduce.comp; up.comp for a fused up-projection.
 * Segmented caches are dequantized to F32 rows first (dequant.comp, one grid
 * per side over every sequence). A query tile never straddles sequences:
 * its table (KQ_TILE_WORDS) and the queries' positions are written per query
 * batch with vkCmdUpdateBuffer, so the dispatches of a batch of sequences
 * are those of one sequence. vk_op_attend (vk_ops.c) sends here what the
 * decode grid (vk_ops_decode.c) does not take.
 */
#include <stdlib.h>
#include <string.h>

#include "kq_push.h"
#include "vk_ops.h"
#include "vk_split.h"

static uint64_t attend_shared(uint32_t R, uint32_t QK, uint32_t TK, uint32_t rk, bool pre) {
  return 4ull * (R * QK + R * TK + (pre ? TK * QK + TK * rk : 2) + 2 * R * VK_WG);
}

/* Back edges one invocation of attend.comp takes per key tile (an upper
 * bound, for vk_loop_chunk_cap): the tile loop; PRE's staging loop and its
 * rebuild loop with the latent-dim loop inside; the logits loop with its
 * dims loop; the softmax loop; the P·V loops of every slot; the two
 * reductions' halving loops (at most 32 steps each). */
static uint64_t attend_tile_edges(const vk_attend_plan *p, uint64_t D, uint64_t rk) {
  const uint64_t tk = p->TK, per_lane = vk_cdiv(tk, VK_WG);
  uint64_t e = 1 + per_lane * (p->QK + 2) + per_lane + p->slots * (vk_cdiv(tk, p->ntg) + 1) + 64;
  if (p->pre) e += vk_cdiv(tk * rk, VK_WG) + vk_cdiv(tk * (D / 2), VK_WG) * (p->ident ? 1 : rk + 1);
  return e;
}

static kq_status plan_attend(const kq_bdevice *d, const kq_attend_op *op, uint64_t koff,
                             uint64_t voff, uint32_t cache_groups, vk_attend_plan *p) {
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
  p->slots = eu >= VK_WG ? vk_cdiv(eu, VK_WG) : 1;
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
  /* A device whose shaders stop after a number of back edges: tiles short
   * enough that one fits well inside it, then chunks of as many tiles as
   * fit (below). */
  uint64_t cap = UINT64_MAX;
  while (p->TK &&
         (cap = vk_loop_chunk_cap(d->loop_limit, attend_tile_edges(p, (uint64_t)op->head_dim, rk),
                                  p->TK)) < 2ull * p->TK &&
         p->TK > 8)
    p->TK /= 2;
  if (p->TK && cap < p->TK)
    return VK_ERR(KQ_ERR_UNSUPPORTED,
                  "%s: attend: one key tile of head_dim %d, rank %d exceeds the driver's loop "
                  "limit (%u back edges)",
                  d->name, op->head_dim, op->rank_k, d->loop_limit);
  if (!p->TK || VK_WG > lim->maxComputeWorkGroupInvocations ||
      VK_WG > lim->maxComputeWorkGroupSize[0])
    return VK_ERR(KQ_ERR_UNSUPPORTED,
                  "%s: attend: group of %u heads with head_dim %d exceeds shared memory "
                  "(%u bytes)",
                  d->name, p->G, op->head_dim, lim->maxComputeSharedMemorySize);
  /* Enough chunks to fill the device, chunks a multiple of the key tile. */
  uint64_t tiles = (uint64_t)cache_groups * p->n_sub * vk_cdiv((uint64_t)op->n_queries, p->QT);
  uint64_t target = tiles >= 512 ? 1 : 512 / tiles;
  uint64_t ch = vk_cdiv(vk_cdiv((uint64_t)op->n_ctx, target), p->TK) * (uint64_t)p->TK;
  if (ch < 2ull * p->TK) ch = 2ull * p->TK;
  if (ch > cap) ch = cap / p->TK * p->TK; /* whole tiles, at least one (above) */
  const uint64_t max_bind = vk_max_binding(d), wide = (rk > rv ? rk : rv) * p->elem;
  uint64_t nch = vk_cdiv((uint64_t)op->n_ctx, ch);
  while (nch > lim->maxComputeWorkGroupCount[0]) {
    ch *= 2;
    nch = vk_cdiv((uint64_t)op->n_ctx, ch);
  }
  if (ch > cap)
    return VK_ERR(KQ_ERR_UNSUPPORTED,
                  "%s: attend: %d positions need more chunks than the grid takes under the "
                  "driver's loop limit (%u back edges)",
                  d->name, op->n_ctx, d->loop_limit);
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

kq_status vk_shape_tiled(const kq_bdevice *d, const kq_attend_op *op, const kq_op_seq *seqs,
                         int32_t n_seqs, uint32_t cgroups, vk_tiled_shape *s) {
  memset(s, 0, sizeof *s);
  s->seg = !kq_segments_plain(op->n_key_segments, op->key_segments) ||
           !kq_segments_plain(op->n_value_segments, op->value_segments);
  s->p.elem = s->seg ? 4 : vk_storage_elem(op->storage);
  s->ks = vk_side_span(op, seqs, n_seqs, 0, cgroups);
  s->vs = vk_side_span(op, seqs, n_seqs, 1, cgroups);
  for (int32_t i = 0; i < n_seqs; ++i) {
    s->ctx0_max = s->n_total;
    s->n_total += (uint64_t)seqs[i].n_ctx;
  }
  return plan_attend(d, op, s->seg ? 0 : op->k_cache_offset, s->seg ? 0 : op->v_cache_offset,
                     cgroups, &s->p);
}

/* Bytes of a key (values: 1) binding of the tiled path from the first
 * sequence's rows of a kv head to the last sequence's. */
static uint64_t tiled_lead(const kq_attend_op *op, const vk_tiled_shape *s, int values,
                           uint32_t cgroups) {
  if (s->seg) return s->ctx0_max * (uint64_t)(values ? op->rank_v : op->rank_k) * 4;
  return (values ? s->vs : s->ks).bytes - vk_latent_bytes(op, values, cgroups);
}

bool vk_tiled_batch_fits(const kq_bdevice *d, const kq_attend_op *op, int32_t n_seqs,
                         uint32_t cgroups, const vk_tiled_shape *s) {
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
  vk_seg_spec(spec, 16, n_seg, segs, (int32_t)rank);
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
  uint64_t gx = vk_cdiv(max_ctx * rank, VK_WG);
  if (gx > d->props.limits.maxComputeWorkGroupCount[0])
    gx = d->props.limits.maxComputeWorkGroupCount[0];
  const vk_shader sh = storage == KQ_STORAGE_F16 ? VK_SHADER_DEQUANT_F16 : VK_SHADER_DEQUANT_F32;
  return vk_dispatch(d, f, sh, spec, b, 3, &u, sizeof u, (uint32_t)gx, (uint32_t)groups,
                     (uint32_t)n_seqs);
}

/* The query tiles and positions of rows [j0, j0 + nqb) of the op; returns
 * the tiles, *out_kctx the positions they reach. */
static uint32_t build_tiles(const kq_op_seq *seqs, int32_t n_seqs, const vk_tiled_shape *s,
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

kq_status vk_attend_tiled(kq_bdevice *d, const kq_attend_op *op, const kq_op_seq *seqs,
                          int32_t n_seqs, uint32_t cgroups, const vk_tiled_shape *s) {
  const vk_attend_plan *p = &s->p;
  const bool seg = s->seg;
  kq_status st;
  const uint64_t H = (uint64_t)op->n_heads, Hk = (uint64_t)op->n_kv_heads;
  const uint64_t D = (uint64_t)op->head_dim, rk = (uint64_t)op->rank_k, rv = (uint64_t)op->rank_v;
  const uint64_t cap = (uint64_t)op->capacity, nq = (uint64_t)op->n_queries;
  const vk_rope_table *rope = NULL;
  if (p->pre &&
      (st = vk_rope_table_for(d, op->rope_theta, (uint32_t)D, (uint32_t)op->n_ctx, &rope)) != KQ_OK)
    return st;
  const bool halves = op->rope_layout == KQ_ROPE_HALVES;
  const VkDeviceSize align = d->props.limits.minStorageBufferOffsetAlignment > 16
                                 ? d->props.limits.minStorageBufferOffsetAlignment
                                 : 16;
  /* Scratch: prepared queries and the tile table (one binding of attend),
   * query positions, the dequant table, partials, dequantized latents, the
   * latent output of a fused up-projection. */
  const uint64_t nch_max = vk_cdiv((uint64_t)op->n_ctx, p->CH);
  const VkDeviceSize qbytes = p->qbatch * H * p->QK * 4;
  const VkDeviceSize tbytes = p->qbatch * KQ_TILE_WORDS * 4;
  const VkDeviceSize posoff = vk_align_up(qbytes + tbytes, align);
  const VkDeviceSize dqoff = vk_align_up(posoff + p->qbatch * 4, align);
  const VkDeviceSize poff =
      vk_align_up(dqoff + (seg ? (uint64_t)n_seqs * KQ_DEQUANT_SEQ_WORDS * 4 : 0), align);
  const VkDeviceSize pbytes = p->qbatch * H * nch_max * p->ntg * (rv + 2) * 4;
  const VkDeviceSize kdeq = vk_align_up(poff + pbytes, align);
  const VkDeviceSize vdeq = vk_align_up(kdeq + cgroups * s->n_total * rk * 4, align);
  const VkDeviceSize seg_end = seg ? vdeq + cgroups * s->n_total * rv * 4 : poff + pbytes;
  /* Fused up-projection: the latent output goes to scratch, up.comp writes out. */
  const bool up = op->value_up != NULL;
  const VkDeviceSize latoff = vk_align_up(seg_end, align);
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
      vk_record_table(f, d, dqoff, dq, dwords * 4);
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
    const uint64_t nch = vk_cdiv(kctx, p->CH);
    vk_record_table(f, d, qbytes, tiles, (VkDeviceSize)ntiles * KQ_TILE_WORDS * 4);
    vk_record_table(f, d, posoff, pos, nqb * 4);
    vk_binding b[VK_MAX_BINDINGS] = {0};
    kq_push_qprep u = {0};
    uint32_t e_rope = 0, e_b = 0, e_a = 0, e_q = 0, e_part = 0, e_qt = 0;
    /* 1. prepared queries q B (or rotated q B Aᵀ) into scratch */
    st = vk_bind_range(d, &op->q->mem, op->q_offset + j0 * H * D * 4, nqb * H * D * 4, 4, &b[0],
                       &u.q_off, "queries");
    if (st == KQ_OK)
      st = vk_bind_opt(d, op->query_down, op->query_down_offset, Hk * D * rk * 4, !ident, &b[1],
                       &e_b, "query_down");
    if (st == KQ_OK)
      st = vk_bind_opt(d, op->key_down, op->key_down_offset, Hk * D * rk * 4, !ident && p->pre,
                       &b[2], &e_a, "key_down");
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
      /* Windows only for one sequence (vk_tiled_batch_fits); klead, vlead
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
          st =
              vk_dispatch(d, f, ashader, aspec, ab, 6, &v, sizeof v, vk_cdiv(wl, p->CH), ntiles, 1);
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
