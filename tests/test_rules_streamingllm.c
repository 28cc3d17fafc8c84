/*
 * test_rules_streamingllm.c - StreamingLLM (sinks + window): policies/streamingllm.c
 * against kept sets worked out by hand on tiny traces.
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

static void test_streamingllm_sinks_and_window(void **state)
{
    (void)state;
    kv_hand_replay r;
    /* sinks = 1, B = 3, P = 5: t=4 A={0..4}: sink {0} + B-1 = 2 most recent {3,4};
     * t=5 A={0,3,4,5} -> {0,4,5}; t=6 A={0,4,5,6} -> {0,5,6}. */
    kv_hand_run_policy("streamingllm", "sinks=1", 7, 5, 3, 1, kv_hand_self_attn, NULL, &r);
    kv_hand_assert_kept(&r, 4, "0,3,4", "0,4,5", "0,5,6");
    /* Default sinks = 4, B = 5, P = 8: t=7 {0,1,2,3} + 1 most recent {7};
     * t=8 A={0,1,2,3,7,8} -> {0,1,2,3,8}; t=9 -> {0,1,2,3,9}. */
    kv_hand_run_policy("streamingllm", NULL, 10, 8, 5, 1, kv_hand_self_attn, NULL, &r);
    kv_hand_assert_kept(&r, 7, "0,1,2,3,7", "0,1,2,3,8", "0,1,2,3,9");
    /* B = sinks = 2, P = 5: no recent part, the sinks alone: t=4 A={0..4} -> {0,1};
     * t=5 A={0,1,5} -> {0,1} (the new token evicted at once); t=6 likewise. */
    kv_hand_run_policy("streamingllm", "sinks=2", 7, 5, 2, 1, kv_hand_self_attn, NULL, &r);
    kv_hand_assert_kept(&r, 4, "0,1", "0,1", "0,1");
}

static void test_streamingllm_check(void **state)
{
    (void)state;
    const kv_policy_ops *ops = kv_policy_find("streamingllm");
    kv_param_values v;
    kv_params_defaults(ops, &v);
    char err[KV_ERRMSG] = "";
    assert_int_equal(ops->check(&v, 3, err, sizeof err), 1);
    assert_string_equal(err, "budget 3 must be at least streamingllm sinks 4 (use --set "
                        "streamingllm.sinks=N with N <= 3)");
    assert_int_equal(ops->check(&v, 4, err, sizeof err), 0);   /* B = sinks: the rule allows */
    assert_int_equal(ops->check(&v, 5, err, sizeof err), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_streamingllm_sinks_and_window),
        cmocka_unit_test(test_streamingllm_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
