/*
 * test_engine_layers.c - a replay is its layers' parts reduced in layer order
 * (engine.h: kv_replay_layers, kv_layer_part, kv_results_add_layer), which is what lets
 * kvsim-mpi's ranks replay one layer each and rank 0 reduce their parts:
 *   - every layer replayed on its own (a fresh pipeline starting at that layer, as a rank
 *     does), its part copied out as bytes, then the copies folded in order, gives
 *     results equal bit for bit to kv_replay's, for policies of every scope;
 *   - the same parts folded in reverse layer order give different bits (so the equality
 *     above is a real check of the order, not of values too coarse to differ);
 *   - a part's integer fields count what they say, worked out by hand: each layer holds
 *     one unit per KV head (token weight 1) or n_kv_heads for a layer-scope policy, and
 *     window's final set is the last B positions plus none other;
 *   - a layer range outside the trace is refused with a message.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "kv_test.h"
#include "sim/engine.h"
#include "traces/status.h"
#include "traces/trace.h"

#define N_LAYERS 4

/* A trace of N_LAYERS layers (more than kv_test_gen_small's two: reversing the fold
 * order then changes three additions per step). */
static void gen_trace(const char *path)
{
    kv_gen_params gp;
    kv_gen_defaults(&gp);
    gp.seed = 5;
    gp.n_layers = N_LAYERS;
    gp.n_heads = 4;
    gp.n_kv_heads = 2;
    gp.head_dim = 16;
    gp.n_tokens = 120;
    gp.prefill_len = 40;
    char err[512];
    if (kv_gen_write(path, &gp, 0, 0, err, sizeof err))
        fail_msg("%s", err);
}

/* The sink of one layer's replay: a copy of the part's bytes. */
typedef struct {
    void *copy[N_LAYERS];
    size_t bytes;
    int calls;
} copies;

static int copy_part(void *ctx, const kv_layer_part *part, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    copies *c = ctx;
    c->copy[part->layer] = malloc(part->bytes);
    assert_non_null(c->copy[part->layer]);
    memcpy(c->copy[part->layer], part->data, part->bytes);
    c->bytes = part->bytes;
    c->calls++;
    return 0;
}

static void assert_same_bits(const kv_results *a, const kv_results *b)
{
    const kv_trace_info *in = &a->info;
    int D = a->n_steps, LH = in->n_layers * in->n_heads, T = in->n_tokens;
    assert_int_equal(a->n_runs, b->n_runs);
    for (int r = 0; r < a->n_runs; r++) {
        const kv_run_result *x = &a->runs[r], *y = &b->runs[r];
        assert_memory_equal(x->steps, y->steps, (size_t)D * sizeof *x->steps);
        assert_memory_equal(x->head_recall_mean, y->head_recall_mean, LH * sizeof(double));
        assert_memory_equal(x->head_recall_min, y->head_recall_min, LH * sizeof(double));
        assert_memory_equal(x->lifetimes, y->lifetimes, (D + 1) * sizeof(long long));
        assert_memory_equal(x->retained, y->retained, T * sizeof(int));
        assert_memory_equal(x->evicted_caches, y->evicted_caches, T * sizeof(int));
        assert_memory_equal(x->evictions, y->evictions, T * sizeof(long long));
        assert_memory_equal(x->lifetime_sum, y->lifetime_sum, T * sizeof(long long));
        assert_memory_equal(x->final_sets, y->final_sets,
                            (size_t)in->n_layers * in->n_kv_heads * T * sizeof(int));
        assert_int_equal(x->n_cache_units, y->n_cache_units);
    }
}

static int steps_differ(const kv_results *a, const kv_results *b)
{
    for (int r = 0; r < a->n_runs; r++)
        if (memcmp(a->runs[r].steps, b->runs[r].steps,
                   (size_t)a->n_steps * sizeof *a->runs[r].steps) != 0)
            return 1;
    return 0;
}

/* results folded from the copies in the given layer order */
static kv_results *fold(const kv_trace_info *in, const kv_replay_conf *conf, copies *c,
                        int reverse)
{
    kv_results *res = NULL;
    char err[512];
    assert_int_equal(kv_results_new(in, conf, &res, err, sizeof err), 0);
    for (int i = 0; i < N_LAYERS; i++) {
        int l = reverse ? N_LAYERS - 1 - i : i;
        kv_layer_part part;
        assert_int_equal(kv_layer_part_wrap(&part, in, conf->n_policies * conf->n_budgets, l,
                                            c->copy[l], 0), 0);
        assert_int_equal(part.bytes, c->bytes);
        kv_results_add_layer(res, &part);
        kv_layer_part_free(&part);
    }
    kv_results_finish(res);
    return res;
}

static void test_layers_fold_to_the_replay(void **state)
{
    (void)state;
    char *path = kv_test_path("layers.h5");
    gen_trace(path);
    kv_policy_conf pol[5];
    kv_test_policy(&pol[0], "window", "window", NULL);
    kv_test_policy(&pol[1], "h2o", "h2o", NULL);
    kv_test_policy(&pol[2], "tova-layer", "tova", "scope=layer");
    kv_test_policy(&pol[3], "h2o-q", "h2o", "kv_granularity=query_head");
    kv_test_policy(&pol[4], "lookahead", "lookahead", NULL);
    int budgets[2] = { 16, 48 };
    kv_replay_conf conf = { .policies = pol, .n_policies = 5, .budgets = budgets,
                            .n_budgets = 2, .seed = 3 };
    kv_trace *tr = NULL;
    char err[512];
    assert_int_equal(kv_trace_open(path, &tr, err, sizeof err), 0);
    kv_results *whole = NULL;
    assert_int_equal(kv_replay(tr, &conf, &whole, err, sizeof err), 0);

    copies c = { 0 };
    for (int l = N_LAYERS - 1; l >= 0; l--)   /* any order of replay: each on its own */
        assert_int_equal(kv_replay_layers(tr, &conf, l, 1, copy_part, &c, err, sizeof err), 0);
    assert_int_equal(c.calls, N_LAYERS);
    const kv_trace_info *in = kv_trace_get_info(tr);
    assert_int_equal(c.bytes, kv_layer_part_bytes(in, 10));

    kv_results *folded = fold(in, &conf, &c, 0);
    assert_same_bits(whole, folded);
    kv_results *reversed = fold(in, &conf, &c, 1);
    assert_true(steps_differ(whole, reversed));

    /* by hand: per layer, 2 KV heads (window, h2o), 1 cache weighing 2 (tova layer
     * scope), 4 caches of one query head each weighing 1 (query_head granularity) */
    kv_layer_part part;
    assert_int_equal(kv_layer_part_wrap(&part, in, 10, 2, c.copy[2], 0), 0);
    int units[5] = { 2, 2, 2, 4, 2 };
    for (int r = 0; r < 10; r++)
        assert_int_equal(part.n_cache_units[r], units[r / 2]);
    /* window at B = 16 (run 0): each KV head of layer 2 ends holding positions
     * T-17 .. T-2 and T-1 (the last query's A_t kept by S <- A_t, then evicted to B =
     * 16: T-16 .. T-1), each counted by its 2 query heads */
    int T = in->n_tokens;
    for (int g = 0; g < 2; g++)
        for (int j = 0; j < T; j++)
            assert_int_equal(part.final_sets[(size_t)g * T + j], j >= T - 16 ? 2 : 0);
    kv_layer_part_free(&part);

    for (int l = 0; l < N_LAYERS; l++)
        free(c.copy[l]);
    kv_results_free(whole);
    kv_results_free(folded);
    kv_results_free(reversed);
    kv_trace_close(tr);
}

static void test_layer_range_refused(void **state)
{
    (void)state;
    char *path = kv_test_path("range.h5");
    gen_trace(path);
    kv_policy_conf pol;
    kv_test_policy(&pol, "window", "window", NULL);
    int budget = 16;
    kv_replay_conf conf = { .policies = &pol, .n_policies = 1, .budgets = &budget,
                            .n_budgets = 1 };
    kv_trace *tr = NULL;
    char err[512] = "";
    assert_int_equal(kv_trace_open(path, &tr, err, sizeof err), 0);
    copies c = { 0 };
    assert_int_equal(kv_replay_layers(tr, &conf, N_LAYERS - 1, 2, copy_part, &c, err,
                                      sizeof err), KV_ERUNTIME);
    assert_non_null(strstr(err, "outside the trace's 4"));
    assert_int_equal(c.calls, 0);
    kv_trace_close(tr);
}

int main(void)
{
    if (kv_test_dir_make("engine_layers"))
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layers_fold_to_the_replay),
        cmocka_unit_test(test_layer_range_refused),
    };
    int failed = cmocka_run_group_tests(tests, NULL, kv_test_dir_teardown);
    return failed;
}
