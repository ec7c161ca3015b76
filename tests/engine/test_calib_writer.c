/*
 * test_calib_writer.c — the public calibration writer (issue 15): rows added
 * in uneven batches, layers interleaved, give a file whose tensors are those
 * of a SPEC §2 file built here by hand from the same activations, and
 * kq_fit turns both into byte-identical projection files; every failure
 * (abort, incomplete layers, NaN, missing wo, bad seq_len) leaves no file
 * and no spill file behind.
 */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/test_rng.h"
#include "kqsvd.h"

enum { NL = 3, H = 4, HK = 2, D = 8, HID = 12, SEQ = 8, T = 32 };

static char g_dir[64];
static float g_q[NL][T][H][D], g_k[NL][T][HK][D], g_v[NL][T][HK][D], g_wo[NL][HID][H * D];

static uint64_t g_rng;

/* Activations with structure (a few strong directions plus noise), so the
 * fit has a spectrum to work with. */
static void make_activations(void) {
  g_rng = 7;
  float basis[4][D];
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < D; j++) basis[i][j] = (float)test_rng_signed(&g_rng);
  for (int l = 0; l < NL; l++)
    for (int t = 0; t < T; t++) {
      for (int h = 0; h < H; h++)
        for (int j = 0; j < D; j++)
          g_q[l][t][h][j] = (float)(3.0 * test_rng_signed(&g_rng) * basis[h % 4][j] +
                                    0.3 * test_rng_signed(&g_rng));
      for (int h = 0; h < HK; h++)
        for (int j = 0; j < D; j++) {
          g_k[l][t][h][j] = (float)(2.0 * test_rng_signed(&g_rng) * basis[(h + 1) % 4][j] +
                                    0.2 * test_rng_signed(&g_rng));
          g_v[l][t][h][j] = (float)(test_rng_signed(&g_rng) * basis[(h + 2) % 4][j] +
                                    0.1 * test_rng_signed(&g_rng));
        }
    }
  for (int l = 0; l < NL; l++)
    for (int r = 0; r < HID; r++)
      for (int c = 0; c < H * D; c++) g_wo[l][r][c] = (float)test_rng_signed(&g_rng);
}

static void path_in_dir(char *out, size_t n, const char *name) {
  snprintf(out, n, "%s/%s", g_dir, name);
}

static int entries_in_dir(void) {
  DIR *d = opendir(g_dir);
  assert_non_null(d);
  int n = 0;
  for (struct dirent *e; (e = readdir(d));)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
  closedir(d);
  return n;
}

/* The SPEC §2 file written by hand: metadata, then per layer q [H,T,d],
 * k, v [Hk,T,d], wo [D,H·d], all F32. Returns the data section's offset. */
static long write_reference(const char *path) {
  char header[4096];
  int n = snprintf(header, sizeof header,
                   "{\"__metadata__\":{\"seq_len\":\"%d\",\"rope\":\"post\",\"rope_theta\":"
                   "\"10000\",\"rope_layout\":\"pairs\"}",
                   SEQ);
  uint64_t off = 0;
  for (int l = 0; l < NL; l++) {
    const char *names[4] = {"q", "k", "v", "wo"};
    for (int s = 0; s < 4; s++) {
      uint64_t bytes = s == 3 ? (uint64_t)HID * H * D * 4 : (uint64_t)(s ? HK : H) * T * D * 4;
      if (s == 3)
        n += snprintf(header + n, sizeof header - (size_t)n,
                      ",\"layers.%d.wo\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":["
                      "%llu,%llu]}",
                      l, HID, H * D, (unsigned long long)off, (unsigned long long)(off + bytes));
      else
        n += snprintf(header + n, sizeof header - (size_t)n,
                      ",\"layers.%d.%s\":{\"dtype\":\"F32\",\"shape\":[%d,%d,%d],\"data_offsets\":"
                      "[%llu,%llu]}",
                      l, names[s], s ? HK : H, T, D, (unsigned long long)off,
                      (unsigned long long)(off + bytes));
      off += bytes;
    }
  }
  n += snprintf(header + n, sizeof header - (size_t)n, "}");
  while (n % 8) header[n++] = ' ';
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  uint64_t len = (uint64_t)n;
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(len >> (8 * i));
  fwrite(len8, 1, 8, f);
  fwrite(header, 1, (size_t)n, f);
  for (int l = 0; l < NL; l++) {
    for (int h = 0; h < H; h++)
      for (int t = 0; t < T; t++) fwrite(g_q[l][t][h], sizeof(float), D, f);
    for (int h = 0; h < HK; h++)
      for (int t = 0; t < T; t++) fwrite(g_k[l][t][h], sizeof(float), D, f);
    for (int h = 0; h < HK; h++)
      for (int t = 0; t < T; t++) fwrite(g_v[l][t][h], sizeof(float), D, f);
    fwrite(g_wo[l], sizeof(float), HID * H * D, f);
  }
  assert_int_equal(fclose(f), 0);
  return 8 + n;
}

static unsigned char *read_all(const char *path, size_t *out_n) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = malloc((size_t)n + 1);
  assert_non_null(buf);
  assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  buf[n] = 0;
  *out_n = (size_t)n;
  return buf;
}

static kq_calib_writer_params params(void) {
  kq_calib_writer_params p = kq_calib_writer_default_params();
  p.n_layers = NL;
  p.n_heads = H;
  p.n_kv_heads = HK;
  p.head_dim = D;
  p.hidden = HID;
  p.seq_len = SEQ;
  return p;
}

/* Adds every layer's rows in uneven batches, layers interleaved, as an
 * engine's forward passes would. */
static void add_all(kq_calib_writer *w) {
  const int batches[] = {3, 5, 8, 1, 15};
  int t0 = 0;
  for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++) {
    for (int l = 0; l < NL; l++)
      assert_int_equal(kq_calib_writer_add(w, l, batches[b], &g_q[l][t0][0][0], &g_k[l][t0][0][0],
                                           &g_v[l][t0][0][0]),
                       KQ_OK);
    t0 += batches[b];
  }
  assert_int_equal(t0, T);
  for (int l = 0; l < NL; l++)
    assert_int_equal(kq_calib_writer_set_wo(w, l, &g_wo[l][0][0]), KQ_OK);
}

static void writer_file_fits_like_the_spec_file(void **state) {
  (void)state;
  char ref[128], out[128], pref[128], pout[128];
  path_in_dir(ref, sizeof ref, "reference.safetensors");
  path_in_dir(out, sizeof out, "writer.safetensors");
  path_in_dir(pref, sizeof pref, "reference.proj");
  path_in_dir(pout, sizeof pout, "writer.proj");
  long ref_data = write_reference(ref);
  kq_calib_writer_params p = params();
  kq_calib_writer *w = NULL;
  assert_int_equal(kq_calib_writer_open(out, &p, &w), KQ_OK);
  add_all(w);
  assert_int_equal(kq_calib_writer_tokens(w, 1), T);
  assert_int_equal(kq_calib_writer_close(w), KQ_OK);

  /* Same tensors: the data sections (tensors packed in the same order) are
   * byte-identical; the header carries the metadata. */
  size_t na, nb;
  unsigned char *a = read_all(ref, &na), *b = read_all(out, &nb);
  uint64_t hb = 0;
  for (int i = 0; i < 8; i++) hb |= (uint64_t)b[i] << (8 * i);
  assert_int_equal(na - (size_t)ref_data, nb - 8 - (size_t)hb);
  assert_memory_equal(a + ref_data, b + 8 + hb, na - (size_t)ref_data);
  b[8 + hb] = 0;
  assert_non_null(strstr((char *)b + 8, "\"seq_len\":\"8\""));
  assert_non_null(strstr((char *)b + 8, "\"rope\":\"post\""));
  assert_non_null(strstr((char *)b + 8, "\"rope_layout\":\"pairs\""));
  assert_non_null(strstr((char *)b + 8, "\"layers.2.wo\":{\"dtype\":\"F32\",\"shape\":[12,32]"));
  free(a);
  free(b);

  kq_fit_params fp = kq_fit_default_params();
  fp.rank_k = 4;
  fp.rank_v = 3;
  fp.n_threads = 1;
  assert_int_equal(kq_fit(ref, pref, &fp), KQ_OK);
  assert_int_equal(kq_fit(out, pout, &fp), KQ_OK);
  a = read_all(pref, &na);
  b = read_all(pout, &nb);
  assert_int_equal(na, nb);
  assert_memory_equal(a, b, na);
  free(a);
  free(b);
  unlink(ref);
  unlink(out);
  unlink(pref);
  unlink(pout);
  assert_int_equal(entries_in_dir(), 0); /* no spill file left */
}

static void model_identity_and_f16_are_written(void **state) {
  (void)state;
  char out[128];
  path_in_dir(out, sizeof out, "f16.safetensors");
  kq_calib_writer_params p = params();
  p.dtype = KQ_DTYPE_F16;
  p.rope = KQ_ROPE_PRE;
  kq_calib_writer *w = NULL;
  assert_int_equal(kq_calib_writer_open(out, &p, &w), KQ_OK);
  assert_int_equal(kq_calib_writer_set_meta(w, "model_name", "tiny-test"), KQ_OK);
  assert_int_equal(kq_calib_writer_set_meta(w, "rope", "post"), KQ_ERR_INVALID_ARGUMENT);
  add_all(w);
  assert_int_equal(kq_calib_writer_close(w), KQ_OK);
  size_t n;
  unsigned char *b = read_all(out, &n);
  uint64_t hb = 0;
  for (int i = 0; i < 8; i++) hb |= (uint64_t)b[i] << (8 * i);
  /* F16: half the bytes of the F32 tensors. */
  size_t f32_bytes = (size_t)NL * ((H + 2 * HK) * T * D + HID * H * D) * 4;
  assert_int_equal(n - 8 - hb, f32_bytes / 2);
  b[8 + hb] = 0;
  assert_non_null(strstr((char *)b + 8, "\"model_name\":\"tiny-test\""));
  assert_non_null(strstr((char *)b + 8, "\"rope\":\"pre\""));
  assert_non_null(strstr((char *)b + 8, "\"dtype\":\"F16\""));
  free(b);
  kq_fit_params fp = kq_fit_default_params();
  fp.rank_k = 4;
  fp.rank_v = 3;
  fp.n_threads = 1;
  char proj[128];
  path_in_dir(proj, sizeof proj, "f16.proj");
  assert_int_equal(kq_fit(out, proj, &fp), KQ_OK);
  unlink(out);
  unlink(proj);
}

/* Every failure leaves the folder as it was. */
static void failures_leave_no_file(void **state) {
  (void)state;
  char out[128];
  path_in_dir(out, sizeof out, "fail.safetensors");
  kq_calib_writer_params p = params();
  kq_calib_writer *w = NULL;

  /* Abort after data was added. */
  assert_int_equal(kq_calib_writer_open(out, &p, &w), KQ_OK);
  add_all(w);
  kq_calib_writer_abort(w);
  assert_int_equal(entries_in_dir(), 0);

  /* A layer short of tokens. */
  assert_int_equal(kq_calib_writer_open(out, &p, &w), KQ_OK);
  add_all(w);
  assert_int_equal(
      kq_calib_writer_add(w, 0, 1, &g_q[0][0][0][0], &g_k[0][0][0][0], &g_v[0][0][0][0]), KQ_OK);
  assert_int_equal(kq_calib_writer_close(w), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "layer 1"));
  assert_int_equal(entries_in_dir(), 0);

  /* T not a multiple of seq_len. */
  p.seq_len = 7;
  assert_int_equal(kq_calib_writer_open(out, &p, &w), KQ_OK);
  add_all(w);
  assert_int_equal(kq_calib_writer_close(w), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(entries_in_dir(), 0);
  p.seq_len = SEQ;

  /* wo never set. */
  assert_int_equal(kq_calib_writer_open(out, &p, &w), KQ_OK);
  for (int l = 0; l < NL; l++)
    assert_int_equal(
        kq_calib_writer_add(w, l, T, &g_q[l][0][0][0], &g_k[l][0][0][0], &g_v[l][0][0][0]), KQ_OK);
  assert_int_equal(kq_calib_writer_close(w), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "wo"));
  assert_int_equal(entries_in_dir(), 0);

  /* NaN: refused naming the layer, the call keeps nothing. */
  assert_int_equal(kq_calib_writer_open(out, &p, &w), KQ_OK);
  float saved = g_k[2][5][1][3];
  g_k[2][5][1][3] = NAN;
  assert_int_equal(
      kq_calib_writer_add(w, 2, T, &g_q[2][0][0][0], &g_k[2][0][0][0], &g_v[2][0][0][0]),
      KQ_ERR_NUMERIC);
  g_k[2][5][1][3] = saved;
  assert_non_null(strstr(kq_last_error(), "layer 2"));
  assert_non_null(strstr(kq_last_error(), "row 5"));
  assert_int_equal(kq_calib_writer_tokens(w, 2), 0);
  assert_int_equal(
      kq_calib_writer_add(w, NL, 1, &g_q[0][0][0][0], &g_k[0][0][0][0], &g_v[0][0][0][0]),
      KQ_ERR_INVALID_ARGUMENT);
  kq_calib_writer_abort(w);
  assert_int_equal(entries_in_dir(), 0);

  /* A failed close leaves an earlier file at the path unchanged. */
  FILE *f = fopen(out, "w");
  assert_non_null(f);
  fputs("earlier", f);
  fclose(f);
  assert_int_equal(kq_calib_writer_open(out, &p, &w), KQ_OK);
  assert_int_equal(kq_calib_writer_close(w), KQ_ERR_INVALID_ARGUMENT); /* no tokens */
  size_t n;
  unsigned char *b = read_all(out, &n);
  assert_int_equal(n, 7);
  assert_memory_equal(b, "earlier", 7);
  free(b);
  unlink(out);

  /* Bad params and paths are refused at open. */
  assert_int_equal(kq_calib_writer_open(g_dir, &p, &w), KQ_ERR_INVALID_ARGUMENT);
  assert_null(w);
  p.n_heads = 3;
  assert_int_equal(kq_calib_writer_open(out, &p, &w), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(entries_in_dir(), 0);
  kq_calib_writer_abort(NULL);
}

int main(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/kq_calib_writer_XXXXXX");
  if (!mkdtemp(g_dir)) return 1;
  make_activations();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(writer_file_fits_like_the_spec_file),
      cmocka_unit_test(model_identity_and_f16_are_written),
      cmocka_unit_test(failures_leave_no_file),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  rmdir(g_dir);
  return rc;
}
