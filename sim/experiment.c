/*
 * experiment.c - running an experiment: budgets resolved per trace and policy, policies
 * grouped by resolved budgets into replays, their runs merged (experiment.h, steps 1-3).
 */
#include "sim/experiment.h"
#include "sim/closedloop.h"

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

int kv_experiment_resolve_entry(const kv_experiment *ex, int k, const kv_trace_info *info,
                                int p, int b, int *tokens, char *err, size_t err_len)
{
    char why[768];
    int rc = kv_budget_resolve(&ex->budgets[b], &ex->policies[p], info, tokens, why,
                               sizeof why);
    if (rc)
        snprintf(err, err_len, "%s: %s", kv_trace_display_name(ex->traces[k]), why);
    return rc;
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
        int has_qk = kv_trace_has_qk(tr);
        kv_trace_close(tr);
        const char *name = kv_trace_display_name(ex->traces[k]);
        for (int p = 0; p < ex->n_policies; p++)
            for (int b = 0; b < ex->n_budgets; b++) {
                int *t = &tokens[((size_t)k * ex->n_policies + p) * ex->n_budgets + b];
                int rc = kv_experiment_resolve_entry(ex, k, &info, p, b, t, err, err_len);
                /* what the policy reads of the trace (keys, values), before any replay */
                if (!rc) {
                    char need[512];
                    rc = kv_policy_trace_check(&ex->policies[p], *t, &info, has_qk, name,
                                               need, sizeof need);
                    if (rc)
                        snprintf(err, err_len, "%s: policy '%s' at budget %d: %s", name,
                                 ex->policies[p].label, *t, need);
                }
                if (rc)
                    return rc;
            }
    }
    return 0;
}

/* Step 2. */
int kv_experiment_plan(const kv_experiment *ex, const int *tokens, kv_replay_plan *plan,
                       char *err, size_t err_len)
{
    int np = ex->n_policies, nb = ex->n_budgets;
    size_t n = (size_t)ex->n_traces * np;
    memset(plan, 0, sizeof *plan);
    plan->groups = malloc((n ? n : 1) * sizeof *plan->groups);
    plan->indices = malloc((n ? n : 1) * sizeof *plan->indices);
    unsigned char *done = calloc(np ? (size_t)np : 1, 1);
    if (!plan->groups || !plan->indices || !done) {
        free(done);
        kv_replay_plan_free(plan);
        snprintf(err, err_len, "out of memory");
        return KV_ENOMEM;
    }
    int at = 0;
    for (int k = 0; k < ex->n_traces; k++) {
        const int *tok = tokens + (size_t)k * np * nb;
        memset(done, 0, (size_t)np);
        for (int p = 0; p < np; p++) {
            if (done[p])
                continue;
            kv_replay_group *g = &plan->groups[plan->n_groups++];
            g->trace = k;
            g->policies = plan->indices + at;
            g->budgets = tok + (size_t)p * nb;
            g->n_policies = 0;
            for (int q = p; q < np; q++)
                if (!done[q] && memcmp(tok + (size_t)q * nb, g->budgets,
                                       (size_t)nb * sizeof *tok) == 0) {
                    done[q] = 1;
                    plan->indices[at++] = q;
                    g->n_policies++;
                }
        }
    }
    free(done);
    return 0;
}

void kv_replay_plan_free(kv_replay_plan *plan)
{
    free(plan->groups);
    free(plan->indices);
    memset(plan, 0, sizeof *plan);
}

void kv_experiment_group_conf(const kv_experiment *ex, const kv_replay_group *g,
                              const kv_experiment_opts *opts, kv_policy_conf *policies,
                              kv_replay_conf *conf)
{
    for (int i = 0; i < g->n_policies; i++)
        policies[i] = ex->policies[g->policies[i]];
    kv_replay_conf c = {
        .policies = policies, .n_policies = g->n_policies, .budgets = g->budgets,
        .n_budgets = ex->n_budgets, .block = opts->block, .progress = opts->progress,
        .seed = ex->seed, .no_topk = ex->no_topk, .dense = ex->dense || opts->dense,
    };
    *conf = c;
}

/* Step 3. */
int kv_experiment_merge(const kv_experiment *ex, const kv_replay_group *g, kv_results *part,
                        kv_results **merged, char *err, size_t err_len)
{
    int nb = ex->n_budgets;
    if (!*merged) {
        kv_results *m = calloc(1, sizeof *m);
        if (m && !(m->runs = calloc((size_t)ex->n_policies * nb, sizeof *m->runs))) {
            free(m);
            m = NULL;
        }
        if (!m) {
            kv_results_free(part);
            snprintf(err, err_len, "out of memory");
            return KV_ENOMEM;
        }
        m->n_runs = ex->n_policies * nb;
        *merged = m;
    }
    kv_results *m = *merged;
    m->info = part->info;
    m->n_steps = part->n_steps;
    for (int i = 0; i < g->n_policies; i++)
        for (int b = 0; b < nb; b++) {
            kv_run_result *dst = &m->runs[g->policies[i] * nb + b];
            *dst = part->runs[i * nb + b];
            dst->policy = g->policies[i];
        }
    part->n_runs = 0;          /* the arrays now belong to merged */
    kv_results_free(part);
    return 0;
}

/* Step 4 for trace k: every merged run closed-loop with its checkpoint
 * (sim/closedloop.h), its sets dumped to DIR/NAME.sets when asked. */
static int closed_loop(const kv_experiment *ex, int k, const kv_experiment_opts *o,
                       kv_trace *tr, kv_results *merged, char *err, size_t err_len)
{
    char *dump = NULL;
    if (o->dump_sets) {
        size_t n = strlen(o->dump_sets) + strlen(ex->traces[k]) + 8;
        if (!(dump = malloc(n))) {
            snprintf(err, err_len, "out of memory");
            return KV_ENOMEM;
        }
        snprintf(dump, n, "%s/%s.sets", o->dump_sets, kv_trace_display_name(ex->traces[k]));
    }
    kv_closed_loop_opts co = { .seed = ex->seed, .progress = o->progress, .dump_sets = dump };
    int rc = kv_closed_loop(tr, o->models[k], ex->policies, merged, &co, err, err_len);
    free(dump);
    return rc;
}

int kv_experiment_closed_loop(const kv_experiment *ex, int k, const kv_experiment_opts *opts,
                              kv_results *merged, char *err, size_t err_len)
{
    kv_trace *tr = NULL;
    if (kv_trace_open(ex->traces[k], &tr, err, err_len))
        return KV_ERUNTIME;
    int rc = closed_loop(ex, k, opts, tr, merged, err, err_len);
    kv_trace_close(tr);
    return rc;
}

/* Steps 2-4 for every trace, group by group in the plan's order. */
int kv_experiment_replay(const kv_experiment *ex, const int *tokens,
                         const kv_experiment_opts *opts, kv_results **res, char *err,
                         size_t err_len)
{
    for (int k = 0; k < ex->n_traces; k++)
        res[k] = NULL;
    kv_replay_plan plan;
    int rc = kv_experiment_plan(ex, tokens, &plan, err, err_len);
    kv_policy_conf *group = malloc((ex->n_policies ? (size_t)ex->n_policies : 1) *
                                   sizeof *group);
    if (rc == 0 && !group) {
        snprintf(err, err_len, "out of memory");
        rc = KV_ENOMEM;
    }
    kv_trace *tr = NULL;
    for (int i = 0; rc == 0 && i < plan.n_groups; i++) {
        const kv_replay_group *g = &plan.groups[i];
        if (!tr) {
            if (opts->progress && ex->n_traces > 1)
                fprintf(stderr, "kvsim: trace %d/%d: %s\n", g->trace + 1, ex->n_traces,
                        ex->traces[g->trace]);
            if (kv_trace_open(ex->traces[g->trace], &tr, err, err_len)) {
                rc = KV_ERUNTIME;
                break;
            }
            kv_trace_set_read_checks(tr, 1);   /* attn rows checked as read: validate.h */
        }
        kv_replay_conf conf;
        kv_experiment_group_conf(ex, g, opts, group, &conf);
        char why[256];
        if (opts->progress && !kv_replay_dense_reason(&conf, kv_trace_get_info(tr), why,
                                                      sizeof why))
            fprintf(stderr, "kvsim: %s: sparse replay from the stored log-normalisers "
                    "(--dense for the full rows)\n", kv_trace_display_name(ex->traces[g->trace]));
        kv_results *part = NULL;
        rc = kv_replay(tr, &conf, &part, err, err_len);
        if (rc == 0)
            rc = kv_experiment_merge(ex, g, part, &res[g->trace], err, err_len);
        if (i + 1 == plan.n_groups || plan.groups[i + 1].trace != g->trace) {
            if (rc == 0 && opts->models && opts->models[g->trace])   /* step 4 */
                rc = closed_loop(ex, g->trace, opts, tr, res[g->trace], err, err_len);
            kv_trace_close(tr);
            tr = NULL;
        }
    }
    kv_trace_close(tr);
    free(group);
    kv_replay_plan_free(&plan);
    return rc;
}
