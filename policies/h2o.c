/*
 * h2o.c - Heavy-Hitter Oracle: recent tokens plus the heaviest accumulated attention.
 *
 * Rule (README "Policies", `h2o`, recent = 0.5, gqa = sum, normalize = none):
 *   1. Observe: for each query head h of the group and each j in the row,
 *      acc_h[j] += w_h[j]: the sum of the observed row values (p_t during prefill, the
 *      renormalised o_t at decode) over every row since j entered the cache (row j,
 *      which contains j itself, included); and count[j] += 1, the number of those rows.
 *   2. Select over A_t: if |A_t| <= B keep all. Otherwise r = floor(recent * B),
 *      computed in double precision, and the r most recent positions of A_t are kept.
 *   3. For every other position j, its per-head score is acc_h[j] (normalize = none) or
 *      acc_h[j] / count[j] (normalize = count: the mean attention j received, so a young
 *      token is not outscored merely for having been observed by fewer rows); the score
 *      is the group combination of the per-head scores (gqa: sum or max, README rule 3).
 *   4. Keep the B - r of them with the highest score, ties to the more recent position
 *      (kv_keep_top); evict the rest, dropping their scores.
 * Citation: Zhang et al. 2023, "H2O: Heavy-Hitter Oracle for Efficient Generative
 * Inference of Large Language Models" (NeurIPS), Sec. 4 and Algorithm 1 (greedy
 * eviction by accumulated attention, with a recent-token window). normalize = count is
 * the count-normalised accumulated attention several follow-ups and implementations
 * use (our addition, README "Policies"); it is not the published H2O rule.
 *
 * Metadata (meta_bytes): one float32 accumulated score per cached token, 4 * n bytes,
 * with gqa = sum (the heads' totals can be summed into one); with gqa = max the
 * per-head totals must be kept, 4 * group_size * n bytes; normalize = count adds one
 * int32 row count per cached token, 4 * n bytes.
 *
 * State: acc is indexed by position, [T][group_size] doubles, so observe and select
 * are O(n * group_size) with no search.
 */
#include "policies/policy.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { P_RECENT, P_GQA, P_NORMALIZE };
enum { NORM_NONE = 0, NORM_COUNT = 1 };

static const kv_param_spec h2o_params[] = {
    [P_RECENT] = { "recent", KV_PARAM_REAL, "0.5", 0, 1, NULL,
                   "fraction of the budget kept as the most recent tokens: r = floor(recent*B)" },
    [P_GQA] = KV_PARAM_GQA,
    [P_NORMALIZE] = { "normalize", KV_PARAM_CHOICE, "none", 0, 0, "none|count",
                      "none: rank by accumulated attention; count: by its mean over the rows that observed the token" },
};

typedef struct {
    double recent;      /* recent fraction */
    kv_gqa_mode gqa;    /* group combination */
    int normalize;      /* NORM_NONE or NORM_COUNT */
    int group;          /* query heads per cache */
    int n_tokens;       /* T */
    double *acc;        /* [T][group]: acc_h[j] at acc[j * group + h] */
    int *count;         /* [T]: rows that observed j since it entered */
    double *head_score; /* [group]: per-head scores of one candidate (step 3) */
    double *score;      /* [T], by cache-view index: combined score of a candidate */
    unsigned char *fixed; /* [T] by cache-view index: the r most recent (step 2) */
    int *cand;          /* [T] candidate view indices */
    int *scratch;       /* [T] for kv_keep_top */
} h2o_state;

static int h2o_check(const kv_param_values *values, int budget, char *err, size_t err_len)
{
    (void)values; /* any recent in [0, 1] and either gqa mode works with any B >= 1 */
    return kv_check_budget(budget, err, err_len);
}

static void h2o_destroy(void *state)
{
    h2o_state *st = state;
    if (st == NULL)
        return;
    free(st->acc);
    free(st->count);
    free(st->head_score);
    free(st->score);
    free(st->fixed);
    free(st->cand);
    free(st->scratch);
    free(st);
}

static void *h2o_create(const kv_param_values *values, const kv_policy_ctx *ctx)
{
    h2o_state *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NULL;
    size_t t = (size_t)ctx->n_tokens;
    st->recent = values->v[P_RECENT];
    st->gqa = (kv_gqa_mode)(int)values->v[P_GQA];
    st->normalize = (int)values->v[P_NORMALIZE];
    st->group = ctx->group_size;
    st->n_tokens = ctx->n_tokens;
    st->acc = calloc(t * (size_t)st->group, sizeof *st->acc);
    st->count = calloc(t, sizeof *st->count);
    st->head_score = malloc((size_t)st->group * sizeof *st->head_score);
    st->score = malloc(t * sizeof *st->score);
    st->fixed = malloc(t);
    st->cand = malloc(t * sizeof *st->cand);
    st->scratch = malloc(t * sizeof *st->scratch);
    if (st->acc == NULL || st->count == NULL || st->head_score == NULL || st->score == NULL ||
        st->fixed == NULL || st->cand == NULL || st->scratch == NULL) {
        h2o_destroy(st);
        return NULL;
    }
    return st;
}

static void h2o_observe(void *state, const kv_row *row)
{
    h2o_state *st = state;
    assert(row->n_heads == st->group && row->n <= st->n_tokens);
    /* 1. acc_h[j] += w_h[j] for every head and every position of the row; position by
     * position, so the group's accumulators of a position are written together. */
    int g = st->group, n = row->n;
    for (int i = 0; i < n; i++) {
        double *acc = st->acc + (size_t)row->pos[i] * g;
        for (int h = 0; h < g; h++)
            acc[h] += row->w[(size_t)h * n + i];
        st->count[row->pos[i]]++;
    }
}

/* Steps 2-3 as scores (policy.h): the r most recent fixed, every other position scored;
 * h2o evicts at every select. */
static int h2o_scores(void *state, const kv_cache_view *cache, double *score,
                      unsigned char *fixed)
{
    h2o_state *st = state;
    int n = cache->n;
    assert(n <= st->n_tokens && cache->budget >= 1);
    /* 2. The r most recent are kept; r <= B because recent <= 1. */
    int r = (int)floor(st->recent * (double)cache->budget);
    int n_cand = n - r;
    for (int i = 0; i < n; i++)
        fixed[i] = i >= n_cand;
    /* 3. Each candidate's per-head scores, combined over the group. */
    for (int c = 0; c < n; c++) {
        const double *acc = st->acc + (size_t)cache->pos[c] * st->group;
        int count = st->count[cache->pos[c]];
        for (int h = 0; h < st->group; h++)
            st->head_score[h] = st->normalize == NORM_COUNT && count > 0 ? acc[h] / count
                                                                        : acc[h];
        kv_gqa_combine(st->gqa, st->group, 1, st->head_score, 1, &score[c]);
    }
    return 1;
}

/* 4. Drops the scores of the evicted. */
static void h2o_kept(void *state, const kv_cache_view *cache, const unsigned char *keep)
{
    h2o_state *st = state;
    for (int c = 0; c < cache->n; c++)
        if (!keep[c]) {
            memset(st->acc + (size_t)cache->pos[c] * st->group, 0,
                   (size_t)st->group * sizeof *st->acc);
            st->count[cache->pos[c]] = 0;
        }
}

static void h2o_select(void *state, const kv_cache_view *cache, unsigned char *keep)
{
    h2o_state *st = state;
    /* 2. Within budget: keep all. */
    if (cache->n <= cache->budget) {
        for (int i = 0; i < cache->n; i++)
            keep[i] = 1;
        return;
    }
    /* 2-4. The r most recent, plus the B - r best by score. */
    h2o_scores(st, cache, st->score, st->fixed);
    kv_keep_scored(st->score, st->fixed, cache->pos, cache->n, cache->budget, st->cand,
                   st->scratch, keep);
    h2o_kept(st, cache, keep);
}

static int h2o_window(const kv_param_values *values, int budget)
{
    return (int)floor(values->v[P_RECENT] * (double)budget);
}

/* 4 bytes (float32) per cached token, times group_size when gqa = max; plus 4 (an int32
 * row count) when normalize = count. */
static size_t h2o_meta_bytes(const void *state, int n_cached)
{
    const h2o_state *st = state;
    size_t per_token = st->gqa == KV_GQA_MAX ? 4u * (size_t)st->group : 4u;
    if (st->normalize == NORM_COUNT)
        per_token += 4u;
    return per_token * (size_t)(n_cached > 0 ? n_cached : 0);
}

const kv_policy_ops kv_policy_h2o = {
    .name = "h2o",
    .summary = "heavy hitters: r = floor(recent*B) recent tokens + top accumulated attention",
    .citation = "Zhang et al. 2023, H2O: Heavy-Hitter Oracle, Sec. 4, Algorithm 1",
    KV_PARAM_TABLE(h2o_params),
    .bounded = 1,                  /* keeps exactly min(|A_t|, B) */
    .check = h2o_check,            /* budget >= 1 */
    .create = h2o_create,
    .observe = h2o_observe,        /* step 1 */
    .select = h2o_select,          /* steps 2-4 */
    .meta_bytes = h2o_meta_bytes,  /* 4*n (gqa=sum) or 4*group_size*n (gqa=max), +4*n
                                      with normalize=count */
    .destroy = h2o_destroy,
    .scores = h2o_scores,          /* steps 2-3 as scores */
    .kept = h2o_kept,              /* step 4's drop */
    .window = h2o_window,          /* floor(recent * B) */
};
