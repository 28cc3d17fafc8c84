/*
 * test_alloc.c - budgets shared out over layers and caches, and the rules that compose
 * with any scorer (sim/alloc.h), against values worked out by hand:
 *   - pyramid's layer budgets for hand-worked geometries (the linear fall, the clip at
 *     P - window, the fallback, the residue to the lowest layers);
 *   - totals: the layer budgets sum to L * B for every option over a sweep, and a replay
 *     of the real traces gives sum over (layer, cache) of the budgets = L * G * B and, at
 *     every decode step, the same total kv_tokens as the uniform run (ada moves tokens
 *     between caches, never adds any);
 *   - ada's kept sets on a hand-worked two-cache example (floors, then the joint top,
 *     sizes drifting), chunk's and value_weight's kept sets with tova's scores
 *     (knorm, keydiff and cur's own kept sets are in tests/test_rules_<name>.c);
 *   - the refusals (a policy without scores, a trace without q/k, without v): one line,
 *     exit status 2;
 *   - the same results with 1 and 2 threads for ada, pyramid, chunk, value_weight and the
 *     key scorers on a real trace.
 */
#define _DEFAULT_SOURCE   /* wait4 in kv_cli.h */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "tests/kv_cli.h"
#include "tests/kv_test.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim/alloc.h"
#include "sim/cache.h"
#include "sim/engine.h"
#include "traces/trace.h"

#define REAL_TRACE "traces/data/stories260K_T512_P128_seed1.h5"

/* ------------------------------------------------------------- pyramid */

static void pyramid(int B, int w, int P, int L, double beta, int *out)
{
    kv_select_opts o = { .alloc = KV_ALLOC_PYRAMID, .beta = beta };
    kv_alloc_layer_budgets(&o, B, w, P, L, out);
}

static void test_pyramid_by_hand(void **state)
{
    (void)state;
    int out[8];
    /* B = 64, w = 2, P = 128, L = 4: m = 62, lo = 3.1, hi = 120.9 (< P - w = 126), steps
     * 39.2667: parts 120.9, 81.63, 42.37, 3.1 -> floors 120, 81, 42, 3 (246 of 248): the
     * residue 2 to layers 0 and 1 -> 121, 82, 42, 3, plus the window. */
    pyramid(64, 2, 128, 4, 20, out);
    assert_int_equal(out[0], 123);
    assert_int_equal(out[1], 84);
    assert_int_equal(out[2], 44);
    assert_int_equal(out[3], 5);
    /* beta = 2: lo = 31, hi = 93, steps 20.67: 93, 72.33, 51.67, 31 -> 93, 72, 51, 31 (247):
     * +1 to layer 0 -> 94, 72, 51, 31, plus 2. */
    pyramid(64, 2, 128, 4, 2, out);
    assert_int_equal(out[0], 96);
    assert_int_equal(out[1], 74);
    assert_int_equal(out[2], 53);
    assert_int_equal(out[3], 33);
    /* hi clipped: B = 100, w = 4, P = 128, L = 3: m = 96, hi = 187.2 >= 124 -> hi = 124,
     * lo = 192 - 124 = 68, steps 28: 124, 96, 68, plus 4. */
    pyramid(100, 4, 128, 3, 20, out);
    assert_int_equal(out[0], 128);
    assert_int_equal(out[1], 100);
    assert_int_equal(out[2], 72);
    /* the fallback: B = 64, w = 32: lo = 1.6 < w -> every layer B */
    pyramid(64, 32, 128, 4, 20, out);
    for (int l = 0; l < 4; l++)
        assert_int_equal(out[l], 64);
    /* B > P: lo > hi -> B */
    pyramid(200, 2, 128, 4, 20, out);
    for (int l = 0; l < 4; l++)
        assert_int_equal(out[l], 200);
    /* uniform and ada: B everywhere */
    kv_select_opts ada = { .alloc = KV_ALLOC_ADA };
    kv_alloc_layer_budgets(&ada, 64, 2, 128, 4, out);
    for (int l = 0; l < 4; l++)
        assert_int_equal(out[l], 64);
}

static void test_totals(void **state)
{
    (void)state;
    int out[16];
    const double betas[] = { 1, 1.5, 2, 7, 20 };
    for (int a = 0; a < 3; a++)
        for (int L = 1; L <= 16; L += 3)
            for (int B = 1; B <= 300; B += 7)
                for (int w = 0; w <= B; w += 1 + B / 5)
                    for (int P = 1; P <= 400; P += 37)
                        for (int k = 0; k < 5; k++) {
                            kv_select_opts o = { .alloc = (kv_alloc_mode)a, .beta = betas[k] };
                            kv_alloc_layer_budgets(&o, B, w, P, L, out);
                            long sum = 0;
                            for (int l = 0; l < L; l++) {
                                sum += out[l];
                                assert_true(out[l] >= w);
                                if (l > 0)
                                    assert_true(out[l] <= out[l - 1]);
                            }
                            if (sum != (long)L * B)
                                fail_msg("alloc %d L=%d B=%d w=%d P=%d beta=%g: total %ld",
                                         a, L, B, w, P, betas[k], sum);
                        }
}

/* The run of policy `type` with `settings` (engine-level ones included) on the real trace
 * at budgets[0..n), with n_threads threads. */
static kv_results *replay_real(const char *type, const char *settings, const int *budgets,
                               int n, int n_threads)
{
    kv_policy_conf pc;
    kv_test_policy(&pc, type, type, settings);
    char err[512];
    kv_replay_conf conf = { .policies = &pc, .n_policies = 1, .budgets = budgets,
                            .n_budgets = n, .seed = 1 };
    kv_trace *tr;
    if (kv_trace_open(REAL_TRACE, &tr, err, sizeof err))
        fail_msg("%s", err);
    omp_set_num_threads(n_threads);
    kv_results *res = NULL;
    if (kv_replay(tr, &conf, &res, err, sizeof err))
        fail_msg("%s %s: %s", type, settings, err);
    kv_trace_close(tr);
    return res;
}

static void test_replay_totals(void **state)
{
    (void)state;
    const int budgets[] = { 16, 64, 100 };
    const char *const runs[][2] = {
        { "h2o", NULL }, { "h2o", "alloc=pyramid" }, { "h2o", "alloc=ada" },
        { "snapkv", "window=2,alloc=pyramid" },
        { "snapkv", "window=2,alloc=ada" }, { "knorm", "window=2,alloc=pyramid" },
        { "keydiff", "alloc=ada" }, { "morphkv", "window=2,alloc=ada" },
        { "tova", "chunk=4" }, { "cur", "alloc=ada" },
    };
    kv_results *uniform = replay_real("h2o", NULL, budgets, 3, 2);
    const kv_trace_info *in = &uniform->info;
    int pyramid_differs = 0;
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        kv_results *res = replay_real(runs[i][0], runs[i][1], budgets, 3, 2);
        for (int b = 0; b < 3; b++) {
            const kv_run_result *run = &res->runs[b];
            int G = run->caches_per_layer;
            long sum = 0;
            for (int c = 0; c < in->n_layers * G; c++) {
                sum += run->cache_budget[c];
                pyramid_differs |= run->cache_budget[c] != budgets[b];
            }
            if (sum != (long)in->n_layers * G * budgets[b])
                fail_msg("%s %s B=%d: budgets total %ld", runs[i][0], runs[i][1], budgets[b],
                         sum);
            /* bounded policies hold B + 1 per cache at every decode step (P > B): the
             * same total whatever the allocation */
            if (strcmp(runs[i][0], "snapkv") == 0 || budgets[b] >= in->prefill_len)
                continue;
            for (int s = 0; s < res->n_steps; s++)
                if (run->steps[s].kv_tokens != uniform->runs[b].steps[s].kv_tokens)
                    fail_msg("%s %s B=%d step %d: kv_tokens %g, uniform %g", runs[i][0],
                             runs[i][1], budgets[b], s, run->steps[s].kv_tokens,
                             uniform->runs[b].steps[s].kv_tokens);
        }
        kv_results_free(res);
    }
    assert_true(pyramid_differs);   /* some run's layers did get different budgets */
    kv_results_free(uniform);
}

/* ------------------------------------------------------ one or two tova caches by hand */

/* Rows of one cache (one query head): rows[t] holds p_t over 0..t (floats). */
typedef struct {
    float rows[8][8];
} hand_rows;

static void init_tova(kv_cache *c, int T, int P, int B, int held_cap, int *identity)
{
    kv_param_values v;
    const kv_policy_ops *ops = kv_policy_find("tova");
    kv_params_defaults(ops, &v);
    kv_policy_ctx ctx = { .budget = B, .group_size = 1, .n_tokens = T, .prefill_len = P,
                          .held_cap = held_cap };
    assert_int_equal(kv_cache_init(c, ops, &v, &ctx, 1, identity), 0);
}

static void set_of(const kv_cache *c, char *out)
{
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < c->n; i++)
        used += (size_t)snprintf(out + used, 64 - used, "%s%d", i ? "," : "", c->pos[i]);
}

static void test_ada_two_caches(void **state)
{
    (void)state;
    /* T = 6, P = 4, B = 2, alpha = 0.5: each cache keeps floor(0.5 * 2) = 1 by its own
     * score, the layer's other 4 - 2 places go to the best remaining over both. Cache 1's
     * head puts no weight on its cache (an all-zero row, rule 6): without the floors it
     * would lose every position to cache 0. */
    static const hand_rows r[2] = {
        { { { 1 }, { .5f, .5f }, { .25f, .25f, .5f }, { .1f, .2f, .3f, .4f },
            { .1f, .1f, .1f, .1f, .6f }, { .2f, .2f, .2f, .2f, .1f, .1f } } },
        { { { 1 }, { .5f, .5f }, { .25f, .25f, .5f }, { 0, 0, 0, 0 },
            { 1, 0, 0, 0, 0 }, { .2f, .2f, .2f, .2f, .1f, .1f } } },
    };
    int identity[6] = { 0, 1, 2, 3, 4, 5 };
    kv_cache c[2];
    kv_cache *cs[2] = { &c[0], &c[1] };
    kv_select_opts o = { .alloc = KV_ALLOC_ADA, .alpha = 0.5, .alpha_given = 1 };
    for (int g = 0; g < 2; g++) {
        init_tova(&c[g], 6, 4, 2, 4, identity);
        kv_cache_set_select(&c[g], &o);
    }
    kv_joint *j = kv_joint_new(cs, 2);
    assert_non_null(j);
    char s0[64], s1[64];
    for (int t = 0; t < 5; t++) {
        kv_step_metrics m[2];
        /* a driver that steps one cache after the other (query, update): the update of
         * the last cache of the layer selects for both */
        for (int g = 0; g < 2; g++) {
            kv_group_rows rows = { .p = r[g].rows[t] };
            kv_cache_query(&c[g], t, &rows, &m[g]);
            kv_cache_update(&c[g], t);
        }
        if (t == 4) {   /* the sizes drifted: 4 and 2 positions attended */
            assert_int_equal((int)m[0].kv_tokens, 4);
            assert_int_equal((int)m[1].kv_tokens, 2);
        }
        set_of(&c[0], s0);
        set_of(&c[1], s1);
        if (t == 3) {
            /* prompt: own floors 3 (0.4) and 3 (0, the most recent of its ties); then
             * cache 0's 2 (0.3) and 1 (0.2) beat cache 1's zeros */
            assert_string_equal(s0, "1,2,3");
            assert_string_equal(s1, "3");
        }
        if (t == 4) {
            /* o_4: cache 0 {1,2,3,4} = 1/9, 1/9, 1/9, 6/9; cache 1 {3,4} = 0, 0. Floors
             * 4 and 4; then cache 0's most recent 1/9s: 3 and 2 */
            assert_string_equal(s0, "2,3,4");
            assert_string_equal(s1, "4");
        }
    }
    kv_joint_free(j);
    kv_cache_free(&c[0]);
    kv_cache_free(&c[1]);
}

/* One tova cache with options o through the prompt (T = 7, P = 6, B = 3) with row
 * p_5 = last; earlier rows uniform. The kept set after the prompt compression. */
static void tova_prompt(const kv_select_opts *o, const float *last, const float *values,
                        char *out)
{
    int identity[7] = { 0, 1, 2, 3, 4, 5, 6 };
    float uniform[7] = { 1, 1, 1, 1, 1, 1, 1 };
    kv_cache c;
    init_tova(&c, 7, 6, 3, 3, identity);
    kv_cache_set_select(&c, o);
    kv_cache_set_kv(&c, NULL, values, 2);
    for (int t = 0; t < 6; t++) {
        kv_group_rows rows = { .p = t == 5 ? last : uniform };
        kv_cache_step(&c, t, &rows, NULL);
    }
    set_of(&c, out);
    kv_cache_free(&c);
}

static void test_chunk_by_hand(void **state)
{
    (void)state;
    const float last[6] = { .2f, .2f, 0, .35f, .05f, .2f };
    char s[64];
    kv_select_opts none = { 0 }, chunk = { .chunk = 2 };
    /* by position: 3 (0.35), then the 0.2s from the most recent: 5, 1 */
    tova_prompt(&none, last, NULL, s);
    assert_string_equal(s, "1,3,5");
    /* chunks {0,1} = 0.4, {2,3} = 0.35, {4,5} = 0.25: {0,1} whole, then one place from
     * {2,3}: its best, 3 */
    tova_prompt(&chunk, last, NULL, s);
    assert_string_equal(s, "0,1,3");
    /* chunks of 4: {0..3} = 0.75 does not fit B = 3: its best 3 entries (3, then the
     * 0.2s from the most recent: 1, 0) */
    kv_select_opts chunk4 = { .chunk = 4 };
    tova_prompt(&chunk4, last, NULL, s);
    assert_string_equal(s, "0,1,3");
}

static void test_value_weight_by_hand(void **state)
{
    (void)state;
    const float last[6] = { .1f, .1f, .1f, .1f, .3f, .3f };
    /* L1 norms 10, 1, 1, 5, 1, 1 */
    const float values[14] = { 4, -6, 1, 0, 0, -1, 2, 3, 1, 0, 0, 1, 0, 0 };
    char s[64];
    kv_select_opts none = { 0 }, l1 = { .value_weight = KV_VALUE_WEIGHT_L1 };
    tova_prompt(&none, last, values, s);
    assert_string_equal(s, "3,4,5");   /* 0.3, 0.3, then the most recent 0.1 */
    /* 1.0, 0.1, 0.1, 0.5, 0.3, 0.3: 0, 3, then the more recent 0.3 */
    tova_prompt(&l1, last, values, s);
    assert_string_equal(s, "0,3,5");
}

/* ------------------------------------------------------------------ refusals */

/* A trace with attention rows only (no q, k or v): 1 layer, 2 heads, T = 8, P = 4. */
static void write_attn_only(const char *path)
{
    kv_trace_info info = { .model = "test", .n_layers = 1, .n_heads = 2, .n_kv_heads = 1,
                           .head_dim = 4, .n_tokens = 8, .prefill_len = 4,
                           .source = KV_SOURCE_ATTN };
    kv_trace_writer *w;
    char err[512];
    if (kv_trace_create(path, &info, 0, &w, err, sizeof err))
        fail_msg("%s", err);
    float rows[8 * 8] = { 0 };
    for (int t = 0; t < 8; t++)
        for (int j = 0; j <= t; j++)
            rows[t * 8 + j] = 1.0f / (t + 1);
    for (int h = 0; h < 2; h++)
        if (kv_trace_write_attn_rows(w, 0, h, 0, 8, rows, err, sizeof err))
            fail_msg("%s", err);
    if (kv_trace_finish(w, err, sizeof err))
        fail_msg("%s", err);
}

static void expect_refusal(const char *trace, const char *policy, const char *set,
                           const char *set2, const char *words)
{
    const char *out = kv_test_path("refused");
    const char *args[] = { "run", "--trace", trace, "--policies", policy, "--budgets", "4",
                           "--no-plot", "-q", "-o", out, set ? "--set" : NULL, set,
                           set2 ? "--set" : NULL, set2, NULL };
    kv_cli_result r;
    assert_int_equal(kv_cli_run(args, NULL, &r), 2);
    assert_int_equal(kv_cli_lines(r.err), 1);
    if (!strstr(r.err, words))
        fail_msg("'%s' not in: %s", words, r.err);
}

static void test_refusals(void **state)
{
    (void)state;
    char attn[300], qk[300];
    snprintf(attn, sizeof attn, "%s", kv_test_path("attn_only.h5"));
    snprintf(qk, sizeof qk, "%s", kv_test_path("qk_no_v.h5"));
    write_attn_only(attn);
    kv_test_gen_small(qk, 3, 0, 0);
    expect_refusal(qk, "window", "window.alloc=ada", NULL, "no position scores");
    expect_refusal(qk, "streamingllm", "streamingllm.chunk=4", NULL, "no position scores");
    expect_refusal(qk, "random", "random.value_weight=l1", NULL, "no position scores");
    expect_refusal(qk, "full", "full.alloc=pyramid", NULL, "no position scores");
    expect_refusal(attn, "knorm", NULL, NULL, "no q/k");
    expect_refusal(attn, "keydiff", NULL, NULL, "no q/k");
    expect_refusal(qk, "cur", NULL, NULL, "no /layers/<l>/v");
    expect_refusal(qk, "h2o", "h2o.value_weight=l1", NULL, "no /layers/<l>/v");
    expect_refusal(qk, "h2o", "h2o.alloc=ada", "h2o.chunk=2", "cannot be combined");
    /* B = 4, no window, P = 40, 2 layers: lo = 0.2, hi = 7.8 -> floors 7, 0, the residue
     * to layer 0: 8, 0; a budget of 0 is no budget */
    expect_refusal(qk, "knorm", "knorm.alloc=pyramid", NULL,
                   "alloc=pyramid gives layer 1 budget 0");
}

/* `kvsim policies` names every composing option with the paper it comes from, and the new
 * policies with theirs. */
static void test_policies_listing(void **state)
{
    (void)state;
    char cmd[512], out[32768];
    snprintf(cmd, sizeof cmd, "%s policies", kv_cli_bin());
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    assert_int_equal(pclose(p), 0);
    const char *words[] = { "alloc", "uniform|pyramid|ada", "PyramidKV", "AdaKV", "chunk",
                            "ChunkKV", "value_weight", "VATP", "pyramid_beta", "ada_alpha",
                            "knorm: ", "Devoto et al. 2024", "keydiff: ", "Park et al. 2025",
                            "cur: ", "CURPress" };
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (!strstr(out, words[i]))
            fail_msg("kvsim policies does not list '%s'", words[i]);
}

/* --------------------------------------------------------- thread identity */

static void test_threads(void **state)
{
    (void)state;
    const int budgets[] = { 24, 64 };
    const char *const runs[][2] = {
        { "h2o", "alloc=ada" }, { "snapkv", "window=2,alloc=ada" },
        { "morphkv", "window=4,alloc=ada,kv_granularity=query_head" },
        { "snapkv", "window=2,alloc=pyramid" }, { "tova", "chunk=3" },
        { "h2o", "value_weight=l1" }, { "knorm", "window=2" }, { "keydiff", "alloc=ada" },
        { "cur", "value_weight=l1" },
    };
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        kv_results *a = replay_real(runs[i][0], runs[i][1], budgets, 2, 1);
        kv_results *b = replay_real(runs[i][0], runs[i][1], budgets, 2, 2);
        const kv_trace_info *in = &a->info;
        for (int r = 0; r < 2; r++) {
            const kv_run_result *x = &a->runs[r], *y = &b->runs[r];
            size_t n_final = (size_t)in->n_layers * in->n_kv_heads * in->n_tokens;
            if (memcmp(x->steps, y->steps, (size_t)a->n_steps * sizeof *x->steps) ||
                memcmp(x->final_sets, y->final_sets, n_final * sizeof *x->final_sets) ||
                memcmp(x->head_recall_mean, y->head_recall_mean,
                       (size_t)in->n_layers * in->n_heads * sizeof(double)))
                fail_msg("%s %s: 1 and 2 threads differ", runs[i][0], runs[i][1]);
        }
        kv_results_free(a);
        kv_results_free(b);
    }
}

static int setup(void **state)
{
    (void)state;
    return kv_test_dir_make("kvsim-test-alloc");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pyramid_by_hand),
        cmocka_unit_test(test_totals),
        cmocka_unit_test(test_replay_totals),
        cmocka_unit_test(test_ada_two_caches),
        cmocka_unit_test(test_chunk_by_hand),
        cmocka_unit_test(test_value_weight_by_hand),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_policies_listing),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, setup, kv_test_dir_teardown);
}
