/* One causal-decoding step of attention on the CPU: flowbench's key/value cache (see
 * methods/transformer.py, KVCache) calls it through ctypes, once per layer and token.
 *
 * Each (image, head) row has one new query, key and value. The step stores the key and value
 * at position `pos`, then attends with the query over positions 0..pos:
 *     out = softmax(q . k_t * scale over t <= pos) . v
 * the arithmetic of torch's scaled_dot_product_attention for one query.
 *
 * Why not torch: at a few hundred images the step is memory-bound. Every step reads back every
 * key and value written so far, and ATen's batched products walk them one (image, head) row at
 * a time. Here the cache is time-major, (2, tokens, rows, dim), so one step reads positions
 * 0..pos as one contiguous block, which the hardware prefetchers stream.
 *
 * Rows are split into tiles, one or more per thread. Built with -fopenmp, the parallel loop runs
 * on the OpenMP runtime that torch has already loaded (libgomp.so.1 resolves by soname to its
 * copy), so it shares torch's threads and thread count instead of competing with them.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef float vec __attribute__((vector_size(32))); /* 8 floats: 2 SSE or 1 AVX register */
enum { LANES = 8, MAX_TILE = 512 };

static inline vec load(const float *p) {
    vec v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store(float *p, vec v) { memcpy(p, &v, sizeof v); }

static inline float sum_lanes(vec v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

/* Rows [r0, r1) of a step; dim = nv * 8. Inlined into a switch on nv so that the common head
 * sizes get loops of constant length. Scratch: n * dim floats (queries, then the outputs'
 * accumulators) and n * (pos + 1) scores. Returns 0, or -1 if the scratch was not allocated. */
static inline __attribute__((always_inline)) int tile(
    const float *qkv, float *keys, float *values, float *out, int64_t heads, int64_t rows,
    int64_t nv, int64_t pos, float scale, int64_t r0, int64_t r1) {
    const int64_t n = r1 - r0, dim = nv * LANES;
    /* All scratch first, so that a failed allocation leaves the cache as it was. */
    vec *acc = aligned_alloc(sizeof(vec), n * dim * sizeof(float)); /* a multiple of 32 bytes */
    float *scores = malloc(n * (pos + 1) * sizeof(float)); /* (position, row) */
    float *norm = malloc(n * sizeof(float));
    if (!acc || !scores || !norm) {
        free(acc);
        free(scores);
        free(norm);
        return -1;
    }
    for (int64_t r = r0; r < r1; r++) { /* store this step's key and value, load the query */
        const float *q = qkv + (r / heads * 3 * heads + r % heads) * dim; /* qkv: (b, 3, h, dim) */
        memcpy(keys + (pos * rows + r) * dim, q + heads * dim, dim * sizeof(float));
        memcpy(values + (pos * rows + r) * dim, q + 2 * heads * dim, dim * sizeof(float));
        for (int64_t e = 0; e < nv; e++) acc[(r - r0) * nv + e] = load(q + e * LANES) * scale;
    }
    for (int64_t t = 0; t <= pos; t++) { /* scores: the keys of position t, all rows in a run */
        const float *k = keys + (t * rows + r0) * dim;
        for (int64_t i = 0; i < n; i++) {
            vec s = acc[i * nv] * load(k + i * dim);
            for (int64_t e = 1; e < nv; e++) s += acc[i * nv + e] * load(k + i * dim + e * LANES);
            scores[t * n + i] = sum_lanes(s);
        }
    }
    for (int64_t i = 0; i < n; i++) { /* softmax over positions, less its max for range */
        float m = -INFINITY, sum = 0.0f;
        for (int64_t t = 0; t <= pos; t++) m = fmaxf(m, scores[t * n + i]);
        for (int64_t t = 0; t <= pos; t++) {
            float p = expf(scores[t * n + i] - m);
            scores[t * n + i] = p;
            sum += p;
        }
        norm[i] = 1.0f / sum;
        for (int64_t e = 0; e < nv; e++) acc[i * nv + e] = (vec){0};
    }
    for (int64_t t = 0; t <= pos; t++) { /* weighted sum of the values, position by position */
        const float *v = values + (t * rows + r0) * dim;
        for (int64_t i = 0; i < n; i++) {
            const float p = scores[t * n + i];
            for (int64_t e = 0; e < nv; e++) acc[i * nv + e] += p * load(v + i * dim + e * LANES);
        }
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t e = 0; e < nv; e++)
            store(out + (r0 + i) * dim + e * LANES, acc[i * nv + e] * norm[i]);
    free(norm);
    free(acc);
    free(scores);
    return 0;
}

static int tile_dispatch(const float *qkv, float *keys, float *values, float *out,
                         int64_t heads, int64_t rows, int64_t nv, int64_t pos, float scale,
                         int64_t r0, int64_t r1) {
    switch (nv) { /* constant loop lengths for head sizes 8, 16, 24, 32, 64 */
    case 1: return tile(qkv, keys, values, out, heads, rows, 1, pos, scale, r0, r1);
    case 2: return tile(qkv, keys, values, out, heads, rows, 2, pos, scale, r0, r1);
    case 3: return tile(qkv, keys, values, out, heads, rows, 3, pos, scale, r0, r1);
    case 4: return tile(qkv, keys, values, out, heads, rows, 4, pos, scale, r0, r1);
    case 8: return tile(qkv, keys, values, out, heads, rows, 8, pos, scale, r0, r1);
    default: return tile(qkv, keys, values, out, heads, rows, nv, pos, scale, r0, r1);
    }
}

/* qkv: (batch, 3, heads, dim), this step's projections, contiguous float32.
 * cache: (2, tokens, batch * heads, dim), keys then values, float32.
 * out: (batch, heads, dim). dim must be a multiple of 8, 0 <= pos < tokens.
 * Returns 0, -1 if scratch memory could not be allocated (a tile that failed left its rows of
 * the cache unwritten, other tiles may have written theirs), -2 for a bad shape. */
int flowbench_decode_attention(const float *qkv, float *cache, float *out, int64_t batch,
                               int64_t heads, int64_t tokens, int64_t dim, int64_t pos,
                               float scale) {
    if (dim <= 0 || dim % LANES || pos < 0 || pos >= tokens || batch <= 0 || heads <= 0)
        return -2;
    const int64_t rows = batch * heads;
    float *keys = cache, *values = cache + tokens * rows * dim;
    int64_t threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    int64_t tiles = rows < threads ? rows : threads; /* one tile per thread... */
    if ((rows + tiles - 1) / tiles > MAX_TILE) tiles = (rows + MAX_TILE - 1) / MAX_TILE; /* ...of bounded scratch */
    int failed = 0;
#pragma omp parallel for schedule(static) if (tiles > 1) reduction(| : failed)
    for (int64_t c = 0; c < tiles; c++)
        failed |= tile_dispatch(qkv, keys, values, out, heads, rows, dim / LANES, pos, scale,
                                rows * c / tiles, rows * (c + 1) / tiles);
    return failed ? -1 : 0;
}
