/*
 * plot_data.h - what `kvsim plot` hands gnuplot for each figure (internal to
 * sim/cmd_plot.c): the result files read by kvsim, every option resolved against them,
 * and per figure a private directory holding
 *
 *   vars.gp     gnuplot assignments: counts, ranges, styles, and every name (trace,
 *               policy label, budget spec) as a single-quoted gnuplot string constant
 *               with quotes doubled and control characters replaced by '?'; gnuplot
 *               expands no macro, backquote or escape inside such a constant
 *   *.dat       numbers only, tab-separated, one file per panel and policy, fixed names
 *   NAME.txt    the figure's caption
 *
 * The data files' names and columns are documented in analysis/README.md.
 */
#ifndef KV_PLOT_DATA_H
#define KV_PLOT_DATA_H

#include <stddef.h>
#include "sim/plot.h"
#include "sim/tsv_read.h"

#define KV_PLOT_PATH 4096
#define KV_PLOT_SMOOTH_DEFAULT 15   /* decode steps of the default moving mean */

typedef struct {
    const kv_plot_options *o;
    const char *dir;                  /* the result directory (borrowed) */
    const char *format, *style;       /* resolved: "png"/"svg"/"pdf", "screen"/"paper" */
    kv_tsv summary, steps, heads, map;
    const char **traces;              /* the real traces (not "all"), summary order */
    size_t n_traces;
    const char *const *used;          /* traces the per-step figures average */
    size_t n_used;
    const char *map_trace;            /* the trace of retention_map and head_recall */
    const char *shown;                /* the trace rows of recall_budget, recall_bytes */
    const char *budget;               /* budget_spec of the one-budget figures */
    const char **specs;               /* budget specs of map_trace, summary order */
    size_t n_specs;
    const char **pol, **pol_type;     /* the plotted policies and their types */
    size_t n_pol;
    int smooth;                       /* moving-mean width in steps (1: none) */
    char tmp[KV_PLOT_PATH];           /* the private directory ("" until made) */
} kv_plot_ctx;

/*
 * Reads DIR/summary.tsv, steps.tsv, heads.tsv and retention_map.tsv into c and resolves
 * o's trace, budget and policies against them; writes nothing. Returns 0; 1 when a file
 * is missing, damaged or lacks a column (err names it); 2 when o names a trace, budget
 * or policy the results do not have (err lists what they have). kv_plot_close frees c
 * in every case.
 */
int kv_plot_open(kv_plot_ctx *c, const char *dir, const kv_plot_options *o, char *err,
                 size_t err_len);

/* Writes vars.gp, the data files and the caption (c->tmp/NAME.txt) of figure `name` into
 * c->tmp; scripts: the absolute analysis directory. Returns 0, or 1 with err set (a
 * write failure names the file and, for a full disk, ENOSPC). */
int kv_plot_prepare(kv_plot_ctx *c, const char *name, const char *scripts, char *err,
                    size_t err_len);

/* Frees c and removes c->tmp with everything left in it. Cannot fail. */
void kv_plot_close(kv_plot_ctx *c);

/* 1 when the file system of path has less than 1 MiB free for this user. */
int kv_plot_disk_full(const char *path);

#endif
