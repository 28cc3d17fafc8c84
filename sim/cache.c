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

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One chunk of chunked selection: its summed score, last position, first candidate and
 * size. */
typedef struct {
    double score;
    int last, first, size;
} chunk_rank;

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
    c->head_out_err = calloc((size_t)group, sizeof *c->head_out_err);
    c->lifetimes = calloc((size_t)D + 1, sizeof *c->lifetimes);
    c->evictions = calloc((size_t)T, sizeof *c->evictions);
    c->lifetime_sum = calloc((size_t)T, sizeof *c->lifetime_sum);
    c->score = malloc((size_t)T * sizeof *c->score);
    c->fixed = malloc((size_t)T);
    c->cand = malloc((size_t)T * sizeof *c->cand);
    c->scratch = malloc((size_t)T * sizeof *c->scratch);
    c->chunks = malloc((size_t)T * sizeof(chunk_rank));
    kv_select_opts none = { 0 };
    c->opts = kv_select_resolved(&none);
    /* a cache sharing its layer's budget may hold up to held_cap (alloc = ada) */
    if (ctx->held_cap > ctx->budget && c->max_held >= 0)
        c->max_held += ctx->held_cap - ctx->budget;
    if (c->pos && c->in_set && c->entered && c->w && c->keep && c->head_recall &&
        c->head_out_err && c->lifetimes && c->evictions && c->lifetime_sum && c->score &&
        c->fixed && c->cand && c->scratch && c->chunks)
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
    free(c->head_out_err);
    free(c->lifetimes);
    free(c->evictions);
    free(c->lifetime_sum);
    free(c->score);
    free(c->fixed);
    free(c->cand);
    free(c->scratch);
    free(c->chunks);
    memset(c, 0, sizeof *c);
}

void kv_cache_set_select(kv_cache *c, const kv_select_opts *opts)
{
    c->opts = kv_select_resolved(opts);
}

void kv_cache_set_kv(kv_cache *c, const float *keys, const float *values, int head_dim)
{
    c->keys = keys;
    c->values = values;
    c->head_dim = head_dim;
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

/* Counts position j's eviction after a spell of `life` decode steps: in the histogram
 * and in j's own tally (retention.tsv looks lifetimes up by position). */
static void record_eviction(kv_cache *c, int j, int life)
{
    c->lifetimes[life]++;
    c->evictions[j]++;
    c->lifetime_sum[j] += life;
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
        record_eviction(c, j, decode_t >= 0 ? lifetime(c, j, decode_t) : 0);
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
            record_eviction(c, c->pos[i], lifetime(c, c->pos[i], t - 1));
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

/* o[0..hd) += sum over slots i < n, in order, of w_i v_{j_i} (output_error's o_cache
 * before the division): vectorised over d, one lane per dimension, so every clone sums
 * alike and gives the plain loop's bits. */
static KV_SIMD_CLONES void weighted_values(double *restrict o, const float *restrict v, int hd,
                                          const float *p, const int *pos, int n, int by_slot)
{
    for (int i = 0; i < n; i++) {
        int j = pos ? pos[i] : i;
        const float *restrict vj = v + (size_t)j * hd;
        double w = p[by_slot ? i : j];
        #pragma omp simd
        for (int d = 0; d < hd; d++)
            o[d] += w * vj[d];
    }
}

/*
 * out_err of head hh at t: o_cache = sum over the n slots i of A_t of w_i v_{j_i} / recall
 * (rule 2's renormalised row, summed in double, slot order) against o_full;
 * |o_cache - o_full| / |o_full|, 0 when both are 0. O(|A_t| * head_dim). Slot i holds
 * position j_i = pos[i] (NULL: i); its weight is p[j_i], or p[i] when the row is by slot
 * (kv_group_rows.by_slot: the sparse replay's weights of A_t alone).
 */
static double output_error(const kv_group_rows *full, int hh, const float *p, const int *pos,
                           int n, double recall)
{
    enum { MAX_HEAD_DIM = 1024 };
    int hd = full->head_dim;
    if (hd > MAX_HEAD_DIM)
        return NAN;
    const float *v = full->v + (size_t)((full->head_lo + hh) / full->heads_per_v -
                                        full->head_lo / full->heads_per_v) * full->v_stride;
    const float *o_full = full->o_full + (size_t)hh * full->o_stride;
    double o[MAX_HEAD_DIM] = { 0 }, diff = 0.0, norm = 0.0;
    weighted_values(o, v, hd, p, pos, n, full->by_slot);
    double inv = recall > 0.0 ? 1.0 / recall : 0.0;   /* rule 6: an all-zero row */
    for (int d = 0; d < hd; d++) {
        double e = o[d] * inv - o_full[d];
        diff += e * e;
        norm += (double)o_full[d] * o_full[d];
    }
    if (norm == 0.0)
        return diff == 0.0 ? 0.0 : INFINITY;
    return sqrt(diff / norm);
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
    double recall_sum = 0.0, top1 = 0.0, top8 = 0.0, out_err = 0.0;
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
        /* by slot, the weights are p[0..n) but the values those of c->pos[0..n) */
        c->head_out_err[hh] = full->o_full ? output_error(full, hh, p, full->by_slot ? c->pos
                                                          : pos, n, recall) : NAN;
        out_err += c->head_out_err[hh];
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
        m->out_err = out_err;
    }
}

/* The view the policy chooses from at t: A_t, with the KV vectors it reads. */
static kv_cache_view cache_view(const kv_cache *c, int t)
{
    kv_cache_view view = {
        .t = t, .n = c->n, .pos = c->pos, .budget = c->budget,
        .is_prefill_end = t == c->prefill_len - 1,
        .keys = c->keys, .values = c->values, .head_dim = c->head_dim,
    };
    return view;
}

/* value_weight = l1 (VATP): each non-fixed score times the L1 norm of its value. */
static void weight_by_values(kv_cache *c)
{
    if (c->opts.value_weight != KV_VALUE_WEIGHT_L1)
        return;
    int d = c->head_dim;
    for (int i = 0; i < c->n; i++) {
        if (c->fixed[i])
            continue;
        const float *v = c->values + (size_t)c->pos[i] * d;
        double l1 = 0.0;
        for (int e = 0; e < d; e++)
            l1 += fabs((double)v[e]);
        c->score[i] *= l1;
    }
}

static int chunk_order(const void *a, const void *b)
{
    const chunk_rank *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return (x->last < y->last) - (x->last > y->last);   /* the more recent first */
}

/* chunk = N (ChunkKV, alloc.h): keeps the fixed entries and min(n, B) - fixed others, in
 * whole chunks of N consecutive candidates by summed score, the first chunk that does not
 * fit giving its best entries. */
static void keep_chunks(kv_cache *c, unsigned char *keep)
{
    int n = c->n, N = c->opts.chunk, n_cand = 0, n_fixed = 0;
    if (n <= c->budget) {
        memset(keep, 1, (size_t)n);
        return;
    }
    for (int i = 0; i < n; i++) {
        keep[i] = c->fixed[i] != 0;
        if (c->fixed[i])
            n_fixed++;
        else
            c->cand[n_cand++] = i;
    }
    int room = c->budget - n_fixed, n_chunks = (n_cand + N - 1) / N;
    chunk_rank *ch = c->chunks;
    for (int k = 0; k < n_chunks; k++) {
        ch[k].first = k * N;
        ch[k].size = n_cand - k * N < N ? n_cand - k * N : N;
        ch[k].score = 0.0;
        for (int i = ch[k].first; i < ch[k].first + ch[k].size; i++)
            ch[k].score += c->score[c->cand[i]];
        ch[k].last = c->pos[c->cand[ch[k].first + ch[k].size - 1]];
    }
    qsort(ch, (size_t)n_chunks, sizeof *ch, chunk_order);
    for (int k = 0; k < n_chunks && room > 0; k++) {
        const int *members = c->cand + ch[k].first;
        if (ch[k].size <= room) {
            for (int i = 0; i < ch[k].size; i++)
                keep[members[i]] = 1;
            room -= ch[k].size;
        } else {
            kv_keep_top(c->score, c->pos, members, ch[k].size, room, c->scratch, keep);
            room = 0;
        }
    }
}

/* Whether the policy evicts at this step, with c->score and c->fixed filled (weighted). */
static int policy_scores(kv_cache *c, const kv_cache_view *view)
{
    if (!c->ops->scores(c->state, view, c->score, c->fixed))
        return 0;
    weight_by_values(c);
    return 1;
}

/* A composed select of one cache (alloc.h: chunk, value_weight): the cache layer keeps a
 * set from the policy's scores, then tells the policy. */
static void select_composed(kv_cache *c, const kv_cache_view *view)
{
    if (!policy_scores(c, view)) {
        memset(c->keep, 1, (size_t)c->n);
        return;
    }
    if (c->opts.chunk > 0)
        keep_chunks(c, c->keep);
    else
        kv_keep_scored(c->score, c->fixed, c->pos, c->n, c->budget, c->cand, c->scratch,
                       c->keep);
    if (c->ops->kept)
        c->ops->kept(c->state, view, c->keep);
}

static void observe(kv_cache *c, int t)
{
    kv_row row = {
        .t = t, .n = c->n, .pos = c->pos, .n_heads = c->n_heads,
        .w = c->reads ? c->w : NULL, .is_prefill = t < c->prefill_len,
    };
    c->ops->observe(c->state, &row);
}

/* S <- the kept part of A_t, with the bound checked. */
static void finish_select(kv_cache *c, int t)
{
    compact(c, c->pos, c->n, c->keep, t == c->prefill_len - 1 ? -1 : t);
    if (c->max_held >= 0 && c->n > c->max_held)
        c->failed = 1;
}

static void update_joint(kv_joint *j, int t);
static int kv_joint_size(const kv_joint *j);

void kv_cache_update(kv_cache *c, int t)
{
    observe(c, t);
    if (t < c->prefill_len - 1)                           /* step 3 */
        return;
    if (c->joint) {                       /* alloc = ada: the last of the layer selects */
        if (c->joint_index == kv_joint_size(c->joint) - 1)
            update_joint(c->joint, t);
        return;
    }
    kv_cache_view view = cache_view(c, t);
    memset(c->keep, 0, (size_t)c->n);
    if (kv_select_composed(&c->opts))
        select_composed(c, &view);
    else
        c->ops->select(c->state, &view, c->keep);
    finish_select(c, t);
}

/* One entry of a joint ranking: view index i of cache `cache`. */
typedef struct {
    double score;
    int fixed, pos, cache, i;
} joint_entry;

struct kv_joint {
    kv_cache **caches;   /* [n] borrowed */
    int n;
    joint_entry *e;      /* [n * T] */
};

static int kv_joint_size(const kv_joint *j)
{
    return j->n;
}

kv_joint *kv_joint_new(kv_cache *const *caches, int n)
{
    kv_joint *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->n = n;
    j->caches = malloc((size_t)n * sizeof *j->caches);
    j->e = malloc((size_t)n * caches[0]->n_tokens * sizeof *j->e + sizeof *j->e);
    if (!j->caches || !j->e) {
        kv_joint_free(j);
        return NULL;
    }
    for (int g = 0; g < n; g++) {
        j->caches[g] = caches[g];
        caches[g]->joint = j;
        caches[g]->joint_index = g;
    }
    return j;
}

void kv_joint_free(kv_joint *j)
{
    if (!j)
        return;
    free(j->caches);
    free(j->e);
    free(j);
}

/* Fixed first, then higher score, the more recent position, the lower cache index. */
static int joint_order(const void *a, const void *b)
{
    const joint_entry *x = a, *y = b;
    if (x->fixed != y->fixed)
        return x->fixed ? -1 : 1;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    if (x->pos != y->pos)
        return x->pos > y->pos ? -1 : 1;
    return (x->cache > y->cache) - (x->cache < y->cache);
}

static void swap_entries(joint_entry *a, joint_entry *b)
{
    joint_entry x = *a;
    *a = *b;
    *b = x;
}

/* Moves the k best of e[0..n) (joint_order) to e[0..k), in any order: quickselect,
 * expected O(n). The order is strict (no two entries share position and cache), so the
 * set is the same whatever the pivots. */
static void select_best(joint_entry *e, int n, int k)
{
    int lo = 0, hi = n - 1;
    while (lo < hi && k > lo && k <= hi) {
        swap_entries(&e[lo + (hi - lo) / 2], &e[hi]);   /* pivot to the end */
        int store = lo;
        for (int i = lo; i < hi; i++)
            if (joint_order(&e[i], &e[hi]) < 0)
                swap_entries(&e[i], &e[store++]);
        swap_entries(&e[store], &e[hi]);                 /* e[store] = pivot, final place */
        if (store == k || store == k - 1)
            return;
        if (store < k)
            lo = store + 1;
        else
            hi = store - 1;
    }
}

/* alloc = ada (alloc.h): every cache keeps its floor(alpha * B) best by its own ranking,
 * the layer's remaining places go to the best remaining entries over all caches. */
static void select_joint(kv_cache *const *cs, int n, kv_joint *j)
{
    long held = 0, cap = 0;
    for (int g = 0; g < n; g++) {
        held += cs[g]->n;
        cap += cs[g]->budget;
    }
    if (held <= cap) {
        for (int g = 0; g < n; g++)
            memset(cs[g]->keep, 1, (size_t)cs[g]->n);
        return;
    }
    int m = 0;
    for (int g = 0; g < n; g++) {
        kv_cache *c = cs[g];
        int safe = (int)floor(c->opts.alpha * c->budget), first = m;
        for (int i = 0; i < c->n; i++, m++) {
            joint_entry e = { c->score[i], c->fixed[i] != 0, c->pos[i], g, i };
            j->e[m] = e;
            c->keep[i] = 0;
        }
        select_best(j->e + first, c->n, safe);
        for (int k = 0; k < safe && k < c->n; k++) {
            c->keep[j->e[first + k].i] = 1;
            cap--;
        }
    }
    int r = 0;                            /* the entries not kept by their own cache */
    for (int k = 0; k < m; k++)
        if (!cs[j->e[k].cache]->keep[j->e[k].i])
            j->e[r++] = j->e[k];
    select_best(j->e, r, cap > 0 ? (int)cap : 0);
    for (int k = 0; k < r && k < cap; k++)
        cs[j->e[k].cache]->keep[j->e[k].i] = 1;
}

/* The joint selection at t, once every cache of j has observed row t. */
static void update_joint(kv_joint *j, int t)
{
    kv_cache *const *cs = j->caches;
    int n = j->n;
    kv_cache_view views[n];
    int evicts = 1;     /* one policy at one step: all caches agree */
    for (int g = 0; g < n; g++) {
        views[g] = cache_view(cs[g], t);
        evicts &= policy_scores(cs[g], &views[g]);
    }
    if (evicts)
        select_joint(cs, n, j);
    for (int g = 0; g < n; g++) {
        if (!evicts)
            memset(cs[g]->keep, 1, (size_t)cs[g]->n);
        else if (cs[g]->ops->kept)
            cs[g]->ops->kept(cs[g]->state, &views[g], cs[g]->keep);
        finish_select(cs[g], t);
    }
}

void kv_cache_step(kv_cache *c, int t, const kv_group_rows *full, kv_step_metrics *m)
{
    kv_cache_query(c, t, full, m);
    kv_cache_update(c, t);
}
