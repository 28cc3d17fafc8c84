/*
 * lookahead.c - an offline reference: evict what the future will attend to least.
 *
 * Rule (README "Policies", `lookahead`, horizon = all). Not a realisable policy: it reads future
 * rows. Let g_i[j] = sum over the group's query heads of the full-cache attention
 * p_i^h[j] (heads in order) and, for a select at step t,
 *      f_t[j] = sum over rows i = t+1 .. min(t + horizon, T-1) of g_i[j]
 * (horizon = all: every later row). At each select - the end of prefill (t = P-1, so
 * f uses rows P .. P-1+horizon) and each decode step - over A_t:
 *   1. If |A_t| <= B keep all.
 *   2. Otherwise keep the B positions of A_t with the highest f_t[j] (ties to the more
 *      recent) and evict the rest; t itself competes (a token the future ignores is not
 *      kept). Evicted tokens never return (eviction-feasible, unlike `oracle`).
 * This is Belady's rule (evict the item needed furthest in the future) carried over
 * from hits to attention mass. Belady is optimal for hit counts; with attention mass it
 * is a strong reference, not a proven optimum: a token's worth depends on which others
 * stay, and a greedy choice can lose to a different sequence of evictions.
 * Citation: Belady 1966, "A study of replacement algorithms for a virtual-storage
 * computer" (IBM Systems Journal), the MIN rule; its attention form is ours.
 *
 * How the future is known (the engine streams every full row to prescan before the
 * layer is replayed, and the full decode row to preselect before the query attends):
 *   - horizon = all (or any horizon >= T-P, which sees the same rows): prescan keeps
 *     the column totals F[j] = sum of g_i[j] over rows i >= P; each decode step's preselect
 *     subtracts g_t[j] for the cached positions and for t, so F[j] = f_t[j] at select.
 *     O(T) memory; preselect keeps S as it is (keep = the positions currently cached).
 *   - a finite horizon: the rule reads only full rows and its own past choices, so
 *     prescan replays the rule itself, `horizon` rows behind the stream: when row i
 *     arrives, the select of step i - horizon has all the rows it needs. Prescan keeps
 *     a ring of the last horizon+1 group-summed rows and the running sums f, and
 *     records for each position the step that evicts it; select then applies those
 *     choices. O(T * horizon) memory (the ring, (horizon+1) * T doubles), freed at
 *     destroy; per row O(t * group).
 * Sums are kept exactly (kv_exact_sum): terms are added when a row enters the horizon
 * and subtracted when it leaves, and with a double the residues would rank tied
 * positions by noise instead of by recency (rule 4).
 *
 * Metadata: none reported (meta_bytes NULL): an offline reference, not a deployable cost.
 */
#include "policies/policy.h"

#include <assert.h>
#include <stdlib.h>

enum { P_HORIZON };

static const kv_param_spec lookahead_params[] = {
    [P_HORIZON] = { "horizon", KV_PARAM_INT, "all", 1, 1000000, "all",
                    "future rows whose attention ranks the cache, or all; memory O(T * horizon) when finite" },
};

typedef struct {
    int group;             /* query heads per cache */
    int n_tokens;          /* T */
    int prefill;           /* P */
    int budget;            /* B */
    int horizon;           /* rows ahead; 0 when every later row counts */
    unsigned char *in_set; /* [T] S as chosen by the last select */
    kv_exact_sum *fut;     /* [T] F (horizon = all) or f (finite), by position */
    double *g;             /* [T] one group-summed row */
    double *score;         /* [T] by view index */
    int *cand;             /* [T] */
    int *scratch;          /* [T] */
    /* finite horizon only: the replay inside prescan */
    double *ring;          /* [(horizon+1) * T]: g_i at slot i % (horizon+1) */
    int *evict_at;         /* [T] step whose select evicts j, -1 if none (yet) */
    int *sim_pos;          /* [T] the simulated cache, ascending */
    unsigned char *sim_keep; /* [T] the simulated select's choice */
    int sim_n;             /* |A| of the simulated cache */
    int next_step;         /* next step to simulate */
} lookahead_state;

static int lookahead_check(const kv_param_values *values, int budget, char *err,
                           size_t err_len)
{
    (void)values; /* any horizon works with any B >= 1 */
    return kv_check_budget(budget, err, err_len);
}

static void lookahead_destroy(void *state)
{
    lookahead_state *st = state;
    if (st == NULL)
        return;
    free(st->in_set);
    free(st->fut);
    free(st->g);
    free(st->score);
    free(st->cand);
    free(st->scratch);
    free(st->ring);
    free(st->evict_at);
    free(st->sim_pos);
    free(st->sim_keep);
    free(st);
}

static void *lookahead_create(const kv_param_values *values, const kv_policy_ctx *ctx)
{
    lookahead_state *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NULL;
    size_t t = (size_t)ctx->n_tokens;
    st->group = ctx->group_size;
    st->n_tokens = ctx->n_tokens;
    st->prefill = ctx->prefill_len;
    st->budget = ctx->budget;
    st->horizon = (int)values->v[P_HORIZON];
    if (st->horizon >= ctx->n_tokens - ctx->prefill_len)
        st->horizon = 0; /* sees every later row from the first select on: the same rule */
    st->in_set = calloc(t, 1);
    st->fut = calloc(t, sizeof *st->fut);
    st->g = malloc(t * sizeof *st->g);
    st->score = malloc(t * sizeof *st->score);
    st->cand = malloc(t * sizeof *st->cand);
    st->scratch = malloc(t * sizeof *st->scratch);
    int ok = st->in_set && st->fut && st->g && st->score && st->cand && st->scratch;
    if (ok && st->horizon > 0) {
        st->ring = malloc((size_t)(st->horizon + 1) * t * sizeof *st->ring);
        st->evict_at = malloc(t * sizeof *st->evict_at);
        st->sim_pos = malloc(t * sizeof *st->sim_pos);
        st->sim_keep = malloc(t);
        ok = st->ring && st->evict_at && st->sim_pos && st->sim_keep;
        for (size_t j = 0; ok && j < t; j++)
            st->evict_at[j] = -1;
        st->next_step = ctx->prefill_len - 1;
    }
    if (!ok) {
        lookahead_destroy(st);
        return NULL;
    }
    return st;
}

/* out[j] = g_t[j] = sum over heads (in order) of the full row, j = 0..t. */
static void group_sum(const kv_row *full, double *out)
{
    kv_gqa_combine(KV_GQA_SUM, full->n_heads, full->n, full->w, (size_t)full->n, out);
}

/* Step 2 over the view pos[0..n): keep[i] = 1 for the B best by the current sums. */
static void rank_keep(lookahead_state *st, const int *pos, int n, unsigned char *keep)
{
    for (int i = 0; i < n; i++) {
        keep[i] = 0;
        st->cand[i] = i;
        st->score[i] = kv_exact_value(&st->fut[pos[i]]);
    }
    kv_keep_top(st->score, pos, st->cand, n, st->budget, st->scratch, keep);
}

/* Finite horizon: the select of step s, replayed inside prescan on the simulated cache
 * once rows s+1 .. min(s+horizon, T-1) are in fut. */
static void simulate_step(lookahead_state *st, int s)
{
    size_t T = (size_t)st->n_tokens;
    if (s >= st->prefill) {            /* row s leaves the horizon of the live positions */
        const double *row = st->ring + (size_t)(s % (st->horizon + 1)) * T;
        for (int j = 0; j <= s; j++)
            if (st->evict_at[j] < 0)
                kv_exact_sub(&st->fut[j], row[j]);
    }
    if (s == st->prefill - 1)          /* A: the prompt, then one more token per step */
        for (int j = 0; j < st->prefill; j++)
            st->sim_pos[st->sim_n++] = j;
    else
        st->sim_pos[st->sim_n++] = s;
    if (st->sim_n <= st->budget)       /* 1. */
        return;
    rank_keep(st, st->sim_pos, st->sim_n, st->sim_keep);   /* 2. */
    int m = 0;
    for (int i = 0; i < st->sim_n; i++) {
        if (st->sim_keep[i])
            st->sim_pos[m++] = st->sim_pos[i];
        else
            st->evict_at[st->sim_pos[i]] = s;
    }
    st->sim_n = m;
}

static void lookahead_prescan(void *state, const kv_row *full)
{
    lookahead_state *st = state;
    int i = full->t;
    assert(full->n_heads == st->group && full->n == i + 1 && i < st->n_tokens);
    if (i >= st->prefill) {            /* rows before P are in no select's future */
        double *g = st->horizon > 0
                        ? st->ring + (size_t)(i % (st->horizon + 1)) * st->n_tokens
                        : st->g;
        group_sum(full, g);
        for (int j = 0; j <= i; j++)
            if (st->horizon == 0 || st->evict_at[j] < 0)
                kv_exact_add(&st->fut[j], g[j]);
    }
    if (st->horizon == 0)
        return;
    /* Finite: every step whose horizon is now complete (all of them after row T-1). */
    while (st->next_step < st->n_tokens &&
           (st->next_step + st->horizon <= i || i == st->n_tokens - 1))
        simulate_step(st, st->next_step++);
}

static void lookahead_preselect(void *state, const kv_row *full, unsigned char *keep)
{
    lookahead_state *st = state;
    int t = full->t;
    assert(full->n_heads == st->group && full->n == t + 1 && t >= st->prefill);
    /* S stays as the last select left it. */
    for (int j = 0; j < t; j++)
        keep[j] = st->in_set[j];
    if (st->horizon > 0)
        return;
    /* horizon = all: row t leaves the future of every position that can still rank. */
    group_sum(full, st->g);
    for (int j = 0; j < t; j++)
        if (st->in_set[j])
            kv_exact_sub(&st->fut[j], st->g[j]);
    kv_exact_sub(&st->fut[t], st->g[t]);
}

static void lookahead_observe(void *state, const kv_row *row)
{
    (void)state;
    (void)row; /* ranks by full-cache rows only (prescan, preselect) */
}

static void lookahead_select(void *state, const kv_cache_view *cache, unsigned char *keep)
{
    lookahead_state *st = state;
    int n = cache->n, b = cache->budget;
    assert(n <= st->n_tokens && b == st->budget);
    if (n <= b) {                                   /* 1. */
        for (int i = 0; i < n; i++)
            keep[i] = 1;
    } else if (st->horizon == 0) {                  /* 2., F = f_t now */
        rank_keep(st, cache->pos, n, keep);
    } else {                                        /* 2., as prescan chose */
        for (int i = 0; i < n; i++) {
            int at = st->evict_at[cache->pos[i]];
            assert(at < 0 || at >= cache->t);       /* the same cache as the replay */
            keep[i] = at != cache->t;
        }
    }
    for (int i = 0; i < n; i++)
        st->in_set[cache->pos[i]] = keep[i];
}

const kv_policy_ops kv_policy_lookahead = {
    .name = "lookahead",
    .summary = "offline reference: evict what the next `horizon` rows attend to least (Belady-style)",
    .citation = "Belady 1966 (MIN) carried over to attention mass: an offline reference, not a bound",
    KV_PARAM_TABLE(lookahead_params),
    .bounded = 1,                   /* keeps exactly min(|A_t|, B) */
    .check = lookahead_check,       /* budget >= 1 */
    .create = lookahead_create,
    .observe = lookahead_observe,   /* ignores observed rows */
    .select = lookahead_select,     /* steps 1-2 */
    .meta_bytes = NULL,             /* offline reference */
    .destroy = lookahead_destroy,
    .preselect = lookahead_preselect,     /* keeps S; horizon = all: row t leaves F */
    .prescan = lookahead_prescan,   /* F, or the replay of a finite horizon */
};
