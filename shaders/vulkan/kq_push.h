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

/* Specialization constant ids of attend_dec.comp and merge_up.comp. */
#define KQ_SPEC_WG 0
#define KQ_SPEC_D 1
#define KQ_SPEC_RK 2
#define KQ_SPEC_RV 3
#define KQ_SPEC_ROWS 4  /* query heads per workgroup */
#define KQ_SPEC_LPR 5   /* lanes splitting one latent row (power of two) */
#define KQ_SPEC_IDENT 6 /* A = B = I (keys) / C = E = I (values) */
#define KQ_SPEC_UP 7    /* merge_up: multiply by Eᵀ */
/* kq_seg.glsl: key segment table at 16..32, value table at 33..49. */
#define KQ_SPEC_KEY_SEGS 16
#define KQ_SPEC_VALUE_SEGS 33

/* attend_dec.comp: one workgroup per (chunk, row group, query). */
KQ_STRUCT(kq_push_decode) {
  KQ_U32 q_off;      /* queries F32 [n_queries, n_heads, D] */
  KQ_U32 b_off;      /* query_down F32 [n_kv_heads, D, RK] */
  KQ_U32 k_base;     /* key latent buffer (planes of kq_seg.glsl) */
  KQ_U32 v_base;     /* value latent buffer */
  KQ_U32 part_off;   /* partials F32 [n_queries, n_heads, n_chunks, RV + 2] */
  KQ_U32 n_ctx;      /* positions in the cache */
  KQ_U32 n_queries;  /* query j sits at position n_ctx - n_queries + j */
  KQ_U32 n_heads;    /* query heads */
  KQ_U32 b_group;    /* query heads per kv head: B of head h is B[h / b_group] */
  KQ_U32 c_group;    /* query heads per cache group (n_heads in the JOINT layout) */
  KQ_U32 gc;         /* cache groups · capacity (plane size in rows) */
  KQ_U32 capacity;   /* positions per cache group */
  KQ_U32 chunk;      /* positions per chunk */
  KQ_U32 n_chunks;   /* chunks per (query, head) */
  KQ_U32 scale_bits; /* logit scale, float bits */
}
KQ_END(kq_push_decode)

/* merge_up.comp: one workgroup per (head, query). */
KQ_STRUCT(kq_push_merge) {
  KQ_U32 part_off; /* partials of attend_dec.comp */
  KQ_U32 e_off;    /* value_up F32 [n_kv_heads, D, RV] (UP only) */
  KQ_U32 out_off;  /* F32 [n_queries, n_heads, UP ? D : RV] */
  KQ_U32 n_heads;
  KQ_U32 e_group;  /* query heads per kv head: E of head h is E[h / e_group] */
  KQ_U32 n_chunks;
}
KQ_END(kq_push_merge)

#undef KQ_STRUCT
#undef KQ_END

#endif /* KQ_PUSH_H */
