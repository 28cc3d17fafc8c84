/*
 * test_sparse.c - the stored log-normalisers (`kvsim index`, sim/index.h) and the sparse
 * replay they allow (sim/engine.h):
 *   - o_full_t^h of a few rows of a trace with v, the same way;
 *   - lse_t^h of a few rows against a softmax normaliser worked here in double from the
 *     stored q and k (an independent route: no SGEMM, no float exponentials);
 *   - the sparse and the dense replay of the same run keep the same set in every cache
 *     after every step (final sets, lifetimes of every eviction) and measure the same
 *     recall within float rounding, for every policy that can replay sparsely, both
 *     granularities and a layer-scope policy;
 *   - the output error of every decode step: the sparse replay's (the stored o_full, the
 *     cache's output from its by-slot weights) against the dense replay's (o_full and the
 *     output from the full rows), on a generated trace with v and a committed one;
 *   - recall over runs of positions from the rows' span sums, against a sum by hand;
 *   - which runs take the sparse path (kv_replay_dense_reason), and attn traces refused.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>

#include "kv_test.h"
#include "sim/commands.h"
#include "sim/index.h"
#include "sim/rows.h"
#include "traces/status.h"
#include "traces/trace.h"

#define H5_IDX "idx.h5"
#define H5_WITH_V "with_v.h5"   /* H5_IDX's q and k with a v added, indexed */
#define REAL_TRACE "traces/data/stories260K_T512_P128_seed1.h5"

/* The value at (KV head g, position j, dimension d) of H5_WITH_V's v: a fixed pattern. */
static float pattern_v(size_t i)
{
    return (float)((i * 7) % 13) / 13.0f - 0.5f;
}

/* H5_WITH_V: H5_IDX's q and k, v = pattern_v, indexed (lse and o_full). */
static int write_with_v(void)
{
    kv_trace *tr = NULL;
    kv_trace_writer *w = NULL;
    char err[512];
    if (kv_trace_open(kv_test_path(H5_IDX), &tr, err, sizeof err))
        return -1;
    kv_trace_info in = *kv_trace_get_info(tr);
    size_t T = (size_t)in.n_tokens, hd = (size_t)in.head_dim;
    float *q = malloc(in.n_heads * T * hd * sizeof *q);
    float *k = malloc(in.n_kv_heads * T * hd * sizeof *k);
    float *v = malloc(in.n_kv_heads * T * hd * sizeof *v);
    int rc = !q || !k || !v || kv_trace_create(kv_test_path(H5_WITH_V), &in, 0, &w, err,
                                                 sizeof err);
    for (size_t i = 0; !rc && i < in.n_kv_heads * T * hd; i++)
        v[i] = pattern_v(i);
    for (int l = 0; !rc && l < in.n_layers; l++)
        rc = kv_trace_read_qk(tr, l, q, k, err, sizeof err) ||
             kv_trace_write_qk(w, l, q, k, v, err, sizeof err);
    if (w && kv_trace_finish(w, err, sizeof err))
        rc = -1;
    kv_trace_close(tr);
    free(q);
    free(k);
    free(v);
    return rc || kv_index_trace(kv_test_path(H5_WITH_V), 0, err, sizeof err) ? -1 : 0;
}

static int setup(void **state)
{
    (void)state;
    if (kv_test_dir_make("kvsim-sparse"))
        return -1;
    kv_test_gen_small(kv_test_path(H5_IDX), 7, 0, 0);
    char err[512];
    return kv_index_trace(kv_test_path(H5_IDX), 0, err, sizeof err) || write_with_v() ? -1 : 0;
}

/* lse of (layer, h, t) from the trace's q and k, in double: max + log sum exp. */
static double lse_by_hand(const kv_trace_info *in, const float *q, const float *k, int h,
                          int t)
{
    int hd = in->head_dim, g = h / (in->n_heads / in->n_kv_heads), T = in->n_tokens;
    double x[512], max = -INFINITY, sum = 0;
    for (int j = 0; j <= t; j++) {
        double dot = 0;
        for (int d = 0; d < hd; d++)
            dot += (double)q[((size_t)h * T + t) * hd + d] * k[((size_t)g * T + j) * hd + d];
        x[j] = in->softmax_scale * dot;
        max = x[j] > max ? x[j] : max;
    }
    for (int j = 0; j <= t; j++)
        sum += exp(x[j] - max);
    return max + log(sum);
}

static void test_lse_by_hand(void **state)
{
    (void)state;
    kv_trace *tr = NULL;
    char err[512];
    assert_int_equal(kv_trace_open(kv_test_path(H5_IDX), &tr, err, sizeof err), 0);
    const kv_trace_info *in = kv_trace_get_info(tr);
    assert_int_equal(in->has_lse, 1);
    size_t T = (size_t)in->n_tokens, hd = (size_t)in->head_dim;
    float *q = malloc(in->n_heads * T * hd * sizeof *q);
    float *k = malloc(in->n_kv_heads * T * hd * sizeof *k);
    double *lse = malloc(in->n_heads * T * sizeof *lse);
    assert_non_null(q);
    assert_non_null(k);
    assert_non_null(lse);
    for (int l = 0; l < in->n_layers; l++) {
        assert_int_equal(kv_trace_read_qk(tr, l, q, k, err, sizeof err), 0);
        assert_int_equal(kv_trace_read_lse(tr, l, lse, err, sizeof err), 0);
        const int rows[][2] = { {0, 0}, {1, 5}, {2, 39}, {3, 40}, {0, 95}, {3, 95} };
        for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
            int h = rows[i][0], t = rows[i][1];
            double want = lse_by_hand(in, q, k, h, t), got = lse[(size_t)h * T + t];
            if (fabs(got - want) > 1e-5 * (1 + fabs(want)))
                fail_msg("layer %d head %d t %d: lse %.9g, by hand %.9g", l, h, t, got, want);
        }
        /* row 0 attends to itself only: lse = its one logit */
        assert_true(fabs(lse[0] - lse_by_hand(in, q, k, 0, 0)) < 1e-5);
    }
    free(q);
    free(k);
    free(lse);
    kv_trace_close(tr);
}

static void replay_trace(const char *path, kv_policy_conf *pcs, int n, const int *budgets,
                         int n_budgets, int dense, kv_results **out)
{
    kv_trace *tr = NULL;
    char err[512];
    assert_int_equal(kv_trace_open(path, &tr, err, sizeof err), 0);
    kv_replay_conf conf = { .policies = pcs, .n_policies = n, .budgets = budgets,
                            .n_budgets = n_budgets, .block = 16, .seed = 5, .no_topk = 1,
                            .dense = dense };
    if (kv_replay(tr, &conf, out, err, sizeof err))
        fail_msg("%s", err);
    kv_trace_close(tr);
}

static void replay(kv_policy_conf *pcs, int n, const int *budgets, int n_budgets, int dense,
                   kv_results **out)
{
    replay_trace(kv_test_path(H5_IDX), pcs, n, budgets, n_budgets, dense, out);
}

/* The ten policies both sparse-versus-dense tests replay: every policy that can replay
 * sparsely, both granularities and a layer scope. */
static void sparse_policies(kv_policy_conf pcs[10])
{
    kv_test_policy(&pcs[0], "full", "full", NULL);
    kv_test_policy(&pcs[1], "window", "window", NULL);
    kv_test_policy(&pcs[2], "streamingllm", "streamingllm", "sinks=2");
    kv_test_policy(&pcs[3], "h2o", "h2o", NULL);
    kv_test_policy(&pcs[4], "h2o-max", "h2o", "gqa=max,kv_granularity=query_head");
    kv_test_policy(&pcs[5], "snapkv", "snapkv", "window=8");
    kv_test_policy(&pcs[6], "morphkv", "morphkv", "window=8");
    kv_test_policy(&pcs[7], "tova", "tova", NULL);
    kv_test_policy(&pcs[8], "tova-layer", "tova", "scope=layer");
    kv_test_policy(&pcs[9], "random", "random", NULL);
}

/* Same kept sets and evictions, recall within float rounding, every policy that can. */
static void test_sparse_equals_dense(void **state)
{
    (void)state;
    kv_policy_conf pcs[10];
    sparse_policies(pcs);
    const int budgets[] = { 12, 24 };
    kv_results *sp = NULL, *dn = NULL;
    replay(pcs, 10, budgets, 2, 0, &sp);
    replay(pcs, 10, budgets, 2, 1, &dn);
    assert_int_equal(sp->sparse, 1);
    assert_int_equal(dn->sparse, 0);
    const kv_trace_info *in = &sp->info;
    size_t sets = (size_t)in->n_layers * in->n_kv_heads * in->n_tokens;
    double worst = 0;
    for (int r = 0; r < sp->n_runs; r++) {
        const kv_run_result *a = &sp->runs[r], *b = &dn->runs[r];
        if (memcmp(a->final_sets, b->final_sets, sets * sizeof *a->final_sets))
            fail_msg("%s at %d: the final sets differ", pcs[a->policy].label, a->budget);
        if (memcmp(a->lifetimes, b->lifetimes, (sp->n_steps + 1) * sizeof *a->lifetimes))
            fail_msg("%s at %d: the evictions differ", pcs[a->policy].label, a->budget);
        for (int s = 0; s < sp->n_steps; s++) {
            double d = fabs(a->steps[s].recall - b->steps[s].recall);
            worst = d > worst ? d : worst;
            assert_true(a->steps[s].kv_tokens == b->steps[s].kv_tokens);
            assert_true(isnan(a->steps[s].topk1) && isnan(b->steps[s].topk8));
        }
    }
    if (worst > 1e-5)
        fail_msg("recall differs by %g between the sparse and the dense replay", worst);
    kv_results_free(sp);
    kv_results_free(dn);
}

/*
 * The largest difference of out_err between two replays of the same runs, per decode step
 * (steps: the mean over layers and heads) and per head (heads: the mean over steps); fails
 * when either measured NaN, or when out_err is 0 in every step of every run but `full`
 * (a comparison of nothing).
 */
static double out_err_worst(const kv_results *a, const kv_results *b, const kv_policy_conf *pcs)
{
    const kv_trace_info *in = &a->info;
    double worst = 0, largest = 0;
    for (int r = 0; r < a->n_runs; r++) {
        const kv_run_result *x = &a->runs[r], *y = &b->runs[r];
        for (int s = 0; s < a->n_steps; s++) {
            double ex = x->steps[s].out_err, ey = y->steps[s].out_err;
            if (isnan(ex) || isnan(ey))
                fail_msg("%s at %d, step %d: out_err not measured", pcs[x->policy].label,
                         x->budget, s);
            worst = fmax(worst, fabs(ex - ey));
            if (strcmp(pcs[x->policy].label, "full") != 0)
                largest = fmax(largest, ey);
        }
        for (int h = 0; h < in->n_layers * in->n_heads; h++)
            worst = fmax(worst, fabs(x->head_out_err_mean[h] - y->head_out_err_mean[h]));
    }
    if (largest < 1e-3)
        fail_msg("out_err is at most %g: the runs evict nothing that matters", largest);
    return worst;
}

/* The output error of every decode step: the sparse replay's against the dense one's. */
static void test_sparse_out_err(void **state)
{
    (void)state;
    kv_policy_conf pcs[10];
    sparse_policies(pcs);
    const int budgets[] = { 12, 24 };
    kv_results *sp = NULL, *dn = NULL;
    replay_trace(kv_test_path(H5_WITH_V), pcs, 10, budgets, 2, 0, &sp);
    replay_trace(kv_test_path(H5_WITH_V), pcs, 10, budgets, 2, 1, &dn);
    assert_int_equal(sp->sparse, 1);
    assert_int_equal(dn->sparse, 0);
    /* float rounding of the weights (as recall's): measured 6.8e-7 here, 1.3e-7 below */
    double worst = out_err_worst(sp, dn, pcs);
    if (worst > 1e-5)
        fail_msg("out_err differs by %g between the sparse and the dense replay", worst);
    kv_results_free(sp);
    kv_results_free(dn);
    /* a committed trace of a trained model (stories260K, 5 layers, head_dim 8) */
    kv_test_policy(&pcs[0], "window", "window", NULL);
    kv_test_policy(&pcs[1], "h2o", "h2o", NULL);
    kv_test_policy(&pcs[2], "morphkv", "morphkv", NULL);
    const int real_budgets[] = { 48, 96 };
    replay_trace(REAL_TRACE, pcs, 3, real_budgets, 2, 0, &sp);
    replay_trace(REAL_TRACE, pcs, 3, real_budgets, 2, 1, &dn);
    assert_int_equal(sp->sparse, 1);
    assert_int_equal(dn->sparse, 0);
    worst = out_err_worst(sp, dn, pcs);
    if (worst > 1e-5)
        fail_msg("%s: out_err differs by %g between the sparse and the dense replay",
                 REAL_TRACE, worst);
    kv_results_free(sp);
    kv_results_free(dn);
}

/* o_full_t^h = sum_j p_t^h[j] v_j by hand in double, on a copy of the generated trace with
 * a v added (its q and k, v a fixed pattern). */
static void test_o_full_by_hand(void **state)
{
    (void)state;
    kv_trace *tr = NULL;
    char err[512];
    assert_int_equal(kv_trace_open(kv_test_path(H5_WITH_V), &tr, err, sizeof err), 0);
    kv_trace_info in = *kv_trace_get_info(tr);
    size_t T = (size_t)in.n_tokens, hd = (size_t)in.head_dim;
    float *q = malloc(in.n_layers * in.n_heads * T * hd * sizeof *q);
    float *k = malloc(in.n_layers * in.n_kv_heads * T * hd * sizeof *k);
    float *v = malloc(in.n_kv_heads * T * hd * sizeof *v);
    float *o = malloc(in.n_heads * T * hd * sizeof *o);
    assert_true(q && k && v && o);
    for (int l = 0; l < in.n_layers; l++)
        assert_int_equal(kv_trace_read_qk(tr, l, q + l * in.n_heads * T * hd,
                                          k + l * in.n_kv_heads * T * hd, err, sizeof err), 0);
    for (size_t i = 0; i < in.n_kv_heads * T * hd; i++)
        v[i] = pattern_v(i);
    assert_int_equal(kv_trace_get_info(tr)->has_o_full, 1);
    assert_int_equal(kv_trace_read_o_full(tr, 1, o, err, sizeof err), 0);
    kv_trace_close(tr);
    const float *q1 = q + in.n_heads * T * hd, *k1 = k + in.n_kv_heads * T * hd;
    int group = in.n_heads / in.n_kv_heads;
    const int rows[][2] = { {0, 0}, {1, 17}, {2, 39}, {3, 95} };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        int h = rows[i][0], t = rows[i][1], g = h / group;
        double lse = lse_by_hand(&in, q1, k1, h, t);
        for (size_t d = 0; d < hd; d++) {
            double want = 0;
            for (int j = 0; j <= t; j++) {
                double dot = 0;
                for (size_t e = 0; e < hd; e++)
                    dot += (double)q1[((size_t)h * T + t) * hd + e] * k1[((size_t)g * T + j) * hd + e];
                want += exp(in.softmax_scale * dot - lse) * v[((size_t)g * T + j) * hd + d];
            }
            double got = o[((size_t)h * T + t) * hd + d];
            if (fabs(got - want) > 1e-5)
                fail_msg("head %d t %d d %zu: o_full %.9g, by hand %.9g", h, t, d, got, want);
        }
    }
    free(q);
    free(k);
    free(v);
    free(o);
}

/* Recall over A_t from span sums (runs of consecutive positions: window, streamingllm's
 * sinks and tail) and by gather (random's scattered set) against the sum over c->pos
 * worked here, at every decode step of a 300-position row stream. */
static void test_span_recall(void **state)
{
    (void)state;
    enum { TT = 300, PP = 70, BB = 150 };
    static float p[TT];
    static double span[TT / KV_ROW_SPAN + 1];
    static int identity[TT];
    for (int j = 0; j < TT; j++)
        identity[j] = j;
    const char *types[] = { "window", "streamingllm", "random", "full" };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        kv_policy_conf pc;
        kv_test_policy(&pc, types[i], types[i], NULL);
        kv_policy_ctx ctx = { .budget = BB, .group_size = 1, .n_tokens = TT,
                              .prefill_len = PP, .seed = 3 };
        kv_cache c;
        assert_int_equal(kv_cache_init(&c, pc.ops, &pc.values, &ctx, 1, identity), 0);
        kv_step_metrics m;
        double worst = 0;
        for (int t = 0; t < TT; t++) {
            for (int j = 0; j <= t; j++)   /* positive, uneven, 9 orders of magnitude */
                p[j] = (float)(((j * 37 + t * 11) % 101) + 1) * (j % 5 == 0 ? 1e-9f : 1e-3f);
            kv_row_span_sums(p, t, span);
            kv_group_rows rows = { .p = p, .cum = span };
            kv_cache_query(&c, t, &rows, &m);
            if (t >= PP) {
                double want = 0;
                for (int k = 0; k < c.n; k++)
                    want += p[c.pos[k]];
                double d = fabs(c.head_recall[0] - want) / want;
                worst = d > worst ? d : worst;
            }
            kv_cache_update(&c, t);
        }
        if (worst > 1e-13)
            fail_msg("%s: recall off by %g (relative) from the sum over A_t", types[i], worst);
        kv_cache_free(&c);
    }
}

/* Which runs replay sparsely, and the reason the others do not. */
static void test_dense_reasons(void **state)
{
    (void)state;
    kv_trace *tr = NULL;
    char err[512], why[256];
    assert_int_equal(kv_trace_open(kv_test_path(H5_IDX), &tr, err, sizeof err), 0);
    kv_trace_info in = *kv_trace_get_info(tr);
    kv_trace_close(tr);
    kv_policy_conf pcs[2];
    kv_test_policy(&pcs[0], "h2o", "h2o", NULL);
    kv_test_policy(&pcs[1], "oracle", "oracle", NULL);
    kv_replay_conf conf = { .policies = pcs, .n_policies = 1, .no_topk = 1 };
    assert_int_equal(kv_replay_dense_reason(&conf, &in, why, sizeof why), 0);
    conf.no_topk = 0;
    assert_int_equal(kv_replay_dense_reason(&conf, &in, why, sizeof why), 1);
    assert_non_null(strstr(why, "top-k"));
    conf.no_topk = 1;
    conf.n_policies = 2;
    assert_int_equal(kv_replay_dense_reason(&conf, &in, why, sizeof why), 1);
    assert_non_null(strstr(why, "'oracle'"));
    conf.n_policies = 1;
    conf.dense = 1;
    assert_int_equal(kv_replay_dense_reason(&conf, &in, why, sizeof why), 1);
    conf.dense = 0;
    /* out_err: sparse with the stored full-cache outputs, dense without them */
    in.has_v = 1;
    in.has_o_full = 1;
    assert_int_equal(kv_replay_dense_reason(&conf, &in, why, sizeof why), 0);
    in.has_o_full = 0;
    assert_int_equal(kv_replay_dense_reason(&conf, &in, why, sizeof why), 1);
    assert_non_null(strstr(why, "full-cache outputs"));
    conf.no_out_err = 1;
    assert_int_equal(kv_replay_dense_reason(&conf, &in, why, sizeof why), 0);
    in.has_lse = 0;
    assert_int_equal(kv_replay_dense_reason(&conf, &in, why, sizeof why), 1);
    assert_non_null(strstr(why, "kvsim index"));
}

/* An unindexed trace has no lse; an attn trace has nothing to index. */
static void test_index_cli(void **state)
{
    (void)state;
    const char *plain = kv_test_path("plain.h5");
    kv_test_gen_small(plain, 3, 0, 0);
    kv_trace *tr = NULL;
    char err[512];
    assert_int_equal(kv_trace_open(plain, &tr, err, sizeof err), 0);
    assert_int_equal(kv_trace_get_info(tr)->has_lse, 0);
    double lse[4 * 96];
    assert_int_equal(kv_trace_read_lse(tr, 0, lse, err, sizeof err), KV_ETRACE_ARG);
    kv_trace_close(tr);
    char *argv[] = { "index", (char *)plain, "-q", NULL };
    assert_int_equal(kv_test_call_quiet(kv_cmd_index, 3, argv), 0);
    assert_int_equal(kv_trace_open(plain, &tr, err, sizeof err), 0);
    assert_int_equal(kv_trace_get_info(tr)->has_lse, 1);
    kv_trace_close(tr);
    /* indexing again replaces the datasets */
    assert_int_equal(kv_test_call_quiet(kv_cmd_index, 3, argv), 0);
    const char *attn = kv_test_path("attn.h5");
    kv_gen_params gp;
    kv_gen_defaults(&gp);
    gp.n_layers = 1, gp.n_heads = 2, gp.n_kv_heads = 1, gp.head_dim = 8;
    gp.n_tokens = 32, gp.prefill_len = 8;
    assert_int_equal(kv_gen_write(attn, &gp, 0, 1, err, sizeof err), 0);
    assert_int_equal(kv_index_trace(attn, 0, err, sizeof err), KV_EUSAGE);
    assert_non_null(strstr(err, "source = attn"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lse_by_hand),
        cmocka_unit_test(test_sparse_equals_dense),
        cmocka_unit_test(test_o_full_by_hand),
        cmocka_unit_test(test_sparse_out_err),
        cmocka_unit_test(test_span_recall),
        cmocka_unit_test(test_dense_reasons),
        cmocka_unit_test(test_index_cli),
    };
    return cmocka_run_group_tests(tests, setup, kv_test_dir_teardown);
}
