/* Memory read bandwidth probe for the benchmark's roofline (bench/side_by_side.py compiles it at bench time).
 *
 *   bandwidth THREADS MIB REPS
 *
 * Allocates MIB MiB (uint64 words, 2 MiB-aligned and marked MADV_HUGEPAGE, first-touched by the thread that later
 * reads each slice), then REPS times: all THREADS threads start together at a barrier and each sums its own
 * contiguous slice (a streaming read, the access pattern of a decode step over the weights). Prints one line per
 * rep, "rep <i> <bytes> <seconds>", and the sums' xor so the reads cannot be optimized away. Exit status 2 on bad arguments, 1 on a system failure.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>

typedef struct {
    const uint64_t *words; /* [count] this thread's slice */
    size_t count;
    uint64_t sum;
    pthread_barrier_t *start;
    pthread_barrier_t *done;
    int reps;
} slice_t;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t sum_words(const uint64_t *w, size_t n) {
    /* 8 independent accumulators: lets the compiler keep several vector loads in flight */
    uint64_t a[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) a[k] += w[i + (size_t)k];
    for (; i < n; i++) a[0] += w[i];
    uint64_t s = 0;
    for (int k = 0; k < 8; k++) s += a[k];
    return s;
}

static void *worker(void *arg) {
    slice_t *s = (slice_t *)arg;
    memset((void *)s->words, 1, s->count * sizeof(uint64_t)); /* first touch: pages local to this thread */
    for (int r = 0; r < s->reps; r++) {
        pthread_barrier_wait(s->start);
        s->sum ^= sum_words(s->words, s->count);
        pthread_barrier_wait(s->done);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s THREADS MIB REPS\n", argv[0]);
        return 2;
    }
    const int threads = atoi(argv[1]);
    const long mib = atol(argv[2]);
    const int reps = atoi(argv[3]);
    if (threads < 1 || threads > 1024 || mib < 1 || reps < 1) {
        fprintf(stderr, "bandwidth: need THREADS in 1..1024, MIB >= 1, REPS >= 1\n");
        return 2;
    }
    const size_t total = (size_t)mib << 20;
    const size_t words = total / sizeof(uint64_t);
    uint64_t *buf = NULL;
    if (posix_memalign((void **)&buf, 2u << 20, words * sizeof(uint64_t)) != 0) {
        fprintf(stderr, "bandwidth: cannot allocate %ld MiB\n", mib);
        return 1;
    }
    /* 2 MiB pages where the system gives them, as the cpu backend asks for its weights (runtime/hugepages.py): the
     * roofline is the fastest the machine streams, so the probe must not be held back by 4 KiB pages either */
#ifdef MADV_HUGEPAGE
    (void)madvise(buf, words * sizeof(uint64_t), MADV_HUGEPAGE);
#endif
    pthread_barrier_t start, done;
    pthread_barrier_init(&start, NULL, (unsigned)threads + 1);
    pthread_barrier_init(&done, NULL, (unsigned)threads + 1);
    slice_t *slices = calloc((size_t)threads, sizeof(slice_t));
    pthread_t *ids = calloc((size_t)threads, sizeof(pthread_t));
    if (slices == NULL || ids == NULL) {
        fprintf(stderr, "bandwidth: out of memory\n");
        return 1;
    }
    const size_t per = words / (size_t)threads;
    for (int t = 0; t < threads; t++) {
        slices[t] = (slice_t){buf + (size_t)t * per, t == threads - 1 ? words - (size_t)t * per : per, 0,
                              &start, &done, reps};
        if (pthread_create(&ids[t], NULL, worker, &slices[t]) != 0) {
            fprintf(stderr, "bandwidth: cannot start thread %d\n", t);
            return 1;
        }
    }
    for (int r = 0; r < reps; r++) {
        pthread_barrier_wait(&start);
        const double t0 = now_s();
        pthread_barrier_wait(&done);
        printf("rep %d %zu %.9f\n", r, words * sizeof(uint64_t), now_s() - t0);
    }
    uint64_t check = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(ids[t], NULL);
        check ^= slices[t].sum;
    }
    printf("check %llu\n", (unsigned long long)check);
    pthread_barrier_destroy(&start);
    pthread_barrier_destroy(&done);
    free(ids);
    free(slices);
    free(buf);
    return 0;
}
