/*
 * morphkv.c - MorphKV: a recent window plus the older tokens the window attends to.
 *
 * Rule (README "Policies", `morphkv`, window = 32, fusion = sum, gqa = sum, evict_every =
 * 1), run at each select: at the end of prefill (t = P-1, A = {0..P-1}) and after each
 * decode row t (A = S u {t}):
 *   1. Observe: remember the row (per query head, its values on its positions); only
 *      the last `window` observed rows are ever used.
 *   2. If |A| <= B keep all. At a decode step with evict_every = N > 1, keep all unless
 *      t - P + 1 is a multiple of N: S then grows by one token per step and is cut back
 *      to B every N-th step (at most B + N - 1 held, max_held); the prompt is always
 *      compressed at t = P-1. Otherwise W = the `window` most recent positions of A and
 *      O = A \ W.
 *   3. For each of the last `window` observed rows t' (fewer if fewer exist; prefill
 *      rows, which are p itself, included when t is near P) and each query head h:
 *      d = sum over i in O of o_t'[i], and o^_t'[j] = o_t'[j] / d for j in O (0 when
 *      d = 0, README rule 6). Every j in O was cached at every one of those rows (W is
 *      always kept, so O lies before all of them and was never evicted), so each stored
 *      row has a value for it.
 *   4. Combine o^_t' over the query heads of the group (gqa): sum, max, or logit:
 *      the sum over heads of log(max(o^, 2^-149)), a geometric mean (as the official
 *      code combines Llama's GQA groups; log o^ is the head's logit up to a constant
 *      per row and head). The floor 2^-149, the smallest positive float32, stands for a
 *      value that underflowed to 0 (a float16 or float32 row): it ranks below every
 *      stored non-zero value (log 2^-149 = -103.3) instead of at minus infinity.
 *   5. Fuse the combined rows over t' (fusion: sum or max).
 *   6. Keep the B - window positions of O with the highest fused score (ties to the
 *      more recent) plus all of W; evict the rest.
 * Requires B > window.
 * Citation: Ghadia et al. 2025, arXiv 2503.00979 (MorphKV), Algorithm 1, with the
 * paper's recent window R = window and cache size C + R = B; evict_every is the
 * paper's ablation of eviction frequency.
 *
 * Metadata (meta_bytes): the attention profile of the window rows, one float32 per
 * stored row, query head and cached token:
 *   min(window, rows observed so far) * group_size * n * 4 bytes.
 *
 * State: a ring of the last min(window, T) rows, each a compact copy (positions and
 * [group][n] values; a row's n is at most max(P, B + evict_every)), and a
 * position-indexed map from positions to view indices of O. The normaliser d of step 3
 * is not summed again at every select: per stored row and head the policy keeps the
 * running sums pre[k] = the sum of the row's values on O over its first k+1 entries,
 * left to right, so d = pre[n-1] is bit for bit the sum of step 3 (in ascending
 * position order). O changes by one position per observed row (the one that leaves W:
 * A's entry just before its last `window`, which lies after every other position of O)
 * and loses the evicted positions; a change at row entry k (found by binary search)
 * only invalidates pre[k..], which the next select re-adds. So the joining position
 * costs the row's few entries after it (W), and an eviction the entries after the
 * evicted one, instead of the whole row (evictions fall anywhere in O: on generated
 * traces about 60% of a row is re-added). A d kept by adding and subtracting would be
 * O(1) but not the same number (rounding), and the rankings must not change. A select
 * costs O(window * group * n) for the scores of steps 3-5 plus the re-added suffixes.
 */
#include "policies/policy.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { P_WINDOW, P_FUSION, P_GQA, P_EVICT_EVERY };
enum { FUSE_SUM = 0, FUSE_MAX = 1 };
enum { GQA_SUM = KV_GQA_SUM, GQA_MAX = KV_GQA_MAX, GQA_LOGIT = 2 };

#define LOGIT_FLOOR 0x1p-149 /* step 4: log of a zero is taken at the smallest float32 */

static const kv_param_spec morphkv_params[] = {
    [P_WINDOW] = { "window", KV_PARAM_INT, "32", 1, 1000000, NULL,
                   "recent window kept and whose attention ranks the rest, in tokens (R); B > window" },
    [P_FUSION] = { "fusion", KV_PARAM_CHOICE, "sum", 0, 0, "sum|max",
                   "fusion of the window rows' normalised attention: sum or max" },
    [P_GQA] = { "gqa", KV_PARAM_CHOICE, "sum", 0, 0, "sum|max|logit",
                "combine the query heads sharing a KV head: sum, max, or logit (sum of logs)" },
    [P_EVICT_EVERY] = { "evict_every", KV_PARAM_INT, "1", 1, 1000000, NULL,
                        "evict every N-th decode step only; S grows up to B+N-1 in between" },
};

typedef struct {
    int window, fusion, gqa, evict_every;
    int group;          /* query heads per cache */
    int n_tokens;       /* T */
    int prefill;        /* P */
    int n_slots;        /* ring capacity, min(window, T) rows */
    int slot_cap;       /* positions per stored row, min(T, max(P, B + evict_every)) */
    int next;           /* ring slot the next stored row goes to */
    int n_stored;       /* rows in the ring, <= n_slots */
    long n_observed;    /* rows observed so far (for meta_bytes) */
    int *row_n;         /* [n_slots] positions in each stored row */
    int *row_pos;       /* [n_slots][slot_cap] */
    double *row_w;      /* [n_slots][group][slot_cap] */
    double *row_pre;    /* [n_slots][group][slot_cap] running sums over O (state) */
    int *row_valid;     /* [n_slots] entries of row_pre still valid */
    unsigned char *in_o;/* [T] 1 for the positions of the current O */
    int *o_index;       /* [T]: view index of a position in O during a select, else -1 */
    double *o_hat;      /* [group][T] per-head normalised row on O (step 3) */
    double *row_comb;   /* [T] combined over the group (step 4) */
    double *score;      /* [T] fused score by view index (step 5) */
    int *cand;          /* [T] */
    int *scratch;       /* [T] */
} morphkv_state;

static int morphkv_check(const kv_param_values *values, int budget, char *err,
                         size_t err_len)
{
    if (kv_check_budget(budget, err, err_len) != 0)
        return 1;
    int window = (int)values->v[P_WINDOW];
    if (budget <= window) {
        snprintf(err, err_len, "budget %d must exceed morphkv window %d", budget, window);
        return 1;
    }
    return 0;
}

/* Step 2: B + evict_every - 1 (B with the default evict_every = 1). */
static int morphkv_max_held(const kv_param_values *values, int budget)
{
    return budget + (int)values->v[P_EVICT_EVERY] - 1;
}

static void morphkv_destroy(void *state)
{
    morphkv_state *st = state;
    if (st == NULL)
        return;
    free(st->row_n);
    free(st->row_pos);
    free(st->row_w);
    free(st->row_pre);
    free(st->row_valid);
    free(st->in_o);
    free(st->o_index);
    free(st->o_hat);
    free(st->row_comb);
    free(st->score);
    free(st->cand);
    free(st->scratch);
    free(st);
}

static void *morphkv_create(const kv_param_values *values, const kv_policy_ctx *ctx)
{
    morphkv_state *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NULL;
    st->window = (int)values->v[P_WINDOW];
    st->fusion = (int)values->v[P_FUSION];
    st->gqa = (int)values->v[P_GQA];
    st->evict_every = (int)values->v[P_EVICT_EVERY];
    st->group = ctx->group_size;
    st->n_tokens = ctx->n_tokens;
    st->prefill = ctx->prefill_len;
    st->n_slots = st->window < ctx->n_tokens ? st->window : ctx->n_tokens;
    long widest = (long)ctx->budget + st->evict_every;
    if (ctx->prefill_len > widest)
        widest = ctx->prefill_len;
    st->slot_cap = widest < ctx->n_tokens ? (int)widest : ctx->n_tokens;
    size_t slots = (size_t)st->n_slots, cap = (size_t)st->slot_cap;
    size_t t = (size_t)ctx->n_tokens, g = (size_t)st->group;
    st->row_n = calloc(slots, sizeof *st->row_n);
    st->row_pos = malloc(slots * cap * sizeof *st->row_pos);
    st->row_w = malloc(slots * g * cap * sizeof *st->row_w);
    st->row_pre = malloc(slots * g * cap * sizeof *st->row_pre);
    st->row_valid = calloc(slots, sizeof *st->row_valid);
    st->in_o = calloc(t, 1);
    st->o_index = malloc(t * sizeof *st->o_index);
    st->o_hat = malloc(g * t * sizeof *st->o_hat);
    st->row_comb = malloc(t * sizeof *st->row_comb);
    st->score = malloc(t * sizeof *st->score);
    st->cand = malloc(t * sizeof *st->cand);
    st->scratch = malloc(t * sizeof *st->scratch);
    if (st->row_n == NULL || st->row_pos == NULL || st->row_w == NULL ||
        st->row_pre == NULL || st->row_valid == NULL || st->in_o == NULL || st->o_index == NULL ||
        st->o_hat == NULL || st->row_comb == NULL || st->score == NULL ||
        st->cand == NULL || st->scratch == NULL) {
        morphkv_destroy(st);
        return NULL;
    }
    for (size_t i = 0; i < t; i++)
        st->o_index[i] = -1;
    return st;
}

/* Ring slot of the r-th stored row, oldest first. */
static int slot_of(const morphkv_state *st, int r)
{
    return (st->next - st->n_stored + r + st->n_slots) % st->n_slots;
}

/* Index of position j in the stored row of slot s (ascending positions), or -1. */
static int find_in_row(const morphkv_state *st, int s, int j)
{
    const int *pos = st->row_pos + (size_t)s * st->slot_cap;
    int lo = 0, hi = st->row_n[s] - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        if (pos[mid] == j)
            return mid;
        if (pos[mid] < j)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

/* Position j joined or left O: the running sums of every stored row are invalid from
 * j's entry on. */
static void o_changed(morphkv_state *st, int j)
{
    for (int r = 0; r < st->n_stored; r++) {
        int s = slot_of(st, r), k = find_in_row(st, s, j);
        assert(k >= 0); /* every position of O is in every stored row (step 3) */
        if (k < st->row_valid[s])
            st->row_valid[s] = k;
    }
}

/* 3. d of the stored row in slot s and head h over the current O: the running sum,
 * re-added from the first invalid entry. */
static double row_d(morphkv_state *st, int s, int h)
{
    size_t base = ((size_t)s * st->group + h) * st->slot_cap;
    const int *pos = st->row_pos + (size_t)s * st->slot_cap;
    const double *w = st->row_w + base;
    double *pre = st->row_pre + base;
    int n = st->row_n[s], k = st->row_valid[s];
    double d = k > 0 ? pre[k - 1] : 0.0;
    for (; k < n; k++) {
        if (st->in_o[pos[k]])
            d += w[k];
        pre[k] = d;
    }
    return d;
}

static void morphkv_observe(void *state, const kv_row *row)
{
    morphkv_state *st = state;
    assert(row->n_heads == st->group);
    st->n_observed++;
    /* 1. A prefill row older than the last `window` prompt rows is never among the
     * last `window` rows at a select (the first is at t = P-1): no copy. */
    int store = !(row->is_prefill && row->t < st->prefill - st->window);
    if (store && st->n_stored == st->n_slots)
        st->n_stored--; /* the oldest row is replaced below: no need to update it */
    /* O gains the position that just left W (A's entry before its last `window`). */
    if (row->n > st->window) {
        int e = row->pos[row->n - st->window - 1];
        assert(!st->in_o[e]);
        st->in_o[e] = 1;
        o_changed(st, e);
    }
    if (!store)
        return;
    assert(row->n <= st->slot_cap);
    int s = st->next, cap = st->slot_cap, n = row->n;
    st->row_n[s] = n;
    memcpy(st->row_pos + (size_t)s * cap, row->pos, (size_t)n * sizeof *row->pos);
    for (int h = 0; h < st->group; h++)
        memcpy(st->row_w + ((size_t)s * st->group + h) * cap, row->w + (size_t)h * n,
               (size_t)n * sizeof *row->w);
    st->row_valid[s] = 0; /* its running sums are added at the next select */
    st->next = (s + 1) % st->n_slots;
    if (st->n_stored < st->n_slots)
        st->n_stored++;
}

/* 3-4. The stored row in slot s, normalised per head over O by its d and combined over
 * the group, into row_comb[0..n_o) (view indices of O). */
static void combine_row(morphkv_state *st, int s, int n_o)
{
    int cap = st->slot_cap, n = st->row_n[s];
    const int *pos = st->row_pos + (size_t)s * cap;
    for (int h = 0; h < st->group; h++) {
        const double *w = st->row_w + ((size_t)s * st->group + h) * cap;
        double *o_hat = st->o_hat + (size_t)h * n_o;
        double d = row_d(st, s, h);
        memset(o_hat, 0, (size_t)n_o * sizeof *o_hat);
        if (d > 0.0)
            for (int k = 0; k < n; k++)
                if (st->o_index[pos[k]] >= 0)
                    o_hat[st->o_index[pos[k]]] = w[k] / d;
    }
    st->row_valid[s] = n; /* every head's running sums are re-added now */
    if (st->gqa != GQA_LOGIT) {
        kv_gqa_combine((kv_gqa_mode)st->gqa, st->group, n_o, st->o_hat, (size_t)n_o,
                       st->row_comb);
        return;
    }
    for (int i = 0; i < n_o; i++) { /* 4. logit: sum of logs, heads in order */
        double acc = 0.0;
        for (int h = 0; h < st->group; h++) {
            double v = st->o_hat[(size_t)h * n_o + i];
            acc += log(v > LOGIT_FLOOR ? v : LOGIT_FLOOR);
        }
        st->row_comb[i] = acc;
    }
}

/* 2. Whether this select evicts: always at the prompt end, at decode steps every
 * evict_every-th step. */
static int evicts_now(const morphkv_state *st, const kv_cache_view *cache)
{
    if (cache->is_prefill_end || st->evict_every == 1)
        return 1;
    return (cache->t - st->prefill + 1) % st->evict_every == 0;
}

/* After an eviction: the evicted leave O. */
static void drop_from_o(morphkv_state *st, const kv_cache_view *cache, int n_o,
                        const unsigned char *keep)
{
    for (int i = 0; i < n_o; i++)
        if (!keep[i]) {
            st->in_o[cache->pos[i]] = 0;
            o_changed(st, cache->pos[i]);
        }
}

static void morphkv_select(void *state, const kv_cache_view *cache, unsigned char *keep)
{
    morphkv_state *st = state;
    int n = cache->n, b = cache->budget;
    assert(n <= st->n_tokens && b > st->window && st->n_stored > 0);
    /* 2. Within budget, or not an eviction step: keep all. Otherwise O = view[0, n_o),
     * W = view[n_o, n). */
    if (n <= b || !evicts_now(st, cache)) {
        for (int i = 0; i < n; i++)
            keep[i] = 1;
        return;
    }
    int n_o = n - st->window;
    for (int i = 0; i < n_o; i++) {
        assert(st->in_o[cache->pos[i]]);
        st->o_index[cache->pos[i]] = i;
        st->score[i] = st->fusion == FUSE_MAX ? -INFINITY : 0.0;
        st->cand[i] = i;
    }
    /* 3-5. Oldest stored row first. */
    for (int r = 0; r < st->n_stored; r++) {
        combine_row(st, slot_of(st, r), n_o);
        for (int i = 0; i < n_o; i++) {
            if (st->fusion == FUSE_MAX)
                st->score[i] = st->row_comb[i] > st->score[i] ? st->row_comb[i] : st->score[i];
            else
                st->score[i] += st->row_comb[i];
        }
    }
    for (int i = 0; i < n_o; i++)
        st->o_index[cache->pos[i]] = -1;
    /* 6. W, plus the best B - window of O. */
    for (int i = 0; i < n; i++)
        keep[i] = i >= n_o;
    kv_keep_top(st->score, cache->pos, st->cand, n_o, b - st->window, st->scratch, keep);
    drop_from_o(st, cache, n_o, keep);
}

/* min(window, rows observed) * group_size * n * 4 bytes (float32 profile). */
static size_t morphkv_meta_bytes(const void *state, int n_cached)
{
    const morphkv_state *st = state;
    long rows = st->n_observed < st->window ? st->n_observed : st->window;
    return (size_t)rows * (size_t)st->group * (size_t)(n_cached > 0 ? n_cached : 0) * 4u;
}

const kv_policy_ops kv_policy_morphkv = {
    .name = "morphkv",
    .summary = "recent window + older tokens ranked by the window's normalised attention",
    .citation = "Ghadia et al. 2025, arXiv 2503.00979 (MorphKV), Algorithm 1",
    .params = morphkv_params,
    .n_params = 4,
    .bounded = 1,                      /* keeps exactly min(|A|, B) (evict_every = 1) */
    .check = morphkv_check,            /* B > window */
    .create = morphkv_create,
    .observe = morphkv_observe,        /* step 1 */
    .select = morphkv_select,          /* steps 2-6 */
    .meta_bytes = morphkv_meta_bytes,  /* min(window, rows) * group_size * n * 4 */
    .destroy = morphkv_destroy,
    .max_held = morphkv_max_held,      /* B + evict_every - 1 */
};
