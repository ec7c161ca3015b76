/*
 * test_op_check.c — the core's one validation of backend ops
 * (backend/core/op_check.c): an op as the core builds it passes, and each
 * broken promise of kqsvd_backend.h's "What a backend may trust" is caught,
 * one mutation at a time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "backend/core/kq_core.h"

/* Stand-ins: the checks compare pointers with NULL, never dereference. */
static char g_a, g_b, g_c, g_d, g_e, g_f;
#define BUF(x) ((kq_buffer *)(void *)&(x))

enum { H = 4, HK = 2, D = 16, R = 8, CAP = 32 };

static kq_project_op project_op(void) {
  kq_project_op op = {.src = BUF(g_a),
                      .proj = BUF(g_b),
                      .dst = BUF(g_c),
                      .dst_offset = 2 * 256 * 4, /* sequence 2 of regions of 1024 bytes */
                      .n_tokens = 3,
                      .n_heads = HK,
                      .head_dim = D,
                      .rank = R,
                      .capacity = CAP,
                      .pos = CAP - 3,
                      .storage = KQ_STORAGE_F32,
                      .n_seqs = 1};
  return op;
}
/* src 3 tokens, proj Hk·d·r floats, dst 4 regions of Hk·cap·r floats. */
static const kq_op_sizes g_pz = {
    .src = 3 * HK * D * 4, .proj = HK * D * R * 4, .dst = 4 * HK * CAP * R * 4};

static void a_core_project_op_passes_and_each_break_is_caught(void **state) {
  (void)state;
  kq_project_op op = project_op();
  assert_int_equal(kq_core_check_project(&op, &g_pz, 0), KQ_OK);
  op.pos++; /* past capacity */
  assert_int_equal(kq_core_check_project(&op, &g_pz, 0), KQ_ERR_INVALID_ARGUMENT);
  op = project_op();
  op.dst_offset += 4; /* a region not on a plane boundary */
  assert_int_equal(kq_core_check_project(&op, &g_pz, 0), KQ_ERR_INVALID_ARGUMENT);
  op = project_op();
  op.dst_offset = 4 * (size_t)HK * CAP * R * 4; /* a fifth region: out of bounds */
  assert_int_equal(kq_core_check_project(&op, &g_pz, 0), KQ_ERR_INVALID_ARGUMENT);
  op = project_op();
  op.src_offset = 4; /* src range past its buffer */
  assert_int_equal(kq_core_check_project(&op, &g_pz, 0), KQ_ERR_INVALID_ARGUMENT);
  op = project_op();
  op.n_tokens = 2, op.pos = 0, op.src_offset = 2; /* in bounds, not a whole float */
  assert_int_equal(kq_core_check_project(&op, &g_pz, 0), KQ_ERR_INVALID_ARGUMENT);
  op.src_offset = HK * D * 4; /* one token further: in bounds and aligned */
  assert_int_equal(kq_core_check_project(&op, &g_pz, 0), KQ_OK);
  op = project_op();
  op.storage = KQ_STORAGE_F16; /* the device has no F16 */
  assert_int_equal(kq_core_check_project(&op, &g_pz, 0), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_core_check_project(&op, &g_pz, 1), KQ_OK);
  op = project_op();
  op.flags = KQ_OP_IDENTITY_KEYS; /* identity with rank < d, and a matrix given */
  assert_int_equal(kq_core_check_project(&op, &g_pz, 0), KQ_ERR_INVALID_ARGUMENT);
  op = project_op();
  kq_segment segs[2] = {{4, KQ_SEG_FLOAT}, {3, KQ_SEG_Q4}}; /* odd q4, widths sum 7 */
  op.n_segments = 2;
  op.segments = segs;
  assert_int_equal(kq_core_check_project(&op, &g_pz, 0), KQ_ERR_INVALID_ARGUMENT);
  segs[1] = (kq_segment){4, KQ_SEG_Q8};
  assert_int_equal(kq_core_check_project(&op, &g_pz, 0), KQ_OK);
  segs[1] = (kq_segment){4, KQ_SEG_FLOAT}; /* adjacent float segments are never sent */
  assert_int_equal(kq_core_check_project(&op, &g_pz, 0), KQ_ERR_INVALID_ARGUMENT);
  segs[0] = (kq_segment){5, KQ_SEG_Q4}, segs[1] = (kq_segment){3, KQ_SEG_Q8}; /* odd q4 only */
  assert_int_equal(kq_core_check_project(&op, &g_pz, 0), KQ_ERR_INVALID_ARGUMENT);
  segs[0] = (kq_segment){4, KQ_SEG_Q4}, segs[1] = (kq_segment){4, KQ_SEG_Q8};
  assert_int_equal(kq_core_check_project(&op, &g_pz, 0), KQ_OK);
  op.n_segments = 1, segs[0] = (kq_segment){7, KQ_SEG_Q8}; /* widths sum to 7, rank 8 */
  assert_int_equal(kq_core_check_project(&op, &g_pz, 0), KQ_ERR_INVALID_ARGUMENT);
  segs[0] = (kq_segment){8, KQ_SEG_FLOAT}; /* one float segment is sent as n_segments 0 */
  assert_int_equal(kq_core_check_project(&op, &g_pz, 0), KQ_ERR_INVALID_ARGUMENT);
  op = project_op();
  op.dst = BUF(g_a); /* writing over its own input (src) */
  assert_int_equal(kq_core_check_project(&op, &g_pz, 0), KQ_ERR_INVALID_ARGUMENT);
  op = project_op();
  op.n_seqs = 2;
  assert_int_equal(kq_core_check_project(&op, &g_pz, 0), KQ_ERR_INVALID_ARGUMENT);
}

static kq_attend_op attend_op(void) {
  kq_attend_op op = {.q = BUF(g_a),
                     .key_down = BUF(g_b),
                     .query_down = BUF(g_c),
                     .k_cache = BUF(g_d),
                     .v_cache = BUF(g_e),
                     .out = BUF(g_f),
                     .n_queries = 2,
                     .n_ctx = 5,
                     .n_heads = H,
                     .n_kv_heads = HK,
                     .head_dim = D,
                     .rank_k = R,
                     .rank_v = R,
                     .capacity = CAP,
                     .rope = KQ_ROPE_PRE,
                     .scale = 0.25f,
                     .n_seqs = 1};
  return op;
}
static const kq_op_sizes g_az = {.q = 2 * H * D * 4,
                                 .key_down = HK * D * R * 4,
                                 .query_down = HK * D * R * 4,
                                 .k_cache = HK * CAP * R * 4,
                                 .v_cache = HK * CAP * R * 4,
                                 .out = 2 * H * D * 4,
                                 .value_up = HK * D * R * 4};

static void a_core_attend_op_passes_and_each_break_is_caught(void **state) {
  (void)state;
  kq_attend_op op = attend_op();
  assert_int_equal(kq_core_check_attend(&op, &g_az, 0, 0), KQ_OK);
  op.n_ctx = CAP + 1;
  assert_int_equal(kq_core_check_attend(&op, &g_az, 0, 0), KQ_ERR_INVALID_ARGUMENT);
  op = attend_op();
  op.n_queries = 6; /* more queries than positions */
  assert_int_equal(kq_core_check_attend(&op, &g_az, 0, 0), KQ_ERR_INVALID_ARGUMENT);
  op = attend_op();
  op.n_kv_heads = 3; /* H not a multiple */
  assert_int_equal(kq_core_check_attend(&op, &g_az, 0, 0), KQ_ERR_INVALID_ARGUMENT);
  op = attend_op();
  op.layout = KQ_LAYOUT_JOINT; /* PRE with the joint layout */
  assert_int_equal(kq_core_check_attend(&op, &g_az, 0, 0), KQ_ERR_INVALID_ARGUMENT);
  op = attend_op();
  op.key_down = NULL; /* per-head PRE reads A */
  assert_int_equal(kq_core_check_attend(&op, &g_az, 0, 0), KQ_ERR_INVALID_ARGUMENT);
  op = attend_op();
  op.v_cache_offset = 256; /* a second region that the buffer does not have */
  assert_int_equal(kq_core_check_attend(&op, &g_az, 0, 0), KQ_ERR_INVALID_ARGUMENT);
  op = attend_op();
  kq_segment short_sum[1] = {{R - 1, KQ_SEG_Q8}}; /* key widths sum to rank_k - 1 */
  op.n_key_segments = 1, op.key_segments = short_sum;
  assert_int_equal(kq_core_check_attend(&op, &g_az, 0, 0), KQ_ERR_INVALID_ARGUMENT);
  short_sum[0].width = R;
  assert_int_equal(kq_core_check_attend(&op, &g_az, 0, 0), KQ_OK);
  op = attend_op();
  op.value_up = BUF(g_a); /* fused up-projection on a backend without the cap */
  assert_int_equal(kq_core_check_attend(&op, &g_az, 0, 0), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_core_check_attend(&op, &g_az, 0, KQ_BACKEND_CAP_FUSED_UP), KQ_OK);
  op.out_offset = 4; /* the full output then needs H·d floats per query */
  assert_int_equal(kq_core_check_attend(&op, &g_az, 0, KQ_BACKEND_CAP_FUSED_UP),
                   KQ_ERR_INVALID_ARGUMENT);
}

static void a_core_up_op_passes_and_each_break_is_caught(void **state) {
  (void)state;
  kq_up_op op = {.latent = BUF(g_a),
                 .value_up = BUF(g_b),
                 .out = BUF(g_c),
                 .n_queries = 3,
                 .n_heads = H,
                 .n_kv_heads = HK,
                 .head_dim = D,
                 .rank_v = R,
                 .n_seqs = 1};
  kq_op_sizes z = {.src = 3 * H * R * 4, .value_up = HK * D * R * 4, .out = 3 * H * D * 4};
  assert_int_equal(kq_core_check_up(&op, &z), KQ_OK);
  op.n_queries = 4;
  assert_int_equal(kq_core_check_up(&op, &z), KQ_ERR_INVALID_ARGUMENT);
  op.n_queries = 3;
  op.flags = KQ_OP_IDENTITY_VALUES; /* identity, but rank < d and a matrix given */
  assert_int_equal(kq_core_check_up(&op, &z), KQ_ERR_INVALID_ARGUMENT);
}

/* A batched attend: three sequences (1, 2 and 1 queries) in regions 3, 0
 * and 2 of four, context lengths 7, 4 and CAP. */
enum { REGION = HK * CAP * R * 4 };
static kq_op_seq g_seqs[3];
static kq_attend_op table_op(void) {
  kq_attend_op op = attend_op();
  op.rope = KQ_ROPE_POST;
  g_seqs[0] = (kq_op_seq){
      .k_region = 3 * REGION, .v_region = 3 * REGION, .row = 0, .n_rows = 1, .n_ctx = 7, .seq = 3};
  g_seqs[1] =
      (kq_op_seq){.k_region = 0, .v_region = 0, .row = 1, .n_rows = 2, .n_ctx = 4, .seq = 0};
  g_seqs[2] = (kq_op_seq){.k_region = 2 * REGION,
                          .v_region = 2 * REGION,
                          .row = 3,
                          .n_rows = 1,
                          .n_ctx = CAP,
                          .seq = 2};
  op.n_seqs = 3, op.seqs = g_seqs;
  op.n_queries = 4, op.n_ctx = CAP;
  return op;
}
static const kq_op_sizes g_tz = {.q = 4 * H * D * 4,
                                 .key_down = HK * D * R * 4,
                                 .query_down = HK * D * R * 4,
                                 .k_cache = 4 * REGION,
                                 .v_cache = 4 * REGION,
                                 .out = 4 * H * R * 4,
                                 .layer = 7};

/* The refusal names the layer and the sequence of the broken entry. */
static void refused_naming(const kq_attend_op *op, const char *seq) {
  assert_int_equal(kq_core_check_attend(op, &g_tz, 0, 0), KQ_ERR_INVALID_ARGUMENT);
  const char *msg = kq_last_error();
  if (!strstr(msg, "layer 7") || !strstr(msg, seq)) fail_msg("message: %s", msg);
}

static void a_bad_sequence_table_is_refused_naming_layer_and_sequence(void **state) {
  (void)state;
  kq_attend_op op = table_op();
  assert_int_equal(kq_core_check_attend(&op, &g_tz, 0, 0), KQ_OK);
  g_seqs[2].k_region = 4 * REGION; /* a fifth region: out of range */
  refused_naming(&op, "sequence 2");
  op = table_op();
  g_seqs[0].v_region = 3 * REGION + 4; /* not on a plane boundary */
  refused_naming(&op, "sequence 3");
  op = table_op();
  g_seqs[1].n_ctx = CAP + 1, op.n_ctx = CAP + 1; /* longer than the capacity */
  refused_naming(&op, "sequence 0");
  op = table_op();
  g_seqs[1].n_ctx = 1; /* fewer positions than its 2 queries */
  refused_naming(&op, "sequence 0");
  op = table_op();
  g_seqs[2].seq = 3; /* sequence 3 twice (its own region) */
  refused_naming(&op, "sequence 3");
  op = table_op();
  g_seqs[2].k_region = g_seqs[2].v_region = 3 * REGION; /* another id, same region */
  refused_naming(&op, "sequence 2");
  op = table_op();
  g_seqs[1].row = 2; /* a gap in the rows */
  refused_naming(&op, "sequence 0");
  op = table_op();
  op.n_queries = 5; /* rows do not sum to the op's count */
  assert_int_equal(kq_core_check_attend(&op, &g_tz, 0, 0), KQ_ERR_INVALID_ARGUMENT);
  op = table_op();
  op.n_ctx = 7; /* not the largest n_ctx of the table */
  assert_int_equal(kq_core_check_attend(&op, &g_tz, 0, 0), KQ_ERR_INVALID_ARGUMENT);
  op = table_op();
  op.seqs = NULL; /* three sequences without a table */
  assert_int_equal(kq_core_check_attend(&op, &g_tz, 0, 0), KQ_ERR_INVALID_ARGUMENT);

  /* Project: the same table shape, positions instead of contexts. */
  kq_op_seq ps[2] = {{.k_region = REGION, .row = 0, .n_rows = 2, .pos = CAP - 2, .seq = 1},
                     {.k_region = 0, .row = 2, .n_rows = 1, .pos = 0, .seq = 0}};
  kq_project_op pop = project_op();
  pop.n_tokens = 3, pop.pos = 0, pop.dst_offset = 0, pop.n_seqs = 2, pop.seqs = ps;
  kq_op_sizes pz = g_pz;
  pz.layer = 5;
  assert_int_equal(kq_core_check_project(&pop, &pz, 0), KQ_OK);
  ps[0].pos = CAP - 1; /* two tokens from the last position */
  assert_int_equal(kq_core_check_project(&pop, &pz, 0), KQ_ERR_INVALID_ARGUMENT);
  if (!strstr(kq_last_error(), "layer 5") || !strstr(kq_last_error(), "sequence 1"))
    fail_msg("message: %s", kq_last_error());
  ps[0].pos = 0, ps[1].seq = 1; /* sequence 1 twice */
  assert_int_equal(kq_core_check_project(&pop, &pz, 0), KQ_ERR_INVALID_ARGUMENT);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(a_core_project_op_passes_and_each_break_is_caught),
      cmocka_unit_test(a_core_attend_op_passes_and_each_break_is_caught),
      cmocka_unit_test(a_core_up_op_passes_and_each_break_is_caught),
      cmocka_unit_test(a_bad_sequence_table_is_refused_naming_layer_and_sequence),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
