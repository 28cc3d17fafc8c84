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

/* The byte a position stands for when it is a byte-fallback token as kvsim capture
 * writes it (id 3..258 and the text "<0xNN>" of that byte, or the byte itself), else -1.
 * Traces from other tokenizers (ids 3..258 ordinary tokens) keep their texts. */
static int fallback_byte(int id, const char *text)
{
    if (id < BYTE0 || id >= BYTE0 + N_BYTES)
        return -1;
    int b = id - BYTE0;
    char want[8];
    snprintf(want, sizeof want, "<0x%02X>", b);
    if (strcmp(text, want) == 0 || ((unsigned char)text[0] == b && text[1] == '\0' && b))
        return b;
    return -1;
}

/* Bytes of the valid UTF-8 sequence at s (n bytes left), or 0 when it is not one. */
static size_t utf8_valid(const unsigned char *s, size_t n)
{
    size_t k = s[0] < 0x80 ? 1 : (s[0] & 0xE0) == 0xC0 ? 2 : (s[0] & 0xF0) == 0xE0 ? 3
             : (s[0] & 0xF8) == 0xF0 ? 4 : 0;
    if (k == 0 || k > n || (k == 2 && s[0] < 0xC2))
        return 0;
    for (size_t i = 1; i < k; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return k;
}

char *kv_trace_tokens_render(const kv_trace_tokens *tk, int t0, int t1, int at_start)
{
    size_t cap = 1;
    for (int t = t0; t < t1; t++)
        cap += strlen(tk->texts[t]) + 2;
    char *raw = malloc(cap);
    if (!raw)
        return NULL;
    size_t n = 0;
    for (int t = t0; t < t1; t++) {
        int id = tk->ids[t], b = fallback_byte(id, tk->texts[t]);
        const char *text = tk->texts[t];
        if ((id == 1 && strcmp(text, "<s>") == 0) || (id == 2 && strcmp(text, "</s>") == 0)) {
            /* BOS, EOS: a story boundary */
            if (t > 0 && n > 0) {
                memcpy(raw + n, "\n\n", 2);
                n += 2;
            }
            at_start = 1;
            continue;
        }
        if (b >= 0) {
            if (!(at_start && b == ' '))
                raw[n++] = (char)b;
            at_start = 0;
            continue;
        }
        const char *s = tk->texts[t];
        if (at_start && s[0] == ' ')
            s++;
        size_t len = strlen(s);
        memcpy(raw + n, s, len);
        n += len;
        at_start = 0;
    }
    /* bytes that do not form UTF-8 (a character cut by the trace's end) become U+FFFD */
    char *out = malloc(3 * n + 1);
    if (!out) {
        free(raw);
        return NULL;
    }
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_valid((const unsigned char *)raw + i, n - i);
        if (k) {
            memcpy(out + w, raw + i, k);
            w += k;
            i += k;
        } else {
            memcpy(out + w, "\xEF\xBF\xBD", 3);
            w += 3;
            i++;
        }
    }
    out[w] = '\0';
    free(raw);
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
