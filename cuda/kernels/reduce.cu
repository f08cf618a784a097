// Reductions over (outer, n, inner). Op codes: 0 sum, 1 mean, 2 max, 3 min.

__device__ __forceinline__ float red_init(int op) {
    return op == 2 ? -__int_as_float(0x7f800000) : (op == 3 ? __int_as_float(0x7f800000) : 0.0f);
}
__device__ __forceinline__ float red_comb(int op, float a, float b) {
    return op == 2 ? nan_max(a, b) : (op == 3 ? nan_min(a, b) : a + b);
}

// inner == 1: one warp per row.
extern "C" __global__ void reduce_rows(int op, const float* __restrict__ x, float* __restrict__ y,
                                       u64 outer, u64 n) {
    u64 warps = ((u64)blockDim.x * gridDim.x) >> 5;
    int lane = threadIdx.x & 31;
    for (u64 row = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < outer; row += warps) {
        const float* xr = x + row * n;
        float acc = red_init(op);
        for (u64 j = lane; j < n; j += 32) acc = red_comb(op, acc, xr[j]);
        for (int o = 16; o > 0; o >>= 1) acc = red_comb(op, acc, __shfl_xor_sync(0xffffffffu, acc, o));
        if (lane == 0) y[row] = op == 1 ? acc * (1.0f / (float)n) : acc;
    }
}

// inner == 1 with few long rows: one block per row.
extern "C" __global__ void __launch_bounds__(1024) reduce_rows_block(int op, const float* __restrict__ x,
                                             float* __restrict__ y, u64 n) {
    __shared__ float part[32];
    const float* xr = x + (u64)blockIdx.x * n;
    float acc = red_init(op);
    for (u64 j = threadIdx.x; j < n; j += blockDim.x) acc = red_comb(op, acc, xr[j]);
    for (int o = 16; o > 0; o >>= 1) acc = red_comb(op, acc, __shfl_xor_sync(0xffffffffu, acc, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        acc = lane < (int)(blockDim.x >> 5) ? part[lane] : red_init(op);
        for (int o = 16; o > 0; o >>= 1) acc = red_comb(op, acc, __shfl_xor_sync(0xffffffffu, acc, o));
        if (lane == 0) y[blockIdx.x] = op == 1 ? acc * (1.0f / (float)n) : acc;
    }
}

// A whole tensor to one value (outer == 1, inner == 1, n large) on up to 256 blocks: each
// block's result to the partials in the status area (bytes 1024..2048), the last block to
// finish (the ticket at byte 128, which it resets) combines them in block order, as loss_fwd.
extern "C" __global__ void __launch_bounds__(1024) reduce_all(int op, const float* __restrict__ x,
                                      float* __restrict__ y, u64 n, unsigned int* status) {
    __shared__ float part[32];
    __shared__ int last;
    float acc = red_init(op);
    for (u64 j = (u64)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (u64)gridDim.x * blockDim.x)
        acc = red_comb(op, acc, x[j]);
    for (int o = 16; o > 0; o >>= 1) acc = red_comb(op, acc, __shfl_xor_sync(0xffffffffu, acc, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = acc;
    __syncthreads();
    volatile float* partial = (volatile float*)(status + 256);
    unsigned int* ticket = status + 32;
    if (warp == 0) {
        acc = lane < (int)(blockDim.x >> 5) ? part[lane] : red_init(op);
        for (int o = 16; o > 0; o >>= 1) acc = red_comb(op, acc, __shfl_xor_sync(0xffffffffu, acc, o));
        if (lane == 0) {
            partial[blockIdx.x] = acc;
            __threadfence();
            last = atomicAdd(ticket, 1u) == gridDim.x - 1;
        }
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (warp == 0) {
        acc = red_init(op);
        // Lane l combines blocks l, l + 32, ... in order, then the lanes in a fixed tree.
        for (unsigned int b = lane; b < gridDim.x; b += 32) acc = red_comb(op, acc, partial[b]);
        for (int o = 16; o > 0; o >>= 1) acc = red_comb(op, acc, __shfl_xor_sync(0xffffffffu, acc, o));
        if (lane == 0) {
            y[0] = op == 1 ? acc * (1.0f / (float)n) : acc;
            *ticket = 0u;
        }
    }
}

// inner > 1: one thread per output (coalesced along inner).
extern "C" __global__ void reduce_strided(int op, const float* __restrict__ x,
                                          float* __restrict__ y, u64 outer, u64 n, u64 inner) {
    FOR_EACH(t, outer * inner) {
        u64 o = t / inner, i = t % inner;
        const float* xb = x + o * n * inner + i;
        float acc = op >= 2 ? xb[0] : 0.0f;
        for (u64 j = (op >= 2 ? 1 : 0); j < n; ++j) acc = red_comb(op, acc, xb[j * inner]);
        y[t] = op == 1 ? acc * (1.0f / (float)n) : acc;
    }
}

// Sum / mean backward: dx[o, j, i] += dy[o, i] * scale (`acc` 0: dx = 0 + ..., dx not read).
extern "C" __global__ void reduce_bwd_sum(const float* __restrict__ dy, float* __restrict__ dx,
                                          u64 outer, u64 n, u64 inner, float scale, int acc) {
    FOR_EACH(t, outer * n * inner) {
        u64 i = t % inner, o = t / (n * inner);
        dx[t] = (acc ? dx[t] : 0.0f) + dy[o * inner + i] * scale;
    }
}

// Max and min backward: dy goes to the first position holding the result.
extern "C" __global__ void reduce_bwd_max(const float* __restrict__ x, const float* __restrict__ y,
                                          const float* __restrict__ dy, float* __restrict__ dx,
                                          u64 outer, u64 n, u64 inner) {
    FOR_EACH(t, outer * inner) {
        u64 o = t / inner, i = t % inner;
        float ym = y[t];
        for (u64 j = 0; j < n; ++j) {
            u64 k = (o * n + j) * inner + i;
            float v = x[k];
            if (v == ym || (v != v && ym != ym)) { dx[k] += dy[t]; break; }
        }
    }
}

// Sum of squares in double, the same bits on every run (what gradient clipping scales by):
// each block sums in a fixed tree into its partial (status words 512.., at most 256 doubles),
// and the last block to finish adds the partials in block order, as reduce_all does.
extern "C" __global__ void __launch_bounds__(1024) sum_squares(const float* __restrict__ x, u64 n,
                                                              double* out, unsigned int* status) {
    __shared__ double part[32];
    __shared__ int last;
    double s = 0.0;
    FOR_EACH(i, n) { double v = x[i]; s += v * v; }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = s;
    __syncthreads();
    volatile double* partial = (volatile double*)(status + 512);
    unsigned int* ticket = status + 32;
    if (warp == 0) {
        s = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) {
            partial[blockIdx.x] = s;
            __threadfence();
            last = atomicAdd(ticket, 1u) == gridDim.x - 1;
        }
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (warp == 0) {
        s = 0.0;
        for (unsigned int b = lane; b < gridDim.x; b += 32) s += partial[b];
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) {
            *out = s;
            *ticket = 0u;
        }
    }
}
