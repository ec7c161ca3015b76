/*
 * Properties of projection sets and projection files (SPEC §2): save then
 * load gives back every value and field; identity projections are
 * identities; every way a file can contradict itself or its metadata is
 * rejected with a message naming the file and the field or tensor.
 *
 * `test_projections --write-files DIR` writes the case files into DIR
 * instead (used by the CLI test).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/kq_projections_internal.h"
#include "io/kq_safetensors.h"
#include "io_test_util.h"

static const char *g_dir;

static kq_projections_info small_info(void) {
  kq_projections_info info = {0};
  info.method = KQ_METHOD_KSVD;
  info.n_layers = 3;
  info.n_heads = 4;
  info.n_kv_heads = 2;
  info.head_dim = 8;
  info.rope = KQ_ROPE_PRE;
  info.rope_layout = KQ_ROPE_HALVES;
  info.rope_theta = 500000.0f;
  return info;
}

/* Deterministic values that differ in every position and layer. */
static float value_at(int layer, int kind, size_t i) {
  return (float)((double)(layer + 1) * 0.37 + (double)kind * 1.1 - (double)i * 0.013);
}

static void fill(kq_projections *p) {
  kq_projections_info info;
  assert_int_equal(kq_projections_get_info(p, &info), KQ_OK);
  size_t hd = (size_t)info.n_kv_heads * (size_t)info.head_dim;
  for (int l = 0; l < info.n_layers; l++) {
    kq_projection_layer v;
    assert_int_equal(kq_projections_layer(p, l, &v), KQ_OK);
    float *m[6] = {v.key_down, v.query_down,   v.value_down,
                   v.value_up, v.key_spectrum, v.value_spectrum};
    size_t n[6] = {hd * (size_t)v.rank_k,
                   hd * (size_t)v.rank_k,
                   hd * (size_t)v.rank_v,
                   hd * (size_t)v.rank_v,
                   hd,
                   hd};
    for (int k = 0; k < 6; k++)
      for (size_t i = 0; i < n[k]; i++) m[k][i] = value_at(l, k, i);
  }
}

static void save_then_load_returns_every_value_and_field(void **state) {
  (void)state;
  char path[1024];
  snprintf(path, sizeof path, "%s/roundtrip.kqproj", g_dir);
  kq_projections_info info = small_info();
  const int32_t rk[3] = {1, 8, 3}, rv[3] = {8, 2, 5};
  kq_projections *p = NULL;
  assert_int_equal(kq_projections_create(&info, rk, rv, &p), KQ_OK);
  fill(p);
  assert_int_equal(kq_projections_save(p, path), KQ_OK);
  kq_projections *q = NULL;
  assert_int_equal(kq_projections_load(path, &q), KQ_OK);
  kq_projections_info got;
  assert_int_equal(kq_projections_get_info(q, &got), KQ_OK);
  assert_int_equal(got.method, info.method);
  assert_int_equal(got.n_layers, info.n_layers);
  assert_int_equal(got.n_heads, info.n_heads);
  assert_int_equal(got.n_kv_heads, info.n_kv_heads);
  assert_int_equal(got.head_dim, info.head_dim);
  assert_int_equal(got.rope, info.rope);
  assert_int_equal(got.rope_layout, info.rope_layout);
  assert_true(got.rope_theta == info.rope_theta);
  size_t hd = 2 * 8;
  for (int l = 0; l < 3; l++) {
    kq_projection_layer v;
    assert_int_equal(kq_projections_layer_view(q, l, &v), KQ_OK);
    assert_int_equal(v.rank_k, rk[l]);
    assert_int_equal(v.rank_v, rv[l]);
    const float *m[6] = {v.key_down, v.query_down,   v.value_down,
                         v.value_up, v.key_spectrum, v.value_spectrum};
    size_t n[6] = {
        hd * (size_t)rk[l], hd * (size_t)rk[l], hd * (size_t)rv[l], hd * (size_t)rv[l], hd, hd};
    for (int k = 0; k < 6; k++)
      for (size_t i = 0; i < n[k]; i++) assert_true(m[k][i] == value_at(l, k, i));
  }
  /* The file is plain safetensors with the SPEC §2 names and metadata. */
  kq_st_file *f = NULL;
  assert_int_equal(kq_st_open(path, &f), KQ_OK);
  assert_string_equal(kq_st_meta(f, "format"), "kqsvd-projections");
  assert_string_equal(kq_st_meta(f, "version"), "2");
  assert_string_equal(kq_st_meta(f, "layout"), "per-head");
  assert_string_equal(kq_st_meta(f, "method"), "k-svd");
  assert_string_equal(kq_st_meta(f, "rope"), "pre");
  assert_string_equal(kq_st_meta(f, "rope_layout"), "halves");
  assert_string_equal(kq_st_meta(f, "n_kv_heads"), "2");
  assert_int_equal(kq_st_count(f), 24); /* 6 matrices and 2 segment tables per layer */
  const kq_st_tensor *t = kq_st_find(f, "layers.2.value_up");
  assert_non_null(t);
  assert_int_equal(t->dtype, KQ_DTYPE_F32);
  assert_int_equal(t->n_dims, 3);
  assert_int_equal(t->shape[0], 2);
  assert_int_equal(t->shape[1], 8);
  assert_int_equal(t->shape[2], 5);
  kq_st_close(f);
  kq_projections_destroy(p);
  kq_projections_destroy(q);
  unlink(path);
}

static void identity_projections_are_identities_with_zero_spectra(void **state) {
  (void)state;
  kq_projections_info info = small_info();
  kq_projections *p = NULL;
  assert_int_equal(kq_projections_create_identity(&info, &p), KQ_OK);
  const int d = info.head_dim;
  for (int l = 0; l < info.n_layers; l++) {
    kq_projection_layer v;
    assert_int_equal(kq_projections_layer_view(p, l, &v), KQ_OK);
    assert_int_equal(v.rank_k, d);
    assert_int_equal(v.rank_v, d);
    const float *m[4] = {v.key_down, v.query_down, v.value_down, v.value_up};
    for (int k = 0; k < 4; k++)
      for (int h = 0; h < info.n_kv_heads; h++)
        for (int i = 0; i < d; i++)
          for (int j = 0; j < d; j++)
            assert_true(m[k][((size_t)h * d + i) * d + j] == (i == j ? 1.0f : 0.0f));
    for (int i = 0; i < info.n_kv_heads * d; i++) {
      assert_true(v.key_spectrum[i] == 0.0f);
      assert_true(v.value_spectrum[i] == 0.0f);
    }
  }
  kq_projections_destroy(p);
}

static void create_rejects_inconsistent_info_and_ranks(void **state) {
  (void)state;
  kq_projections *p = NULL;
  kq_projections_info info = small_info();
  const int32_t ok[3] = {1, 2, 3}, too_big[3] = {1, 9, 3}, zero[3] = {1, 0, 3};
  assert_int_equal(kq_projections_create(&info, too_big, ok, &p), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "rank_k"));
  assert_int_equal(kq_projections_create(&info, ok, zero, &p), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "rank_v"));
  info.n_heads = 5;
  assert_int_equal(kq_projections_create(&info, ok, ok, &p), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "n_kv_heads"));
  info = small_info();
  info.rope_theta = NAN;
  assert_int_equal(kq_projections_create_identity(&info, &p), KQ_ERR_INVALID_ARGUMENT);
  assert_null(p);
  info = small_info();
  kq_projection_layer v;
  assert_int_equal(kq_projections_create(&info, ok, ok, &p), KQ_OK);
  assert_int_equal(kq_projections_layer(p, 3, &v), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_projections_layer(p, -1, &v), KQ_ERR_INVALID_ARGUMENT);
  kq_projections_destroy(p);
}

static void save_refuses_non_finite_values_and_writes_nothing(void **state) {
  (void)state;
  char path[1024];
  snprintf(path, sizeof path, "%s/nan.kqproj", g_dir);
  kq_projections_info info = small_info();
  kq_projections *p = NULL;
  assert_int_equal(kq_projections_create_identity(&info, &p), KQ_OK);
  kq_projection_layer v;
  assert_int_equal(kq_projections_layer(p, 1, &v), KQ_OK);
  v.value_up[17] = INFINITY;
  assert_int_equal(kq_projections_save(p, path), KQ_ERR_NUMERIC);
  assert_non_null(strstr(kq_last_error(), "layers.1.value_up"));
  assert_non_null(strstr(kq_last_error(), "index 17"));
  assert_int_equal(access(path, F_OK), -1);
  kq_projections_destroy(p);
}

/* ------------------------------------------------------------------------ */
/* Malformed projection files                                               */
/* ------------------------------------------------------------------------ */

/* A projection file built tensor by tensor with one defect injected. The
 * valid base: 2 layers, H = 4, Hk = 2, d = 4, rank_k = rank_v = 2. */
typedef struct proj_case {
  const char *file;
  const char *drop_meta;             /* metadata field left out */
  const char *meta_key, *meta_value; /* metadata field overridden */
  const char *target;                /* tensor modified / dropped */
  int drop;                          /* leave `target` out */
  int64_t shape[3];                  /* non-zero: `target`'s shape */
  int f16;                           /* write `target` as F16 */
  int nan_at;                        /* > 0: NaN at this flat index of `target` */
  const char *extra;                 /* an extra tensor */
  kq_status expect;
  const char *mention; /* must appear in the message */
} proj_case;

static const char *const g_meta[][2] = {{"format", "kqsvd-projections"},
                                        {"version", "1"},
                                        {"method", "kq-svd"},
                                        {"n_layers", "2"},
                                        {"n_heads", "4"},
                                        {"n_kv_heads", "2"},
                                        {"head_dim", "4"},
                                        {"rope", "post"},
                                        {"rope_theta", "10000"},
                                        {"rope_layout", "pairs"}};
#define N_META (sizeof g_meta / sizeof g_meta[0])
static const char *const g_kinds[6] = {"key_down", "query_down",   "value_down",
                                       "value_up", "key_spectrum", "value_spectrum"};

static kq_status write_case(const proj_case *c, char *path, size_t cap) {
  snprintf(path, cap, "%s/%s", g_dir, c->file);
  static float data[4096];
  for (size_t i = 0; i < sizeof data / sizeof data[0]; i++) data[i] = 0.25f;
  static uint16_t half[4096];
  kq_st_writer *w = NULL;
  kq_status st = kq_st_writer_create(path, &w);
  for (size_t i = 0; i < N_META && st == KQ_OK; i++) {
    if (c->drop_meta && !strcmp(c->drop_meta, g_meta[i][0])) continue;
    const char *v =
        c->meta_key && !strcmp(c->meta_key, g_meta[i][0]) ? c->meta_value : g_meta[i][1];
    st = kq_st_writer_meta(w, g_meta[i][0], v);
  }
  float *nan_data = NULL;
  for (int l = 0; l < 2 && st == KQ_OK; l++) {
    for (int k = 0; k < 6 && st == KQ_OK; k++) {
      char name[64];
      snprintf(name, sizeof name, "layers.%d.%s", l, g_kinds[k]);
      int64_t shape[3] = {2, 4, 2};
      int n_dims = k < 4 ? 3 : 2;
      const void *src = data;
      kq_dtype dt = KQ_DTYPE_F32;
      if (c->target && !strcmp(c->target, name)) {
        if (c->drop) continue;
        if (c->shape[0]) {
          memcpy(shape, c->shape, sizeof shape);
          n_dims = k < 4 || shape[2] ? 3 : 2;
        }
        if (c->f16) {
          dt = KQ_DTYPE_F16;
          src = half;
        }
        if (c->nan_at > 0) {
          nan_data = malloc(sizeof data);
          memcpy(nan_data, data, sizeof data);
          nan_data[c->nan_at] = NAN;
          src = nan_data;
        }
      }
      st = kq_st_writer_add(w, name, dt, n_dims, shape, src);
    }
  }
  if (c->extra && st == KQ_OK) {
    const int64_t shape[2] = {2, 4};
    st = kq_st_writer_add(w, c->extra, KQ_DTYPE_F32, 2, shape, data);
  }
  if (st == KQ_OK) st = kq_st_writer_commit(w, NULL);
  kq_st_writer_destroy(w);
  free(nan_data);
  return st;
}

static const proj_case g_cases[] = {
    {.file = "valid.kqproj", .expect = KQ_OK},
    {.file = "missing_format.kqproj",
     .drop_meta = "format",
     .expect = KQ_ERR_FORMAT,
     .mention = "'format'"},
    {.file = "missing_version.kqproj",
     .drop_meta = "version",
     .expect = KQ_ERR_FORMAT,
     .mention = "'version'"},
    {.file = "missing_method.kqproj",
     .drop_meta = "method",
     .expect = KQ_ERR_FORMAT,
     .mention = "'method'"},
    {.file = "missing_n_layers.kqproj",
     .drop_meta = "n_layers",
     .expect = KQ_ERR_FORMAT,
     .mention = "'n_layers'"},
    {.file = "missing_n_heads.kqproj",
     .drop_meta = "n_heads",
     .expect = KQ_ERR_FORMAT,
     .mention = "'n_heads'"},
    {.file = "missing_n_kv_heads.kqproj",
     .drop_meta = "n_kv_heads",
     .expect = KQ_ERR_FORMAT,
     .mention = "'n_kv_heads'"},
    {.file = "missing_head_dim.kqproj",
     .drop_meta = "head_dim",
     .expect = KQ_ERR_FORMAT,
     .mention = "'head_dim'"},
    {.file = "missing_rope.kqproj",
     .drop_meta = "rope",
     .expect = KQ_ERR_FORMAT,
     .mention = "'rope'"},
    {.file = "missing_rope_theta.kqproj",
     .drop_meta = "rope_theta",
     .expect = KQ_ERR_FORMAT,
     .mention = "'rope_theta'"},
    {.file = "missing_rope_layout.kqproj",
     .drop_meta = "rope_layout",
     .expect = KQ_ERR_FORMAT,
     .mention = "'rope_layout'"},
    {.file = "wrong_format.kqproj",
     .meta_key = "format",
     .meta_value = "pt",
     .expect = KQ_ERR_FORMAT,
     .mention = "'format'"},
    {.file = "future_version.kqproj",
     .meta_key = "version",
     .meta_value = "3",
     .expect = KQ_ERR_UNSUPPORTED,
     .mention = "'version'"},
    /* Metadata integers are plain decimal digits. */
    {.file = "spaced_layers.kqproj",
     .meta_key = "n_layers",
     .meta_value = " 2",
     .expect = KQ_ERR_FORMAT,
     .mention = "'n_layers'"},
    {.file = "plus_heads.kqproj",
     .meta_key = "n_heads",
     .meta_value = "+4",
     .expect = KQ_ERR_FORMAT,
     .mention = "'n_heads'"},
    {.file = "bad_method.kqproj",
     .meta_key = "method",
     .meta_value = "pca",
     .expect = KQ_ERR_FORMAT,
     .mention = "'method'"},
    {.file = "n_layers_not_int.kqproj",
     .meta_key = "n_layers",
     .meta_value = "2x",
     .expect = KQ_ERR_FORMAT,
     .mention = "'n_layers'"},
    {.file = "n_layers_zero.kqproj",
     .meta_key = "n_layers",
     .meta_value = "0",
     .expect = KQ_ERR_FORMAT,
     .mention = "'n_layers'"},
    {.file = "head_dim_negative.kqproj",
     .meta_key = "head_dim",
     .meta_value = "-4",
     .expect = KQ_ERR_FORMAT,
     .mention = "'head_dim'"},
    {.file = "heads_not_multiple.kqproj",
     .meta_key = "n_heads",
     .meta_value = "3",
     .expect = KQ_ERR_FORMAT,
     .mention = "'n_kv_heads'"},
    {.file = "bad_rope.kqproj",
     .meta_key = "rope",
     .meta_value = "yarn",
     .expect = KQ_ERR_FORMAT,
     .mention = "'rope'"},
    {.file = "bad_rope_theta.kqproj",
     .meta_key = "rope_theta",
     .meta_value = "nan",
     .expect = KQ_ERR_FORMAT,
     .mention = "'rope_theta'"},
    {.file = "bad_rope_layout.kqproj",
     .meta_key = "rope_layout",
     .meta_value = "zigzag",
     .expect = KQ_ERR_FORMAT,
     .mention = "'rope_layout'"},
    {.file = "more_layers_than_tensors.kqproj",
     .meta_key = "n_layers",
     .meta_value = "3",
     .expect = KQ_ERR_FORMAT,
     .mention = "layers.2.key_down"},
    {.file = "missing_key_down.kqproj",
     .target = "layers.1.key_down",
     .drop = 1,
     .expect = KQ_ERR_FORMAT,
     .mention = "layers.1.key_down"},
    {.file = "missing_query_down.kqproj",
     .target = "layers.0.query_down",
     .drop = 1,
     .expect = KQ_ERR_FORMAT,
     .mention = "layers.0.query_down"},
    {.file = "missing_value_up.kqproj",
     .target = "layers.1.value_up",
     .drop = 1,
     .expect = KQ_ERR_FORMAT,
     .mention = "layers.1.value_up"},
    {.file = "missing_value_spectrum.kqproj",
     .target = "layers.0.value_spectrum",
     .drop = 1,
     .expect = KQ_ERR_FORMAT,
     .mention = "layers.0.value_spectrum"},
    {.file = "rank_k_above_d.kqproj",
     .target = "layers.0.key_down",
     .shape = {2, 4, 5},
     .expect = KQ_ERR_FORMAT,
     .mention = "layers.0.key_down"},
    {.file = "rank_v_above_d.kqproj",
     .target = "layers.1.value_down",
     .shape = {2, 4, 6},
     .expect = KQ_ERR_FORMAT,
     .mention = "layers.1.value_down"},
    {.file = "rank_zero.kqproj",
     .target = "layers.0.key_down",
     .shape = {2, 4, 0},
     .expect = KQ_ERR_FORMAT,
     .mention = "layers.0.key_down"},
    {.file = "query_rank_disagrees.kqproj",
     .target = "layers.1.query_down",
     .shape = {2, 4, 3},
     .expect = KQ_ERR_FORMAT,
     .mention = "layers.1.query_down"},
    {.file = "value_up_rank_disagrees.kqproj",
     .target = "layers.0.value_up",
     .shape = {2, 4, 1},
     .expect = KQ_ERR_FORMAT,
     .mention = "layers.0.value_up"},
    {.file = "kv_heads_contradict.kqproj",
     .target = "layers.0.key_down",
     .shape = {3, 4, 2},
     .expect = KQ_ERR_FORMAT,
     .mention = "layers.0.key_down"},
    {.file = "head_dim_contradicts.kqproj",
     .target = "layers.1.value_up",
     .shape = {2, 5, 2},
     .expect = KQ_ERR_FORMAT,
     .mention = "layers.1.value_up"},
    {.file = "spectrum_shape.kqproj",
     .target = "layers.0.key_spectrum",
     .shape = {2, 3, 0},
     .expect = KQ_ERR_FORMAT,
     .mention = "layers.0.key_spectrum"},
    {.file = "spectrum_rank3.kqproj",
     .target = "layers.0.key_spectrum",
     .shape = {2, 4, 1},
     .expect = KQ_ERR_FORMAT,
     .mention = "layers.0.key_spectrum"},
    {.file = "f16_tensor.kqproj",
     .target = "layers.1.key_down",
     .f16 = 1,
     .expect = KQ_ERR_FORMAT,
     .mention = "layers.1.key_down"},
    {.file = "nan_value.kqproj",
     .target = "layers.1.query_down",
     .nan_at = 5,
     .expect = KQ_ERR_NUMERIC,
     .mention = "index 5"},
    {.file = "extra_layer.kqproj",
     .extra = "layers.2.key_spectrum",
     .expect = KQ_ERR_FORMAT,
     .mention = "layers.2.key_spectrum"},
    {.file = "extra_kind.kqproj",
     .extra = "layers.0.bias",
     .expect = KQ_ERR_FORMAT,
     .mention = "layers.0.bias"},
};
#define N_CASES (sizeof g_cases / sizeof g_cases[0])

static void malformed_projection_files_fail_naming_field_or_tensor(void **state) {
  (void)state;
  for (size_t i = 0; i < N_CASES; i++) {
    const proj_case *c = &g_cases[i];
    char path[1024];
    assert_int_equal(write_case(c, path, sizeof path), KQ_OK);
    kq_projections *p = NULL;
    kq_status st = kq_projections_load(path, &p);
    if (st != c->expect || (st != KQ_OK && (!strstr(kq_last_error(), c->file) ||
                                            !strstr(kq_last_error(), c->mention))))
      print_error("case %s: status %d, message \"%s\"\n", c->file, (int)st, kq_last_error());
    assert_int_equal(st, c->expect);
    if (st == KQ_OK) {
      assert_non_null(p);
      kq_projections_destroy(p);
    } else {
      assert_null(p);
      assert_non_null(strstr(kq_last_error(), c->file));
      assert_non_null(strstr(kq_last_error(), c->mention));
    }
    unlink(path);
  }
}

/* ------------------------------------------------------------------------ */
/* Version 2: layouts and segment tables (SPEC §1b)                         */
/* ------------------------------------------------------------------------ */

/* A v2 file: 2 layers, H = 4, Hk = 2, d = 4, rank 2 on both sides, in
 * `layout` and `rope`, with layer 0's key segment table `kseg` (n rows) and
 * every other table one float segment; `extra_layer` >= 0 adds a segment
 * table for that layer. */
static kq_status write_v2(const char *file, const char *layout, const char *rope,
                          const int32_t *kseg, int n, int extra_layer, char *path, size_t cap) {
  snprintf(path, cap, "%s/%s", g_dir, file);
  static float data[64];
  for (size_t i = 0; i < 64; i++) data[i] = 0.25f;
  static const int32_t plain[2] = {2, 0};
  int joint = !strcmp(layout, "joint");
  kq_st_writer *w = NULL;
  kq_status st = kq_st_writer_create(path, &w);
  const char *meta[][2] = {{"format", "kqsvd-projections"},
                           {"version", "2"},
                           {"method", "kq-svd"},
                           {"n_layers", "2"},
                           {"n_heads", "4"},
                           {"n_kv_heads", "2"},
                           {"head_dim", "4"},
                           {"rope", rope},
                           {"rope_theta", "10000"},
                           {"rope_layout", "pairs"},
                           {"layout", layout}};
  for (size_t i = 0; i < sizeof meta / sizeof meta[0] && st == KQ_OK; i++)
    st = kq_st_writer_meta(w, meta[i][0], meta[i][1]);
  for (int l = 0; l < 2 && st == KQ_OK; l++) {
    for (int k = 0; k < 6 && st == KQ_OK; k++) {
      char name[64];
      snprintf(name, sizeof name, "layers.%d.%s", l, g_kinds[k]);
      int shared = joint && (k == 0 || k == 2 || k >= 4);
      int64_t shape[3] = {shared ? 1 : 2, shared ? 8 : 4, 2};
      st = kq_st_writer_add(w, name, KQ_DTYPE_F32, k < 4 ? 3 : 2, shape, data);
    }
    for (int side = 0; side < 2 && st == KQ_OK; side++) {
      char name[64];
      snprintf(name, sizeof name, "layers.%d.%s", l, side ? "value_segments" : "key_segments");
      int custom = l == 0 && side == 0;
      int64_t shape[2] = {custom ? n : 1, 2};
      st = kq_st_writer_add(w, name, KQ_DTYPE_I32, 2, shape, custom ? kseg : plain);
    }
  }
  if (extra_layer >= 0 && st == KQ_OK) {
    char name[64];
    snprintf(name, sizeof name, "layers.%d.key_segments", extra_layer);
    int64_t shape[2] = {1, 2};
    st = kq_st_writer_add(w, name, KQ_DTYPE_I32, 2, shape, plain);
  }
  if (st == KQ_OK) st = kq_st_writer_commit(w, NULL);
  kq_st_writer_destroy(w);
  return st;
}

static void v2_files_load_with_layout_and_segments(void **state) {
  (void)state;
  char path[1024];
  const int32_t mixed[4] = {1, 0, 1, 8}; /* one float dim, one q8 dim */
  assert_int_equal(write_v2("v2_mixed.kqproj", "per-head", "post", mixed, 2, -1, path, sizeof path),
                   KQ_OK);
  kq_projections *p = NULL;
  assert_int_equal(kq_projections_load(path, &p), KQ_OK);
  kq_projection_layer v;
  assert_int_equal(kq_projections_layer(p, 0, &v), KQ_OK);
  assert_int_equal(v.n_key_segments, 2);
  assert_int_equal(v.key_segments[1].width, 1);
  assert_int_equal(v.key_segments[1].bits, KQ_SEG_Q8);
  assert_int_equal(v.n_value_segments, 1);
  /* Bytes per token: keys 2 heads x (2 + 1 + 2 scale), values 2 x 2 x 2 (F16). */
  assert_int_equal(kq_projections_layer_bytes(p, 0, KQ_STORAGE_F16), 2 * 5 + 2 * 4);
  kq_projections_destroy(p);

  const int32_t plain[2] = {2, 0};
  assert_int_equal(write_v2("v2_joint.kqproj", "joint", "post", plain, 1, -1, path, sizeof path),
                   KQ_OK);
  assert_int_equal(kq_projections_load(path, &p), KQ_OK);
  kq_projections_info info;
  assert_int_equal(kq_projections_get_info(p, &info), KQ_OK);
  assert_int_equal(info.layout, KQ_LAYOUT_JOINT);
  /* One shared latent: 2 dims x 2 bytes per side, for the whole layer. */
  assert_int_equal(kq_projections_layer_bytes(p, 0, KQ_STORAGE_F16), 8);
  kq_projections_destroy(p);
}

static void v2_bad_segments_fail_naming_file_layer_and_tensor(void **state) {
  (void)state;
  char path[1024];
  const int32_t short_sum[2] = {1, 0}, bad_bits[4] = {1, 0, 1, 5}, odd_q4[2] = {1, 4};
  const int32_t plain[2] = {2, 0};
  struct {
    const char *file, *layout, *rope;
    const int32_t *seg;
    int n, extra;
    const char *mention[2];
  } cases[] = {
      {"v2_sum.kqproj", "per-head", "post", short_sum, 1, -1, {"layers.0.key_segments", "sum"}},
      {"v2_bits.kqproj", "per-head", "post", bad_bits, 2, -1, {"layers.0.key_segments", "bits 5"}},
      {"v2_q4.kqproj", "per-head", "post", odd_q4, 1, -1, {"layers.0.key_segments", "odd"}},
      {"v2_joint_pre.kqproj", "joint", "pre", plain, 1, -1, {"joint", "pre"}},
      {"v2_layer.kqproj", "per-head", "post", plain, 1, 2, {"layers.2.key_segments", "no such"}},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    assert_int_equal(write_v2(cases[i].file, cases[i].layout, cases[i].rope, cases[i].seg,
                              cases[i].n, cases[i].extra, path, sizeof path),
                     KQ_OK);
    kq_projections *p = NULL;
    kq_status st = kq_projections_load(path, &p);
    if (st != KQ_ERR_FORMAT || !strstr(kq_last_error(), cases[i].file) ||
        !strstr(kq_last_error(), cases[i].mention[0]) ||
        !strstr(kq_last_error(), cases[i].mention[1]))
      print_error("case %s: status %d, message \"%s\"\n", cases[i].file, (int)st, kq_last_error());
    assert_int_equal(st, KQ_ERR_FORMAT);
    assert_null(p);
    assert_non_null(strstr(kq_last_error(), cases[i].file));
    assert_non_null(strstr(kq_last_error(), cases[i].mention[0]));
    assert_non_null(strstr(kq_last_error(), cases[i].mention[1]));
  }
}

/* Writes each case file of the table into `dir` (for the CLI test and the
 * fuzzing corpus). */
static int write_files(const char *dir) {
  g_dir = dir;
  char path[1024];
  int rc = 0;
  for (size_t i = 0; i < N_CASES; i++) rc |= write_case(&g_cases[i], path, sizeof path) != KQ_OK;
  return rc;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--write-files") == 0) return write_files(argv[2]);
  g_dir = io_test_dir("io_proj");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(save_then_load_returns_every_value_and_field),
      cmocka_unit_test(identity_projections_are_identities_with_zero_spectra),
      cmocka_unit_test(create_rejects_inconsistent_info_and_ranks),
      cmocka_unit_test(save_refuses_non_finite_values_and_writes_nothing),
      cmocka_unit_test(malformed_projection_files_fail_naming_field_or_tensor),
      cmocka_unit_test(v2_files_load_with_layout_and_segments),
      cmocka_unit_test(v2_bad_segments_fail_naming_file_layer_and_tensor),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  io_test_remove_dir(g_dir);
  return failed;
}
