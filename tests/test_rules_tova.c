/*
 * test_rules_tova.c - TOVA and its scope: policies/tova.c against kept sets worked out by
 * hand on tiny traces.
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

/* T = 6, P = 4, two heads. Rows 0-2 are the same for both heads. */
static const int tova_rows[2 * 6 * 6] = {
    /* h0 */
    16, 0, 0, 0, 0, 0,
    8, 8, 0, 0, 0, 0,
    4, 4, 8, 0, 0, 0,
    10, 0, 2, 4, 0, 0,
    4, 0, 0, 2, 10, 0,
    0, 0, 0, 8, 0, 8,
    /* h1 */
    16, 0, 0, 0, 0, 0,
    8, 8, 0, 0, 0, 0,
    4, 4, 8, 0, 0, 0,
    0, 6, 6, 4, 0, 0,
    2, 0, 0, 12, 2, 0,
    0, 0, 0, 0, 8, 8,
};

static void test_tova(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 6, tova_rows };
    kv_hand_replay r;
    kv_hand_run_table("tova", NULL, 4, 2, 2, &tb, &r);
    /* t=3: row 3 summed over the heads: [10, 6, 8, 8]: 0, then 2 and 3 tie at 8, the
     * more recent 3 stays. */
    assert_string_equal(r.kept[3], "0,3");
    /* t=4: A={0,3,4}; row 4 sums to 16 on A in both heads, so o = p: sums 0: 6, 3: 14,
     * 4: 12 -> {3,4} (0 goes: only the current row counts, not 0's past). */
    assert_string_equal(r.kept[4], "3,4");
    /* t=5: A={3,4,5}; o = p: 3: 8, 4: 8, 5: 16 -> 5, then 3/4 tie, the more recent 4. */
    assert_string_equal(r.kept[5], "4,5");
    assert_int_equal(r.meta[5], 0);

    kv_hand_run_table("tova", "gqa=max", 4, 2, 2, &tb, &r);
    /* t=3: max over heads [10, 6, 6, 4]: 0, then 1/2 tie at 6, the more recent 2: the
     * current token 3 is evicted. */
    assert_string_equal(r.kept[3], "0,2");
    /* t=4: A={0,2,4}; h0 p on A = [4,0,10] (sum 14) -> o [4/14, 0, 10/14]; h1 [2,0,2]
     * (sum 4) -> [1/2, 0, 1/2]; max: 0: 1/2, 2: 0, 4: 10/14 -> {0,4}. */
    assert_string_equal(r.kept[4], "0,4");
}

static void test_tova_check_and_scope(void **state)
{
    (void)state;
    const kv_policy_ops *ops = kv_policy_find("tova");
    kv_param_values v;
    kv_test_apply_settings(ops, "scope=layer,gqa=max", &v);
    char err[KV_ERRMSG] = "";
    assert_int_equal(ops->check(&v, 8, err, sizeof err), 1);
    assert_string_equal(err, "tova scope=layer ranks by the mean over all query heads; "
                             "gqa=max needs scope=kv_head");
    kv_test_apply_settings(ops, "scope=layer", &v);
    assert_int_equal(ops->check(&v, 8, err, sizeof err), 0);
    assert_int_equal(ops->scope(&v), KV_SCOPE_LAYER);
    kv_test_apply_settings(ops, NULL, &v);
    assert_int_equal(ops->scope(&v), KV_SCOPE_KV_HEAD);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tova),
        cmocka_unit_test(test_tova_check_and_scope),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
