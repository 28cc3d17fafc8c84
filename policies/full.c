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

static void full_select(void *state, const kv_cache_view *cache, unsigned char *keep)
{
    (void)state;
    /* 1. Keep every position. */
    for (int i = 0; i < cache->n; i++)
        keep[i] = 1;
}

const kv_policy_ops kv_policy_full = {
    .name = "full",
    .summary = "full-cache reference: never evicts (recall 1, memory grows)",
    .citation = "uncompressed KV cache (Vaswani et al. 2017); the reference",
    .bounded = 0,                      /* keeps every token: |S| = t after step t */
    .create = kv_stateless_create,     /* nothing to remember */
    .observe = kv_observe_nothing,     /* nothing to learn: the rule keeps everything */
    .reads_row = kv_reads_no_row,
    .select = full_select,             /* keeps all of A_t */
    .destroy = kv_stateless_destroy,
};
