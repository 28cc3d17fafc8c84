/*
 * cache.c - one KV cache and its step (cache.h; the README's "Replay semantics").
 *
 * Per query position t:
 *   1. a policy with a preselect slot (oracle) re-chooses S from the full rows p_t (decode
 *      steps); then t is appended: A_t = S u {t};
 *   2. prefill (t < P): the policy will observe the full rows p_t; decode (t >= P):
 *      recall_t^h = sum_{j in A_t} p_t^h[j] for each head, and the policy will observe
 *      o_t^h = p_t^h / recall_t^h over A_t (zeros when recall is 0); the step's metrics
 *      (recall, top-k hits, kv tokens, metadata bytes) are taken on A_t;
 *   3. the policy observes row t; at t = P-1 and every decode step it chooses which of
 *      A_t to keep, and the cache is compacted to them.
 * Steps 1-2 are kv_cache_query, step 3 kv_cache_update.
 */
#include "sim/cache.h"
#include "sim/rows.h"
#include "sim/simd.h"

#include <stdlib.h>
#include <string.h>

int kv_cache_init(kv_cache *c, const kv_policy_ops *ops, const kv_param_values *values,
                  const kv_policy_ctx *ctx, int token_weight, const int *identity)
{
    int T = ctx->n_tokens, D = ctx->n_tokens - ctx->prefill_len, group = ctx->group_size;
    memset(c, 0, sizeof *c);
    c->ops = ops;
    c->budget = ctx->budget;
    c->max_held = kv_policy_max_held(ops, values, ctx->budget);
    c->n_tokens = T;
    c->prefill_len = ctx->prefill_len;
    c->n_heads = group;
    c->token_weight = token_weight;
    c->identity = identity;
    c->pos = malloc((size_t)T * sizeof *c->pos);
    c->in_set = calloc((size_t)T, 1);
    c->entered = malloc((size_t)T * sizeof *c->entered);
    c->w = malloc((size_t)group * T * sizeof *c->w);
    c->keep = malloc((size_t)T);
    c->head_recall = calloc((size_t)group, sizeof *c->head_recall);
    c->lifetimes = calloc((size_t)D + 1, sizeof *c->lifetimes);
    if (c->pos && c->in_set && c->entered && c->w && c->keep && c->head_recall &&
        c->lifetimes)
        c->state = ops->create(values, ctx);
    if (!c->state) {
        kv_cache_free(c);
        return -1;
    }
    return 0;
}

void kv_cache_free(kv_cache *c)
{
    if (c->ops && c->state)
        c->ops->destroy(c->state);
    free(c->pos);
    free(c->in_set);
    free(c->entered);
    free(c->w);
    free(c->keep);
    free(c->head_recall);
    free(c->lifetimes);
    memset(c, 0, sizeof *c);
}

int kv_cache_prescans(const kv_cache *c)
{
    return c->ops->prescan != NULL;
}

/* Decode steps a position was attended to, if its last was step t (0 if none). */
static int lifetime(const kv_cache *c, int j, int t)
{
    int P = c->prefill_len;
    int first = c->entered[j] > P ? c->entered[j] : P;
    return t >= first ? t - first + 1 : 0;
}

/* Replaces the cache by the kept entries of pos[0..n) (keep[i] set), in order, and
 * records the lifetime of every dropped position; decode_t is the step that last
 * attended (-1 at the prefill end). */
static void compact(kv_cache *c, const int *pos, int n, const unsigned char *keep,
                    int decode_t)
{
    /* Runs of kept entries move down whole (memchr finds the next drop): a decode step
     * usually drops one position, so this is one search and one move, not a loop over n. */
    int m = 0, i = 0;
    while (i < n) {
        const unsigned char *z = memchr(keep + i, 0, (size_t)(n - i));
        int end = z ? (int)(z - keep) : n;
        if (pos + i != c->pos + m)
            memmove(c->pos + m, pos + i, (size_t)(end - i) * sizeof *pos);
        m += end - i;
        if (end == n)
            break;
        int j = pos[end];
        c->in_set[j] = 0;
        c->lifetimes[decode_t >= 0 ? lifetime(c, j, decode_t) : 0]++;
        i = end + 1;
    }
    c->n = m;
}

/* The group's full-cache rows over 0..t as doubles in c->w, as the policy's prescan and
 * preselect slots read them. */
static kv_row full_row(kv_cache *c, const kv_group_rows *full, int t)
{
    for (int hh = 0; hh < c->n_heads; hh++) {
        const float *p = full->p + (size_t)hh * full->head_stride;
        double *w = c->w + (size_t)hh * (t + 1);
        for (int j = 0; j <= t; j++)
            w[j] = p[j];
    }
    kv_row row = { .t = t, .n = t + 1, .pos = c->identity, .n_heads = c->n_heads,
                   .w = c->w, .is_prefill = t < c->prefill_len };
    return row;
}

void kv_cache_prescan(kv_cache *c, int t, const kv_group_rows *full)
{
    kv_row row = full_row(c, full, t);
    c->ops->prescan(c->state, &row);
}

/* Step 1, oracle-style policies: S is chosen from the full row before the query attends. */
static void preselect(kv_cache *c, const kv_group_rows *full, int t)
{
    kv_row row = full_row(c, full, t);
    memset(c->keep, 0, (size_t)t + 1);
    c->ops->preselect(c->state, &row, c->keep);
    c->keep[t] = 0;                   /* t is appended by the step itself */
    for (int i = 0; i < c->n; i++)    /* positions not re-chosen leave the cache */
        if (!c->keep[c->pos[i]])
            c->lifetimes[lifetime(c, c->pos[i], t - 1)]++;
    c->n = 0;
    for (int j = 0; j < t; j++) {
        if (c->keep[j] && !c->in_set[j])
            c->entered[j] = t;        /* re-admitted */
        c->in_set[j] = c->keep[j];
        if (c->keep[j])
            c->pos[c->n++] = j;
    }
    if (c->max_held >= 0 && c->n > c->max_held)
        c->failed = 1;
}

/* Fraction of the first k of a row's top keys (fewer when t+1 < k) that are cached. */
static double topk_hit(const kv_cache *c, const int *top, int k, int t)
{
    int n = k < t + 1 ? k : t + 1, hit = 0;
    for (int i = 0; i < n; i++)
        hit += c->in_set[top[i]];
    return (double)hit / n;
}

/* Eight lanes of gather_row: w[i..i+8) = p[idx(i)...] and lane l's partial sum. */
#define GATHER8(IDX)                                                                   \
    do {                                                                               \
        double v0 = p[IDX(i)], v1 = p[IDX(i + 1)], v2 = p[IDX(i + 2)], v3 = p[IDX(i + 3)]; \
        double v4 = p[IDX(i + 4)], v5 = p[IDX(i + 5)], v6 = p[IDX(i + 6)];              \
        double v7 = p[IDX(i + 7)];                                                     \
        if (w) {                                                                       \
            w[i] = v0, w[i + 1] = v1, w[i + 2] = v2, w[i + 3] = v3;                    \
            w[i + 4] = v4, w[i + 5] = v5, w[i + 6] = v6, w[i + 7] = v7;                \
        }                                                                              \
        a0 += v0, a1 += v1, a2 += v2, a3 += v3, a4 += v4, a5 += v5, a6 += v6, a7 += v7; \
    } while (0)
#define AT_POS(i) pos[i]
#define AT_SELF(i) (i)

/*
 * w[i] = p[pos[i]] for i < n, as doubles (pos NULL: the positions 0..n-1, a plain
 * conversion), returning their sum (w NULL: only the sum, for a policy that will not
 * read the row). The sum is kept in 8 interleaved partial sums added in
 * a fixed order, so it is the same for any thread count and instruction set, and the
 * additions are independent where one running sum would be a chain of dependent ones;
 * the partial sums are separate locals, so they stay in registers (as an array, GCC kept
 * them in memory: 2.6x slower).
 */
static double gather_row(const float *p, const int *pos, int n, double *w)
{
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
    int i = 0;
    if (!pos)
        for (; i + 8 <= n; i += 8)
            GATHER8(AT_SELF);
    else
        for (; i + 8 <= n; i += 8)
            GATHER8(AT_POS);
    double acc[8] = { a0, a1, a2, a3, a4, a5, a6, a7 };
    for (; i < n; i++) {
        double v = p[pos ? pos[i] : i];
        if (w)
            w[i] = v;
        acc[i & 7] += v;
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* p[a..b] in double, one after the other. */
static double plain_sum(const float *p, int a, int b)
{
    double s = 0.0;
    for (int j = a; j <= b; j++)
        s += p[j];
    return s;
}

/* sum of p[a..b] from the row's span sums (kv_row_span_sums): the partial spans at the
 * ends position by position, the complete spans between them by their sums. */
static double range_sum(const float *p, const double *span, int a, int b)
{
    int sa = a / KV_ROW_SPAN, sb = b / KV_ROW_SPAN;
    if (sa == sb)
        return plain_sum(p, a, b);
    double sum = plain_sum(p, a, (sa + 1) * KV_ROW_SPAN - 1);
    for (int s = sa + 1; s < sb; s++)
        sum += span[s];
    return sum + plain_sum(p, sb * KV_ROW_SPAN, b);
}

/* The last index e >= i of the run of consecutive positions starting at pos[i]
 * (pos[e] - e == pos[i] - i: pos is strictly increasing, so pos[m] - m never decreases
 * and the run is a prefix of what follows), by galloping then bisecting: O(log run). */
static int run_end(const int *pos, int n, int i)
{
    int d = pos[i] - i, lo = i, step = 1;
    while (lo + step < n && pos[lo + step] - (lo + step) == d) {
        lo += step;
        step *= 2;
    }
    int hi = lo + step < n ? lo + step : n;   /* pos[hi] is past the run, or hi = n */
    while (hi - lo > 1) {
        int mid = lo + (hi - lo) / 2;
        if (pos[mid] - mid == d)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* Runs of consecutive positions in pos[0..n) beyond which the span sums do not pay: a
 * set that scattered is summed position by position (gather_row). */
#define RANGE_MAX_RUNS 64

/*
 * The recall of A_t = pos[0..n) (ascending; NULL: 0..n-1) on row p from its span sums,
 * run by run (full, window, streamingllm's sinks and tail, snapkv's decode tail: one or
 * two runs of any length, at the cost of their ends); -1 when A_t has more than
 * RANGE_MAX_RUNS runs. Rounds differently from gather_row (other partial sums), by at
 * most a few ulps of the recall.
 */
static double range_recall(const float *p, const double *cum, const int *pos, int n)
{
    if (!pos)
        return range_sum(p, cum, 0, n - 1);
    int runs = 0;
    for (int i = 0; i < n && runs <= RANGE_MAX_RUNS; i = run_end(pos, n, i) + 1)
        runs++;
    if (runs > RANGE_MAX_RUNS)
        return -1.0;
    double sum = 0.0;
    for (int i = 0; i < n;) {
        int e = run_end(pos, n, i);
        sum += range_sum(p, cum, pos[i], pos[e]);
        i = e + 1;
    }
    return sum;
}

/* w[0..n) *= inv (rule 2's renormalisation), vectorised; one product per lane, so every
 * clone gives the same bits. */
static KV_SIMD_CLONES void scale_row(double *restrict w, int n, double inv)
{
    #pragma omp simd
    for (int i = 0; i < n; i++)
        w[i] *= inv;
}

void kv_cache_query(kv_cache *c, int t, const kv_group_rows *full, kv_step_metrics *m)
{
    int is_prefill = t < c->prefill_len;
    if (!is_prefill && c->ops->preselect)                 /* step 1 */
        preselect(c, full, t);
    c->pos[c->n++] = t;
    c->in_set[t] = 1;
    c->entered[t] = t;
    int n = c->n;
    /* n distinct positions <= t: all of 0..t exactly when n = t+1 (prefill, `full`) */
    const int *pos = n == t + 1 || full->by_slot ? NULL : c->pos;
    /* the row is built only for a policy that will read it */
    c->reads = c->ops->reads_row == NULL || c->ops->reads_row(c->state, t);
    double recall_sum = 0.0, top1 = 0.0, top8 = 0.0;
    for (int hh = 0; hh < c->n_heads; hh++) {             /* step 2 */
        const float *p = full->p + (size_t)hh * full->head_stride;
        double *w = c->w + (size_t)hh * n;
        if (is_prefill) {                                 /* p itself, no recall */
            if (c->reads)
                gather_row(p, pos, n, w);
            continue;
        }
        /* a policy that does not read the row needs only its sum over A_t */
        double recall = !c->reads && full->cum
                        ? range_recall(p, full->cum + (size_t)hh * full->cum_stride, pos, n)
                        : -1.0;
        if (recall < 0.0)
            recall = gather_row(p, pos, n, c->reads ? w : NULL);
        /* rule 6: a zero denominator gives an all-zero observed row */
        if (c->reads)
            scale_row(w, n, recall > 0.0 ? 1.0 / recall : 0.0);
        recall_sum += recall;
        c->head_recall[hh] = recall;
        if (full->top) {
            const int *top = full->top + (size_t)hh * full->top_stride;
            top1 += topk_hit(c, top, 1, t);
            top8 += topk_hit(c, top, KV_CACHE_TOPK, t);
        }
    }
    if (!is_prefill) {
        m->recall = recall_sum;
        m->topk1 = top1;
        m->topk8 = top8;
        m->kv_tokens = (double)n * c->token_weight;
        m->meta_bytes = c->ops->meta_bytes ? (double)c->ops->meta_bytes(c->state, n) : 0.0;
    }
}

void kv_cache_update(kv_cache *c, int t)
{
    int P = c->prefill_len;
    kv_row row = {
        .t = t, .n = c->n, .pos = c->pos, .n_heads = c->n_heads,
        .w = c->reads ? c->w : NULL, .is_prefill = t < P,
    };
    c->ops->observe(c->state, &row);
    if (t < P - 1)                                        /* step 3 */
        return;
    int is_prefill_end = t == P - 1;
    kv_cache_view view = {
        .t = t, .n = c->n, .pos = c->pos, .budget = c->budget,
        .is_prefill_end = is_prefill_end,
    };
    memset(c->keep, 0, (size_t)c->n);
    c->ops->select(c->state, &view, c->keep);
    compact(c, c->pos, c->n, c->keep, is_prefill_end ? -1 : t);
    if (c->max_held >= 0 && c->n > c->max_held)
        c->failed = 1;
}

void kv_cache_step(kv_cache *c, int t, const kv_group_rows *full, kv_step_metrics *m)
{
    kv_cache_query(c, t, full, m);
    kv_cache_update(c, t);
}
