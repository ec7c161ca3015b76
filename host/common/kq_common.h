/*
 * kq_common.h — internal helpers shared by every part of libkqsvd:
 * the per-thread error channel, float16/bfloat16 conversion, overflow-safe
 * sizes and allocation, and a small parallel-for over a thread team.
 * Not installed; in-tree code only.
 */
#ifndef KQ_COMMON_H
#define KQ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kqsvd.h"

#if defined(__GNUC__)
#define KQ_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define KQ_PRINTF(a, b)
#endif

/* Records `fmt` as the calling thread's last error and returns `status`, so
 * callers write `return kq_set_error(KQ_ERR_FORMAT, "%s: ...", path);`. */
kq_status kq_set_error(kq_status status, const char *fmt, ...) KQ_PRINTF(2, 3);

/* Prepends "prefix: " to the calling thread's last error (adds context on the
 * way up: "fit: layers.3.k: ..."). Returns status unchanged. */
kq_status kq_error_prefix(kq_status status, const char *fmt, ...) KQ_PRINTF(2, 3);

/* Adds context after the file name: "path: context: rest", whether or not
 * the last error already starts with "path: " (the file is named once and
 * first). Returns status unchanged. */
kq_status kq_error_context(kq_status status, const char *path, const char *fmt, ...)
    KQ_PRINTF(3, 4);

void kq_clear_error(void);

/* SHA-256 (FIPS 180-4), streaming: init, update any number of times, final
 * writes 64 lowercase hex digits and a NUL. */
typedef struct kq_sha256 {
  uint32_t h[8];
  uint64_t n_bytes;
  uint8_t buf[64];
  size_t n_buf;
} kq_sha256;
void kq_sha256_init(kq_sha256 *s);
void kq_sha256_update(kq_sha256 *s, const void *data, size_t n);
void kq_sha256_final(kq_sha256 *s, char out_hex[65]);

/* SHA-256 of a whole file, as `sha256sum` prints it. KQ_ERR_IO naming the
 * file when it cannot be read. */
kq_status kq_sha256_file(const char *path, char out_hex[65]);

/* Public params structs start with `size_t struct_size` (the size the caller
 * was compiled with, set by the struct's *_default_params()). `out` holds
 * the defaults, `size` bytes (this library's sizeof); copies the caller's
 * `given` struct over them, so fields of a newer version that an older
 * caller lacks keep their defaults, and sets out's struct_size to `size`.
 * KQ_ERR_ABI naming `what` and `defaults_fn` unless min_size <= the given
 * struct_size <= size (min_size: the first version's size). given == NULL
 * keeps the defaults. */
kq_status kq_params_adopt(void *out, size_t size, size_t min_size, const void *given,
                          const char *what, const char *defaults_fn);

/* IEEE binary16 <-> binary32; round to nearest even, Inf/NaN preserved. */
float kq_f16_to_f32(uint16_t h);
uint16_t kq_f32_to_f16(float f);

/* 1 when any of x[0, n) is NaN or ±Inf. */
int kq_any_nonfinite_f32(const float *x, size_t n);

/* The F16 NaN a quantized segment stores as its scale when its row holds a
 * NaN or an infinity. */
#define KQ_F16_NAN ((uint16_t)0x7e00)

/* Quantizes one row x[0, n) of a latent segment as SPEC §1b and
 * kqsvd_backend.h say (qmax 127 for q8, 7 for q4): s = max|x| / qmax in
 * F32, rounded to F16 (returned); q[j] = clamp(round-half-away(x[j] / s),
 * -qmax, qmax) with x[j] / s in F32 from the F16 scale; all zeros when s
 * is 0. A row holding NaN or ±Inf stores zeros and the scale KQ_F16_NAN, so
 * it reads back as NaN (IEEE propagation, kqsvd.h). A row whose max|x| /
 * qmax overflows F16 gets an infinite scale and also reads back non-finite.
 * The scalar definition every backend's quantizer must match. */
uint16_t kq_quantize_row(const float *x, int n, int qmax, int8_t *q);
/* bfloat16 <-> binary32; round to nearest even. */
float kq_bf16_to_f32(uint16_t b);
uint16_t kq_f32_to_bf16(float f);

/* Bytes per element of a dtype (0 for an invalid value). */
size_t kq_dtype_size(kq_dtype dtype);
/* "F32", "F16", "BF16", ... (safetensors spelling); NULL if invalid. */
const char *kq_dtype_name(kq_dtype dtype);
/* Parses a safetensors dtype name; false if unknown. */
bool kq_dtype_parse(const char *name, kq_dtype *out);

/* Converts n elements of `dtype` at src to float (F32/F16/BF16/F64 only). */
void kq_convert_to_f32(kq_dtype dtype, const void *src, float *dst, size_t n);
/* Converts n elements of `dtype` at src to double (F32/F16/BF16/F64 only). */
void kq_convert_to_f64(kq_dtype dtype, const void *src, double *dst, size_t n);

/* *out = a * b; false on size_t overflow. */
bool kq_mul_size(size_t a, size_t b, size_t *out);
/* *out = a + b; false on size_t overflow. */
bool kq_add_size(size_t a, size_t b, size_t *out);

/* malloc/calloc of count * size bytes with overflow check. On failure set
 * KQ_ERR_OUT_OF_MEMORY naming `what` and return NULL. size 0 returns a
 * valid unique pointer. */
void *kq_malloc_array(size_t count, size_t size, const char *what);
void *kq_calloc_array(size_t count, size_t size, const char *what);

/* Number of threads to use: requested > 0 ? requested : online CPUs. */
int kq_thread_count(int requested);

/* The library's one CPU thread team, created on first use and kept: its
 * size is $KQSVD_CPU_THREADS, or the online CPU count. Decode-sized CPU ops
 * and coarse host work (fitting, the model) share it. One job runs at a
 * time: concurrent callers wait their turn (so every result is independent
 * of other threads); a job started from inside a job's iteration runs on
 * the calling thread alone.
 *
 * One iteration: `index` in [0, n), `worker` in [0, threads) names the
 * thread (the caller is worker 0), `scratch` is that worker's private
 * scratch of at least the bytes asked for (64-byte aligned). */
typedef void (*kq_pool_task_fn)(void *ctx, int64_t index, int worker, void *scratch);

/* Threads in the team, the caller included (>= 1). */
int kq_pool_threads(void);

/* Runs fn(ctx, i, worker, scratch) for every i in [0, n) and returns when
 * all have finished. Iterations are handed out dynamically; at most
 * `max_threads` threads take part (0 = all). Fails only with
 * KQ_ERR_OUT_OF_MEMORY when a scratch area cannot be grown. */
kq_status kq_pool_run(int64_t n, int max_threads, size_t scratch_bytes, kq_pool_task_fn fn,
                      void *ctx);

/* Runs fn(ctx, i) for i in [0, n) on the thread team (kq_pool_run), with
 * at most n_threads threads (0 = all; more than the team has gives the
 * team). Iterations are handed out dynamically. Returns the first non-OK
 * status any iteration returned (remaining iterations are skipped). Error
 * messages set by a worker thread are copied to the caller's thread. */
typedef kq_status (*kq_task_fn)(void *ctx, int64_t index);
kq_status kq_parallel_for(int64_t n, int n_threads, kq_task_fn fn, void *ctx);

/* Monotonic wall clock in seconds. */
double kq_now_seconds(void);

/* Median of x[0..n) (sorts x in place; the mean of the two middle values
 * for even n); NaN for n <= 0. The one median of timings in the library,
 * the CLI and the benchmarks. */
double kq_median(double *x, int n);

#endif /* KQ_COMMON_H */
