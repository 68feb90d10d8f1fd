/* Memory read bandwidth probe for the benchmark's roofline (bench/side_by_side.py compiles it at bench time, as a
 * program and as a shared library).
 *
 *   bandwidth THREADS MIB REPS
 *
 * Allocates MIB MiB (uint64 words, 2 MiB-aligned and marked MADV_HUGEPAGE, first-touched by the thread that later
 * reads each slice), then REPS times: all THREADS threads start together at a barrier and each sums its own
 * contiguous slice (a streaming read, the access pattern of a decode step over the weights). Prints one line per
 * rep, "rep <i> <bytes> <seconds>", and the sums' xor so the reads cannot be optimized away. Exit status 2 on bad
 * arguments, 1 on a system failure.
 *
 * Built with -DBANDWIDTH_LIBRARY (no main), the same probe is a library that a process loads to time single reps
 * between its own work (bench/run_engine.py's paired probe: one rep, one decode step, one rep, ...):
 *   bw_probe *bw_open(int threads, long mib);   NULL on failure (the reason on stderr)
 *   double bw_rep(bw_probe *p);                  seconds for one rep over all bw_bytes(p) bytes
 *   size_t bw_bytes(const bw_probe *p);
 *   void bw_close(bw_probe *p);
 * Between reps the reader threads wait at a barrier (asleep), so the caller's own work has the cores to itself.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>

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
    const line_t *v = (const line_t *)w; /* a slice starts on whole lines from a 2 MiB boundary (bw_open) */
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

typedef struct bw_probe bw_probe;

typedef struct {
    bw_probe *probe;
    const uint64_t *words; /* [count] this thread's slice */
    size_t count;
    uint64_t sum;
} slice_t;

struct bw_probe {
    int threads;
    size_t words;          /* in the whole buffer */
    uint64_t *buf;         /* [words] */
    slice_t *slices;       /* [threads] */
    pthread_t *ids;        /* [threads] */
    int started;           /* reader threads running */
    int barriers;          /* start and done initialized */
    int stop;              /* set before the last start barrier: the readers return */
    pthread_barrier_t start, done;
};

static void *worker(void *arg) {
    slice_t *s = (slice_t *)arg;
    memset((void *)s->words, 1, s->count * sizeof(uint64_t)); /* first touch: pages local to this thread */
    for (;;) {
        pthread_barrier_wait(&s->probe->start);
        if (s->probe->stop) return NULL;
        s->sum ^= sum_words(s->words, s->count);
        pthread_barrier_wait(&s->probe->done);
    }
}

size_t bw_bytes(const bw_probe *p) { return p->words * sizeof(uint64_t); }

double bw_rep(bw_probe *p) {
    pthread_barrier_wait(&p->start);
    const double t0 = now_s();
    pthread_barrier_wait(&p->done);
    return now_s() - t0;
}

void bw_close(bw_probe *p) {
    if (p == NULL) return;
    p->stop = 1;
    if (p->started == p->threads) {
        pthread_barrier_wait(&p->start);
        for (int t = 0; t < p->threads; t++) pthread_join(p->ids[t], NULL);
    }
    if (p->barriers) {
        pthread_barrier_destroy(&p->start);
        pthread_barrier_destroy(&p->done);
    }
    free(p->ids);
    free(p->slices);
    free(p->buf);
    free(p);
}

bw_probe *bw_open(int threads, long mib) {
    if (threads < 1 || threads > 1024 || mib < 1) {
        fprintf(stderr, "bandwidth: need THREADS in 1..1024 and MIB >= 1\n");
        return NULL;
    }
    bw_probe *p = calloc(1, sizeof *p);
    if (p == NULL) return NULL;
    p->threads = threads;
    p->words = ((size_t)mib << 20) / sizeof(uint64_t);
    if (posix_memalign((void **)&p->buf, 2u << 20, p->words * sizeof(uint64_t)) != 0) {
        fprintf(stderr, "bandwidth: cannot allocate %ld MiB\n", mib);
        p->buf = NULL;
        bw_close(p);
        return NULL;
    }
    /* 2 MiB pages where the system gives them, as the cpu backend asks for its weights (runtime/hugepages.py): the
     * roofline is the fastest the machine streams, so the probe must not be held back by 4 KiB pages either */
#ifdef MADV_HUGEPAGE
    (void)madvise(p->buf, p->words * sizeof(uint64_t), MADV_HUGEPAGE);
#endif
    p->slices = calloc((size_t)threads, sizeof(slice_t));
    p->ids = calloc((size_t)threads, sizeof(pthread_t));
    if (p->slices == NULL || p->ids == NULL) {
        fprintf(stderr, "bandwidth: out of memory\n");
        bw_close(p);
        return NULL;
    }
    pthread_barrier_init(&p->start, NULL, (unsigned)threads + 1);
    pthread_barrier_init(&p->done, NULL, (unsigned)threads + 1);
    p->barriers = 1;
    const size_t per = p->words / (size_t)threads / 8 * 8; /* whole 64-byte lines: sum_words reads aligned vectors */
    for (int t = 0; t < threads; t++) {
        p->slices[t] = (slice_t){p, p->buf + (size_t)t * per, t == threads - 1 ? p->words - (size_t)t * per : per, 0};
        if (pthread_create(&p->ids[t], NULL, worker, &p->slices[t]) != 0) {
            fprintf(stderr, "bandwidth: cannot start thread %d\n", t);
            /* readers already started wait at a barrier sized for all: they cannot be released, so leak them */
            if (t == 0) bw_close(p);
            return NULL;
        }
        p->started++;
    }
    return p;
}

#ifndef BANDWIDTH_LIBRARY
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
    bw_probe *p = bw_open(threads, mib);
    if (p == NULL) return 1;
    for (int r = 0; r < reps; r++) printf("rep %d %zu %.9f\n", r, bw_bytes(p), bw_rep(p));
    uint64_t check = 0;
    for (int t = 0; t < threads; t++) check ^= p->slices[t].sum;
    printf("check %llu\n", (unsigned long long)check);
    bw_close(p);
    return 0;
}
#endif
