/*
 * test_rules_oracle.c - the per-step ceiling (preselect): policies/oracle.c against kept
 * sets worked out by hand on tiny traces.
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

/* T = 6, P = 3, two heads. */
static const int oracle_rows[2 * 6 * 6] = {
    /* h0 */
    16, 0, 0, 0, 0, 0,
    8, 8, 0, 0, 0, 0,
    8, 4, 4, 0, 0, 0,
    10, 2, 2, 2, 0, 0,
    1, 1, 12, 1, 1, 0,
    2, 2, 2, 2, 2, 6,
    /* h1 */
    16, 0, 0, 0, 0, 0,
    8, 8, 0, 0, 0, 0,
    2, 10, 4, 0, 0, 0,
    6, 2, 4, 4, 0, 0,
    1, 1, 10, 2, 2, 0,
    2, 2, 2, 2, 2, 6,
};

static void test_oracle(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 6, oracle_rows };
    kv_hand_replay r;
    kv_hand_run_table("oracle", NULL, 3, 1, 2, &tb, &r);
    /* t=2: row 2 summed over the heads [10, 14, 8] -> {1}. */
    assert_string_equal(r.kept[2], "1");
    /* t=3: preselect ranks the past by row 3's sums [16, 4, 6]: 0 is re-admitted, though
     * the prompt compression evicted it. Recall h0 (10+2)/16 + h1 (6+4)/16 = 22/16. */
    assert_string_equal(r.attended[3], "0,3");
    assert_true(r.recall[3] == 22.0 / 16);
    /* select over {0,3}: 0: 16, 3: 6 -> {0}. */
    assert_string_equal(r.kept[3], "0");
    /* t=4: sums [2, 2, 22, 3]: 2 returns. Recall (12+1)/16 + (10+2)/16 = 25/16. */
    assert_string_equal(r.attended[4], "2,4");
    assert_true(r.recall[4] == 25.0 / 16);
    /* t=5: every past position sums to 4: a tie, the most recent past position 4. */
    assert_string_equal(r.attended[5], "4,5");
    assert_true(r.recall[5] == 16.0 / 16);
}

/* The ceiling by brute force: on the same trace, no set of B = 1 or 2 past positions
 * reaches a higher group recall than the oracle at any decode step. */
static void test_oracle_is_the_best_subset(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 6, oracle_rows };
    for (int B = 1; B <= 2; B++) {
        kv_hand_replay r;
        kv_hand_run_table("oracle", NULL, 3, B, 2, &tb, &r);
        for (int t = 3; t < 6; t++) {
            double best = 0.0;
            for (int a = 0; a < t; a++)
                for (int b = B == 2 ? a + 1 : a; b < (B == 2 ? t : a + 1); b++) {
                    double s = 0.0;
                    for (int h = 0; h < 2; h++) {
                        s += kv_hand_table_attn(&tb, h, t, a) + kv_hand_table_attn(&tb, h, t, t);
                        if (b != a)
                            s += kv_hand_table_attn(&tb, h, t, b);
                    }
                    best = s > best ? s : best;
                }
            assert_true(r.recall[t] == best);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_oracle),
        cmocka_unit_test(test_oracle_is_the_best_subset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
