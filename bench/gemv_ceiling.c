/* How close the cpu backend's decode GEMV, alone, comes to a bare streaming read: the ceiling of the roofline share
 * a decode step could reach, before the step's own costs (a Qwen2-0.5B step is 97 matmuls, each ending at a join,
 * each stream starting cold). bench/side_by_side.py builds and runs it after the engines.
 *
 *   gemv_ceiling THREADS MIB PAIRS
 *
 * Allocates MIB MiB of fp16 weights as one matrix of COLS columns (2 MiB pages where the kernel gives them), then
 * PAIRS times: one rep of bench/bandwidth.c's probe (its own MIB MiB buffer, THREADS readers), then the decode GEMV
 * of the kernel set the library picks here (kernels_select: ASW_KERNELS, else the CPU's best) over every row, the
 * rows split into THREADS contiguous ranges run on the library's own thread pool. Prints one line per pair,
 * "pair <i> <probe GB/s> <gemv GB/s>", and the kernel set's name first ("kernels <name>"). Exit status 2 on bad
 * arguments, 1 on a system failure.
 *
 * Built from the library's C sources under native/src (not the installed library: the kernels and the pool are
 * internal) and bandwidth.c compiled with -DBANDWIDTH_LIBRARY.
 */
#define _DEFAULT_SOURCE /* madvise */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "asw.h"
#include "../native/src/kernels.h"
#include "../native/src/threadpool.h"

typedef struct bw_probe bw_probe; /* bench/bandwidth.c, built as a library */
bw_probe *bw_open(int threads, long mib);
double bw_rep(bw_probe *p);
size_t bw_bytes(const bw_probe *p);
void bw_close(bw_probe *p);

enum { COLS = 896 }; /* the Qwen2-0.5B shape's hidden size: the inner size of all its decode matmuls but down */

typedef struct {
    const asw_kernels *k;
    const uint16_t *W; /* [rows, COLS] fp16 */
    int64_t rows;
    const float *x;    /* [COLS] */
    float *y;          /* [rows] */
} gemv_job;

static void gemv_task(void *arg, int ith, int nth) {
    const gemv_job *j = arg;
    int64_t r0 = j->rows * ith / nth, r1 = j->rows * (ith + 1) / nth;
    if (r0 < r1) j->k->matmul(ASW_DTYPE_F16, j->y, j->rows, j->W, COLS, r0, r1, j->x, COLS, 1);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: gemv_ceiling THREADS MIB PAIRS\n");
        return 2;
    }
    int threads = atoi(argv[1]), pairs = atoi(argv[3]);
    long mib = atol(argv[2]);
    if (threads < 1 || threads > 1024 || mib < 1 || mib > (1L << 20) || pairs < 1) {
        fprintf(stderr, "gemv_ceiling: THREADS in 1..1024, MIB in 1..1048576, PAIRS >= 1\n");
        return 2;
    }
    const char *why = NULL;
    const asw_kernels *k = kernels_select(&why);
    if (k == NULL) {
        fprintf(stderr, "gemv_ceiling: %s\n", why != NULL ? why : "no kernel set");
        return 1;
    }
    int64_t rows = (int64_t)mib * 1024 * 1024 / (COLS * (int64_t)sizeof(uint16_t));
    size_t bytes = (size_t)rows * COLS * sizeof(uint16_t);
    uint16_t *W = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); /* [rows, COLS] */
    float *x = malloc(sizeof(float) * COLS);                                                      /* [COLS] */
    float *y = malloc(sizeof(float) * (size_t)rows);                                             /* [rows] */
    asw_pool *pool = asw_pool_new(threads);
    bw_probe *probe = bw_open(threads, mib);
    int rc = 1;
    if (W == MAP_FAILED || x == NULL || y == NULL || pool == NULL || probe == NULL) {
        fprintf(stderr, "gemv_ceiling: out of memory or threads for %ld MiB\n", mib);
        goto done;
    }
    (void)madvise(W, bytes, MADV_HUGEPAGE); /* advice only */
    for (size_t i = 0; i < bytes / sizeof(uint16_t); i++) /* fp16 normals in [0.5, 1) */
        W[i] = (uint16_t)(0x3800u + ((i * 2654435761u) >> 22 & 0x3ffu));
    for (int i = 0; i < COLS; i++) x[i] = (float)(i % 17) * 0.01f;
    gemv_job job = {k, W, rows, x, y};
    asw_pool_run(pool, gemv_task, &job); /* threads started, pages touched */
    printf("kernels %s\n", k->name);
    float sink = 0.0f;
    for (int i = 0; i < pairs; i++) {
        double probe_s = bw_rep(probe);
        double t0 = now_s();
        asw_pool_run(pool, gemv_task, &job);
        double gemv_s = now_s() - t0;
        sink += y[(size_t)i % (size_t)rows];
        printf("pair %d %.3f %.3f\n", i, (double)bw_bytes(probe) / probe_s / 1e9, (double)bytes / gemv_s / 1e9);
    }
    fprintf(stderr, "(checksum %g)\n", (double)sink);
    rc = 0;
done:
    if (probe != NULL) bw_close(probe);
    if (pool != NULL) asw_pool_free(pool);
    if (W != MAP_FAILED) munmap(W, bytes);
    free(x);
    free(y);
    return rc;
}
