/*
 * stats.c - bootstrap and Student-t intervals, paired differences, histograms (see
 * stats.h).
 */
#include "sim/stats.h"
#include "traces/status.h"

#include <gsl/gsl_cdf.h>
#include <gsl/gsl_histogram.h>
#include <gsl/gsl_rng.h>
#include <gsl/gsl_sort.h>
#include <gsl/gsl_statistics_double.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static void set_nan(kv_interval *out)
{
    out->mean = out->lo = out->hi = NAN;
}

/* The moving-block bootstrap of kv_block_bootstrap_mean_ci; block 1 draws single values,
 * the ordinary bootstrap of kv_bootstrap_mean_ci (one uniform start in 0..n-1 per value).
 * `what` names the interval in the out-of-memory message. */
static int block_bootstrap(const double *x, size_t n, size_t block, int n_resamples,
                           double level, unsigned long seed, kv_interval *out,
                           const char *what, char *err, size_t err_len)
{
    set_nan(out);
    if (n == 0)
        return 0;
    out->mean = gsl_stats_mean(x, 1, n);
    if (n == 1 || n_resamples < 1) {
        out->lo = out->hi = out->mean;
        return 0;
    }
    block = block < 1 ? 1 : block > n ? n : block;
    double *means = malloc((size_t)n_resamples * sizeof *means);
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    if (!means || !rng) {
        free(means);
        if (rng)
            gsl_rng_free(rng);
        snprintf(err, err_len, "out of memory computing %s", what);
        return KV_ERUNTIME;
    }
    gsl_rng_set(rng, seed);
    size_t starts = n - block + 1;
    for (int b = 0; b < n_resamples; b++) {
        double sum = 0.0;
        for (size_t got = 0; got < n;) {
            size_t at = starts > 1 ? gsl_rng_uniform_int(rng, starts) : 0;
            for (size_t i = 0; i < block && got < n; i++, got++)
                sum += x[at + i];
        }
        means[b] = sum / (double)n;
    }
    gsl_sort(means, 1, (size_t)n_resamples);
    out->lo = gsl_stats_quantile_from_sorted_data(means, 1, (size_t)n_resamples,
                                                  (1.0 - level) / 2.0);
    out->hi = gsl_stats_quantile_from_sorted_data(means, 1, (size_t)n_resamples,
                                                  (1.0 + level) / 2.0);
    free(means);
    gsl_rng_free(rng);
    return 0;
}

int kv_bootstrap_mean_ci(const double *x, size_t n, int n_resamples, double level,
                         unsigned long seed, kv_interval *out, char *err, size_t err_len)
{
    return block_bootstrap(x, n, 1, n_resamples, level, seed, out, "a bootstrap interval",
                           err, err_len);
}

int kv_paired_diff_ci(const double *a, const double *b, size_t n, int n_resamples,
                      double level, unsigned long seed, kv_interval *out, char *err,
                      size_t err_len)
{
    double *d = malloc((n ? n : 1) * sizeof *d);
    if (!d) {
        set_nan(out);
        snprintf(err, err_len, "out of memory computing a paired difference");
        return KV_ERUNTIME;
    }
    for (size_t i = 0; i < n; i++)
        d[i] = a[i] - b[i];
    int rc = kv_bootstrap_mean_ci(d, n, n_resamples, level, seed, out, err, err_len);
    free(d);
    return rc;
}

size_t kv_block_length(size_t n)
{
    size_t b = (size_t)ceil(cbrt((double)n) - 1e-9);
    return b < 1 ? 1 : b;
}

int kv_block_bootstrap_mean_ci(const double *x, size_t n, size_t block, int n_resamples,
                               double level, unsigned long seed, kv_interval *out,
                               char *err, size_t err_len)
{
    return block_bootstrap(x, n, block, n_resamples, level, seed, out,
                           "a block bootstrap interval", err, err_len);
}

void kv_t_interval(const double *x, size_t n, double level, kv_interval *out)
{
    set_nan(out);
    if (n == 0)
        return;
    out->mean = gsl_stats_mean(x, 1, n);
    if (n == 1) {
        out->lo = out->hi = out->mean;
        return;
    }
    double half = gsl_cdf_tdist_Pinv((1.0 + level) / 2.0, (double)(n - 1)) *
                  gsl_stats_sd_m(x, 1, n, out->mean) / sqrt((double)n);
    out->lo = out->mean - half;
    out->hi = out->mean + half;
}

int kv_histogram(const double *x, size_t n, double lo, double hi, int n_bins,
                 long long *counts, char *err, size_t err_len)
{
    if (n_bins < 1 || !(hi > lo)) {
        snprintf(err, err_len, "histogram needs at least one bin and hi > lo");
        return KV_ERUNTIME;
    }
    gsl_histogram *h = gsl_histogram_alloc((size_t)n_bins);
    if (!h) {
        snprintf(err, err_len, "out of memory allocating a histogram");
        return KV_ERUNTIME;
    }
    gsl_histogram_set_ranges_uniform(h, lo, hi);
    /* gsl_histogram drops values outside [lo, hi); clamp them into the end bins */
    double last = (h->range[n_bins - 1] + h->range[n_bins]) / 2.0;
    double first = (h->range[0] + h->range[1]) / 2.0;
    for (size_t i = 0; i < n; i++)
        if (!isnan(x[i]))
            gsl_histogram_increment(h, x[i] >= hi ? last : x[i] < lo ? first : x[i]);
    for (int i = 0; i < n_bins; i++)
        counts[i] = (long long)gsl_histogram_get(h, (size_t)i);
    gsl_histogram_free(h);
    return 0;
}
