/*
 * random.c - a uniformly random subset: the floor any scoring rule should clear.
 *
 * Rule (README "Policies", `random`, seed = 0), at each select over A_t (the prompt at t = P-1,
 * S u {t} at decode steps):
 *   1. If |A_t| <= B keep all.
 *   2. Otherwise keep the current token t and a uniformly random (B-1)-subset of
 *      A_t \ {t} (every subset equally likely, independent of the rows and of earlier
 *      draws: gsl_ran_choose), and evict the rest.
 * Randomness: one GSL mt19937 generator per cache, seeded once with ctx->seed XOR seed.
 * The engine derives ctx->seed from the run's base seed (`seed` of [experiment]), the
 * run, the layer and the cache, so a replay is reproducible, every cache draws its own
 * stream, and another `seed` gives other sets.
 * Citation: random eviction, the usual lower baseline of KV-cache eviction studies (no
 * single source).
 *
 * Metadata: none (meta_bytes NULL). State: the generator and O(T) scratch.
 */
#include "policies/policy.h"

#include <assert.h>
#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>
#include <stdlib.h>

enum { P_SEED };

static const kv_param_spec random_params[] = {
    [P_SEED] = { "seed", KV_PARAM_INT, "0", 0, 4294967295.0, NULL,
                 "XORed into the engine's per-cache seed; another value draws other sets" },
};

typedef struct {
    gsl_rng *rng;
    int n_tokens;   /* T */
    int *src;       /* [T] view indices 0 .. n-2 (A_t \ {t}) */
    int *chosen;    /* [T] the drawn subset */
} random_state;

static int random_check(const kv_param_values *values, int budget, char *err,
                        size_t err_len)
{
    (void)values; /* any seed works with any B >= 1 */
    return kv_check_budget(budget, err, err_len);
}

static void random_destroy(void *state)
{
    random_state *st = state;
    if (st == NULL)
        return;
    if (st->rng != NULL)
        gsl_rng_free(st->rng);
    free(st->src);
    free(st->chosen);
    free(st);
}

static void *random_create(const kv_param_values *values, const kv_policy_ctx *ctx)
{
    random_state *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NULL;
    st->n_tokens = ctx->n_tokens;
    st->rng = gsl_rng_alloc(gsl_rng_mt19937);
    st->src = malloc((size_t)ctx->n_tokens * sizeof *st->src);
    st->chosen = malloc((size_t)ctx->n_tokens * sizeof *st->chosen);
    if (st->rng == NULL || st->src == NULL || st->chosen == NULL) {
        random_destroy(st);
        return NULL;
    }
    gsl_rng_set(st->rng, ctx->seed ^ (unsigned long)values->v[P_SEED]);
    return st;
}

static void random_observe(void *state, const kv_row *row)
{
    (void)state;
    (void)row; /* the rows do not matter */
}

static void random_select(void *state, const kv_cache_view *cache, unsigned char *keep)
{
    random_state *st = state;
    int n = cache->n, b = cache->budget;
    assert(n <= st->n_tokens && b >= 1 && cache->pos[n - 1] == cache->t);
    /* 1. Within budget: keep all. */
    if (n <= b) {
        for (int i = 0; i < n; i++)
            keep[i] = 1;
        return;
    }
    /* 2. t, plus B-1 of the n-1 others drawn uniformly. */
    for (int i = 0; i < n; i++)
        keep[i] = i == n - 1;
    if (b == 1)
        return;
    for (int i = 0; i < n - 1; i++)
        st->src[i] = i;
    gsl_ran_choose(st->rng, st->chosen, (size_t)(b - 1), st->src, (size_t)(n - 1),
                   sizeof *st->src);
    for (int k = 0; k < b - 1; k++)
        keep[st->chosen[k]] = 1;
}

const kv_policy_ops kv_policy_random = {
    .name = "random",
    .summary = "keep the current token and a uniformly random B-1 of the others (seeded)",
    .citation = "random eviction, the usual lower baseline of KV-cache eviction studies",
    KV_PARAM_TABLE(random_params),
    .bounded = 1,                /* keeps exactly min(|A_t|, B) */
    .check = random_check,       /* budget >= 1 */
    .create = random_create,
    .observe = random_observe,   /* ignores rows */
    .reads_row = kv_reads_no_row, /* observe reads positions only */
    .select = random_select,     /* steps 1-2 */
    .meta_bytes = NULL,          /* no metadata */
    .destroy = random_destroy,
};
