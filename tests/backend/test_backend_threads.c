/* Two threads, each driving its own cache on one shared cpu device,
 * append and attend concurrently; every output is bitwise identical to the
 * same work run sequentially (the backend's thread team is shared, so this
 * also checks that concurrent dispatch neither mixes nor reorders work). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <pthread.h>

#include "backend/attn_ref.h"

enum { STEPS = 24, PREFILL = 1200 }; /* big enough that every op uses the team */

typedef struct worker {
  kq_device *dev;
  kq_projections *proj;
  int n_kv_heads;
  uint64_t seed;
  float *outputs; /* [STEPS][4 * H * d]: room for a 4-query output */
  kq_status status;
} worker;

static const int H = 8, D = 64;

static void *run_worker(void *arg) {
  worker *w = arg;
  kq_cache_params p = kq_cache_default_params();
  p.capacity = PREFILL + STEPS;
  p.storage = KQ_STORAGE_F16;
  kq_cache *cache = NULL;
  w->status = kq_cache_create(w->dev, w->proj, &p, &cache);
  if (w->status != KQ_OK) return NULL;
  size_t row = (size_t)w->n_kv_heads * D;
  float *kv = malloc(sizeof(float) * row * PREFILL * 2);
  float *q = malloc(sizeof(float) * (size_t)H * D * 4);
  uint64_t seed = w->seed;
  ref_fill(kv, row * PREFILL * 2, &seed, 1.0);
  w->status = kq_cache_append(cache, 0, PREFILL, kv, kv + row * PREFILL);
  for (int s = 0; s < STEPS && w->status == KQ_OK; s++) {
    ref_fill(kv, row * 2, &seed, 1.0);
    ref_fill(q, (size_t)H * D * 4, &seed, 1.0);
    w->status = kq_cache_append(cache, 0, 1, kv, kv + row);
    if (w->status == KQ_OK && s % 6 == 5) /* now and then a prefill-shaped call */
      w->status =
          kq_cache_attend(cache, 0, 4, q, KQ_OUTPUT_LATENT, w->outputs + (size_t)s * 4 * H * D);
    else if (w->status == KQ_OK)
      w->status =
          kq_cache_attend(cache, 0, 1, q, KQ_OUTPUT_FULL, w->outputs + (size_t)s * 4 * H * D);
  }
  free(kv);
  free(q);
  kq_cache_destroy(cache);
  return NULL;
}

static kq_projections *make_projections(int n_kv_heads, int rank) {
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = 1,
                              .n_heads = H,
                              .n_kv_heads = n_kv_heads,
                              .head_dim = D,
                              .rope = KQ_ROPE_POST,
                              .rope_layout = KQ_ROPE_PAIRS,
                              .rope_theta = 10000.0f};
  int32_t r[1] = {rank};
  kq_projections *proj = NULL;
  if (kq_projections_create(&info, r, r, &proj) != KQ_OK) return NULL;
  kq_projection_layer L;
  kq_projections_layer(proj, 0, &L);
  uint64_t seed = 99;
  size_t n = (size_t)n_kv_heads * D * rank;
  ref_fill(L.key_down, n, &seed, 0.3), ref_fill(L.query_down, n, &seed, 0.3);
  ref_fill(L.value_down, n, &seed, 0.3), ref_fill(L.value_up, n, &seed, 0.3);
  return proj;
}

static void concurrent_caches_match_sequential_runs_bitwise(void **state) {
  (void)state;
  kq_device *dev = NULL;
  assert_int_equal(kq_device_create("cpu", &dev), KQ_OK);
  /* Hk = 1 splits the context over the team; Hk = 4 splits over heads. */
  kq_projections *pa = make_projections(1, 24), *pb = make_projections(4, 40);
  assert_non_null(pa);
  assert_non_null(pb);
  size_t n = (size_t)STEPS * 4 * H * D;
  float *seq_a = calloc(n, sizeof(float)), *seq_b = calloc(n, sizeof(float));
  float *par_a = calloc(n, sizeof(float)), *par_b = calloc(n, sizeof(float));
  worker a = {dev, pa, 1, 11, seq_a, KQ_OK}, b = {dev, pb, 4, 22, seq_b, KQ_OK};
  run_worker(&a);
  run_worker(&b);
  assert_int_equal(a.status, KQ_OK);
  assert_int_equal(b.status, KQ_OK);
  for (int round = 0; round < 3; round++) {
    worker ca = {dev, pa, 1, 11, par_a, KQ_OK}, cb = {dev, pb, 4, 22, par_b, KQ_OK};
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, run_worker, &ca), 0);
    assert_int_equal(pthread_create(&tb, NULL, run_worker, &cb), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    assert_int_equal(ca.status, KQ_OK);
    assert_int_equal(cb.status, KQ_OK);
    assert_memory_equal(par_a, seq_a, n * sizeof(float));
    assert_memory_equal(par_b, seq_b, n * sizeof(float));
  }
  /* The runs are not trivially equal: outputs differ between the two. */
  assert_true(memcmp(seq_a, seq_b, n * sizeof(float)) != 0);
  free(seq_a), free(seq_b), free(par_a), free(par_b);
  kq_projections_destroy(pa);
  kq_projections_destroy(pb);
  kq_device_destroy(dev);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(concurrent_caches_match_sequential_runs_bitwise),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
