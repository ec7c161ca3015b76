/*
 * test_device_buffers.c — public device buffers and device-resident cache
 * calls (issue 15): write/read round trips and range checks; a decode step
 * over every layer with queries, keys, values and outputs in device buffers
 * equals the host-pointer calls, and (where the backend counts) costs no
 * device allocation after warm-up, uploads only what the engine wrote,
 * downloads only the one final read.
 *
 * usage: test_device_buffers [DEVICE]   (default cpu; 77 when absent)
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/test_check.h"
#include "common/test_rng.h"
#include "kqsvd.h"

enum { NL = 3, H = 4, HK = 2, D = 16, RK = 10, RV = 12, NS = 3, CAP = 24 };

static const char *g_device = "cpu";

#define OK(call)                                                                                   \
  do {                                                                                             \
    kq_status st_ = (call);                                                                        \
    if (st_ != KQ_OK) fail_msg("%s: %s", #call, kq_last_error());                                  \
  } while (0)

static void fill(float *x, size_t n, uint64_t seed) {
  uint64_t rng = seed * 0x9E3779B97F4A7C15ULL + 1;
  test_rng_fill(x, n, &rng, 1.0f);
}

static kq_projections *projections(void) {
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = NL,
                              .n_heads = H,
                              .n_kv_heads = HK,
                              .head_dim = D,
                              .rope = KQ_ROPE_PRE,
                              .rope_layout = KQ_ROPE_HALVES,
                              .rope_theta = 10000.0f};
  int32_t rk[NL] = {RK, RK, RK}, rv[NL] = {RV, RV, RV};
  kq_projections *p = NULL;
  OK(kq_projections_create(&info, rk, rv, &p));
  for (int l = 0; l < NL; l++) {
    kq_projection_layer v;
    OK(kq_projections_layer(p, l, &v));
    fill(v.key_down, HK * D * RK, 10 + (uint64_t)l);
    fill(v.query_down, HK * D * RK, 20 + (uint64_t)l);
    fill(v.value_down, HK * D * RV, 30 + (uint64_t)l);
    fill(v.value_up, HK * D * RV, 40 + (uint64_t)l);
  }
  return p;
}

static void buffers_round_trip_and_check_ranges(void **state) {
  (void)state;
  kq_device *dev = NULL;
  OK(kq_device_create(g_device, &dev));
  kq_device_buffer *b = NULL;
  OK(kq_device_buffer_create(dev, 1000, &b));
  assert_int_equal(kq_device_buffer_size(b), 1000);
  unsigned char in[300], out[300];
  for (int i = 0; i < 300; i++) in[i] = (unsigned char)(i * 7 + 3);
  OK(kq_device_buffer_write(b, 700, in, 300));
  OK(kq_device_synchronize(dev));
  OK(kq_device_buffer_read(b, 700, out, 300));
  assert_memory_equal(in, out, 300);
  assert_int_equal(kq_device_buffer_write(b, 701, in, 300), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_device_buffer_read(b, SIZE_MAX, out, 2), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_device_buffer_read(b, 0, NULL, 2), KQ_ERR_INVALID_ARGUMENT);
  kq_device_buffer *none = NULL;
  assert_int_equal(kq_device_buffer_create(dev, 0, &none), KQ_ERR_INVALID_ARGUMENT);
  assert_null(none);
  assert_int_equal(kq_device_buffer_size(NULL), 0);
  kq_device_buffer_destroy(NULL);
  kq_device_buffer_destroy(b);
  kq_device_destroy(dev);
}

/* Counters of the device-resident part of the steps (when the backend counts). */
static kq_device_stats g_dev_delta;
static int g_counted;

static void add_delta(const kq_device_stats *a, const kq_device_stats *b) {
  g_dev_delta.submits += b->submits - a->submits;
  g_dev_delta.host_waits += b->host_waits - a->host_waits;
  g_dev_delta.bytes_uploaded += b->bytes_uploaded - a->bytes_uploaded;
  g_dev_delta.bytes_downloaded += b->bytes_downloaded - a->bytes_downloaded;
  g_dev_delta.device_allocations += b->device_allocations - a->device_allocations;
}

typedef struct step_data {
  float q[NL][NS][H * D], k[NL][NS][HK * D], v[NL][NS][HK * D];
  float out_host[NL][NS][H * D], out_dev[NL][NS][H * D];
} step_data;

/* One decode step (one token per sequence, all layers): host calls into
 * `ref`, device-resident calls into `c` with one read at the end. */
static void decode_step(kq_device *dev, kq_cache *ref, kq_cache *c, kq_device_buffer *bq,
                        kq_device_buffer *bk, kq_device_buffer *bv, kq_device_buffer *bo,
                        step_data *s, uint64_t seed) {
  kq_seq_span spans[NS] = {
      {.seq = 2, .n_tokens = 1}, {.seq = 0, .n_tokens = 1}, {.seq = 1, .n_tokens = 1}};
  fill(&s->q[0][0][0], sizeof s->q / sizeof(float), seed);
  fill(&s->k[0][0][0], sizeof s->k / sizeof(float), seed + 1);
  fill(&s->v[0][0][0], sizeof s->v / sizeof(float), seed + 2);
  for (int l = 0; l < NL; l++) {
    OK(kq_cache_append_batch(ref, l, NS, spans, s->k[l][0], s->v[l][0]));
    OK(kq_cache_attend_batch(ref, l, NS, spans, s->q[l][0], KQ_OUTPUT_FULL, s->out_host[l][0]));
  }
  kq_device_stats before = {.struct_size = sizeof before}, after = before;
  g_counted = kq_device_get_stats(dev, &before) == KQ_OK;
  /* The engine's own writes: its activations reach the device once. */
  OK(kq_device_buffer_write(bq, 0, s->q, sizeof s->q));
  OK(kq_device_buffer_write(bk, 0, s->k, sizeof s->k));
  OK(kq_device_buffer_write(bv, 0, s->v, sizeof s->v));
  for (int l = 0; l < NL; l++) {
    OK(kq_cache_append_device(c, l, NS, spans, bk, sizeof s->k[0] * (size_t)l, bv,
                              sizeof s->v[0] * (size_t)l));
    OK(kq_cache_attend_device(c, l, NS, spans, bq, sizeof s->q[0] * (size_t)l, KQ_OUTPUT_FULL, bo,
                              sizeof s->out_dev[0] * (size_t)l));
  }
  OK(kq_device_buffer_read(bo, 0, s->out_dev, sizeof s->out_dev));
  if (g_counted) {
    OK(kq_device_get_stats(dev, &after));
    add_delta(&before, &after);
  }
}

static double rel_diff(const float *a, const float *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    den += (double)b[i] * b[i];
  }
  return sqrt(num / (den > 0 ? den : 1));
}

static void device_resident_decode_equals_host_calls(void **state) {
  (void)state;
  kq_device *dev = NULL;
  OK(kq_device_create(g_device, &dev));
  kq_projections *p = projections();
  kq_cache_params cp = kq_cache_default_params();
  cp.capacity = CAP;
  cp.n_seqs = NS;
  kq_cache *ref = NULL, *c = NULL;
  OK(kq_cache_create(dev, p, &cp, &ref));
  OK(kq_cache_create(dev, p, &cp, &c));
  static step_data s;
  kq_device_buffer *bq, *bk, *bv, *bo;
  OK(kq_device_buffer_create(dev, sizeof s.q, &bq));
  OK(kq_device_buffer_create(dev, sizeof s.k, &bk));
  OK(kq_device_buffer_create(dev, sizeof s.v, &bv));
  OK(kq_device_buffer_create(dev, sizeof s.out_dev, &bo));
  decode_step(dev, ref, c, bq, bk, bv, bo, &s, 100); /* warm-up: staging, pipelines */
  memset(&g_dev_delta, 0, sizeof g_dev_delta);
  for (int step = 1; step < 6; step++) {
    decode_step(dev, ref, c, bq, bk, bv, bo, &s, 100 + 10 * (uint64_t)step);
    double e = rel_diff(&s.out_dev[0][0][0], &s.out_host[0][0][0], sizeof s.out_dev / 4);
    if (!(e <= 1e-6))
      fail_msg("%s: step %d: device-resident output differs by %g", g_device, step, e);
  }
  if (g_counted) {
    /* Five device-resident steps after warm-up: the engine's writes and its
     * one read per step are all that crosses; nothing is allocated. */
    const uint64_t writes = sizeof s.q + sizeof s.k + sizeof s.v, reads = sizeof s.out_dev;
    assert_int_equal(g_dev_delta.device_allocations, 0);
    assert_int_equal(g_dev_delta.bytes_uploaded, 5 * writes);
    assert_int_equal(g_dev_delta.bytes_downloaded, 5 * reads);
    /* exactly one host wait per step over all layers (the read) on a device
     * that queues work; the CPU runs ops to completion and never waits */
    if (g_dev_delta.submits > 0)
      assert_int_equal(g_dev_delta.host_waits, 5);
    else
      assert_int_equal(g_dev_delta.host_waits, 0);
    printf("%s: 5 device-resident decode steps x %d layers: %llu allocations, %llu host waits, "
           "%llu submits\n",
           g_device, NL, (unsigned long long)g_dev_delta.device_allocations,
           (unsigned long long)g_dev_delta.host_waits, (unsigned long long)g_dev_delta.submits);
  } else {
    printf("%s: the backend does not count; outputs compared only\n", g_device);
  }
  /* Misuse is refused before anything is queued. */
  kq_seq_span one = {.seq = 0, .n_tokens = 1};
  assert_int_equal(kq_cache_attend_device(c, 0, 1, &one, bq, 0, KQ_OUTPUT_FULL, bq, 0),
                   KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_attend_device(c, 0, 1, &one, bq, 2, KQ_OUTPUT_FULL, bo, 0),
                   KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_cache_append_device(c, 0, 1, &one, bk, sizeof s.k - 4, bv, 0),
                   KQ_ERR_INVALID_ARGUMENT);
  kq_device *other = NULL;
  OK(kq_device_create(g_device, &other));
  kq_device_buffer *foreign = NULL;
  OK(kq_device_buffer_create(other, sizeof s.k, &foreign));
  assert_int_equal(kq_cache_append_device(c, 0, 1, &one, foreign, 0, bv, 0),
                   KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "keys"));
  int32_t len = kq_cache_seq_length(c, 0, 0);
  assert_int_equal(len, kq_cache_seq_length(ref, 0, 0));
  kq_device_buffer_destroy(foreign);
  kq_device_destroy(other);
  kq_device_buffer_destroy(bq);
  kq_device_buffer_destroy(bk);
  kq_device_buffer_destroy(bv);
  kq_device_buffer_destroy(bo);
  kq_cache_destroy(ref);
  kq_cache_destroy(c);
  kq_projections_destroy(p);
  kq_device_destroy(dev);
}

int main(int argc, char **argv) {
  if (argc > 1) g_device = argv[1];
  if (!kq_test_device_present(g_device)) return 77;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(buffers_round_trip_and_check_ranges),
      cmocka_unit_test(device_resident_decode_equals_host_calls),
  };
  return cmocka_run_group_tests_name(g_device, tests, NULL, NULL);
}
