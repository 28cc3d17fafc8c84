/*
 * cmd_plot.c - `kvsim plot DIR`: the five figures of a result directory (see plot.h).
 *
 * kvsim only locates the scripts and runs gnuplot, one process per figure, with the
 * directory, the output file and the choices passed as gnuplot variables; everything a
 * figure shows is decided in its script in analysis/, which reads the TSV files by
 * column name and stops with a message when a column is missing.
 */
#include "sim/commands.h"
#include "sim/plot.h"
#include "traces/status.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define PATH_LEN 4096

static const char *const figures[] = {
    "recall_steps", "memory_steps", "recall_budget", "retention_map", "head_recall",
};

/* The gnuplot to run: $KVSIM_GNUPLOT, or "gnuplot" when found on $PATH; NULL if none. */
static const char *gnuplot_path(void)
{
    const char *env = getenv("KVSIM_GNUPLOT");
    if (env)
        return env[0] && access(env, X_OK) == 0 ? env : NULL;
    const char *path = getenv("PATH");
    if (!path)
        return NULL;
    static char candidate[PATH_LEN];
    for (const char *p = path; *p;) {
        size_t len = strcspn(p, ":");
        snprintf(candidate, sizeof candidate, "%.*s/gnuplot", (int)len, p);
        if (len && access(candidate, X_OK) == 0)
            return "gnuplot";
        p += len;
        if (*p == ':')
            p++;
    }
    return NULL;
}

int kv_plot_available(void)
{
    return gnuplot_path() != NULL;
}

static int is_dir_with_scripts(const char *dir)
{
    char probe[PATH_LEN + 16];
    snprintf(probe, sizeof probe, "%s/common.gp", dir);
    return access(probe, R_OK) == 0;
}

/* The analysis directory: $KVSIM_ANALYSIS, next to the executable, or ./analysis. */
static int find_scripts(char *out, size_t len)
{
    const char *env = getenv("KVSIM_ANALYSIS");
    if (env) {
        snprintf(out, len, "%s", env);
        return is_dir_with_scripts(out) ? 0 : -1;
    }
    char exe[PATH_LEN - 16];   /* room for "/analysis" in out */
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            snprintf(out, len, "%s/analysis", exe);
            if (is_dir_with_scripts(out))
                return 0;
        }
    }
    snprintf(out, len, "analysis");
    return is_dir_with_scripts(out) ? 0 : -1;
}

/* Appends name='value' to a gnuplot command, doubling quotes as gnuplot's single-quoted
 * strings require. */
static void add_var(char *cmd, size_t len, const char *name, const char *value)
{
    size_t at = strlen(cmd);
    at += (size_t)snprintf(cmd + at, at < len ? len - at : 0, "%s='", name);
    for (const char *v = value; *v && at + 3 < len; v++) {
        if (*v == '\'')
            cmd[at++] = '\'';
        cmd[at++] = *v;
    }
    if (at < len)
        snprintf(cmd + at, len - at, "'; ");
}

/* Runs gnuplot -e VARS SCRIPT; returns its exit status, or -1 if it could not run. */
static int run_gnuplot(const char *gnuplot, const char *vars, const char *script)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        execlp(gnuplot, gnuplot, "-e", vars, script, (char *)NULL);
        fprintf(stderr, "kvsim plot: cannot run %s: %s\n", gnuplot, strerror(errno));
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int render_one(const char *gnuplot, const char *scripts, const char *dir,
                      const char *fig, const char *out_dir, const kv_plot_options *o,
                      const char *format, char *err, size_t err_len)
{
    char vars[4 * PATH_LEN] = "", script[PATH_LEN + 64], out[PATH_LEN + 64];
    snprintf(script, sizeof script, "%s/%s.gp", scripts, fig);
    snprintf(out, sizeof out, "%s/%s.%s", out_dir, fig, format);
    add_var(vars, sizeof vars, "dir", dir);
    add_var(vars, sizeof vars, "adir", scripts);
    add_var(vars, sizeof vars, "out", out);
    add_var(vars, sizeof vars, "fmt", format);
    if (o->trace)
        add_var(vars, sizeof vars, "trace", o->trace);
    if (o->budget)
        add_var(vars, sizeof vars, "budget", o->budget);
    if (o->width) {
        size_t at = strlen(vars);
        snprintf(vars + at, sizeof vars - at, "width=%d; height=%d; ", o->width, o->height);
    }
    unlink(out);
    int status = run_gnuplot(gnuplot, vars, script);
    struct stat st;
    if (status != 0) {
        snprintf(err, err_len, "figure %s: gnuplot %s (script %s; its message is above)",
                 fig, status < 0 ? "could not run" : "failed", script);
        return KV_ERUNTIME;
    }
    if (stat(out, &st) != 0 || st.st_size == 0) {
        snprintf(err, err_len, "figure %s: gnuplot wrote no %s", fig, out);
        return KV_ERUNTIME;
    }
    return 0;
}

int kv_plot_render(const char *dir, const kv_plot_options *o, char *where, size_t where_len,
                   char *err, size_t err_len)
{
    const char *format = o->format ? o->format : "png";
    if (strcmp(format, "png") && strcmp(format, "svg") && strcmp(format, "pdf")) {
        snprintf(err, err_len, "--format must be png, svg or pdf, got '%s'", format);
        return KV_EUSAGE;
    }
    if (o->width && (o->width < 300 || o->width > 4000 || o->height < 300 ||
                     o->height > 4000)) {
        snprintf(err, err_len, "--size must be WIDTHxHEIGHT with each in 300..4000 pixels");
        return KV_EUSAGE;
    }
    const char *gnuplot = gnuplot_path();
    if (!gnuplot) {
        snprintf(err, err_len, "gnuplot is not installed (apt-get install gnuplot-nox)");
        return KV_ERUNTIME;
    }
    char scripts[PATH_LEN];
    if (find_scripts(scripts, sizeof scripts)) {
        snprintf(err, err_len, "cannot find the gnuplot scripts (analysis/common.gp) next to "
                 "kvsim or in the working directory; set KVSIM_ANALYSIS");
        return KV_ERUNTIME;
    }
    if (o->out_dir)
        snprintf(where, where_len, "%s", o->out_dir);
    else
        snprintf(where, where_len, "%s/figures", dir);
    if (mkdir(where, 0777) != 0 && errno != EEXIST) {
        snprintf(err, err_len, "%s: cannot create the figure directory: %s", where,
                 strerror(errno));
        return KV_ERUNTIME;
    }
    for (size_t i = 0; i < sizeof figures / sizeof figures[0]; i++)
        if (render_one(gnuplot, scripts, dir, figures[i], where, o, format, err, err_len))
            return KV_ERUNTIME;
    return 0;
}

/* ------------------------------------------------------------ command */

static void plot_usage(FILE *f)
{
    fprintf(f,
"usage: kvsim plot DIR [options]\n"
"\n"
"Renders the five figures of a result directory (what kvsim run wrote) with gnuplot and\n"
"the scripts in analysis/, which read the TSV files by column name:\n"
"  recall_steps   recall per decode step, one line per policy, a panel per budget\n"
"  memory_steps   KV-cache bytes per decode step, metadata bytes dashed (one budget)\n"
"  recall_budget  mean recall against budget, 95%% confidence intervals\n"
"  retention_map  positions cached at the end, per (layer, KV head) (one budget)\n"
"  head_recall    mean recall per (layer, query head), a heatmap per policy (one budget)\n"
"\n"
"options:\n"
"      --format F     png (pngcairo, 1200x800; default), svg or pdf\n"
"      --budget SPEC  the budget, as in the budget_spec column (e.g. 64, 0.25p, 64KiB),\n"
"                     of the one-budget figures (default: the first)\n"
"      --trace NAME   the trace, as in the trace column (default: the first; the\n"
"                     recall_budget figure shows the mean over traces when there are\n"
"                     several and no trace is named)\n"
"      --size WxH     picture size in pixels (default 1200x800; pdf scales 9x6 in)\n"
"  -o, --output D     figure directory (default DIR/figures)\n"
"  -q, --quiet        print nothing on success\n"
"  -h, --help         this help\n"
"\n"
"exit status: 0 success, 1 runtime failure (no gnuplot, a script failed: a missing\n"
"column is named), 2 usage error\n");
}

int kv_cmd_plot(int argc, char **argv)
{
    enum { OPT_FORMAT = 256, OPT_BUDGET, OPT_TRACE, OPT_SIZE };
    static const struct option longopts[] = {
        { "format", required_argument, 0, OPT_FORMAT },
        { "budget", required_argument, 0, OPT_BUDGET },
        { "trace", required_argument, 0, OPT_TRACE },
        { "size", required_argument, 0, OPT_SIZE },
        { "output", required_argument, 0, 'o' },
        { "quiet", no_argument, 0, 'q' },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    kv_plot_options o = { 0 };
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:qh", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_FORMAT: o.format = optarg; break;
        case OPT_BUDGET: o.budget = optarg; break;
        case OPT_TRACE: o.trace = optarg; break;
        case OPT_SIZE:
            if (sscanf(optarg, "%dx%d", &o.width, &o.height) != 2 || o.width < 300 ||
                o.height < 300 || o.width > 4000 || o.height > 4000) {
                fprintf(stderr, "kvsim plot: --size must be WIDTHxHEIGHT, each 300..4000 "
                        "pixels, got '%s'\n", optarg);
                return KV_EUSAGE;
            }
            break;
        case 'o': o.out_dir = optarg; break;
        case 'q': o.quiet = 1; break;
        case 'h': plot_usage(stdout); return 0;
        default:
            fprintf(stderr, "kvsim plot: unknown option or missing value in '%s' (see kvsim "
                    "plot --help)\n", argv[optind - 1]);
            return KV_EUSAGE;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "kvsim plot: expected one result directory (see kvsim plot --help)\n");
        return KV_EUSAGE;
    }
    char err[1024], where[PATH_LEN];
    int rc = kv_plot_render(argv[optind], &o, where, sizeof where, err, sizeof err);
    if (rc) {
        fprintf(stderr, "kvsim plot: %s\n", err);
        return rc;
    }
    if (!o.quiet)
        printf("figures: %s/ (%s)\n", where, KV_PLOT_FIGURE_LIST);
    return 0;
}
