/*
 * closedloop.c - closed-loop evaluation (closedloop.h): every (policy, budget) run drives
 * its caches (sim/cache.h) from inside the model's attention.
 *
 * Sequence 0 of the batch is the full cache; sequence s >= 1 is run s - 1 of the results.
 * Per position t the driver
 *   1. (t < P, once for all runs) computes the full rows of every head from the shared
 *      prefill's q and k and steps every run's caches through them;
 *   2. (t >= P) embeds token t in every sequence, and per layer: q, k, v of every
 *      sequence (kv_model_batch_qkv), then per sequence and cache its own full rows, the
 *      cache's query (A_t), attention over A_t into the head outputs, the cache's update;
 *      then the output projection and the FFN of every sequence (kv_model_batch_mix);
 *   3. takes the logits of every sequence and the step's kl, nll and top1 against
 *      sequence 0.
 */
#include "sim/closedloop.h"
#include "sim/cache.h"
#include "sim/rows.h"
#include "traces/status.h"

#include <errno.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* One cache of one run in one layer. */
typedef struct {
    kv_cache cache;
    int run;       /* index into res->runs */
    int layer;
    int head_lo;   /* first query head of the cache's group */
    kv_joint *joint;   /* alloc = ada: the layer's joint selection, held by its first cache */
} cl_cache;

typedef struct {
    const kv_model *m;
    const kv_model_config *c;
    kv_results *res;
    int T, P, D, L, H, G, hs, group, n_seq;
    double scale;         /* the trace's softmax_scale, for the rows the caches see */
    int *tokens;          /* [T] */
    int *identity;        /* [T] 0..T-1, the caches' full-row positions */
    float *kv;            /* keys and values of every sequence, see kv_at */
    cl_cache *caches;
    int n_caches;
    int *first;           /* [n_runs * L + 1]: run r's caches of layer l are
                             caches[first[r * L + l] .. first[r * L + l + 1]) */
    float *scratch;       /* per sequence: H * T full rows, T weights */
    float *qs;            /* [H * head_size] one position's queries, for the prefill rows */
    size_t scratch_stride;
    double *recall_sum;   /* [n_runs * D] sum over layers and heads of recall_closed */
    double *logp_full;    /* [vocab] log-probabilities of sequence 0 at the current step */
    int failed_cache;     /* first cache that kept more than its bound, or -1 */
    unsigned char *sets;  /* with a dump: [n_runs][L][H][set_bytes], the step's A_t */
    size_t set_bytes;     /* ceil(T / 8) */
} cl_state;

/* Key (which = 0) or value (1) vectors of KV head g in layer l of sequence s: position j
 * at + j * head_size. */
static float *kv_at(const cl_state *st, int s, int l, int g, int which)
{
    size_t block = (size_t)st->T * (size_t)st->hs;
    return st->kv + ((((size_t)s * st->L + l) * st->G + g) * 2 + which) * block;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A seed per (run, layer, cache), fixed for a given base (splitmix64's finaliser). */
static unsigned long cl_seed(unsigned long base, int run, int layer, int cache)
{
    uint64_t x = base * 0x9E3779B97F4A7C15ull ^ ((uint64_t)run << 40) ^
                 ((uint64_t)layer << 20) ^ (uint64_t)cache ^ 0xC105ED100Full;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    return (unsigned long)x;
}

int kv_closed_loop_check(kv_trace *tr, const kv_model *m, const char *model_path, char *err,
                         size_t err_len)
{
    const kv_trace_info *in = kv_trace_get_info(tr);
    const kv_model_config *c = kv_model_get_config(m);
    const char *path = kv_trace_path(tr);
    char sha[128], why[512];
    if (kv_trace_read_attr_string(tr, "checkpoint_sha256", sha, sizeof sha, why,
                                  sizeof why)) {
        snprintf(err, err_len, "%s has no checkpoint_sha256 attribute (it was not captured "
                 "from a checkpoint), so it cannot be run closed-loop with %s", path,
                 model_path);
        return KV_EUSAGE;
    }
    if (strcmp(sha, kv_model_sha256(m)) != 0) {
        snprintf(err, err_len, "%s was captured from checkpoint sha256 %s, but %s has sha256 "
                 "%s: pass the checkpoint the trace was captured from", path, sha, model_path,
                 kv_model_sha256(m));
        return KV_EUSAGE;
    }
    if (in->n_layers != c->n_layers || in->n_heads != c->n_heads ||
        in->n_kv_heads != c->n_kv_heads || in->head_dim != c->head_size) {
        snprintf(err, err_len, "%s has %d layers, %d/%d heads of size %d, but %s has %d layers, "
                 "%d/%d heads of size %d", path, in->n_layers, in->n_heads, in->n_kv_heads,
                 in->head_dim, model_path, c->n_layers, c->n_heads, c->n_kv_heads,
                 c->head_size);
        return KV_EUSAGE;
    }
    if (!in->has_tokens) {
        snprintf(err, err_len, "%s has no /tokens: the closed loop needs the token ids to run "
                 "%s on", path, model_path);
        return KV_EUSAGE;
    }
    int32_t *tok = malloc((size_t)in->n_tokens * sizeof *tok);
    if (!tok) {
        snprintf(err, err_len, "out of memory reading the tokens of %s", path);
        return KV_ERUNTIME;
    }
    int rc = kv_trace_read_tokens(tr, tok, err, err_len) ? KV_ERUNTIME : 0;
    for (int t = 0; rc == 0 && t < in->n_tokens; t++)
        if (tok[t] < 0 || tok[t] >= c->vocab_size) {
            snprintf(err, err_len, "%s: /tokens[%d] = %d is outside the vocabulary 0..%d of %s",
                     path, t, (int)tok[t], c->vocab_size - 1, model_path);
            rc = KV_EUSAGE;
        }
    free(tok);
    return rc;
}

static void state_free(cl_state *st)
{
    for (int i = 0; i < st->n_caches; i++)
        kv_cache_free(&st->caches[i].cache);
    for (int i = 0; i < st->n_caches; i++)
        kv_joint_free(st->caches[i].joint);
    free(st->caches);
    free(st->first);
    free(st->tokens);
    free(st->identity);
    free(st->kv);
    free(st->scratch);
    free(st->qs);
    free(st->recall_sum);
    free(st->logp_full);
    free(st->sets);
}

/* Creates every run's caches, run-major then layer, as the replay lays them out: each at
 * its layer's budget, with the run's composing rules and its sequence's keys and values,
 * an alloc = ada layer's joined (sim/cache.h). */
static int create_caches(cl_state *st, const kv_policy_conf *policies, unsigned long seed)
{
    const kv_trace_info *in = &st->res->info;
    int n_runs = st->res->n_runs, n = 0;
    for (int r = 0; r < n_runs; r++)
        n += kv_caches_per_layer(&policies[st->res->runs[r].policy], in) * st->L;
    st->caches = calloc((size_t)n, sizeof *st->caches);
    st->first = malloc(((size_t)n_runs * st->L + 1) * sizeof *st->first);
    int *layer_budget = malloc((size_t)st->L * sizeof *layer_budget);
    int rc = !st->caches || !st->first || !layer_budget ? -1 : 0;
    for (int r = 0; rc == 0 && r < n_runs; r++) {
        const kv_policy_conf *pc = &policies[st->res->runs[r].policy];
        int per_layer = kv_caches_per_layer(pc, in), group = st->H / per_layer;
        int budget = st->res->runs[r].budget;
        kv_policy_layer_budgets(pc, budget, in, layer_budget);
        for (int l = 0; rc == 0 && l < st->L; l++) {
            int first = st->first[r * st->L + l] = st->n_caches;
            for (int i = 0; rc == 0 && i < per_layer; i++) {
                cl_cache *cc = &st->caches[st->n_caches];
                kv_policy_ctx ctx = {
                    .budget = layer_budget[l], .group_size = group,
                    .n_tokens = st->T, .prefill_len = st->P, .layer = l, .kv_head = i,
                    .seed = cl_seed(seed, r, l, i),
                    .held_cap = kv_alloc_held_cap(&pc->select, layer_budget[l], per_layer),
                    .head_dim = st->hs,
                };
                if (kv_cache_init(&cc->cache, pc->ops, &pc->values, &ctx,
                                  kv_cache_token_weight(pc, in), st->identity)) {
                    rc = -1;
                    break;
                }
                kv_cache_set_select(&cc->cache, &pc->select);
                int g = i * group / st->group;   /* the KV head whose vectors it holds */
                kv_cache_set_kv(&cc->cache, kv_at(st, r + 1, l, g, 0), kv_at(st, r + 1, l, g, 1),
                                st->hs);
                cc->run = r;
                cc->layer = l;
                cc->head_lo = i * group;
                st->n_caches++;
            }
            if (rc == 0 && pc->select.alloc == KV_ALLOC_ADA && per_layer > 1) {
                kv_cache *members[per_layer];
                for (int i = 0; i < per_layer; i++)
                    members[i] = &st->caches[first + i].cache;
                if (!(st->caches[first].joint = kv_joint_new(members, per_layer)))
                    rc = -1;
            }
        }
    }
    free(layer_budget);
    if (rc == 0)
        st->first[n_runs * st->L] = st->n_caches;
    return rc;
}

/* Pass over the full-cache generation with the model's own forward pass (kv_model_step,
 * capture's route): its prefill records become every sequence's keys and values of
 * positions < P; when a policy looks ahead, every row of the full run goes to its
 * prescan. Returns the run (for the prefill's q), or NULL with err set. */
static kv_model_run *full_pass(cl_state *st, char *err, size_t err_len)
{
    int any_prescan = 0;
    for (int i = 0; i < st->n_caches; i++)
        any_prescan |= kv_cache_prescans(&st->caches[i].cache);
    kv_model_run *run = NULL;
    if (kv_model_run_create(st->m, st->T, &run, err, err_len))
        return NULL;
    int end = any_prescan ? st->T : st->P;
    for (int t = 0; t < end; t++) {
        if (kv_model_step(run, st->tokens[t], t, err, err_len)) {
            kv_model_run_free(run);
            return NULL;
        }
        for (int i = 0; any_prescan && i < st->n_caches; i++) {
            cl_cache *cc = &st->caches[i];
            if (!kv_cache_prescans(&cc->cache))
                continue;
            kv_group_rows rows = { .p = kv_model_attn(run, cc->layer, cc->head_lo),
                                   .head_stride = (size_t)st->T };
            kv_cache_prescan(&cc->cache, t, &rows);
        }
    }
    size_t hs = (size_t)st->hs, T = (size_t)st->T;
    for (int l = 0; l < st->L; l++)
        for (int g = 0; g < st->G; g++)
            for (int s = 0; s < st->n_seq; s++) {
                memcpy(kv_at(st, s, l, g, 0), kv_model_k(run, l) + g * T * hs,
                       (size_t)st->P * hs * sizeof(float));
                memcpy(kv_at(st, s, l, g, 1), kv_model_v(run, l) + g * T * hs,
                       (size_t)st->P * hs * sizeof(float));
            }
    return run;
}

static void note_failure(cl_state *st, int ci)
{
    #pragma omp critical(kv_closed_loop_failure)
    if (st->failed_cache < 0 || ci < st->failed_cache)
        st->failed_cache = ci;
}

/* Step 1: the prompt, whose rows every run shares, recomputed from the full run's q and
 * k as the replay does (sim/rows.h). rows: H * T floats; qs: H * head_size. */
static void prefill(cl_state *st, const kv_model_run *run, float *rows, float *qs)
{
    size_t hs = (size_t)st->hs, T = (size_t)st->T;
    int n_runs = st->res->n_runs;
    for (int t = 0; t < st->P; t++)
        for (int l = 0; l < st->L; l++) {
            for (int h = 0; h < st->H; h++)   /* query t of every head, head after head */
                memcpy(qs + h * hs, kv_model_q(run, l) + ((size_t)h * T + (size_t)t) * hs,
                       hs * sizeof(float));
            for (int g = 0; g < st->G; g++)
                kv_attn_rows_from_qk(qs + (size_t)g * st->group * hs, st->group,
                                kv_model_k(run, l) + g * T * hs, st->hs, st->scale, t, t + 1,
                                rows + (size_t)g * st->group * T, T, NULL, 0, 0);
            #pragma omp parallel for schedule(dynamic)
            for (int r = 0; r < n_runs; r++)
                for (int i = st->first[r * st->L + l]; i < st->first[r * st->L + l + 1]; i++) {
                    cl_cache *cc = &st->caches[i];
                    kv_group_rows full = { .p = rows + (size_t)cc->head_lo * T,
                                           .head_stride = T };
                    kv_cache_query(&cc->cache, t, &full, NULL);
                    kv_cache_update(&cc->cache, t);
                    if (cc->cache.failed)
                        note_failure(st, i);
                }
        }
}

/* The dump's bitmaps of A_t for every query head of cache cc (run r, layer l). */
static void record_sets(cl_state *st, int r, int l, const cl_cache *cc)
{
    for (int hh = 0; hh < cc->cache.n_heads; hh++) {
        unsigned char *bits = st->sets +
            (((size_t)r * st->L + l) * st->H + (size_t)(cc->head_lo + hh)) * st->set_bytes;
        memset(bits, 0, st->set_bytes);
        for (int i = 0; i < cc->cache.n; i++)
            bits[cc->cache.pos[i] / 8] |= (unsigned char)(1u << (cc->cache.pos[i] % 8));
    }
}

/* Step 2 for sequence s in layer l at decode position t: store its key and value, then
 * attend: sequence 0 over every position, a run's heads over their cache's A_t. */
static void attend_sequence(cl_state *st, kv_model_batch *b, int s, int l, int t)
{
    size_t hs = (size_t)st->hs, T = (size_t)st->T;
    for (int g = 0; g < st->G; g++) {
        memcpy(kv_at(st, s, l, g, 0) + (size_t)t * hs, kv_model_batch_k(b, s) + g * hs,
               hs * sizeof(float));
        memcpy(kv_at(st, s, l, g, 1) + (size_t)t * hs, kv_model_batch_v(b, s) + g * hs,
               hs * sizeof(float));
    }
    const float *q = kv_model_batch_q(b, s);
    float *heads = kv_model_batch_heads(b, s);
    float *full = st->scratch + (size_t)s * st->scratch_stride;
    float *row = full + (size_t)st->H * T;
    if (s == 0) {
        for (int h = 0; h < st->H; h++) {
            int g = h / st->group;
            kv_model_attend(q + h * hs, kv_at(st, 0, l, g, 0), kv_at(st, 0, l, g, 1), st->hs,
                            NULL, t + 1, row, heads + h * hs);
        }
        return;
    }
    int r = s - 1;
    for (int i = st->first[r * st->L + l]; i < st->first[r * st->L + l + 1]; i++) {
        cl_cache *cc = &st->caches[i];
        kv_cache *c = &cc->cache;
        /* The cache's query needs the run's own full rows p_t before A_t is known (an
         * oracle chooses S from them): computed as the replay recomputes rows from q and
         * k (sim/rows.h), one product per KV head of the cache's heads. */
        for (int hh = 0; hh < c->n_heads;) {
            int h = cc->head_lo + hh, g = h / st->group;
            int n_q = (g + 1) * st->group - h;   /* the heads up to the KV group's end */
            n_q = n_q < c->n_heads - hh ? n_q : c->n_heads - hh;
            kv_attn_rows_from_qk(q + h * hs, n_q, kv_at(st, s, l, g, 0), st->hs, st->scale, t,
                            t + 1, full + (size_t)hh * T, T, NULL, 0, 0);
            hh += n_q;
        }
        kv_group_rows rows = { .p = full, .head_stride = T };
        kv_step_metrics m;
        kv_cache_query(c, t, &rows, &m);
        if (st->sets)
            record_sets(st, r, l, cc);
        st->recall_sum[(size_t)r * st->D + (size_t)(t - st->P)] += m.recall;
        /* the model's softmax over A_t only: what its attention computes, bit for bit
         * kv_model_step's when A_t holds every position */
        for (int hh = 0; hh < c->n_heads; hh++) {
            int h = cc->head_lo + hh, g = h / st->group;
            kv_model_attend(q + h * hs, kv_at(st, s, l, g, 0), kv_at(st, s, l, g, 1), st->hs,
                            c->pos, c->n, row, heads + h * hs);
        }
        kv_cache_update(c, t);
        if (c->failed)
            note_failure(st, i);
    }
}

/* log-softmax of x[0..n) in double into out (out NULL: only the log normaliser); returns
 * log sum exp and the maximum through *mx. */
static double log_normaliser(const float *x, int n, double *mx)
{
    double top = -INFINITY;
    for (int i = 0; i < n; i++)
        top = x[i] > top ? x[i] : top;
    double z = 0.0;
    for (int i = 0; i < n; i++)
        z += exp((double)x[i] - top);
    *mx = top;
    return log(z);
}

/* The most likely token: the lowest id among equal maxima. */
static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* Step 3 at decode position t <= T-2: kl, nll and top1 of every run against sequence 0. */
static void step_metrics(cl_state *st, const float *logits, int t)
{
    int V = st->c->vocab_size, next = st->tokens[t + 1], d = t - st->P;
    double mx0, lse0 = log_normaliser(logits, V, &mx0);
    for (int v = 0; v < V; v++)
        st->logp_full[v] = ((double)logits[v] - mx0) - lse0;
    double nll_full = -st->logp_full[next];
    int top_full = argmax(logits, V);
    #pragma omp parallel for schedule(static)
    for (int r = 0; r < st->res->n_runs; r++) {
        const float *x = logits + (size_t)(r + 1) * V;
        double mx, lse = log_normaliser(x, V, &mx), kl = 0.0;
        for (int v = 0; v < V; v++) {
            double lp = ((double)x[v] - mx) - lse, lpf = st->logp_full[v];
            kl += exp(lpf) * (lpf - lp);
        }
        kv_step_metrics *m = &st->res->runs[r].steps[d];
        m->kl = kl;
        m->nll = -(((double)x[next] - mx) - lse);
        m->nll_full = nll_full;
        m->top1 = argmax(x, V) == top_full;
    }
}

/* Sets the closed loop's fields of every run's steps to NaN (no value), as before. */
static void clear_outputs(kv_results *res)
{
    for (int r = 0; r < res->n_runs; r++)
        for (int d = 0; d < res->n_steps; d++) {
            kv_step_metrics *m = &res->runs[r].steps[d];
            m->kl = m->nll = m->nll_full = m->top1 = m->recall_closed = NAN;
        }
}

/* Steps 2-3 for every decode position. */
/* Progress on stderr once the loop passes a second: one line rewritten on a terminal, a
 * line every 10 s otherwise (a log). */
static void progress_line(const cl_state *st, int t, double start, double *last, int tty)
{
    double now = now_seconds();
    if (now - start < 1.0 || now - *last < (tty ? 0.2 : 10.0))
        return;
    *last = now;
    fprintf(stderr, tty ? "\rkvsim: closed loop, %d runs: position %d/%d"
                        : "kvsim: closed loop, %d runs: position %d/%d\n",
            st->n_seq - 1, t + 1, st->T);
}

static int decode(cl_state *st, kv_model_batch *b, int progress, FILE *dump)
{
    double start = now_seconds(), last = start;
    int tty = isatty(STDERR_FILENO);
    for (int t = st->P; t < st->T && st->failed_cache < 0; t++) {
        kv_model_batch_embed(b, st->tokens[t], t);
        for (int l = 0; l < st->L; l++) {
            kv_model_batch_qkv(b, l);
            #pragma omp parallel for schedule(dynamic)
            for (int s = 0; s < st->n_seq; s++)
                attend_sequence(st, b, s, l, t);
            kv_model_batch_mix(b, l);
        }
        const float *logits = kv_model_batch_logits(b);
        if (t <= st->T - 2)
            step_metrics(st, logits, t);
        size_t n_sets = (size_t)(st->n_seq - 1) * st->L * st->H * st->set_bytes;
        if (dump && fwrite(st->sets, 1, n_sets, dump) != n_sets)
            return -1;
        if (progress)
            progress_line(st, t, start, &last, tty);
    }
    if (progress && last > start)
        fprintf(stderr, "%skvsim: closed loop, %d runs: %d positions in %.1f s%20s\n",
                tty ? "\r" : "", st->n_seq - 1, st->T, now_seconds() - start, "");
    return 0;
}

/* Opens the dump of A_t and writes its header; NULL with err set on failure. */
static FILE *open_dump(const cl_state *st, const kv_policy_conf *policies, const char *path,
                       char *err, size_t err_len)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        snprintf(err, err_len, "%s: cannot write the closed loop's sets: %s", path,
                 strerror(errno));
        return NULL;
    }
    fprintf(f, "KVSETS1\n%d %d %d %d %d\n", st->T, st->P, st->res->n_runs, st->L, st->H);
    for (int r = 0; r < st->res->n_runs; r++)
        fprintf(f, "%s\t%d\n", policies[st->res->runs[r].policy].label,
                st->res->runs[r].budget);
    return f;
}

int kv_closed_loop(kv_trace *tr, const kv_model *m, const kv_policy_conf *policies,
                   kv_results *res, const kv_closed_loop_opts *opts, char *err,
                   size_t err_len)
{
    const kv_trace_info *in = &res->info;
    const kv_model_config *c = kv_model_get_config(m);
    cl_state st = {
        .m = m, .c = c, .res = res, .T = in->n_tokens, .P = in->prefill_len,
        .D = res->n_steps, .L = in->n_layers, .H = in->n_heads, .G = in->n_kv_heads,
        .hs = in->head_dim, .group = in->n_heads / in->n_kv_heads, .n_seq = res->n_runs + 1,
        .scale = in->softmax_scale,
        .failed_cache = -1,
    };
    kv_model_batch *b = NULL;
    kv_model_run *run = NULL;
    int32_t *tok32 = malloc((size_t)st.T * sizeof *tok32);
    st.tokens = malloc((size_t)st.T * sizeof *st.tokens);
    st.identity = malloc((size_t)st.T * sizeof *st.identity);
    st.kv = malloc((size_t)st.n_seq * st.L * st.G * 2 * (size_t)st.T * st.hs * sizeof(float));
    st.scratch_stride = (size_t)(st.H + 1) * st.T;   /* full rows, one row */
    st.scratch = malloc((size_t)st.n_seq * st.scratch_stride * sizeof(float));
    st.qs = malloc((size_t)st.H * st.hs * sizeof(float));
    st.recall_sum = calloc((size_t)res->n_runs * st.D, sizeof *st.recall_sum);
    st.logp_full = malloc((size_t)c->vocab_size * sizeof *st.logp_full);
    int rc = 0;
    if (!tok32 || !st.tokens || !st.identity || !st.kv || !st.scratch || !st.qs ||
        !st.recall_sum ||
        !st.logp_full) {
        snprintf(err, err_len, "out of memory for the closed loop of %d runs", res->n_runs);
        rc = KV_ERUNTIME;
    }
    if (rc == 0 && kv_trace_read_tokens(tr, tok32, err, err_len))
        rc = KV_ERUNTIME;
    for (int t = 0; rc == 0 && t < st.T; t++) {
        st.tokens[t] = tok32[t];
        st.identity[t] = t;
    }
    free(tok32);
    st.set_bytes = ((size_t)st.T + 7) / 8;
    FILE *dump = NULL;
    if (rc == 0 && opts->dump_sets) {
        st.sets = malloc((size_t)res->n_runs * st.L * st.H * st.set_bytes);
        if (!st.sets) {
            snprintf(err, err_len, "out of memory for the closed loop's sets");
            rc = KV_ERUNTIME;
        } else if (!(dump = open_dump(&st, policies, opts->dump_sets, err, err_len))) {
            rc = KV_ERUNTIME;
        }
    }
    if (rc == 0 && create_caches(&st, policies, opts->seed)) {
        snprintf(err, err_len, "out of memory creating the closed loop's caches");
        rc = KV_ERUNTIME;
    }
    if (rc == 0 && kv_model_batch_create(m, st.n_seq, &b, err, err_len))
        rc = KV_ERUNTIME;
    if (rc == 0 && !(run = full_pass(&st, err, err_len)))
        rc = KV_ERUNTIME;
    /* one SGEMM per thread for the caches' rows: the BLAS starts no threads of its own */
    int blas_threads = kv_blas_single_begin();
    if (rc == 0) {
        prefill(&st, run, st.scratch, st.qs);
        if (decode(&st, b, opts->progress, dump) != 0) {
            snprintf(err, err_len, "%s: writing the closed loop's sets failed: %s",
                     opts->dump_sets, strerror(errno));
            rc = KV_ERUNTIME;
        }
    }
    kv_blas_threads_restore(blas_threads);
    if (dump && fclose(dump) != 0 && rc == 0) {
        snprintf(err, err_len, "%s: writing the closed loop's sets failed: %s",
                 opts->dump_sets, strerror(errno));
        rc = KV_ERUNTIME;
    }
    if (rc == 0 && st.failed_cache >= 0) {
        const cl_cache *cc = &st.caches[st.failed_cache];
        snprintf(err, err_len, "internal error: policy '%s' kept more than %d tokens at "
                 "budget %d in layer %d (closed loop)",
                 policies[res->runs[cc->run].policy].label, cc->cache.max_held,
                 cc->cache.budget, cc->layer);
        rc = KV_ERUNTIME;
    }
    if (rc == 0) {
        double units = (double)st.L * st.H;
        for (int r = 0; r < res->n_runs; r++)
            for (int d = 0; d < st.D; d++)
                res->runs[r].steps[d].recall_closed = st.recall_sum[(size_t)r * st.D + d] / units;
    } else {
        clear_outputs(res);
    }
    kv_model_run_free(run);
    kv_model_batch_free(b);
    state_free(&st);
    return rc;
}
