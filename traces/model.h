/*
 * model.h - a Llama-architecture checkpoint in the llama2.c layout, and its forward pass.
 *
 * The layout and the forward pass are described in ../shared/models/README.md: a header
 * of 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
 * seq_len), then float32 weights. A negative vocab_size means the output classifier is
 * stored after the weights instead of being shared with the token embedding.
 *
 * The forward pass runs in float32 (pre-norm residual blocks, RMSNorm eps 1e-5, rotary
 * position embedding, grouped-query attention, SiLU-gated FFN), one position at a time
 * (kv_model_step) or a run of prompt positions together (kv_model_prefill), and records,
 * per layer, the post-rotary queries and keys and the values of every position, which is
 * what `kvsim capture` stores in a trace.
 *
 * Determinism: every output of a matrix product is summed in input order with separate
 * multiplies and adds (SIMD lanes hold different outputs, never parts of one sum), and the
 * transcendental functions are evaluated in double then rounded, so the same checkpoint
 * and tokens give bit-identical results on any IEEE-754 machine whose C compiler does not
 * contract a*b+c into FMA (model.c asks it not to), and a prefill of n positions gives
 * the same bits as n steps.
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
    KV_EMODEL_ARG = KV_EUSAGE,     /* a caller passed an argument outside the documented
                                      range */
    KV_EMODEL_NUMERIC = KV_EFORMAT /* the forward pass produced Inf or NaN (weights
                                      overflow float32) */
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
 * n_pos floats of attention rows, and O(vocab_size + 32 * (hidden_dim + dim)) of scratch
 * (up to 32 positions go through the weights together).
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
 * err set when token or pos is out of range (nothing is changed then). The values are
 * checked as they are computed: q, k and v and the residual stream after every layer, and
 * the logits; the first that is not finite stops the step with KV_EMODEL_NUMERIC and
 * "layer L, position P: Inf or NaN in the keys (...)" (a damaged or badly scaled
 * checkpoint: nothing finite could be recorded from there on).
 */
int kv_model_step(kv_model_run *r, int token, int pos, char *err, size_t err_len);

/*
 * Runs tokens[0..n-1] at positions pos..pos+n-1 (pos must be the number of positions run
 * so far, pos + n <= n_pos), passing them through each weight matrix together: the fast
 * path for a prompt. Results are bit-identical to n calls of kv_model_step; afterwards
 * kv_model_logits and kv_model_attn hold those of the last position (pos + n - 1).
 * Returns 0, or KV_EMODEL_ARG with err set when a token, n or pos is out of range
 * (nothing is changed then).
 */
int kv_model_prefill(kv_model_run *r, const int *tokens, int n, int pos, char *err,
                     size_t err_len);

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

/* ------------------------------------------------ many sequences, one position */

/*
 * A batch of n sequences that run the same token at the same position, each with its own
 * attention (a KV-cache policy evicting inside it, in a closed-loop evaluation): the
 * caller supplies every head's attention output, the batch does everything else. Each
 * weight matrix multiplies all n sequences in one pass over the weights (a matrix-matrix
 * product with one column per sequence), and every output is summed in input order like
 * the single-sequence forward pass, so column b's results are bit-identical to
 * kv_model_step's for the same inputs, whatever n and b. Per position and layer:
 *
 *   kv_model_batch_embed(b, token, pos)      step 1 for every sequence
 *   for each layer l:
 *       kv_model_batch_qkv(b, l)             step 2a-2b: q, k, v of every sequence
 *       [caller: attention of each sequence into kv_model_batch_heads(b)]   step 2c
 *       kv_model_batch_mix(b, l)             steps 2d-2e
 *   kv_model_batch_logits(b)                 step 3 for every sequence
 */
typedef struct kv_model_batch kv_model_batch;

/* Allocates a batch of n >= 1 sequences for m (borrowed, must outlive it): O(n * (dim +
 * hidden_dim + vocab_size)) floats. Returns 0, or KV_EMODEL_NOMEM / KV_EMODEL_ARG with err
 * set; *out is NULL on failure. */
int kv_model_batch_create(const kv_model *m, int n, kv_model_batch **out, char *err,
                          size_t err_len);

/* Frees the batch. NULL is ignored. */
void kv_model_batch_free(kv_model_batch *b);

/* Step 1: every sequence's residual stream becomes the embedding of token (0 <= token <
 * vocab_size, checked by the caller); pos (>= 0) sets the rotary angles of the layers to
 * come. Cannot fail. */
void kv_model_batch_embed(kv_model_batch *b, int token, int pos);

/* Steps 2a-2b of layer l: afterwards kv_model_batch_q/k/v hold every sequence's query
 * (after rotary), key (after rotary) and value. Cannot fail. */
void kv_model_batch_qkv(kv_model_batch *b, int layer);

/* Sequence s's query [dim] (head h at h * head_size), key and value [kv_dim] (KV head g
 * at g * head_size) of the last kv_model_batch_qkv. Borrowed. Cannot fail. */
const float *kv_model_batch_q(const kv_model_batch *b, int s);
const float *kv_model_batch_k(const kv_model_batch *b, int s);
const float *kv_model_batch_v(const kv_model_batch *b, int s);

/* Sequence s's attention outputs [dim], head h at h * head_size, that the caller fills
 * between kv_model_batch_qkv and kv_model_batch_mix (kv_model_attend computes one head).
 * Borrowed. Cannot fail. */
float *kv_model_batch_heads(kv_model_batch *b, int s);

/* Steps 2d-2e of layer l: the output projection of the heads and the feed-forward block,
 * added to every residual stream. Cannot fail. */
void kv_model_batch_mix(kv_model_batch *b, int layer);

/* Step 3 for every sequence: returns the logits, sequence s at s * vocab_size. Borrowed,
 * valid until the next call on b. Cannot fail. */
const float *kv_model_batch_logits(kv_model_batch *b);

/*
 * One query head's attention over the keys at positions pos[0..n) (n >= 1, any order; pos
 * NULL: positions 0..n-1), exactly as the forward pass computes it over positions 0..pos:
 * logits q . k_j / sqrt(head_size) in float, the maximum subtracted, exponentials in
 * double rounded to float, the normaliser in double, row[i] = weight of key pos[i];
 * out[0..head_size) = sum over i, in order, of row[i] * v_pos[i]. k and v hold key j at
 * k + j * head_size. With pos = NULL and n = position + 1 this is kv_model_step's
 * attention bit for bit. row holds n floats (the caller's). Cannot fail.
 */
void kv_model_attend(const float *q, const float *k, const float *v, int head_size,
                     const int *pos, int n, float *row, float *out);

#endif
