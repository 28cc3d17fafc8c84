/*
 * test_engine.c - the replay engine end to end: hand-computed recall and memory on a tiny
 * attn trace, the accounting invariants on generated traces, attn and qk forms agreeing,
 * and byte-identical outputs across runs and thread counts.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sim/config.h"
#include "sim/engine.h"
#include "sim/index.h"
#include "tests/kv_test.h"
#include "sim/output.h"
#include "traces/gen.h"
#include "traces/trace.h"

/* ------------------------------------------------------------ helpers */

typedef struct {
    kv_policy_conf pc[16];
    int n;
} policy_list;

/* Adds policy `type` labelled `label` with "k=v,k=v" parameters. */
static void add(policy_list *pl, const char *label, const char *type, const char *params)
{
    kv_test_policy(&pl->pc[pl->n++], label, type, params);
}

/* Replays path; sparse = 1 asks for the sparse replay (the trace must be indexed, and
 * the top-k metrics are then off) and checks it was taken, 0 the dense one. */
static kv_results *replay_path(const char *path, policy_list *pl, const int *budgets,
                               int n_budgets, int sparse)
{
    char err[512];
    kv_trace *tr;
    if (kv_trace_open(path, &tr, err, sizeof err))
        fail_msg("%s", err);
    kv_replay_conf conf = { .policies = pl->pc, .n_policies = pl->n, .budgets = budgets,
                            .n_budgets = n_budgets, .block = 4, .seed = 7,
                            .no_topk = sparse, .dense = !sparse };
    kv_results *res = NULL;
    if (kv_replay(tr, &conf, &res, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(res->sparse, sparse);
    kv_trace_close(tr);
    return res;
}

static kv_results *replay(const char *path, policy_list *pl, const int *budgets, int n_budgets)
{
    return replay_path(path, pl, budgets, n_budgets, 0);
}

/* The tiny trace: 1 layer, 2 query heads sharing 1 KV head, T = 6, P = 3. */
static const float ROWS[2][6][6] = {
    { { 1 }, { .6f, .4f }, { .5f, .2f, .3f }, { .4f, .1f, .2f, .3f },
      { .3f, .1f, .1f, .2f, .3f }, { .2f, .1f, .1f, .1f, .2f, .3f } },
    { { 1 }, { .3f, .7f }, { .1f, .6f, .3f }, { .1f, .5f, .1f, .3f },
      { .1f, .4f, .1f, .1f, .3f }, { .1f, .3f, .1f, .2f, .1f, .2f } },
};

static void write_tiny(const char *path)
{
    kv_trace_info in = { .version = 1, .n_layers = 1, .n_heads = 2, .n_kv_heads = 1,
                         .head_dim = 4, .n_tokens = 6, .prefill_len = 3,
                         .source = KV_SOURCE_ATTN, .softmax_scale = 0.5, .dtype_bytes = 2 };
    snprintf(in.model, sizeof in.model, "tiny");
    char err[512];
    kv_trace_writer *w;
    if (kv_trace_create(path, &in, 0, &w, err, sizeof err))
        fail_msg("%s", err);
    for (int h = 0; h < 2; h++)
        if (kv_trace_write_attn_rows(w, 0, h, 0, 6, &ROWS[h][0][0], err, sizeof err))
            fail_msg("%s", err);
    if (kv_trace_finish(w, err, sizeof err))
        fail_msg("%s", err);
}

static int setup(void **state)
{
    (void)state;
    return kv_test_dir_make("kvsim-test-engine");
}


/* ------------------------------------------------- hand-computed replays */

/*
 * Step recalls worked out by hand (each is the mean over the 2 heads of the full-cache
 * mass on A_t, from ROWS):
 *  window B=2: S={1,2} after prefill; t=3 A={1,2,3}: h0 .1+.2+.3=.6, h1 .5+.1+.3=.9 -> .75;
 *    t=4 A={2,3,4}: .6, .5 -> .55; t=5 A={3,4,5}: .6, .5 -> .55.
 *  h2o B=2 recent=.5 (r=1): prefill acc (sum of both heads) of 0 = 3.5, of 1 = 1.9: keep
 *    {0} + recent {2}. t=3 A={0,2,3}: .9, .5 -> .7; acc0 stays the largest, keep {0,3};
 *    t=4 A={0,3,4}: .8, .5 -> .65; keep {0,4}; t=5 A={0,4,5}: .7, .4 -> .55.
 *  streamingllm sinks=1 B=2: {0} + most recent: the same sets as h2o here.
 *  snapkv window=1 (kernel 7, max pooling): s over j<2 from row 2: h0 {.5,.2}, h1 {.1,.6},
 *    pooled over the whole [0,2): h0 .5,.5; h1 .6,.6; sum 1.1 tie -> the more recent, 1;
 *    S={1,2}; no decode eviction: t=3 {1,2,3}: .75; t=4 {1,2,3,4}: .7,.9 -> .8;
 *    t=5 {1..5}: .8,.9 -> .85.
 *  morphkv window=1 B=2: prefill, O={0,1}, row 2 normalised over O: h0 {5/7,2/7},
 *    h1 {1/7,6/7}, sum {6/7,8/7}: keep 1 -> S={1,2}; t=3 A={1,2,3}: .75; O={1,2}: row 3
 *    h0 {1/3,2/3}, h1 {5/6,1/6} -> {7/6,5/6}: keep {1,3}; t=4 A={1,3,4}: .6,.8 -> .7;
 *    O={1,3}: h0 {1/3,2/3}, h1 {.8,.2} -> {17/15,13/15}: keep {1,4}; t=5 A={1,4,5}:
 *    .6,.6 -> .6.
 */
static void test_tiny_hand_computed(void **state)
{
    (void)state;
    const char *path = kv_test_path("tiny.h5");
    write_tiny(path);
    policy_list pl = { .n = 0 };
    add(&pl, "window", "window", "");
    add(&pl, "h2o", "h2o", "");
    add(&pl, "sl", "streamingllm", "sinks=1");
    add(&pl, "snapkv", "snapkv", "window=1");
    add(&pl, "morphkv", "morphkv", "window=1");
    add(&pl, "full", "full", "");
    int budget = 2;
    kv_results *res = replay(path, &pl, &budget, 1);
    assert_int_equal(res->n_steps, 3);
    const double want[5][3] = {
        { .75, .55, .55 }, { .7, .65, .55 }, { .7, .65, .55 }, { .75, .8, .85 },
        { .75, .7, .6 },
    };
    const long long want_tokens[6][3] = {
        { 3, 3, 3 }, { 3, 3, 3 }, { 3, 3, 3 }, { 3, 4, 5 }, { 3, 3, 3 }, { 4, 5, 6 },
    };
    for (int p = 0; p < 6; p++) {
        for (int s = 0; s < 3; s++) {
            double expect = p < 5 ? want[p][s] : 0;
            if (p == 5) /* full: the stored row sums, added here in double */
                for (int h = 0; h < 2; h++)
                    for (int j = 0; j <= 3 + s; j++)
                        expect += ROWS[h][3 + s][j] / 2.0;
            if (fabs(res->runs[p].steps[s].recall - expect) > 1e-6)
                fail_msg("%s step %d: recall %.9f, expected %.9f", pl.pc[p].label, 3 + s,
                         res->runs[p].steps[s].recall, expect);
            assert_int_equal(res->runs[p].steps[s].kv_tokens, want_tokens[p][s]);
        }
    }
    /* window's per-head means and minima: h0 .6 each step; h1 .9, .5, .5 */
    assert_true(fabs(res->runs[0].head_recall_mean[0] - .6) < 1e-6);
    assert_true(fabs(res->runs[0].head_recall_mean[1] - 1.9 / 3) < 1e-6);
    assert_true(fabs(res->runs[0].head_recall_min[1] - .5) < 1e-6);
    /* summary: mean (.75+.55+.55)/3, min .55, p05 between .55 and .55; bytes 3*2*4*2 */
    char err[256];
    double sum[64];
    assert_true(kv_n_output_columns <= 64);
    assert_int_equal(kv_run_summarise(res, 0, sum, err, sizeof err), 0);
    assert_true(fabs(sum[kv_summary_column("recall_mean")] - 1.85 / 3) < 1e-6);
    assert_true(fabs(sum[kv_summary_column("recall_min")] - .55) < 1e-6);
    assert_true(fabs(sum[kv_summary_column("recall_p05")] - .55) < 1e-6);
    assert_int_equal((long long)sum[kv_summary_column("kv_bytes_peak")], 48);
    /* top-k recall of window (rows from ROWS): t=3 A={1,2,3}: h0's top key 0 is out,
     * h1's top key 1 is in -> .5; all 4 keys, 3 cached -> .75. t=4 A={2,3,4}: h0 ties
     * .3 at 0 and 4, the recent 4 ranks first and is in; h1's top 1 is out -> .5; 3 of 5
     * -> .6. t=5 A={3,4,5}: h0 top 5 in, h1 top 1 out -> .5; 3 of 6 -> .5. */
    const double top1[3] = { .5, .5, .5 }, top8[3] = { .75, .6, .5 };
    for (int s = 0; s < 3; s++) {
        assert_true(fabs(res->runs[0].steps[s].topk1 - top1[s]) < 1e-12);
        assert_true(fabs(res->runs[0].steps[s].topk8 - top8[s]) < 1e-12);
    }
    /* lifetimes of window: 0 evicted at the prefill end (0 decode steps); 1 at t=3 (1
     * step: 3); 2 at t=4 (steps 3,4); 3 at t=5 (steps 3,4,5) */
    for (int l = 0; l <= 3; l++)
        assert_int_equal(res->runs[0].lifetimes[l], 1);
    /* retention: window ends with {4,5}; morphkv with {1,5} */
    assert_int_equal(res->runs[0].retained[4] + res->runs[0].retained[5], 2);
    assert_int_equal(res->runs[4].retained[1] + res->runs[4].retained[5], 2);
    kv_results_free(res);
}

/* A pair that breaks a policy's rule stops the run before any work, naming it. */
static void test_invalid_pair_rejected(void **state)
{
    (void)state;
    policy_list pl = { .n = 0 };
    add(&pl, "mk", "morphkv", "window=8");
    int budgets[] = { 64, 8 };
    kv_replay_conf conf = { .policies = pl.pc, .n_policies = 1, .budgets = budgets,
                            .n_budgets = 2 };
    char err[512] = "";
    assert_int_equal(kv_replay_validate(&conf, err, sizeof err), 2);
    assert_non_null(strstr(err, "'mk'"));
    assert_non_null(strstr(err, "budget 8"));
}

/* --------------------------------------------- invariants, generated traces */

static void seed_policies(policy_list *pl)
{
    pl->n = 0;
    add(pl, "full", "full", "");
    add(pl, "window", "window", "");
    add(pl, "streamingllm", "streamingllm", "");
    add(pl, "h2o", "h2o", "");
    add(pl, "h2o-max", "h2o", "gqa=max");
    add(pl, "snapkv", "snapkv", "window=8");
    add(pl, "morphkv", "morphkv", "window=8");
    add(pl, "morphkv-max", "morphkv", "window=8,fusion=max");
}

/* full has recall 1; snapkv adds L*KV tokens per step; bounded policies hold L*KV*(B+1). */
static void check_accounting(const kv_results *res, const policy_list *pl)
{
    const long long caches = 2 * 2;
    for (int r = 0; r < res->n_runs; r++) {
        const kv_run_result *run = &res->runs[r];
        const char *name = pl->pc[run->policy].ops->name;
        for (int s = 0; s < res->n_steps; s++) {
            long long t = 40 + s, want;
            if (strcmp(name, "full") == 0) {
                want = caches * (t + 1);
                assert_true(fabs(run->steps[s].recall - 1.0) < 1e-5);
            } else if (strcmp(name, "snapkv") == 0)
                want = caches * (run->budget + 1 + s);
            else
                want = caches * (run->budget + 1);
            if (run->steps[s].kv_tokens != want)
                fail_msg("%s B=%d step %lld: kv_tokens %lld, expected %lld",
                         pl->pc[run->policy].label, run->budget, t,
                         (long long)run->steps[s].kv_tokens, want);
            assert_true(run->steps[s].recall > 0 && run->steps[s].recall <= 1 + 1e-5);
        }
    }
}

/* The invariants on the dense replay, and on the sparse one from the trace's index. */
static void test_accounting_invariants(void **state)
{
    (void)state;
    const char *path = kv_test_path("gen.h5");
    kv_test_gen_small(path, 3, 0, 0);
    char err[512];
    if (kv_index_trace(path, 0, err, sizeof err))
        fail_msg("%s", err);
    policy_list pl;
    seed_policies(&pl);
    int budgets[] = { 16, 24 };
    for (int sparse = 0; sparse < 2; sparse++) {
        kv_results *res = replay_path(path, &pl, budgets, 2, sparse);
        check_accounting(res, &pl);
        kv_results_free(res);
    }
}

/* The same generated trace stored as attn rows and as q/k replays to the same numbers. */
static void test_attn_and_qk_agree(void **state)
{
    (void)state;
    const char *qk = kv_test_path("qk.h5"), *attn = kv_test_path("attn.h5");
    kv_test_gen_small(qk, 5, 0, 0);
    kv_test_gen_small(attn, 5, 1, 0);
    char err[512];
    kv_trace *tr;
    assert_int_equal(kv_trace_open(attn, &tr, err, sizeof err), 0);
    assert_int_equal(kv_trace_get_info(tr)->source, KV_SOURCE_ATTN);
    kv_trace_close(tr);
    policy_list pl;
    seed_policies(&pl);
    int budget = 20;
    kv_results *a = replay(qk, &pl, &budget, 1), *b = replay(attn, &pl, &budget, 1);
    for (int r = 0; r < a->n_runs; r++)
        for (int s = 0; s < a->n_steps; s++) {
            assert_true(fabs(a->runs[r].steps[s].recall - b->runs[r].steps[s].recall) < 1e-5);
            assert_int_equal(a->runs[r].steps[s].kv_tokens, b->runs[r].steps[s].kv_tokens);
        }
    kv_results_free(a);
    kv_results_free(b);
}

static char *slurp(const char *path, long *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)*len + 1);
    assert_int_equal(fread(buf, 1, (size_t)*len, f), (size_t)*len);
    fclose(f);
    return buf;
}

/* Two runs (1 thread, then 2 threads) write byte-identical files. */
static void test_outputs_deterministic(void **state)
{
    (void)state;
    const char *path = kv_test_path("det.h5");
    kv_test_gen_small(path, 9, 0, 0);
    policy_list pl;
    seed_policies(&pl);
    int budgets[] = { 16, 32 };
    const char *dirs[2] = { kv_test_path("out1"), kv_test_path("out2") };
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(k + 1);
        kv_results *res = replay(path, &pl, budgets, 2);
        kv_replay_conf conf = { .policies = pl.pc, .n_policies = pl.n, .budgets = budgets,
                                .n_budgets = 2 };
        char err[512];
        assert_int_equal(kv_output_prepare(dirs[k], 0, err, sizeof err), 0);
        const kv_results *all[1] = { res };
        const char *names[1] = { "det.h5" };
        kv_experiment_results er = { .conf = &conf, .n_traces = 1, .res = all,
                                     .trace_names = names };
        if (kv_output_write(dirs[k], &er, err, sizeof err))
            fail_msg("%s", err);
        kv_results_free(res);
    }
    const char *files[] = { "summary.tsv", "steps.tsv", "heads.tsv", "retention.tsv",
                            "lifetimes.tsv" };
    for (int i = 0; i < 5; i++) {
        char p1[400], p2[400];
        snprintf(p1, sizeof p1, "%s/%s", dirs[0], files[i]);
        snprintf(p2, sizeof p2, "%s/%s", dirs[1], files[i]);
        long n1, n2;
        char *a = slurp(p1, &n1), *b = slurp(p2, &n2);
        assert_int_equal(n1, n2);
        assert_memory_equal(a, b, (size_t)n1);
        free(a);
        free(b);
    }
    /* a second write into a non-empty directory needs --force */
    char err[512];
    assert_int_equal(kv_output_prepare(dirs[0], 0, err, sizeof err), 2);
    assert_non_null(strstr(err, "--force"));
    assert_int_equal(kv_output_prepare(dirs[0], 1, err, sizeof err), 0);
}

/* summary.tsv's oracle_recall_mean: the oracle's recall_mean at the same budget on every
 * row (read back from the file and matched against the oracle's own row), NA without. */
static void test_summary_oracle_column(void **state)
{
    (void)state;
    const char *path = kv_test_path("oracle.h5");
    kv_test_gen_small(path, 4, 0, 0);
    policy_list pl = { .n = 0 };
    add(&pl, "window", "window", "");
    add(&pl, "oracle", "oracle", "");
    add(&pl, "h2o-q", "h2o", "");
    pl.pc[2].granularity = KV_GRAN_QUERY_HEAD;   /* no oracle of its granularity: NA */
    int budgets[] = { 16, 24 };
    kv_results *res = replay(path, &pl, budgets, 2);
    kv_replay_conf conf = { .policies = pl.pc, .n_policies = pl.n, .budgets = budgets,
                            .n_budgets = 2 };
    const kv_results *all[1] = { res };
    const char *names[1] = { "oracle.h5" };
    kv_experiment_results er = { .conf = &conf, .n_traces = 1, .res = all,
                                 .trace_names = names };
    char err[512];
    const char *dir = kv_test_path("out_oracle");
    assert_int_equal(kv_output_prepare(dir, 0, err, sizeof err), 0);
    if (kv_output_write(dir, &er, err, sizeof err))
        fail_msg("%s", err);
    char file[400], line[2048], *col[32];
    snprintf(file, sizeof file, "%s/summary.tsv", dir);
    FILE *f = fopen(file, "r");
    assert_non_null(f);
    assert_non_null(fgets(line, sizeof line, f));
    int c_policy = -1, c_budget = -1, c_recall = -1, c_oracle = -1, n = 0;
    for (char *sv = NULL, *tok = strtok_r(line, "\t\n", &sv); tok; tok = strtok_r(NULL, "\t\n", &sv), n++) {
        if (!strcmp(tok, "policy")) c_policy = n;
        if (!strcmp(tok, "budget")) c_budget = n;
        if (!strcmp(tok, "recall_mean")) c_recall = n;
        if (!strcmp(tok, "oracle_recall_mean")) c_oracle = n;
    }
    assert_true(c_policy >= 0 && c_budget >= 0 && c_recall >= 0 && c_oracle >= 0);
    char rows[6][4][64];
    for (int r = 0; r < 6; r++) {
        assert_non_null(fgets(line, sizeof line, f));
        int k = 0;
        for (char *sv = NULL, *tok = strtok_r(line, "\t\n", &sv); tok && k < 32; tok = strtok_r(NULL, "\t\n", &sv))
            col[k++] = tok;
        snprintf(rows[r][0], 64, "%s", col[c_policy]);
        snprintf(rows[r][1], 64, "%s", col[c_budget]);
        snprintf(rows[r][2], 64, "%s", col[c_recall]);
        snprintf(rows[r][3], 64, "%s", col[c_oracle]);
    }
    fclose(f);
    int n_na = 0, n_joined = 0;
    for (int r = 0; r < 6; r++) {
        if (!strcmp(rows[r][0], "h2o-q")) {
            assert_string_equal(rows[r][3], "NA");
            n_na++;
            continue;
        }
        int matches = 0;
        for (int o = 0; o < 6; o++)   /* the oracle's own row at this budget */
            if (!strcmp(rows[o][0], "oracle") && !strcmp(rows[o][1], rows[r][1])) {
                assert_string_equal(rows[r][3], rows[o][2]);
                matches++;
            }
        assert_int_equal(matches, 1);
        n_joined++;
    }
    /* window and oracle at two budgets joined, h2o-q at two budgets NA */
    assert_int_equal(n_joined, 4);
    assert_int_equal(n_na, 2);
    /* the oracle is a ceiling for window at each budget (per-step, so also in the mean) */
    for (int r = 0; r < 6; r++)
        if (!strcmp(rows[r][0], "window"))
            assert_true(strtod(rows[r][2], NULL) <= strtod(rows[r][3], NULL));
    kv_results_free(res);
}

/*
 * Per-position lifetimes (retention.tsv's evicted_caches and lifetime_mean), by hand for
 * window on the generated trace (2 layers x 2 KV heads = 4 caches, T = 96, P = 40): the
 * prompt keeps {P-B..P-1}, then decode step t attends S u {t} and drops t - B. So j < P-B
 * leaves at the prefill end (lifetime 0); P-B <= j < T-B leaves at step j + B, attended
 * at steps max(j, P) .. j + B (lifetime j + B - max(j, P) + 1, i.e. B + 1 from j = P on);
 * j >= T-B is held by every cache at the end (NA). The same with one cache per query head
 * (8 caches). For every policy, the histogram of lifetimes.tsv is the per-position
 * tallies summed (count and total lifetime), and a policy that never re-admits holds or
 * evicted each position in every cache; tova scope=layer counts its one set per KV head.
 */
static void test_token_lifetimes(void **state)
{
    (void)state;
    const char *path = kv_test_path("lifetimes.h5");
    kv_test_gen_small(path, 11, 0, 0);
    policy_list pl = { .n = 0 };
    add(&pl, "window", "window", "");
    add(&pl, "window-q", "window", "");
    pl.pc[1].granularity = KV_GRAN_QUERY_HEAD;
    add(&pl, "h2o", "h2o", "");
    add(&pl, "tova-layer", "tova", "scope=layer");
    add(&pl, "oracle", "oracle", "");
    int budgets[] = { 8, 16 };
    kv_results *res = replay(path, &pl, budgets, 2);
    const int T = 96, P = 40;
    for (int r = 0; r < res->n_runs; r++) {
        const kv_run_result *run = &res->runs[r];
        const char *label = pl.pc[run->policy].label;
        int B = run->budget;
        long long count = 0, total = 0, count_j = 0, total_j = 0;
        for (int s = 0; s <= res->n_steps; s++) {
            count += run->lifetimes[s];
            total += (long long)s * run->lifetimes[s];
        }
        for (int j = 0; j < T; j++) {
            count_j += run->evictions[j];
            total_j += run->lifetime_sum[j];
            if (strcmp(label, "oracle"))   /* held at the end, or evicted once */
                assert_int_equal(run->retained[j] + run->evicted_caches[j], run->n_cache_units);
            else
                assert_true(run->retained[j] + run->evicted_caches[j] >= run->n_cache_units);
            if (strncmp(label, "window", 6))
                continue;
            int caches = run->policy == 0 ? 4 : 8;
            assert_int_equal(run->n_cache_units, caches);
            if (j >= T - B) {
                assert_int_equal(run->evicted_caches[j], 0);
                assert_int_equal(run->evictions[j], 0);
                continue;
            }
            int life = j < P - B ? 0 : j + B - (j > P ? j : P) + 1;
            assert_int_equal(run->evicted_caches[j], caches);
            assert_int_equal(run->evictions[j], caches);
            if (run->lifetime_sum[j] != (long long)caches * life)
                fail_msg("%s B=%d position %d: lifetime sum %lld, expected %d x %d", label, B,
                         j, run->lifetime_sum[j], caches, life);
        }
        if (count != count_j || total != total_j)
            fail_msg("%s B=%d: histogram %lld evictions, %lld steps; positions %lld, %lld",
                     label, B, count, total, count_j, total_j);
        if (!strcmp(label, "tova-layer"))   /* one cache per layer, weighted per KV head */
            assert_int_equal(run->n_cache_units, 4);
    }
    /* retention.tsv: window at B = 8, read back by column name */
    kv_replay_conf conf = { .policies = pl.pc, .n_policies = pl.n, .budgets = budgets,
                            .n_budgets = 2 };
    const kv_results *all[1] = { res };
    const char *names[1] = { "lifetimes.h5" };
    kv_experiment_results er = { .conf = &conf, .n_traces = 1, .res = all,
                                 .trace_names = names };
    char err[512], file[400], line[2048];
    const char *dir = kv_test_path("out_lifetimes");
    assert_int_equal(kv_output_prepare(dir, 0, err, sizeof err), 0);
    if (kv_output_write(dir, &er, err, sizeof err))
        fail_msg("%s", err);
    snprintf(file, sizeof file, "%s/retention.tsv", dir);
    FILE *f = fopen(file, "r");
    assert_non_null(f);
    assert_non_null(fgets(line, sizeof line, f));
    assert_string_equal(line, "trace\tpolicy\tbudget\tbudget_spec\tposition\tfraction\t"
                              "evicted_caches\tlifetime_mean\ttoken\n");
    int seen = 0;
    while (fgets(line, sizeof line, f)) {
        char *col[16];
        int k = 0;
        for (char *at = line, *tab; k < 16; at = tab + 1) {
            col[k++] = at;
            if (!(tab = strpbrk(at, "\t\n")))
                break;
            *tab = 0;
        }
        assert_int_equal(k, 10);   /* 9 columns, then what follows the last newline */
        if (strcmp(col[1], "window") || strcmp(col[2], "8"))
            continue;
        int j = atoi(col[4]);
        if (j >= T - 8) {
            assert_string_equal(col[6], "0");
            assert_string_equal(col[7], "NA");
            assert_string_equal(col[5], "1");
        } else {
            int life = j < P - 8 ? 0 : j + 8 - (j > P ? j : P) + 1;
            assert_string_equal(col[6], "4");
            assert_string_equal(col[5], "0");
            assert_int_equal(atoi(col[7]), life);
            assert_true(strtod(col[7], NULL) == life);
        }
        seen++;
    }
    fclose(f);
    assert_int_equal(seen, T);
    kv_results_free(res);
}

/* Two traces with one file name would share their `trace` column: refused (exit 2). */
static void test_duplicate_trace_names(void **state)
{
    (void)state;
    static kv_experiment ex;
    kv_experiment_init(&ex);
    char err[512] = "";
    assert_int_equal(kv_experiment_set_traces(&ex, "a/x.h5, b/y.h5", err, sizeof err), 0);
    assert_int_equal(ex.n_traces, 2);
    assert_string_equal(ex.traces[1], "b/y.h5");
    assert_int_equal(kv_experiment_set_traces(&ex, "a/x.h5,b/x.h5", err, sizeof err), 2);
    assert_non_null(strstr(err, "share the file name 'x.h5'"));
    assert_int_equal(kv_experiment_set_traces(&ex, "x.h5, x.h5", err, sizeof err), 2);
    kv_experiment_free(&ex);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_hand_computed),
        cmocka_unit_test(test_invalid_pair_rejected),
        cmocka_unit_test(test_accounting_invariants),
        cmocka_unit_test(test_attn_and_qk_agree),
        cmocka_unit_test(test_outputs_deterministic),
        cmocka_unit_test(test_summary_oracle_column),
        cmocka_unit_test(test_token_lifetimes),
        cmocka_unit_test(test_duplicate_trace_names),
    };
    return cmocka_run_group_tests(tests, setup, kv_test_dir_teardown);
}
