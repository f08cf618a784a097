// Optimizer updates. `dyn`, when not null, holds the per-step scalars that change between
// replays of a captured CUDA graph (advanced on the device by `graph_tick`, or by the step's one
// Adam launch, before each replay's optimizer reads them).

// An absent buffer in a multi-tensor descriptor (sgd_multi, rms_multi).
#define OPT_NONE (~(u64)0)
// Elements of one tile (one block) of a multi-tensor launch.
#define OPT_TILE 4096

__device__ __forceinline__ void sgd_one(float* p, const float* g, float* buf, u64 i, float lr,
                                        float mu, float damp, float wd, int nesterov,
                                        int first) {
    float gi = g[i] + wd * p[i];
    if (buf) {
        float b = first ? gi : flush(mu * buf[i] + damp * gi);
        buf[i] = b;
        float step = nesterov ? gi + mu * b : b;
        p[i] -= lr * step;
    } else {
        p[i] -= lr * gi;
    }
}

// SGD with optional momentum buffer (`buf` null without momentum). dyn[0]: the `first` flag.
extern "C" __global__ void sgd(float* __restrict__ p, const float* __restrict__ g,
                               float* __restrict__ buf, u64 n, float lr, float mu, float damp,
                               float wd, int nesterov, int first, const float* dyn) {
    if (dyn) first = dyn[0] != 0.0f;
    FOR_EACH(i, n) sgd_one(p, g, buf, i, lr, mu, damp, wd, nesterov, first);
}

// The descriptor of a multi-tensor launch that owns this block's tile: the last one whose
// first tile (its `tile`) is <= blockIdx.x.
template <class Desc>
__device__ __forceinline__ int tile_owner(const Desc* d, int count) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (d[mid].tile <= blockIdx.x) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// Every SGD update of one optimizer step in one launch (a descriptor is a row of the table
// `flush_sgd` builds in src/ops/optim.rs: element offsets, OPT_NONE without momentum, the
// length, the first tile).
struct SgdDesc { u64 p, g, buf, len, tile; };

extern "C" __global__ void sgd_multi(float* arena, const SgdDesc* __restrict__ d, int count,
                                     float lr, float mu, float damp, float wd, int nesterov,
                                     int first, const float* dyn) {
    if (dyn) first = dyn[0] != 0.0f;
    SgdDesc t = d[tile_owner(d, count)];
    u64 start = (blockIdx.x - t.tile) * (u64)OPT_TILE;
    u64 end = start + OPT_TILE < t.len ? start + OPT_TILE : t.len;
    float* buf = t.buf == OPT_NONE ? nullptr : arena + t.buf;
    for (u64 i = start + threadIdx.x; i < end; i += blockDim.x)
        sgd_one(arena + t.p, arena + t.g, buf, i, lr, mu, damp, wd, nesterov, first);
}

__device__ __forceinline__ void adam_one(float& p, float g, float& m, float& v, float b1, float b2,
                                         float c1, float c2, float step, float isb2, float eps,
                                         float l2, float decay) {
    g = g + l2 * p;
    m = flush(b1 * m + c1 * g);
    v = flush(b2 * v + c2 * g * g);
    p = p * decay - step * m / (sqrtf(v) * isb2 + eps);
}

// AMSGrad (`vm`, the running maximum of the second moment; a NaN `v` is kept, as
// torch.maximum propagates it): adam_one's update with the maximum in the denominator.
__device__ __forceinline__ void amsgrad_one(float& p, float g, float& m, float& v, float& vm,
                                            float b1, float b2, float c1, float c2, float step,
                                            float isb2, float eps, float l2, float decay) {
    g = g + l2 * p;
    m = flush(b1 * m + c1 * g);
    v = flush(b2 * v + c2 * g * g);
    if (v > vm || v != v) vm = v;
    p = p * decay - step * m / (sqrtf(vm) * isb2 + eps);
}

// One tensor (or any contiguous run) of Adam / AdamW. dyn[0]: lr / (1 - b1^t);
// dyn[1]: 1 / sqrt(1 - b2^t). `vmax`, when not null: AMSGrad's running maximum.
extern "C" __global__ void adam(float* __restrict__ p, const float* __restrict__ g,
                                float* __restrict__ m, float* __restrict__ v,
                                float* __restrict__ vmax, u64 n, float b1, float b2, float c1,
                                float c2, float step, float isb2, float eps, float l2,
                                float decay, const float* dyn, int vec) {
    if (dyn) { step = dyn[0]; isb2 = dyn[1]; }
    if (vmax) {
        FOR_EACH(i, n)
            amsgrad_one(p[i], g[i], m[i], v[i], vmax[i], b1, b2, c1, c2, step, isb2, eps, l2,
                        decay);
        return;
    }
    u64 n4 = vec ? n / 4 : 0;
    FOR_EACH(i, n4) {
        float4 pv = ((float4*)p)[i], gv = ((const float4*)g)[i];
        float4 mv = ((float4*)m)[i], vv = ((float4*)v)[i];
        adam_one(pv.x, gv.x, mv.x, vv.x, b1, b2, c1, c2, step, isb2, eps, l2, decay);
        adam_one(pv.y, gv.y, mv.y, vv.y, b1, b2, c1, c2, step, isb2, eps, l2, decay);
        adam_one(pv.z, gv.z, mv.z, vv.z, b1, b2, c1, c2, step, isb2, eps, l2, decay);
        adam_one(pv.w, gv.w, mv.w, vv.w, b1, b2, c1, c2, step, isb2, eps, l2, decay);
        ((float4*)p)[i] = pv; ((float4*)m)[i] = mv; ((float4*)v)[i] = vv;
    }
    FOR_EACH(j, n - n4 * 4) {
        u64 i = n4 * 4 + j;
        adam_one(p[i], g[i], m[i], v[i], b1, b2, c1, c2, step, isb2, eps, l2, decay);
    }
}

// RMSprop and Adagrad (mote::optim::rms_kernel): `avg` (centered RMSprop's average of the
// gradient) and `buf` (momentum) are null where the update has none. `a` decays the squares and
// the average, `c` weighs the new square (RMSprop: alpha, 1 - alpha; Adagrad: 1, 1). dyn, when
// not null: dyn[0], the step's rate (Adagrad's decayed rate, advanced by graph_tick).
__device__ __forceinline__ void rms_one(float* p, const float* g, float* sq, float* avg,
                                        float* buf, u64 i, float lr, float a, float c,
                                        float eps, float wd, float mu) {
    float gi = g[i] + wd * p[i];
    float s = flush(a * sq[i] + c * (gi * gi));
    sq[i] = s;
    float d = s;
    if (avg) {
        float m = flush(a * avg[i] + c * gi);
        avg[i] = m;
        d -= m * m;
    }
    float step = gi / (sqrtf(d) + eps);
    if (buf) {
        float b = flush(mu * buf[i] + step);
        buf[i] = b;
        p[i] -= lr * b;
    } else {
        p[i] -= lr * step;
    }
}

extern "C" __global__ void rms(float* __restrict__ p, const float* __restrict__ g,
                               float* __restrict__ sq, float* __restrict__ avg,
                               float* __restrict__ buf, u64 n, float lr, float a, float c,
                               float eps, float wd, float mu, const float* dyn) {
    if (dyn) lr = dyn[0];
    FOR_EACH(i, n) rms_one(p, g, sq, avg, buf, i, lr, a, c, eps, wd, mu);
}

// Every RMSprop or Adagrad update of one optimizer step in one launch, as adam_multi: a
// descriptor per tensor (a row of the table `flush_rms` builds in src/ops/optim.rs: element
// offsets, OPT_NONE for an absent average or momentum buffer, the length and the first tile),
// a block per tile.
struct RmsDesc { u64 p, g, sq, avg, buf, len, tile; };

extern "C" __global__ void rms_multi(float* arena, const RmsDesc* __restrict__ d, int count,
                                     float lr, float a, float c, float eps, float wd, float mu,
                                     const float* dyn) {
    if (dyn) lr = dyn[0];
    RmsDesc t = d[tile_owner(d, count)];
    u64 start = (blockIdx.x - t.tile) * (u64)OPT_TILE;
    u64 end = start + OPT_TILE < t.len ? start + OPT_TILE : t.len;
    float* avg = t.avg == OPT_NONE ? nullptr : arena + t.avg;
    float* buf = t.buf == OPT_NONE ? nullptr : arena + t.buf;
    for (u64 i = start + threadIdx.x; i < end; i += blockDim.x)
        rms_one(arena + t.p, arena + t.g, arena + t.sq, avg, buf, i, lr, a, c, eps, wd, mu);
}

// Every parameter of one optimizer step in one launch. A descriptor is a row of the table
// `flush_adam` builds in src/ops/optim.rs: element offsets into the arena (`vm`: AMSGrad's
// running maximum, OPT_NONE for Adam), the length, and the first tile of the tensor.
struct AdamDesc { u64 p, g, m, v, vm, len, tile; };

// `rec`, when not null: the captured step's one optimizer launch, which does `graph_tick`'s
// work itself (no tick node): its record (at rec, as graph_tick's) gives the step's scalars,
// and the last block to finish (counted in the record's last word) advances it.
extern "C" __global__ void adam_multi(float* arena, const AdamDesc* __restrict__ d, int count,
                                      float b1, float b2, float c1, float c2, float step,
                                      float isb2, float eps, float l2, float decay,
                                      const float* dyn, double* rec) {
    if (dyn) { step = dyn[0]; isb2 = dyn[1]; }
    if (rec) {
        step = (float)(rec[2] / (1.0 - rec[5]));
        isb2 = (float)(1.0 / sqrt(1.0 - rec[6]));
    }
    AdamDesc t = d[tile_owner(d, count)];
    u64 start = (blockIdx.x - t.tile) * (u64)OPT_TILE;
    u64 end = start + OPT_TILE < t.len ? start + OPT_TILE : t.len;
    float *p = arena + t.p, *m = arena + t.m, *v = arena + t.v;
    const float* g = arena + t.g;
    // AMSGrad's path reads one element a thread.
    int vec = t.vm == OPT_NONE && ((t.p | t.g | t.m | t.v) & 3) == 0;
    if (t.vm != OPT_NONE) {
        float* vm = arena + t.vm;
        for (u64 i = start + threadIdx.x; i < end; i += blockDim.x)
            amsgrad_one(p[i], g[i], m[i], v[i], vm[i], b1, b2, c1, c2, step, isb2, eps, l2,
                        decay);
        start = end;
    }
    if (vec) {
        u64 e4 = start + ((end - start) & ~(u64)3);
        for (u64 i = start + 4 * threadIdx.x; i < e4; i += 4 * blockDim.x) {
            float4 pv = *(float4*)(p + i), gv = *(const float4*)(g + i);
            float4 mv = *(float4*)(m + i), vv = *(float4*)(v + i);
            adam_one(pv.x, gv.x, mv.x, vv.x, b1, b2, c1, c2, step, isb2, eps, l2, decay);
            adam_one(pv.y, gv.y, mv.y, vv.y, b1, b2, c1, c2, step, isb2, eps, l2, decay);
            adam_one(pv.z, gv.z, mv.z, vv.z, b1, b2, c1, c2, step, isb2, eps, l2, decay);
            adam_one(pv.w, gv.w, mv.w, vv.w, b1, b2, c1, c2, step, isb2, eps, l2, decay);
            *(float4*)(p + i) = pv; *(float4*)(m + i) = mv; *(float4*)(v + i) = vv;
        }
        start = e4;
    }
    for (u64 i = start + threadIdx.x; i < end; i += blockDim.x)
        adam_one(p[i], g[i], m[i], v[i], b1, b2, c1, c2, step, isb2, eps, l2, decay);
    if (rec) {
        // Every thread of a block has read the record before the block takes its ticket; the
        // last block advances it.
        __shared__ int last;
        unsigned int* ticket = (unsigned int*)(rec + 7);
        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence();
            last = atomicAdd(ticket, 1u) == gridDim.x - 1;
        }
        __syncthreads();
        if (last && threadIdx.x == 0) {
            rec[5] = rec[5] * rec[3];
            rec[6] = rec[6] * rec[4];
            *ticket = 0u;
        }
    }
}

// Zeroes many ranges in one launch (gradients no op took in): pairs of (offset, len) in `r`.
// Every block takes its share of every range (grid-strided), so a long range is spread over the
// whole GPU (one block per range had left W-large's 16 M-float gradient to a single SM).
extern "C" __global__ void zero_ranges(float* arena, const u64* __restrict__ r, int count) {
    u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x, all = (u64)gridDim.x * blockDim.x;
    for (int k = 0; k < count; ++k) {
        float* y = arena + r[2 * k];
        u64 n = r[2 * k + 1];
        for (u64 i = t; i < n; i += all) y[i] = 0.0f;
    }
}

// Launched in a captured graph before its first optimizer launch that reads the per-step
// scalars (none where the step's one Adam launch advances them itself): advances them.
// rec[0] = number of records; record i (8 doubles at rec + 1 + 8 i): kind (0 SGD, 1 Adam,
// 2 a decaying rate), the output index in `dyn`, then SGD: the first-step flag; Adam: lr, beta1,
// beta2, beta1^t, beta2^t for the coming replay (the same repeated products the host optimizer
// uses, so the scalars are bit-identical to an eager step's); a decaying rate (Adagrad's): lr,
// lr_decay, the coming step t (its rate lr / (1 + (t - 1) lr_decay), as mote::optim::RmsUpdate
// computes it).
extern "C" __global__ void graph_tick(double* rec, float* dyn) {
    int n = (int)rec[0];
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        double* r = rec + 1 + 8 * i;
        int out = (int)r[1];
        if (r[0] == 0.0) {
            dyn[out] = (float)r[2];
            r[2] = 0.0;
        } else if (r[0] == 2.0) {
            // Rounded as the host rounds it: no fused multiply-add (NVRTC fuses by default).
            dyn[out] = (float)(r[2] / __dadd_rn(1.0, __dmul_rn(r[4] - 1.0, r[3])));
            r[4] = r[4] + 1.0;
        } else {
            double lr = r[2], b1 = r[3], b2 = r[4], p1 = r[5], p2 = r[6];
            dyn[out] = (float)(lr / (1.0 - p1));
            dyn[out + 1] = (float)(1.0 / sqrt(1.0 - p2));
            r[5] = p1 * b1;
            r[6] = p2 * b2;
        }
    }
}
