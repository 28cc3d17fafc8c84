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
 *      is policy p at budget b), as if one replay had run them all.
 */
#ifndef KV_EXPERIMENT_H
#define KV_EXPERIMENT_H

#include <stddef.h>
#include "sim/config.h"
#include "sim/engine.h"

/* How the replays run. */
typedef struct {
    int block;       /* query rows per block, 0: the engine's default */
    int progress;    /* 1: progress on stderr (per trace, and the engine's) */
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
 * Steps 2-3 for every trace: res[k] (res: [n_traces], set to NULL first) gets trace k's
 * runs, policy-major, budgets from tokens (kv_experiment_resolve_budgets). Returns 0, or
 * the engine's code (KV_ERUNTIME, KV_EUSAGE for an invalid pair) with err set; the res[k] already
 * filled stay for the caller to free with kv_results_free.
 */
int kv_experiment_replay(const kv_experiment *ex, const int *tokens,
                         const kv_experiment_opts *opts, kv_results **res, char *err,
                         size_t err_len);

#endif
