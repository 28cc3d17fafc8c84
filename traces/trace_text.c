/*
 * trace_text.c - a trace's tokens as text (trace_text.h).
 */
#include "traces/trace_text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BYTE0 3    /* id of the byte token of 0x00 */
#define N_BYTES 256

int kv_trace_tokens_read(kv_trace *tr, kv_trace_tokens *out, char *err, size_t err_len)
{
    memset(out, 0, sizeof *out);
    int T = kv_trace_get_info(tr)->n_tokens;
    int rc = kv_trace_read_token_text(tr, &out->texts, err, err_len);
    if (rc)
        return rc;
    out->ids = malloc((size_t)T * sizeof *out->ids);
    if (!out->ids) {
        kv_trace_tokens_free(out);
        snprintf(err, err_len, "%s: out of memory for %d token ids", kv_trace_path(tr), T);
        return KV_ETRACE_NOMEM;
    }
    rc = kv_trace_read_tokens(tr, out->ids, err, err_len);
    if (rc) {
        kv_trace_tokens_free(out);
        return rc;
    }
    out->n_tokens = T;
    return 0;
}

void kv_trace_tokens_free(kv_trace_tokens *tk)
{
    free(tk->ids);
    free(tk->texts);
    memset(tk, 0, sizeof *tk);
}

char *kv_trace_tokens_render(const kv_trace_tokens *tk, int t0, int t1, int at_start)
{
    size_t cap = 1;
    for (int t = t0; t < t1; t++)
        cap += strlen(tk->texts[t]) + 2;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    size_t n = 0;
    for (int t = t0; t < t1; t++) {
        int id = tk->ids[t];
        if (id == 1 || id == 2) { /* BOS, EOS: a story boundary */
            if (t > 0 && n > 0) {
                memcpy(out + n, "\n\n", 2);
                n += 2;
            }
            at_start = 1;
            continue;
        }
        if (id >= BYTE0 && id < BYTE0 + N_BYTES) {
            char b = (char)(unsigned char)(id - BYTE0);
            if (!(at_start && b == ' '))
                out[n++] = b;
            at_start = 0;
            continue;
        }
        const char *s = tk->texts[t];
        if (at_start && s[0] == ' ')
            s++;
        size_t len = strlen(s);
        memcpy(out + n, s, len);
        n += len;
        at_start = 0;
    }
    out[n] = '\0';
    return out;
}

void kv_tsv_escape(const char *s, char *out, size_t len)
{
    size_t n = 0;
    for (; *s && n + 1 < len; s++) {
        const char *esc = *s == '\\' ? "\\\\" : *s == '\t' ? "\\t" : *s == '\n' ? "\\n"
                        : *s == '\r' ? "\\r" : NULL;
        if (esc) {
            if (n + 3 > len)
                break;
            out[n++] = esc[0];
            out[n++] = esc[1];
        } else {
            out[n++] = *s;
        }
    }
    out[n] = '\0';
}
