/*
 * cases.h — the conformance case table and the NMSE threshold of each case
 * (derivation in cases.c, beside the table).
 */
#ifndef KQC_CASES_H
#define KQC_CASES_H

#include <stddef.h>
#include <stdint.h>

#include "attn_reference.h"
#include "kqsvd.h"

typedef enum kqc_append {
  KQC_APPEND_ONE = 0,    /* all tokens in one append, then one attend */
  KQC_APPEND_CHUNKS = 1, /* appends of growing sizes 1, 3, 8, 21, ... with an attend of the
                            last min(m, chunk, 8) tokens after each (prefill + decode), the final
                            output also compared with a second cache filled in one append */
} kqc_append;

/* Storage segment recipes (SPEC §1b), widths as functions of the rank r,
 * in σ order. Names appear in case names. */
typedef enum kqc_recipe {
  KQC_FLOAT = 0, /* "float": one float segment (the v1 layout) */
  KQC_Q8 = 1,    /* "q8": [q8 r] */
  KQC_Q4 = 2,    /* "q4": [q4 r] (r even) */
  KQC_MIX = 3,   /* "mix": [float max(1, r/8), q8 rest, q4 2·floor(r/4)] */
  KQC_TAIL = 4,  /* "tail": [q8 r − 2·floor(r/4), q4 2·floor(r/4)] (no float dims) */
  KQC_ODD = 5,   /* "odd": [q8 a, q4 b, q8 c, float 1], a and c odd (r odd, >= 7) */
  KQC_RECIPE_COUNT
} kqc_recipe;

/* Fills segs (KQ_MAX_SEGMENTS entries) for rank r; returns the count (0 for
 * KQC_FLOAT: the v1 layout), or -1 if the recipe does not fit r. */
int32_t kqc_recipe_segments(kqc_recipe recipe, int32_t r, kq_segment *segs);

/* "float", "q8", "q4", "mix", "tail", "odd". */
const char *kqc_recipe_name(kqc_recipe recipe);

/* Non-finite inputs (kqsvd.h: IEEE propagation). One element of the
 * device's data is replaced; the reference is computed on the clean data
 * for the rows that never see it; every row that sees a bad key or query
 * must come out entirely NaN, and one that sees a bad value must have a
 * non-finite output (all of them once a projection mixes the dims). */
typedef enum kqc_nonfinite {
  KQC_NF_NONE = 0,
  KQC_NF_KEY_NAN = 1,   /* key of token n − 2, kv head 0, dim 0 */
  KQC_NF_KEY_INF = 2,   /* +Inf there */
  KQC_NF_VALUE_NAN = 3, /* value of token n − 2, kv head 0, dim 0 */
  KQC_NF_QUERY_NAN = 4, /* query of the last token, head 0, dim 0 */
} kqc_nonfinite;

typedef struct kqc_case {
  int32_t head_dim;
  int32_t rank_k, rank_v; /* rank_k == rank_v == head_dim with identity = 1: plain attention */
  int32_t n_heads, n_kv_heads;
  int32_t n_ctx; /* tokens in the cache when the (last) attend runs */
  int32_t m;     /* queries of the last attend */
  kq_storage storage;
  kq_rope_mode rope;
  kq_rope_layout layout;
  kq_output output;
  kqc_append append;
  /* > 0: first fill n_ctx tokens of different ("stale") data, attend, then
   * truncate to this length and append the real tokens from there. */
  int32_t truncate_to;
  int32_t identity;     /* 1: identity projections (kq_projections_create_identity) */
  float qscale;         /* queries ~ N(0, qscale²); 0 means the default 1.5 */
  int32_t expect_error; /* 1: the attend must fail with a status (empty cache, m > length) */
  int32_t layer;        /* layer under test (0 or 1); layers below get other ranks and tokens */
  /* SPEC §1b: storage segments of keys and values, and the latent layout
   * (JOINT: ranks up to n_kv_heads·head_dim, RoPE NONE/POST only). */
  kqc_recipe key_recipe, value_recipe;
  kq_layout latent;
  /* 1: identity projections (rank d, or n_kv·d JOINT) and keys/values
   * whose quantized segments sit exactly on rounding ties (x/s = j + 1/2
   * with power-of-two scales), so that only round-half-away passes. */
  int32_t ties;
  kqc_nonfinite nonfinite;
  /* 1: RoPE angles are held to the kqsvd_backend.h contract (within F32
   * rounding of pos · kq_rope_inv_freq in double at every position), so the
   * threshold has no term for angles formed in F32 (pos · u32): a device
   * that forms them in F32 fails at long positions. */
  int32_t rope_exact;
} kqc_case;

/* 1 when a case needs ABI v2 features (quantized segments or the JOINT
 * layout): a device may answer KQ_ERR_UNSUPPORTED for it. */
int kqc_case_uses_v2(const kqc_case *c);

/* The table, in order; *out_count cases. */
const kqc_case *kqc_cases(int *out_count);

/* A descriptive name, unique in the table, e.g.
 * "d128_rk32_rv32_h8kv2_n1000_m5_f16_pre-halves_full_chunks_trunc500".
 * Writes at most size bytes (NUL-terminated). */
void kqc_case_name(const kqc_case *c, char *buf, size_t size);

/* Quantization figures of a case's reference run (kqc_ref_project_seg
 * statistics of keys and values, and the NMSE between the reference and
 * its alternative with every at-risk rounding taken the other way). */
typedef struct kqc_quant_stats {
  kqc_ref_qstats keys, values;
  double alt_nmse; /* 0 when nothing is at risk */
} kqc_quant_stats;

/* The NMSE threshold of a case given the logit statistics of its reference
 * run and (may be NULL for float-only cases) its quantization statistics
 * (derivation in cases.c). */
double kqc_case_threshold(const kqc_case *c, const kqc_ref_stats *stats,
                          const kqc_quant_stats *quant);

#endif /* KQC_CASES_H */
