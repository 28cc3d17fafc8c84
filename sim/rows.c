/*
 * rows.c - full-cache attention rows, streamed in blocks of queries (see rows.h).
 *
 * For qk traces the logits of a block of nb queries against keys 0..t1-1 are one SGEMM
 * (nb x head_dim times head_dim x t1), so the recompute runs at BLAS speed instead of one
 * dot product at a time. The softmax then runs row by row over j <= t.
 */
#include "sim/rows.h"

#include <gsl/gsl_cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct kv_rows {
    kv_trace *tr;
    const kv_trace_info *info;
    int layer;
    int block;
    float *q;       /* qk: n_heads * T * head_dim */
    float *k;       /* qk: n_kv_heads * T * head_dim */
    float *logits;  /* qk: block * T scratch */
    float *out;     /* n_heads * block * T */
};

/* Softmax of one row of logits over j <= t, in place into dst (float32 exponentials after
 * max subtraction, normaliser in double); dst[t+1 .. ld) = 0. */
static void softmax_row(const float *logit, int t, float *dst, size_t ld)
{
    float max = logit[0];
    for (int j = 1; j <= t; j++)
        if (logit[j] > max)
            max = logit[j];
    double sum = 0.0;
    for (int j = 0; j <= t; j++) {
        float e = expf(logit[j] - max);
        dst[j] = e;
        sum += e;
    }
    float inv = (float)(1.0 / sum);
    for (int j = 0; j <= t; j++)
        dst[j] *= inv;
    memset(dst + t + 1, 0, (ld - (size_t)t - 1) * sizeof(float));
}

void kv_rows_from_qk(const float *q, const float *k, int head_dim, double scale,
                     int t0, int t1, float *logits, float *out, size_t ld)
{
    int nb = t1 - t0;
    /* logits[i * t1 + j] = scale * q_{t0+i} . k_j for j < t1 */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, t1, head_dim, (float)scale,
                q + (size_t)t0 * head_dim, head_dim, k, head_dim, 0.0f, logits, t1);
    for (int i = 0; i < nb; i++)
        softmax_row(logits + (size_t)i * t1, t0 + i, out + (size_t)i * ld, ld);
}

kv_rows *kv_rows_open(kv_trace *tr, int layer, int block, char *err, size_t err_len)
{
    const kv_trace_info *in = kv_trace_get_info(tr);
    size_t T = (size_t)in->n_tokens;
    kv_rows *r = calloc(1, sizeof *r);
    if (!r)
        goto nomem;
    r->tr = tr;
    r->info = in;
    r->layer = layer;
    r->block = block;
    r->out = malloc((size_t)in->n_heads * block * T * sizeof(float));
    if (!r->out)
        goto nomem;
    if (in->source == KV_SOURCE_QK) {
        r->q = malloc((size_t)in->n_heads * T * in->head_dim * sizeof(float));
        r->k = malloc((size_t)in->n_kv_heads * T * in->head_dim * sizeof(float));
        r->logits = malloc((size_t)block * T * sizeof(float));
        if (!r->q || !r->k || !r->logits)
            goto nomem;
        if (kv_trace_read_qk(tr, layer, r->q, r->k, err, err_len) != 0) {
            kv_rows_close(r);
            return NULL;
        }
    }
    return r;
nomem:
    snprintf(err, err_len, "%s: out of memory preparing the rows of layer %d",
             kv_trace_path(tr), layer);
    kv_rows_close(r);
    return NULL;
}

const float *kv_rows_block(kv_rows *r, int t0, int *nb, char *err, size_t err_len)
{
    const kv_trace_info *in = r->info;
    int T = in->n_tokens;
    int t1 = t0 + r->block < T ? t0 + r->block : T;
    *nb = t1 - t0;
    if (in->source == KV_SOURCE_ATTN) {
        if (kv_trace_read_attn(r->tr, r->layer, 0, in->n_heads, t0, t1, r->out, err, err_len))
            return NULL;
        return r->out;
    }
    int group = in->n_heads / in->n_kv_heads;
    size_t hd = (size_t)in->head_dim;
    for (int h = 0; h < in->n_heads; h++) {
        const float *q = r->q + (size_t)h * T * hd;
        const float *k = r->k + (size_t)(h / group) * T * hd;
        kv_rows_from_qk(q, k, in->head_dim, in->softmax_scale, t0, t1, r->logits,
                        r->out + (size_t)h * (*nb) * T, (size_t)T);
    }
    return r->out;
}

void kv_rows_close(kv_rows *r)
{
    if (!r)
        return;
    free(r->q);
    free(r->k);
    free(r->logits);
    free(r->out);
    free(r);
}
