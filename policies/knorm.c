/*
 * knorm.c - KNorm: keep the positions whose keys have the smallest L2 norm.
 *
 * Rule (kvpress's KnormPress, window = 0), at each select: the end of prefill (t = P-1,
 * A = {0..P-1}) and each decode step (A_t = S u {t}):
 *   1. If |A| <= B keep all.
 *   2. The `window` most recent positions of A are kept (fixed).
 *   3. Every other position j scores -||k_j||_2, its key as stored in the trace
 *      (post-rotary, the cache's KV head), computed in double.
 *   4. Keep the B - window best (the smallest norms; ties to the more recent,
 *      kv_keep_top) and evict the rest: one selection (README rule 5). At decode steps the
 *      current token t is ranked like any other (as TOVA does) and may be evicted unless
 *      window >= 1.
 * Attention rows are not read (observe records nothing).
 * Citation: Devoto et al. 2024, "A Simple and Effective L2 Norm-Based Strategy for KV
 * Cache Compression" (EMNLP), Sec. 3: keys with a low L2 norm draw high attention;
 * kvpress presses/knorm_press.py scores -keys.norm(dim=-1).
 *
 * Metadata: none (meta_bytes NULL): the score is read from the cached key itself.
 */
#include "policies/policy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

enum { P_WINDOW };

static const kv_param_spec knorm_params[] = {
    [P_WINDOW] = { "window", KV_PARAM_INT, "0", 0, 1000000, NULL,
                   "most recent positions always kept, in tokens; B >= window" },
};

typedef struct {
    int window;
    double *score;          /* [T] by view index */
    unsigned char *fixed;   /* [T] */
    int *cand, *scratch;    /* [T] */
} knorm_state;

static int knorm_check(const kv_param_values *values, int budget, char *err, size_t err_len)
{
    return kv_check_budget_window("knorm", budget, (int)values->v[P_WINDOW], err, err_len);
}

static void knorm_destroy(void *state)
{
    knorm_state *st = state;
    if (st == NULL)
        return;
    free(st->score);
    free(st->fixed);
    free(st->cand);
    free(st->scratch);
    free(st);
}

static void *knorm_create(const kv_param_values *values, const kv_policy_ctx *ctx)
{
    knorm_state *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NULL;
    size_t t = (size_t)ctx->n_tokens;
    st->window = (int)values->v[P_WINDOW];
    st->score = malloc(t * sizeof *st->score);
    st->fixed = malloc(t);
    st->cand = malloc(t * sizeof *st->cand);
    st->scratch = malloc(t * sizeof *st->scratch);
    if (!st->score || !st->fixed || !st->cand || !st->scratch) {
        knorm_destroy(st);
        return NULL;
    }
    return st;
}

/* Steps 2-3. */
static int knorm_scores(void *state, const kv_cache_view *cache, double *score,
                        unsigned char *fixed)
{
    knorm_state *st = state;
    int d = cache->head_dim;
    for (int i = 0; i < cache->n; i++) {
        const float *k = cache->keys + (size_t)cache->pos[i] * d;
        double sq = 0.0;
        for (int e = 0; e < d; e++)
            sq += (double)k[e] * k[e];
        score[i] = -sqrt(sq);
        fixed[i] = i >= cache->n - st->window;
    }
    return 1;
}

static void knorm_select(void *state, const kv_cache_view *cache, unsigned char *keep)
{
    knorm_state *st = state;
    knorm_scores(st, cache, st->score, st->fixed);
    kv_keep_scored(st->score, st->fixed, cache->pos, cache->n, cache->budget, st->cand,
                   st->scratch, keep);   /* 1 and 4 */
}

static int knorm_window(const kv_param_values *values, int budget)
{
    (void)budget;
    return (int)values->v[P_WINDOW];
}

const kv_policy_ops kv_policy_knorm = {
    .name = "knorm",
    .summary = "keep the keys with the smallest L2 norm (+ an optional recent window)",
    .citation = "Devoto et al. 2024, A Simple and Effective L2 Norm-Based Strategy for KV "
                "Cache Compression (kvpress KnormPress)",
    KV_PARAM_TABLE(knorm_params),
    .bounded = 1,                  /* keeps exactly min(|A_t|, B) */
    .check = knorm_check,          /* B >= window */
    .create = knorm_create,
    .observe = kv_observe_nothing, /* rows are not read */
    .reads_row = kv_reads_no_row,
    .select = knorm_select,        /* steps 1-4 */
    .destroy = knorm_destroy,
    .needs = KV_NEEDS_KEYS,
    .scores = knorm_scores,        /* steps 2-3 */
    .window = knorm_window,
};
