/*
 * trace_text.h - the text a captured trace holds: its positions' tokens rendered as one
 * paragraph (for `kvsim text`, `kvsim info` and the retention_text figure), and the
 * TSV escaping of a token's text (retention.tsv's token column).
 *
 * Rendering, from /tokens and /token_text (FORMAT.md): a byte-fallback token as kvsim
 * capture writes it (id 3..258 with the text "<0xNN>" of byte id - 3, or that byte) gives
 * its byte, so the bytes of a character split over several tokens join again; BOS (id 1,
 * "<s>") or EOS (id 2, "</s>") at position 0 gives nothing, later a paragraph break
 * ("\n\n"); any other
 * token gives its text; the first token at the start or after a break loses one leading
 * space (the tokenizer's dummy prefix); bytes that are not UTF-8 become U+FFFD, so the
 * result is always valid UTF-8.
 */
#ifndef KV_TRACE_TEXT_H
#define KV_TRACE_TEXT_H

#include <stddef.h>
#include <stdint.h>

#include "traces/trace.h"

/* The ids and display texts of a trace's positions. */
typedef struct {
    int n_tokens;    /* T */
    int32_t *ids;    /* [T], owned */
    char **texts;    /* [T], one allocation (kv_trace_read_token_text), owned */
} kv_trace_tokens;

/*
 * Reads /tokens and /token_text of tr into *out (release with kv_trace_tokens_free).
 * KV_ETRACE_FORMAT with a message when the trace has no /token_text (captured without a
 * tokenizer); other KV_ETRACE_* codes for I/O and memory.
 */
int kv_trace_tokens_read(kv_trace *tr, kv_trace_tokens *out, char *err, size_t err_len);

/* Frees what kv_trace_tokens_read allocated; a zeroed struct is fine. Cannot fail. */
void kv_trace_tokens_free(kv_trace_tokens *tk);

/*
 * Renders positions t0..t1-1 (0 <= t0 <= t1 <= T) by the rules above into a malloc'd,
 * NUL-terminated string (the caller frees it); at_start says whether position t0 begins a
 * text (its leading space is dropped). NULL when out of memory.
 */
char *kv_trace_tokens_render(const kv_trace_tokens *tk, int t0, int t1, int at_start);

/* Writes s into out (len bytes, NUL-terminated, truncated at len - 1) with backslash,
 * tab, newline and carriage return written as \\, \t, \n and \r: one TSV cell. */
void kv_tsv_escape(const char *s, char *out, size_t len);

#endif
