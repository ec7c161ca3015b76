/*
 * test_sequences.c — many sequences in one cache (issue 15): a batched
 * append/attend over 8 sequences of different lengths equals 8
 * single-sequence caches fed the same tokens, also after a per-sequence
 * truncate and a prefix copy; the old single-sequence calls act on sequence
 * 0; bad batches change nothing.
 *
 * usage: test_sequences [DEVICE]   (default cpu; exit 77 when the device is
 * absent). Every variant (float, F16, quantized, joint) runs on every
 * device that stores its types.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/test_check.h"
#include "kqsvd.h"

enum { NL = 2, H = 4, HK = 2, D = 16, NS = 8, CAP = 40, MAXROWS = 256 };

static const char *g_device = "cpu";

#include "seq_projections.h"

static kq_projections *make_projections(const variant *v) {
  return make_projections_of(v, NL, H, HK, D);
}

typedef struct fixture {
  kq_device *dev;
  kq_projections *proj;
  kq_cache *batched;    /* NS sequences */
  kq_cache *single[NS]; /* one per sequence: the reference */
  int32_t rank_v;
  uint64_t step; /* seeds fresh data per call */
  kq_cache_params params;
  /* What each sequence holds: the rows appended to it, per layer. */
  float hist_k[NL][NS][CAP * HK * D], hist_v[NL][NS][CAP * HK * D];
  int32_t hist_len[NL][NS];
} fixture;

static void fixture_open(fixture *f, const variant *v) {
  memset(f, 0, sizeof *f);
  assert_int_equal(kq_device_create(g_device, &f->dev), KQ_OK);
  f->proj = make_projections(v);
  kq_projection_layer pl;
  assert_int_equal(kq_projections_layer(f->proj, 0, &pl), KQ_OK);
  f->rank_v = pl.rank_v;
  kq_cache_params cp = kq_cache_default_params();
  cp.storage = v->storage;
  cp.capacity = CAP;
  f->params = cp;
  for (int s = 0; s < NS; s++)
    assert_int_equal(kq_cache_create(f->dev, f->proj, &cp, &f->single[s]), KQ_OK);
  cp.n_seqs = NS;
  assert_int_equal(kq_cache_create(f->dev, f->proj, &cp, &f->batched), KQ_OK);
}

static void fixture_close(fixture *f) {
  kq_cache_destroy(f->batched);
  for (int s = 0; s < NS; s++) kq_cache_destroy(f->single[s]);
  kq_projections_destroy(f->proj);
  kq_device_destroy(f->dev);
}

/* One batched append + attend over `spans` (every layer) against the same
 * rows appended to / attended from the single-sequence caches, both output
 * kinds. Asserts 1e-6 relative agreement per sequence. */
static void step_and_compare(fixture *f, int n_spans, const kq_seq_span *spans) {
  static float k[MAXROWS * HK * D], v[MAXROWS * HK * D], q[MAXROWS * H * D];
  static float out_b[MAXROWS * H * D], out_s[MAXROWS * H * D];
  int rows = 0;
  for (int i = 0; i < n_spans; i++) rows += spans[i].n_tokens;
  assert_true(rows <= MAXROWS);
  for (int32_t l = 0; l < NL; l++) {
    f->step++;
    fill(k, (size_t)rows * HK * D, 1000 + f->step);
    fill(v, (size_t)rows * HK * D, 2000 + f->step);
    fill(q, (size_t)rows * H * D, 3000 + f->step);
    if (kq_cache_append_batch(f->batched, l, n_spans, spans, k, v)) fail_msg("%s", kq_last_error());
    int row = 0;
    for (int i = 0; i < n_spans; i++) {
      kq_cache *c = f->single[spans[i].seq];
      assert_int_equal(kq_cache_append(c, l, spans[i].n_tokens, k + (size_t)row * HK * D,
                                       v + (size_t)row * HK * D),
                       KQ_OK);
      assert_int_equal(kq_cache_seq_length(f->batched, l, spans[i].seq), kq_cache_length(c, l));
      int32_t *len = &f->hist_len[l][spans[i].seq];
      size_t n = (size_t)spans[i].n_tokens * HK * D, at = (size_t)*len * HK * D;
      memcpy(f->hist_k[l][spans[i].seq] + at, k + (size_t)row * HK * D, n * sizeof(float));
      memcpy(f->hist_v[l][spans[i].seq] + at, v + (size_t)row * HK * D, n * sizeof(float));
      *len += spans[i].n_tokens;
      row += spans[i].n_tokens;
    }
    for (int kind = 0; kind < 2; kind++) {
      kq_output o = kind ? KQ_OUTPUT_LATENT : KQ_OUTPUT_FULL;
      size_t width = kind ? (size_t)f->rank_v : D;
      assert_int_equal(kq_cache_attend_batch(f->batched, l, n_spans, spans, q, o, out_b), KQ_OK);
      row = 0;
      for (int i = 0; i < n_spans; i++) {
        size_t n = (size_t)spans[i].n_tokens * H * width;
        assert_int_equal(kq_cache_attend(f->single[spans[i].seq], l, spans[i].n_tokens,
                                         q + (size_t)row * H * D, o, out_s),
                         KQ_OK);
        double e = rel_diff(out_b + (size_t)row * H * width, out_s, n);
        if (!(e <= 1e-6))
          fail_msg("%s: layer %d, sequence %d, %s output: relative difference %g", g_device, (int)l,
                   (int)spans[i].seq, kind ? "latent" : "full", e);
        row += spans[i].n_tokens;
      }
    }
  }
}

/* Prefill of different lengths in one batch, decode steps, a per-sequence
 * truncate, a prefix copy, more decode: always equal to separate caches. */
static void run_variant(const variant *var) {
  static fixture f;
  fixture_open(&f, var);
  kq_seq_span spans[NS];
  const int32_t prefill[NS] = {1, 3, 7, 12, 5, 9, 2, 16};
  for (int s = 0; s < NS; s++) spans[s] = (kq_seq_span){.seq = NS - 1 - s, .n_tokens = prefill[s]};
  step_and_compare(&f, NS, spans); /* spans in reverse order of ids */
  for (int s = 0; s < NS; s++) spans[s] = (kq_seq_span){.seq = s, .n_tokens = 1};
  for (int t = 0; t < 2; t++) step_and_compare(&f, NS, spans);

  /* Truncate sequence 3 (length 7) to 4: the next decode sees 5 positions. */
  assert_int_equal(kq_cache_seq_truncate(f.batched, 3, 4), KQ_OK);
  assert_int_equal(kq_cache_truncate(f.single[3], 4), KQ_OK);
  for (int l = 0; l < NL; l++) assert_int_equal(kq_cache_seq_length(f.batched, l, 3), 4);
  for (int s = 0; s < NS; s++) /* the others are untouched */
    if (s != 3) assert_int_equal(kq_cache_seq_length(f.batched, 0, s), f.hist_len[0][s]);

  for (int l = 0; l < NL; l++) f.hist_len[l][3] = 4;

  /* Prefix copy: sequence 5's first 6 positions into sequence 1 (which held
   * 4). The reference for sequence 1 is a fresh cache given those 6 rows. */
  assert_int_equal(kq_cache_seq_copy(f.batched, 5, 1, 6), KQ_OK);
  for (int l = 0; l < NL; l++) assert_int_equal(kq_cache_seq_length(f.batched, l, 1), 6);
  kq_cache_destroy(f.single[1]);
  assert_int_equal(kq_cache_create(f.dev, f.proj, &f.params, &f.single[1]), KQ_OK);
  for (int32_t l = 0; l < NL; l++) {
    assert_int_equal(kq_cache_append(f.single[1], l, 6, f.hist_k[l][5], f.hist_v[l][5]), KQ_OK);
    memcpy(f.hist_k[l][1], f.hist_k[l][5], sizeof f.hist_k[l][5]);
    memcpy(f.hist_v[l][1], f.hist_v[l][5], sizeof f.hist_v[l][5]);
    f.hist_len[l][1] = 6;
  }
  for (int t = 0; t < 2; t++) step_and_compare(&f, NS, spans);
  /* A prefill chunk on some sequences only, then decode of a subset. */
  kq_seq_span some[3] = {
      {.seq = 6, .n_tokens = 4}, {.seq = 1, .n_tokens = 2}, {.seq = 3, .n_tokens = 3}};
  step_and_compare(&f, 3, some);
  assert_int_equal(kq_cache_seq_clear(f.batched, 0), KQ_OK);
  assert_int_equal(kq_cache_truncate(f.single[0], 0), KQ_OK);
  for (int l = 0; l < NL; l++) f.hist_len[l][0] = 0;
  for (int l = 0; l < NL; l++) assert_int_equal(kq_cache_seq_length(f.batched, l, 0), 0);
  step_and_compare(&f, NS, spans);
  fixture_close(&f);
}

static int device_has_f16(void) {
  kq_device *dev = NULL;
  kq_device_info info;
  assert_int_equal(kq_device_create(g_device, &dev), KQ_OK);
  assert_int_equal(kq_device_get_info(dev, &info), KQ_OK);
  kq_device_destroy(dev);
  return info.fp16_storage;
}

static int is_cpu(void) {
  return strcmp(g_device, "cpu") == 0;
}

static void batched_equals_single_float_post(void **state) {
  (void)state;
  run_variant(&(variant){.rope = KQ_ROPE_POST, .storage = KQ_STORAGE_F32});
}

static void batched_equals_single_float_pre(void **state) {
  (void)state;
  run_variant(&(variant){.rope = KQ_ROPE_PRE, .storage = KQ_STORAGE_F32});
}

static void batched_equals_single_f16(void **state) {
  (void)state;
  if (!device_has_f16()) skip();
  run_variant(&(variant){.rope = KQ_ROPE_POST, .storage = KQ_STORAGE_F16});
}

static void batched_equals_single_quantized(void **state) {
  (void)state;
  run_variant(&(variant){.rope = KQ_ROPE_PRE, .storage = KQ_STORAGE_F32, .quantized = 1});
}

static void batched_equals_single_quantized_post(void **state) {
  (void)state;
  run_variant(&(variant){.rope = KQ_ROPE_POST, .storage = KQ_STORAGE_F32, .quantized = 1});
}

static void batched_equals_single_joint_quantized(void **state) {
  (void)state;
  if (!device_has_f16()) skip();
  run_variant(&(variant){
      .rope = KQ_ROPE_POST, .layout = KQ_LAYOUT_JOINT, .storage = KQ_STORAGE_F16, .quantized = 1});
}

/* A bad batch is refused before anything is stored. */
static void bad_batches_change_nothing(void **state) {
  (void)state;
  static fixture f;
  fixture_open(&f, &(variant){.rope = KQ_ROPE_POST});
  static float k[64 * HK * D], v[64 * HK * D], q[64 * H * D], out[64 * H * D];
  fill(k, 64 * HK * D, 1);
  fill(v, 64 * HK * D, 2);
  fill(q, 64 * H * D, 3);
  kq_seq_span ok[2] = {{.seq = 2, .n_tokens = 3}, {.seq = 4, .n_tokens = CAP - 1}};
  assert_int_equal(kq_cache_append_batch(f.batched, 0, 2, ok, k, v), KQ_OK);
  kq_seq_span dup[2] = {{.seq = 2, .n_tokens = 1}, {.seq = 2, .n_tokens = 1}};
  assert_int_equal(kq_cache_append_batch(f.batched, 0, 2, dup, k, v), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "sequence 2"));
  kq_seq_span over[2] = {{.seq = 2, .n_tokens = 1}, {.seq = 4, .n_tokens = 2}};
  assert_int_equal(kq_cache_append_batch(f.batched, 0, 2, over, k, v), KQ_ERR_CAPACITY);
  assert_non_null(strstr(kq_last_error(), "sequence 4"));
  kq_seq_span outside[1] = {{.seq = NS, .n_tokens = 1}};
  assert_int_equal(kq_cache_append_batch(f.batched, 0, 1, outside, k, v), KQ_ERR_INVALID_ARGUMENT);
  kq_seq_span empty[1] = {{.seq = 0, .n_tokens = 0}};
  assert_int_equal(kq_cache_append_batch(f.batched, 0, 1, empty, k, v), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_seq_length(f.batched, 0, 2), 3);
  assert_int_equal(kq_cache_seq_length(f.batched, 0, 4), CAP - 1);
  /* Attend: an empty sequence and too many queries are named. */
  out[0] = 12345.0f;
  kq_seq_span att[2] = {{.seq = 2, .n_tokens = 1}, {.seq = 3, .n_tokens = 1}};
  assert_int_equal(kq_cache_attend_batch(f.batched, 0, 2, att, q, KQ_OUTPUT_FULL, out),
                   KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "sequence 3"));
  att[1] = (kq_seq_span){.seq = 4, .n_tokens = CAP};
  assert_int_equal(kq_cache_attend_batch(f.batched, 0, 2, att, q, KQ_OUTPUT_FULL, out),
                   KQ_ERR_INVALID_ARGUMENT);
  assert_true(out[0] == 12345.0f);
  /* Copy: more tokens than the source holds in some layer (layer 1 is empty). */
  assert_int_equal(kq_cache_seq_copy(f.batched, 2, 5, 2), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_seq_copy(f.batched, 2, NS, 0), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_seq_truncate(f.batched, -1, 0), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_seq_clear(f.batched, NS), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_seq_length(f.batched, 0, NS), 0);
  fixture_close(&f);
}

/* The single-sequence calls are sequence 0 of a many-sequence cache. */
static void single_sequence_calls_act_on_sequence_zero(void **state) {
  (void)state;
  static fixture f;
  fixture_open(&f, &(variant){.rope = KQ_ROPE_POST});
  static float k[8 * HK * D], v[8 * HK * D], q[H * D], a[H * D], b[H * D];
  fill(k, 8 * HK * D, 5);
  fill(v, 8 * HK * D, 6);
  fill(q, H * D, 7);
  assert_int_equal(kq_cache_append(f.batched, 0, 5, k, v), KQ_OK);
  assert_int_equal(kq_cache_seq_length(f.batched, 0, 0), 5);
  for (int s = 1; s < NS; s++) assert_int_equal(kq_cache_seq_length(f.batched, 0, s), 0);
  kq_seq_span s0 = {.seq = 0, .n_tokens = 1};
  assert_int_equal(kq_cache_attend(f.batched, 0, 1, q, KQ_OUTPUT_FULL, a), KQ_OK);
  assert_int_equal(kq_cache_attend_batch(f.batched, 0, 1, &s0, q, KQ_OUTPUT_FULL, b), KQ_OK);
  assert_memory_equal(a, b, sizeof a);
  kq_seq_span s1 = {.seq = 1, .n_tokens = 2};
  assert_int_equal(kq_cache_append_batch(f.batched, 0, 1, &s1, k, v), KQ_OK);
  assert_int_equal(kq_cache_truncate(f.batched, 2), KQ_OK);
  assert_int_equal(kq_cache_length(f.batched, 0), 2);
  assert_int_equal(kq_cache_seq_length(f.batched, 0, 1), 2);
  fixture_close(&f);
}

static kq_device_stats stats_of(kq_device *dev) {
  kq_device_stats s = {.struct_size = sizeof s};
  assert_int_equal(kq_device_get_stats(dev, &s), KQ_OK);
  return s;
}

/* The kernels' grids cover sequences: one layer's batched decode attend over
 * 8 sequences of different lengths costs the dispatches (kernel enqueues)
 * of one sequence's, and on vulkan at most the two of the decode grid in at
 * most one submit. Counted, never timed. */
static void a_batched_decode_costs_the_dispatches_of_one_sequence(void **state) {
  (void)state;
  if (is_cpu()) skip(); /* the cpu backend has no kernels to count */
  static fixture f;
  /* q8/q4 segments: the layout every GPU decode kernel reads in place. */
  fixture_open(&f, &(variant){.rope = KQ_ROPE_POST, .quantized = 1});
  static float k[64 * HK * D], v[64 * HK * D], q[NS * H * D], out[NS * H * D];
  fill(k, 64 * HK * D, 11);
  fill(v, 64 * HK * D, 12);
  fill(q, NS * H * D, 13);
  const int32_t len[NS] = {1, 3, 7, 12, 5, 9, 2, 16};
  kq_seq_span prefill[NS], decode[NS];
  for (int s = 0; s < NS; s++) {
    prefill[s] = (kq_seq_span){.seq = s, .n_tokens = len[s]};
    decode[s] = (kq_seq_span){.seq = s, .n_tokens = 1};
  }
  assert_int_equal(kq_cache_append_batch(f.batched, 0, NS, prefill, k, v), KQ_OK);
  /* Warm-up: kernels built, scratch and staging at their sizes. */
  for (int t = 0; t < 2; t++) {
    assert_int_equal(kq_cache_attend_batch(f.batched, 0, NS, decode, q, KQ_OUTPUT_FULL, out),
                     KQ_OK);
    assert_int_equal(kq_cache_attend_batch(f.batched, 0, 1, decode, q, KQ_OUTPUT_FULL, out), KQ_OK);
  }
  kq_device_stats a = stats_of(f.dev);
  assert_int_equal(kq_cache_attend_batch(f.batched, 0, 1, decode, q, KQ_OUTPUT_FULL, out), KQ_OK);
  kq_device_stats b = stats_of(f.dev);
  assert_int_equal(kq_cache_attend_batch(f.batched, 0, NS, decode, q, KQ_OUTPUT_FULL, out), KQ_OK);
  kq_device_stats c = stats_of(f.dev);
  const uint64_t one = b.dispatches - a.dispatches, all = c.dispatches - b.dispatches;
  assert_true(one > 0); /* the counter counts */
  if (all != one)
    fail_msg("%s: attend of %d sequences: %llu dispatches, of one: %llu", g_device, NS,
             (unsigned long long)all, (unsigned long long)one);
  if (strncmp(g_device, "vulkan", 6) == 0) {
    if (all > 2) fail_msg("%s: decode attend: %llu dispatches", g_device, (unsigned long long)all);
    if (c.submits - b.submits > 1)
      fail_msg("%s: decode attend: %llu submits", g_device,
               (unsigned long long)(c.submits - b.submits));
  }
  fixture_close(&f);
}

/* Appends of different lengths to 8 sequences in one batch cost the
 * dispatches of an append to one sequence (float and quantized latents:
 * project.comp and project_seg.comp): one per side, in at most one submit. */
static void append_counts(const variant *var) {
  static fixture f;
  fixture_open(&f, var);
  static float k[64 * HK * D], v[64 * HK * D];
  fill(k, 64 * HK * D, 21);
  fill(v, 64 * HK * D, 22);
  const int32_t len[NS] = {1, 3, 7, 12, 5, 9, 2, 16};
  kq_seq_span spans[NS];
  for (int s = 0; s < NS; s++) spans[s] = (kq_seq_span){.seq = s, .n_tokens = len[s]};
  /* Warm-up: kernels built, staging at its size. */
  assert_int_equal(kq_cache_append_batch(f.batched, 0, NS, spans, k, v), KQ_OK);
  assert_int_equal(kq_cache_seq_clear(f.batched, 0), KQ_OK);
  kq_device_stats a = stats_of(f.dev);
  kq_seq_span one = {.seq = 0, .n_tokens = 16};
  assert_int_equal(kq_cache_append_batch(f.batched, 0, 1, &one, k, v), KQ_OK);
  kq_device_stats b = stats_of(f.dev);
  for (int s = 0; s < NS; s++) spans[s].seq = (s + 1) % NS; /* sequence 0 holds 16 */
  spans[NS - 1].n_tokens = 1;
  assert_int_equal(kq_cache_append_batch(f.batched, 0, NS, spans, k, v), KQ_OK);
  kq_device_stats c = stats_of(f.dev);
  const uint64_t n_one = b.dispatches - a.dispatches, all = c.dispatches - b.dispatches;
  assert_true(n_one > 0);
  if (all != n_one)
    fail_msg("%s: append to %d sequences: %llu dispatches, to one: %llu", g_device, NS,
             (unsigned long long)all, (unsigned long long)n_one);
  if (all > 2) fail_msg("%s: append: %llu dispatches", g_device, (unsigned long long)all);
  if (c.submits - b.submits > 1)
    fail_msg("%s: append: %llu submits", g_device, (unsigned long long)(c.submits - b.submits));
  fixture_close(&f);
}

static void a_batched_append_costs_the_dispatches_of_one_sequence(void **state) {
  (void)state;
  /* The cpu backend has no kernels to count; opencl still projects
   * sequence by sequence. */
  if (strncmp(g_device, "vulkan", 6) != 0) skip();
  append_counts(&(variant){.rope = KQ_ROPE_POST, .storage = KQ_STORAGE_F32});
  append_counts(&(variant){.rope = KQ_ROPE_POST, .storage = KQ_STORAGE_F32, .quantized = 1});
  if (device_has_f16())
    append_counts(&(variant){.rope = KQ_ROPE_POST,
                             .layout = KQ_LAYOUT_JOINT,
                             .storage = KQ_STORAGE_F16,
                             .quantized = 1});
}

/* A prefill attend over 8 sequences of different lengths (longer than a
 * decode step, so the tiled kernels) costs the dispatches of one
 * sequence's prefill, in at most one submit. */
static void prefill_counts(const variant *var) {
  static fixture f;
  fixture_open(&f, var);
  static float k[64 * HK * D], v[64 * HK * D], q[64 * H * D], out[64 * H * D];
  fill(k, 64 * HK * D, 31);
  fill(v, 64 * HK * D, 32);
  fill(q, 64 * H * D, 33);
  const int32_t len[NS] = {1, 3, 7, 12, 5, 9, 2, 16};
  kq_seq_span spans[NS];
  for (int s = 0; s < NS; s++) spans[s] = (kq_seq_span){.seq = s, .n_tokens = len[s]};
  assert_int_equal(kq_cache_append_batch(f.batched, 0, NS, spans, k, v), KQ_OK);
  /* Warm-up: kernels built, scratch at its size. */
  for (int t = 0; t < 2; t++) {
    assert_int_equal(kq_cache_attend_batch(f.batched, 0, NS, spans, q, KQ_OUTPUT_FULL, out), KQ_OK);
    assert_int_equal(kq_cache_attend_batch(f.batched, 0, 1, &spans[NS - 1], q, KQ_OUTPUT_FULL, out),
                     KQ_OK);
  }
  kq_device_stats a = stats_of(f.dev);
  assert_int_equal(kq_cache_attend_batch(f.batched, 0, 1, &spans[NS - 1], q, KQ_OUTPUT_FULL, out),
                   KQ_OK);
  kq_device_stats b = stats_of(f.dev);
  assert_int_equal(kq_cache_attend_batch(f.batched, 0, NS, spans, q, KQ_OUTPUT_FULL, out), KQ_OK);
  kq_device_stats c = stats_of(f.dev);
  const uint64_t n_one = b.dispatches - a.dispatches, all = c.dispatches - b.dispatches;
  assert_true(n_one > 0);
  if (all != n_one)
    fail_msg("%s: prefill attend of %d sequences: %llu dispatches, of one: %llu", g_device, NS,
             (unsigned long long)all, (unsigned long long)n_one);
  if (c.submits - b.submits > 1)
    fail_msg("%s: prefill attend: %llu submits", g_device,
             (unsigned long long)(c.submits - b.submits));
  fixture_close(&f);
}

static void a_batched_prefill_costs_the_dispatches_of_one_sequence(void **state) {
  (void)state;
  /* The cpu backend has no kernels to count; opencl still attends a
   * prefill sequence by sequence. */
  if (strncmp(g_device, "vulkan", 6) != 0) skip();
  prefill_counts(&(variant){.rope = KQ_ROPE_POST, .storage = KQ_STORAGE_F32});
  prefill_counts(&(variant){.rope = KQ_ROPE_PRE, .storage = KQ_STORAGE_F32, .quantized = 1});
  if (device_has_f16())
    prefill_counts(&(variant){.rope = KQ_ROPE_POST,
                              .layout = KQ_LAYOUT_JOINT,
                              .storage = KQ_STORAGE_F16,
                              .quantized = 1});
}

static void zero_sequences_are_refused(void **state) {
  (void)state;
  kq_device *dev = NULL;
  assert_int_equal(kq_device_create(g_device, &dev), KQ_OK);
  kq_projections *p = make_projections(&(variant){.rope = KQ_ROPE_NONE});
  kq_cache_params cp = kq_cache_default_params();
  cp.n_seqs = 0;
  kq_cache *c = NULL;
  assert_int_equal(kq_cache_create(dev, p, &cp, &c), KQ_ERR_INVALID_ARGUMENT);
  assert_null(c);
  /* Memory grows with the sequences: kv_bytes is per-sequence bytes times n_seqs. */
  kq_cache_memory m1, m4;
  cp.n_seqs = 1;
  assert_int_equal(kq_cache_create(dev, p, &cp, &c), KQ_OK);
  assert_int_equal(kq_cache_get_memory(c, &m1), KQ_OK);
  kq_cache_destroy(c);
  cp.n_seqs = 4;
  assert_int_equal(kq_cache_create(dev, p, &cp, &c), KQ_OK);
  assert_int_equal(kq_cache_get_memory(c, &m4), KQ_OK);
  kq_cache_destroy(c);
  assert_true(m4.kv_bytes == 4 * m1.kv_bytes);
  kq_projections_destroy(p);
  kq_device_destroy(dev);
}

int main(int argc, char **argv) {
  if (argc > 1) g_device = argv[1];
  if (!kq_test_device_present(g_device)) return 77;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(batched_equals_single_float_post),
      cmocka_unit_test(batched_equals_single_float_pre),
      cmocka_unit_test(batched_equals_single_f16),
      cmocka_unit_test(batched_equals_single_quantized),
      cmocka_unit_test(batched_equals_single_quantized_post),
      cmocka_unit_test(batched_equals_single_joint_quantized),
      cmocka_unit_test(bad_batches_change_nothing),
      cmocka_unit_test(single_sequence_calls_act_on_sequence_zero),
      cmocka_unit_test(zero_sequences_are_refused),
      cmocka_unit_test(a_batched_decode_costs_the_dispatches_of_one_sequence),
      cmocka_unit_test(a_batched_append_costs_the_dispatches_of_one_sequence),
      cmocka_unit_test(a_batched_prefill_costs_the_dispatches_of_one_sequence),
  };
  return cmocka_run_group_tests_name(g_device, tests, NULL, NULL);
}
