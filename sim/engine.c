/*
 * engine.c - the replay engine (see engine.h and the README's "Replay semantics").
 *
 * One cache = one (run, layer, KV head), stepped by sim/cache.h (which holds the replay
 * rules: A_t, recall, o_t, the policy's observe and select, the step's metrics). The
 * engine schedules: it produces the rows block by block (sim/rows.h), steps every cache
 * of a layer through them in position order as OpenMP tasks, and folds each cache's
 * metrics into its run in a fixed order after the layer.
 */
#include "sim/engine.h"
#include "sim/cache.h"
#include "sim/metrics.h"
#include "sim/rows.h"
#include "traces/status.h"
#include "traces/validate.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#define DEFAULT_BLOCK 64

#define TOPK KV_CACHE_TOPK

/* One cache of the replay, and what the engine keeps beside it. */
typedef struct {
    kv_cache cache;
    int run;                 /* index into kv_results.runs */
    int index;               /* the cache's index within its layer */
    int head_lo;             /* first query head of the group */
    kv_step_metrics *steps;  /* [D] the cache's metrics of each decode step */
    /* alloc = ada: the layer's caches of a run step together, driven by the first
     * (joint = their number, with the joint they share); the others have joint = -1 */
    int joint;
    kv_joint *jscratch;
    float *sparse;           /* sparse replay: [n_heads * (T + 1)] this step's weights of
                                A_t, by slot (kv_group_rows.by_slot) */
    int *missing;            /* sparse replay: [T + 1] positions memo_rows computes */
} replay_cache;

/* What every cache of a layer reads while stepping through one block. */
typedef struct {
    const kv_trace_info *in;
    const float *rows;    /* rows.h layout: rows[(h * block_rows + t - t0) * row_stride + j]; NULL for a
                             sparse block (its caches compute their own weights) */
    const kv_row_producer *src;   /* the layer's q and k (sparse blocks) */
    const double *lse;    /* [n_heads * T] the layer's log-normalisers (sparse blocks) */
    float *memo;          /* sparse blocks: the block's row buffer, holding p_t[j] for the
                             positions some cache of the group asked for (rows.h layout) */
    uint64_t *seen;       /* [n_kv_heads * block_rows * words]: bit j of (g, t): memo holds p_t[j]
                             for the heads of KV head g */
    size_t words;         /* 64-bit words per bit row: T / 64 + 1 */
    size_t row_stride;            /* row stride (kv_producer_row_stride) */
    const int *topk;      /* [n_heads * block_rows * TOPK] top keys of each row, best first */
    const float *o_full;  /* full-cache outputs, (h, t)'s at o_full + (h * o_head_rows + t -
                             o_t0) * head_dim: the block's (kv_producer_outputs; o_head_rows
                             = block_rows, o_t0 = t0) or, in a sparse replay, the layer's
                             stored ones (kv_trace_read_o_full; T, 0); NULL when out_err is
                             not measured */
    size_t o_head_rows;
    int o_t0;
    const float *v;       /* the layer's values (kv_producer_v) */
    const double *cum;    /* [n_heads * block_rows * n_cum] span sums of each decode row */
    size_t n_cum;
    int t0, block_rows;
} kv_block;

const kv_param_spec kv_engine_params[] = {
    [KV_ENGINE_PARAM_GRANULARITY] = {
        "kv_granularity", KV_PARAM_CHOICE, "kv_head", 0, 0, "kv_head|query_head",
        "kv_head: one cache per KV head shared by its query heads; query_head: one per "
        "query head (KV repeated per head, memory times the group size)" },
    [KV_ENGINE_PARAM_ALLOC] = {
        "alloc", KV_PARAM_CHOICE, "uniform", 0, 0, "uniform|pyramid|ada",
        "budgets as totals: uniform B per cache; pyramid: falling over layers (PyramidKV, "
        "Cai et al. 2024); ada: shared by a layer's caches at every selection (AdaKV, "
        "Feng et al. 2024)" },
    [KV_ENGINE_PARAM_PYRAMID_BETA] = {
        "pyramid_beta", KV_PARAM_REAL, "20", 1, 1e6, NULL,
        "alloc=pyramid: the last layer's pyramid part is (B - window) / beta (kvpress)" },
    [KV_ENGINE_PARAM_ADA_ALPHA] = {
        "ada_alpha", KV_PARAM_REAL, "0.2", 0, 1, NULL,
        "alloc=ada: each cache first keeps floor(alpha*B) by its own score (kvpress)" },
    [KV_ENGINE_PARAM_CHUNK] = {
        "chunk", KV_PARAM_INT, "off", 1, 1e6, "off",
        "rank contiguous chunks of N positions by summed score, keep chunk by chunk "
        "(ChunkKV, Liu et al. 2025)" },
    [KV_ENGINE_PARAM_VALUE_WEIGHT] = {
        "value_weight", KV_PARAM_CHOICE, "none", 0, 0, "none|l1",
        "l1: score times the L1 norm of the value vector (VATP, Guo et al. 2024; traces "
        "with v)" },
};
const int kv_n_engine_params = sizeof kv_engine_params / sizeof kv_engine_params[0];

int kv_policy_conf_set(kv_policy_conf *pc, const char *name, const char *text, char *err,
                       size_t err_len)
{
    for (int i = 0; i < kv_n_engine_params; i++) {
        if (strcmp(name, kv_engine_params[i].name) != 0)
            continue;
        double v;
        if (kv_param_parse(&kv_engine_params[i], text ? text : "", &v, err, err_len))
            return KV_EUSAGE;
        kv_select_opts *o = &pc->select;
        switch (i) {
        case KV_ENGINE_PARAM_GRANULARITY:
            pc->granularity = v == 0 ? KV_GRAN_KV_HEAD : KV_GRAN_QUERY_HEAD;
            break;
        case KV_ENGINE_PARAM_ALLOC: o->alloc = (kv_alloc_mode)(int)v; break;
        case KV_ENGINE_PARAM_PYRAMID_BETA: o->beta = v; break;
        case KV_ENGINE_PARAM_ADA_ALPHA: o->alpha = v, o->alpha_given = 1; break;
        case KV_ENGINE_PARAM_CHUNK: o->chunk = (int)v; break;
        case KV_ENGINE_PARAM_VALUE_WEIGHT: o->value_weight = (kv_value_weight)(int)v; break;
        }
        return 0;
    }
    return kv_params_set(pc->ops, &pc->values, name, text, err, err_len) ? KV_EUSAGE : 0;
}

static int layer_scope(const kv_policy_conf *pc)
{
    return pc->ops->scope && pc->ops->scope(&pc->values) == KV_SCOPE_LAYER;
}

/* The composing options of pc that are set, as "alloc=ada" etc., for messages. */
static void select_options_text(const kv_policy_conf *pc, char *buf, size_t len)
{
    const kv_select_opts *o = &pc->select;
    static const char *const allocs[] = { "uniform", "pyramid", "ada" };
    buf[0] = '\0';
    size_t used = 0;
    if (o->alloc != KV_ALLOC_UNIFORM)
        used += (size_t)snprintf(buf + used, len - used, "alloc=%s", allocs[o->alloc]);
    if (o->chunk > 0 && used < len)
        used += (size_t)snprintf(buf + used, len - used, "%schunk=%d", used ? ", " : "",
                                 o->chunk);
    if (o->value_weight != KV_VALUE_WEIGHT_NONE && used < len)
        snprintf(buf + used, len - used, "%svalue_weight=l1", used ? ", " : "");
}

/* The composing options need a policy that ranks by scores, and a few pairs of them have
 * no defined meaning. Returns 0, or 2 with why set. */
static int select_check(const kv_policy_conf *pc, char *why, size_t why_len)
{
    const kv_select_opts *o = &pc->select;
    char opts[96];
    select_options_text(pc, opts, sizeof opts);
    if (kv_select_any(o) && !pc->ops->scores)
        snprintf(why, why_len, "%s has no position scores to share budgets, chunk or weight "
                 "by (it keeps positions by a fixed rule), so it cannot take %s",
                 pc->ops->name, opts);
    else if (o->alloc == KV_ALLOC_ADA && o->chunk > 0)
        snprintf(why, why_len, "chunk and alloc=ada cannot be combined (AdaKV selects "
                 "single positions across caches)");
    else if (o->value_weight != KV_VALUE_WEIGHT_NONE && layer_scope(pc))
        snprintf(why, why_len, "value_weight needs one cache per KV head (its values); "
                 "%s here keeps one per layer", pc->ops->name);
    return why[0] ? KV_EUSAGE : 0;
}

int kv_policy_pair_check(const kv_policy_conf *pc, int budget, char *why, size_t why_len)
{
    why[0] = '\0';
    if (budget < 1)
        snprintf(why, why_len, "budget must be at least 1 token, got %d", budget);
    else if (select_check(pc, why, why_len))
        return KV_EUSAGE;
    else if (pc->ops->check && pc->ops->check(&pc->values, budget, why, why_len) && !why[0])
        snprintf(why, why_len, "rejected by %s", pc->ops->name);
    return why[0] ? KV_EUSAGE : 0;
}

/* What pc reads besides rows: KV_NEEDS_KEYS, KV_NEEDS_VALUES (value_weight included). */
static int policy_needs(const kv_policy_conf *pc)
{
    return pc->ops->needs |
           (pc->select.value_weight != KV_VALUE_WEIGHT_NONE ? KV_NEEDS_VALUES : 0);
}

void kv_policy_layer_budgets(const kv_policy_conf *pc, int budget, const kv_trace_info *in,
                             int *out)
{
    int window = pc->ops->window ? pc->ops->window(&pc->values, budget) : 0;
    kv_alloc_layer_budgets(&pc->select, budget, window, in->prefill_len, in->n_layers, out);
}

int kv_policy_trace_check(const kv_policy_conf *pc, int budget, const kv_trace_info *in,
                          int has_qk, const char *trace_name, char *why, size_t why_len)
{
    why[0] = '\0';
    int needs = policy_needs(pc);
    if ((needs & KV_NEEDS_KEYS) && !has_qk) {
        snprintf(why, why_len, "%s reads the keys, but %s has no q/k datasets (source = "
                 "attn): use a trace captured with q and k", pc->ops->name, trace_name);
        return KV_EUSAGE;
    }
    if ((needs & KV_NEEDS_VALUES) && !in->has_v) {
        snprintf(why, why_len, "%s reads the value vectors, but %s has no /layers/<l>/v",
                 pc->ops->needs & KV_NEEDS_VALUES ? pc->ops->name : "value_weight=l1",
                 trace_name);
        return KV_EUSAGE;
    }
    if (pc->select.alloc != KV_ALLOC_PYRAMID)
        return 0;
    int *layer_budget = malloc((size_t)in->n_layers * sizeof *layer_budget);
    if (!layer_budget) {
        snprintf(why, why_len, "out of memory");
        return KV_ERUNTIME;
    }
    kv_policy_layer_budgets(pc, budget, in, layer_budget);
    int rc = 0;
    for (int l = 0; l < in->n_layers && !rc; l++) {
        char rule[KV_ERRMSG];
        if (kv_policy_pair_check(pc, layer_budget[l], rule, sizeof rule)) {
            snprintf(why, why_len, "alloc=pyramid gives layer %d budget %d: %s", l,
                     layer_budget[l], rule);
            rc = KV_EUSAGE;
        }
    }
    free(layer_budget);
    return rc;
}

int kv_replay_validate(const kv_replay_conf *conf, char *err, size_t err_len)
{
    for (int p = 0; p < conf->n_policies; p++) {
        const kv_policy_conf *pc = &conf->policies[p];
        for (int b = 0; b < conf->n_budgets; b++) {
            char why[KV_ERRMSG];
            if (kv_policy_pair_check(pc, conf->budgets[b], why, sizeof why)) {
                snprintf(err, err_len, "policy '%s' at budget %d: %s", pc->label,
                         conf->budgets[b], why);
                return KV_EUSAGE;
            }
        }
    }
    return 0;
}

int kv_replay_dense_reason(const kv_replay_conf *conf, const kv_trace_info *in, char *why,
                           size_t why_len)
{
    if (conf->dense)
        snprintf(why, why_len, "the dense replay was asked for");
    else if (in->source != KV_SOURCE_QK)
        snprintf(why, why_len, "an attn trace stores its rows");
    else if (!in->has_lse)
        snprintf(why, why_len, "the trace stores no log-normalisers (kvsim index)");
    else if (!conf->no_topk)
        snprintf(why, why_len, "the top-k metrics rank every key of a row");
    else if (in->has_v && !in->has_o_full && !conf->no_out_err)
        snprintf(why, why_len, "the output error needs the full-cache outputs, which the "
                 "trace does not store (it has v: kvsim index it again)");
    else {
        for (int p = 0; p < conf->n_policies; p++) {
            const kv_policy_conf *pc = &conf->policies[p];
            if (pc->ops->prescan || pc->ops->preselect) {
                snprintf(why, why_len, "policy '%s' reads whole rows", pc->label);
                return 1;
            }
            if (kv_select_composed(&pc->select)) {   /* not checked on sparse rows */
                snprintf(why, why_len, "policy '%s' selects by alloc = ada, chunk or "
                         "value_weight", pc->label);
                return 1;
            }
        }
        return 0;
    }
    return 1;
}

double kv_tokens_to_bytes(const kv_trace_info *info, long long kv_tokens)
{
    return (double)kv_tokens * 2.0 * info->head_dim * info->dtype_bytes;
}

/* A seed that differs for every cache and run, fixed for a given conf.seed. */
static unsigned long cache_seed(unsigned long base, int run, int layer, int cache)
{
    uint64_t x = base * 0x9E3779B97F4A7C15ull ^ ((uint64_t)run << 40) ^
                 ((uint64_t)layer << 20) ^ (uint64_t)cache;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    return (unsigned long)x;
}

static void replay_cache_free(replay_cache *rc)
{
    kv_cache_free(&rc->cache);
    kv_joint_free(rc->jscratch);
    free(rc->steps);
    free(rc->sparse);
    free(rc->missing);
    memset(rc, 0, sizeof *rc);
}


int kv_caches_per_layer(const kv_policy_conf *pc, const kv_trace_info *in)
{
    if (layer_scope(pc))
        return KV_ERUNTIME;
    return pc->granularity == KV_GRAN_QUERY_HEAD ? in->n_heads : in->n_kv_heads;
}

int kv_cache_token_weight(const kv_policy_conf *pc, const kv_trace_info *in)
{
    return layer_scope(pc) ? in->n_kv_heads : 1;
}

/* The layer's keys and values, when a run reads them ([n_kv_heads * T * head_dim] each,
 * kv_trace_read_qk's layout), else NULL. */
typedef struct {
    float *keys, *values;
} layer_kv;

static int replay_cache_init(replay_cache *rc, const kv_policy_conf *pc, int run, int budget,
                             const kv_trace_info *in, int layer, int index, int n_caches,
                             unsigned long seed, const int *identity, const layer_kv *kv,
                             int sparse)
{
    int T = in->n_tokens, D = in->n_tokens - in->prefill_len;
    int group = in->n_heads / n_caches;
    memset(rc, 0, sizeof *rc);
    rc->run = run;
    rc->index = index;
    rc->head_lo = index * group;
    rc->steps = calloc((size_t)D, sizeof *rc->steps);
    if (sparse && (!(rc->sparse = malloc((size_t)group * (T + 1) * sizeof *rc->sparse)) ||
                   !(rc->missing = malloc(((size_t)T + 1) * sizeof *rc->missing)))) {
        free(rc->steps);
        free(rc->sparse);
        memset(rc, 0, sizeof *rc);
        return -1;
    }
    kv_policy_ctx ctx = {
        .budget = budget, .group_size = group, .n_tokens = T,
        .prefill_len = in->prefill_len, .layer = layer, .kv_head = index, .seed = seed,
        .held_cap = kv_alloc_held_cap(&pc->select, budget, n_caches),
        .head_dim = in->head_dim,
    };
    if (!rc->steps || kv_cache_init(&rc->cache, pc->ops, &pc->values, &ctx,
                                    kv_cache_token_weight(pc, in), identity)) {
        free(rc->steps);
        free(rc->sparse);
        free(rc->missing);
        rc->steps = NULL;
        rc->sparse = NULL;
        rc->missing = NULL;
        return -1;
    }
    kv_cache_set_select(&rc->cache, &pc->select);
    /* the KV head whose vectors the cache holds (one per cache, or its query head's) */
    size_t kv_head = (size_t)rc->head_lo / (in->n_heads / in->n_kv_heads);
    size_t at = kv_head * T * in->head_dim;
    kv_cache_set_kv(&rc->cache, kv->keys ? kv->keys + at : NULL,
                    kv->values ? kv->values + at : NULL, in->head_dim);
    return 0;
}

/* What the output error of cache rc at position t reads (kv_group_rows: o_full, the
 * values), into g. */
static void output_rows(const replay_cache *rc, const kv_block *b, int t, kv_group_rows *g)
{
    const kv_trace_info *in = b->in;
    int group = in->n_heads / in->n_kv_heads;
    size_t per_kv = (size_t)in->n_tokens * in->head_dim;
    size_t o_row = (size_t)rc->head_lo * b->o_head_rows + (size_t)(t - b->o_t0);
    g->o_full = b->o_full ? b->o_full + o_row * in->head_dim : NULL;
    g->o_stride = b->o_head_rows * in->head_dim;
    g->v = b->v ? b->v + (size_t)(rc->head_lo / group) * per_kv : NULL;
    g->v_stride = per_kv;
    g->head_lo = rc->head_lo;
    g->heads_per_v = group;
    g->head_dim = in->head_dim;
}

/* The rows of cache rc's group at position t of block b. */
static kv_group_rows group_rows(const replay_cache *rc, const kv_block *b, int t)
{
    size_t i_row = (size_t)rc->head_lo * b->block_rows + (size_t)(t - b->t0);
    kv_group_rows g = {
        .p = b->rows + i_row * b->row_stride,
        .head_stride = (size_t)b->block_rows * b->row_stride,
        .top = b->topk ? b->topk + i_row * TOPK : NULL, .top_stride = (size_t)b->block_rows * TOPK,
        .cum = b->cum + i_row * b->n_cum, .cum_stride = (size_t)b->block_rows * b->n_cum,
    };
    output_rows(rc, b, t, &g);
    return g;
}

/*
 * A cache that covers one GQA group in a sparse block: the group's weights p_t[j] for j in
 * A_t, by position, from the block's memo. The caches of a group run one after the other
 * inside the group's task (stream_layer fuses them in a sparse replay), so each p_t[j]
 * the group's policies share - the recent window, common heavy hitters - is computed once:
 * the positions not yet seen in row t are computed together (kv_attn_rows_sparse) and filed.
 */
static kv_group_rows memo_rows(replay_cache *rc, const kv_block *b, int t)
{
    const kv_trace_info *in = b->in;
    const kv_cache *c = &rc->cache;
    int T = in->n_tokens, hd = in->head_dim, group = c->n_heads, g = rc->head_lo / group;
    size_t stride = (size_t)T + 1, head_stride = (size_t)b->block_rows * b->row_stride;
    uint64_t *bits = b->seen + ((size_t)g * b->block_rows + (size_t)(t - b->t0)) * b->words;
    float *row = b->memo + ((size_t)rc->head_lo * b->block_rows + (size_t)(t - b->t0)) * b->row_stride;
    int *missing = rc->missing, m = 0;
    for (int i = 0; i <= c->n; i++) {
        int j = i < c->n ? c->pos[i] : t;
        uint64_t bit = (uint64_t)1 << (j & 63);
        if (!(bits[j >> 6] & bit)) {
            bits[j >> 6] |= bit;
            missing[m++] = j;
        }
    }
    if (m > 0) {
        /* the missing positions as kv_attn_rows_sparse's pos[0..m-1) and its last one */
        kv_attn_rows_sparse(kv_producer_q(b->src, rc->head_lo) + (size_t)t * hd, (size_t)T * hd, group,
                       kv_producer_k(b->src, g), hd, in->softmax_scale,
                       b->lse + (size_t)rc->head_lo * T + t, (size_t)T, missing, m - 1,
                       missing[m - 1], rc->sparse, stride);
        for (int hh = 0; hh < group; hh++)
            for (int s = 0; s < m; s++)
                row[hh * head_stride + (size_t)missing[s]] = rc->sparse[hh * stride + (size_t)s];
    }
    kv_group_rows rows = { .p = row, .head_stride = head_stride };
    output_rows(rc, b, t, &rows);
    return rows;
}

/* A sparse block's weights for cache rc at decode position t: p_t over A_t = S u {t}
 * alone (kv_attn_rows_sparse), head after head, each run of heads that share a KV head in one
 * pass over their keys; through the group's memo when rc covers one GQA group. */
static kv_group_rows sparse_rows(replay_cache *rc, const kv_block *b, int t)
{
    const kv_trace_info *in = b->in;
    const kv_cache *c = &rc->cache;
    int T = in->n_tokens, hd = in->head_dim, group = in->n_heads / in->n_kv_heads;
    if (b->seen && c->n_heads == group && rc->head_lo % group == 0)
        return memo_rows(rc, b, t);
    size_t stride = (size_t)T + 1;
    for (int hh = 0; hh < c->n_heads;) {
        int h = rc->head_lo + hh, g = h / group;
        int n_q = (g + 1) * group - h;                 /* heads left on KV head g */
        if (n_q > c->n_heads - hh)
            n_q = c->n_heads - hh;
        kv_attn_rows_sparse(kv_producer_q(b->src, h) + (size_t)t * hd, (size_t)T * hd, n_q,
                       kv_producer_k(b->src, g), hd, in->softmax_scale, b->lse + (size_t)h * T + t,
                       (size_t)T, c->pos, c->n, t, rc->sparse + (size_t)hh * stride, stride);
        hh += n_q;
    }
    kv_group_rows rows = { .p = rc->sparse, .head_stride = stride, .by_slot = 1 };
    output_rows(rc, b, t, &rows);
    return rows;
}

/*
 * Steps rc's cache through position t (cache.h) and adds each head's recall to the
 * layer's per-head sums and minima of this run (head_sum/head_min: [n_heads]).
 */
static void replay_query(replay_cache *rc, const kv_block *b, int t, double *head_sum,
                         double *head_min, double *head_err)
{
    kv_cache *c = &rc->cache;
    int P = b->in->prefill_len;
    kv_group_rows rows = b->rows ? group_rows(rc, b, t) : sparse_rows(rc, b, t);
    kv_cache_query(c, t, &rows, t >= P ? &rc->steps[t - P] : NULL);
    if (t >= P && !rows.top)   /* not measured (kv_replay_conf.no_topk) */
        rc->steps[t - P].topk1 = rc->steps[t - P].topk8 = NAN;
    for (int hh = 0; t >= P && hh < c->n_heads; hh++) {
        int h = rc->head_lo + hh;
        double recall = c->head_recall[hh];
        head_sum[h] += recall;
        if (recall < head_min[h])
            head_min[h] = recall;
        head_err[h] += c->head_out_err[hh];
    }
}

static void replay_step(replay_cache *rc, const kv_block *b, int t, double *head_sum,
                        double *head_min, double *head_err)
{
    replay_query(rc, b, t, head_sum, head_min, head_err);
    kv_cache_update(&rc->cache, t);
}

/* alloc = ada: the joined caches rc[0 .. rc->joint) through position t together: each
 * queries, then each updates, the last selecting for all (cache.h kv_joint_new). */
static void replay_step_joint(replay_cache *rc, const kv_block *b, int t, double *head_sum,
                              double *head_min, double *head_err)
{
    for (int i = 0; i < rc->joint; i++)
        replay_query(&rc[i], b, t, head_sum, head_min, head_err);
    for (int i = 0; i < rc->joint; i++)
        kv_cache_update(&rc[i].cache, t);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int results_alloc(kv_results *res, const kv_trace_info *in, const kv_replay_conf *conf)
{
    int D = res->n_steps, LH = in->n_layers * in->n_heads, T = in->n_tokens;
    res->info = *in;
    res->n_runs = conf->n_policies * conf->n_budgets;
    res->runs = calloc((size_t)res->n_runs, sizeof *res->runs);
    if (!res->runs)
        return -1;
    for (int r = 0; r < res->n_runs; r++) {
        kv_run_result *run = &res->runs[r];
        run->policy = r / conf->n_budgets;
        run->budget = conf->budgets[r % conf->n_budgets];
        run->steps = calloc((size_t)D, sizeof *run->steps);
        run->head_recall_mean = calloc((size_t)LH, sizeof(double));
        run->head_recall_min = malloc((size_t)LH * sizeof(double));
        run->head_out_err_mean = calloc((size_t)LH, sizeof(double));
        run->lifetimes = calloc((size_t)D + 1, sizeof(long long));
        run->retained = calloc((size_t)T, sizeof(int));
        run->evicted_caches = calloc((size_t)T, sizeof(int));
        run->evictions = calloc((size_t)T, sizeof(long long));
        run->lifetime_sum = calloc((size_t)T, sizeof(long long));
        run->final_sets = calloc((size_t)in->n_layers * in->n_kv_heads * T, sizeof(int));
        run->caches_per_layer = kv_caches_per_layer(&conf->policies[run->policy], in);
        size_t n_caches = (size_t)in->n_layers * run->caches_per_layer;
        run->cache_budget = calloc(n_caches, sizeof *run->cache_budget);
        run->cache_tokens_mean = calloc(n_caches, sizeof *run->cache_tokens_mean);
        if (!run->steps || !run->head_recall_mean || !run->head_recall_min ||
            !run->head_out_err_mean || !run->lifetimes || !run->retained ||
            !run->evicted_caches || !run->evictions || !run->lifetime_sum ||
            !run->final_sets || !run->cache_budget || !run->cache_tokens_mean)
            return -1;
        for (int s = 0; s < D; s++) {   /* the closed loop's, until it runs */
            kv_step_metrics *m = &run->steps[s];
            m->kl = m->nll = m->nll_full = m->top1 = m->recall_closed = NAN;
        }
        for (int i = 0; i < LH; i++)
            run->head_recall_min[i] = INFINITY;
    }
    return 0;
}

void kv_results_free(kv_results *res)
{
    if (!res)
        return;
    for (int r = 0; res->runs && r < res->n_runs; r++) {
        kv_run_result *run = &res->runs[r];
        free(run->steps);
        free(run->head_recall_mean);
        free(run->head_recall_min);
        free(run->head_out_err_mean);
        free(run->lifetimes);
        free(run->retained);
        free(run->evicted_caches);
        free(run->evictions);
        free(run->lifetime_sum);
        free(run->final_sets);
        free(run->cache_budget);
        free(run->cache_tokens_mean);
    }
    free(res->runs);
    free(res);
}

/* ----------------------------------------------------------- layer parts */

/* The arrays of a part, in buffer order, each padded to 8 bytes. */
static size_t pad8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

size_t kv_layer_part_bytes(const kv_trace_info *in, int n_runs)
{
    size_t R = (size_t)n_runs, D = (size_t)(in->n_tokens - in->prefill_len);
    size_t H = (size_t)in->n_heads, G = (size_t)in->n_kv_heads, T = (size_t)in->n_tokens;
    return pad8(R * D * sizeof(kv_step_metrics)) + 3 * pad8(R * H * sizeof(double)) +
           pad8(R * (D + 1) * sizeof(long long)) + pad8(R * T * sizeof(int)) +
           pad8(R * sizeof(int)) + pad8(R * G * T * sizeof(int)) +
           pad8(R * H * sizeof(int)) + pad8(R * H * sizeof(double)) +
           3 * pad8(R * T * sizeof(int));
}

int kv_layer_part_wrap(kv_layer_part *part, const kv_trace_info *in, int n_runs, int layer,
                       void *data, int owned)
{
    size_t R = (size_t)n_runs, D = (size_t)(in->n_tokens - in->prefill_len);
    size_t H = (size_t)in->n_heads, T = (size_t)in->n_tokens;
    memset(part, 0, sizeof *part);
    part->bytes = kv_layer_part_bytes(in, n_runs);
    if (!data) {
        data = calloc(1, part->bytes ? part->bytes : 1);
        owned = 1;
        if (!data)
            return KV_ERUNTIME;
    }
    part->layer = layer;
    part->n_runs = n_runs;
    part->info = *in;
    part->data = data;
    part->owned = owned;
    char *at = data;
    part->steps = (kv_step_metrics *)at;
    at += pad8(R * D * sizeof(kv_step_metrics));
    part->head_recall_sum = (double *)at;
    at += pad8(R * H * sizeof(double));
    part->head_recall_min = (double *)at;
    at += pad8(R * H * sizeof(double));
    part->head_out_err_sum = (double *)at;
    at += pad8(R * H * sizeof(double));
    part->lifetimes = (long long *)at;
    at += pad8(R * (D + 1) * sizeof(long long));
    part->retained = (int *)at;
    at += pad8(R * T * sizeof(int));
    part->n_cache_units = (int *)at;
    at += pad8(R * sizeof(int));
    part->final_sets = (int *)at;
    at += pad8(R * in->n_kv_heads * T * sizeof(int));
    part->cache_budget = (int *)at;
    at += pad8(R * H * sizeof(int));
    part->cache_tokens_mean = (double *)at;
    at += pad8(R * H * sizeof(double));
    part->evicted_caches = (int *)at;
    at += pad8(R * T * sizeof(int));
    part->evictions = (int *)at;
    at += pad8(R * T * sizeof(int));
    part->lifetime_sum = (int *)at;
    return 0;
}

void kv_layer_part_free(kv_layer_part *part)
{
    if (part->owned)
        free(part->data);
    memset(part, 0, sizeof *part);
}

/* Empties part for the next layer: sums to 0, minima to +inf. */
static void layer_part_reset(kv_layer_part *part, int layer)
{
    memset(part->data, 0, part->bytes);
    part->layer = layer;
    for (size_t i = 0; i < (size_t)part->n_runs * part->info.n_heads; i++)
        part->head_recall_min[i] = INFINITY;
}

/* The final cached set of cache c, per KV head of the layer (final_sets in engine.h):
 * each of c's query heads counts once for the KV head it belongs to. */
static void record_final_set(kv_layer_part *part, const replay_cache *rc)
{
    const kv_trace_info *in = &part->info;
    const kv_cache *c = &rc->cache;
    int group = in->n_heads / in->n_kv_heads, T = in->n_tokens;
    for (int hh = 0; hh < c->n_heads; hh++) {
        int g = (rc->head_lo + hh) / group;
        int *row = part->final_sets + ((size_t)rc->run * in->n_kv_heads + g) * T;
        for (int i = 0; i < c->n; i++)
            row[c->pos[i]]++;
    }
}

/* Folds one layer's caches into the layer's part, in a fixed order (run, then cache), so
 * the sums do not depend on the number of threads. */
static void reduce_layer(kv_layer_part *part, const replay_cache *caches, int n_caches)
{
    int D = part->info.n_tokens - part->info.prefill_len, T = part->info.n_tokens;
    for (int ci = 0; ci < n_caches; ci++) {
        const replay_cache *rc = &caches[ci];
        const kv_cache *c = &rc->cache;
        kv_step_metrics *steps = part->steps + (size_t)rc->run * D;
        long long *lifetimes = part->lifetimes + (size_t)rc->run * (D + 1);
        int *retained = part->retained + (size_t)rc->run * T;
        for (int s = 0; s < D; s++)
            kv_metrics_add(&steps[s], &rc->steps[s]);
        for (int s = 0; s <= D; s++)
            lifetimes[s] += c->lifetimes[s];
        for (int i = 0; i < c->n; i++)
            retained[c->pos[i]] += c->token_weight;
        int *evicted = part->evicted_caches + (size_t)rc->run * T;
        int *evictions = part->evictions + (size_t)rc->run * T;
        int *lifetime_sum = part->lifetime_sum + (size_t)rc->run * T;
        for (int j = 0; j < T; j++)
            if (c->evictions[j]) {
                evicted[j] += c->token_weight;
                evictions[j] += c->evictions[j];
                lifetime_sum[j] += c->lifetime_sum[j];
            }
        part->n_cache_units[rc->run] += c->token_weight;
        record_final_set(part, rc);
        size_t at = (size_t)rc->run * part->info.n_heads + rc->index;
        double tokens = 0.0;
        for (int s = 0; s < D; s++)
            tokens += rc->steps[s].kv_tokens;
        part->cache_budget[at] = c->budget;
        part->cache_tokens_mean[at] = tokens / D;
    }
}

void kv_results_add_layer(kv_results *res, const kv_layer_part *part)
{
    const kv_trace_info *in = &res->info;
    int D = res->n_steps, H = in->n_heads, G = in->n_kv_heads, T = in->n_tokens;
    size_t at = (size_t)part->layer * H;
    for (int r = 0; r < res->n_runs; r++) {
        kv_run_result *run = &res->runs[r];
        const kv_step_metrics *steps = part->steps + (size_t)r * D;
        const long long *lifetimes = part->lifetimes + (size_t)r * (D + 1);
        const int *retained = part->retained + (size_t)r * T;
        for (int s = 0; s < D; s++)
            kv_metrics_add(&run->steps[s], &steps[s]);
        for (int s = 0; s <= D; s++)
            run->lifetimes[s] += lifetimes[s];
        const int *evicted = part->evicted_caches + (size_t)r * T;
        const int *evictions = part->evictions + (size_t)r * T;
        const int *lifetime_sum = part->lifetime_sum + (size_t)r * T;
        for (int j = 0; j < T; j++) {
            run->retained[j] += retained[j];
            run->evicted_caches[j] += evicted[j];
            run->evictions[j] += evictions[j];
            run->lifetime_sum[j] += lifetime_sum[j];
        }
        run->n_cache_units += part->n_cache_units[r];
        memcpy(run->head_recall_mean + at, part->head_recall_sum + (size_t)r * H,
               (size_t)H * sizeof(double));
        memcpy(run->head_recall_min + at, part->head_recall_min + (size_t)r * H,
               (size_t)H * sizeof(double));
        memcpy(run->head_out_err_mean + at, part->head_out_err_sum + (size_t)r * H,
               (size_t)H * sizeof(double));
        memcpy(run->final_sets + (size_t)part->layer * G * T,
               part->final_sets + (size_t)r * G * T, (size_t)G * T * sizeof(int));
        int per_layer = run->caches_per_layer;
        memcpy(run->cache_budget + (size_t)part->layer * per_layer,
               part->cache_budget + (size_t)r * H, (size_t)per_layer * sizeof(int));
        memcpy(run->cache_tokens_mean + (size_t)part->layer * per_layer,
               part->cache_tokens_mean + (size_t)r * H, (size_t)per_layer * sizeof(double));
    }
}

void kv_results_finish(kv_results *res)
{
    const kv_trace_info *in = &res->info;
    double units = (double)in->n_layers * in->n_heads;
    for (int r = 0; r < res->n_runs; r++) {
        kv_run_result *run = &res->runs[r];
        for (int s = 0; s < res->n_steps; s++)
            kv_metrics_finish(&run->steps[s], units);
        for (int i = 0; i < in->n_layers * in->n_heads; i++) {
            run->head_recall_mean[i] /= res->n_steps;
            run->head_out_err_mean[i] /= res->n_steps;   /* NaN without v */
        }
    }
}

typedef struct {
    double start, last;
    int enabled, shown;
    int first, count;     /* the layers of this replay */
    int tty;          /* stderr is a terminal: rewrite one line; else a line every 10 s */
    int sparse;       /* the replay is sparse (said in the line) */
} progress;

static void progress_update(progress *pg, int layer, int t, int T)
{
    int n_layers = pg->count;
    layer -= pg->first;
    if (!pg->enabled)
        return;
    double now = now_seconds();
    if (now - pg->start < 1.0 || now - pg->last < (pg->tty ? 0.5 : 10.0))
        return;
    pg->last = now;
    pg->shown = pg->tty;
    double done = ((double)layer + (double)t / T) / n_layers;
    double eta = done > 0 ? (now - pg->start) * (1.0 - done) / done : 0.0;
    fprintf(stderr, "%skvsim: %s replay: layer %d/%d, token %d/%d (%.0f%%, %.0f s left)%s",
            pg->tty ? "\r" : "", pg->sparse ? "sparse" : "dense", layer + 1, n_layers, t, T,
            100.0 * done, eta, pg->tty ? "   " : "\n");
    fflush(stderr);
}

/* Creates the caches of every run (policy-major: run r is policy r / n_budgets at budget
 * r % n_budgets) for one layer, each at its layer's budget (alloc.h), an alloc = ada
 * layer's joined and driven by its first. Returns their number, or -1. */
static int layer_caches(const kv_replay_conf *conf, const kv_trace_info *in, int layer,
                        const int *identity, const layer_kv *kv, int sparse,
                        replay_cache *caches)
{
    int n = 0, *layer_budget = malloc((size_t)in->n_layers * sizeof *layer_budget);
    if (!layer_budget)
        return -1;
    for (int r = 0; r < conf->n_policies * conf->n_budgets; r++) {
        const kv_policy_conf *pc = &conf->policies[r / conf->n_budgets];
        int per_layer = kv_caches_per_layer(pc, in), first = n;
        kv_policy_layer_budgets(pc, conf->budgets[r % conf->n_budgets], in, layer_budget);
        for (int i = 0; i < per_layer; i++, n++)
            if (replay_cache_init(&caches[n], pc, r, layer_budget[layer], in, layer, i,
                                  per_layer, cache_seed(conf->seed, r, layer, i), identity,
                                  kv, sparse) != 0) {
                free(layer_budget);
                return -1;
            }
        if (pc->select.alloc == KV_ALLOC_ADA && per_layer > 1) {
            kv_cache *members[per_layer];
            for (int i = 0; i < per_layer; i++) {
                members[i] = &caches[first + i].cache;
                caches[first + i].joint = i == 0 ? per_layer : -1;
            }
            caches[first].jscratch = kv_joint_new(members, per_layer);
            if (!caches[first].jscratch) {
                free(layer_budget);
                return -1;
            }
        }
    }
    free(layer_budget);
    return n;
}

/*
 * The row pipeline of a replay: two block buffers (block k+1 is produced into one while
 * block k is read from the other) and two row producers (the next layer's q and k are read
 * while the current one is replayed). stream_layer schedules the work as OpenMP tasks so
 * the cores stay busy with whichever work is ready: SGEMMs, trace reads, policy steps.
 */
typedef struct {
    kv_row_producer *cur;          /* the layer being replayed, loaded */
    kv_row_producer *next;         /* the next layer, loaded piece by piece meanwhile (or NULL) */
    float *buf[2];         /* [n_heads * block * row_stride] rows, rows.h layout */
    float *o_full[2];      /* [n_heads * block * head_dim] full-cache outputs, when the
                              dense replay measures out_err (NULL otherwise) */
    float *o_layer;        /* sparse, measuring out_err: [n_heads * T * head_dim] the current
                              layer's stored full-cache outputs (every block reads them) */
    int *topk[2];          /* [n_heads * block * TOPK] top keys of each decode row; NULL
                              when the top-k metrics are off */
    double *cum[2];        /* [n_heads * block * n_cum] span sums of each decode row
                              (kv_row_span_sums), for recall over runs of positions */
    size_t n_cum;          /* kv_producer_n_cum */
    int block;
    int cur_loaded;        /* 1 when cur was read ahead; 0: stream_layer loads it */
    int sparse;            /* 1: blocks of decode rows only are not produced (kv_block) */
    double *lse;           /* sparse: [n_heads * T] the current layer's log-normalisers */
    uint64_t *seen[2];     /* sparse: [n_kv_heads * block * words] the memo's bits */
    size_t words;          /* T / 64 + 1 */
} kv_stream;

/* A sparse replay's block of decode rows only: its caches compute their own weights. */
static int sparse_block(const kv_stream *s, const kv_trace_info *in, int t0)
{
    return s->sparse && t0 >= in->prefill_len;
}

enum { CONSUME_STEP, CONSUME_PRESCAN };

/* The first failure inside a layer's tasks, reported after them. */
typedef struct {
    int failed;
    char *err;
    size_t err_len;
} kv_failure;

static void record_failure(kv_failure *f, const char *why)
{
    int first;
    #pragma omp atomic capture
    first = f->failed++;
    if (first == 0)
        snprintf(f->err, f->err_len, "%s", why);   /* only the first writes */
}

/* 1 once any task has failed: the remaining tasks then skip their work. */
static int has_failed(const kv_failure *f)
{
    int failed;
    #pragma omp atomic read
    failed = f->failed;
    return failed != 0;
}

/* One task's rows of the block at t0 into buffer slot; for the replay's steps (steps = 1,
 * not the prescan) also the top keys of its decode rows when measured and the full-cache
 * outputs when the trace has v (the same for every policy, so found once, while the rows
 * are produced). */
static int produce(kv_stream *s, const kv_trace_info *in, int t0, int task, int slot,
                   int steps, kv_failure *f)
{
    char why[512];
    if (sparse_block(s, in, t0)) {   /* the group's memo starts empty */
        int block_rows = t0 + s->block < in->n_tokens ? s->block : in->n_tokens - t0;
        if (in->source == KV_SOURCE_QK)
            memset(s->seen[slot] + (size_t)task * block_rows * s->words, 0,
                   (size_t)block_rows * s->words * sizeof(uint64_t));
        return 0;
    }
    if (kv_producer_fill(s->cur, t0, task, s->buf[slot], steps ? s->topk[slot] : NULL, TOPK,
                     in->prefill_len, s->cum[slot], why, sizeof why) == 0) {
        if (s->o_full[slot] && steps)   /* replay steps, not the prescan */
            kv_producer_outputs(s->cur, t0, task, s->buf[slot], s->o_full[slot]);
        return 0;
    }
    record_failure(f, why);
    return KV_ERUNTIME;
}

/* Loads piece `piece` of layer into rows (the current or the next layer's source). */
static void load_piece(kv_row_producer *rows, int layer, int piece, kv_failure *f)
{
    char why[512];
    if (!has_failed(f) && kv_producer_load(rows, layer, piece, why, sizeof why))
        record_failure(f, why);
}

/* Runs one cache through the block: replay steps, or the prescan of lookahead policies. */
static void consume(replay_cache *rc, const kv_block *b, int mode, kv_layer_part *part)
{
    if (mode == CONSUME_PRESCAN) {
        if (kv_cache_prescans(&rc->cache))
            for (int t = b->t0; t < b->t0 + b->block_rows; t++) {
                kv_group_rows rows = group_rows(rc, b, t);
                kv_cache_prescan(&rc->cache, t, &rows);
            }
        return;
    }
    size_t at = (size_t)rc->run * b->in->n_heads;
    double *hs = part->head_recall_sum + at, *hm = part->head_recall_min + at;
    double *he = part->head_out_err_sum + at;
    if (rc->joint < 0)
        return;                        /* stepped by the first cache of its layer */
    for (int t = b->t0; t < b->t0 + b->block_rows; t++)
        if (rc->joint > 0)
            replay_step_joint(rc, b, t, hs, hm, he);
        else
            replay_step(rc, b, t, hs, hm, he);
}

/*
 * Pieces of the next layer to load before block k of n: the work of a block grows with
 * its last row (t1 = (k+1) * block, for the SGEMM as for the full-cache policies), so
 * pieces are spread in proportion to it, where reading a piece (a serial item, the trace's
 * reads are serialised) is hidden behind the other work. All n_pieces before block n.
 */
static int pieces_before(long n_pieces, int k, int n)
{
    return (int)(n_pieces * ((long)k * (k + 1)) / ((long)n * (n + 1)));
}

/* The block at t0 of the current layer, as the caches read it from buffer slot. */
static kv_block block_at(const kv_stream *s, const kv_trace_info *in, int t0, int slot)
{
    int T = in->n_tokens;
    kv_block b = { .in = in, .rows = sparse_block(s, in, t0) ? NULL : s->buf[slot],
                   .src = s->cur, .lse = s->lse, .row_stride = kv_producer_row_stride(s->cur),
                   .topk = s->topk[slot], .cum = s->cum[slot], .n_cum = s->n_cum, .t0 = t0,
                   .memo = s->buf[slot], .seen = sparse_block(s, in, t0) ? s->seen[slot] : NULL,
                   .words = s->words, .v = kv_producer_v(s->cur),
                   .block_rows = t0 + s->block < T ? s->block : T - t0 };
    if (s->o_layer)
        b.o_full = s->o_layer, b.o_head_rows = (size_t)T, b.o_t0 = 0;
    else
        b.o_full = s->o_full[slot], b.o_head_rows = (size_t)b.block_rows, b.o_t0 = t0;
    return b;
}

/* The task of each cache, for the schedule: task_of[c] = the task whose query heads
 * cover cache c's, or -1 when its heads span several tasks (layer-scope policies, the
 * first cache of an alloc = ada layer, which steps them all). Also
 * fills members/first: task g's caches are members[first[g] .. first[g+1]). NULL when
 * out of memory. */
static int *cache_tasks(const kv_row_producer *rows, const replay_cache *caches, int n_caches,
                        int **members_out, int **first_out)
{
    int n_tasks = kv_producer_n_tasks(rows);
    int *task_of = malloc(((size_t)n_caches + 1) * sizeof *task_of);
    int *members = malloc(((size_t)n_caches + 1) * sizeof *members);
    int *first = calloc((size_t)n_tasks + 1, sizeof *first);
    if (!task_of || !members || !first) {
        free(task_of);
        free(members);
        free(first);
        return NULL;
    }
    for (int ci = 0; ci < n_caches; ci++) {
        task_of[ci] = -1;
        for (int g = 0; g < n_tasks && task_of[ci] < 0; g++) {
            int h0, h1;
            kv_producer_task_heads(rows, g, &h0, &h1);
            int span = caches[ci].cache.n_heads * (caches[ci].joint > 0 ? caches[ci].joint : 1);
            if (caches[ci].head_lo >= h0 && caches[ci].head_lo + span <= h1)
                task_of[ci] = g;
        }
    }
    int m = 0;
    for (int g = 0; g < n_tasks; g++) {
        first[g] = m;
        for (int ci = 0; ci < n_caches; ci++)
            if (task_of[ci] == g)
                members[m++] = ci;
    }
    first[n_tasks] = m;
    *members_out = members;
    *first_out = first;
    return task_of;
}

/* What the tasks of one layer share. */
typedef struct {
    kv_stream *s;
    const kv_trace_info *in;
    int layer, next_layer, mode, fuse;
    replay_cache *caches;
    kv_layer_part *part;
    progress *pg;
    kv_failure *f;
    const int *members, *first;   /* cache_tasks */
} kv_layer_work;

/* Produces block k's rows of task g and, when fusing, steps that task's caches through
 * them while they are still in this core's caches. */
static void produce_task(const kv_layer_work *w, int k, int g)
{
    if (has_failed(w->f))
        return;
    int t0 = k * w->s->block;
    if (produce(w->s, w->in, t0, g, k & 1, w->mode == CONSUME_STEP, w->f))
        return;
    kv_block b = block_at(w->s, w->in, t0, k & 1);
    for (int m = w->fuse ? w->first[g] : 0; w->fuse && m < w->first[g + 1]; m++)
        consume(&w->caches[w->members[m]], &b, w->mode, w->part);
    if (g == 0) {
        #pragma omp critical(kv_engine_progress)
        progress_update(w->pg, w->layer, t0 + b.block_rows, w->in->n_tokens);
    }
}

static void consume_task(const kv_layer_work *w, int k, int ci)
{
    if (has_failed(w->f))
        return;
    kv_block b = block_at(w->s, w->in, k * w->s->block, k & 1);
    consume(&w->caches[ci], &b, w->mode, w->part);
}

/*
 * Streams the current layer's rows through every cache (mode: replay steps or prescan),
 * loading the next layer (next_layer >= 0) meanwhile, as one graph of OpenMP tasks with
 * dependences instead of a barrier per block (with barriers, a thread waited for the
 * slowest item of every block, and for a descheduled thread on a shared machine):
 *   - P(k, g) produces block k of task g (a GQA group for qk, every head for attn) into
 *     buffer slot k % 2: `out` on that slot's part g, so it also waits until every reader
 *     of block k-2 there is done (on every part for a short last block, whose parts lie
 *     elsewhere); `inout` on task g's chain (one read or SGEMM at a time per group);
 *   - C(k, c) steps cache c through block k: `in` on the slot parts it reads (its task's,
 *     or all of them for a cache spanning tasks), `inout` on its own chain (steps in order);
 *   - when fusing (qk replays with at least two groups per thread), the caches of task g
 *     run inside P(k, g), while its rows are in the core's caches (the block buffer is far
 *     larger than the last-level cache: a later consumer read every row back from memory,
 *     once per policy); only spanning caches get tasks of their own;
 *   - the pieces of the next layer load as tasks of their own, spread over the blocks;
 *     when the current layer was not read ahead (the first), its pieces load first and
 *     P(k, g) also waits for the pieces its rows need (`in`), so its first blocks start
 *     while its later rows are read. All reads are one chain (`inout`): the trace
 *     serialises them, and a second reader would only hold a thread waiting.
 * Every cache still sees its rows in order, so the results are those of the serial run.
 * Returns 0, or 1 with err set.
 */
static int stream_layer(kv_stream *s, const kv_trace_info *in, int layer, int next_layer,
                        replay_cache *caches, int n_caches, int mode, kv_layer_part *part,
                        progress *pg, char *err, size_t err_len)
{
    int T = in->n_tokens, block = s->block, n_blocks = (T + block - 1) / block;
    int n_tasks = kv_producer_n_tasks(s->cur), n_threads = 1, *members = NULL, *first = NULL;
#ifdef _OPENMP
    n_threads = omp_get_max_threads();
#endif
    int *task_of = cache_tasks(s->cur, caches, n_caches, &members, &first);
    int n_cur = s->cur_loaded ? 0 : kv_producer_n_load_pieces(s->cur);
    /* addresses that name the dependences (GCC takes variables that only appear in depend
     * clauses for unused, so they index dep directly): [0, 2 * n_tasks) the slot parts,
     * slot after slot; [2 * n_tasks, 3 * n_tasks) the task chains; [3 * n_tasks, +n_caches)
     * the cache chains; then the current layer's pieces; last, the chain of reads */
    size_t at_piece = 3 * (size_t)n_tasks + (size_t)n_caches, at_reads = at_piece + n_cur;
    char *dep = malloc(at_reads + 1);
    if (!task_of || !dep) {
        free(task_of);
        free(members);
        free(first);
        free(dep);
        snprintf(err, err_len, "out of memory scheduling the caches of layer %d", layer);
        return KV_ERUNTIME;
    }
    long n_pieces = next_layer >= 0 ? kv_producer_n_load_pieces(s->next) : 0;
    kv_failure f = { .err = err, .err_len = err_len };
    kv_layer_work w = {
        .s = s, .in = in, .layer = layer, .next_layer = next_layer, .mode = mode,
        /* a sparse replay always fuses: a group's caches share its memo (memo_rows) */
        .fuse = mode == CONSUME_STEP && (s->sparse || (n_tasks > 1 && n_tasks >= 2 * n_threads)),
        .caches = caches, .part = part, .pg = pg, .f = &f, .members = members, .first = first,
    };
    #pragma omp parallel
    #pragma omp single
    {
        for (int p = 0; p < n_cur; p++) {
            #pragma omp task firstprivate(p) depend(out: dep[at_piece + p]) \
                             depend(inout: dep[at_reads])
            load_piece(s->cur, layer, p, &f);
        }
        for (int k = 0; k < n_blocks; k++) {
            /* the pieces block k's rows need, when the layer is still being read */
            int need = n_cur ? kv_producer_pieces_for(s->cur, (k + 1) * block < T ? (k + 1) * block
                                                                               : T) : 0;
            /* the last block may be short: rows are laid out by its block_rows, so each task's
             * part moves and overlaps the others' parts of block k-2: wait for all */
            int shifted = (k + 1) * block > T;
            for (int g = 0; g < n_tasks; g++) {
                if (!shifted) {
                    #pragma omp task firstprivate(k, g) \
                                     depend(out: dep[(k & 1) * n_tasks + g]) \
                                     depend(inout: dep[2 * n_tasks + g]) \
                                     depend(iterator(i = 0 : need), in: dep[at_piece + i])
                    produce_task(&w, k, g);
                } else {
                    #pragma omp task firstprivate(k, g) \
                                     depend(iterator(i = 0 : n_tasks), \
                                            out: dep[(k & 1) * n_tasks + i]) \
                                     depend(inout: dep[2 * n_tasks + g]) \
                                     depend(iterator(i = 0 : need), in: dep[at_piece + i])
                    produce_task(&w, k, g);
                }
            }
            (void)need;   /* used in the depend clauses only */
            for (int ci = 0; ci < n_caches; ci++) {
                int g = task_of[ci];
                if (g >= 0 && w.fuse)
                    continue;                  /* runs inside P(k, g) */
                if (g >= 0) {
                    #pragma omp task firstprivate(k, ci) depend(in: dep[(k & 1) * n_tasks + g]) \
                                     depend(inout: dep[3 * n_tasks + ci])
                    consume_task(&w, k, ci);
                } else {
                    #pragma omp task firstprivate(k, ci) \
                                     depend(iterator(i = 0 : n_tasks), \
                                            in: dep[(k & 1) * n_tasks + i]) \
                                     depend(inout: dep[3 * n_tasks + ci])
                    consume_task(&w, k, ci);
                }
            }
            for (int p = pieces_before(n_pieces, k, n_blocks);
                 p < pieces_before(n_pieces, k + 1, n_blocks); p++) {
                #pragma omp task firstprivate(p) depend(inout: dep[at_reads])
                load_piece(s->next, next_layer, p, &f);
            }
        }
        #pragma omp taskwait
    }
    s->cur_loaded = 1;
    free(task_of);
    free(members);
    free(first);
    free(dep);
    return f.failed ? KV_ERUNTIME : 0;
}

/* Replays one layer (loaded in s->cur) for every run into part, loading layer next
 * (-1: none) meanwhile. */
static int replay_layer(kv_stream *s, const kv_replay_conf *conf, kv_layer_part *part,
                        int layer, int next, replay_cache *caches, const int *identity,
                        const layer_kv *kv, progress *pg, char *err, size_t err_len)
{
    const kv_trace_info *in = &part->info;
    int n_caches = layer_caches(conf, in, layer, identity, kv, s->sparse, caches);
    if (n_caches < 0) {
        snprintf(err, err_len, "out of memory creating the caches of layer %d", layer);
        return KV_ERUNTIME;
    }
    layer_part_reset(part, layer);
    int any_prescan = 0;
    for (int ci = 0; ci < n_caches; ci++)
        any_prescan |= kv_cache_prescans(&caches[ci].cache);
    int rc = any_prescan ? stream_layer(s, in, layer, -1, caches, n_caches, CONSUME_PRESCAN,
                                        part, pg, err, err_len) : 0;
    if (rc == 0)
        rc = stream_layer(s, in, layer, next, caches, n_caches, CONSUME_STEP, part, pg, err,
                          err_len);
    for (int ci = 0; rc == 0 && ci < n_caches; ci++)
        if (caches[ci].cache.failed) {
            const kv_policy_conf *pc = &conf->policies[caches[ci].run / conf->n_budgets];
            snprintf(err, err_len, "internal error: policy '%s' kept more than %d tokens "
                     "at budget %d in layer %d", pc->label, caches[ci].cache.max_held,
                     caches[ci].cache.budget, layer);
            rc = KV_ERUNTIME;
        }
    if (rc == 0)
        reduce_layer(part, caches, n_caches);
    return rc;
}

/* Allocates the pipeline; layer 0 is loaded by its first stream_layer. Returns 0, or 1
 * with err set. */
static int stream_open(kv_stream *s, kv_trace *tr, int block, int n_layers, int no_out_err,
                       int topk, int sparse, char *err, size_t err_len)
{
    const kv_trace_info *in = kv_trace_get_info(tr);
    int want_outputs = in->has_v && !no_out_err;
    memset(s, 0, sizeof *s);
    s->block = block;
    s->sparse = sparse;
    if (sparse && !(s->lse = malloc((size_t)in->n_heads * in->n_tokens * sizeof *s->lse))) {
        snprintf(err, err_len, "out of memory for the log-normalisers of a layer");
        return 1;
    }
    /* a sparse replay reads the stored outputs (kv_replay_dense_reason: it has them) */
    if (sparse && want_outputs) {
        size_t n = (size_t)in->n_heads * in->n_tokens * in->head_dim;
        if (!(s->o_layer = malloc(n * sizeof *s->o_layer))) {
            snprintf(err, err_len, "out of memory for the full-cache outputs of a layer");
            return 1;
        }
        want_outputs = 0;
    }
    s->cur = kv_producer_new(tr, block, err, err_len);
    if (!s->cur)
        return KV_ERUNTIME;
    if (n_layers > 1 && !(s->next = kv_producer_new(tr, block, err, err_len)))
        return KV_ERUNTIME;
    size_t rows = (size_t)in->n_heads * (size_t)block;
    s->n_cum = kv_producer_n_cum(s->cur);
    for (int i = 0; i < 2; i++) {
        s->buf[i] = kv_alloc_large(rows * kv_producer_row_stride(s->cur) * sizeof(float));
        s->topk[i] = topk ? malloc(rows * TOPK * sizeof(int)) : NULL;
        if (want_outputs)
            s->o_full[i] = malloc(rows * (size_t)in->head_dim * sizeof(float));
        s->cum[i] = malloc(rows * s->n_cum * sizeof(double));
        s->words = (size_t)in->n_tokens / 64 + 1;
        s->seen[i] = sparse ? malloc((size_t)in->n_kv_heads * block * s->words * sizeof(uint64_t))
                            : NULL;
        if (!s->buf[i] || (topk && !s->topk[i]) || (want_outputs && !s->o_full[i]) ||
            !s->cum[i] || (sparse && !s->seen[i])) {
            snprintf(err, err_len, "out of memory for the row blocks (%zu rows of %d)",
                     2 * rows, in->n_tokens);
            return KV_ERUNTIME;
        }
    }
    s->cur_loaded = 0;   /* the first layer loads inside its task graph */
    return 0;
}

static void stream_close(kv_stream *s)
{
    kv_producer_close(s->cur);
    kv_producer_close(s->next);
    for (int i = 0; i < 2; i++) {
        free(s->buf[i]);
        free(s->topk[i]);
        free(s->o_full[i]);
        free(s->cum[i]);
        free(s->seen[i]);
    }
    free(s->lse);
    free(s->o_layer);
}

/* The checks before any replay: the pairs and what they read of the trace (2), and a
 * decode step to replay (1). */
static int replay_check(kv_trace *tr, const kv_replay_conf *conf, char *err, size_t err_len)
{
    const kv_trace_info *in = kv_trace_get_info(tr);
    const char *path = kv_trace_path(tr);
    int rc = kv_replay_validate(conf, err, err_len);
    if (rc)
        return rc;
    if (kv_trace_check_replayable(tr, err, err_len) != 0)
        return KV_ERUNTIME;
    for (int p = 0; p < conf->n_policies; p++)
        for (int b = 0; b < conf->n_budgets; b++) {
            const kv_policy_conf *pc = &conf->policies[p];
            char why[KV_ERRMSG + 64];
            rc = kv_policy_trace_check(pc, conf->budgets[b], in, kv_trace_has_qk(tr), path,
                                       why, sizeof why);
            if (rc) {
                snprintf(err, err_len, "policy '%s' at budget %d: %s", pc->label,
                         conf->budgets[b], why);
                return rc;
            }
        }
    return 0;
}

int kv_replay_layers(kv_trace *tr, const kv_replay_conf *conf, int first, int count,
                     kv_layer_sink sink, void *ctx, char *err, size_t err_len)
{
    const kv_trace_info *in = kv_trace_get_info(tr);
    int rc = replay_check(tr, conf, err, err_len);
    if (rc)
        return rc;
    if (first < 0 || count < 1 || first + count > in->n_layers) {
        snprintf(err, err_len, "layers %d..%d are outside the trace's %d", first,
                 first + count - 1, in->n_layers);
        return KV_ERUNTIME;
    }
    if (in->source == KV_SOURCE_QK && kv_blas_prepare(err, err_len))
        return 1;
    int block = conf->block > 0 ? conf->block : DEFAULT_BLOCK;
    int n_runs = conf->n_policies * conf->n_budgets, n_caches = 0, needs = 0;
    for (int p = 0; p < conf->n_policies; p++) {
        n_caches += kv_caches_per_layer(&conf->policies[p], in) * conf->n_budgets;
        needs |= policy_needs(&conf->policies[p]);
    }
    replay_cache *caches = calloc((size_t)n_caches, sizeof *caches);
    int *identity = malloc((size_t)in->n_tokens * sizeof *identity);
    size_t kv_floats = (size_t)in->n_kv_heads * in->n_tokens * in->head_dim;
    layer_kv kv = {
        .keys = needs & KV_NEEDS_KEYS ? malloc(kv_floats * sizeof(float)) : NULL,
        .values = needs & KV_NEEDS_VALUES ? malloc(kv_floats * sizeof(float)) : NULL,
    };
    kv_layer_part part;
    if (!caches || !identity || (!kv.keys && (needs & KV_NEEDS_KEYS)) ||
        (!kv.values && (needs & KV_NEEDS_VALUES)) ||
        kv_layer_part_wrap(&part, in, n_runs, first, NULL, 1)) {
        snprintf(err, err_len, "out of memory allocating the caches of %d runs", n_runs);
        free(caches);
        free(identity);
        free(kv.keys);
        free(kv.values);
        return KV_ERUNTIME;
    }
    for (int j = 0; j < in->n_tokens; j++)
        identity[j] = j;
    /* one SGEMM per OpenMP thread: the BLAS must not start threads of its own */
    int blas_threads = kv_blas_single_begin();
    char why[256];
    int sparse = !kv_replay_dense_reason(conf, in, why, sizeof why);
    progress pg = { .start = now_seconds(), .enabled = conf->progress,
                    .tty = isatty(STDERR_FILENO), .first = first, .count = count,
                    .sparse = sparse };
    kv_stream stream;
    rc = stream_open(&stream, tr, block, count, conf->no_out_err, !conf->no_topk, sparse, err,
                     err_len);
    for (int l = first; l < first + count && rc == 0; l++) {
        int next = l + 1 < first + count ? l + 1 : -1;
        /* the keys and values policies read: no task is reading the trace here */
        if (kv.keys)
            rc = kv_trace_read_rows(tr, l, KV_TENSOR_K, 0, in->n_tokens, kv.keys, err,
                                    err_len);
        if (rc == 0 && kv.values)
            rc = kv_trace_read_v(tr, l, kv.values, err, err_len);
        if (rc == 0 && sparse && kv_trace_read_lse(tr, l, stream.lse, err, err_len))
            rc = KV_ERUNTIME;
        if (rc == 0 && stream.o_layer && kv_trace_read_o_full(tr, l, stream.o_layer, err,
                                                              err_len))
            rc = KV_ERUNTIME;
        if (rc == 0)
            rc = replay_layer(&stream, conf, &part, l, next, caches, identity, &kv, &pg, err,
                              err_len);
        for (int ci = 0; ci < n_caches; ci++)
            replay_cache_free(&caches[ci]);
        if (rc == 0)
            rc = sink(ctx, &part, err, err_len);
        kv_row_producer *done = stream.cur;   /* the next layer, loaded meanwhile, comes up */
        stream.cur = stream.next;
        stream.next = done;
        stream.cur_loaded = 1;
    }
    stream_close(&stream);
    kv_blas_threads_restore(blas_threads);
    if (pg.shown)
        fprintf(stderr, "\rkvsim: replayed %d layers in %.1f s (%s)%30s\n", count,
                now_seconds() - pg.start, sparse ? "sparse" : "dense", "");
    kv_layer_part_free(&part);
    free(caches);
    free(identity);
    free(kv.keys);
    free(kv.values);
    return rc;
}

int kv_results_new(const kv_trace_info *in, const kv_replay_conf *conf, kv_results **out,
                   char *err, size_t err_len)
{
    *out = NULL;
    kv_results *res = calloc(1, sizeof *res);
    if (res)
        res->n_steps = in->n_tokens - in->prefill_len;
    if (!res || res->n_steps < 1 || results_alloc(res, in, conf) != 0) {
        snprintf(err, err_len, res && res->n_steps < 1 ? "the trace has no decode step"
                                                        : "out of memory allocating the results");
        kv_results_free(res);
        return KV_ERUNTIME;
    }
    *out = res;
    return 0;
}

/* kv_replay's sink: each layer straight into the results, in order. */
static int add_layer_sink(void *ctx, const kv_layer_part *part, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    kv_results_add_layer(ctx, part);
    return 0;
}

int kv_replay(kv_trace *tr, const kv_replay_conf *conf, kv_results **out,
              char *err, size_t err_len)
{
    *out = NULL;
    const kv_trace_info *in = kv_trace_get_info(tr);
    int rc = replay_check(tr, conf, err, err_len);
    if (rc)
        return rc;
    kv_results *res = NULL;
    rc = kv_results_new(in, conf, &res, err, err_len);
    char why[256];
    if (rc == 0) {
        res->sparse = !kv_replay_dense_reason(conf, in, why, sizeof why);
        rc = kv_replay_layers(tr, conf, 0, in->n_layers, add_layer_sink, res, err, err_len);
    }
    if (rc) {
        kv_results_free(res);
        return rc;
    }
    kv_results_finish(res);
    *out = res;
    return 0;
}
