/* kq_parallel_for on the library's one thread team (pool.c): a status per
 * iteration, the first failure kept with its message and the remaining
 * iterations skipped. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kq_common.h"

typedef struct parallel_job {
  kq_task_fn fn;
  void *ctx;
  atomic_int failed;
  pthread_mutex_t lock;
  kq_status status; /* first failure, under lock */
  char message[1024];
} parallel_job;

static void parallel_task(void *arg, int64_t index, int worker, void *scratch) {
  (void)worker;
  (void)scratch;
  parallel_job *job = arg;
  if (atomic_load(&job->failed)) return;
  kq_status st = job->fn(job->ctx, index);
  if (st == KQ_OK) return;
  pthread_mutex_lock(&job->lock);
  if (job->status == KQ_OK) {
    job->status = st;
    strncpy(job->message, kq_last_error(), sizeof job->message - 1);
  }
  pthread_mutex_unlock(&job->lock);
  atomic_store(&job->failed, 1);
}

int kq_thread_count(int requested) {
  if (requested > 0) return requested;
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

kq_status kq_parallel_for(int64_t n, int n_threads, kq_task_fn fn, void *ctx) {
  if (n <= 0) return KQ_OK;
  parallel_job job = {.fn = fn, .ctx = ctx, .status = KQ_OK};
  atomic_init(&job.failed, 0);
  pthread_mutex_init(&job.lock, NULL);
  kq_status st = kq_pool_run(n, kq_thread_count(n_threads), 0, parallel_task, &job);
  pthread_mutex_destroy(&job.lock);
  if (st != KQ_OK) return st;
  if (job.status != KQ_OK) return kq_set_error(job.status, "%s", job.message);
  return KQ_OK;
}

double kq_now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
