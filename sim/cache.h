/*
 * cache.h - one KV cache and its step: the replay semantics of the README ("Replay
 * semantics", rules 1-6) for one cache, written once.
 *
 * A cache belongs to one (layer, group of query heads): the query heads of a KV head by
 * default, one query head with kv_granularity = query_head, every head of a layer for a
 * layer-scope policy. It holds the ascending set S of cached past positions and the
 * policy instance that chooses it. Whoever drives a cache - the replay (sim/engine.c,
 * which schedules caches over blocks, tasks and layers), the byte-budget dry run
 * (sim/budget.c), a model-driven closed-loop run - calls, for a trace or generation of T
 * positions with a prompt of P:
 *
 *   kv_cache_init(c, ops, values, ctx, token_weight, identity)     once
 *   [kv_cache_prescan(c, t, full_t) for t = 0 .. T-1]   when kv_cache_prescans(c) is 1
 *   for t = 0 .. T-1, in order:
 *       kv_cache_query(c, t, full_t, m)     steps 1-2: A_t = S u {t}, recall, o_t, metrics
 *       [the driver may read A_t (c->pos, c->n), c->head_recall and o_t (c->w) here]
 *       kv_cache_update(c, t)               step 3: the policy observes, then selects
 *   kv_cache_free(c)
 *
 * kv_cache_step(c, t, full_t, m) is query + update, for drivers that need nothing between.
 * The options of sim/alloc.h compose with the policy's scores here, for any driver: after
 * init, kv_cache_set_select (chunk, value_weight, ada) and kv_cache_set_kv (the keys and
 * values of the cache's KV head, for policies that read them and for value_weight); a
 * pyramid's layer budget is simply the ctx budget of that layer's caches
 * (kv_alloc_layer_budgets), and with alloc = ada the layer's caches are created with
 * held_cap = kv_alloc_held_cap and joined (kv_joint_new); a driver then steps them as any
 * caches, as long as at every t it updates them in cache-index order after their queries
 * (for t: for each cache: query, update - or all queries, then all updates): the update
 * of the last one selects for all.
 * full_t (kv_group_rows) is the group's full-cache attention rows p_t over 0..t: the
 * replay reads them from the trace, a closed-loop driver computes them from its own q and
 * k (recall needs the full softmax: the mass the cached set captures of the whole row).
 *
 * What holds after each call:
 *   - kv_cache_query, prefill (t < P): A_t = {0..t}; c->w is p_t over A_t; m untouched.
 *   - kv_cache_query, decode (t >= P): a policy with a preselect slot (oracle)
 *     first re-chose S from p_t; c->pos[0..c->n) = A_t ascending, c->pos[c->n-1] = t;
 *     c->head_recall[h] = sum_{j in A_t} p_t^h[j]; c->w[h * c->n + i] = o_t^h[pos[i]] =
 *     p_t^h[pos[i]] / recall (zeros where recall is 0, rule 6); *m holds this step's
 *     metrics (kv_step_metrics). c->w is filled only when the policy reads rows (ops
 *     reads_row); otherwise it is stale.
 *   - kv_cache_update: the policy observed row t; at t = P-1 and at every decode step it
 *     chose, and c->pos[0..c->n) = S, ascending; positions that left are counted in
 *     c->lifetimes, c->evictions and c->lifetime_sum. c->failed is set (and stays set)
 *     when S exceeds the policy's bound (kv_policy_max_held): the driver reports an
 *     internal error.
 * Preconditions (the driver's duty): t runs 0, 1, ..., T-1 with query before update at
 * each t; full_t holds t + 1 weights per head; prescan, when used, sees every t before the
 * first query. A closed-loop driver that needs o_t whatever the policy reads computes it
 * from its own logits over A_t (its softmax over A_t is o_t) and reads only A_t here.
 * Every call is O(|A_t| * n_heads) plus the policy's own work (O(t * n_heads) for
 * prescan and preselect, which read the full row); the cache's memory is O(T * n_heads)
 * and no call allocates. Only init can fail.
 */
#ifndef KV_CACHE_H
#define KV_CACHE_H

#include <stddef.h>
#include "policies/policy.h"
#include "sim/alloc.h"

#define KV_CACHE_TOPK 8   /* top-k recall is measured for k = 1 and k = KV_CACHE_TOPK */

/*
 * The group's full-cache rows p_t at one position t: head h's row (0 <= h < n_heads of
 * the cache) is p + h * head_stride, t + 1 float32 weights on keys 0..t. top, when not
 * NULL, lists each row's highest keys best first (top + h * top_stride, KV_CACHE_TOPK
 * entries of which the first min(KV_CACHE_TOPK, t + 1) are used) for the top-k metrics;
 * NULL measures them as 0. o_full, when not NULL, gives what the output error needs:
 * head h's full-cache attention output sum_{j<=t} p_t^h[j] v_j at o_full + h * o_stride
 * (head_dim floats) and the values v_j of its KV head at v_of(h) + j * head_dim, v_of(h)
 * = v + ((head_lo + h) / heads_per_v - head_lo / heads_per_v) * v_stride; NULL measures
 * out_err as NaN (a trace without v). Borrowed for the call.
 */
typedef struct {
    const float *p;
    size_t head_stride;     /* floats between two heads' rows (0: all heads share one) */
    const int *top;
    size_t top_stride;      /* ints between two heads' top keys */
    const float *o_full;
    size_t o_stride;        /* floats between two heads' outputs */
    const float *v;         /* the values of the KV head of the cache's first query head */
    size_t v_stride;        /* floats between two KV heads' values */
    int head_lo;            /* the cache's first query head within its layer */
    int heads_per_v;        /* query heads per KV head (the model's GQA group) */
    int head_dim;
    const double *cum;      /* NULL, or each row's span sums (kv_row_span_sums, rows.h)
                               at cum + h * cum_stride: recall over runs of consecutive
                               positions then costs their ends, not their length */
    size_t cum_stride;
    int by_slot;            /* 1 (kv_cache_query of a decode step only): p holds the
                               weights of A_t alone, in its order - p[i] for c->pos[i],
                               i < c->n, then t - not indexed by position (the sparse
                               replay computes no other) */
} kv_group_rows;

/*
 * One cache's metrics of one decode step, taken on A_t (what the query attended to,
 * before the eviction), summed over its query heads. Every field is a double (counts are
 * whole numbers, exact below 2^53), so sim/metrics.h's tables fold and print them by
 * offset; a new metric is a field here, its computation in kv_cache_query, and rows in
 * those tables.
 */
typedef struct {
    double recall;          /* sum over heads of recall_t^h */
    double topk1;           /* sum over heads of [the row's top key is in A_t] */
    double topk8;           /* sum over heads of the fraction of the row's top
                               min(8, t+1) keys in A_t */
    double kv_tokens;       /* |A_t| * token_weight, tokens */
    double meta_bytes;      /* the policy's metadata, ops->meta_bytes(|A_t|), bytes */
    double out_err;         /* sum over heads of out_err_t^h = |o_cache - o_full| /
                               |o_full| (0 when both are 0): o_full = sum_{j<=t} p_t^h[j]
                               v_j, o_cache = sum_{j in A_t} o_t^h[j] v_j, the output of
                               the compressed cache; NaN without values (kv_group_rows) */
    /* The closed loop's metrics (sim/closedloop.h): one per run and step, written into
     * the run's steps by the closed-loop driver, not by a cache; NaN in a run without a
     * model, and at t = T-1, whose logits predict no token. */
    double kl;              /* KL(full || policy) of the next-token distributions, nats */
    double nll;             /* -log probability of token t+1 under the policy */
    double nll_full;        /* -log probability of token t+1 under the full cache */
    double top1;            /* 1 when both distributions' most likely tokens agree */
    double recall_closed;   /* mean over layers and query heads of the mass of the run's
                               own full-cache row on A_t (the closed loop's recall) */
} kv_step_metrics;

/* The caches of one layer that select jointly (alloc = ada), with the scratch. */
typedef struct kv_joint kv_joint;

typedef struct {
    const kv_policy_ops *ops;
    void *state;            /* the policy instance, owned */
    int budget;             /* B, tokens */
    int max_held;           /* most past tokens after a select or choice, -1: no bound */
    int n_tokens;           /* T */
    int prefill_len;        /* P */
    int n_heads;            /* query heads in the group */
    int token_weight;       /* KV heads that store each cached position (layer scope) */
    const int *identity;    /* [T] 0, 1, ..., T-1, borrowed: full rows' positions */
    int n;                  /* |S| (|A_t| between query and update) */
    int *pos;               /* [T] cached positions, ascending */
    unsigned char *in_set;  /* [T] 1 for cached positions */
    int *entered;           /* [T] position at which each cached position (re-)entered */
    double *w;              /* [n_heads * T] the row handed to the policy */
    unsigned char *keep;    /* [T] the policy's choice */
    double *head_recall;    /* [n_heads] recall of each head at the last decode query */
    double *head_out_err;   /* [n_heads] out_err of each head at the last decode query
                               (NaN without values) */
    int reads;              /* the policy reads this step's row (set by query) */
    long long *lifetimes;   /* [T - P + 1] evicted positions by the number of decode
                               steps they were attended to (0: evicted at the prefill end) */
    int *evictions;         /* [T] times each position was evicted (more than 1 only when
                               the policy re-admits, as oracle's preselect does) */
    int *lifetime_sum;      /* [T] the sum of those evictions' lifetimes (as counted in
                               lifetimes; the spells are disjoint, so at most T - P) */
    int failed;             /* 1 once S exceeded max_held */
    /* the composing rules of sim/alloc.h (kv_cache_set_select; zeroed: none) */
    kv_select_opts opts;
    const float *keys;      /* [T * head_dim] the cache's KV head's keys, borrowed, or NULL */
    const float *values;    /* [T * head_dim] its values, borrowed, or NULL */
    int head_dim;
    double *score;          /* [T] the policy's scores by view index (composed selects) */
    unsigned char *fixed;   /* [T] its fixed positions */
    int *cand, *scratch;    /* [T] kv_keep_top's buffers */
    void *chunks;           /* [T] chunk ranks of chunked selection (cache.c) */
    kv_joint *joint;        /* the layer's joint selection (alloc = ada), borrowed, or NULL */
    int joint_index;        /* this cache's index in it */
} kv_cache;


/*
 * Prepares c for a run of ctx->n_tokens positions with a prompt of ctx->prefill_len,
 * a group of ctx->group_size query heads and budget ctx->budget, and creates the policy
 * (ops->create(values, ctx)). token_weight: KV heads that store each cached position (1,
 * or n_kv_heads for a layer-scope policy); identity: [T] 0..T-1, borrowed, must outlive
 * c. Returns 0, or -1 when out of memory (c is then freed and zeroed).
 */
int kv_cache_init(kv_cache *c, const kv_policy_ops *ops, const kv_param_values *values,
                  const kv_policy_ctx *ctx, int token_weight, const int *identity);

/*
 * Sets the composing rules of sim/alloc.h for c (copied). With alloc = ada the layer's
 * caches must be joined (kv_joint_new) and must have been created with ctx->held_cap =
 * kv_alloc_held_cap (G * B): the policy sizes its state by it and the cache's bound
 * (max_held) grows by held_cap - B. Cannot fail.
 */
void kv_cache_set_select(kv_cache *c, const kv_select_opts *opts);

/* Hands c the key and value vectors of its KV head ([T * head_dim] floats each, position
 * j at j * head_dim; either may be NULL), borrowed for c's lifetime: the policy's view
 * carries them (policy.h, needs), value_weight reads the values. Cannot fail. */
void kv_cache_set_kv(kv_cache *c, const float *keys, const float *values, int head_dim);

/* Frees c's buffers and policy state and zeroes it. A zeroed c is ignored. */
void kv_cache_free(kv_cache *c);

/* 1 when the policy looks into the future (ops->prescan): the driver streams every full
 * row to kv_cache_prescan, t = 0..T-1, before the first query. */
int kv_cache_prescans(const kv_cache *c);

/* Hands the full rows p_t to the policy's prescan. Cannot fail. */
void kv_cache_prescan(kv_cache *c, int t, const kv_group_rows *full);

/* Steps 1-2 for position t (see the top of this file): m (decode steps only; may be
 * NULL during prefill) receives the step's metrics. Cannot fail. */
void kv_cache_query(kv_cache *c, int t, const kv_group_rows *full, kv_step_metrics *m);

/* Step 3 for position t, after kv_cache_query(c, t, ...). Cannot fail. */
void kv_cache_update(kv_cache *c, int t);

/*
 * Joins caches[0..n) (one layer's, in cache-index order: the tie order) for alloc = ada:
 * from now on kv_cache_update of each only lets its policy observe, and that of the last,
 * caches[n-1], makes the joint selection for all (sim/alloc.h) and compacts each to its
 * kept set. caches must outlive the joint. NULL when out of memory.
 */
kv_joint *kv_joint_new(kv_cache *const *caches, int n);

/* Frees j (the caches stay joined: free them first, or do not step them again). NULL is
 * ignored. */
void kv_joint_free(kv_joint *j);

/* kv_cache_query then kv_cache_update. Cannot fail. */
void kv_cache_step(kv_cache *c, int t, const kv_group_rows *full, kv_step_metrics *m);

#endif
