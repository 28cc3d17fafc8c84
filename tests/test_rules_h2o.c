/*
 * test_rules_h2o.c - H2O (heavy hitters + recent window), its gqa modes and normalize =
 * count: policies/h2o.c against kept sets worked out by hand on tiny traces.
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

/* Two heads, T = 6, P = 4, sixteenths. Every row sums to 16; decode rows (t = 4, 5) are
 * zero at 1 and 2, so over both runs' A_t they still sum to 16 and o_t = p_t. */
static const int h2o_rows[2 * 6 * 6] = {
    /* h0 */
    16, 0, 0, 0, 0, 0,
    6, 10, 0, 0, 0, 0,
    4, 6, 6, 0, 0, 0,
    4, 4, 6, 2, 0, 0,
    2, 0, 0, 12, 2, 0,
    2, 0, 0, 0, 12, 2,
    /* h1 */
    16, 0, 0, 0, 0, 0,
    14, 2, 0, 0, 0, 0,
    10, 0, 6, 0, 0, 0,
    8, 0, 6, 2, 0, 0,
    2, 0, 0, 12, 2, 0,
    2, 0, 0, 0, 12, 2,
};

/* Replays h2o_rows (P = 4, B = 3, both heads) under h2o with settings. */
static void replay_h2o_rows(const char *settings, kv_hand_replay *r)
{
    kv_hand_table16 tb = { 6, h2o_rows };
    kv_hand_run_table("h2o", settings, 4, 3, 2, &tb, r);
}

static void test_h2o_gqa_sum(void **state)
{
    (void)state;
    kv_hand_replay r;
    replay_h2o_rows(NULL, &r);
    /* Prefill end t=3 (in sixteenths): acc_h0 = {0:16+6+4+4=30, 1:10+6+4=20, 2:6+6=12,
     * 3:2}, acc_h1 = {0:16+14+10+8=48, 1:2, 2:12, 3:2}. B = 3, r = floor(0.5*3) = 1
     * keeps {3}; gqa sum: 0:78, 1:22, 2:24 -> best 2 = {0,2}.
     * t=4: A={0,2,3,4}, o4 = p4 (sums to 16 over A). acc_h0 = {0:32, 2:12, 3:14, 4:2},
     * acc_h1 = {0:50, 2:12, 3:14, 4:2}. r keeps {4}; sum: 0:82, 2:24, 3:28 -> {0,3}.
     * t=5: A={0,3,4,5}. acc_h0 = {0:34, 3:14, 4:14}, acc_h1 = {0:52, 3:14, 4:14}.
     * r keeps {5}; sum: 0:86, 3:28, 4:28: a tie, the more recent 4 is kept. */
    kv_hand_assert_kept(&r, 3, "0,2,3", "0,3,4", "0,4,5");
    /* One float32 score per cached token: 4 * |A_t| = 4 * 4. */
    assert_int_equal(r.meta[4], 16);
    assert_int_equal(r.meta[5], 16);
}

static void test_h2o_gqa_max(void **state)
{
    (void)state;
    kv_hand_replay r;
    replay_h2o_rows("gqa=max", &r);
    /* Same accumulators as above; gqa max: 0:max(30,48)=48, 1:max(20,2)=20,
     * 2:max(12,12)=12 -> {0,1} (sum chose {0,2}).
     * t=4: A={0,1,3,4}; acc_h0 = {0:32, 1:20, 3:14}, acc_h1 = {0:50, 1:2, 3:14};
     * max: 0:50, 1:20, 3:14 -> {0,1} + {4}.
     * t=5: A={0,1,4,5}; acc_h0 = {0:34, 1:20, 4:14}, acc_h1 = {0:52, 1:2, 4:14};
     * max: 0:52, 1:20, 4:14 -> {0,1} + {5}. */
    kv_hand_assert_kept(&r, 3, "0,1,3", "0,1,4", "0,1,5");
    /* Per-head scores: 4 * group_size * |A_t| = 4 * 2 * 4. */
    assert_int_equal(r.meta[4], 32);
}

static void test_h2o_recent_floor_in_double(void **state)
{
    (void)state;
    kv_hand_replay r;
    /* recent = 0.29, B = 100: 0.29 * 100 is 28.999999999999996 in double, so r = 28
     * (29 in exact decimal). P = 101: r keeps {73..100}; candidates {0..72} keep 72 by
     * acc, which decreases with j: 72 is evicted. (With r = 29, 71 would be.) */
    kv_hand_run_policy("h2o", "recent=0.29", 102, 101, 100, 1, kv_hand_uniform_attn, NULL, &r);
    char expect[KV_HAND_SET_LEN];
    size_t used = 0;
    for (int j = 0; j <= 100; j++)
        if (j != 72)
            used += (size_t)snprintf(expect + used, sizeof expect - used, "%s%d",
                                     used ? "," : "", j);
    assert_string_equal(r.kept[100], expect);
    /* t=101: uniform o adds the same 1/101 to every candidate; r keeps the 28 most
     * recent {74..101}; candidates {0..71, 73}: 73 has the lowest acc and goes. */
    used = 0;
    for (int j = 0; j <= 101; j++)
        if (j != 72 && j != 73)
            used += (size_t)snprintf(expect + used, sizeof expect - used, "%s%d",
                                     used ? "," : "", j);
    assert_string_equal(r.kept[101], expect);
}

/* T = 6, P = 4, one head. */
static const int h2o_count_rows[6 * 6] = {
    16, 0, 0, 0, 0, 0,
    8, 8, 0, 0, 0, 0,
    4, 2, 10, 0, 0, 0,
    2, 0, 6, 8, 0, 0,
    0, 0, 4, 4, 8, 0,
    0, 0, 0, 0, 0, 16,
};

static void test_h2o_normalize_count(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 6, h2o_count_rows };
    kv_hand_replay r;
    /* t=3, B = 2, r = 1 keeps {3}. acc (sixteenths) 0: 16+8+4+2 = 30 over 4 rows,
     * 1: 8+2+0 = 10 over 3, 2: 10+6 = 16 over 2. none: 0 (30) -> {0,3}; count: means
     * 7.5, 3.33, 8 -> 2 -> {2,3}. */
    kv_hand_run_table("h2o", "normalize=count", 4, 2, 1, &tb, &r);
    assert_string_equal(r.kept[3], "2,3");
    /* t=4: A={2,3,4}, row 4 sums to 16 on it (o = p): 2: (16+4)/3 = 6.67, 3: (8+4)/2 =
     * 6 -> {2} + recent {4}. */
    assert_string_equal(r.kept[4], "2,4");
    /* 4 bytes of score + 4 of count per cached token: 8 * 3. */
    assert_int_equal(r.meta[4], 24);
    kv_hand_run_table("h2o", NULL, 4, 2, 1, &tb, &r);
    assert_string_equal(r.kept[3], "0,3");
    /* t=4: A={0,3,4}: row 4 on A = [0, 4, 8] (sum 12): acc 0: 30, 3: 8 + 16 * 4/12 ->
     * {0} + {4}. */
    assert_string_equal(r.kept[4], "0,4");
    assert_int_equal(r.meta[4], 12);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_h2o_gqa_sum),
        cmocka_unit_test(test_h2o_gqa_max),
        cmocka_unit_test(test_h2o_recent_floor_in_double),
        cmocka_unit_test(test_h2o_normalize_count),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
