/*
 * test_policy_more.c - the issue-5 rules (tova, random, oracle, lookahead, snapkv
 * decode = recompress, morphkv gqa = logit and evict_every, h2o normalize = count)
 * against kept sets worked out by hand on tiny traces, and the exact sums they use.
 *
 * The driver of tests/kv_hand_replay.h plays the engine's part of the contract in
 * policy.h for one cache, optional slots included: prescan of every full row before
 * position 0; at each decode step preselect with the full row (its keep[] becomes S), then
 * the query attends to A_t = S u {t}; the observed row is p during prefill and
 * o_t = p_t / recall over A_t at decode (README rule 2); select at t = P-1 and every
 * decode step. Traces are tables in sixteenths, so every value, sum and tie below is
 * exact in double precision. Each expected set carries its derivation; "h0"/"h1" are the
 * two query heads of the group.
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

/* Replays one cache of trace tb (T tokens, prompt P) under budget B with seed. */
static void run_seeded(const char *name, const char *settings, int P, int B, int g,
                       const kv_hand_table16 *tb, unsigned long seed, kv_hand_replay *out)
{
    kv_hand_run(name, settings, tb->T, P, B, g, seed, kv_hand_table_attn, tb, out);
}

static void run(const char *name, const char *settings, int P, int B, int g,
                const kv_hand_table16 *tb, kv_hand_replay *out)
{
    run_seeded(name, settings, P, B, g, tb, 1, out);
}

/* ------------------------------------------------------------------ tova */

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
    run("tova", NULL, 4, 2, 2, &tb, &r);
    /* t=3: row 3 summed over the heads: [10, 6, 8, 8]: 0, then 2 and 3 tie at 8, the
     * more recent 3 stays. */
    assert_string_equal(r.kept[3], "0,3");
    /* t=4: A={0,3,4}; row 4 sums to 16 on A in both heads, so o = p: sums 0: 6, 3: 14,
     * 4: 12 -> {3,4} (0 goes: only the current row counts, not 0's past). */
    assert_string_equal(r.kept[4], "3,4");
    /* t=5: A={3,4,5}; o = p: 3: 8, 4: 8, 5: 16 -> 5, then 3/4 tie, the more recent 4. */
    assert_string_equal(r.kept[5], "4,5");
    assert_int_equal(r.meta[5], 0);

    run("tova", "gqa=max", 4, 2, 2, &tb, &r);
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

/* ---------------------------------------------------------------- random */

static void test_random(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 12, NULL }; /* rows do not matter */
    kv_hand_replay a, b, c;
    run_seeded("random", NULL, 9, 4, 1, &tb, 42, &a);
    run_seeded("random", NULL, 9, 4, 1, &tb, 42, &b);
    /* Reproducible: the same seed gives the same sets at every select. */
    for (int t = 8; t < 12; t++)
        assert_string_equal(a.kept[t], b.kept[t]);
    /* Another `seed` parameter (XORed into the same engine seed) draws other sets. */
    run_seeded("random", "seed=7", 9, 4, 1, &tb, 42, &c);
    int differ = 0;
    for (int t = 8; t < 12; t++)
        differ |= strcmp(a.kept[t], c.kept[t]) != 0;
    assert_true(differ);
    /* Every set holds B = 4 positions and ends with the current token. */
    for (int t = 8; t < 12; t++) {
        int n = 1;
        for (const char *p = a.kept[t]; *p; p++)
            n += *p == ',';
        assert_int_equal(n, 4);
        char tail[16];
        snprintf(tail, sizeof tail, ",%d", t);
        assert_non_null(strstr(a.kept[t], tail));
        assert_int_equal(strlen(strstr(a.kept[t], tail)), strlen(tail));
    }
}

/* Uniform: over 4000 seeds, the prompt compression (P = 9, B = 4: 8 keeps t = 8 and 3
 * of the other 8) keeps each of 0..7 with probability 3/8: 1500 times expected,
 * standard deviation sqrt(4000 * 3/8 * 5/8) = 30.6; every count within 5 of them. */
static void test_random_uniform(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 10, NULL };
    int count[8] = { 0 };
    for (unsigned long seed = 1; seed <= 4000; seed++) {
        kv_hand_replay r;
        run_seeded("random", NULL, 9, 4, 1, &tb, seed * 2654435761u, &r);
        for (char *save = NULL, *tok = strtok_r(r.kept[8], ",", &save); tok;
             tok = strtok_r(NULL, ",", &save)) {
            int j = atoi(tok);
            if (j < 8)
                count[j]++;
        }
    }
    for (int j = 0; j < 8; j++)
        if (fabs(count[j] - 1500.0) > 5 * 30.6)
            fail_msg("position %d kept %d times of 4000, expected about 1500", j, count[j]);
}

/* ---------------------------------------------------------------- oracle */

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
    run("oracle", NULL, 3, 1, 2, &tb, &r);
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
        run("oracle", NULL, 3, B, 2, &tb, &r);
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

/* ------------------------------------------------------------- lookahead */

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
    run("lookahead", NULL, 3, 1, 1, &tb, &r);
    assert_string_equal(r.kept[2], "0");
    /* preselect leaves S alone: the query attends to S u {t}. */
    assert_string_equal(r.attended[3], "0,3");
    /* t=3: rows 4..6: 0: 14, 3: 2 -> {0}; t=4: rows 5, 6: 0: 2, 4: 7 -> {4};
     * t=5: row 6: 4: 1, 5: 6 -> {5}; t=6: no future row, all 0: the more recent 6. */
    assert_string_equal(r.kept[3], "0");
    assert_string_equal(r.kept[4], "4");
    assert_string_equal(r.kept[5], "5");
    assert_string_equal(r.kept[6], "6");
    assert_true(r.recall[4] == 13.0 / 16); /* {0,4}: 12 + 1 */

    /* horizon = 1: the prompt end looks at row P = 3 only: 0: 2, 1: 12, 2: 1 -> {1};
     * t=3: row 4: 1: 0, 3: 1 -> {3}; t=4: row 5: 3: 1, 4: 6 -> {4}; then as above. */
    run("lookahead", "horizon=1", 3, 1, 1, &tb, &r);
    assert_string_equal(r.kept[2], "1");
    assert_string_equal(r.kept[3], "3");
    assert_string_equal(r.kept[4], "4");
    assert_string_equal(r.kept[5], "5");
    assert_string_equal(r.kept[6], "6");
    /* horizon = 2: rows P..P+1 = 3, 4: 0: 14, 1: 12, 2: 3 -> {0}; t=3: rows 4, 5:
     * 0: 13, 3: 2 -> {0}; t=4: rows 5, 6: 0: 2, 4: 7 -> {4}. */
    run("lookahead", "horizon=2", 3, 1, 1, &tb, &r);
    assert_string_equal(r.kept[2], "0");
    assert_string_equal(r.kept[3], "0");
    assert_string_equal(r.kept[4], "4");
    /* horizon >= T - P = 4 sees the same rows as all. */
    run("lookahead", "horizon=4", 3, 1, 1, &tb, &r);
    assert_string_equal(r.kept[2], "0");
    assert_string_equal(r.kept[4], "4");
}

/* -------------------------------------------------------- snapkv decode */

/* T = 7, P = 3, one head. */
static const int snap_rows[7 * 7] = {
    16, 0, 0, 0, 0, 0, 0,
    8, 8, 0, 0, 0, 0, 0,
    4, 10, 2, 0, 0, 0, 0,
    0, 2, 8, 6, 0, 0, 0,
    0, 0, 2, 10, 4, 0, 0,
    0, 0, 0, 4, 4, 8, 0,
    0, 0, 0, 0, 8, 0, 8,
};

static void test_snapkv_recompress(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 7, snap_rows };
    kv_hand_replay r;
    run("snapkv", "window=1,kernel=1,decode=recompress", 3, 2, 1, &tb, &r);
    /* t=2: L = 2, s = row 2 on {0,1} = [4, 10] -> {1} + window {2}. */
    assert_string_equal(r.kept[2], "1,2");
    /* t=3: A={1,2,3} (row 3 sums to 16 on it: o = p); W={3}, candidates {1,2} scored by
     * the last window = 1 row: [2, 8] -> {2}. */
    assert_string_equal(r.kept[3], "2,3");
    /* t=4: A={2,3,4}, o = p; candidates {2,3}: [2, 10] -> {3}. */
    assert_string_equal(r.kept[4], "3,4");
    /* t=5: A={3,4,5}; candidates {3,4}: [4, 4]: a tie, the more recent 4. */
    assert_string_equal(r.kept[5], "4,5");
    /* One stored row * 1 head * |A| = 3 positions * 4 bytes. */
    assert_int_equal(r.meta[5], 12);
    /* decode = none (default) keeps growing. */
    run("snapkv", "window=1,kernel=1", 3, 2, 1, &tb, &r);
    assert_string_equal(r.kept[4], "1,2,3,4");
    assert_int_equal(r.meta[4], 0);
}

/* T = 9, P = 4, one head; window 1, kernel 3 (max), B = 3, interval 2. */
static const int snap_gap_rows[9 * 9] = {
    16, 0, 0, 0, 0, 0, 0, 0, 0,
    8, 8, 0, 0, 0, 0, 0, 0, 0,
    4, 4, 8, 0, 0, 0, 0, 0, 0,
    1, 8, 2, 5, 0, 0, 0, 0, 0,
    0, 4, 4, 4, 4, 0, 0, 0, 0,
    0, 6, 0, 1, 2, 7, 0, 0, 0,
    0, 4, 4, 0, 0, 4, 4, 0, 0,
    0, 0, 7, 0, 0, 0, 2, 7, 0,
    0, 0, 4, 0, 0, 4, 0, 4, 4,
};

static void test_snapkv_recompress_interval_pooling(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 9, snap_gap_rows };
    kv_hand_replay r;
    run("snapkv", "window=1,kernel=3,decode=recompress,interval=2", 4, 3, 1, &tb, &r);
    /* t=3: L = 3, s = row 3 on {0,1,2} = [1, 8, 2], max-pooled [8, 8, 8]: a tie, the
     * two most recent {1,2}, plus {3}. */
    assert_string_equal(r.kept[3], "1,2,3");
    /* t=4: decode step 1, not a multiple of interval 2: S grows. */
    assert_string_equal(r.kept[4], "1,2,3,4");
    /* t=5 (step 2): A={1,..,5}, o = p; W={5}, candidates (cache order) 1,2,3,4 with
     * s = [6, 0, 1, 2], pooled over neighbouring candidates [6, 6, 2, 2] -> {1,2}. */
    assert_string_equal(r.kept[5], "1,2,5");
    /* t=6 (step 3): grows. */
    assert_string_equal(r.kept[6], "1,2,5,6");
    /* t=7 (step 4): candidates 1,2,5,6 with s = [0, 7, 0, 2]; pooled over cache order
     * [7, 7, 7, 2] (5's neighbours are 2 and 6, the cache's, not 4 and 6): 1, 2, 5 tie,
     * the two most recent {2,5}. Pooling over absolute positions would give 5 only
     * max(0, 0, 2) = 2 and keep {1,2}. */
    assert_string_equal(r.kept[7], "2,5,7");
    /* The bound: B + interval - 1 = 4 past tokens. */
    const kv_policy_ops *ops = kv_policy_find("snapkv");
    kv_param_values v;
    kv_test_apply_settings(ops, "decode=recompress,interval=2", &v);
    assert_int_equal(kv_policy_max_held(ops, &v, 3), 4);
    kv_test_apply_settings(ops, NULL, &v);
    assert_int_equal(kv_policy_max_held(ops, &v, 3), -1);
}

/* --------------------------------------------------------------- morphkv */

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
    run("morphkv", "window=1", 4, 2, 2, &tb, &r);
    assert_string_equal(r.kept[3], "0,3");
    run("morphkv", "window=1,gqa=logit", 4, 2, 2, &tb, &r);
    assert_string_equal(r.kept[3], "2,3");
    run("morphkv", "window=1,gqa=max", 4, 2, 2, &tb, &r);
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
    run("morphkv", "window=1,gqa=logit", 4, 3, 2, &tb, &r);
    assert_string_equal(r.kept[3], "0,2,3");
}

static void test_morphkv_evict_every(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 12, NULL }; /* uniform rows: every score ties, recency decides */
    kv_hand_replay r;
    run("morphkv", "window=1,evict_every=3", 3, 2, 1, &tb, &r);
    /* t=2: O={0,1} tie -> {1} + W {2}. Decode steps 1, 2 keep all (S grows by one),
     * step 3 (t=5) cuts back to B = 2: W {5} + the most recent of O (4). */
    assert_string_equal(r.kept[2], "1,2");
    assert_string_equal(r.kept[3], "1,2,3");
    assert_string_equal(r.kept[4], "1,2,3,4");
    assert_string_equal(r.kept[5], "4,5");
    assert_string_equal(r.kept[6], "4,5,6");
    assert_string_equal(r.kept[7], "4,5,6,7");
    assert_string_equal(r.kept[8], "7,8");
    assert_string_equal(r.kept[11], "10,11");
    /* |A_t| = 3, 4, 5, 3, 4, 5, ...; meta: one stored row * 1 head * |A_t| * 4. */
    assert_int_equal(r.meta[3], 12);
    assert_int_equal(r.meta[5], 20);
    const kv_policy_ops *ops = kv_policy_find("morphkv");
    kv_param_values v;
    kv_test_apply_settings(ops, "window=1,evict_every=3", &v);
    assert_int_equal(kv_policy_max_held(ops, &v, 2), 4);
}

/* ------------------------------------------------------------------- h2o */

/* T = 6, P = 4, one head. */
static const int h2o_rows[6 * 6] = {
    16, 0, 0, 0, 0, 0,
    8, 8, 0, 0, 0, 0,
    4, 2, 10, 0, 0, 0,
    2, 0, 6, 8, 0, 0,
    0, 0, 4, 4, 8, 0,
    0, 0, 0, 0, 0, 16,
};

static void test_h2o_normalize_count(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 6, h2o_rows };
    kv_hand_replay r;
    /* t=3, B = 2, r = 1 keeps {3}. acc (sixteenths) 0: 16+8+4+2 = 30 over 4 rows,
     * 1: 8+2+0 = 10 over 3, 2: 10+6 = 16 over 2. none: 0 (30) -> {0,3}; count: means
     * 7.5, 3.33, 8 -> 2 -> {2,3}. */
    run("h2o", "normalize=count", 4, 2, 1, &tb, &r);
    assert_string_equal(r.kept[3], "2,3");
    /* t=4: A={2,3,4}, row 4 sums to 16 on it (o = p): 2: (16+4)/3 = 6.67, 3: (8+4)/2 =
     * 6 -> {2} + recent {4}. */
    assert_string_equal(r.kept[4], "2,4");
    /* 4 bytes of score + 4 of count per cached token: 8 * 3. */
    assert_int_equal(r.meta[4], 24);
    run("h2o", NULL, 4, 2, 1, &tb, &r);
    assert_string_equal(r.kept[3], "0,3");
    /* t=4: A={0,3,4}: row 4 on A = [0, 4, 8] (sum 12): acc 0: 30, 3: 8 + 16 * 4/12 ->
     * {0} + {4}. */
    assert_string_equal(r.kept[4], "0,4");
    assert_int_equal(r.meta[4], 12);
}

/* ------------------------------------------------------------ exact sums */

static void test_exact_sum(void **state)
{
    (void)state;
    /* 0.1 is 3602879701896397 / 2^55; ten of them are 1 + 2^-54 exactly, which
     * truncates to 1.0 (a left-to-right double sum gives 0.9999999999999999). */
    kv_exact_sum s = { { 0, 0, 0 } };
    double naive = 0.0;
    for (int i = 0; i < 10; i++) {
        kv_exact_add(&s, 0.1);
        naive += 0.1;
    }
    assert_true(kv_exact_value(&s) == 1.0);
    assert_true(naive != 1.0);
    /* Adding 2^-53 twice more makes 1 + 2^-54 + 2^-52: truncates to 1 + 2^-52. */
    kv_exact_add(&s, 0x1p-53);
    kv_exact_add(&s, 0x1p-53);
    assert_true(kv_exact_value(&s) == 1.0 + 0x1p-52);
    /* Removing every term restores zero exactly, in any order. */
    kv_exact_sub(&s, 0x1p-53);
    for (int i = 0; i < 10; i++)
        kv_exact_sub(&s, 0.1);
    kv_exact_sub(&s, 0x1p-53);
    assert_true(s.limb[0] == 0 && s.limb[1] == 0 && s.limb[2] == 0);
    /* The grid: 2^-149 (the smallest float32) is held, 2^-150 is below it. */
    kv_exact_add(&s, 0x1p-149);
    assert_true(kv_exact_value(&s) == 0x1p-149);
    kv_exact_add(&s, 0x1p-150);
    assert_true(kv_exact_value(&s) == 0x1p-149);
    /* Large and small together: 2^40 + 2^-149 truncates to 2^40; minus 2^40 leaves
     * the small term exactly (no residue). */
    kv_exact_add(&s, 0x1p40);
    assert_true(kv_exact_value(&s) == 0x1p40);
    kv_exact_sub(&s, 0x1p40);
    assert_true(kv_exact_value(&s) == 0x1p-149);
    /* Subtracting more than the sum holds leaves 0, never a wrapped huge value. */
    kv_exact_sub(&s, 1.0);
    assert_true(kv_exact_value(&s) == 0.0);
    /* Order independence: the same terms in reverse order give the same bits. */
    kv_exact_sum a = { { 0, 0, 0 } }, b = { { 0, 0, 0 } };
    for (int i = 1; i <= 1000; i++) {
        kv_exact_add(&a, 1.0 / i);
        kv_exact_add(&b, 1.0 / (1001 - i));
    }
    assert_memory_equal(&a, &b, sizeof a);
    /* And the value is the harmonic number H_1000 = 7.485470860550345 to double
     * precision (truncated: within one ulp below the correctly rounded value). */
    double h = kv_exact_value(&a);
    assert_true(fabs(h - 7.4854708605503449) <= 2e-15);
}

/* kv_exact_add_many (bins per exponent, folded every 2048 terms) against hand values
 * and against the term-by-term kv_exact_add tested above. */
static void test_exact_add_many(void **state)
{
    (void)state;
    /* Ten 0.1 are 1 + 2^-54 exactly: truncates to 1.0, as term by term. */
    double tenth[10];
    for (int i = 0; i < 10; i++)
        tenth[i] = 0.1;
    kv_exact_sum s = { { 0, 0, 0 } };
    kv_exact_add_many(&s, tenth, 10);
    assert_true(kv_exact_value(&s) == 1.0);
    /* 5000 terms of 2^-20 (past two folds) and 3 of 2^-149: 5000 * 2^-20 exactly, the
     * tiny terms held on the grid (5000 * 2^-20 + 3 * 2^-149 truncates to the former;
     * removing the big terms leaves exactly 3 * 2^-149). */
    static double many[5003];
    for (int i = 0; i < 5000; i++)
        many[i] = 0x1p-20;
    many[5000] = many[5001] = many[5002] = 0x1p-149;
    kv_exact_sum m = { { 0, 0, 0 } };
    kv_exact_add_many(&m, many, 5003);
    assert_true(kv_exact_value(&m) == 5000 * 0x1p-20);
    for (int i = 0; i < 5000; i++)
        kv_exact_sub(&m, 0x1p-20);
    assert_true(kv_exact_value(&m) == 3 * 0x1p-149);
    /* Mixed magnitudes, zeros, values below the grid and at the top of the range: the
     * same 192-bit integer as one kv_exact_add per term, in any order. */
    static double mix[6000];
    for (int i = 0; i < 6000; i++)
        mix[i] = i % 7 == 0 ? 0.0 : i % 11 == 0 ? 0x1p-140 / (i + 1)
               : i % 13 == 0 ? 0x1p40 / 4096 : i == 2999 ? 0x1p40 - 0x1p-12
               : i % 997 == 0 ? 0x1p33 + i : 1.0 / ((double)i * i + 1.0);
    kv_exact_sum one = { { 0, 0, 0 } }, bulk = { { 0, 0, 0 } };
    for (int i = 5999; i >= 0; i--)
        kv_exact_add(&one, mix[i]);
    kv_exact_add_many(&bulk, mix, 6000);
    assert_memory_equal(&one, &bulk, sizeof one);
    kv_exact_add_many(&bulk, mix, 0); /* nothing */
    assert_memory_equal(&one, &bulk, sizeof one);
    /* Terms in [0, 1] take the vectorised route (three 50-bit parts): the same integer
     * again, with 1.0 itself, zeros, terms below the grid (truncated) and odd bits at
     * the bottom of the grid, over more than one 4096-term chunk. */
    static double unit[9000];
    for (int i = 0; i < 9000; i++)
        unit[i] = i % 5 == 0 ? 0.0 : i % 17 == 0 ? 0x1p-145 * 1.75 / (i % 3 + 1)
                : i == 4321 ? 1.0 : i % 23 == 0 ? 0x1p-151 : 1.0 / ((double)i + 0.5);
    kv_exact_sum u_one = { { 0, 0, 0 } }, u_bulk = { { 0, 0, 0 } };
    for (int i = 0; i < 9000; i++)
        kv_exact_add(&u_one, unit[i]);
    kv_exact_add_many(&u_bulk, unit, 9000);
    assert_memory_equal(&u_one, &u_bulk, sizeof u_one);
    assert_true(kv_exact_value(&u_bulk) > 1.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tova),
        cmocka_unit_test(test_tova_check_and_scope),
        cmocka_unit_test(test_random),
        cmocka_unit_test(test_random_uniform),
        cmocka_unit_test(test_oracle),
        cmocka_unit_test(test_oracle_is_the_best_subset),
        cmocka_unit_test(test_lookahead),
        cmocka_unit_test(test_snapkv_recompress),
        cmocka_unit_test(test_snapkv_recompress_interval_pooling),
        cmocka_unit_test(test_morphkv_logit),
        cmocka_unit_test(test_morphkv_logit_floor),
        cmocka_unit_test(test_morphkv_evict_every),
        cmocka_unit_test(test_h2o_normalize_count),
        cmocka_unit_test(test_exact_sum),
        cmocka_unit_test(test_exact_add_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
