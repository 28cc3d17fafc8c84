/*
 * test_rules_morphkv.c - MorphKV (recent window + fused window attention), fusion, gqa
 * (sum, max, logit) and evict_every: policies/morphkv.c against kept sets worked out by
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

/* T = 7, P = 5, two heads. h1 attends only to itself, so its sum over O is always 0 and
 * its normalised row is 0 (README rule 6): the scores are h0's. */
static const int morph_rows[2 * 7 * 7] = {
    /* h0 */
    16, 0, 0, 0, 0, 0, 0,
    8, 8, 0, 0, 0, 0, 0,
    4, 4, 8, 0, 0, 0, 0,
    3, 0, 5, 8, 0, 0, 0,
    2, 2, 0, 6, 6, 0, 0,
    2, 0, 0, 2, 6, 6, 0,
    0, 0, 0, 8, 0, 4, 4,
    /* h1 */
    16, 0, 0, 0, 0, 0, 0,
    0, 16, 0, 0, 0, 0, 0,
    0, 0, 16, 0, 0, 0, 0,
    0, 0, 0, 16, 0, 0, 0,
    0, 0, 0, 0, 16, 0, 0,
    0, 0, 0, 0, 0, 16, 0,
    0, 0, 0, 0, 0, 0, 16,
};

/* Replays morph_rows (P = 5, B = 3, both heads) under morphkv with settings. */
static void replay_morph_rows(const char *settings, kv_hand_replay *r)
{
    kv_hand_table16 tb = { 7, morph_rows };
    kv_hand_run_table("morphkv", settings, 5, 3, 2, &tb, r);
}

static void test_morphkv_fusion_sum(void **state)
{
    (void)state;
    kv_hand_replay r;
    replay_morph_rows("window=2", &r);
    /* t=4: A={0..4}, W={3,4}, O={0,1,2}; rows 3 and 4 (prefill, p itself).
     * Row 3 h0 on O: [3,0,5] / 8 = [3/8, 0, 5/8]; row 4: [2,2,0] / 4 = [1/2, 1/2, 0].
     * Sum fusion: 0: 7/8, 1: 1/2, 2: 5/8 -> keep 0 (B - window = 1).
     * t=5: A={0,3,4,5} (p5 sums to 16 over it, o5 = p5), W={4,5}, O={0,3}; rows 4, 5.
     * Row 4 on O: [2,6] / 8 = [1/4, 3/4]; row 5: [2,2] / 4 = [1/2, 1/2].
     * Sum: 0: 3/4, 3: 5/4 -> keep 3.
     * t=6: A={3,4,5,6}, W={5,6}, O={3,4}; rows 5, 6. Row 5 on O: [2,6] / 8 =
     * [1/4, 3/4]; row 6: [8,0] / 8 = [1, 0]. Sum: 3: 5/4, 4: 3/4 -> keep 3. */
    kv_hand_assert_kept(&r, 4, "0,3,4", "3,4,5", "3,5,6");
    /* min(window, rows) * group * n * 4 = 2 * 2 * 4 * 4. */
    assert_int_equal(r.meta[5], 64);
    assert_int_equal(r.meta[6], 64);
}

static void test_morphkv_fusion_max(void **state)
{
    (void)state;
    kv_hand_replay r;
    replay_morph_rows("window=2,fusion=max", &r);
    /* t=4: max fusion of [3/8, 0, 5/8] and [1/2, 1/2, 0]: 0: 1/2, 1: 1/2, 2: 5/8 ->
     * keep 2 (sum fusion kept 0).
     * t=5: A={2,3,4,5}: p5 sums to 14 there, o5 = p5 * 16/14. W={4,5}, O={2,3}.
     * Row 4 on O: [0,6] / 6 = [0, 1]; row 5: [0, 2/14] / (2/14) = [0, 1].
     * Max: 2: 0, 3: 1 -> keep 3.
     * t=6: O={3,4}; row 5 on O: [2/14, 6/14] -> [1/4, 3/4]; row 6: [1, 0].
     * Max: 3: 1, 4: 3/4 -> keep 3. */
    kv_hand_assert_kept(&r, 4, "2,3,4", "3,4,5", "3,5,6");
}

/* T = 5, P = 4; window = 1, so only the newest row ranks. */
static const int morph_gqa_rows[2 * 5 * 5] = {
    /* h0 */
    16, 0, 0, 0, 0,
    8, 8, 0, 0, 0,
    4, 4, 8, 0, 0,
    0, 5, 3, 8, 0,
    0, 2, 2, 4, 8,
    /* h1 */
    16, 0, 0, 0, 0,
    8, 8, 0, 0, 0,
    4, 4, 8, 0, 0,
    5, 0, 3, 8, 0,
    0, 2, 2, 4, 8,
};

static void test_morphkv_gqa(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 5, morph_gqa_rows };
    kv_hand_replay r;
    kv_hand_run_table("morphkv", "window=1", 4, 2, 2, &tb, &r);
    /* t=3: W={3}, O={0,1,2}, row 3 only. h0: [0,5,3]/8, h1: [5,0,3]/8.
     * gqa sum: [5/8, 5/8, 6/8] -> keep 2. */
    assert_string_equal(r.kept[3], "2,3");
    /* t=4: A={2,3,4}, recall 14/16; O={2,3}: [2,4]/6 = [1/3, 2/3] per head -> keep 3. */
    assert_string_equal(r.kept[4], "3,4");
    /* 1 row * 2 heads * |A_4| = 3 * 4 bytes. */
    assert_int_equal(r.meta[4], 24);
    kv_hand_run_table("morphkv", "window=1,gqa=max", 4, 2, 2, &tb, &r);
    /* gqa max: [5/8, 5/8, 3/8] -> 0 and 1 tie, the more recent 1 is kept. */
    assert_string_equal(r.kept[3], "1,3");
    /* t=4: A={1,3,4}; O={1,3}: [2,4]/6 = [1/3, 2/3] -> keep 3. */
    assert_string_equal(r.kept[4], "3,4");
}

static void test_morphkv_check(void **state)
{
    (void)state;
    const kv_policy_ops *ops = kv_policy_find("morphkv");
    kv_param_values v;
    kv_params_defaults(ops, &v);
    char err[KV_ERRMSG] = "";
    assert_int_equal(ops->check(&v, 32, err, sizeof err), 1);
    assert_string_equal(err, "budget 32 must exceed morphkv window 32 (use --set "
                        "morphkv.window=N with N < 32)");
    assert_int_equal(ops->check(&v, 33, err, sizeof err), 0);
    assert_int_equal(ops->check(&v, 0, err, sizeof err), 1);
    assert_string_equal(err, "budget 0 must be at least 1");
}

/* T = 5, P = 4, window 1: only row 3 ranks at the prompt end. */
static const int morph_logit_rows[2 * 5 * 5] = {
    /* h0 */
    16, 0, 0, 0, 0,
    8, 8, 0, 0, 0,
    4, 4, 8, 0, 0,
    8, 2, 2, 4, 0,
    4, 4, 4, 4, 0,
    /* h1 */
    16, 0, 0, 0, 0,
    8, 8, 0, 0, 0,
    4, 4, 8, 0, 0,
    1, 5, 6, 4, 0,
    4, 4, 4, 4, 0,
};

static void test_morphkv_logit(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 5, morph_logit_rows };
    kv_hand_replay r;
    /* W={3}, O={0,1,2}; row 3 over O sums to 12 in both heads: h0 o^ = [8,2,2]/12,
     * h1 [1,5,6]/12. sum: [9, 7, 8]/12 -> {0}. logit: log h0 + log h1, the products
     * [8, 10, 12]/144 -> {2}. max: [8, 5, 6]/12 -> {0}. */
    kv_hand_run_table("morphkv", "window=1", 4, 2, 2, &tb, &r);
    assert_string_equal(r.kept[3], "0,3");
    kv_hand_run_table("morphkv", "window=1,gqa=logit", 4, 2, 2, &tb, &r);
    assert_string_equal(r.kept[3], "2,3");
    kv_hand_run_table("morphkv", "window=1,gqa=max", 4, 2, 2, &tb, &r);
    assert_string_equal(r.kept[3], "0,3");
}

/* The floor for o^ = 0: h0 row 3 [8,0,4,4] -> o^ [2/3, 0, 1/3]; h1 [0,6,6,4] ->
 * [0, 1/2, 1/2]. logit: 0: log(2/3) + log(2^-149), 1: log(2^-149) + log(1/2),
 * 2: log(1/3) + log(1/2). B = 3 keeps 2 of O: 2, then 0 (log 2/3 > log 1/2). Taking
 * log 0 = -inf would tie 0 and 1 and keep the more recent 1. */
static const int morph_floor_rows[2 * 5 * 5] = {
    16, 0, 0, 0, 0,
    8, 8, 0, 0, 0,
    4, 4, 8, 0, 0,
    8, 0, 4, 4, 0,
    4, 4, 4, 4, 0,
    16, 0, 0, 0, 0,
    8, 8, 0, 0, 0,
    4, 4, 8, 0, 0,
    0, 6, 6, 4, 0,
    4, 4, 4, 4, 0,
};

static void test_morphkv_logit_floor(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 5, morph_floor_rows };
    kv_hand_replay r;
    kv_hand_run_table("morphkv", "window=1,gqa=logit", 4, 3, 2, &tb, &r);
    assert_string_equal(r.kept[3], "0,2,3");
}

static void test_morphkv_evict_every(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 12, NULL }; /* uniform rows: every score ties, recency decides */
    kv_hand_replay r;
    kv_hand_run_table("morphkv", "window=1,evict_every=3", 3, 2, 1, &tb, &r);
    /* t=2: O={0,1} tie -> {1} + W {2}. Decode steps 1, 2 keep all (S grows by one),
     * step 3 (t=5) cuts back to B = 2: W {5} + the most recent of O (4). */
    kv_hand_assert_kept(&r, 2, "1,2", "1,2,3", "1,2,3,4", "4,5", "4,5,6", "4,5,6,7", "7,8");
    assert_string_equal(r.kept[11], "10,11");
    /* |A_t| = 3, 4, 5, 3, 4, 5, ...; meta: one stored row * 1 head * |A_t| * 4. */
    assert_int_equal(r.meta[3], 12);
    assert_int_equal(r.meta[5], 20);
    const kv_policy_ops *ops = kv_policy_find("morphkv");
    kv_param_values v;
    kv_test_apply_settings(ops, "window=1,evict_every=3", &v);
    assert_int_equal(kv_policy_max_held(ops, &v, 2), 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_morphkv_fusion_sum),
        cmocka_unit_test(test_morphkv_fusion_max),
        cmocka_unit_test(test_morphkv_gqa),
        cmocka_unit_test(test_morphkv_check),
        cmocka_unit_test(test_morphkv_logit),
        cmocka_unit_test(test_morphkv_logit_floor),
        cmocka_unit_test(test_morphkv_evict_every),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
