/* A fork-join parallel-for on pthreads. Threads are created per call: the
 * fitting and model code call it with coarse iterations (a head, a layer, a
 * row block), where thread start-up is noise next to the work. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kq_common.h"

typedef struct parallel_job {
  kq_task_fn fn;
  void *ctx;
  int64_t n;
  atomic_llong next;
  atomic_int failed;
  pthread_mutex_t lock;
  kq_status status; /* first failure, under lock */
  char message[1024];
} parallel_job;

static void run_iterations(parallel_job *job) {
  for (;;) {
    if (atomic_load(&job->failed)) return;
    int64_t i = atomic_fetch_add(&job->next, 1);
    if (i >= job->n) return;
    kq_status st = job->fn(job->ctx, i);
    if (st != KQ_OK) {
      pthread_mutex_lock(&job->lock);
      if (job->status == KQ_OK) {
        job->status = st;
        strncpy(job->message, kq_last_error(), sizeof job->message - 1);
      }
      pthread_mutex_unlock(&job->lock);
      atomic_store(&job->failed, 1);
      return;
    }
  }
}

static void *worker_main(void *arg) {
  run_iterations(arg);
  return NULL;
}

int kq_thread_count(int requested) {
  if (requested > 0) return requested;
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

kq_status kq_parallel_for(int64_t n, int n_threads, kq_task_fn fn, void *ctx) {
  if (n <= 0) return KQ_OK;
  n_threads = kq_thread_count(n_threads);
  if (n_threads > n) n_threads = (int)n;
  if (n_threads > 256) n_threads = 256;

  parallel_job job = {.fn = fn, .ctx = ctx, .n = n, .status = KQ_OK};
  atomic_init(&job.next, 0);
  atomic_init(&job.failed, 0);
  pthread_mutex_init(&job.lock, NULL);

  pthread_t threads[256];
  int started = 0;
  for (int t = 1; t < n_threads; t++) {
    if (pthread_create(&threads[started], NULL, worker_main, &job) != 0) break;
    started++; /* fewer threads if creation fails: the work still gets done */
  }
  run_iterations(&job);
  for (int t = 0; t < started; t++) pthread_join(threads[t], NULL);
  pthread_mutex_destroy(&job.lock);

  if (job.status != KQ_OK) return kq_set_error(job.status, "%s", job.message);
  return KQ_OK;
}

double kq_now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
