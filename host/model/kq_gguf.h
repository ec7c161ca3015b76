/*
 * kq_gguf.h — GGUF (v2/v3) reader: maps a file read-only, validates every
 * header field, count, string, array, alignment and tensor extent against the
 * file size with overflow-safe arithmetic, and dequantises tensors to float32.
 *
 * File layout (little-endian): "GGUF", u32 version, u64 tensor_count,
 * u64 kv_count, kv_count key/value pairs (string key, u32 value type, value),
 * tensor_count tensor infos (string name, u32 n_dims, u64 ne[n_dims],
 * u32 type, u64 offset), padding to general.alignment (default 32), then the
 * data section; tensor offsets are relative to it and aligned.
 * Strings are u64 length + bytes (no terminator). ne[0] is the innermost
 * (contiguous) dimension.
 */
#ifndef KQ_GGUF_H
#define KQ_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "../common/kq_common.h"

/* Value types of the key/value section (numbering from the GGUF format). */
typedef enum kq_gguf_vtype {
  KQ_GGUF_UINT8 = 0,
  KQ_GGUF_INT8 = 1,
  KQ_GGUF_UINT16 = 2,
  KQ_GGUF_INT16 = 3,
  KQ_GGUF_UINT32 = 4,
  KQ_GGUF_INT32 = 5,
  KQ_GGUF_FLOAT32 = 6,
  KQ_GGUF_BOOL = 7,
  KQ_GGUF_STRING = 8,
  KQ_GGUF_ARRAY = 9,
  KQ_GGUF_UINT64 = 10,
  KQ_GGUF_INT64 = 11,
  KQ_GGUF_FLOAT64 = 12,
} kq_gguf_vtype;

/* Tensor types (ggml numbering). Only those with a block layout known to
 * kq_gguf_type_layout can be dequantised; others are reported by name. */
typedef enum kq_gguf_type {
  KQ_GGML_F32 = 0,
  KQ_GGML_F16 = 1,
  KQ_GGML_Q4_0 = 2,
  KQ_GGML_Q4_1 = 3,
  KQ_GGML_Q5_0 = 6,
  KQ_GGML_Q5_1 = 7,
  KQ_GGML_Q8_0 = 8,
  KQ_GGML_Q8_1 = 9,
  KQ_GGML_Q2_K = 10,
  KQ_GGML_Q3_K = 11,
  KQ_GGML_Q4_K = 12,
  KQ_GGML_Q5_K = 13,
  KQ_GGML_Q6_K = 14,
  KQ_GGML_Q8_K = 15,
  KQ_GGML_BF16 = 30,
} kq_gguf_type;

#define KQ_GGUF_MAX_DIMS 4
#define KQ_GGUF_MAX_NAME 64 /* tensor names are shorter than this (ggml's limit) */

/* A string inside the mapping: `len` bytes at `ptr`, not NUL-terminated. */
typedef struct kq_gguf_str {
  const char *ptr;
  uint64_t len;
} kq_gguf_str;

typedef struct kq_gguf_kv {
  const char *key; /* NUL-terminated copy */
  kq_gguf_vtype type;
  /* Scalars: the value widened (integers and bool in u/i, floats in f). */
  uint64_t u;
  int64_t i;
  double f;
  kq_gguf_str str; /* STRING */
  /* ARRAY: element type and count; numeric elements start at `data`
   * (little-endian, possibly unaligned); string elements are in `strs`. */
  kq_gguf_vtype elem_type;
  uint64_t n;
  const void *data;
  const kq_gguf_str *strs;
} kq_gguf_kv;

typedef struct kq_gguf_tensor {
  char name[KQ_GGUF_MAX_NAME];
  int n_dims;
  uint64_t ne[KQ_GGUF_MAX_DIMS]; /* unused dims are 1 */
  uint32_t type;                 /* kq_gguf_type value as stored */
  uint64_t n_elements;
  uint64_t offset; /* relative to the data section */
  size_t nbytes;
  const void *data; /* into the mapping */
} kq_gguf_tensor;

typedef struct kq_gguf kq_gguf;

/* Maps and validates `path`. Errors (KQ_ERR_IO, KQ_ERR_FORMAT,
 * KQ_ERR_OUT_OF_MEMORY) name the file and the key or tensor at fault. */
kq_status kq_gguf_open(const char *path, kq_gguf **out_file);
void kq_gguf_close(kq_gguf *file);

const char *kq_gguf_path(const kq_gguf *file);
uint32_t kq_gguf_version(const kq_gguf *file);
uint64_t kq_gguf_alignment(const kq_gguf *file);

int64_t kq_gguf_kv_count(const kq_gguf *file);
const kq_gguf_kv *kq_gguf_kv_at(const kq_gguf *file, int64_t index);
/* NULL if absent (no error set). */
const kq_gguf_kv *kq_gguf_find_kv(const kq_gguf *file, const char *key);

/* Typed getters. A missing key gives KQ_ERR_NOT_FOUND, a value of another
 * type or out of range KQ_ERR_FORMAT; both name the file and key. Integer
 * getters accept any integer type whose value fits. */
kq_status kq_gguf_get_u32(const kq_gguf *file, const char *key, uint32_t *out);
kq_status kq_gguf_get_f32(const kq_gguf *file, const char *key, float *out);
kq_status kq_gguf_get_bool(const kq_gguf *file, const char *key, int *out);
/* *out points into the mapping (not NUL-terminated). */
kq_status kq_gguf_get_str(const kq_gguf *file, const char *key, kq_gguf_str *out);
/* An array whose elements have type `elem_type`. */
kq_status kq_gguf_get_array(const kq_gguf *file, const char *key, kq_gguf_vtype elem_type,
                            const kq_gguf_kv **out);

int64_t kq_gguf_tensor_count(const kq_gguf *file);
const kq_gguf_tensor *kq_gguf_tensor_at(const kq_gguf *file, int64_t index);
/* NULL if absent (no error set). */
const kq_gguf_tensor *kq_gguf_find_tensor(const kq_gguf *file, const char *name);

/* "F32", "Q4_1", ...; "type<N>" is never returned: unknown values give NULL. */
const char *kq_gguf_type_name(uint32_t type);
/* Elements per block and bytes per block of a tensor type; false for types
 * this reader does not know the size of. */
int kq_gguf_type_layout(uint32_t type, uint32_t *out_block_elems, uint32_t *out_block_bytes);
/* True if kq_gguf_dequantize can convert this type. */
int kq_gguf_type_can_dequantize(uint32_t type);

/* Dequantises `n` elements (a multiple of the type's block size) of `type`
 * from `src` into `dst`. KQ_ERR_UNSUPPORTED for a type without a
 * dequantiser. */
kq_status kq_gguf_dequantize_raw(uint32_t type, const void *src, float *dst, size_t n);

/* Dequantises all of `tensor` into `dst` [n_elements]. Errors name the file,
 * tensor and type (KQ_ERR_UNSUPPORTED for an unsupported type). */
kq_status kq_gguf_dequantize(const kq_gguf *file, const kq_gguf_tensor *tensor, float *dst);

/* KQ_ERR_NUMERIC naming the file, tensor and element (first + i) when
 * x[0, n) holds a NaN or Inf. kq_gguf_dequantize checks every tensor it
 * converts, so a model with non-finite weights fails at load. */
kq_status kq_gguf_check_finite(const kq_gguf *file, const kq_gguf_tensor *tensor, const float *x,
                               size_t n, uint64_t first);

/* kq_gguf_find_tensor, then checks the shape (ne[0..n_dims), a value 0
 * accepts any size) and dequantises into a new buffer (caller frees).
 * Errors name the file and tensor. */
kq_status kq_gguf_load_f32(const kq_gguf *file, const char *name, int n_dims,
                           const uint64_t *expect_ne, float **out_data);

#endif /* KQ_GGUF_H */
