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
 *     c->lifetimes. c->failed is set (and stays set) when S exceeds the policy's bound
 *     (kv_policy_max_held): the driver reports an internal error.
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

#define KV_CACHE_TOPK 8   /* top-k recall is measured for k = 1 and k = KV_CACHE_TOPK */

/*
 * The group's full-cache rows p_t at one position t: head h's row (0 <= h < n_heads of
 * the cache) is p + h * head_stride, t + 1 float32 weights on keys 0..t. top, when not
 * NULL, lists each row's highest keys best first (top + h * top_stride, KV_CACHE_TOPK
 * entries of which the first min(KV_CACHE_TOPK, t + 1) are used) for the top-k metrics;
 * NULL measures them as 0. Borrowed for the call.
 */
typedef struct {
    const float *p;
    size_t head_stride;     /* floats between two heads' rows (0: all heads share one) */
    const int *top;
    size_t top_stride;      /* ints between two heads' top keys */
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
} kv_step_metrics;

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
    int reads;              /* the policy reads this step's row (set by query) */
    long long *lifetimes;   /* [T - P + 1] evicted positions by the number of decode
                               steps they were attended to (0: evicted at the prefill end) */
    int failed;             /* 1 once S exceeded max_held */
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

/* kv_cache_query then kv_cache_update. Cannot fail. */
void kv_cache_step(kv_cache *c, int t, const kv_group_rows *full, kv_step_metrics *m);

#endif
