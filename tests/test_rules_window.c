/*
 * test_rules_window.c - the sliding window: policies/window.c against kept sets worked out
 * by hand on tiny traces.
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

static void test_window_keeps_most_recent(void **state)
{
    (void)state;
    kv_hand_replay r;
    /* P = 5, B = 3: t=4 A={0..4} -> last 3 {2,3,4}; t=5 A={2,3,4,5} -> {3,4,5};
     * t=6 A={3,4,5,6} -> {4,5,6}. */
    kv_hand_run_policy("window", NULL, 7, 5, 3, 1, kv_hand_self_attn, NULL, &r);
    kv_hand_assert_kept(&r, 4, "2,3,4", "3,4,5", "4,5,6");
    /* P = 3 <= B = 4: nothing at the prefill end; t=3 |A| = 4 <= B keeps all;
     * t=4 A={0..4} -> {1,2,3,4}; t=5 -> {2,3,4,5}. */
    kv_hand_run_policy("window", NULL, 6, 3, 4, 1, kv_hand_self_attn, NULL, &r);
    kv_hand_assert_kept(&r, 2, "0,1,2", "0,1,2,3", "1,2,3,4", "2,3,4,5");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_keeps_most_recent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
