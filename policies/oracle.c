/*
 * oracle.c - the per-step ceiling: attend to the B past positions that matter most now.
 *
 * Rule (README "Policies", `oracle`; not a realisable policy: it reads the full-cache row before
 * the query attends and re-admits evicted tokens). For the group's query heads H:
 *   1. Attend, at each decode step t, with the full-cache rows p_t over 0..t:
 *      c[j] = sum over h in H of p_t^h[j]; S for step t = the B past positions j < t
 *      with the highest c[j] (all of them when t <= B; ties to the more recent). The
 *      query then attends to A_t = S u {t}.
 *   2. Select (the engine's step 3, after the row is observed): keep the B positions of
 *      A_t with the highest c[j] (at t = P-1: c is the group sum of the prompt's last
 *      row p_{P-1}, which observe receives in full). At a decode step this only decides
 *      what the lifetimes and the final retention report: the next preselect replaces S.
 *
 * Why this is the ceiling. The group's summed recall at step t is
 *      sum over h in H of sum over j in A_t of p_t^h[j]
 *    = sum over h in H of p_t^h[t]  +  sum over j in S of c[j],
 * a constant plus a modular (additive) function of S with non-negative weights c[j].
 * Among sets of at most B past positions that sum is largest for the B largest weights:
 * if S missed one of them for a smaller one, swapping the two would not lower the sum.
 * So at every step, for every layer and KV head, no policy that holds at most B past
 * tokens (whatever it did before) reaches a higher summed recall over the group, and the
 * step recall (the mean over every head of every layer) of such a policy is at most the
 * oracle's. It is not a bound for a single head (another set may suit one head better),
 * nor for policies holding more than B (full, snapkv with decode = none, morphkv with
 * evict_every > 1, snapkv recompress with interval > 1 between recompressions), nor for
 * kv_granularity = query_head runs compared with a kv_head oracle (run the oracle with
 * query_head too: it is then each head's own ceiling).
 * Citation: exact top-k attention, the upper reference of KV-cache and sparse-attention
 * studies; this file is its budgeted, per-KV-group form (ours).
 *
 * Metadata: none reported (meta_bytes NULL): an offline ceiling, not a deployable cost.
 * State: c by position, [T] doubles; preselect is O(t * group), select O(n).
 */
#include "policies/policy.h"

#include <assert.h>
#include <stdlib.h>

typedef struct {
    int group;          /* query heads per cache */
    int n_tokens;       /* T */
    int budget;         /* B */
    double *c;          /* [T] group-summed full-cache row of the current step */
    double *score;      /* [T] by view index */
    int *cand;          /* [T] */
    int *scratch;       /* [T] */
} oracle_state;

static int oracle_check(const kv_param_values *values, int budget, char *err,
                        size_t err_len)
{
    (void)values; /* no parameters */
    return kv_check_budget(budget, err, err_len);
}

static void oracle_destroy(void *state)
{
    oracle_state *st = state;
    if (st == NULL)
        return;
    free(st->c);
    free(st->score);
    free(st->cand);
    free(st->scratch);
    free(st);
}

static void *oracle_create(const kv_param_values *values, const kv_policy_ctx *ctx)
{
    (void)values;
    oracle_state *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NULL;
    size_t t = (size_t)ctx->n_tokens;
    st->group = ctx->group_size;
    st->n_tokens = ctx->n_tokens;
    st->budget = ctx->budget;
    st->c = calloc(t, sizeof *st->c);
    st->score = malloc(t * sizeof *st->score);
    st->cand = malloc(t * sizeof *st->cand);
    st->scratch = malloc(t * sizeof *st->scratch);
    if (st->c == NULL || st->score == NULL || st->cand == NULL || st->scratch == NULL) {
        oracle_destroy(st);
        return NULL;
    }
    return st;
}

/* c[pos[i]] = sum over the group's heads of w_h[i], heads in order (score is scratch). */
static void group_sum(oracle_state *st, const kv_row *row)
{
    kv_gqa_combine(KV_GQA_SUM, row->n_heads, row->n, row->w, (size_t)row->n, st->score);
    for (int i = 0; i < row->n; i++)
        st->c[row->pos[i]] = st->score[i];
}

static void oracle_observe(void *state, const kv_row *row)
{
    oracle_state *st = state;
    assert(row->n_heads == st->group);
    /* 2. The prompt's last row is p itself; decode rows are o, and preselect already filed
     * the full row p_t, which is what the ranking uses. */
    if (row->is_prefill)
        group_sum(st, row);
}

static void oracle_preselect(void *state, const kv_row *full, unsigned char *keep)
{
    oracle_state *st = state;
    int t = full->t;
    assert(full->n_heads == st->group && full->n == t + 1 && t < st->n_tokens);
    /* 1. c from the full row; the B best past positions (positions = view indices). */
    group_sum(st, full);
    kv_keep_top_by_position(st->c, full->pos, t, st->budget, st->score, st->cand, st->scratch,
                            keep);
}

static void oracle_select(void *state, const kv_cache_view *cache, unsigned char *keep)
{
    oracle_state *st = state;
    assert(cache->n <= st->n_tokens && cache->budget >= 1);
    /* 2. Within budget keep all, else the B best of A_t by the current step's c. */
    kv_keep_top_by_position(st->c, cache->pos, cache->n, cache->budget, st->score, st->cand,
                            st->scratch, keep);
}

const kv_policy_ops kv_policy_oracle = {
    .name = "oracle",
    .summary = "per-step ceiling: attend to the B past tokens of highest full-cache attention (offline)",
    .citation = "exact top-k attention (the usual upper reference), budgeted per KV group",
    .bounded = 1,                 /* |S| <= B after preselect and after select */
    .per_step_ceiling = 1,        /* oracle_recall_mean sets every run against it */
    .check = oracle_check,        /* budget >= 1 */
    .create = oracle_create,
    .observe = oracle_observe,    /* step 2's row at the prompt end */
    .select = oracle_select,      /* step 2 */
    .meta_bytes = NULL,           /* offline ceiling */
    .destroy = oracle_destroy,
    .preselect = oracle_preselect,      /* step 1 */
};
