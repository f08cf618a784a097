// Softmax and log-softmax over (outer, n, inner), stable.

// inner == 1: one warp per row.
extern "C" __global__ void softmax_rows(int lg, const float* __restrict__ x, float* __restrict__ y,
                                        u64 outer, u64 n) {
    u64 warps = ((u64)blockDim.x * gridDim.x) >> 5;
    int lane = threadIdx.x & 31;
    for (u64 row = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < outer; row += warps) {
        const float* xr = x + row * n;
        float* yr = y + row * n;
        float m = -3.40282347e38f;
        for (u64 j = lane; j < n; j += 32) m = fmaxf(m, xr[j]);
        m = warp_max(m);
        float s = 0.0f;
        for (u64 j = lane; j < n; j += 32) s += expf(xr[j] - m);
        s = warp_sum(s);
        float inv = 1.0f / s, lse = m + logf(s);
        for (u64 j = lane; j < n; j += 32) yr[j] = lg ? xr[j] - lse : expf(xr[j] - m) * inv;
    }
}

// inner > 1: one thread per (outer, inner) column.
extern "C" __global__ void softmax_strided(int lg, const float* __restrict__ x,
                                           float* __restrict__ y, u64 outer, u64 n, u64 inner) {
    FOR_EACH(t, outer * inner) {
        u64 o = t / inner, i = t % inner, b = o * n * inner + i;
        float m = -3.40282347e38f;
        for (u64 j = 0; j < n; ++j) m = fmaxf(m, x[b + j * inner]);
        float s = 0.0f;
        for (u64 j = 0; j < n; ++j) s += expf(x[b + j * inner] - m);
        float inv = 1.0f / s, lse = m + logf(s);
        for (u64 j = 0; j < n; ++j) {
            u64 k = b + j * inner;
            y[k] = lg ? x[k] - lse : expf(x[k] - m) * inv;
        }
    }
}

// dx += y (dy - sum dy y) (softmax) or dy - e^y sum dy (log-softmax); inner == 1. `acc` 0:
// dx = 0 + ..., dx not read (in both kernels).
extern "C" __global__ void softmax_bwd_rows(int lg, const float* __restrict__ y,
                                            const float* __restrict__ dy, float* __restrict__ dx,
                                            u64 outer, u64 n, int acc) {
    u64 warps = ((u64)blockDim.x * gridDim.x) >> 5;
    int lane = threadIdx.x & 31;
    for (u64 row = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < outer; row += warps) {
        const float* yr = y + row * n;
        const float* gr = dy + row * n;
        float* dr = dx + row * n;
        float s = 0.0f;
        for (u64 j = lane; j < n; j += 32) s += lg ? gr[j] : gr[j] * yr[j];
        s = warp_sum(s);
        for (u64 j = lane; j < n; j += 32)
            dr[j] = (acc ? dr[j] : 0.0f) + (lg ? gr[j] - expf(yr[j]) * s : yr[j] * (gr[j] - s));
    }
}

extern "C" __global__ void softmax_bwd_strided(int lg, const float* __restrict__ y,
                                               const float* __restrict__ dy,
                                               float* __restrict__ dx, u64 outer, u64 n,
                                               u64 inner, int acc) {
    FOR_EACH(t, outer * inner) {
        u64 o = t / inner, i = t % inner, b = o * n * inner + i;
        float s = 0.0f;
        for (u64 j = 0; j < n; ++j) {
            u64 k = b + j * inner;
            s += lg ? dy[k] : dy[k] * y[k];
        }
        for (u64 j = 0; j < n; ++j) {
            u64 k = b + j * inner;
            dx[k] = (acc ? dx[k] : 0.0f) + (lg ? dy[k] - expf(y[k]) * s : y[k] * (dy[k] - s));
        }
    }
}
