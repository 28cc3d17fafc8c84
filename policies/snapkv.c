/*
 * snapkv.c - SnapKV: compress the prompt once, by the attention of its last window.
 *
 * Rule (README "Policies", `snapkv`, window = 32, kernel = 7, pooling = max, gqa = sum).
 * Let L = P - window (the prompt positions outside the observation window).
 *   1. Observe (prefill rows t = P-window .. P-1 only): for each query head h and each
 *      j < L, s_h[j] += p_t[j]: the attention the observation window pays to j.
 *   2. Select at the end of prefill (t = P-1), only if P > B (else keep all). For each
 *      head, pool s_h over positions with the odd kernel, radius q = (kernel-1)/2,
 *      inside [0, L): max: v_h[j] = max of s_h[u] over |u-j| <= q, 0 <= u < L;
 *      avg: v_h[j] = (sum of s_h[u] over the same clipped range) / kernel.
 *   3. Combine the pooled per-head scores over the group (gqa: sum or max, README
 *      rule 3: each head is pooled in full first).
 *   4. Keep the B - window positions j < L with the highest combined score (ties to the
 *      more recent) plus the last `window` prompt positions L..P-1.
 *   5. Decode steps: no eviction; every position is kept and S grows by one token per
 *      step, as published (bounded = 0).
 * Requires B >= window (so P > B implies L > 0) and an odd kernel.
 * Citation: Li et al. 2024, "SnapKV: LLM Knows What You are Looking for Before
 * Generation", Sec. 4 and Listing 1 (observation window, pooling, top-k selection).
 *
 * Metadata: none during decode (the scores of steps 1-3 exist only during prefill), so
 * meta_bytes is NULL. Cost: step 1 is O(n * group) per row; steps 2-4 run once, in
 * O(group * L * kernel + P) time and O(group * L + T) memory.
 */
#include "policies/policy.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

enum { P_WINDOW, P_KERNEL, P_POOLING, P_GQA };
enum { POOL_MAX = 0, POOL_AVG = 1 };

static const kv_param_spec snapkv_params[] = {
    [P_WINDOW] = { "window", KV_PARAM_INT, "32", 1, 1000000, NULL,
                   "observation window: the last prompt tokens whose attention votes, in tokens; B >= window" },
    [P_KERNEL] = { "kernel", KV_PARAM_INT, "7", 1, 1000000, NULL,
                   "pooling kernel width over positions, in tokens (odd)" },
    [P_POOLING] = { "pooling", KV_PARAM_CHOICE, "max", 0, 0, "max|avg",
                    "pooling of the window's attention over neighbouring positions" },
    [P_GQA] = KV_PARAM_GQA,
};

typedef struct {
    int window, kernel, pooling;
    kv_gqa_mode gqa;
    int group;      /* query heads per cache */
    int n_tokens;   /* T */
    int prefill;    /* P */
    int n_scored;   /* L = P - window, or 0 when there is nothing to score */
    double *s;      /* [group][L] window attention per head (step 1) */
    double *pooled; /* [group][L] pooled per head (step 2) */
    double *comb;   /* [L] combined over the group (step 3), by position */
    double *score;  /* [T] by cache-view index, for kv_keep_top */
    int *cand;      /* [T] */
    int *scratch;   /* [T] */
} snapkv_state;

static int snapkv_check(const kv_param_values *values, int budget, char *err,
                        size_t err_len)
{
    if (kv_check_budget(budget, err, err_len) != 0)
        return 1;
    int window = (int)values->v[P_WINDOW], kernel = (int)values->v[P_KERNEL];
    if (budget < window) {
        snprintf(err, err_len, "budget %d must be at least snapkv window %d", budget, window);
        return 1;
    }
    if (kernel % 2 == 0) {
        snprintf(err, err_len, "snapkv kernel %d must be odd", kernel);
        return 1;
    }
    return 0;
}

static void snapkv_destroy(void *state)
{
    snapkv_state *st = state;
    if (st == NULL)
        return;
    free(st->s);
    free(st->pooled);
    free(st->comb);
    free(st->score);
    free(st->cand);
    free(st->scratch);
    free(st);
}

static void *snapkv_create(const kv_param_values *values, const kv_policy_ctx *ctx)
{
    snapkv_state *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NULL;
    st->window = (int)values->v[P_WINDOW];
    st->kernel = (int)values->v[P_KERNEL];
    st->pooling = (int)values->v[P_POOLING];
    st->gqa = (kv_gqa_mode)(int)values->v[P_GQA];
    st->group = ctx->group_size;
    st->n_tokens = ctx->n_tokens;
    st->prefill = ctx->prefill_len;
    st->n_scored = st->prefill > st->window ? st->prefill - st->window : 0;
    size_t l = st->n_scored > 0 ? (size_t)st->n_scored : 1, t = (size_t)ctx->n_tokens;
    st->s = calloc(l * (size_t)st->group, sizeof *st->s);
    st->pooled = malloc(l * (size_t)st->group * sizeof *st->pooled);
    st->comb = malloc(l * sizeof *st->comb);
    st->score = malloc(t * sizeof *st->score);
    st->cand = malloc(t * sizeof *st->cand);
    st->scratch = malloc(t * sizeof *st->scratch);
    if (st->s == NULL || st->pooled == NULL || st->comb == NULL || st->score == NULL ||
        st->cand == NULL || st->scratch == NULL) {
        snapkv_destroy(st);
        return NULL;
    }
    return st;
}

static void snapkv_observe(void *state, const kv_row *row)
{
    snapkv_state *st = state;
    assert(row->n_heads == st->group && row->n <= st->n_tokens);
    /* 1. Only the observation window's prefill rows vote, and only for j < L. */
    if (!row->is_prefill || row->t < st->prefill - st->window || st->n_scored == 0)
        return;
    int l = st->n_scored;
    for (int h = 0; h < st->group; h++) {
        const double *w = row->w + (size_t)h * row->n;
        double *s = st->s + (size_t)h * l;
        for (int i = 0; i < row->n && row->pos[i] < l; i++)
            s[row->pos[i]] += w[i];
    }
}

/* 2. Pools one head's window attention s[0..l) into v[0..l). */
static void pool_head(const double *s, int l, int kernel, int pooling, double *v)
{
    int q = (kernel - 1) / 2;
    for (int j = 0; j < l; j++) {
        int lo = j - q > 0 ? j - q : 0, hi = j + q < l - 1 ? j + q : l - 1;
        double acc = s[lo];
        for (int u = lo + 1; u <= hi; u++) {
            if (pooling == POOL_MAX)
                acc = s[u] > acc ? s[u] : acc;
            else
                acc += s[u];
        }
        v[j] = pooling == POOL_MAX ? acc : acc / (double)kernel;
    }
}

static void snapkv_select(void *state, const kv_cache_view *cache, unsigned char *keep)
{
    snapkv_state *st = state;
    int n = cache->n, b = cache->budget;
    assert(n <= st->n_tokens && b >= st->window);
    /* 5. Decode steps, and a prompt within budget: keep all. */
    if (!cache->is_prefill_end || n <= b) {
        for (int i = 0; i < n; i++)
            keep[i] = 1;
        return;
    }
    int l = st->n_scored;
    assert(l > 0); /* n = P > B >= window */
    /* 2. Pool each head, 3. combine over the group. */
    for (int h = 0; h < st->group; h++)
        pool_head(st->s + (size_t)h * l, l, st->kernel, st->pooling,
                  st->pooled + (size_t)h * l);
    kv_gqa_combine(st->gqa, st->group, l, st->pooled, (size_t)l, st->comb);
    /* 4. The last `window` prompt positions, plus the best B - window of the rest. */
    int n_cand = 0;
    for (int i = 0; i < n; i++) {
        keep[i] = cache->pos[i] >= l;
        if (cache->pos[i] < l) {
            st->score[i] = st->comb[cache->pos[i]];
            st->cand[n_cand++] = i;
        }
    }
    kv_keep_top(st->score, cache->pos, st->cand, n_cand, b - st->window, st->scratch, keep);
}

const kv_policy_ops kv_policy_snapkv = {
    .name = "snapkv",
    .summary = "compress the prompt once by its last window's pooled attention; no decode eviction",
    .citation = "Li et al. 2024, SnapKV: LLM Knows What You are Looking for Before Generation, Sec. 4",
    .params = snapkv_params,
    .n_params = 4,
    .bounded = 0,                 /* S grows by one token per decode step (step 5) */
    .check = snapkv_check,        /* B >= window, kernel odd */
    .create = snapkv_create,
    .observe = snapkv_observe,    /* step 1 */
    .select = snapkv_select,      /* steps 2-5 */
    .meta_bytes = NULL,           /* nothing held during decode */
    .destroy = snapkv_destroy,
};
