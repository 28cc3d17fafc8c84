/*
 * test_rules_keydiff.c - KeyDiff: policies/keydiff.c against kept sets worked out by hand
 * on tiny keys (the cosines below were checked with numpy when the test was written).
 * test_policy_conformance.c fails for a registered policy without a file like this one.
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

/* head_dim 2: (1,0), (0,1), (0,2), (-1,1), (0,0) */
static const float keys[10] = { 1, 0, 0, 1, 0, 2, -1, 1, 0, 0 };

static void test_keydiff_prompt(void **state)
{
    (void)state;
    const int pos[4] = { 0, 1, 2, 3 };
    char s[KV_HAND_SET_LEN];
    /* unit keys (1,0), (0,1), (0,1), (-.707,.707); mean (.0732, .6768); -cos = -0.108,
     * -0.994, -0.994, -0.627: keep 0 and 3 */
    kv_hand_key_select("keydiff", NULL, pos, 4, 1, 2, 2, keys, NULL, s);
    assert_string_equal(s, "0,3");
    /* window = 2 keeps 2 and 3; the mean is over the ranked 0 and 1 only, (.5, .5): both
     * score -0.707, the more recent 1 stays */
    kv_hand_key_select("keydiff", "window=2", pos, 4, 1, 3, 2, keys, NULL, s);
    assert_string_equal(s, "1,2,3");
}

static void test_keydiff_decode(void **state)
{
    (void)state;
    /* A_t = {1, 2, 4}, t = 4, whose key is zero: it adds nothing to the mean (0,1) and
     * scores 0; 1 and 2 score -1: the current token is kept over them (0 > -1), then 2
     * (the more recent of the tie) */
    const int pos[3] = { 1, 2, 4 };
    char s[KV_HAND_SET_LEN];
    kv_hand_key_select("keydiff", NULL, pos, 3, 0, 2, 2, keys, NULL, s);
    assert_string_equal(s, "2,4");
    /* A_t = {0, 1, 3}, t = 3: mean of (1,0), (0,1), (-.707,.707) = (.0976, .569);
     * -cos = -0.169, -0.986, -0.577: B = 1 keeps 0 alone, the current token 3 goes */
    const int pos2[3] = { 0, 1, 3 };
    kv_hand_key_select("keydiff", NULL, pos2, 3, 0, 1, 2, keys, NULL, s);
    assert_string_equal(s, "0");
}

/* B < window is refused naming the parameter to change; B = window is allowed. */
static void test_keydiff_check(void **state)
{
    (void)state;
    const kv_policy_ops *ops = kv_policy_find("keydiff");
    kv_param_values v;
    kv_test_apply_settings(ops, "window=6", &v);
    char err[KV_ERRMSG] = "";
    assert_int_equal(ops->check(&v, 5, err, sizeof err), 1);
    assert_string_equal(err, "budget 5 must be at least keydiff window 6 (use --set "
                        "keydiff.window=N with N <= 5)");
    assert_int_equal(ops->check(&v, 6, err, sizeof err), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keydiff_prompt),
        cmocka_unit_test(test_keydiff_decode),
        cmocka_unit_test(test_keydiff_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
