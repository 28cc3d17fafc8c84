/*
 * output.c - TSV result files and the console table (see output.h).
 */
#include "sim/output.h"
#include "sim/stats.h"
#include "sim/signals.h"

#include <dirent.h>
#include <errno.h>
#include <gsl/gsl_sort.h>
#include <gsl/gsl_statistics_double.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The mean of x over the steps whose value is not NaN (the closed loop's last step). */
static double mean_defined(const double *x, int n, int *count)
{
    double sum = 0.0;
    int m = 0;
    for (int i = 0; i < n; i++)
        if (!isnan(x[i]))
            sum += x[i], m++;
    if (count)
        *count = m;
    return m ? sum / m : NAN;
}

/* The output-error and closed-loop columns of a summary: NaN when the run has none. */
static int summarise_model_metrics(const kv_results *res, const kv_run_result *run,
                                   kv_run_summary *s, char *err, size_t err_len)
{
    int D = res->n_steps, units = res->info.n_layers * res->info.n_heads;
    s->out_err_mean = s->kl_mean = s->ppl = s->ppl_full = s->top1_agree = NAN;
    s->recall_closed = NAN;
    s->out_err_ci.lo = s->out_err_ci.hi = s->kl_ci.lo = s->kl_ci.hi = NAN;
    if (run->step_out_err) {
        s->out_err_mean = gsl_stats_mean(run->step_out_err, 1, (size_t)D);
        if (kv_bootstrap_mean_ci(run->head_out_err_mean, (size_t)units,
                                 KV_BOOTSTRAP_RESAMPLES, KV_CI_LEVEL, KV_OUTPUT_SEED,
                                 &s->out_err_ci, err, err_len))
            return 1;
        s->out_err_ci.mean = s->out_err_mean;
    }
    if (!run->step_kl)
        return 0;
    int n = 0;   /* steps t <= T-2: the last entry is NaN */
    s->kl_mean = mean_defined(run->step_kl, D, &n);
    s->kl_block = (int)kv_block_length((size_t)n);
    if (kv_block_bootstrap_mean_ci(run->step_kl, (size_t)n, (size_t)s->kl_block,
                                   KV_BOOTSTRAP_RESAMPLES, KV_CI_LEVEL, KV_OUTPUT_SEED,
                                   &s->kl_ci, err, err_len))
        return 1;
    s->ppl = exp(mean_defined(run->step_nll, D, NULL));
    s->ppl_full = exp(mean_defined(res->step_nll_full, D, NULL));
    s->top1_agree = mean_defined(run->step_top1, D, NULL);
    s->recall_closed = gsl_stats_mean(run->step_recall_closed, 1, (size_t)D);
    return 0;
}

int kv_run_summarise(const kv_results *res, int r, kv_run_summary *s, char *err, size_t err_len)
{
    const kv_run_result *run = &res->runs[r];
    int D = res->n_steps;
    double *sorted = malloc((size_t)D * sizeof *sorted);
    if (!sorted) {
        snprintf(err, err_len, "out of memory summarising the results");
        return 1;
    }
    memcpy(sorted, run->step_recall, (size_t)D * sizeof *sorted);
    gsl_sort(sorted, 1, (size_t)D);
    memset(s, 0, sizeof *s);
    s->recall_mean = gsl_stats_mean(run->step_recall, 1, (size_t)D);
    s->recall_p05 = gsl_stats_quantile_from_sorted_data(sorted, 1, (size_t)D, 0.05);
    s->recall_min = sorted[0];
    free(sorted);
    s->topk1_recall = gsl_stats_mean(run->step_topk1, 1, (size_t)D);
    s->topk8_recall = gsl_stats_mean(run->step_topk8, 1, (size_t)D);
    double bytes_sum = 0.0;
    for (int i = 0; i < D; i++) {
        if (run->step_kv_tokens[i] > s->kv_tokens_peak)
            s->kv_tokens_peak = run->step_kv_tokens[i];
        if (run->step_meta_bytes[i] > s->meta_bytes_peak)
            s->meta_bytes_peak = run->step_meta_bytes[i];
        bytes_sum += kv_tokens_to_bytes(&res->info, run->step_kv_tokens[i]);
    }
    s->kv_bytes_peak = kv_tokens_to_bytes(&res->info, s->kv_tokens_peak);
    s->kv_bytes_mean = bytes_sum / D;
    /* every unit has D steps, so the mean over units is recall_mean; units, not steps,
     * are resampled (stats.h) */
    s->ci_units = res->info.n_layers * res->info.n_heads;
    if (kv_bootstrap_mean_ci(run->head_recall_mean, (size_t)s->ci_units,
                             KV_BOOTSTRAP_RESAMPLES, KV_CI_LEVEL, KV_OUTPUT_SEED,
                             &s->recall_ci, err, err_len))
        return 1;
    s->recall_ci.mean = s->recall_mean;
    return summarise_model_metrics(res, run, s, err, err_len);
}

static int mkdir_parents(const char *dir)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(path, 0777) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

int kv_output_prepare(const char *dir, int force, char *err, size_t err_len)
{
    struct stat st;
    if (stat(dir, &st) == 0 && !S_ISDIR(st.st_mode)) {
        snprintf(err, err_len, "%s: exists and is not a directory", dir);
        return 1;
    }
    if (mkdir_parents(dir) != 0) {
        snprintf(err, err_len, "%s: cannot create the output directory: %s", dir, strerror(errno));
        return 1;
    }
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, err_len, "%s: cannot read the output directory: %s", dir, strerror(errno));
        return 1;
    }
    int n_files = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n_files++;
    closedir(d);
    if (n_files && !force) {
        snprintf(err, err_len, "%s: output directory is not empty (%d entries); use --force "
                 "to overwrite its result files", dir, n_files);
        return 2;
    }
    return 0;
}

/* An output file being written: a temporary renamed into place by out_close. */
typedef struct {
    FILE *f;
    char tmp[4096], final[4096];
} out_file;

static int out_open(out_file *o, const char *dir, const char *name, char *err, size_t err_len)
{
    snprintf(o->final, sizeof o->final, "%s/%s", dir, name);
    snprintf(o->tmp, sizeof o->tmp, "%s/.%s.tmp.%ld", dir, name, (long)getpid());
    /* registered before it exists, so an interrupt removes it (sim/signals.h) */
    if (kv_tmp_register(o->tmp) != 0) {
        snprintf(err, err_len, "%s: too many temporary files", o->tmp);
        return 1;
    }
    o->f = fopen(o->tmp, "w");
    if (!o->f) {
        snprintf(err, err_len, "%s: cannot write: %s", o->tmp, strerror(errno));
        kv_tmp_unregister(o->tmp);
        return 1;
    }
    return 0;
}

/* Removes a temporary that will not be published. */
static void out_discard(out_file *o)
{
    unlink(o->tmp);
    kv_tmp_unregister(o->tmp);
}

/* Closes the temporary and checks every write reached the disk (a full disk or a file
 * size limit shows here at the latest); discards it on failure. */
static int out_finish(out_file *o, char *err, size_t err_len)
{
    int e = ferror(o->f) ? (errno ? errno : EIO) : 0;
    if (fflush(o->f) != 0 || fsync(fileno(o->f)) != 0)
        e = errno ? errno : EIO;
    if (fclose(o->f) != 0)
        e = errno ? errno : EIO;
    o->f = NULL;
    if (!e)
        return 0;
    snprintf(err, err_len, "%s: writing failed: %s", o->final, strerror(e));
    out_discard(o);
    return 1;
}

/* Removes the first n (finished) temporaries of a failed write; returns 1. */
static int discard_all(out_file *o, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out_discard(&o[i]);
    return 1;
}

/* What every writer reads: the experiment and the summary of every run of every trace
 * (sums[k * n_runs + r]). */
typedef struct {
    const kv_experiment_results *er;
    const kv_run_summary *sums;
    int n_runs;          /* per trace: n_policies * n_budgets */
    int n_budgets;
} out_ctx;

/* The budget_spec column of budget b. */
static const char *spec_text(const out_ctx *c, int b, char *buf, size_t len)
{
    if (c->er->budget_specs)
        return c->er->budget_specs[b];
    snprintf(buf, len, "%d", c->er->conf->budgets[b]);
    return buf;
}

/* The leading columns trace, policy, budget, budget_spec of run r of trace k. */
static void run_key(FILE *f, const out_ctx *c, int k, int r)
{
    const kv_run_result *run = &c->er->res[k]->runs[r];
    char buf[32];
    fprintf(f, "%s\t%s\t%d\t%s", c->er->trace_names[k], c->er->conf->policies[run->policy].label,
            run->budget, spec_text(c, r % c->n_budgets, buf, sizeof buf));
}

/* The run of an `oracle` policy at the same trace, resolved budget and granularity as
 * run r, or -1: the per-step ceiling that run r is set against (oracle_recall_mean). */
static int oracle_of(const out_ctx *c, int k, int r)
{
    const kv_results *res = c->er->res[k];
    const kv_policy_conf *pol = c->er->conf->policies;
    for (int o = 0; o < c->n_runs; o++)
        if (strcmp(pol[res->runs[o].policy].ops->name, "oracle") == 0 &&
            res->runs[o].budget == res->runs[r].budget &&
            pol[res->runs[o].policy].granularity == pol[res->runs[r].policy].granularity)
            return o;
    return -1;
}

/* oracle_recall_mean of run r in trace k: a number, or NA without an oracle. */
static void oracle_cell(FILE *f, const out_ctx *c, int k, int r)
{
    int o = oracle_of(c, k, r);
    if (o < 0)
        fprintf(f, "\tNA");
    else
        fprintf(f, "\t%.9g", c->sums[k * c->n_runs + o].recall_mean);
}

/* A number, or NA when it is NaN (a metric the run does not have). */
static void cell(FILE *f, double x)
{
    if (isnan(x))
        fprintf(f, "\tNA");
    else
        fprintf(f, "\t%.9g", x);
}

/* The output-error and closed-loop columns of summary.tsv (after oracle_recall_mean). */
static void model_cells(FILE *f, const kv_run_summary *s)
{
    cell(f, s->out_err_mean);
    cell(f, s->out_err_ci.lo);
    cell(f, s->out_err_ci.hi);
    cell(f, s->kl_mean);
    cell(f, s->kl_ci.lo);
    cell(f, s->kl_ci.hi);
    if (isnan(s->kl_mean) || s->kl_block < 1)
        fprintf(f, "\tNA");
    else
        fprintf(f, "\t%d", s->kl_block);
    cell(f, s->ppl);
    cell(f, s->ppl_full);
    cell(f, s->top1_agree);
    cell(f, s->recall_closed);
}

static void summary_row(FILE *f, const kv_run_summary *s)
{
    fprintf(f, "\t%.9g\t%.9g\t%.9g\t%.9g\t%.9g\t%lld\t%.0f\t%.1f\t%.0f\t%.9g\t%.9g\t%d",
            s->recall_mean, s->recall_ci.lo, s->recall_ci.hi, s->recall_p05, s->recall_min,
            s->kv_tokens_peak, s->kv_bytes_peak, s->kv_bytes_mean, s->meta_bytes_peak,
            s->topk1_recall, s->topk8_recall, s->ci_units);
}

/* The trace = "all" row of run r: every column the mean over traces, except the
 * interval (Student-t over the traces' recall_mean) and ci_units (the traces). */
static void summary_all_row(FILE *f, const out_ctx *c, int r, double *x)
{
    int n = c->er->n_traces;
    const kv_policy_conf *pc = &c->er->conf->policies[c->er->res[0]->runs[r].policy];
    double budget = 0, p05 = 0, min = 0, tokens = 0, peak = 0, mean = 0, meta = 0, k1 = 0,
           k8 = 0, oracle = 0;
    int have_oracle = 1;
    for (int k = 0; k < n; k++) {
        int o = oracle_of(c, k, r);
        if (o < 0)
            have_oracle = 0;
        else
            oracle += c->sums[k * c->n_runs + o].recall_mean / n;
        const kv_run_summary *s = &c->sums[k * c->n_runs + r];
        x[k] = s->recall_mean;
        budget += (double)c->er->res[k]->runs[r].budget / n;
        p05 += s->recall_p05 / n;
        min += s->recall_min / n;
        tokens += (double)s->kv_tokens_peak / n;
        peak += s->kv_bytes_peak / n;
        mean += s->kv_bytes_mean / n;
        meta += s->meta_bytes_peak / n;
        k1 += s->topk1_recall / n;
        k8 += s->topk8_recall / n;
    }
    kv_interval ci;
    kv_t_interval(x, (size_t)n, KV_CI_LEVEL, &ci);
    char buf[32];
    fprintf(f, "all\t%s\t%s\t%.9g\t%s\t%.9g\t%.9g\t%.9g\t%.9g\t%.9g\t%.9g\t%.1f\t%.1f\t%.1f\t"
            "%.9g\t%.9g\t%d", pc->label, pc->ops->name, budget,
            spec_text(c, r % c->n_budgets, buf, sizeof buf), ci.mean, ci.lo, ci.hi, p05, min,
            tokens, peak, mean, meta, k1, k8, n);
    if (have_oracle)
        fprintf(f, "\t%.9g", oracle);
    else
        fprintf(f, "\tNA");
    /* the model columns: means over traces, intervals Student-t across them */
    static const size_t averaged[] = {
        offsetof(kv_run_summary, out_err_mean), offsetof(kv_run_summary, kl_mean),
        offsetof(kv_run_summary, ppl), offsetof(kv_run_summary, ppl_full),
        offsetof(kv_run_summary, top1_agree), offsetof(kv_run_summary, recall_closed),
    };
    kv_run_summary all;
    for (size_t i = 0; i < sizeof averaged / sizeof averaged[0]; i++) {
        double sum = 0.0;
        for (int k = 0; k < n; k++)
            sum += *(const double *)((const char *)&c->sums[k * c->n_runs + r] + averaged[i]);
        *(double *)((char *)&all + averaged[i]) = sum / n;
    }
    for (int k = 0; k < n; k++)
        x[k] = c->sums[k * c->n_runs + r].out_err_mean;
    kv_t_interval(x, (size_t)n, KV_CI_LEVEL, &all.out_err_ci);
    for (int k = 0; k < n; k++)
        x[k] = c->sums[k * c->n_runs + r].kl_mean;
    kv_t_interval(x, (size_t)n, KV_CI_LEVEL, &all.kl_ci);
    all.kl_block = 0;   /* NA: the interval is across traces */
    model_cells(f, &all);
    fputc('\n', f);
}

static int write_summary(FILE *f, const out_ctx *c, char *err, size_t err_len)
{
    const kv_experiment_results *er = c->er;
    fprintf(f, "trace\tpolicy\ttype\tbudget\tbudget_spec\trecall_mean\trecall_ci_lo\t"
               "recall_ci_hi\trecall_p05\trecall_min\tkv_tokens_peak\tkv_bytes_peak\t"
               "kv_bytes_mean\tmeta_bytes_peak\ttopk1_recall\ttopk8_recall\tci_units\t"
               "oracle_recall_mean\tout_err_mean\tout_err_ci_lo\tout_err_ci_hi\tkl_mean\t"
               "kl_ci_lo\tkl_ci_hi\tkl_block\tppl\tppl_full\ttop1_agree\trecall_closed\n");
    for (int k = 0; k < er->n_traces; k++)
        for (int r = 0; r < c->n_runs; r++) {
            const kv_run_result *run = &er->res[k]->runs[r];
            const kv_policy_conf *pc = &er->conf->policies[run->policy];
            char buf[32];
            fprintf(f, "%s\t%s\t%s\t%d\t%s", er->trace_names[k], pc->label, pc->ops->name,
                    run->budget, spec_text(c, r % c->n_budgets, buf, sizeof buf));
            summary_row(f, &c->sums[k * c->n_runs + r]);
            oracle_cell(f, c, k, r);
            model_cells(f, &c->sums[k * c->n_runs + r]);
            fputc('\n', f);
        }
    if (er->n_traces < 2)
        return 0;
    double *x = malloc((size_t)er->n_traces * sizeof *x);
    if (!x) {
        snprintf(err, err_len, "out of memory writing summary.tsv");
        return 1;
    }
    for (int r = 0; r < c->n_runs; r++)
        summary_all_row(f, c, r, x);
    free(x);
    return 0;
}

static int write_steps(FILE *f, const out_ctx *c, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    fprintf(f, "trace\tpolicy\tbudget\tbudget_spec\tstep\trecall\tkv_tokens\tkv_bytes\t"
               "meta_bytes\ttopk1_recall\ttopk8_recall\tout_err\tkl\tnll\tnll_full\ttop1\t"
               "recall_closed\n");
    for (int k = 0; k < c->er->n_traces; k++) {
        const kv_results *res = c->er->res[k];
        for (int r = 0; r < c->n_runs; r++) {
            const kv_run_result *run = &res->runs[r];
            for (int s = 0; s < res->n_steps; s++) {
                run_key(f, c, k, r);
                fprintf(f, "\t%d\t%.9g\t%lld\t%.0f\t%.0f\t%.9g\t%.9g",
                        res->info.prefill_len + s, run->step_recall[s], run->step_kv_tokens[s],
                        kv_tokens_to_bytes(&res->info, run->step_kv_tokens[s]),
                        run->step_meta_bytes[s], run->step_topk1[s], run->step_topk8[s]);
                cell(f, run->step_out_err ? run->step_out_err[s] : NAN);
                cell(f, run->step_kl ? run->step_kl[s] : NAN);
                cell(f, run->step_nll ? run->step_nll[s] : NAN);
                cell(f, res->step_nll_full ? res->step_nll_full[s] : NAN);
                cell(f, run->step_top1 ? run->step_top1[s] : NAN);
                cell(f, run->step_recall_closed ? run->step_recall_closed[s] : NAN);
                fputc('\n', f);
            }
        }
    }
    return 0;
}

static int write_heads(FILE *f, const out_ctx *c, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    fprintf(f, "trace\tpolicy\tbudget\tbudget_spec\tlayer\thead\trecall_mean\trecall_min\t"
               "out_err\n");
    for (int k = 0; k < c->er->n_traces; k++) {
        const kv_results *res = c->er->res[k];
        for (int r = 0; r < c->n_runs; r++) {
            const kv_run_result *run = &res->runs[r];
            for (int l = 0; l < res->info.n_layers; l++)
                for (int h = 0; h < res->info.n_heads; h++) {
                    int i = l * res->info.n_heads + h;
                    run_key(f, c, k, r);
                    fprintf(f, "\t%d\t%d\t%.9g\t%.9g", l, h, run->head_recall_mean[i],
                            run->head_recall_min[i]);
                    cell(f, run->head_out_err_mean ? run->head_out_err_mean[i] : NAN);
                    fputc('\n', f);
                }
        }
    }
    return 0;
}

/* One compare.tsv row: policies p and q (run indices rp, rq) at budget b. */
static void compare_row(FILE *f, const out_ctx *c, const char *trace, int rp, int rq,
                        double budget_a, double budget_b, const kv_interval *d, int units)
{
    const kv_policy_conf *pol = c->er->conf->policies;
    char buf[32];
    fprintf(f, "%s\t%s\t%s\t%s\t%.9g\t%.9g\t%.9g\t%.9g\t%.9g\t%d\n", trace,
            spec_text(c, rp % c->n_budgets, buf, sizeof buf),
            pol[c->er->res[0]->runs[rp].policy].label, pol[c->er->res[0]->runs[rq].policy].label,
            budget_a, budget_b, d->mean, d->lo, d->hi, units);
}

/* Every pair of policies at every budget: the paired difference a - b of recall over
 * (layer, query head, step), bootstrapped over (layer, query head) units; then, with
 * several traces, the mean of the traces' differences with a Student-t interval. */
static int write_compare(FILE *f, const out_ctx *c, char *err, size_t err_len)
{
    const kv_experiment_results *er = c->er;
    int nb = c->n_budgets, np = er->conf->n_policies, nt = er->n_traces;
    fprintf(f, "trace\tbudget_spec\tpolicy_a\tpolicy_b\tbudget_a\tbudget_b\tdiff_mean\t"
               "diff_ci_lo\tdiff_ci_hi\tci_units\n");
    double *x = malloc((size_t)nt * sizeof *x);
    if (!x) {
        snprintf(err, err_len, "out of memory writing compare.tsv");
        return 1;
    }
    for (int k = 0; k <= nt; k++) {   /* k == nt: the "all" rows */
        if (k == nt && nt < 2)
            break;
        for (int b = 0; b < nb; b++)
            for (int p = 0; p < np; p++)
                for (int q = p + 1; q < np; q++) {
                    int rp = p * nb + b, rq = q * nb + b;
                    kv_interval d;
                    if (k < nt) {
                        const kv_results *res = er->res[k];
                        int units = res->info.n_layers * res->info.n_heads;
                        if (kv_paired_diff_ci(res->runs[rp].head_recall_mean,
                                              res->runs[rq].head_recall_mean, (size_t)units,
                                              KV_BOOTSTRAP_RESAMPLES, KV_CI_LEVEL,
                                              KV_OUTPUT_SEED, &d, err, err_len)) {
                            free(x);
                            return 1;
                        }
                        compare_row(f, c, er->trace_names[k], rp, rq, res->runs[rp].budget,
                                    res->runs[rq].budget, &d, units);
                        continue;
                    }
                    double ba = 0, bb = 0;
                    for (int t = 0; t < nt; t++) {
                        x[t] = c->sums[t * c->n_runs + rp].recall_mean -
                               c->sums[t * c->n_runs + rq].recall_mean;
                        ba += (double)er->res[t]->runs[rp].budget / nt;
                        bb += (double)er->res[t]->runs[rq].budget / nt;
                    }
                    kv_t_interval(x, (size_t)nt, KV_CI_LEVEL, &d);
                    compare_row(f, c, "all", rp, rq, ba, bb, &d, nt);
                }
    }
    free(x);
    return 0;
}

static int write_retention(FILE *f, const out_ctx *c, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    fprintf(f, "trace\tpolicy\tbudget\tbudget_spec\tposition\tfraction\n");
    for (int k = 0; k < c->er->n_traces; k++) {
        const kv_results *res = c->er->res[k];
        for (int r = 0; r < c->n_runs; r++) {
            const kv_run_result *run = &res->runs[r];
            for (int j = 0; j < res->info.n_tokens; j++) {
                run_key(f, c, k, r);
                fprintf(f, "\t%d\t%.9g\n", j, (double)run->retained[j] / run->n_cache_units);
            }
        }
    }
    return 0;
}

/* Sparse: only the positions a (layer, KV head) still holds; held is the share of the
 * KV head's query heads that hold it (1 unless kv_granularity = query_head). */
static int write_retention_map(FILE *f, const out_ctx *c, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    fprintf(f, "trace\tpolicy\tbudget\tbudget_spec\tlayer\tkv_head\tposition\theld\n");
    for (int k = 0; k < c->er->n_traces; k++) {
        const kv_results *res = c->er->res[k];
        const kv_trace_info *in = &res->info;
        int T = in->n_tokens, group = in->n_heads / in->n_kv_heads;
        for (int r = 0; r < c->n_runs; r++) {
            const int *sets = res->runs[r].final_sets;
            for (int l = 0; l < in->n_layers; l++)
                for (int g = 0; g < in->n_kv_heads; g++)
                    for (int j = 0; j < T; j++) {
                        int held = sets[((size_t)l * in->n_kv_heads + g) * T + j];
                        if (!held)
                            continue;
                        run_key(f, c, k, r);
                        fprintf(f, "\t%d\t%d\t%d\t%.9g\n", l, g, j, (double)held / group);
                    }
        }
    }
    return 0;
}

static int write_lifetimes(FILE *f, const out_ctx *c, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    fprintf(f, "trace\tpolicy\tbudget\tbudget_spec\tlifetime\tcount\n");
    for (int k = 0; k < c->er->n_traces; k++) {
        const kv_results *res = c->er->res[k];
        for (int r = 0; r < c->n_runs; r++) {
            const kv_run_result *run = &res->runs[r];
            for (int s = 0; s <= res->n_steps; s++)
                if (run->lifetimes[s]) {
                    run_key(f, c, k, r);
                    fprintf(f, "\t%d\t%lld\n", s, run->lifetimes[s]);
                }
        }
    }
    return 0;
}

/* Decode steps by their recall (the per-step means of steps.tsv), KV_RECALL_BINS bins. */
static int write_recall_hist(FILE *f, const out_ctx *c, char *err, size_t err_len)
{
    fprintf(f, "trace\tpolicy\tbudget\tbudget_spec\tbin_lo\tbin_hi\tsteps\tfraction\n");
    long long counts[KV_RECALL_BINS];
    for (int k = 0; k < c->er->n_traces; k++) {
        const kv_results *res = c->er->res[k];
        for (int r = 0; r < c->n_runs; r++) {
            if (kv_histogram(res->runs[r].step_recall, (size_t)res->n_steps, 0.0, 1.0,
                             KV_RECALL_BINS, counts, err, err_len))
                return 1;
            for (int i = 0; i < KV_RECALL_BINS; i++) {
                run_key(f, c, k, r);
                fprintf(f, "\t%.9g\t%.9g\t%lld\t%.9g\n", (double)i / KV_RECALL_BINS,
                        (double)(i + 1) / KV_RECALL_BINS, counts[i],
                        (double)counts[i] / res->n_steps);
            }
        }
    }
    return 0;
}

/* The result files, in the order they are written. */
static const struct {
    const char *name;
    int (*write)(FILE *f, const out_ctx *c, char *err, size_t err_len);
} result_files[] = {
    { "summary.tsv", write_summary },
    { "steps.tsv", write_steps },
    { "heads.tsv", write_heads },
    { "compare.tsv", write_compare },
    { "retention.tsv", write_retention },
    { "retention_map.tsv", write_retention_map },
    { "lifetimes.tsv", write_lifetimes },
    { "recall_hist.tsv", write_recall_hist },
};

/* The summary of every run of every trace; NULL when out of memory (err set). */
static kv_run_summary *summarise_all(const kv_experiment_results *er, int n_runs, char *err,
                                     size_t err_len)
{
    kv_run_summary *sums = malloc((size_t)er->n_traces * n_runs * sizeof *sums);
    if (!sums) {
        snprintf(err, err_len, "out of memory summarising the results");
        return NULL;
    }
    for (int k = 0; k < er->n_traces; k++)
        for (int r = 0; r < n_runs; r++)
            if (kv_run_summarise(er->res[k], r, &sums[k * n_runs + r], err, err_len)) {
                free(sums);
                return NULL;
            }
    return sums;
}

/*
 * All-or-nothing as far as a directory allows: every file is written to its temporary
 * first; only when all of them are complete are they renamed into place, one after the
 * other with interrupts deferred, so a run publishes all its files or none.
 */
int kv_output_write(const char *dir, const kv_experiment_results *er, char *err,
                    size_t err_len)
{
    out_ctx c = { .er = er, .n_budgets = er->conf->n_budgets,
                  .n_runs = er->conf->n_policies * er->conf->n_budgets };
    for (int k = 0; k < er->n_traces; k++)
        if (er->res[k]->n_runs != c.n_runs) {
            snprintf(err, err_len, "internal error: trace %s has %d runs, expected %d",
                     er->trace_names[k], er->res[k]->n_runs, c.n_runs);
            return 1;
        }
    kv_run_summary *sums = summarise_all(er, c.n_runs, err, err_len);
    if (!sums)
        return 1;
    c.sums = sums;
    enum { N_FILES = sizeof result_files / sizeof result_files[0] };
    static out_file o[N_FILES];   /* static: two paths each, large for the stack */
    size_t n = 0;
    int rc = 0;
    errno = 0;
    for (; n < N_FILES && !rc; n++) {
        if (out_open(&o[n], dir, result_files[n].name, err, err_len)) {
            free(sums);
            return discard_all(o, n);
        }
        rc = result_files[n].write(o[n].f, &c, err, err_len);
        if (rc) {
            fclose(o[n].f);
            out_discard(&o[n]);
        } else if (out_finish(&o[n], err, err_len))
            rc = 1;
    }
    free(sums);
    if (rc)
        return discard_all(o, n - 1);
    kv_signals_hold(1);
    for (size_t i = 0; i < N_FILES; i++) {
        if (!rc && rename(o[i].tmp, o[i].final) != 0) {
            snprintf(err, err_len, "%s: cannot rename into place: %s", o[i].final,
                     strerror(errno));
            rc = 1;
        }
        if (rc)
            unlink(o[i].tmp);
        kv_tmp_unregister(o[i].tmp);
    }
    kv_signals_hold(0);
    return rc;
}

static void format_bytes(double bytes, char *buf, size_t len)
{
    if (bytes >= 1024.0 * 1024.0)
        snprintf(buf, len, "%.2f MiB", bytes / (1024.0 * 1024.0));
    else if (bytes >= 1024.0)
        snprintf(buf, len, "%.1f KiB", bytes / 1024.0);
    else
        snprintf(buf, len, "%.0f B", bytes);
}

int kv_output_table(FILE *f, const kv_experiment_results *er, char *err, size_t err_len)
{
    const kv_replay_conf *conf = er->conf;
    int width = 8;
    for (int p = 0; p < conf->n_policies; p++) {
        int w = (int)strlen(conf->policies[p].label);
        width = w > width ? w : width;
    }
    if (er->n_traces > 1)
        fprintf(f, "mean recall over %d traces / largest peak KV bytes\n", er->n_traces);
    fprintf(f, "%-*s", width, "policy");
    out_ctx c = { .er = er, .n_budgets = conf->n_budgets };
    for (int b = 0; b < conf->n_budgets; b++) {
        char head[64], buf[32];
        snprintf(head, sizeof head, "B=%s recall / peak KV", spec_text(&c, b, buf, sizeof buf));
        fprintf(f, "  %24s", head);
    }
    fputc('\n', f);
    for (int p = 0; p < conf->n_policies; p++) {
        fprintf(f, "%-*s", width, conf->policies[p].label);
        for (int b = 0; b < conf->n_budgets; b++) {
            double recall = 0.0, peak = 0.0;
            for (int k = 0; k < er->n_traces; k++) {
                kv_run_summary s;
                if (kv_run_summarise(er->res[k], p * conf->n_budgets + b, &s, err, err_len))
                    return 1;
                recall += s.recall_mean / er->n_traces;
                peak = s.kv_bytes_peak > peak ? s.kv_bytes_peak : peak;
            }
            char bytes[32], cell[64];
            format_bytes(peak, bytes, sizeof bytes);
            snprintf(cell, sizeof cell, "%.4f / %s", recall, bytes);
            fprintf(f, "  %24s", cell);
        }
        fputc('\n', f);
    }
    return 0;
}
