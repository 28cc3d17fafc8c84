/*
 * test_rules_lookahead.c - the Belady-style offline reference (prescan, preselect):
 * policies/lookahead.c against kept sets worked out by hand on tiny traces.
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

/* T = 7, P = 3, one head. */
static const int look_rows[7 * 7] = {
    16, 0, 0, 0, 0, 0, 0,
    8, 8, 0, 0, 0, 0, 0,
    4, 4, 8, 0, 0, 0, 0,
    2, 12, 1, 1, 0, 0, 0,
    12, 0, 2, 1, 1, 0, 0,
    1, 0, 0, 1, 6, 8, 0,
    1, 0, 0, 0, 1, 6, 8,
};

static void test_lookahead(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 7, look_rows };
    kv_hand_replay r;
    /* horizon = all, B = 1. t=2 ranks by rows 3..6: 0: 2+12+1+1 = 16, 1: 12,
     * 2: 1+2 = 3 -> {0}. */
    kv_hand_run_table("lookahead", NULL, 3, 1, 1, &tb, &r);
    assert_string_equal(r.kept[2], "0");
    /* preselect leaves S alone: the query attends to S u {t}. */
    assert_string_equal(r.attended[3], "0,3");
    /* t=3: rows 4..6: 0: 14, 3: 2 -> {0}; t=4: rows 5, 6: 0: 2, 4: 7 -> {4};
     * t=5: row 6: 4: 1, 5: 6 -> {5}; t=6: no future row, all 0: the more recent 6. */
    kv_hand_assert_kept(&r, 3, "0", "4", "5", "6");
    assert_true(r.recall[4] == 13.0 / 16); /* {0,4}: 12 + 1 */

    /* horizon = 1: the prompt end looks at row P = 3 only: 0: 2, 1: 12, 2: 1 -> {1};
     * t=3: row 4: 1: 0, 3: 1 -> {3}; t=4: row 5: 3: 1, 4: 6 -> {4}; then as above. */
    kv_hand_run_table("lookahead", "horizon=1", 3, 1, 1, &tb, &r);
    kv_hand_assert_kept(&r, 2, "1", "3", "4", "5", "6");
    /* horizon = 2: rows P..P+1 = 3, 4: 0: 14, 1: 12, 2: 3 -> {0}; t=3: rows 4, 5:
     * 0: 13, 3: 2 -> {0}; t=4: rows 5, 6: 0: 2, 4: 7 -> {4}. */
    kv_hand_run_table("lookahead", "horizon=2", 3, 1, 1, &tb, &r);
    kv_hand_assert_kept(&r, 2, "0", "0", "4");
    /* horizon >= T - P = 4 sees the same rows as all. */
    kv_hand_run_table("lookahead", "horizon=4", 3, 1, 1, &tb, &r);
    assert_string_equal(r.kept[2], "0");
    assert_string_equal(r.kept[4], "4");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lookahead),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
