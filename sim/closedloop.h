/*
 * closedloop.h - closed-loop evaluation: the model runs with each policy evicting inside
 * its own attention, and kvsim measures what that does to the next-token distribution.
 *
 * The open-loop replay (engine.h) asks how much full-cache attention a policy keeps. The
 * closed loop asks what the model then says: for one trace captured from a checkpoint
 * (its checkpoint_sha256 attribute equals the file's), the model is run teacher-forced on
 * the trace's tokens once with the full cache and once per (policy, budget) run, every
 * layer's attention going through that run's caches under the replay rules (README,
 * "Replay semantics"), driven by the same cache stepper (sim/cache.h) and the same policy
 * files as the replay:
 *
 *   1. prefill t < P, computed once and shared by every run: full attention; every cache
 *      observes the full rows p_t; at t = P-1 it compresses;
 *   2. decode t >= P: every run steps token t together (one matrix-matrix product per
 *      weight matrix, one column per run, kv_model_batch). Per layer and cache, the run's
 *      own full rows p_t (its own query against its own keys 0..t) go to kv_cache_query,
 *      which forms A_t = S u {t} (an oracle re-chooses S from them first) and the
 *      renormalised row o_t the policy observes; the query heads then attend over A_t
 *      only (keys outside A_t are absent from the softmax, kv_model_attend), and the
 *      cache updates (the policy selects). Keys and values of positions >= P are those
 *      the run computed itself;
 *   3. per decode step t <= T-2, from the logits at t (which predict token t+1):
 *      kl = KL(full || policy) = sum_v p_full(v) (log p_full(v) - log p_policy(v)) in
 *      nats, nll = -log p_policy(token t+1) (and under the full cache), top1 = 1 when
 *      both distributions' most likely token (the lower id on ties) agree; recall_closed
 *      = the mass of the run's own full row on A_t, mean over layers and query heads.
 *
 * What the offline references see: `oracle` chooses from the full rows of the run's own
 * queries at each step, as in the replay. `lookahead` must see every future row before
 * the first step, but a closed-loop run's future queries do not exist yet (they depend
 * on what it evicts): it is given the full-cache run's rows (the generation the trace
 * recorded) for its prescan, so in a closed loop it is Belady's rule on the full model's
 * future attention, not on its own.
 *
 * Exactness: the full run's logits are kv_model_step's (capture's) bit for bit, and a run
 * whose caches never evict (B >= T-1) computes the same operations in the same order, so
 * its kl is exactly 0 and its nll equals the full cache's. Runs are independent and every
 * sum has a fixed order, so results do not depend on the number of threads.
 */
#ifndef KV_CLOSEDLOOP_H
#define KV_CLOSEDLOOP_H

#include <stddef.h>
#include "sim/engine.h"
#include "traces/model.h"
#include "traces/trace.h"

/*
 * Checks that tr can be run closed-loop with m: it has /tokens, ids below the model's
 * vocabulary, a checkpoint_sha256 attribute equal to m's SHA-256, and the model's
 * geometry (layers, heads, KV heads, head size). Returns 0, or 2 with one line in err
 * naming both files and both hashes ("t.h5 was captured from checkpoint sha256 9414...,
 * but m.bin has sha256 cd59...: pass the checkpoint the trace was captured from"); 1
 * when the trace cannot be read. model_path names the model in messages.
 */
int kv_closed_loop_check(kv_trace *tr, const kv_model *m, const char *model_path, char *err,
                         size_t err_len);

/* How a closed loop runs. */
typedef struct {
    unsigned long seed;     /* base of the per-cache seeds (randomised policies) */
    int progress;           /* 1: report on stderr when it takes over a second */
    const char *dump_sets;  /* NULL, or a file to write every decode step's A_t into, for
                               independent checks (tests/ref_closedloop.py reads it):
                               "KVSETS1\n", a line "T P n_runs n_layers n_heads", one line
                               "label<TAB>budget" per run, then for t = P..T-1, run,
                               layer, query head: ceil(T / 8) bytes, bit j % 8 of byte
                               j / 8 set when j is in the A_t that head attended over */
} kv_closed_loop_opts;

/*
 * Runs every run of res (runs[r].policy indexes policies, runs[r].budget its budget in
 * tokens) closed-loop on tr with m, after kv_closed_loop_check passed, and fills the
 * closed-loop members of res and of each run (engine.h: step_kl, step_nll, step_top1,
 * step_recall_closed; res->step_nll_full). Memory: the keys and
 * values of every run, (n_runs + 1) * n_layers * 2 * kv_dim * T floats, plus one cache per
 * run, layer and group as in the replay. Returns 0, or 1 (out of memory, a trace read
 * failure, a policy that kept more than its bound, the dump not writable) with err set; the members are then
 * left NULL.
 */
int kv_closed_loop(kv_trace *tr, const kv_model *m, const kv_policy_conf *policies,
                   kv_results *res, const kv_closed_loop_opts *opts, char *err,
                   size_t err_len);

#endif
