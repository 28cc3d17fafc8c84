/*
 * rows.c - full-cache attention rows, produced in blocks of queries (see rows.h).
 *
 * Where the time goes (BENCHMARKS.md): for qk traces the floor is the SGEMM of the logits,
 * T^2/2 * head_dim multiply-adds per query head. The query heads of a GQA group share
 * their keys, so a block of the group's queries is one SGEMM with M = group * block_rows rows
 * against the group's keys 0..t1-1 (the packed keys are reused by all of them), written
 * straight into the caller's row buffer, where the softmax then runs in place. The
 * softmax is vectorised (an exp of our own, below, so it vectorises without -ffast-math)
 * and compiled for AVX-512, AVX2 and baseline x86-64 (target_clones): in a full-only
 * replay it now takes about half the SGEMM's time (18% against 38% of the CPU), where with
 * libm's scalar expf it took more than the SGEMM.
 */
#define _DEFAULT_SOURCE   /* madvise */
#include "sim/rows.h"
#include "sim/simd.h"

#include <gsl/gsl_cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <sys/mman.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* OpenBLAS's thread control, when OpenBLAS is the BLAS linked (weak: absent otherwise). */
extern int openblas_get_num_threads(void) __attribute__((weak));
extern void openblas_set_num_threads(int n) __attribute__((weak));

int kv_blas_single_begin(void)
{
    if (!openblas_get_num_threads || !openblas_set_num_threads)
        return 0;
    int previous = openblas_get_num_threads();
    if (previous != 1)
        openblas_set_num_threads(1);
    return previous;
}

void kv_blas_threads_restore(int previous)
{
    if (previous > 1 && openblas_set_num_threads)
        openblas_set_num_threads(previous);
}

/*
 * OpenBLAS's work buffer: each thread that calls a BLAS routine gets one on its first
 * call and keeps it. OpenBLAS retries a failed buffer allocation forever, so under a
 * memory limit a replay that ran out of memory hung instead of failing.
 */
#define KV_BLAS_BUFFER_BYTES (((size_t)128 << 20) + ((size_t)1 << 20))

int kv_blas_prepare(char *err, size_t err_len)
{
    static int prepared;
    if (prepared)
        return 0;
    int n = 1;
#ifdef _OPENMP
    n = omp_get_max_threads();
#endif
    void *probe = malloc((size_t)n * KV_BLAS_BUFFER_BYTES);   /* address space only */
    if (!probe) {
        snprintf(err, err_len, "out of memory: the BLAS needs %zu MiB of work buffers for "
                 "%d threads (raise the memory limit or lower OMP_NUM_THREADS)",
                 (size_t)n * (KV_BLAS_BUFFER_BYTES >> 20), n);
        return 1;
    }
    free(probe);
    int blas = kv_blas_single_begin();
    /* one product per thread, above OpenBLAS's small-matrix path, which uses no buffer */
    enum { N = 96 };
    #pragma omp parallel num_threads(n)
    {
        static const float a[N * N], b[N * N];
        float *c = malloc(N * N * sizeof *c);
        if (c)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, N, N, 1.0f, a, N, b, N,
                        0.0f, c, N);
        free(c);
    }
    kv_blas_threads_restore(blas);
    prepared = 1;
    return 0;
}

int kv_blas_can_shut_down(void)
{
    int n = openblas_get_num_threads ? openblas_get_num_threads() : 1;
    void *probe = malloc((size_t)(n > 1 ? n : 1) * KV_BLAS_BUFFER_BYTES);
    free(probe);
    return probe != NULL;
}

/* ------------------------------------------------------------ memory */

void *kv_alloc_large(size_t bytes)
{
    const size_t huge = (size_t)2 << 20;
    if (bytes < 2 * huge)
        return malloc(bytes ? bytes : 1);
    void *p = NULL;
    if (posix_memalign(&p, huge, (bytes + huge - 1) / huge * huge) != 0)
        return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, (bytes + huge - 1) / huge * huge, MADV_HUGEPAGE);   /* advice: may be refused */
#endif
    return p;
}

/* ------------------------------------------------------------ exp */

/*
 * e^x for x <= 0 in float32, within 1 ulp of the correctly rounded value on a scan of
 * [-104, 0] in steps of 1e-4 (tests/test_rows.c checks 2 ulps against double precision,
 * tails and denormals included): x = n ln2 + r with |r| <= ~ln2/2 (ln2 split
 * in two so n ln2 is exact), e^r by its Taylor series to degree 7 (truncation 5e-9
 * relative), times 2^n built in the exponent bits as two factors so that results down to
 * the least denormal come out right. x < -104 gives 0 (below half the least float).
 * Plain float arithmetic and integer bit operations, so that GCC vectorises it (16 lanes
 * with AVX-512) inside `omp simd` loops, where libm's expf is a scalar call.
 */
static inline float exp_nonpositive(float x)
{
    const float log2e = 1.44269504f, shift = 0x1.8p23f;
    const float ln2_hi = 0.693145751953125f, ln2_lo = 1.42860676533018704e-06f;
    /* clamp at -104 on the bits (for x <= 0 a larger pattern is a more negative x): an
     * integer min vectorises where a float compare-and-select does not at -O2 */
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u = u < 0xC2D00000u ? u : 0xC2D00000u;   /* -104.0f */
    memcpy(&x, &u, sizeof x);
    float kd = x * log2e + shift;            /* 1.5 * 2^23 + n, n = round(x / ln2) */
    float n = kd - shift;
    float r = (x - n * ln2_hi) - n * ln2_lo;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t ni;
    memcpy(&ni, &kd, sizeof ni);
    ni -= 0x4B400000;                        /* n, in -151..0 */
    int32_t n1 = ni / 2, n2 = ni - n1;       /* 2^n = 2^n1 * 2^n2, both normal floats */
    int32_t b1 = (n1 + 127) << 23, b2 = (n2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    return p * s1 * s2;
}

/* ------------------------------------------------------------ top-k of a row */

enum { TOPK_SPAN = 64 };   /* keys per vector step of the top-k scan */

/* Inserts key j into the sorted list top[0..*n) of at most k keys (best first). Keys
 * arrive newest first, so an equal older key stays behind (rule 4). */
static inline void topk_insert(const float *p, int j, int k, int *top, int *n)
{
    int i = *n < k ? (*n)++ : k - 1;
    while (i > 0 && p[j] > p[top[i - 1]]) {
        top[i] = top[i - 1];
        i--;
    }
    top[i] = j;
}

/* The value a key must beat to enter the list: the k-th best, or -1 (every key, all
 * being >= 0) while the list is not full. */
static inline float topk_bar(const float *p, int k, const int *top, int n)
{
    return n < k ? -1.0f : p[top[k - 1]];
}

/* Keys of span[0..len) above bar, len a constant after inlining: a fixed-length loop with
 * a plain integer sum, which GCC vectorises at -O2 (an `omp simd` reduction per span
 * costs twice as much). */
static inline int count_above(const float *span, int len, float bar)
{
    int c = 0;
    for (int j = 0; j < len; j++)
        c += span[j] > bar;
    return c;
}

/* Offers keys hi, hi-1, ..., lo (newest first, any number) one by one. */
static inline void topk_scan(const float *p, int lo, int hi, int k, int *top, int *n)
{
    for (int i = hi; i >= lo; i--)
        if (*n < k || p[i] > p[top[k - 1]])
            topk_insert(p, i, k, top, n);
}

/* Offers the TOPK_SPAN keys ending at hi: one vector count against the current k-th best
 * skips the span (most spans, once the list is full: 83% of them on a generated trace),
 * and a span that has candidates is looked at in quarters, so only those are scanned. */
static inline void topk_span(const float *p, int hi, int k, int *top, int *n)
{
    enum { QUARTER = TOPK_SPAN / 4 };
    if (!count_above(p + hi - (TOPK_SPAN - 1), TOPK_SPAN, topk_bar(p, k, top, *n)))
        return;
    for (int qh = hi; qh > hi - TOPK_SPAN; qh -= QUARTER)
        if (count_above(p + qh - (QUARTER - 1), QUARTER, topk_bar(p, k, top, *n)))
            topk_scan(p, qh - (QUARTER - 1), qh, k, top, n);
}

KV_SIMD_CLONES void kv_row_topk(const float *p, int t, int k, int *top)
{
    int n = 0, hi = t;
    for (; hi >= TOPK_SPAN - 1; hi -= TOPK_SPAN)
        topk_span(p, hi, k, top, &n);
    topk_scan(p, 0, hi, k, top, &n);   /* the first keys, fewer than a span */
}

/* ------------------------------------------------------------ softmax */

/*
 * Softmax of one row of logits over j <= t, in place (float32 exponentials after max
 * subtraction, normaliser in double); x[t+1 .. t1) = 0. When top is not NULL the row's
 * top k keys (kv_row_topk's order) are found in the last pass, span by span while each
 * span is in L1, rather than by another pass over the row. Returns the row's
 * log-normaliser log sum_{j<=t} e^{x_j} (max + log of the double sum).
 */
static KV_SIMD_CLONES double softmax_row(float *x, int t, int t1, int *top, int k)
{
    int n = t + 1;
    float max = x[0], nonfinite = 0.0f;   /* x * 0 is NaN exactly when x is Inf or NaN */
    #pragma omp simd reduction(max:max) reduction(+:nonfinite)
    for (int j = 0; j < n; j++) {
        max = x[j] > max ? x[j] : max;
        nonfinite += x[j] * 0.0f;
    }
    if (nonfinite != 0.0f)
        return NAN;   /* an overflowing logit: the row would be NaN */
    double sum = 0.0;
    #pragma omp simd reduction(+:sum)
    for (int j = 0; j < n; j++) {
        float e = exp_nonpositive(x[j] - max);
        x[j] = e;
        sum += e;
    }
    float inv = (float)(1.0 / sum);
    int n_top = 0, hi = t;
    for (; hi >= TOPK_SPAN - 1; hi -= TOPK_SPAN) {   /* newest span first, for the top-k */
        float *span = x + hi - (TOPK_SPAN - 1);
        for (int j = 0; j < TOPK_SPAN; j++)
            span[j] *= inv;
        if (top)
            topk_span(x, hi, k, top, &n_top);
    }
    for (int j = 0; j <= hi; j++)
        x[j] *= inv;
    if (top)
        topk_scan(x, 0, hi, k, top, &n_top);
    for (int j = n; j < t1; j++)
        x[j] = 0.0f;
    return (double)max + log(sum);
}

KV_SIMD_CLONES void kv_row_span_sums(const float *p, int t, double *cum)
{
    int n_spans = (t + 1) / KV_ROW_SPAN;
    for (int s = 0; s < n_spans; s++) {
        const float *x = p + (size_t)s * KV_ROW_SPAN;
        double a[8] = { 0 };   /* lane l sums x[l], x[l + 8], ...: the same in every clone */
        for (int j = 0; j < KV_ROW_SPAN; j += 8)
            for (int l = 0; l < 8; l++)
                a[l] += x[j + l];
        cum[s] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    }
}

/* kv_attn_rows_from_qk, and when lse is not NULL each row's log-normaliser to
 * lse[i * lse_stride + t]; when cum is not NULL the span sums of each row t >= t_top
 * (kv_row_span_sums) to cum + row * n_cum, while the row is in L1. Returns the first row
 * whose logits are not finite, or -1. */
static int rows_from_qk(const float *q, int n_q, const float *k, int head_dim, double scale,
                         int t0, int t1, float *out, size_t row_stride, int *top, int n_top,
                         int t_top, double *lse, size_t lse_stride, double *cum, size_t n_cum)
{
    int block_rows = t1 - t0;
    /* out[(i * block_rows + t - t0) * row_stride + j] = scale * q_t . k_j for j < t1: one product for
     * the group, its keys packed once */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n_q * block_rows, t1, head_dim,
                (float)scale, q, head_dim, k, head_dim, 0.0f, out, (int)row_stride);
    for (int i = 0; i < n_q; i++)
        for (int t = t0; t < t1; t++) {
            size_t row = (size_t)i * block_rows + (size_t)(t - t0);
            double l = softmax_row(out + row * row_stride, t, t1,
                                   top && t >= t_top ? top + row * n_top : NULL, n_top);
            if (isnan(l))
                return (int)row;
            if (lse)
                lse[(size_t)i * lse_stride + (size_t)t] = l;
            if (cum && t >= t_top)
                kv_row_span_sums(out + row * row_stride, t, cum + row * n_cum);
        }
    return -1;
}

int kv_attn_rows_from_qk(const float *q, int n_q, const float *k, int head_dim, double scale,
                         int t0, int t1, float *out, size_t row_stride, int *top, int n_top,
                         int t_top)
{
    return rows_from_qk(q, n_q, k, head_dim, scale, t0, t1, out, row_stride, top, n_top, t_top, NULL, 0,
                 NULL, 0);
}

/* ------------------------------------------------------------ sparse rows */

/* scale * q_i . k for four query rows at once (one pass over the key), float sums. */
static inline void dot4(const float *q, size_t q_stride, const float *key, int hd,
                        float *d0, float *d1, float *d2, float *d3)
{
    const float *q0 = q, *q1 = q + q_stride, *q2 = q + 2 * q_stride, *q3 = q + 3 * q_stride;
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    #pragma omp simd reduction(+:a0, a1, a2, a3)
    for (int d = 0; d < hd; d++) {
        a0 += q0[d] * key[d];
        a1 += q1[d] * key[d];
        a2 += q2[d] * key[d];
        a3 += q3[d] * key[d];
    }
    *d0 = a0, *d1 = a1, *d2 = a2, *d3 = a3;
}

static inline float dot1(const float *q, const float *key, int hd)
{
    float a = 0;
    #pragma omp simd reduction(+:a)
    for (int d = 0; d < hd; d++)
        a += q[d] * key[d];
    return a;
}

KV_SIMD_CLONES void kv_attn_rows_sparse(const float *q, size_t q_stride, int n_q, const float *k,
                                   int head_dim, double scale, const double *lse,
                                   size_t lse_stride, const int *pos, int n, int t,
                                   float *out, size_t out_stride)
{
    int i = 0;
    for (; i + 4 <= n_q; i += 4) {   /* four heads per pass over the keys */
        float *o = out + (size_t)i * out_stride;
        const float *qi = q + (size_t)i * q_stride;
        for (int s = 0; s <= n; s++) {
            const float *key = k + (size_t)(s < n ? pos[s] : t) * head_dim;
            dot4(qi, q_stride, key, head_dim, o + s, o + out_stride + s,
                 o + 2 * out_stride + s, o + 3 * out_stride + s);
        }
    }
    for (; i < n_q; i++) {
        float *o = out + (size_t)i * out_stride;
        const float *qi = q + (size_t)i * q_stride;
        for (int s = 0; s <= n; s++)
            o[s] = dot1(qi, k + (size_t)(s < n ? pos[s] : t) * head_dim, head_dim);
    }
    for (i = 0; i < n_q; i++) {   /* p = e^(x - lse), x = scale * dot */
        float *o = out + (size_t)i * out_stride;
        double l = lse[(size_t)i * lse_stride];
        #pragma omp simd
        for (int s = 0; s <= n; s++)
            o[s] = exp_nonpositive((float)((double)o[s] * scale - l));
    }
}

/* ------------------------------------------------------------ the row producer */

struct kv_row_producer {
    kv_trace *tr;
    const kv_trace_info *info;
    int layer;      /* the layer loaded (attn: the layer read), -1 before any */
    int block;
    size_t row_stride;      /* row stride of the output (kv_producer_row_stride) */
    int group;      /* query heads per KV head */
    float *q;       /* qk: n_heads * T * head_dim */
    float *k;       /* qk: n_kv_heads * T * head_dim */
    float *v;       /* when the trace has v: n_kv_heads * T * head_dim, else NULL */
    float *qs;      /* qk: per task, the group's queries of one block: n_heads * block *
                       head_dim in all, task g at g * group * block * head_dim */
    float *out;     /* kv_producer_block's buffer: n_heads * block * row_stride, allocated on use */
    double *lse;    /* kv_producer_set_lse: where qk fills put each row's log-normaliser */
};

kv_row_producer *kv_producer_new(kv_trace *tr, int block, char *err, size_t err_len)
{
    const kv_trace_info *in = kv_trace_get_info(tr);
    size_t T = (size_t)in->n_tokens, hd = (size_t)in->head_dim;
    kv_row_producer *r = calloc(1, sizeof *r);
    if (!r)
        goto nomem;
    r->tr = tr;
    r->info = in;
    r->layer = -1;
    r->block = block;
    r->group = in->n_heads / in->n_kv_heads;
    r->row_stride = in->source == KV_SOURCE_QK ? (T + 15) / 16 * 16 + 16 : T;
    if (in->source == KV_SOURCE_QK) {
        r->q = kv_alloc_large((size_t)in->n_heads * T * hd * sizeof(float));
        r->k = kv_alloc_large((size_t)in->n_kv_heads * T * hd * sizeof(float));
        r->qs = malloc((size_t)in->n_heads * (size_t)block * hd * sizeof(float));
        if (!r->q || !r->k || !r->qs)
            goto nomem;
    }
    if (in->has_v && !(r->v = kv_alloc_large((size_t)in->n_kv_heads * T * hd * sizeof(float))))
        goto nomem;
    return r;
nomem:
    snprintf(err, err_len, "%s: out of memory preparing the rows", kv_trace_path(tr));
    kv_producer_close(r);
    return NULL;
}

/* Rows of q, k and v are read in pieces when the layer has any of them. */
static int reads_vectors(const kv_row_producer *r)
{
    return r->info->source == KV_SOURCE_QK || r->v;
}

int kv_producer_n_load_pieces(const kv_row_producer *r)
{
    const kv_trace_info *in = r->info;
    return reads_vectors(r) ? (in->n_tokens + KV_ROWS_PIECE - 1) / KV_ROWS_PIECE : 1;
}

int kv_producer_pieces_for(const kv_row_producer *r, int t1)
{
    return reads_vectors(r) ? (t1 + KV_ROWS_PIECE - 1) / KV_ROWS_PIECE : 1;
}

int kv_producer_load(kv_row_producer *r, int layer, int piece, char *err, size_t err_len)
{
    const kv_trace_info *in = r->info;
    r->layer = layer;
    if (!reads_vectors(r))
        return 0;
    int t0 = piece * KV_ROWS_PIECE;
    int t1 = t0 + KV_ROWS_PIECE < in->n_tokens ? t0 + KV_ROWS_PIECE : in->n_tokens;
    int rc = 0;
    if (in->source == KV_SOURCE_QK) {
        rc = kv_trace_read_rows(r->tr, layer, KV_TENSOR_Q, t0, t1, r->q, err, err_len);
        if (!rc)
            rc = kv_trace_read_rows(r->tr, layer, KV_TENSOR_K, t0, t1, r->k, err, err_len);
    }
    if (!rc && r->v)
        rc = kv_trace_read_rows(r->tr, layer, KV_TENSOR_V, t0, t1, r->v, err, err_len);
    return rc;
}

const float *kv_producer_v(const kv_row_producer *r)
{
    return r->v;
}

void kv_producer_outputs(const kv_row_producer *r, int t0, int task, const float *out,
                         float *o_full)
{
    const kv_trace_info *in = r->info;
    int T = in->n_tokens, t1 = t0 + r->block < T ? t0 + r->block : T, nb = t1 - t0, h0, h1;
    int hd = in->head_dim;
    kv_producer_task_heads(r, task, &h0, &h1);
    /* one product per GQA group: its rows (group * nb of them, consecutive) times the
     * group's values; entries j > t of a row are 0 up to t1 (rows.h), so j < t1 covers
     * j <= t exactly */
    for (int h = h0; h < h1; h += r->group) {
        int g = h / r->group;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r->group * nb, hd, t1, 1.0f,
                    out + (size_t)h * nb * r->row_stride, (int)r->row_stride,
                    r->v + (size_t)g * T * hd, hd, 0.0f, o_full + (size_t)h * nb * hd, hd);
    }
}

size_t kv_producer_row_stride(const kv_row_producer *r)
{
    return r->row_stride;
}

int kv_producer_n_tasks(const kv_row_producer *r)
{
    return r->info->source == KV_SOURCE_QK ? r->info->n_kv_heads : 1;
}

void kv_producer_task_heads(const kv_row_producer *r, int task, int *h0, int *h1)
{
    if (r->info->source == KV_SOURCE_QK) {
        *h0 = task * r->group;
        *h1 = *h0 + r->group;
    } else {
        *h0 = 0;
        *h1 = r->info->n_heads;
    }
}

size_t kv_producer_n_cum(const kv_row_producer *r)
{
    return (size_t)r->info->n_tokens / KV_ROW_SPAN + 1;
}

int kv_producer_fill(kv_row_producer *r, int t0, int task, float *out, int *top, int n_top, int t_top,
                 double *cum, char *err, size_t err_len)
{
    const kv_trace_info *in = r->info;
    int T = in->n_tokens;
    int t1 = t0 + r->block < T ? t0 + r->block : T, block_rows = t1 - t0, h0, h1;
    kv_producer_task_heads(r, task, &h0, &h1);
    if (in->source == KV_SOURCE_ATTN) {
        int rc = kv_trace_read_attn(r->tr, r->layer, h0, h1, t0, t1, out, err, err_len);
        for (int h = h0; rc == 0 && top && h < h1; h++)
            for (int t = t0 > t_top ? t0 : t_top; t < t1; t++) {
                size_t row = (size_t)h * block_rows + (size_t)(t - t0);
                kv_row_topk(out + row * r->row_stride, t, n_top, top + row * n_top);
            }
        for (int h = h0; rc == 0 && cum && h < h1; h++)
            for (int t = t0 > t_top ? t0 : t_top; t < t1; t++) {
                size_t row = (size_t)h * block_rows + (size_t)(t - t0);
                kv_row_span_sums(out + row * r->row_stride, t, cum + row * kv_producer_n_cum(r));
            }
        return rc;
    }
    size_t hd = (size_t)in->head_dim, per_head = (size_t)T * hd;
    /* the group's queries t0..t1-1, head after head: the SGEMM's left operand */
    float *qs = r->qs + (size_t)h0 * (size_t)r->block * hd;
    for (int i = 0; i < r->group; i++)
        memcpy(qs + (size_t)i * block_rows * hd, r->q + (size_t)(h0 + i) * per_head + (size_t)t0 * hd,
               (size_t)block_rows * hd * sizeof(float));
    size_t first = (size_t)h0 * block_rows;   /* the group's first row in out and top */
    int bad = rows_from_qk(qs, r->group, r->k + (size_t)task * per_head, in->head_dim,
                           in->softmax_scale, t0, t1, out + first * r->row_stride, r->row_stride,
                           top ? top + first * n_top : NULL, n_top, t_top,
                           r->lse ? r->lse + (size_t)h0 * T : NULL, (size_t)T,
                           cum ? cum + first * kv_producer_n_cum(r) : NULL,
                           kv_producer_n_cum(r));
    if (bad < 0)
        return 0;
    /* a run finds these here, as it reads q and k once; `kvsim info --check` scans for them
     * beforehand (kv_check_logits, traces/validate.h) */
    snprintf(err, err_len, "%s: /layers/%d row [%d, %d]: logits softmax_scale * q.k not "
             "finite in float32 (q or k too large?)", kv_trace_path(r->tr), r->layer, h0 + bad / block_rows,
             t0 + bad % block_rows);
    return KV_ETRACE_FORMAT;
}

void kv_producer_set_lse(kv_row_producer *r, double *lse)
{
    r->lse = lse;
}

const float *kv_producer_q(const kv_row_producer *r, int head)
{
    return r->q ? r->q + (size_t)head * r->info->n_tokens * r->info->head_dim : NULL;
}

const float *kv_producer_k(const kv_row_producer *r, int kv_head)
{
    return r->k ? r->k + (size_t)kv_head * r->info->n_tokens * r->info->head_dim : NULL;
}

kv_row_producer *kv_producer_open(kv_trace *tr, int layer, int block, char *err, size_t err_len)
{
    kv_row_producer *r = kv_producer_new(tr, block, err, err_len);
    if (!r)
        return NULL;
    for (int p = 0; p < kv_producer_n_load_pieces(r); p++)
        if (kv_producer_load(r, layer, p, err, err_len) != 0) {
            kv_producer_close(r);
            return NULL;
        }
    return r;
}

const float *kv_producer_block(kv_row_producer *r, int t0, int *block_rows, char *err, size_t err_len)
{
    const kv_trace_info *in = r->info;
    int T = in->n_tokens;
    *block_rows = (t0 + r->block < T ? t0 + r->block : T) - t0;
    if (!r->out) {
        r->out = kv_alloc_large((size_t)in->n_heads * (size_t)r->block * r->row_stride * sizeof(float));
        if (!r->out) {
            snprintf(err, err_len, "%s: out of memory for a block of rows", kv_trace_path(r->tr));
            return NULL;
        }
    }
    int n = kv_producer_n_tasks(r), failed = 0;
    int blas = kv_blas_single_begin();
    #pragma omp parallel for schedule(dynamic, 1)
    for (int task = 0; task < n; task++) {
        char why[512];
        if (kv_producer_fill(r, t0, task, r->out, NULL, 0, T, NULL, why, sizeof why) != 0) {
            #pragma omp critical(kv_producer_error)
            if (!failed++)
                snprintf(err, err_len, "%s", why);
        }
    }
    kv_blas_threads_restore(blas);
    return failed ? NULL : r->out;
}

void kv_producer_close(kv_row_producer *r)
{
    if (!r)
        return;
    free(r->q);
    free(r->k);
    free(r->v);
    free(r->qs);
    free(r->out);
    free(r);
}
