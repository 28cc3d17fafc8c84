/*
 * test_rules_full.c - the full-cache reference: policies/full.c against kept sets worked
 * out by hand on tiny traces.
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

static void test_full_keeps_everything(void **state)
{
    (void)state;
    kv_hand_replay r;
    kv_hand_run_policy("full", NULL, 6, 4, 2, 1, kv_hand_self_attn, NULL, &r);
    /* Never evicts: A_t = {0..t} at every step, whatever B. */
    kv_hand_assert_kept(&r, 3, "0,1,2,3", "0,1,2,3,4", "0,1,2,3,4,5");
    assert_int_equal(r.meta[5], 0); /* meta_bytes NULL */
    assert_null(kv_policy_find("full")->meta_bytes);
    assert_int_equal(kv_policy_find("full")->bounded, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_keeps_everything),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
