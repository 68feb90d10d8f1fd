/* threadpool.h — a persistent pool of worker threads, created once per session.
 *
 * asw_pool_run(pool, fn, arg) calls fn(arg, ith, nth) for ith = 0..nth-1, ith = 0 on the calling thread, and
 * returns when all have finished (a fork-join barrier). Waiters poll briefly (pause, then sched_yield), then
 * sleep on a condition variable, so a decode step costs no thread creation and little wake-up latency, and an
 * idle session burns no CPU.
 */
#ifndef ASW_THREADPOOL_H
#define ASW_THREADPOOL_H

typedef void (*asw_task_fn)(void *arg, int ith, int nth);
typedef struct asw_pool asw_pool;

/* n_threads <= 0: number of online cores. NULL on error (asw error set). A pool survives fork(): in the child
 * its workers are started again before its next job. */
asw_pool *asw_pool_new(int n_threads);
void asw_pool_free(asw_pool *p);
int asw_pool_size(const asw_pool *p);
void asw_pool_run(asw_pool *p, asw_task_fn fn, void *arg);

#endif /* ASW_THREADPOOL_H */
