/*
 * test_vulkan_module.c — the Vulkan module through its backend ABI alone:
 * dlopen libkqsvd-vulkan.so, enumerate devices, and check project + attend +
 * up against a float64 reference, including the paths that split work at
 * maxStorageBufferRange. Exits 77 (ctest SKIP) when no Vulkan device exists.
 */
#include <dlfcn.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kqsvd_backend.h"
#include "vulkan/vk_reference.h"

static char g_err[2048];
static kq_status host_set_error(kq_status st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_err, sizeof g_err, fmt, ap);
  va_end(ap);
  return st;
}
static const kq_backend_host g_host = {KQ_BACKEND_ABI_VERSION, host_set_error};
static const kq_backend_iface *g_vk;
static kq_bdevice *g_dev;

#define CHECK_OK(expr)                                                                             \
  do {                                                                                             \
    kq_status st_ = (expr);                                                                        \
    if (st_ != KQ_OK) fail_msg("%s -> %d: %s", #expr, (int)st_, g_err);                            \
  } while (0)

static kq_buffer *upload(const void *data, size_t bytes) {
  kq_buffer *b = NULL;
  CHECK_OK(g_vk->buffer_alloc(g_dev, bytes, &b));
  CHECK_OK(g_vk->buffer_upload(g_dev, b, 0, data, bytes));
  return b;
}

typedef struct run_result {
  double nmse_lat, nmse_full;
} run_result;

/* Appends n_ctx tokens in two pieces, attends the last n_q, compares. The
 * caches are bound at cache_pad extra tokens of capacity per head (so a
 * large pad pushes later heads past maxStorageBufferRange). */
static run_result run_case(const vk_ref_case *c, kq_storage storage, int capacity) {
  uint64_t seed = 0x9e3779b97f4a7c15ull ^ (uint64_t)(c->n_ctx * 131 + c->rk * 7 + c->rope);
  const size_t d = (size_t)c->d, nk = (size_t)c->n_ctx * c->Hk * d, nq = (size_t)c->n_q * c->H * d;
  const size_t na = (size_t)c->Hk * d * c->rk, nc = (size_t)c->Hk * d * c->rv;
  float *K = malloc(nk * 4), *V = malloc(nk * 4), *Q = malloc(nq * 4);
  float *A = malloc(na * 4), *B = malloc(na * 4), *C = malloc(nc * 4), *E = malloc(nc * 4);
  float *lat = malloc((size_t)c->n_q * c->H * c->rv * 4), *full = malloc(nq * 4);
  double *rlat = malloc((size_t)c->n_q * c->H * c->rv * 8), *rfull = malloc(nq * 8);
  assert_non_null(K && V && Q && A && B && C && E && lat && full && rlat && rfull);
  vk_ref_fill(K, nk, 1.0, &seed);
  vk_ref_fill(V, nk, 1.0, &seed);
  vk_ref_fill(Q, nq, 1.0, &seed);
  vk_ref_fill(A, na, 1.5, &seed);
  vk_ref_fill(B, na, 1.5, &seed);
  vk_ref_fill(C, nc, 1.0, &seed);
  vk_ref_fill(E, nc, 1.0, &seed);
  assert_int_equal(vk_ref_attend(c, K, V, Q, A, B, C, E, rlat, rfull), 0);

  const size_t elem = storage == KQ_STORAGE_F16 ? 2 : 4;
  kq_buffer *bK = upload(K, nk * 4), *bV = upload(V, nk * 4), *bQ = upload(Q, nq * 4);
  kq_buffer *bA = upload(A, na * 4), *bB = upload(B, na * 4), *bC = upload(C, nc * 4);
  kq_buffer *bE = upload(E, nc * 4), *kc = NULL, *vc = NULL, *blat = NULL, *bfull = NULL;
  CHECK_OK(g_vk->buffer_alloc(g_dev, (size_t)c->Hk * capacity * c->rk * elem, &kc));
  CHECK_OK(g_vk->buffer_alloc(g_dev, (size_t)c->Hk * capacity * c->rv * elem, &vc));
  CHECK_OK(g_vk->buffer_alloc(g_dev, (size_t)c->n_q * c->H * c->rv * 4, &blat));
  CHECK_OK(g_vk->buffer_alloc(g_dev, nq * 4, &bfull));
  const int first = c->n_ctx / 3;
  for (int piece = 0; piece < 2; ++piece) {
    int pos = piece ? first : 0, n = piece ? c->n_ctx - first : first;
    kq_project_op p = {.src = bK,
                       .src_offset = (size_t)pos * c->Hk * d * 4,
                       .proj = bA,
                       .dst = kc,
                       .n_tokens = n,
                       .n_heads = c->Hk,
                       .head_dim = c->d,
                       .rank = c->rk,
                       .capacity = capacity,
                       .pos = pos,
                       .storage = storage,
                       .n_seqs = 1};
    CHECK_OK(g_vk->project(g_dev, &p));
    p.src = bV;
    p.proj = bC;
    p.dst = vc;
    p.rank = c->rv;
    CHECK_OK(g_vk->project(g_dev, &p));
  }
  kq_attend_op a = {.q = bQ,
                    .key_down = bA,
                    .query_down = bB,
                    .k_cache = kc,
                    .v_cache = vc,
                    .out = blat,
                    .n_queries = c->n_q,
                    .n_ctx = c->n_ctx,
                    .n_heads = c->H,
                    .n_kv_heads = c->Hk,
                    .head_dim = c->d,
                    .rank_k = c->rk,
                    .rank_v = c->rv,
                    .capacity = capacity,
                    .storage = storage,
                    .rope = (kq_rope_mode)c->rope,
                    .rope_layout = c->halves ? KQ_ROPE_HALVES : KQ_ROPE_PAIRS,
                    .rope_theta = (float)c->theta,
                    .scale = 1.0f / sqrtf((float)c->d),
                    .n_seqs = 1};
  CHECK_OK(g_vk->attend(g_dev, &a));
  kq_up_op u = {.latent = blat,
                .value_up = bE,
                .out = bfull,
                .n_queries = c->n_q,
                .n_heads = c->H,
                .n_kv_heads = c->Hk,
                .head_dim = c->d,
                .rank_v = c->rv,
                .n_seqs = 1};
  CHECK_OK(g_vk->up(g_dev, &u));
  CHECK_OK(g_vk->buffer_download(g_dev, blat, 0, lat, (size_t)c->n_q * c->H * c->rv * 4));
  CHECK_OK(g_vk->buffer_download(g_dev, bfull, 0, full, nq * 4));
  run_result r = {vk_ref_nmse(lat, rlat, (size_t)c->n_q * c->H * c->rv),
                  vk_ref_nmse(full, rfull, nq)};
  kq_buffer *all[] = {bK, bV, bQ, bA, bB, bC, bE, kc, vc, blat, bfull};
  for (size_t i = 0; i < sizeof all / sizeof *all; ++i) g_vk->buffer_free(g_dev, all[i]);
  free(K), free(V), free(Q), free(A), free(B), free(C), free(E);
  free(lat), free(full), free(rlat), free(rfull);
  return r;
}

/* Thresholds: F32 accumulates in float (sums of ≤ few thousand terms), so
 * NMSE ~1e-12; F16 storage rounds latents to 11 bits (NMSE ~1e-7). */
#define NMSE_F32 1e-9
#define NMSE_F16 1e-5

static void expect_case(const vk_ref_case *c, kq_storage storage, int capacity) {
  run_result r = run_case(c, storage, capacity);
  double tol = storage == KQ_STORAGE_F16 ? NMSE_F16 : NMSE_F32;
  if (!(r.nmse_lat <= tol && r.nmse_full <= tol))
    fail_msg("ctx %d q %d H %d/%d d %d r %d/%d rope %d halves %d %s: nmse latent %.3g full %.3g "
             "(limit %.1g)",
             c->n_ctx, c->n_q, c->H, c->Hk, c->d, c->rk, c->rv, c->rope, c->halves,
             storage ? "F16" : "F32", r.nmse_lat, r.nmse_full, tol);
}

static void test_module_lists_devices_with_vulkan_names(void **state) {
  (void)state;
  int n = g_vk->device_count();
  assert_true(n >= 1);
  for (int i = 0; i < n; ++i) {
    kq_device_info info;
    CHECK_OK(g_vk->device_info(i, &info));
    char want[32];
    snprintf(want, sizeof want, "vulkan:%d", i);
    assert_string_equal(info.name, want);
    assert_string_equal(info.backend, "vulkan");
    assert_true(info.memory_bytes > 0 && info.max_buffer_bytes > 0);
    if (strstr(info.description, "llvmpipe")) assert_int_equal(info.type, KQ_DEVICE_TYPE_CPU);
  }
  kq_device_info info;
  assert_int_equal(g_vk->device_info(n, &info), KQ_ERR_NOT_FOUND);
}

static void test_decode_and_prefill_match_f64_reference(void **state) {
  (void)state;
  const vk_ref_case cases[] = {
      {300, 1, 8, 2, 64, 24, 40, 0, 0, 10000}, /* decode, GQA 4 */
      {300, 1, 8, 2, 64, 24, 40, 2, 0, 10000}, /* decode, pre-RoPE pairs */
      {70, 70, 4, 4, 32, 16, 8, 0, 0, 10000},  /* full prefill, MHA */
      {96, 17, 6, 2, 32, 12, 32, 2, 1, 500},   /* partial prefill, pre-RoPE halves */
      {64, 9, 2, 1, 16, 16, 16, 1, 0, 10000},  /* rank = d, MQA */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; ++i) {
    expect_case(&cases[i], KQ_STORAGE_F32, cases[i].n_ctx + 5);
    expect_case(&cases[i], KQ_STORAGE_F16, cases[i].n_ctx + 5);
  }
}

static void test_identity_projections_give_full_attention(void **state) {
  (void)state;
  const int d = 16, H = 4, Hk = 2, n = 40;
  uint64_t seed = 7;
  float K[40 * 2 * 16], V[40 * 2 * 16], Q[4 * 16], out[4 * 16];
  vk_ref_fill(K, sizeof K / 4, 1, &seed);
  vk_ref_fill(V, sizeof V / 4, 1, &seed);
  vk_ref_fill(Q, sizeof Q / 4, 1, &seed);
  float I[2 * 16 * 16] = {0};
  for (int h = 0; h < Hk; ++h)
    for (int e = 0; e < d; ++e) I[(h * d + e) * d + e] = 1;
  vk_ref_case c = {n, 1, H, Hk, d, d, d, 0, 0, 10000};
  double rlat[4 * 16], rfull[4 * 16];
  assert_int_equal(vk_ref_attend(&c, K, V, Q, I, I, I, I, rlat, rfull), 0);
  kq_buffer *bK = upload(K, sizeof K), *bV = upload(V, sizeof V), *bQ = upload(Q, sizeof Q);
  kq_buffer *kc = NULL, *vc = NULL, *bo = NULL, *bf = NULL;
  CHECK_OK(g_vk->buffer_alloc(g_dev, sizeof K, &kc));
  CHECK_OK(g_vk->buffer_alloc(g_dev, sizeof V, &vc));
  CHECK_OK(g_vk->buffer_alloc(g_dev, sizeof out, &bo));
  CHECK_OK(g_vk->buffer_alloc(g_dev, sizeof out, &bf));
  kq_project_op p = {.src = bK,
                     .dst = kc,
                     .n_tokens = n,
                     .n_heads = Hk,
                     .head_dim = d,
                     .rank = d,
                     .capacity = n,
                     .flags = KQ_OP_IDENTITY_KEYS,
                     .n_seqs = 1};
  CHECK_OK(g_vk->project(g_dev, &p));
  p.src = bV, p.dst = vc, p.flags = KQ_OP_IDENTITY_VALUES;
  CHECK_OK(g_vk->project(g_dev, &p));
  kq_attend_op a = {.q = bQ,
                    .k_cache = kc,
                    .v_cache = vc,
                    .out = bo,
                    .n_queries = 1,
                    .n_ctx = n,
                    .n_heads = H,
                    .n_kv_heads = Hk,
                    .head_dim = d,
                    .rank_k = d,
                    .rank_v = d,
                    .capacity = n,
                    .scale = 0.25f,
                    .flags = KQ_OP_IDENTITY_KEYS | KQ_OP_IDENTITY_VALUES,
                    .n_seqs = 1};
  CHECK_OK(g_vk->attend(g_dev, &a));
  kq_up_op u = {.latent = bo,
                .out = bf,
                .n_queries = 1,
                .n_heads = H,
                .n_kv_heads = Hk,
                .head_dim = d,
                .rank_v = d,
                .flags = KQ_OP_IDENTITY_VALUES,
                .n_seqs = 1};
  CHECK_OK(g_vk->up(g_dev, &u));
  CHECK_OK(g_vk->buffer_download(g_dev, bf, 0, out, sizeof out));
  assert_true(vk_ref_nmse(out, rfull, 4 * 16) < NMSE_F32);
  kq_buffer *all[] = {bK, bV, bQ, kc, vc, bo, bf};
  for (size_t i = 0; i < 7; ++i) g_vk->buffer_free(g_dev, all[i]);
}

/* A binding limit of 64 KiB forces cache windows, query batches and token
 * batches in every op; results must not change. */
static void test_split_bindings_match_reference(void **state) {
  (void)state;
  setenv("KQSVD_VULKAN_MAX_BINDING", "65536", 1);
  const vk_ref_case c1 = {1500, 1, 4, 2, 32, 16, 24, 0, 0, 10000};
  const vk_ref_case c2 = {400, 200, 4, 1, 32, 16, 16, 2, 0, 10000};
  expect_case(&c1, KQ_STORAGE_F32, 1600);
  expect_case(&c1, KQ_STORAGE_F16, 1600);
  expect_case(&c2, KQ_STORAGE_F32, 400);
  unsetenv("KQSVD_VULKAN_MAX_BINDING");
}

/* Caches larger than maxStorageBufferRange (128 MiB on lavapipe) in total:
 * the second kv head's latents start past 128 MiB. */
static void test_cache_beyond_max_binding(void **state) {
  (void)state;
  const int capacity = 600000; /* 600000 * 64 * 4 B = 146 MiB per kv head */
  const vk_ref_case c = {777, 3, 4, 2, 64, 64, 64, 0, 0, 10000};
  expect_case(&c, KQ_STORAGE_F32, capacity);
}

/* Two sequences of different lengths in one project op per side and one
 * attend op (sequence tables; regions of one buffer per side, appended in
 * two pieces so the second starts at pos > 0): each matches its float64
 * reference. */
static void expect_batch(kq_storage storage) {
  enum { NSEQ = 2, CAP = 1200 };
  const vk_ref_case cs[NSEQ] = {{150, 40, 4, 2, 32, 16, 24, 1, 0, 10000},
                                {90, 13, 4, 2, 32, 16, 24, 1, 0, 10000}};
  const vk_ref_case *c = &cs[0]; /* the shared shape */
  const size_t d = (size_t)c->d, elem = storage == KQ_STORAGE_F16 ? 2 : 4;
  const size_t na = (size_t)c->Hk * d * c->rk, nc = (size_t)c->Hk * d * c->rv;
  const size_t kreg =
      ((size_t)c->Hk * CAP * c->rk * elem + KQ_PLANE_ALIGN - 1) / KQ_PLANE_ALIGN * KQ_PLANE_ALIGN;
  const size_t vreg =
      ((size_t)c->Hk * CAP * c->rv * elem + KQ_PLANE_ALIGN - 1) / KQ_PLANE_ALIGN * KQ_PLANE_ALIGN;
  uint64_t seed = 0x51ed27ull;
  float *A = malloc(na * 4), *B = malloc(na * 4), *C = malloc(nc * 4), *E = malloc(nc * 4);
  float *K[NSEQ], *V[NSEQ], *Q[NSEQ];
  double *rlat[NSEQ], *rfull[NSEQ];
  assert_non_null(A && B && C && E);
  vk_ref_fill(A, na, 1.5, &seed);
  vk_ref_fill(B, na, 1.5, &seed);
  vk_ref_fill(C, nc, 1.0, &seed);
  vk_ref_fill(E, nc, 1.0, &seed);
  int rows_k = 0, rows_q = 0;
  for (int i = 0; i < NSEQ; ++i) {
    const size_t nk = (size_t)cs[i].n_ctx * c->Hk * d, nq = (size_t)cs[i].n_q * c->H * d;
    K[i] = malloc(nk * 4), V[i] = malloc(nk * 4), Q[i] = malloc(nq * 4);
    rlat[i] = malloc((size_t)cs[i].n_q * c->H * c->rv * 8), rfull[i] = malloc(nq * 8);
    assert_non_null(K[i] && V[i] && Q[i] && rlat[i] && rfull[i]);
    vk_ref_fill(K[i], nk, 1.0, &seed);
    vk_ref_fill(V[i], nk, 1.0, &seed);
    vk_ref_fill(Q[i], nq, 1.0, &seed);
    assert_int_equal(vk_ref_attend(&cs[i], K[i], V[i], Q[i], A, B, C, E, rlat[i], rfull[i]), 0);
    rows_k += cs[i].n_ctx;
    rows_q += cs[i].n_q;
  }
  kq_buffer *bA = upload(A, na * 4), *bB = upload(B, na * 4), *bC = upload(C, nc * 4);
  kq_buffer *bE = upload(E, nc * 4), *bK = NULL, *bV = NULL, *bQ = NULL, *kc = NULL, *vc = NULL;
  kq_buffer *blat = NULL, *bfull = NULL;
  const size_t krow = (size_t)c->Hk * d * 4, qrow = (size_t)c->H * d * 4;
  CHECK_OK(g_vk->buffer_alloc(g_dev, (size_t)rows_k * krow, &bK));
  CHECK_OK(g_vk->buffer_alloc(g_dev, (size_t)rows_k * krow, &bV));
  CHECK_OK(g_vk->buffer_alloc(g_dev, (size_t)rows_q * qrow, &bQ));
  CHECK_OK(g_vk->buffer_alloc(g_dev, NSEQ * kreg, &kc));
  CHECK_OK(g_vk->buffer_alloc(g_dev, NSEQ * vreg, &vc));
  CHECK_OK(g_vk->buffer_alloc(g_dev, (size_t)rows_q * c->H * c->rv * 4, &blat));
  CHECK_OK(g_vk->buffer_alloc(g_dev, (size_t)rows_q * qrow, &bfull));
  /* Two appends: the first third of every sequence, then the rest. */
  for (int piece = 0; piece < 2; ++piece) {
    kq_op_seq ks[NSEQ], vs[NSEQ];
    int row = 0;
    for (int i = 0; i < NSEQ; ++i) {
      const int first = cs[i].n_ctx / 3, pos = piece ? first : 0;
      const int n = piece ? cs[i].n_ctx - first : first;
      const size_t at = (size_t)row * krow, from = (size_t)pos * krow;
      CHECK_OK(g_vk->buffer_upload(g_dev, bK, at, (const char *)K[i] + from, (size_t)n * krow));
      CHECK_OK(g_vk->buffer_upload(g_dev, bV, at, (const char *)V[i] + from, (size_t)n * krow));
      ks[i] = (kq_op_seq){.k_region = i * kreg, .row = row, .n_rows = n, .pos = pos, .seq = i};
      vs[i] = ks[i];
      vs[i].k_region = i * vreg;
      row += n;
    }
    kq_project_op p = {.src = bK,
                       .proj = bA,
                       .dst = kc,
                       .n_tokens = row,
                       .n_heads = c->Hk,
                       .head_dim = c->d,
                       .rank = c->rk,
                       .capacity = CAP,
                       .storage = storage,
                       .n_seqs = NSEQ,
                       .seqs = ks};
    CHECK_OK(g_vk->project(g_dev, &p));
    p.src = bV, p.proj = bC, p.dst = vc, p.rank = c->rv, p.seqs = vs;
    CHECK_OK(g_vk->project(g_dev, &p));
  }
  kq_op_seq as[NSEQ];
  for (int i = 0, row = 0; i < NSEQ; row += cs[i].n_q, ++i) {
    CHECK_OK(g_vk->buffer_upload(g_dev, bQ, (size_t)row * qrow, Q[i], (size_t)cs[i].n_q * qrow));
    as[i] = (kq_op_seq){.k_region = i * kreg,
                        .v_region = i * vreg,
                        .row = row,
                        .n_rows = cs[i].n_q,
                        .n_ctx = cs[i].n_ctx,
                        .seq = i};
  }
  kq_attend_op a = {.q = bQ,
                    .key_down = bA,
                    .query_down = bB,
                    .k_cache = kc,
                    .v_cache = vc,
                    .out = blat,
                    .n_queries = rows_q,
                    .n_ctx = cs[0].n_ctx > cs[1].n_ctx ? cs[0].n_ctx : cs[1].n_ctx,
                    .n_heads = c->H,
                    .n_kv_heads = c->Hk,
                    .head_dim = c->d,
                    .rank_k = c->rk,
                    .rank_v = c->rv,
                    .capacity = CAP,
                    .storage = storage,
                    .rope = (kq_rope_mode)c->rope,
                    .rope_theta = (float)c->theta,
                    .scale = 1.0f / sqrtf((float)c->d),
                    .n_seqs = NSEQ,
                    .seqs = as};
  CHECK_OK(g_vk->attend(g_dev, &a));
  kq_up_op u = {.latent = blat,
                .value_up = bE,
                .out = bfull,
                .n_queries = rows_q,
                .n_heads = c->H,
                .n_kv_heads = c->Hk,
                .head_dim = c->d,
                .rank_v = c->rv,
                .n_seqs = 1};
  CHECK_OK(g_vk->up(g_dev, &u));
  const double tol = storage == KQ_STORAGE_F16 ? NMSE_F16 : NMSE_F32;
  for (int i = 0, row = 0; i < NSEQ; row += cs[i].n_q, ++i) {
    const size_t nl = (size_t)cs[i].n_q * c->H * c->rv, nf = (size_t)cs[i].n_q * c->H * d;
    float *lat = malloc(nl * 4), *full = malloc(nf * 4);
    assert_non_null(lat && full);
    CHECK_OK(g_vk->buffer_download(g_dev, blat, (size_t)row * c->H * c->rv * 4, lat, nl * 4));
    CHECK_OK(g_vk->buffer_download(g_dev, bfull, (size_t)row * qrow, full, nf * 4));
    const double el = vk_ref_nmse(lat, rlat[i], nl), ef = vk_ref_nmse(full, rfull[i], nf);
    if (!(el <= tol && ef <= tol))
      fail_msg("batch, sequence %d (ctx %d, q %d) %s: nmse latent %.3g full %.3g (limit %.1g)", i,
               cs[i].n_ctx, cs[i].n_q, storage ? "F16" : "F32", el, ef, tol);
    free(lat), free(full);
  }
  kq_buffer *all[] = {bK, bV, bQ, bA, bB, bC, bE, kc, vc, blat, bfull};
  for (size_t i = 0; i < sizeof all / sizeof *all; ++i) g_vk->buffer_free(g_dev, all[i]);
  for (int i = 0; i < NSEQ; ++i) free(K[i]), free(V[i]), free(Q[i]), free(rlat[i]), free(rfull[i]);
  free(A), free(B), free(C), free(E);
}

/* In one grid per op, and with a 64 KiB binding limit (a region of 1200
 * positions no longer fits one binding: a grid per sequence, per kv head
 * for project). */
static void test_batch_of_sequences_matches_reference(void **state) {
  (void)state;
  expect_batch(KQ_STORAGE_F32);
  expect_batch(KQ_STORAGE_F16);
  setenv("KQSVD_VULKAN_MAX_BINDING", "65536", 1);
  expect_batch(KQ_STORAGE_F32);
  expect_batch(KQ_STORAGE_F16);
  unsetenv("KQSVD_VULKAN_MAX_BINDING");
}

/* Op arguments are checked once, in the core (tests/engine/test_op_check.c);
 * buffer copies are the backend's own and fail naming the device. */
static void test_bad_arguments_fail_cleanly(void **state) {
  (void)state;
  kq_buffer *b = NULL;
  CHECK_OK(g_vk->buffer_alloc(g_dev, 64, &b));
  float x[32] = {0};
  g_err[0] = '\0';
  assert_int_equal(g_vk->buffer_upload(g_dev, b, 32, x, 64), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(g_err, "vulkan:0"));
  g_err[0] = '\0';
  assert_int_equal(g_vk->buffer_download(g_dev, b, 0, x, 128), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(g_err, "vulkan:0"));
  g_vk->buffer_free(g_dev, b);
}

int main(void) {
  void *lib = dlopen(KQ_VK_MODULE_PATH, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    fprintf(stderr, "cannot load %s: %s\n", KQ_VK_MODULE_PATH, dlerror());
    return 1;
  }
  kq_backend_entry_fn entry = (kq_backend_entry_fn)dlsym(lib, KQ_BACKEND_ENTRY_SYMBOL);
  if (!entry || entry(&g_host, &g_vk) != KQ_OK || g_vk->abi_version != KQ_BACKEND_ABI_VERSION ||
      strcmp(g_vk->name, "vulkan") != 0) {
    fprintf(stderr, "bad module entry\n");
    return 1;
  }
  if (g_vk->device_count() == 0) {
    fprintf(stderr, "SKIP: no Vulkan device\n");
    return 77;
  }
  if (g_vk->device_open(0, &g_dev) != KQ_OK) {
    fprintf(stderr, "device_open: %s\n", g_err);
    return 1;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_module_lists_devices_with_vulkan_names),
      cmocka_unit_test(test_decode_and_prefill_match_f64_reference),
      cmocka_unit_test(test_identity_projections_give_full_attention),
      cmocka_unit_test(test_split_bindings_match_reference),
      cmocka_unit_test(test_cache_beyond_max_binding),
      cmocka_unit_test(test_batch_of_sequences_matches_reference),
      cmocka_unit_test(test_bad_arguments_fail_cleanly),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  g_vk->device_close(g_dev);
  dlclose(lib);
  return failed ? 1 : 0;
}
