/*
 * keydiff.c - KeyDiff: keep the positions whose keys differ most from the mean key.
 *
 * Rule (kvpress's KeyDiffPress, window = 0), at each select: the end of prefill (t = P-1,
 * A = {0..P-1}) and each decode step (A_t = S u {t}):
 *   1. If |A| <= B keep all.
 *   2. The `window` most recent positions of A are kept (fixed); the others are ranked.
 *   3. The anchor kbar = the mean over the ranked positions of their unit-normalised keys
 *      k_j / ||k_j||_2 (a zero key contributes 0), recomputed at every selection; keys as
 *      stored (post-rotary, the cache's KV head), in double.
 *   4. Each ranked j scores -cos(k_j, kbar) = -(k_j . kbar) / (||k_j|| ||kbar||), 0 when
 *      either norm is 0.
 *   5. Keep the B - window best (the least similar to the anchor; ties to the more recent,
 *      kv_keep_top) and evict the rest: one selection. At decode steps the current token
 *      t is ranked like any other (as TOVA does) and may be evicted unless window >= 1.
 * Attention rows are not read.
 * Citation: Park et al. 2025, "KeyDiff: Key Similarity-Based KV Cache Eviction for
 * Long-Context LLM Inference in Resource-Constrained Environments" (arXiv 2504.15364),
 * Sec. 3; kvpress presses/keydiff_press.py (anchor = mean of the normalised keys).
 *
 * Metadata: none (meta_bytes NULL): the anchor is recomputed from the cached keys.
 */
#include "policies/policy.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

enum { P_WINDOW };

static const kv_param_spec keydiff_params[] = {
    [P_WINDOW] = { "window", KV_PARAM_INT, "0", 0, 1000000, NULL,
                   "most recent positions always kept, in tokens; B >= window" },
};

typedef struct {
    int window;
    double *anchor;         /* [head_dim] kbar */
    int anchor_len;         /* ctx head_dim */
    double *score;          /* [T] by view index */
    unsigned char *fixed;   /* [T] */
    int *cand, *scratch;    /* [T] */
} keydiff_state;

static int keydiff_check(const kv_param_values *values, int budget, char *err,
                         size_t err_len)
{
    return kv_check_budget_window("keydiff", budget, (int)values->v[P_WINDOW], err, err_len);
}

static void keydiff_destroy(void *state)
{
    keydiff_state *st = state;
    if (st == NULL)
        return;
    free(st->anchor);
    free(st->score);
    free(st->fixed);
    free(st->cand);
    free(st->scratch);
    free(st);
}

static void *keydiff_create(const kv_param_values *values, const kv_policy_ctx *ctx)
{
    keydiff_state *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NULL;
    size_t t = (size_t)ctx->n_tokens;
    st->window = (int)values->v[P_WINDOW];
    st->anchor_len = ctx->head_dim > 0 ? ctx->head_dim : 1;
    st->anchor = malloc((size_t)st->anchor_len * sizeof *st->anchor);
    st->score = malloc(t * sizeof *st->score);
    st->fixed = malloc(t);
    st->cand = malloc(t * sizeof *st->cand);
    st->scratch = malloc(t * sizeof *st->scratch);
    if (!st->anchor || !st->score || !st->fixed || !st->cand || !st->scratch) {
        keydiff_destroy(st);
        return NULL;
    }
    return st;
}

static double norm(const float *k, int d)
{
    double sq = 0.0;
    for (int e = 0; e < d; e++)
        sq += (double)k[e] * k[e];
    return sqrt(sq);
}

/* Steps 2-4. */
static int keydiff_scores(void *state, const kv_cache_view *cache, double *score,
                          unsigned char *fixed)
{
    keydiff_state *st = state;
    int d = cache->head_dim, n_ranked = cache->n - st->window;
    double *kbar = st->anchor;
    assert(d <= st->anchor_len);
    for (int e = 0; e < d; e++)
        kbar[e] = 0.0;
    for (int i = 0; i < n_ranked; i++) {           /* 3. the mean of the unit keys */
        const float *k = cache->keys + (size_t)cache->pos[i] * d;
        double nk = norm(k, d);
        for (int e = 0; nk > 0.0 && e < d; e++)
            kbar[e] += k[e] / nk;
    }
    double nbar = 0.0;
    for (int e = 0; e < d; e++) {
        kbar[e] /= n_ranked > 0 ? n_ranked : 1;
        nbar += kbar[e] * kbar[e];
    }
    nbar = sqrt(nbar);
    for (int i = 0; i < cache->n; i++) {           /* 4. minus the cosine */
        const float *k = cache->keys + (size_t)cache->pos[i] * d;
        double nk = norm(k, d), dot = 0.0;
        for (int e = 0; e < d; e++)
            dot += k[e] * kbar[e];
        score[i] = nk > 0.0 && nbar > 0.0 ? -dot / (nk * nbar) : 0.0;
        fixed[i] = i >= n_ranked;
    }
    return 1;
}

static void keydiff_select(void *state, const kv_cache_view *cache, unsigned char *keep)
{
    keydiff_state *st = state;
    if (cache->n <= cache->budget) {               /* 1 */
        for (int i = 0; i < cache->n; i++)
            keep[i] = 1;
        return;
    }
    keydiff_scores(st, cache, st->score, st->fixed);
    kv_keep_scored(st->score, st->fixed, cache->pos, cache->n, cache->budget, st->cand,
                   st->scratch, keep);            /* 5 */
}

static int keydiff_window(const kv_param_values *values, int budget)
{
    (void)budget;
    return (int)values->v[P_WINDOW];
}

const kv_policy_ops kv_policy_keydiff = {
    .name = "keydiff",
    .summary = "keep the keys least similar (cosine) to the mean unit key (+ recent window)",
    .citation = "Park et al. 2025, KeyDiff: Key Similarity-Based KV Cache Eviction, arXiv "
                "2504.15364 (kvpress KeyDiffPress)",
    KV_PARAM_TABLE(keydiff_params),
    .bounded = 1,                  /* keeps exactly min(|A_t|, B) */
    .check = keydiff_check,    /* B >= window */
    .create = keydiff_create,
    .observe = kv_observe_nothing, /* rows are not read */
    .reads_row = kv_reads_no_row,
    .select = keydiff_select,      /* steps 1-5 */
    .destroy = keydiff_destroy,
    .needs = KV_NEEDS_KEYS,
    .scores = keydiff_scores,      /* steps 2-4 */
    .window = keydiff_window,
};
