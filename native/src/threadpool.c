/* threadpool.c — persistent fork-join worker pool (see threadpool.h). */
#if defined(__linux__)
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <sched.h>
#endif
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "backend.h"
#include "threadpool.h"

/* How a worker waits for the next job (and the caller for the workers): SPIN_PAUSE polls with a pause
 * instruction (~20 us), then SPIN_YIELD polls with sched_yield (so a waiter that shares a core with the thread it
 * waits for steps aside instead of burning its time slice), then it sleeps on a condition variable. */
enum { SPIN_PAUSE = 1000, SPIN_YIELD = 200 };

/* Workers get at least this much stack: the batched decode GEMV keeps its partial sums there (frames of ~50 KiB,
 * gcc -fstack-usage), within glibc's 8 MiB default but not far from musl's 128 KiB. */
enum { WORKER_STACK = 1 << 20 };

typedef struct worker {
    struct asw_pool *pool;
    int ith;
    pthread_t thread;
    int stepped_aside; /* its affinity excludes the caller's core until it next goes to sleep (Linux) */
#if defined(__linux__)
    cpu_set_t own;     /* its affinity before it stepped aside, restored then */
#endif
} worker;

struct asw_pool {
    int n;                /* threads in all, the caller included */
    worker *workers;      /* [n - 1] */
    pthread_mutex_t mu;   /* guards the sleeping side of gen / pending */
    pthread_cond_t wake;  /* gen changed */
    pthread_cond_t done;  /* pending reached 0 */
    atomic_uint gen;      /* job generation; bumped once per asw_pool_run */
    atomic_int pending;   /* workers still running the current job */
    atomic_int stop;      /* 1: workers exit */
    asw_task_fn fn;       /* current job, published by the release store to gen */
    void *arg;
    atomic_int caller_cpu; /* the core the caller ran on when it published the job (-1: unknown) */
    unsigned forks;       /* fork_count when the workers were started: they exist only in that process */
};

/* fork() copies only the calling thread: in a child, a pool's workers are gone and its mutex may have been held
 * by one of them. A pthread_atfork child handler counts forks; a pool whose workers date from an earlier count
 * re-creates its synchronisation and workers before the next job (and does not join the lost threads when
 * freed). One relaxed load per job, no syscall. */
static atomic_uint fork_count;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void count_fork_in_child(void) { atomic_fetch_add_explicit(&fork_count, 1u, memory_order_relaxed); }
static void register_atfork(void) { pthread_atfork(NULL, NULL, count_fork_in_child); }

static int workers_are_ours(const asw_pool *p) {
    return p->forks == atomic_load_explicit(&fork_count, memory_order_relaxed);
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline void pause_or_yield(int spin) {
    if (spin < SPIN_PAUSE)
        cpu_relax();
    else
        sched_yield();
}

/* The core this thread runs on (-1: unknown). */
static int current_cpu(void) {
#if defined(__linux__)
    return sched_getcpu();
#else
    return -1;
#endif
}

/* A worker that wakes on the core of the caller steps aside to another core it may use.
 *
 * A sleeping worker is woken by the caller, and the scheduler then places it. On a KVM guest it places it on the
 * caller's own core when the idle core's vCPU looks preempted (the host descheduled it while it idled): both threads
 * then share one core until the load balancer parts them, milliseconds later. Measured on a 2-core EPYC guest, a
 * SmolLM2 decode step after 50 ms idle took 15-20 ms instead of 9-10 (in 38 % of the 4,344 jobs of 24 such steps
 * the worker ran on the caller's core; pinned threads: 9.8 ms). Nothing is pinned for good (two processes pinned to
 * the same cores would share them while the others idle): a worker that finds itself on the caller's core at the
 * start of a job excludes that core from its affinity, which moves it at once, and takes its own affinity back
 * before it next sleeps. Workers sharing a core with each other are left to the scheduler. The cost is one
 * sched_getcpu per job on each side: tens of nanoseconds at most on x86 (vDSO, rseq), a system call on aarch64 with
 * glibc before 2.35 or with musl (~360 per decode step; not measured on Arm). */
static void step_aside_from_caller(worker *w) {
#if defined(__linux__)
    int here = current_cpu();
    if (here < 0 || here != atomic_load_explicit(&w->pool->caller_cpu, memory_order_relaxed)) return;
    /* already aside (the caller moved onto this core since): from its own affinity again, not the narrowed one */
    if (!w->stepped_aside && sched_getaffinity(0, sizeof w->own, &w->own) != 0) return;
    cpu_set_t elsewhere = w->own;
    CPU_CLR(here, &elsewhere);
    if (CPU_COUNT(&elsewhere) > 0 && sched_setaffinity(0, sizeof elsewhere, &elsewhere) == 0) w->stepped_aside = 1;
#else
    (void)w;
#endif
}

static void take_own_affinity_back(worker *w) {
#if defined(__linux__)
    if (w->stepped_aside) (void)sched_setaffinity(0, sizeof w->own, &w->own);
#endif
    w->stepped_aside = 0;
}

static void *worker_main(void *v) {
    worker *w = v;
    asw_pool *p = w->pool;
    unsigned seen = 0;
    for (;;) {
        unsigned g = atomic_load_explicit(&p->gen, memory_order_acquire);
        for (int spin = 0; g == seen && spin < SPIN_PAUSE + SPIN_YIELD; spin++) {
            pause_or_yield(spin);
            g = atomic_load_explicit(&p->gen, memory_order_acquire);
        }
        if (g == seen) {
            take_own_affinity_back(w);
            pthread_mutex_lock(&p->mu);
            while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen) pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        seen = g;
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) break;
        step_aside_from_caller(w);
        p->fn(p->arg, w->ith, p->n);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

static int online_cores(void) {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* Start workers 1..n-1 with fresh synchronisation. On a pthread_create failure the pool keeps the workers that
 * started (p->n shrinks to match; jobs get nth = p->n) and returns the index that failed, else 0. */
static int start_workers(asw_pool *p) {
    atomic_store_explicit(&p->gen, 0u, memory_order_relaxed);
    atomic_store_explicit(&p->pending, 0, memory_order_relaxed);
    atomic_store_explicit(&p->stop, 0, memory_order_relaxed);
    atomic_store_explicit(&p->caller_cpu, -1, memory_order_relaxed);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    p->forks = atomic_load_explicit(&fork_count, memory_order_relaxed);
    pthread_attr_t attr;
    int have_attr = pthread_attr_init(&attr) == 0;
    size_t stack = 0;
    if (have_attr && pthread_attr_getstacksize(&attr, &stack) == 0 && stack < WORKER_STACK)
        (void)pthread_attr_setstacksize(&attr, WORKER_STACK); /* on failure: the default, as without attr */
    int failed = 0;
    for (int i = 1; i < p->n && !failed; i++) {
        worker *w = &p->workers[i - 1];
        w->pool = p;
        w->ith = i;
        w->stepped_aside = 0; /* after fork(): the parent's worker may have stepped aside */
        if (pthread_create(&w->thread, have_attr ? &attr : NULL, worker_main, w) != 0) {
            p->n = i;
            failed = i;
        }
    }
    if (have_attr) pthread_attr_destroy(&attr);
    return failed;
}

asw_pool *asw_pool_new(int n_threads) {
    pthread_once(&atfork_once, register_atfork);
    if (n_threads <= 0) n_threads = online_cores();
    if (n_threads > 1024) {
        asw_set_error("n_threads %d is more than 1024", n_threads);
        return NULL;
    }
    asw_pool *p = calloc(1, sizeof *p);
    if (p == NULL) {
        asw_set_error("out of memory (thread pool)");
        return NULL;
    }
    p->n = n_threads;
    if (n_threads > 1) {
        p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
        if (p->workers == NULL) {
            asw_set_error("out of memory (thread pool)");
            free(p);
            return NULL;
        }
    }
    int failed = start_workers(p);
    if (failed) {
        asw_set_error("pthread_create failed for worker %d of %d", failed, n_threads);
        asw_pool_free(p); /* stops and joins the workers that did start */
        return NULL;
    }
    return p;
}

void asw_pool_free(asw_pool *p) {
    if (p == NULL) return;
    if (workers_are_ours(p)) {
        if (p->n > 1) {
            atomic_store_explicit(&p->stop, 1, memory_order_release);
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add_explicit(&p->gen, 1u, memory_order_release);
            pthread_cond_broadcast(&p->wake);
            pthread_mutex_unlock(&p->mu);
            for (int i = 1; i < p->n; i++) pthread_join(p->workers[i - 1].thread, NULL);
        }
        pthread_cond_destroy(&p->done);
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->mu);
    } /* else forked: the workers are gone and destroying a condition they waited on would block for them */
    free(p->workers);
    free(p);
}

int asw_pool_size(const asw_pool *p) { return p->n; }

void asw_pool_run(asw_pool *p, asw_task_fn fn, void *arg) {
    if (p->n > 1 && !workers_are_ours(p)) start_workers(p); /* forked: fewer workers if some fail to start */
    if (p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    atomic_store_explicit(&p->caller_cpu, current_cpu(), memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1u, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);

    fn(arg, 0, p->n);

    for (int spin = 0; spin < SPIN_PAUSE + SPIN_YIELD; spin++) {
        if (atomic_load_explicit(&p->pending, memory_order_acquire) == 0) return;
        pause_or_yield(spin);
    }
    pthread_mutex_lock(&p->mu);
    while (atomic_load_explicit(&p->pending, memory_order_acquire) != 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
