/*
 * full.c - the full-cache reference: never evicts.
 *
 * Rule (README "Policies", `full`), at every select over A_t:
 *   1. Keep every position of A_t.
 * Consequence: recall 1.0 (within the trace's rounding) and memory that grows by one
 * token per step. It is the upper bound the other policies are measured against.
 * Citation: the uncompressed KV cache of autoregressive decoding (Vaswani et al. 2017).
 * Metadata: none.
 */
#include "policies/policy.h"

#include <assert.h>
#include <stdlib.h>

typedef struct {
    int n_tokens; /* T, for asserting the contract */
} full_state;

static void *full_create(const kv_param_values *values, const kv_policy_ctx *ctx)
{
    (void)values;
    full_state *st = malloc(sizeof *st);
    if (st != NULL)
        st->n_tokens = ctx->n_tokens;
    return st;
}

static void full_observe(void *state, const kv_row *row)
{
    (void)state;
    (void)row; /* nothing to learn: the rule keeps everything */
}

static void full_select(void *state, const kv_cache_view *cache, unsigned char *keep)
{
    const full_state *st = state;
    assert(cache->n <= st->n_tokens);
    (void)st;
    /* 1. Keep every position. */
    for (int i = 0; i < cache->n; i++)
        keep[i] = 1;
}

static int full_check(const kv_param_values *values, int budget, char *err, size_t err_len)
{
    (void)values;
    return kv_check_budget(budget, err, err_len);
}

static void full_destroy(void *state)
{
    free(state);
}

const kv_policy_ops kv_policy_full = {
    .name = "full",
    .summary = "full-cache reference: never evicts (recall 1, memory grows)",
    .citation = "uncompressed KV cache (Vaswani et al. 2017); the reference",
    .params = NULL,             /* no parameters */
    .n_params = 0,
    .bounded = 0,               /* keeps every token: |S| = t after step t */
    .check = full_check,        /* budget >= 1 only (the budget is not used) */
    .create = full_create,
    .observe = full_observe,    /* ignores rows */
    .reads_row = kv_reads_no_row, /* observe reads positions only */
    .select = full_select,      /* keeps all of A_t */
    .meta_bytes = NULL,         /* no metadata */
    .destroy = full_destroy,
};
