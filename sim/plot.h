/*
 * plot.h - the figures of a result directory, rendered by gnuplot from the scripts in
 * analysis/ (see analysis/README.md).
 *
 *   recall_steps    recall against decode step, one line per policy, a panel per budget
 *   memory_steps    KV-cache bytes against decode step per policy, metadata dashed
 *   recall_budget   mean recall against budget with 95% confidence intervals
 *   recall_bytes    mean recall against peak memory (KV + metadata bytes)
 *   retention_map   positions still cached at the end, per (layer, KV head), per policy
 *   head_recall     mean recall per (layer, query head), a heatmap per policy
 *   retention_text  the trace's text, each token shaded by the share of caches holding it
 *                   at the end, a panel per policy
 *   predict         open-loop recall and output error against the closed loop's KL, a
 *                   point per (policy, budget); a note without closed-loop results
 *
 * No name ever reaches a shell or gnuplot's command parser: kvsim reads the TSV files
 * itself, writes the numbers a figure needs into plain data files of fixed names in a
 * private directory (mode 0700) inside the figure directory, and passes gnuplot the
 * names (trace, policy labels) only as single-quoted string constants in a variables
 * file, with every quote doubled and control characters replaced; gnuplot runs in that
 * directory without a shell (fork and exec) and writes figure.FORMAT there. Each figure
 * and its caption file (NAME.txt: what is plotted, traces, budgets, smoothing, interval)
 * are renamed into the figure directory only after every figure is complete, so a
 * failure (a full disk included) leaves the previous figures as they were.
 */
#ifndef KV_PLOT_H
#define KV_PLOT_H

#include <stddef.h>

#define KV_PLOT_FIGURE_LIST \
    "recall_steps, memory_steps, recall_budget, recall_bytes, retention_map, head_recall, " \
    "retention_text, predict"
#define KV_PLOT_N_FIGURES 8

typedef struct {
    const char *format;   /* "png" (pngcairo; NULL means png), "svg" or "pdf" */
    const char *style;    /* "screen" (NULL: titles, 1200x800 pixels / 9x6 in) or "paper"
                             (no titles, print sizes: see columns, fonts at 8-9 pt) */
    int columns;          /* paper style: 1 (3.4 in wide, the default) or 2 (7 in) */
    const char *budget;   /* budget_spec for memory_steps, retention_map and head_recall;
                             NULL: the first in summary.tsv */
    const char *trace;    /* trace name of the per-trace figures; NULL: every trace
                             (recall_steps and memory_steps show their mean per step,
                             the maps the first trace; recall_budget and recall_bytes the
                             trace "all" rows when there are several) */
    const char *policies; /* comma-separated labels to plot (in this order); NULL: all */
    const char *out_dir;  /* where the figures go; NULL: DIR/figures (created) */
    double width, height; /* size: pixels for png, inches for pdf and svg; 0: the
                             style's default */
    int smooth;           /* moving mean over this many decode steps (odd, centred) for
                             the per-step lines; 0: the default (15), 1: none */
    int raw;              /* 1: also draw the unsmoothed lines, thin and light */
    int quiet;            /* 1: nothing on stdout */
} kv_plot_options;

/* 1 when a gnuplot executable is found: $KVSIM_GNUPLOT when set (an empty value means
 * none), else `gnuplot` on $PATH. Cannot fail. */
int kv_plot_available(void);

/*
 * Renders the figures of result directory dir (borrowed) as out_dir/NAME.FORMAT with
 * a caption out_dir/NAME.txt, one gnuplot process per figure, with the scripts of the
 * analysis directory: the first of $KVSIM_ANALYSIS, DIR_OF_EXECUTABLE/analysis and
 * ./analysis that holds them. where (where_len bytes) receives the figure directory.
 *
 * Returns 0 (KV_OK); KV_EUSAGE for a usage error found before anything is written
 * (unknown format or style, a size out of range, a trace, budget or policy the results
 * do not have); another code of traces/status.h for a failure (gnuplot missing, a result
 * file missing, damaged or lacking a column (KV_EIO, KV_EFORMAT), a full disk, gnuplot
 * failing, out of memory): err holds one line naming the file, column or figure, and the
 * previous figures in out_dir are kept unchanged.
 */
int kv_plot_render(const char *dir, const kv_plot_options *o, char *where, size_t where_len,
                   char *err, size_t err_len);

#endif
