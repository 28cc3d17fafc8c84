/*
 * streamingllm.c - attention sinks plus a sliding window (StreamingLLM).
 *
 * Rule (README "Policies", `streamingllm`, sinks = 4), at each select over A_t:
 *   1. If |A_t| <= B, keep every position.
 *   2. Keep every position j < sinks (the attention sinks: the first tokens, which
 *      are never evicted, so once t >= sinks all of 0..sinks-1 are present).
 *   3. Keep the B - sinks most recent positions of A_t; evict the rest.
 * Requires B >= sinks (check). With |A_t| > B >= sinks the sinks and the recent part do
 * not overlap, so exactly B positions are kept (B = sinks: the sinks alone, the newest
 * token evicted at once).
 * Citation: Xiao et al. 2023, "Efficient Streaming Language Models with Attention
 * Sinks" (StreamingLLM), Sec. 3.2: sink tokens + rolling KV cache.
 * Metadata: none.
 */
#include "policies/policy.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

enum { P_SINKS };

static const kv_param_spec streamingllm_params[] = {
    [P_SINKS] = { "sinks", KV_PARAM_INT, "4", 0, 1000000, NULL,
                  "initial tokens always kept (attention sinks), in tokens; B >= sinks" },
};

typedef struct {
    int sinks;    /* positions < sinks are never evicted */
    int n_tokens; /* T, for asserting the contract */
} streamingllm_state;

static int streamingllm_check(const kv_param_values *values, int budget, char *err,
                              size_t err_len)
{
    if (kv_check_budget(budget, err, err_len) != 0)
        return 1;
    int sinks = (int)values->v[P_SINKS];
    if (budget < sinks) {
        snprintf(err, err_len, "budget %d must be at least streamingllm sinks %d (use --set "
                 "streamingllm.sinks=N with N <= %d)", budget, sinks, budget);
        return 1;
    }
    return 0;
}

static void *streamingllm_create(const kv_param_values *values, const kv_policy_ctx *ctx)
{
    streamingllm_state *st = malloc(sizeof *st);
    if (st == NULL)
        return NULL;
    st->sinks = (int)values->v[P_SINKS];
    st->n_tokens = ctx->n_tokens;
    return st;
}

static void streamingllm_observe(void *state, const kv_row *row)
{
    (void)state;
    (void)row; /* position-only rule */
}

static void streamingllm_select(void *state, const kv_cache_view *cache, unsigned char *keep)
{
    const streamingllm_state *st = state;
    int n = cache->n, b = cache->budget;
    assert(n <= st->n_tokens && b >= st->sinks);
    /* 1. Within budget: keep all. */
    if (n <= b) {
        for (int i = 0; i < n; i++)
            keep[i] = 1;
        return;
    }
    /* 2. The sinks, and 3. the last B - sinks of the ascending view. */
    int first_recent = n - (b - st->sinks);
    for (int i = 0; i < n; i++)
        keep[i] = cache->pos[i] < st->sinks || i >= first_recent;
}

static void streamingllm_destroy(void *state)
{
    free(state);
}

const kv_policy_ops kv_policy_streamingllm = {
    .name = "streamingllm",
    .summary = "attention sinks + sliding window: keep the first sinks and the B-sinks most recent",
    .citation = "Xiao et al. 2023, Efficient Streaming Language Models with Attention Sinks, Sec. 3.2",
    KV_PARAM_TABLE(streamingllm_params),
    .bounded = 1,                     /* keeps exactly min(|A_t|, B) */
    .check = streamingllm_check,      /* B >= sinks */
    .create = streamingllm_create,
    .observe = streamingllm_observe,  /* ignores rows */
    .reads_row = kv_reads_no_row, /* observe reads positions only */
    .select = streamingllm_select,    /* steps 1-3 */
    .meta_bytes = NULL,               /* no metadata */
    .destroy = streamingllm_destroy,
};
