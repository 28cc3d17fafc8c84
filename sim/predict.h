/*
 * predict.h - predict.tsv: which open-loop metric predicts what a cache does to the
 * model's output (the closed loop's kl_mean, sim/closedloop.h).
 *
 * For every (trace, budget spec) case, the policies are ranked by each open-loop metric
 * of summary.tsv - recall_mean (higher is better), out_err_mean (lower), topk1_recall and
 * topk8_recall (higher) - and by the closed loop's kl_mean (lower is better):
 *
 *   spearman     gsl_stats_spearman across the case's policies between the metric and
 *                kl_mean (ties get mid-ranks). A metric that predicts the output well
 *                gives -1 for recall and top-k (more recall, less KL), +1 for out_err;
 *   metric_best  the policy the metric ranks best, kl_best the one with the least KL,
 *                agrees 1 when they are the same policy.
 *
 * Then one trace = "all", budget_spec = "all" row per metric: spearman over every
 * (trace, budget, policy) point pooled, spearman_mean the mean of the cases' values, and
 * agrees the share of cases whose metric-best policy is the kl-best one.
 *
 * Which policies count: the realisable ones. The references (a per-step ceiling such as
 * oracle, a policy that looks ahead such as lookahead) are not policies one could pick,
 * and a run whose kl_mean is exactly 0 never changed the model's output (full, or a
 * budget that evicts nothing): they are left out. A case with fewer than 3 policies has
 * no spearman (NA); a metric or kl_mean the results do not have (no v, no model) is NA.
 */
#ifndef KV_PREDICT_H
#define KV_PREDICT_H

#include <stdio.h>
#include "sim/output.h"

/*
 * Writes predict.tsv to f: a header, then for each trace, budget spec and metric one row,
 * then the pooled rows. sums: the summary.tsv values of every run of every trace,
 * sums[((k * n_runs) + r) * kv_n_output_columns + i] for column i (kv_run_summarise).
 * Returns 0, or KV_ERUNTIME when out of memory (err set).
 */
int kv_predict_write(FILE *f, const kv_experiment_results *er, const double *sums, char *err,
                     size_t err_len);

#endif
