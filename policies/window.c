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

static void window_select(void *state, const kv_cache_view *cache, unsigned char *keep)
{
    (void)state;
    int n = cache->n, b = cache->budget;
    /* 1. Within budget: keep all. 2. Otherwise the last B of the ascending view. */
    int first_kept = n <= b ? 0 : n - b;
    for (int i = 0; i < n; i++)
        keep[i] = i >= first_kept;
}

const kv_policy_ops kv_policy_window = {
    .name = "window",
    .summary = "sliding window: keep the B most recent tokens",
    .citation = "sliding-window attention (Beltagy et al. 2020); baseline of Xiao et al. 2023",
    .bounded = 1,                      /* keeps exactly min(|A_t|, B) */
    .create = kv_stateless_create,     /* recency needs no state */
    .observe = kv_observe_nothing,     /* ... and no scores */
    .reads_row = kv_reads_no_row,
    .select = window_select,           /* steps 1-2 */
    .destroy = kv_stateless_destroy,
};
