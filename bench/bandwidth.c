/* Memory read bandwidth probe for the benchmark's roofline (bench/side_by_side.py compiles it at bench time).
 *
 *   bandwidth THREADS MIB REPS
 *
 * Allocates MIB MiB (uint64 words, 2 MiB-aligned and marked MADV_HUGEPAGE, first-touched by the thread that later
 * reads each slice), then REPS times: all THREADS threads start together at a barrier and each sums its own
 * contiguous slice (a streaming read, the access pattern of a decode step over the weights). Prints one line per
 * rep, "rep <i> <bytes> <seconds>", and the sums' xor so the reads cannot be optimized away. Exit status 2 on bad
 * arguments, 1 on a system failure.
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

/* One 64-byte vector per cache line (GCC/Clang vector extension: one zmm load per line with AVX-512, two ymm loads
 * with AVX2, four q loads on NEON). The fewest load instructions per byte stream fastest: on a 2-core Xeon
 * (AVX-512) this reader measured ~1.2x a loop over uint64 words that gcc vectorized to 256-bit loads, so a probe
 * built on that loop put the roofline ~20 % too low. */
typedef uint64_t line_t __attribute__((vector_size(64)));

static uint64_t sum_words(const uint64_t *w, size_t n) {
    const line_t *v = (const line_t *)w; /* a slice starts on whole lines from a 2 MiB boundary (main) */
    const size_t lines = n / 8;
    line_t a = {0}, b = {0}; /* two accumulators: loads do not wait on one add chain */
    size_t i = 0;
    for (; i + 2 <= lines; i += 2) {
        a += v[i];
        b += v[i + 1];
    }
    if (i < lines) a += v[i];
    a += b;
    uint64_t s = 0;
    for (int k = 0; k < 8; k++) s += a[k];
    for (size_t j = lines * 8; j < n; j++) s += w[j];
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
    const size_t per = words / (size_t)threads / 8 * 8; /* whole 64-byte lines: sum_words reads aligned vectors */
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
