/*
 * validate.c - checks of a trace's values (see validate.h): NaN and Inf in q, k, v and
 * attn; negative attention; attn rows that do not sum to 1.
 *
 * The checks on buffers are separate from the reading so that the same code serves the
 * full scan of `kvsim info --check` and the checks a replay makes on the rows it reads.
 */
#include "traces/validate.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "traces/trace_int.h"

/* The attn scan reads this many bytes of rows at a time at most (all heads, a block of
 * rows: chunk-aligned reads decompress each chunk once). */
#define KV_SCAN_BLOCK_BYTES ((size_t)64 << 20)
#define KV_SCAN_BLOCK_ROWS 128

/* "NaN", "Inf" or "-Inf" for a non-finite x. */
static const char *nonfinite_name(float x)
{
    if (isnan(x))
        return "NaN";
    return x > 0 ? "Inf" : "-Inf";
}

double kv_row_sum_tol(kv_attn_precision prec, int n)
{
    /* steps 1-3 of validate.h: rounding to p, float16 storage, float32 softmax + underflow */
    double u = prec == KV_PREC_BFLOAT16 ? 0x1p-8 : prec == KV_PREC_FLOAT16 ? 0x1p-11 : 0x1p-24;
    double store = prec == KV_PREC_FLOAT32 ? 0x1p-11 : 0.0;
    double tol = u + store + (double)n * (0x1p-24 + 0x1p-25);
    return tol > KV_ROW_SUM_TOL_MIN ? tol : KV_ROW_SUM_TOL_MIN;
}

const char *kv_attn_precision_name(kv_attn_precision prec)
{
    return prec == KV_PREC_BFLOAT16 ? "bfloat16" : prec == KV_PREC_FLOAT16 ? "float16"
                                                                          : "float32";
}

/* The row-sum failure of row [h, t]; names the tolerance unless it is the 1e-3 floor. */
static int row_sum_fail(const char *path, int layer, int h, int t, double sum, double tol,
                        kv_attn_precision prec, char *err, size_t err_len)
{
    if (tol == KV_ROW_SUM_TOL_MIN)
        return kv_trace_fail(err, err_len, KV_ETRACE_FORMAT, "%s: /layers/%d/attn row [%d, %d] "
                             "sums to %.6g, expected 1 within 1e-3", path, layer, h, t, sum);
    return kv_trace_fail(err, err_len, KV_ETRACE_FORMAT, "%s: /layers/%d/attn row [%d, %d] "
                         "sums to %.6g, expected 1 within %.2g (%s rows of %d entries)", path,
                         layer, h, t, sum, tol, kv_attn_precision_name(prec), t + 1);
}

int kv_check_attn_rows(const char *path, int layer, int h0, int n_h, int t0, int n_t, int T,
                       kv_attn_precision prec, const float *rows, char *err, size_t err_len)
{
    for (int hh = 0; hh < n_h; hh++)
        for (int tt = 0; tt < n_t; tt++) {
            const float *p = rows + ((size_t)hh * n_t + tt) * (size_t)T;
            int h = h0 + hh, t = t0 + tt;
            double sum = 0.0;
            for (int j = 0; j <= t; j++) {
                if (!isfinite(p[j]))
                    return kv_trace_fail(err, err_len, KV_ETRACE_FORMAT, "%s: /layers/%d/attn"
                                         "[%d, %d, %d] is %s, expected a finite probability",
                                         path, layer, h, t, j, nonfinite_name(p[j]));
                if (p[j] < 0)
                    return kv_trace_fail(err, err_len, KV_ETRACE_FORMAT, "%s: /layers/%d/attn"
                                         "[%d, %d, %d] = %g, expected a probability >= 0",
                                         path, layer, h, t, j, (double)p[j]);
                sum += p[j];
            }
            double tol = kv_row_sum_tol(prec, t + 1);
            if (fabs(sum - 1.0) > tol)
                return row_sum_fail(path, layer, h, t, sum, tol, prec, err, err_len);
        }
    return 0;
}

int kv_check_finite(const char *path, const char *dpath, const int dims[3], const float *x,
                    char *err, size_t err_len)
{
    size_t n = (size_t)dims[0] * (size_t)dims[1] * (size_t)dims[2];
    for (size_t i = 0; i < n; i++) {
        if (isfinite(x[i]))
            continue;
        size_t d = i % (size_t)dims[2], t = i / (size_t)dims[2] % (size_t)dims[1];
        size_t h = i / ((size_t)dims[2] * (size_t)dims[1]);
        return kv_trace_fail(err, err_len, KV_ETRACE_FORMAT, "%s: %s[%zu, %zu, %zu] is %s, "
                             "expected a finite number", path, dpath, h, t, d,
                             nonfinite_name(x[i]));
    }
    return 0;
}

/* The largest Euclidean norm of the n rows of length d at x, in double. */
static double max_row_norm(const float *x, size_t n, int d)
{
    double best = 0.0;
    for (size_t i = 0; i < n; i++) {
        double s = 0.0;
        for (int e = 0; e < d; e++)
            s += (double)x[i * d + e] * x[i * d + e];
        best = s > best ? s : best;
    }
    return sqrt(best);
}

int kv_check_logits(const char *path, int layer, const kv_trace_info *in, const float *q,
                    const float *k, char *err, size_t err_len)
{
    int T = in->n_tokens, D = in->head_dim, group = in->n_heads / in->n_kv_heads;
    /* the replay multiplies by the scale as a float (the SGEMM's alpha) */
    double scale = (double)(float)in->softmax_scale;
    /* Cauchy-Schwarz: |scale q.k| <= scale |q| |k|, so most traces need no pass */
    double bound = scale * max_row_norm(q, (size_t)in->n_heads * T, D)
                   * max_row_norm(k, (size_t)in->n_kv_heads * T, D);
    if (bound <= FLT_MAX)
        return 0;
    for (int h = 0; h < in->n_heads; h++)
        for (int t = 0; t < T; t++) {
            const float *qt = q + ((size_t)h * T + t) * D;
            const float *kg = k + (size_t)(h / group) * T * D;
            for (int j = 0; j <= t; j++) {
                double dot = 0.0;
                for (int e = 0; e < D; e++)
                    dot += (double)qt[e] * kg[(size_t)j * D + e];
                double logit = scale * dot;
                if (!(fabs(logit) <= FLT_MAX))
                    return kv_trace_fail(err, err_len, KV_ETRACE_FORMAT, "%s: /layers/%d row "
                                         "[%d, %d]: logit softmax_scale * q.k = %.3g for key "
                                         "%d is not finite in float32, expected |logit| <= "
                                         "%.3g (q or k too large?)", path, layer, h, t,
                                         logit, j, (double)FLT_MAX);
            }
        }
    return 0;
}

int kv_check_finite_rows(const char *path, const char *dpath, const int dims[3], int t0,
                         int t1, const float *x, char *err, size_t err_len)
{
    size_t T = (size_t)dims[1], hd = (size_t)dims[2];
    for (int h = 0; h < dims[0]; h++) {
        const float *slab = x + ((size_t)h * T + (size_t)t0) * hd;
        size_t n = (size_t)(t1 - t0) * hd;
        for (size_t i = 0; i < n; i++) {
            if (isfinite(slab[i]))
                continue;
            return kv_trace_fail(err, err_len, KV_ETRACE_FORMAT, "%s: %s[%d, %zu, %zu] is %s, "
                                 "expected a finite number", path, dpath, h,
                                 (size_t)t0 + i / hd, i % hd, nonfinite_name(slab[i]));
        }
    }
    return 0;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Every attn row of one layer, a block of rows of all heads at a time. */
static int scan_attn_layer(kv_trace *tr, int layer, float *buf, int block, char *err,
                           size_t len)
{
    const kv_trace_info *in = kv_trace_get_info(tr);
    int T = in->n_tokens, H = in->n_heads;
    for (int t0 = 0; t0 < T; t0 += block) {
        int t1 = t0 + block < T ? t0 + block : T;
        int rc = kv_trace_read_attn(tr, layer, 0, H, t0, t1, buf, err, len);
        if (!rc)
            rc = kv_check_attn_rows(kv_trace_path(tr), layer, 0, H, t0, t1 - t0, T,
                                    in->attn_precision, buf, err, len);
        if (rc)
            return rc;
    }
    return 0;
}

/* One layer's q and k (when the trace has them and what asks) and v (when the layer has
 * it and what asks). */
static int scan_qkv_layer(kv_trace *tr, int layer, int what, float *q, float *k, char *err,
                          size_t len)
{
    const kv_trace_info *in = kv_trace_get_info(tr);
    const char *path = kv_trace_path(tr);
    int qdims[3] = {in->n_heads, in->n_tokens, in->head_dim};
    int kdims[3] = {in->n_kv_heads, in->n_tokens, in->head_dim};
    char dpath[64];
    int rc;
    if ((what & KV_CHECK_QK) && kv_trace_has_qk(tr)) {
        if ((rc = kv_trace_read_qk(tr, layer, q, k, err, len)) != 0)
            return rc;
        snprintf(dpath, sizeof dpath, "/layers/%d/q", layer);
        if ((rc = kv_check_finite(path, dpath, qdims, q, err, len)) != 0)
            return rc;
        snprintf(dpath, sizeof dpath, "/layers/%d/k", layer);
        if ((rc = kv_check_finite(path, dpath, kdims, k, err, len)) != 0)
            return rc;
        if (in->source == KV_SOURCE_QK
            && (rc = kv_check_logits(path, layer, in, q, k, err, len)) != 0)
            return rc;
    }
    if (!(what & KV_CHECK_V))
        return 0;
    rc = kv_trace_read_v(tr, layer, k, err, len);
    if (rc == KV_ETRACE_ARG)
        return 0;   /* no v in this layer: optional */
    snprintf(dpath, sizeof dpath, "/layers/%d/v", layer);
    return rc ? rc : kv_check_finite(path, dpath, kdims, k, err, len);
}

int kv_trace_check_values(kv_trace *tr, int what, int progress, char *err, size_t err_len)
{
    const kv_trace_info *in = kv_trace_get_info(tr);
    size_t T = (size_t)in->n_tokens, hd = (size_t)in->head_dim;
    int scan_attn = (what & KV_CHECK_ATTN) && in->source == KV_SOURCE_ATTN;
    size_t row_bytes = (size_t)in->n_heads * T * sizeof(float);
    size_t fit = KV_SCAN_BLOCK_BYTES / row_bytes;
    int block = fit < 1 ? 1 : fit > KV_SCAN_BLOCK_ROWS ? KV_SCAN_BLOCK_ROWS : (int)fit;
    float *buf = scan_attn ? malloc((size_t)block * row_bytes) : NULL;
    float *q = NULL, *k = NULL;
    if (what & KV_CHECK_QK)
        q = malloc((size_t)in->n_heads * T * hd * sizeof *q);
    if (what & KV_CHECK_QKV)
        k = malloc((size_t)in->n_kv_heads * T * hd * sizeof *k);
    int rc = 0;
    if ((scan_attn && !buf) || ((what & KV_CHECK_QK) && !q) ||
        ((what & KV_CHECK_QKV) && !k))
        rc = kv_trace_fail(err, err_len, KV_ETRACE_NOMEM, "%s: out of memory for the value "
                           "scan", kv_trace_path(tr));
    double start = now_seconds();
    for (int l = 0; l < in->n_layers && !rc; l++) {
        if (progress && now_seconds() - start > 1.0)
            fprintf(stderr, "\rkvsim: checking the values of layer %d/%d ", l + 1,
                    in->n_layers);
        if (what & KV_CHECK_QKV)
            rc = scan_qkv_layer(tr, l, what, q, k, err, err_len);
        if (!rc && scan_attn)
            rc = scan_attn_layer(tr, l, buf, block, err, err_len);
    }
    if (progress && now_seconds() - start > 1.0)
        fprintf(stderr, "\n");
    free(buf);
    free(q);
    free(k);
    return rc;
}

int kv_trace_check_replayable(const kv_trace *tr, char *err, size_t err_len)
{
    const kv_trace_info *in = kv_trace_get_info(tr);
    if (in->prefill_len < in->n_tokens)
        return 0;
    return kv_trace_fail(err, err_len, KV_ETRACE_FORMAT, "%s: prefill_len %d equals n_tokens "
                         "%d: the trace has no decode step to replay", kv_trace_path(tr),
                         in->prefill_len, in->n_tokens);
}

int kv_trace_precheck(const char *path, char *err, size_t err_len)
{
    kv_trace *tr = NULL;
    int rc = kv_trace_open(path, &tr, err, err_len);
    if (!rc)
        rc = kv_trace_check_values(tr, KV_CHECK_V, 0, err, err_len);
    kv_trace_close(tr);
    return rc;
}
