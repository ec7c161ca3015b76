/* The cpu device's compressed attention against a float64 reference:
 * decode and prefill, GQA, ranks below d and identity, RoPE none/post/pre in
 * both layouts, F32/F16 storage, latent and full outputs, chunked appends.
 *
 * Thresholds (NMSE = Σ(a−b)²/Σb²): the reference rounds latents exactly as
 * the storage does, so what remains is float32 arithmetic in the backend
 * (relative ~1e-6 per value, NMSE ~1e-12) plus, for F16, rare one-ulp
 * differences where float32 and float64 sums straddle a rounding boundary
 * (2^-11 relative on a few values). 1e-9 (F32) and 1e-6 (F16) leave room for
 * that and still catch any indexing, masking or softmax error, which shows
 * up at NMSE ~1e-2 or worse. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "backend/attn_ref.h"

typedef struct case_def {
  int H, Hk, d, rk, rv, n_ctx, m, chunks;
  kq_storage storage;
  kq_rope_mode rope;
  kq_rope_layout layout;
  kq_output output;
  int identity;
} case_def;

static void run_case(const case_def *cd) {
  kq_projections_info info = {.method = KQ_METHOD_KQSVD,
                              .n_layers = 2,
                              .n_heads = cd->H,
                              .n_kv_heads = cd->Hk,
                              .head_dim = cd->d,
                              .rope = cd->rope,
                              .rope_layout = cd->layout,
                              .rope_theta = 10000.0f};
  kq_projections *proj = NULL;
  uint64_t seed = 1234u + (uint64_t)cd->d * 31u + (uint64_t)cd->rk;
  if (cd->identity) {
    assert_int_equal(kq_projections_create_identity(&info, &proj), KQ_OK);
  } else {
    int32_t rk[2] = {cd->rk, cd->rk}, rv[2] = {cd->rv, cd->rv};
    assert_int_equal(kq_projections_create(&info, rk, rv, &proj), KQ_OK);
    for (int l = 0; l < 2; l++) {
      kq_projection_layer L;
      assert_int_equal(kq_projections_layer(proj, l, &L), KQ_OK);
      size_t nk = (size_t)cd->Hk * cd->d * cd->rk, nv = (size_t)cd->Hk * cd->d * cd->rv;
      ref_fill(L.key_down, nk, &seed, 0.5);
      ref_fill(L.query_down, nk, &seed, 0.5);
      ref_fill(L.value_down, nv, &seed, 0.5);
      ref_fill(L.value_up, nv, &seed, 0.5);
    }
  }
  kq_projection_layer L;
  assert_int_equal(kq_projections_layer(proj, 1, &L), KQ_OK);

  kq_device *dev = NULL;
  assert_int_equal(kq_device_create("cpu", &dev), KQ_OK);
  kq_cache_params params = kq_cache_default_params();
  params.storage = cd->storage;
  params.capacity = cd->n_ctx + 3;
  kq_cache *cache = NULL;
  assert_int_equal(kq_cache_create(dev, proj, &params, &cache), KQ_OK);

  size_t row = (size_t)cd->Hk * cd->d;
  float *keys = malloc(sizeof(float) * row * cd->n_ctx);
  float *values = malloc(sizeof(float) * row * cd->n_ctx);
  float *queries = malloc(sizeof(float) * (size_t)cd->m * cd->H * cd->d);
  ref_fill(keys, row * cd->n_ctx, &seed, 1.5);
  ref_fill(values, row * cd->n_ctx, &seed, 1.0);
  ref_fill(queries, (size_t)cd->m * cd->H * cd->d, &seed, 1.5);

  /* Layer 1, appended in `chunks` pieces; layer 0 stays empty. */
  int done = 0;
  for (int c = 0; c < cd->chunks; c++) {
    int n = (cd->n_ctx - done) / (cd->chunks - c);
    if (n == 0) continue;
    assert_int_equal(kq_cache_append(cache, 1, n, keys + row * done, values + row * done), KQ_OK);
    done += n;
  }
  assert_int_equal(kq_cache_length(cache, 1), cd->n_ctx);
  assert_int_equal(kq_cache_length(cache, 0), 0);

  int full = cd->output == KQ_OUTPUT_FULL;
  size_t n_out = (size_t)cd->m * cd->H * (full ? cd->d : (cd->identity ? cd->d : cd->rv));
  float *out = malloc(sizeof(float) * n_out);
  double *ref = malloc(sizeof(double) * n_out);
  assert_int_equal(kq_cache_attend(cache, 1, cd->m, queries, cd->output, out), KQ_OK);
  ref_attend(&info, &L, cd->n_ctx, keys, values, cd->m, queries, cd->storage == KQ_STORAGE_F16,
             full, ref);
  double nmse = ref_nmse(out, ref, n_out);
  if (getenv("KQ_TEST_VERBOSE"))
    print_message("nmse %.3e (ref[0] %.4f out[0] %.4f)\n", nmse, ref[0], out[0]);
  double limit = cd->storage == KQ_STORAGE_F16 ? 1e-6 : 1e-9;
  if (!(nmse <= limit))
    print_error("H %d Hk %d d %d rk %d rv %d ctx %d m %d storage %d rope %d layout %d output %d "
                "identity %d: NMSE %.3e > %.1e\n",
                cd->H, cd->Hk, cd->d, cd->rk, cd->rv, cd->n_ctx, cd->m, cd->storage, cd->rope,
                cd->layout, cd->output, cd->identity, nmse, limit);
  assert_true(nmse <= limit);

  free(out), free(ref), free(keys), free(values), free(queries);
  kq_cache_destroy(cache);
  kq_device_destroy(dev);
  kq_projections_destroy(proj);
}

static void decode_matches_reference_gqa_ranks_and_storage(void **state) {
  (void)state;
  const case_def cases[] = {
      {8, 2, 64, 16, 16, 100, 1, 1, KQ_STORAGE_F32, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_OUTPUT_FULL, 0},
      {8, 2, 64, 16, 16, 100, 1, 3, KQ_STORAGE_F16, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_OUTPUT_FULL, 0},
      {4, 4, 80, 7, 13, 33, 1, 2, KQ_STORAGE_F32, KQ_ROPE_NONE, KQ_ROPE_PAIRS, KQ_OUTPUT_LATENT, 0},
      {8, 2, 80, 7, 13, 150, 1, 2, KQ_STORAGE_F16, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_OUTPUT_FULL, 0},
      {8, 2, 80, 7, 13, 150, 9, 2, KQ_STORAGE_F16, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_OUTPUT_FULL, 0},
      {8, 1, 32, 1, 3, 1, 1, 1, KQ_STORAGE_F32, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_OUTPUT_FULL, 0},
      /* rank d with non-identity matrices must not take the identity path */
      {4, 2, 32, 32, 32, 90, 1, 1, KQ_STORAGE_F32, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_OUTPUT_FULL, 0},
      /* Hk = 1: the context is split into chunks and merged. */
      {4, 1, 64, 32, 32, 1000, 1, 4, KQ_STORAGE_F32, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_OUTPUT_FULL,
       0},
      {4, 1, 64, 32, 32, 1000, 1, 4, KQ_STORAGE_F16, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_OUTPUT_LATENT,
       0},
      {16, 2, 64, 64, 64, 300, 1, 2, KQ_STORAGE_F32, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_OUTPUT_FULL,
       1},
      {16, 2, 64, 64, 64, 300, 1, 2, KQ_STORAGE_F16, KQ_ROPE_NONE, KQ_ROPE_PAIRS, KQ_OUTPUT_FULL,
       1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);
}

static void prefill_is_causal_over_previous_tokens_and_within_block(void **state) {
  (void)state;
  const case_def cases[] = {
      {8, 2, 64, 16, 24, 70, 5, 2, KQ_STORAGE_F32, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_OUTPUT_FULL, 0},
      {8, 2, 64, 16, 24, 70, 70, 1, KQ_STORAGE_F16, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_OUTPUT_LATENT,
       0},
      {2, 1, 96, 48, 48, 300, 64, 3, KQ_STORAGE_F32, KQ_ROPE_NONE, KQ_ROPE_PAIRS, KQ_OUTPUT_FULL,
       0},
      {32, 4, 64, 64, 64, 130, 40, 1, KQ_STORAGE_F32, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_OUTPUT_FULL,
       1},
      /* odd head_dim (allowed without PRE rope), rank d in F16 */
      {3, 1, 33, 5, 33, 70, 3, 2, KQ_STORAGE_F32, KQ_ROPE_POST, KQ_ROPE_PAIRS, KQ_OUTPUT_FULL, 0},
      {2, 1, 33, 33, 33, 50, 2, 1, KQ_STORAGE_F16, KQ_ROPE_NONE, KQ_ROPE_PAIRS, KQ_OUTPUT_FULL, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);
}

static void pre_rope_rotates_reconstructed_keys_in_both_layouts(void **state) {
  (void)state;
  const case_def cases[] = {
      {4, 2, 64, 16, 16, 90, 1, 1, KQ_STORAGE_F32, KQ_ROPE_PRE, KQ_ROPE_PAIRS, KQ_OUTPUT_FULL, 0},
      {4, 2, 64, 16, 16, 90, 7, 2, KQ_STORAGE_F32, KQ_ROPE_PRE, KQ_ROPE_HALVES, KQ_OUTPUT_FULL, 0},
      {4, 2, 64, 16, 16, 90, 7, 2, KQ_STORAGE_F16, KQ_ROPE_PRE, KQ_ROPE_HALVES, KQ_OUTPUT_LATENT,
       0},
      {4, 1, 32, 32, 32, 600, 3, 2, KQ_STORAGE_F32, KQ_ROPE_PRE, KQ_ROPE_PAIRS, KQ_OUTPUT_FULL, 1},
      /* Tiled prefill reconstruction: more than 64 query rows per task, several query
       * blocks per kv head, the exact angle resync every 1024 positions, odd widths. */
      {8, 2, 64, 16, 16, 1100, 200, 1, KQ_STORAGE_F32, KQ_ROPE_PRE, KQ_ROPE_PAIRS, KQ_OUTPUT_FULL,
       0},
      {8, 2, 36, 12, 20, 1100, 150, 2, KQ_STORAGE_F16, KQ_ROPE_PRE, KQ_ROPE_HALVES, KQ_OUTPUT_FULL,
       0},
      {8, 2, 36, 12, 20, 1100, 150, 2, KQ_STORAGE_F32, KQ_ROPE_PRE, KQ_ROPE_PAIRS, KQ_OUTPUT_LATENT,
       0},
      {6, 2, 64, 64, 64, 2100, 1, 1, KQ_STORAGE_F16, KQ_ROPE_PRE, KQ_ROPE_HALVES, KQ_OUTPUT_FULL,
       1},
      {6, 2, 64, 64, 64, 1100, 300, 1, KQ_STORAGE_F32, KQ_ROPE_PRE, KQ_ROPE_PAIRS, KQ_OUTPUT_FULL,
       1},
      {4, 1, 128, 64, 64, 2100, 1, 1, KQ_STORAGE_F16, KQ_ROPE_PRE, KQ_ROPE_PAIRS, KQ_OUTPUT_FULL,
       0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(decode_matches_reference_gqa_ranks_and_storage),
      cmocka_unit_test(prefill_is_causal_over_previous_tokens_and_within_block),
      cmocka_unit_test(pre_rope_rotates_reconstructed_keys_in_both_layouts),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
