/*
 * The one validation of backend ops: every op the core builds is checked
 * here against the promises of kqsvd_backend.h ("What a backend may trust")
 * before it reaches a backend. User arguments are validated by the public
 * calls (kq_cache_*); a failure here is a bug in the core, reported as
 * KQ_ERR_INVALID_ARGUMENT naming the op and field instead of a backend
 * reading out of bounds.
 */
#include "kq_common.h"
#include "kq_core.h"

static kq_status bad(const char *op, const char *what) {
  return kq_set_error(KQ_ERR_INVALID_ARGUMENT, "core: %s op breaks the backend contract: %s", op,
                      what);
}

/* [offset, offset + bytes) inside a buffer of `size` bytes, offset aligned. */
static int in_range(size_t offset, size_t bytes, size_t size, size_t align) {
  size_t end;
  return offset % align == 0 && kq_add_size(offset, bytes, &end) && end <= size;
}

/* Segments as the core hands them on: 0 (one float segment of `rank`), or a
 * normalized list (widths >= 1 summing to rank, bits known, Q4 widths even,
 * no two adjacent float segments, not a single float segment). */
static int segments_ok(int32_t n, const kq_segment *segs, int32_t rank) {
  if (n == 0) return 1;
  if (n < 1 || n > KQ_MAX_SEGMENTS || !segs || kq_segments_plain(n, segs)) return 0;
  int64_t sum = 0;
  for (int32_t s = 0; s < n; s++) {
    kq_segment g = segs[s];
    if (g.width < 1 || (g.bits != KQ_SEG_FLOAT && g.bits != KQ_SEG_Q8 && g.bits != KQ_SEG_Q4) ||
        (g.bits == KQ_SEG_Q4 && g.width % 2) ||
        (s > 0 && g.bits == KQ_SEG_FLOAT && segs[s - 1].bits == KQ_SEG_FLOAT))
      return 0;
    sum += g.width;
  }
  return sum == rank;
}

/* Bytes of a latent buffer of `groups` groups and `capacity` positions. */
static size_t latent_bytes(int32_t n, const kq_segment *segs, int32_t rank, kq_storage storage,
                           size_t groups, size_t capacity) {
  kq_segment plain = {rank, KQ_SEG_FLOAT};
  size_t total = 0;
  kq_segment_planes(n ? segs : &plain, n ? n : 1, storage, groups, capacity, 0, NULL, NULL, &total);
  return total;
}

/* The table's own promises (kq_op_seq): rows consecutive from 0 summing to
 * `total`, no sequence id or region named twice. `what` names the broken
 * one, *out_bad the entry. */
static int table_ok(const kq_op_seq *t, int32_t n, int32_t total, int attend, const char **what,
                    int32_t *out_bad) {
  int64_t row = 0;
  for (int32_t i = 0; i < n; i++) {
    *out_bad = i;
    if (t[i].row != row || t[i].n_rows < 1) {
      *what = "rows not consecutive from 0, or n_rows < 1";
      return 0;
    }
    row += t[i].n_rows;
    if ((attend ? t[i].pos : t[i].n_ctx) != 0 || (!attend && t[i].v_region) || t[i].reserved) {
      *what = "a field unused by the op (pos, n_ctx, v_region, reserved) is not 0";
      return 0;
    }
    for (int32_t j = 0; j < i; j++)
      if (t[j].seq == t[i].seq || t[j].k_region == t[i].k_region ||
          (attend && t[j].v_region == t[i].v_region)) {
        *what = "a sequence or region named twice";
        return 0;
      }
  }
  *out_bad = n - 1;
  if (row != total) {
    *what = "rows do not sum to the op's count";
    return 0;
  }
  return 1;
}

static kq_status bad_seq(const char *op, const kq_op_sizes *z, const kq_op_seq *e,
                         const char *what) {
  return kq_set_error(KQ_ERR_INVALID_ARGUMENT,
                      "core: %s op breaks the backend contract: layer %d, sequence %d: %s", op,
                      (int)z->layer, (int)e->seq, what);
}

static kq_status check_project_one(const kq_project_op *op, const kq_op_sizes *z, int fp16);
static kq_status check_attend_one(const kq_attend_op *op, const kq_op_sizes *z, int fp16,
                                  uint32_t caps);

kq_status kq_core_check_project(const kq_project_op *op, const kq_op_sizes *z, int fp16) {
  if (!op->seqs) {
    if (op->n_seqs != 1) return bad("project", "n_seqs != 1 without a sequence table");
    return check_project_one(op, z, fp16);
  }
  if (op->n_seqs < 1 || op->pos != 0) return bad("project", "n_seqs < 1, or pos set with a table");
  const char *what;
  int32_t i;
  if (!table_ok(op->seqs, op->n_seqs, op->n_tokens, 0, &what, &i))
    return bad_seq("project", z, &op->seqs[i], what);
  for (i = 0; i < op->n_seqs; i++) {
    kq_project_op one = kq_project_op_seq(op, i);
    if (check_project_one(&one, z, fp16) != KQ_OK)
      return kq_error_prefix(KQ_ERR_INVALID_ARGUMENT, "layer %d, sequence %d", (int)z->layer,
                             (int)op->seqs[i].seq);
  }
  return KQ_OK;
}

kq_status kq_core_check_attend(const kq_attend_op *op, const kq_op_sizes *z, int fp16,
                               uint32_t caps) {
  if (!op->seqs) {
    if (op->n_seqs != 1) return bad("attend", "n_seqs != 1 without a sequence table");
    return check_attend_one(op, z, fp16, caps);
  }
  if (op->n_seqs < 1) return bad("attend", "n_seqs < 1");
  const char *what;
  int32_t i, max_ctx = 0;
  if (!table_ok(op->seqs, op->n_seqs, op->n_queries, 1, &what, &i))
    return bad_seq("attend", z, &op->seqs[i], what);
  for (i = 0; i < op->n_seqs; i++) {
    const kq_op_seq *e = &op->seqs[i];
    if (e->n_ctx > op->capacity) return bad_seq("attend", z, e, "n_ctx > capacity");
    if (e->n_ctx > max_ctx) max_ctx = e->n_ctx;
    kq_attend_op one = kq_attend_op_seq(op, i);
    if (check_attend_one(&one, z, fp16, caps) != KQ_OK)
      return kq_error_prefix(KQ_ERR_INVALID_ARGUMENT, "layer %d, sequence %d", (int)z->layer,
                             (int)e->seq);
  }
  if (op->n_ctx != max_ctx) return bad("attend", "n_ctx is not the table's largest n_ctx");
  return KQ_OK;
}

static kq_status check_project_one(const kq_project_op *op, const kq_op_sizes *z, int fp16) {
  const char *name = "project";
  const int identity = (op->flags & (KQ_OP_IDENTITY_KEYS | KQ_OP_IDENTITY_VALUES)) != 0;
  if (!op->src || !op->dst || (!identity && !op->proj) || (identity && op->proj))
    return bad(name, "src/dst NULL, or proj NULL exactly when not the identity");
  if (op->dst == op->src || op->dst == op->proj) return bad(name, "dst is also an input");
  if (op->n_tokens < 1 || op->n_heads < 1 || op->head_dim < 1 || op->rank < 1 ||
      op->rank > op->head_dim || (identity && op->rank != op->head_dim) || op->capacity < 1 ||
      op->pos < 0 || op->pos > op->capacity - op->n_tokens || op->n_seqs != 1)
    return bad(name, "shape (tokens, heads, head_dim, rank, pos, capacity, n_seqs)");
  if (op->storage != KQ_STORAGE_F32 && (op->storage != KQ_STORAGE_F16 || !fp16))
    return bad(name, "storage type");
  if (!segments_ok(op->n_segments, op->segments, op->rank)) return bad(name, "segments");
  size_t H = (size_t)op->n_heads, d = (size_t)op->head_dim;
  if (!in_range(op->src_offset, (size_t)op->n_tokens * H * d * 4, z->src, 4) ||
      (!identity && !in_range(op->proj_offset, H * d * (size_t)op->rank * 4, z->proj, 4)) ||
      !in_range(op->dst_offset,
                latent_bytes(op->n_segments, op->segments, op->rank, op->storage, H,
                             (size_t)op->capacity),
                z->dst, KQ_PLANE_ALIGN))
    return bad(name, "a buffer range (src, proj, dst) is misaligned or out of bounds");
  return KQ_OK;
}

static kq_status check_attend_one(const kq_attend_op *op, const kq_op_sizes *z, int fp16,
                                  uint32_t caps) {
  const char *name = "attend";
  const int ik = (op->flags & KQ_OP_IDENTITY_KEYS) != 0, iv = (op->flags & KQ_OP_IDENTITY_VALUES);
  const int joint = op->layout == KQ_LAYOUT_JOINT;
  if (!op->q || !op->k_cache || !op->v_cache || !op->out || ik != !op->query_down ||
      (!joint && ik != !op->key_down))
    return bad(name, "q/k_cache/v_cache/out NULL, or key_down/query_down NULL exactly when not "
                     "the identity");
  if (op->layout != KQ_LAYOUT_PER_HEAD && op->layout != KQ_LAYOUT_JOINT) return bad(name, "layout");
  if (op->out == op->q || op->out == op->k_cache || op->out == op->v_cache ||
      op->out == op->key_down || op->out == op->query_down || op->out == op->value_up)
    return bad(name, "out is also an input");
  if (op->n_heads < 1 || op->n_kv_heads < 1 || op->n_heads % op->n_kv_heads || op->head_dim < 1 ||
      op->n_seqs != 1)
    return bad(name, "heads, head_dim or n_seqs");
  int32_t rmax = joint ? op->n_kv_heads * op->head_dim : op->head_dim;
  if (op->rank_k < 1 || op->rank_k > rmax || op->rank_v < 1 || op->rank_v > rmax ||
      (ik && op->rank_k != op->head_dim) || (iv && op->rank_v != op->head_dim) ||
      (joint && (ik || iv)))
    return bad(name, "ranks");
  if (op->n_queries < 1 || op->n_ctx < op->n_queries || op->n_ctx > op->capacity)
    return bad(name, "n_queries, n_ctx or capacity");
  if (op->storage != KQ_STORAGE_F32 && (op->storage != KQ_STORAGE_F16 || !fp16))
    return bad(name, "storage type");
  if ((op->rope != KQ_ROPE_NONE && op->rope != KQ_ROPE_POST && op->rope != KQ_ROPE_PRE) ||
      (op->rope_layout != KQ_ROPE_PAIRS && op->rope_layout != KQ_ROPE_HALVES) ||
      (op->rope == KQ_ROPE_PRE && (op->head_dim % 2 || joint)))
    return bad(name, "rope mode or layout");
  if (!segments_ok(op->n_key_segments, op->key_segments, op->rank_k) ||
      !segments_ok(op->n_value_segments, op->value_segments, op->rank_v))
    return bad(name, "segments");
  if (op->value_up && (!(caps & KQ_BACKEND_CAP_FUSED_UP) || iv))
    return bad(name, "value_up without KQ_BACKEND_CAP_FUSED_UP or with identity values");
  size_t nq = (size_t)op->n_queries, H = (size_t)op->n_heads, Hk = (size_t)op->n_kv_heads;
  size_t d = (size_t)op->head_dim, cap = (size_t)op->capacity, groups = joint ? 1 : Hk;
  size_t proj_k = Hk * d * (size_t)op->rank_k * 4;
  size_t out_row = op->value_up ? d : (size_t)op->rank_v;
  if (!in_range(op->q_offset, nq * H * d * 4, z->q, 4) ||
      (!ik && !in_range(op->query_down_offset, proj_k, z->query_down, 4)) ||
      (!ik && !joint && !in_range(op->key_down_offset, proj_k, z->key_down, 4)) ||
      !in_range(
          op->k_cache_offset,
          latent_bytes(op->n_key_segments, op->key_segments, op->rank_k, op->storage, groups, cap),
          z->k_cache, KQ_PLANE_ALIGN) ||
      !in_range(op->v_cache_offset,
                latent_bytes(op->n_value_segments, op->value_segments, op->rank_v, op->storage,
                             groups, cap),
                z->v_cache, KQ_PLANE_ALIGN) ||
      !in_range(op->out_offset, nq * H * out_row * 4, z->out, 4) ||
      (op->value_up &&
       !in_range(op->value_up_offset, Hk * d * (size_t)op->rank_v * 4, z->value_up, 4)))
    return bad(name, "a buffer range (q, projections, caches, out) is misaligned or out of "
                     "bounds");
  return KQ_OK;
}

kq_status kq_core_check_up(const kq_up_op *op, const kq_op_sizes *z) {
  const char *name = "up";
  const int iv = (op->flags & KQ_OP_IDENTITY_VALUES) != 0;
  if (!op->latent || !op->out || iv != !op->value_up)
    return bad(name, "latent/out NULL, or value_up NULL exactly when not the identity");
  if (op->out == op->latent || op->out == op->value_up) return bad(name, "out is also an input");
  if (op->n_queries < 1 || op->n_heads < 1 || op->n_kv_heads < 1 || op->n_heads % op->n_kv_heads ||
      op->head_dim < 1 || op->rank_v < 1 || op->rank_v > op->n_kv_heads * op->head_dim ||
      (iv && op->rank_v != op->head_dim) || op->n_seqs != 1)
    return bad(name, "shape (queries, heads, head_dim, rank_v, n_seqs)");
  size_t nq = (size_t)op->n_queries, H = (size_t)op->n_heads, d = (size_t)op->head_dim;
  if (!in_range(op->latent_offset, nq * H * (size_t)op->rank_v * 4, z->src, 4) ||
      (!iv && !in_range(op->value_up_offset, (size_t)op->n_kv_heads * d * (size_t)op->rank_v * 4,
                        z->value_up, 4)) ||
      !in_range(op->out_offset, nq * H * d * 4, z->out, 4))
    return bad(name, "a buffer range (latent, value_up, out) is misaligned or out of bounds");
  return KQ_OK;
}
