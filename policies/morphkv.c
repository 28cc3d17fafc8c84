/*
 * morphkv.c - MorphKV: a recent window plus the older tokens the window attends to.
 *
 * Rule (README "Policies", `morphkv`, window = 32, fusion = sum, gqa = sum, evict_every =
 * 1), run at each select: at the end of prefill (t = P-1, A = {0..P-1}) and after each
 * decode row t (A = S u {t}):
 *   1. Observe: remember the row (per query head, its values on its positions) as
 *      float32, the attention profile meta_bytes counts (the official code keeps it in
 *      the model's 16-bit dtype); only the last `window` observed rows are ever used.
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
 * State. Every cached position has a slot, kept while it stays cached; the last
 * min(window, T) observed rows are stored densely by slot (one run of floats per stored
 * row and head), so a select is a few contiguous, vectorised passes over the B + 1 slots
 * rather than gathers through position lists. Step 3's normaliser d of each stored row
 * and head is incremental (for speed, BENCHMARKS.md): O gains one position per observed row (the one that
 * leaves W: A's entry just before its last `window`) and loses the evicted ones, and d
 * follows by one addition or subtraction per stored row and head, in an exact fixed-point
 * sum (kv_exact_sum: units of 2^-149, smaller parts truncated), so adding and subtracting
 * leave no rounding drift and d does not depend on the order of the changes; a new row's
 * d is summed once when it is stored (kv_exact_add_many). d is that sum read back to 53
 * bits (truncated). Where O holds a position, its slot holds that position's value in
 * every stored row: it was cached at each of them (step 3). Slots of W or of free slots
 * hold stale values that the ranking ignores. Evicted positions free their slots for
 * later positions; after the prompt compression (P > B) the kept slots are packed to
 * [0, B) and the rows to a stride of B + N, so the stored rows are one contiguous
 * window * group * (B + N) floats (256 KiB for Llama's groups at B = 512; as doubles a
 * five-policy replay of `make bench` workload 1 took 7% longer, median of 3 runs). The
 * scores are computed in double from the floats.
 *
 * Rounding (step 3, documented choice): o^ = w * (1/d), one reciprocal per stored row and
 * head, not w / d per value; both are the rule, and the multiply keeps the pass cheap.
 * Equal inputs still give equal scores, so exact ties stay ties (ranked to the recent).
 * A select costs O(window * group * B) multiply-adds plus O(window * group) updates of
 * d; observing a row costs O(group * n) (storing it and summing its d).
 *
 * Why the scores are not carried from one select to the next (the stored rows change by
 * one per step): each stored row enters them divided by its own d (step 3), and every d
 * changes at every evicting step - O gains the position leaving W and loses the evicted
 * one - so every term w_t'[j] / d_t' of every score changes, not only the newest and the
 * oldest row's. The fused score is a product of the stored rows with a vector of window *
 * group reciprocals that all change: O(window * group * B) is the rule's own cost.
 * Subtracting the oldest row's terms from a running sum would also round differently from
 * the sum oldest row first (step 5), and change the ranking's near ties.
 */
#include "policies/policy.h"
#include "sim/simd.h"

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
    int budget;         /* B */
    int held;           /* the most past positions held after a select: B, or the cache
                           layer's larger cap when it shares budgets (ctx held_cap) */
    unsigned char *fixed; /* [slot_cap] by view index: W (scores slot) */
    int n_rows;         /* ring capacity: min(window, T) stored rows */
    int next;           /* ring index the next stored row goes to */
    int n_stored;       /* rows in the ring, <= n_rows */
    long n_observed;    /* rows observed so far (for meta_bytes) */
    int slot_cap;       /* slots: the most positions ever cached, min(T, max(P, B + N)) */
    int stride;         /* floats from one stored row's head to the next: slot_cap, then
                           B + N (rounded up to 8) once the prompt is compressed */
    int high;           /* slots [0, high) have been handed out */
    int n_free;         /* freed slots below high, on the stack free_slot[0..n_free) */
    int *free_slot;     /* [slot_cap] */
    int *slot_of;       /* [T] slot of a cached position, -1 when not cached */
    float *row_w;       /* [n_rows][group][stride] stored rows by slot, float32 (step 1) */
    kv_exact_sum *row_d;/* [n_rows][group] d of step 3 over the current O */
    double *comb;       /* [slot_cap] one stored row combined over the group (step 4) */
    double *inv;        /* [group] 1/d of one stored row's heads */
    double *score;      /* [slot_cap] fused score by slot (step 5) */
    double *view_score; /* [slot_cap] the same by view index of O */
    int *cand;          /* [slot_cap] */
    int *scratch;       /* [slot_cap] */
} morphkv_state;

static int morphkv_check(const kv_param_values *values, int budget, char *err,
                         size_t err_len)
{
    if (kv_check_budget(budget, err, err_len) != 0)
        return 1;
    int window = (int)values->v[P_WINDOW];
    if (budget <= window) {
        snprintf(err, err_len, "budget %d must exceed morphkv window %d (use --set "
                 "morphkv.window=N with N < %d)", budget, window, budget);
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
    free(st->free_slot);
    free(st->slot_of);
    free(st->row_w);
    free(st->row_d);
    free(st->comb);
    free(st->inv);
    free(st->score);
    free(st->view_score);
    free(st->fixed);
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
    st->budget = ctx->budget;
    st->held = ctx->held_cap > ctx->budget ? ctx->held_cap : ctx->budget;
    st->n_rows = st->window < ctx->n_tokens ? st->window : ctx->n_tokens;
    /* At most max(P, B + N - 1) positions are cached before a select, plus the newest. */
    long widest = (long)st->held + st->evict_every;
    if (ctx->prefill_len > widest)
        widest = ctx->prefill_len;
    st->slot_cap = widest < ctx->n_tokens ? (int)widest : ctx->n_tokens;
    st->stride = st->slot_cap;
    size_t rows = (size_t)st->n_rows, cap = (size_t)st->slot_cap;
    size_t t = (size_t)ctx->n_tokens, g = (size_t)st->group;
    st->free_slot = malloc(cap * sizeof *st->free_slot);
    st->slot_of = malloc(t * sizeof *st->slot_of);
    st->row_w = calloc(rows * g * cap, sizeof *st->row_w); /* stale slots stay finite */
    st->row_d = calloc(rows * g, sizeof *st->row_d);
    st->comb = malloc(cap * sizeof *st->comb);
    st->inv = malloc(g * sizeof *st->inv);
    st->score = malloc(cap * sizeof *st->score);
    st->view_score = malloc(cap * sizeof *st->view_score);
    st->fixed = malloc(cap);
    st->cand = malloc(cap * sizeof *st->cand);
    st->scratch = malloc(cap * sizeof *st->scratch);
    if (st->free_slot == NULL || st->slot_of == NULL || st->row_w == NULL ||
        st->row_d == NULL || st->comb == NULL || st->inv == NULL ||
        st->score == NULL ||
        st->view_score == NULL || st->fixed == NULL || st->cand == NULL || st->scratch == NULL) {
        morphkv_destroy(st);
        return NULL;
    }
    for (size_t i = 0; i < t; i++)
        st->slot_of[i] = -1;
    return st;
}

/* Ring index of the r-th stored row, oldest first. */
static int row_index(const morphkv_state *st, int r)
{
    return (st->next - st->n_stored + r + st->n_rows) % st->n_rows;
}

static float *row_values(const morphkv_state *st, int row, int h)
{
    return st->row_w + ((size_t)row * st->group + h) * st->stride;
}

/* Position j joined (sign > 0) or left O: every stored row's d gains or loses its value. */
static void o_changed(morphkv_state *st, int j, int sign)
{
    int slot = st->slot_of[j];
    for (int r = 0; r < st->n_stored; r++) {
        int row = row_index(st, r);
        for (int h = 0; h < st->group; h++) {
            kv_exact_sum *d = &st->row_d[(size_t)row * st->group + h];
            double w = row_values(st, row, h)[slot];
            if (sign > 0)
                kv_exact_add(d, w);
            else
                kv_exact_sub(d, w);
        }
    }
}

static void morphkv_observe(void *state, const kv_row *row)
{
    morphkv_state *st = state;
    assert(row->n_heads == st->group && row->n <= st->slot_cap);
    st->n_observed++;
    for (int i = 0; i < row->n; i++) /* new positions (the row's own t) take a slot */
        if (st->slot_of[row->pos[i]] < 0) {
            int slot = st->n_free > 0 ? st->free_slot[--st->n_free] : st->high++;
            assert(slot < st->stride);
            st->slot_of[row->pos[i]] = slot;
        }
    /* 1. A prefill row older than the last `window` prompt rows is never among the
     * last `window` rows at a select (the first is at t = P-1): not stored. */
    int store = !(row->is_prefill && row->t < st->prefill - st->window);
    if (store && st->n_stored == st->n_rows)
        st->n_stored--; /* the oldest row is replaced below: its d needs no update */
    /* O gains the position that just left W (A's entry before its last `window`). */
    int n_o = row->n > st->window ? row->n - st->window : 0;
    if (n_o > 0)
        o_changed(st, row->pos[n_o - 1], +1);
    if (!store)
        return;
    int s = st->next;
    int *slots = st->cand; /* scratch: the row's slots, looked up once for every head */
    for (int i = 0; i < row->n; i++)
        slots[i] = st->slot_of[row->pos[i]];
    for (int h = 0; h < st->group; h++) {
        const double *w = row->w + (size_t)h * row->n;
        float *dst = row_values(st, s, h);
        double *stored = st->view_score; /* scratch: the stored values of O, as doubles */
        for (int i = 0; i < n_o; i++) {
            float v = (float)w[i];
            dst[slots[i]] = v;
            stored[i] = v;
        }
        for (int i = n_o; i < row->n; i++)
            dst[slots[i]] = (float)w[i];
        kv_exact_sum *d = &st->row_d[(size_t)s * st->group + h];
        memset(d, 0, sizeof *d);
        kv_exact_add_many(d, stored, n_o); /* d over the current O: A's first n_o entries */
    }
    st->next = (s + 1) % st->n_rows;
    st->n_stored++;
}

/* Only stored rows are read (step 1): the last `window` prompt rows and every decode row. */
static int morphkv_reads_row(const void *state, int t)
{
    const morphkv_state *st = state;
    return t >= st->prefill - st->window;
}

/* 3-5 for one stored row: o^ = w * (1/d) per head (inv[h] = 1/d), combined over the
 * group into comb, then fused into score. Dense over slots [0, n_slots); each slot is
 * its own lane, so every clone rounds alike. */
static KV_SIMD_CLONES void score_row(const morphkv_state *st, int row, int first,
                                     int n_slots, const double *inv, double *restrict comb,
                                     double *restrict score)
{
    if (st->gqa == GQA_SUM && st->group == 4) {
        /* Llama's groups of 4: the row in one pass, combined and fused in registers,
         * in the same order as below */
        const float *restrict w0 = row_values(st, row, 0), *restrict w1 = row_values(st, row, 1);
        const float *restrict w2 = row_values(st, row, 2), *restrict w3 = row_values(st, row, 3);
        double c0 = inv[0], c1 = inv[1], c2 = inv[2], c3 = inv[3];
        if (first) {
            #pragma omp simd
            for (int s = 0; s < n_slots; s++)
                score[s] = ((w0[s] * c0 + w1[s] * c1) + w2[s] * c2) + w3[s] * c3;
        } else if (st->fusion == FUSE_MAX) {
            #pragma omp simd
            for (int s = 0; s < n_slots; s++) {
                double v = ((w0[s] * c0 + w1[s] * c1) + w2[s] * c2) + w3[s] * c3;
                score[s] = v > score[s] ? v : score[s];
            }
        } else {
            #pragma omp simd
            for (int s = 0; s < n_slots; s++)
                score[s] += ((w0[s] * c0 + w1[s] * c1) + w2[s] * c2) + w3[s] * c3;
        }
        return;
    }
    for (int h = 0; h < st->group; h++) {
        const float *restrict w = row_values(st, row, h);
        double c = inv[h];
        if (st->gqa == GQA_LOGIT) {
            for (int s = 0; s < n_slots; s++) {
                double v = w[s] * c;
                double l = log(v > LOGIT_FLOOR ? v : LOGIT_FLOOR); /* 4. floor 2^-149 */
                comb[s] = h == 0 ? l : comb[s] + l;
            }
        } else if (h == 0) {
            #pragma omp simd
            for (int s = 0; s < n_slots; s++)
                comb[s] = w[s] * c;
        } else if (st->gqa == GQA_MAX) {
            #pragma omp simd
            for (int s = 0; s < n_slots; s++) {
                double v = w[s] * c;
                comb[s] = v > comb[s] ? v : comb[s];
            }
        } else {
            #pragma omp simd
            for (int s = 0; s < n_slots; s++)
                comb[s] += w[s] * c;
        }
    }
    if (first) {
        memcpy(score, comb, (size_t)n_slots * sizeof *score);
    } else if (st->fusion == FUSE_MAX) {
        #pragma omp simd
        for (int s = 0; s < n_slots; s++)
            score[s] = comb[s] > score[s] ? comb[s] : score[s];
    } else {
        #pragma omp simd
        for (int s = 0; s < n_slots; s++)
            score[s] += comb[s];
    }
}

/* 3-5: the fused score of every handed-out slot, oldest stored row first. */
static void score_slots(morphkv_state *st)
{
    int g = st->group;
    for (int r = 0; r < st->n_stored; r++) {
        int row = row_index(st, r);
        for (int h = 0; h < g; h++) {
            double d = kv_exact_value(&st->row_d[(size_t)row * g + h]);
            st->inv[h] = d > 0.0 ? 1.0 / d : 0.0; /* d = 0: o^ = 0 (README rule 6) */
        }
        score_row(st, row, r == 0, st->high, st->inv, st->comb, st->score);
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

/* Packs the slots of the n kept positions (ascending) to [0, n) in every stored row, so
 * that later selects pass over B + N slots, not P (after a prompt compression), and packs
 * the rows themselves to a stride of B + N: the stored rows then take a contiguous
 * window * group * (B + N) floats (256 KiB for Llama's groups at B = 512), where the
 * stride of P left every second stretch of memory unused between them. */
static void pack_slots(morphkv_state *st, const kv_cache_view *cache,
                       const unsigned char *keep)
{
    int n_kept = 0;
    for (int i = 0; i < cache->n; i++)
        if (keep[i])
            st->cand[n_kept++] = st->slot_of[cache->pos[i]]; /* old slots, by rank */
    int stride = (st->held + st->evict_every + 7) / 8 * 8;
    stride = stride < st->stride ? stride : st->stride;
    /* Every ring entry in memory order: the new place of entry e never lies past the old
     * place of e, nor reaches the old place of e + 1, so nothing is overwritten unread. */
    for (int e = 0; e < st->n_rows * st->group; e++) {
        float *src = st->row_w + (size_t)e * st->stride;
        float *dst = st->row_w + (size_t)e * stride;
        for (int k = 0; k < n_kept; k++)
            st->comb[k] = src[st->cand[k]]; /* exact: a float in a double */
        for (int k = 0; k < n_kept; k++)
            dst[k] = (float)st->comb[k];
    }
    st->stride = stride;
    for (int i = 0, k = 0; i < cache->n; i++)
        if (keep[i])
            st->slot_of[cache->pos[i]] = k++;
    st->high = n_kept;
    st->n_free = 0;
}

/* Steps 2-5 as scores (policy.h): W fixed, O scored by the fused score; nothing evicted
 * between evict_every steps. */
static int morphkv_scores(void *state, const kv_cache_view *cache, double *score,
                          unsigned char *fixed)
{
    morphkv_state *st = state;
    int n = cache->n;
    assert(n <= st->slot_cap && st->n_stored > 0);
    if (!evicts_now(st, cache))
        return 0;
    int n_o = n > st->window ? n - st->window : 0;
    score_slots(st); /* 3-5, over every handed-out slot */
    for (int i = 0; i < n; i++) {
        fixed[i] = i >= n_o;
        score[i] = i < n_o ? st->score[st->slot_of[cache->pos[i]]] : 0.0;
    }
    return 1;
}

/* The evicted leave O and free their slots. */
static void morphkv_kept(void *state, const kv_cache_view *cache, const unsigned char *keep)
{
    morphkv_state *st = state;
    int n_o = cache->n > st->window ? cache->n - st->window : 0;
    for (int i = 0; i < n_o; i++)
        if (!keep[i]) {
            int j = cache->pos[i];
            o_changed(st, j, -1);
            st->free_slot[st->n_free++] = st->slot_of[j];
            st->slot_of[j] = -1;
        }
    if (st->high > st->held + st->evict_every)
        pack_slots(st, cache, keep);
}

static void morphkv_select(void *state, const kv_cache_view *cache, unsigned char *keep)
{
    morphkv_state *st = state;
    int n = cache->n, b = cache->budget;
    assert(n <= st->slot_cap && b > st->window && st->n_stored > 0);
    /* 2. Within budget, or not an eviction step: keep all. Otherwise O = view[0, n_o),
     * W = view[n_o, n). */
    if (n <= b || !morphkv_scores(st, cache, st->view_score, st->fixed)) {
        for (int i = 0; i < n; i++)
            keep[i] = 1;
        return;
    }
    /* 6. W, plus the best B - window of O. */
    kv_keep_scored(st->view_score, st->fixed, cache->pos, n, b, st->cand, st->scratch, keep);
    morphkv_kept(st, cache, keep);
}

static int morphkv_window(const kv_param_values *values, int budget)
{
    (void)budget;
    return (int)values->v[P_WINDOW];
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
    KV_PARAM_TABLE(morphkv_params),
    .bounded = 1,                      /* keeps exactly min(|A|, B) (evict_every = 1) */
    .check = morphkv_check,            /* B > window */
    .create = morphkv_create,
    .observe = morphkv_observe,        /* step 1 */
    .reads_row = morphkv_reads_row, /* stored rows only */
    .select = morphkv_select,          /* steps 2-6 */
    .meta_bytes = morphkv_meta_bytes,  /* min(window, rows) * group_size * n * 4 */
    .destroy = morphkv_destroy,
    .max_held = morphkv_max_held,      /* B + evict_every - 1 */
    .scores = morphkv_scores,          /* steps 2-5 as scores */
    .kept = morphkv_kept,              /* the evicted leave O */
    .window = morphkv_window,          /* the recent window W */
};
