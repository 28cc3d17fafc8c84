/*
 * output.h - the result files of a run (TSV with a header row) and the console table.
 *
 *   summary.tsv  one row per (policy, budget)
 *   steps.tsv    one row per (policy, budget, decode step)
 *   heads.tsv    one row per (policy, budget, layer, query head)
 *   retention.tsv  one row per (policy, budget, position): share of caches holding it at
 *                  the end
 *   lifetimes.tsv  one row per (policy, budget, lifetime): evicted tokens by the number
 *                  of decode steps they were attended to
 *
 * Columns are documented in the README ("Output files"). Numbers are printed with %.9g
 * (recall) or as integers (tokens, bytes), so files are byte-identical across runs.
 */
#ifndef KV_OUTPUT_H
#define KV_OUTPUT_H

#include <stdio.h>
#include "sim/engine.h"

/* The summary of one run. recall_* are over decode steps (per-step means over layers and
 * query heads); quantiles by linear interpolation between closest ranks
 * (gsl_stats_quantile_from_sorted_data). Bytes are KV bytes (kv_tokens_to_bytes). */
typedef struct {
    double recall_mean, recall_p05, recall_min;
    long long kv_tokens_peak;
    double kv_bytes_peak, kv_bytes_mean, meta_bytes_peak;
    double topk1_recall, topk8_recall;   /* means over decode steps */
} kv_run_summary;

/* Fills s for run r of res. Returns 0, or 1 when out of memory (err set). */
int kv_run_summarise(const kv_results *res, int r, kv_run_summary *s, char *err, size_t err_len);

/*
 * Makes sure dir exists (created with its parents) and is empty of result files. A
 * directory that already holds files is refused unless force is 1. Returns 0, or 1 with
 * err set (cannot create, not a directory, not empty without --force).
 */
int kv_output_prepare(const char *dir, int force, char *err, size_t err_len);

/*
 * Writes summary.tsv, steps.tsv, heads.tsv, retention.tsv and lifetimes.tsv into dir. Each file is written to a hidden
 * temporary in dir and renamed into place only when complete, so an interrupted run never
 * leaves a half-written file. Returns 0, or 1 with err naming the file (full disk, I/O).
 */
int kv_output_write(const char *dir, const kv_results *res, const kv_replay_conf *conf,
                    char *err, size_t err_len);

/* Prints the policy x budget table of recall_mean and peak KV bytes to f. Returns 0 or 1
 * when out of memory. */
int kv_output_table(FILE *f, const kv_results *res, const kv_replay_conf *conf,
                    char *err, size_t err_len);

#endif
