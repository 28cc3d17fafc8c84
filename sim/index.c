/*
 * index.c - the stored log-normalisers of a qk trace (see index.h).
 */
#include "sim/index.h"
#include "sim/rows.h"
#include "traces/trace.h"
#include "traces/validate.h"

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

/* Every row of the loaded layer, block by block, for their lse (written by the fills). */
static int index_layer(kv_rows *rows, const kv_trace_info *in, int layer, double *lse,
                       char *err, size_t err_len)
{
    for (int p = 0; p < kv_rows_n_load_pieces(rows); p++)
        if (kv_rows_load(rows, layer, p, err, err_len))
            return 1;
    kv_rows_set_lse(rows, lse);
    for (int t0 = 0; t0 < in->n_tokens; t0 += INDEX_BLOCK) {
        int nb;
        if (!kv_rows_block(rows, t0, &nb, err, err_len))
            return 1;
    }
    kv_rows_set_lse(rows, NULL);
    return 0;
}

int kv_index_trace(const char *path, int progress, char *err, size_t err_len)
{
    kv_trace *tr = NULL;
    if (kv_trace_open(path, &tr, err, err_len))
        return 1;
    kv_trace_info in = *kv_trace_get_info(tr);
    if (in.source != KV_SOURCE_QK) {
        snprintf(err, err_len, "%s: source = attn: the rows are stored, there is nothing to "
                 "index (only qk traces take the sparse replay)", path);
        kv_trace_close(tr);
        return 2;
    }
    kv_trace_set_read_checks(tr, 1);
    size_t per_layer = (size_t)in.n_heads * (size_t)in.n_tokens;
    double *lse = malloc((size_t)in.n_layers * per_layer * sizeof *lse);
    kv_rows *rows = lse ? kv_rows_new(tr, INDEX_BLOCK, err, err_len) : NULL;
    int rc = rows ? 0 : 1;
    if (!lse)
        snprintf(err, err_len, "%s: out of memory for %d x %zu log-normalisers", path,
                 in.n_layers, per_layer);
    double start = now_seconds();
    for (int l = 0; l < in.n_layers && !rc; l++) {
        if (progress && now_seconds() - start > 1.0)
            fprintf(stderr, "\rkvsim index: layer %d/%d ", l + 1, in.n_layers);
        rc = index_layer(rows, &in, l, lse + (size_t)l * per_layer, err, err_len);
    }
    if (progress && now_seconds() - start > 1.0)
        fprintf(stderr, "\n");
    kv_rows_close(rows);
    kv_trace_close(tr);   /* before reopening the file for writing */
    if (!rc && kv_trace_store_lse(path, &in, lse, err, err_len))
        rc = 1;
    free(lse);
    return rc;
}
