/*
 * kq_push.h — typed push constants and specialization-constant ids shared by
 * the C side (backend/vulkan) and the GLSL side (shaders/vulkan). Every field
 * is a 32-bit scalar, so the std430 layout of a push-constant block holding
 * one of these structs is the C layout; vk_ops.c checks sizes and offsets
 * with static asserts. Offsets named *_off count elements of the bound array
 * from the binding's start, *_base bytes.
 */
#ifndef KQ_PUSH_H
#define KQ_PUSH_H

#ifdef VULKAN /* glslang */
#define KQ_U32 uint
#define KQ_STRUCT(T) struct T
#define KQ_END(T) ;
#else
#include <stdint.h>
#define KQ_U32 uint32_t
#define KQ_STRUCT(T) typedef struct T
#define KQ_END(T) T;
#endif

/* Specialization constant ids of attend_dec.comp and merge_up.comp (the
 * older shaders number theirs in their own files). */
#define KQ_SPEC_WG 0
#define KQ_SPEC_D 1
#define KQ_SPEC_RK 2
#define KQ_SPEC_RV 3
#define KQ_SPEC_ROWS 4  /* query heads per workgroup */
#define KQ_SPEC_LPR 5   /* lanes splitting one latent row (power of two) */
#define KQ_SPEC_IDENT 6 /* A = B = I (keys) / C = E = I (values) */
#define KQ_SPEC_UP 7    /* merge_up: multiply by Eᵀ */
#define KQ_SPEC_KVEC                                                                               \
  8 /* attend_dec: keys read as 16-byte units (1: one float segment, 2: a segment table) */
#define KQ_SPEC_VVEC 9    /* attend_dec: values likewise */
#define KQ_SPEC_PRE 10    /* attend_dec: RoPE pre, keys rebuilt and rotated per position */
#define KQ_SPEC_HALVES 11 /* attend_dec: RoPE rotation layout halves (else pairs) */
/* kq_seg.glsl: key segment table at 16..32, value table at 33..49. */
#define KQ_SPEC_KEY_SEGS 16
#define KQ_SPEC_VALUE_SEGS 33

/* The row table of attend_dec.comp and merge_up.comp (binding 5 / 3): per
 * query row of the dispatch (every query of every sequence, in q's row
 * order) KQ_SEQ_WORDS words:
 *   0 key latent buffer of the row's sequence, bytes from the binding start
 *   1 value latent buffer, likewise
 *   2 the query's position (it attends to positions [0, pos])
 *   3 positions per chunk of the sequence
 *   4 chunks of the sequence (<= the grid's n_chunks; later chunks idle) */
#define KQ_SEQ_WORDS 5

/* attend_dec.comp: one workgroup per (chunk, row group, query row).
 * Bindings: 0 queries, 1 query_down B, 2 key latents, 3 value latents,
 * 4 partials, 5 row table; with PRE also 6 key_down A and 7 the RoPE table
 * (kq_rope.glsl). */
KQ_STRUCT(kq_push_decode) {
  KQ_U32 q_off;      /* queries F32 [rows, n_heads, D] */
  KQ_U32 b_off;      /* query_down F32 [n_kv_heads, D, RK] */
  KQ_U32 seq_off;    /* row table (KQ_SEQ_WORDS per row), element offset */
  KQ_U32 part_off;   /* partials F32 [rows, n_heads, n_chunks, RV + 2] */
  KQ_U32 n_heads;    /* query heads */
  KQ_U32 b_group;    /* query heads per kv head: B of head h is B[h / b_group] */
  KQ_U32 c_group;    /* query heads per cache group (n_heads in the JOINT layout) */
  KQ_U32 gc;         /* cache groups · capacity (plane size in rows) */
  KQ_U32 capacity;   /* positions per cache group */
  KQ_U32 n_chunks;   /* partial slots per (row, head): the grid's largest chunk count */
  KQ_U32 scale_bits; /* logit scale, float bits */
  KQ_U32 a_off;      /* key_down F32 [n_kv_heads, D, RK] (PRE only) */
  KQ_U32 rope_hi;    /* element offset of the RoPE table's high part (PRE only) */
}
KQ_END(kq_push_decode)

/* merge_up.comp: one workgroup per (head, query row). */
KQ_STRUCT(kq_push_merge) {
  KQ_U32 part_off; /* partials of attend_dec.comp */
  KQ_U32 e_off;    /* value_up F32 [n_kv_heads, D, RV] (UP only) */
  KQ_U32 out_off;  /* F32 [rows, n_heads, UP ? D : RV] */
  KQ_U32 n_heads;
  KQ_U32 e_group;  /* query heads per kv head: E of head h is E[h / e_group] */
  KQ_U32 n_chunks; /* partial slots per (row, head); the row's own count is in the table */
  KQ_U32 seq_off;  /* row table of attend_dec.comp, element offset */
}
KQ_END(kq_push_merge)

/* The row table of project.comp and project_seg.comp (binding 3): per
 * source row of the op (every token of every sequence, in src's row order)
 * KQ_PROJECT_SEQ_WORDS words:
 *   0 the latent buffer of the row's sequence (its region) from the
 *     destination binding's start: bytes (project_seg.comp) or elements
 *     (project.comp; modulo 2^32, as the binding may start inside it)
 *   1 the row's position in that buffer */
#define KQ_PROJECT_SEQ_WORDS 2

/* project.comp: kv heads head0 + workgroup y, plain float layout. */
KQ_STRUCT(kq_push_project) {
  KQ_U32 src_off;  /* src F32 [n_tokens, n_heads, D] (row row0 of the op) */
  KQ_U32 proj_off; /* projections [n_heads, D, R] */
  KQ_U32 seq_off;  /* row table, element offset */
  KQ_U32 row0;     /* the op's row of the dispatch's first source row */
  KQ_U32 n_tokens; /* source rows of the dispatch */
  KQ_U32 n_heads;
  KQ_U32 capacity; /* positions per kv head of a latent buffer */
  KQ_U32 head0;    /* kv head of workgroup y == 0 */
}
KQ_END(kq_push_project)

/* project_seg.comp: every group (workgroup y) into a segmented buffer. */
KQ_STRUCT(kq_push_project_seg) {
  KQ_U32 src_off;  /* src F32 [n_tokens, n_heads, D] (row row0 of the op) */
  KQ_U32 proj_off; /* projections [n_heads, D, R] */
  KQ_U32 seq_off;  /* row table, element offset */
  KQ_U32 row0;     /* the op's row of the dispatch's first source row */
  KQ_U32 n_tokens; /* source rows of the dispatch */
  KQ_U32 n_heads;
  KQ_U32 gc; /* groups · capacity */
  KQ_U32 capacity;
}
KQ_END(kq_push_project_seg)

/* dequant.comp: positions [0, n_ctx) of every sequence's segmented latent
 * buffer (workgroup z) to F32 rows. Its sequence table (binding 2): per
 * sequence KQ_DEQUANT_SEQ_WORDS words:
 *   0 the key latent buffer, bytes from the source binding's start
 *   1 the value latent buffer, likewise (word base_word is read)
 *   2 the sequence's first position in the output rows
 *   3 its positions n_ctx */
#define KQ_DEQUANT_SEQ_WORDS 4

KQ_STRUCT(kq_push_dequant) {
  KQ_U32 seq_off; /* sequence table, element offset */
  KQ_U32 out_off; /* F32 [groups, n_total, R] */
  KQ_U32 gc;      /* groups · capacity of a latent buffer */
  KQ_U32 capacity;
  KQ_U32 n_total; /* output positions per group: every sequence's n_ctx */
  KQ_U32 groups;
  KQ_U32 base_word; /* 0: keys, 1: values */
}
KQ_END(kq_push_dequant)

/* qprep.comp: prepared queries of the tiled path. */
KQ_STRUCT(kq_push_qprep) {
  KQ_U32 q_off;
  KQ_U32 b_off;   /* query_down, kv head 0 */
  KQ_U32 a_off;   /* key_down, kv head 0 (PRE) */
  KQ_U32 out_off; /* F32 [n_queries, n_heads, QK] */
  KQ_U32 n_heads;
  KQ_U32 group;   /* query heads per kv head */
  KQ_U32 pos_off; /* position of each query (binding 5), element offset */
  KQ_U32 rope_hi; /* element offset of the RoPE table's high part */
}
KQ_END(kq_push_qprep)

/* The query-tile table of attend.comp (read through binding 0, after the
 * prepared queries): per query tile (workgroup y) KQ_TILE_WORDS words:
 *   0 key latent rows of the tile's sequence: elements added to k_off
 *   1 value latent rows, added to v_off
 *   2 the tile's first query row (of the dispatch's queries)
 *   3 its queries (<= QT), all of one sequence, consecutive positions
 *   4 the position of its first query (it attends to positions [0, pos]) */
#define KQ_TILE_WORDS 5

/* attend.comp: tiled partial attention over one cache window. */
KQ_STRUCT(kq_push_attend) {
  KQ_U32 q_off;    /* prepared queries (query 0, head 0, rows of QK) */
  KQ_U32 k_off;    /* key rows from token tok_base, kv head of the dispatch */
  KQ_U32 v_off;    /* value rows from token tok_base */
  KQ_U32 part_off; /* partials */
  KQ_U32 b_off;    /* query_down of this kv head (PRE rebuild) */
  KQ_U32 tile_off; /* query-tile table in binding 0, element offset */
  KQ_U32 n_heads;
  KQ_U32 head0;    /* first query head of the dispatch */
  KQ_U32 chunk0;   /* chunk of workgroup 0 */
  KQ_U32 tok_base; /* first position of the bound window */
  KQ_U32 n_parts;  /* partials per row: chunks · key groups */
  KQ_U32 rope_hi;
  KQ_U32 scale_bits;
  KQ_U32 chunk; /* positions per chunk (multiple of the key tile) */
}
KQ_END(kq_push_attend)

/* reduce.comp: merges the partials of attend.comp. */
KQ_STRUCT(kq_push_reduce) {
  KQ_U32 part_off;
  KQ_U32 out_off;
  KQ_U32 n_parts; /* partials per row */
  KQ_U32 n_heads;
}
KQ_END(kq_push_reduce)

/* up.comp: latent to full output. */
KQ_STRUCT(kq_push_up) {
  KQ_U32 lat_off;
  KQ_U32 e_off; /* value_up, kv head 0 */
  KQ_U32 out_off;
  KQ_U32 n_heads;
  KQ_U32 group; /* query heads per kv head */
}
KQ_END(kq_push_up)

#undef KQ_STRUCT
#undef KQ_END

#endif /* KQ_PUSH_H */
