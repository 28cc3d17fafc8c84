/*
 * cmd_project.c - `kvsim project EXPERIMENT.ini`: every policy's memory of the experiment,
 * per decode step, charged at the geometry of named models (sim/geometry.h).
 *
 * For each trace, budget and policy of the experiment, and each model, the policy's
 * per-step KV and metadata bytes come from the dry run of sim/budget.h
 * (kv_budget_footprint_steps) at the trace's T and P and the model's layers, heads, KV
 * heads, head size and 2-byte elements: the token counts the replay of that trace has
 * (test_geometry checks it step by step), in the model's bytes. kv_granularity =
 * query_head charges one cache per query head. The results go into the experiment's
 * output directory (or -o DIR) as projection.tsv and projection_peaks.tsv, written to
 * temporaries and renamed into place; then, when DIR holds a run's results, the figures
 * are rendered again, the memory_models figure with them (sim/plot.h).
 */
#include "sim/budget.h"
#include "sim/commands.h"
#include "sim/config.h"
#include "sim/geometry.h"
#include "sim/plot.h"
#include "traces/status.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_MODELS 8
#define MiB 1048576.0

static void project_usage(FILE *f)
{
    int n;
    const kv_model_geometry *g = kv_geometries(&n);
    fprintf(f,
"usage: kvsim project EXPERIMENT.ini [options]\n"
"Charges each policy's per-step token counts of the experiment (its traces' lengths,\n"
"budgets and policies) at the geometry of named models, and writes DIR/projection.tsv\n"
"(one row per decode step) and DIR/projection_peaks.tsv (peaks), DIR being the\n"
"experiment's output. When DIR holds the results of `kvsim run` on the same file, the\n"
"figures are rendered again, memory_models among them.\n"
"\n"
"  -g, --geometry LIST   comma-separated model geometries (default: all):\n");
    for (int i = 0; i < n; i++)
        fprintf(f, "                          %-16s %d layers, %d heads, %d KV heads, head "
                "size %d (%s)\n", g[i].name, g[i].n_layers, g[i].n_heads, g[i].n_kv_heads,
                g[i].head_dim, g[i].model);
    fprintf(f,
"  -o, --output DIR      where the files go (default: the experiment's output)\n"
"      --format FMT      figure format: png (default), svg or pdf\n"
"      --style STYLE     screen or paper (default: the experiment's style)\n"
"      --no-plot         write the TSV files only\n"
"  -q, --quiet           no table on stdout\n"
"  -h, --help            this help\n"
"\n"
"Bytes: KV = tokens per cache x caches x 2 (K and V) x head_dim x 2 bytes, caches =\n"
"layers x KV heads (kv_granularity = kv_head) or layers x heads (query_head); metadata\n"
"as the policy's own rule gives it for that model's GQA group size.\n"
"exit status: 0 success, 1 runtime failure, 2 usage error.\n");
}

typedef struct {
    const kv_model_geometry *models[MAX_MODELS];
    int n_models;
} model_list;

static int parse_models(const char *text, model_list *ml, char *err, size_t err_len)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", text);
    ml->n_models = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        size_t len = strlen(tok);
        while (len && tok[len - 1] == ' ')
            tok[--len] = '\0';
        const kv_model_geometry *g = kv_geometry_find(tok, err, err_len);
        if (!g)
            return KV_EUSAGE;
        if (ml->n_models == MAX_MODELS) {
            snprintf(err, err_len, "--geometry: at most %d models", MAX_MODELS);
            return KV_EUSAGE;
        }
        ml->models[ml->n_models++] = g;
    }
    if (ml->n_models == 0) {
        snprintf(err, err_len, "--geometry needs at least one model name");
        return KV_EUSAGE;
    }
    return 0;
}

/* The file name of a trace path (the `trace` column of every result file). */
static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

typedef struct {
    FILE *steps, *peaks;
    char steps_tmp[KV_PATH_LEN + 32], peaks_tmp[KV_PATH_LEN + 32];
} out_files;

static const char *granularity_name(const kv_policy_conf *pc)
{
    return pc->granularity == KV_GRAN_QUERY_HEAD ? "query_head" : "kv_head";
}

/* One (trace, budget, policy): every model's per-step rows and peak row. */
static int project_one(const kv_experiment *ex, const kv_trace_info *in, const char *trace,
                       int b, int p, const model_list *ml, out_files *of, double *peak,
                       char *err, size_t err_len)
{
    const kv_policy_conf *pc = &ex->policies[p];
    int tokens;
    char why[400];
    int rc = kv_budget_resolve(&ex->budgets[b], pc, in, &tokens, why, sizeof why);
    if (rc) {
        snprintf(err, err_len, "%s: %s", trace, why);
        return rc;
    }
    int D = in->n_tokens - in->prefill_len;
    double *kv = malloc((size_t)D * sizeof *kv), *meta = malloc((size_t)D * sizeof *meta);
    if (!kv || !meta) {
        free(kv);
        free(meta);
        snprintf(err, err_len, "out of memory");
        return KV_ENOMEM;
    }
    for (int m = 0; m < ml->n_models && !rc; m++) {
        kv_trace_info at;
        kv_geometry_apply(ml->models[m], in, &at);
        rc = kv_budget_footprint_steps(pc, &at, tokens, kv, meta, err, err_len);
        double kv_peak = 0, meta_peak = 0, total_peak = 0;
        for (int i = 0; i < D && !rc; i++) {
            fprintf(of->steps, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%d\t%d\t%.0f\t%.0f\n", trace,
                    pc->label, tokens, ex->budgets[b].text, pc->ops->name,
                    granularity_name(pc), ml->models[m]->name, in->prefill_len + i, i + 1,
                    kv[i], meta[i]);
            kv_peak = kv[i] > kv_peak ? kv[i] : kv_peak;
            meta_peak = meta[i] > meta_peak ? meta[i] : meta_peak;
            total_peak = kv[i] + meta[i] > total_peak ? kv[i] + meta[i] : total_peak;
        }
        if (!rc) {
            fprintf(of->peaks, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%.0f\t%.0f\t%.0f\n", trace,
                    pc->label, tokens, ex->budgets[b].text, pc->ops->name,
                    granularity_name(pc), ml->models[m]->name, kv_peak, meta_peak,
                    total_peak);
            peak[m] = total_peak;
        }
    }
    free(kv);
    free(meta);
    return rc;
}

static int open_out(const char *dir, out_files *of, char *err, size_t err_len)
{
    snprintf(of->steps_tmp, sizeof of->steps_tmp, "%s/.projection.tsv.tmp", dir);
    snprintf(of->peaks_tmp, sizeof of->peaks_tmp, "%s/.projection_peaks.tsv.tmp", dir);
    of->steps = fopen(of->steps_tmp, "w");
    of->peaks = of->steps ? fopen(of->peaks_tmp, "w") : NULL;
    if (!of->steps || !of->peaks) {
        snprintf(err, err_len, "%s: cannot write: %s", of->steps ? of->peaks_tmp :
                 of->steps_tmp, strerror(errno));
        return KV_EIO;
    }
    fprintf(of->steps, "trace\tpolicy\tbudget\tbudget_spec\ttype\tkv_granularity\tmodel\t"
            "step\tdecode_len\tkv_bytes\tmeta_bytes\n");
    fprintf(of->peaks, "trace\tpolicy\tbudget\tbudget_spec\ttype\tkv_granularity\tmodel\t"
            "kv_bytes_peak\tmeta_bytes_peak\ttotal_bytes_peak\n");
    return 0;
}

/* Closes both temporaries; renames them into place when ok. */
static int close_out(const char *dir, out_files *of, int ok, char *err, size_t err_len)
{
    int bad = 0;
    if (of->steps && fclose(of->steps) != 0)
        bad = 1;
    if (of->peaks && fclose(of->peaks) != 0)
        bad = 1;
    if (!ok || bad) {
        unlink(of->steps_tmp);
        unlink(of->peaks_tmp);
        if (ok) {
            snprintf(err, err_len, "%s: cannot write: %s", dir, strerror(errno));
            return KV_EIO;
        }
        return 0;
    }
    char to[KV_PATH_LEN + 32];
    snprintf(to, sizeof to, "%s/projection.tsv", dir);
    int rc = rename(of->steps_tmp, to);
    snprintf(to, sizeof to, "%s/projection_peaks.tsv", dir);
    if (!rc)
        rc = rename(of->peaks_tmp, to);
    if (rc) {
        snprintf(err, err_len, "%s: cannot put the files in place: %s", to, strerror(errno));
        return KV_EIO;
    }
    return 0;
}

/* The table of peaks on the first trace, per budget and model, with every policy's
 * saving against every other at that model. */
static void print_table(const kv_experiment *ex, const model_list *ml, const double *peak,
                        const char *trace)
{
    int np = ex->n_policies;
    printf("peak KV + metadata bytes per decode step, projected (%s)\n", trace);
    for (int b = 0; b < ex->n_budgets; b++)
        for (int m = 0; m < ml->n_models; m++) {
            printf("\n%s, budget %s:\n", ml->models[m]->name, ex->budgets[b].text);
            for (int p = 0; p < np; p++) {
                const kv_policy_conf *pc = &ex->policies[p];
                printf("  %-16s %-10s %10.2f MiB", pc->label, granularity_name(pc),
                       peak[((size_t)b * np + p) * ml->n_models + m] / MiB);
                for (int q = 0; q < np; q++)
                    if (strcmp(ex->policies[q].ops->name, pc->ops->name) != 0 &&
                        strcmp(pc->ops->name, "morphkv") == 0)
                        printf("   %+.1f%% vs %s", 100.0 * (1.0 -
                               peak[((size_t)b * np + p) * ml->n_models + m] /
                               peak[((size_t)b * np + q) * ml->n_models + m]),
                               ex->policies[q].label);
                printf("\n");
            }
        }
    printf("\n(+x%% vs Y: a saving of x%% of Y's peak; negative: more memory than Y)\n");
}

static int has_results(const char *dir)
{
    char path[KV_PATH_LEN + 32];
    snprintf(path, sizeof path, "%s/summary.tsv", dir);
    return access(path, R_OK) == 0;
}

int kv_cmd_project(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "geometry", required_argument, NULL, 'g' }, { "output", required_argument, NULL, 'o' },
        { "format", required_argument, NULL, 'F' }, { "style", required_argument, NULL, 'S' },
        { "no-plot", no_argument, NULL, 'N' }, { "quiet", no_argument, NULL, 'q' },
        { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
    };
    char err[2 * KV_PATH_LEN + 512] = "";
    const char *geometry = NULL, *output = NULL, *format = NULL, *style = NULL;
    int no_plot = 0, quiet = 0, opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "g:o:qh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'g': geometry = optarg; break;
        case 'o': output = optarg; break;
        case 'F': format = optarg; break;
        case 'S': style = optarg; break;
        case 'N': no_plot = 1; break;
        case 'q': quiet = 1; break;
        case 'h': project_usage(stdout); return 0;
        default: project_usage(stderr); return KV_EUSAGE;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "kvsim project: give one experiment file (kvsim project --help)\n");
        return KV_EUSAGE;
    }
    model_list ml = { .n_models = 0 };
    if (geometry) {
        if (parse_models(geometry, &ml, err, sizeof err)) {
            fprintf(stderr, "kvsim project: %s\n", err);
            return KV_EUSAGE;
        }
    } else {
        const kv_model_geometry *g = kv_geometries(&ml.n_models);
        for (int i = 0; i < ml.n_models; i++)
            ml.models[i] = &g[i];
    }
    kv_experiment ex;
    kv_experiment_init(&ex);
    int rc = kv_config_load(argv[optind], &ex, err, sizeof err);
    if (!rc && (ex.n_traces == 0 || ex.n_budgets == 0 || ex.n_policies == 0)) {
        snprintf(err, sizeof err, "%s: the experiment needs traces, budgets and policies",
                 argv[optind]);
        rc = KV_EUSAGE;
    }
    const char *dir = output ? output : ex.output;
    if (!rc && mkdir(dir, 0777) != 0 && errno != EEXIST) {
        snprintf(err, sizeof err, "%s: cannot create: %s", dir, strerror(errno));
        rc = KV_EIO;
    }
    out_files of = { 0 };
    if (!rc)
        rc = open_out(dir, &of, err, sizeof err);
    size_t n_peak = (size_t)ex.n_budgets * ex.n_policies * ml.n_models;
    double *peak = rc ? NULL : calloc(n_peak, sizeof *peak);
    if (!rc && !peak) {
        snprintf(err, sizeof err, "out of memory");
        rc = KV_ENOMEM;
    }
    for (int t = 0; !rc && t < ex.n_traces; t++) {
        kv_trace *tr;
        rc = kv_trace_open(ex.traces[t], &tr, err, sizeof err);
        if (rc)
            break;
        const kv_trace_info *in = kv_trace_get_info(tr);
        for (int b = 0; !rc && b < ex.n_budgets; b++)
            for (int p = 0; !rc && p < ex.n_policies; p++) {
                double first[MAX_MODELS];
                rc = project_one(&ex, in, base_name(ex.traces[t]), b, p, &ml, &of, first,
                                 err, sizeof err);
                if (!rc && t == 0)
                    memcpy(&peak[((size_t)b * ex.n_policies + p) * ml.n_models], first,
                           (size_t)ml.n_models * sizeof *first);
            }
        kv_trace_close(tr);
    }
    int rc_close = of.steps ? close_out(dir, &of, rc == 0, err, sizeof err) : 0;
    rc = rc ? rc : rc_close;
    if (!rc && !quiet)
        print_table(&ex, &ml, peak, base_name(ex.traces[0]));
    if (!rc && !no_plot) {
        if (!has_results(dir)) {
            if (!quiet)
                printf("\n%s holds no results of `kvsim run`: run it on %s for the "
                       "memory_models figure\n", dir, argv[optind]);
        } else if (kv_plot_available()) {
            kv_plot_options po = { .quiet = quiet, .format = format,
                                   .style = style ? style : (ex.style[0] ? ex.style : NULL) };
            char where[KV_PATH_LEN + 16];
            rc = kv_plot_render(dir, &po, where, sizeof where, err, sizeof err);
            if (!rc && !quiet)
                printf("\nfigures in %s (memory_models.%s: the projection)\n", where,
                       format ? format : "png");
        } else if (!quiet) {
            printf("\ngnuplot is not installed: no figures\n");
        }
    }
    free(peak);
    kv_experiment_free(&ex);
    if (rc)
        fprintf(stderr, "kvsim project: %s\n", err);
    return rc;
}
