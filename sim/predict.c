/*
 * predict.c - predict.tsv (predict.h): rank correlations between the open-loop metrics
 * and the closed loop's kl_mean across policies.
 */
#include "sim/predict.h"
#include "sim/metrics.h"
#include "traces/status.h"

#include <gsl/gsl_statistics_double.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The open-loop metrics set against kl_mean: summary column and direction. */
static const struct {
    const char *name;      /* the `metric` column */
    const char *column;    /* summary.tsv column */
    int higher_is_better;
} metrics[] = {
    { "recall", "recall_mean", 1 },
    { "out_err", "out_err_mean", 0 },
    { "topk1", "topk1_recall", 1 },
    { "topk8", "topk8_recall", 1 },
};
enum { N_METRICS = sizeof metrics / sizeof metrics[0], MIN_POLICIES = 3 };

/* A value, or NA when NaN, after a tab. */
static void cell(FILE *f, double v)
{
    if (isnan(v))
        fputs("\tNA", f);
    else
        fprintf(f, "\t%.9g", v);
}

/* A realisable policy (predict.h): not a per-step ceiling nor a look-ahead reference. */
static int realisable(const kv_policy_conf *pc)
{
    return !pc->ops->per_step_ceiling && !pc->ops->prescan;
}

/* The index among x[0..n) of the best value (the first of equals), -1 when n is 0. */
static int best_of(const double *x, int n, int higher_is_better)
{
    int best = -1;
    for (int i = 0; i < n; i++)
        if (best < 0 || (higher_is_better ? x[i] > x[best] : x[i] < x[best]))
            best = i;
    return best;
}

/* Spearman's rho of n pairs, NaN below MIN_POLICIES points. work: 2n doubles. */
static double spearman(const double *a, const double *b, int n, double *work)
{
    return n < MIN_POLICIES ? NAN : gsl_stats_spearman(a, 1, b, 1, (size_t)n, work);
}

int kv_predict_write(FILE *f, const kv_experiment_results *er, const double *sums, char *err,
                     size_t err_len)
{
    const kv_replay_conf *conf = er->conf;
    int np = conf->n_policies, nb = conf->n_budgets, nt = er->n_traces, n_runs = np * nb;
    int kl_col = kv_summary_column("kl_mean");
    size_t cap = (size_t)nt * nb * np;
    double *m = malloc(cap * sizeof *m), *kl = malloc(cap * sizeof *kl);
    double *work = malloc(2 * cap * sizeof *work);
    int *who = malloc((size_t)np * sizeof *who);
    if (!m || !kl || !work || !who) {
        free(m), free(kl), free(work), free(who);
        snprintf(err, err_len, "out of memory writing predict.tsv");
        return KV_ERUNTIME;
    }
    fprintf(f, "trace\tbudget_spec\tmetric\tn_policies\tspearman\tmetric_best\tkl_best\t"
               "agrees\tspearman_mean\n");
    for (int i = 0; i < N_METRICS; i++) {
        int col = kv_summary_column(metrics[i].column);
        size_t pooled = 0;
        int n_cases = 0, n_agree = 0, n_rho = 0;
        double rho_sum = 0.0;
        for (int k = 0; k < nt; k++)
            for (int b = 0; b < nb; b++) {
                /* the case's points, gathered at the end of the pooled arrays */
                double *cm = m + pooled, *ck = kl + pooled;
                int n = 0;
                for (int p = 0; p < np; p++) {
                    const double *s = sums + ((size_t)k * n_runs + (size_t)p * nb + b) *
                                                 kv_n_output_columns;
                    if (!realisable(&conf->policies[p]) || isnan(s[col]) ||
                        isnan(s[kl_col]) || s[kl_col] == 0.0)
                        continue;
                    cm[n] = s[col];
                    ck[n] = s[kl_col];
                    who[n++] = p;
                }
                double rho = spearman(cm, ck, n, work);
                int mb = best_of(cm, n, metrics[i].higher_is_better), kb = best_of(ck, n, 0);
                char spec[32];
                snprintf(spec, sizeof spec, "%d", conf->budgets ? conf->budgets[b] : 0);
                fprintf(f, "%s\t%s\t%s\t%d", er->trace_names[k],
                        er->budget_specs ? er->budget_specs[b] : spec, metrics[i].name, n);
                cell(f, rho);
                fprintf(f, "\t%s\t%s", mb >= 0 ? conf->policies[who[mb]].label : "NA",
                        kb >= 0 ? conf->policies[who[kb]].label : "NA");
                cell(f, n >= 2 ? (double)(mb == kb) : NAN);
                fputs("\tNA\n", f);
                if (n >= 2) {
                    n_cases++;
                    n_agree += mb == kb;
                }
                if (!isnan(rho)) {
                    n_rho++;
                    rho_sum += rho;
                }
                pooled += (size_t)n;
            }
        fprintf(f, "all\tall\t%s\t%zu", metrics[i].name, pooled);
        cell(f, pooled >= MIN_POLICIES
                    ? gsl_stats_spearman(m, 1, kl, 1, pooled, work) : NAN);
        fputs("\t-\t-", f);
        cell(f, n_cases ? (double)n_agree / n_cases : NAN);
        cell(f, n_rho ? rho_sum / n_rho : NAN);
        fputc('\n', f);
    }
    free(m), free(kl), free(work), free(who);
    return 0;
}
