/*
 * test_policy_rules.c - every policy against kept sets worked out by hand on tiny traces.
 *
 * The driver of tests/kv_hand_replay.h plays the engine's part of the contract in
 * policy.h for one cache (the policies here have no prescan or attend slot):
 * prefill rows are p itself, decode rows are o_t = p_t / recall over A_t = S u {t}
 * (README rule 2), select runs at t = P-1 and every decode step, and S becomes the kept
 * part of A_t. Traces are tables of attention in sixteenths (so every value, sum and
 * tie below is exact in double precision) or a formula. Each expected set carries its
 * derivation in a comment; "h0"/"h1" are the two query heads of the GQA group.
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

/* Replays one cache of a T-token trace with a P-token prompt under budget B (seed 1). */
static void run_policy(const char *name, const char *settings, int T, int P, int B, int g,
                       kv_hand_attn_fn attn, const void *data, kv_hand_replay *out)
{
    kv_hand_run(name, settings, T, P, B, g, 1, attn, data, out);
}

/* Self-attention only: p_t[j] = 1 if j == t. Any rows will do for position rules. */
static double self_attn(const void *data, int h, int t, int j)
{
    (void)data;
    (void)h;
    return j == t ? 1.0 : 0.0;
}

/* ------------------------------------------------------------------ full */

static void test_full_keeps_everything(void **state)
{
    (void)state;
    kv_hand_replay r;
    run_policy("full", NULL, 6, 4, 2, 1, self_attn, NULL, &r);
    /* Never evicts: A_t = {0..t} at every step, whatever B. */
    assert_string_equal(r.kept[3], "0,1,2,3");
    assert_string_equal(r.kept[4], "0,1,2,3,4");
    assert_string_equal(r.kept[5], "0,1,2,3,4,5");
    assert_int_equal(r.meta[5], 0); /* meta_bytes NULL */
    assert_null(kv_policy_find("full")->meta_bytes);
    assert_int_equal(kv_policy_find("full")->bounded, 0);
}

/* ---------------------------------------------------------------- window */

static void test_window_keeps_most_recent(void **state)
{
    (void)state;
    kv_hand_replay r;
    /* P = 5, B = 3: t=4 A={0..4} -> last 3 {2,3,4}; t=5 A={2,3,4,5} -> {3,4,5};
     * t=6 A={3,4,5,6} -> {4,5,6}. */
    run_policy("window", NULL, 7, 5, 3, 1, self_attn, NULL, &r);
    assert_string_equal(r.kept[4], "2,3,4");
    assert_string_equal(r.kept[5], "3,4,5");
    assert_string_equal(r.kept[6], "4,5,6");
    /* P = 3 <= B = 4: nothing at the prefill end; t=3 |A| = 4 <= B keeps all;
     * t=4 A={0..4} -> {1,2,3,4}; t=5 -> {2,3,4,5}. */
    run_policy("window", NULL, 6, 3, 4, 1, self_attn, NULL, &r);
    assert_string_equal(r.kept[2], "0,1,2");
    assert_string_equal(r.kept[3], "0,1,2,3");
    assert_string_equal(r.kept[4], "1,2,3,4");
    assert_string_equal(r.kept[5], "2,3,4,5");
}

/* ---------------------------------------------------------- streamingllm */

static void test_streamingllm_sinks_and_window(void **state)
{
    (void)state;
    kv_hand_replay r;
    /* sinks = 1, B = 3, P = 5: t=4 A={0..4}: sink {0} + B-1 = 2 most recent {3,4};
     * t=5 A={0,3,4,5} -> {0,4,5}; t=6 A={0,4,5,6} -> {0,5,6}. */
    run_policy("streamingllm", "sinks=1", 7, 5, 3, 1, self_attn, NULL, &r);
    assert_string_equal(r.kept[4], "0,3,4");
    assert_string_equal(r.kept[5], "0,4,5");
    assert_string_equal(r.kept[6], "0,5,6");
    /* Default sinks = 4, B = 5, P = 8: t=7 {0,1,2,3} + 1 most recent {7};
     * t=8 A={0,1,2,3,7,8} -> {0,1,2,3,8}; t=9 -> {0,1,2,3,9}. */
    run_policy("streamingllm", NULL, 10, 8, 5, 1, self_attn, NULL, &r);
    assert_string_equal(r.kept[7], "0,1,2,3,7");
    assert_string_equal(r.kept[8], "0,1,2,3,8");
    assert_string_equal(r.kept[9], "0,1,2,3,9");
    /* B = sinks = 2, P = 5: no recent part, the sinks alone: t=4 A={0..4} -> {0,1};
     * t=5 A={0,1,5} -> {0,1} (the new token evicted at once); t=6 likewise. */
    run_policy("streamingllm", "sinks=2", 7, 5, 2, 1, self_attn, NULL, &r);
    assert_string_equal(r.kept[4], "0,1");
    assert_string_equal(r.kept[5], "0,1");
    assert_string_equal(r.kept[6], "0,1");
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

/* ------------------------------------------------------------------- h2o */

/* Two heads, T = 6, P = 4, sixteenths. Every row sums to 16; decode rows (t = 4, 5) are
 * zero at 1 and 2, so over both runs' A_t they still sum to 16 and o_t = p_t. */
static const int h2o_rows[2 * 6 * 6] = {
    /* h0 */
    16, 0, 0, 0, 0, 0,
    6, 10, 0, 0, 0, 0,
    4, 6, 6, 0, 0, 0,
    4, 4, 6, 2, 0, 0,
    2, 0, 0, 12, 2, 0,
    2, 0, 0, 0, 12, 2,
    /* h1 */
    16, 0, 0, 0, 0, 0,
    14, 2, 0, 0, 0, 0,
    10, 0, 6, 0, 0, 0,
    8, 0, 6, 2, 0, 0,
    2, 0, 0, 12, 2, 0,
    2, 0, 0, 0, 12, 2,
};

static void test_h2o_gqa_sum(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 6, h2o_rows };
    kv_hand_replay r;
    run_policy("h2o", NULL, 6, 4, 3, 2, kv_hand_table_attn, &tb, &r);
    /* Prefill end t=3 (in sixteenths): acc_h0 = {0:16+6+4+4=30, 1:10+6+4=20, 2:6+6=12,
     * 3:2}, acc_h1 = {0:16+14+10+8=48, 1:2, 2:12, 3:2}. B = 3, r = floor(0.5*3) = 1
     * keeps {3}; gqa sum: 0:78, 1:22, 2:24 -> best 2 = {0,2}. */
    assert_string_equal(r.kept[3], "0,2,3");
    /* t=4: A={0,2,3,4}, o4 = p4 (sums to 16 over A). acc_h0 = {0:32, 2:12, 3:14, 4:2},
     * acc_h1 = {0:50, 2:12, 3:14, 4:2}. r keeps {4}; sum: 0:82, 2:24, 3:28 -> {0,3}. */
    assert_string_equal(r.kept[4], "0,3,4");
    /* t=5: A={0,3,4,5}. acc_h0 = {0:34, 3:14, 4:14}, acc_h1 = {0:52, 3:14, 4:14}.
     * r keeps {5}; sum: 0:86, 3:28, 4:28: a tie, the more recent 4 is kept. */
    assert_string_equal(r.kept[5], "0,4,5");
    /* One float32 score per cached token: 4 * |A_t| = 4 * 4. */
    assert_int_equal(r.meta[4], 16);
    assert_int_equal(r.meta[5], 16);
}

static void test_h2o_gqa_max(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 6, h2o_rows };
    kv_hand_replay r;
    run_policy("h2o", "gqa=max", 6, 4, 3, 2, kv_hand_table_attn, &tb, &r);
    /* Same accumulators as above; gqa max: 0:max(30,48)=48, 1:max(20,2)=20,
     * 2:max(12,12)=12 -> {0,1} (sum chose {0,2}). */
    assert_string_equal(r.kept[3], "0,1,3");
    /* t=4: A={0,1,3,4}; acc_h0 = {0:32, 1:20, 3:14}, acc_h1 = {0:50, 1:2, 3:14};
     * max: 0:50, 1:20, 3:14 -> {0,1} + {4}. */
    assert_string_equal(r.kept[4], "0,1,4");
    /* t=5: A={0,1,4,5}; acc_h0 = {0:34, 1:20, 4:14}, acc_h1 = {0:52, 1:2, 4:14};
     * max: 0:52, 1:20, 4:14 -> {0,1} + {5}. */
    assert_string_equal(r.kept[5], "0,1,5");
    /* Per-head scores: 4 * group_size * |A_t| = 4 * 2 * 4. */
    assert_int_equal(r.meta[4], 32);
}

/* p_t[j] = 1/(t+1): uniform rows, so acc[j] = sum_{t>=j} 1/(t+1) falls with j. */
static double uniform_attn(const void *data, int h, int t, int j)
{
    (void)data;
    (void)h;
    (void)j;
    return 1.0 / (t + 1);
}

static void test_h2o_recent_floor_in_double(void **state)
{
    (void)state;
    kv_hand_replay r;
    /* recent = 0.29, B = 100: 0.29 * 100 is 28.999999999999996 in double, so r = 28
     * (29 in exact decimal). P = 101: r keeps {73..100}; candidates {0..72} keep 72 by
     * acc, which decreases with j: 72 is evicted. (With r = 29, 71 would be.) */
    run_policy("h2o", "recent=0.29", 102, 101, 100, 1, uniform_attn, NULL, &r);
    char expect[KV_HAND_SET_LEN];
    size_t used = 0;
    for (int j = 0; j <= 100; j++)
        if (j != 72)
            used += (size_t)snprintf(expect + used, sizeof expect - used, "%s%d",
                                     used ? "," : "", j);
    assert_string_equal(r.kept[100], expect);
    /* t=101: uniform o adds the same 1/101 to every candidate; r keeps the 28 most
     * recent {74..101}; candidates {0..71, 73}: 73 has the lowest acc and goes. */
    used = 0;
    for (int j = 0; j <= 101; j++)
        if (j != 72 && j != 73)
            used += (size_t)snprintf(expect + used, sizeof expect - used, "%s%d",
                                     used ? "," : "", j);
    assert_string_equal(r.kept[101], expect);
}

/* ---------------------------------------------------------------- snapkv */

/* T = 10, P = 8, two heads. Rows 0..5 attend to themselves; rows 6, 7 (the observation
 * window for window = 2) carry the votes; decode rows 8, 9 attend to themselves. */
static const int snap_rows[2 * 10 * 10] = {
    /* h0 */
    16, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 16, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 16, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 16, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 16, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 16, 0, 0, 0, 0,
    0, 5, 0, 1, 2, 3, 5, 0, 0, 0,
    0, 4, 0, 0, 3, 3, 3, 3, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 16, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 16,
    /* h1: the window attends only to itself, so s_h1 = 0 */
    16, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 16, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 16, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 16, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 16, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 16, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 16, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 8, 8, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 16, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 16,
};

static void test_snapkv_max_pooling(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 10, snap_rows };
    kv_hand_replay r;
    run_policy("snapkv", "window=2,kernel=3", 10, 8, 3, 2, kv_hand_table_attn, &tb, &r);
    /* L = P - window = 6. s_h0[j<6] = p6 + p7 = [0, 9, 0, 1, 5, 6]; s_h1 = 0.
     * Max over |u| <= 1 in [0,6): [max(0,9), max(0,9,0), max(9,0,1), max(0,1,5),
     * max(1,5,6), max(5,6)] = [9, 9, 9, 5, 6, 6]; gqa sum adds h1's zeros.
     * B - window = 1: 0, 1, 2 tie at 9, the most recent (2) is kept; plus {6,7}. */
    assert_string_equal(r.kept[7], "2,6,7");
    /* Decode: no eviction, S grows by one per step. */
    assert_string_equal(r.kept[8], "2,6,7,8");
    assert_string_equal(r.kept[9], "2,6,7,8,9");
    assert_int_equal(r.meta[9], 0);
}

static void test_snapkv_avg_pooling(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 10, snap_rows };
    kv_hand_replay r;
    run_policy("snapkv", "window=2,kernel=3,pooling=avg", 10, 8, 3, 2, kv_hand_table_attn, &tb, &r);
    /* Avg: clipped window sums / kernel 3: [(0+9)/3, (0+9+0)/3, (9+0+1)/3, (0+1+5)/3,
     * (1+5+6)/3, (5+6)/3] = [3, 3, 10/3, 2, 4, 11/3] -> 4 is the best (max chose 2). */
    assert_string_equal(r.kept[7], "4,6,7");
    assert_string_equal(r.kept[8], "4,6,7,8");
    assert_string_equal(r.kept[9], "4,6,7,8,9");
}

/* T = 8, P = 7: row 6 alone is the observation window (window = 1). Other rows attend
 * to themselves. */
static int snap_gqa_rows[2 * 8 * 8];

static void fill_snap_gqa_rows(void)
{
    memset(snap_gqa_rows, 0, sizeof snap_gqa_rows);
    for (int h = 0; h < 2; h++)
        for (int t = 0; t < 8; t++)
            snap_gqa_rows[(h * 8 + t) * 8 + t] = 16;
    static const int h0_row6[8] = { 0, 0, 0, 0, 10, 0, 6, 0 };
    static const int h1_row6[8] = { 0, 0, 7, 0, 0, 0, 9, 0 };
    memcpy(&snap_gqa_rows[(0 * 8 + 6) * 8], h0_row6, sizeof h0_row6);
    memcpy(&snap_gqa_rows[(1 * 8 + 6) * 8], h1_row6, sizeof h1_row6);
}

static void test_snapkv_gqa_pools_each_head_first(void **state)
{
    (void)state;
    fill_snap_gqa_rows();
    kv_hand_table16 tb = { 8, snap_gqa_rows };
    kv_hand_replay r;
    /* L = 6, B - window = 1. s_h0 = [0,0,0,0,10,0] -> max-pooled [0,0,0,10,10,10];
     * s_h1 = [0,0,7,0,0,0] -> [0,7,7,7,0,0].
     * gqa sum: [0,7,7,17,10,10] -> 3. (Pooling the summed s [0,0,7,0,10,0] instead
     * would give [0,7,7,10,10,10] -> 5: the heads are pooled first, rule 3.) */
    run_policy("snapkv", "window=1,kernel=3", 8, 7, 2, 2, kv_hand_table_attn, &tb, &r);
    assert_string_equal(r.kept[6], "3,6");
    assert_string_equal(r.kept[7], "3,6,7");
    /* gqa max: [0,7,7,10,10,10] -> 3, 4, 5 tie, the most recent 5 is kept. */
    run_policy("snapkv", "window=1,kernel=3,gqa=max", 8, 7, 2, 2, kv_hand_table_attn, &tb, &r);
    assert_string_equal(r.kept[6], "5,6");
    assert_string_equal(r.kept[7], "5,6,7");
}

static void test_snapkv_short_prompt_and_check(void **state)
{
    (void)state;
    kv_hand_replay r;
    /* P = 4 <= B = 4: the prompt is kept whole, and nothing is evicted later. */
    run_policy("snapkv", "window=2,kernel=3", 6, 4, 4, 1, self_attn, NULL, &r);
    assert_string_equal(r.kept[3], "0,1,2,3");
    assert_string_equal(r.kept[5], "0,1,2,3,4,5");

    const kv_policy_ops *ops = kv_policy_find("snapkv");
    kv_param_values v;
    kv_params_defaults(ops, &v);
    char err[KV_ERRMSG] = "";
    assert_int_equal(ops->check(&v, 31, err, sizeof err), 1);
    assert_string_equal(err, "budget 31 must be at least snapkv window 32 (use --set "
                        "snapkv.window=N with N <= 31)");
    assert_int_equal(ops->check(&v, 32, err, sizeof err), 0);
    assert_int_equal(kv_params_set(ops, &v, "kernel", "6", err, sizeof err), 0);
    assert_int_equal(ops->check(&v, 64, err, sizeof err), 1);
    assert_string_equal(err, "snapkv kernel 6 must be odd");
}

/* --------------------------------------------------------------- morphkv */

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

static void test_morphkv_fusion_sum(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 7, morph_rows };
    kv_hand_replay r;
    run_policy("morphkv", "window=2", 7, 5, 3, 2, kv_hand_table_attn, &tb, &r);
    /* t=4: A={0..4}, W={3,4}, O={0,1,2}; rows 3 and 4 (prefill, p itself).
     * Row 3 h0 on O: [3,0,5] / 8 = [3/8, 0, 5/8]; row 4: [2,2,0] / 4 = [1/2, 1/2, 0].
     * Sum fusion: 0: 7/8, 1: 1/2, 2: 5/8 -> keep 0 (B - window = 1). */
    assert_string_equal(r.kept[4], "0,3,4");
    /* t=5: A={0,3,4,5} (p5 sums to 16 over it, o5 = p5), W={4,5}, O={0,3}; rows 4, 5.
     * Row 4 on O: [2,6] / 8 = [1/4, 3/4]; row 5: [2,2] / 4 = [1/2, 1/2].
     * Sum: 0: 3/4, 3: 5/4 -> keep 3. */
    assert_string_equal(r.kept[5], "3,4,5");
    /* t=6: A={3,4,5,6}, W={5,6}, O={3,4}; rows 5, 6. Row 5 on O: [2,6] / 8 =
     * [1/4, 3/4]; row 6: [8,0] / 8 = [1, 0]. Sum: 3: 5/4, 4: 3/4 -> keep 3. */
    assert_string_equal(r.kept[6], "3,5,6");
    /* min(window, rows) * group * n * 4 = 2 * 2 * 4 * 4. */
    assert_int_equal(r.meta[5], 64);
    assert_int_equal(r.meta[6], 64);
}

static void test_morphkv_fusion_max(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 7, morph_rows };
    kv_hand_replay r;
    run_policy("morphkv", "window=2,fusion=max", 7, 5, 3, 2, kv_hand_table_attn, &tb, &r);
    /* t=4: max fusion of [3/8, 0, 5/8] and [1/2, 1/2, 0]: 0: 1/2, 1: 1/2, 2: 5/8 ->
     * keep 2 (sum fusion kept 0). */
    assert_string_equal(r.kept[4], "2,3,4");
    /* t=5: A={2,3,4,5}: p5 sums to 14 there, o5 = p5 * 16/14. W={4,5}, O={2,3}.
     * Row 4 on O: [0,6] / 6 = [0, 1]; row 5: [0, 2/14] / (2/14) = [0, 1].
     * Max: 2: 0, 3: 1 -> keep 3. */
    assert_string_equal(r.kept[5], "3,4,5");
    /* t=6: O={3,4}; row 5 on O: [2/14, 6/14] -> [1/4, 3/4]; row 6: [1, 0].
     * Max: 3: 1, 4: 3/4 -> keep 3. */
    assert_string_equal(r.kept[6], "3,5,6");
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
    run_policy("morphkv", "window=1", 5, 4, 2, 2, kv_hand_table_attn, &tb, &r);
    /* t=3: W={3}, O={0,1,2}, row 3 only. h0: [0,5,3]/8, h1: [5,0,3]/8.
     * gqa sum: [5/8, 5/8, 6/8] -> keep 2. */
    assert_string_equal(r.kept[3], "2,3");
    /* t=4: A={2,3,4}, recall 14/16; O={2,3}: [2,4]/6 = [1/3, 2/3] per head -> keep 3. */
    assert_string_equal(r.kept[4], "3,4");
    /* 1 row * 2 heads * |A_4| = 3 * 4 bytes. */
    assert_int_equal(r.meta[4], 24);
    run_policy("morphkv", "window=1,gqa=max", 5, 4, 2, 2, kv_hand_table_attn, &tb, &r);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_keeps_everything),
        cmocka_unit_test(test_window_keeps_most_recent),
        cmocka_unit_test(test_streamingllm_sinks_and_window),
        cmocka_unit_test(test_streamingllm_check),
        cmocka_unit_test(test_h2o_gqa_sum),
        cmocka_unit_test(test_h2o_gqa_max),
        cmocka_unit_test(test_h2o_recent_floor_in_double),
        cmocka_unit_test(test_snapkv_max_pooling),
        cmocka_unit_test(test_snapkv_avg_pooling),
        cmocka_unit_test(test_snapkv_gqa_pools_each_head_first),
        cmocka_unit_test(test_snapkv_short_prompt_and_check),
        cmocka_unit_test(test_morphkv_fusion_sum),
        cmocka_unit_test(test_morphkv_fusion_max),
        cmocka_unit_test(test_morphkv_gqa),
        cmocka_unit_test(test_morphkv_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
