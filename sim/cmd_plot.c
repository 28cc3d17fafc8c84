/*
 * cmd_plot.c - `kvsim plot DIR`: the figures of a result directory (see plot.h).
 *
 * kvsim reads the result files, checks every option against them, and prepares for each
 * figure a private directory's worth of plain inputs: the numbers (data files of fixed
 * names, one per panel and policy), a variables file (counts, ranges, and the names as
 * escaped gnuplot string constants) and a caption. The script in analysis/ decides how
 * the figure looks; it never reads a result file, never runs a command and never
 * evaluates a string built from a name.
 */
#define _XOPEN_SOURCE 700   /* realpath */
#include "sim/commands.h"
#include "sim/plot.h"
#include "sim/plot_data.h"
#include "traces/status.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fcntl.h>

static const char *const figures[KV_PLOT_N_FIGURES] = {
    "recall_steps", "memory_steps", "recall_budget", "recall_bytes", "retention_map",
    "head_recall", "retention_text", "predict",
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
    static char candidate[KV_PLOT_PATH];
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

/* dir, made absolute, into out when it holds common.gp; 0, or -1. An absolute path
 * starts with '/', so gnuplot's `load` can never read it as a "<command" pipe. */
static int scripts_at(const char *dir, char *out, size_t len)
{
    char probe[KV_PLOT_PATH + 16], real[PATH_MAX];
    snprintf(probe, sizeof probe, "%s/common.gp", dir);
    if (access(probe, R_OK) != 0 || !realpath(dir, real) || strlen(real) >= len)
        return -1;
    snprintf(out, len, "%s", real);
    return 0;
}

/* The analysis directory: $KVSIM_ANALYSIS, next to the executable, or ./analysis. */
static int find_scripts(char *out, size_t len)
{
    const char *env = getenv("KVSIM_ANALYSIS");
    if (env)
        return scripts_at(env, out, len);
    char exe[KV_PLOT_PATH];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 16);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            snprintf(slash, sizeof exe - (size_t)(slash - exe), "/analysis");
            if (scripts_at(exe, out, len) == 0)
                return 0;
        }
    }
    return scripts_at("analysis", out, len);
}

/* ------------------------------------------------------------ gnuplot */

/* Runs `gnuplot vars.gp SCRIPT` in directory cwd with no shell, stdout discarded and
 * stderr into cwd/gnuplot.err. Returns its exit status, or -1 if it could not run. */
static int run_gnuplot(const char *gnuplot, const char *cwd, const char *script)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        if (chdir(cwd) != 0 || null < 0)
            _exit(127);
        int errfd = open("gnuplot.err", O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(null, 0);
        dup2(null, 1);
        if (errfd >= 0)
            dup2(errfd, 2);
        execlp(gnuplot, gnuplot, "vars.gp", script, (char *)NULL);
        fprintf(stderr, "cannot run %s: %s\n", gnuplot, strerror(errno));
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* The first line of gnuplot.err that says what went wrong (gnuplot prints the offending
 * line and a caret above it), trimmed, into msg. */
static void gnuplot_message(const char *cwd, char *msg, size_t len)
{
    char path[KV_PLOT_PATH + 32], line[512];
    snprintf(path, sizeof path, "%s/gnuplot.err", cwd);
    snprintf(msg, len, "no message");
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char *s = line + strspn(line, " \t^");
        if (strstr(s, "error") || strstr(s, "rror:") || strstr(s, "cannot")) {
            snprintf(msg, len, "%s", s);
            break;
        }
        if (*s && strcmp(msg, "no message") == 0)
            snprintf(msg, len, "%s", s);
    }
    fclose(f);
}

/* 1 when needle (len bytes) occurs in hay (n bytes). */
static int contains(const char *hay, size_t n, const char *needle, size_t len)
{
    for (size_t i = 0; i + len <= n; i++)
        if (memcmp(hay + i, needle, len) == 0)
            return KV_ERUNTIME;
    return 0;
}

/* 1 when file path ends as a complete figure of format fmt does: PNG's IEND chunk, PDF's
 * %%EOF, SVG's closing tag. A figure cut short by a full disk lacks its end. */
static int figure_complete(const char *path, const char *fmt, long *size)
{
    FILE *f = fopen(path, "rb");
    *size = 0;
    if (!f)
        return 0;
    char tail[64] = "";
    size_t n = 0;
    if (fseek(f, 0, SEEK_END) == 0) {
        *size = ftell(f);
        long from = *size > (long)sizeof tail - 1 ? *size - (long)sizeof tail + 1 : 0;
        if (fseek(f, from, SEEK_SET) == 0)
            n = fread(tail, 1, sizeof tail - 1, f);
    }
    fclose(f);
    tail[n] = '\0';
    if (strcmp(fmt, "png") == 0)
        return n >= 12 && memcmp(tail + n - 8, "IEND", 4) == 0;
    if (strcmp(fmt, "pdf") == 0)
        return contains(tail, n, "%%EOF", 5);
    return contains(tail, n, "</svg>", 6);
}

/* ------------------------------------------------------------ rendering */

/* Prepares, renders and checks figure `fig` in the private directory c->tmp. */
static int render_one(kv_plot_ctx *c, const char *gnuplot, const char *scripts, int fig,
                      char *err, size_t err_len)
{
    int rc = kv_plot_prepare(c, figures[fig], scripts, err, err_len);
    if (rc)
        return rc;
    char script[KV_PLOT_PATH + 64], out[KV_PLOT_PATH + 64];
    snprintf(script, sizeof script, "%s/%s.gp", scripts, figures[fig]);
    snprintf(out, sizeof out, "%s/figure.%s", c->tmp, c->format);
    unlink(out);
    int status = run_gnuplot(gnuplot, c->tmp, script);
    if (status != 0) {
        char msg[400];
        gnuplot_message(c->tmp, msg, sizeof msg);
        snprintf(err, err_len, "figure %s: gnuplot %s (%s.gp): %s", figures[fig],
                 status < 0 ? "could not run" : "failed", figures[fig], msg);
        return KV_ERUNTIME;
    }
    long size;
    if (!figure_complete(out, c->format, &size)) {
        snprintf(err, err_len, "figure %s: gnuplot's %s is incomplete (%ld bytes)%s",
                 figures[fig], c->format, size, kv_plot_disk_full(c->tmp) ?
                 ": no space left on device (ENOSPC)" : "");
        return KV_ERUNTIME;
    }
    char done[KV_PLOT_PATH + 64];
    snprintf(done, sizeof done, "%s/%s.%s", c->tmp, figures[fig], c->format);
    if (rename(out, done) != 0) {
        snprintf(err, err_len, "%s: %s", done, strerror(errno));
        return KV_ERUNTIME;
    }
    return 0;
}

/* Moves every rendered figure and caption from the private directory into where. */
static int publish(const kv_plot_ctx *c, const char *where, char *err, size_t err_len)
{
    for (int i = 0; i < KV_PLOT_N_FIGURES; i++) {
        for (int caption = 0; caption < 2; caption++) {
            const char *ext = caption ? "txt" : c->format;
            char from[KV_PLOT_PATH + 64], to[KV_PLOT_PATH + 64];
            snprintf(from, sizeof from, "%s/%s.%s", c->tmp, figures[i], ext);
            snprintf(to, sizeof to, "%s/%s.%s", where, figures[i], ext);
            if (rename(from, to) != 0) {
                snprintf(err, err_len, "%s: cannot put the figure in place: %s", to,
                         strerror(errno));
                return KV_ERUNTIME;
            }
        }
    }
    return 0;
}

static int check_options(const kv_plot_options *o, char *err, size_t err_len)
{
    const char *format = o->format ? o->format : "png";
    if (strcmp(format, "png") && strcmp(format, "svg") && strcmp(format, "pdf")) {
        snprintf(err, err_len, "--format must be png, svg or pdf, got '%s'", format);
        return KV_EUSAGE;
    }
    if (o->style && strcmp(o->style, "paper") && strcmp(o->style, "screen")) {
        snprintf(err, err_len, "--style must be paper or screen, got '%s'", o->style);
        return KV_EUSAGE;
    }
    if (o->columns < 0 || o->columns > 2) {
        snprintf(err, err_len, "--columns must be 1 or 2, got %d", o->columns);
        return KV_EUSAGE;
    }
    int px = strcmp(format, "png") == 0;
    double lo = px ? 300 : 1.5, hi = px ? 4000 : 20;
    if ((o->width || o->height) &&
        (o->width < lo || o->width > hi || o->height < lo || o->height > hi)) {
        snprintf(err, err_len, "--size must be WIDTHxHEIGHT with each in %s (%s), got "
                 "%gx%g", px ? "300..4000" : "1.5..20", px ? "pixels for png" :
                 "inches for pdf and svg; or append cm", o->width, o->height);
        return KV_EUSAGE;
    }
    if (o->smooth < 0 || o->smooth > 1001 || (o->smooth > 1 && o->smooth % 2 == 0)) {
        snprintf(err, err_len, "--smooth must be an odd number of steps in 1..1001 (1: "
                 "none), got %d", o->smooth);
        return KV_EUSAGE;
    }
    return 0;
}

int kv_plot_render(const char *dir, const kv_plot_options *o, char *where, size_t where_len,
                   char *err, size_t err_len)
{
    int rc = check_options(o, err, err_len);
    if (rc)
        return rc;
    /* 1. read the results and resolve every choice against them: nothing written yet */
    kv_plot_ctx c;
    rc = kv_plot_open(&c, dir, o, err, err_len);
    if (rc) {
        kv_plot_close(&c);
        return rc;
    }
    const char *gnuplot = gnuplot_path();
    char scripts[KV_PLOT_PATH];
    if (!gnuplot) {
        snprintf(err, err_len, "gnuplot is not installed (apt-get install gnuplot-nox)");
        rc = KV_ERUNTIME;
    } else if (find_scripts(scripts, sizeof scripts)) {
        snprintf(err, err_len, "cannot find the gnuplot scripts (analysis/common.gp) next to "
                 "kvsim or in the working directory; set KVSIM_ANALYSIS");
        rc = KV_ERUNTIME;
    }
    /* 2. the figure directory and a private directory inside it (same file system, so
     *    the finished figures are renamed, never copied) */
    if (!rc) {
        if (o->out_dir)
            snprintf(where, where_len, "%s", o->out_dir);
        else
            snprintf(where, where_len, "%s/figures", dir);
        if (mkdir(where, 0777) != 0 && errno != EEXIST) {
            snprintf(err, err_len, "%s: cannot create the figure directory: %s", where,
                     strerror(errno));
            rc = KV_ERUNTIME;
        }
    }
    if (!rc) {
        snprintf(c.tmp, sizeof c.tmp, "%s/.kvsim-plot-XXXXXX", where);
        if (!mkdtemp(c.tmp)) {
            snprintf(err, err_len, "%s: cannot create a private directory there: %s%s",
                     where, strerror(errno), errno == ENOSPC ? " (ENOSPC)" : "");
            c.tmp[0] = '\0';
            rc = KV_ERUNTIME;
        }
    }
    /* 3. every figure into the private directory; 4. all of them into place */
    for (int i = 0; !rc && i < KV_PLOT_N_FIGURES; i++)
        rc = render_one(&c, gnuplot, scripts, i, err, err_len);
    if (!rc)
        rc = publish(&c, where, err, err_len);
    if (rc && c.tmp[0] && strstr(err, "ENOSPC"))
        snprintf(err + strlen(err), err_len - strlen(err), "; the previous figures are kept");
    kv_plot_close(&c);
    return rc;
}

/* ------------------------------------------------------------ command */

static void plot_usage(FILE *f)
{
    fprintf(f,
"usage: kvsim plot DIR [options]\n"
"\n"
"Renders the figures of a result directory (what kvsim run wrote) with gnuplot and the\n"
"scripts in analysis/, and writes a caption (NAME.txt) beside each figure:\n"
"  recall_steps   recall per decode step, one line per policy, a panel per budget\n"
"  memory_steps   KV-cache bytes per decode step, metadata bytes dashed (one budget)\n"
"  recall_budget  mean recall against budget, 95%% confidence intervals\n"
"  recall_bytes   mean recall against peak memory (KV + metadata bytes), 95%% intervals\n"
"  retention_map  positions cached at the end, per (layer, KV head) (one budget)\n"
"  head_recall    mean recall per (layer, query head), a heatmap per policy (one budget)\n"
"  retention_text the trace's text, each token shaded by the share of caches holding it\n"
"                 at the end, a panel per policy (one budget; token ids without text)\n"
"  predict        open-loop recall and output error against the closed loop's KL\n"
"\n"
"options:\n"
"      --format F      png (pngcairo; default), svg or pdf\n"
"      --style S       screen (default: titles, 1200x800 pixels or 9x6 in) or paper (no\n"
"                      titles, 8-9 pt text at print size, legends outside the data)\n"
"      --columns N     paper style: 1 (3.4 in wide; default) or 2 (7 in wide)\n"
"      --size WxH      png: pixels (300..4000); pdf, svg: inches (1.5..20), or WxHcm\n"
"      --budget SPEC   the budget, as in the budget_spec column (e.g. 64, 0.25p, 64KiB),\n"
"                      of the one-budget figures (default: the first)\n"
"      --trace NAME    the trace, as in the trace column (default: every trace: the\n"
"                      per-step figures show the mean over traces, the maps the first)\n"
"      --policies L    comma-separated policy labels to plot (default: all)\n"
"      --smooth N      moving mean over N decode steps (odd; default 15, 1: none)\n"
"      --raw           also draw the unsmoothed per-step lines, thin and light\n"
"  -o, --output D      figure directory (default DIR/figures)\n"
"  -q, --quiet         print nothing on success\n"
"  -h, --help          this help\n"
"\n"
"exit status: 0 success; 1 runtime failure (no gnuplot, a result file missing or\n"
"damaged, a full disk: the previous figures are kept); 2 usage error (an option, or a\n"
"trace, budget or policy the results do not have: nothing is written)\n");
}

/* "WxH", "WxHin" or "WxHcm" into inches (pdf, svg) or pixels (png). 0, or -1. */
static int parse_size(const char *s, double *w, double *h)
{
    char unit[8] = "";
    int n = sscanf(s, "%lfx%lf%7s", w, h, unit);
    if (n < 2 || (n == 3 && strcmp(unit, "in") && strcmp(unit, "cm")))
        return -1;
    if (strcmp(unit, "cm") == 0) {
        *w /= 2.54;
        *h /= 2.54;
    }
    return 0;
}

int kv_cmd_plot(int argc, char **argv)
{
    enum { OPT_FORMAT = 256, OPT_BUDGET, OPT_TRACE, OPT_SIZE, OPT_STYLE, OPT_COLUMNS,
           OPT_POLICIES, OPT_SMOOTH, OPT_RAW };
    static const struct option longopts[] = {
        { "format", required_argument, 0, OPT_FORMAT },
        { "style", required_argument, 0, OPT_STYLE },
        { "columns", required_argument, 0, OPT_COLUMNS },
        { "budget", required_argument, 0, OPT_BUDGET },
        { "trace", required_argument, 0, OPT_TRACE },
        { "policies", required_argument, 0, OPT_POLICIES },
        { "smooth", required_argument, 0, OPT_SMOOTH },
        { "raw", no_argument, 0, OPT_RAW },
        { "size", required_argument, 0, OPT_SIZE },
        { "output", required_argument, 0, 'o' },
        { "quiet", no_argument, 0, 'q' },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    kv_plot_options o = { 0 };
    int c;
    char *end;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:qh", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_FORMAT: o.format = optarg; break;
        case OPT_STYLE: o.style = optarg; break;
        case OPT_BUDGET: o.budget = optarg; break;
        case OPT_TRACE: o.trace = optarg; break;
        case OPT_POLICIES: o.policies = optarg; break;
        case OPT_RAW: o.raw = 1; break;
        case OPT_COLUMNS:
        case OPT_SMOOTH: {
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end || v < 1 || v > 100000) {
                fprintf(stderr, "kvsim plot: --%s takes a whole number, got '%s'\n",
                        c == OPT_SMOOTH ? "smooth" : "columns", optarg);
                return KV_EUSAGE;
            }
            if (c == OPT_SMOOTH)
                o.smooth = (int)v;
            else
                o.columns = (int)v;
            break;
        }
        case OPT_SIZE:
            if (parse_size(optarg, &o.width, &o.height)) {
                fprintf(stderr, "kvsim plot: --size must be WIDTHxHEIGHT (pixels for png, "
                        "inches for pdf and svg, or WxHcm), got '%s'\n", optarg);
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
    char err[1024], where[KV_PLOT_PATH];
    int rc = kv_plot_render(argv[optind], &o, where, sizeof where, err, sizeof err);
    if (rc) {
        fprintf(stderr, "kvsim plot: %s\n", err);
        return kv_exit_status(rc);
    }
    if (!o.quiet)
        printf("figures: %s/ (%s; captions NAME.txt)\n", where, KV_PLOT_FIGURE_LIST);
    return 0;
}
