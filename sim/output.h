/*
 * output.h - the result files of a run (TSV with a header row) and the console table.
 *
 *   summary.tsv    one row per (trace, policy, budget), plus trace = "all" rows (the
 *                  mean over traces with a 95% Student-t interval) when there are several
 *   steps.tsv      one row per (trace, policy, budget, decode step)
 *   heads.tsv      one row per (trace, policy, budget, layer, query head)
 *   compare.tsv    one row per (trace, budget, pair of policies): mean paired difference
 *                  of recall with its 95% bootstrap interval (and trace = "all" rows);
 *                  with more than KV_COMPARE_ALL_PAIRS_MAX policies only the pairs of the
 *                  first policy with each other one (all pairs grow quadratically: 1,000
 *                  policies took over 30 s of bootstrap per budget)
 *   retention.tsv  one row per (trace, policy, budget, position): share of caches holding
 *                  it at the end, the caches that evicted it and its mean lifetime there
 *                  (NA when none did), and the position's token (TSV-escaped text, or #id)
 *   retention_map.tsv  one row per (trace, policy, budget, layer, KV head, position) that
 *                  KV head still holds at the end (positions it dropped are not listed)
 *   lifetimes.tsv  one row per (trace, policy, budget, lifetime): evicted tokens by the
 *                  number of decode steps they were attended to
 *   recall_hist.tsv  one row per (trace, policy, budget, bin): decode steps by recall
 *   budgets.tsv    one row per (trace, policy, budget, layer, cache): the cache's budget
 *                  (sim/alloc.h) and its mean kv_tokens over decode steps
 *
 * Every file has the columns trace, policy (or policy_a, policy_b), budget (tokens,
 * resolved) and budget_spec (as given). Columns are documented in the README ("Output
 * files"). Numbers are printed with %.9g (recall) or as integers (tokens, bytes), and the
 * bootstrap is seeded with KV_OUTPUT_SEED, so files are byte-identical across runs.
 */
#ifndef KV_OUTPUT_H
#define KV_OUTPUT_H

#include <stdio.h>
#include "sim/engine.h"
#include "sim/metrics.h"
#include "sim/stats.h"

#define KV_OUTPUT_SEED 1        /* seed of every bootstrap (gsl_rng mt19937) */
#define KV_COMPARE_ALL_PAIRS_MAX 64   /* compare.tsv: all pairs up to this many policies */
#define KV_RECALL_BINS 20       /* recall_hist.tsv: bins of width 0.05 over [0, 1] */

/*
 * The summary.tsv values of run r of res: values[i] for every summary column i of
 * kv_output_columns (sim/metrics.h; the other entries are not touched), each the column's
 * reduction over the decode steps of its metric. The recall interval is the 95%
 * percentile-bootstrap interval of recall_mean over (layer, query head) units (stats.h
 * says why units), KV_BOOTSTRAP_RESAMPLES resamples seeded with KV_OUTPUT_SEED.
 * values: [kv_n_output_columns]. Returns 0, or 1 when out of memory (err set).
 */
int kv_run_summarise(const kv_results *res, int r, double *values, char *err,
                     size_t err_len);

/*
 * Makes sure dir exists (created with its parents) and is empty of result files. A
 * directory that already holds files is refused unless force is 1. Returns 0; 1 with err
 * set when it cannot be created or read, or is not a directory (a runtime failure); 2
 * when it is not empty and force is 0 (a usage error).
 */
int kv_output_prepare(const char *dir, int force, char *err, size_t err_len);

/* Creates dir and its missing parents (mkdir -p, mode 0777 before the umask); parts that
 * exist already are fine. kv_output_prepare and kv_result_set_begin (sim/publish.h) use
 * it. Returns 0, or -1 with errno set (ENAMETOOLONG when dir has
 * KV_PATH_LEN (sim/config.h) bytes or more, else mkdir's). */
int kv_make_dirs(const char *dir);

/* pc's parameters as "name=value" pairs, comma-separated, into buf: every one, the
 * engine's kv_granularity included (only_changed 0), or those that differ from their
 * defaults (only_changed 1; "" when none). Cannot fail (truncates to len). */
void kv_output_params(const kv_policy_conf *pc, int only_changed, char *buf, size_t len);

/*
 * kv_output_prepare's checks without creating anything, for before a long replay: a dir
 * that exists must be a readable directory, empty unless force is 1; one that does not
 * exist is fine (kv_output_prepare creates it once there are results, so a run that fails
 * leaves no directory behind). Returns 0, 1 or 2 as kv_output_prepare.
 */
int kv_output_check(const char *dir, int force, char *err, size_t err_len);

/*
 * The results of one experiment: one kv_results per trace. Each res[k] holds
 * conf->n_policies * conf->n_budgets runs, policy-major (run p * n_budgets + b is policy
 * p at budget b); run->budget is the budget in tokens, which may differ between traces
 * and policies when the budget was given as a fraction of the prompt or in bytes.
 */
typedef struct {
    const kv_replay_conf *conf;      /* policies and n_budgets; budgets read only when
                                        budget_specs is NULL */
    int n_traces;
    const kv_results *const *res;    /* [n_traces] */
    const char *const *trace_names;  /* [n_traces] the `trace` column: file name of each */
    const char *const *budget_specs; /* [conf->n_budgets] the `budget_spec` column, or NULL:
                                        conf->budgets written as numbers */
    const char *const *const *tokens; /* [n_traces] the `token` column of retention.tsv:
                                        [T] cells each (already TSV-escaped), or NULL (an
                                        empty cell), or tokens NULL for none at all */
} kv_experiment_results;

/*
 * Writes the result files listed at the top of this file into dir, each with a leading
 * `trace` column. Each file is written to a hidden temporary in dir
 * and renamed into place only when complete, so an interrupted run never leaves a
 * half-written file. Returns 0, or 1 with err naming the file (full disk, I/O).
 */
int kv_output_write(const char *dir, const kv_experiment_results *er, char *err,
                    size_t err_len);

/* 1 when name is one of the result files listed at the top of this file. */
int kv_output_is_result_file(const char *name);

/* Prints the policy x budget table of recall_mean (mean over traces) and peak KV bytes
 * (largest over traces) to f, budgets headed by their spec; with traces of several models
 * (kv_trace_info.model), one table per model in the order the models first appear.
 * Returns 0, or 1 when out of memory. */
int kv_output_table(FILE *f, const kv_experiment_results *er, char *err, size_t err_len);

#endif
