/*
 * test_rules_cur.c - CUR: policies/cur.c against kept sets worked out by hand on tiny keys
 * and values (head_dim 1; the leverages below were checked with numpy when the test was
 * written). test_policy_conformance.c fails for a registered policy without a file like
 * this one.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "policies/policy.h"
#include "tests/kv_hand_replay.h"

/* k = 1, 2, 0, 3, 1, 1; v = 2, 1, 1, 1, 1, 1 */
static const float keys[6] = { 1, 2, 0, 3, 1, 1 }, values[6] = { 2, 1, 1, 1, 1, 1 };
static const int pos[6] = { 0, 1, 2, 3, 4, 5 };

static void test_cur_prompt(void **state)
{
    (void)state;
    char s[KV_HAND_SET_LEN];
    /* one local group: k2 / 16 = 1, 4, 0, 9, 1, 1 (/16), v2 / 9 = 4, 1, 1, 1, 1, 1 (/9):
     * products 4, 4, 0, 9, 1, 1 (/144), normalised 0.211, 0.211, 0, 0.474, 0.053, 0.053:
     * 3, then the tie 0/1 to the more recent 1 */
    kv_hand_key_select("cur", "sinks=0", pos, 6, 1, 2, 1, keys, values, s);
    assert_string_equal(s, "1,3");
    /* sinks = 1: position 0 scores 1 */
    kv_hand_key_select("cur", "sinks=1", pos, 6, 1, 2, 1, keys, values, s);
    assert_string_equal(s, "0,3");
    /* local = 2: groups {0,1}, {2,3}, {4,5}: k2 1/5, 4/5, 0, 1, 1/2, 1/2; v2 4/5, 1/5,
     * 1/2, 1/2, 1/2, 1/2: products .16, .16, 0, .5, .25, .25 (normalised 0.121, 0.121, 0,
     * 0.379, 0.189, 0.189): 3, then 5 of the 4/5 tie */
    kv_hand_key_select("cur", "sinks=0,local=2", pos, 6, 1, 2, 1, keys, values, s);
    assert_string_equal(s, "3,5");
    /* leverage = key: k2 alone: 9 (3), 4 (1) */
    kv_hand_key_select("cur", "sinks=0,leverage=key", pos, 6, 1, 2, 1, keys, values, s);
    assert_string_equal(s, "1,3");
    /* leverage = value: v2 alone: 0 (4/9), then the most recent of the 1/9s, 5 */
    kv_hand_key_select("cur", "sinks=0,leverage=value", pos, 6, 1, 2, 1, keys, values, s);
    assert_string_equal(s, "0,5");
    /* the default sinks = 4: 0..3 score 1, the most recent two of them */
    kv_hand_key_select("cur", NULL, pos, 6, 1, 2, 1, keys, values, s);
    assert_string_equal(s, "2,3");
    /* window = 2 keeps 4 and 5; ranked {0..3}: products 4, 4, 0, 9: 3 */
    kv_hand_key_select("cur", "sinks=0,window=2", pos, 6, 1, 3, 1, keys, values, s);
    assert_string_equal(s, "3,4,5");
}

static void test_cur_decode(void **state)
{
    (void)state;
    /* A_t = {1, 2, 5}, t = 5: k2 4, 0, 1 (/5), v2 1, 1, 1 (/3): products 4, 0, 1: B = 1
     * keeps 1; the current token 5 goes */
    const int a[3] = { 1, 2, 5 };
    char s[KV_HAND_SET_LEN];
    kv_hand_key_select("cur", "sinks=0", a, 3, 0, 1, 1, keys, values, s);
    assert_string_equal(s, "1");
    assert_int_equal(kv_policy_find("cur")->needs, KV_NEEDS_KEYS | KV_NEEDS_VALUES);
}

/* B < window is refused naming the parameter to change; B = window is allowed. */
static void test_cur_check(void **state)
{
    (void)state;
    const kv_policy_ops *ops = kv_policy_find("cur");
    kv_param_values v;
    kv_test_apply_settings(ops, "window=6", &v);
    char err[KV_ERRMSG] = "";
    assert_int_equal(ops->check(&v, 5, err, sizeof err), 1);
    assert_string_equal(err, "budget 5 must be at least cur window 6 (use --set "
                        "cur.window=N with N <= 5)");
    assert_int_equal(ops->check(&v, 6, err, sizeof err), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cur_prompt),
        cmocka_unit_test(test_cur_decode),
        cmocka_unit_test(test_cur_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
