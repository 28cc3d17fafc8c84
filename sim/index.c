/*
 * index.c - the stored log-normalisers and full-cache outputs of a qk trace (index.h).
 *
 * Layer by layer: the trace is opened read-only, the layer's rows are produced block by
 * block (the replay's producer, which also writes each row's lse), the outputs o_full of a
 * block are one SGEMM per query head over those rows (rows j > t are zero), then the trace
 * is closed and reopened read-write to store the layer (HDF5 does not open one file
 * read-only and read-write at once). Memory stays one layer's.
 */
#include "sim/index.h"
#include "sim/rows.h"
#include "traces/status.h"
#include "traces/trace.h"
#include "traces/validate.h"

#include <gsl/gsl_cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define INDEX_BLOCK 64

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Layer `layer`'s lse (n_heads * T) and, when o_full is not NULL, its outputs
 * (n_heads * T * head_dim, from the layer's v read into v). */
static int index_layer(const char *path, int layer, double *lse, float *o_full, float *v,
                       char *err, size_t err_len)
{
    kv_trace *tr = NULL;
    if (kv_trace_open(path, &tr, err, err_len))
        return KV_ERUNTIME;
    kv_trace_set_read_checks(tr, 1);
    const kv_trace_info *in = kv_trace_get_info(tr);
    int T = in->n_tokens, hd = in->head_dim, group = in->n_heads / in->n_kv_heads;
    kv_row_producer *rows = kv_producer_new(tr, INDEX_BLOCK, err, err_len);
    int rc = rows ? 0 : 1;
    for (int p = 0; !rc && p < kv_producer_n_load_pieces(rows); p++)
        rc = kv_producer_load(rows, layer, p, err, err_len) != 0;
    if (!rc && o_full)
        rc = kv_trace_read_v(tr, layer, v, err, err_len) != 0;
    if (!rc)
        kv_producer_set_lse(rows, lse);
    int blas = kv_blas_single_begin();
    for (int t0 = 0; !rc && t0 < T; t0 += INDEX_BLOCK) {
        int block_rows;
        const float *b = kv_producer_block(rows, t0, &block_rows, err, err_len);
        if (!b) {
            rc = 1;
            break;
        }
        size_t row_stride = kv_producer_row_stride(rows);
        int t1 = t0 + block_rows, n_out = o_full ? in->n_heads : 0;
        #pragma omp parallel for schedule(dynamic, 1)
        for (int h = 0; h < n_out; h++)   /* o = P (block_rows x t1) . V (t1 x hd) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, block_rows, hd, t1, 1.0f,
                        b + (size_t)h * block_rows * row_stride, (int)row_stride, v + (size_t)(h / group) * T * hd, hd,
                        0.0f, o_full + ((size_t)h * T + t0) * hd, hd);
    }
    kv_blas_threads_restore(blas);
    kv_producer_close(rows);
    kv_trace_close(tr);
    return rc;
}

int kv_index_trace(const char *path, int progress, char *err, size_t err_len)
{
    kv_trace *tr = NULL;
    if (kv_trace_open(path, &tr, err, err_len))
        return KV_ERUNTIME;
    kv_trace_info in = *kv_trace_get_info(tr);
    kv_trace_close(tr);
    if (in.source != KV_SOURCE_QK) {
        snprintf(err, err_len, "%s: source = attn: the rows are stored, there is nothing to "
                 "index (only qk traces take the sparse replay)", path);
        return KV_EUSAGE;
    }
    size_t T = (size_t)in.n_tokens, hd = (size_t)in.head_dim;
    double *lse = malloc((size_t)in.n_heads * T * sizeof *lse);
    float *o_full = in.has_v ? malloc((size_t)in.n_heads * T * hd * sizeof *o_full) : NULL;
    float *v = in.has_v ? malloc((size_t)in.n_kv_heads * T * hd * sizeof *v) : NULL;
    int rc = 0;
    if (!lse || (in.has_v && (!o_full || !v))) {
        snprintf(err, err_len, "%s: out of memory for a layer's index", path);
        rc = KV_ENOMEM;
    }
    double start = now_seconds();
    for (int l = 0; l < in.n_layers && !rc; l++) {
        if (progress && now_seconds() - start > 1.0)
            fprintf(stderr, "\rkvsim index: layer %d/%d ", l + 1, in.n_layers);
        rc = index_layer(path, l, lse, o_full, v, err, err_len);
        if (!rc && kv_trace_store_index(path, &in, l, lse, o_full, err, err_len))
            rc = KV_EIO;
    }
    if (progress && now_seconds() - start > 1.0)
        fprintf(stderr, "\n");
    free(lse);
    free(o_full);
    free(v);
    return rc;
}
