/*
 * window.c - sliding window: keep the B most recent positions.
 *
 * Rule (README "Policies", `window`), at each select over A_t (ascending positions):
 *   1. If |A_t| <= B, keep every position.
 *   2. Otherwise keep the B most recent positions of A_t (the last B of the view) and
 *      evict the rest.
 * Citation: local sliding-window attention (Beltagy et al. 2020, Longformer), the
 * "window attention" baseline of Xiao et al. 2023 (Fig. 1b).
 * Metadata: none (the window is implied by the positions).
 */
#include "policies/policy.h"

#include <assert.h>
#include <stdlib.h>

typedef struct {
    int n_tokens; /* T, for asserting the contract */
} window_state;

static void *window_create(const kv_param_values *values, const kv_policy_ctx *ctx)
{
    (void)values;
    window_state *st = malloc(sizeof *st);
    if (st != NULL)
        st->n_tokens = ctx->n_tokens;
    return st;
}

static void window_observe(void *state, const kv_row *row)
{
    (void)state;
    (void)row; /* recency needs no scores */
}

static void window_select(void *state, const kv_cache_view *cache, unsigned char *keep)
{
    const window_state *st = state;
    assert(cache->n <= st->n_tokens && cache->budget >= 1);
    (void)st;
    int n = cache->n, b = cache->budget;
    /* 1. Within budget: keep all. 2. Otherwise the last B of the ascending view. */
    int first_kept = n <= b ? 0 : n - b;
    for (int i = 0; i < n; i++)
        keep[i] = i >= first_kept;
}

static int window_check(const kv_param_values *values, int budget, char *err,
                        size_t err_len)
{
    (void)values;
    return kv_check_budget(budget, err, err_len);
}

static void window_destroy(void *state)
{
    free(state);
}

const kv_policy_ops kv_policy_window = {
    .name = "window",
    .summary = "sliding window: keep the B most recent tokens",
    .citation = "sliding-window attention (Beltagy et al. 2020); baseline of Xiao et al. 2023",
    .params = NULL,             /* no parameters */
    .n_params = 0,
    .bounded = 1,               /* keeps exactly min(|A_t|, B) */
    .check = window_check,      /* budget >= 1 */
    .create = window_create,
    .observe = window_observe,  /* ignores rows */
    .reads_row = kv_reads_no_row, /* observe reads positions only */
    .select = window_select,    /* steps 1-2 */
    .meta_bytes = NULL,         /* no metadata */
    .destroy = window_destroy,
};
