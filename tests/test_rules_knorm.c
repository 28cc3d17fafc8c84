/*
 * test_rules_knorm.c - KNorm: policies/knorm.c against kept sets worked out by hand on
 * tiny keys (integers, so every norm and tie below is exact).
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

/* head_dim 2: norms 5, 1, 2, 7.07, 1, 1 */
static const float keys[12] = { 3, 4, 1, 0, 0, 2, 5, 5, 0, 1, 1, 0 };

static void test_knorm_prompt(void **state)
{
    (void)state;
    const int pos[4] = { 0, 1, 2, 3 };
    char s[KV_HAND_SET_LEN];
    /* the two smallest norms: 1 (1) and 2 (2) */
    kv_hand_key_select("knorm", NULL, pos, 4, 1, 2, 2, keys, NULL, s);
    assert_string_equal(s, "1,2");
    /* window = 1 keeps 3 whatever its norm, then the best of {0, 1, 2}: 1 */
    kv_hand_key_select("knorm", "window=1", pos, 4, 1, 2, 2, keys, NULL, s);
    assert_string_equal(s, "1,3");
    /* within budget: all */
    kv_hand_key_select("knorm", NULL, pos, 4, 1, 4, 2, keys, NULL, s);
    assert_string_equal(s, "0,1,2,3");
}

static void test_knorm_decode(void **state)
{
    (void)state;
    /* a decode step over A_t = {0, 3, 4, 5}, t = 5: norms 5, 7.07, 1, 1; B = 2 keeps 4
     * and 5 (tied at 1; both kept). With the current token's key large it goes: */
    const int pos[4] = { 0, 3, 4, 5 };
    char s[KV_HAND_SET_LEN];
    kv_hand_key_select("knorm", NULL, pos, 4, 0, 2, 2, keys, NULL, s);
    assert_string_equal(s, "4,5");
    float big[12];
    memcpy(big, keys, sizeof big);
    big[10] = 9;   /* position 5: norm 9 */
    /* 4 (1) and 0 (5): the current token t = 5 is evicted, as TOVA may */
    kv_hand_key_select("knorm", NULL, pos, 4, 0, 2, 2, big, NULL, s);
    assert_string_equal(s, "0,4");
    /* window = 1 keeps it */
    kv_hand_key_select("knorm", "window=1", pos, 4, 0, 2, 2, big, NULL, s);
    assert_string_equal(s, "4,5");
}

static void test_knorm_check(void **state)
{
    (void)state;
    const kv_policy_ops *ops = kv_policy_find("knorm");
    kv_param_values v;
    kv_test_apply_settings(ops, "window=8", &v);
    char err[KV_ERRMSG] = "";
    assert_int_equal(ops->check(&v, 4, err, sizeof err), 1);
    assert_string_equal(err, "budget 4 must be at least knorm window 8 (use --set "
                        "knorm.window=N with N <= 4)");
    assert_int_equal(ops->check(&v, 8, err, sizeof err), 0);   /* B = window: allowed */
    assert_int_equal(ops->needs, KV_NEEDS_KEYS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_knorm_prompt),
        cmocka_unit_test(test_knorm_decode),
        cmocka_unit_test(test_knorm_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
