/* Multiply-adds per second of one core: plain f32 FMA against the bf16 dot-product instruction (VDPBF16PS), which
 * issue 9 named as a lead for prefill. It decides whether a bf16 prefill kernel could pay on a CPU: VDPBF16PS does
 * two multiply-adds per f32 lane, so it only helps where it issues at more than half FMA's rate.
 *
 *   gcc -O2 -o fma_peak bench/fma_peak.c && ./fma_peak [ROUNDS]
 *
 * Each test runs 24 independent accumulator chains (more than FMA latency x ports on any current x86 core), so it
 * measures issue rate, not latency. Prints one line per round and instruction set the CPU has:
 * "<test> <G instructions/s> <G multiply-adds/s>". Single-threaded; pin it (taskset) on a busy machine.
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { CHAINS = 24 };
static const long ITERATIONS = 50 * 1000 * 1000;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* One FMA test per vector width: CHAINS accumulators, each fed acc += x * y every iteration; the asm barrier keeps
 * the operands in registers and the loop from being folded. */
#define FMA_TEST(name, attr, vec, set1, fmadd, first)                                                            \
    __attribute__((target(attr), noinline)) static float name(long iterations) {                              \
        vec acc[CHAINS], x = set1(1.0f), y = set1(1e-7f);                                                      \
        for (int i = 0; i < CHAINS; i++) acc[i] = set1((float)i);                                              \
        for (long n = 0; n < iterations; n++) {                                                                \
            _Pragma("GCC unroll 24") for (int i = 0; i < CHAINS; i++) acc[i] = fmadd(x, y, acc[i]);           \
            __asm__("" : "+v"(x), "+v"(y));                                                                    \
        }                                                                                                      \
        float s = 0.0f;                                                                                        \
        for (int i = 0; i < CHAINS; i++) s += first(acc[i]);                                                   \
        return s;                                                                                              \
    }

FMA_TEST(fma_ymm, "avx2,fma", __m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_cvtss_f32)
FMA_TEST(fma_zmm, "avx512f", __m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_cvtss_f32)

__attribute__((target("avx512f,avx512bf16"), noinline)) static float dpbf16_zmm(long iterations) {
    __m512 acc[CHAINS];
    __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3400); /* 1.0, ~1.2e-7 */
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long n = 0; n < iterations; n++) {
#pragma GCC unroll 24
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_dpbf16_ps(acc[i], x, y);
        __asm__("" : "+v"(x), "+v"(y));
    }
    float s = 0.0f;
    for (int i = 0; i < CHAINS; i++) s += _mm512_cvtss_f32(acc[i]);
    return s;
}

typedef struct {
    const char *name;
    int supported;       /* the CPU has the instruction */
    int macs;            /* multiply-adds per instruction */
    float (*run)(long);
} test_t;

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 3;
    if (rounds < 1) {
        fprintf(stderr, "usage: fma_peak [ROUNDS >= 1]\n");
        return 2;
    }
    __builtin_cpu_init();
    const test_t tests[] = {
        {"fma-ymm-f32", __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"), 8, fma_ymm},
        {"fma-zmm-f32", __builtin_cpu_supports("avx512f"), 16, fma_zmm},
        {"vdpbf16ps-zmm", __builtin_cpu_supports("avx512bf16"), 32, dpbf16_zmm},
    };
    float sink = 0.0f;
    for (int r = 0; r < rounds; r++)
        for (size_t t = 0; t < sizeof tests / sizeof tests[0]; t++) {
            if (!tests[t].supported) {
                if (r == 0) printf("%-14s not supported by this CPU\n", tests[t].name);
                continue;
            }
            double t0 = now_s();
            sink += tests[t].run(ITERATIONS);
            double per_s = (double)ITERATIONS * CHAINS / (now_s() - t0);
            printf("%-14s %6.2f G instructions/s %7.1f G multiply-adds/s\n", tests[t].name, per_s / 1e9,
                   per_s * tests[t].macs / 1e9);
        }
    return sink == 12345.0f; /* keeps the results live */
}
