/*
 * output.c - TSV result files and the console table (see output.h).
 */
#include "sim/output.h"
#include "sim/config.h"   /* KV_PATH_LEN */
#include "sim/predict.h"
#include "sim/stats.h"
#include "sim/signals.h"
#include "traces/status.h"

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

/* Column col's value at one decode step, in the column's unit. */
static double column_value(const kv_output_column *col, const kv_step_metrics *m,
                           const kv_trace_info *in)
{
    double v = kv_metric_get(m, col->offset);
    return col->unit == KV_UNIT_KV_BYTES ? kv_tokens_to_bytes(in, (long long)v) : v;
}

/* The per-(layer, query head) means over decode steps the engine keeps for the field at
 * offset (the unit bootstrap's units), or NULL for a field without them. */
static const double *head_means(const kv_run_result *run, size_t offset)
{
    if (offset == offsetof(kv_step_metrics, recall))
        return run->head_recall_mean;
    if (offset == offsetof(kv_step_metrics, out_err))
        return run->head_out_err_mean;
    return NULL;
}

/* The reduction of x[0..n) (the column's defined steps; sorted: a sorted copy) for one
 * summary column; the interval columns read ci, the block ones block_ci and block. */
static double reduce_steps(kv_reduction red, const double *x, const double *sorted, int n,
                           const kv_interval *ci, int units, const kv_interval *block_ci,
                           int block)
{
    double v = 0.0;
    if (n == 0 && red != KV_RED_CI_UNITS)
        return NAN;
    switch (red) {
    case KV_RED_MEAN:
        return gsl_stats_mean(x, 1, (size_t)n);
    case KV_RED_CI_MEAN:
        return ci->mean;
    case KV_RED_EXP_MEAN:
        return exp(gsl_stats_mean(x, 1, (size_t)n));
    case KV_RED_AVERAGE:
        for (int i = 0; i < n; i++)
            v += x[i];
        return v / n;
    case KV_RED_PEAK:
        for (int i = 0; i < n; i++)
            v = x[i] > v ? x[i] : v;
        return v;
    case KV_RED_MIN: return sorted[0];
    case KV_RED_P05: return gsl_stats_quantile_from_sorted_data(sorted, 1, (size_t)n, 0.05);
    case KV_RED_CI_LO: return ci->lo;
    case KV_RED_CI_HI: return ci->hi;
    case KV_RED_CI_UNITS: return units;
    case KV_RED_BLOCK_CI_LO: return block_ci->lo;
    case KV_RED_BLOCK_CI_HI: return block_ci->hi;
    case KV_RED_BLOCK_LEN: return block;
    default: return v;
    }
}

/* The interval of column col's mean: over (layer, query head) units when the engine keeps
 * the field's per-head means, else a moving-block bootstrap over the n defined steps x.
 * *block gets that bootstrap's block length. Returns 0, or KV_ERUNTIME (err set). */
static int column_interval(const kv_run_result *run, const kv_output_column *col,
                           const double *x, int n, int units, kv_interval *ci,
                           kv_interval *block_ci, int *block, char *err, size_t err_len)
{
    const double *heads = head_means(run, col->offset);
    ci->mean = ci->lo = ci->hi = NAN;
    *block_ci = *ci;
    *block = (int)kv_block_length((size_t)n);
    if (heads && kv_bootstrap_mean_ci(heads, (size_t)units, KV_BOOTSTRAP_RESAMPLES,
                                      KV_CI_LEVEL, KV_OUTPUT_SEED, ci, err, err_len))
        return KV_ERUNTIME;
    if (heads && n > 0)   /* every unit has every step: the mean over units is the mean */
        ci->mean = gsl_stats_mean(x, 1, (size_t)n);
    if (!heads && n > 0) {
        if (kv_block_bootstrap_mean_ci(x, (size_t)n, (size_t)*block, KV_BOOTSTRAP_RESAMPLES,
                                       KV_CI_LEVEL, KV_OUTPUT_SEED, block_ci, err, err_len))
            return KV_ERUNTIME;
        ci->mean = block_ci->mean;
    }
    return 0;
}

int kv_run_summarise(const kv_results *res, int r, double *values, char *err, size_t err_len)
{
    const kv_run_result *run = &res->runs[r];
    int D = res->n_steps;
    /* units, not steps, are resampled for per-head metrics (stats.h) */
    int units = res->info.n_layers * res->info.n_heads;
    double *x = malloc((size_t)D * sizeof *x), *sorted = malloc((size_t)D * sizeof *sorted);
    if (!x || !sorted) {
        free(x);
        free(sorted);
        snprintf(err, err_len, "out of memory summarising the results");
        return KV_ERUNTIME;
    }
    int rc = 0;
    for (int i = 0; i < kv_n_output_columns && rc == 0; i++) {
        const kv_output_column *col = &kv_output_columns[i];
        if (col->file != KV_FILE_SUMMARY)
            continue;
        int n = 0;
        for (int s = 0; s < D; s++) {
            double v = column_value(col, &run->steps[s], &res->info);
            if (!isnan(v))
                x[n++] = v;
        }
        memcpy(sorted, x, (size_t)n * sizeof *sorted);
        gsl_sort(sorted, 1, (size_t)n);
        kv_interval ci = { NAN, NAN, NAN }, block_ci = ci;
        int block = 0;
        kv_reduction red = col->reduction;
        if (red == KV_RED_CI_MEAN || red == KV_RED_CI_LO || red == KV_RED_CI_HI ||
            red == KV_RED_BLOCK_CI_LO || red == KV_RED_BLOCK_CI_HI || red == KV_RED_BLOCK_LEN)
            rc = column_interval(run, col, x, n, units, &ci, &block_ci, &block, err, err_len);
        values[i] = reduce_steps(col->reduction, x, sorted, n, &ci, units, &block_ci, block);
    }
    free(x);
    free(sorted);
    return rc;
}

/* Writes a tab and v in format, or NA when v is NaN (a metric the run does not have). */
static void value_cell(FILE *f, const char *format, double v)
{
    fputc('\t', f);
    if (isnan(v))
        fputs("NA", f);
    else
        fprintf(f, format, v);
}

int kv_make_dirs(const char *dir)
{
    char path[KV_PATH_LEN];
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
    return mkdir(path, 0777) != 0 && errno != EEXIST ? -1 : 0;
}

/* Checks dir, creating it (with its parents) when create is 1; see kv_output_prepare. */
static int output_dir(const char *dir, int force, int create, char *err, size_t err_len)
{
    struct stat st;
    int exists = stat(dir, &st) == 0;
    if (exists && !S_ISDIR(st.st_mode)) {
        snprintf(err, err_len, "%s: exists and is not a directory", dir);
        return KV_ERUNTIME;
    }
    if (!exists && !create)
        return 0;
    if (kv_make_dirs(dir) != 0) {
        snprintf(err, err_len, "%s: cannot create the output directory: %s", dir, strerror(errno));
        return KV_ERUNTIME;
    }
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, err_len, "%s: cannot read the output directory: %s", dir, strerror(errno));
        return KV_ERUNTIME;
    }
    int n_files = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n_files++;
    closedir(d);
    if (n_files && !force) {
        snprintf(err, err_len, "%s: output directory is not empty (%d entries); use --force "
                 "to overwrite its result files", dir, n_files);
        return KV_EUSAGE;
    }
    return 0;
}

int kv_output_prepare(const char *dir, int force, char *err, size_t err_len)
{
    return output_dir(dir, force, 1, err, err_len);
}

int kv_output_check(const char *dir, int force, char *err, size_t err_len)
{
    return output_dir(dir, force, 0, err, err_len);
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
        return KV_ERUNTIME;
    }
    o->f = fopen(o->tmp, "w");
    if (!o->f) {
        snprintf(err, err_len, "%s: cannot write: %s", o->tmp, strerror(errno));
        kv_tmp_unregister(o->tmp);
        return KV_ERUNTIME;
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
    return KV_ERUNTIME;
}

/* Removes the first n (finished) temporaries of a failed write; returns 1. */
static int discard_all(out_file *o, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out_discard(&o[i]);
    return KV_ERUNTIME;
}

/* What every writer reads: the experiment and the summary of every run of every trace
 * (summary(c, k, r)[i] for summary column i). */
typedef struct {
    const kv_experiment_results *er;
    const double *sums;  /* [n_traces * n_runs * kv_n_output_columns] */
    int n_runs;          /* per trace: n_policies * n_budgets */
    int n_budgets;
} out_ctx;

/* The summary values of run r of trace k, indexed by kv_output_columns. */
static const double *summary(const out_ctx *c, int k, int r)
{
    return c->sums + ((size_t)k * c->n_runs + r) * kv_n_output_columns;
}

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

/* The run of a per-step ceiling policy (ops->per_step_ceiling: oracle) at the same trace,
 * resolved budget and granularity as run r, or -1: what run r is set against
 * (oracle_recall_mean). */
static int oracle_of(const out_ctx *c, int k, int r)
{
    const kv_results *res = c->er->res[k];
    const kv_policy_conf *pol = c->er->conf->policies;
    for (int o = 0; o < c->n_runs; o++)
        if (pol[res->runs[o].policy].ops->per_step_ceiling &&
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
        fprintf(f, "\t%.9g", summary(c, k, o)[kv_summary_column("recall_mean")]);
}

static void summary_row(FILE *f, const double *values)
{
    for (int i = 0; i < kv_n_output_columns; i++)
        if (kv_output_columns[i].file == KV_FILE_SUMMARY)
            value_cell(f, kv_output_columns[i].format, values[i]);
}

/* Appends "name=word" of engine parameter i (a CHOICE) at index `value` to buf. */
static void append_choice(char *buf, size_t len, int i, int value)
{
    const kv_param_spec *g = &kv_engine_params[i];
    /* the CHOICE's words are '|'-separated, indexed by value */
    const char *w = g->choices;
    for (int k = 0; k < value && strchr(w, '|'); k++)
        w = strchr(w, '|') + 1;
    size_t at = strlen(buf);
    snprintf(buf + at, at < len ? len - at : 0, "%s%s=%.*s", at ? "," : "", g->name,
             (int)strcspn(w, "|"), w);
}

/* Appends "name=text" to buf. */
static void append_text(char *buf, size_t len, int i, const char *text)
{
    size_t at = strlen(buf);
    snprintf(buf + at, at < len ? len - at : 0, "%s%s=%s", at ? "," : "",
             kv_engine_params[i].name, text);
}

void kv_output_params(const kv_policy_conf *pc, int only_changed, char *buf, size_t len)
{
    kv_params_format(pc->ops, &pc->values, only_changed, buf, len);
    if (!only_changed || pc->granularity != KV_GRAN_KV_HEAD)
        append_choice(buf, len, KV_ENGINE_PARAM_GRANULARITY, (int)pc->granularity);
    /* the options that compose with a policy's scores (sim/alloc.h), for scorers */
    if (!pc->ops->scores)
        return;
    kv_select_opts o = kv_select_resolved(&pc->select);
    char num[32];
    if (!only_changed || o.alloc != KV_ALLOC_UNIFORM)
        append_choice(buf, len, KV_ENGINE_PARAM_ALLOC, (int)o.alloc);
    if (!only_changed || o.beta != KV_PYRAMID_BETA) {
        snprintf(num, sizeof num, "%g", o.beta);
        append_text(buf, len, KV_ENGINE_PARAM_PYRAMID_BETA, num);
    }
    if (!only_changed || o.alpha != KV_ADA_ALPHA) {
        snprintf(num, sizeof num, "%g", o.alpha);
        append_text(buf, len, KV_ENGINE_PARAM_ADA_ALPHA, num);
    }
    if (!only_changed || o.chunk > 0) {
        snprintf(num, sizeof num, "%d", o.chunk);
        append_text(buf, len, KV_ENGINE_PARAM_CHUNK, o.chunk > 0 ? num : "off");
    }
    if (!only_changed || o.value_weight != KV_VALUE_WEIGHT_NONE)
        append_choice(buf, len, KV_ENGINE_PARAM_VALUE_WEIGHT, (int)o.value_weight);
}

/* The params column: the label's parameters that differ from their defaults, or "-". */
static void params_cell(FILE *f, const kv_policy_conf *pc)
{
    char buf[512];
    kv_output_params(pc, 1, buf, sizeof buf);
    fprintf(f, "\t%s", buf[0] ? buf : "-");
}

/* The trace = "all" row of run r: every column the mean over traces, except the interval
 * columns (Student-t over the traces' recall_mean) and ci_units (the traces). x: [n]. */
static void summary_all_row(FILE *f, const out_ctx *c, int r, double *x)
{
    int n = c->er->n_traces;
    const kv_policy_conf *pc = &c->er->conf->policies[c->er->res[0]->runs[r].policy];
    double budget = 0, oracle = 0;
    int have_oracle = 1, recall_col = kv_summary_column("recall_mean");
    for (int k = 0; k < n; k++) {
        int o = oracle_of(c, k, r);
        if (o < 0)
            have_oracle = 0;
        else
            oracle += summary(c, k, o)[recall_col] / n;
        budget += (double)c->er->res[k]->runs[r].budget / n;
    }
    char buf[32];
    fprintf(f, "all\t%s\t%s\t%.9g\t%s", pc->label, pc->ops->name, budget,
            spec_text(c, r % c->n_budgets, buf, sizeof buf));
    for (int i = 0; i < kv_n_output_columns; i++) {
        const kv_output_column *col = &kv_output_columns[i];
        if (col->file != KV_FILE_SUMMARY)
            continue;
        /* the interval columns: Student-t over the traces' means of the same field */
        int mean_col = kv_summary_column_of(col->offset, KV_RED_CI_MEAN);
        kv_interval ci = { NAN, NAN, NAN };
        if (mean_col >= 0) {
            for (int k = 0; k < n; k++)
                x[k] = summary(c, k, r)[mean_col];
            kv_t_interval(x, (size_t)n, KV_CI_LEVEL, &ci);
        }
        double v = 0;
        switch (col->reduction) {
        case KV_RED_CI_MEAN: v = ci.mean; break;
        case KV_RED_CI_LO: case KV_RED_BLOCK_CI_LO: v = ci.lo; break;
        case KV_RED_CI_HI: case KV_RED_BLOCK_CI_HI: v = ci.hi; break;
        case KV_RED_CI_UNITS: v = n; break;
        case KV_RED_BLOCK_LEN: v = NAN; break;
        default:
            for (int k = 0; k < n; k++)
                v += summary(c, k, r)[i] / n;
        }
        value_cell(f, col->all_format, v);
    }
    if (have_oracle)
        fprintf(f, "\t%.9g", oracle);
    else
        fprintf(f, "\tNA");
    params_cell(f, pc);
    fputc('\n', f);
}

/* The header of the columns file shows, each preceded by a tab. */
static void column_headers(FILE *f, kv_result_file file)
{
    for (int i = 0; i < kv_n_output_columns; i++)
        if (kv_output_columns[i].file == file)
            fprintf(f, "\t%s", kv_output_columns[i].name);
}

static int write_summary(FILE *f, const out_ctx *c, char *err, size_t err_len)
{
    const kv_experiment_results *er = c->er;
    fprintf(f, "trace\tpolicy\ttype\tbudget\tbudget_spec");
    column_headers(f, KV_FILE_SUMMARY);
    fprintf(f, "\toracle_recall_mean\tparams\n");
    for (int k = 0; k < er->n_traces; k++)
        for (int r = 0; r < c->n_runs; r++) {
            const kv_run_result *run = &er->res[k]->runs[r];
            const kv_policy_conf *pc = &er->conf->policies[run->policy];
            char buf[32];
            fprintf(f, "%s\t%s\t%s\t%d\t%s", er->trace_names[k], pc->label, pc->ops->name,
                    run->budget, spec_text(c, r % c->n_budgets, buf, sizeof buf));
            summary_row(f, summary(c, k, r));
            oracle_cell(f, c, k, r);
            params_cell(f, pc);
            fputc('\n', f);
        }
    if (er->n_traces < 2)
        return 0;
    double *x = malloc((size_t)er->n_traces * sizeof *x);
    if (!x) {
        snprintf(err, err_len, "out of memory writing summary.tsv");
        return KV_ERUNTIME;
    }
    for (int r = 0; r < c->n_runs; r++)
        summary_all_row(f, c, r, x);
    free(x);
    return 0;
}

static int write_steps(FILE *f, const out_ctx *c, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    fprintf(f, "trace\tpolicy\tbudget\tbudget_spec\tstep");
    column_headers(f, KV_FILE_STEPS);
    fputc('\n', f);
    for (int k = 0; k < c->er->n_traces; k++) {
        const kv_results *res = c->er->res[k];
        for (int r = 0; r < c->n_runs; r++) {
            const kv_run_result *run = &res->runs[r];
            for (int s = 0; s < res->n_steps; s++) {
                run_key(f, c, k, r);
                fprintf(f, "\t%d", res->info.prefill_len + s);
                for (int i = 0; i < kv_n_output_columns; i++) {
                    const kv_output_column *col = &kv_output_columns[i];
                    if (col->file != KV_FILE_STEPS)
                        continue;
                    value_cell(f, col->format, column_value(col, &run->steps[s], &res->info));
                }
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
                    value_cell(f, "%.9g", run->head_out_err_mean[i]);
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

/* Every pair of policies at every budget (or, beyond KV_COMPARE_ALL_PAIRS_MAX policies,
 * the first against each other one): the paired difference a - b of recall over
 * (layer, query head, step), bootstrapped over (layer, query head) units; then, with
 * several traces, the mean of the traces' differences with a Student-t interval. */
static int write_compare(FILE *f, const out_ctx *c, char *err, size_t err_len)
{
    const kv_experiment_results *er = c->er;
    int n_budgets = c->n_budgets, np = er->conf->n_policies, nt = er->n_traces;
    fprintf(f, "trace\tbudget_spec\tpolicy_a\tpolicy_b\tbudget_a\tbudget_b\tdiff_mean\t"
               "diff_ci_lo\tdiff_ci_hi\tci_units\n");
    double *x = malloc((size_t)nt * sizeof *x);
    if (!x) {
        snprintf(err, err_len, "out of memory writing compare.tsv");
        return KV_ERUNTIME;
    }
    for (int k = 0; k <= nt; k++) {   /* k == nt: the "all" rows */
        if (k == nt && nt < 2)
            break;
        /* beyond KV_COMPARE_ALL_PAIRS_MAX policies, each against the first only */
        int first_only = np > KV_COMPARE_ALL_PAIRS_MAX;
        for (int b = 0; b < n_budgets; b++)
            for (int p = 0; p < (first_only ? 1 : np); p++)
                for (int q = p + 1; q < np; q++) {
                    int rp = p * n_budgets + b, rq = q * n_budgets + b;
                    kv_interval d;
                    if (k < nt) {
                        const kv_results *res = er->res[k];
                        int units = res->info.n_layers * res->info.n_heads;
                        if (kv_paired_diff_ci(res->runs[rp].head_recall_mean,
                                              res->runs[rq].head_recall_mean, (size_t)units,
                                              KV_BOOTSTRAP_RESAMPLES, KV_CI_LEVEL,
                                              KV_OUTPUT_SEED, &d, err, err_len)) {
                            free(x);
                            return KV_ERUNTIME;
                        }
                        compare_row(f, c, er->trace_names[k], rp, rq, res->runs[rp].budget,
                                    res->runs[rq].budget, &d, units);
                        continue;
                    }
                    double ba = 0, bb = 0;
                    for (int t = 0; t < nt; t++) {
                        x[t] = summary(c, t, rp)[kv_summary_column("recall_mean")] -
                               summary(c, t, rq)[kv_summary_column("recall_mean")];
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
    fprintf(f, "trace\tpolicy\tbudget\tbudget_spec\tposition\tfraction\tevicted_caches\t"
               "lifetime_mean\ttoken\n");
    for (int k = 0; k < c->er->n_traces; k++) {
        const kv_results *res = c->er->res[k];
        const char *const *tok = c->er->tokens ? c->er->tokens[k] : NULL;
        for (int r = 0; r < c->n_runs; r++) {
            const kv_run_result *run = &res->runs[r];
            for (int j = 0; j < res->info.n_tokens; j++) {
                run_key(f, c, k, r);
                fprintf(f, "\t%d\t%.9g\t%d\t", j, (double)run->retained[j] / run->n_cache_units,
                        run->evicted_caches[j]);
                if (run->evictions[j])   /* lifetimes.tsv's lifetime, looked up by position */
                    fprintf(f, "%.9g", (double)run->lifetime_sum[j] / run->evictions[j]);
                else
                    fputs("NA", f);
                fprintf(f, "\t%s\n", tok ? tok[j] : "");
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
/* budgets.tsv: the budget of every (layer, cache) of every run, and the mean number of
 * tokens the cache held when queries attended (kv_tokens; alloc = ada lets it drift). */
static int write_budgets(FILE *f, const out_ctx *c, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    fprintf(f, "trace\tpolicy\tbudget\tbudget_spec\tlayer\tcache\tcache_budget\t"
               "kv_tokens_mean\n");
    for (int k = 0; k < c->er->n_traces; k++) {
        const kv_results *res = c->er->res[k];
        for (int r = 0; r < c->n_runs; r++) {
            const kv_run_result *run = &res->runs[r];
            for (int l = 0; l < res->info.n_layers; l++)
                for (int g = 0; g < run->caches_per_layer; g++) {
                    size_t at = (size_t)l * run->caches_per_layer + g;
                    run_key(f, c, k, r);
                    fprintf(f, "\t%d\t%d\t%d\t%.9g\n", l, g, run->cache_budget[at],
                            run->cache_tokens_mean[at]);
                }
        }
    }
    return 0;
}

static int write_recall_hist(FILE *f, const out_ctx *c, char *err, size_t err_len)
{
    fprintf(f, "trace\tpolicy\tbudget\tbudget_spec\tbin_lo\tbin_hi\tsteps\tfraction\n");
    long long counts[KV_RECALL_BINS];
    for (int k = 0; k < c->er->n_traces; k++) {
        const kv_results *res = c->er->res[k];
        double *recall = malloc((size_t)res->n_steps * sizeof *recall);
        if (!recall) {
            snprintf(err, err_len, "out of memory writing recall_hist.tsv");
            return KV_ERUNTIME;
        }
        for (int r = 0; r < c->n_runs; r++) {
            for (int s = 0; s < res->n_steps; s++)
                recall[s] = res->runs[r].steps[s].recall;
            if (kv_histogram(recall, (size_t)res->n_steps, 0.0, 1.0, KV_RECALL_BINS, counts,
                             err, err_len)) {
                free(recall);
                return KV_ERUNTIME;
            }
            for (int i = 0; i < KV_RECALL_BINS; i++) {
                run_key(f, c, k, r);
                fprintf(f, "\t%.9g\t%.9g\t%lld\t%.9g\n", (double)i / KV_RECALL_BINS,
                        (double)(i + 1) / KV_RECALL_BINS, counts[i],
                        (double)counts[i] / res->n_steps);
            }
        }
        free(recall);
    }
    return 0;
}

/* Which open-loop metric predicts the closed loop's kl_mean (sim/predict.h). */
static int write_predict(FILE *f, const out_ctx *c, char *err, size_t err_len)
{
    return kv_predict_write(f, c->er, c->sums, err, err_len);
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
    { "predict.tsv", write_predict },
    { "budgets.tsv", write_budgets },
};

int kv_output_is_result_file(const char *name)
{
    for (size_t i = 0; i < sizeof result_files / sizeof result_files[0]; i++)
        if (strcmp(name, result_files[i].name) == 0)
            return 1;
    return 0;
}

/* The summary of every run of every trace (out_ctx.sums); NULL when out of memory (err
 * set). */
static double *summarise_all(const kv_experiment_results *er, int n_runs, char *err,
                             size_t err_len)
{
    size_t n_cols = (size_t)kv_n_output_columns;
    double *sums = calloc((size_t)er->n_traces * n_runs * n_cols, sizeof *sums);
    if (!sums) {
        snprintf(err, err_len, "out of memory summarising the results");
        return NULL;
    }
    for (int k = 0; k < er->n_traces; k++)
        for (int r = 0; r < n_runs; r++)
            if (kv_run_summarise(er->res[k], r, sums + ((size_t)k * n_runs + r) * n_cols, err,
                                 err_len)) {
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
            return KV_ERUNTIME;
        }
    double *sums = summarise_all(er, c.n_runs, err, err_len);
    if (!sums)
        return KV_ERUNTIME;
    c.sums = sums;
    enum { N_FILES = sizeof result_files / sizeof result_files[0] };
    out_file *o = calloc(N_FILES, sizeof *o);   /* two paths each: large for the stack */
    if (!o) {
        free(sums);
        snprintf(err, err_len, "out of memory writing the result files");
        return KV_ENOMEM;
    }
    size_t n = 0;
    int rc = 0;
    errno = 0;
    for (; n < N_FILES && !rc; n++) {
        if (out_open(&o[n], dir, result_files[n].name, err, err_len)) {
            free(sums);
            rc = discard_all(o, n);
            free(o);
            return rc;
        }
        rc = result_files[n].write(o[n].f, &c, err, err_len);
        if (rc) {
            fclose(o[n].f);
            out_discard(&o[n]);
        } else if (out_finish(&o[n], err, err_len))
            rc = KV_ERUNTIME;
    }
    free(sums);
    if (rc) {
        rc = discard_all(o, n - 1);
        free(o);
        return rc;
    }
    kv_signals_hold(1);
    for (size_t i = 0; i < N_FILES; i++) {
        if (!rc && rename(o[i].tmp, o[i].final) != 0) {
            snprintf(err, err_len, "%s: cannot rename into place: %s", o[i].final,
                     strerror(errno));
            rc = KV_ERUNTIME;
        }
        if (rc)
            unlink(o[i].tmp);
        kv_tmp_unregister(o[i].tmp);
    }
    kv_signals_hold(0);
    free(o);
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

/* The closed loop's part of output_table_of, when its runs have closed-loop results:
 * per policy and budget the mean over the traces of kl_mean and of ppl (the full cache's
 * ppl_full on the last line). values: kv_n_output_columns doubles of scratch. */
static int closed_loop_table(FILE *f, const kv_experiment_results *er, const char *model,
                             int n, int width, double *values, char *err, size_t err_len)
{
    const kv_replay_conf *conf = er->conf;
    int i_kl = kv_summary_column("kl_mean"), i_ppl = kv_summary_column("ppl");
    int i_full = kv_summary_column("ppl_full");
    int have = 0;
    for (int k = 0; k < er->n_traces && !have; k++)
        if (!model || strcmp(er->res[k]->info.model, model) == 0) {
            if (kv_run_summarise(er->res[k], 0, values, err, err_len))
                return KV_ERUNTIME;
            have = !isnan(values[i_kl]);
        }
    if (!have)
        return 0;
    fprintf(f, "closed loop: mean KL(full || policy) in nats per token / mean perplexity\n");
    double ppl_full = 0.0;
    for (int p = 0; p < conf->n_policies; p++) {
        fprintf(f, "%-*s", width, conf->policies[p].label);
        for (int b = 0; b < conf->n_budgets; b++) {
            double kl = 0.0, ppl = 0.0;
            for (int k = 0; k < er->n_traces; k++) {
                if (model && strcmp(er->res[k]->info.model, model) != 0)
                    continue;
                if (kv_run_summarise(er->res[k], p * conf->n_budgets + b, values, err,
                                     err_len))
                    return KV_ERUNTIME;
                kl += values[i_kl] / n;
                ppl += values[i_ppl] / n;
                if (p == 0 && b == 0)
                    ppl_full += values[i_full] / n;
            }
            char cell[64];
            snprintf(cell, sizeof cell, "%.4f / %.4g", kl, ppl);
            fprintf(f, b + 1 < conf->n_budgets ? "  %-31s" : "  %s", cell);
        }
        fputc('\n', f);
    }
    fprintf(f, "full-cache perplexity %.4g\n", ppl_full);
    return 0;
}

/*
 * The console table of the traces k whose model is `model` (all when NULL): per policy and
 * budget the mean recall and the peak KV bytes + the peak metadata bytes (the largest
 * over those traces), in fixed-width columns. A policy whose cache the budget does not
 * bound (kv_policy_max_held < 0: full, snapkv) is marked '*', so a growing or
 * metadata-heavy policy cannot read as the cheap winner.
 */
static int output_table_of(FILE *f, const kv_experiment_results *er, const char *model,
                           char *err, size_t err_len)
{
    const kv_replay_conf *conf = er->conf;
    int width = 8, any_growing = 0, n = 0;
    for (int k = 0; k < er->n_traces; k++)
        n += !model || strcmp(er->res[k]->info.model, model) == 0;
    for (int p = 0; p < conf->n_policies; p++) {
        int w = (int)strlen(conf->policies[p].label);
        width = w > width ? w : width;
    }
    if (model)
        fprintf(f, "%s: mean recall over %d trace%s; largest peak KV + metadata bytes\n",
                model, n, n > 1 ? "s" : "");
    else if (n > 1)
        fprintf(f, "mean recall over %d traces; largest peak KV + metadata bytes\n", n);
    out_ctx c = { .er = er, .n_budgets = conf->n_budgets };
    int i_recall = kv_summary_column("recall_mean"), i_peak = kv_summary_column("kv_bytes_peak");
    int i_meta = kv_summary_column("meta_bytes_peak");
    double *values = malloc((size_t)kv_n_output_columns * sizeof *values);
    if (!values) {
        snprintf(err, err_len, "out of memory printing the table");
        return KV_ERUNTIME;
    }
    width += 2;   /* room for the mark */
    /* a cell: recall (6), two spaces, KV (10), " + ", metadata (10) = 31 */
    fprintf(f, "%-*s", width, "policy");
    for (int b = 0; b < conf->n_budgets; b++) {
        char head[64], buf[32];
        snprintf(head, sizeof head, "B=%s", spec_text(&c, b, buf, sizeof buf));
        fprintf(f, b + 1 < conf->n_budgets ? "  %-31s" : "  %s", head);
    }
    fprintf(f, "\n%-*s", width, "");
    for (int b = 0; b < conf->n_budgets; b++)
        fprintf(f, "  %-6s  %10s + %10s", "recall", "peak KV", "metadata");
    fputc('\n', f);
    for (int p = 0; p < conf->n_policies; p++) {
        const kv_policy_conf *pc = &conf->policies[p];
        int grows = 0;
        for (int k = 0; k < er->n_traces; k++)
            for (int b = 0; b < conf->n_budgets; b++)
                if (!model || strcmp(er->res[k]->info.model, model) == 0)
                    grows |= kv_policy_max_held(pc->ops, &pc->values,
                                                er->res[k]->runs[p * conf->n_budgets + b].budget) < 0;
        any_growing |= grows;
        char label[KV_LABEL_LEN + 4];
        snprintf(label, sizeof label, "%s%s", pc->label, grows ? " *" : "");
        fprintf(f, "%-*s", width, label);
        for (int b = 0; b < conf->n_budgets; b++) {
            double recall = 0.0, peak = 0.0, meta = 0.0;
            for (int k = 0; k < er->n_traces; k++) {
                if (model && strcmp(er->res[k]->info.model, model) != 0)
                    continue;
                int r = p * conf->n_budgets + b;
                if (kv_run_summarise(er->res[k], r, values, err, err_len)) {
                    free(values);
                    return KV_ERUNTIME;
                }
                recall += values[i_recall] / n;
                peak = values[i_peak] > peak ? values[i_peak] : peak;
                meta = values[i_meta] > meta ? values[i_meta] : meta;
            }
            char kv[32], md[32];
            format_bytes(peak, kv, sizeof kv);
            format_bytes(meta, md, sizeof md);
            fprintf(f, "  %6.4f  %10s + %10s", recall, kv, md);
        }
        fputc('\n', f);
    }
    if (any_growing)
        fprintf(f, "* the budget does not bound this policy's cache: it grows with the "
                "sequence\n");
    int rc = closed_loop_table(f, er, model, n, width, values, err, err_len);
    free(values);
    return rc;
}

/* One table when every trace comes from one model; else one per model, in the order the
 * models first appear among the traces (mean recall is not pooled across models). */
int kv_output_table(FILE *f, const kv_experiment_results *er, char *err, size_t err_len)
{
    int single = 1;
    for (int k = 1; k < er->n_traces; k++)
        single &= strcmp(er->res[k]->info.model, er->res[0]->info.model) == 0;
    if (single)
        return output_table_of(f, er, NULL, err, err_len);
    for (int k = 0; k < er->n_traces; k++) {
        int seen = 0;
        for (int j = 0; j < k; j++)
            seen |= strcmp(er->res[j]->info.model, er->res[k]->info.model) == 0;
        if (seen)
            continue;
        if (k > 0)
            fputc('\n', f);
        int rc = output_table_of(f, er, er->res[k]->info.model, err, err_len);
        if (rc)
            return rc;
    }
    return 0;
}
