/*
 * experiment.h - running an experiment (config.h's kv_experiment): budget specs resolved
 * to tokens per trace and policy, every trace replayed with every policy and budget, the
 * results gathered as output.h's kv_experiment_results. `kvsim run` (sim/cmd_run.c) is its
 * command line; the steps, for each trace k:
 *   1. resolve every budget spec for every policy on trace k's geometry (budget.h): byte
 *      specs give each policy its own tokens;
 *   2. group the policies whose resolved budgets are equal: each group is one replay
 *      (engine.h: one pass over the rows for all its policies);
 *   3. merge the groups' runs into one kv_results, policy-major (run p * n_budgets + b
 *      is policy p at budget b), as if one replay had run them all;
 *   4. with a model, run every run of trace k closed-loop (sim/closedloop.h): the model
 *      attends through each run's caches; its metrics join the runs' steps.
 */
#ifndef KV_EXPERIMENT_H
#define KV_EXPERIMENT_H

#include <stddef.h>
#include "sim/config.h"
#include "sim/engine.h"
#include "traces/model.h"

/* How the replays run. */
typedef struct {
    int block;       /* query rows per block, 0: the engine's default */
    int progress;    /* 1: progress on stderr (per trace, and the engine's) */
    const kv_model *const *models; /* not NULL: step 4, trace k also runs closed-loop with
                               models[k], the checkpoint it was captured from
                               (sim/closedloop.h; kv_closed_loop_check passed); models[k]
                               NULL: trace k runs open-loop only */
    const char *dump_sets;  /* with a model: a directory for each trace's NAME.sets dump of
                               the closed loop's A_t, or NULL */
    int dense;       /* 1: never the sparse replay (kv_replay_conf.dense) */
} kv_experiment_opts;

/* The `trace` column of a trace: its file name without directory (borrowed from path).
 * Cannot fail. */
const char *kv_trace_display_name(const char *path);

/*
 * Step 1 for every trace: tokens[(k * n_policies + p) * n_budgets + b] = budget spec b
 * resolved for policy p on trace k (tokens: [n_traces * n_policies * n_budgets]). Reads
 * each trace's header only. Returns 0, 1 (a trace cannot be opened, out of memory) or 2
 * (a spec does not resolve for a policy), with err prefixed by the trace's name.
 */
int kv_experiment_resolve_budgets(const kv_experiment *ex, int *tokens, char *err,
                                  size_t err_len);

/*
 * Step 1 for one entry: budget spec b resolved for policy p on trace k of geometry info
 * (read from the trace's header by the caller) into *tokens. Returns as
 * kv_experiment_resolve_budgets, err prefixed by the trace's name.
 */
int kv_experiment_resolve_entry(const kv_experiment *ex, int k, const kv_trace_info *info,
                                int p, int b, int *tokens, char *err, size_t err_len);

/*
 * Step 2 as data: one replay of trace `trace` for the policies whose budgets resolved to
 * the same tokens. Groups are listed trace by trace, and within a trace by their first
 * policy; kv_experiment_replay runs them in that order.
 */
typedef struct {
    int trace;
    int n_policies;
    const int *policies;   /* [n_policies] indices into ex->policies, ascending */
    const int *budgets;    /* [ex->n_budgets] tokens, borrowed from the tokens array */
} kv_replay_group;

typedef struct {
    int n_groups;
    kv_replay_group *groups;   /* [n_groups], owned */
    int *indices;              /* what the groups' policies point into, owned */
} kv_replay_plan;

/* Groups every trace's policies (step 2) from tokens (kv_experiment_resolve_budgets).
 * Returns 0, or KV_ENOMEM with err set. */
int kv_experiment_plan(const kv_experiment *ex, const int *tokens, kv_replay_plan *plan,
                       char *err, size_t err_len);

void kv_replay_plan_free(kv_replay_plan *plan);

/* The engine's conf of one group: policies ([g->n_policies], filled) must outlive conf.
 * Cannot fail. */
void kv_experiment_group_conf(const kv_experiment *ex, const kv_replay_group *g,
                              const kv_experiment_opts *opts, kv_policy_conf *policies,
                              kv_replay_conf *conf);

/*
 * Step 3 for one group: moves part's runs (the group's replay, freed here) into *merged
 * (trace g->trace's results, allocated at the first group), where policy p's runs sit at
 * p * n_budgets + b. Returns 0, or KV_ENOMEM with err set (part freed).
 */
int kv_experiment_merge(const kv_experiment *ex, const kv_replay_group *g, kv_results *part,
                        kv_results **merged, char *err, size_t err_len);

/*
 * How `kvsim run` resolves, checks and replays an experiment (sim/cmd_run.c): in this
 * process (NULL driver: kv_experiment_resolve_budgets, kv_trace_precheck of every trace,
 * kv_experiment_replay) or spread over the ranks of an MPI job (sim/mpi_run.c). Each
 * slot returns what the in-process step returns, with the same messages.
 */
typedef struct {
    int (*resolve_budgets)(void *ctx, const kv_experiment *ex,
                           const kv_experiment_opts *opts, int *tokens, char *err,
                           size_t err_len);
    int (*precheck)(void *ctx, const kv_experiment *ex, char *err, size_t err_len);
    int (*replay)(void *ctx, const kv_experiment *ex, const int *tokens,
                  const kv_experiment_opts *opts, kv_results **res, char *err,
                  size_t err_len);
    void *ctx;
    const char *program;   /* the command's name in manifest.json; NULL: "kvsim" */
} kv_experiment_driver;

/*
 * Step 4 alone for trace k: every run of merged (trace k's results of steps 2-3, all
 * policies) closed-loop with opts->models[k] (not NULL), as kv_experiment_replay runs it
 * after trace k's groups; for drivers that replay elsewhere (kvsim-mpi). Opens the trace
 * itself. Returns 0 or a KV_E* code with err set (kv_closed_loop's).
 */
int kv_experiment_closed_loop(const kv_experiment *ex, int k, const kv_experiment_opts *opts,
                              kv_results *merged, char *err, size_t err_len);

/*
 * Steps 2-3 for every trace: res[k] (res: [n_traces], set to NULL first) gets trace k's
 * runs, policy-major, budgets from tokens (kv_experiment_resolve_budgets). Returns 0, or
 * the engine's code (KV_ERUNTIME, KV_EUSAGE for an invalid pair) with err set; the res[k] already
 * filled stay for the caller to free with kv_results_free.
 */
int kv_experiment_replay(const kv_experiment *ex, const int *tokens,
                         const kv_experiment_opts *opts, kv_results **res, char *err,
                         size_t err_len);

#endif
