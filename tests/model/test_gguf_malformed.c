/* GGUF reader: a well-formed file crafted byte by byte reads back exactly,
 * and every kind of damage (truncation at any byte, lying counts, huge
 * lengths, tensors past EOF, bad alignment, unknown types) is refused with
 * an error that names the file and the key or tensor at fault. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "model/kq_gguf.h"
#include "model/kq_llama_ops.h"

/* ---- a tiny GGUF builder ---------------------------------------------- */

typedef struct buf {
  uint8_t *p;
  size_t n, cap;
} buf;

static void put(buf *b, const void *src, size_t n) {
  if (b->n + n > b->cap) {
    b->cap = (b->n + n) * 2 + 64;
    b->p = realloc(b->p, b->cap);
    assert_non_null(b->p);
  }
  memcpy(b->p + b->n, src, n);
  b->n += n;
}
static void u8(buf *b, uint8_t v) {
  put(b, &v, 1);
}
static void u32(buf *b, uint32_t v) {
  for (int k = 0; k < 4; k++) u8(b, (uint8_t)(v >> (8 * k)));
}
static void u64(buf *b, uint64_t v) {
  for (int k = 0; k < 8; k++) u8(b, (uint8_t)(v >> (8 * k)));
}
static void str(buf *b, const char *s) {
  u64(b, strlen(s));
  put(b, s, strlen(s));
}
static void pad_to(buf *b, size_t align) {
  while (b->n % align) u8(b, 0);
}

/* The parts of a test file; each test damages one of them. */
typedef struct spec {
  uint32_t version;
  uint64_t kv_count_delta, tensor_count_override;
  int bad_magic;
  uint32_t alignment; /* 0 = no general.alignment key */
  uint32_t t1_type;   /* type of the second tensor */
  uint64_t t1_offset;
  uint64_t t1_ne0;
  uint32_t t1_dims;
  const char *t1_name;
  uint64_t key_len_override; /* 0 = the real length */
  uint32_t extra_kv_type;    /* value type of "test.extra" */
  int dup_key;
} spec;

static spec good_spec(void) {
  spec s = {.version = 3,
            .alignment = 64,
            .t1_type = KQ_GGML_Q8_0,
            .t1_offset = 64,
            .t1_ne0 = 32,
            .t1_dims = 1,
            .t1_name = "blk.0.q8",
            .extra_kv_type = KQ_GGUF_UINT32};
  return s;
}

/* Q8_0 block: f16 scale 0.5 (0x3800), codes -16..15: values code * 0.5. */
static void q8_block(buf *b) {
  u8(b, 0x00);
  u8(b, 0x38);
  for (int j = 0; j < 32; j++) u8(b, (uint8_t)(int8_t)(j - 16));
}

static buf build(const spec *s) {
  buf b = {0};
  put(&b, s->bad_magic ? "GGUX" : "GGUF", 4);
  u32(&b, s->version);
  u64(&b, s->tensor_count_override ? s->tensor_count_override : 2);
  u64(&b, 3 + (s->alignment ? 1 : 0) + (s->dup_key ? 1 : 0) + s->kv_count_delta);
  /* kv 1: string */
  if (s->key_len_override) {
    u64(&b, s->key_len_override);
    put(&b, "general.name", 12);
  } else {
    str(&b, "general.name");
  }
  u32(&b, KQ_GGUF_STRING);
  str(&b, "tiny");
  /* kv 2: array of strings */
  str(&b, "test.words");
  u32(&b, KQ_GGUF_ARRAY);
  u32(&b, KQ_GGUF_STRING);
  u64(&b, 2);
  str(&b, "alpha");
  str(&b, "beta");
  /* kv 3: a scalar of configurable type */
  str(&b, "test.extra");
  u32(&b, s->extra_kv_type);
  if (s->extra_kv_type == KQ_GGUF_BOOL)
    u8(&b, 2);
  else if (s->extra_kv_type == KQ_GGUF_ARRAY)
    u32(&b, KQ_GGUF_ARRAY), u64(&b, 1);
  else
    u32(&b, 7);
  if (s->alignment) {
    str(&b, "general.alignment");
    u32(&b, KQ_GGUF_UINT32);
    u32(&b, s->alignment);
  }
  if (s->dup_key) {
    str(&b, "test.extra");
    u32(&b, KQ_GGUF_UINT32);
    u32(&b, 8);
  }
  /* tensor 0: F32 [4, 2] at offset 0 */
  str(&b, "blk.0.f32");
  u32(&b, 2);
  u64(&b, 4);
  u64(&b, 2);
  u32(&b, KQ_GGML_F32);
  u64(&b, 0);
  /* tensor 1: configurable */
  str(&b, s->t1_name);
  u32(&b, s->t1_dims);
  for (uint32_t d = 0; d < s->t1_dims && d < 8; d++) u64(&b, d == 0 ? s->t1_ne0 : 1);
  u32(&b, s->t1_type);
  u64(&b, s->t1_offset);
  /* An invalid alignment is refused before the data matters: pad to 32. */
  uint32_t al = s->alignment;
  pad_to(&b, al && al <= 4096 && (al & (al - 1)) == 0 ? al : 32);
  size_t data = b.n;
  for (int j = 0; j < 8; j++) {
    float v = (float)j * 0.25f - 1.0f;
    uint32_t bits;
    memcpy(&bits, &v, 4);
    u32(&b, bits);
  }
  while (b.n < data + 64) u8(&b, 0);
  q8_block(&b);
  return b;
}

static char g_path[64];

static void write_file(const buf *b, size_t n) {
  FILE *f = fopen(g_path, "wb");
  assert_non_null(f);
  if (n > 0) assert_int_equal(fwrite(b->p, 1, n, f), n);
  assert_int_equal(fclose(f), 0);
}

/* Opens a file built from `s`, expects `want`, and that the message
 * contains the file name and `needle`. */
static void expect_open(const spec *s, kq_status want, const char *needle) {
  buf b = build(s);
  write_file(&b, b.n);
  free(b.p);
  kq_gguf *g = NULL;
  kq_status st = kq_gguf_open(g_path, &g);
  if (st != want) print_error("status %d, message: %s\n", st, kq_last_error());
  assert_int_equal(st, want);
  if (want != KQ_OK) {
    assert_null(g);
    assert_non_null(strstr(kq_last_error(), g_path));
    if (needle && !strstr(kq_last_error(), needle))
      fail_msg("message '%s' does not mention '%s'", kq_last_error(), needle);
  }
  kq_gguf_close(g);
}

static int setup(void **state) {
  (void)state;
  snprintf(g_path, sizeof g_path, "/tmp/kq_gguf_test_%d.gguf", (int)getpid());
  return 0;
}
static int teardown(void **state) {
  (void)state;
  unlink(g_path);
  return 0;
}

/* ---- tests --------------------------------------------------------------- */

static void well_formed_file_reads_back_exactly(void **state) {
  (void)state;
  spec s = good_spec();
  buf b = build(&s);
  write_file(&b, b.n);
  free(b.p);
  kq_gguf *g = NULL;
  assert_int_equal(kq_gguf_open(g_path, &g), KQ_OK);
  assert_int_equal(kq_gguf_version(g), 3);
  assert_int_equal(kq_gguf_alignment(g), 64);
  kq_gguf_str name;
  assert_int_equal(kq_gguf_get_str(g, "general.name", &name), KQ_OK);
  assert_int_equal(name.len, 4);
  assert_memory_equal(name.ptr, "tiny", 4);
  const kq_gguf_kv *words;
  assert_int_equal(kq_gguf_get_array(g, "test.words", KQ_GGUF_STRING, &words), KQ_OK);
  assert_int_equal(words->n, 2);
  assert_memory_equal(words->strs[1].ptr, "beta", 4);
  uint32_t extra;
  assert_int_equal(kq_gguf_get_u32(g, "test.extra", &extra), KQ_OK);
  assert_int_equal(extra, 7);
  assert_int_equal(kq_gguf_get_u32(g, "test.missing", &extra), KQ_ERR_NOT_FOUND);
  assert_non_null(strstr(kq_last_error(), "test.missing"));
  float f;
  assert_int_equal(kq_gguf_get_f32(g, "test.extra", &f), KQ_ERR_FORMAT);

  const kq_gguf_tensor *t0 = kq_gguf_find_tensor(g, "blk.0.f32");
  assert_non_null(t0);
  assert_int_equal(t0->ne[0], 4);
  assert_int_equal(t0->ne[1], 2);
  float v[32];
  assert_int_equal(kq_gguf_dequantize(g, t0, v), KQ_OK);
  for (int j = 0; j < 8; j++) assert_true(v[j] == (float)j * 0.25f - 1.0f);
  const kq_gguf_tensor *t1 = kq_gguf_find_tensor(g, "blk.0.q8");
  assert_non_null(t1);
  assert_int_equal(kq_gguf_dequantize(g, t1, v), KQ_OK);
  for (int j = 0; j < 32; j++) assert_true(v[j] == (float)(j - 16) * 0.5f);
  kq_gguf_close(g);
}

static void every_truncation_is_refused_without_crashing(void **state) {
  (void)state;
  spec s = good_spec();
  buf b = build(&s);
  for (size_t n = 0; n < b.n; n++) {
    write_file(&b, n);
    kq_gguf *g = NULL;
    kq_status st = kq_gguf_open(g_path, &g);
    if (st == KQ_OK) fail_msg("a file cut to %zu of %zu bytes was accepted", n, b.n);
    assert_true(st == KQ_ERR_FORMAT);
    assert_non_null(strstr(kq_last_error(), g_path));
  }
  free(b.p);
}

static void bad_magic_and_version_are_refused(void **state) {
  (void)state;
  spec s = good_spec();
  s.bad_magic = 1;
  expect_open(&s, KQ_ERR_FORMAT, "magic");
  s = good_spec();
  s.version = 1;
  expect_open(&s, KQ_ERR_FORMAT, "version");
  s.version = 99;
  expect_open(&s, KQ_ERR_FORMAT, "version");
}

static void lying_counts_are_refused_before_allocating(void **state) {
  (void)state;
  spec s = good_spec();
  s.kv_count_delta = UINT64_MAX / 2;
  expect_open(&s, KQ_ERR_FORMAT, "kv_count");
  s = good_spec();
  s.tensor_count_override = UINT64_MAX;
  expect_open(&s, KQ_ERR_FORMAT, "tensor_count");
  s = good_spec();
  s.kv_count_delta = 1; /* one more key/value than the file holds */
  expect_open(&s, KQ_ERR_FORMAT, NULL);
}

static void huge_string_length_is_refused(void **state) {
  (void)state;
  spec s = good_spec();
  s.key_len_override = UINT64_MAX - 3;
  expect_open(&s, KQ_ERR_FORMAT, "string length");
  s.key_len_override = 1ull << 40;
  expect_open(&s, KQ_ERR_FORMAT, "string length");
}

static void tensor_past_eof_is_refused(void **state) {
  (void)state;
  spec s = good_spec();
  s.t1_offset = 128; /* aligned, but the block would end past the data */
  expect_open(&s, KQ_ERR_FORMAT, "blk.0.q8");
  s.t1_offset = UINT64_MAX - 63; /* aligned; offset + size overflows */
  expect_open(&s, KQ_ERR_FORMAT, "blk.0.q8");
  s = good_spec();
  s.t1_ne0 = 32ull << 40; /* a terabyte tensor in a tiny file */
  expect_open(&s, KQ_ERR_FORMAT, "blk.0.q8");
}

static void misaligned_offset_and_bad_alignment_are_refused(void **state) {
  (void)state;
  spec s = good_spec();
  s.t1_offset = 40;
  expect_open(&s, KQ_ERR_FORMAT, "aligned");
  s = good_spec();
  s.alignment = 48;
  expect_open(&s, KQ_ERR_FORMAT, "general.alignment");
  s.alignment = 0xFFFFFFFF;
  expect_open(&s, KQ_ERR_FORMAT, "general.alignment");
}

static void unknown_tensor_type_names_tensor(void **state) {
  (void)state;
  spec s = good_spec();
  s.t1_type = 99;
  expect_open(&s, KQ_ERR_FORMAT, "blk.0.q8");
  s.t1_type = 16; /* IQ2_XXS: a real ggml type whose layout we do not read */
  expect_open(&s, KQ_ERR_FORMAT, "IQ2_XXS");
}

static void type_without_dequantiser_fails_naming_tensor_and_type(void **state) {
  (void)state;
  spec s = good_spec();
  s.t1_type = KQ_GGML_Q8_1; /* 36-byte blocks, a layout the reader knows */
  s.t1_offset = 0;
  s.t1_name = "blk.0.q81";
  /* Point it at the F32 tensor's bytes: overlaps, so it must be refused... */
  expect_open(&s, KQ_ERR_FORMAT, "overlap");
  /* ...and at its own place it opens, but cannot be dequantised. */
  s = good_spec();
  s.t1_type = KQ_GGML_Q8_1;
  s.t1_name = "blk.0.q81";
  buf b = build(&s);
  u8(&b, 0); /* Q8_1 blocks are 36 bytes: 2 more than Q8_0 */
  u8(&b, 0);
  write_file(&b, b.n);
  free(b.p);
  kq_gguf *g = NULL;
  assert_int_equal(kq_gguf_open(g_path, &g), KQ_OK);
  float v[32];
  assert_int_equal(kq_gguf_dequantize(g, kq_gguf_find_tensor(g, "blk.0.q81"), v),
                   KQ_ERR_UNSUPPORTED);
  assert_non_null(strstr(kq_last_error(), "blk.0.q81"));
  assert_non_null(strstr(kq_last_error(), "Q8_1"));
  kq_gguf_close(g);
}

static void bad_dims_are_refused(void **state) {
  (void)state;
  spec s = good_spec();
  s.t1_dims = 0;
  expect_open(&s, KQ_ERR_FORMAT, "dimensions");
  s.t1_dims = 5;
  expect_open(&s, KQ_ERR_FORMAT, "dimensions");
  s = good_spec();
  s.t1_ne0 = 0;
  expect_open(&s, KQ_ERR_FORMAT, "dimension 0");
  s.t1_ne0 = 48; /* not a multiple of the 32-element Q8_0 block */
  expect_open(&s, KQ_ERR_FORMAT, "block");
}

static void bad_values_and_duplicates_are_refused(void **state) {
  (void)state;
  spec s = good_spec();
  s.extra_kv_type = 99;
  expect_open(&s, KQ_ERR_FORMAT, "test.extra");
  s.extra_kv_type = KQ_GGUF_BOOL; /* stored value 2 */
  expect_open(&s, KQ_ERR_FORMAT, "test.extra");
  s.extra_kv_type = KQ_GGUF_ARRAY; /* array of arrays */
  expect_open(&s, KQ_ERR_FORMAT, "nested");
  s = good_spec();
  s.dup_key = 1;
  expect_open(&s, KQ_ERR_FORMAT, "duplicate key 'test.extra'");
  s = good_spec();
  s.t1_name = "blk.0.f32";
  expect_open(&s, KQ_ERR_FORMAT, "duplicate tensor 'blk.0.f32'");
}

/* A weight of the wrong rank is reported with its whole shape (a 3-D
 * tensor used to print as 2-D), the file named once and first. */
static void wrong_weight_shape_prints_every_dimension(void **state) {
  (void)state;
  spec s = good_spec();
  s.t1_dims = 3; /* [32, 1, 1] */
  buf b = build(&s);
  write_file(&b, b.n);
  free(b.p);
  kq_gguf *g = NULL;
  assert_int_equal(kq_gguf_open(g_path, &g), KQ_OK);
  kq_llama_weight w;
  assert_int_equal(kq_llama_weight_load(g, "blk.0.q8", 1, 32, &w), KQ_ERR_FORMAT);
  const char *msg = kq_last_error();
  if (!strstr(msg, "[32, 1, 1]")) fail_msg("message '%s' lacks the 3-D shape", msg);
  assert_ptr_equal(strstr(msg, g_path), msg);        /* the file first */
  assert_null(strstr(msg + strlen(g_path), g_path)); /* and once */
  kq_gguf_close(g);
}

static void missing_and_empty_files_are_io_or_format_errors(void **state) {
  (void)state;
  kq_gguf *g = NULL;
  assert_int_equal(kq_gguf_open("/nonexistent/dir/model.gguf", &g), KQ_ERR_IO);
  assert_non_null(strstr(kq_last_error(), "/nonexistent/dir/model.gguf"));
  buf b = {0};
  write_file(&b, 0);
  assert_int_equal(kq_gguf_open(g_path, &g), KQ_ERR_FORMAT);
  assert_null(g);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(well_formed_file_reads_back_exactly),
      cmocka_unit_test(every_truncation_is_refused_without_crashing),
      cmocka_unit_test(bad_magic_and_version_are_refused),
      cmocka_unit_test(lying_counts_are_refused_before_allocating),
      cmocka_unit_test(huge_string_length_is_refused),
      cmocka_unit_test(tensor_past_eof_is_refused),
      cmocka_unit_test(misaligned_offset_and_bad_alignment_are_refused),
      cmocka_unit_test(unknown_tensor_type_names_tensor),
      cmocka_unit_test(type_without_dequantiser_fails_naming_tensor_and_type),
      cmocka_unit_test(bad_dims_are_refused),
      cmocka_unit_test(bad_values_and_duplicates_are_refused),
      cmocka_unit_test(wrong_weight_shape_prints_every_dimension),
      cmocka_unit_test(missing_and_empty_files_are_io_or_format_errors),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
