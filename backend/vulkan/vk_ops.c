/*
 * vk_ops.c — the compute ops of the backend ABI (project, attend, up):
 * argument checks, splitting into dispatches that respect the device limits
 * (binding range, workgroup counts, shared memory), and recording. Holds
 * project and up, the attend entry point that picks the decode grid
 * (vk_ops_decode.c) or the tiled path (vk_ops_tiled.c), and the helpers
 * those files share (vk_ops.h): bindings, segment tables, latent spans, host
 * tables, RoPE tables.
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "kq_push.h"
#include "vk_ops.h"

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

/* --- helpers of every op file (contracts in vk_ops.h) --- */

kq_status vk_bind_opt(const kq_bdevice *d, const kq_buffer *b, size_t offset, size_t bytes,
                      bool use, vk_binding *out, uint32_t *elem, const char *what) {
  if (!use) {
    memset(out, 0, sizeof *out);
    *elem = 0;
    return KQ_OK;
  }
  return vk_bind_range(d, &b->mem, offset, bytes, 4, out, elem, what);
}

void vk_seg_spec(uint32_t *spec, int at, int32_t n, const kq_segment *segs, int32_t rank) {
  if (kq_segments_plain(n, segs)) {
    spec[at] = 1;
    spec[at + 1] = (uint32_t)rank;
    return;
  }
  spec[at] = (uint32_t)n;
  for (int32_t i = 0; i < n; ++i)
    spec[at + 1 + i] = (uint32_t)segs[i].width | ((uint32_t)segs[i].bits << 16);
}

uint64_t vk_latent_total(int32_t n, const kq_segment *segs, int32_t rank, kq_storage storage,
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

uint64_t vk_latent_bytes(const kq_attend_op *op, int values, uint32_t cgroups) {
  return values ? vk_latent_total(op->n_value_segments, op->value_segments, op->rank_v, op->storage,
                                  cgroups, (uint64_t)op->capacity)
                : vk_latent_total(op->n_key_segments, op->key_segments, op->rank_k, op->storage,
                                  cgroups, (uint64_t)op->capacity);
}

vk_latent_span vk_side_span(const kq_attend_op *op, const kq_op_seq *seqs, int32_t n, int values,
                            uint32_t cgroups) {
  uint64_t lo = UINT64_MAX, hi = 0;
  for (int32_t i = 0; i < n; ++i) {
    const uint64_t r = values ? seqs[i].v_region : seqs[i].k_region;
    if (r < lo) lo = r;
    if (r > hi) hi = r;
  }
  vk_latent_span sp = {lo, hi - lo + vk_latent_bytes(op, values, cgroups)};
  return sp;
}

void vk_record_table(vk_frame *f, const kq_bdevice *d, VkDeviceSize offset, const void *table,
                     VkDeviceSize bytes) {
  for (VkDeviceSize o = 0; o < bytes; o += 65536) {
    const VkDeviceSize n = bytes - o < 65536 ? bytes - o : 65536;
    vkCmdUpdateBuffer(f->cmd, d->scratch.buffer, d->scratch.base + offset + o, n,
                      (const char *)table + o);
  }
  vk_frame_barrier(f);
}

/* Tables are allocated one by one and never moved or freed before
 * device_close, so the pointer stays valid after rope_lock is released
 * while another thread adds a table (the pointer array may be
 * reallocated, the tables are not). */
kq_status vk_rope_table_for(kq_bdevice *d, float theta, uint32_t head_dim, uint32_t n_pos,
                            const vk_rope_table **out) {
  const uint32_t half = head_dim / 2, need_hi = vk_cdiv(n_pos, 256);
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

/* --- project --- */

/* Quantized segments (the core checked the list) need 8-bit storage
 * buffers. */
static kq_status check_segments(const kq_bdevice *d, int32_t n, const kq_segment *segs,
                                const char *what) {
  if (kq_segments_plain(n, segs) || d->int8_storage) return KQ_OK;
  return VK_ERR(KQ_ERR_UNSUPPORTED,
                "%s: %s: quantized latent segments need storageBuffer8BitAccess", d->name, what);
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
  const uint64_t rb = (uint64_t)op->rank * vk_storage_elem(op->storage);
  const uint64_t total = vk_latent_total(op->n_segments, op->segments, op->rank, op->storage,
                                         (uint64_t)op->n_heads, cap);
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
  const uint32_t elem = vk_storage_elem(op->storage);
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
  kq_status st = vk_bind_opt(d, op->proj, op->proj_offset, Hs * D * R * 4, !ident, &b[1], &proj_off,
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
    vk_seg_spec(spec, 16, op->n_segments, op->segments, op->rank);
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
  if (st == KQ_OK) vk_record_table(f, d, 0, table, tbytes);
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
      st = vk_dispatch(d, f, shader, spec, b, 4, &push, sizeof push, vk_cdiv(nb, tt), (uint32_t)Hs,
                       1);
    } else {
      kq_push_project push = {.src_off = src_off,
                              .proj_off = proj_off,
                              .seq_off = seq_off,
                              .row0 = (uint32_t)t0,
                              .n_tokens = (uint32_t)nb,
                              .n_heads = (uint32_t)Hs,
                              .capacity = (uint32_t)op->capacity,
                              .head0 = (uint32_t)span.h0};
      st = vk_dispatch(d, f, shader, spec, b, 4, &push, sizeof push, vk_cdiv(nb, tt),
                       (uint32_t)span.nh, 1);
    }
  }
  if (st != KQ_OK) {
    vk_frame_abort(d, f);
    return st;
  }
  return vk_frame_submit(d, f, false, "project");
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
    const uint64_t rb = (uint64_t)s.rank * vk_storage_elem(s.storage);
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

/* Decode shapes take the decode grid (vk_attend_decode), the others the tiled
 * one (vk_attend_tiled), each over every sequence of the op at once; a batch
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
  vk_decode_plan dp;
  if (vk_decode_fits(d, op, seqs, n, cgroups, &dp))
    return vk_attend_decode(d, op, seqs, n, cgroups, &dp);
  vk_tiled_shape ts;
  if ((st = vk_shape_tiled(d, op, seqs, n, cgroups, &ts)) != KQ_OK) return st;
  if (vk_tiled_batch_fits(d, op, n, cgroups, &ts))
    return vk_attend_tiled(d, op, seqs, n, cgroups, &ts);
  for (int32_t i = 0; i < n && st == KQ_OK; ++i) {
    const kq_attend_op s = kq_attend_op_seq(op, i);
    const kq_op_seq e = {.n_rows = s.n_queries, .n_ctx = s.n_ctx};
    if (vk_decode_fits(d, &s, &e, 1, cgroups, &dp)) {
      st = vk_attend_decode(d, &s, &e, 1, cgroups, &dp);
      continue;
    }
    if ((st = vk_shape_tiled(d, &s, &e, 1, cgroups, &ts)) == KQ_OK)
      st = vk_attend_tiled(d, &s, &e, 1, cgroups, &ts);
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
      st = vk_bind_opt(d, op->value_up, op->value_up_offset, (uint64_t)op->n_kv_heads * D * rv * 4,
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
