/*
 * test_policy_select.c - kv_keep_top against a sort-based reference written here, and
 * kv_gqa_combine against values worked out by hand.
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keep_top_by_hand),
        cmocka_unit_test(test_keep_top_matches_reference),
        cmocka_unit_test(test_keep_top_large),
        cmocka_unit_test(test_gqa_combine_by_hand),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
