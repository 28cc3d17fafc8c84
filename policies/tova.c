/*
 * tova.c - TOVA: keep the tokens the current query attends to most.
 *
 * Rule (README "Policies", `tova`, scope = kv_head, gqa = sum), at each select: the end of prefill
 * (t = P-1, A = {0..P-1}, the row is p_{P-1} itself) and each decode step (A_t = S u {t},
 * the row is the observed o_t):
 *   1. Observe: remember the newest row only, group-combined by position:
 *      c[j] = gqa over the group's query heads of w_h[j] (README rule 3).
 *   2. Select over A_t: if |A_t| <= B keep all.
 *   3. Otherwise keep the B positions of A_t with the highest c[j] (ties to the more
 *      recent, kv_keep_top) and evict the rest: one selection (README rule 5). The
 *      current token t competes like any other and may be evicted.
 * scope = layer: the engine gives the policy one cache per layer whose group is every
 * query head of the layer (ops->scope), and step 1 ranks by the mean over all those
 * heads: the published rule. The mean ranks exactly as the sum does (one positive
 * factor), so the sum is used, which avoids a division's rounding; gqa = max is rejected
 * with scope = layer (the published rule averages).
 * Citation: Oren et al. 2024, "Transformers are Multi-State RNNs" (TOVA, Token Omission
 * Via Attention), Sec. 4: when the cache is full, drop the token with the lowest
 * attention score of the current query, averaged over the layer's heads.
 *
 * Metadata: none (meta_bytes NULL): the scores are the current query's attention
 * weights, which the attention itself computes; nothing is carried between steps.
 * State: c by position, [T] doubles, so observe is O(n * group) and select O(n).
 */
#include "policies/policy.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

enum { P_SCOPE, P_GQA };
enum { SCOPE_KV_HEAD = 0, SCOPE_LAYER = 1 };

static const kv_param_spec tova_params[] = {
    [P_SCOPE] = { "scope", KV_PARAM_CHOICE, "kv_head", 0, 0, "kv_head|layer",
                  "kv_head: one set per KV head; layer: one set per layer by the mean over all query heads (published)" },
    [P_GQA] = KV_PARAM_GQA,
};

typedef struct {
    kv_gqa_mode gqa;
    int group;          /* query heads per cache */
    int n_tokens;       /* T */
    double *comb;       /* [T] the newest row combined over the group, by row index */
    double *c;          /* [T] c[j] of step 1, by position */
    double *score;      /* [T] by cache-view index, for kv_keep_top */
    int *cand;          /* [T] */
    int *scratch;       /* [T] */
} tova_state;

static int tova_check(const kv_param_values *values, int budget, char *err, size_t err_len)
{
    if (kv_check_budget(budget, err, err_len) != 0)
        return 1;
    if ((int)values->v[P_SCOPE] == SCOPE_LAYER && (int)values->v[P_GQA] == KV_GQA_MAX) {
        snprintf(err, err_len, "tova scope=layer ranks by the mean over all query heads; "
                 "gqa=max needs scope=kv_head");
        return 1;
    }
    return 0;
}

static int tova_scope(const kv_param_values *values)
{
    return (int)values->v[P_SCOPE] == SCOPE_LAYER ? KV_SCOPE_LAYER : KV_SCOPE_KV_HEAD;
}

static void tova_destroy(void *state)
{
    tova_state *st = state;
    if (st == NULL)
        return;
    free(st->comb);
    free(st->c);
    free(st->score);
    free(st->cand);
    free(st->scratch);
    free(st);
}

static void *tova_create(const kv_param_values *values, const kv_policy_ctx *ctx)
{
    tova_state *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NULL;
    size_t t = (size_t)ctx->n_tokens;
    st->gqa = (kv_gqa_mode)(int)values->v[P_GQA];
    st->group = ctx->group_size;
    st->n_tokens = ctx->n_tokens;
    st->comb = malloc(t * sizeof *st->comb);
    st->c = calloc(t, sizeof *st->c);
    st->score = malloc(t * sizeof *st->score);
    st->cand = malloc(t * sizeof *st->cand);
    st->scratch = malloc(t * sizeof *st->scratch);
    if (st->comb == NULL || st->c == NULL || st->score == NULL || st->cand == NULL ||
        st->scratch == NULL) {
        tova_destroy(st);
        return NULL;
    }
    return st;
}

static void tova_observe(void *state, const kv_row *row)
{
    tova_state *st = state;
    assert(row->n_heads == st->group && row->n <= st->n_tokens);
    /* 1. Only the newest row counts: combine it and file it by position. */
    kv_gqa_combine(st->gqa, st->group, row->n, row->w, (size_t)row->n, st->comb);
    for (int i = 0; i < row->n; i++)
        st->c[row->pos[i]] = st->comb[i];
}

static void tova_select(void *state, const kv_cache_view *cache, unsigned char *keep)
{
    tova_state *st = state;
    assert(cache->n <= st->n_tokens && cache->budget >= 1);
    /* 2-3. Within budget keep all, else the B best of A_t, t included among them. */
    kv_keep_top_by_position(st->c, cache->pos, cache->n, cache->budget, st->score, st->cand,
                            st->scratch, keep);
}

/* Step 3's ranking as scores (policy.h): c[j] of every position, none fixed. */
static int tova_scores(void *state, const kv_cache_view *cache, double *score,
                       unsigned char *fixed)
{
    tova_state *st = state;
    for (int i = 0; i < cache->n; i++) {
        score[i] = st->c[cache->pos[i]];
        fixed[i] = 0;
    }
    return 1;
}

const kv_policy_ops kv_policy_tova = {
    .name = "tova",
    .summary = "keep the B tokens the current query attends to most (the current one may go)",
    .citation = "Oren et al. 2024, Transformers are Multi-State RNNs (TOVA), Sec. 4",
    KV_PARAM_TABLE(tova_params),
    .bounded = 1,                 /* keeps exactly min(|A_t|, B) */
    .check = tova_check,          /* budget >= 1; scope=layer needs gqa=sum */
    .create = tova_create,
    .observe = tova_observe,      /* step 1 */
    .select = tova_select,        /* steps 2-3 */
    .meta_bytes = NULL,           /* nothing carried between steps */
    .destroy = tova_destroy,
    .scope = tova_scope,          /* scope = layer: one cache per layer */
    .scores = tova_scores,        /* step 3's c[j] */
};
