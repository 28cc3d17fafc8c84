/*
 * plot.h - the six figures of a result directory, rendered by gnuplot from the scripts
 * in analysis/ (which read the TSV files by column name; see analysis/README.md).
 *
 *   recall_steps    recall against decode step, one line per policy, a panel per budget
 *   memory_steps    KV-cache bytes against decode step per policy, metadata dashed
 *   recall_budget   mean recall against budget with 95% confidence intervals
 *   retention_map   positions still cached at the end, per (layer, KV head), per policy
 *   head_recall     mean recall per (layer, query head), a heatmap per policy
 *   predict         open-loop recall and output error against the closed loop's KL, one
 *                   point per (policy, budget) (a note instead without closed-loop results)
 */
#ifndef KV_PLOT_H
#define KV_PLOT_H

#include <stddef.h>

#define KV_PLOT_FIGURE_LIST \
    "recall_steps, memory_steps, recall_budget, retention_map, head_recall, predict"

typedef struct {
    const char *format;   /* "png" (pngcairo, 1200x800; NULL means png), "svg" or "pdf" */
    const char *budget;   /* budget_spec for memory_steps, retention_map and head_recall;
                             NULL: the first in summary.tsv */
    const char *trace;    /* trace name for every figure but recall_budget; NULL: the first
                             in summary.tsv. recall_budget shows trace "all" (the mean
                             over traces) when it exists and no trace was asked for */
    const char *out_dir;  /* where the figures go; NULL: DIR/figures (created) */
    int width, height;    /* pixels; 0: 1200 x 800 (pdf: 9 x 6 inches, scaled alike) */
    int quiet;            /* 1: nothing on stdout */
} kv_plot_options;

/* 1 when a gnuplot executable is found: $KVSIM_GNUPLOT when set (an empty value means
 * none), else `gnuplot` on $PATH. Cannot fail. */
int kv_plot_available(void);

/*
 * Renders the six figures of result directory dir (borrowed) as out_dir/NAME.FORMAT,
 * one gnuplot process per figure, with the scripts of the analysis directory: the first
 * of $KVSIM_ANALYSIS, DIR_OF_EXECUTABLE/analysis and ./analysis that holds them. where
 * (where_len bytes) receives the figure directory. Returns 0; 2 for a bad option (unknown
 * format, a size outside 300..4000 pixels); 1 when gnuplot is missing, a script fails (gnuplot's own message, naming the
 * file and the column a script needed, is on stderr) or leaves no or an empty file; err
 * says which figure.
 */
int kv_plot_render(const char *dir, const kv_plot_options *o, char *where, size_t where_len,
                   char *err, size_t err_len);

#endif
