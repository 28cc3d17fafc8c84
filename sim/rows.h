/*
 * rows.h - full-cache attention rows p_t^h, produced block by block from a trace.
 *
 * For source = attn the rows are read as stored (not renormalised, README rule 6). For
 * source = qk they are recomputed: p_t[j] = softmax over j <= t of softmax_scale * q_t.k_j,
 * the logits of a whole GQA group's block of queries by one SGEMM (CBLAS) against the
 * group's shared keys, exponentials in float32 (computed in double and rounded, so they
 * are the correctly rounded expf in all but rare ties) after max subtraction, the
 * normaliser summed in double. Memory: the layer's q and k (n_heads + n_kv_heads) * T *
 * head_dim floats plus the caller's block buffers, never T*T per head.
 *
 * Work is split so the caller can run it in parallel and overlap it with other work:
 * a layer is loaded in pieces of rows (kv_producer_load), and a block of rows is produced by
 * independent tasks (kv_producer_fill), one per KV head for qk. Every task is computed by one
 * thread with single-threaded BLAS (kv_blas_single_begin), so the rows do not depend on
 * the number of threads.
 */
#ifndef KV_ROWS_H
#define KV_ROWS_H

#include <stddef.h>
#include "traces/trace.h"

/*
 * Computes rows t0..t1-1 of query heads that share one KV head, in place:
 *   q: n_q * (t1 - t0) * head_dim floats, the queries of head i, row t at
 *      q[(i * (t1 - t0) + t - t0) * head_dim];
 *   k: at least t1 * head_dim floats, key j at k + j*head_dim;
 *   out[(i * (t1 - t0) + t - t0) * row_stride + j] = p_t[j] for j <= t (row_stride >= t1); entries
 *   t < j < t1 are set to 0, entries j >= t1 are not touched.
 * One SGEMM (n_q*(t1-t0) x head_dim times head_dim x t1) and a fused softmax per row.
 * When top is not NULL, the n_top best keys of each row t >= t_top (as kv_row_topk) go to
 * top[(i * (t1 - t0) + t - t0) * n_top ...]; found inside the softmax's last pass.
 * Returns -1, or the index i * (t1 - t0) + t - t0 of the first row (in that order) with a
 * logit that is not finite (Inf or NaN: q.k overflowed float32); that row and the later
 * ones are then not computed.
 */
int kv_attn_rows_from_qk(const float *q, int n_q, const float *k, int head_dim, double scale,
                         int t0, int t1, float *out, size_t row_stride, int *top, int n_top,
                         int t_top);

/*
 * Sparse rows from stored log-normalisers: for n_q query heads sharing one KV head, the
 * full-cache attention of position t on the n + 1 keys pos[0..n) and t only,
 *   out[i * out_stride + s] = exp(softmax_scale * q_i . k_{j_s} - lse_i),  j_s = pos[s]
 *   (s < n), j_n = t,
 * where q_i = q + i * q_stride (head_dim floats: query head i's row t), key j at
 * k + j * head_dim, lse_i = lse[i * lse_stride] (the row's log-normaliser, index.h). The
 * dot products in float, the exponent in double rounded to float, the exponential as the
 * softmax's; equal to kv_attn_rows_from_qk's p_t[j] up to float rounding (the two sum the dot
 * products in different orders). O(n_q * n * head_dim). Cannot fail.
 */
void kv_attn_rows_sparse(const float *q, size_t q_stride, int n_q, const float *k, int head_dim,
                    double scale, const double *lse, size_t lse_stride, const int *pos, int n,
                    int t, float *out, size_t out_stride);

/*
 * The k highest entries of one row p[0..t], best first, into top[0..min(k, t+1));
 * ties rank the more recent key (larger j) higher (README rule 4). O(t) with a
 * vectorised scan; k <= 64. Cannot fail.
 */
void kv_row_topk(const float *p, int t, int k, int *top);

/*
 * Span sums of one row p[0..t], for sums over long ranges of positions at 1/KV_ROW_SPAN of
 * the additions: cum[s] = the sum of p[j] over span s, s * KV_ROW_SPAN <= j < (s + 1) *
 * KV_ROW_SPAN, for the complete spans s < (t + 1) / KV_ROW_SPAN, in double, each span
 * summed in 8 lanes of fixed order (the same bits in every compiled clone). A range a..b
 * is then its partial spans at both ends plus the span sums between (sim/cache.c): no
 * differences of running sums, so a small recall keeps its relative precision. O(t).
 * Cannot fail.
 */
#define KV_ROW_SPAN 64
void kv_row_span_sums(const float *p, int t, double *cum);

/*
 * Makes the BLAS single-threaded for the calling process (OpenBLAS, when linked) so that
 * OpenMP threads running one SGEMM each neither oversubscribe the cores nor split a
 * product differently with the thread count; returns the previous thread count for
 * kv_blas_threads_restore (0 when the BLAS has no such control). Cannot fail.
 */
int kv_blas_single_begin(void);
void kv_blas_threads_restore(int previous);

/*
 * Makes every OpenMP thread's BLAS work buffer exist before the replay allocates its own
 * memory, so that running out of memory later fails in kvsim's allocations (a message,
 * exit 1) and never inside OpenBLAS, which retries a failed buffer allocation forever.
 * Checks first that the buffers fit (omp_get_max_threads() * ~129 MiB of address
 * space). Once per process; returns 0, or 1 with err set when they do not fit.
 */
int kv_blas_prepare(char *err, size_t err_len);

/*
 * 0 when the memory left (under a limit such as ulimit -v) cannot hold OpenBLAS's work
 * buffers: its library destructor then waits forever for its own threads, which retry
 * allocating them, so main leaves with _exit after flushing. 1 otherwise. Cannot fail.
 */
int kv_blas_can_shut_down(void);

/*
 * Allocates bytes for a large buffer (rows, queries, keys): 2 MiB aligned and marked for
 * transparent huge pages when it spans at least two, so a replay takes ~500x fewer page
 * faults and the SGEMM writing rows T floats apart misses the TLB less. Free with free().
 * NULL when out of memory.
 */
void *kv_alloc_large(size_t bytes);

typedef struct kv_row_producer kv_row_producer;

/* Allocates a row producer for tr with blocks of `block` query rows (>= 1), holding one
 * layer at a time (q and k for qk traces); none is loaded yet. NULL with err set when out
 * of memory. */
kv_row_producer *kv_producer_new(kv_trace *tr, int block, char *err, size_t err_len);

/* Rows of q and k per load piece: the writer's chunk rows (traces/trace.h), so a piece
 * decompresses whole chunks. */
#define KV_ROWS_PIECE 256

/* Pieces in which a layer is loaded: qk: one per KV_ROWS_PIECE rows (rows t of q and k for
 * every head), attn: 1 (nothing to read ahead). At least 1. Cannot fail. */
int kv_producer_n_load_pieces(const kv_row_producer *r);

/* Pieces 0..n-1 that must be loaded before rows t < t1 can be produced: qk:
 * ceil(t1 / KV_ROWS_PIECE) (keys 0..t1-1 and the queries up to t1); attn: 1. */
int kv_producer_pieces_for(const kv_row_producer *r, int t1);

/*
 * Loads piece `piece` (0..kv_producer_n_load_pieces-1) of layer `layer`. Once the pieces a
 * block needs are loaded (kv_producer_pieces_for), kv_producer_fill produces its rows. Pieces are
 * independent but the trace serialises reads, so they gain nothing from running together.
 * Returns 0, or a KV_ETRACE_* code with err set.
 */
int kv_producer_load(kv_row_producer *r, int layer, int piece, char *err, size_t err_len);

/*
 * Floats from one row of a block to the next in kv_producer_fill's output: T for attn traces
 * (the reader's layout); for qk, T rounded up to 16 floats plus 16, so that the rows of a
 * block do not all fall into the same L1 sets when T is a power of two (the SGEMM writing
 * them ran ~20% slower with a stride of 4096 floats). Cannot fail.
 */
size_t kv_producer_row_stride(const kv_row_producer *r);

/* Independent tasks per block: qk: n_kv_heads (one GQA group each), attn: 1. */
int kv_producer_n_tasks(const kv_row_producer *r);

/* The query heads [*h0, *h1) task `task` produces. Cannot fail. */
void kv_producer_task_heads(const kv_row_producer *r, int task, int *h0, int *h1);

/* Doubles per row of kv_producer_fill's span sums: T / KV_ROW_SPAN + 1. Cannot fail. */
size_t kv_producer_n_cum(const kv_row_producer *r);

/*
 * Produces task `task`'s heads of the block starting at t0 (a multiple of the block
 * size) of the loaded layer into out, laid out as out[(h * block_rows + (t - t0)) * T + j] with
 * block_rows = min(block, T - t0), for j <= t. Entries above the diagonal (j > t) are unspecified:
 * readers must not use them. out holds n_heads * block * T floats, owned by the caller.
 * When top is not NULL, the n_top best keys (kv_row_topk) of each row t >= t_top go to
 * top[(h * block_rows + (t - t0)) * n_top ...] (n_heads * block * n_top ints, the caller's).
 * When cum is not NULL, the span sums (kv_row_span_sums) of each row t >= t_top go to
 * cum + (h * block_rows + (t - t0)) * kv_producer_n_cum(r) (n_heads * block *
 * kv_producer_n_cum doubles, the caller's). Different tasks may run at the same time on
 * the same out, top and cum. Returns 0, or a KV_ETRACE_* code with err set (attn read
 * failure; KV_ETRACE_FORMAT for a row whose logits are not finite).
 */
int kv_producer_fill(kv_row_producer *r, int t0, int task, float *out, int *top, int n_top, int t_top,
                 double *cum, char *err, size_t err_len);

/*
 * qk: from now on every kv_producer_fill also writes the log-normaliser of each row it
 * produces, lse_t^h = log sum_{j<=t} e^{x_j} with x_j = softmax_scale * q_t^h . k_j (the
 * softmax's own max plus the log of its double sum), to lse[h * T + t] (n_heads * T
 * doubles, the caller's; NULL stops it). `kvsim index` stores them for sparse replays.
 * Ignored for attn traces. Cannot fail.
 */
void kv_producer_set_lse(kv_row_producer *r, double *lse);

/* qk: the loaded layer's queries of query head `head` (T * head_dim floats, row t at
 * t * head_dim) and keys of KV head `kv_head`, borrowed until the next kv_producer_load or
 * kv_producer_close; only the rows of loaded pieces are valid. NULL for attn traces. */
const float *kv_producer_q(const kv_row_producer *r, int head);
const float *kv_producer_k(const kv_row_producer *r, int kv_head);

/* The loaded layer's values, v[(g * T + j) * head_dim + d] for KV head g (whatever the
 * source, when the trace has v), or NULL when the trace has none. Borrowed, valid until
 * the next load. Cannot fail. */
const float *kv_producer_v(const kv_row_producer *r);

/*
 * The full-cache attention outputs of task `task`'s rows of the block at t0 (out as
 * kv_producer_fill produced it): o_full[(h * block_rows + t - t0) * head_dim + d] = sum over j <= t
 * of p_t^h[j] v_j[d] for the task's heads h, with v_j the value of h's KV head; one SGEMM
 * per GQA group (rows x values, the size of the recompute's product divided by T /
 * head_dim). The trace must have v (kv_producer_v not NULL) and every piece the block needs
 * must be loaded. o_full holds n_heads * block * head_dim floats, the caller's. Cannot fail.
 */
void kv_producer_outputs(const kv_row_producer *r, int t0, int task, const float *out,
                         float *o_full);

/*
 * Convenience: opens a row producer and loads layer (every piece). NULL with err set on
 * failure.
 */
kv_row_producer *kv_producer_open(kv_trace *tr, int layer, int block, char *err, size_t err_len);

/*
 * Convenience: produces the whole block at t0 (every task, in parallel with OpenMP) into
 * a buffer the row producer owns and returns it (layout of kv_producer_fill, *block_rows rows per head,
 * row stride kv_producer_row_stride).
 * Borrowed: valid until the next call or kv_producer_close. NULL with err set on failure.
 */
const float *kv_producer_block(kv_row_producer *r, int t0, int *block_rows, char *err, size_t err_len);

/* Frees r. NULL is ignored. */
void kv_producer_close(kv_row_producer *r);

#endif
