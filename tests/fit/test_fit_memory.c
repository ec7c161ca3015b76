/*
 * test_fit_memory.c — kq_fit_memory (issue 15): rows held in memory fit to
 * the projections kq_fit writes from a calibration file of the same rows
 * (the file is made by the public kq_calib_writer), byte for byte once
 * saved, per-head and joint, with --ratio, --bytes and --positions, from
 * token-major and head-major rows; the caller's rows are left untouched;
 * bad views fail before any work with messages naming the layer and tensor.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/test_rng.h"
#include "kqsvd.h"

enum { NL = 3, H = 4, HK = 2, D = 8, HID = 12, SEQ = 16, T = 64 };

#define SHA "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static char g_dir[64];
/* Token-major rows (an engine's layout) and the same rows head-major. */
static float g_q[NL][T][H][D], g_k[NL][T][HK][D], g_v[NL][T][HK][D], g_wo[NL][HID][H * D];
static float g_qh[NL][H][T][D], g_kh[NL][HK][T][D], g_vh[NL][HK][T][D];

static uint64_t g_rng;

/* A few strong directions plus noise: a spectrum worth fitting. */
static void make_rows(void) {
  g_rng = 11;
  float basis[4][D];
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < D; j++) basis[i][j] = (float)test_rng_signed(&g_rng);
  for (int l = 0; l < NL; l++)
    for (int t = 0; t < T; t++) {
      for (int h = 0; h < H; h++)
        for (int j = 0; j < D; j++)
          g_qh[l][h][t][j] = g_q[l][t][h][j] =
              (float)(3.0 * test_rng_signed(&g_rng) * basis[h % 4][j] +
                      0.3 * test_rng_signed(&g_rng));
      for (int h = 0; h < HK; h++)
        for (int j = 0; j < D; j++) {
          g_kh[l][h][t][j] = g_k[l][t][h][j] =
              (float)(2.0 * test_rng_signed(&g_rng) * basis[(h + 1) % 4][j] +
                      0.2 * test_rng_signed(&g_rng));
          g_vh[l][h][t][j] = g_v[l][t][h][j] =
              (float)(test_rng_signed(&g_rng) * basis[(h + 2) % 4][j] +
                      0.1 * test_rng_signed(&g_rng));
        }
    }
  for (int l = 0; l < NL; l++)
    for (int r = 0; r < HID; r++)
      for (int c = 0; c < H * D; c++) g_wo[l][r][c] = (float)test_rng_signed(&g_rng);
}

static int setup(void **state) {
  (void)state;
  snprintf(g_dir, sizeof g_dir, "/tmp/kq_fit_memory_XXXXXX");
  if (!mkdtemp(g_dir)) return -1;
  make_rows();
  return 0;
}

static int teardown(void **state) {
  (void)state;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

static void path_in_dir(char *out, size_t n, const char *name) {
  snprintf(out, n, "%s/%s", g_dir, name);
}

/* The calibration file of the rows, through the public writer, in uneven
 * batches. */
static void write_file(const char *path, kq_rope_mode rope) {
  kq_calib_writer_params p = kq_calib_writer_default_params();
  p.n_layers = NL, p.n_heads = H, p.n_kv_heads = HK, p.head_dim = D, p.hidden = HID;
  p.seq_len = SEQ;
  p.rope = rope;
  p.rope_layout = KQ_ROPE_HALVES;
  p.rope_theta = 50000.0f;
  kq_calib_writer *w = NULL;
  assert_int_equal(kq_calib_writer_open(path, &p, &w), KQ_OK);
  assert_int_equal(kq_calib_writer_set_meta(w, "model_name", "test-model"), KQ_OK);
  assert_int_equal(kq_calib_writer_set_meta(w, "model_sha256", SHA), KQ_OK);
  const int batches[] = {5, 27, 32};
  for (int l = 0; l < NL; l++) {
    int t0 = 0;
    for (int b = 0; b < 3; b++) {
      assert_int_equal(kq_calib_writer_add(w, l, batches[b], &g_q[l][t0][0][0], &g_k[l][t0][0][0],
                                           &g_v[l][t0][0][0]),
                       KQ_OK);
      t0 += batches[b];
    }
    assert_int_equal(kq_calib_writer_set_wo(w, l, &g_wo[l][0][0]), KQ_OK);
  }
  assert_int_equal(kq_calib_writer_close(w), KQ_OK);
}

/* The view of the same rows and metadata. */
static void make_view(kq_calib_view *v, kq_calib_view_layer *layers, kq_rope_mode rope,
                      kq_calib_rows rows) {
  *v = kq_calib_view_default();
  v->n_layers = NL, v->n_heads = H, v->n_kv_heads = HK, v->head_dim = D, v->hidden = HID;
  v->n_tokens = T;
  v->seq_len = SEQ;
  v->rope = rope;
  v->rope_layout = KQ_ROPE_HALVES;
  v->rope_theta = 50000.0f;
  v->rows = rows;
  v->model_name = "test-model";
  v->model_sha256 = SHA;
  for (int l = 0; l < NL; l++) {
    int head = rows == KQ_CALIB_ROWS_HEAD_MAJOR;
    layers[l].q = head ? &g_qh[l][0][0][0] : &g_q[l][0][0][0];
    layers[l].k = head ? &g_kh[l][0][0][0] : &g_k[l][0][0][0];
    layers[l].v = head ? &g_vh[l][0][0][0] : &g_v[l][0][0][0];
    layers[l].wo = &g_wo[l][0][0];
  }
  v->layers = layers;
}

static unsigned char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = malloc((size_t)len + 1);
  assert_non_null(buf);
  assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
  fclose(f);
  *n = (size_t)len;
  return buf;
}

static void assert_same_file(const char *a, const char *b) {
  size_t na, nb;
  unsigned char *x = slurp(a, &na), *y = slurp(b, &nb);
  assert_true(na > 0);
  assert_int_equal(na, nb);
  assert_memory_equal(x, y, na);
  free(x);
  free(y);
}

/* kq_fit on the file and kq_fit_memory on the rows, with p: the saved
 * memory fit equals the file fit byte for byte, the summaries agree, and
 * the rows are unchanged. */
static void check_same(const kq_fit_params *p, kq_rope_mode rope, kq_calib_rows rows,
                       const char *tag) {
  char calib[128], from_file[128], from_memory[128];
  path_in_dir(calib, sizeof calib, "calib.safetensors");
  snprintf(from_file, sizeof from_file, "%s/%s-file.safetensors", g_dir, tag);
  snprintf(from_memory, sizeof from_memory, "%s/%s-memory.safetensors", g_dir, tag);
  write_file(calib, rope);
  kq_fit_summary sf, sm;
  assert_int_equal(kq_fit_ex(calib, from_file, p, &sf), KQ_OK);

  static float before_q[NL][T][H][D], before_k[NL][T][HK][D], before_qh[NL][H][T][D];
  memcpy(before_q, g_q, sizeof g_q);
  memcpy(before_k, g_k, sizeof g_k);
  memcpy(before_qh, g_qh, sizeof g_qh);
  kq_calib_view v;
  kq_calib_view_layer layers[NL];
  make_view(&v, layers, rope, rows);
  kq_projections *proj = NULL;
  kq_status st = kq_fit_memory(&v, p, &proj, &sm);
  if (st != KQ_OK) fail_msg("%s: %s", tag, kq_last_error());
  assert_non_null(proj);
  assert_int_equal(kq_projections_save(proj, from_memory), KQ_OK);
  kq_projections_destroy(proj);
  assert_same_file(from_file, from_memory);
  assert_memory_equal(&sf, &sm, sizeof sf);
  /* The caller's rows (read in place or copied) are never written. */
  assert_memory_equal(before_q, g_q, sizeof g_q);
  assert_memory_equal(before_k, g_k, sizeof g_k);
  assert_memory_equal(before_qh, g_qh, sizeof g_qh);
  unlink(calib);
}

static void test_per_head_bytes(void **state) {
  (void)state;
  kq_fit_params p = kq_fit_default_params();
  p.bytes = 0.4;
  check_same(&p, KQ_ROPE_POST, KQ_CALIB_ROWS_TOKEN_MAJOR, "per-head-bytes");
}

static void test_per_head_ratio(void **state) {
  (void)state;
  kq_fit_params p = kq_fit_default_params();
  p.ratio = 0.5;
  check_same(&p, KQ_ROPE_POST, KQ_CALIB_ROWS_TOKEN_MAJOR, "per-head-ratio");
}

static void test_joint_bytes(void **state) {
  (void)state;
  kq_fit_params p = kq_fit_default_params();
  p.layout = KQ_LAYOUT_JOINT;
  p.bytes = 0.3;
  check_same(&p, KQ_ROPE_POST, KQ_CALIB_ROWS_TOKEN_MAJOR, "joint-bytes");
}

static void test_joint_ratio(void **state) {
  (void)state;
  kq_fit_params p = kq_fit_default_params();
  p.layout = KQ_LAYOUT_JOINT;
  p.ratio = 0.25;
  check_same(&p, KQ_ROPE_NONE, KQ_CALIB_ROWS_TOKEN_MAJOR, "joint-ratio");
}

static void test_head_major_rows(void **state) {
  (void)state;
  kq_fit_params p = kq_fit_default_params();
  p.bytes = 0.4;
  check_same(&p, KQ_ROPE_POST, KQ_CALIB_ROWS_HEAD_MAJOR, "head-major");
  p = kq_fit_default_params();
  p.method = KQ_METHOD_EIGEN;
  p.rank_k = 3, p.rank_v = 5;
  check_same(&p, KQ_ROPE_POST, KQ_CALIB_ROWS_HEAD_MAJOR, "head-major-eigen");
}

/* --positions rotates the rope pre rows: the file path through a temporary
 * file, the memory path in memory; same projections. */
static void test_positions(void **state) {
  (void)state;
  kq_fit_params p = kq_fit_default_params();
  p.bytes = 0.4;
  p.positions = 4096;
  check_same(&p, KQ_ROPE_PRE, KQ_CALIB_ROWS_TOKEN_MAJOR, "positions");
  check_same(&p, KQ_ROPE_PRE, KQ_CALIB_ROWS_HEAD_MAJOR, "positions-head-major");
}

/* A failing view: the status, and a message containing `needle`; no
 * projections. */
static void expect_error(const kq_calib_view *v, kq_status want, const char *needle) {
  kq_fit_params p = kq_fit_default_params();
  p.ratio = 0.5;
  kq_projections *proj = (kq_projections *)(uintptr_t)1;
  kq_status st = kq_fit_memory(v, &p, &proj, NULL);
  if (st != want || !strstr(kq_last_error(), needle))
    fail_msg("got %s \"%s\", expected %s with \"%s\"", kq_status_string(st), kq_last_error(),
             kq_status_string(want), needle);
  assert_null(proj);
}

static void test_bad_views(void **state) {
  (void)state;
  kq_calib_view v;
  kq_calib_view_layer layers[NL];
  kq_fit_params p = kq_fit_default_params();
  p.ratio = 0.5;
  kq_projections *proj = NULL;
  assert_int_equal(kq_fit_memory(NULL, &p, &proj, NULL), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "view is NULL"));
  make_view(&v, layers, KQ_ROPE_POST, KQ_CALIB_ROWS_TOKEN_MAJOR);
  assert_int_equal(kq_fit_memory(&v, &p, NULL, NULL), KQ_ERR_INVALID_ARGUMENT);

  make_view(&v, layers, KQ_ROPE_POST, KQ_CALIB_ROWS_TOKEN_MAJOR);
  v.n_layers = 0;
  expect_error(&v, KQ_ERR_INVALID_ARGUMENT, "in-memory calibration: n_layers 0");

  make_view(&v, layers, KQ_ROPE_POST, KQ_CALIB_ROWS_TOKEN_MAJOR);
  v.layers = NULL;
  expect_error(&v, KQ_ERR_INVALID_ARGUMENT, "layers is NULL");

  make_view(&v, layers, KQ_ROPE_POST, KQ_CALIB_ROWS_TOKEN_MAJOR);
  v.name = "engine rows";
  layers[1].k = NULL;
  expect_error(&v, KQ_ERR_INVALID_ARGUMENT, "engine rows: layers.1.k: rows are NULL");

  make_view(&v, layers, KQ_ROPE_POST, KQ_CALIB_ROWS_TOKEN_MAJOR);
  layers[2].wo = NULL;
  expect_error(&v, KQ_ERR_INVALID_ARGUMENT, "layers.2.wo: rows are NULL");
  v.hidden = 0; /* no wo wanted: a NULL wo is fine then */
  assert_int_equal(kq_fit_memory(&v, &p, &proj, NULL), KQ_OK);
  kq_projections_destroy(proj);

  make_view(&v, layers, KQ_ROPE_POST, KQ_CALIB_ROWS_TOKEN_MAJOR);
  v.head_dim = 0;
  expect_error(&v, KQ_ERR_INVALID_ARGUMENT, "head_dim 0");

  /* Shape relations: the file path's validation and message. */
  make_view(&v, layers, KQ_ROPE_POST, KQ_CALIB_ROWS_TOKEN_MAJOR);
  v.n_kv_heads = 3;
  expect_error(&v, KQ_ERR_FORMAT,
               "in-memory calibration: layers.0.q: 4 query heads is not a "
               "multiple of the 3 kv heads");
  make_view(&v, layers, KQ_ROPE_POST, KQ_CALIB_ROWS_TOKEN_MAJOR);
  v.seq_len = 24;
  expect_error(&v, KQ_ERR_FORMAT, "seq_len: 24 does not divide the 64 calibration tokens");
  make_view(&v, layers, KQ_ROPE_POST, KQ_CALIB_ROWS_TOKEN_MAJOR);
  v.model_sha256 = "abc";
  expect_error(&v, KQ_ERR_FORMAT, "model_sha256");
  make_view(&v, layers, KQ_ROPE_POST, KQ_CALIB_ROWS_TOKEN_MAJOR);
  v.rope = (kq_rope_mode)7;
  expect_error(&v, KQ_ERR_INVALID_ARGUMENT, "unknown rope mode 7");
  make_view(&v, layers, KQ_ROPE_POST, KQ_CALIB_ROWS_TOKEN_MAJOR);
  v.struct_size = 3;
  expect_error(&v, KQ_ERR_ABI, "kq_calib_view");

  /* Rank beyond head_dim, positions without rope pre: as the file fit. */
  make_view(&v, layers, KQ_ROPE_POST, KQ_CALIB_ROWS_TOKEN_MAJOR);
  p = kq_fit_default_params();
  p.rank_k = D + 1, p.rank_v = 1;
  assert_int_equal(kq_fit_memory(&v, &p, &proj, NULL), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "in-memory calibration: rank_k 9"));
  p = kq_fit_default_params();
  p.ratio = 0.5, p.positions = 100;
  assert_int_equal(kq_fit_memory(&v, &p, &proj, NULL), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "needs a calibration captured with rope pre"));
  assert_null(proj);
}

/* A NaN in the rows: KQ_ERR_NUMERIC naming the tensor, as the file fit. */
static void test_nan_rows(void **state) {
  (void)state;
  kq_calib_view v;
  kq_calib_view_layer layers[NL];
  make_view(&v, layers, KQ_ROPE_POST, KQ_CALIB_ROWS_TOKEN_MAJOR);
  float saved = g_v[2][5][1][3];
  g_v[2][5][1][3] = NAN;
  expect_error(&v, KQ_ERR_NUMERIC, "in-memory calibration: tensor 'layers.2.v': NaN");
  g_v[2][5][1][3] = saved;
  saved = g_wo[1][4][7];
  g_wo[1][4][7] = INFINITY;
  expect_error(&v, KQ_ERR_NUMERIC, "tensor 'layers.1.wo': Inf");
  g_wo[1][4][7] = saved;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_per_head_bytes),  cmocka_unit_test(test_per_head_ratio),
      cmocka_unit_test(test_joint_bytes),     cmocka_unit_test(test_joint_ratio),
      cmocka_unit_test(test_head_major_rows), cmocka_unit_test(test_positions),
      cmocka_unit_test(test_bad_views),       cmocka_unit_test(test_nan_rows),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
