/*
 * cur.c - CUR (CurDKV): keep the positions with the highest approximate leverage of
 * their keys and values.
 *
 * Rule (kvpress's CURPress with its defaults: leverage_type = kv_product,
 * use_local_approximation on, local_window_size = 16, num_sinks = 4, no random
 * projection; window = 0), at each select: the end of prefill (t = P-1, A = {0..P-1})
 * and each decode step (A_t = S u {t}):
 *   1. If |A| <= B keep all.
 *   2. The `window` most recent positions of A are kept (fixed); the others, in cache
 *      order, are ranked.
 *   3. For each ranked j: k2_j = ||k_j||^2 and v2_j = ||v_j||^2 (keys and values as stored
 *      in the trace, the cache's KV head, in double).
 *   4. Local approximation: the ranked positions are cut into consecutive groups of
 *      `local` (the last may be shorter, as kvpress's zero padding leaves it); within each
 *      group k2 and v2 are divided by the group's sum (0 where the sum is 0).
 *   5. leverage: kv_product: s_j = k2_j * v2_j; key: k2_j; value: v2_j; kv_avg:
 *      (k2_j + v2_j) / 2. Then s_j /= sum of s over the ranked positions (when > 0).
 *   6. Positions j < sinks score 1.0 (kvpress's attention sinks, above every other score).
 *   7. Keep the B - window best (ties to the more recent, kv_keep_top) and evict the rest:
 *      one selection. At decode steps the current token t is ranked like any other (as
 *      TOVA does) and may be evicted unless window >= 1.
 * Attention rows are not read.
 * Citation: CurDKV, KV compression by approximate CUR leverage scores (arXiv 2509.15038,
 * 2025); the rule as kvpress presses/cur_press.py (CURPress.score) writes it.
 *
 * Metadata: none (meta_bytes NULL): the scores are recomputed from the cached vectors.
 */
#include "policies/policy.h"

#include <stdio.h>
#include <stdlib.h>

enum { P_WINDOW, P_SINKS, P_LOCAL, P_LEVERAGE };
enum { LEV_KV_PRODUCT = 0, LEV_KEY = 1, LEV_VALUE = 2, LEV_KV_AVG = 3 };

static const kv_param_spec cur_params[] = {
    [P_WINDOW] = { "window", KV_PARAM_INT, "0", 0, 1000000, NULL,
                   "most recent positions always kept, in tokens; B >= window" },
    [P_SINKS] = { "sinks", KV_PARAM_INT, "4", 0, 1000000, NULL,
                  "positions j < sinks score 1 (attention sinks)" },
    [P_LOCAL] = { "local", KV_PARAM_INT, "16", 1, 1000000, NULL,
                  "local approximation: leverages normalised within groups of this many positions" },
    [P_LEVERAGE] = { "leverage", KV_PARAM_CHOICE, "kv_product", 0, 0,
                     "kv_product|key|value|kv_avg", "how key and value leverages combine" },
};

typedef struct {
    int window, sinks, local, leverage;
    double *k2, *v2;        /* [T] by view index */
    double *score;          /* [T] */
    unsigned char *fixed;   /* [T] */
    int *cand, *scratch;    /* [T] */
} cur_state;

static int cur_check(const kv_param_values *values, int budget, char *err, size_t err_len)
{
    return kv_check_budget_window("cur", budget, (int)values->v[P_WINDOW], err, err_len);
}

static void cur_destroy(void *state)
{
    cur_state *st = state;
    if (st == NULL)
        return;
    free(st->k2);
    free(st->v2);
    free(st->score);
    free(st->fixed);
    free(st->cand);
    free(st->scratch);
    free(st);
}

static void *cur_create(const kv_param_values *values, const kv_policy_ctx *ctx)
{
    cur_state *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NULL;
    size_t t = (size_t)ctx->n_tokens;
    st->window = (int)values->v[P_WINDOW];
    st->sinks = (int)values->v[P_SINKS];
    st->local = (int)values->v[P_LOCAL];
    st->leverage = (int)values->v[P_LEVERAGE];
    st->k2 = malloc(t * sizeof *st->k2);
    st->v2 = malloc(t * sizeof *st->v2);
    st->score = malloc(t * sizeof *st->score);
    st->fixed = malloc(t);
    st->cand = malloc(t * sizeof *st->cand);
    st->scratch = malloc(t * sizeof *st->scratch);
    if (!st->k2 || !st->v2 || !st->score || !st->fixed || !st->cand || !st->scratch) {
        cur_destroy(st);
        return NULL;
    }
    return st;
}

static double squared_norm(const float *x, int d)
{
    double sq = 0.0;
    for (int e = 0; e < d; e++)
        sq += (double)x[e] * x[e];
    return sq;
}

/* 4. x[0..n) divided by the sum of its group of `local` consecutive entries. */
static void normalise_locally(double *x, int n, int local)
{
    for (int g = 0; g < n; g += local) {
        int end = g + local < n ? g + local : n;
        double sum = 0.0;
        for (int i = g; i < end; i++)
            sum += x[i];
        for (int i = g; i < end; i++)
            x[i] = sum > 0.0 ? x[i] / sum : 0.0;
    }
}

/* Steps 2-6. */
static int cur_scores(void *state, const kv_cache_view *cache, double *score,
                      unsigned char *fixed)
{
    cur_state *st = state;
    int d = cache->head_dim, n_ranked = cache->n - st->window;
    if (n_ranked < 0)
        n_ranked = 0;
    for (int i = 0; i < n_ranked; i++) {                       /* 3 */
        st->k2[i] = squared_norm(cache->keys + (size_t)cache->pos[i] * d, d);
        st->v2[i] = squared_norm(cache->values + (size_t)cache->pos[i] * d, d);
    }
    normalise_locally(st->k2, n_ranked, st->local);           /* 4 */
    normalise_locally(st->v2, n_ranked, st->local);
    double total = 0.0;
    for (int i = 0; i < n_ranked; i++) {                       /* 5 */
        double k2 = st->k2[i], v2 = st->v2[i];
        score[i] = st->leverage == LEV_KV_PRODUCT ? k2 * v2
                 : st->leverage == LEV_KEY ? k2
                 : st->leverage == LEV_VALUE ? v2 : (k2 + v2) / 2.0;
        total += score[i];
    }
    for (int i = 0; i < cache->n; i++) {
        fixed[i] = i >= n_ranked;
        if (i >= n_ranked)
            score[i] = 0.0;
        else if (total > 0.0)
            score[i] /= total;
        if (cache->pos[i] < st->sinks)                         /* 6 */
            score[i] = 1.0;
    }
    return 1;
}

static void cur_select(void *state, const kv_cache_view *cache, unsigned char *keep)
{
    cur_state *st = state;
    if (cache->n <= cache->budget) {                           /* 1 */
        for (int i = 0; i < cache->n; i++)
            keep[i] = 1;
        return;
    }
    cur_scores(st, cache, st->score, st->fixed);
    kv_keep_scored(st->score, st->fixed, cache->pos, cache->n, cache->budget, st->cand,
                   st->scratch, keep);                        /* 7 */
}

static int cur_window(const kv_param_values *values, int budget)
{
    (void)budget;
    return (int)values->v[P_WINDOW];
}

const kv_policy_ops kv_policy_cur = {
    .name = "cur",
    .summary = "keep the highest approximate CUR leverage of keys times values (+ sinks)",
    .citation = "CurDKV 2025, arXiv 2509.15038, as kvpress's CURPress scores it",
    KV_PARAM_TABLE(cur_params),
    .bounded = 1,                  /* keeps exactly min(|A_t|, B) */
    .check = cur_check,            /* B >= window */
    .create = cur_create,
    .observe = kv_observe_nothing, /* rows are not read */
    .reads_row = kv_reads_no_row,
    .select = cur_select,          /* steps 1-7 */
    .destroy = cur_destroy,
    .needs = KV_NEEDS_KEYS | KV_NEEDS_VALUES,
    .scores = cur_scores,          /* steps 2-6 */
    .window = cur_window,
};
