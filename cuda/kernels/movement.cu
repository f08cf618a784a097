// The strided copy behind reshape, transpose, broadcast_to, slice and concat (and their
// backward). Operands: 0 = src, 1 = dst. Loop dims (dst stride 0) are summed in one thread, so
// accumulation never races.
extern "C" __global__ void copy_walk(Walk w, const float* __restrict__ src,
                                     float* __restrict__ dst, int accumulate) {
    FOR_EACH(t, w.ptotal) {
        i64 base[4], o[4];
        walk_at(w, t, base);
        float s = 0.0f;
        for (u64 r = 0; r < w.ltotal; ++r) {
            walk_loop(w, r, base, o);
            s += src[o[0]];
        }
        if (w.ltotal == 1) s = src[base[0]];
        if (accumulate) dst[base[1]] += s; else dst[base[1]] = s;
    }
}

// The same with a long loop: a block of 32 x 32 threads takes 32 consecutive destination
// elements (coalesced along x) and splits the loop among its 32 rows (y), then sums the rows in
// shared memory. For bias gradients ([rows, n] summed over rows) with few outputs.
extern "C" __global__ void __launch_bounds__(1024) copy_walk_split(Walk w,
                                                                   const float* __restrict__ src,
                                                                   float* __restrict__ dst,
                                                                   int accumulate) {
    __shared__ float part[32][33];
    u64 t = (u64)blockIdx.x * 32 + threadIdx.x;
    i64 base[4], o[4];
    float s = 0.0f;
    if (t < w.ptotal) {
        walk_at(w, t, base);
        for (u64 r = threadIdx.y; r < w.ltotal; r += blockDim.y) {
            walk_loop(w, r, base, o);
            s += src[o[0]];
        }
    }
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && t < w.ptotal) {
        float acc = 0.0f;
        for (unsigned int y = 0; y < blockDim.y; ++y) acc += part[y][threadIdx.x];
        if (accumulate) dst[base[1]] += acc; else dst[base[1]] = acc;
    }
}

// dst (cols x rows) = src (rows x cols) transposed, both row-major: one 32 x 32 tile per block
// of 32 x 8 threads through shared memory, so that reads and writes are both coalesced. Tiles
// are numbered along a row of tiles first. For the K-major operand copies of TF32 products
// (src/ops/matmul.rs).
extern "C" __global__ void __launch_bounds__(256) transpose(const float* __restrict__ src,
                                                            float* __restrict__ dst, u64 rows,
                                                            u64 cols) {
    __shared__ float tile[32][33];
    u64 across = (cols + 31) / 32;
    u64 c0 = ((u64)blockIdx.x % across) * 32, r0 = ((u64)blockIdx.x / across) * 32;
    for (unsigned int j = threadIdx.y; j < 32; j += 8) {
        u64 r = r0 + j, c = c0 + threadIdx.x;
        if (r < rows && c < cols) tile[j][threadIdx.x] = src[r * cols + c];
    }
    __syncthreads();
    for (unsigned int j = threadIdx.y; j < 32; j += 8) {
        u64 c = c0 + j, r = r0 + threadIdx.x;
        if (c < cols && r < rows) dst[c * rows + r] = tile[threadIdx.x][j];
    }
}
