// A 2-D convolution's data movement, for passes that run as im2col, cuBLAS products and
// col2im over a chunk of `nc` images (src/ops/conv.rs). The geometry is a descriptor table of
// 15 u64 words: C, H, W, O, G, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW. Every index of a launch
// fits 32 bits (the host makes chunks that small), so the index arithmetic is 32-bit.
//
// The column buffer is `[C * KH * KW, nc * OH * OW]`, row r = (c * KH + i) * KW + j, column
// q = n * OH * OW + oh * OW + ow: group g's rows are the block `g * (C / G) * KH * KW ..`, so a
// group's product reads one contiguous block.

struct ConvGeo {
    int c, h, w, o, g, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow;
};

__device__ __forceinline__ ConvGeo conv_geo(const u64* t) {
    ConvGeo g;
    g.c = (int)t[0]; g.h = (int)t[1]; g.w = (int)t[2]; g.o = (int)t[3]; g.g = (int)t[4];
    g.kh = (int)t[5]; g.kw = (int)t[6]; g.sh = (int)t[7]; g.sw = (int)t[8];
    g.ph = (int)t[9]; g.pw = (int)t[10]; g.dh = (int)t[11]; g.dw = (int)t[12];
    g.oh = (int)t[13]; g.ow = (int)t[14];
    return g;
}

// col[r, q] = x[n, c, oh * SH + i * DH - PH, ow * SW + j * DW - PW], 0 in the padding. One
// thread per column element: consecutive threads write consecutive positions.
extern "C" __global__ void im2col(const u64* geo, const float* __restrict__ x,
                                  float* __restrict__ col, u64 nc) {
    ConvGeo g = conv_geo(geo);
    unsigned int p = g.oh * g.ow, q_len = (unsigned int)nc * p;
    u64 total = (u64)(g.c * g.kh * g.kw) * q_len;
    FOR_EACH(t64, total) {
        unsigned int t = (unsigned int)t64;
        unsigned int r = t / q_len, q = t % q_len;
        unsigned int n = q / p, pos = q % p;
        int oh = (int)(pos / g.ow), ow = (int)(pos % g.ow);
        int j = (int)r % g.kw, i = ((int)r / g.kw) % g.kh, c = (int)r / (g.kw * g.kh);
        int ih = oh * g.sh + i * g.dh - g.ph, iw = ow * g.sw + j * g.dw - g.pw;
        float v = 0.0f;
        if (ih >= 0 && ih < g.h && iw >= 0 && iw < g.w)
            v = x[((n * (unsigned int)g.c + c) * g.h + ih) * (unsigned int)g.w + iw];
        col[t] = v;
    }
}

// dx[n, c, h, w] (+)= sum of dcol[r, q] over the taps (i, j) and positions (oh, ow) that read
// x[n, c, h, w]: a gather, one thread per input element, no atomics (deterministic).
extern "C" __global__ void col2im(const u64* geo, const float* __restrict__ dcol,
                                  float* __restrict__ dx, u64 nc, int acc) {
    ConvGeo g = conv_geo(geo);
    unsigned int p = g.oh * g.ow, q_len = (unsigned int)nc * p;
    u64 total = (u64)nc * (u64)(g.c * g.h * g.w);
    FOR_EACH(t64, total) {
        unsigned int t = (unsigned int)t64;
        int w = (int)(t % (unsigned int)g.w), h = (int)(t / (unsigned int)g.w % (unsigned int)g.h);
        unsigned int nc_ = t / (unsigned int)(g.w * g.h);
        int c = (int)(nc_ % (unsigned int)g.c);
        unsigned int n = nc_ / (unsigned int)g.c;
        float s = 0.0f;
        for (int i = 0; i < g.kh; ++i) {
            int a = h + g.ph - i * g.dh;  // oh * SH
            if (a < 0 || a % g.sh != 0 || a / g.sh >= g.oh) continue;
            int oh = a / g.sh;
            for (int j = 0; j < g.kw; ++j) {
                int b = w + g.pw - j * g.dw;  // ow * SW
                if (b < 0 || b % g.sw != 0 || b / g.sw >= g.ow) continue;
                unsigned int r = (unsigned int)((c * g.kh + i) * g.kw + j);
                s += dcol[r * q_len + n * p + (unsigned int)(oh * g.ow + b / g.sw)];
            }
        }
        dx[t] = acc ? dx[t] + s : s;
    }
}

// out[o, n * OH * OW + pos] = dy[n, o, pos]: the output's gradient with images next to each
// other, so that the weight's gradient is one product per group.
extern "C" __global__ void conv_dy_perm(const u64* geo, const float* __restrict__ dy,
                                        float* __restrict__ out, u64 nc) {
    ConvGeo g = conv_geo(geo);
    unsigned int p = g.oh * g.ow, q_len = (unsigned int)nc * p;
    u64 total = (u64)g.o * q_len;
    FOR_EACH(t64, total) {
        unsigned int t = (unsigned int)t64;
        unsigned int o = t / q_len, q = t % q_len;
        unsigned int n = q / p, pos = q % p;
        out[t] = dy[(n * (unsigned int)g.o + o) * p + pos];
    }
}

// Pooling over planes (N * C of them), read in place. The geometry is a table of 10 u64 words:
// H, W, KH, KW, SH, SW, PH, PW, OH, OW. The results follow the core's im2col path: max starts
// from the first tap (padding counts as the smallest finite value) and takes any greater or NaN
// tap, row-major; average sums the taps inside the input from zero, times 1 / (KH * KW).
struct PoolGeo {
    int h, w, kh, kw, sh, sw, ph, pw, oh, ow;
};

__device__ __forceinline__ PoolGeo pool_geo(const u64* t) {
    PoolGeo g;
    g.h = (int)t[0]; g.w = (int)t[1]; g.kh = (int)t[2]; g.kw = (int)t[3];
    g.sh = (int)t[4]; g.sw = (int)t[5]; g.ph = (int)t[6]; g.pw = (int)t[7];
    g.oh = (int)t[8]; g.ow = (int)t[9];
    return g;
}

// Tap (i, j) of window (oy, ox) of a plane, or the padding value.
__device__ __forceinline__ float pool_tap(const PoolGeo& g, const float* xp, int oy, int ox,
                                          int i, int j, float pad) {
    int iy = oy * g.sh + i - g.ph, ix = ox * g.sw + j - g.pw;
    return (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) ? xp[iy * g.w + ix] : pad;
}

__device__ __forceinline__ float max_step(float m, float v) { return (v > m || v != v) ? v : m; }

extern "C" __global__ void pool_fwd(int max, const u64* geo, const float* __restrict__ x,
                                    float* __restrict__ y, u64 planes) {
    PoolGeo g = pool_geo(geo);
    unsigned int op = (unsigned int)(g.oh * g.ow);
    float inv = 1.0f / (float)(g.kh * g.kw);
    FOR_EACH(t64, planes * op) {
        unsigned int t = (unsigned int)t64, plane = t / op, o = t % op;
        int oy = (int)o / g.ow, ox = (int)o % g.ow;
        const float* xp = x + (u64)plane * (unsigned int)(g.h * g.w);
        float r;
        if (max) {
            r = pool_tap(g, xp, oy, ox, 0, 0, -3.40282347e+38f);
            for (int i = 0; i < g.kh; ++i)
                for (int j = 0; j < g.kw; ++j)
                    r = max_step(r, pool_tap(g, xp, oy, ox, i, j, -3.40282347e+38f));
        } else {
            float s = 0.0f;
            for (int i = 0; i < g.kh; ++i)
                for (int j = 0; j < g.kw; ++j) {
                    int iy = oy * g.sh + i - g.ph, ix = ox * g.sw + j - g.pw;
                    if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) s += xp[iy * g.w + ix];
                }
            r = s * inv;
        }
        y[t] = r;
    }
}

// dx (+)= every window's share at each input element, gathered (no atomics): max pooling routes
// a window's gradient to the first tap that holds its maximum (none when that tap is padding),
// average pooling adds dy / (KH * KW) to every tap inside the input.
extern "C" __global__ void pool_bwd(int max, const u64* geo, const float* __restrict__ x,
                                    const float* __restrict__ y, const float* __restrict__ dy,
                                    float* __restrict__ dx, u64 planes, int acc) {
    PoolGeo g = pool_geo(geo);
    unsigned int ip = (unsigned int)(g.h * g.w), op = (unsigned int)(g.oh * g.ow);
    float inv = 1.0f / (float)(g.kh * g.kw);
    FOR_EACH(t64, planes * ip) {
        unsigned int t = (unsigned int)t64, plane = t / ip, pos = t % ip;
        int iy = (int)pos / g.w, ix = (int)pos % g.w;
        const float* xp = x + (u64)plane * ip;
        const float* yp = y + (u64)plane * op;
        const float* dyp = dy + (u64)plane * op;
        // Windows whose tap rows cover iy: oy * SH <= iy + PH < oy * SH + KH.
        int ay = iy + g.ph, ax = ix + g.pw;
        int oy0 = ay - g.kh + 1 > 0 ? (ay - g.kh + 1 + g.sh - 1) / g.sh : 0;
        int ox0 = ax - g.kw + 1 > 0 ? (ax - g.kw + 1 + g.sw - 1) / g.sw : 0;
        int oy1 = ay / g.sh < g.oh - 1 ? ay / g.sh : g.oh - 1;
        int ox1 = ax / g.sw < g.ow - 1 ? ax / g.sw : g.ow - 1;
        float s = 0.0f;
        for (int oy = oy0; oy <= oy1; ++oy)
            for (int ox = ox0; ox <= ox1; ++ox) {
                int o = oy * g.ow + ox;
                int tap = (ay - oy * g.sh) * g.kw + (ax - ox * g.sw);
                if (max) {
                    float m = yp[o];
                    bool nan = m != m;
                    int hit = -1;
                    for (int k = 0; k < g.kh * g.kw && hit < 0; ++k) {
                        float v = pool_tap(g, xp, oy, ox, k / g.kw, k % g.kw, -3.40282347e+38f);
                        if (nan ? v != v : v == m) hit = k;
                    }
                    if (hit == tap) s += dyp[o];
                } else {
                    s += dyp[o] * inv;
                }
            }
        dx[t] = acc ? dx[t] + s : s;
    }
}
