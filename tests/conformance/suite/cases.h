/*
 * cases.h — the conformance case table and the NMSE threshold of each case
 * (derivation in cases.c, beside the table).
 */
#ifndef KQC_CASES_H
#define KQC_CASES_H

#include <stddef.h>
#include <stdint.h>

#include "kqsvd.h"
#include "reference.h"

typedef enum kqc_append {
  KQC_APPEND_ONE = 0,    /* all tokens in one append, then one attend */
  KQC_APPEND_CHUNKS = 1, /* appends of growing sizes 1, 3, 8, 21, ... with an attend of the
                            last min(m, chunk, 8) tokens after each (prefill + decode), the final
                            output also compared with a second cache filled in one append */
} kqc_append;

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
} kqc_case;

/* The table, in order; *out_count cases. */
const kqc_case *kqc_cases(int *out_count);

/* A descriptive name, unique in the table, e.g.
 * "d128_rk32_rv32_h8kv2_n1000_m5_f16_pre-halves_full_chunks_trunc500".
 * Writes at most size bytes (NUL-terminated). */
void kqc_case_name(const kqc_case *c, char *buf, size_t size);

/* The NMSE threshold of a case given the logit statistics of its reference
 * run (derivation in cases.c). */
double kqc_case_threshold(const kqc_case *c, const kqc_ref_stats *stats);

#endif /* KQC_CASES_H */
