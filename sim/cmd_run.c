/*
 * cmd_run.c - `kvsim run` (replay an experiment) and `kvsim policies` (list policies).
 */
#include "sim/budget.h"
#include "sim/closedloop.h"
#include "sim/commands.h"
#include "sim/config.h"
#include "sim/engine.h"
#include "sim/experiment.h"
#include "sim/output.h"
#include "sim/manifest.h"
#include "sim/plot.h"
#include "sim/publish.h"
#include "traces/trace_text.h"
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
"then writes the result files (summary.tsv, steps.tsv, heads.tsv, compare.tsv, ...) and\n"
"manifest.json (how they were made) into the output directory, prints a table of mean\n"
"attention-mass recall and peak KV-cache + metadata bytes, and renders the figures into\n"
"DIR/figures/ when gnuplot is installed.\n"
"\n"
"An INI experiment file gives the trace, budgets, output, the figures' style (style =\n"
"screen or paper, as kvsim plot --style) and [policy LABEL] sections (see configs/);\n"
"options given after it override it.\n"
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
"      --seed N            base seed for randomised policies, 0..2^64-1 (default 1)\n"
"      --block N           query rows per block while streaming (default 64)\n"
"  -m, --model FILE[,FILE] also run every trace closed-loop with the checkpoint it was\n"
"                          captured from (its checkpoint_sha256): the model attends\n"
"                          through each policy's caches; adds kl, nll, top1, ppl columns\n"
"      --dump-sets DIR     with --model: write every closed-loop step's A_t to\n"
"                          DIR/TRACE.sets (for tests/ref_closedloop.py's check)\n"
"      --no-plot           do not render the figures (kvsim plot DIR does it later)\n"
"      --topk              measure the top-k recall metrics (topk = yes); without it\n"
"                          (or with --no-topk) their columns hold nan: they rank\n"
"                          every key of every row, which costs a pass over each row\n"
"                          and rules out the sparse replay\n"
"      --dense             replay the full rows of every step even when the trace\n"
"                          stores its log-normalisers (kvsim index); by default a qk\n"
"                          trace that has them is replayed sparsely when no policy\n"
"                          reads whole rows (oracle, lookahead), without --topk and,\n"
"                          for a trace with v, with its stored full-cache outputs\n"
"                          (o_full, which the output error compares against)\n"
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
    int force, quiet, block, no_plot, dense;
    int topk;            /* -1: the experiment's; 1: --topk; 0: --no-topk */
    const char *seed;    /* NULL: keep the experiment's */
    const char *policies, *budgets, *trace, *output, *config, *model, *dump_sets;
    const char **sets;   /* the --set arguments, borrowed from argv; [argc] allocated */
    int n_sets;
    char **typed;        /* "kvsim", then argv as typed (getopt_long reorders argv), for
                            the manifest; [argc + 1] allocated */
    int n_typed;
} run_options;

/* Collects the options; returns 0, -1 after --help, 2 on a usage error. */
static int parse_run_args(int argc, char **argv, run_options *o, char *err, size_t err_len)
{
    enum { OPT_SEED = 256, OPT_BLOCK, OPT_NO_PLOT, OPT_DUMP_SETS, OPT_TOPK, OPT_NO_TOPK,
           OPT_DENSE };
    static const struct option longopts[] = {
        { "trace", required_argument, 0, 't' },    { "policies", required_argument, 0, 'p' },
        { "budgets", required_argument, 0, 'b' },  { "set", required_argument, 0, 's' },
        { "output", required_argument, 0, 'o' },   { "force", no_argument, 0, 'f' },
        { "seed", required_argument, 0, OPT_SEED }, { "block", required_argument, 0, OPT_BLOCK },
        { "quiet", no_argument, 0, 'q' },          { "help", no_argument, 0, 'h' },
        { "no-plot", no_argument, 0, OPT_NO_PLOT },
        { "model", required_argument, 0, 'm' },
        { "dump-sets", required_argument, 0, OPT_DUMP_SETS },
        { "topk", no_argument, 0, OPT_TOPK },       { "no-topk", no_argument, 0, OPT_NO_TOPK },
        { "dense", no_argument, 0, OPT_DENSE },
        { "verbose", no_argument, 0, 'v' },
        { 0, 0, 0, 0 },
    };
    int c;
    char *end;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "t:p:b:s:o:m:fqvh", longopts, NULL)) != -1) {
        switch (c) {
        case 't': o->trace = optarg; break;
        case 'p': o->policies = optarg; break;
        case 'b': o->budgets = optarg; break;
        case 's': o->sets[o->n_sets++] = optarg; break;
        case 'o': o->output = optarg; break;
        case 'm': o->model = optarg; break;
        case OPT_DUMP_SETS: o->dump_sets = optarg; break;
        case 'f': o->force = 1; break;
        case 'q': o->quiet = 1; break;
        case OPT_NO_PLOT: o->no_plot = 1; break;
        case OPT_TOPK: o->topk = 1; break;
        case OPT_NO_TOPK: o->topk = 0; break;
        case OPT_DENSE: o->dense = 1; break;
        case 'v': kv_trace_set_verbose(1); break;
        case OPT_SEED: o->seed = optarg; break;   /* checked by kv_experiment_set_seed */
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
    if (rc == 0 && o->model)
        snprintf(ex->model, sizeof ex->model, "%s", o->model);
    for (int i = 0; rc == 0 && i < o->n_sets; i++)
        rc = apply_set(ex, o->sets[i], err, err_len);
    if (rc == 0 && o->seed && (rc = kv_experiment_set_seed(ex, o->seed, err, err_len))) {
        size_t n = strlen(err);
        snprintf(err + n, err_len - n, " (--seed)");
    }
    if (o->topk >= 0)
        ex->no_topk = !o->topk;
    ex->dense = o->dense;
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

/* The figures of the new set, rendered into its staging directory when gnuplot is there
 * and --no-plot was not given. A failure to render fails the run: the set is published
 * complete or not at all. */
static int plot_results(const kv_experiment *ex, const kv_result_set *rs,
                        const run_options *o, char *err, size_t err_len)
{
    if (o->no_plot || !kv_plot_available())
        return 0;
    kv_plot_options po = { .quiet = 1, .style = ex->style[0] ? ex->style : NULL };
    char where[KV_PATH_LEN + 64];
    if (kv_plot_render(rs->staging, &po, where, sizeof where, err, err_len) == 0)
        return 0;
    size_t n = strlen(err);
    snprintf(err + n, err_len - n, "; no result replaced (--no-plot publishes the results "
             "without figures)");
    return KV_ERUNTIME;
}

/* What the run wrote, on stdout once it is published. */
static void report_results(const kv_experiment *ex, const kv_experiment_results *er,
                           const run_options *o)
{
    char err[256];
    if (o->quiet)
        return;
    if (kv_output_table(stdout, er, err, sizeof err))
        fprintf(stderr, "kvsim run: %s (the result files are complete)\n", err);
    printf("results: %s/ (summary, steps, heads, compare, retention, retention_map, "
           "lifetimes, recall_hist, predict, budgets .tsv; manifest.json)\n", ex->output);
    if (o->no_plot)
        return;
    if (kv_plot_available())
        printf("figures: %s/figures/ (%s)\n", ex->output, KV_PLOT_FIGURE_LIST);
    else
        printf("figures: skipped, gnuplot is not installed (install gnuplot-nox, then "
               "run kvsim plot %s)\n", ex->output);
}

/* The token column of retention.tsv for the trace at path: each position's text
 * TSV-escaped (a trace captured with a tokenizer), "#id" (token ids only), or NULL (no
 * /tokens). One allocation: free(*cells) releases it. */
static int token_cells(const char *path, char ***cells, char *err, size_t err_len)
{
    *cells = NULL;
    kv_trace *tr = NULL;
    if (kv_trace_open(path, &tr, err, err_len))
        return 1;
    const kv_trace_info *in = kv_trace_get_info(tr);
    int rc = 0, T = in->n_tokens;
    kv_trace_tokens tk = {0};
    int has_text = kv_trace_has_token_text(tr);
    if (has_text)
        rc = kv_trace_tokens_read(tr, &tk, err, err_len);
    int32_t *ids = NULL;
    if (!rc && !has_text && in->has_tokens) {
        ids = malloc((size_t)T * sizeof *ids);
        rc = !ids ? (snprintf(err, err_len, "out of memory"), KV_ENOMEM)
                  : kv_trace_read_tokens(tr, ids, err, err_len);
    }
    /* a cell: an escaped text is at most twice its bytes */
    enum { CELL = 2 * 64 + 16 };
    if (!rc && (has_text || ids)) {
        char **out = malloc((size_t)T * (sizeof(char *) + CELL));
        if (!out) {
            snprintf(err, err_len, "out of memory");
            rc = KV_ENOMEM;
        }
        for (int t = 0; !rc && t < T; t++) {
            out[t] = (char *)(out + T) + (size_t)t * CELL;
            if (has_text)
                kv_tsv_escape(tk.texts[t], out[t], CELL);
            else
                snprintf(out[t], CELL, "#%d", (int)ids[t]);
        }
        *cells = out;
    }
    kv_trace_tokens_free(&tk);
    free(ids);
    kv_trace_close(tr);
    return rc;
}

/* What a run allocates once the experiment is known. */
typedef struct {
    int *tokens;          /* [n_traces * n_policies * n_budgets] resolved budgets */
    kv_results **res;     /* [n_traces] */
    const char **names;   /* [n_traces] the `trace` column */
    const char **specs;   /* [n_budgets] the `budget_spec` column */
    char ***cells;        /* [n_traces] retention.tsv's token column (token_cells) */
} run_buffers;

static int buffers_alloc(run_buffers *b, const kv_experiment *ex, char *err, size_t err_len)
{
    size_t nt = (size_t)ex->n_traces;
    b->tokens = malloc(nt * ex->n_policies * ex->n_budgets * sizeof *b->tokens);
    b->res = calloc(nt, sizeof *b->res);
    b->names = malloc(nt * sizeof *b->names);
    b->specs = malloc((size_t)ex->n_budgets * sizeof *b->specs);
    b->cells = calloc(nt, sizeof *b->cells);
    if (!b->tokens || !b->res || !b->names || !b->specs || !b->cells) {
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
    for (int k = 0; b->cells && k < n_traces; k++)
        free(b->cells[k]);
    free(b->cells);
    free(b->tokens);
    free(b->res);
    free(b->names);
    free(b->specs);
}

/* The in-process driver's check: every trace's structure and v values, before any
 * replay; q, k and attn rows are checked as the replay reads them (traces/validate.h). */
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

/* The closed loop's checkpoints (model = a.bin, b.bin) and the one each trace was captured
 * from. */
typedef struct {
    kv_model **models;            /* [n_models] */
    int n_models;
    const kv_model **of_trace;    /* [n_traces] borrowed from models; NULL: open loop only
                                     (its checkpoint is one of the missing) */
    char missing[KV_PATH_LEN];    /* the listed checkpoints not found, comma-separated */
} run_models;

static void models_free(run_models *rm)
{
    for (int i = 0; i < rm->n_models; i++)
        kv_model_free(rm->models[i]);
    free(rm->models);
    free(rm->of_trace);
    memset(rm, 0, sizeof *rm);
}

/* The model of trace tr among rm's (its checkpoint_sha256 equals the model's), checked
 * with kv_closed_loop_check; with one model listed a mismatch is that check's message.
 * A trace from none of them, when some listed checkpoint was missing, runs open-loop
 * only (a note on stderr). Returns 0, KV_ERUNTIME or KV_EUSAGE (from another checkpoint,
 * without tokens). */
static int match_model(kv_trace *tr, const run_models *rm, char **paths, int n_listed,
                       int k, char *err, size_t err_len)
{
    char sha[128] = "?", why[256];
    int found = n_listed == 1 && rm->n_models == 1 ? 0 : -1;
    if (found < 0 && kv_trace_read_attr_string(tr, "checkpoint_sha256", sha, sizeof sha, why,
                                                sizeof why) == 0)
        for (int i = 0; i < rm->n_models && found < 0; i++)
            if (strcmp(sha, kv_model_sha256(rm->models[i])) == 0)
                found = i;
    if (found < 0 && rm->missing[0]) {
        fprintf(stderr, "kvsim run: note: %s runs open-loop only (closed-loop columns NA): "
                "its checkpoint (sha256 %s) is not among the checkpoints loaded, and %s was "
                "not found (put it in $KVSIM_MODELS, default models/)\n", kv_trace_path(tr),
                sha, rm->missing);
        rm->of_trace[k] = NULL;
        return 0;
    }
    if (found < 0) {
        int n = snprintf(err, err_len, "%s was captured from checkpoint sha256 %s, which is "
                         "none of the models given:", kv_trace_path(tr), sha);
        for (int i = 0; i < rm->n_models && n > 0 && (size_t)n < err_len; i++)
            n += snprintf(err + n, err_len - (size_t)n, "%s %s (sha256 %s)", i ? "," : "",
                          paths[i], kv_model_sha256(rm->models[i]));
        return KV_EUSAGE;
    }
    rm->of_trace[k] = rm->models[found];
    return kv_closed_loop_check(tr, rm->models[found], paths[found], err, err_len);
}

/* Loads the closed loop's checkpoints (a comma-separated list) and finds every trace's,
 * before any replay. A listed checkpoint that does not exist is skipped, so that an
 * experiment naming several still runs where `make models` could not fetch one (its
 * traces then run open-loop only); when none exists that is an error. Returns 0,
 * KV_ERUNTIME (an unreadable checkpoint or trace, or none found) or KV_EUSAGE (a trace
 * from none of them, without tokens, of another geometry). */
static int load_models(const kv_experiment *ex, run_models *rm, char *err, size_t err_len)
{
    char list[KV_PATH_LEN], *paths[KV_MAX_MODELS], resolved[KV_MAX_MODELS][KV_PATH_LEN];
    snprintf(list, sizeof list, "%s", ex->model);
    int n = 0;
    for (char *save = NULL, *p = strtok_r(list, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        while (*p == ' ')
            p++;
        for (char *e = p + strlen(p); e > p && e[-1] == ' ';)
            *--e = '\0';
        if (n == KV_MAX_MODELS) {
            snprintf(err, err_len, "model: at most %d checkpoints", KV_MAX_MODELS);
            return KV_EUSAGE;
        }
        if (*p)
            paths[n++] = p;
    }
    rm->models = calloc((size_t)n, sizeof *rm->models);
    rm->of_trace = calloc((size_t)ex->n_traces, sizeof *rm->of_trace);
    if (!rm->models || !rm->of_trace) {
        snprintf(err, err_len, "out of memory");
        return KV_ERUNTIME;
    }
    char *loaded[KV_MAX_MODELS];   /* the paths of rm->models, in their order */
    for (int i = 0; i < n; i++) {
        kv_resolve_model_file(paths[i], resolved[i], sizeof resolved[i]);
        if (access(resolved[i], F_OK) != 0) {
            size_t at = strlen(rm->missing);
            snprintf(rm->missing + at, sizeof rm->missing - at, "%s%s", at ? ", " : "",
                     paths[i]);
            continue;
        }
        if (kv_model_load(resolved[i], &rm->models[rm->n_models], err, err_len))
            return KV_ERUNTIME;
        loaded[rm->n_models++] = resolved[i];
    }
    if (n > 0 && rm->n_models == 0) {
        snprintf(err, err_len, "model: %s not found (`make models` puts the checkpoints in "
                 "$KVSIM_MODELS, default models/)", rm->missing);
        return KV_ERUNTIME;
    }
    for (int k = 0; k < ex->n_traces; k++) {
        kv_trace *tr = NULL;
        if (kv_trace_open(ex->traces[k], &tr, err, err_len))
            return KV_ERUNTIME;
        int rc = match_model(tr, rm, loaded, n, k, err, err_len);
        kv_trace_close(tr);
        if (rc)
            return rc;
    }
    return 0;
}

/* Resolves, checks, replays, writes and shows an experiment that is complete. */
static int run_experiment(const kv_experiment *ex, const run_options *o, run_buffers *b,
                          const kv_experiment_driver *d, char *err, size_t err_len)
{
    kv_experiment_opts eo = { .block = o->block, .progress = !o->quiet, .dense = o->dense };
    int rc = d->resolve_budgets(d->ctx, ex, &eo, b->tokens, err, err_len);
    kv_replay_conf conf = { .policies = ex->policies, .n_policies = ex->n_policies,
                            .n_budgets = ex->n_budgets };
    kv_experiment_results er = { .conf = &conf, .n_traces = ex->n_traces,
                                 .res = (const kv_results *const *)b->res,
                                 .trace_names = b->names, .budget_specs = b->specs,
                                 .tokens = (const char *const *const *)b->cells };
    if (rc == 0)
        rc = d->precheck(d->ctx, ex, err, err_len);
    /* the new set (TSVs, manifest, figures) is built beside the output directory and
     * switched in whole (sim/publish.h) */
    static kv_result_set rs;
    rs.dir_fd = rs.staging_fd = -1;
    run_models rm = { 0 };
    if (rc == 0 && ex->model[0])
        rc = load_models(ex, &rm, err, err_len);
    if (rc == 0 && o->dump_sets && !rm.n_models) {
        snprintf(err, err_len, "--dump-sets needs --model (or model = in [experiment])");
        rc = KV_EUSAGE;
    }
    eo.models = rm.n_models ? rm.of_trace : NULL;
    eo.dump_sets = o->dump_sets;
    /* the output directory is checked before the replay and created, locked, only once
     * every replay succeeded: q, k and attn rows are checked as the replay reads them
     * (traces/validate.h), so a bad value leaves no directory behind */
    if (rc == 0)
        rc = kv_output_check(ex->output, o->force, err, err_len);
    for (int k = 0; rc == 0 && k < ex->n_traces; k++)
        rc = token_cells(ex->traces[k], &b->cells[k], err, err_len);
    if (rc == 0)
        rc = d->replay(d->ctx, ex, b->tokens, &eo, b->res, err, err_len);
    models_free(&rm);
    if (rc == 0)
        rc = kv_result_set_begin(&rs, ex->output, o->force, err, err_len);
    if (rc == 0 && kv_output_write(rs.staging, &er, err, err_len))
        rc = KV_ERUNTIME;
    if (rc == 0 && kv_manifest_write(rs.staging, ex, b->tokens, o->n_typed, o->typed, err,
                                     err_len))
        rc = KV_ERUNTIME;
    if (rc == 0)
        rc = plot_results(ex, &rs, o, err, err_len);
    if (rc == 0)
        rc = kv_result_set_publish(&rs, err, err_len);
    kv_result_set_end(&rs);
    if (rc == 0)
        report_results(ex, &er, o);
    return rc;
}

int kv_cmd_run(int argc, char **argv)
{
    return kv_cmd_run_with(argc, argv, NULL);
}

int kv_run_load_experiment(int argc, char **argv, kv_experiment *ex, char *err,
                           size_t err_len)
{
    run_options o = { .seed = NULL, .topk = -1, .sets = malloc((size_t)argc * sizeof *o.sets) };
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
    run_options o = { .seed = NULL, .topk = -1, .sets = malloc((size_t)argc * sizeof *o.sets),
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
    for (int p = 0; p < KV_ENGINE_PARAM_FIRST_SCORED; p++)
        print_param(&kv_engine_params[p]);
    printf("\npolicies that rank by scores (");
    for (int i = 0, n = 0; kv_policy_registry[i]; i++)
        if (kv_policy_registry[i]->scores)
            printf("%s%s", n++ ? ", " : "", kv_policy_registry[i]->name);
    printf(") also take; budgets stay totals (sum over all caches = layers x caches x B):\n");
    for (int p = KV_ENGINE_PARAM_FIRST_SCORED; p < kv_n_engine_params; p++)
        print_param(&kv_engine_params[p]);
    return 0;
}
