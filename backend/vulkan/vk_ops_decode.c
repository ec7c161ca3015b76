/*
 * vk_ops_decode.c — the decode grid of attend: two dispatches for every
 * sequence of the op at once. attend_dec.comp over (chunk, row group, query
 * row), q·B folded in, latents read in place from their segments (float,
 * F16, q8, q4); then merge_up.comp over (head, query row), chunks merged, Eᵀ
 * applied when op->value_up is set. A row table in the scratch buffer
 * (kq_push.h, KQ_SEQ_WORDS; written by vkCmdUpdateBuffer in the frame) gives
 * each query row its sequence's regions, position and chunking; a
 * sequence's chunk count follows its n_ctx (vk_decode_seq_chunks). RoPE pre
 * (per-head) rebuilds and rotates the keys inside attend_dec.comp: still two
 * dispatches. vk_op_attend (vk_ops.c) decides when it serves
 * (vk_decode_fits); other shapes take the tiled path (vk_ops_tiled.c).
 */
#include <stdlib.h>
#include <string.h>

#include "kq_push.h"
#include "vk_ops.h"
#include "vk_split.h"

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
                        vk_decode_plan *p) {
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
  /* Back edges of one step of NPAR positions in attend_dec.comp (an upper
   * bound): the step itself; PRE's latent-dim loop, 4 dims a step; the
   * 16-byte unit loops of a segment table (KVEC / VVEC 2), each segment's
   * units over LPR lanes; the row sums through shared memory without
   * subgroups. Everything else in a step is unrolled. */
  {
    const bool ident = (op->flags & KQ_OP_IDENTITY_KEYS) != 0;
    uint64_t edges = 2;
    if (pre && !ident) edges += rk / 4 + 1;
    if (p->kvec == 2) edges += ku / p->lpr + 2 * (uint64_t)op->n_key_segments;
    if (p->vvec == 2) edges += vu / p->lpr + 2 * (uint64_t)op->n_value_segments;
    if (!p->subgroups) edges += (uint64_t)p->rows * (p->lpr + 1);
    p->chunk_cap = vk_loop_chunk_cap(d->loop_limit, edges, p->npar);
    if (p->chunk_cap == 0) return false;
  }
  /* Chunks are per sequence (vk_attend_decode). */
  return H / p->rows <= lim->maxComputeWorkGroupCount[1] &&
         (uint32_t)op->n_queries <= lim->maxComputeWorkGroupCount[2] &&
         H <= lim->maxComputeWorkGroupCount[0];
}

/* Chunks of a sequence of n_ctx positions in a grid of `positions` (the
 * sum over its query rows of their contexts): its share of the device
 * (vk_decode_seq_chunks), at most maxComputeWorkGroupCount[0], and at
 * least enough that no chunk is longer than pl->chunk_cap. The result may
 * exceed VK_DECODE_MAX_CHUNKS only through the cap (vk_decode_fits then
 * declines the op). */
static uint32_t seq_chunks(const kq_bdevice *d, const vk_decode_plan *pl, uint64_t H,
                           uint64_t n_ctx, uint64_t positions) {
  uint64_t n = vk_decode_seq_chunks(n_ctx, positions, (uint32_t)(H / pl->rows), d->compute_units);
  if (n > d->props.limits.maxComputeWorkGroupCount[0])
    n = d->props.limits.maxComputeWorkGroupCount[0];
  if (pl->chunk_cap != UINT64_MAX && n_ctx > n * pl->chunk_cap) n = vk_cdiv(n_ctx, pl->chunk_cap);
  return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

kq_status vk_attend_decode(kq_bdevice *d, const kq_attend_op *op, const kq_op_seq *seqs,
                           int32_t n_seqs, uint32_t cgroups, const vk_decode_plan *pl) {
  const VkPhysicalDeviceLimits *lim = &d->props.limits;
  const uint64_t H = (uint64_t)op->n_heads, Hk = (uint64_t)op->n_kv_heads;
  const uint64_t D = (uint64_t)op->head_dim, rk = (uint64_t)op->rank_k, rv = (uint64_t)op->rank_v;
  const uint64_t nq = (uint64_t)op->n_queries, cap = (uint64_t)op->capacity;
  const bool ident_k = (op->flags & KQ_OP_IDENTITY_KEYS) != 0;
  const bool ident_v = (op->flags & KQ_OP_IDENTITY_VALUES) != 0;
  const bool up = op->value_up != NULL && !ident_v;
  const bool f16 = op->storage == KQ_STORAGE_F16, pre = op->rope == KQ_ROPE_PRE;
  const vk_latent_span ks = vk_side_span(op, seqs, n_seqs, 0, cgroups);
  const vk_latent_span vs = vk_side_span(op, seqs, n_seqs, 1, cgroups);
  /* Chunks per sequence, from its share of the grid's positions. */
  const uint64_t positions = pl->positions;
  const uint32_t max_chunks = pl->max_chunks;
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
  vk_seg_spec(aspec, KQ_SPEC_KEY_SEGS, op->n_key_segments, op->key_segments, op->rank_k);
  vk_seg_spec(aspec, KQ_SPEC_VALUE_SEGS, op->n_value_segments, op->value_segments, op->rank_v);
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
    st = vk_bind_opt(d, op->query_down, op->query_down_offset, Hk * D * rk * 4, !ident_k, &ab[1],
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
    st = vk_bind_opt(d, op->key_down, op->key_down_offset, Hk * D * rk * 4, pre && !ident_k, &ab[6],
                     &pa.a_off, "key_down");
  memset(&ab[7], 0, sizeof ab[7]);
  if (st == KQ_OK && pre) {
    uint64_t n_pos = 1;
    for (int32_t i = 0; i < n_seqs; ++i)
      if ((uint64_t)seqs[i].n_ctx > n_pos) n_pos = (uint64_t)seqs[i].n_ctx;
    const vk_rope_table *rope = NULL;
    uint32_t rope_elem = 0;
    st = vk_rope_table_for(d, op->rope_theta, (uint32_t)D, (uint32_t)n_pos, &rope);
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
    st = vk_bind_opt(d, op->value_up, op->value_up_offset, Hk * D * rv * 4, up, &mb[1], &pm.e_off,
                     "value_up");
  if (st == KQ_OK)
    st = vk_bind_range(d, &op->out->mem, op->out_offset, nq * H * out_row * 4, 4, &mb[2],
                       &pm.out_off, "output");
  if (st != KQ_OK) return st;
  const VkDeviceSize pbytes = nq * H * max_chunks * (rv + 2) * 4;
  const VkDeviceSize tbytes = nq * KQ_SEQ_WORDS * 4;
  const VkDeviceSize align =
      lim->minStorageBufferOffsetAlignment > 16 ? lim->minStorageBufferOffsetAlignment : 16;
  const VkDeviceSize toff = vk_align_up(pbytes, align);
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
      uint32_t n = seq_chunks(d, pl, H, (uint64_t)e->n_ctx, positions);
      const uint32_t chunk = vk_decode_chunk_len((uint64_t)e->n_ctx, n);
      n = vk_cdiv((uint64_t)e->n_ctx, chunk);
      for (int32_t r = 0; r < e->n_rows; ++r, t += KQ_SEQ_WORDS) {
        t[0] = k_base + (uint32_t)(e->k_region - ks.lo);
        t[1] = v_base + (uint32_t)(e->v_region - vs.lo);
        t[2] = (uint32_t)(e->n_ctx - e->n_rows + r);
        t[3] = chunk;
        t[4] = n;
      }
    }
    vk_record_table(f, d, toff, table, tbytes);
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

bool vk_decode_fits(const kq_bdevice *d, const kq_attend_op *op, const kq_op_seq *seqs,
                    int32_t n_seqs, uint32_t cgroups, vk_decode_plan *pl) {
  if (getenv("KQSVD_VULKAN_NO_DECODE_KERNEL")) return false;
  kq_attend_op shape = *op;
  shape.n_queries = 1;
  for (int32_t i = 0; i < n_seqs; ++i)
    if (seqs[i].n_rows > shape.n_queries) shape.n_queries = seqs[i].n_rows;
  const uint64_t max = vk_max_binding(d);
  if (!plan_decode(d, &shape, cgroups, pl)) return false;
  /* A chunk count the cap pushes past what the merge or the grid takes:
   * the tiled path, whose chunks are capped the same way. */
  pl->positions = 0;
  for (int32_t i = 0; i < n_seqs; ++i) pl->positions += (uint64_t)seqs[i].n_rows * seqs[i].n_ctx;
  pl->max_chunks = 1;
  for (int32_t i = 0; i < n_seqs; ++i) {
    const uint32_t n =
        seq_chunks(d, pl, (uint64_t)op->n_heads, (uint64_t)seqs[i].n_ctx, pl->positions);
    if (n > VK_DECODE_MAX_CHUNKS || n > d->props.limits.maxComputeWorkGroupCount[0]) return false;
    if (n > pl->max_chunks) pl->max_chunks = n;
  }
  return (uint64_t)op->n_queries <= d->props.limits.maxComputeWorkGroupCount[2] &&
         vk_side_span(op, seqs, n_seqs, 0, cgroups).bytes <= max &&
         vk_side_span(op, seqs, n_seqs, 1, cgroups).bytes <= max;
}
