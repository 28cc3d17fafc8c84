/*
 * validate.h - checks of a trace's values (NaN, Inf, negative attention, row sums), on
 * top of the attribute, rank, type and shape checks kv_trace_open already makes.
 *
 * Two routes, so that a run never reads a big attn trace twice:
 *   - kv_trace_check_values scans a whole open trace (`kvsim info --check`);
 *   - kv_trace_set_read_checks makes kv_trace_read_attn / kv_trace_read_qk check the
 *     values they return, so a replay stops at the first bad value with the same message,
 *     before any result file is written (results are written after the replay completes).
 * kv_trace_precheck is what `kvsim run` does to every trace before replaying the first:
 * open (structure) plus the q/k/v scan, whose I/O is O(n_heads * T * head_dim) per layer.
 *
 * Every message is one line naming the file, the dataset, the index and what was expected:
 *   "t.h5: /layers/1/attn[3, 17, 5] is NaN, expected a finite probability"
 *   "t.h5: /layers/0/attn row [2, 40] sums to 0.93, expected 1 within 1e-3"
 *   "t.h5: /layers/0/attn row [2, 40] sums to 0.99, expected 1 within 0.0039 (bfloat16 rows
 *    of 41 entries)"   (one line; the tolerance is named when it is not the 1e-3 floor)
 * Indices are [head, t, j] for attn and [head, t, d] for q/k/v, as the datasets store them.
 * Only j <= t of an attn row is checked: entries above the diagonal are ignored by the
 * format (traces/FORMAT.md), so anything may be stored there.
 */
#ifndef KV_VALIDATE_H
#define KV_VALIDATE_H

#include <stddef.h>
#include "traces/trace.h"

/*
 * Row-sum tolerance. Row t of an attn dataset has n = t + 1 entries and must sum (in
 * double, over j <= t) to 1 within
 *
 *   tol(n) = max(KV_ROW_SUM_TOL_MIN, u_p + s_p + n * (2^-24 + 2^-25))
 *
 * where u_p is the unit roundoff of the precision p the rows were rounded to (the trace's
 * attn_precision: float32 2^-24, float16 2^-11, bfloat16 2^-8: 24, 11 and 8 significand
 * bits, round to nearest). Why, for a row computed by a softmax with float32 arithmetic
 * (as PyTorch computes softmax even for float16 and bfloat16 inputs), rounded to p and
 * stored as float16 or float32:
 *   1. float32 softmax: the normaliser is a float32 sum of n terms (relative error at most
 *      (n - 1) * 2^-24 in any order) and each division adds 2^-24 relative; the sum of the
 *      row is 1 within n * 2^-24;
 *   2. rounding each entry to p changes it by at most u_p of itself; the entries are >= 0,
 *      so their sum moves by at most u_p * (sum) ~ u_p;
 *   3. float16 storage: a float32 row (p = float32) is rounded again, s_p = 2^-11 relative;
 *      a float16 or bfloat16 row is exact in float16 (s_p = 0) except entries below
 *      float16's smallest normal 2^-14, which land on multiples of 2^-24: at most 2^-25
 *      each, n * 2^-25 per row (for every p).
 * The floor KV_ROW_SUM_TOL_MIN = 1e-3 is what kvsim always allowed; it covers float32 and
 * float16 rows up to ~5,700 entries, so only bfloat16 rows (2^-8 = 0.0039 plus the
 * length term) and very long rows get more. The messages spell the floor "1e-3".
 */
#define KV_ROW_SUM_TOL_MIN 1e-3

/* tol(n) above for rows of n >= 1 entries computed in prec. Cannot fail. */
double kv_row_sum_tol(kv_attn_precision prec, int n);

/* "float32", "float16" or "bfloat16" (the attribute's values). Cannot fail. */
const char *kv_attn_precision_name(kv_attn_precision prec);

/* What kv_trace_check_values scans (bits). */
enum {
    KV_CHECK_QK = 1,    /* q and k of every layer (qk traces): finite, and the logits
                           softmax_scale * q.k (kv_check_logits) */
    KV_CHECK_ATTN = 2,  /* attn rows: finite, >= 0, each row sums to 1 within tolerance */
    KV_CHECK_V = 4,     /* v of every layer that has it: finite */
    KV_CHECK_QKV = 5,   /* q, k and v */
    KV_CHECK_ALL = 7
};

/*
 * Checks the values of rows t0..t0+n_t-1 of query heads h0..h0+n_h-1 of layer's attn, laid
 * out as kv_trace_read_attn returns them: rows[((h - h0) * n_t + (t - t0)) * T + j]
 * (borrowed); row sums against kv_row_sum_tol(prec, t + 1). path names the file in the
 * message. Returns 0, or KV_ETRACE_FORMAT with the first bad value in [h, t, j] order in
 * err. Cannot fail otherwise.
 */
int kv_check_attn_rows(const char *path, int layer, int h0, int n_h, int t0, int n_t, int T,
                       kv_attn_precision prec, const float *rows, char *err, size_t err_len);

/*
 * Checks that every element of a [dims[0], dims[1], dims[2]] float array (row-major,
 * borrowed) is finite; dpath ("/layers/0/q") names the dataset. Returns 0, or
 * KV_ETRACE_FORMAT naming the first bad element. Cannot fail otherwise.
 */
int kv_check_finite(const char *path, const char *dpath, const int dims[3], const float *x,
                    char *err, size_t err_len);

/*
 * Checks that every logit softmax_scale * q_t.k_j (j <= t) of a layer of a qk trace is
 * finite in float32, as the replay computes it (an SGEMM with the scale rounded to float):
 * a logit that overflows gives Inf and then NaN probabilities. q and k are the layer as
 * kv_trace_read_qk returns them (borrowed, finite). Computed in double; a Cauchy-Schwarz
 * bound (scale * max |q_t| * max |k_j| <= FLT_MAX) settles most layers in one O(T)
 * pass, and only a layer that fails the bound is scanned row by row (O(T^2 * head_dim)),
 * stopping at the first bad row in [head, t] order. Returns 0, or KV_ETRACE_FORMAT with
 * "PATH: /layers/L row [h, t]: logit ... for key j is not finite in float32, ...".
 */
int kv_check_logits(const char *path, int layer, const kv_trace_info *in, const float *q,
                    const float *k, char *err, size_t err_len);

/*
 * Scans an open trace's values as what asks (KV_CHECK_* bits), layer by layer, in
 * bounded memory (one block of attn rows of every head, or one layer's q, k and v).
 * Returns 0; KV_ETRACE_FORMAT at the first bad value; KV_ETRACE_IO when a dataset
 * cannot be read (damaged file); KV_ETRACE_NOMEM. err as above. progress: 1 reports the
 * layer being scanned on stderr when the scan takes over a second.
 */
int kv_trace_check_values(kv_trace *tr, int what, int progress, char *err, size_t err_len);

/*
 * Checks that rows t0..t1-1 of every head of a [n, T, head_dim] float tensor held whole
 * (x, borrowed; other rows are not looked at) are finite, as kv_check_finite does for the
 * whole tensor: the first bad element of the slab in [head, t, d] order. Returns 0, or
 * KV_ETRACE_FORMAT with err set.
 */
int kv_check_finite_rows(const char *path, const char *dpath, const int dims[3], int t0,
                         int t1, const float *x, char *err, size_t err_len);

/*
 * The structural rule a replay adds to kv_trace_open's: a decode step to replay. The
 * format allows prefill_len = n_tokens (a prompt without continuation), so kv_trace_open
 * accepts such a file, but there is nothing to replay: the engine (`kvsim run`) refuses
 * it and `kvsim info` reports it invalid with this same message. (prefill_len < 1 and
 * prefill_len > n_tokens are refused by kv_trace_open itself.) Returns 0, or
 * KV_ETRACE_FORMAT with "PATH: prefill_len P equals n_tokens T: the trace has no decode
 * step to replay". Cannot fail otherwise.
 */
int kv_trace_check_replayable(const kv_trace *tr, char *err, size_t err_len);

/*
 * What `kvsim run` checks in every trace before any replay: kv_trace_open's checks and
 * KV_CHECK_V. q and k (and attn rows) are not scanned here: the replay reads each of them
 * once and checks what it reads (kv_trace_set_read_checks), so a bad value still stops the
 * run before any result file is written, without a second pass over the largest datasets. Returns 0 or a
 * KV_ETRACE_* code with err set; the file is closed again either way.
 */
int kv_trace_precheck(const char *path, char *err, size_t err_len);

/*
 * on = 1: from now on kv_trace_read_attn checks the rows it returns
 * (kv_check_attn_rows) and kv_trace_read_qk the queries and keys (kv_check_finite), and
 * fail with KV_ETRACE_FORMAT and the message at the first bad value. on = 0 (the default
 * after kv_trace_open): values are returned unchecked. Cannot fail.
 */
void kv_trace_set_read_checks(kv_trace *tr, int on);

/*
 * Reads a layer's /layers/<l>/v as float32: n_kv_heads * T * head_dim floats,
 * v[(g * T + t) * head_dim + d], into v (owned by the caller). KV_ETRACE_ARG when the
 * layer has no v (kv_trace_get_info(tr)->has_v is 0 and the dataset is absent).
 * Checked with kv_check_finite when read checks are on.
 */
int kv_trace_read_v(kv_trace *tr, int layer, float *v, char *err, size_t err_len);

/*
 * The path of the trace whose HDF5 call is in progress in this process, or NULL. For a
 * fault handler: HDF5 1.10 trusts some on-disk fields (global heap object sizes and
 * indices in files without checksums), so a damaged file can make the library itself
 * fault; the handler can then name the file instead of dumping core. Async-signal-safe.
 */
const char *kv_trace_reading(void);

#endif
