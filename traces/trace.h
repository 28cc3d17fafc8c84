/*
 * trace.h - kvtrace v1: the HDF5 trace format kvsim replays (reader and writer).
 *
 * The format is a public contract, specified in traces/FORMAT.md. A trace holds the
 * recorded attention of one generation of T tokens whose first P tokens are the prompt
 * (prefill). It stores either the attention rows themselves (source = attn:
 * /layers/<l>/attn [n_heads, T, T]) or the post-rotary queries and keys from which the
 * rows are recomputed exactly (source = qk: /layers/<l>/q [n_heads, T, head_dim],
 * /layers/<l>/k [n_kv_heads, T, head_dim], optional /layers/<l>/v).
 *
 * Errors: every function that can fail returns 0 on success and a non-zero KV_ETRACE_*
 * code on failure, and writes a one-line message (no trailing newline) naming the file,
 * the dataset or attribute, and what was expected into err[0..err_len). HDF5's own error
 * stack is silenced unless kv_trace_set_verbose(1) was called.
 */
#ifndef KV_TRACE_H
#define KV_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "traces/status.h"

#define KV_TRACE_VERSION 1
#define KV_TRACE_MODEL_LEN 256

/* The trace library's codes, traces/status.h's by name. */
enum {
    KV_TRACE_OK = KV_OK,
    KV_ETRACE_IO = KV_EIO,         /* file missing, unreadable, not HDF5, truncated */
    KV_ETRACE_FORMAT = KV_EFORMAT, /* valid HDF5 but not a valid kvtrace v1 file */
    KV_ETRACE_NOMEM = KV_ENOMEM,   /* an allocation failed */
    KV_ETRACE_ARG = KV_EUSAGE      /* a caller passed an argument outside the documented
                                      range */
};

typedef enum { KV_SOURCE_ATTN = 0, KV_SOURCE_QK = 1 } kv_source;

/* The precision attn rows were computed and rounded in (root attribute attn_precision,
 * FORMAT.md); it sets the row-sum tolerance (kv_row_sum_tol in traces/validate.h). The
 * rows are stored as float16 or float32 whatever it is. 0 (float32) is the default. */
typedef enum {
    KV_PREC_FLOAT32 = 0,
    KV_PREC_FLOAT16 = 1,
    KV_PREC_BFLOAT16 = 2
} kv_attn_precision;

/* The root attributes of a trace (FORMAT.md, "Root attributes"). */
typedef struct {
    int version;                     /* kvtrace_version, 1 */
    char model[KV_TRACE_MODEL_LEN];  /* model name, NUL-terminated (truncated if longer) */
    int n_layers;                    /* layers, >= 1 */
    int n_heads;                     /* query heads per layer, >= 1 */
    int n_kv_heads;                  /* KV heads per layer; n_heads % n_kv_heads == 0 */
    int head_dim;                    /* elements per query/key vector, >= 1 */
    int n_tokens;                    /* T: positions 0..T-1 */
    int prefill_len;                 /* P: 1 <= P <= T; positions 0..P-1 are the prompt */
    kv_source source;                /* attn rows or q/k */
    double softmax_scale;            /* logit scale for qk; default 1/sqrt(head_dim) */
    int dtype_bytes;                 /* bytes per K or V element modelled, default 2 */
    int has_tokens;                  /* 1 when /tokens is present */
    int has_v;                       /* 1 when every layer has /layers/<l>/v (either source) */
    int has_lse;                     /* 1 when every layer has /layers/<l>/lse (qk only:
                                        `kvsim index`, FORMAT.md) */
    int has_o_full;                  /* 1 when every layer has /layers/<l>/o_full (qk) */
    kv_attn_precision attn_precision; /* precision of the attn rows, default float32 */
} kv_trace_info;

typedef struct kv_trace kv_trace;

/* Makes HDF5 print its error stack (1) or keep quiet (0, the default). Process-wide. */
void kv_trace_set_verbose(int verbose);

/*
 * Opens path read-only, reads and checks the root attributes and the presence, rank,
 * type and shape of every dataset the source needs. It does not scan dataset values
 * (NaN, negative attention, row sums): kv_trace_check_values does that.
 * On success *out owns the open file; release it with kv_trace_close.
 * On failure *out is NULL and err holds the reason. An HDF5 file without the root
 * attribute kvtrace_version (another tool's layout) gets "PATH: not a kvsim trace: ...",
 * naming what its root holds, the layout expected and traces/FORMAT.md. P = T opens
 * (the format allows it) but has no decode step: kv_trace_check_replayable.
 */
int kv_trace_open(const char *path, kv_trace **out, char *err, size_t err_len);

/* The trace's attributes; borrowed, valid until kv_trace_close. Cannot fail. */
const kv_trace_info *kv_trace_get_info(const kv_trace *tr);

/* The path the trace was opened from; borrowed, valid until kv_trace_close. */
const char *kv_trace_path(const kv_trace *tr);

/*
 * 1 when every layer has /layers/<l>/q and /layers/<l>/k of the right shape, so
 * kv_trace_read_qk works: always for source = qk, and for an attn trace that also carries
 * its queries and keys (as `kvsim gen --attn` writes). Cannot fail.
 */
int kv_trace_has_qk(const kv_trace *tr);

/*
 * source = attn: reads rows t0..t1-1 (0 <= t0 < t1 <= T) of query heads h0..h1-1 of a
 * layer into out, as float32 whatever the stored type:
 *   out[((h - h0) * (t1 - t0) + (t - t0)) * T + j], j in 0..T-1,
 * where entries j > t (above the diagonal) are set to 0. out holds
 * (h1-h0)*(t1-t0)*T floats, owned by the caller. Only the lower-triangular part of the
 * requested rows is read from the file.
 */
int kv_trace_read_attn(kv_trace *tr, int layer, int h0, int h1, int t0, int t1,
                       float *out, char *err, size_t err_len);

/*
 * Reads a layer's queries and keys as float32 (source = qk, or any trace for which
 * kv_trace_has_qk is 1; KV_ETRACE_ARG otherwise).
 *   q: n_heads * T * head_dim floats, q[(h * T + t) * head_dim + d]
 *   k: n_kv_heads * T * head_dim floats, k[(g * T + t) * head_dim + d]
 * Both buffers are owned by the caller.
 */
int kv_trace_read_qk(kv_trace *tr, int layer, float *q, float *k, char *err, size_t err_len);

/* The per-head tensors of a layer that kv_trace_read_rows reads. */
typedef enum { KV_TENSOR_Q = 0, KV_TENSOR_K = 1, KV_TENSOR_V = 2 } kv_tensor;

/*
 * Reads rows t0..t1-1 (0 <= t0 < t1 <= T) of every head of a layer's /q (query heads),
 * /k or /v (KV heads) as float32, one hyperslab, into the places kv_trace_read_qk would put them:
 * out[(h * T + t) * head_dim + d] for t0 <= t < t1; the other rows of out are not touched.
 * out holds n * T * head_dim floats (n = n_heads or n_kv_heads), owned by the caller. The
 * same values as kv_trace_read_qk; lets a caller load a layer in pieces (the replay engine
 * starts on a layer's first rows while the later ones are read, and reads the next layer
 * while replaying the current one). With read checks on (kv_trace_set_read_checks) the
 * slab read is checked to be finite (KV_ETRACE_FORMAT naming the first bad element).
 * KV_ETRACE_ARG when the trace has no q/k (kv_trace_has_qk is 0; for v: has_v is 0) or
 * the layer or rows are outside the trace; KV_ETRACE_NOMEM,
 * KV_ETRACE_IO on failure.
 */
int kv_trace_read_rows(kv_trace *tr, int layer, kv_tensor which, int t0, int t1, float *out,
                       char *err, size_t err_len);

/*
 * Reads a layer's stored log-normalisers /layers/<l>/lse (FORMAT.md: float64
 * [n_heads, T], lse[h * T + t] = log sum_{j<=t} exp(x_tj) of the qk row) into lse
 * (n_heads * T doubles, the caller's). With read checks on, each value is checked to be
 * finite. KV_ETRACE_ARG when the layer has none (kv_trace_info.has_lse), KV_ETRACE_IO,
 * KV_ETRACE_FORMAT.
 */
int kv_trace_read_lse(kv_trace *tr, int layer, double *lse, char *err, size_t err_len);

/*
 * Reads a layer's stored full-cache attention outputs /layers/<l>/o_full (FORMAT.md) as
 * float32 [n_heads, T, head_dim] into o (the caller's). Checked to be finite with read
 * checks on. KV_ETRACE_ARG when absent (has_o_full), KV_ETRACE_IO, KV_ETRACE_FORMAT.
 */
int kv_trace_read_o_full(kv_trace *tr, int layer, float *o, char *err, size_t err_len);

/* Reads /tokens (T int32 ids) into tokens; KV_ETRACE_FORMAT when the trace has none. */
int kv_trace_read_tokens(kv_trace *tr, int32_t *tokens, char *err, size_t err_len);

/* 1 when the trace has /token_text (captured with a tokenizer), else 0. Cannot fail. */
int kv_trace_has_token_text(const kv_trace *tr);

/*
 * Reads /token_text, the display text of each of the T positions' tokens (FORMAT.md), into
 * *texts: an array of T NUL-terminated UTF-8 strings in one allocation, owned by the caller
 * (free(*texts) releases everything). KV_ETRACE_FORMAT when the trace has none or the
 * dataset is not [T] fixed-length strings; KV_ETRACE_NOMEM, KV_ETRACE_IO otherwise.
 */
int kv_trace_read_token_text(kv_trace *tr, char ***texts, char *err, size_t err_len);

/*
 * Reads the string root attribute name (provenance such as checkpoint_sha256, which
 * `kvsim capture` writes) into buf[0..size), truncated if longer. KV_ETRACE_FORMAT with
 * "FILE: missing root attribute NAME" when absent or "... has type T, expected a string"
 * when not a string; KV_ETRACE_IO when it cannot be read.
 */
int kv_trace_read_attr_string(kv_trace *tr, const char *name, char *buf, size_t size,
                              char *err, size_t err_len);

/* Closes the file and frees tr. NULL is ignored. Cannot fail. */
void kv_trace_close(kv_trace *tr);

/*
 * Checks that path names a regular file (following symlinks) before anything opens it: a
 * FIFO, a device or a socket would block the open or the read, possibly forever, and a
 * directory is never an input. Used for traces, checkpoints and experiment files. Returns
 * 0, or -1 with a one-line message in err ("PATH: is a FIFO, expected a regular file", or
 * the stat error). Cannot block.
 */
int kv_check_regular_file(const char *path, char *err, size_t err_len);

/* ---------------------------------------------------------------- writer */

typedef struct kv_trace_writer kv_trace_writer;

/*
 * Creates (truncating) path and writes the root attributes of info (version is forced to
 * 1; has_tokens/has_v are ignored, they follow from what is written; softmax_scale 0 means
 * 1/sqrt(head_dim) and dtype_bytes 0 means 2, and those values are stored; attn_precision
 * is stored only when it is not float32, the default). Datasets are
 * chunked with gzip + shuffle: (1, 128, 128) tiles for attn, (1, min(T,256), head_dim)
 * for q/k/v. Values are stored as float32, or as IEEE float16 when store_f16 is 1.
 */
int kv_trace_create(const char *path, const kv_trace_info *info, int store_f16,
                    kv_trace_writer **out, char *err, size_t err_len);

/* Writes /tokens: T int32 ids. */
int kv_trace_write_tokens(kv_trace_writer *w, const int32_t *tokens, char *err, size_t err_len);

/*
 * Writes rows t0..t1-1 of one query head's attention into /layers/<layer>/attn (created
 * on first use). rows[(t - t0) * T + j]; entries j > t are ignored and stored as 0.
 */
int kv_trace_write_attn_rows(kv_trace_writer *w, int layer, int head, int t0, int t1,
                             const float *rows, char *err, size_t err_len);

/*
 * Writes a layer's /q, /k and (when v is not NULL) /v, laid out as kv_trace_read_qk
 * describes (v like k).
 */
int kv_trace_write_qk(kv_trace_writer *w, int layer, const float *q, const float *k,
                      const float *v, char *err, size_t err_len);

/* Adds an extra root attribute (provenance: sampling settings, checkpoint hash...). */
/*
 * Writes /token_text: texts[0..T-1], each token's display text (UTF-8, NUL-terminated), as
 * a [T] dataset of fixed-length UTF-8 strings (the longest text's bytes plus one; fixed
 * length for the same reason as the string attributes). Returns 0 or a KV_ETRACE_* code.
 */
int kv_trace_write_token_text(kv_trace_writer *w, const char *const *texts, char *err,
                              size_t err_len);

int kv_trace_write_attr_string(kv_trace_writer *w, const char *name, const char *value,
                               char *err, size_t err_len);
int kv_trace_write_attr_double(kv_trace_writer *w, const char *name, double value,
                               char *err, size_t err_len);
int kv_trace_write_attr_int(kv_trace_writer *w, const char *name, long long value,
                            char *err, size_t err_len);

/*
 * Stores one layer's index into the closed qk trace at path (`kvsim index`, FORMAT.md):
 * its rows' log-normalisers as /layers/<layer>/lse (float64 [n_heads, T],
 * lse[h * T + t]) and, when o_full is not NULL, the full-cache attention outputs as
 * /layers/<layer>/o_full (float32 [n_heads, T, head_dim], o_full[(h * T + t) * head_dim
 * + d] = sum_{j<=t} p_t^h[j] v_j[d]); both chunked and gzipped, earlier ones replaced.
 * The file is opened read-write; nothing else in it changes, so it stays a kvtrace v1
 * file that older readers open. Returns 0, or KV_ETRACE_IO with err set.
 */
int kv_trace_store_index(const char *path, const kv_trace_info *info, int layer,
                         const double *lse, const float *o_full, char *err, size_t err_len);

/* Flushes and closes the file and frees w; returns non-zero if the final flush failed.
 * NULL is ignored. */
int kv_trace_finish(kv_trace_writer *w, char *err, size_t err_len);

#endif
