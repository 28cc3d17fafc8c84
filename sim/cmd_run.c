/*
 * cmd_run.c - `kvsim run` (replay an experiment) and `kvsim policies` (list policies).
 */
#include "sim/budget.h"
#include "sim/commands.h"
#include "sim/config.h"
#include "sim/engine.h"
#include "sim/experiment.h"
#include "sim/output.h"
#include "sim/manifest.h"
#include "sim/plot.h"
#include "traces/validate.h"
#include "traces/status.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void run_usage(FILE *f)
{
    fprintf(f,
"usage: kvsim run [CONFIG.ini] [options]\n"
"\n"
"Replays a trace and runs every policy at every budget under the same replay rules,\n"
"then writes the result files (summary.tsv, steps.tsv, heads.tsv, compare.tsv, ...) into\n"
"the output directory, prints a table of mean attention-mass recall and peak KV-cache\n"
"bytes, and renders the figures into DIR/figures/ when gnuplot is installed.\n"
"\n"
"An INI experiment file gives the trace, budgets, output and [policy LABEL] sections\n"
"(see configs/); options given after it override it.\n"
"\n"
"options:\n"
"  -t, --trace FILE[,FILE] kvtrace v1 HDF5 file(s) to replay; every file is replayed\n"
"                          with every policy and budget, rows keep a `trace` column\n"
"  -p, --policies LIST     comma-separated policy names, each labelled by its name\n"
"                          (e.g. window,streamingllm,h2o,snapkv,morphkv; see `kvsim policies`)\n"
"  -b, --budgets LIST      comma-separated budgets: tokens (64), a fraction of each\n"
"                          trace's prompt (0.25p = floor(0.25 P) tokens) or bytes of KV\n"
"                          cache plus policy metadata (4096B, 64KiB, 1MiB), resolved per\n"
"                          trace and policy (e.g. 64,128,256)\n"
"  -s, --set L.P=V         set parameter P of the policy labelled L (or of every policy\n"
"                          of type L) to V, e.g. --set morphkv.window=8; repeatable\n"
"  -o, --output DIR        output directory (created; must be empty unless --force)\n"
"  -f, --force             overwrite result files in a non-empty output directory\n"
"      --seed N            base seed for randomised policies (default 1)\n"
"      --block N           query rows per block while streaming (default 64)\n"
"      --no-plot           do not render the figures (kvsim plot DIR does it later)\n"
"  -q, --quiet             no progress and no table\n"
"  -v, --verbose           HDF5's own error stack with trace errors\n"
"  -h, --help              this help\n"
"\n"
"exit status: 0 success, 1 runtime failure, 2 usage or configuration error\n");
}

/* Applies one --set L.P=V. */
static int apply_set(kv_experiment *ex, const char *arg, char *err, size_t err_len)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", arg);
    char *dot = strchr(buf, '.'), *eq = strchr(buf, '=');
    if (!dot || !eq || eq < dot || dot == buf || eq == dot + 1) {
        snprintf(err, err_len, "--set '%s': expected LABEL.PARAM=VALUE, e.g. "
                 "morphkv.window=8", arg);
        return KV_EUSAGE;
    }
    *dot = '\0';
    *eq = '\0';
    return kv_experiment_set(ex, buf, dot + 1, eq + 1, err, err_len);
}

static int add_policy_list(kv_experiment *ex, const char *list, char *err, size_t err_len)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", list);
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        int rc = kv_experiment_add_policy(ex, tok, tok, err, err_len);
        if (rc)
            return rc;
        n++;
    }
    if (n == 0) {
        snprintf(err, err_len, "--policies: no policy named");
        return KV_EUSAGE;
    }
    return 0;
}

typedef struct {
    int force, quiet, block, no_plot;
    long seed;           /* -1: keep the experiment's */
    const char *policies, *budgets, *trace, *output, *config;
    const char **sets;   /* the --set arguments, borrowed from argv; [argc] allocated */
    int n_sets;
    char **typed;        /* "kvsim", then argv as typed (getopt_long reorders argv), for
                            the manifest; [argc + 1] allocated */
    int n_typed;
} run_options;

/* Collects the options; returns 0, -1 after --help, 2 on a usage error. */
static int parse_run_args(int argc, char **argv, run_options *o, char *err, size_t err_len)
{
    enum { OPT_SEED = 256, OPT_BLOCK, OPT_NO_PLOT };
    static const struct option longopts[] = {
        { "trace", required_argument, 0, 't' },    { "policies", required_argument, 0, 'p' },
        { "budgets", required_argument, 0, 'b' },  { "set", required_argument, 0, 's' },
        { "output", required_argument, 0, 'o' },   { "force", no_argument, 0, 'f' },
        { "seed", required_argument, 0, OPT_SEED }, { "block", required_argument, 0, OPT_BLOCK },
        { "quiet", no_argument, 0, 'q' },          { "help", no_argument, 0, 'h' },
        { "no-plot", no_argument, 0, OPT_NO_PLOT },
        { "verbose", no_argument, 0, 'v' },
        { 0, 0, 0, 0 },
    };
    int c;
    char *end;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "t:p:b:s:o:fqvh", longopts, NULL)) != -1) {
        switch (c) {
        case 't': o->trace = optarg; break;
        case 'p': o->policies = optarg; break;
        case 'b': o->budgets = optarg; break;
        case 's': o->sets[o->n_sets++] = optarg; break;
        case 'o': o->output = optarg; break;
        case 'f': o->force = 1; break;
        case 'q': o->quiet = 1; break;
        case OPT_NO_PLOT: o->no_plot = 1; break;
        case 'v': kv_trace_set_verbose(1); break;
        case OPT_SEED:
            o->seed = strtol(optarg, &end, 10);
            if (*end || end == optarg || o->seed < 0) {
                snprintf(err, err_len, "--seed must be a whole number >= 0, got '%s'", optarg);
                return KV_EUSAGE;
            }
            break;
        case OPT_BLOCK:
            o->block = (int)strtol(optarg, &end, 10);
            if (*end || o->block < 1 || o->block > 4096) {
                snprintf(err, err_len, "--block must be in 1..4096, got '%s'", optarg);
                return KV_EUSAGE;
            }
            break;
        case 'h': run_usage(stdout); return -1;
        default:
            snprintf(err, err_len, "unknown option or missing value in '%s' (see kvsim run "
                     "--help)", argv[optind - 1]);
            return KV_EUSAGE;
        }
    }
    if (optind < argc)
        o->config = argv[optind++];
    if (optind < argc) {
        snprintf(err, err_len, "unexpected argument '%s' (one experiment file at most)",
                 argv[optind]);
        return KV_EUSAGE;
    }
    return 0;
}

/* The experiment: the config file first, then the options over it. */
static int build_experiment(const run_options *o, kv_experiment *ex, char *err, size_t err_len)
{
    int rc = o->config ? kv_config_load(o->config, ex, err, err_len) : 0;
    if (rc == 0 && o->policies) {   /* --policies replaces the file's policies */
        free(ex->policies);
        ex->policies = NULL;
        ex->n_policies = 0;
        rc = add_policy_list(ex, o->policies, err, err_len);
    }
    if (rc == 0 && o->budgets)
        rc = kv_experiment_set_budgets(ex, o->budgets, err, err_len);
    if (rc == 0 && o->trace)
        rc = kv_experiment_set_traces(ex, o->trace, err, err_len);
    if (rc == 0 && o->output)
        snprintf(ex->output, sizeof ex->output, "%s", o->output);
    for (int i = 0; rc == 0 && i < o->n_sets; i++)
        rc = apply_set(ex, o->sets[i], err, err_len);
    if (rc == 0 && o->seed >= 0)
        ex->seed = (unsigned long)o->seed;
    return rc;
}

static int check_complete(const kv_experiment *ex, char *err, size_t err_len)
{
    if (!ex->n_traces)
        snprintf(err, err_len, "no trace given (--trace FILE or trace = in [experiment])");
    else if (!ex->n_budgets)
        snprintf(err, err_len, "no budgets given (--budgets 64,128 or budgets = ...)");
    else if (!ex->n_policies)
        snprintf(err, err_len, "no policies given (--policies h2o,morphkv or [policy L])");
    else if (!ex->output[0])
        snprintf(err, err_len, "no output directory given (-o DIR or output = ...)");
    else
        return 0;
    return KV_EUSAGE;
}

/* The figures, when gnuplot is there and --no-plot was not given. A failure to render is
 * a runtime failure (1); the result files are already in place. */
static int plot_results(const kv_experiment *ex, const run_options *o, char *err,
                        size_t err_len)
{
    char figures[KV_PATH_LEN + 16];
    struct stat st;
    snprintf(figures, sizeof figures, "%s/figures", ex->output);
    int stale = stat(figures, &st) == 0 && S_ISDIR(st.st_mode);
    if (o->no_plot || !kv_plot_available()) {
        if (stale)   /* --force over an earlier run: its figures no longer match */
            fprintf(stderr, "kvsim run: note: %s/ holds figures of an earlier run; `kvsim "
                    "plot %s` renders them for these results\n", figures, ex->output);
    }
    if (o->no_plot)
        return 0;
    if (!kv_plot_available()) {
        if (!o->quiet)
            printf("figures: skipped, gnuplot is not installed (install gnuplot-nox, then "
                   "run kvsim plot %s)\n", ex->output);
        return 0;
    }
    kv_plot_options po = { .quiet = o->quiet, .style = ex->style[0] ? ex->style : NULL };
    char where[KV_PATH_LEN + 64];
    if (kv_plot_render(ex->output, &po, where, sizeof where, err, err_len))
        return KV_ERUNTIME;
    if (!o->quiet)
        printf("figures: %s/ (%s)\n", where, KV_PLOT_FIGURE_LIST);
    return 0;
}

/* What a run allocates once the experiment is known. */
typedef struct {
    int *tokens;          /* [n_traces * n_policies * n_budgets] resolved budgets */
    kv_results **res;     /* [n_traces] */
    const char **names;   /* [n_traces] the `trace` column */
    const char **specs;   /* [n_budgets] the `budget_spec` column */
} run_buffers;

static int buffers_alloc(run_buffers *b, const kv_experiment *ex, char *err, size_t err_len)
{
    size_t nt = (size_t)ex->n_traces;
    b->tokens = malloc(nt * ex->n_policies * ex->n_budgets * sizeof *b->tokens);
    b->res = calloc(nt, sizeof *b->res);
    b->names = malloc(nt * sizeof *b->names);
    b->specs = malloc((size_t)ex->n_budgets * sizeof *b->specs);
    if (!b->tokens || !b->res || !b->names || !b->specs) {
        snprintf(err, err_len, "out of memory");
        return KV_ENOMEM;
    }
    for (int k = 0; k < ex->n_traces; k++)
        b->names[k] = kv_trace_display_name(ex->traces[k]);
    for (int i = 0; i < ex->n_budgets; i++)
        b->specs[i] = ex->budgets[i].text;
    return 0;
}

static void buffers_free(run_buffers *b, int n_traces)
{
    for (int k = 0; b->res && k < n_traces; k++)
        kv_results_free(b->res[k]);
    free(b->tokens);
    free(b->res);
    free(b->names);
    free(b->specs);
}

/* The in-process driver's check: every trace's structure and q/k/v values, before any
 * replay (traces/validate.h). */
static int precheck_here(void *ctx, const kv_experiment *ex, char *err, size_t err_len)
{
    (void)ctx;
    for (int k = 0; k < ex->n_traces; k++)
        if (kv_trace_precheck(ex->traces[k], err, err_len))
            return KV_ERUNTIME;
    return 0;
}

static int resolve_here(void *ctx, const kv_experiment *ex, const kv_experiment_opts *opts,
                        int *tokens, char *err, size_t err_len)
{
    (void)ctx, (void)opts;
    return kv_experiment_resolve_budgets(ex, tokens, err, err_len);
}

static int replay_here(void *ctx, const kv_experiment *ex, const int *tokens,
                       const kv_experiment_opts *opts, kv_results **res, char *err,
                       size_t err_len)
{
    (void)ctx;
    return kv_experiment_replay(ex, tokens, opts, res, err, err_len);
}

static const kv_experiment_driver in_process = {
    .resolve_budgets = resolve_here, .precheck = precheck_here, .replay = replay_here,
};

/* Resolves, checks, replays, writes and shows an experiment that is complete. */
static int run_experiment(const kv_experiment *ex, const run_options *o, run_buffers *b,
                          const kv_experiment_driver *d, char *err, size_t err_len)
{
    kv_experiment_opts eo = { .block = o->block, .progress = !o->quiet };
    int rc = d->resolve_budgets(d->ctx, ex, &eo, b->tokens, err, err_len);
    kv_replay_conf conf = { .policies = ex->policies, .n_policies = ex->n_policies,
                            .n_budgets = ex->n_budgets };
    kv_experiment_results er = { .conf = &conf, .n_traces = ex->n_traces,
                                 .res = (const kv_results *const *)b->res,
                                 .trace_names = b->names, .budget_specs = b->specs };
    if (rc == 0)
        rc = d->precheck(d->ctx, ex, err, err_len);
    if (rc == 0)
        rc = kv_output_prepare(ex->output, o->force, err, err_len);
    if (rc == 0)
        rc = d->replay(d->ctx, ex, b->tokens, &eo, b->res, err, err_len);
    if (rc == 0 && kv_output_write(ex->output, &er, err, err_len))
        rc = KV_ERUNTIME;
    if (rc == 0 && kv_manifest_write(ex->output, ex, b->tokens, o->n_typed, o->typed, err,
                                     err_len))
        rc = KV_ERUNTIME;
    if (rc == 0 && !o->quiet) {
        if (kv_output_table(stdout, &er, err, err_len))
            rc = KV_ERUNTIME;
        else
            printf("results: %s/ (summary, steps, heads, compare, retention, retention_map, "
                   "lifetimes, recall_hist .tsv; manifest.json)\n", ex->output);
    }
    if (rc == 0)
        rc = plot_results(ex, o, err, err_len);
    return rc;
}

int kv_cmd_run(int argc, char **argv)
{
    return kv_cmd_run_with(argc, argv, NULL);
}

int kv_run_load_experiment(int argc, char **argv, kv_experiment *ex, char *err,
                           size_t err_len)
{
    run_options o = { .seed = -1, .sets = malloc((size_t)argc * sizeof *o.sets) };
    int rc = o.sets ? parse_run_args(argc, argv, &o, err, err_len) : KV_ENOMEM;
    if (!o.sets)
        snprintf(err, err_len, "out of memory");
    if (rc == 0)
        rc = build_experiment(&o, ex, err, err_len);
    if (rc == 0)
        rc = check_complete(ex, err, err_len);
    free(o.sets);
    return rc;
}

int kv_cmd_run_with(int argc, char **argv, const kv_experiment_driver *driver)
{
    char err[1024] = "";
    kv_experiment ex;
    kv_experiment_init(&ex);
    run_options o = { .seed = -1, .sets = malloc((size_t)argc * sizeof *o.sets),
                      .typed = malloc((size_t)(argc + 1) * sizeof *o.typed) };
    run_buffers b = { 0 };
    if (o.typed) {
        o.typed[o.n_typed++] = (char *)(driver && driver->program ? driver->program : "kvsim");
        for (int i = 0; i < argc; i++)   /* argv[0] is "run" */
            o.typed[o.n_typed++] = argv[i];
    }
    int rc = o.sets && o.typed ? parse_run_args(argc, argv, &o, err, sizeof err) : KV_ENOMEM;
    if (!o.sets || !o.typed)
        snprintf(err, sizeof err, "out of memory");
    if (rc == 0)
        rc = build_experiment(&o, &ex, err, sizeof err);
    if (rc == 0)
        rc = check_complete(&ex, err, sizeof err);
    if (rc == 0)
        rc = buffers_alloc(&b, &ex, err, sizeof err);
    if (rc == 0)
        rc = run_experiment(&ex, &o, &b, driver ? driver : &in_process, err, sizeof err);
    if (rc > 0)
        fprintf(stderr, "kvsim run: %s\n", err);
    buffers_free(&b, ex.n_traces);
    free(o.sets);
    free(o.typed);
    kv_experiment_free(&ex);
    return rc < 0 ? 0 : kv_exit_status(rc);
}

/* ----------------------------------------------------------- policies */

static void print_param(const kv_param_spec *ps)
{
    char range[96];
    if (ps->type == KV_PARAM_CHOICE)
        snprintf(range, sizeof range, "%s", ps->choices);
    else if (ps->type == KV_PARAM_INT)
        snprintf(range, sizeof range, "integer %.0f..%.0f", ps->min, ps->max);
    else
        snprintf(range, sizeof range, "real %g..%g", ps->min, ps->max);
    printf("    %-12s default %-6s (%s)\n                 %s\n", ps->name, ps->default_text,
           range, ps->help);
}

int kv_cmd_policies(int argc, char **argv)
{
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("usage: kvsim policies\n\nLists every eviction policy with its parameters, "
               "defaults and source.\n");
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr, "kvsim policies: unexpected argument '%s'\n", argv[1]);
        return KV_EUSAGE;
    }
    for (int i = 0; kv_policy_registry[i]; i++) {
        const kv_policy_ops *ops = kv_policy_registry[i];
        printf("%s: %s\n  source: %s\n", ops->name, ops->summary, ops->citation);
        if (ops->n_params == 0)
            printf("  (no parameters)\n");
        for (int p = 0; p < ops->n_params; p++)
            print_param(&ops->params[p]);
        printf("\n");
    }
    printf("every policy also takes:\n");
    for (int p = 0; p < kv_n_engine_params; p++)
        print_param(&kv_engine_params[p]);
    return 0;
}
