/*
 * engine.h - the replay engine: runs every (policy, budget) pair over one trace under the
 * replay semantics of the README ("Replay semantics", rules 1-6) and collects the metrics.
 *
 * Work is organised per layer: the layer's rows are produced block by block (sim/rows.h),
 * and every cache of every (policy, budget) run - one per (layer, KV head) - steps through
 * the block. Caches are independent, so they run in parallel: one graph of OpenMP tasks
 * per layer (engine.c, stream_layer) in which producing the next blocks, loading the next
 * layer and stepping the caches overlap, each cache still stepping through its rows in
 * order. Each cache writes only its own buffers and the buffers are reduced in a fixed
 * order after the layer, so the results do not depend on the number of threads. The BLAS
 * is made single-threaded during a replay (one SGEMM per OpenMP thread).
 */
#ifndef KV_ENGINE_H
#define KV_ENGINE_H

#include <stddef.h>
#include "policies/policy.h"
#include "sim/alloc.h"
#include "sim/cache.h"
#include "traces/trace.h"

#define KV_LABEL_LEN 64

/* How finely KV is cached (the engine-level parameter `kv_granularity` every policy
 * takes): one cache per KV head shared by its GQA group (default), or one per query head
 * (the KV repeated per query head, as the MorphKV paper's baselines ran; group size 1,
 * KV memory multiplied by the group size). */
typedef enum { KV_GRAN_KV_HEAD = 0, KV_GRAN_QUERY_HEAD = 1 } kv_granularity;

/*
 * The parameters every policy takes that the engine applies, not the policy: one
 * kv_param_spec table (policy.h) from which parsing, validation and `kvsim policies`'s
 * help all come; [policy L] keys and --set L.P=V set them like the policy's own.
 * Entry KV_ENGINE_PARAM_GRANULARITY is kv_granularity (a CHOICE whose index is the
 * kv_granularity value).
 */
enum {
    KV_ENGINE_PARAM_GRANULARITY = 0,
    /* the rules composing with a policy's scores (sim/alloc.h); only policies with a
     * scores slot take them (kv_policy_pair_check): */
    KV_ENGINE_PARAM_ALLOC,          /* uniform|pyramid|ada, index = kv_alloc_mode */
    KV_ENGINE_PARAM_PYRAMID_BETA,
    KV_ENGINE_PARAM_ADA_ALPHA,
    KV_ENGINE_PARAM_CHUNK,          /* N, or "off" (0) */
    KV_ENGINE_PARAM_VALUE_WEIGHT,   /* none|l1, index = kv_value_weight */
    KV_ENGINE_PARAM_FIRST_SCORED = KV_ENGINE_PARAM_ALLOC
};
extern const kv_param_spec kv_engine_params[];   /* kv_n_engine_params rows */
extern const int kv_n_engine_params;

/* One configured policy: a label (column `policy` in every output), its ops and values. */
typedef struct {
    char label[KV_LABEL_LEN];
    const kv_policy_ops *ops;
    kv_param_values values;
    kv_granularity granularity;
    kv_select_opts select;      /* alloc, chunk, value_weight (zeroed: the defaults) */
} kv_policy_conf;

typedef struct {
    const kv_policy_conf *policies;
    int n_policies;
    const int *budgets;   /* tokens, each >= 1 */
    int n_budgets;
    int block;            /* query rows per block; 0 means the default (64). Memory: two
                             blocks of n_heads * block * T floats */
    int progress;         /* 1: report progress on stderr when the run takes over 1 s */
    unsigned long seed;   /* base of every per-cache seed */
} kv_replay_conf;

/* The metrics of one (policy, budget) run over decode steps t = P..T-1 (D = T - P). */
typedef struct {
    int policy;                 /* index into kv_replay_conf.policies */
    int budget;                 /* tokens */
    kv_step_metrics *steps;     /* [D] the metrics of decode step t = P+s, folded over
                                   every cache of the model as sim/metrics.h's table says:
                                   recall and top-k hits are means over layers and query
                                   heads, kv_tokens and meta_bytes sums */
    double *head_recall_mean;   /* [n_layers * n_heads] mean over decode steps */
    double *head_recall_min;    /* [n_layers * n_heads] */
    long long *lifetimes;       /* [D + 1] evicted tokens by the number of decode steps
                                   they were attended to (0: evicted at the prefill end) */
    int *retained;              /* [T] number of caches holding position j after the last
                                   step (S at the end of the trace), each cache counted
                                   once per KV head that stores it */
    int n_cache_units;          /* what retained[] counts out of: the caches of all layers,
                                   weighted the same way */
    int *final_sets;            /* [n_layers * n_kv_heads * T]: at (l * n_kv_heads + g) * T
                                   + j, how many of KV head g's query heads (0..n_heads /
                                   n_kv_heads) still had position j cached in layer l after
                                   the last step: the group size or 0 with one cache per
                                   KV head (the default), a share with kv_granularity =
                                   query_head. For retention_map.tsv. */
    int caches_per_layer;       /* G of this run (kv_caches_per_layer) */
    int *cache_budget;          /* [n_layers * G] the budget of cache (l, g) at l * G + g:
                                   B, or its layer's share (alloc = pyramid); the sum
                                   is n_layers * G * B. For budgets.tsv. */
    double *cache_tokens_mean;  /* [n_layers * G] mean over decode steps of the cache's
                                   kv_tokens (|A_t| * token weight) */
} kv_run_result;

typedef struct {
    kv_trace_info info;         /* copy of the trace's attributes */
    int n_steps;                /* D = T - P */
    int n_runs;                 /* n_policies * n_budgets, policy-major */
    kv_run_result *runs;
} kv_results;

/*
 * Sets parameter name of pc to text: an engine-level one (kv_engine_params) or one of the
 * policy's own (kv_params_set). Returns 0, or KV_EUSAGE with a one-line message (unknown
 * parameter with a suggestion, a value outside the range or the choices).
 */
int kv_policy_conf_set(kv_policy_conf *pc, const char *name, const char *text, char *err,
                       size_t err_len);

/*
 * How a run of policy pc lays out its caches in each layer of a trace of geometry in
 * (the replay and the byte-budget dry run both read it from here): the number of caches,
 * each covering n_heads / count query heads - 1 for a layer-scope policy, n_heads with
 * kv_granularity = query_head, else n_kv_heads. Cannot fail.
 */
int kv_caches_per_layer(const kv_policy_conf *pc, const kv_trace_info *in);

/* How many KV heads store each position a cache of pc holds: n_kv_heads for a
 * layer-scope policy (one set shared by the layer), else 1. Cannot fail. */
int kv_cache_token_weight(const kv_policy_conf *pc, const kv_trace_info *in);

/*
 * Checks one (policy, budget) pair: budget >= 1 and the policy's own rule (ops->check).
 * Returns 0, or KV_EUSAGE with the rule in why ("budget 16 must exceed morphkv window 32").
 */
int kv_policy_pair_check(const kv_policy_conf *pc, int budget, char *why, size_t why_len);

/*
 * Checks what a (policy, budget) pair needs of a trace, before any replay: the keys
 * (ops->needs, q/k datasets: has_qk as kv_trace_has_qk), the values (ops->needs or
 * value_weight: in->has_v), and the pyramid's layer budgets each valid for the policy
 * (ops->check). Returns 0, or 2 with a one-line reason in why ("knorm reads the keys
 * ... but t.h5 has no q/k datasets").
 */
int kv_policy_trace_check(const kv_policy_conf *pc, int budget, const kv_trace_info *in,
                          int has_qk, const char *trace_name, char *why, size_t why_len);

/* Budgets of every layer of a run of pc at budget B on geometry in (alloc.h
 * kv_alloc_layer_budgets with the policy's window; out: [n_layers]). Cannot fail. */
void kv_policy_layer_budgets(const kv_policy_conf *pc, int budget, const kv_trace_info *in,
                             int *out);

/*
 * Checks every (policy, budget) pair before any work: budget >= 1, and the policy's own
 * rule (ops->check). Returns 0, or KV_EUSAGE with "policy 'morphkv-sum' at budget 16: budget 16
 * must exceed window 32" in err (the first invalid pair).
 */
int kv_replay_validate(const kv_replay_conf *conf, char *err, size_t err_len);

/*
 * Replays tr under conf. On success *out owns the results (free with kv_results_free)
 * and 0 is returned. Fails with 2 when a pair is invalid (as kv_replay_validate), with 1
 * on a runtime failure (I/O error reading the trace, out of memory, P = T: no decode
 * step), err naming the cause; *out is then NULL.
 */
int kv_replay(kv_trace *tr, const kv_replay_conf *conf, kv_results **out,
              char *err, size_t err_len);

/* Frees results. NULL is ignored. */
void kv_results_free(kv_results *res);

/* Bytes of KV cache for kv_tokens cached tokens: tokens * 2 (K and V) * head_dim *
 * dtype_bytes, summed over the caches the count covers. */
double kv_tokens_to_bytes(const kv_trace_info *info, long long kv_tokens);

#endif
