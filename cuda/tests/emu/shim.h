// Host C++ stand-ins for the CUDA built-ins the kernels use, so that the kernels can run on the
// CPU. Two libraries build on it: tests/emulated.rs runs kernels one thread after another
// (kernels without cross-thread communication) or with one OS thread per CUDA thread, barriers
// standing in for warp shuffles and __syncthreads (emu.cpp); the emulated device (device.cpp)
// runs every CUDA thread of a block as a fiber, switching at those barriers.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstring>
struct emu_dim3 { unsigned int x, y, z; };
extern thread_local emu_dim3 threadIdx;
extern emu_dim3 blockIdx, blockDim, gridDim;
extern bool emu_sequential;
extern double emu_slots[1024];
// Barriers: every thread of the block, the lanes of warp `w`.
void emu_sync_block();
void emu_sync_warp(unsigned w);
#define __global__
#define __device__
#define __forceinline__ static inline  // internal: its `__shared__` statics are not COMDAT (one section)
#define __launch_bounds__(x)
// In a section of their own, which the emulated device fills with 0xFF bytes (NaN floats, -1
// ints) before each block, as a GPU's shared memory starts with whatever was there: a kernel
// that reads an element it did not write gets NaN, not a zero or the last block's value.
#define __shared__ static __attribute__((section("emu_shared")))
// 16-byte aligned as CUDA's: built with `-fsanitize=alignment` and traps on error, a kernel's
// `float4` access to an address that is not (which a GPU fails with "misaligned address")
// stops the emulation with SIGILL instead of running on.
struct alignas(16) float4 { float x, y, z, w; };
inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
inline unsigned int emu_tid() { return threadIdx.y * blockDim.x + threadIdx.x; }
inline void __syncthreads() {
    if (!emu_sequential) emu_sync_block();
}
// A warp's lanes see each other's writes after it.
inline void __syncwarp() {
    if (!emu_sequential) emu_sync_warp(emu_tid() >> 5);
}
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
// Round-to-nearest double arithmetic that the device compiler may not fuse (host C++ in ISO
// mode does not contract a * b + c either).
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
// Every lane of a warp writes its value, waits for the others, reads its partner's, waits again.
template <class T> inline T __shfl_xor_sync(unsigned, T v, int o) {
    if (emu_sequential) return v;
    unsigned int t = emu_tid(), w = t >> 5;
    std::memcpy(&emu_slots[t], &v, sizeof(T));
    emu_sync_warp(w);
    T r;
    std::memcpy(&r, &emu_slots[t ^ (unsigned)o], sizeof(T));
    emu_sync_warp(w);
    return r;
}
inline unsigned int atomicCAS(unsigned int* p, unsigned int c, unsigned int v) {
    std::atomic_ref<unsigned int> a(*p);
    a.compare_exchange_strong(c, v);
    return c;
}
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    std::atomic_ref<unsigned int> a(*p);
    return a.fetch_add(v);
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline double atomicAdd(double* p, double v) {
    std::atomic_ref<double> a(*p);
    return a.fetch_add(v);
}
