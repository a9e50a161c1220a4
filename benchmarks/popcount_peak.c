/* This machine's binary dot-product peak: XOR + popcount + accumulate over L1-resident words,
 * one OpenMP thread per core, in bit-MACs per second (one bit-MAC = one bit of a XOR w counted).
 *
 * Loops, each over the same 4 KiB pair of arrays, repeated:
 *   scalar   64-bit XOR + POPCNT + ADD, four independent accumulators
 *   avx2     256-bit XOR, nibble-table popcount (VPSHUFB), byte counts summed over 8 steps,
 *            widened by VPSADBW
 *   avx512   512-bit XOR + VPOPCNTQ + VPADDQ (AVX-512 VPOPCNTDQ)
 *   avx512-registers  the same three instructions on registers only, no loads: what a kernel
 *            that reuses its words from registers (the conv's register tile) can reach at best
 *   mixed    avx512 and scalar interleaved in one loop: the vector and scalar popcounts issue
 *            on different ports, so the pair can beat either alone
 * Prints one line per loop: "name G-bit-MACs/s"; loops the CPU lacks are skipped.
 * Build: cc -O3 -march=native -fopenmp popcount_peak.c
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>

#define WORDS 512 /* uint64 words per array: 4 KiB, L1-resident */
#define REPEATS 200000

static uint64_t a_words[WORDS] __attribute__((aligned(64)));
static uint64_t w_words[WORDS] __attribute__((aligned(64)));

static uint64_t scalar_pass(const uint64_t *a, const uint64_t *w) {
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (int i = 0; i < WORDS; i += 4) {
    s0 += __builtin_popcountll(a[i] ^ w[i]);
    s1 += __builtin_popcountll(a[i + 1] ^ w[i + 1]);
    s2 += __builtin_popcountll(a[i + 2] ^ w[i + 2]);
    s3 += __builtin_popcountll(a[i + 3] ^ w[i + 3]);
  }
  return s0 + s1 + s2 + s3;
}

#ifdef __AVX2__
static uint64_t avx2_pass(const uint64_t *a, const uint64_t *w) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  __m256i total = _mm256_setzero_si256();
  for (int i = 0; i < WORDS; i += 4 * 8) {
    __m256i bytes = _mm256_setzero_si256(); /* at most 8 steps x 8 per byte: no overflow */
    for (int j = 0; j < 4 * 8; j += 4) {
      __m256i x = _mm256_xor_si256(_mm256_load_si256((const __m256i *)(a + i + j)),
                                   _mm256_load_si256((const __m256i *)(w + i + j)));
      __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(x, low));
      __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
      bytes = _mm256_add_epi8(bytes, _mm256_add_epi8(lo, hi));
    }
    total = _mm256_add_epi64(total, _mm256_sad_epu8(bytes, _mm256_setzero_si256()));
  }
  return _mm256_extract_epi64(total, 0) + _mm256_extract_epi64(total, 1) +
         _mm256_extract_epi64(total, 2) + _mm256_extract_epi64(total, 3);
}
#endif

#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
static uint64_t avx512_pass(const uint64_t *a, const uint64_t *w) {
  __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
  for (int i = 0; i < WORDS; i += 16) {
    s0 = _mm512_add_epi64(s0, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_load_si512(a + i),
                                                                   _mm512_load_si512(w + i))));
    s1 = _mm512_add_epi64(s1, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_load_si512(a + i + 8),
                                                                   _mm512_load_si512(w + i + 8))));
  }
  return _mm512_reduce_add_epi64(_mm512_add_epi64(s0, s1));
}

static uint64_t mixed_pass(const uint64_t *a, const uint64_t *w) {
  /* per step: 16 words by vector, 4 by scalar */
  __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
  uint64_t t0 = 0, t1 = 0, t2 = 0, t3 = 0;
  int i = 0;
  for (; i + 20 <= WORDS; i += 20) {
    s0 = _mm512_add_epi64(s0, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(a + i),
                                                                   _mm512_loadu_si512(w + i))));
    s1 = _mm512_add_epi64(s1, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(a + i + 8),
                                                                   _mm512_loadu_si512(w + i + 8))));
    t0 += __builtin_popcountll(a[i + 16] ^ w[i + 16]);
    t1 += __builtin_popcountll(a[i + 17] ^ w[i + 17]);
    t2 += __builtin_popcountll(a[i + 18] ^ w[i + 18]);
    t3 += __builtin_popcountll(a[i + 19] ^ w[i + 19]);
  }
  for (; i < WORDS; i++) t0 += __builtin_popcountll(a[i] ^ w[i]);
  return _mm512_reduce_add_epi64(_mm512_add_epi64(s0, s1)) + t0 + t1 + t2 + t3;
}
#endif

#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
#define REGISTER_STEPS 100000000L
/* REGISTER_STEPS steps of six XOR + VPOPCNTQ + VPADDQ, in assembly so that nothing is hoisted
 * out of the loop and no accumulator is copied (GCC 12 copies them); the sum of the counts. */
static __attribute__((noinline)) uint64_t register_steps(__m512i a, __m512i w) {
#define EACH(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define DECLARE(i) __m512i acc##i = _mm512_setzero_si512(), t##i;
#define STEP(i) "vpxorq %[w], %[a], %[t" #i "]\n\tvpopcntq %[t" #i "], %[t" #i "]\n\t" \
                "vpaddq %[t" #i "], %[acc" #i "], %[acc" #i "]\n\t"
#define OPERAND(i) [acc##i] "+v"(acc##i), [t##i] "=&v"(t##i),
#define SUM(i) sum += _mm512_reduce_add_epi64(acc##i);
  EACH(DECLARE)
  long steps = REGISTER_STEPS;
  __asm__ volatile("1:\n\t" EACH(STEP) "dec %[steps]\n\tjnz 1b"
                   : EACH(OPERAND)[steps] "+r"(steps)
                   : [a] "v"(a), [w] "v"(w)
                   : "cc");
  uint64_t sum = 0;
  EACH(SUM)
  return sum;
}

static void run_registers(void) {
  __m512i a = _mm512_load_si512(a_words), w = _mm512_load_si512(w_words);
  uint64_t expected = 0;
  for (int i = 0; i < 8; i++) expected += __builtin_popcountll(a_words[i] ^ w_words[i]);
  expected *= 6 * REGISTER_STEPS;
  double start = 0, seconds = 0;
  uint64_t wrong = 0;
#pragma omp parallel reduction(+ : wrong)
  {
#pragma omp barrier
#pragma omp master
    start = omp_get_wtime();
    wrong += register_steps(a, w) != expected;
#pragma omp barrier
#pragma omp master
    seconds = omp_get_wtime() - start;
  }
  double bit_macs = (double)omp_get_max_threads() * REGISTER_STEPS * 6 * 512;
  printf("avx512-registers %.1f%s\n", bit_macs / seconds / 1e9, wrong ? " WRONG" : "");
}
#endif

typedef uint64_t (*pass_fn)(const uint64_t *, const uint64_t *);

static void run(const char *name, pass_fn pass) {
  uint64_t expected = scalar_pass(a_words, w_words), wrong = 0;
  double start = 0, seconds = 0;
#pragma omp parallel reduction(+ : wrong)
  {
#pragma omp barrier
#pragma omp master
    start = omp_get_wtime();
    for (int r = 0; r < REPEATS; r++) {
      uint64_t got = pass(a_words, w_words);
      wrong += got != expected;
      __asm__ volatile("" ::: "memory"); /* keep every pass */
    }
#pragma omp barrier
#pragma omp master
    seconds = omp_get_wtime() - start;
  }
  double bit_macs = (double)omp_get_max_threads() * REPEATS * WORDS * 64;
  printf("%s %.1f%s\n", name, bit_macs / seconds / 1e9, wrong ? " WRONG" : "");
}

int main(void) {
  uint64_t state = 0x9E3779B97F4A7C15ull;
  for (int i = 0; i < WORDS; i++) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    a_words[i] = state;
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    w_words[i] = state;
  }
  run("scalar", scalar_pass);
#ifdef __AVX2__
  run("avx2", avx2_pass);
#endif
#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
  run("avx512", avx512_pass);
  run("mixed", mixed_pass);
  run_registers();
#endif
  return 0;
}
