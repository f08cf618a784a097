// Elementwise binary ops with broadcasting. Op codes: `binary_code` in src/ops/binary.rs
// (0 add, 1 sub, 2 mul, 3 div, 4 maximum, 5 minimum); side 0 = lhs, 1 = rhs.

__device__ __forceinline__ float bin_f(int op, float a, float b) {
    switch (op) {
    case 0: return a + b;
    case 1: return a - b;
    case 2: return a * b;
    case 4: return (a > b || a != a) ? a : b;  // maximum (NaN in either gives NaN)
    case 5: return (a < b || a != a) ? a : b;  // minimum
    default: return a / b;
    }
}

// The partial of operand `t` of a maximum against `o`: 0 where t < o, 1/2 on a tie, else 1.
__device__ __forceinline__ float bin_select(float o, float t) {
    return t < o ? 0.0f : (t == o ? 0.5f : 1.0f);
}

// d y / d (side) at (a, b).
__device__ __forceinline__ float bin_d(int op, int side, float a, float b) {
    switch (op) {
    case 0: return 1.0f;
    case 1: return side ? -1.0f : 1.0f;
    case 2: return side ? a : b;
    case 4: return side ? bin_select(a, b) : bin_select(b, a);
    case 5: return side ? bin_select(b, a) : bin_select(a, b);
    default: return side ? -a / (b * b) : 1.0f / b;
    }
}

// What dy adds through partial d: dy d, but nothing where a maximum or minimum did not select
// the operand (a NaN dy there stays out, as the reference's `BinaryOp::term`).
__device__ __forceinline__ float bin_term(int op, float dy, float d) {
    return (d == 0.0f && (op == 4 || op == 5)) ? 0.0f : dy * d;
}

// Same shapes: y = a (op) b elementwise.
extern "C" __global__ void binary_same(int op, const float* __restrict__ a,
                                       const float* __restrict__ b, float* __restrict__ y,
                                       u64 n, int vec) {
    u64 n4 = vec ? n / 4 : 0;
    FOR_EACH(i, n4) {
        float4 u = ((const float4*)a)[i], v = ((const float4*)b)[i], r;
        r.x = bin_f(op, u.x, v.x); r.y = bin_f(op, u.y, v.y);
        r.z = bin_f(op, u.z, v.z); r.w = bin_f(op, u.w, v.w);
        ((float4*)y)[i] = r;
    }
    FOR_EACH(j, n - n4 * 4) {
        u64 i = n4 * 4 + j;
        y[i] = bin_f(op, a[i], b[i]);
    }
}

// Broadcasting: operands 0 = a, 1 = b, 2 = y over the parallel dims of `w`.
extern "C" __global__ void binary_walk(int op, Walk w, const float* __restrict__ a,
                                       const float* __restrict__ b, float* __restrict__ y) {
    FOR_EACH(t, w.ptotal) {
        i64 o[4];
        walk_at(w, t, o);
        y[o[2]] = bin_f(op, a[o[0]], b[o[1]]);
    }
}

// Same shapes: dx += dy * d(op)/d(side). In every backward here, `acc` 0 means dx = 0 + the
// sum (dx was not zeroed, the same numbers without reading it).
extern "C" __global__ void binary_bwd_same(int op, int side, const float* __restrict__ a,
                                           const float* __restrict__ b,
                                           const float* __restrict__ dy,
                                           float* __restrict__ dx, u64 n, int acc) {
    FOR_EACH(i, n) {
        dx[i] = (acc ? dx[i] : 0.0f) + bin_term(op, dy[i], bin_d(op, side, a[i], b[i]));
    }
}

// Broadcasting backward: one thread per element of the operand's gradient (the parallel dims),
// summing over the dims the operand was stretched along (the loop dims). Operands: 0 = a,
// 1 = b, 2 = dy, 3 = dx.
extern "C" __global__ void binary_bwd_walk(int op, int side, Walk w, const float* __restrict__ a,
                                           const float* __restrict__ b,
                                           const float* __restrict__ dy,
                                           float* __restrict__ dx, int acc) {
    FOR_EACH(t, w.ptotal) {
        i64 base[4], o[4];
        walk_at(w, t, base);
        float s = 0.0f;
        for (u64 r = 0; r < w.ltotal; ++r) {
            walk_loop(w, r, base, o);
            s += bin_term(op, dy[o[2]], bin_d(op, side, a[o[0]], b[o[1]]));
        }
        dx[base[3]] = (acc ? dx[base[3]] : 0.0f) + s;
    }
}

// The same with a long loop: 32 x 32 threads per 32 gradient elements (see copy_walk_split).
extern "C" __global__ void __launch_bounds__(1024) binary_bwd_walk_split(
    int op, int side, Walk w, const float* __restrict__ a, const float* __restrict__ b,
    const float* __restrict__ dy, float* __restrict__ dx, int acc) {
    __shared__ float part[32][33];
    u64 t = (u64)blockIdx.x * 32 + threadIdx.x;
    i64 base[4], o[4];
    float s = 0.0f;
    if (t < w.ptotal) {
        walk_at(w, t, base);
        for (u64 r = threadIdx.y; r < w.ltotal; r += blockDim.y) {
            walk_loop(w, r, base, o);
            s += bin_term(op, dy[o[2]], bin_d(op, side, a[o[0]], b[o[1]]));
        }
    }
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && t < w.ptotal) {
        float sum = 0.0f;
        for (unsigned int y = 0; y < blockDim.y; ++y) sum += part[y][threadIdx.x];
        dx[base[3]] = (acc ? dx[base[3]] : 0.0f) + sum;
    }
}
