/* The one CPU thread team of the library: a persistent fork-join pool
 * (workers sleep on a condition variable and are woken per job by bumping a
 * generation counter). The CPU backend runs its ops on it (cpu_pool.h) and
 * kq_parallel_for (fitting, eval, the model) runs on it too. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kq_common.h"

#define KQ_POOL_MAX_THREADS 64

typedef struct pool {
  pthread_mutex_t run_lock; /* one job at a time */
  pthread_mutex_t lock;     /* guards generation / pending */
  pthread_cond_t wake;
  pthread_cond_t done;
  int n_threads;
  uint64_t generation;
  int closed;  /* the caller has finished the current job's iterations */
  int running; /* workers inside the current job */
  /* current job */
  kq_pool_task_fn fn;
  void *ctx;
  int64_t n;
  int active; /* workers with index < active take part */
  atomic_llong next;
  void *scratch[KQ_POOL_MAX_THREADS];
  size_t scratch_size[KQ_POOL_MAX_THREADS];
} pool;

static pool g_pool;
static pthread_once_t g_pool_once = PTHREAD_ONCE_INIT;

/* Set on the pool's workers and on a caller while it runs a job: a job
 * started from inside one (an iteration calling kq_parallel_for) runs on
 * that thread alone instead of waiting for the team it is part of. */
static _Thread_local int t_in_job;

static void run_iterations(pool *p, int worker) {
  for (;;) {
    int64_t i = atomic_fetch_add(&p->next, 1);
    if (i >= p->n) return;
    p->fn(p->ctx, i, worker, p->scratch[worker]);
  }
}

/* A worker joins a job only while it is open, so a thread that wakes late
 * (descheduled on a busy machine) never delays the caller: the caller does
 * the remaining iterations itself and waits only for workers inside. */
static void *worker_main(void *arg) {
  int worker = (int)(intptr_t)arg;
  pool *p = &g_pool;
  t_in_job = 1;
  uint64_t seen = 0;
  pthread_mutex_lock(&p->lock);
  for (;;) {
    while (p->generation == seen) pthread_cond_wait(&p->wake, &p->lock);
    seen = p->generation;
    if (p->closed || worker >= p->active) continue;
    p->running++;
    pthread_mutex_unlock(&p->lock);
    run_iterations(p, worker);
    pthread_mutex_lock(&p->lock);
    if (--p->running == 0 && p->closed) pthread_cond_signal(&p->done);
  }
  return NULL;
}

static void pool_init(void) {
  pool *p = &g_pool;
  pthread_mutex_init(&p->run_lock, NULL);
  pthread_mutex_init(&p->lock, NULL);
  pthread_cond_init(&p->wake, NULL);
  pthread_cond_init(&p->done, NULL);
  atomic_init(&p->next, 0);
  int want = 0;
  const char *env = getenv("KQSVD_CPU_THREADS");
  if (env && *env) want = atoi(env);
  want = kq_thread_count(want > 0 ? want : 0);
  if (want > KQ_POOL_MAX_THREADS) want = KQ_POOL_MAX_THREADS;
  p->n_threads = 1;
  for (int t = 1; t < want; t++) {
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&th, &attr, worker_main, (void *)(intptr_t)t);
    pthread_attr_destroy(&attr);
    if (rc != 0) break; /* fewer threads: the work still gets done */
    p->n_threads++;
  }
}

int kq_pool_threads(void) {
  pthread_once(&g_pool_once, pool_init);
  return g_pool.n_threads;
}

static kq_status grow_scratch(pool *p, int workers, size_t bytes) {
  bytes = (bytes + 63) & ~(size_t)63;
  if (bytes == 0) bytes = 64;
  for (int w = 0; w < workers; w++) {
    if (p->scratch_size[w] >= bytes) continue;
    void *mem = aligned_alloc(64, bytes);
    if (!mem)
      return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "cpu: cannot allocate %zu bytes of scratch", bytes);
    free(p->scratch[w]);
    p->scratch[w] = mem;
    p->scratch_size[w] = bytes;
  }
  return KQ_OK;
}

/* A nested job: every iteration on the calling thread, with scratch of its
 * own (the team's belongs to the job in progress). */
static kq_status run_nested(int64_t n, size_t scratch_bytes, kq_pool_task_fn fn, void *ctx) {
  size_t bytes = ((scratch_bytes ? scratch_bytes : 1) + 63) & ~(size_t)63;
  void *scratch = aligned_alloc(64, bytes);
  if (!scratch)
    return kq_set_error(KQ_ERR_OUT_OF_MEMORY, "cpu: cannot allocate %zu bytes of scratch", bytes);
  for (int64_t i = 0; i < n; i++) fn(ctx, i, 0, scratch);
  free(scratch);
  return KQ_OK;
}

kq_status kq_pool_run(int64_t n, int max_threads, size_t scratch_bytes, kq_pool_task_fn fn,
                      void *ctx) {
  if (n <= 0) return KQ_OK;
  if (t_in_job) return run_nested(n, scratch_bytes, fn, ctx);
  pthread_once(&g_pool_once, pool_init);
  pool *p = &g_pool;
  int active = p->n_threads;
  if (max_threads > 0 && max_threads < active) active = max_threads;
  if (n < active) active = (int)n;

  pthread_mutex_lock(&p->run_lock);
  kq_status st = grow_scratch(p, active, scratch_bytes);
  if (st != KQ_OK) {
    pthread_mutex_unlock(&p->run_lock);
    return st;
  }
  p->fn = fn;
  p->ctx = ctx;
  p->n = n;
  atomic_store(&p->next, 0);
  if (active > 1) {
    pthread_mutex_lock(&p->lock);
    p->active = active;
    p->closed = 0;
    p->running = 0;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
  }
  t_in_job = 1;
  run_iterations(p, 0);
  t_in_job = 0;
  if (active > 1) {
    pthread_mutex_lock(&p->lock);
    p->closed = 1;
    while (p->running > 0) pthread_cond_wait(&p->done, &p->lock);
    pthread_mutex_unlock(&p->lock);
  }
  pthread_mutex_unlock(&p->run_lock);
  return KQ_OK;
}
