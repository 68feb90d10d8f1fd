/* pool_placement.c — checks that a thread-pool worker found on its caller's core moves off it (threadpool.c's
 * step_aside_from_caller) and takes its own affinity back when it goes to sleep.
 *
 *   pool_placement        exit 0: passed (or skipped: not Linux, or fewer than 2 usable cores), 1: failed
 *
 * The scheduler's misplacement (a KVM guest waking the worker on the caller's core) cannot be ordered on demand, so
 * each round recreates it: the caller is pinned to core A; one job pins the worker to A too, the next widens the
 * worker's affinity to A and B again while it runs on A (widening moves no thread), and the job after that records
 * the core the worker runs it on, which must be B. Then the caller moves to B: the worker must step aside to A, and
 * once it sleeps, its affinity must be A and B again, not the narrowed one. */
#if defined(__linux__)
#define _GNU_SOURCE
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <stdio.h>
#include <time.h>

#include "../src/threadpool.h"

#if defined(__linux__)
enum { ROUNDS = 20 };

typedef struct {
    cpu_set_t mask;   /* job_set_mask: the worker's new affinity */
    int worker_cpu;   /* job_where: the core worker 1 ran the job on */
    pid_t worker_tid; /* job_where: worker 1's thread id */
} job_state;

static void job_set_mask(void *arg, int ith, int nth) {
    (void)nth;
    job_state *s = arg;
    if (ith == 1) (void)sched_setaffinity(0, sizeof s->mask, &s->mask);
}

static void job_where(void *arg, int ith, int nth) {
    (void)nth;
    job_state *s = arg;
    if (ith != 1) return;
    s->worker_cpu = sched_getcpu();
    s->worker_tid = (pid_t)syscall(SYS_gettid);
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

int main(void) {
    cpu_set_t all;
    if (sched_getaffinity(0, sizeof all, &all) != 0 || CPU_COUNT(&all) < 2) {
        printf("pool_placement: skipped (fewer than 2 usable cores)\n");
        return 0;
    }
    int a = -1, b = -1;
    for (int c = 0; c < CPU_SETSIZE && b < 0; c++)
        if (CPU_ISSET(c, &all)) {
            if (a < 0)
                a = c;
            else
                b = c;
        }
    cpu_set_t two, only_a;
    CPU_ZERO(&two);
    CPU_SET(a, &two);
    CPU_SET(b, &two);
    CPU_ZERO(&only_a);
    CPU_SET(a, &only_a);

    /* A and B only, before the pool starts: its worker inherits them as its own affinity (on a machine with more
     * cores, a worker that kept every core could step aside to a third one) */
    if (sched_setaffinity(0, sizeof two, &two) != 0) {
        printf("pool_placement: skipped (cannot restrict the caller to two cores)\n");
        return 0;
    }
    asw_pool *pool = asw_pool_new(2);
    if (pool == NULL) {
        printf("pool_placement: asw_pool_new failed\n");
        return 1;
    }
    int failed = 0;
    if (sched_setaffinity(0, sizeof only_a, &only_a) != 0) {
        printf("pool_placement: skipped (cannot pin the caller)\n");
        asw_pool_free(pool);
        return 0;
    }
    job_state s;
    for (int round = 0; round < ROUNDS && !failed; round++) {
        s.mask = only_a;
        asw_pool_run(pool, job_set_mask, &s); /* the worker now runs on A, the caller's core */
        s.mask = two;
        asw_pool_run(pool, job_set_mask, &s); /* may run on A or B again; still on A */
        asw_pool_run(pool, job_where, &s);
        if (s.worker_cpu != b) {
            printf("pool_placement: round %d: the worker ran on core %d, the caller's is %d (expected %d)\n", round,
                   s.worker_cpu, a, b);
            failed = 1;
        }
    }
    cpu_set_t only_b;
    CPU_ZERO(&only_b);
    CPU_SET(b, &only_b);
    if (!failed && sched_setaffinity(0, sizeof only_b, &only_b) == 0) {
        /* the worker runs on B; the caller moves there: the worker steps aside to A, its affinity narrowed by the
         * pool (not by this check) */
        asw_pool_run(pool, job_where, &s);
        if (s.worker_cpu != a) {
            printf("pool_placement: the worker ran on core %d after the caller moved to %d (expected %d)\n",
                   s.worker_cpu, b, a);
            failed = 1;
        }
    }
    if (!failed) {
        /* once its spin ends it sleeps, its affinity its own again; the spin's sched_yield calls can last long on a
         * busy machine, so wait up to 10 s for it */
        int cores = -1;
        for (int waited = 0; waited < 10000 && cores != 2; waited += 10) {
            sleep_ms(10);
            cpu_set_t now;
            cores = sched_getaffinity(s.worker_tid, sizeof now, &now) == 0 ? CPU_COUNT(&now) : -1;
        }
        if (cores != 2) {
            printf("pool_placement: 10 s on, the worker may use %d cores, expected 2 (A and B)\n", cores);
            failed = 1;
        }
    }
    asw_pool_free(pool);
    if (!failed) printf("pool_placement: passed (%d rounds, cores %d and %d)\n", ROUNDS, a, b);
    return failed;
}
#else
int main(void) {
    printf("pool_placement: skipped (not Linux)\n");
    return 0;
}
#endif
