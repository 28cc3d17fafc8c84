/*
 * snapkv.c - SnapKV: compress the prompt once, by the attention of its last window.
 *
 * Rule (README "Policies", `snapkv`, window = 32, kernel = 7, pooling = max, gqa = sum,
 * decode = none). Let L = P - window (the prompt positions outside the observation window).
 *   1. Observe (prefill rows t = P-window .. P-1 only): for each query head h and each
 *      j < L, s_h[j] += p_t[j]: the attention the observation window pays to j.
 *   2. Select at the end of prefill (t = P-1), only if P > B (else keep all). For each
 *      head, pool s_h over positions with the odd kernel, radius q = (kernel-1)/2,
 *      inside [0, L): max: v_h[j] = max of s_h[u] over |u-j| <= q, 0 <= u < L;
 *      avg: v_h[j] = (sum of s_h[u] over the same clipped range) / kernel.
 *   3. Combine the pooled per-head scores over the group (gqa: sum or max, README
 *      rule 3: each head is pooled in full first).
 *   4. Keep the B - window positions j < L with the highest combined score (ties to the
 *      more recent) plus the last `window` prompt positions L..P-1.
 *   5. Decode steps, decode = none: no eviction; every position is kept and S grows by
 *      one token per step, as published (bounded = 0, no max_held bound).
 *   6. Decode steps, decode = recompress (interval = 1): at every interval-th decode step
 *      (t - P + 1 a multiple of interval) with |A_t| > B, SnapKV's selection again over
 *      A_t: W = the `window` most recent positions of A_t (always t-window+1 .. t, since
 *      every selection keeps them), candidates C = A_t \ W. For each head,
 *      s_h[c] = the sum of the last `window` observed rows (o_t', renormalised over the
 *      cache of their step, as observed; prefill rows are p) at c, for c in C; pooled
 *      as in step 2 but over neighbouring entries of C in cache order (the compressed KV
 *      tensor the kernel slides over; at the prefill end these are neighbouring
 *      positions), clipped to C; combined as in step 3; keep the B - window best of C
 *      plus W. S holds B after each recompression and grows by one per step in between:
 *      at most B + interval - 1 (max_held).
 * Requires B >= window (so P > B implies L > 0) and an odd kernel.
 * Citation: Li et al. 2024, "SnapKV: LLM Knows What You are Looking for Before
 * Generation", Sec. 4 and Listing 1 (observation window, pooling, top-k selection);
 * decode = recompress is our decode-time re-application of the rule, not the paper's.
 *
 * Metadata (meta_bytes): none with decode = none (the scores of steps 1-3 exist only
 * during prefill). With decode = recompress the window rows' attention over the cache is
 * kept, one float32 per stored row, query head and cached token:
 *   min(window, rows observed so far) * group_size * n * 4 bytes.
 * Cost: step 1 is O(n * group) per row; steps 2-4 run once, in O(group * L * kernel + P)
 * time and O(group * L + T) memory. Recompress keeps a ring of the last min(window, T)
 * rows (each at most max(P, B + interval) positions) and costs O(window * group * n +
 * group * n * kernel) per recompression.
 */
#include "policies/policy.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { P_WINDOW, P_KERNEL, P_POOLING, P_GQA, P_DECODE, P_INTERVAL };
enum { POOL_MAX = 0, POOL_AVG = 1 };
enum { DECODE_NONE = 0, DECODE_RECOMPRESS = 1 };

static const kv_param_spec snapkv_params[] = {
    [P_WINDOW] = { "window", KV_PARAM_INT, "32", 1, 1000000, NULL,
                   "observation window: the last prompt tokens whose attention votes, in tokens; B >= window" },
    [P_KERNEL] = { "kernel", KV_PARAM_INT, "7", 1, 1000000, NULL,
                   "pooling kernel width over positions, in tokens (odd)" },
    [P_POOLING] = { "pooling", KV_PARAM_CHOICE, "max", 0, 0, "max|avg",
                    "pooling of the window's attention over neighbouring positions" },
    [P_GQA] = KV_PARAM_GQA,
    [P_DECODE] = { "decode", KV_PARAM_CHOICE, "none", 0, 0, "none|recompress",
                   "none: no decode eviction (published); recompress: reselect during decode, holding B" },
    [P_INTERVAL] = { "interval", KV_PARAM_INT, "1", 1, 1000000, NULL,
                     "decode=recompress: decode steps between recompressions (S grows up to B+interval-1)" },
};

typedef struct {
    int window, kernel, pooling;
    kv_gqa_mode gqa;
    int group;      /* query heads per cache */
    int n_tokens;   /* T */
    int prefill;    /* P */
    int n_scored;   /* L = P - window, or 0 when there is nothing to score */
    double *s;      /* [group][L] window attention per head (step 1) */
    double *pooled; /* [group][L] pooled per head (step 2) */
    double *comb;   /* [L] combined over the group (step 3), by position */
    double *score;  /* [T] by cache-view index: recompression scores (step 6) */
    double *view_score; /* [T] by cache-view index, for kv_keep_scored */
    unsigned char *fixed; /* [T] by cache-view index: the window */
    int *cand;      /* [T] */
    int *scratch;   /* [T] */
    /* decode = recompress (step 6) */
    int decode, interval;
    int n_slots;    /* ring capacity, min(window, T) rows */
    int slot_cap;   /* positions per stored row, min(T, max(P, B + interval)) */
    int next;       /* ring slot of the next stored row */
    int n_stored;   /* rows in the ring */
    long n_observed;/* rows observed so far (meta_bytes) */
    int *row_n;     /* [n_slots] */
    int *row_pos;   /* [n_slots][slot_cap] */
    double *row_w;  /* [n_slots][group][slot_cap] */
    int *c_index;   /* [T] candidate index of a position, else -1 */
    double *dec_s;  /* [group][T] window sums by candidate index */
    double *dec_pooled; /* [group][T] */
} snapkv_state;

static int snapkv_check(const kv_param_values *values, int budget, char *err,
                        size_t err_len)
{
    int window = (int)values->v[P_WINDOW], kernel = (int)values->v[P_KERNEL];
    if (kv_check_budget_window("snapkv", budget, window, err, err_len) != 0)
        return 1;
    if (kernel % 2 == 0) {
        snprintf(err, err_len, "snapkv kernel %d must be odd (use --set snapkv.kernel=N "
                 "with N odd, e.g. %d)", kernel, kernel - 1);
        return 1;
    }
    return 0;
}

static void snapkv_destroy(void *state)
{
    snapkv_state *st = state;
    if (st == NULL)
        return;
    free(st->s);
    free(st->pooled);
    free(st->comb);
    free(st->score);
    free(st->view_score);
    free(st->fixed);
    free(st->cand);
    free(st->scratch);
    free(st->row_n);
    free(st->row_pos);
    free(st->row_w);
    free(st->c_index);
    free(st->dec_s);
    free(st->dec_pooled);
    free(st);
}

/* Allocates the ring and scratch of decode = recompress. Returns 0, or -1 if out of
 * memory. */
static int recompress_alloc(snapkv_state *st, const kv_policy_ctx *ctx)
{
    st->n_slots = st->window < ctx->n_tokens ? st->window : ctx->n_tokens;
    int held = ctx->held_cap > ctx->budget ? ctx->held_cap : ctx->budget;
    long widest = (long)held + st->interval;
    if (ctx->prefill_len > widest)
        widest = ctx->prefill_len;
    st->slot_cap = widest < ctx->n_tokens ? (int)widest : ctx->n_tokens;
    size_t slots = (size_t)st->n_slots, cap = (size_t)st->slot_cap;
    size_t t = (size_t)ctx->n_tokens, g = (size_t)st->group;
    st->row_n = calloc(slots, sizeof *st->row_n);
    st->row_pos = malloc(slots * cap * sizeof *st->row_pos);
    st->row_w = malloc(slots * g * cap * sizeof *st->row_w);
    st->c_index = malloc(t * sizeof *st->c_index);
    st->dec_s = malloc(g * t * sizeof *st->dec_s);
    st->dec_pooled = malloc(g * t * sizeof *st->dec_pooled);
    if (!st->row_n || !st->row_pos || !st->row_w || !st->c_index || !st->dec_s ||
        !st->dec_pooled)
        return -1;
    for (size_t j = 0; j < t; j++)
        st->c_index[j] = -1;
    return 0;
}

static void *snapkv_create(const kv_param_values *values, const kv_policy_ctx *ctx)
{
    snapkv_state *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NULL;
    st->window = (int)values->v[P_WINDOW];
    st->kernel = (int)values->v[P_KERNEL];
    st->pooling = (int)values->v[P_POOLING];
    st->gqa = (kv_gqa_mode)(int)values->v[P_GQA];
    st->decode = (int)values->v[P_DECODE];
    st->interval = (int)values->v[P_INTERVAL];
    st->group = ctx->group_size;
    st->n_tokens = ctx->n_tokens;
    st->prefill = ctx->prefill_len;
    st->n_scored = st->prefill > st->window ? st->prefill - st->window : 0;
    size_t l = st->n_scored > 0 ? (size_t)st->n_scored : 1, t = (size_t)ctx->n_tokens;
    st->s = calloc(l * (size_t)st->group, sizeof *st->s);
    st->pooled = malloc(l * (size_t)st->group * sizeof *st->pooled);
    st->comb = malloc(l * sizeof *st->comb);
    st->score = malloc(t * sizeof *st->score);
    st->view_score = malloc(t * sizeof *st->view_score);
    st->fixed = malloc(t);
    st->cand = malloc(t * sizeof *st->cand);
    st->scratch = malloc(t * sizeof *st->scratch);
    if (st->s == NULL || st->pooled == NULL || st->comb == NULL || st->score == NULL ||
        st->view_score == NULL || st->fixed == NULL ||
        st->cand == NULL || st->scratch == NULL ||
        (st->decode == DECODE_RECOMPRESS && recompress_alloc(st, ctx) != 0)) {
        snapkv_destroy(st);
        return NULL;
    }
    return st;
}

/* 6. Keeps a copy of the row in the ring (rows older than the last `window` of the
 * prompt can never be among the last `window` rows at a decode step). */
static void store_row(snapkv_state *st, const kv_row *row)
{
    st->n_observed++;
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

static void snapkv_observe(void *state, const kv_row *row)
{
    snapkv_state *st = state;
    assert(row->n_heads == st->group && row->n <= st->n_tokens);
    if (st->decode == DECODE_RECOMPRESS)
        store_row(st, row);
    /* 1. Only the observation window's prefill rows vote, and only for j < L. */
    if (!row->is_prefill || row->t < st->prefill - st->window || st->n_scored == 0)
        return;
    int l = st->n_scored;
    for (int h = 0; h < st->group; h++) {
        const double *w = row->w + (size_t)h * row->n;
        double *s = st->s + (size_t)h * l;
        for (int i = 0; i < row->n && row->pos[i] < l; i++)
            s[row->pos[i]] += w[i];
    }
}

/* Rows are read to store them (recompress) and in the observation window (step 1). */
static int snapkv_reads_row(const void *state, int t)
{
    const snapkv_state *st = state;
    return st->decode == DECODE_RECOMPRESS ||
           (t < st->prefill && t >= st->prefill - st->window && st->n_scored > 0);
}

/* 2. Pools one head's window attention s[0..l) into v[0..l). */
static void pool_head(const double *s, int l, int kernel, int pooling, double *v)
{
    int q = (kernel - 1) / 2;
    for (int j = 0; j < l; j++) {
        int lo = j - q > 0 ? j - q : 0, hi = j + q < l - 1 ? j + q : l - 1;
        double acc = s[lo];
        for (int u = lo + 1; u <= hi; u++) {
            if (pooling == POOL_MAX)
                acc = s[u] > acc ? s[u] : acc;
            else
                acc += s[u];
        }
        v[j] = pooling == POOL_MAX ? acc : acc / (double)kernel;
    }
}

/* 6. Recompression scores at a decode step: W = the last `window` entries of the view;
 * st->score[i] for each i < n - window, the pooled, combined window sums. */
static void recompress_scores(snapkv_state *st, const kv_cache_view *cache)
{
    int n = cache->n, n_c = n - st->window, T = st->n_tokens;
    for (int i = 0; i < n_c; i++)
        st->c_index[cache->pos[i]] = i;
    for (int h = 0; h < st->group; h++) {
        double *sh = st->dec_s + (size_t)h * T;
        memset(sh, 0, (size_t)(n_c > 0 ? n_c : 0) * sizeof *sh);
        for (int r = 0; r < st->n_stored; r++) { /* oldest stored row first */
            int slot = (st->next - st->n_stored + r + st->n_slots) % st->n_slots;
            const int *pos = st->row_pos + (size_t)slot * st->slot_cap;
            const double *w = st->row_w + ((size_t)slot * st->group + h) * st->slot_cap;
            for (int k = 0; k < st->row_n[slot]; k++) {
                int c = st->c_index[pos[k]];
                if (c >= 0)
                    sh[c] += w[k];
            }
        }
        if (n_c > 0)
            pool_head(sh, n_c, st->kernel, st->pooling, st->dec_pooled + (size_t)h * T);
    }
    if (n_c > 0)
        kv_gqa_combine(st->gqa, st->group, n_c, st->dec_pooled, (size_t)T, st->score);
    for (int i = 0; i < n_c; i++)
        st->c_index[cache->pos[i]] = -1;
}

/* Steps 2-4 and 6 as scores (policy.h): at the prompt end the window fixed and every
 * other prompt position scored by its pooled, combined window attention; at a
 * recompression step the last `window` fixed and the rest scored as step 6 says; no
 * eviction at the other decode steps. */
static int snapkv_scores(void *state, const kv_cache_view *cache, double *score,
                         unsigned char *fixed)
{
    snapkv_state *st = state;
    int n = cache->n;
    if (!cache->is_prefill_end) {
        int step = cache->t - st->prefill + 1; /* 1 for the first decode step */
        if (st->decode != DECODE_RECOMPRESS || step % st->interval != 0)
            return 0;
        recompress_scores(st, cache);
        for (int i = 0; i < n; i++) {
            fixed[i] = i >= n - st->window;
            score[i] = i < n - st->window ? st->score[i] : 0.0;
        }
        return 1;
    }
    int l = st->n_scored;
    if (l > 0) {
        /* 2. Pool each head, 3. combine over the group. */
        for (int h = 0; h < st->group; h++)
            pool_head(st->s + (size_t)h * l, l, st->kernel, st->pooling,
                      st->pooled + (size_t)h * l);
        kv_gqa_combine(st->gqa, st->group, l, st->pooled, (size_t)l, st->comb);
    }
    /* 4. The last `window` prompt positions fixed, the rest scored. */
    for (int i = 0; i < n; i++) {
        fixed[i] = cache->pos[i] >= l;
        score[i] = cache->pos[i] < l ? st->comb[cache->pos[i]] : 0.0;
    }
    return 1;
}

static void snapkv_select(void *state, const kv_cache_view *cache, unsigned char *keep)
{
    snapkv_state *st = state;
    int n = cache->n, b = cache->budget;
    assert(n <= st->n_tokens && b >= st->window);
    /* 5./6. Keep all when within budget or at a decode step without recompression. */
    if (n <= b || !snapkv_scores(st, cache, st->view_score, st->fixed)) {
        for (int i = 0; i < n; i++)
            keep[i] = 1;
        return;
    }
    /* 4./6. The window, plus the best B - window of the rest. */
    kv_keep_scored(st->view_score, st->fixed, cache->pos, n, b, st->cand, st->scratch, keep);
}

static int snapkv_window(const kv_param_values *values, int budget)
{
    (void)budget;
    return (int)values->v[P_WINDOW];
}

/* decode = recompress: min(window, rows observed) * group_size * n * 4 bytes (float32
 * profile of the window rows); none otherwise. */
static size_t snapkv_meta_bytes(const void *state, int n_cached)
{
    const snapkv_state *st = state;
    if (st->decode != DECODE_RECOMPRESS)
        return 0;
    long rows = st->n_observed < st->window ? st->n_observed : st->window;
    return (size_t)rows * (size_t)st->group * (size_t)(n_cached > 0 ? n_cached : 0) * 4u;
}

/* decode = none: no bound (S grows during decode); recompress: B + interval - 1. */
static int snapkv_max_held(const kv_param_values *values, int budget)
{
    if ((int)values->v[P_DECODE] != DECODE_RECOMPRESS)
        return -1;
    return budget + (int)values->v[P_INTERVAL] - 1;
}

const kv_policy_ops kv_policy_snapkv = {
    .name = "snapkv",
    .summary = "compress the prompt once by its last window's pooled attention; no decode eviction",
    .citation = "Li et al. 2024, SnapKV: LLM Knows What You are Looking for Before Generation, Sec. 4",
    KV_PARAM_TABLE(snapkv_params),
    .bounded = 0,                 /* default decode = none: S grows by one token per
                                     decode step (step 5); see max_held */
    .check = snapkv_check,        /* B >= window, kernel odd */
    .create = snapkv_create,
    .observe = snapkv_observe,    /* step 1 */
    .reads_row = snapkv_reads_row, /* step 1 and recompress only */
    .select = snapkv_select,      /* steps 2-6 */
    .meta_bytes = snapkv_meta_bytes, /* 0, or min(window, rows) * group_size * n * 4 */
    .destroy = snapkv_destroy,
    .max_held = snapkv_max_held,  /* -1 (none), or B + interval - 1 (recompress) */
    .scores = snapkv_scores,      /* steps 2-4 and 6 as scores */
    .window = snapkv_window,      /* the observation window */
};
