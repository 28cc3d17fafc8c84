/*
 * metrics.h - the per-step metrics as data: how caches fold into a run (kv_step_fields)
 * and which columns of steps.tsv and summary.tsv show them (kv_output_columns).
 *
 * A per-step metric lives in four places, and only there:
 *   1. a double field of kv_step_metrics (sim/cache.h);
 *   2. its computation in kv_cache_query (sim/cache.c);
 *   3. a row of kv_step_fields (metrics.c): how a run folds its caches' values;
 *   4. rows of kv_output_columns (metrics.c): its steps.tsv column and summary.tsv
 *      columns, each with the reduction over decode steps and the printf format.
 * The engine folds and the output writes every field and column from these tables, and
 * the figures (analysis/) read the files by column name.
 */
#ifndef KV_METRICS_H
#define KV_METRICS_H

#include <stddef.h>
#include "sim/cache.h"
#include "traces/trace.h"

/* How a run's value of a step comes from its caches' values (kv_step_metrics fields). */
typedef enum {
    KV_FOLD_SUM = 0,      /* summed over every cache of every layer (tokens, bytes) */
    KV_FOLD_HEAD_MEAN = 1,/* summed, then divided by n_layers * n_heads: the mean over
                             (layer, query head) of a per-head quantity (recall) */
    KV_FOLD_RUN = 2       /* not from caches: a per-run value its driver writes into the
                             run's steps (the closed loop's, sim/closedloop.h) */
} kv_fold;

typedef struct {
    size_t offset;        /* of a double in kv_step_metrics */
    kv_fold fold;
} kv_step_field;

extern const kv_step_field kv_step_fields[];   /* kv_n_step_fields rows */
extern const int kv_n_step_fields;

/* into += m, field by field (the run's fold of one cache: fixed order), every field but
 * the KV_FOLD_RUN ones. Cannot fail. */
void kv_metrics_add(kv_step_metrics *into, const kv_step_metrics *m);

/* Divides the KV_FOLD_HEAD_MEAN fields of m by units (n_layers * n_heads). Cannot fail. */
void kv_metrics_finish(kv_step_metrics *m, double units);

/* The field at offset of m. Cannot fail. */
double kv_metric_get(const kv_step_metrics *m, size_t offset);

/* ----------------------------------------------------------- output columns */

typedef enum { KV_FILE_STEPS = 0, KV_FILE_SUMMARY = 1 } kv_result_file;

/* How a summary.tsv column reduces the D decode steps of its field (after the unit
 * conversion), and how its trace = "all" row combines the traces' values. Steps whose
 * value is NaN (a metric the step does not have: the closed loop's last step) are left
 * out; a column with no defined step is NaN, which the files show as NA. */
typedef enum {
    KV_RED_STEP = 0,  /* steps.tsv: the step's value itself */
    KV_RED_MEAN,      /* gsl_stats_mean over steps; all: the mean over traces */
    KV_RED_AVERAGE,   /* the sum over steps / D; all: the mean over traces */
    KV_RED_PEAK,      /* the largest; all: the mean over traces */
    KV_RED_MIN,       /* the smallest; all: the mean over traces */
    KV_RED_P05,       /* the 5% quantile (linear interpolation between closest ranks,
                         gsl_stats_quantile_from_sorted_data); all: the mean over traces */
    KV_RED_CI_MEAN,   /* the mean, the centre of the interval columns; all: the Student-t
                         mean over traces */
    KV_RED_CI_LO,     /* the 95% bootstrap interval of the mean over (layer, query head)
                         units (recall and out_err: the engine keeps their per-head
                         means); all: the Student-t interval over the traces' CI_MEAN
                         values of the same field */
    KV_RED_CI_HI,
    KV_RED_CI_UNITS,  /* the units the interval is over; all: the number of traces */
    KV_RED_BLOCK_CI_LO, /* the 95% moving-block bootstrap interval of the mean over steps
                         (kv_block_bootstrap_mean_ci, block kv_block_length(steps)): for a
                         per-run series whose steps are autocorrelated (the closed loop's
                         kl); all: the Student-t interval over the traces' CI_MEAN */
    KV_RED_BLOCK_CI_HI,
    KV_RED_BLOCK_LEN, /* that block length, steps; all: NaN (the interval is across traces) */
    KV_RED_EXP_MEAN   /* exp of the mean (perplexity from nll); all: the mean over traces */
} kv_reduction;

typedef enum {
    KV_UNIT_AS_IS = 0,
    KV_UNIT_KV_BYTES = 1  /* a token count shown as bytes of KV cache (kv_tokens_to_bytes) */
} kv_unit;

typedef struct {
    kv_result_file file;
    const char *name;      /* the column's header */
    size_t offset;         /* the kv_step_metrics field it shows */
    kv_unit unit;
    kv_reduction reduction;
    const char *format;    /* printf format of one value (a double) */
    const char *all_format;/* summary.tsv: format in the trace = "all" rows */
} kv_output_column;

extern const kv_output_column kv_output_columns[];   /* kv_n_output_columns rows, in the
                                                         order the files show them */
extern const int kv_n_output_columns;

/* The index in kv_output_columns of the summary.tsv column name, or -1. */
int kv_summary_column(const char *name);

/* The index of the summary.tsv column that shows the field at offset with reduction red,
 * or -1. */
int kv_summary_column_of(size_t offset, kv_reduction red);

#endif
