/*
 * test_cache.c - the cache step (sim/cache.h) on tiny rows worked out by hand: the set
 * A_t a query attends to, recall, the renormalised row o_t, the step's metrics, the
 * eviction and the lifetimes of evicted positions, and a choose-before-query policy.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>

#include "sim/cache.h"

/* |a - b| <= tol, with both values in the failure message. */
#define assert_double_equal(a, b, tol)                                                  \
    do {                                                                                \
        double a_ = (a), b_ = (b);                                                      \
        if (!(fabs(a_ - b_) <= (tol)))                                                  \
            fail_msg("%s = %.17g, expected %.17g", #a, a_, b_);                          \
    } while (0)

extern const kv_policy_ops kv_policy_window;
extern const kv_policy_ops kv_policy_tova;
extern const kv_policy_ops kv_policy_oracle;

#define T 5
#define P 2

static const int identity[T] = { 0, 1, 2, 3, 4 };

/* Two heads' full rows p_t over 0..t, head h's row at rows[t][h]; entries past t unused.
 * Row sums differ from 1 on purpose (rows as stored, README rule 6). */
static const float rows[T][2][T] = {
    { { 1.0f }, { 1.0f } },
    { { 0.5f, 0.5f }, { 0.25f, 0.75f } },
    { { 0.25f, 0.25f, 0.5f }, { 0.5f, 0.25f, 0.125f } },
    { { 0.375f, 0.125f, 0.25f, 0.25f }, { 0.0f, 0.5f, 0.25f, 0.25f } },
    { { 0.125f, 0.125f, 0.25f, 0.25f, 0.25f }, { 0.0f, 0.0f, 0.0f, 0.0f, 0.0f } },
};
/* Each row's keys by weight, best first (ties: the later key), for the top-k metrics. */
static const int tops[T][2][KV_CACHE_TOPK] = {
    { { 0 }, { 0 } },
    { { 1, 0 }, { 1, 0 } },
    { { 2, 1, 0 }, { 0, 1, 2 } },
    { { 0, 3, 2, 1 }, { 1, 3, 2, 0 } },
    { { 4, 3, 2, 1, 0 }, { 4, 3, 2, 1, 0 } },
};

static kv_group_rows at(int t)
{
    kv_group_rows g = { .p = rows[t][0], .head_stride = T, .top = tops[t][0],
                        .top_stride = KV_CACHE_TOPK };
    return g;
}

static void start(kv_cache *c, const kv_policy_ops *ops, int budget)
{
    kv_param_values v;
    kv_params_defaults(ops, &v);
    kv_policy_ctx ctx = { .budget = budget, .group_size = 2, .n_tokens = T,
                          .prefill_len = P, .seed = 1 };
    assert_int_equal(kv_cache_init(c, ops, &v, &ctx, 1, identity), 0);
}

static void assert_set(const kv_cache *c, int n, const int *want)
{
    assert_int_equal(c->n, n);
    for (int i = 0; i < n; i++)
        assert_int_equal(c->pos[i], want[i]);
}

/* window, B = 1: the prompt keeps {1}; t = 2 attends {1,2}, keeps {2}; t = 3 attends
 * {2,3}, keeps {3}; t = 4 attends {3,4}. */
static void test_window_sets_metrics_lifetimes(void **state)
{
    (void)state;
    kv_cache c;
    kv_step_metrics m;
    start(&c, &kv_policy_window, 1);
    kv_group_rows r0 = at(0);
    kv_cache_step(&c, 0, &r0, NULL);
    assert_set(&c, 1, (int[]){ 0 });
    kv_group_rows r1 = at(1);
    kv_cache_step(&c, 1, &r1, NULL);           /* t = P-1: prompt compressed to B = 1 */
    assert_set(&c, 1, (int[]){ 1 });
    assert_int_equal(c.lifetimes[0], 1);       /* 0 left at the prefill end */
    kv_group_rows r2 = at(2);
    kv_cache_query(&c, 2, &r2, &m);
    assert_set(&c, 2, (int[]){ 1, 2 });
    /* head 0: 0.25 + 0.5; head 1: 0.25 + 0.125 */
    assert_double_equal(c.head_recall[0], 0.75, 0);
    assert_double_equal(c.head_recall[1], 0.375, 0);
    assert_double_equal(m.recall, 1.125, 0);
    assert_int_equal(m.kv_tokens, 2);
    /* top-1: head 0's key 2 cached, head 1's key 0 not; top-8 over 3 keys: 2/3 each */
    assert_double_equal(m.topk1, 1.0, 0);
    assert_double_equal(m.topk8, 4.0 / 3.0, 1e-15);
    assert_double_equal(m.meta_bytes, 0.0, 0);
    kv_cache_update(&c, 2);
    assert_set(&c, 1, (int[]){ 2 });
    /* 1 entered at 1, attended at decode step 2 only: lifetime 1 */
    assert_int_equal(c.lifetimes[1], 1);
    kv_group_rows r3 = at(3);
    kv_cache_step(&c, 3, &r3, &m);
    assert_double_equal(m.recall, 0.5 + 0.5, 0);
    assert_set(&c, 1, (int[]){ 3 });
    assert_int_equal(c.lifetimes[2], 1);       /* 2: attended at steps 2 and 3 */
    assert_int_equal(c.lifetimes[1], 1);
    /* the same lifetimes by position: 0 -> 0, 1 -> 1, 2 -> 2; 3 is still held */
    const int evicted_by_pos[4] = { 1, 1, 1, 0 }, life_by_pos[4] = { 0, 1, 2, 0 };
    for (int j = 0; j < 4; j++) {
        assert_int_equal(c.evictions[j], evicted_by_pos[j]);
        assert_int_equal(c.lifetime_sum[j], life_by_pos[j]);
    }
    kv_group_rows r4 = at(4);
    kv_cache_query(&c, 4, &r4, &m);
    assert_double_equal(c.head_recall[1], 0.0, 0);
    assert_double_equal(m.recall, 0.5, 0);
    assert_int_equal(c.failed, 0);
    kv_cache_free(&c);
}

/* tova reads rows: at t = 2 (B = 2: nothing evicted before) it observes
 * o = p / recall over {0,1,2}: head 0 recall 1, head 1 recall 0.875. */
static void test_observed_row_is_renormalised(void **state)
{
    (void)state;
    kv_cache c;
    kv_step_metrics m;
    start(&c, &kv_policy_tova, 2);
    for (int t = 0; t < 2; t++) {
        kv_group_rows r = at(t);
        kv_cache_step(&c, t, &r, NULL);
    }
    kv_group_rows r2 = at(2);
    kv_cache_query(&c, 2, &r2, &m);
    assert_int_equal(c.reads, 1);
    assert_set(&c, 3, (int[]){ 0, 1, 2 });
    const double want[2][3] = { { 0.25, 0.25, 0.5 },
                                { 0.5 / 0.875, 0.25 / 0.875, 0.125 / 0.875 } };
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < 3; i++)
            assert_double_equal(c.w[h * 3 + i], want[h][i], 1e-15);
    kv_cache_update(&c, 2);
    kv_cache_free(&c);
}

/* oracle, B = 1: at t = 3 it chooses S from p_3 before the query: the past key of the
 * highest summed weight, key 1 (0.125 + 0.5) over key 0 (0.375 + 0). */
static void test_preselect(void **state)
{
    (void)state;
    kv_cache c;
    kv_step_metrics m;
    start(&c, &kv_policy_oracle, 1);
    for (int t = 0; t < 3; t++) {
        kv_group_rows r = at(t);
        kv_cache_step(&c, t, &r, t >= P ? &m : NULL);
    }
    kv_group_rows r3 = at(3);
    kv_cache_query(&c, 3, &r3, &m);
    assert_set(&c, 2, (int[]){ 1, 3 });
    assert_double_equal(m.recall, (0.125 + 0.25) + (0.5 + 0.25), 0);
    kv_cache_update(&c, 3);
    assert_int_equal(c.failed, 0);
    kv_cache_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_sets_metrics_lifetimes),
        cmocka_unit_test(test_observed_row_is_renormalised),
        cmocka_unit_test(test_preselect),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
