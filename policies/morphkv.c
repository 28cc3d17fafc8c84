/*
 * morphkv.c - MorphKV: a recent window plus the older tokens the window attends to.
 *
 * Rule (README "Policies", `morphkv`, window = 32, fusion = sum, gqa = sum), run at each
 * select: at the end of prefill (t = P-1, A = {0..P-1}) and after each decode row t
 * (A = S u {t}):
 *   1. Observe: remember the row (per query head, its values on its positions); only
 *      the last `window` observed rows are ever used.
 *   2. If |A| <= B keep all. Otherwise W = the `window` most recent positions of A and
 *      O = A \ W.
 *   3. For each of the last `window` observed rows t' (fewer if fewer exist; prefill
 *      rows, which are p itself, included when t is near P) and each query head h:
 *      d = sum over i in O of o_t'[i], and o^_t'[j] = o_t'[j] / d for j in O (0 when
 *      d = 0, README rule 6). Every j in O was cached at every one of those rows (W is
 *      always kept, so O lies before all of them and was never evicted), so each stored
 *      row has a value for it.
 *   4. Combine o^_t' over the query heads of the group (gqa: sum or max).
 *   5. Fuse the combined rows over t' (fusion: sum or max).
 *   6. Keep the B - window positions of O with the highest fused score (ties to the
 *      more recent) plus all of W; evict the rest.
 * Requires B > window.
 * Citation: Ghadia et al. 2025, arXiv 2503.00979 (MorphKV), Algorithm 1, with the
 * paper's recent window R = window and cache size C + R = B.
 *
 * Metadata (meta_bytes): the attention profile of the window rows, one float32 per
 * stored row, query head and cached token:
 *   min(window, rows observed so far) * group_size * n * 4 bytes.
 *
 * State: a ring of the last min(window, T) rows, each a compact copy (positions and
 * [group][n] values; a row's n is at most max(P, B + 1)), and a position-indexed map
 * from positions to view indices of O, so a select costs O(window * group * (B + n)).
 */
#include "policies/policy.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { P_WINDOW, P_FUSION, P_GQA };
enum { FUSE_SUM = 0, FUSE_MAX = 1 };

static const kv_param_spec morphkv_params[] = {
    [P_WINDOW] = { "window", KV_PARAM_INT, "32", 1, 1000000, NULL,
                   "recent window kept and whose attention ranks the rest, in tokens (R); B > window" },
    [P_FUSION] = { "fusion", KV_PARAM_CHOICE, "sum", 0, 0, "sum|max",
                   "fusion of the window rows' normalised attention: sum or max" },
    [P_GQA] = KV_PARAM_GQA,
};

typedef struct {
    int window, fusion;
    kv_gqa_mode gqa;
    int group;          /* query heads per cache */
    int n_tokens;       /* T */
    int prefill;        /* P */
    int n_slots;        /* ring capacity, min(window, T) rows */
    int slot_cap;       /* positions per stored row, min(T, max(P, B + 1)) */
    int next;           /* ring slot the next stored row goes to */
    int n_stored;       /* rows in the ring, <= n_slots */
    long n_observed;    /* rows observed so far (for meta_bytes) */
    int *row_n;         /* [n_slots] positions in each stored row */
    int *row_pos;       /* [n_slots][slot_cap] */
    double *row_w;      /* [n_slots][group][slot_cap] */
    int *o_index;       /* [T]: view index of a position in O, else -1 */
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

static void morphkv_destroy(void *state)
{
    morphkv_state *st = state;
    if (st == NULL)
        return;
    free(st->row_n);
    free(st->row_pos);
    free(st->row_w);
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
    st->gqa = (kv_gqa_mode)(int)values->v[P_GQA];
    st->group = ctx->group_size;
    st->n_tokens = ctx->n_tokens;
    st->prefill = ctx->prefill_len;
    st->n_slots = st->window < ctx->n_tokens ? st->window : ctx->n_tokens;
    long widest = ctx->prefill_len > (long)ctx->budget + 1 ? ctx->prefill_len
                                                            : (long)ctx->budget + 1;
    st->slot_cap = widest < ctx->n_tokens ? (int)widest : ctx->n_tokens;
    size_t slots = (size_t)st->n_slots, cap = (size_t)st->slot_cap;
    size_t t = (size_t)ctx->n_tokens, g = (size_t)st->group;
    st->row_n = calloc(slots, sizeof *st->row_n);
    st->row_pos = malloc(slots * cap * sizeof *st->row_pos);
    st->row_w = malloc(slots * g * cap * sizeof *st->row_w);
    st->o_index = malloc(t * sizeof *st->o_index);
    st->o_hat = malloc(g * t * sizeof *st->o_hat);
    st->row_comb = malloc(t * sizeof *st->row_comb);
    st->score = malloc(t * sizeof *st->score);
    st->cand = malloc(t * sizeof *st->cand);
    st->scratch = malloc(t * sizeof *st->scratch);
    if (st->row_n == NULL || st->row_pos == NULL || st->row_w == NULL ||
        st->o_index == NULL || st->o_hat == NULL || st->row_comb == NULL ||
        st->score == NULL || st->cand == NULL || st->scratch == NULL) {
        morphkv_destroy(st);
        return NULL;
    }
    for (size_t i = 0; i < t; i++)
        st->o_index[i] = -1;
    return st;
}

static void morphkv_observe(void *state, const kv_row *row)
{
    morphkv_state *st = state;
    assert(row->n_heads == st->group);
    st->n_observed++;
    /* 1. A prefill row older than the last `window` prompt rows is never among the
     * last `window` rows at a select (the first is at t = P-1): skip the copy. */
    if (row->is_prefill && row->t < st->prefill - st->window)
        return;
    assert(row->n <= st->slot_cap);
    int s = st->next, cap = st->slot_cap, n = row->n;
    st->row_n[s] = n;
    memcpy(st->row_pos + (size_t)s * cap, row->pos, (size_t)n * sizeof *row->pos);
    for (int h = 0; h < st->group; h++)
        memcpy(st->row_w + ((size_t)s * st->group + h) * cap, row->w + (size_t)h * n,
               (size_t)n * sizeof *row->w);
    st->next = (s + 1) % st->n_slots;
    if (st->n_stored < st->n_slots)
        st->n_stored++;
}

/* 3-4. The stored row in slot s, normalised per head over O and combined over the
 * group, into row_comb[0..n_o) (view indices of O). */
static void combine_row(morphkv_state *st, int s, int n_o)
{
    int cap = st->slot_cap, n = st->row_n[s];
    const int *pos = st->row_pos + (size_t)s * cap;
    for (int h = 0; h < st->group; h++) {
        const double *w = st->row_w + ((size_t)s * st->group + h) * cap;
        double *o_hat = st->o_hat + (size_t)h * n_o;
        double d = 0.0; /* 3. sum over O, in ascending position order */
        for (int k = 0; k < n; k++)
            if (st->o_index[pos[k]] >= 0)
                d += w[k];
        memset(o_hat, 0, (size_t)n_o * sizeof *o_hat);
        if (d > 0.0)
            for (int k = 0; k < n; k++)
                if (st->o_index[pos[k]] >= 0)
                    o_hat[st->o_index[pos[k]]] = w[k] / d;
    }
    kv_gqa_combine(st->gqa, st->group, n_o, st->o_hat, (size_t)n_o, st->row_comb);
}

static void morphkv_select(void *state, const kv_cache_view *cache, unsigned char *keep)
{
    morphkv_state *st = state;
    int n = cache->n, b = cache->budget;
    assert(n <= st->n_tokens && b > st->window && st->n_stored > 0);
    /* 2. Within budget: keep all. Otherwise O = view[0, n_o), W = view[n_o, n). */
    if (n <= b) {
        for (int i = 0; i < n; i++)
            keep[i] = 1;
        return;
    }
    int n_o = n - st->window;
    for (int i = 0; i < n_o; i++) {
        st->o_index[cache->pos[i]] = i;
        st->score[i] = 0.0;
        st->cand[i] = i;
    }
    /* 3-5. Oldest stored row first; every o^ >= 0, so 0 starts both fusions. */
    for (int r = 0; r < st->n_stored; r++) {
        int s = (st->next - st->n_stored + r + st->n_slots) % st->n_slots;
        combine_row(st, s, n_o);
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
    .n_params = 3,
    .bounded = 1,                      /* keeps exactly min(|A|, B) */
    .check = morphkv_check,            /* B > window */
    .create = morphkv_create,
    .observe = morphkv_observe,        /* step 1 */
    .select = morphkv_select,          /* steps 2-6 */
    .meta_bytes = morphkv_meta_bytes,  /* min(window, rows) * group_size * n * 4 */
    .destroy = morphkv_destroy,
};
