/*
 * tsv_read.h - reads a kvsim result file (TSV with a header row, sim/output.h) whole into
 * memory, so `kvsim plot` can select rows and columns by name itself instead of handing
 * file names to a shell or to gnuplot's data pipes.
 *
 * Fails with one line naming the file and what is wrong: missing or unreadable, empty
 * (no header row), a data row whose field count differs from the header's (a damaged or
 * truncated file), a column a figure needs that the header lacks, a cell that should be
 * a number and is not.
 */
#ifndef KV_TSV_READ_H
#define KV_TSV_READ_H

#include <stddef.h>

typedef struct {
    char path[4096];      /* as given, for messages */
    char *text;           /* the whole file; cells point into it (tabs and newlines
                             replaced by NUL) */
    char **header;        /* n_cols column names */
    size_t n_cols;
    char **cells;         /* n_rows * n_cols, row-major */
    size_t n_rows;        /* data rows (the header not counted) */
} kv_tsv;

/* Reads path into t (owned by t until kv_tsv_free). Returns 0; KV_EIO (missing or
 * unreadable), KV_EFORMAT (empty, truncated, ragged, a NUL byte) or KV_ENOMEM with err
 * set (traces/status.h); t is then empty and kv_tsv_free is still safe. */
int kv_tsv_read(const char *path, kv_tsv *t, char *err, size_t err_len);

/* Frees what kv_tsv_read allocated; t may be zeroed or failed. Cannot fail. */
void kv_tsv_free(kv_tsv *t);

/* The index of column name, or -1. */
int kv_tsv_col(const kv_tsv *t, const char *name);

/* 0 when t has every column of the space-separated list cols; KV_EFORMAT with err set
 * naming the file, the first missing column and the columns it has. */
int kv_tsv_need(const kv_tsv *t, const char *cols, char *err, size_t err_len);

/* The cell of data row `row` (0-based) and column col (from kv_tsv_col; borrowed). */
static inline const char *kv_tsv_cell(const kv_tsv *t, size_t row, int col)
{
    return t->cells[row * t->n_cols + (size_t)col];
}

/* Parses the cell as a finite number into *v. Returns 0; KV_EFORMAT with err naming the
 * file, the line and the column when it is not one. */
int kv_tsv_number(const kv_tsv *t, size_t row, int col, double *v, char *err,
                  size_t err_len);

#endif
