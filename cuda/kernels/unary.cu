// Elementwise unary ops. Op codes: `UnaryOp::pack` in the core (core/src/ops/unary.rs).
#define GELU_C 0.7978845608028654f
#define GELU_K 0.044715f
#define FRAC_1_SQRT_2 0.7071067811865476f
#define FRAC_1_SQRT_2PI 0.3989422804014327f

// Phi(x) = erfc(-x / sqrt 2) / 2: accurate in the lower tail, where 1 + erf cancels.
__device__ __forceinline__ float normal_cdf_f(float x) { return 0.5f * erfcf(-x * FRAC_1_SQRT_2); }

// min(max(x, 0), 6), NaN kept.
__device__ __forceinline__ float relu6_f(float x) { return x < 0.0f ? 0.0f : (x > 6.0f ? 6.0f : x); }

__device__ __forceinline__ float hardsigmoid_f(float x) { return relu6_f(x + 3.0f) / 6.0f; }

__device__ __forceinline__ float unary_f(int op, float c, float x) {
    switch (op) {
    case 0: return -x;                                       // neg
    case 1: return x + c;                                    // add_scalar
    case 2: return x * c;                                    // mul_scalar
    case 3: return expf(x);                                  // exp
    case 4: return logf(x);                                  // log
    case 5: return sqrtf(x);                                 // sqrt
    case 6: return x * x;                                    // square
    case 7: return powf(x, c);                               // pow
    case 8: return (x > 0.0f || x != x) ? x : 0.0f;          // relu (NaN stays NaN)
    case 9: return x > 0.0f ? x : x * c;                     // leaky_relu
    case 10: return sigmoid_f(x);                            // sigmoid
    case 11: return tanhf(x);                                // tanh
    case 12: return 0.5f * x * (1.0f + tanhf(GELU_C * (x + GELU_K * x * x * x))); // gelu_tanh
    case 13: return fabsf(x);                                // abs
    case 14: return x < c ? c : x;                           // clamp_min (NaN stays NaN)
    case 15: return x > c ? c : x;                           // clamp_max (NaN stays NaN)
    case 16: return x * sigmoid_f(x);                        // silu
    case 17: return x > 0.0f ? x : c * expm1f(x);            // elu
    case 18: return x > 20.0f ? x : log1pf(expf(x));         // softplus
    case 19: return x * normal_cdf_f(x);                     // gelu (exact)
    case 20: return hardsigmoid_f(x);                        // hardsigmoid
    case 21: return x * hardsigmoid_f(x);                    // hardswish
    case 22: return relu6_f(x);                              // relu6 (NaN stays NaN)
    }
    return x;
}

// f'(x) given x and y = f(x).
__device__ __forceinline__ float unary_d(int op, float c, float x, float y) {
    switch (op) {
    case 0: return -1.0f;
    case 1: return 1.0f;
    case 2: return c;
    case 3: return y;
    case 4: return 1.0f / x;
    case 5: return 1.0f / (y + y);
    case 6: return x + x;
    case 7: return c == 0.0f ? 0.0f : c * powf(x, c - 1.0f);  // x^0: 0, as PyTorch
    case 8: return x > 0.0f ? 1.0f : 0.0f;
    case 9: return x > 0.0f ? 1.0f : c;
    case 10: return y * (1.0f - y);
    case 11: return 1.0f - y * y;
    case 12: {
        float t = tanhf(GELU_C * (x + GELU_K * x * x * x));
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * GELU_K * x * x);
    }
    case 13: return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
    case 14: return x >= c ? 1.0f : 0.0f;
    case 15: return x <= c ? 1.0f : 0.0f;
    case 16: {
        float s = sigmoid_f(x);
        return s * (1.0f + x * (1.0f - s));
    }
    case 17: return x > 0.0f ? 1.0f : c * expf(x);
    case 18: return x > 20.0f ? 1.0f : sigmoid_f(x);
    case 19: return normal_cdf_f(x) + x * FRAC_1_SQRT_2PI * expf(-0.5f * x * x);
    case 20: return (x > -3.0f && x < 3.0f) ? 1.0f / 6.0f : 0.0f;
    case 21: return x < -3.0f ? 0.0f : (x <= 3.0f ? x / 3.0f + 0.5f : 1.0f);
    case 22: return (x > 0.0f && x < 6.0f) ? 1.0f : 0.0f;
    }
    return 0.0f;
}

__device__ __forceinline__ float unary_acc(int op, float c, float x, float y, float dy, float dx) {
    // NOTE: relu adds dy only where x > 0 (as the reference does), so a NaN dy at x <= 0 is not
    // spread into dx; so do the other ops whose derivative is a mask (`UnaryOp::masks`: the
    // clamps, hardsigmoid, hardswish, relu6) where it is 0.
    if (op == 8) return x > 0.0f ? dx + dy : dx;
    float d = unary_d(op, c, x, y);
    // (hard swish's slope is also 0 at -1.5, where its mask is on: `UnaryOp::drops`)
    bool mask = op == 14 || op == 15 || op == 20 || op == 22 || (op == 21 && x < -3.0f);
    return (mask && d == 0.0f) ? dx : dx + d * dy;
}

// y = f(x); `vec`: every pointer is 16-byte aligned, use float4 for the bulk.
extern "C" __global__ void unary_fwd(int op, float c, const float* __restrict__ x,
                                     float* __restrict__ y, u64 n, int vec) {
    u64 n4 = vec ? n / 4 : 0;
    const float4* x4 = (const float4*)x;
    float4* y4 = (float4*)y;
    FOR_EACH(i, n4) {
        float4 v = x4[i];
        v.x = unary_f(op, c, v.x); v.y = unary_f(op, c, v.y);
        v.z = unary_f(op, c, v.z); v.w = unary_f(op, c, v.w);
        y4[i] = v;
    }
    FOR_EACH(j, n - n4 * 4) {
        u64 i = n4 * 4 + j;
        y[i] = unary_f(op, c, x[i]);
    }
}

// dx += f'(x) dy; with `acc` 0, dx = 0 + f'(x) dy (dx was not zeroed: the same numbers without
// reading it).
extern "C" __global__ void unary_bwd(int op, float c, const float* __restrict__ x,
                                     const float* __restrict__ y, const float* __restrict__ dy,
                                     float* __restrict__ dx, u64 n, int vec, int acc) {
    u64 n4 = vec ? n / 4 : 0;
    FOR_EACH(i, n4) {
        float4 xv = ((const float4*)x)[i], yv = ((const float4*)y)[i];
        float4 g = ((const float4*)dy)[i];
        float4 d = acc ? ((float4*)dx)[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        d.x = unary_acc(op, c, xv.x, yv.x, g.x, d.x);
        d.y = unary_acc(op, c, xv.y, yv.y, g.y, d.y);
        d.z = unary_acc(op, c, xv.z, yv.z, g.z, d.z);
        d.w = unary_acc(op, c, xv.w, yv.w, g.w, d.w);
        ((float4*)dx)[i] = d;
    }
    FOR_EACH(j, n - n4 * 4) {
        u64 i = n4 * 4 + j;
        dx[i] = unary_acc(op, c, x[i], y[i], dy[i], acc ? dx[i] : 0.0f);
    }
}

// unary_bwd over a rows x cols gradient, then its column sums into db: the bias gradient of
// the linear layer whose output x is, in the same pass. 32 x 32 blocks, one per 32 columns;
// thread (x, y) takes rows y, y + 32, ... of its column (`colsum_store`). `db_acc` as `acc`.
extern "C" __global__ void __launch_bounds__(1024) unary_bwd_colsum(
    int op, float c, const float* __restrict__ x, const float* __restrict__ y,
    const float* __restrict__ dy, float* dx, u64 rows, u64 cols, int acc,
    float* __restrict__ db, int db_acc) {
    u64 col = (u64)blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f;
    if (col < cols) {
        for (u64 r = threadIdx.y; r < rows; r += 32) {
            u64 i = r * cols + col;
            float v = unary_acc(op, c, x[i], y[i], dy[i], acc ? dx[i] : 0.0f);
            dx[i] = v;
            s += v;
        }
    }
    colsum_store(s, dx, db, rows, cols, db_acc);
}

// A linear layer's bias and the activation after it, in one pass over its rows x cols output:
// v = y + b[col]; y = v; h = f(v). `h` may be `y` (an in-place activation). `vec`: y, h and b
// 16-byte aligned and cols a multiple of 4 (float4s never straddle a row).
extern "C" __global__ void bias_act(int op, float c, const float* __restrict__ b, float* y,
                                    float* h, u64 rows, u64 cols, int vec) {
    u64 n = rows * cols;
    u64 n4 = vec ? n / 4 : 0;
    FOR_EACH(i, n4) {
        float4 v = ((const float4*)y)[i], bb = *(const float4*)(b + (i * 4) % cols);
        v.x += bb.x; v.y += bb.y; v.z += bb.z; v.w += bb.w;
        ((float4*)y)[i] = v;
        v.x = unary_f(op, c, v.x); v.y = unary_f(op, c, v.y);
        v.z = unary_f(op, c, v.z); v.w = unary_f(op, c, v.w);
        ((float4*)h)[i] = v;
    }
    FOR_EACH(j, n - n4 * 4) {
        u64 i = n4 * 4 + j;
        float v = y[i] + b[i % cols];
        y[i] = v;
        h[i] = unary_f(op, c, v);
    }
}

// Fills n floats with v (also used to zero gradients).
extern "C" __global__ void fill(float* __restrict__ y, u64 n, float v, int vec) {
    u64 n4 = vec ? n / 4 : 0;
    FOR_EACH(i, n4) { ((float4*)y)[i] = make_float4(v, v, v, v); }
    FOR_EACH(j, n - n4 * 4) { y[n4 * 4 + j] = v; }
}

// y *= f.
extern "C" __global__ void scale(float* __restrict__ y, u64 n, float f, int vec) {
    u64 n4 = vec ? n / 4 : 0;
    FOR_EACH(i, n4) {
        float4 v = ((float4*)y)[i];
        v.x *= f; v.y *= f; v.z *= f; v.w *= f;
        ((float4*)y)[i] = v;
    }
    FOR_EACH(j, n - n4 * 4) { y[n4 * 4 + j] *= f; }
}
