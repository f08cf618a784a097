// Shared by every kernel file (prepended to each source before NVRTC compiles it).
typedef unsigned long long u64;
typedef long long i64;

// Grid-stride loop over [0, n).
#define FOR_EACH(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (u64)(n); \
         i += (u64)blockDim.x * gridDim.x)

// A walk over an index space of up to four "parallel" dimensions (one thread per index) and up
// to four "loop" dimensions (summed inside a thread), for up to four operands. Mirrors
// `Walk` in src/ops/mod.rs byte for byte.
struct Walk {
    unsigned int np, nl;
    unsigned int pdim[4];
    unsigned int ldim[4];
    i64 pstr[4][4]; // [operand][dim]
    i64 lstr[4][4];
    u64 ptotal, ltotal;
};

// Offsets of parallel index t for every operand. Indices fit 32 bits (a shape has at most
// 2^32 - 1 elements), so the divisions are 32-bit.
__device__ __forceinline__ void walk_at(const Walk& w, u64 t64, i64* off) {
    off[0] = off[1] = off[2] = off[3] = 0;
    unsigned int t = (unsigned int)t64;
    for (int d = (int)w.np - 1; d >= 0; --d) {
        unsigned int c = t % w.pdim[d];
        t /= w.pdim[d];
        for (int o = 0; o < 4; ++o) off[o] += (i64)c * w.pstr[o][d];
    }
}

// Offsets of loop index r for every operand (added to the parallel offsets).
__device__ __forceinline__ void walk_loop(const Walk& w, u64 r64, const i64* base, i64* off) {
    unsigned int r = (unsigned int)r64;
    if (w.nl == 1) {
        for (int o = 0; o < 4; ++o) off[o] = base[o] + (i64)r * w.lstr[o][0];
        return;
    }
    for (int o = 0; o < 4; ++o) off[o] = base[o];
    for (int d = (int)w.nl - 1; d >= 0; --d) {
        unsigned int c = r % w.ldim[d];
        r /= w.ldim[d];
        for (int o = 0; o < 4; ++o) off[o] += (i64)c * w.lstr[o][d];
    }
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// NaN-propagating maximum (the reference's reduce max keeps a NaN once it has seen one).
__device__ __forceinline__ float nan_max(float a, float b) {
    if (a != a) return a;
    if (b != b) return b;
    return b > a ? b : a;
}

__device__ __forceinline__ float nan_min(float a, float b) {
    if (a != a) return a;
    if (b != b) return b;
    return b < a ? b : a;
}

// Zero for a subnormal (the reference optimizers' `flush`).
__device__ __forceinline__ float flush(float x) {
    return fabsf(x) < 1.17549435e-38f ? 0.0f : x;
}

__device__ __forceinline__ float sigmoid_f(float x) {
    if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
    float e = expf(x);
    return e / (1.0f + e);
}

// Block-wide sum of one float per thread (blockDim.x a multiple of 32, at most 1024); the
// result is valid in thread 0.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float part[32];
    v = warp_sum(v);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = (threadIdx.x < (blockDim.x >> 5)) ? part[threadIdx.x] : 0.0f;
    if (warp == 0) v = warp_sum(v);
    return v;
}

// The column sums of a rows x cols gradient `v` (row-major) into the bias gradient `db`, for a
// kernel of 32 x 32 blocks, one per 32 columns, where thread (x, y) wrote column
// blockIdx.x * 32 + x at rows y, y + 32, ..., and `s` is the running sum of those values in row
// order. `acc` 0: db = the sum, db not read. Summed as the bias gradient's strided copy sums
// (`copy_walk_split` from 64 rows on, `copy_walk`'s one thread in row order below that, which
// reads back the block's own writes). Every thread of the block calls it.
__device__ __forceinline__ void colsum_store(float s, const float* v, float* db, u64 rows,
                                             u64 cols, int acc) {
    __shared__ float part[32][33];
    u64 col = (u64)blockIdx.x * 32 + threadIdx.x;
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y != 0 || col >= cols) return;
    float a = 0.0f;
    if (rows >= 64) {
        for (int y = 0; y < 32; ++y) a += part[y][threadIdx.x];
    } else if (rows == 1) {
        a = v[col];
    } else {
        for (u64 r = 0; r < rows; ++r) a += v[r * cols + col];
    }
    db[col] = acc ? db[col] + a : a;
}
