/*
 * Properties of the safetensors reader and writer: what is written reads
 * back bit for bit; every malformed header is rejected with KQ_ERR_FORMAT
 * and a message naming the file and tensor; non-finite data is reported
 * with its first flat index; a failed or cancelled write leaves nothing.
 *
 * `test_safetensors --write-seeds DIR` writes the malformed table and a few
 * valid files into DIR instead (the fuzzing seed corpus).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/kq_safetensors.h"
#include "io_test_util.h"

static const char *g_dir;

static void path_in_dir(char *buf, size_t cap, const char *name) {
  snprintf(buf, cap, "%s/%s", g_dir, name);
}

/* ------------------------------------------------------------------------ */
/* Round trip                                                               */
/* ------------------------------------------------------------------------ */

static void writer_output_reads_back_bit_for_bit_for_every_dtype(void **state) {
  (void)state;
  char path[1024];
  path_in_dir(path, sizeof path, "roundtrip.safetensors");
  const kq_dtype dtypes[] = {KQ_DTYPE_F64, KQ_DTYPE_F32, KQ_DTYPE_F16, KQ_DTYPE_BF16,
                             KQ_DTYPE_I64, KQ_DTYPE_I32, KQ_DTYPE_I8,  KQ_DTYPE_U8};
  const size_t esize[] = {8, 4, 2, 2, 8, 4, 1, 1};
  const int n_types = (int)(sizeof dtypes / sizeof dtypes[0]);
  /* Odd shapes so the 1-byte tensors misalign whatever follows them. */
  const int64_t shape[3] = {3, 1, 5};
  unsigned char *buf[8];
  kq_st_writer *w = NULL;
  assert_int_equal(kq_st_writer_create(path, &w), KQ_OK);
  for (int t = 0; t < n_types; t++) {
    size_t n = 15 * esize[t];
    buf[t] = malloc(n);
    for (size_t i = 0; i < n; i++) buf[t][i] = (unsigned char)(i * 37 + t * 11 + 1);
    char name[32];
    snprintf(name, sizeof name, "tensor_%s", kq_dtype_name(dtypes[t]));
    assert_int_equal(kq_st_writer_add(w, name, dtypes[t], 3, shape, buf[t]), KQ_OK);
  }
  /* A scalar and an empty tensor are legal. */
  const float scalar = 2.5f;
  const int64_t empty_shape[2] = {4, 0};
  assert_int_equal(kq_st_writer_add(w, "scalar", KQ_DTYPE_F32, 0, NULL, &scalar), KQ_OK);
  assert_int_equal(kq_st_writer_add(w, "empty", KQ_DTYPE_F16, 2, empty_shape, NULL), KQ_OK);
  const char *odd_value = "quote \" backslash \\ newline \n tab \t unicode \xc3\xa9";
  assert_int_equal(kq_st_writer_meta(w, "plain", "value"), KQ_OK);
  assert_int_equal(kq_st_writer_meta(w, "odd \"key\"", odd_value), KQ_OK);
  assert_int_equal(kq_st_writer_meta(w, "replaced", "first"), KQ_OK);
  assert_int_equal(kq_st_writer_meta(w, "replaced", "second"), KQ_OK);
  assert_int_equal(kq_st_writer_commit(w, NULL), KQ_OK);
  kq_st_writer_destroy(w);

  /* Layout: the data section starts at a multiple of 8 and the file holds
   * exactly header + the tensors' bytes. */
  FILE *fp = fopen(path, "rb");
  assert_non_null(fp);
  unsigned char len8[8];
  assert_int_equal(fread(len8, 1, 8, fp), 8);
  fclose(fp);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; i--) header_len = header_len << 8 | len8[i];
  assert_int_equal((8 + header_len) % 8, 0);
  size_t data_total = 4;
  for (int t = 0; t < n_types; t++) data_total += 15 * esize[t];
  struct stat sb;
  assert_int_equal(stat(path, &sb), 0);
  assert_int_equal((uint64_t)sb.st_size, 8 + header_len + data_total);

  kq_st_file *f = NULL;
  assert_int_equal(kq_st_open(path, &f), KQ_OK);
  assert_int_equal(kq_st_count(f), n_types + 2);
  /* Listed in data order, which is the order written. */
  assert_string_equal(kq_st_at(f, 0)->name, "tensor_F64");
  assert_string_equal(kq_st_at(f, n_types - 1)->name, "tensor_U8");
  assert_string_equal(kq_st_at(f, n_types)->name, "scalar");
  assert_null(kq_st_at(f, n_types + 2));
  for (int t = 0; t < n_types; t++) {
    char name[32];
    snprintf(name, sizeof name, "tensor_%s", kq_dtype_name(dtypes[t]));
    const kq_st_tensor *x = kq_st_find(f, name);
    assert_non_null(x);
    assert_string_equal(x->name, name);
    assert_int_equal(x->dtype, dtypes[t]);
    assert_int_equal(x->n_dims, 3);
    assert_int_equal(x->shape[0], 3);
    assert_int_equal(x->shape[1], 1);
    assert_int_equal(x->shape[2], 5);
    assert_int_equal(x->n_elements, 15);
    assert_int_equal(x->nbytes, 15 * esize[t]);
    assert_int_equal((uintptr_t)x->data % esize[t], 0);
    assert_memory_equal(x->data, buf[t], 15 * esize[t]);
    free(buf[t]);
  }
  const kq_st_tensor *s = kq_st_find(f, "scalar");
  assert_non_null(s);
  assert_int_equal(s->n_dims, 0);
  assert_int_equal(s->n_elements, 1);
  assert_memory_equal(s->data, &scalar, 4);
  const kq_st_tensor *e = kq_st_find(f, "empty");
  assert_non_null(e);
  assert_int_equal(e->nbytes, 0);
  assert_int_equal(e->shape[1], 0);
  assert_null(kq_st_find(f, "absent"));
  assert_int_equal(kq_st_meta_count(f), 3);
  assert_string_equal(kq_st_meta(f, "plain"), "value");
  assert_string_equal(kq_st_meta(f, "odd \"key\""), odd_value);
  assert_string_equal(kq_st_meta(f, "replaced"), "second");
  assert_null(kq_st_meta(f, "absent"));
  const char *k, *v;
  kq_st_meta_at(f, 0, &k, &v);
  assert_string_equal(k, "plain");
  kq_st_close(f);
  unlink(path);
}

static void require_reports_missing_dtype_and_shape_mismatches(void **state) {
  (void)state;
  char path[1024];
  path_in_dir(path, sizeof path, "require.safetensors");
  assert_int_equal(io_test_write_st(path,
                                    "{\"w\":{\"dtype\":\"I32\",\"shape\":[2,3],\"data_offsets\":[0,"
                                    "24]}}",
                                    24),
                   0);
  kq_st_file *f = NULL;
  assert_int_equal(kq_st_open(path, &f), KQ_OK);
  const kq_st_tensor *t = NULL;
  const int64_t any_by_3[2] = {-1, 3}, two_by_4[2] = {2, 4};
  assert_int_equal(kq_st_require(f, "w", 2, any_by_3, 0, &t), KQ_OK);
  assert_non_null(t);
  assert_int_equal(kq_st_require(f, "nope", 2, any_by_3, 0, &t), KQ_ERR_NOT_FOUND);
  assert_non_null(strstr(kq_last_error(), "nope"));
  assert_non_null(strstr(kq_last_error(), "require.safetensors"));
  assert_int_equal(kq_st_require(f, "w", 2, two_by_4, 0, &t), KQ_ERR_FORMAT);
  assert_non_null(strstr(kq_last_error(), "'w'"));
  assert_int_equal(kq_st_require(f, "w", 3, NULL, 0, &t), KQ_ERR_FORMAT);
  assert_int_equal(kq_st_require(f, "w", 2, NULL, 1, &t), KQ_ERR_FORMAT);
  assert_non_null(strstr(kq_last_error(), "I32"));
  kq_st_close(f);
  unlink(path);
}

static void misaligned_tensors_are_served_aligned_with_the_right_values(void **state) {
  (void)state;
  char path[1024];
  path_in_dir(path, sizeof path, "misaligned.safetensors");
  /* U8 at [0,1], F32 at [1,9]; the header is padded to a multiple of 4
   * bytes, so the F32 data sits at 1 mod 4 in the (page-aligned) mapping. */
  char json[256];
  snprintf(json, sizeof json, "%s",
           "{\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
           "\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[1,9]}}");
  while (strlen(json) % 4 != 0) strcat(json, " ");
  assert_int_equal(io_test_write_st(path, json, 9), 0);
  kq_st_file *f = NULL;
  assert_int_equal(kq_st_open(path, &f), KQ_OK);
  const kq_st_tensor *x = kq_st_find(f, "x");
  assert_non_null(x);
  assert_int_equal((uintptr_t)x->data % 4, 0);
  unsigned char expect[8];
  for (int i = 0; i < 8; i++) expect[i] = (unsigned char)(i + 1); /* data byte i = i */
  assert_memory_equal(x->data, expect, 8);
  kq_st_close(f);
  unlink(path);
}

/* ------------------------------------------------------------------------ */
/* Malformed files                                                          */
/* ------------------------------------------------------------------------ */

#define T1 "\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"

typedef struct bad_case {
  const char *file;    /* file name: the message must contain it */
  const char *json;    /* header text */
  int64_t len_delta;   /* header length = strlen(json) + len_delta ... */
  uint64_t len_exact;  /* ... unless this is non-zero */
  size_t data_bytes;   /* data section size */
  const char *mention; /* must appear in the message ('tensor' / 'key'), or NULL */
} bad_case;

static const bad_case g_bad[] = {
    {"truncated_len.safetensors", NULL, 0, 0, 0, NULL},
    {"len_past_eof.safetensors", "{" T1 "}", 1000, 0, 8, NULL},
    {"len_huge.safetensors", "{" T1 "}", 0, 0xfffffffffffffff0ull, 8, NULL},
    {"len_zero.safetensors", "{}", -2, 0, 0, NULL},
    {"not_json.safetensors", "this is not json", 0, 0, 0, NULL},
    {"json_cut.safetensors", "{\"t\":{\"dtype\":\"F32\"", 0, 0, 0, NULL},
    {"json_array.safetensors", "[1,2,3]", 0, 0, 0, NULL},
    {"json_trailing.safetensors", "{" T1 "}xx", 0, 0, 8, NULL},
    {"entry_not_object.safetensors", "{\"t\":[1]}", 0, 0, 0, "'t'"},
    {"missing_dtype.safetensors", "{\"t\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 0, 8, "'t'"},
    {"missing_shape.safetensors", "{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 0, 0, 8,
     "'t'"},
    {"missing_offsets.safetensors", "{\"t\":{\"dtype\":\"F32\",\"shape\":[2]}}", 0, 0, 8, "'t'"},
    {"unknown_dtype.safetensors",
     "{\"t\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 0, 0, 2, "'t'"},
    {"dtype_not_string.safetensors", "{\"t\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}",
     0, 0, 8, "'t'"},
    {"shape_negative.safetensors",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 0, 0, 8, "'t'"},
    {"shape_fraction.safetensors",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}}", 0, 0, 8, "'t'"},
    /* 2.0 and 2e0 are integers to cJSON, not to a safetensors header. */
    {"shape_float_integral.safetensors",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 0, 0, 8, "'2.0'"},
    {"offset_exponent.safetensors",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8e0]}}", 0, 0, 8, "'t'"},
    {"shape_string.safetensors",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 0, 0, 8, "'t'"},
    {"shape_not_array.safetensors",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 0, 0, 8, "'t'"},
    {"shape_too_many_dims.safetensors",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 0, 0, 8,
     "'t'"},
    {"shape_overflow.safetensors",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,8]}}", 0,
     0, 8, "'t'"},
    {"shape_bytes_overflow.safetensors",
     "{\"t\":{\"dtype\":\"F64\",\"shape\":[2147483648,2147483648],\"data_offsets\":[0,8]}}", 0, 0,
     8, "'t'"},
    {"shape_huge_integer.safetensors",
     "{\"t\":{\"dtype\":\"U8\",\"shape\":[1e300],\"data_offsets\":[0,8]}}", 0, 0, 8, "'t'"},
    {"shape_bytes_mismatch.safetensors",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 0, 0, 12, "'t'"},
    {"offsets_outside.safetensors",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 0, 0, 8, "'t'"},
    {"offsets_backwards.safetensors",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 0, 0, 8, "'t'"},
    {"offsets_one_value.safetensors",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8]}}", 0, 0, 8, "'t'"},
    {"offsets_negative.safetensors",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 0, 0, 8, "'t'"},
    {"overlap.safetensors",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
     0, 0, 12, "'b'"},
    {"overlap_contained.safetensors",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
     "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]},"
     "\"c\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[8,10]}}",
     0, 0, 16, "'a'"},
    {"duplicate_name.safetensors",
     "{" T1 ",\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":"
     "[8,9]}}",
     0, 0, 9, "'t'"},
    {"meta_not_string.safetensors", "{\"__metadata__\":{\"n_layers\":4}," T1 "}", 0, 0, 8,
     "'n_layers'"},
    {"meta_not_object.safetensors", "{\"__metadata__\":\"x\"," T1 "}", 0, 0, 8, "__metadata__"},
    {"meta_twice.safetensors", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, 0, 0,
     "__metadata__"},
    {"meta_duplicate_key.safetensors", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, 0, 0,
     "'k'"},
};
#define N_BAD (sizeof g_bad / sizeof g_bad[0])

static int write_bad_case(const char *dir, const bad_case *c) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, c->file);
  if (!c->json) { /* shorter than the 8-byte length field */
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    fwrite("\x10\x00\x00", 1, 3, f);
    return fclose(f);
  }
  uint64_t len = c->len_exact ? c->len_exact : (uint64_t)((int64_t)strlen(c->json) + c->len_delta);
  return io_test_write_raw(path, len, c->json, c->data_bytes);
}

static void every_malformed_file_fails_naming_file_and_tensor(void **state) {
  (void)state;
  for (size_t i = 0; i < N_BAD; i++) {
    const bad_case *c = &g_bad[i];
    assert_int_equal(write_bad_case(g_dir, c), 0);
    char path[1024];
    path_in_dir(path, sizeof path, c->file);
    kq_st_file *f = (kq_st_file *)(uintptr_t)1;
    kq_status st = kq_st_open(path, &f);
    if (st != KQ_ERR_FORMAT || !strstr(kq_last_error(), c->file) ||
        (c->mention && !strstr(kq_last_error(), c->mention)))
      print_error("case %s: status %d, message \"%s\"\n", c->file, (int)st, kq_last_error());
    assert_int_equal(st, KQ_ERR_FORMAT);
    assert_null(f);
    assert_non_null(strstr(kq_last_error(), c->file));
    if (c->mention) assert_non_null(strstr(kq_last_error(), c->mention));
    unlink(path);
  }
}

static void header_length_above_the_cap_is_rejected_before_parsing(void **state) {
  (void)state;
  char path[1024];
  path_in_dir(path, sizeof path, "len_cap.safetensors");
  /* A sparse file larger than the 100 MB cap whose header claims all of it. */
  uint64_t size = ((uint64_t)100 << 20) + 64;
  assert_int_equal(io_test_write_raw(path, size - 8, "{}", 0), 0);
  assert_int_equal(truncate(path, (off_t)size), 0);
  kq_st_file *f = NULL;
  assert_int_equal(kq_st_open(path, &f), KQ_ERR_FORMAT);
  assert_non_null(strstr(kq_last_error(), "len_cap.safetensors"));
  assert_non_null(strstr(kq_last_error(), "limit"));
  unlink(path);
}

static void missing_file_and_directory_fail_cleanly(void **state) {
  (void)state;
  char path[1024];
  path_in_dir(path, sizeof path, "does_not_exist.safetensors");
  kq_st_file *f = NULL;
  assert_int_equal(kq_st_open(path, &f), KQ_ERR_NOT_FOUND);
  assert_non_null(strstr(kq_last_error(), "does_not_exist.safetensors"));
  assert_int_equal(kq_st_open(g_dir, &f), KQ_ERR_IO);
  assert_null(f);
}

/* ------------------------------------------------------------------------ */
/* Non-finite data                                                          */
/* ------------------------------------------------------------------------ */

static void non_finite_values_report_tensor_and_first_flat_index(void **state) {
  (void)state;
  char path[1024];
  path_in_dir(path, sizeof path, "nonfinite.safetensors");
  float f32[12] = {0};
  f32[7] = NAN;
  f32[9] = INFINITY;
  uint16_t f16[6] = {0x3c00, 0x3c00, 0x3c00, 0xfc00 /* -Inf */, 0x7e00, 0};
  uint16_t bf16[4] = {0x3f80, 0x7fc0 /* NaN */, 0, 0};
  double f64[3] = {1.0, 2.0, -INFINITY};
  float clean[4] = {1e30f, -1e30f, 0.0f, -0.0f};
  int32_t ints[2] = {-1, 0x7f800000}; /* an Inf bit pattern, but integers are always finite */
  const int64_t s12[2] = {3, 4}, s6[1] = {6}, s4[1] = {4}, s3[1] = {3}, s2[1] = {2};
  kq_st_writer *w = NULL;
  assert_int_equal(kq_st_writer_create(path, &w), KQ_OK);
  assert_int_equal(kq_st_writer_add(w, "f32_bad", KQ_DTYPE_F32, 2, s12, f32), KQ_OK);
  assert_int_equal(kq_st_writer_add(w, "f16_bad", KQ_DTYPE_F16, 1, s6, f16), KQ_OK);
  assert_int_equal(kq_st_writer_add(w, "bf16_bad", KQ_DTYPE_BF16, 1, s4, bf16), KQ_OK);
  assert_int_equal(kq_st_writer_add(w, "f64_bad", KQ_DTYPE_F64, 1, s3, f64), KQ_OK);
  assert_int_equal(kq_st_writer_add(w, "clean", KQ_DTYPE_F32, 1, s4, clean), KQ_OK);
  assert_int_equal(kq_st_writer_add(w, "ints", KQ_DTYPE_I32, 1, s2, ints), KQ_OK);
  assert_int_equal(kq_st_writer_commit(w, NULL), KQ_OK);
  kq_st_writer_destroy(w);
  kq_st_file *f = NULL;
  assert_int_equal(kq_st_open(path, &f), KQ_OK);
  const struct {
    const char *name, *index, *kind;
  } expect[] = {{"f32_bad", "index 7", "NaN"},
                {"f16_bad", "index 3", "Inf"},
                {"bf16_bad", "index 1", "NaN"},
                {"f64_bad", "index 2", "Inf"}};
  for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++) {
    assert_int_equal(kq_st_check_finite(f, kq_st_find(f, expect[i].name)), KQ_ERR_NUMERIC);
    assert_non_null(strstr(kq_last_error(), "nonfinite.safetensors"));
    assert_non_null(strstr(kq_last_error(), expect[i].name));
    assert_non_null(strstr(kq_last_error(), expect[i].index));
    assert_non_null(strstr(kq_last_error(), expect[i].kind));
  }
  assert_int_equal(kq_st_check_finite(f, kq_st_find(f, "clean")), KQ_OK);
  assert_int_equal(kq_st_check_finite(f, kq_st_find(f, "ints")), KQ_OK);
  kq_st_close(f);
  unlink(path);
}

/* ------------------------------------------------------------------------ */
/* Writer failures                                                          */
/* ------------------------------------------------------------------------ */

static void failed_or_cancelled_writes_leave_no_file(void **state) {
  (void)state;
  const char *dir = io_test_dir("io_writer");
  char path[1024];
  float data[256] = {0};
  const int64_t shape[1] = {256};

  /* Cancelled before the first byte: nothing at all in the directory. */
  snprintf(path, sizeof path, "%s/cancelled.safetensors", dir);
  volatile int cancel = 1;
  kq_st_writer *w = NULL;
  assert_int_equal(kq_st_writer_create(path, &w), KQ_OK);
  assert_int_equal(kq_st_writer_add(w, "x", KQ_DTYPE_F32, 1, shape, data), KQ_OK);
  assert_int_equal(kq_st_writer_commit(w, &cancel), KQ_ERR_INTERRUPTED);
  kq_st_writer_destroy(w);
  assert_int_equal(io_test_count_entries(dir), 0);

  /* Destroyed without commit. */
  assert_int_equal(kq_st_writer_create(path, &w), KQ_OK);
  assert_int_equal(kq_st_writer_add(w, "x", KQ_DTYPE_F32, 1, shape, data), KQ_OK);
  kq_st_writer_destroy(w);
  assert_int_equal(io_test_count_entries(dir), 0);

  /* Directory that does not exist: refused when the writer is created,
   * before any work. */
  snprintf(path, sizeof path, "%s/no_such_dir/out.safetensors", dir);
  assert_int_equal(kq_st_writer_create(path, &w), KQ_ERR_IO);
  assert_null(w);
  assert_non_null(strstr(kq_last_error(), "out.safetensors"));
  assert_int_equal(io_test_count_entries(dir), 0);

  /* A directory as the target: refused up front, naming it. */
  snprintf(path, sizeof path, "%s/target_dir", dir);
  assert_int_equal(mkdir(path, 0755), 0);
  assert_int_equal(kq_st_writer_create(path, &w), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "target_dir"));
  assert_non_null(strstr(kq_last_error(), "directory"));
  assert_int_equal(io_test_count_entries(dir), 1); /* only target_dir */
  rmdir(path);

  /* An existing file is replaced only by a complete new one. */
  snprintf(path, sizeof path, "%s/existing.safetensors", dir);
  assert_int_equal(io_test_write_st(path, "{}", 0), 0);
  assert_int_equal(kq_st_writer_create(path, &w), KQ_OK);
  assert_int_equal(kq_st_writer_add(w, "x", KQ_DTYPE_F32, 1, shape, data), KQ_OK);
  assert_int_equal(kq_st_writer_commit(w, &cancel), KQ_ERR_INTERRUPTED);
  kq_st_writer_destroy(w);
  struct stat sb;
  assert_int_equal(stat(path, &sb), 0);
  assert_int_equal(sb.st_size, 10); /* the old file, untouched */
  assert_int_equal(io_test_count_entries(dir), 1);
  io_test_remove_dir(dir);
}

static void writer_rejects_bad_arguments_naming_the_tensor(void **state) {
  (void)state;
  char path[1024];
  path_in_dir(path, sizeof path, "args.safetensors");
  kq_st_writer *w = NULL;
  float x[2] = {0};
  const int64_t ok_shape[1] = {2}, neg_shape[1] = {-1};
  const int64_t huge[3] = {(int64_t)1 << 40, (int64_t)1 << 40, (int64_t)1 << 40};
  assert_int_equal(kq_st_writer_create(path, &w), KQ_OK);
  assert_int_equal(kq_st_writer_add(w, "x", KQ_DTYPE_F32, 1, ok_shape, x), KQ_OK);
  assert_int_equal(kq_st_writer_add(w, "x", KQ_DTYPE_F32, 1, ok_shape, x), KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "'x'"));
  assert_int_equal(kq_st_writer_add(w, "neg", KQ_DTYPE_F32, 1, neg_shape, x),
                   KQ_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(kq_last_error(), "'neg'"));
  assert_int_equal(kq_st_writer_add(w, "huge", KQ_DTYPE_F32, 3, huge, x), KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_st_writer_add(w, "bad_dtype", (kq_dtype)99, 1, ok_shape, x),
                   KQ_ERR_INVALID_ARGUMENT);
  assert_int_equal(kq_st_writer_add(w, "__metadata__", KQ_DTYPE_F32, 1, ok_shape, x),
                   KQ_ERR_INVALID_ARGUMENT);
  kq_st_writer_destroy(w);
  assert_int_equal(access(path, F_OK), -1);
}

/* Writes the seed corpus: every malformed case plus a few valid files. */
static int write_seeds(const char *dir) {
  int rc = 0;
  for (size_t i = 0; i < N_BAD; i++) rc |= write_bad_case(dir, &g_bad[i]);
  char path[1024];
  snprintf(path, sizeof path, "%s/valid_empty.safetensors", dir);
  rc |= io_test_write_st(path, "{}      ", 0);
  snprintf(path, sizeof path, "%s/valid_meta_two_tensors.safetensors", dir);
  rc |= io_test_write_st(path,
                         "{\"__metadata__\":{\"format\":\"pt\"},"
                         "\"a\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,8]},"
                         "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[8,14]}}",
                         14);
  snprintf(path, sizeof path, "%s/valid_all_dtypes.safetensors", dir);
  rc |= io_test_write_st(path,
                         "{\"d\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]},"
                         "\"l\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[8,16]},"
                         "\"f\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[16,20]},"
                         "\"i\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[20,24]},"
                         "\"h\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[24,26]},"
                         "\"g\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[26,28]},"
                         "\"c\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[28,29]},"
                         "\"u\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[29,29]}}",
                         29);
  return rc ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--write-seeds") == 0) return write_seeds(argv[2]);
  /* A copy: io_test_dir returns one static buffer, reused by later calls. */
  g_dir = strdup(io_test_dir("io_st"));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(writer_output_reads_back_bit_for_bit_for_every_dtype),
      cmocka_unit_test(require_reports_missing_dtype_and_shape_mismatches),
      cmocka_unit_test(misaligned_tensors_are_served_aligned_with_the_right_values),
      cmocka_unit_test(every_malformed_file_fails_naming_file_and_tensor),
      cmocka_unit_test(header_length_above_the_cap_is_rejected_before_parsing),
      cmocka_unit_test(missing_file_and_directory_fail_cleanly),
      cmocka_unit_test(non_finite_values_report_tensor_and_first_flat_index),
      cmocka_unit_test(failed_or_cancelled_writes_leave_no_file),
      cmocka_unit_test(writer_rejects_bad_arguments_naming_the_tensor),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  io_test_remove_dir(g_dir);
  return failed;
}
