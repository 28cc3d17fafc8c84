/*
 * test_rules_snapkv.c - SnapKV (observation window, pooling), its gqa mode and decode =
 * recompress: policies/snapkv.c against kept sets worked out by hand on tiny traces.
 *
 * The driver of tests/kv_hand_replay.h plays the engine's part of the contract in
 * policy.h for one cache. Traces are tables of attention in sixteenths (so every value,
 * sum and tie below is exact in double precision) or a formula. Each expected set
 * carries its derivation in a comment; "h0"/"h1" are the two query heads of the group.
 * test_policy_conformance.c fails for a registered policy without a file like this one.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policies/policy.h"
#include "tests/kv_hand_replay.h"

/* T = 10, P = 8, two heads. Rows 0..5 attend to themselves; rows 6, 7 (the observation
 * window for window = 2) carry the votes; decode rows 8, 9 attend to themselves. */
static const int snap_rows[2 * 10 * 10] = {
    /* h0 */
    16, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 16, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 16, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 16, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 16, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 16, 0, 0, 0, 0,
    0, 5, 0, 1, 2, 3, 5, 0, 0, 0,
    0, 4, 0, 0, 3, 3, 3, 3, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 16, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 16,
    /* h1: the window attends only to itself, so s_h1 = 0 */
    16, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 16, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 16, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 16, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 16, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 16, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 16, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 8, 8, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 16, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 16,
};

/* Replays snap_rows (P = 8, B = 3, both heads) under snapkv with settings. */
static void replay_snap_rows(const char *settings, kv_hand_replay *r)
{
    kv_hand_table16 tb = { 10, snap_rows };
    kv_hand_run_table("snapkv", settings, 8, 3, 2, &tb, r);
}

static void test_snapkv_max_pooling(void **state)
{
    (void)state;
    kv_hand_replay r;
    replay_snap_rows("window=2,kernel=3", &r);
    /* L = P - window = 6. s_h0[j<6] = p6 + p7 = [0, 9, 0, 1, 5, 6]; s_h1 = 0.
     * Max over |u| <= 1 in [0,6): [max(0,9), max(0,9,0), max(9,0,1), max(0,1,5),
     * max(1,5,6), max(5,6)] = [9, 9, 9, 5, 6, 6]; gqa sum adds h1's zeros.
     * B - window = 1: 0, 1, 2 tie at 9, the most recent (2) is kept; plus {6,7}.
     * Decode: no eviction, S grows by one per step. */
    kv_hand_assert_kept(&r, 7, "2,6,7", "2,6,7,8", "2,6,7,8,9");
    assert_int_equal(r.meta[9], 0);
}

static void test_snapkv_avg_pooling(void **state)
{
    (void)state;
    kv_hand_replay r;
    replay_snap_rows("window=2,kernel=3,pooling=avg", &r);
    /* Avg: clipped window sums / kernel 3: [(0+9)/3, (0+9+0)/3, (9+0+1)/3, (0+1+5)/3,
     * (1+5+6)/3, (5+6)/3] = [3, 3, 10/3, 2, 4, 11/3] -> 4 is the best (max chose 2). */
    kv_hand_assert_kept(&r, 7, "4,6,7", "4,6,7,8", "4,6,7,8,9");
}

/* T = 8, P = 7: row 6 alone is the observation window (window = 1). Other rows attend
 * to themselves. */
static int snap_gqa_rows[2 * 8 * 8];

static void fill_snap_gqa_rows(void)
{
    memset(snap_gqa_rows, 0, sizeof snap_gqa_rows);
    for (int h = 0; h < 2; h++)
        for (int t = 0; t < 8; t++)
            snap_gqa_rows[(h * 8 + t) * 8 + t] = 16;
    static const int h0_row6[8] = { 0, 0, 0, 0, 10, 0, 6, 0 };
    static const int h1_row6[8] = { 0, 0, 7, 0, 0, 0, 9, 0 };
    memcpy(&snap_gqa_rows[(0 * 8 + 6) * 8], h0_row6, sizeof h0_row6);
    memcpy(&snap_gqa_rows[(1 * 8 + 6) * 8], h1_row6, sizeof h1_row6);
}

static void test_snapkv_gqa_pools_each_head_first(void **state)
{
    (void)state;
    fill_snap_gqa_rows();
    kv_hand_table16 tb = { 8, snap_gqa_rows };
    kv_hand_replay r;
    /* L = 6, B - window = 1. s_h0 = [0,0,0,0,10,0] -> max-pooled [0,0,0,10,10,10];
     * s_h1 = [0,0,7,0,0,0] -> [0,7,7,7,0,0].
     * gqa sum: [0,7,7,17,10,10] -> 3. (Pooling the summed s [0,0,7,0,10,0] instead
     * would give [0,7,7,10,10,10] -> 5: the heads are pooled first, rule 3.) */
    kv_hand_run_table("snapkv", "window=1,kernel=3", 7, 2, 2, &tb, &r);
    kv_hand_assert_kept(&r, 6, "3,6", "3,6,7");
    /* gqa max: [0,7,7,10,10,10] -> 3, 4, 5 tie, the most recent 5 is kept. */
    kv_hand_run_table("snapkv", "window=1,kernel=3,gqa=max", 7, 2, 2, &tb, &r);
    kv_hand_assert_kept(&r, 6, "5,6", "5,6,7");
}

static void test_snapkv_short_prompt_and_check(void **state)
{
    (void)state;
    kv_hand_replay r;
    /* P = 4 <= B = 4: the prompt is kept whole, and nothing is evicted later. */
    kv_hand_run_policy("snapkv", "window=2,kernel=3", 6, 4, 4, 1, kv_hand_self_attn, NULL, &r);
    assert_string_equal(r.kept[3], "0,1,2,3");
    assert_string_equal(r.kept[5], "0,1,2,3,4,5");

    const kv_policy_ops *ops = kv_policy_find("snapkv");
    kv_param_values v;
    kv_params_defaults(ops, &v);
    char err[KV_ERRMSG] = "";
    assert_int_equal(ops->check(&v, 31, err, sizeof err), 1);
    assert_string_equal(err, "budget 31 must be at least snapkv window 32 (use --set "
                        "snapkv.window=N with N <= 31)");
    assert_int_equal(ops->check(&v, 32, err, sizeof err), 0);
    assert_int_equal(kv_params_set(ops, &v, "kernel", "6", err, sizeof err), 0);
    assert_int_equal(ops->check(&v, 64, err, sizeof err), 1);
    assert_string_equal(err, "snapkv kernel 6 must be odd (use --set snapkv.kernel=N with N "
                        "odd, e.g. 5)");
}

/* T = 7, P = 3, one head. */
static const int snap_decode_rows[7 * 7] = {
    16, 0, 0, 0, 0, 0, 0,
    8, 8, 0, 0, 0, 0, 0,
    4, 10, 2, 0, 0, 0, 0,
    0, 2, 8, 6, 0, 0, 0,
    0, 0, 2, 10, 4, 0, 0,
    0, 0, 0, 4, 4, 8, 0,
    0, 0, 0, 0, 8, 0, 8,
};

static void test_snapkv_recompress(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 7, snap_decode_rows };
    kv_hand_replay r;
    kv_hand_run_table("snapkv", "window=1,kernel=1,decode=recompress", 3, 2, 1, &tb, &r);
    /* t=2: L = 2, s = row 2 on {0,1} = [4, 10] -> {1} + window {2}.
     * t=3: A={1,2,3} (row 3 sums to 16 on it: o = p); W={3}, candidates {1,2} scored by
     * the last window = 1 row: [2, 8] -> {2}.
     * t=4: A={2,3,4}, o = p; candidates {2,3}: [2, 10] -> {3}.
     * t=5: A={3,4,5}; candidates {3,4}: [4, 4]: a tie, the more recent 4. */
    kv_hand_assert_kept(&r, 2, "1,2", "2,3", "3,4", "4,5");
    /* One stored row * 1 head * |A| = 3 positions * 4 bytes. */
    assert_int_equal(r.meta[5], 12);
    /* decode = none (default) keeps growing. */
    kv_hand_run_table("snapkv", "window=1,kernel=1", 3, 2, 1, &tb, &r);
    assert_string_equal(r.kept[4], "1,2,3,4");
    assert_int_equal(r.meta[4], 0);
}

/* T = 9, P = 4, one head; window 1, kernel 3 (max), B = 3, interval 2. */
static const int snap_gap_rows[9 * 9] = {
    16, 0, 0, 0, 0, 0, 0, 0, 0,
    8, 8, 0, 0, 0, 0, 0, 0, 0,
    4, 4, 8, 0, 0, 0, 0, 0, 0,
    1, 8, 2, 5, 0, 0, 0, 0, 0,
    0, 4, 4, 4, 4, 0, 0, 0, 0,
    0, 6, 0, 1, 2, 7, 0, 0, 0,
    0, 4, 4, 0, 0, 4, 4, 0, 0,
    0, 0, 7, 0, 0, 0, 2, 7, 0,
    0, 0, 4, 0, 0, 4, 0, 4, 4,
};

static void test_snapkv_recompress_interval_pooling(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 9, snap_gap_rows };
    kv_hand_replay r;
    kv_hand_run_table("snapkv", "window=1,kernel=3,decode=recompress,interval=2", 4, 3, 1, &tb, &r);
    /* t=3: L = 3, s = row 3 on {0,1,2} = [1, 8, 2], max-pooled [8, 8, 8]: a tie, the
     * two most recent {1,2}, plus {3}.
     * t=4: decode step 1, not a multiple of interval 2: S grows.
     * t=5 (step 2): A={1,..,5}, o = p; W={5}, candidates (cache order) 1,2,3,4 with
     * s = [6, 0, 1, 2], pooled over neighbouring candidates [6, 6, 2, 2] -> {1,2}.
     * t=6 (step 3): grows.
     * t=7 (step 4): candidates 1,2,5,6 with s = [0, 7, 0, 2]; pooled over cache order
     * [7, 7, 7, 2] (5's neighbours are 2 and 6, the cache's, not 4 and 6): 1, 2, 5 tie,
     * the two most recent {2,5}. Pooling over absolute positions would give 5 only
     * max(0, 0, 2) = 2 and keep {1,2}. */
    kv_hand_assert_kept(&r, 3, "1,2,3", "1,2,3,4", "1,2,5", "1,2,5,6", "2,5,7");
    /* The bound: B + interval - 1 = 4 past tokens. */
    const kv_policy_ops *ops = kv_policy_find("snapkv");
    kv_param_values v;
    kv_test_apply_settings(ops, "decode=recompress,interval=2", &v);
    assert_int_equal(kv_policy_max_held(ops, &v, 3), 4);
    kv_test_apply_settings(ops, NULL, &v);
    assert_int_equal(kv_policy_max_held(ops, &v, 3), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_snapkv_max_pooling),
        cmocka_unit_test(test_snapkv_avg_pooling),
        cmocka_unit_test(test_snapkv_gqa_pools_each_head_first),
        cmocka_unit_test(test_snapkv_short_prompt_and_check),
        cmocka_unit_test(test_snapkv_recompress),
        cmocka_unit_test(test_snapkv_recompress_interval_pooling),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
