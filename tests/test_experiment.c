/*
 * test_experiment.c - running an experiment (sim/experiment.h): budgets resolved per
 * trace and policy, policies grouped by resolved budget into replays, runs merged.
 *
 * The merged results are checked against an independent route: one kv_replay per policy
 * at the tokens kv_budget_resolve gives it, run by this file. Every run of the experiment
 * must equal that policy's own replay bit for bit, in its policy-major slot.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "sim/budget.h"
#include "sim/config.h"
#include "sim/experiment.h"
#include "tests/kv_test.h"

static int setup(void **state)
{
    (void)state;
    return kv_test_dir_make("kvsim_test_experiment");
}

/* window, h2o and morphkv at a byte budget (three different token budgets on this
 * geometry: h2o and morphkv keep metadata, morphkv also needs B > window) and at 24
 * tokens, over two traces. */
static void test_replay_groups_and_merges(void **state)
{
    (void)state;
    char a[512], b[512];
    snprintf(a, sizeof a, "%s", kv_test_path("a.h5"));
    snprintf(b, sizeof b, "%s", kv_test_path("b.h5"));
    kv_test_gen_small(a, 1, 0, 0);
    kv_test_gen_small(b, 2, 0, 7);
    kv_experiment ex;
    kv_experiment_init(&ex);
    char err[1024], list[1100];
    snprintf(list, sizeof list, "%s,%s", a, b);
    assert_int_equal(kv_experiment_set_traces(&ex, list, err, sizeof err), 0);
    assert_int_equal(kv_experiment_set_budgets(&ex, "6KiB,24", err, sizeof err), 0);
    const char *types[3] = { "window", "h2o", "morphkv" };
    for (int p = 0; p < 3; p++)
        assert_int_equal(kv_experiment_add_policy(&ex, types[p], types[p], err, sizeof err), 0);
    assert_int_equal(kv_experiment_set(&ex, "morphkv", "window", "4", err, sizeof err), 0);
    int np = ex.n_policies, nb = ex.n_budgets;
    int tokens[2 * 3 * 2];
    if (kv_experiment_resolve_budgets(&ex, tokens, err, sizeof err))
        fail_msg("%s", err);
    /* the byte budget gives the three policies three different budgets */
    assert_true(tokens[0 * nb] != tokens[1 * nb] && tokens[1 * nb] != tokens[2 * nb] &&
                tokens[0 * nb] != tokens[2 * nb]);
    kv_results *res[2];
    kv_experiment_opts opts = { .block = 16, .progress = 0 };
    if (kv_experiment_replay(&ex, tokens, &opts, res, err, sizeof err))
        fail_msg("%s", err);
    for (int k = 0; k < 2; k++) {
        kv_trace *tr;
        assert_int_equal(kv_trace_open(ex.traces[k], &tr, err, sizeof err), 0);
        assert_int_equal(res[k]->n_runs, np * nb);
        for (int p = 0; p < np; p++)
            for (int bi = 0; bi < nb; bi++) {
                int budget;
                if (kv_budget_resolve(&ex.budgets[bi], &ex.policies[p],
                                      kv_trace_get_info(tr), &budget, err, sizeof err))
                    fail_msg("%s", err);
                kv_replay_conf one = { .policies = &ex.policies[p], .n_policies = 1,
                                       .budgets = &budget, .n_budgets = 1, .block = 16,
                                       .seed = ex.seed, .no_topk = ex.no_topk };
                kv_results *alone;
                if (kv_replay(tr, &one, &alone, err, sizeof err))
                    fail_msg("%s", err);
                const kv_run_result *got = &res[k]->runs[p * nb + bi];
                assert_int_equal(got->policy, p);
                assert_int_equal(got->budget, budget);
                assert_memory_equal(got->steps, alone->runs[0].steps,
                                    (size_t)alone->n_steps * sizeof *got->steps);
                assert_memory_equal(got->lifetimes, alone->runs[0].lifetimes,
                                    ((size_t)alone->n_steps + 1) * sizeof *got->lifetimes);
                kv_results_free(alone);
            }
        kv_trace_close(tr);
        kv_results_free(res[k]);
    }
    kv_experiment_free(&ex);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replay_groups_and_merges),
    };
    return cmocka_run_group_tests(tests, setup, kv_test_dir_teardown);
}
