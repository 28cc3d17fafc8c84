/*
 * experiment.c - running an experiment: budgets resolved per trace and policy, policies
 * grouped by resolved budgets into replays, their runs merged (experiment.h, steps 1-3).
 */
#include "sim/experiment.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim/budget.h"
#include "traces/validate.h"
#include "traces/status.h"

const char *kv_trace_display_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* Step 1. */
int kv_experiment_resolve_budgets(const kv_experiment *ex, int *tokens, char *err,
                                  size_t err_len)
{
    for (int k = 0; k < ex->n_traces; k++) {
        kv_trace *tr = NULL;
        if (kv_trace_open(ex->traces[k], &tr, err, err_len))
            return KV_ERUNTIME;
        kv_trace_info info = *kv_trace_get_info(tr);
        kv_trace_close(tr);
        for (int p = 0; p < ex->n_policies; p++)
            for (int b = 0; b < ex->n_budgets; b++) {
                char why[768];
                int *t = &tokens[((size_t)k * ex->n_policies + p) * ex->n_budgets + b];
                int rc = kv_budget_resolve(&ex->budgets[b], &ex->policies[p], &info, t, why,
                                           sizeof why);
                if (rc) {
                    snprintf(err, err_len, "%s: %s", kv_trace_display_name(ex->traces[k]), why);
                    return rc;
                }
            }
    }
    return 0;
}

/* Step 3: moves the runs of part (policies idx[0..n) of the experiment, at the same budgets)
 * into merged, where policy idx[i]'s runs sit at idx[i] * n_budgets + b; frees part. */
static void merge_runs(kv_results *merged, kv_results *part, const int *idx, int n,
                       int n_budgets)
{
    merged->info = part->info;
    merged->n_steps = part->n_steps;
    for (int i = 0; i < n; i++)
        for (int b = 0; b < n_budgets; b++) {
            kv_run_result *dst = &merged->runs[idx[i] * n_budgets + b];
            *dst = part->runs[i * n_budgets + b];
            dst->policy = idx[i];
        }
    part->n_runs = 0;          /* the arrays now belong to merged */
    kv_results_free(part);
}

/*
 * Steps 2-3 for trace k. Policies whose budgets resolved to the same tokens share one replay
 * (one pass over the rows); byte budgets can differ between policies, so there may be
 * several. *out gets every run, policy-major, as kv_experiment_results expects.
 */
static int replay_trace(const kv_experiment *ex, int k, const int *tokens,
                        const kv_experiment_opts *o, kv_results **out, char *err,
                        size_t err_len)
{
    int np = ex->n_policies, n_budgets = ex->n_budgets;
    const int *tok = tokens + (size_t)k * np * n_budgets;
    kv_results *merged = calloc(1, sizeof *merged);
    int *idx = malloc((size_t)np * sizeof *idx), *done = calloc((size_t)np, sizeof *done);
    kv_policy_conf *group = malloc((size_t)np * sizeof *group);
    kv_trace *tr = NULL;
    if (merged)
        merged->runs = calloc((size_t)np * n_budgets, sizeof *merged->runs);
    if (!merged || !merged->runs || !idx || !done || !group) {
        snprintf(err, err_len, "out of memory");
        goto fail;
    }
    merged->n_runs = np * n_budgets;
    if (kv_trace_open(ex->traces[k], &tr, err, err_len))
        goto fail;
    kv_trace_set_read_checks(tr, 1);   /* attn rows checked as read: traces/validate.h */
    for (int p = 0; p < np; p++) {
        if (done[p])
            continue;
        int n = 0;
        for (int q = p; q < np; q++)
            if (!done[q] && memcmp(tok + q * n_budgets, tok + p * n_budgets,
                                   (size_t)n_budgets * sizeof *tok) == 0) {
                done[q] = 1;
                group[n] = ex->policies[q];
                idx[n++] = q;
            }
        kv_replay_conf conf = {
            .policies = group, .n_policies = n, .budgets = tok + p * n_budgets,
            .n_budgets = n_budgets,
            .block = o->block, .progress = o->progress, .seed = ex->seed,
            .no_topk = ex->no_topk, .dense = o->dense,
        };
        char why[256];
        if (o->progress && kv_replay_dense_reason(&conf, kv_trace_get_info(tr), why,
                                                  sizeof why) == 0)
            fprintf(stderr, "kvsim: %s: sparse replay from the stored log-normalisers "
                    "(--dense for the full rows)\n", kv_trace_display_name(ex->traces[k]));
        kv_results *part = NULL;
        int rc = kv_replay(tr, &conf, &part, err, err_len);
        if (rc) {
            kv_trace_close(tr);
            kv_results_free(merged);
            free(idx), free(done), free(group);
            return rc;
        }
        merge_runs(merged, part, idx, n, n_budgets);
    }
    kv_trace_close(tr);
    free(idx), free(done), free(group);
    *out = merged;
    return 0;
fail:
    kv_trace_close(tr);
    kv_results_free(merged);
    free(idx), free(done), free(group);
    return KV_ERUNTIME;
}

int kv_experiment_replay(const kv_experiment *ex, const int *tokens,
                         const kv_experiment_opts *opts, kv_results **res, char *err,
                         size_t err_len)
{
    for (int k = 0; k < ex->n_traces; k++)
        res[k] = NULL;
    for (int k = 0; k < ex->n_traces; k++) {
        if (opts->progress && ex->n_traces > 1)
            fprintf(stderr, "kvsim: trace %d/%d: %s\n", k + 1, ex->n_traces, ex->traces[k]);
        int rc = replay_trace(ex, k, tokens, opts, &res[k], err, err_len);
        if (rc)
            return rc;
    }
    return 0;
}
