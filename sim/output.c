/*
 * output.c - TSV result files and the console table (see output.h).
 */
#include "sim/output.h"

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
    o->f = fopen(o->tmp, "w");
    if (!o->f) {
        snprintf(err, err_len, "%s: cannot write: %s", o->tmp, strerror(errno));
        return 1;
    }
    return 0;
}

/* Closes, checks every write reached the disk, renames into place; removes the
 * temporary on any failure. */
static int out_close(out_file *o, char *err, size_t err_len)
{
    int bad = ferror(o->f);
    if (fflush(o->f) != 0 || fsync(fileno(o->f)) != 0)
        bad = 1;
    if (fclose(o->f) != 0)
        bad = 1;
    if (!bad && rename(o->tmp, o->final) == 0)
        return 0;
    snprintf(err, err_len, "%s: writing failed: %s", o->final, strerror(errno ? errno : EIO));
    unlink(o->tmp);
    return 1;
}

static int write_summary(FILE *f, const kv_results *res, const kv_replay_conf *conf,
                         char *err, size_t err_len)
{
    fprintf(f, "policy\ttype\tbudget\trecall_mean\trecall_p05\trecall_min\tkv_tokens_peak\t"
               "kv_bytes_peak\tkv_bytes_mean\tmeta_bytes_peak\ttopk1_recall\ttopk8_recall\n");
    for (int r = 0; r < res->n_runs; r++) {
        const kv_policy_conf *pc = &conf->policies[res->runs[r].policy];
        kv_run_summary s;
        if (kv_run_summarise(res, r, &s, err, err_len))
            return 1;
        fprintf(f, "%s\t%s\t%d\t%.9g\t%.9g\t%.9g\t%lld\t%.0f\t%.1f\t%.0f\t%.9g\t%.9g\n",
                pc->label, pc->ops->name, res->runs[r].budget, s.recall_mean, s.recall_p05,
                s.recall_min, s.kv_tokens_peak, s.kv_bytes_peak, s.kv_bytes_mean,
                s.meta_bytes_peak, s.topk1_recall, s.topk8_recall);
    }
    return 0;
}

static void write_steps(FILE *f, const kv_results *res, const kv_replay_conf *conf)
{
    fprintf(f, "policy\tbudget\tstep\trecall\tkv_tokens\tkv_bytes\tmeta_bytes\ttopk1_recall\t"
               "topk8_recall\n");
    for (int r = 0; r < res->n_runs; r++) {
        const kv_run_result *run = &res->runs[r];
        const char *label = conf->policies[run->policy].label;
        for (int s = 0; s < res->n_steps; s++)
            fprintf(f, "%s\t%d\t%d\t%.9g\t%lld\t%.0f\t%.0f\t%.9g\t%.9g\n", label,
                    run->budget, res->info.prefill_len + s, run->step_recall[s],
                    run->step_kv_tokens[s],
                    kv_tokens_to_bytes(&res->info, run->step_kv_tokens[s]),
                    run->step_meta_bytes[s], run->step_topk1[s], run->step_topk8[s]);
    }
}

static void write_heads(FILE *f, const kv_results *res, const kv_replay_conf *conf)
{
    fprintf(f, "policy\tbudget\tlayer\thead\trecall_mean\trecall_min\n");
    for (int r = 0; r < res->n_runs; r++) {
        const kv_run_result *run = &res->runs[r];
        const char *label = conf->policies[run->policy].label;
        for (int l = 0; l < res->info.n_layers; l++)
            for (int h = 0; h < res->info.n_heads; h++) {
                int i = l * res->info.n_heads + h;
                fprintf(f, "%s\t%d\t%d\t%d\t%.9g\t%.9g\n", label, run->budget, l, h,
                        run->head_recall_mean[i], run->head_recall_min[i]);
            }
    }
}

static void write_retention(FILE *f, const kv_results *res, const kv_replay_conf *conf)
{
    fprintf(f, "policy\tbudget\tposition\tfraction\n");
    for (int r = 0; r < res->n_runs; r++) {
        const kv_run_result *run = &res->runs[r];
        const char *label = conf->policies[run->policy].label;
        for (int j = 0; j < res->info.n_tokens; j++)
            fprintf(f, "%s\t%d\t%d\t%.9g\n", label, run->budget, j,
                    (double)run->retained[j] / run->n_cache_units);
    }
}

static void write_lifetimes(FILE *f, const kv_results *res, const kv_replay_conf *conf)
{
    fprintf(f, "policy\tbudget\tlifetime\tcount\n");
    for (int r = 0; r < res->n_runs; r++) {
        const kv_run_result *run = &res->runs[r];
        const char *label = conf->policies[run->policy].label;
        for (int s = 0; s <= res->n_steps; s++)
            if (run->lifetimes[s])
                fprintf(f, "%s\t%d\t%d\t%lld\n", label, run->budget, s, run->lifetimes[s]);
    }
}

int kv_output_write(const char *dir, const kv_results *res, const kv_replay_conf *conf,
                    char *err, size_t err_len)
{
    static const char *names[] = { "summary.tsv", "steps.tsv", "heads.tsv", "retention.tsv",
                                   "lifetimes.tsv" };
    for (int i = 0; i < 5; i++) {
        out_file o;
        if (out_open(&o, dir, names[i], err, err_len))
            return 1;
        int rc = 0;
        if (i == 0)
            rc = write_summary(o.f, res, conf, err, err_len);
        else if (i == 1)
            write_steps(o.f, res, conf);
        else if (i == 2)
            write_heads(o.f, res, conf);
        else if (i == 3)
            write_retention(o.f, res, conf);
        else
            write_lifetimes(o.f, res, conf);
        if (rc) {
            fclose(o.f);
            unlink(o.tmp);
            return 1;
        }
        if (out_close(&o, err, err_len))
            return 1;
    }
    return 0;
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

int kv_output_table(FILE *f, const kv_results *res, const kv_replay_conf *conf,
                    char *err, size_t err_len)
{
    int width = 8;
    for (int p = 0; p < conf->n_policies; p++) {
        int w = (int)strlen(conf->policies[p].label);
        width = w > width ? w : width;
    }
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
            kv_run_summary s;
            if (kv_run_summarise(res, p * conf->n_budgets + b, &s, err, err_len))
                return 1;
            char bytes[32], cell[64];
            format_bytes(s.kv_bytes_peak, bytes, sizeof bytes);
            snprintf(cell, sizeof cell, "%.4f / %s", s.recall_mean, bytes);
            fprintf(f, "  %24s", cell);
        }
        fputc('\n', f);
    }
    return 0;
}
