/*
 * kq_safetensors.h — safetensors reader (mmap, fully validated) and writer
 * (temporary file + rename). Every error names the file and, where there is
 * one, the tensor.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
 *  "__metadata__": {"key": "string value"}}, then the data section; offsets
 * are relative to the data section.
 */
#ifndef KQ_SAFETENSORS_H
#define KQ_SAFETENSORS_H

#include <stdint.h>

/* Relative, so that code outside the library (the CLI) can include this
 * header with only host/ on its include path. */
#include "../common/kq_common.h"

#define KQ_ST_MAX_DIMS 8

typedef struct kq_st_tensor {
  const char *name;
  kq_dtype dtype;
  int n_dims;
  int64_t shape[KQ_ST_MAX_DIMS];
  uint64_t n_elements;
  uint64_t nbytes;
  /* Little-endian, into the mapping; aligned to the element size (tensors
   * misaligned in the file are served from an aligned private copy). */
  const void *data;
} kq_st_tensor;

typedef struct kq_st_file kq_st_file;

/* Maps and validates `path`: header length inside the file (and at most
 * 100 MiB), JSON syntax (only whitespace after the object), known dtypes,
 * shapes of at most KQ_ST_MAX_DIMS exact non-negative integers (< 2^53),
 * shape products against byte sizes (overflow-safe), offsets inside the
 * data section with begin <= end, no overlaps between non-empty tensors, no
 * duplicate names, one "__metadata__" object whose values are strings.
 * Tensors are listed (kq_st_at) in data-offset order. Errors:
 * KQ_ERR_NOT_FOUND (no such file), KQ_ERR_IO (unreadable, not a regular
 * file), KQ_ERR_FORMAT (anything malformed), KQ_ERR_OUT_OF_MEMORY; the
 * message names the file and, where there is one, the tensor or key.
 * The file must not be truncated by another process while it is open. */
kq_status kq_st_open(const char *path, kq_st_file **out_file);
/* A reader over tensors already in memory (no file, no copy of the data):
 * the `count` descriptors are copied (names too) but their data pointers are
 * referenced and must stay valid, unchanged, until kq_st_close. Every
 * descriptor must be consistent (n_elements, nbytes from shape and dtype,
 * data aligned to the element size): only duplicate names are checked
 * (KQ_ERR_FORMAT). The metadata pairs are copied. `name` stands in for the
 * path in kq_st_path and in every error message. */
kq_status kq_st_open_memory(const char *name, int count, const kq_st_tensor *tensors,
                            int meta_count, const char *const *meta_keys,
                            const char *const *meta_values, kq_st_file **out_file);
void kq_st_close(kq_st_file *file);

const char *kq_st_path(const kq_st_file *file);
int kq_st_count(const kq_st_file *file);
const kq_st_tensor *kq_st_at(const kq_st_file *file, int index);
/* NULL if absent (no error set). */
const kq_st_tensor *kq_st_find(const kq_st_file *file, const char *name);
/* Like kq_st_find, but a missing tensor (KQ_ERR_NOT_FOUND), another dtype
 * class or another shape (KQ_ERR_FORMAT) is an error naming the file and
 * tensor. expect_dims < 0 accepts any rank and ignores expect_shape;
 * otherwise expect_shape (may be NULL: rank only) has expect_dims entries,
 * an entry < 0 accepting any size. float_only: dtype must be F32/F16/BF16
 * (0 accepts every dtype). */
kq_status kq_st_require(const kq_st_file *file, const char *name, int expect_dims,
                        const int64_t *expect_shape, int float_only,
                        const kq_st_tensor **out_tensor);

/* Metadata value, or NULL if absent. */
const char *kq_st_meta(const kq_st_file *file, const char *key);
int kq_st_meta_count(const kq_st_file *file);
void kq_st_meta_at(const kq_st_file *file, int index, const char **out_key, const char **out_value);

/* KQ_ERR_NUMERIC naming the file, tensor and first bad flat index if any
 * element of a float tensor is NaN or Inf. */
kq_status kq_st_check_finite(const kq_st_file *file, const kq_st_tensor *tensor);

/* Writer. Tensor data is referenced, not copied: it must stay valid until
 * commit. Nothing appears at `path` until kq_st_writer_commit succeeds.
 * Layout: metadata first, then tensors in the order added, packed with no
 * gaps (as other safetensors readers require); the header is padded with
 * spaces so the data section starts at a multiple of 8 bytes.
 * kq_st_writer_meta: a repeated key replaces the earlier value.
 * kq_st_writer_add: KQ_ERR_INVALID_ARGUMENT (naming the tensor) for a
 * repeated or reserved name, an invalid dtype, a negative shape entry, more
 * than KQ_ST_MAX_DIMS dimensions or a byte size that overflows; data may be
 * NULL only for an empty tensor. */
typedef struct kq_st_writer kq_st_writer;

kq_status kq_st_writer_create(const char *path, kq_st_writer **out_writer);
kq_status kq_st_writer_meta(kq_st_writer *w, const char *key, const char *value);
kq_status kq_st_writer_add(kq_st_writer *w, const char *name, kq_dtype dtype, int n_dims,
                           const int64_t *shape, const void *data);
/* Produces the next `bytes` bytes of a streamed tensor into dst. The writer
 * calls it in order, in chunks that are multiples of 8 bytes (the last one
 * excepted) and together cover the tensor exactly once. */
typedef kq_status (*kq_st_source_fn)(void *user, void *dst, size_t bytes);

/* kq_st_writer_add for a tensor whose bytes come from `source` at commit
 * (never all in memory at once). Same checks as kq_st_writer_add. */
kq_status kq_st_writer_add_source(kq_st_writer *w, const char *name, kq_dtype dtype, int n_dims,
                                  const int64_t *shape, kq_st_source_fn source, void *user);
/* Writes "<path>.tmp.<pid>", fsyncs, renames onto path. `cancel` (may be
 * NULL) is polled while writing; on cancel or error the temporary file is
 * removed. */
kq_status kq_st_writer_commit(kq_st_writer *w, const volatile int *cancel);
/* Frees the writer; removes any temporary file if commit did not succeed. */
void kq_st_writer_destroy(kq_st_writer *w);

#endif /* KQ_SAFETENSORS_H */
