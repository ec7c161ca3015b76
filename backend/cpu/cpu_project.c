/* Latent projection (kq_project_op) and latent-to-full output (kq_up_op)
 * for the CPU backend. Both are small GEMMs written as row updates with a
 * contiguous inner loop over the rank, split over (head, row block); a
 * project op over many sequences is one pool run over every sequence's
 * row blocks. */
#include <stdlib.h>
#include <string.h>

#include "cpu_kernels.h"
#include "cpu_pool.h"
#include "kq_common.h"
#include "kq_cpu_backend.h"

#define KQ_PROJECT_ROWS 16 /* tokens per task */

typedef struct project_ctx {
  const kq_project_op *op;
  const kq_cpu_kernels *kern;
  const float *src, *proj;
  unsigned char *dst;    /* the op's latent buffer at dst_offset (sequence regions added) */
  const kq_op_seq *seqs; /* n_seqs entries (one built from the scalar fields without a table) */
  const int64_t *block0; /* [n_seqs + 1]: first row block of each sequence, then the total */
  int32_t n_seqs;
  size_t data[KQ_MAX_SEGMENTS], scale[KQ_MAX_SEGMENTS]; /* plane offsets (segmented dst) */
} project_ctx;

/* Writes n latent rows [n, r] of group h at positions slot .. slot + n - 1
 * (slot = h capacity + pos) into every segment's planes of the latent buffer
 * at `dst`: float segments in the storage type, quantized ones by the rule
 * of kq_quantize_row (SPEC §1b). */
static void store_segments(const project_ctx *c, unsigned char *dst, const float *rows, int n,
                           size_t slot, int8_t *q) {
  const kq_project_op *op = c->op;
  int r = op->rank, col = 0;
  for (int g = 0; g < op->n_segments; g++) {
    kq_segment seg = op->segments[g];
    size_t rb = kq_segment_row_bytes(seg, op->storage);
    unsigned char *data = dst + c->data[g];
    uint16_t *scale = (uint16_t *)(void *)(dst + c->scale[g]);
    for (int t = 0; t < n; t++) {
      const float *x = rows + (size_t)t * r + col;
      unsigned char *d = data + (slot + t) * rb;
      if (seg.bits == KQ_SEG_FLOAT) {
        if (op->storage == KQ_STORAGE_F16)
          c->kern->f32_to_f16(x, (uint16_t *)(void *)d, seg.width);
        else
          memcpy(d, x, (size_t)seg.width * sizeof(float));
      } else if (seg.bits == KQ_SEG_Q8) {
        scale[slot + t] = c->kern->quantize_row(x, seg.width, 127, (int8_t *)(void *)d);
      } else {
        scale[slot + t] = c->kern->quantize_row(x, seg.width, 7, q);
        for (int i = 0; i < seg.width; i += 2)
          d[i / 2] = (unsigned char)((q[i] + 8) | ((q[i + 1] + 8) << 4));
      }
    }
    col += seg.width;
  }
}

static void project_task(void *vctx, int64_t index, int worker, void *scratch) {
  (void)worker;
  const project_ctx *c = vctx;
  const kq_project_op *op = c->op;
  const int64_t n_blocks = c->block0[c->n_seqs];
  int h = (int)(index / n_blocks);
  int64_t b = index % n_blocks;
  /* The sequence of block b: the last one whose first block is <= b. */
  int32_t lo = 0, hi = c->n_seqs - 1;
  while (lo < hi) {
    int32_t mid = (lo + hi + 1) / 2;
    if (c->block0[mid] <= b)
      lo = mid;
    else
      hi = mid - 1;
  }
  const kq_op_seq *e = &c->seqs[lo];
  int t0 = (int)(b - c->block0[lo]) * KQ_PROJECT_ROWS;
  int t1 = t0 + KQ_PROJECT_ROWS < e->n_rows ? t0 + KQ_PROJECT_ROWS : e->n_rows;
  int d = op->head_dim, r = op->rank;
  const float *P = c->proj ? c->proj + (size_t)h * d * r : NULL;
  float *rows = scratch; /* [KQ_PROJECT_ROWS, r] */
  int n = t1 - t0;
  unsigned char *dst = c->dst + e->k_region;
  const float *x = c->src + ((size_t)(e->row + t0) * op->n_heads + h) * d;
  int ldx = op->n_heads * d;
  if (P) {
    c->kern->matmul_rows(x, n, ldx, P, d, r, rows, r);
  } else {
    for (int t = 0; t < n; t++)
      memcpy(rows + (size_t)t * r, x + (size_t)t * ldx, (size_t)d * sizeof(float));
  }
  /* Consecutive positions of one head are contiguous in the cache. */
  size_t slot = (size_t)h * op->capacity + (size_t)(e->pos + t0);
  if (op->n_segments > 0) {
    store_segments(c, dst, rows, n, slot, (int8_t *)(rows + (size_t)KQ_PROJECT_ROWS * d));
    return;
  }
  if (op->storage == KQ_STORAGE_F16)
    c->kern->f32_to_f16(rows, (uint16_t *)(void *)dst + slot * r, n * r);
  else
    memcpy((float *)(void *)dst + slot * r, rows, (size_t)n * r * sizeof(float));
}

kq_status kq_cpu_project(kq_bdevice *device, const kq_project_op *op) {
  (void)device;
  /* The core checked the op (kqsvd_backend.h, "What a backend may trust"). */
  int identity = (op->flags & (KQ_OP_IDENTITY_KEYS | KQ_OP_IDENTITY_VALUES)) != 0;
  size_t H = (size_t)op->n_heads, d = (size_t)op->head_dim, r = (size_t)op->rank;
  int32_t n_seg = op->n_segments; /* 0: the plain layout, the fast path below */
  const kq_op_seq one = {.n_rows = op->n_tokens, .pos = op->pos};
  const int32_t n_seqs = op->seqs ? op->n_seqs : 1;
  int64_t one_block0[2];
  int64_t *block0 = n_seqs == 1 ? one_block0
                                : kq_malloc_array((size_t)n_seqs + 1, sizeof *block0,
                                                  "cpu project sequence table");
  if (!block0) return KQ_ERR_OUT_OF_MEMORY;
  project_ctx c = {
      .op = op,
      .kern = kq_cpu_kernels_get(),
      .src = (const float *)(op->src->data + op->src_offset),
      .proj = identity ? NULL : (const float *)(op->proj->data + op->proj_offset),
      .dst = op->dst->data + op->dst_offset,
      .seqs = op->seqs ? op->seqs : &one,
      .block0 = block0,
      .n_seqs = n_seqs,
  };
  block0[0] = 0;
  for (int32_t i = 0; i < n_seqs; i++)
    block0[i + 1] = block0[i] + (c.seqs[i].n_rows + KQ_PROJECT_ROWS - 1) / KQ_PROJECT_ROWS;
  for (int32_t g = 0; g < n_seg; g++)
    kq_segment_planes(op->segments, n_seg, op->storage, H, (size_t)op->capacity, g, &c.data[g],
                      &c.scale[g], NULL);
  double work = (double)op->n_tokens * op->n_heads * op->head_dim * op->rank;
  kq_status st =
      kq_cpu_pool_run((int64_t)op->n_heads * block0[n_seqs], work < KQ_CPU_SERIAL_WORK ? 1 : 0,
                      (size_t)KQ_PROJECT_ROWS * d * sizeof(float) + r, project_task, &c);
  if (block0 != one_block0) free(block0);
  return st;
}

typedef struct up_ctx {
  const kq_up_op *op;
  const kq_cpu_kernels *kern;
  const float *latent, *E;
  float *out;
  int group;
} up_ctx;

/* One (query, kv head) pair: the group's query heads are adjacent, so their
 * latents are `group` rows of rank_v and their outputs `group` rows of d.
 * out row = E lat, i.e. the dot products of each latent with the d rows of
 * E: the logits kernel, which loads every row of E once for four latents. */
static void up_task(void *vctx, int64_t index, int worker, void *scratch) {
  (void)worker;
  (void)scratch;
  const up_ctx *c = vctx;
  const kq_up_op *op = c->op;
  int d = op->head_dim, rv = op->rank_v, g = c->group;
  size_t first = (size_t)index * g; /* row (query j, head h g) = j H + h g */
  const float *lat = c->latent + first * rv;
  float *o = c->out + first * d;
  if (!c->E) {
    memcpy(o, lat, (size_t)g * d * sizeof(float));
    return;
  }
  const float *E = c->E + (size_t)(index % op->n_kv_heads) * d * rv;
  if (rv % KQ_CPU_PAD == 0) {
    c->kern->logits(lat, g, E, d, rv, o, d);
    return;
  }
  for (int r = 0; r < g; r++)
    for (int i = 0; i < d; i++)
      o[(size_t)r * d + i] = c->kern->dot(lat + (size_t)r * rv, E + (size_t)i * rv, rv);
}

kq_status kq_cpu_up(kq_bdevice *device, const kq_up_op *op) {
  (void)device;
  /* The core checked the op (kqsvd_backend.h, "What a backend may trust"). */
  int identity = (op->flags & KQ_OP_IDENTITY_VALUES) != 0;
  size_t rows = (size_t)op->n_queries * op->n_heads;
  up_ctx c = {
      .op = op,
      .kern = kq_cpu_kernels_get(),
      .latent = (const float *)(op->latent->data + op->latent_offset),
      .E = identity ? NULL : (const float *)(op->value_up->data + op->value_up_offset),
      .out = (float *)(op->out->data + op->out_offset),
      .group = op->n_heads / op->n_kv_heads,
  };
  double work = (double)rows * op->head_dim * op->rank_v;
  return kq_cpu_pool_run((int64_t)op->n_queries * op->n_kv_heads, work < KQ_CPU_SERIAL_WORK ? 1 : 0,
                         0, up_task, &c);
}
