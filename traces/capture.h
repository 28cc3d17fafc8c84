/*
 * capture.h - record a real trace: run a llama2.c-layout checkpoint (traces/model.h) from
 * BOS and write its attention as a kvtrace v1 file (traces/trace.h). The library behind
 * `kvsim capture` (sim/cmd_capture.c), and what a model-driven experiment can call.
 *
 * The trace (source qk, or attn with q/k/v kept when with_attn is set): per layer the
 * post-rotary queries /layers/<l>/q [n_heads, T, head_dim], keys /layers/<l>/k
 * [n_kv_heads, T, head_dim] and values /layers/<l>/v, float32, plus /tokens and the
 * sampling settings and the checkpoint's sha256 as root attributes.
 *
 * Positions 0..T-1 hold BOS (id KV_CAPTURE_BOS_ID), then the prompt ids, then the model's
 * own tokens; the first prefill_len positions are the prompt the replay treats as prefill.
 * The same options and checkpoint bytes give identical datasets.
 */
#ifndef KV_CAPTURE_H
#define KV_CAPTURE_H

#include <stddef.h>

#include "traces/model.h"

#define KV_CAPTURE_BOS_ID 1
#define KV_CAPTURE_DEFAULT_TOKENS 512
#define KV_CAPTURE_DEFAULT_PREFILL 128
#define KV_CAPTURE_DEFAULT_TEMPERATURE 1.0
#define KV_CAPTURE_DEFAULT_TOP_P 0.9
#define KV_CAPTURE_DEFAULT_SEED 1UL
#define KV_CAPTURE_ERR_LEN 512 /* a message buffer long enough for every message */


typedef struct {
    const char *model_path; /* checkpoint to run (required) */
    const char *out_path;   /* trace to write (required; an existing file is replaced) */
    int n_tokens;           /* T, positions recorded, BOS included; 2..seq_len */
    int prefill_len;        /* P, prompt positions, BOS included; 1..T-1; 0: BOS plus the
                             * prompt ids (the prompt's length) */
    double temperature;     /* >= 0; 0 = greedy (the lowest id on a tie) */
    double top_p;           /* nucleus mass, (0, 1] */
    unsigned long seed;     /* sampler seed (GSL mt19937), 0..4294967295 */
    const int *prompt;      /* token ids after BOS, borrowed; NULL when n_prompt is 0 */
    int n_prompt;
    int with_attn;          /* 1: also store the softmax rows, source = attn */
    int allow_extrapolation; /* 1: T may exceed the checkpoint's trained context */
    int progress;           /* 1: progress lines on stderr once a capture passes 1 s */
    /* Text (a tokenizer, traces/tokenizer.h): */
    const char *tokenizer_path; /* NULL: ids only; else the trace also stores each token's
                                 * text, the prompt text and the tokenizer's sha256 */
    const char *prompt_text;    /* encoded after BOS instead of prompt/n_prompt; needs
                                 * tokenizer_path */
    int stop_at_bos;        /* 1: end the trace before a BOS the model emits after the
                             * first decode position (default: generation goes on past it) */
    int store_f16;          /* 1: store q, k, v as float16 (half the bytes; FORMAT.md) */
} kv_capture_opts;

/* What a capture wrote: positions and prompt after --stop-at-bos and prompt encoding. */
typedef struct {
    int n_tokens;    /* T written (below opts.n_tokens when stop_at_bos ended early) */
    int prefill_len; /* P written */
    int n_prompt;    /* prompt ids after BOS (encoded from prompt_text when given) */
    int stopped_at_bos; /* 1 when stop_at_bos ended the trace */
} kv_capture_result;

/* Fills o with the defaults above (no paths, no prompt, no progress). Cannot fail. */
void kv_capture_defaults(kv_capture_opts *o);

/*
 * Checks the options that depend on the checkpoint c: T within its trained context
 * (unless allow_extrapolation), P < T, BOS plus the prompt within P, every prompt id in
 * the vocabulary. Returns 0, or KV_EUSAGE (traces/status.h) with a one-line message
 * naming the `kvsim capture` option in err.
 */
int kv_capture_check(const kv_capture_opts *o, const kv_model_config *c, char *err,
                     size_t err_len);

/*
 * Loads o->model_path (and o->tokenizer_path: its vocabulary must be the checkpoint's;
 * o->prompt_text is encoded with it), checks o against them (kv_capture_check), runs the
 * forward pass for positions 0..T-1 sampling from the logits (the given prompt positions
 * together, kv_model_prefill), and writes the trace to o->out_path. res (may be NULL) gets
 * what was written. Memory: the model, its run (kv_model_run_create) and, with_attn,
 * n_layers * n_heads * 128 * T floats of row buffer. Returns 0, or a code of
 * traces/status.h with a one-line message in err: KV_EUSAGE for options that do not fit
 * the checkpoint or tokenizer, the model's or tokenizer's code when it cannot be loaded
 * (KV_EIO, KV_EFORMAT), KV_EIO when the trace cannot be written, KV_ENOMEM. On failure no
 * partial trace is left at out_path.
 */
int kv_capture(const kv_capture_opts *o, kv_capture_result *res, char *err, size_t err_len);

#endif
