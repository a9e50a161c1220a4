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
#define ACCUMULATORS 12

int main(void) {
#ifdef __AVX512VNNI__
  double start = 0, seconds = 0;
  int64_t sink = 0;
#pragma omp parallel reduction(+ : sink)
  {
    __m512i a = _mm512_set1_epi32(0x01020304);
    __m512i w = _mm512_set1_epi32(0x05060708 + omp_get_thread_num());
    __m512i acc[ACCUMULATORS];
    for (int i = 0; i < ACCUMULATORS; i++) acc[i] = _mm512_set1_epi32(i);
#pragma omp barrier
#pragma omp master
    start = omp_get_wtime();
    for (long r = 0; r < REPEATS; r++) {
      for (int i = 0; i < ACCUMULATORS; i++) acc[i] = _mm512_dpbusd_epi32(acc[i], a, w);
      __asm__ volatile("" : "+v"(a), "+v"(w)); /* operands unknown to the compiler each step */
    }
#pragma omp barrier
#pragma omp master
    seconds = omp_get_wtime() - start;
    for (int i = 0; i < ACCUMULATORS; i++) sink += _mm512_reduce_add_epi32(acc[i]);
  }
  double macs = (double)omp_get_max_threads() * REPEATS * ACCUMULATORS * 64;
  printf("vnni %.1f\n", macs / seconds / 1e9);
  if (sink == 42) printf("\n"); /* keep the sums */
#endif
  return 0;
}
