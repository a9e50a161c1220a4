/* This machine's byte dot-product peak: AVX512-VNNI VPDPBUSD (uint8 x int8 products summed
 * into int32 lanes, 64 multiply-accumulates per instruction) on registers, one OpenMP thread per
 * core, in MACs per second. Twelve independent accumulators cover the instruction's latency, as
 * a register tile of the sub-byte kernels does. Prints "vnni <G-MACs/s>", or nothing on a CPU
 * without AVX512-VNNI.
 * Build: cc -O3 -march=native -fopenmp dot_peak.c
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>

#define REPEATS 10000000L
#define ACCUMULATORS 12 /* as EACH lists them */

#ifdef __AVX512VNNI__
/* REPEATS steps of ACCUMULATORS dot products, the loop in assembly: written in C (an array of
 * accumulators or twelve named ones, with the intrinsic), GCC 12 copied every accumulator once
 * per step, 24 vector moves per 12 dot products, which cost a third of the measured peak. */
static __attribute__((noinline)) int64_t dot_steps(__m512i a, __m512i w) {
#define EACH(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define DECLARE(i) __m512i acc##i = _mm512_set1_epi32(i);
#define STEP(i) "vpdpbusd %[w], %[a], %[acc" #i "]\n\t"
#define OPERAND(i) [acc##i] "+v"(acc##i),
#define SUM(i) sum += _mm512_reduce_add_epi32(acc##i);
  EACH(DECLARE)
  long steps = REPEATS;
  __asm__ volatile("1:\n\t" EACH(STEP) "dec %[steps]\n\tjnz 1b"
                   : EACH(OPERAND)[steps] "+r"(steps)
                   : [a] "v"(a), [w] "v"(w)
                   : "cc");
  int64_t sum = 0;
  EACH(SUM)
  return sum;
}
#endif

int main(void) {
#ifdef __AVX512VNNI__
  double start = 0, seconds = 0;
  int64_t sink = 0;
#pragma omp parallel reduction(+ : sink)
  {
    __m512i a = _mm512_set1_epi32(0x01020304);
    __m512i w = _mm512_set1_epi32(0x05060708 + omp_get_thread_num());
#pragma omp barrier
#pragma omp master
    start = omp_get_wtime();
    sink += dot_steps(a, w);
#pragma omp barrier
#pragma omp master
    seconds = omp_get_wtime() - start;
  }
  double macs = (double)omp_get_max_threads() * REPEATS * ACCUMULATORS * 64;
  printf("vnni %.1f\n", macs / seconds / 1e9);
  if (sink == 42) printf("\n"); /* keep the sums */
#endif
  return 0;
}
