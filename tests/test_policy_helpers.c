/*
 * test_policy_helpers.c - the helpers policy files share (policy.h): kv_keep_top against
 * a sort-based reference written here, kv_gqa_combine against values worked out by hand,
 * and the exact sums (kv_exact_*) against sums known exactly.
 *
 * The reference ranks the candidates with qsort on (score desc, position desc), the
 * README rule 4 order, and keeps the first k. Random inputs draw scores from a set of
 * four values so that ties are the common case, not the exception.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>
#include <stdlib.h>
#include <string.h>

#include "policies/policy.h"

/* Context for the qsort comparator (single-threaded test). */
static const double *ref_score;
static const int *ref_pos;

static int ref_cmp(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    if (ref_score[x] != ref_score[y])
        return ref_score[x] > ref_score[y] ? -1 : 1;
    return ref_pos[x] > ref_pos[y] ? -1 : (ref_pos[x] < ref_pos[y] ? 1 : 0);
}

/* Reference: sorts a copy of the candidates and marks the first k. */
static void ref_keep_top(const double *score, const int *pos, const int *cand, int n_cand,
                         int k, unsigned char *keep)
{
    if (k <= 0 || n_cand <= 0)
        return;
    int *sorted = malloc(n_cand * sizeof *sorted);
    assert_non_null(sorted);
    memcpy(sorted, cand, n_cand * sizeof *sorted);
    ref_score = score;
    ref_pos = pos;
    qsort(sorted, n_cand, sizeof *sorted, ref_cmp);
    for (int i = 0; i < k && i < n_cand; i++)
        keep[sorted[i]] = 1;
    free(sorted);
}

/* One random case: n view entries, a random candidate subset in random order. */
static void random_case(gsl_rng *rng, size_t n, int ascending)
{
    static const double levels[4] = { 0.0, 0.25, 1.0, 3.5 };
    double *score = malloc(n * sizeof *score);
    int *pos = malloc(n * sizeof *pos), *cand = malloc(n * sizeof *cand);
    int *scratch = malloc((size_t)(n + 1) * sizeof *scratch);
    unsigned char *keep = malloc(n), *expect = malloc(n);
    assert_true(score && pos && cand && scratch && keep && expect);

    /* Distinct positions: every third-ish position of 0..3n, ascending or shuffled. */
    int next = (int)gsl_rng_uniform_int(rng, 5);
    for (size_t i = 0; i < n; i++) {
        pos[i] = next;
        next += 1 + (int)gsl_rng_uniform_int(rng, 3);
        score[i] = gsl_rng_uniform(rng) < 0.8 ? levels[gsl_rng_uniform_int(rng, 4)]
                                              : gsl_rng_uniform(rng);
    }
    if (!ascending)
        gsl_ran_shuffle(rng, pos, n, sizeof *pos);
    int n_cand = 0;
    for (size_t i = 0; i < n; i++)
        if (gsl_rng_uniform(rng) < 0.7)
            cand[n_cand++] = (int)i;
    if (n_cand > 1) /* gsl_ran_shuffle needs n >= 1 */
        gsl_ran_shuffle(rng, cand, n_cand, sizeof *cand);
    int k = (int)gsl_rng_uniform_int(rng, (unsigned long)n_cand + 3) - 1; /* -1..n_cand+1 */

    /* Non-candidates hold 2: kv_keep_top must not touch them. */
    memset(keep, 2, n);
    for (int c = 0; c < n_cand; c++)
        keep[cand[c]] = 0;
    memcpy(expect, keep, n);
    scratch[n_cand] = -12345;
    kv_keep_top(score, pos, cand, n_cand, k, scratch, keep);
    ref_keep_top(score, pos, cand, n_cand, k, expect);
    assert_memory_equal(keep, expect, n);
    assert_int_equal(scratch[n_cand], -12345);

    free(score);
    free(pos);
    free(cand);
    free(scratch);
    free(keep);
    free(expect);
}

static void test_keep_top_matches_reference(void **state)
{
    (void)state;
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    assert_non_null(rng);
    gsl_rng_set(rng, 20240611);
    for (int trial = 0; trial < 20000; trial++) {
        int n = 1 + (int)gsl_rng_uniform_int(rng, trial < 15000 ? 12 : 300);
        random_case(rng, (size_t)n, trial % 2);
    }
    gsl_rng_free(rng);
}

/* Hand cases: the order is score first, then the more recent position. */
static void test_keep_top_by_hand(void **state)
{
    (void)state;
    const double score[6] = { 5, 1, 5, 2, 5, 0 };
    const int pos[6] = { 0, 3, 4, 7, 9, 12 };
    const int cand[5] = { 4, 0, 2, 1, 3 }; /* all but index 5 */
    int scratch[5];
    unsigned char keep[6];
    /* k = 2 among scores 5 (pos 0, 4, 9), 1, 2: the two most recent 5s, pos 9 and 4. */
    memset(keep, 0, sizeof keep);
    kv_keep_top(score, pos, cand, 5, 2, scratch, keep);
    const unsigned char two[6] = { 0, 0, 1, 0, 1, 0 };
    assert_memory_equal(keep, two, 6);
    /* k = 4: all three 5s, then 2 (index 3). */
    memset(keep, 0, sizeof keep);
    kv_keep_top(score, pos, cand, 5, 4, scratch, keep);
    const unsigned char four[6] = { 1, 0, 1, 1, 1, 0 };
    assert_memory_equal(keep, four, 6);
    /* k <= 0 keeps none; k >= n_cand keeps every candidate and nothing else. */
    memset(keep, 0, sizeof keep);
    kv_keep_top(score, pos, cand, 5, 0, scratch, keep);
    const unsigned char none[6] = { 0 };
    assert_memory_equal(keep, none, 6);
    kv_keep_top(score, pos, cand, 5, 9, scratch, keep);
    const unsigned char all[6] = { 1, 1, 1, 1, 1, 0 };
    assert_memory_equal(keep, all, 6);
}

/* Large inputs of the shapes that defeat a naive pivot: all scores equal (only the
 * positions order them) and scores sorted against the positions. Correctness here
 * also shows the selection does not degrade to quadratic time (it would take minutes). */
static void test_keep_top_large(void **state)
{
    (void)state;
    enum { N = 400000 };
    double *score = malloc(N * sizeof *score);
    int *pos = malloc(N * sizeof *pos), *cand = malloc(N * sizeof *cand);
    int *scratch = malloc(N * sizeof *scratch);
    unsigned char *keep = malloc(N);
    assert_true(score && pos && cand && scratch && keep);
    for (int i = 0; i < N; i++) {
        pos[i] = i;
        cand[i] = i;
        score[i] = 1.0;
    }
    /* All equal: the k most recent, indices N-k..N-1. */
    memset(keep, 0, N);
    kv_keep_top(score, pos, cand, N, N / 3, scratch, keep);
    for (int i = 0; i < N; i++)
        assert_int_equal(keep[i], i >= N - N / 3);
    /* Scores falling with position: the k oldest win, indices 0..k-1. */
    for (int i = 0; i < N; i++)
        score[i] = (double)(N - i);
    memset(keep, 0, N);
    kv_keep_top(score, pos, cand, N, 1000, scratch, keep);
    for (int i = 0; i < N; i++)
        assert_int_equal(keep[i], i < 1000);
    free(score);
    free(pos);
    free(cand);
    free(scratch);
    free(keep);
}

static void test_gqa_combine_by_hand(void **state)
{
    (void)state;
    /* Two heads of three scores, stride 4 (one padding entry per head). */
    const double per_head[8] = { 1.0, 4.0, 0.5, -99, 3.0, 0.0, 0.5, -99 };
    double out[3];
    kv_gqa_combine(KV_GQA_SUM, 2, 3, per_head, 4, out);
    assert_true(out[0] == 4.0 && out[1] == 4.0 && out[2] == 1.0);
    kv_gqa_combine(KV_GQA_MAX, 2, 3, per_head, 4, out);
    assert_true(out[0] == 3.0 && out[1] == 4.0 && out[2] == 0.5);
    /* One head: a copy. */
    kv_gqa_combine(KV_GQA_MAX, 1, 3, per_head, 4, out);
    assert_true(out[0] == 1.0 && out[1] == 4.0 && out[2] == 0.5);
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
        cmocka_unit_test(test_keep_top_by_hand),
        cmocka_unit_test(test_keep_top_matches_reference),
        cmocka_unit_test(test_keep_top_large),
        cmocka_unit_test(test_gqa_combine_by_hand),
        cmocka_unit_test(test_exact_sum),
        cmocka_unit_test(test_exact_add_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
