// Losses (mean reduction). Op codes: 0 mse, 1 cross-entropy (fused softmax + NLL, float class
// labels, label smoothing `smoothing`: 0 for none), 2 bce-with-logits. `status` is the status
// area: its first 3 u32 (flag, bad label, classes) report a bad label, which the host checks at
// the next read; the forward's ticket (byte 128) and partial sums (bytes 1024..2048) follow.

// A row the cross-entropies skip (the core's `IGNORED_LABEL`, -2^24): no loss, no gradient.
__device__ __forceinline__ int ignored_label(float l) { return l == -16777216.0f; }

__device__ __forceinline__ int bad_label(float l, u64 classes) {
    return !(l >= 0.0f && l < (float)classes && floorf(l) == l);
}

__device__ __forceinline__ void report(unsigned int* status, float l, u64 classes) {
    if (atomicCAS(status, 0u, 1u) == 0u) {
        status[1] = (l >= 0.0f && l == l && l < 4.0e9f) ? (unsigned int)l : 0xffffffffu;
        status[2] = (unsigned int)classes;
    }
}

// Blocks of 1024 threads compute the mean into y[0]. One block sums everything itself; with
// several (at most 256, for large inputs), each block's sum goes to the partials in the status
// area (bytes 1024..2048), and the last block to finish (counted by the ticket at byte 128, which
// it resets) adds them in block order: the same partition and order on every run.
// `b` (bcols floats), when not null: the bias of the linear layer whose output p is, still owed
// (`src/pending.rs`): p = p + b, broadcast over rows, is written here first.
extern "C" __global__ void __launch_bounds__(1024) loss_fwd(int op, float* __restrict__ p, const float* __restrict__ t,
                                    float* __restrict__ y, u64 n, u64 classes,
                                    unsigned int* status, float smoothing,
                                    const float* __restrict__ b, u64 bcols) {
    float s = 0.0f;
    u64 count = n;
    u64 tid = (u64)blockIdx.x * blockDim.x + threadIdx.x, all = (u64)gridDim.x * blockDim.x;
    if (op == 1) {
        // n = rows; one warp per row.
        int lane = threadIdx.x & 31;
        for (u64 row = tid >> 5; row < n; row += all >> 5) {
            float* z = p + row * classes;
            if (b) {
                for (u64 j = lane; j < classes; j += 32) z[j] += b[(row * classes + j) % bcols];
                __syncwarp();
            }
            float m = -3.40282347e38f;
            for (u64 j = lane; j < classes; j += 32) m = fmaxf(m, z[j]);
            m = warp_max(m);
            float e = 0.0f;
            for (u64 j = lane; j < classes; j += 32) e += expf(z[j] - m);
            e = warp_sum(e);
            // Smoothing: (1 - smoothing) nll + smoothing (ln e - sz / classes), sz the sum of
            // z - m: each term >= 0 (the core's form; no sum of raw logits to overflow).
            float sz = 0.0f;
            if (smoothing != 0.0f) {
                for (u64 j = lane; j < classes; j += 32) sz += z[j] - m;
                sz = warp_sum(sz);
            }
            if (lane == 0) {
                float l = t[row];
                if (ignored_label(l)) {
                } else if (bad_label(l, classes)) report(status, l, classes);
                else {
                    float ls = logf(e);
                    float nll = (m + ls) - z[(u64)l];
                    s += smoothing == 0.0f
                             ? nll
                             : (1.0f - smoothing) * nll + smoothing * (ls - sz / (float)classes);
                }
            }
        }
    } else {
        for (u64 i = tid; i < n; i += all) {
            float x = p[i], tv = t[i];
            if (b) {
                x += b[i % bcols];
                p[i] = x;
            }
            if (op == 0) { float d = x - tv; s += d * d; }
            else s += fmaxf(x, 0.0f) - x * tv + log1pf(expf(-fabsf(x)));
        }
    }
    s = block_sum(s);
    if (gridDim.x == 1) {
        if (threadIdx.x == 0) y[0] = s / (float)count;
        return;
    }
    volatile float* part = (volatile float*)(status + 256);
    unsigned int* ticket = status + 32;
    __shared__ int last;
    if (threadIdx.x == 0) {
        part[blockIdx.x] = s;
        __threadfence();
        last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    float v = threadIdx.x < gridDim.x ? part[threadIdx.x] : 0.0f;
    v = block_sum(v);
    if (threadIdx.x == 0) {
        y[0] = v / (float)count;
        *ticket = 0u;
    }
}

// The elementwise losses' (MSE, BCE) gradient factor: the upstream gradient `g` over n.
__device__ __forceinline__ float elem_k(int op, int lhs, float g, u64 n) {
    if (op == 0) {
        float k = 2.0f * g / (float)n;
        return lhs ? k : -k;
    }
    return g / (float)n;
}

// Their gradient at one element, added to `d`.
__device__ __forceinline__ float elem_grad(int op, int lhs, float k, float p, float t, float d) {
    if (op == 0) return d + k * (p - t);
    return d + (lhs ? k * (sigmoid_f(p) - t) : -k * p);
}

// Cross-entropy's gradient for one row, by one warp:
// (softmax(z) - (1 - smoothing) onehot(label) - smoothing / classes) * k, `k` the upstream
// gradient over the rows. Returns the sum of what this lane wrote (a row with a bad or an
// ignored label gets zeros, or keeps what it had with `acc`). With `loss`, lane 0 adds the row's loss to it
// (loss_fwd's formula).
__device__ __forceinline__ float ce_row_grad(const float* z, float* d, float l, u64 classes,
                                             int lane, float k, float smoothing, int acc,
                                             unsigned int* status, float* loss) {
    float hit = k * (1.0f - smoothing), even = k * smoothing / (float)classes;
    float s = 0.0f;
    if (ignored_label(l) || bad_label(l, classes)) {
        if (lane == 0 && !ignored_label(l)) report(status, l, classes);
        for (u64 j = lane; j < classes; j += 32) {
            float v = acc ? d[j] : 0.0f;
            d[j] = v;
            s += v;
        }
        return s;
    }
    float m = -3.40282347e38f;
    for (u64 j = lane; j < classes; j += 32) m = fmaxf(m, z[j]);
    m = warp_max(m);
    float e = 0.0f;
    for (u64 j = lane; j < classes; j += 32) e += expf(z[j] - m);
    e = warp_sum(e);
    if (loss) {
        float sz = 0.0f;
        if (smoothing != 0.0f) {
            for (u64 j = lane; j < classes; j += 32) sz += z[j] - m;
            sz = warp_sum(sz);
        }
        if (lane == 0) {
            float ls = logf(e);
            float nll = (m + ls) - z[(u64)l];
            *loss += smoothing == 0.0f
                         ? nll
                         : (1.0f - smoothing) * nll + smoothing * (ls - sz / (float)classes);
        }
    }
    float ks = k / e;
    for (u64 j = lane; j < classes; j += 32) {
        float v = (acc ? d[j] : 0.0f) + ks * expf(z[j] - m);
        if (smoothing != 0.0f) v -= even;
        if (j == (u64)l) v -= hit;
        d[j] = v;
        s += v;
    }
    return s;
}

// dx += dloss/dp * dy (lhs) or dloss/dt * dy (rhs; not for cross-entropy). `dy` is the device
// scalar the loss's gradient lives in; with `seeded`, it is `seed` instead (the backward's
// first gradient, written to dy[0] here rather than by a fill before). `acc` 0: dx = 0 + ...,
// dx not read (a row with a bad label gets zeros).
extern "C" __global__ void loss_bwd(int op, int lhs, const float* __restrict__ p,
                                    const float* __restrict__ t, float* dy,
                                    float* __restrict__ dx, u64 n, u64 classes,
                                    unsigned int* status, float smoothing, int acc, int seeded,
                                    float seed) {
    float g = seeded ? seed : dy[0];
    if (seeded && blockIdx.x == 0 && threadIdx.x == 0) dy[0] = seed;
    if (op != 1) {
        float k = elem_k(op, lhs, g, n);
        FOR_EACH(i, n) { dx[i] = elem_grad(op, lhs, k, p[i], t[i], acc ? dx[i] : 0.0f); }
    } else {
        // Cross-entropy: n = rows; one warp per row.
        float k = g / (float)n;
        u64 warps = ((u64)blockDim.x * gridDim.x) >> 5;
        int lane = threadIdx.x & 31;
        for (u64 row = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < n; row += warps)
            ce_row_grad(p + row * classes, dx + row * classes, t[row], classes, lane, k, smoothing,
                        acc, status, 0);
    }
}

// loss_bwd over a rows x cols gradient, then its column sums into db (the bias gradient of the
// linear layer whose output p is) in the same pass: 32 x 32 blocks, one per 32 columns, thread
// (x, y) taking rows y, y + 32, ... of its column (`colsum_store`). Cross-entropy needs a whole
// row in a warp: cols (the classes) at most 32, one block, warp y taking those rows.
// With `fwd` (one block only), the loss's forward too, into y[0]: first p += b (bcols floats,
// broadcast over rows) where b is not null, then the mean of the loss over the rows
// (cross-entropy) or elements.
extern "C" __global__ void __launch_bounds__(1024) loss_bwd_colsum(
    int op, int lhs, float* __restrict__ p, const float* __restrict__ t, float* dy, float* dx,
    u64 rows, u64 cols, unsigned int* status, float smoothing, int acc, int seeded, float seed,
    float* __restrict__ db, int db_acc, int fwd, float* __restrict__ y,
    const float* __restrict__ b, u64 bcols) {
    float g = seeded ? seed : dy[0];
    if (seeded && blockIdx.x == 0 && threadIdx.x == 0 && threadIdx.y == 0) dy[0] = seed;
    u64 col = (u64)blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f, loss = 0.0f;
    if (op == 1) {
        float k = g / (float)rows;
        for (u64 row = threadIdx.y; row < rows; row += 32) {
            float* z = p + row * cols;
            if (fwd && b) {
                if (threadIdx.x < cols) z[threadIdx.x] += b[(row * cols + threadIdx.x) % bcols];
                __syncwarp();
            }
            s += ce_row_grad(z, dx + row * cols, t[row], cols, threadIdx.x, k, smoothing, acc,
                             status, fwd ? &loss : 0);
        }
    } else if (col < cols) {
        float k = elem_k(op, lhs, g, rows * cols);
        for (u64 r = threadIdx.y; r < rows; r += 32) {
            u64 i = r * cols + col;
            float x = p[i], tv = t[i];
            if (fwd) {
                if (b) {
                    x += b[i % bcols];
                    p[i] = x;
                }
                if (op == 0) { float d = x - tv; loss += d * d; }
                else loss += fmaxf(x, 0.0f) - x * tv + log1pf(expf(-fabsf(x)));
            }
            float v = elem_grad(op, lhs, k, x, tv, acc ? dx[i] : 0.0f);
            dx[i] = v;
            s += v;
        }
    }
    if (fwd) {
        // The block's sum: each warp's, then warp 0 over the warps.
        __shared__ float part[32];
        loss = warp_sum(loss);
        if (threadIdx.x == 0) part[threadIdx.y] = loss;
        __syncthreads();
        if (threadIdx.y == 0) {
            loss = warp_sum(part[threadIdx.x]);
            if (threadIdx.x == 0) y[0] = loss / (float)(op == 1 ? rows : rows * cols);
        }
    }
    colsum_store(s, dx, db, rows, cols, db_acc);
}
