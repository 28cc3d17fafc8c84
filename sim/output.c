/*
 * output.c - TSV result files and the console table (see output.h).
 */
#include "sim/output.h"
#include "sim/signals.h"

#include <dirent.h>
#include <errno.h>
#include <gsl/gsl_sort.h>
#include <gsl/gsl_statistics_double.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
    return 0;
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
        return 1;
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

static int write_summary(FILE *f, const kv_experiment_results *er, char *err, size_t err_len)
{
    fprintf(f, "trace\tpolicy\ttype\tbudget\trecall_mean\trecall_p05\trecall_min\t"
               "kv_tokens_peak\tkv_bytes_peak\tkv_bytes_mean\tmeta_bytes_peak\ttopk1_recall\t"
               "topk8_recall\n");
    for (int k = 0; k < er->n_traces; k++) {
        const kv_results *res = er->res[k];
        for (int r = 0; r < res->n_runs; r++) {
            const kv_policy_conf *pc = &er->conf->policies[res->runs[r].policy];
            kv_run_summary s;
            if (kv_run_summarise(res, r, &s, err, err_len))
                return 1;
            fprintf(f, "%s\t%s\t%s\t%d\t%.9g\t%.9g\t%.9g\t%lld\t%.0f\t%.1f\t%.0f\t%.9g\t%.9g\n",
                    er->trace_names[k], pc->label, pc->ops->name, res->runs[r].budget,
                    s.recall_mean, s.recall_p05, s.recall_min, s.kv_tokens_peak,
                    s.kv_bytes_peak, s.kv_bytes_mean, s.meta_bytes_peak, s.topk1_recall,
                    s.topk8_recall);
        }
    }
    return 0;
}

static int write_steps(FILE *f, const kv_experiment_results *er, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    fprintf(f, "trace\tpolicy\tbudget\tstep\trecall\tkv_tokens\tkv_bytes\tmeta_bytes\t"
               "topk1_recall\ttopk8_recall\n");
    for (int k = 0; k < er->n_traces; k++) {
        const kv_results *res = er->res[k];
        for (int r = 0; r < res->n_runs; r++) {
            const kv_run_result *run = &res->runs[r];
            const char *label = er->conf->policies[run->policy].label;
            for (int s = 0; s < res->n_steps; s++)
                fprintf(f, "%s\t%s\t%d\t%d\t%.9g\t%lld\t%.0f\t%.0f\t%.9g\t%.9g\n",
                        er->trace_names[k], label, run->budget, res->info.prefill_len + s,
                        run->step_recall[s], run->step_kv_tokens[s],
                        kv_tokens_to_bytes(&res->info, run->step_kv_tokens[s]),
                        run->step_meta_bytes[s], run->step_topk1[s], run->step_topk8[s]);
        }
    }
    return 0;
}

static int write_heads(FILE *f, const kv_experiment_results *er, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    fprintf(f, "trace\tpolicy\tbudget\tlayer\thead\trecall_mean\trecall_min\n");
    for (int k = 0; k < er->n_traces; k++) {
        const kv_results *res = er->res[k];
        for (int r = 0; r < res->n_runs; r++) {
            const kv_run_result *run = &res->runs[r];
            const char *label = er->conf->policies[run->policy].label;
            for (int l = 0; l < res->info.n_layers; l++)
                for (int h = 0; h < res->info.n_heads; h++) {
                    int i = l * res->info.n_heads + h;
                    fprintf(f, "%s\t%s\t%d\t%d\t%d\t%.9g\t%.9g\n", er->trace_names[k],
                            label, run->budget, l, h, run->head_recall_mean[i],
                            run->head_recall_min[i]);
                }
        }
    }
    return 0;
}

static int write_retention(FILE *f, const kv_experiment_results *er, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    fprintf(f, "trace\tpolicy\tbudget\tposition\tfraction\n");
    for (int k = 0; k < er->n_traces; k++) {
        const kv_results *res = er->res[k];
        for (int r = 0; r < res->n_runs; r++) {
            const kv_run_result *run = &res->runs[r];
            const char *label = er->conf->policies[run->policy].label;
            for (int j = 0; j < res->info.n_tokens; j++)
                fprintf(f, "%s\t%s\t%d\t%d\t%.9g\n", er->trace_names[k], label, run->budget,
                        j, (double)run->retained[j] / run->n_cache_units);
        }
    }
    return 0;
}

static int write_lifetimes(FILE *f, const kv_experiment_results *er, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    fprintf(f, "trace\tpolicy\tbudget\tlifetime\tcount\n");
    for (int k = 0; k < er->n_traces; k++) {
        const kv_results *res = er->res[k];
        for (int r = 0; r < res->n_runs; r++) {
            const kv_run_result *run = &res->runs[r];
            const char *label = er->conf->policies[run->policy].label;
            for (int s = 0; s <= res->n_steps; s++)
                if (run->lifetimes[s])
                    fprintf(f, "%s\t%s\t%d\t%d\t%lld\n", er->trace_names[k], label,
                            run->budget, s, run->lifetimes[s]);
        }
    }
    return 0;
}

/* The result files, in the order they are written. */
static const struct {
    const char *name;
    int (*write)(FILE *f, const kv_experiment_results *er, char *err, size_t err_len);
} result_files[] = {
    { "summary.tsv", write_summary },
    { "steps.tsv", write_steps },
    { "heads.tsv", write_heads },
    { "retention.tsv", write_retention },
    { "lifetimes.tsv", write_lifetimes },
};

/*
 * All-or-nothing as far as a directory allows: every file is written to its temporary
 * first; only when all of them are complete are they renamed into place, one after the
 * other with interrupts deferred, so a run publishes all its files or none.
 */
int kv_output_write(const char *dir, const kv_experiment_results *er, char *err,
                    size_t err_len)
{
    enum { N_FILES = sizeof result_files / sizeof result_files[0] };
    static out_file o[N_FILES];   /* static: two paths each, large for the stack */
    size_t n = 0;
    int rc = 0;
    errno = 0;
    for (; n < N_FILES && !rc; n++) {
        if (out_open(&o[n], dir, result_files[n].name, err, err_len))
            return discard_all(o, n);
        rc = result_files[n].write(o[n].f, er, err, err_len);
        if (rc) {
            fclose(o[n].f);
            out_discard(&o[n]);
        } else if (out_finish(&o[n], err, err_len))
            rc = 1;
    }
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
    for (int b = 0; b < conf->n_budgets; b++) {
        char head[32];
        snprintf(head, sizeof head, "B=%d recall / peak KV", conf->budgets[b]);
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
