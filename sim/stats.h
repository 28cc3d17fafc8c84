/*
 * stats.h - the statistics behind summary.tsv's confidence intervals, compare.tsv and
 * recall_hist.tsv (GSL: gsl_rng, gsl_stats, gsl_sort, gsl_cdf, gsl_histogram).
 *
 * Why units and not steps: a run's recall is a mean over (layer, query head, decode step).
 * Consecutive steps of one head are strongly autocorrelated (a cache changes by one token
 * per step), so resampling steps would treat near-copies as independent draws and give
 * intervals far too narrow. The (layer, query head) units are the independent-ish pieces:
 * the bootstrap resamples them, each carrying the mean over all its steps.
 */
#ifndef KV_STATS_H
#define KV_STATS_H

#include <stddef.h>

#define KV_BOOTSTRAP_RESAMPLES 1000
#define KV_CI_LEVEL 0.95

/* A mean with a two-sided confidence interval: lo <= mean <= hi for the bootstrap when
 * n >= 1 (up to resampling noise); all three are NaN when there is no data. */
typedef struct {
    double mean, lo, hi;
} kv_interval;

/*
 * Percentile-bootstrap confidence interval of the mean of x[0..n): n_resamples times,
 * draws n values of x with replacement (gsl_rng mt19937 seeded with seed, so the same
 * inputs give the same interval), takes their mean; lo and hi are the (1-level)/2 and
 * (1+level)/2 quantiles of those means (gsl_stats_quantile_from_sorted_data, linear
 * interpolation between closest ranks). level in (0, 1), e.g. KV_CI_LEVEL.
 * n == 1 gives lo = hi = x[0]. Returns 0, or 1 when out of memory (err set); *out holds
 * NaNs when n == 0.
 */
int kv_bootstrap_mean_ci(const double *x, size_t n, int n_resamples, double level,
                         unsigned long seed, kv_interval *out, char *err, size_t err_len);

/*
 * The mean paired difference a[i] - b[i] over n units, with the percentile-bootstrap
 * interval of kv_bootstrap_mean_ci over those per-unit differences (units resampled
 * together, so whatever a and b share cancels). Same failure modes.
 */
int kv_paired_diff_ci(const double *a, const double *b, size_t n, int n_resamples,
                      double level, unsigned long seed, kv_interval *out, char *err,
                      size_t err_len);

/*
 * Moving-block bootstrap interval of the mean of a series x[0..n) whose consecutive
 * values are autocorrelated (the closed loop's per-step KL: a cache that lost a token
 * disturbs the next steps too). Each resample joins ceil(n / block) blocks of `block`
 * consecutive values, each starting at a uniform position in 0..n-block (Kuensch 1989),
 * cut to n values; then as kv_bootstrap_mean_ci (percentile interval, gsl_rng mt19937
 * seeded with seed). block >= 1 (1 is the ordinary bootstrap of values); a block longer
 * than n is cut to n. kv_block_length gives the default. Same failure modes.
 */
int kv_block_bootstrap_mean_ci(const double *x, size_t n, size_t block, int n_resamples,
                               double level, unsigned long seed, kv_interval *out,
                               char *err, size_t err_len);

/* The block length of the moving-block bootstrap for a series of n values: ceil(n^(1/3)),
 * the rate that minimises the error of the variance estimate (Hall, Horowitz and Jing
 * 1995), at least 1. Cannot fail. */
size_t kv_block_length(size_t n);

/*
 * Student-t interval of the mean of x[0..n): mean +- t_{(1+level)/2, n-1} * s / sqrt(n),
 * s the sample standard deviation (gsl_stats_sd) and t from gsl_cdf_tdist_Pinv. For the
 * aggregate over traces (few values, each already an average). n == 1 gives lo = hi =
 * x[0] (no spread to estimate); n == 0 gives NaNs. Cannot fail.
 */
void kv_t_interval(const double *x, size_t n, double level, kv_interval *out);

/*
 * Counts x[0..n) into n_bins equal bins over [lo, hi] with gsl_histogram: counts[i] is
 * the number of values in [lo + i*w, lo + (i+1)*w), w = (hi - lo) / n_bins, except that
 * values below lo go to the first bin and values at or above hi to the last (recall may
 * be 1 or exceed it by float rounding); NaNs are skipped. counts: [n_bins], written.
 * Returns 0, or 1 when out of memory or when n_bins < 1 or hi <= lo (err set).
 */
int kv_histogram(const double *x, size_t n, double lo, double hi, int n_bins,
                 long long *counts, char *err, size_t err_len);

#endif
