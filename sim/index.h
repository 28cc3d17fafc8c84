/*
 * index.h - `kvsim index`: the log-normalisers of every qk row, stored in the trace so
 * that a replay can take the sparse path (sim/engine.h).
 *
 * For query head h of layer l and position t, with x_tj = softmax_scale * q_t^h . k_j,
 *   lse_t^h = log sum_{j<=t} exp(x_tj),
 * so that the full-cache attention of any key is p_t^h[j] = exp(x_tj - lse_t^h) without
 * the rest of the row; and, when the trace has v, the full-cache attention output
 *   o_full_t^h = sum_{j<=t} p_t^h[j] v_j     (float32, head_dim values),
 * so that an output-error metric needs no full row either. One dense pass of the replay's
 * own row producer (sim/rows.h: the same SGEMM and softmax, its max plus the log of its
 * double sum; o_full one SGEMM per head and block over those rows), stored as the
 * optional datasets /layers/<l>/lse (float64 [n_heads, T]) and /layers/<l>/o_full
 * (float32 [n_heads, T, head_dim]) (traces/FORMAT.md). Memory: the row producer's (one
 * layer's q and k, one block of rows) plus one layer's lse, o_full and v.
 */
#ifndef KV_INDEX_H
#define KV_INDEX_H

#include <stddef.h>

/*
 * Computes and stores lse (and o_full when the trace has v) for every layer of the qk
 * trace at path (replacing earlier ones). q and k are checked to be finite as they are read. progress: 1 reports the layer
 * on stderr when the pass takes over a second. Returns 0; KV_EUSAGE when the trace is
 * not a qk trace (nothing to index); KV_ERUNTIME (read), KV_EIO (write) or KV_ENOMEM
 * (traces/status.h); err says why.
 */
int kv_index_trace(const char *path, int progress, char *err, size_t err_len);

#endif
