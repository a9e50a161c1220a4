// What TVM's generated CUDA C uses of CUDA, emulated on the CPU with one OS thread per CUDA
// thread (see cuda_emulator.py). Not a general CUDA emulator: just enough for tvmbits' kernels.
#pragma once
#include <barrier>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

typedef unsigned int uint;
typedef unsigned char uchar;
typedef unsigned short ushort;

struct EmuDim { int x, y, z; };

struct EmuBlock {
  int threads;
  std::unique_ptr<std::barrier<>> all;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::map<std::string, std::vector<char>> shared;
  std::mutex lock;
  std::vector<uint64_t> slots;  // per warp: 32 lanes × 4 words for exchanges
};

static thread_local EmuDim threadIdx, blockIdx, blockDim, gridDim;
static thread_local EmuBlock* emu_block;

#define __global__
#define __launch_bounds__(n)
#define __restrict__ __restrict
#define __device__
#define __forceinline__ inline

static inline int emu_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
static inline void emu_warp_sync() { emu_block->warps[emu_tid() / 32]->arrive_and_wait(); }
static inline void __syncthreads() { emu_block->all->arrive_and_wait(); }
static inline unsigned __activemask() { return 0xffffffffu; }
static inline int __popc(unsigned v) { return __builtin_popcount(v); }
static inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }

template <class A, class B> static inline std::common_type_t<A, B> min(A a, B b) { return a < b ? a : b; }
template <class A, class B> static inline std::common_type_t<A, B> max(A a, B b) { return a > b ? a : b; }

// One block's __shared__ array, made by the first thread that asks, filled with garbage.
static inline void* emu_shared(const char* name, size_t bytes) {
  std::lock_guard<std::mutex> guard(emu_block->lock);
  auto& memory = emu_block->shared[name];
  if (memory.empty()) {
    memory.resize(bytes);
    std::mt19937 random(1);
    for (auto& byte : memory) byte = static_cast<char>(random());
  }
  return memory.data();
}

template <class T> static inline T __shfl_sync(unsigned, T value, int source, int width = 32) {
  static_assert(sizeof(T) <= 8, "exchange of up to 8 bytes");
  int lane = emu_tid() % 32;
  uint64_t* slots = emu_block->slots.data() + (emu_tid() / 32) * 32 * 4;
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  emu_warp_sync();
  slots[lane * 4] = bits;
  emu_warp_sync();
  bits = slots[((lane / width) * width + source % width) * 4];
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// mma.sync.aligned.m8n8k128.row.col.s32.b1.b1.s32.and.popc (kind 0) and
// mma.sync.aligned.m8n8k16.row.col.s32.u8.{s8,u8}.s32 (kinds 1, 2), from the PTX ISA's fragment
// layouts: lane t holds A[t / 4][32 bits at 32·(t % 4)], B[32 bits at 32·(t % 4)][t / 4]
// (bits, or 4 bytes with the lowest byte first), and C/D[t / 4][2·(t % 4) + i], i = 0, 1.
static inline void emu_mma(int& d0, int& d1, unsigned a, unsigned b, int c0, int c1, int kind) {
  int lane = emu_tid() % 32;
  uint64_t* slots = emu_block->slots.data() + (emu_tid() / 32) * 32 * 4;
  emu_warp_sync();  // the slots may still be read by an earlier exchange
  slots[lane * 4] = a;
  slots[lane * 4 + 1] = b;
  emu_warp_sync();
  int row = lane / 4, out[2] = {c0, c1};
  for (int i = 0; i < 2; ++i) {
    int col = (lane % 4) * 2 + i;
    for (int q = 0; q < 4; ++q) {
      uint32_t av = static_cast<uint32_t>(slots[(row * 4 + q) * 4]);
      uint32_t bv = static_cast<uint32_t>(slots[(col * 4 + q) * 4 + 1]);
      if (kind == 0) {
        out[i] += __builtin_popcount(av & bv);
        continue;
      }
      for (int e = 0; e < 4; ++e) {
        int x = (av >> (8 * e)) & 0xff;
        int y = kind == 1 ? static_cast<int>(static_cast<int8_t>((bv >> (8 * e)) & 0xff)) : static_cast<int>((bv >> (8 * e)) & 0xff);
        out[i] += x * y;
      }
    }
  }
  emu_warp_sync();
  d0 = out[0];
  d1 = out[1];
}

// Run `kernel` over the grid, one block after another, each block's threads at once.
static inline void emu_run_grid(int gx, int gy, int gz, int bx, int by, int bz, const std::function<void()>& kernel) {
  int threads = bx * by * bz;
  for (int z = 0; z < gz; ++z)
    for (int y = 0; y < gy; ++y)
      for (int x = 0; x < gx; ++x) {
        EmuBlock block;
        block.threads = threads;
        block.all = std::make_unique<std::barrier<>>(threads);
        for (int w = 0; w < (threads + 31) / 32; ++w)
          block.warps.push_back(std::make_unique<std::barrier<>>(std::min(32, threads - 32 * w)));
        block.slots.assign(((threads + 31) / 32) * 32 * 4, 0);
        std::vector<std::thread> workers;
        for (int t = 0; t < threads; ++t)
          workers.emplace_back([&, t] {
            blockDim = {bx, by, bz};
            gridDim = {gx, gy, gz};
            blockIdx = {x, y, z};
            threadIdx = {t % bx, (t / bx) % by, t / (bx * by)};
            emu_block = &block;
            kernel();
          });
        for (auto& worker : workers) worker.join();
      }
}
