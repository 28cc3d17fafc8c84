/*
 * test_stats.c - bootstrap intervals on data of known distribution, the paired
 * comparison on hand-made cases, the Student-t interval against a table value, and the
 * histogram against hand counts.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>
#include <gsl/gsl_sort.h>
#include <gsl/gsl_statistics_double.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "sim/stats.h"

/* n draws of N(mean, sd^2) from a seeded generator independent of the bootstrap's. */
static void normals(double *x, int n, double mean, double sd, unsigned long seed)
{
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_taus2);
    assert_non_null(rng);
    gsl_rng_set(rng, seed);
    for (int i = 0; i < n; i++)
        x[i] = mean + gsl_ran_gaussian(rng, sd);
    gsl_rng_free(rng);
}

/* n = 400 draws of N(0.7, 0.1^2): the interval covers 0.7, and its width is the normal
 * theory width 2 * 1.96 * sd / sqrt(n) = 0.0196 within 15% (sample sd and 1000 resamples
 * each move it by a few per cent). */
static void test_bootstrap_normal_width(void **state)
{
    (void)state;
    enum { N = 400 };
    double x[N];
    normals(x, N, 0.7, 0.1, 11);
    kv_interval ci;
    char err[128];
    assert_int_equal(kv_bootstrap_mean_ci(x, N, 1000, 0.95, 1, &ci, err, sizeof err), 0);
    assert_true(ci.lo < 0.7 && 0.7 < ci.hi);
    assert_true(ci.lo < ci.mean && ci.mean < ci.hi);
    double expect = 2.0 * 1.96 * 0.1 / sqrt((double)N);
    assert_true(fabs((ci.hi - ci.lo) - expect) < 0.15 * expect);
}

/* Over 200 independent samples of n = 30, a 95% interval covers the true mean about 95%
 * of the time (the percentile bootstrap runs a little under at small n); 200 trials put
 * the observed rate within about +-0.03 of the truth. */
static void test_bootstrap_coverage(void **state)
{
    (void)state;
    enum { N = 30, TRIALS = 200 };
    double x[N];
    int covered = 0;
    char err[128];
    for (int k = 0; k < TRIALS; k++) {
        normals(x, N, 5.0, 2.0, 1000 + (unsigned long)k);
        kv_interval ci;
        assert_int_equal(kv_bootstrap_mean_ci(x, N, 1000, 0.95, (unsigned long)k + 1, &ci,
                                              err, sizeof err), 0);
        covered += ci.lo <= 5.0 && 5.0 <= ci.hi;
    }
    double rate = (double)covered / TRIALS;
    assert_true(rate >= 0.88 && rate <= 0.99);
}

/* Same seed, same interval; one value: a point; no value: NaNs. */
static void test_bootstrap_degenerate(void **state)
{
    (void)state;
    double x[] = { 0.2, 0.9, 0.4, 0.6, 0.1 };
    kv_interval a, b;
    char err[128];
    assert_int_equal(kv_bootstrap_mean_ci(x, 5, 1000, 0.95, 3, &a, err, sizeof err), 0);
    assert_int_equal(kv_bootstrap_mean_ci(x, 5, 1000, 0.95, 3, &b, err, sizeof err), 0);
    assert_true(a.lo == b.lo && a.hi == b.hi);
    assert_true(fabs(a.mean - 0.44) < 1e-12);
    /* every resample mean lies between the smallest and the largest value */
    assert_true(a.lo >= 0.1 && a.hi <= 0.9);
    assert_int_equal(kv_bootstrap_mean_ci(x, 1, 1000, 0.95, 3, &a, err, sizeof err), 0);
    assert_true(a.lo == 0.2 && a.hi == 0.2 && a.mean == 0.2);
    assert_int_equal(kv_bootstrap_mean_ci(x, 0, 1000, 0.95, 3, &a, err, sizeof err), 0);
    assert_true(isnan(a.mean) && isnan(a.lo) && isnan(a.hi));
}

/* The percentile bootstrap written out from its definition in stats.h: R resamples of n
 * values drawn uniformly (gsl_rng mt19937 seeded with seed), sorted means, the
 * (1 -+ level) / 2 quantiles. kv_bootstrap_mean_ci and the block bootstrap with block 1
 * (single values) must both give exactly these numbers. */
static void test_bootstrap_by_definition(void **state)
{
    (void)state;
    enum { N = 37, R = 500 };
    double x[N], means[R];
    normals(x, N, 0.5, 0.2, 11);
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    assert_non_null(rng);
    gsl_rng_set(rng, 5);
    for (int b = 0; b < R; b++) {
        double sum = 0.0;
        for (int i = 0; i < N; i++)
            sum += x[gsl_rng_uniform_int(rng, N)];
        means[b] = sum / N;
    }
    gsl_rng_free(rng);
    gsl_sort(means, 1, R);
    double lo = gsl_stats_quantile_from_sorted_data(means, 1, R, (1.0 - 0.90) / 2.0);
    double hi = gsl_stats_quantile_from_sorted_data(means, 1, R, (1.0 + 0.90) / 2.0);
    kv_interval iid, block;
    char err[128];
    assert_int_equal(kv_bootstrap_mean_ci(x, N, R, 0.90, 5, &iid, err, sizeof err), 0);
    assert_int_equal(kv_block_bootstrap_mean_ci(x, N, 1, R, 0.90, 5, &block, err,
                                                sizeof err), 0);
    assert_true(iid.lo == lo && iid.hi == hi);
    assert_true(block.lo == lo && block.hi == hi);
}

/*
 * Paired differences by hand:
 * - a = base + 0.05 with a base that varies wildly between units: every per-unit
 *   difference is 0.05, so every resample mean is 0.05 and the interval is [0.05, 0.05]
 *   (an unpaired comparison would be swamped by the spread of base);
 * - two units with differences 0 and 1: a resample mean is 0, 0.5 or 1 with probability
 *   1/4, 1/2, 1/4, so about 250 of 1000 sorted means are 0 and about 250 are 1: the
 *   2.5% and 97.5% quantiles are 0 and 1, the mean 0.5.
 */
static void test_paired_hand(void **state)
{
    (void)state;
    double base[] = { 0.1, 0.9, 0.35, 0.6, 0.2, 0.8 }, a[6];
    for (int i = 0; i < 6; i++)
        a[i] = base[i] + 0.05;
    kv_interval ci;
    char err[128];
    assert_int_equal(kv_paired_diff_ci(a, base, 6, 1000, 0.95, 5, &ci, err, sizeof err), 0);
    assert_true(fabs(ci.mean - 0.05) < 1e-12);
    assert_true(fabs(ci.lo - 0.05) < 1e-12 && fabs(ci.hi - 0.05) < 1e-12);

    double a2[] = { 0.7, 1.5 }, b2[] = { 0.7, 0.5 };
    assert_int_equal(kv_paired_diff_ci(a2, b2, 2, 1000, 0.95, 5, &ci, err, sizeof err), 0);
    assert_true(fabs(ci.mean - 0.5) < 1e-12);
    assert_true(fabs(ci.lo) < 1e-12 && fabs(ci.hi - 1.0) < 1e-12);
}

/* x = 1..5: mean 3, s = sqrt(2.5), t(0.975, 4) = 2.776445 (table), half-width
 * 2.776445 * sqrt(2.5) / sqrt(5) = 1.963237. */
static void test_t_interval(void **state)
{
    (void)state;
    double x[] = { 1, 2, 3, 4, 5 };
    kv_interval ci;
    kv_t_interval(x, 5, 0.95, &ci);
    assert_true(fabs(ci.mean - 3.0) < 1e-12);
    assert_true(fabs(ci.lo - (3.0 - 1.963237)) < 1e-5);
    assert_true(fabs(ci.hi - (3.0 + 1.963237)) < 1e-5);
    kv_t_interval(x, 1, 0.95, &ci);
    assert_true(ci.lo == 1.0 && ci.hi == 1.0);
}

/* 20 bins over [0, 1]: -0.1, 0 and 0.04 in bin 0; 0.05 in bin 1; 0.5 in bin 10; 0.99, 1
 * and 1.02 in bin 19; the NaN nowhere. */
static void test_histogram(void **state)
{
    (void)state;
    double x[] = { 0.0, 0.04, 0.05, 0.5, 0.99, 1.0, 1.02, -0.1, NAN };
    long long counts[20];
    char err[128];
    assert_int_equal(kv_histogram(x, 9, 0.0, 1.0, 20, counts, err, sizeof err), 0);
    long long expect[20] = { 0 };
    expect[0] = 3;
    expect[1] = 1;
    expect[10] = 1;
    expect[19] = 3;
    for (int i = 0; i < 20; i++)
        assert_int_equal(counts[i], expect[i]);
    assert_int_equal(kv_histogram(x, 9, 1.0, 1.0, 20, counts, err, sizeof err), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bootstrap_normal_width),
        cmocka_unit_test(test_bootstrap_coverage),
        cmocka_unit_test(test_bootstrap_degenerate),
        cmocka_unit_test(test_bootstrap_by_definition),
        cmocka_unit_test(test_paired_hand),
        cmocka_unit_test(test_t_interval),
        cmocka_unit_test(test_histogram),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
