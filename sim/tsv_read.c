/*
 * tsv_read.c - a kvsim result file read whole into memory (see tsv_read.h).
 */
#include "sim/tsv_read.h"
#include "traces/status.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The whole file, NUL-terminated, in *text; 0, or KV_EIO / KV_ENOMEM with err set. */
static int slurp(const char *path, char **text, size_t *len, char *err, size_t err_len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, err_len, "%s: cannot read: %s", path, strerror(errno));
        return KV_EIO;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1)
            break;
        char *grown = realloc(buf, cap * 2);
        if (!grown) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = grown;
        cap *= 2;
    }
    int failed = ferror(f);
    fclose(f);
    if (!buf) {
        snprintf(err, err_len, "%s: out of memory reading it", path);
        return KV_ENOMEM;
    }
    if (failed) {
        free(buf);
        snprintf(err, err_len, "%s: read error", path);
        return KV_EIO;
    }
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return 0;
}

/* Splits line (NUL-terminated) at tabs into fields (at most max stored); returns the
 * count, which may exceed max. */
static size_t split_tabs(char *line, char **fields, size_t max)
{
    size_t n = 0;
    for (char *p = line;; n++) {
        if (n < max)
            fields[n] = p;
        char *tab = strchr(p, '\t');
        if (!tab)
            return n + 1;
        *tab = '\0';
        p = tab + 1;
    }
}

int kv_tsv_read(const char *path, kv_tsv *t, char *err, size_t err_len)
{
    memset(t, 0, sizeof *t);
    snprintf(t->path, sizeof t->path, "%s", path);
    size_t len;
    int rc = slurp(path, &t->text, &len, err, err_len);
    if (rc)
        return rc;
    if (len == 0 || t->text[0] == '\n') {
        snprintf(err, err_len, "%s: empty (no header row)", path);
        kv_tsv_free(t);
        return KV_EFORMAT;
    }
    if (strlen(t->text) != len) {
        snprintf(err, err_len, "%s: holds a NUL byte: not a kvsim result file", path);
        kv_tsv_free(t);
        return KV_EFORMAT;
    }
    /* lines: the header, then rows; a final newline ends the last */
    size_t n_lines = 0;
    for (char *p = t->text; *p; p++)
        n_lines += *p == '\n';
    if (t->text[len - 1] != '\n') {
        snprintf(err, err_len, "%s: the last line is incomplete (a truncated file?)", path);
        kv_tsv_free(t);
        return KV_EFORMAT;
    }
    char *line = t->text, *nl = strchr(line, '\n');
    *nl = '\0';
    size_t n_cols = 1;
    for (const char *p = line; *p; p++)
        n_cols += *p == '\t';
    t->header = malloc(n_cols * sizeof *t->header);
    t->cells = malloc(((n_lines - 1) * n_cols + 1) * sizeof *t->cells);
    if (!t->header || !t->cells) {
        snprintf(err, err_len, "%s: out of memory reading it", path);
        kv_tsv_free(t);
        return KV_ENOMEM;
    }
    t->n_cols = split_tabs(line, t->header, n_cols);
    for (size_t r = 0; r + 1 < n_lines; r++) {
        line = nl + 1;
        nl = strchr(line, '\n');
        *nl = '\0';
        size_t got = split_tabs(line, t->cells + r * n_cols, n_cols);
        if (got != n_cols) {
            snprintf(err, err_len, "%s line %zu: %zu fields where the header has %zu (a "
                     "damaged file?)", path, r + 2, got, n_cols);
            kv_tsv_free(t);
            return KV_EFORMAT;
        }
        t->n_rows = r + 1;
    }
    return 0;
}

void kv_tsv_free(kv_tsv *t)
{
    free(t->text);
    free(t->header);
    free(t->cells);
    t->text = NULL;
    t->header = t->cells = NULL;
    t->n_rows = t->n_cols = 0;
}

int kv_tsv_col(const kv_tsv *t, const char *name)
{
    for (size_t i = 0; i < t->n_cols; i++)
        if (strcmp(t->header[i], name) == 0)
            return (int)i;
    return -1;
}

int kv_tsv_need(const kv_tsv *t, const char *cols, char *err, size_t err_len)
{
    char want[512];
    snprintf(want, sizeof want, "%s", cols);
    for (char *save = NULL, *c = strtok_r(want, " ", &save); c; c = strtok_r(NULL, " ", &save)) {
        if (kv_tsv_col(t, c) >= 0)
            continue;
        size_t at = (size_t)snprintf(err, err_len, "%s: no column '%s' (has:", t->path, c);
        for (size_t i = 0; i < t->n_cols && at < err_len; i++)
            at += (size_t)snprintf(err + at, err_len - at, " %s", t->header[i]);
        if (at < err_len)
            snprintf(err + at, err_len - at, ")");
        return KV_EFORMAT;
    }
    return 0;
}

int kv_tsv_number(const kv_tsv *t, size_t row, int col, double *v, char *err,
                  size_t err_len)
{
    const char *s = kv_tsv_cell(t, row, col);
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    if (end == s || *end != '\0' || !isfinite(*v)) {
        snprintf(err, err_len, "%s line %zu: column '%s' holds '%.40s', not a finite number",
                 t->path, row + 2, t->header[col], s);
        return KV_EFORMAT;
    }
    return 0;
}
