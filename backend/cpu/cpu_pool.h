/*
 * cpu_pool.h — the CPU backend's thread team: the library's one team
 * (host/common/pool.c, kq_pool_run), under the names the kernels use.
 *
 * Decode calls are small and frequent, so the workers are created once (on
 * first use) and parked on a condition variable between calls. One job runs
 * at a time: concurrent callers (several caches on one device, each driven
 * by its own thread) are serialised by a mutex, which keeps every op's
 * result independent of what other threads do.
 */
#ifndef KQ_CPU_POOL_H
#define KQ_CPU_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "kq_common.h"
#include "kqsvd.h"

/* Jobs of fewer multiply-adds than this run on the calling thread alone:
 * waking the team (a condition-variable broadcast and a reschedule, tens of
 * microseconds on a busy machine) costs more than the work it would share
 * (about 1e6 multiply-adds, 50-100 us on one AVX2 core at decode shapes). */
#define KQ_CPU_SERIAL_WORK 1e6

/* One iteration of a job: `index` in [0, n), `worker` in [0, threads) names
 * the thread (the caller is worker 0), `scratch` is that worker's private
 * scratch of at least the bytes asked for (64-byte aligned). */
typedef kq_pool_task_fn kq_cpu_task_fn;

/* Threads in the team, the caller included (>= 1). KQSVD_CPU_THREADS
 * overrides the online CPU count. */
static inline int kq_cpu_pool_threads(void) {
  return kq_pool_threads();
}

/* Runs fn(ctx, i, worker, scratch) for every i in [0, n) and returns when all
 * have finished. Iterations are handed out dynamically; at most
 * `max_threads` threads take part (0 = all). Fails only with
 * KQ_ERR_OUT_OF_MEMORY when a scratch area cannot be grown. */
static inline kq_status kq_cpu_pool_run(int64_t n, int max_threads, size_t scratch_bytes,
                                        kq_cpu_task_fn fn, void *ctx) {
  return kq_pool_run(n, max_threads, scratch_bytes, fn, ctx);
}

#endif
