/*
 * engine.h - the replay engine: runs every (policy, budget) pair over one trace under the
 * replay semantics of the README ("Replay semantics", rules 1-6) and collects the metrics.
 *
 * Work is organised per layer: the layer's rows are produced block by block (sim/rows.h),
 * and every cache of every (policy, budget) run - one per (layer, KV head) - steps through
 * the block by sim/cache.h's step (the replay rules live there; the engine schedules and
 * folds the metrics by sim/metrics.h's tables). Caches are independent, so they run in parallel: one graph of OpenMP tasks
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
    int no_out_err;       /* 1: leave out_err unmeasured (NaN) even when the trace has v:
                             the benchmark's baseline for what measuring it costs (a
                             sparse replay needs the trace's stored o_full to measure it) */
    int no_topk;          /* 1: do not measure the top-k recall metrics (their steps hold
                             NaN); they read every full row, so a sparse replay needs it */
    int dense;            /* 1: always the dense replay (the full rows of every step) */
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
    int *evicted_caches;        /* [T] number of caches that evicted position j at least
                                   once, weighted as retained[] (so, unless the policy
                                   re-admits, retained[j] + evicted_caches[j] =
                                   n_cache_units) */
    long long *evictions;       /* [T] evictions of position j over every cache, each
                                   counted once as in lifetimes (not weighted) */
    long long *lifetime_sum;    /* [T] the sum of their lifetimes: lifetime_sum[j] /
                                   evictions[j] is j's mean lifetime */
    int *final_sets;            /* [n_layers * n_kv_heads * T]: at (l * n_kv_heads + g) * T
                                   + j, how many of KV head g's query heads (0..n_heads /
                                   n_kv_heads) still had position j cached in layer l after
                                   the last step: the group size or 0 with one cache per
                                   KV head (the default), a share with kv_granularity =
                                   query_head. For retention_map.tsv. */
    double *head_out_err_mean;  /* [n_layers * n_heads] mean over decode steps of out_err
                                   (cache.h), NaN when the trace has no v */
    int caches_per_layer;       /* G of this run (kv_caches_per_layer) */
    int *cache_budget;          /* [n_layers * G] the budget of cache (l, g) at l * G + g:
                                   B, or its layer's share (alloc = pyramid); the sum
                                   is n_layers * G * B. For budgets.tsv. */
    double *cache_tokens_mean;  /* [n_layers * G] mean over decode steps of the cache's
                                   kv_tokens (|A_t| * token weight) */
} kv_run_result;

typedef struct {
    kv_trace_info info;         /* copy of the trace's attributes */
    int sparse;                 /* 1: the decode steps were replayed sparsely */
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
 * Sparse replay: when a qk trace stores its rows' log-normalisers (index.h) a decode
 * step needs only the attention of each cache's own positions, p_t[j] = exp(x_tj -
 * lse_t) for j in A_t (kv_attn_rows_sparse): O(|A_t| * head_dim) per head and step instead of
 * the full row's O(t * head_dim); prefill rows, which every policy observes whole, are
 * still produced densely. Recall, o_t and every kept set are those of the dense replay up
 * to float rounding. kv_replay takes it whenever this returns 0; it returns 1 with the
 * reason the run needs full rows in why (for messages): dense requested, an attn trace,
 * no stored lse, the top-k metrics (they rank every key of a row), the output error on a
 * trace with v but no stored o_full (the sparse replay reads o_full_t from the trace,
 * kv_trace_read_o_full, one layer at a time: n_heads * T * head_dim floats, and sums
 * o_cache over A_t's own weights), or a policy that reads whole rows (a prescan, as
 * lookahead's, or a preselect, as oracle's).
 * Cannot fail.
 */
int kv_replay_dense_reason(const kv_replay_conf *conf, const kv_trace_info *in, char *why,
                           size_t why_len);

/*
 * One layer's contribution to every run of a replay: what the replay of layer `layer`
 * adds to each kv_run_result, folded over the layer's caches in a fixed order (run, then
 * cache). A replay is its layers' parts reduced in layer order (kv_results_add_layer),
 * whoever computed them: kv_replay in one process, or the ranks of an MPI job (sim/
 * mpi_run.c) that each replay some layers and send their parts to rank 0. The part lives
 * in one contiguous buffer of kv_layer_part_bytes bytes (data), so it can be sent as is
 * between processes of the same architecture; the arrays point into it. Shapes, with
 * R = n_runs, D = decode steps, H = n_heads, G = n_kv_heads, T = n_tokens:
 */
typedef struct {
    int layer;
    int n_runs;
    kv_trace_info info;
    void *data;                 /* the buffer every array below points into */
    size_t bytes;               /* its size: kv_layer_part_bytes(&info, n_runs) */
    int owned;                  /* 1: data is freed by kv_layer_part_free */
    kv_step_metrics *steps;     /* [R * D] the layer's caches summed, per decode step */
    double *head_recall_sum;    /* [R * H] sum over decode steps of each head's recall */
    double *head_recall_min;    /* [R * H] */
    double *head_out_err_sum;   /* [R * H] sum over decode steps of each head's out_err */
    long long *lifetimes;       /* [R * (D + 1)] as kv_run_result.lifetimes */
    int *retained;              /* [R * T] as kv_run_result.retained, this layer only */
    int *n_cache_units;         /* [R] as kv_run_result.n_cache_units, this layer only */
    int *evicted_caches;        /* [R * T] as kv_run_result.evicted_caches, this layer only */
    int *evictions;             /* [R * T] as kv_run_result.evictions, this layer only */
    int *lifetime_sum;          /* [R * T] as kv_run_result.lifetime_sum, this layer only */
    int *final_sets;            /* [R * G * T] this layer's rows of kv_run_result.final_sets */
    int *cache_budget;          /* [R * H] the budget of the layer's cache g of run r at
                                   r * H + g (g < the run's caches_per_layer) */
    double *cache_tokens_mean;  /* [R * H] its mean kv_tokens over decode steps */
} kv_layer_part;

/* Bytes of a part's buffer for a replay of n_runs runs on a trace of geometry in. Cannot
 * fail. */
size_t kv_layer_part_bytes(const kv_trace_info *in, int n_runs);

/*
 * Points part's arrays into data (kv_layer_part_bytes bytes, suitably aligned: from
 * malloc), for a part received from another process; data stays the caller's unless
 * owned is 1. When data is NULL, a zeroed buffer is allocated (owned). Returns 0, or
 * KV_ERUNTIME when out of memory.
 */
int kv_layer_part_wrap(kv_layer_part *part, const kv_trace_info *in, int n_runs, int layer,
                       void *data, int owned);

/* Frees an owned buffer and zeroes part. A zeroed part is ignored. */
void kv_layer_part_free(kv_layer_part *part);

/*
 * Receives each replayed layer's part, in the order the layers were replayed; the part
 * is borrowed for the call (its buffer is reused for the next layer). Returns 0 to go
 * on, or a status code with err set to stop the replay with it.
 */
typedef int (*kv_layer_sink)(void *ctx, const kv_layer_part *part, char *err,
                             size_t err_len);

/*
 * Replays layers first .. first + count - 1 of tr under conf (the next layer is read
 * while one is replayed) and hands each layer's part to sink. Fails as kv_replay does
 * (2: an invalid pair; 1: I/O, out of memory, no decode step, the sink's code), err
 * naming the cause; the layers before the failure were handed over.
 */
int kv_replay_layers(kv_trace *tr, const kv_replay_conf *conf, int first, int count,
                     kv_layer_sink sink, void *ctx, char *err, size_t err_len);

/*
 * Empty results for a replay of conf on a trace of geometry in, to be filled by
 * kv_results_add_layer for layers 0 .. n_layers - 1 in that order and completed by
 * kv_results_finish. Returns 0 with *out owned by the caller, or KV_ERUNTIME when out of
 * memory (or P = T), err set.
 */
int kv_results_new(const kv_trace_info *in, const kv_replay_conf *conf, kv_results **out,
                   char *err, size_t err_len);

/* Folds part (layer part->layer) into res. Layers must come in order 0, 1, ...: the
 * per-step sums are floating point, and this order is what makes every way of running
 * a replay give the same bits. Cannot fail. */
void kv_results_add_layer(kv_results *res, const kv_layer_part *part);

/* After the last layer: sums to means (per step over layers and query heads, per head
 * over decode steps). Cannot fail. */
void kv_results_finish(kv_results *res);

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
