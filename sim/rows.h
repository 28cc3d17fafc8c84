/*
 * rows.h - full-cache attention rows p_t^h, streamed block by block from a trace.
 *
 * For source = attn the rows are read as stored (not renormalised, README rule 6). For
 * source = qk they are recomputed: p_t[j] = softmax over j <= t of softmax_scale * q_t.k_j,
 * logits by SGEMM (CBLAS) over a block of queries, exponentials in float32 after max
 * subtraction, the normaliser summed in double. Memory: the layer's q and k
 * (n_heads + n_kv_heads) * T * head_dim floats plus one block of rows, never T*T per head.
 */
#ifndef KV_ROWS_H
#define KV_ROWS_H

#include <stddef.h>
#include "traces/trace.h"

/*
 * Computes rows t0..t1-1 of one query head from its queries and its KV head's keys:
 *   q: T * head_dim floats (row t at q + t*head_dim), k: likewise for the keys,
 *   out[(t - t0) * ld + j] for j <= t; entries t < j < ld are set to 0.
 * logits is scratch of (t1 - t0) * t1 floats. Cannot fail.
 */
void kv_rows_from_qk(const float *q, const float *k, int head_dim, double scale,
                     int t0, int t1, float *logits, float *out, size_t ld);

typedef struct kv_rows kv_rows;

/* Prepares to stream the rows of one layer of tr (reads q/k for qk traces).
 * Returns NULL with err set on failure (I/O, out of memory). */
kv_rows *kv_rows_open(kv_trace *tr, int layer, int block, char *err, size_t err_len);

/*
 * Fills the block of rows starting at t0 (t0 a multiple of the block size): returns a
 * pointer to rows[(h * nb + (t - t0)) * T + j], for all n_heads query heads, nb =
 * min(block, T - t0) rows, j < T (zero above the diagonal). Borrowed: valid until the next
 * call or kv_rows_close. NULL with err set on failure.
 */
const float *kv_rows_block(kv_rows *r, int t0, int *nb, char *err, size_t err_len);

void kv_rows_close(kv_rows *r);

#endif
