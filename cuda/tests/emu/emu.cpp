#include "shim.h"
thread_local emu_dim3 threadIdx;
emu_dim3 blockIdx, blockDim, gridDim;
bool emu_sequential = true;
std::barrier<>* emu_block_barrier = nullptr;
std::barrier<>* emu_warp_barrier[32] = {};
double emu_slots[1024];
void emu_sync_block() { emu_block_barrier->arrive_and_wait(); }
void emu_sync_warp(unsigned w) { emu_warp_barrier[w]->arrive_and_wait(); }

// One thread after another: indices for the next call.
extern "C" void emu_set(unsigned gx, unsigned bx, unsigned by, unsigned b, unsigned tx, unsigned ty) {
    emu_sequential = true;
    gridDim = {gx, 1, 1}; blockDim = {bx, by, 1}; blockIdx = {b, 0, 0}; threadIdx = {tx, ty, 0};
}

// The kernels' `__shared__` arrays (the shim's section), filled with 0xFF bytes (NaN floats)
// before each block as a GPU's shared memory holds garbage.
extern "C" char __start_emu_shared[] __attribute__((weak));
extern "C" char __stop_emu_shared[] __attribute__((weak));

// Concurrent threads: set up block b (barriers for bx * by threads), before its threads start.
extern "C" void emu_block(unsigned gx, unsigned bx, unsigned by, unsigned b) {
    emu_sequential = false;
    if (__start_emu_shared != nullptr && __stop_emu_shared > __start_emu_shared)
        std::memset(__start_emu_shared, 0xFF, (size_t)(__stop_emu_shared - __start_emu_shared));
    gridDim = {gx, 1, 1}; blockDim = {bx, by, 1}; blockIdx = {b, 0, 0};
    unsigned n = bx * by;
    delete emu_block_barrier;
    emu_block_barrier = new std::barrier<>(n);
    for (unsigned w = 0; w < 32; ++w) {
        delete emu_warp_barrier[w];
        emu_warp_barrier[w] = nullptr;
        if (32 * w < n) emu_warp_barrier[w] = new std::barrier<>(n - 32 * w < 32 ? n - 32 * w : 32);
    }
}

// Called first by each concurrent thread.
extern "C" void emu_thread(unsigned tx, unsigned ty) { threadIdx = {tx, ty, 0}; }
