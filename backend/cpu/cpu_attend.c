/*
 * Causal attention on latents (kq_attend_op) for the CPU backend.
 *
 * Work is split into tasks (kv head, query block, context chunk). A task
 * handles all query heads of its kv head's group and a block of queries
 * together, so each latent key/value row is loaded and widened to F32 once
 * and used by every query of the group (GQA sharing). Keys and values are
 * streamed in tiles of KQ_TILE positions through an online softmax with F32
 * accumulation. When there are too few (head, block) pairs to keep every
 * thread busy (decode with few kv heads) the context is split into chunks
 * whose partial (max, sum, accumulator) triples are merged afterwards in a
 * fixed order, so results never depend on thread timing.
 *
 * Quantized latents (SPEC §1b) are planar, one plane per segment plus an
 * F16 scale plane per quantized segment. A quantized segment's scale is
 * applied once per (segment, position): to its partial logit, and folded
 * into the softmax weight for P·V. Small decode tasks read the planes in
 * place (logits_plane / pv_plane); others widen a tile to F32 once and
 * share it by all their rows (logits_seg / pv_seg); PRE rope dequantizes
 * the latent tile before rebuilding keys. The JOINT layout is one latent
 * group read by every query head: q̃ = q_h B[h / g].
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_kernels.h"
#include "cpu_pool.h"
#include "kq_common.h"
#include "kq_cpu_backend.h"

#define KQ_TILE 64
#define KQ_MAX_ROWS 64 /* query rows (queries x group heads) per task */
/* With PRE rope every key tile is reconstructed (r d flops a key) and
 * rotated once per task and shared by all its rows: more rows per task
 * amortise it further (the rows' state, 256 x (d + r_v) floats, stays in L2). */
#define KQ_PRE_ROWS 256
/* PRE key angles follow the angle-addition recurrence in double and are
 * recomputed exactly every this many positions (error ~1e-13, far below F32). */
#define KQ_ROPE_RESYNC 1024
/* Decode tasks per thread when the context is split (balance on a machine
 * where a thread may be descheduled for a while). */
#define KQ_TASKS_PER_THREAD 8
/* Tasks of at most this many query rows (decode with a GQA group of <= 4)
 * read quantized planes in place (logits_plane / pv_plane: each row
 * converted once, in registers); larger tasks (prefill, JOINT) widen each
 * tile once into memory and share it by all their row blocks. */
#define KQ_PLANE_ROWS 4
_Static_assert(KQ_CPU_PV_I8_SCRATCH <= KQ_MAX_ROWS * KQ_TILE * sizeof(float),
               "pv_plane_i8's scratch fits in ptmp");

static int pad_to(int n) {
  return (n + KQ_CPU_PAD - 1) / KQ_CPU_PAD * KQ_CPU_PAD;
}

/* One segment of a quantized (segmented) side, SPEC §1b. */
typedef struct seg_plane {
  int bits, width;
  int noff; /* first latent dim (σ order) */
  int poff; /* first column in a widened tile: segments start at multiples of 8 */
  size_t row_bytes;
  const unsigned char *data; /* data plane, group 0 */
  const uint16_t *scale;     /* F16 scale plane, group 0; NULL for a float segment */
} seg_plane;

/* The segments of one side; n == 0: the plain layout (one float segment). */
typedef struct side_layout {
  int n;
  int padded; /* Σ widths rounded up to 8: the widened row length */
  seg_plane seg[KQ_MAX_SEGMENTS];
} side_layout;

static void side_layout_init(side_layout *sl, int32_t n, const kq_segment *segs, kq_storage storage,
                             size_t groups, size_t capacity, const unsigned char *base) {
  sl->n = kq_segments_plain(n, segs) ? 0 : n;
  int noff = 0, poff = 0;
  for (int g = 0; g < sl->n; g++) {
    size_t data, scale;
    kq_segment_planes(segs, n, storage, groups, capacity, g, &data, &scale, NULL);
    seg_plane *sp = &sl->seg[g];
    sp->bits = segs[g].bits;
    sp->width = segs[g].width;
    sp->noff = noff;
    sp->poff = poff;
    sp->row_bytes = kq_segment_row_bytes(segs[g], storage);
    sp->data = base + data;
    sp->scale =
        segs[g].bits == KQ_SEG_FLOAT ? NULL : (const uint16_t *)(const void *)(base + scale);
    noff += segs[g].width;
    poff += pad_to(segs[g].width);
  }
  sl->padded = poff;
}

typedef struct attend_ctx {
  const kq_attend_op *op;
  const kq_cpu_kernels *kern;
  const unsigned char *k_cache, *v_cache;
  const float *q, *key_down, *query_down;
  float *out;       /* latent output [n_queries, n_heads, rank_v] */
  float *partials;  /* [task][max_rows][rank_v + 2] when n_chunks > 1 */
  int group;        /* query heads per latent group (JOINT: all heads) */
  int n_groups;     /* latent groups in the caches: n_kv_heads, or 1 (JOINT) */
  int heads_per_kv; /* query head h reads query_down[h / heads_per_kv] */
  int joint;
  side_layout kl, vl; /* key and value segments (n == 0: plain) */
  int kwide;          /* keys segmented and not PRE: logits_seg on widened tiles */
  int kplane, vplane; /* segmented side whose planes the kernels can read in place */
  int qint;           /* quantized planes read by the int16 kernels (logits_plane_i16) */
  int ki8;     /* key planes of tasks of <= KQ_PLANE_ROWS rows read by logits_planes_i8 (larger
                  tasks share widened tiles: 8 blocks of 4 rows transposing the same keys measured
                  1.3x slower on the joint layout) */
  size_t ldqd; /* ki8: bytes of one row's query digits */
  int vi8;     /* quantized value planes of tasks of <= KQ_PLANE_ROWS rows read by pv_plane_i8 */
  int kq16[KQ_MAX_SEGMENTS]; /* qint: first int16 query column of each key segment */
  int ldq16;                 /* qint: int16 query row length */
  int max_rows;              /* query rows per task: KQ_MAX_ROWS, or KQ_PRE_ROWS with PRE rope */
  int qblock;                /* queries per block */
  int n_qblocks, n_chunks, chunk_len;
  int dk, dkp;  /* logit dimension (rank_k, or head_dim with PRE rope) and padded
                   (segmented keys: the widened row, kl.padded) */
  int rkp, rvp; /* padded ranks (segmented values: vl.padded) */
  int identity_keys;
  int direct_k, direct_v; /* F16 rows read in place by the kernels */
  int tile;               /* positions per tile (<= KQ_TILE): K + V tiles stay in L1 */
  size_t esize;           /* bytes per cache element */
  /* PRE rope, each [head_dim / 2]: frequencies, and cos / sin of one step */
  const double *inv_freq, *step_cos, *step_sin;
} attend_ctx;

/* Rotates the pairs of x[0, d) (pairs or halves layout) by angles whose
 * cosines and sines are cs[j], sn[j], j < d / 2. */
static void rope_apply(float *x, int d, const double *cs, const double *sn, kq_rope_layout layout) {
  int half = d / 2;
  for (int j = 0; j < half; j++) {
    int i0 = layout == KQ_ROPE_PAIRS ? 2 * j : j;
    int i1 = layout == KQ_ROPE_PAIRS ? 2 * j + 1 : j + half;
    double a = x[i0], b = x[i1];
    x[i0] = (float)(a * cs[j] - b * sn[j]);
    x[i1] = (float)(a * sn[j] + b * cs[j]);
  }
}

/* cs[j], sn[j] = cos, sin of pos · inv_freq[j]. */
static void rope_angles(double pos, const double *inv_freq, int half, double *cs, double *sn) {
  for (int j = 0; j < half; j++) {
    double ang = pos * inv_freq[j];
    cs[j] = cos(ang);
    sn[j] = sin(ang);
  }
}

/* F32 rows [n, ldp] of n latent rows (stride `rank` elements) at src,
 * zero-padded in columns [rank, ldp). Unpadded F32 rows are used in place
 * unless `copy`; otherwise they are widened into dst. */
static const float *load_rows(const attend_ctx *c, const unsigned char *src, int n, int rank,
                              int ldp, float *dst, int copy) {
  int f16 = c->op->storage == KQ_STORAGE_F16;
  if (rank == ldp) {
    if (!f16 && !copy) return (const float *)(const void *)src;
    if (f16)
      c->kern->f16_to_f32((const uint16_t *)(const void *)src, dst, n * rank);
    else
      memcpy(dst, src, (size_t)n * rank * sizeof(float));
    return dst;
  }
  for (int t = 0; t < n; t++) {
    float *d = dst + (size_t)t * ldp;
    const unsigned char *s = src + (size_t)t * rank * c->esize;
    if (f16)
      c->kern->f16_to_f32((const uint16_t *)(const void *)s, d, rank);
    else
      memcpy(d, s, (size_t)rank * sizeof(float));
    for (int i = rank; i < ldp; i++) d[i] = 0.0f;
  }
  return dst;
}

typedef struct task_scratch {
  float *qrows;         /* [max_rows][dkp] */
  float *bt;            /* [rank_k][head_dim]: Bᵀ (PRE, non-identity) */
  float *ktile;         /* [KQ_TILE][dkp] */
  float *ltile;         /* [KQ_TILE][rkp] latent keys before reconstruction (PRE) */
  float *vtile;         /* [KQ_TILE][rvp] */
  float *s;             /* [max_rows][KQ_TILE] */
  float *m, *l, *alpha; /* [max_rows] */
  float *rotf;          /* storage of rot */
  double *rot;          /* [head_dim]: cos and sin of the current angles (PRE) */
  float *acc;           /* [max_rows][rvp] */
  float *qraw;          /* [max_rows][head_dim]: the task's queries (non-identity) */
  float *qlat;          /* [max_rows][rkp]: q B (PRE, non-identity) */
  float *at;            /* [rank_k][head_dim]: Aᵀ (PRE, non-identity) */
  float *kscale;        /* [n key segments][KQ_TILE]: a tile's key scales */
  float *vscale;        /* [n value segments][KQ_TILE] */
  float *ptmp;          /* [max_rows][KQ_TILE]: softmax weights times a value scale, or
                           pv_plane_i8's scratch (KQ_CPU_PV_I8_SCRATCH bytes, fewer) */
  int next_p;           /* PRE: position whose angles rot holds (-1: none) */
  float *bad;           /* [max_rows]: non-zero once a row met a non-finite logit */
  int16_t *q16;         /* [max_rows][ldq16]: int16 queries of the quantized key segments */
  float *q16scale;      /* [n key segments][max_rows] */
  int32_t *q16sum;      /* [n key segments][max_rows] */
  int16_t *wtmp;        /* [KQ_CPU_I16_ROWS][66]: int16 softmax weights */
  unsigned char *qd;    /* [max_rows][ldqd]: int8 query digits (ki8) */
} task_scratch;

static size_t layout_scratch(const attend_ctx *c, float *base, task_scratch *ts) {
  const kq_attend_op *op = c->op;
  size_t rows = (size_t)c->max_rows;
  int pre_latent = op->rope == KQ_ROPE_PRE && !c->identity_keys;
  int need_qlat = pre_latent || c->kwide, need_qraw = !c->identity_keys || c->kwide;
  size_t sizes[] = {
      rows * c->dkp,
      op->rope == KQ_ROPE_PRE ? (size_t)op->rank_k * op->head_dim : 0,
      (size_t)KQ_TILE * c->dkp,
      op->rope == KQ_ROPE_PRE ? (size_t)KQ_TILE * c->rkp : 0,
      (size_t)KQ_TILE * c->rvp,
      rows * KQ_TILE,
      rows,
      rows,
      rows,
      rows * c->rvp,
      op->rope == KQ_ROPE_PRE ? (size_t)2 * op->head_dim : 0, /* doubles, in floats */
      need_qraw ? rows * op->head_dim : 0,
      need_qlat ? rows * c->rkp : 0,
      pre_latent ? (size_t)op->rank_k * op->head_dim : 0,
      (size_t)c->kl.n * KQ_TILE,
      (size_t)c->vl.n * KQ_TILE,
      c->vl.n ? rows * KQ_TILE : 0,
      rows,
      c->qint ? (rows * c->ldq16 + 1) / 2 : 0, /* int16, in floats */
      c->qint ? (size_t)c->kl.n * rows : 0,
      c->qint ? (size_t)c->kl.n * rows : 0, /* int32 */
      c->qint ? (size_t)KQ_CPU_I16_ROWS * 66 / 2 : 0,
      c->ki8 ? (rows * c->ldqd + 3) / 4 : 0, /* bytes, in floats */
  };
  float *q16, *q16sum, *wtmp, *qd;
  float **slots[] = {&ts->qrows, &ts->bt,       &ts->ktile,  &ts->ltile,  &ts->vtile, &ts->s,
                     &ts->m,     &ts->l,        &ts->alpha,  &ts->acc,    &ts->rotf,  &ts->qraw,
                     &ts->qlat,  &ts->at,       &ts->kscale, &ts->vscale, &ts->ptmp,  &ts->bad,
                     &q16,       &ts->q16scale, &q16sum,     &wtmp,       &qd};
  size_t off = 0;
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    if (base) *slots[i] = base + off;
    off += (sizes[i] + 15) & ~(size_t)15; /* keep every slot 64-byte aligned */
  }
  if (base) {
    ts->q16 = (int16_t *)(void *)q16;
    ts->q16sum = (int32_t *)(void *)q16sum;
    ts->wtmp = (int16_t *)(void *)wtmp;
    ts->qd = (unsigned char *)(void *)qd;
    ts->rot = (double *)(void *)ts->rotf;
    ts->next_p = -1;
  }
  return off * sizeof(float);
}

/* The key segments as the kernels see them (bits, width, query column);
 * data and scale are filled per tile. */
static void key_planes(const attend_ctx *c, kq_cpu_plane *pl) {
  for (int g = 0; g < c->kl.n; g++)
    pl[g] = (kq_cpu_plane){c->kl.seg[g].bits,
                           c->op->storage == KQ_STORAGE_F16,
                           c->kl.seg[g].width,
                           c->kl.seg[g].poff,
                           NULL,
                           c->kl.seg[g].row_bytes,
                           NULL};
}

/* Builds the scaled query rows of a task: q̃ = q B (POST/NONE) or
 * q̂ = rot(q B Aᵀ, pos) (PRE), times scale · log2 e, zero-padded to dkp. */
static void prepare_queries(const attend_ctx *c, task_scratch *ts, int h, int j0, int nq,
                            int qpos0) {
  const kq_attend_op *op = c->op;
  int d = op->head_dim, rk = op->rank_k, rows = nq * c->group;
  int pre = op->rope == KQ_ROPE_PRE;
  /* Row r = jj * group + gi is query j0 + jj of head h * group + gi; the
   * group's heads are adjacent in q. Segmented keys: q̃ is built in qlat
   * (latent order), then spread to the widened layout of the key tiles. */
  int direct = c->identity_keys && !c->kwide;
  float *raw = direct ? ts->qrows : ts->qraw;
  int ldr = direct ? c->dkp : d;
  float *lat = c->kwide ? ts->qlat : ts->qrows;
  int ldl = c->kwide ? c->rkp : c->dkp;
  for (int jj = 0; jj < nq; jj++)
    for (int gi = 0; gi < c->group; gi++)
      memcpy(raw + (size_t)(jj * c->group + gi) * ldr,
             c->q + ((size_t)(j0 + jj) * op->n_heads + h * c->group + gi) * d,
             (size_t)d * sizeof(float));
  if (!c->identity_keys) {
    /* Rows sharing one B at once (the blocked matmul kernel): all of them
     * per head; in the JOINT layout the runs of heads_per_kv heads. */
    int run = c->joint ? c->heads_per_kv : rows;
    for (int r0 = 0; r0 < rows; r0 += run) {
      int head = h * c->group + r0 % c->group;
      const float *B = c->query_down + (size_t)(head / c->heads_per_kv) * d * rk;
      if (pre) {
        c->kern->matmul_rows(ts->qraw, rows, d, B, d, rk, ts->qlat, c->rkp);
        c->kern->matmul_rows(ts->qlat, rows, c->rkp, ts->at, rk, d, ts->qrows, c->dkp);
      } else {
        c->kern->matmul_rows(raw + (size_t)r0 * ldr, run, ldr, B, d, rk, lat + (size_t)r0 * ldl,
                             ldl);
      }
    }
  } else if (c->kwide) {
    for (int r = 0; r < rows; r++)
      memcpy(lat + (size_t)r * ldl, raw + (size_t)r * ldr, (size_t)d * sizeof(float));
  }
  if (c->kwide) {
    for (int r = 0; r < rows; r++) {
      float *row = ts->qrows + (size_t)r * c->dkp;
      memset(row, 0, (size_t)c->dkp * sizeof(float));
      for (int g = 0; g < c->kl.n; g++)
        memcpy(row + c->kl.seg[g].poff, lat + (size_t)r * ldl + c->kl.seg[g].noff,
               (size_t)c->kl.seg[g].width * sizeof(float));
    }
  }
  /* Logits in units of log2: the softmax works in base 2 (softmax_update). */
  float qscale = op->scale * 1.44269504088896341f;
  double *cs = ts->rot, *sn = ts->rot + d / 2;
  for (int jj = 0; jj < nq; jj++) {
    if (pre) rope_angles((double)(qpos0 + jj), c->inv_freq, d / 2, cs, sn);
    for (int gi = 0; gi < c->group; gi++) {
      float *row = ts->qrows + (size_t)(jj * c->group + gi) * c->dkp;
      if (pre) rope_apply(row, d, cs, sn, op->rope_layout);
      for (int i = 0; i < c->dk; i++) row[i] *= qscale;
      for (int i = c->dk; i < c->dkp; i++) row[i] = 0.0f;
    }
  }
  if (c->ki8 && rows <= KQ_PLANE_ROWS) { /* int8 query digits of the quantized key segments */
    kq_cpu_plane pl[KQ_MAX_SEGMENTS];
    key_planes(c, pl);
    kq_cpu_query_i8(pl, c->kl.n, ts->qrows, rows, c->dkp, ts->qd, c->ldqd);
  }
  if (c->qint && c->kplane) /* the int16 queries of the quantized key segments */
    for (int g = 0; g < c->kl.n; g++) {
      const seg_plane *sp = &c->kl.seg[g];
      if (!sp->scale) continue;
      for (int r = 0; r < rows; r++)
        kq_cpu_query_i16(sp->bits, ts->qrows + (size_t)r * c->dkp + sp->poff, sp->width,
                         ts->q16 + (size_t)r * c->ldq16 + c->kq16[g],
                         ts->q16scale + (size_t)g * c->max_rows + r,
                         ts->q16sum + (size_t)g * c->max_rows + r);
    }
}

/* Positions [p, p + nt) of group h of a segmented side as F32 rows
 * dst[t * ld ..]. Widened (natural = 0): each segment at its column poff,
 * unscaled, its scales in scales[g * KQ_TILE + t]; the padding columns are
 * left as they are (zero). Natural: each segment at its latent dim noff,
 * dequantized (q · s), columns [rank, ld) zeroed. */
static void widen_tile(const attend_ctx *c, const side_layout *sl, int h, int p, int nt, float *dst,
                       int ld, float *scales, int natural) {
  const kq_cpu_kernels *kern = c->kern;
  size_t slot = (size_t)h * c->op->capacity + (size_t)p;
  int rank = 0;
  for (int g = 0; g < sl->n; g++) {
    const seg_plane *sp = &sl->seg[g];
    const unsigned char *src = sp->data + slot * sp->row_bytes;
    float *d0 = dst + (natural ? sp->noff : sp->poff);
    kern->widen_rows(sp->bits, c->op->storage == KQ_STORAGE_F16, src, sp->row_bytes, nt, sp->width,
                     d0, ld);
    if (sp->scale) {
      float *sc = scales + (size_t)g * KQ_TILE;
      kern->f16_to_f32(sp->scale + slot, sc, nt);
      if (natural)
        for (int t = 0; t < nt; t++)
          for (int i = 0; i < sp->width; i++) d0[(size_t)t * ld + i] *= sc[t];
    }
    rank += sp->width;
  }
  if (natural)
    for (int t = 0; t < nt; t++)
      for (int i = rank; i < ld; i++) dst[(size_t)t * ld + i] = 0.0f;
}

/* Logits of the key tile [p, p + nt) of group h read from the planes in
 * place, segment by segment (each scale applied to its partial logit). */
static void logits_planes(const attend_ctx *c, task_scratch *ts, int h, int p, int nt, int rows) {
  size_t slot = (size_t)h * c->op->capacity + (size_t)p;
  int f16 = c->op->storage == KQ_STORAGE_F16;
  if (!c->qint && c->kern->logits_planes) { /* every segment in one pass */
    kq_cpu_plane pl[KQ_MAX_SEGMENTS];
    for (int g = 0; g < c->kl.n; g++) {
      const seg_plane *sp = &c->kl.seg[g];
      float *sc = NULL;
      if (sp->scale) {
        sc = ts->kscale + (size_t)g * KQ_TILE;
        c->kern->f16_to_f32(sp->scale + slot, sc, nt);
      }
      pl[g] = (kq_cpu_plane){
          sp->bits, f16, sp->width, sp->poff, sp->data + slot * sp->row_bytes, sp->row_bytes, sc};
    }
    if (c->ki8 && rows <= KQ_PLANE_ROWS)
      c->kern->logits_planes_i8(pl, c->kl.n, ts->qrows, c->dkp, ts->qd, c->ldqd, rows, nt, ts->s,
                                KQ_TILE);
    else
      c->kern->logits_planes(pl, c->kl.n, ts->qrows, rows, c->dkp, nt, ts->s, KQ_TILE);
    return;
  }
  for (int g = 0; g < c->kl.n; g++) {
    const seg_plane *sp = &c->kl.seg[g];
    float *sc = NULL;
    if (sp->scale) {
      sc = ts->kscale + (size_t)g * KQ_TILE;
      c->kern->f16_to_f32(sp->scale + slot, sc, nt);
    }
    if (c->qint && sp->scale)
      c->kern->logits_plane_i16(
          sp->bits, ts->q16 + c->kq16[g], rows, c->ldq16, ts->q16scale + (size_t)g * c->max_rows,
          ts->q16sum + (size_t)g * c->max_rows, sp->data + slot * sp->row_bytes, sp->row_bytes, nt,
          sp->width, sc, ts->s, KQ_TILE, g > 0);
    else
      c->kern->logits_plane(sp->bits, f16, ts->qrows + sp->poff, rows, c->dkp,
                            sp->data + slot * sp->row_bytes, sp->row_bytes, nt, sp->width, sc,
                            ts->s, KQ_TILE, g > 0);
  }
}

/* acc += P · V for the value tile [p, p + nt) read from the planes in
 * place; a quantized segment's scale folds into the weights (ptmp). */
static void pv_planes(const attend_ctx *c, task_scratch *ts, int h, int p, int nt, int rows) {
  size_t slot = (size_t)h * c->op->capacity + (size_t)p;
  int f16 = c->op->storage == KQ_STORAGE_F16;
  for (int g = 0; g < c->vl.n; g++) {
    const seg_plane *sp = &c->vl.seg[g];
    const float *w = ts->s;
    if (sp->scale) {
      float *sc = ts->vscale + (size_t)g * KQ_TILE;
      c->kern->f16_to_f32(sp->scale + slot, sc, nt);
      if (c->vi8 && rows <= KQ_CPU_PV_I8_ROWS) {
        c->kern->pv_plane_i8(sp->bits, ts->s, rows, KQ_TILE, sp->data + slot * sp->row_bytes,
                             sp->row_bytes, nt, sp->width, sc, ts->acc + sp->poff, c->rvp,
                             (unsigned char *)ts->ptmp);
        continue;
      }
      for (int r = 0; r < rows; r++)
        for (int t = 0; t < nt; t++)
          ts->ptmp[(size_t)r * KQ_TILE + t] = ts->s[(size_t)r * KQ_TILE + t] * sc[t];
      w = ts->ptmp;
    }
    const unsigned char *v = sp->data + slot * sp->row_bytes;
    if (c->qint && sp->scale) {
      c->kern->pv_plane_i16(sp->bits, w, rows, KQ_TILE, v, sp->row_bytes, nt, sp->width,
                            ts->acc + sp->poff, c->rvp, ts->wtmp);
    } else {
      c->kern->pv_plane(sp->bits, f16, w, rows, KQ_TILE, v, sp->row_bytes, nt, sp->width,
                        ts->acc + sp->poff, c->rvp);
    }
  }
}

/* 1 when the in-place kernels take every segment: the F32 ones any width,
 * the int16 ones widths up to KQ_CPU_I16_MAX_WIDTH. */
static int planes_ok(const side_layout *sl, int qint) {
  for (int g = 0; g < sl->n; g++)
    if (qint && sl->seg[g].scale && sl->seg[g].width > KQ_CPU_I16_MAX_WIDTH) return 0;
  return sl->n > 0;
}

/* The kernels' view of a side's segments in a widened tile. */
static void seg_desc(const side_layout *sl, const float *scales, kq_cpu_seg *out) {
  for (int g = 0; g < sl->n; g++) {
    out[g].off = sl->seg[g].poff;
    out[g].width = pad_to(sl->seg[g].width);
    out[g].scale = sl->seg[g].scale ? scales + (size_t)g * KQ_TILE : NULL;
  }
}

/* The key tile [p, p + nt) as logit-ready F32 rows [nt, dkp]. */
static const float *load_key_tile(const attend_ctx *c, task_scratch *ts, int h,
                                  const unsigned char *kbase, int p, int nt) {
  const kq_attend_op *op = c->op;
  int rk = op->rank_k, d = op->head_dim;
  const unsigned char *src = kbase + (size_t)p * rk * c->esize;
  if (op->rope != KQ_ROPE_PRE) return load_rows(c, src, nt, rk, c->dkp, ts->ktile, 0);
  /* PRE: k̂ = rot(k̃ Bᵀ, p), reconstructed in the tile only (once per task,
   * shared by all its rows). The padding columns [d, dkp) of ktile were
   * zeroed when the task started and are never written. */
  if (c->kl.n) { /* quantized latents: dequantized first, then as below */
    if (c->identity_keys) {
      widen_tile(c, &c->kl, h, p, nt, ts->ktile, c->dkp, ts->kscale, 1);
    } else {
      widen_tile(c, &c->kl, h, p, nt, ts->ltile, c->rkp, ts->kscale, 1);
      c->kern->matmul_rows(ts->ltile, nt, c->rkp, ts->bt, rk, d, ts->ktile, c->dkp);
    }
  } else if (c->identity_keys) {
    load_rows(c, src, nt, rk, c->dkp, ts->ktile, 1);
  } else {
    const float *lat = load_rows(c, src, nt, rk, c->rkp, ts->ltile, 0);
    c->kern->matmul_rows(lat, nt, c->rkp, ts->bt, rk, d, ts->ktile, c->dkp);
  }
  /* Angles at p by the recurrence carried over from the previous tile,
   * recomputed exactly at the task's first tile and every KQ_ROPE_RESYNC. */
  double *cs = ts->rot, *sn = ts->rot + d / 2;
  if (p != ts->next_p || p % KQ_ROPE_RESYNC == 0)
    rope_angles((double)p, c->inv_freq, d / 2, cs, sn);
  c->kern->rope_rows(ts->ktile, nt, c->dkp, d, op->rope_layout == KQ_ROPE_HALVES, cs, sn,
                     c->step_cos, c->step_sin);
  ts->next_p = p + nt;
  return ts->ktile;
}

/* dst[i] = acc row i · mul for the rank_v latent dims (segmented values:
 * gathered from the widened layout). */
static void store_row(const attend_ctx *c, const float *a, float *dst, float mul) {
  if (!c->vl.n) {
    for (int i = 0; i < c->op->rank_v; i++) dst[i] = a[i] * mul;
    return;
  }
  for (int g = 0; g < c->vl.n; g++) {
    const seg_plane *sp = &c->vl.seg[g];
    for (int i = 0; i < sp->width; i++) dst[sp->noff + i] = a[sp->poff + i] * mul;
  }
}

static void attend_task(void *vctx, int64_t index, int worker, void *scratch) {
  (void)worker;
  const attend_ctx *c = vctx;
  const kq_attend_op *op = c->op;
  int chunk = (int)(index % c->n_chunks);
  int qb = (int)((index / c->n_chunks) % c->n_qblocks);
  int h = (int)(index / ((int64_t)c->n_chunks * c->n_qblocks));
  int rk = op->rank_k, rv = op->rank_v, d = op->head_dim;

  task_scratch ts;
  layout_scratch(c, scratch, &ts);

  int j0 = qb * c->qblock;
  int nq = op->n_queries - j0 < c->qblock ? op->n_queries - j0 : c->qblock;
  int qpos0 = op->n_ctx - op->n_queries + j0; /* position of the block's first query */
  int rows = nq * c->group;
  int p0 = chunk * c->chunk_len;
  int p1 = p0 + c->chunk_len;
  if (p1 > qpos0 + nq) p1 = qpos0 + nq; /* nothing past the block's last query */

  for (int r = 0; r < rows; r++) {
    ts.m[r] = -INFINITY;
    ts.l[r] = 0.0f;
    ts.bad[r] = 0.0f;
  }
  memset(ts.acc, 0, (size_t)rows * c->rvp * sizeof(float));

  if (p0 < p1) {
    if (op->rope == KQ_ROPE_PRE && !c->identity_keys) {
      const float *B = c->query_down + (size_t)h * d * rk;
      const float *A = c->key_down + (size_t)h * d * rk;
      for (int i = 0; i < d; i++)
        for (int k = 0; k < rk; k++) {
          ts.bt[(size_t)k * d + i] = B[(size_t)i * rk + k];
          ts.at[(size_t)k * d + i] = A[(size_t)i * rk + k];
        }
      for (int t = 0; t < KQ_TILE; t++)
        for (int i = d; i < c->dkp; i++) ts.ktile[(size_t)t * c->dkp + i] = 0.0f;
    }
    kq_cpu_seg kdesc[KQ_MAX_SEGMENTS], vdesc[KQ_MAX_SEGMENTS];
    /* The int16 kernels read planes in place for any number of rows (a
     * conversion to int16 is cheap next to the products it feeds). */
    int kplane = c->kplane && (c->qint || rows <= KQ_PLANE_ROWS);
    int vplane = c->vplane && (c->qint || rows <= KQ_PLANE_ROWS);
    if (c->kwide) {
      seg_desc(&c->kl, ts.kscale, kdesc);
      memset(ts.ktile, 0, (size_t)KQ_TILE * c->dkp * sizeof(float));
    }
    if (c->vl.n) {
      seg_desc(&c->vl, ts.vscale, vdesc);
      memset(ts.vtile, 0, (size_t)KQ_TILE * c->rvp * sizeof(float));
    }
    prepare_queries(c, &ts, h, j0, nq, qpos0);
    const unsigned char *kbase = c->k_cache + (size_t)h * op->capacity * rk * c->esize;
    const unsigned char *vbase = c->v_cache + (size_t)h * op->capacity * rv * c->esize;
    for (int p = p0; p < p1; p += c->tile) {
      int nt = p1 - p < c->tile ? p1 - p : c->tile;
      const unsigned char *ksrc = kbase + (size_t)p * rk * c->esize;
      const unsigned char *vsrc = vbase + (size_t)p * rv * c->esize;
      if (kplane) {
        logits_planes(c, &ts, h, p, nt, rows);
      } else if (c->kwide) {
        widen_tile(c, &c->kl, h, p, nt, ts.ktile, c->dkp, ts.kscale, 0);
        c->kern->logits_seg(ts.qrows, rows, ts.ktile, nt, c->dkp, kdesc, c->kl.n, ts.s, KQ_TILE);
      } else if (c->direct_k) {
        c->kern->logits_f16(ts.qrows, rows, (const uint16_t *)(const void *)ksrc, nt, c->dkp, ts.s,
                            KQ_TILE);
      } else {
        c->kern->logits(ts.qrows, rows, load_key_tile(c, &ts, h, kbase, p, nt), nt, c->dkp, ts.s,
                        KQ_TILE);
      }
      /* IEEE semantics (kqsvd.h): a non-finite logit in a row's causal range
       * makes that row's output NaN. Checked before the mask writes -inf.
       * A tile that every row sees whole (decode, and prefill tiles before
       * the block's first query) needs no mask and is checked in one call;
       * only a hit is traced to its rows. */
      int whole = qpos0 >= p + nt - 1;
      if (!whole || c->kern->any_nonfinite_rows(ts.s, rows, KQ_TILE, nt))
        for (int r = 0; r < rows; r++) {
          int valid = qpos0 + r / c->group - p + 1;
          valid = valid < 0 ? 0 : valid > nt ? nt : valid;
          float *sr = ts.s + (size_t)r * KQ_TILE;
          if (kq_any_nonfinite_f32(sr, (size_t)valid)) ts.bad[r] = 1.0f;
          for (int t = valid; t < nt; t++) sr[t] = -INFINITY;
        }
      c->kern->softmax_update(ts.s, rows, KQ_TILE, nt, ts.m, ts.l, ts.alpha);
      for (int r = 0; r < rows; r++) {
        float alpha = ts.alpha[r];
        if (alpha == 1.0f) continue;
        float *restrict a = ts.acc + (size_t)r * c->rvp;
        for (int i = 0; i < c->rvp; i++) a[i] *= alpha;
      }
      if (vplane) {
        pv_planes(c, &ts, h, p, nt, rows);
      } else if (c->vl.n) {
        widen_tile(c, &c->vl, h, p, nt, ts.vtile, c->rvp, ts.vscale, 0);
        c->kern->pv_seg(ts.s, rows, KQ_TILE, ts.vtile, nt, c->rvp, vdesc, c->vl.n, ts.acc, ts.ptmp);
      } else if (c->direct_v)
        c->kern->pv_f16(ts.s, rows, KQ_TILE, (const uint16_t *)(const void *)vsrc, nt, c->rvp,
                        ts.acc);
      else
        c->kern->pv(ts.s, rows, KQ_TILE, load_rows(c, vsrc, nt, rv, c->rvp, ts.vtile, 0), nt,
                    c->rvp, ts.acc);
    }
  }

  if (c->n_chunks == 1) {
    for (int r = 0; r < rows; r++) {
      int jj = r / c->group, head = h * c->group + r % c->group;
      float *o = c->out + ((size_t)(j0 + jj) * op->n_heads + head) * rv;
      float inv = ts.l[r] > 0.0f ? 1.0f / ts.l[r] : 0.0f;
      store_row(c, ts.acc + (size_t)r * c->rvp, o, ts.bad[r] != 0.0f ? NAN : inv);
    }
  } else {
    for (int r = 0; r < rows; r++) {
      float *part = c->partials + ((size_t)index * c->max_rows + r) * (rv + 2);
      part[0] = ts.bad[r] != 0.0f ? INFINITY : ts.m[r]; /* +inf marks a poisoned chunk */
      part[1] = ts.l[r];
      store_row(c, ts.acc + (size_t)r * c->rvp, part + 2, 1.0f);
    }
  }
}

/* Merges the chunk partials of every (kv head, query block, row) in chunk
 * order. */
static void merge_partials(const attend_ctx *c) {
  const kq_attend_op *op = c->op;
  int rv = op->rank_v;
  for (int h = 0; h < c->n_groups; h++) {
    for (int qb = 0; qb < c->n_qblocks; qb++) {
      int j0 = qb * c->qblock;
      int nq = op->n_queries - j0 < c->qblock ? op->n_queries - j0 : c->qblock;
      for (int r = 0; r < nq * c->group; r++) {
        int64_t first = ((int64_t)h * c->n_qblocks + qb) * c->n_chunks;
        float mmax = -INFINITY;
        for (int ch = 0; ch < c->n_chunks; ch++) {
          const float *part = c->partials + ((size_t)(first + ch) * c->max_rows + r) * (rv + 2);
          if (part[0] > mmax) mmax = part[0];
        }
        int jj = r / c->group, head = h * c->group + r % c->group;
        float *o = c->out + ((size_t)(j0 + jj) * op->n_heads + head) * rv;
        for (int i = 0; i < rv; i++) o[i] = 0.0f;
        float l = 0.0f;
        for (int ch = 0; ch < c->n_chunks; ch++) {
          const float *part = c->partials + ((size_t)(first + ch) * c->max_rows + r) * (rv + 2);
          if (part[0] == -INFINITY) continue;
          float w = exp2f(part[0] - mmax); /* m in units of log2 */
          l += w * part[1];
          for (int i = 0; i < rv; i++) o[i] += w * part[2 + i];
        }
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
        if (mmax == INFINITY) inv = NAN; /* a chunk met a non-finite logit */
        for (int i = 0; i < rv; i++) o[i] *= inv;
      }
    }
  }
}

/* Fills *c for one sequence's op (c->op = op) and counts its tasks; the
 * context is split into chunks only when `batch_base` (the (group, query
 * block) pairs of the whole batch) cannot feed every thread. Owns
 * c->partials and c->inv_freq (attend_release). */
static kq_status attend_setup(const kq_attend_op *op, int64_t batch_base, attend_ctx *out,
                              int64_t *out_tasks) {
  /* The core checked the op (kqsvd_backend.h, "What a backend may trust");
   * the rows of one group must fit this backend's tiles. */
  int joint = op->layout == KQ_LAYOUT_JOINT;
  if ((joint ? op->n_heads : op->n_heads / op->n_kv_heads) > KQ_MAX_ROWS)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "cpu: attend: %d query heads per latent group (at most %d)",
                        joint ? op->n_heads : op->n_heads / op->n_kv_heads, KQ_MAX_ROWS);
  size_t esize = op->storage == KQ_STORAGE_F16 ? 2 : 4;

  attend_ctx c = {
      .op = op,
      .kern = kq_cpu_kernels_get(),
      .k_cache = op->k_cache->data + op->k_cache_offset,
      .v_cache = op->v_cache->data + op->v_cache_offset,
      .q = (const float *)(op->q->data + op->q_offset),
      .out = (float *)(op->out->data + op->out_offset),
      .joint = joint,
      .heads_per_kv = op->n_heads / op->n_kv_heads,
      .identity_keys = (op->flags & KQ_OP_IDENTITY_KEYS) != 0,
      .esize = esize,
  };
  c.n_groups = c.joint ? 1 : op->n_kv_heads;
  c.group = op->n_heads / c.n_groups;
  if (!c.identity_keys) {
    if (!c.joint) c.key_down = (const float *)(op->key_down->data + op->key_down_offset);
    c.query_down = (const float *)(op->query_down->data + op->query_down_offset);
  }
  side_layout_init(&c.kl, op->n_key_segments, op->key_segments, op->storage, (size_t)c.n_groups,
                   (size_t)op->capacity, c.k_cache);
  side_layout_init(&c.vl, op->n_value_segments, op->value_segments, op->storage, (size_t)c.n_groups,
                   (size_t)op->capacity, c.v_cache);
  c.kwide = c.kl.n > 0 && op->rope != KQ_ROPE_PRE;
  c.dk = op->rope == KQ_ROPE_PRE ? op->head_dim : c.kwide ? c.kl.padded : op->rank_k;
  c.dkp = pad_to(c.dk);
  c.rkp = pad_to(op->rank_k);
  c.rvp = c.vl.n ? c.vl.padded : pad_to(op->rank_v);
  c.qint = c.kern->logits_plane_i16 && kq_cpu_quant_int16();
  c.kplane = c.kwide && c.kern->logits_plane && planes_ok(&c.kl, c.qint);
  c.vplane = c.kern->pv_plane && planes_ok(&c.vl, c.qint);
  if (!c.kplane && !c.vplane) c.qint = 0;
  for (int g = 0; g < c.kl.n && c.qint && c.kplane; g++) {
    c.kq16[g] = c.ldq16;
    if (c.kl.seg[g].scale) c.ldq16 += kq_cpu_i16_width(c.kl.seg[g].width);
  }
  c.ki8 = c.kplane && !c.qint && c.kern->logits_planes_i8 && kq_cpu_quant_int8();
  if (c.ki8) {
    kq_cpu_plane pl[KQ_MAX_SEGMENTS];
    key_planes(&c, pl);
    c.ldqd = kq_cpu_query_i8_bytes(pl, c.kl.n);
  }
  c.vi8 = c.vplane && !c.qint && c.kern->pv_plane_i8 && kq_cpu_quant_int8_pv();
  int f16 = op->storage == KQ_STORAGE_F16;
  c.direct_k = f16 && c.kern->logits_f16 && op->rope != KQ_ROPE_PRE &&
               op->rank_k % KQ_CPU_PAD == 0 && !c.kl.n;
  c.direct_v = f16 && c.kern->pv_f16 && op->rank_v % KQ_CPU_PAD == 0 && !c.vl.n;
  /* Positions per tile: about 2048 elements of the widest row, so the key
   * and value rows of a tile stay in L1 while the value kernel walks them
   * once per column block (measured on Zen: rank 64 best at 32 positions,
   * rank 128 at 8-16; 64 positions at rank 128 was 2x slower). */
  int widest = c.dkp > c.rvp ? c.dkp : c.rvp;
  /* Decode whose every task reads both sides' planes in place: the budget
   * in bytes of the stored rows (2048 F32 elements = 8 KiB), not of F32
   * rows, so a tile's per-row work (softmax, checks, scales, the
   * accumulator's loads and stores) is shared by up to KQ_TILE positions. */
  if (op->n_queries * c.group <= KQ_PLANE_ROWS && c.kplane && c.vplane) {
    size_t kb = 0, vb = 0;
    for (int g = 0; g < c.kl.n; g++) kb += c.kl.seg[g].row_bytes;
    for (int g = 0; g < c.vl.n; g++) vb += c.vl.seg[g].row_bytes;
    widest = (int)(((kb > vb ? kb : vb) + 3) / 4);
  }
  c.tile = KQ_TILE;
  while (c.tile > 8 && c.tile * widest > 2048) c.tile /= 2;
  c.max_rows = op->rope == KQ_ROPE_PRE ? KQ_PRE_ROWS : KQ_MAX_ROWS;
  if (c.max_rows < c.group) c.max_rows = c.group; /* MQA with many heads: one query a block */
  c.qblock = c.max_rows / c.group;
  if (c.qblock > op->n_queries) c.qblock = op->n_queries;
  c.n_qblocks = (op->n_queries + c.qblock - 1) / c.qblock;

  /* Split the context only when (kv head, block) pairs cannot feed every
   * thread with several tasks each (decode: 8 kv heads on 2 threads, or 3 on
   * 2); the task count is then a multiple of the team size, so that equal
   * chunks end together (3 heads x 3 chunks on 2 threads left one thread
   * idle for a ninth of the step). Chunk boundaries depend on the shape,
   * the batch's pair count and the team size only. */
  int threads = kq_cpu_pool_threads();
  int64_t base = (int64_t)c.n_groups * c.n_qblocks;
  if (batch_base < base) batch_base = base;
  int n_chunks = 1;
  if (threads > 1 && batch_base < KQ_TASKS_PER_THREAD * threads) {
    n_chunks = (int)((KQ_TASKS_PER_THREAD * threads + batch_base - 1) / batch_base);
    while (batch_base * n_chunks % threads != 0) n_chunks++;
  }
  int max_chunks = (op->n_ctx + 4 * KQ_TILE - 1) / (4 * KQ_TILE);
  if (n_chunks > max_chunks) n_chunks = max_chunks;
  if (n_chunks < 1) n_chunks = 1;
  int chunk_len = (op->n_ctx + n_chunks - 1) / n_chunks;
  chunk_len = (chunk_len + KQ_TILE - 1) / KQ_TILE * KQ_TILE;
  n_chunks = (op->n_ctx + chunk_len - 1) / chunk_len;
  c.n_chunks = n_chunks;
  c.chunk_len = chunk_len;

  int64_t n_tasks = base * n_chunks;
  double *inv_freq = NULL;
  if (op->rope == KQ_ROPE_PRE) {
    int half = op->head_dim / 2;
    inv_freq = kq_malloc_array((size_t)3 * half, sizeof(double), "cpu rope table");
    if (!inv_freq) return KQ_ERR_OUT_OF_MEMORY;
    for (int j = 0; j < half; j++) inv_freq[j] = kq_rope_inv_freq(op->rope_theta, op->head_dim, j);
    for (int j = 0; j < half; j++) {
      inv_freq[half + j] = cos(inv_freq[j]);
      inv_freq[2 * half + j] = sin(inv_freq[j]);
    }
    c.inv_freq = inv_freq;
    c.step_cos = inv_freq + half;
    c.step_sin = inv_freq + 2 * half;
  }
  if (n_chunks > 1) {
    c.partials = kq_malloc_array((size_t)n_tasks * c.max_rows * (size_t)(op->rank_v + 2),
                                 sizeof(float), "cpu attention partials");
    if (!c.partials) {
      free(inv_freq);
      return KQ_ERR_OUT_OF_MEMORY;
    }
  }
  *out = c;
  *out_tasks = n_tasks;
  return KQ_OK;
}

static void attend_release(attend_ctx *c) {
  free(c->partials);
  free((double *)c->inv_freq);
  c->partials = NULL;
  c->inv_freq = NULL;
}

/* Work of one sequence (for the serial threshold). */
static double attend_work(const kq_attend_op *op) {
  return (double)op->n_ctx * op->n_queries * op->n_heads * (op->rank_k + op->rank_v);
}

/* Every sequence of a batch in one pool run: task i belongs to the
 * sequence s with first[s] <= i < first[s + 1]. */
typedef struct batch_ctx {
  attend_ctx *seqs;
  const int64_t *first; /* [n + 1] */
  int32_t n;
} batch_ctx;

static void batch_task(void *vctx, int64_t index, int worker, void *scratch) {
  const batch_ctx *b = vctx;
  int32_t lo = 0, hi = b->n - 1;
  while (lo < hi) { /* the last s with first[s] <= index */
    int32_t mid = (lo + hi + 1) / 2;
    if (b->first[mid] <= index)
      lo = mid;
    else
      hi = mid - 1;
  }
  attend_task(&b->seqs[lo], index - b->first[lo], worker, scratch);
}

/* The (sequence, kv group, query block, chunk) tasks of every sequence of
 * the op run in one pool run, so a batched decode wakes the team once. */
kq_status kq_cpu_attend(kq_bdevice *device, const kq_attend_op *op) {
  (void)device;
  /* The core checked the op (kqsvd_backend.h, "What a backend may trust");
   * the rows of one group must fit this backend's tiles. */
  int joint = op->layout == KQ_LAYOUT_JOINT;
  if ((joint ? op->n_heads : op->n_heads / op->n_kv_heads) > KQ_MAX_ROWS)
    return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                        "cpu: attend: %d query heads per latent group (at most %d)",
                        joint ? op->n_heads : op->n_heads / op->n_kv_heads, KQ_MAX_ROWS);
  const int32_t n = op->n_seqs;
  kq_attend_op *ops = kq_malloc_array((size_t)n, sizeof *ops, "cpu attend sequences");
  attend_ctx *ctx = kq_calloc_array((size_t)n, sizeof *ctx, "cpu attend contexts");
  int64_t *first = kq_malloc_array((size_t)n + 1, sizeof *first, "cpu attend tasks");
  kq_status st = ops && ctx && first ? KQ_OK : KQ_ERR_OUT_OF_MEMORY;
  /* (group, query block) pairs of the batch decide the chunking. */
  int64_t base = 0;
  double work = 0;
  for (int32_t i = 0; i < n && st == KQ_OK; i++) {
    ops[i] = kq_attend_op_seq(op, i);
    int32_t groups = joint ? 1 : op->n_kv_heads, group = op->n_heads / groups;
    int32_t max_rows = op->rope == KQ_ROPE_PRE ? KQ_PRE_ROWS : KQ_MAX_ROWS;
    int32_t qblock = (max_rows < group ? group : max_rows) / group;
    base += (int64_t)groups * ((ops[i].n_queries + qblock - 1) / qblock);
    work += attend_work(&ops[i]);
  }
  first[0] = 0;
  size_t scratch = 0;
  int32_t ready = 0;
  for (; ready < n && st == KQ_OK; ready++) {
    int64_t tasks = 0;
    st = attend_setup(&ops[ready], base, &ctx[ready], &tasks);
    if (st != KQ_OK) break;
    first[ready + 1] = first[ready] + tasks;
    task_scratch sizing;
    size_t bytes = layout_scratch(&ctx[ready], NULL, &sizing);
    if (bytes > scratch) scratch = bytes;
  }
  if (st == KQ_OK) {
    /* Tiny jobs run on the calling thread: waking the team costs more. */
    batch_ctx b = {.seqs = ctx, .first = first, .n = n};
    st = kq_cpu_pool_run(first[n], work < KQ_CPU_SERIAL_WORK ? 1 : 0, scratch, batch_task, &b);
  }
  for (int32_t i = 0; i < ready; i++) {
    if (st == KQ_OK && ctx[i].n_chunks > 1) merge_partials(&ctx[i]);
    attend_release(&ctx[i]);
  }
  free(ops);
  free(ctx);
  free(first);
  return st;
}
