/*
 * model.h - a Llama-architecture checkpoint in the llama2.c layout, and its forward pass.
 *
 * The layout and the forward pass are described in ../shared/models/README.md: a header
 * of 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
 * seq_len), then float32 weights. A negative vocab_size means the output classifier is
 * stored after the weights instead of being shared with the token embedding.
 *
 * The forward pass runs one token at a time in float32 (pre-norm residual blocks,
 * RMSNorm eps 1e-5, rotary position embedding, grouped-query attention, SiLU-gated FFN)
 * and records, per layer, the post-rotary queries and keys and the values of every
 * position, which is what `kvsim capture` stores in a trace.
 *
 * Determinism: the matrix-vector products are plain loops in a fixed summation order and
 * the transcendental functions are evaluated in double then rounded, so the same
 * checkpoint and tokens give bit-identical results on any IEEE-754 machine whose C
 * compiler does not contract a*b+c into FMA (this file asks it not to).
 */
#ifndef KV_MODEL_H
#define KV_MODEL_H

#include <stddef.h>

#include "traces/status.h"

#define KV_MODEL_SHA256_HEX 65 /* 64 hex digits and a NUL */

/* The model's codes, traces/status.h's by name. */
enum {
    KV_MODEL_OK = KV_OK,
    KV_EMODEL_IO = KV_EIO,         /* file missing or unreadable */
    KV_EMODEL_FORMAT = KV_EFORMAT, /* header, size or weights do not form a valid checkpoint */
    KV_EMODEL_NOMEM = KV_ENOMEM,   /* an allocation failed */
    KV_EMODEL_ARG = KV_EUSAGE      /* a caller passed an argument outside the documented
                                      range */
};

/* The header fields of a checkpoint, and the sizes derived from them. */
typedef struct {
    int dim;               /* residual stream width, elements */
    int hidden_dim;        /* FFN inner width, elements */
    int n_layers;          /* transformer blocks */
    int n_heads;           /* query heads per layer */
    int n_kv_heads;        /* key/value heads per layer; n_heads % n_kv_heads == 0 */
    int vocab_size;        /* token ids 0..vocab_size-1 (absolute value of the header field) */
    int seq_len;           /* trained context, positions */
    int shared_classifier; /* 1 when the header's vocab_size was positive */
    int head_size;         /* dim / n_heads, elements per query/key/value vector (even) */
    int kv_dim;            /* n_kv_heads * head_size, elements */
} kv_model_config;

typedef struct kv_model kv_model;

/*
 * Loads the checkpoint at path: checks every header field (positive, in a sane range,
 * dim % n_heads == 0, n_heads % n_kv_heads == 0, head_size even), the file size against
 * the size the header implies, and that every weight is finite; computes the file's
 * SHA-256. On success *out owns the weights (about the file's size in memory); release it
 * with kv_model_free. On failure *out is NULL and err holds one line that names the file
 * and what is wrong, e.g. "m.bin: file is 1000 bytes, the header (dim 64, ...) needs
 * 1056540". Returns 0 on success or a KV_EMODEL_* code.
 */
int kv_model_load(const char *path, kv_model **out, char *err, size_t err_len);

/* The checkpoint's configuration; borrowed, valid until kv_model_free. Cannot fail. */
const kv_model_config *kv_model_get_config(const kv_model *m);

/* The SHA-256 of the checkpoint file as 64 lower-case hex digits; borrowed, valid until
 * kv_model_free. Cannot fail. */
const char *kv_model_sha256(const kv_model *m);

/* Frees the model. NULL is ignored. */
void kv_model_free(kv_model *m);

/* ------------------------------------------------------------ forward pass */

/* One generation: activations, the key/value cache, and the per-layer records. */
typedef struct kv_model_run kv_model_run;

/*
 * Prepares a generation of up to n_pos positions (n_pos >= 1; it may exceed the trained
 * seq_len: rotary embedding extrapolates, the caller decides whether that is wanted).
 * Memory: n_layers * n_pos * (dim + 2 * kv_dim) floats of records, n_layers * n_heads *
 * n_pos floats of attention rows, and O(vocab_size + hidden_dim + dim) of scratch.
 * m is borrowed and must outlive the run. Returns 0, or KV_EMODEL_NOMEM / KV_EMODEL_ARG
 * (n_pos < 1) with err set; *out is NULL on failure.
 */
int kv_model_run_create(const kv_model *m, int n_pos, kv_model_run **out,
                        char *err, size_t err_len);

/*
 * Runs token (0 <= token < vocab_size) at position pos, which must be the number of
 * tokens run so far (positions are consecutive from 0 and pos < n_pos). Afterwards:
 * kv_model_logits holds the next-token logits, kv_model_attn the attention rows of this
 * position, and the records hold q/k/v for position pos. Returns 0, or KV_EMODEL_ARG with
 * err set when token or pos is out of range (nothing is changed then).
 */
int kv_model_step(kv_model_run *r, int token, int pos, char *err, size_t err_len);

/* The next-token logits of the last step: vocab_size floats, borrowed, overwritten by
 * the next step. Cannot fail. */
const float *kv_model_logits(const kv_model_run *r);

/*
 * The softmax attention row of the last step (position pos) for one layer and query
 * head: pos + 1 floats, entry j = the weight of key j <= pos. Borrowed, overwritten by the
 * next step. Cannot fail (layer and head must be in range).
 */
const float *kv_model_attn(const kv_model_run *r, int layer, int head);

/*
 * The records of one layer for positions 0..n_pos-1, laid out as kvtrace v1 stores them
 * (traces/trace.h, kv_trace_write_qk): q[(h * n_pos + t) * head_size + d] after rotary
 * embedding and before scaling; k and v likewise with n_kv_heads (k after rotary). Rows
 * of positions not yet run are 0. Borrowed, valid until kv_model_run_free. Cannot fail.
 */
const float *kv_model_q(const kv_model_run *r, int layer);
const float *kv_model_k(const kv_model_run *r, int layer);
const float *kv_model_v(const kv_model_run *r, int layer);

/* Frees the run. NULL is ignored. */
void kv_model_run_free(kv_model_run *r);

#endif
