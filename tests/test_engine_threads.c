/*
 * test_engine_threads.c - the parallel replay gives the serial replay's results: every
 * output file byte-identical with 1 and 2 OpenMP threads, on generated qk and attn traces
 * of several layers (so the next layer is loaded while the current one is replayed) and
 * several blocks per layer (so blocks are produced while the previous one is consumed),
 * with every seed policy, the full reference and a test policy that uses every optional
 * hook (layer scope, preselect, prescan). The qk replay fuses producing and consuming a GQA
 * group's rows only with at least two groups per thread (2 KV heads: 1 thread), so the
 * fused and unfused task graphs are compared too; 3 and 4 threads on 2 cores interleave
 * the tasks in more ways. Also: the
 * replay leaves the BLAS's own thread count as it found it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "tests/kv_test.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sim/engine.h"
#include "sim/output.h"
#include "traces/gen.h"
#include "traces/trace.h"

/* OpenBLAS's thread control (weak: the test still builds against another BLAS). */
extern int openblas_get_num_threads(void) __attribute__((weak));
extern void openblas_set_num_threads(int n) __attribute__((weak));

/* ------------------------------------------------------------ a policy with every hook */

/* "lookahead": one cache per layer; prescan sums every future row per position; preselect
 * keeps the B past keys the current full rows weigh most; select then keeps the B with the
 * largest prescan total. Deterministic, and any row it misses changes its choices. */
typedef struct {
    int budget, n_tokens;
    double *future;   /* [T] sum over all rows and heads of p_t[j] */
    double *score;    /* [T] scratch by view index */
    int *cand, *scratch;
} lookahead_state;

static void *lookahead_create(const kv_param_values *values, const kv_policy_ctx *ctx)
{
    (void)values;
    lookahead_state *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    st->budget = ctx->budget;
    st->n_tokens = ctx->n_tokens;
    st->future = calloc((size_t)ctx->n_tokens, sizeof *st->future);
    st->score = calloc((size_t)ctx->n_tokens, sizeof *st->score);
    st->cand = calloc((size_t)ctx->n_tokens, sizeof *st->cand);
    st->scratch = calloc((size_t)ctx->n_tokens, sizeof *st->scratch);
    return st;
}

static void lookahead_destroy(void *state)
{
    lookahead_state *st = state;
    if (!st)
        return;
    free(st->future);
    free(st->score);
    free(st->cand);
    free(st->scratch);
    free(st);
}

static void lookahead_prescan(void *state, const kv_row *full)
{
    lookahead_state *st = state;
    for (int h = 0; h < full->n_heads; h++)
        for (int i = 0; i < full->n; i++)
            st->future[full->pos[i]] += full->w[(size_t)h * full->n + i];
}

static void lookahead_observe(void *state, const kv_row *row)
{
    (void)state;
    (void)row;
}

/* The best k of view positions pos[0..n) by score[], into keep. */
static void keep_best(lookahead_state *st, const int *pos, int n, int k, unsigned char *keep)
{
    for (int i = 0; i < n; i++)
        st->cand[i] = i;
    kv_keep_top(st->score, pos, st->cand, n, k, st->scratch, keep);
}

static void lookahead_preselect(void *state, const kv_row *full, unsigned char *keep)
{
    lookahead_state *st = state;
    int past = full->n - 1;   /* positions 0..t-1 */
    for (int i = 0; i < past; i++) {
        st->score[i] = 0;
        for (int h = 0; h < full->n_heads; h++)
            st->score[i] += full->w[(size_t)h * full->n + i];
    }
    keep_best(st, full->pos, past, st->budget, keep);
}

static void lookahead_select(void *state, const kv_cache_view *cache, unsigned char *keep)
{
    lookahead_state *st = state;
    for (int i = 0; i < cache->n; i++)
        st->score[i] = st->future[cache->pos[i]];
    keep_best(st, cache->pos, cache->n, cache->budget, keep);
}

static int lookahead_scope(const kv_param_values *values)
{
    (void)values;
    return KV_SCOPE_LAYER;
}

static const kv_policy_ops lookahead_ops = {
    .name = "lookahead", .summary = "test policy", .citation = "test", .bounded = 1,
    .create = lookahead_create, .observe = lookahead_observe, .select = lookahead_select,
    .destroy = lookahead_destroy, .scope = lookahead_scope, .preselect = lookahead_preselect,
    .prescan = lookahead_prescan,
};

static int setup(void **state)
{
    (void)state;
    assert_int_equal(kv_test_dir_make("kvsim-test-threads"), 0);
    return 0;
}

/* Replays path with n_threads threads and writes the result files into dir. */
static void replay_to(const char *path, int n_threads, int block, const char *dir)
{
    kv_policy_conf pc[8];
    kv_test_policy(&pc[0], "full", "full", NULL);
    kv_test_policy(&pc[1], "window", "window", NULL);
    kv_test_policy(&pc[2], "streamingllm", "streamingllm", NULL);
    kv_test_policy(&pc[3], "h2o", "h2o", NULL);
    kv_test_policy(&pc[4], "snapkv", "snapkv", "window=8");
    kv_test_policy(&pc[5], "morphkv", "morphkv", "window=8");
    kv_test_policy(&pc[6], "h2o-max", "h2o", "gqa=max");
    memset(&pc[7], 0, sizeof pc[7]);
    snprintf(pc[7].label, sizeof pc[7].label, "lookahead");
    pc[7].ops = &lookahead_ops;
    int budgets[] = { 48, 96 };
    kv_replay_conf conf = { .policies = pc, .n_policies = 8, .budgets = budgets,
                            .n_budgets = 2, .block = block, .seed = 3 };
    char err[512];
    kv_trace *tr;
    if (kv_trace_open(path, &tr, err, sizeof err))
        fail_msg("%s", err);
    omp_set_num_threads(n_threads);
    kv_results *res = NULL;
    if (kv_replay(tr, &conf, &res, err, sizeof err))
        fail_msg("%s", err);
    kv_trace_close(tr);
    assert_int_equal(kv_output_prepare(dir, 0, err, sizeof err), 0);
    const kv_results *all[1] = { res };
    const char *names[1] = { "trace.h5" };
    kv_experiment_results er = { .conf = &conf, .n_traces = 1, .res = all,
                                 .trace_names = names };
    if (kv_output_write(dir, &er, err, sizeof err))
        fail_msg("%s", err);
    kv_results_free(res);
}

static void assert_same_file(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    assert_non_null(fa);
    assert_non_null(fb);
    long offset = 0;
    for (;; offset++) {
        int ca = fgetc(fa), cb = fgetc(fb);
        if (ca != cb)
            fail_msg("%s and %s differ at byte %ld", a, b, offset);
        if (ca == EOF)
            break;
    }
    assert_true(offset > 0);
    fclose(fa);
    fclose(fb);
}

/* Replays a generated trace with 1 to 4 threads: every file identical to 1's. */
static void check_trace(int with_attn, int block)
{
    char path[300], d[4][300];
    snprintf(path, sizeof path, "%s/t%d_%d.h5", kv_test_dir, with_attn, block);
    for (int i = 0; i < 4; i++)
        snprintf(d[i], sizeof d[i], "%s/out%d_%d_%d", kv_test_dir, i + 1, with_attn, block);
    kv_gen_params gp;
    kv_gen_defaults(&gp);
    gp.seed = 11;
    gp.n_layers = 3;
    gp.n_heads = 4;
    gp.n_kv_heads = 2;
    gp.head_dim = 16;
    /* qk: 3 load pieces of 256 rows (520 = 32 * 16 + 8); attn: one piece whatever T */
    gp.n_tokens = with_attn ? 200 : 520;
    gp.prefill_len = with_attn ? 60 : 160;
    gp.period = 50;
    char err[512];
    if (kv_gen_write(path, &gp, 0, with_attn, err, sizeof err))
        fail_msg("%s", err);
    for (int i = 0; i < 4; i++)
        replay_to(path, i + 1, block, d[i]);
    const char *files[] = { "summary.tsv", "steps.tsv", "heads.tsv", "retention.tsv",
                            "lifetimes.tsv" };
    for (int i = 0; i < 5; i++)
        for (int n = 1; n < 4; n++) {
            char a[400], b[400];
            snprintf(a, sizeof a, "%s/%s", d[0], files[i]);
            snprintf(b, sizeof b, "%s/%s", d[n], files[i]);
            assert_same_file(a, b);
        }
}

/* qk: rows recomputed by GQA group, blocks of 16 rows (13 per layer, the last short);
 * fused with 1 thread, unfused with 2 to 4. The last block is short (520 = 32 * 16 + 8),
 * and the first layer is read in 3 pieces while its first blocks are replayed. */
static void test_qk_one_vs_two_threads(void **state)
{
    (void)state;
    check_trace(0, 16);
}

/* The default block size (one block covers most of this trace's layers). */
static void test_qk_default_block(void **state)
{
    (void)state;
    check_trace(0, 0);
}

/* attn: rows read from the file, a block of 32 rows straddling the 128-row chunks. */
static void test_attn_one_vs_two_threads(void **state)
{
    (void)state;
    check_trace(1, 32);
}

/* The replay makes the BLAS single-threaded while it runs and restores it after. */
static void test_blas_threads_restored(void **state)
{
    (void)state;
    if (!openblas_get_num_threads || !openblas_set_num_threads)
        skip();
    openblas_set_num_threads(2);
    int before = openblas_get_num_threads();
    char path[300], dir[300];
    snprintf(path, sizeof path, "%s/t0_16.h5", kv_test_dir);
    snprintf(dir, sizeof dir, "%s/out_blas", kv_test_dir);
    replay_to(path, 2, 16, dir);
    assert_int_equal(openblas_get_num_threads(), before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qk_one_vs_two_threads),
        cmocka_unit_test(test_qk_default_block),
        cmocka_unit_test(test_attn_one_vs_two_threads),
        cmocka_unit_test(test_blas_threads_restored),
    };
    return cmocka_run_group_tests(tests, setup, kv_test_dir_teardown);
}
