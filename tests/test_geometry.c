/*
 * test_geometry - named model geometries and a policy's memory projected onto them
 * (sim/geometry.h, kv_budget_footprint_steps in sim/budget.h): bytes against values
 * worked out by hand from the models' published configurations, and the projection at a
 * trace's own geometry against the real replay of that trace (an independent route: the
 * engine's per-step sums over every cache).
 */
#define _DEFAULT_SOURCE   /* wait4 in kv_cli.h */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_cli.h"
#include "kv_test.h"
#include "sim/budget.h"
#include "sim/engine.h"
#include "sim/geometry.h"
#include "sim/plot.h"

#define REAL_TRACE "traces/data/stories260K_T512_P128_seed1.h5"

/* Policy `type`, labelled by its type, with "k=v,..." settings (NULL: the defaults). */
static kv_policy_conf policy(const char *type, const char *settings)
{
    kv_policy_conf pc;
    kv_test_policy(&pc, type, type, settings);
    return pc;
}

/* A trace of T = 512, P = 128 (the committed real traces' lengths) at geometry name. */
static kv_trace_info at_model(const char *name)
{
    kv_trace_info trace = { .version = 1, .n_layers = 5, .n_heads = 8, .n_kv_heads = 4,
                            .head_dim = 8, .n_tokens = 512, .prefill_len = 128,
                            .source = KV_SOURCE_QK, .dtype_bytes = 4 };
    char err[256];
    const kv_model_geometry *g = kv_geometry_find(name, err, sizeof err);
    if (!g)
        fail_msg("%s", err);
    kv_trace_info out;
    kv_geometry_apply(g, &trace, &out);
    return out;
}

static void test_table(void **state)
{
    (void)state;
    char err[256];
    const kv_model_geometry *g = kv_geometry_find("Llama-3.1-8B", err, sizeof err);
    assert_non_null(g);
    assert_int_equal(g->n_layers, 32);
    assert_int_equal(g->n_heads, 32);
    assert_int_equal(g->n_kv_heads, 8);
    assert_int_equal(g->head_dim, 128);
    g = kv_geometry_find("qwen2.5-7b", err, sizeof err);
    assert_non_null(g);
    assert_int_equal(g->n_layers * 1000 + g->n_heads * 10 + g->n_kv_heads, 28284);
    assert_null(kv_geometry_find("gpt-2", err, sizeof err));
    assert_non_null(strstr(err, "unknown model geometry 'gpt-2'"));
    assert_non_null(strstr(err, "mistral-7b-v0.2"));
    kv_trace_info in = at_model("mistral-7b-v0.2");
    assert_int_equal(in.n_tokens, 512);      /* the trace's lengths are kept */
    assert_int_equal(in.prefill_len, 128);
    assert_int_equal(in.dtype_bytes, 2);
}

/* Every decode step of `window` at B = 64 holds |A_t| = 65 tokens per cache. */
static void test_window_by_hand(void **state)
{
    (void)state;
    double kv[384], meta[384];
    char err[256];
    /* Llama-3.1-8B, one cache per KV head: 65 tokens * 32 layers * 8 KV heads * 2 (K, V)
     * * 128 * 2 bytes = 65 * 256 * 512 = 8,519,680 bytes */
    kv_policy_conf w = policy("window", NULL);
    kv_trace_info llama = at_model("llama-3.1-8b");
    assert_int_equal(kv_budget_footprint_steps(&w, &llama, 64, kv, meta, err, sizeof err), 0);
    for (int i = 0; i < 384; i++) {
        assert_true(kv[i] == 8519680.0);
        assert_true(meta[i] == 0.0);
    }
    /* per query head: 32 * 32 = 1024 caches, 4x: 34,078,720 bytes */
    kv_policy_conf wq = policy("window", "kv_granularity=query_head");
    assert_int_equal(kv_budget_footprint_steps(&wq, &llama, 64, kv, meta, err, sizeof err), 0);
    assert_true(kv[0] == 34078720.0 && kv[383] == 34078720.0);
    /* Qwen2.5-7B: 65 * 28 * 4 * 512 = 3,727,360; per query head (28 * 28 caches) 7x:
     * 26,091,520 */
    kv_trace_info qwen = at_model("qwen2.5-7b");
    assert_int_equal(kv_budget_footprint_steps(&w, &qwen, 64, kv, meta, err, sizeof err), 0);
    assert_true(kv[100] == 3727360.0);
    assert_int_equal(kv_budget_footprint_steps(&wq, &qwen, 64, kv, meta, err, sizeof err), 0);
    assert_true(kv[100] == 26091520.0);
}

/* MorphKV, window 32, B = 64, on Llama-3.1-8B: KV as window's; its profile is
 * min(32, rows) * group * |A_t| * 4 bytes per cache. From the first decode step 128 rows
 * have been seen, so 32 * 4 * 65 * 4 = 33,280 bytes per KV-head cache, * 256 caches =
 * 8,519,680; per query head 32 * 1 * 65 * 4 = 8,320 per cache * 1024 caches, the same
 * total, while its KV goes 4x. */
static void test_morphkv_by_hand(void **state)
{
    (void)state;
    double kv[384], meta[384];
    char err[256];
    kv_trace_info llama = at_model("llama-3.1-8b");
    kv_policy_conf m = policy("morphkv", "window=32");
    assert_int_equal(kv_budget_footprint_steps(&m, &llama, 64, kv, meta, err, sizeof err), 0);
    assert_true(kv[0] == 8519680.0 && kv[383] == 8519680.0);
    assert_true(meta[0] == 8519680.0 && meta[383] == 8519680.0);
    kv_policy_conf mq = policy("morphkv", "window=32,kv_granularity=query_head");
    assert_int_equal(kv_budget_footprint_steps(&mq, &llama, 64, kv, meta, err, sizeof err), 0);
    assert_true(kv[0] == 34078720.0);
    assert_true(meta[0] == 8519680.0);
}

/* SnapKV with decode = none keeps the B prompt tokens its prefill step selects and every
 * decoded token: |A_t| = B + (t - P) + 1 per cache. At B = 64 on Qwen2.5-7B (112 caches
 * per KV head, 512 bytes per token and cache): step P holds 65 tokens, 3,727,360 bytes;
 * step T-1 = 511 holds 64 + 383 + 1 = 448 tokens, 448 * 112 * 512 = 25,690,112 bytes;
 * per query head 7x: 179,830,784. H2O keeps B + 1 with one float32 score per token and
 * cache (gqa = sum): 65 * 4 * 112 = 29,120 metadata bytes. */
static void test_growing_by_hand(void **state)
{
    (void)state;
    double kv[384], meta[384];
    char err[256];
    kv_trace_info qwen = at_model("qwen2.5-7b");
    kv_policy_conf s = policy("snapkv", "window=32");
    assert_int_equal(kv_budget_footprint_steps(&s, &qwen, 64, kv, meta, err, sizeof err), 0);
    assert_true(kv[0] == 3727360.0);
    assert_true(kv[383] == 25690112.0);
    kv_policy_conf sq = policy("snapkv", "window=32,kv_granularity=query_head");
    assert_int_equal(kv_budget_footprint_steps(&sq, &qwen, 64, kv, meta, err, sizeof err), 0);
    assert_true(kv[383] == 179830784.0);
    kv_policy_conf h = policy("h2o", NULL);
    assert_int_equal(kv_budget_footprint_steps(&h, &qwen, 64, kv, meta, err, sizeof err), 0);
    assert_true(kv[7] == 3727360.0);
    assert_true(meta[7] == 29120.0);
}

/* At the real trace's own geometry the projection is the replay's steps.tsv memory,
 * step by step, for both granularities. */
static void test_projection_matches_replay(void **state)
{
    (void)state;
    char err[512];
    kv_trace *tr;
    if (kv_trace_open(REAL_TRACE, &tr, err, sizeof err))
        fail_msg("%s (run from the repository root)", err);
    const kv_trace_info *in = kv_trace_get_info(tr);
    kv_policy_conf pcs[] = {
        policy("morphkv", "window=32"), policy("morphkv", "window=32,kv_granularity=query_head"),
        policy("snapkv", "window=32"), policy("snapkv", "window=32,kv_granularity=query_head"),
        policy("h2o", NULL), policy("h2o", "kv_granularity=query_head"),
    };
    int n = (int)(sizeof pcs / sizeof pcs[0]);
    int budgets[] = { 64 };
    int D = in->n_tokens - in->prefill_len;
    double *kv = malloc((size_t)D * sizeof *kv), *meta = malloc((size_t)D * sizeof *meta);
    assert_non_null(kv);
    assert_non_null(meta);
    for (int p = 0; p < n; p++) {
        kv_replay_conf conf = { .policies = &pcs[p], .n_policies = 1, .budgets = budgets,
                                .n_budgets = 1 };
        kv_results *res;
        if (kv_replay(tr, &conf, &res, err, sizeof err))
            fail_msg("%s", err);
        assert_int_equal(kv_budget_footprint_steps(&pcs[p], in, 64, kv, meta, err,
                                                   sizeof err), 0);
        for (int i = 0; i < D; i++) {
            double replay_kv = kv_tokens_to_bytes(in, (long long)res->runs[0].steps[i].kv_tokens);
            if (kv[i] != replay_kv || meta[i] != res->runs[0].steps[i].meta_bytes)
                fail_msg("policy %d step %d: projected %.0f + %.0f, replay %.0f + %.0f", p,
                         i, kv[i], meta[i], replay_kv, res->runs[0].steps[i].meta_bytes);
        }
        kv_results_free(res);
    }
    free(kv);
    free(meta);
    kv_trace_close(tr);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    if (buf)
        buf[n] = '\0';
    fclose(f);
    return buf;
}

/* `kvsim project` on the real trace: its peak rows worked out by hand (Qwen2.5-7B, B =
 * 64: window holds 65 tokens in each of 28 * 4 caches at 512 bytes per token and cache,
 * 3,727,360 bytes; h2o per query head 65 tokens in 28 * 28 caches, 26,091,520 bytes, plus
 * one float32 score per token and cache, 65 * 4 * 784 = 203,840), one row per decode step
 * and policy, and the usage errors. */
static void test_project_command(void **state)
{
    (void)state;
    char ini[512], out[512];
    snprintf(out, sizeof out, "%s", kv_test_path("proj"));
    snprintf(ini, sizeof ini, "%s", kv_test_path("proj.ini"));
    FILE *f = fopen(ini, "w");
    assert_non_null(f);
    fprintf(f, "[experiment]\ntrace = " REAL_TRACE "\nbudgets = 64\noutput = %s\n"
            "[policy window]\ntype = window\n"
            "[policy h2o-qh]\ntype = h2o\nkv_granularity = query_head\n", out);
    fclose(f);
    const char *args[] = { "project", ini, "--geometry", "qwen2.5-7b",
                           "--no-plot", "-q", NULL };
    kv_cli_result r;
    if (kv_cli_run(args, NULL, &r) != 0)
        fail_msg("kvsim project: exit %d: %s", r.code, r.err);
    char path[600];
    snprintf(path, sizeof path, "%s/projection_peaks.tsv", out);
    char *peaks = slurp(path);
    assert_non_null(peaks);
    assert_non_null(strstr(peaks, "\nstories260K_T512_P128_seed1.h5\twindow\t64\t64\twindow\t"
                                  "kv_head\tqwen2.5-7b\t3727360\t0\t3727360\n"));
    assert_non_null(strstr(peaks, "\nstories260K_T512_P128_seed1.h5\th2o-qh\t64\t64\th2o\t"
                                  "query_head\tqwen2.5-7b\t26091520\t203840\t26295360\n"));
    free(peaks);
    snprintf(path, sizeof path, "%s/projection.tsv", out);
    char *steps = slurp(path);
    assert_non_null(steps);
    int lines = kv_cli_lines(steps);
    assert_int_equal(lines, 1 + 2 * 384);
    /* the last decode step of window: step 511, 384 tokens decoded */
    assert_non_null(strstr(steps, "\twindow\tkv_head\tqwen2.5-7b\t511\t384\t3727360\t0\n"));
    free(steps);

    const char *bad_model[] = { "project", ini, "--geometry", "gpt-2", NULL };
    assert_int_equal(kv_cli_run(bad_model, NULL, &r), 2);
    assert_non_null(strstr(r.err, "unknown model geometry 'gpt-2'"));
    const char *no_file[] = { "project", NULL };
    assert_int_equal(kv_cli_run(no_file, NULL, &r), 2);
    /* a budget the policy's rule refuses: exit 2 naming the parameter, no files left */
    f = fopen(ini, "w");
    assert_non_null(f);
    fprintf(f, "[experiment]\ntrace = " REAL_TRACE "\nbudgets = 16\noutput = %s/refused\n"
            "[policy morphkv]\ntype = morphkv\n", out);
    fclose(f);
    const char *refused[] = { "project", ini, "--no-plot", "-q", NULL };
    assert_int_equal(kv_cli_run(refused, NULL, &r), 2);
    assert_non_null(strstr(r.err, "morphkv.window"));
    snprintf(path, sizeof path, "%s/refused/projection.tsv", out);
    assert_int_equal(access(path, F_OK), -1);
}

/* kvsim plot draws memory_models (and its caption) exactly when the results hold
 * projection.tsv, after the six fixed figures. */
static void test_memory_models_figure(void **state)
{
    (void)state;
    if (!kv_plot_available())
        skip();
    char ini[512], out[512], path[700];
    snprintf(out, sizeof out, "%s", kv_test_path("fig"));
    snprintf(ini, sizeof ini, "%s", kv_test_path("fig.ini"));
    FILE *f = fopen(ini, "w");
    assert_non_null(f);
    fprintf(f, "[experiment]\ntrace = " REAL_TRACE "\nbudgets = 64\noutput = %s\n"
            "[policy morphkv]\ntype = morphkv\n"
            "[policy h2o-qh]\ntype = h2o\nkv_granularity = query_head\n", out);
    fclose(f);
    kv_cli_result r;
    const char *run[] = { "run", ini, "-q", NULL };
    if (kv_cli_run(run, NULL, &r) != 0)
        fail_msg("kvsim run: exit %d: %s", r.code, r.err);
    snprintf(path, sizeof path, "%s/figures/memory_models.png", out);
    assert_int_equal(access(path, F_OK), -1);          /* no projection: no figure */
    const char *project[] = { "project", ini, "-q", NULL };
    if (kv_cli_run(project, NULL, &r) != 0)
        fail_msg("kvsim project: exit %d: %s", r.code, r.err);
    assert_int_equal(access(path, F_OK), 0);
    snprintf(path, sizeof path, "%s/figures/memory_models.txt", out);
    char *caption = slurp(path);
    assert_non_null(caption);
    assert_non_null(strstr(caption, "llama-3.1-8b, mistral-7b-v0.2, qwen2.5-7b"));
    free(caption);
    snprintf(path, sizeof path, "%s/figures/head_recall.png", out);
    assert_int_equal(access(path, F_OK), 0);
}

static int setup(void **state)
{
    (void)state;
    return kv_test_dir_make("kvsim-test-geometry");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_window_by_hand),
        cmocka_unit_test(test_morphkv_by_hand),
        cmocka_unit_test(test_growing_by_hand),
        cmocka_unit_test(test_projection_matches_replay),
        cmocka_unit_test(test_project_command),
        cmocka_unit_test(test_memory_models_figure),
    };
    return cmocka_run_group_tests(tests, setup, kv_test_dir_teardown);
}
