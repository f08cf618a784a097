// An emulated CUDA device: the parts of the driver API, cuBLAS and NVRTC that mote-cuda uses,
// implemented on the CPU, with the crate's own kernels compiled as host C++ (shim.h) and run
// block after block, every CUDA thread of a block a fiber that switches at __syncthreads and
// warp shuffles. Built as `libcuda.so` (with empty `libcublas.so`, `libcublasLt.so` and
// `libnvrtc.so` that depend on it), it lets the crate's own launch code (argument lists, grid
// sizes, held-back work, copies, cuBLAS calls, graph capture and replay) run where no GPU is:
// the GPU tests run against it (tests/common), and `mote train --device cuda` runs on it with
// `LD_LIBRARY_PATH` (examples/emulated_device.rs).
//
// What it checks: results, argument lists, the order of work on a stream, copies and memsets
// inside live allocations, that a captured stream is not synchronised, that replays see the
// arena as it is then. What it cannot: timing, concurrency between streams (every operation runs
// when it is issued, or when a graph replays it), races between CUDA threads (a block's threads
// run one after another between barriers), and accesses by kernels outside the allocation.
#include "device.h"

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

// Kernel state (shim.h).
thread_local emu_dim3 threadIdx;
emu_dim3 blockIdx, blockDim, gridDim;
bool emu_sequential = false;
double emu_slots[1024];

namespace {

// The subset of the driver's result codes used here (values as in cuda.h).
constexpr int OK = 0, INVALID_VALUE = 1, INVALID_HANDLE = 400, NOT_FOUND = 500,
              ILLEGAL_ADDRESS = 700, CAPTURE_UNSUPPORTED = 900, CAPTURE_INVALIDATED = 901;

// One lock for the whole device: tests on several host threads share it, and the kernels'
// built-ins are process globals.
std::recursive_mutex& lock() {
    static std::recursive_mutex m;
    return m;
}
#define GUARD std::lock_guard<std::recursive_mutex> guard(lock())

std::map<std::string, EmuBinder>& registry() {
    static std::map<std::string, EmuBinder> r;
    return r;
}

// ---- Fibers: the threads of one block ----

struct Barrier {
    unsigned expected = 0, arrived = 0, gen = 0;
};

struct Fiber {
    ucontext_t ctx;
    emu_dim3 idx;
    unsigned warp;
    bool done;
    Barrier* wait;
    unsigned gen;
};

constexpr size_t STACK = 64 << 10;
ucontext_t sched;
std::vector<Fiber> fibers;
std::vector<char*> stacks;

// Memory whose end abuts an inaccessible page, so that running past it faults at once (the
// start is not guarded); `map`, `len`: the whole mapping, for munmap.
char* guarded(size_t bytes, void** map, size_t* len) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t body = (bytes + page - 1) / page * page;
    void* m = mmap(nullptr, body + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    mprotect(static_cast<char*>(m) + body, page, PROT_NONE);
    *map = m;
    *len = body + page;
    return static_cast<char*>(m) + (body - bytes);
}
Barrier block_bar, warp_bar[32];
int current = -1;
const EmuCall* running = nullptr;
// The kernel running (for the trap's message).
const char* running_name = "?";

// A kernel's access that a GPU would fail with "misaligned address" traps (the shim's
// `float4` is 16-byte aligned and the device is built with `-fsanitize=alignment`, traps on
// error): say which kernel, then stop as the GPU's sticky error would.
void on_trap(int) {
    std::fprintf(stderr,
                 "emulated device: kernel %s trapped: an access not aligned to its type (a "
                 "float4 not on a 16-byte boundary; on a GPU: CUDA_ERROR_MISALIGNED_ADDRESS)\n",
                 running_name);
    std::abort();
}
[[maybe_unused]] const bool trap_handler = [] {
    struct sigaction sa {};
    sa.sa_handler = on_trap;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGILL, &sa, nullptr);
    return true;
}();

void leave(Barrier& b) {
    if (b.expected == 0) return;
    b.expected -= 1;
    if (b.expected > 0 && b.arrived == b.expected) {
        b.arrived = 0;
        b.gen += 1;
    }
}

void fiber_main() {
    (*running)();
    Fiber& f = fibers[current];
    f.done = true;
    // A thread that has exited no longer holds its block's (or warp's) barriers back.
    leave(block_bar);
    leave(warp_bar[f.warp]);
}  // returns to `sched` (uc_link)

void arrive(Barrier& b) {
    if (++b.arrived == b.expected) {
        b.arrived = 0;
        b.gen += 1;
        return;
    }
    Fiber& f = fibers[current];
    f.wait = &b;
    f.gen = b.gen;
    swapcontext(&f.ctx, &sched);
}

}  // namespace

// The kernels' `__shared__` arrays (the shim puts them in this section; the linker names its
// bounds). Weak: absent where no kernel has one.
extern "C" char __start_emu_shared[] __attribute__((weak));
extern "C" char __stop_emu_shared[] __attribute__((weak));

namespace {

// Before each block: shared memory holds garbage on a GPU; here 0xFF bytes, NaN as floats.
void poison_shared() {
    if (__start_emu_shared != nullptr && __stop_emu_shared > __start_emu_shared)
        std::memset(__start_emu_shared, 0xFF, (size_t)(__stop_emu_shared - __start_emu_shared));
}

// Runs `call` over the grid. `false`: the threads of a block deadlocked at a barrier.
bool run_grid(const EmuCall& call, emu_dim3 grid, emu_dim3 block) {
    unsigned n = block.x * block.y * block.z;
    if (n == 0 || n > 1024 || grid.x * grid.y * grid.z == 0) return false;
    while (stacks.size() < n) {
        // A stack grows down: the guard page sits below it.
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        void* m = mmap(nullptr, STACK + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
        if (m == MAP_FAILED) return false;
        mprotect(m, page, PROT_NONE);
        stacks.push_back(static_cast<char*>(m) + page);
    }
    fibers.resize(n);
    running = &call;
    gridDim = grid;
    blockDim = block;
    // A GPU runs blocks, and the threads of a block between barriers, in no set order: every
    // other launch here runs both backwards, so that a kernel that needs one order (a missing
    // barrier, a block reading another's output without a ticket) fails one way or the other.
    static unsigned long launches = 0;
    const bool backwards = (launches++ & 1) != 0;
    const unsigned long blocks = (unsigned long)grid.x * grid.y * grid.z;
    for (unsigned long b0 = 0; b0 < blocks; ++b0) {
        const unsigned long b = backwards ? blocks - 1 - b0 : b0;
        const unsigned bx = (unsigned)(b % grid.x), by = (unsigned)(b / grid.x % grid.y),
                       bz = (unsigned)(b / grid.x / grid.y);
        blockIdx = {bx, by, bz};
        poison_shared();
        block_bar = {n, 0, 0};
        for (unsigned w = 0; w < 32; ++w)
            warp_bar[w] = {32 * w < n ? std::min(32u, n - 32 * w) : 0u, 0, 0};
        for (unsigned i = 0; i < n; ++i) {
            Fiber& f = fibers[i];
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = stacks[i];
            f.ctx.uc_stack.ss_size = STACK;
            f.ctx.uc_link = &sched;
            makecontext(&f.ctx, fiber_main, 0);
            f.idx = {i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
            f.warp = i / 32;
            f.done = false;
            f.wait = nullptr;
        }
        unsigned left = n;
        while (left > 0) {
            bool progress = false;
            for (unsigned k = 0; k < n; ++k) {
                const unsigned i = backwards ? n - 1 - k : k;
                Fiber& f = fibers[i];
                if (f.done || (f.wait != nullptr && f.wait->gen == f.gen)) continue;
                f.wait = nullptr;
                threadIdx = f.idx;
                current = (int)i;
                swapcontext(&sched, &f.ctx);
                progress = true;
                if (f.done) left -= 1;
            }
            if (!progress) {
                std::fprintf(stderr,
                             "emulated device: the threads of block (%u, %u, %u) "
                             "deadlocked at a barrier (%u of %u still running)\n",
                             bx, by, bz, left, n);
                return false;
            }
        }
    }
    running = nullptr;
    return true;
}

// ---- Memory, streams, graphs ----

struct Allocation {
    uintptr_t at;
    size_t bytes;
    void* map;
    size_t map_len;
};
std::vector<Allocation> allocations;

bool inside(uintptr_t p, size_t bytes) {
    for (auto& a : allocations)
        if (p >= a.at && p + bytes <= a.at + a.bytes) return true;
    return bytes == 0;
}

using Node = std::function<int()>;

struct Graph {
    std::vector<Node> nodes;
};

struct Stream {
    bool capturing = false;
    bool invalidated = false;
    Graph* graph = nullptr;
};

struct Event {
    std::chrono::steady_clock::time_point at;
};

Stream default_stream;

Stream* stream_of(void* s) { return s ? static_cast<Stream*>(s) : &default_stream; }

// Runs `work` now, or records it when the stream is being captured.
int submit(void* s, Node work) {
    Stream* st = stream_of(s);
    if (st->capturing) {
        // After an invalidating call, work on the stream fails until the capture ends.
        if (st->invalidated) return CAPTURE_INVALIDATED;
        st->graph->nodes.push_back(std::move(work));
        return OK;
    }
    return work();
}

// A synchronising call on a capturing stream breaks the capture, as on a GPU.
int check_not_capturing(void* s) {
    Stream* st = stream_of(s);
    if (st->capturing) {
        st->invalidated = true;
        return CAPTURE_UNSUPPORTED;
    }
    return OK;
}

int context_token;

}  // namespace

void emu_sync_block() { arrive(block_bar); }
void emu_sync_warp(unsigned w) { arrive(warp_bar[w]); }
void emu_register(const char* name, EmuBinder bind) { registry()[name] = bind; }

// ---- Driver API ----

typedef unsigned long long CUdeviceptr;

extern "C" {

int cuInit(unsigned) { return OK; }
int cuDriverGetVersion(int* v) {
    *v = 13000;
    return OK;
}
int cuDeviceGetCount(int* n) {
    *n = 1;
    return OK;
}
int cuDeviceGet(int* d, int ordinal) {
    if (ordinal != 0) return INVALID_VALUE;
    *d = 0;
    return OK;
}
int cuDeviceGetName(char* name, int len, int) {
    std::snprintf(name, len, "mote emulated device");
    return OK;
}
int cuDeviceTotalMem_v2(size_t* bytes, int) {
    *bytes = size_t(1) << 34;
    return OK;
}
int cuMemGetInfo_v2(size_t* free, size_t* total) {
    *free = *total = size_t(1) << 34;
    return OK;
}
int cuDeviceGetAttribute(int* v, int attribute, int) {
    switch (attribute) {
        case 16: *v = 4; break;   // multiprocessors: few blocks per launch
        case 75: *v = 0; break;   // compute capability 0.0: "sm00", no real GPU's cache key
        case 76: *v = 0; break;
        case 1: *v = 1024; break; // threads per block
        default: *v = 0;
    }
    return OK;
}
int cuDevicePrimaryCtxRetain(void** ctx, int) {
    *ctx = &context_token;
    return OK;
}
int cuDevicePrimaryCtxRelease_v2(int) { return OK; }
thread_local void* current_ctx = nullptr;
int cuCtxGetCurrent(void** ctx) {
    *ctx = current_ctx;
    return OK;
}
int cuCtxSetCurrent(void* ctx) {
    current_ctx = ctx;
    return OK;
}
int cuCtxSynchronize() { return OK; }

int cuGetErrorName(int e, const char** s) {
    switch (e) {
        case OK: *s = "CUDA_SUCCESS"; break;
        case INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case INVALID_HANDLE: *s = "CUDA_ERROR_INVALID_HANDLE"; break;
        case NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case ILLEGAL_ADDRESS: *s = "CUDA_ERROR_ILLEGAL_ADDRESS"; break;
        case CAPTURE_UNSUPPORTED: *s = "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"; break;
        case CAPTURE_INVALIDATED: *s = "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"; break;
        default: *s = "CUDA_ERROR_UNKNOWN";
    }
    return OK;
}
int cuGetErrorString(int e, const char** s) {
    switch (e) {
        case ILLEGAL_ADDRESS: *s = "emulated device: an address outside every allocation"; break;
        case CAPTURE_UNSUPPORTED:
            *s = "emulated device: operation not permitted when stream is capturing";
            break;
        default: return cuGetErrorName(e, s);
    }
    return OK;
}

int cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    GUARD;
    // 256-byte aligned, as the driver's allocations are, and ending at a guard page when the
    // size is a multiple of 256 (reading or writing past the end faults).
    size_t rounded = (bytes + 255) / 256 * 256;
    void* map = nullptr;
    size_t map_len = 0;
    char* m = guarded(rounded == 0 ? 256 : rounded, &map, &map_len);
    if (!m) return 2;  // CUDA_ERROR_OUT_OF_MEMORY
    // A driver's fresh allocation holds whatever was there: here 0xFF bytes (NaN as floats),
    // so that reading what nothing wrote shows. The first 64 MiB (an arena and the side areas
    // after it, in the tests); the rest stays as mapped, zero.
    std::memset(m, 0xFF, std::min(bytes, (size_t)64 << 20));
    allocations.push_back({reinterpret_cast<uintptr_t>(m), bytes, map, map_len});
    *p = reinterpret_cast<uintptr_t>(m);
    return OK;
}
int cuMemFree_v2(CUdeviceptr p) {
    GUARD;
    for (size_t i = 0; i < allocations.size(); ++i)
        if (allocations[i].at == p) {
            // Unmapped: a use after free faults.
            munmap(allocations[i].map, allocations[i].map_len);
            allocations.erase(allocations.begin() + i);
            return OK;
        }
    return INVALID_VALUE;
}
int cuMemAllocHost_v2(void** p, size_t bytes) {
    *p = std::malloc(bytes ? bytes : 1);
    return *p ? OK : 2;
}
int cuMemFreeHost(void* p) {
    std::free(p);
    return OK;
}
int cuMemHostAlloc(void** p, size_t bytes, unsigned) { return cuMemAllocHost_v2(p, bytes); }

int cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void* s) {
    GUARD;
    if (!inside(dst, n)) return ILLEGAL_ADDRESS;
    return submit(s, [=] {
        std::memcpy(reinterpret_cast<void*>(dst), src, n);
        return OK;
    });
}
int cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    return cuMemcpyHtoDAsync_v2(dst, src, n, nullptr);
}
int cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void* s) {
    GUARD;
    if (!inside(src, n)) return ILLEGAL_ADDRESS;
    return submit(s, [=] {
        std::memcpy(dst, reinterpret_cast<const void*>(src), n);
        return OK;
    });
}
int cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    return cuMemcpyDtoHAsync_v2(dst, src, n, nullptr);
}
int cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void* s) {
    GUARD;
    if (!inside(dst, n) || !inside(src, n)) return ILLEGAL_ADDRESS;
    return submit(s, [=] {
        std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
        return OK;
    });
}
int cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, void* s) {
    GUARD;
    if (!inside(dst, n)) return ILLEGAL_ADDRESS;
    return submit(s, [=] {
        std::memset(reinterpret_cast<void*>(dst), v, n);
        return OK;
    });
}
int cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    return cuMemsetD8Async(dst, v, n, nullptr);
}
int cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, void* s) {
    GUARD;
    if (!inside(dst, 4 * n)) return ILLEGAL_ADDRESS;
    return submit(s, [=] {
        auto* p = reinterpret_cast<unsigned*>(dst);
        for (size_t i = 0; i < n; ++i) p[i] = v;
        return OK;
    });
}

int cuStreamCreate(void** s, unsigned) {
    *s = new Stream();
    return OK;
}
int cuStreamCreateWithPriority(void** s, unsigned f, int) { return cuStreamCreate(s, f); }
int cuStreamDestroy_v2(void* s) {
    GUARD;
    delete static_cast<Stream*>(s);
    return OK;
}
int cuStreamSynchronize(void* s) {
    GUARD;
    return check_not_capturing(s);
}
int cuStreamQuery(void* s) {
    GUARD;
    return check_not_capturing(s);
}
int cuStreamWaitEvent(void*, void*, unsigned) { return OK; }
int cuStreamIsCapturing(void* s, int* status) {
    GUARD;
    Stream* st = stream_of(s);
    *status = st->capturing ? (st->invalidated ? 2 : 1) : 0;
    return OK;
}
int cuStreamBeginCapture_v2(void* s, int) {
    GUARD;
    Stream* st = stream_of(s);
    if (st->capturing || s == nullptr) return CAPTURE_UNSUPPORTED;
    st->capturing = true;
    st->invalidated = false;
    st->graph = new Graph();
    return OK;
}
int cuStreamEndCapture(void* s, void** graph) {
    GUARD;
    Stream* st = stream_of(s);
    if (!st->capturing) return INVALID_VALUE;
    st->capturing = false;
    Graph* g = st->graph;
    st->graph = nullptr;
    if (st->invalidated) {
        delete g;
        *graph = nullptr;
        return CAPTURE_INVALIDATED;
    }
    *graph = g;
    return OK;
}
int cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) {
    GUARD;
    *exec = new Graph(*static_cast<Graph*>(graph));
    return OK;
}
int cuGraphUpload(void*, void*) { return OK; }
int cuGraphLaunch(void* exec, void* s) {
    GUARD;
    Graph* g = static_cast<Graph*>(exec);
    // Replayed in the order captured (one stream: the order of its work).
    return submit(s, [g] {
        for (auto& n : g->nodes) {
            int e = n();
            if (e != OK) return e;
        }
        return OK;
    });
}
int cuGraphGetNodes(void* graph, void** nodes, size_t* count) {
    GUARD;
    Graph* g = static_cast<Graph*>(graph);
    if (nodes != nullptr)
        for (size_t i = 0; i < std::min(*count, g->nodes.size()); ++i) nodes[i] = &g->nodes[i];
    *count = g->nodes.size();
    return OK;
}
int cuGraphExecDestroy(void* exec) {
    GUARD;
    delete static_cast<Graph*>(exec);
    return OK;
}
int cuGraphDestroy(void* graph) {
    GUARD;
    delete static_cast<Graph*>(graph);
    return OK;
}

int cuEventCreate(void** e, unsigned) {
    *e = new Event{std::chrono::steady_clock::now()};
    return OK;
}
int cuEventDestroy_v2(void* e) {
    delete static_cast<Event*>(e);
    return OK;
}
int cuEventRecord(void* e, void* s) {
    GUARD;
    return submit(s, [e] {
        static_cast<Event*>(e)->at = std::chrono::steady_clock::now();
        return OK;
    });
}
int cuEventSynchronize(void*) { return OK; }
int cuEventQuery(void*) { return OK; }
static int elapsed(float* ms, void* a, void* b) {
    auto d = static_cast<Event*>(b)->at - static_cast<Event*>(a)->at;
    *ms = std::chrono::duration<float, std::milli>(d).count();
    return OK;
}
int cuEventElapsedTime(float* ms, void* a, void* b) { return elapsed(ms, a, b); }
int cuEventElapsedTime_v2(float* ms, void* a, void* b) { return elapsed(ms, a, b); }

// A module is the emulator's marker text; its functions are the registered kernels.
static const char MODULE[] = "// mote emulated device module\n";
int cuModuleLoadData(void** m, const void* image) {
    if (std::strncmp(static_cast<const char*>(image), MODULE, sizeof MODULE - 1) != 0)
        return 218;  // CUDA_ERROR_INVALID_PTX
    *m = &registry();
    return OK;
}
int cuModuleUnload(void*) { return OK; }
int cuModuleGetFunction(void** f, void*, const char* name) {
    GUARD;
    auto it = registry().find(name);
    if (it == registry().end()) return NOT_FOUND;
    *f = reinterpret_cast<void*>(it->second);
    return OK;
}
int cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                   unsigned bz, unsigned shared, void* s, void** params, void**) {
    GUARD;
    // The limits of every current GPU: block dimensions 1024 x 1024 x 64 and 1024 threads,
    // grid x 2^31 - 1, y and z 65535, no dynamic shared memory here (the kernels declare
    // theirs).
    if (bx == 0 || by == 0 || bz == 0 || gx == 0 || gy == 0 || gz == 0) return INVALID_VALUE;
    if (bx > 1024 || by > 1024 || bz > 64 || bx * by * bz > 1024) return INVALID_VALUE;
    if (gx > 0x7fffffffu || gy > 65535 || gz > 65535 || shared != 0) return INVALID_VALUE;
    EmuCall call = reinterpret_cast<EmuBinder>(f)(params);
    emu_dim3 grid{gx, gy, gz}, block{bx, by, bz};
    const char* name = "?";
    for (auto& [k, b] : registry())
        if (reinterpret_cast<void*>(b) == f) name = k.c_str();
    return submit(s, [call, grid, block, name] {
        running_name = name;
        return run_grid(call, grid, block) ? OK : 719;  // CUDA_ERROR_LAUNCH_FAILED
    });
}

// ---- cuBLAS ----

struct Blas {
    void* stream = nullptr;
};

int cublasCreate_v2(void** h) {
    *h = new Blas();
    return 0;
}
int cublasDestroy_v2(void* h) {
    delete static_cast<Blas*>(h);
    return 0;
}
int cublasSetStream_v2(void* h, void* s) {
    static_cast<Blas*>(h)->stream = s;
    return 0;
}
int cublasSetWorkspace_v2(void*, void*, size_t) { return 0; }
int cublasSetMathMode(void*, int) { return 0; }
const char* cublasGetStatusString(int s) { return s == 0 ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_ERROR"; }

// Rounds to `bits` explicit mantissa bits, to nearest even (TF32: 10, bf16: 7), as the tensor
// cores see their inputs.
static float round_mantissa(float x, int bits) {
    if (bits >= 23 || !std::isfinite(x)) return x;
    uint32_t u;
    std::memcpy(&u, &x, 4);
    uint32_t drop = 23 - bits, half = 1u << (drop - 1), mask = (1u << drop) - 1;
    uint32_t rest = u & mask;
    u &= ~mask;
    if (rest > half || (rest == half && (u >> drop & 1))) u += 1u << drop;
    std::memcpy(&x, &u, 4);
    return x;
}

// Column-major C = alpha op(A) op(B) + beta C, as cuBLAS defines it (C is not read when beta
// is 0).
static void gemm(int ta, int tb, int m, int n, int k, float alpha, const float* a, int lda,
                 const float* b, int ldb, float beta, float* c, int ldc, int bits) {
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
            // f32 accumulation with fused multiply-adds, as cuBLAS's kernels do (in another
            // order).
            float acc = 0.0f;
            for (int l = 0; l < k; ++l) {
                float x = ta ? a[l + (size_t)i * lda] : a[i + (size_t)l * lda];
                float y = tb ? b[j + (size_t)l * ldb] : b[l + (size_t)j * ldb];
                acc = std::fmaf(round_mantissa(x, bits), round_mantissa(y, bits), acc);
            }
            float* out = &c[i + (size_t)j * ldc];
            float v = alpha * acc;
            *out = beta == 0.0f ? v : v + beta * *out;
        }
}

static int mantissa_bits(int compute) {
    switch (compute) {
        case 68: return 23;  // CUBLAS_COMPUTE_32F
        case 77: return 10;  // CUBLAS_COMPUTE_32F_FAST_TF32
        case 75: return 7;   // CUBLAS_COMPUTE_32F_FAST_16BF
        default: return -1;
    }
}

static int gemm_batched(void* h, int ta, int tb, int m, int n, int k, const void* alpha,
                        const void* a, int at, int lda, long long sa, const void* b, int bt,
                        int ldb, long long sb, const void* beta, void* c, int ct, int ldc,
                        long long sc, int batch, int compute) {
    GUARD;
    int bits = mantissa_bits(compute);
    // f32 data only (CUDA_R_32F = 0), no conjugates.
    if (bits < 0 || at != 0 || bt != 0 || ct != 0 || ta > 1 || tb > 1) return 15;
    if (m < 0 || n < 0 || k < 0 || batch < 0) return 7;  // CUBLAS_STATUS_INVALID_VALUE
    // Leading dimensions at least the stored rows, as cuBLAS requires.
    if (lda < std::max(1, ta ? k : m) || ldb < std::max(1, tb ? n : k) || ldc < std::max(1, m))
        return 7;
    if (m == 0 || n == 0 || batch == 0) return 0;
    float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
    auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b),
         pc = reinterpret_cast<uintptr_t>(c);
    // Every operand inside an allocation (cuBLAS would fault): a column-major r x c matrix
    // with leading dimension ld spans ld * (c - 1) + r elements.
    auto span = [](size_t r, size_t c, size_t ld) { return c == 0 || r == 0 ? 0 : ld * (c - 1) + r; };
    size_t ea = span(ta ? k : m, ta ? m : k, lda), eb = span(tb ? n : k, tb ? k : n, ldb),
           ec = span(m, n, ldc);
    // A GPU runs a strided batch's products concurrently: outputs that share an element race
    // there. Refused here, so that a caller relying on the batches running in order fails its
    // tests. Batch i writes i sc + col ldc + row (row < m, col < n); two batches d apart share
    // an element when d |sc| = q ldc + r (0 <= r < ldc) with q < n and r < m, or with
    // q + 1 < n and ldc - r < m (the next column, rows above).
    for (long long d = 1; d < batch; ++d) {
        long long delta = d * (sc < 0 ? -sc : sc), q = delta / ldc, r = delta % ldc;
        if ((q < n && r < m) || (q + 1 < n && ldc - r < m)) {
            std::fprintf(stderr,
                         "emulated cuBLAS: the outputs of a strided batch overlap (stride %lld, "
                         "%d x %d, ldc %d): a race on a GPU\n",
                         sc, m, n, ldc);
            return 7;
        }
    }
    for (int i = 0; i < batch; ++i) {
        if (!inside(pa + 4 * sa * i, 4 * ea) || !inside(pb + 4 * sb * i, 4 * eb) ||
            !inside(pc + 4 * sc * i, 4 * ec))
            return 13;  // CUBLAS_STATUS_EXECUTION_FAILED
    }
    void* s = static_cast<Blas*>(h)->stream;
    // Host scalars are read when the call is made (also when it is captured).
    int e = submit(s, [=] {
        for (int i = 0; i < batch; ++i)
            gemm(ta, tb, m, n, k, al, reinterpret_cast<const float*>(pa) + sa * i, lda,
                 reinterpret_cast<const float*>(pb) + sb * i, ldb, be,
                 reinterpret_cast<float*>(pc) + sc * i, ldc, bits);
        return OK;
    });
    return e == OK ? 0 : 13;
}

int cublasGemmEx(void* h, int ta, int tb, int m, int n, int k, const void* alpha, const void* a,
                 int at, int lda, const void* b, int bt, int ldb, const void* beta, void* c, int ct,
                 int ldc, int compute, int) {
    return gemm_batched(h, ta, tb, m, n, k, alpha, a, at, lda, 0, b, bt, ldb, 0, beta, c, ct, ldc,
                        0, 1, compute);
}
int cublasGemmStridedBatchedEx(void* h, int ta, int tb, int m, int n, int k, const void* alpha,
                               const void* a, int at, int lda, long long sa, const void* b, int bt,
                               int ldb, long long sb, const void* beta, void* c, int ct, int ldc,
                               long long sc, int batch, int compute, int) {
    return gemm_batched(h, ta, tb, m, n, k, alpha, a, at, lda, sa, b, bt, ldb, sb, beta, c, ct,
                        ldc, sc, batch, compute);
}

// ---- NVRTC: "compiles" to the module marker (the kernels are built in) ----

struct Program {
    std::string name;
};

int nvrtcVersion(int* major, int* minor) {
    *major = 13;
    *minor = 0;
    return 0;
}
int nvrtcCreateProgram(void** p, const char*, const char* name, int, const char* const*,
                       const char* const*) {
    *p = new Program{name ? name : ""};
    return 0;
}
int nvrtcDestroyProgram(void** p) {
    delete static_cast<Program*>(*p);
    *p = nullptr;
    return 0;
}
int nvrtcCompileProgram(void*, int, const char* const*) { return 0; }
int nvrtcGetPTXSize(void*, size_t* n) {
    *n = sizeof MODULE;
    return 0;
}
int nvrtcGetPTX(void*, char* out) {
    std::memcpy(out, MODULE, sizeof MODULE);
    return 0;
}
// No CUBIN here (kernels::assemble is for a real NVRTC).
int nvrtcGetCUBINSize(void*, size_t* n) {
    *n = 0;
    return 4;  // NVRTC_ERROR_INVALID_PROGRAM
}
int nvrtcGetProgramLogSize(void*, size_t* n) {
    *n = 1;
    return 0;
}
int nvrtcGetProgramLog(void*, char* out) {
    *out = 0;
    return 0;
}
const char* nvrtcGetErrorString(int) { return "NVRTC_ERROR (emulated device)"; }

// ---- NCCL: communicators of one rank (the emulated device is the only one) ----

static size_t nccl_size(int type) {
    static const size_t sizes[] = {1, 1, 4, 4, 8, 8, 2, 4, 8, 2};
    return type >= 0 && type < 10 ? sizes[type] : 0;
}

struct Comm {
    int rank;
};

int ncclGetVersion(int* v) {
    *v = 22800;
    return 0;
}
int ncclGetUniqueId(char* id) {
    std::memset(id, 0, 128);
    std::snprintf(id, 128, "mote emulated device");
    return 0;
}
int ncclCommInitAll(void** comms, int n, const int* devs) {
    if (n != 1 || (devs != nullptr && devs[0] != 0)) return 4;  // ncclInvalidArgument
    comms[0] = new Comm{0};
    return 0;
}
struct UniqueId {
    char internal[128];
};
int ncclCommInitRank(void** comm, int nranks, UniqueId, int rank) {
    // Only a world of one: other ranks would never join.
    if (nranks != 1 || rank != 0) return 5;  // ncclInvalidUsage
    *comm = new Comm{rank};
    return 0;
}
int ncclCommDestroy(void* c) {
    delete static_cast<Comm*>(c);
    return 0;
}
int ncclCommAbort(void* c) { return ncclCommDestroy(c); }
int ncclGroupStart() { return 0; }
int ncclGroupEnd() { return 0; }
// With one rank, a sum or a broadcast is a copy (nothing when in place).
static int nccl_copy(const void* send, void* recv, size_t count, int type, void* s) {
    GUARD;
    size_t bytes = count * nccl_size(type);
    auto src = reinterpret_cast<uintptr_t>(send), dst = reinterpret_cast<uintptr_t>(recv);
    if (nccl_size(type) == 0) return 4;
    if (!inside(src, bytes) || !inside(dst, bytes)) return 4;
    return submit(s, [=] {
        if (src != dst) std::memmove(recv, send, bytes);
        return OK;
    }) == OK ? 0 : 1;
}
int ncclAllReduce(const void* send, void* recv, size_t count, int type, int, void*, void* s) {
    return nccl_copy(send, recv, count, type, s);
}
int ncclBroadcast(const void* send, void* recv, size_t count, int type, int root, void*, void* s) {
    if (root != 0) return 4;
    return nccl_copy(send, recv, count, type, s);
}
const char* ncclGetErrorString(int r) { return r == 0 ? "no error" : "NCCL error (emulated device)"; }
const char* ncclGetLastError(void*) { return ""; }

}  // extern "C"
