/*
 * engine.c - the replay engine (see engine.h and the README's "Replay semantics").
 *
 * One cache = one (run, layer, KV head). Per query position t the engine
 *   1. appends t to the cache: A_t = S u {t};
 *   2. prefill (t < P): hands the policy the full-cache rows p_t of the group's heads;
 *      decode (t >= P): computes recall_t^h = sum_{j in A_t} p_t^h[j] for each head and
 *      hands the policy o_t^h = p_t^h / recall_t^h over A_t (zeros when recall is 0);
 *   3. at t = P-1 and every decode step asks the policy which of A_t to keep, and
 *      compacts the cache to them.
 * Metrics (recall, kv tokens, metadata bytes) are taken at decode steps, on A_t, before
 * the eviction: that is what the query attended to.
 */
#include "sim/engine.h"
#include "sim/rows.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_BLOCK 64

typedef struct {
    const kv_policy_ops *ops;
    void *state;
    int head_lo;          /* first query head of the group */
    int n_heads;          /* query heads in the group */
    int budget;
    int n;                /* |S| (|A_t| while a step runs) */
    int *pos;             /* [T] cached positions, ascending */
    double *w;            /* [n_heads * T] row handed to the policy */
    unsigned char *keep;  /* [T] */
    /* per decode step, reduced into the run after the layer */
    double *recall_sum;   /* [D] sum over the group's heads of recall */
    long long *tokens;    /* [D] |A_t| */
    double *meta;         /* [D] bytes */
    int failed;           /* 1 when a bounded policy kept more than its budget */
} kv_cache;

int kv_replay_validate(const kv_replay_conf *conf, char *err, size_t err_len)
{
    for (int p = 0; p < conf->n_policies; p++) {
        const kv_policy_conf *pc = &conf->policies[p];
        for (int b = 0; b < conf->n_budgets; b++) {
            int budget = conf->budgets[b];
            char why[KV_ERRMSG] = "";
            if (budget < 1)
                snprintf(why, sizeof why, "budget must be at least 1 token, got %d", budget);
            else if (pc->ops->check && pc->ops->check(&pc->values, budget, why, sizeof why)
                     && !why[0])
                snprintf(why, sizeof why, "rejected by %s", pc->ops->name);
            if (why[0]) {
                snprintf(err, err_len, "policy '%s' at budget %d: %s", pc->label, budget, why);
                return 2;
            }
        }
    }
    return 0;
}

double kv_tokens_to_bytes(const kv_trace_info *info, long long kv_tokens)
{
    return (double)kv_tokens * 2.0 * info->head_dim * info->dtype_bytes;
}

/* A seed that differs for every cache and run, fixed for a given conf.seed. */
static unsigned long cache_seed(unsigned long base, int run, int layer, int kv_head)
{
    uint64_t x = base * 0x9E3779B97F4A7C15ull ^ ((uint64_t)run << 40) ^
                 ((uint64_t)layer << 20) ^ (uint64_t)kv_head;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    return (unsigned long)x;
}

static void cache_free(kv_cache *c)
{
    if (c->ops && c->state)
        c->ops->destroy(c->state);
    free(c->pos);
    free(c->w);
    free(c->keep);
    free(c->recall_sum);
    free(c->tokens);
    free(c->meta);
    memset(c, 0, sizeof *c);
}

static int cache_init(kv_cache *c, const kv_policy_conf *pc, int budget,
                      const kv_trace_info *in, int layer, int kv_head, unsigned long seed)
{
    int T = in->n_tokens, D = in->n_tokens - in->prefill_len;
    int group = in->n_heads / in->n_kv_heads;
    memset(c, 0, sizeof *c);
    c->ops = pc->ops;
    c->head_lo = kv_head * group;
    c->n_heads = group;
    c->budget = budget;
    c->pos = malloc((size_t)T * sizeof *c->pos);
    c->w = malloc((size_t)group * T * sizeof *c->w);
    c->keep = malloc((size_t)T);
    c->recall_sum = calloc((size_t)D, sizeof *c->recall_sum);
    c->tokens = calloc((size_t)D, sizeof *c->tokens);
    c->meta = calloc((size_t)D, sizeof *c->meta);
    kv_policy_ctx ctx = {
        .budget = budget, .group_size = group, .n_tokens = T,
        .prefill_len = in->prefill_len, .layer = layer, .kv_head = kv_head, .seed = seed,
    };
    if (c->pos && c->w && c->keep && c->recall_sum && c->tokens && c->meta)
        c->state = pc->ops->create(&pc->values, &ctx);
    if (!c->state) {
        cache_free(c);
        return -1;
    }
    return 0;
}

/* Step 3: apply the policy's choice. */
static void cache_select(kv_cache *c, int t, int is_prefill_end)
{
    kv_cache_view view = {
        .t = t, .n = c->n, .pos = c->pos, .budget = c->budget,
        .is_prefill_end = is_prefill_end,
    };
    memset(c->keep, 0, (size_t)c->n);
    c->ops->select(c->state, &view, c->keep);
    int m = 0;
    for (int i = 0; i < c->n; i++)
        if (c->keep[i])
            c->pos[m++] = c->pos[i];
    c->n = m;
    if (c->ops->bounded && m > c->budget)
        c->failed = 1;
}

/*
 * Steps 1-3 for query position t. rows is the current block (rows.h layout), nb its
 * height, t0 its first position. head_stats: [n_heads] sums and minima of this layer's
 * heads for this run.
 */
static void cache_step(kv_cache *c, const kv_trace_info *in, const float *rows, int nb,
                       int t0, int t, double *head_sum, double *head_min)
{
    int T = in->n_tokens, P = in->prefill_len;
    int is_prefill = t < P;
    c->pos[c->n++] = t;                                   /* step 1 */
    int n = c->n;
    double recall_sum = 0.0;
    for (int hh = 0; hh < c->n_heads; hh++) {             /* step 2 */
        int h = c->head_lo + hh;
        const float *p = rows + ((size_t)h * nb + (size_t)(t - t0)) * T;
        double *w = c->w + (size_t)hh * n;
        if (is_prefill) {
            for (int i = 0; i < n; i++)
                w[i] = p[c->pos[i]];
            continue;
        }
        double recall = 0.0;
        for (int i = 0; i < n; i++) {
            w[i] = p[c->pos[i]];
            recall += w[i];
        }
        /* rule 6: a zero denominator gives an all-zero observed row */
        double inv = recall > 0.0 ? 1.0 / recall : 0.0;
        for (int i = 0; i < n; i++)
            w[i] *= inv;
        recall_sum += recall;
        head_sum[h] += recall;
        if (recall < head_min[h])
            head_min[h] = recall;
    }
    kv_row row = {
        .t = t, .n = n, .pos = c->pos, .n_heads = c->n_heads, .w = c->w,
        .is_prefill = is_prefill,
    };
    if (!is_prefill) {
        int s = t - P;
        c->recall_sum[s] = recall_sum;
        c->tokens[s] = n;
        c->meta[s] = c->ops->meta_bytes ? (double)c->ops->meta_bytes(c->state, n) : 0.0;
    }
    c->ops->observe(c->state, &row);
    if (t == P - 1 || !is_prefill)                        /* step 3 */
        cache_select(c, t, t == P - 1);
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
    res->n_runs = conf->n_policies * conf->n_budgets;
    res->runs = calloc((size_t)res->n_runs, sizeof *res->runs);
    if (!res->runs)
        return -1;
    for (int r = 0; r < res->n_runs; r++) {
        kv_run_result *run = &res->runs[r];
        run->policy = r / conf->n_budgets;
        run->budget = conf->budgets[r % conf->n_budgets];
        run->step_recall = calloc((size_t)D, sizeof(double));
        run->step_kv_tokens = calloc((size_t)D, sizeof(long long));
        run->step_meta_bytes = calloc((size_t)D, sizeof(double));
        run->head_recall_mean = calloc((size_t)LH, sizeof(double));
        run->head_recall_min = malloc((size_t)LH * sizeof(double));
        run->retained = calloc((size_t)T, sizeof(int));
        if (!run->step_recall || !run->step_kv_tokens || !run->step_meta_bytes ||
            !run->head_recall_mean || !run->head_recall_min || !run->retained)
            return -1;
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
        free(run->step_recall);
        free(run->step_kv_tokens);
        free(run->step_meta_bytes);
        free(run->head_recall_mean);
        free(run->head_recall_min);
        free(run->retained);
    }
    free(res->runs);
    free(res);
}

/* Folds one layer's caches into the runs, in a fixed order (run, KV head). */
static void reduce_layer(kv_results *res, kv_cache *caches, int n_kv)
{
    for (int r = 0; r < res->n_runs; r++) {
        kv_run_result *run = &res->runs[r];
        for (int g = 0; g < n_kv; g++) {
            const kv_cache *c = &caches[r * n_kv + g];
            for (int s = 0; s < res->n_steps; s++) {
                run->step_recall[s] += c->recall_sum[s];
                run->step_kv_tokens[s] += c->tokens[s];
                run->step_meta_bytes[s] += c->meta[s];
            }
            for (int i = 0; i < c->n; i++)
                run->retained[c->pos[i]]++;
        }
    }
}

typedef struct {
    double start, last;
    int enabled, shown;
} progress;

static void progress_update(progress *pg, int layer, int n_layers, int t, int T)
{
    if (!pg->enabled)
        return;
    double now = now_seconds();
    if (now - pg->start < 1.0 || now - pg->last < 0.5)
        return;
    pg->last = now;
    pg->shown = 1;
    double done = ((double)layer + (double)t / T) / n_layers;
    double eta = done > 0 ? (now - pg->start) * (1.0 - done) / done : 0.0;
    fprintf(stderr, "\rkvsim: layer %d/%d, token %d/%d (%.0f%%, %.0f s left)   ",
            layer + 1, n_layers, t, T, 100.0 * done, eta);
    fflush(stderr);
}

/* Replays one layer for every run; caches[] holds n_runs * n_kv entries. */
static int replay_layer(kv_trace *tr, const kv_replay_conf *conf, kv_results *res, int layer,
                        kv_cache *caches, progress *pg, char *err, size_t err_len)
{
    const kv_trace_info *in = &res->info;
    int n_kv = in->n_kv_heads, T = in->n_tokens, H = in->n_heads;
    int n_caches = res->n_runs * n_kv;
    for (int r = 0; r < res->n_runs; r++) {
        const kv_policy_conf *pc = &conf->policies[res->runs[r].policy];
        for (int g = 0; g < n_kv; g++)
            if (cache_init(&caches[r * n_kv + g], pc, res->runs[r].budget, in, layer, g,
                           cache_seed(conf->seed, r, layer, g)) != 0) {
                snprintf(err, err_len, "out of memory creating the caches of layer %d", layer);
                return 1;
            }
    }
    kv_rows *rows = kv_rows_open(tr, layer, conf->block > 0 ? conf->block : DEFAULT_BLOCK,
                                 err, err_len);
    if (!rows)
        return 1;
    int rc = 0;
    for (int t0 = 0; t0 < T && rc == 0;) {
        int nb;
        const float *block = kv_rows_block(rows, t0, &nb, err, err_len);
        if (!block) {
            rc = 1;
            break;
        }
        #pragma omp parallel for schedule(dynamic, 1)
        for (int ci = 0; ci < n_caches; ci++) {
            kv_run_result *run = &res->runs[ci / n_kv];
            double *hs = run->head_recall_mean + (size_t)layer * H;
            double *hm = run->head_recall_min + (size_t)layer * H;
            for (int t = t0; t < t0 + nb; t++)
                cache_step(&caches[ci], in, block, nb, t0, t, hs, hm);
        }
        t0 += nb;
        progress_update(pg, layer, in->n_layers, t0, T);
    }
    kv_rows_close(rows);
    for (int ci = 0; rc == 0 && ci < n_caches; ci++)
        if (caches[ci].failed) {
            const kv_policy_conf *pc = &conf->policies[res->runs[ci / n_kv].policy];
            snprintf(err, err_len, "internal error: policy '%s' kept more than budget %d "
                     "tokens in layer %d", pc->label, res->runs[ci / n_kv].budget, layer);
            rc = 1;
        }
    if (rc == 0)
        reduce_layer(res, caches, n_kv);
    return rc;
}

int kv_replay(kv_trace *tr, const kv_replay_conf *conf, kv_results **out,
              char *err, size_t err_len)
{
    *out = NULL;
    int rc = kv_replay_validate(conf, err, err_len);
    if (rc)
        return rc;
    const kv_trace_info *in = kv_trace_get_info(tr);
    if (in->prefill_len >= in->n_tokens) {
        snprintf(err, err_len, "%s: prefill_len %d equals n_tokens %d: the trace has no "
                 "decode step to replay", kv_trace_path(tr), in->prefill_len, in->n_tokens);
        return 1;
    }
    kv_results *res = calloc(1, sizeof *res);
    kv_cache *caches = NULL;
    if (!res)
        goto nomem;
    res->info = *in;
    res->n_steps = in->n_tokens - in->prefill_len;
    if (results_alloc(res, in, conf) != 0)
        goto nomem;
    int n_caches = res->n_runs * in->n_kv_heads;
    caches = calloc((size_t)n_caches, sizeof *caches);
    if (!caches)
        goto nomem;
    progress pg = { .start = now_seconds(), .enabled = conf->progress };
    for (int l = 0; l < in->n_layers && rc == 0; l++) {
        rc = replay_layer(tr, conf, res, l, caches, &pg, err, err_len);
        for (int ci = 0; ci < n_caches; ci++)
            cache_free(&caches[ci]);
    }
    if (pg.shown)
        fprintf(stderr, "\rkvsim: replayed %d layers in %.1f s%30s\n", in->n_layers,
                now_seconds() - pg.start, "");
    free(caches);
    if (rc) {
        kv_results_free(res);
        return rc;
    }
    /* sums -> means: per step over layers and query heads, per head over steps */
    double units = (double)in->n_layers * in->n_heads;
    for (int r = 0; r < res->n_runs; r++) {
        kv_run_result *run = &res->runs[r];
        for (int s = 0; s < res->n_steps; s++)
            run->step_recall[s] /= units;
        for (int i = 0; i < in->n_layers * in->n_heads; i++)
            run->head_recall_mean[i] /= res->n_steps;
    }
    *out = res;
    return 0;
nomem:
    snprintf(err, err_len, "out of memory allocating the results");
    free(caches);
    kv_results_free(res);
    return 1;
}
