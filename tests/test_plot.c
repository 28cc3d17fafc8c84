/*
 * test_plot.c - `kvsim plot` (and the figures `kvsim run` draws) as a hostile or careless
 * user meets them:
 *   - names that would run a command if any reached a shell or gnuplot's parser (shell
 *     quotes, $(...), backquotes, gnuplot's system(), "<" and "|" pipes, markup) as the
 *     result directory, the figure directory, trace file names, policy labels (INI
 *     sections), and the values of --trace, --budget and --policies: no command runs
 *     (the file $KV_PWNED the payloads would create never appears) and every figure is
 *     drawn;
 *   - a trace, budget or policy the results lack: exit 2 before anything is written;
 *   - damaged result files: one kvsim line naming the file and what is wrong, exit 1;
 *   - a full disk (a small tmpfs) and a file-size limit: exit 1 naming the cause, the
 *     previous figures byte for byte as they were, no temporaries left.
 */
#define _DEFAULT_SOURCE   /* wait4 in kv_cli.h, mount */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>

#include "sim/plot.h"
#include "tests/kv_cli.h"
#include "tests/kv_test.h"

static const char *const figure_names[] = {
    "recall_steps", "memory_steps", "recall_budget", "recall_bytes", "retention_map",
    "head_recall", "retention_text",
};
#define N_FIGURES 7

/* The payloads: each would create $KV_PWNED if it reached a shell (through quotes of
 * either kind, $(...) or backquotes) or gnuplot's parser (a string constant broken open,
 * system(), a "<command" data file or a "|command" output). No '/' (they are also file
 * names) and no " ;" (an INI comment). */
static const char *const payloads[] = {
    "a';touch \"$KV_PWNED\";'b",
    "c\";touch \"$KV_PWNED\";\"d",
    "e$(touch \"$KV_PWNED\")f",
    "g`touch \"$KV_PWNED\"`h",
    "i'; system('touch \"$KV_PWNED\"'); x='j",
    "k\"; system(\"touch $KV_PWNED\"); x=\"l",
    "<touch \"$KV_PWNED\"",
    "|touch \"$KV_PWNED\"",
    "m_n^o{p}@q~r\\s",
};
#define N_PAYLOADS (sizeof payloads / sizeof payloads[0])

static char g_pwned[300];      /* the file a successful injection would create */
static char g_results[600];    /* a run's results, under a hostile directory name */
static char g_trace_name[300]; /* the hostile trace's name (the trace column) */

static void assert_not_pwned(const char *when)
{
    if (access(g_pwned, F_OK) == 0)
        fail_msg("%s ran a command from a name: %s exists", when, g_pwned);
}

/* The whole file, malloc'd, its size in *len; NULL when missing. */
static char *slurp(const char *path, long *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    *len = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)*len + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)*len, f), (size_t)*len);
    fclose(f);
    return buf;
}

/* dir holds all six figures (complete PNGs) and their non-empty captions. */
static void assert_figures(const char *dir)
{
    for (int i = 0; i < N_FIGURES; i++) {
        char path[1200];
        long len;
        snprintf(path, sizeof path, "%s/%s.png", dir, figure_names[i]);
        char *png = slurp(path, &len);
        if (!png)
            fail_msg("no figure %s", path);
        /* a PNG: the signature first, the IEND chunk last, more than a blank picture */
        assert_memory_equal(png, "\x89PNG\r\n\x1a\n", 8);
        assert_true(len > 5000);
        assert_memory_equal(png + len - 8, "IEND", 4);
        free(png);
        snprintf(path, sizeof path, "%s/%s.txt", dir, figure_names[i]);
        char *cap = slurp(path, &len);
        if (!cap)
            fail_msg("no caption %s", path);
        assert_true(len > 40);
        free(cap);
    }
}

/* Every file of dir (figures and captions) into a snapshot string, names and contents. */
static char *snapshot(const char *dir)
{
    size_t cap = 1 << 20, at = 0;
    char *s = malloc(cap);
    assert_non_null(s);
    for (int i = 0; i < N_FIGURES; i++)
        for (int k = 0; k < 2; k++) {
            char path[1200];
            long len = 0;
            snprintf(path, sizeof path, "%s/%s.%s", dir, figure_names[i], k ? "txt" : "png");
            char *b = slurp(path, &len);
            if (!b)
                fail_msg("no %s", path);
            while (at + (size_t)len + 64 > cap) {
                cap *= 2;
                s = realloc(s, cap);
                assert_non_null(s);
            }
            at += (size_t)sprintf(s + at, "%s %ld\n", path, len);
            memcpy(s + at, b, (size_t)len);
            at += (size_t)len;
            free(b);
        }
    s[at] = '\0';
    return s;
}

static void assert_same_snapshot(const char *dir, const char *before)
{
    char *now = snapshot(dir);
    if (strcmp(now, before) != 0)
        fail_msg("the previous figures in %s changed", dir);
    free(now);
}

/* No entry of dir starts with ".kvsim-plot" (a private directory left behind). */
static void assert_no_private_dirs(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strncmp(e->d_name, ".kvsim-plot", 11) == 0)
            fail_msg("%s/%s left behind", dir, e->d_name);
    closedir(d);
}

/* Runs kvsim with args; asserts the exit status; returns the stderr in r. */
static void kvsim(const char *const *args, int want, kv_cli_result *r)
{
    int rc = kv_cli_run(args, NULL, r);
    if (rc != want)
        fail_msg("kvsim %s %s: exit %d, wanted %d; stderr: %s", args[0], args[1], rc, want,
                 r->err);
}

/* ------------------------------------------------------------ hostile names */

/* The run: two traces (one with a hostile file name, one with a harmless quote), a
 * policy labelled with every payload, token, prompt-share and byte budgets, the output
 * under a hostile directory name, figures drawn by `kvsim run` itself. */
static void test_run_with_hostile_names(void **state)
{
    (void)state;
    if (!kv_plot_available())
        skip();
    char t1[600], t2[600], ini[40000], path[700];
    snprintf(g_trace_name, sizeof g_trace_name, "t%s.h5", payloads[0]);
    snprintf(t1, sizeof t1, "%s/%s", kv_test_dir, g_trace_name);
    snprintf(t2, sizeof t2, "%s/bob's.h5", kv_test_dir);
    kv_test_gen_small(t1, 1, 0, 0);
    kv_test_gen_small(t2, 2, 0, 0);
    snprintf(g_results, sizeof g_results, "%s/out%s", kv_test_dir, payloads[1]);
    int at = snprintf(ini, sizeof ini, "[experiment]\ntrace = %s, %s\nbudgets = 24, 0.75p, "
                      "28KiB\noutput = %s\n\n[policy full]\ntype = full\n", t1, t2, g_results);
    static const char *const types[] = { "window", "h2o", "streamingllm", "tova" };
    for (size_t i = 0; i < N_PAYLOADS; i++)
        at += snprintf(ini + at, sizeof ini - (size_t)at, "[policy %s]\ntype = %s\n",
                       payloads[i], types[i % 4]);
    snprintf(path, sizeof path, "%s/hostile.ini", kv_test_dir);
    kv_test_write_text(path, ini);
    kv_cli_result r;
    const char *args[] = { "run", path, "-q", NULL };
    kvsim(args, 0, &r);
    assert_not_pwned("kvsim run");
    snprintf(path, sizeof path, "%s/figures", g_results);
    assert_figures(path);
}

/* kvsim plot on those results: the hostile result directory, a hostile figure
 * directory, a hostile trace named with --trace, a hostile label in --policies. */
static void test_plot_hostile_options(void **state)
{
    (void)state;
    if (!kv_plot_available() || !g_results[0])
        skip();
    kv_cli_result r;
    for (size_t i = 0; i < N_PAYLOADS; i++) {
        char figs[700], list[600];
        snprintf(figs, sizeof figs, "%s/figs%s", kv_test_dir, payloads[i]);
        snprintf(list, sizeof list, "full,%s", payloads[i]);
        const char *args[] = { "plot", g_results, "-o", figs, "--trace", g_trace_name,
                               "--policies", list, "--budget", "28KiB", "-q", NULL };
        kvsim(args, 0, &r);
        assert_not_pwned("kvsim plot");
        assert_figures(figs);
    }
    /* the harmless quote as the trace of the per-trace figures */
    char figs[700];
    snprintf(figs, sizeof figs, "%s/figs_bob", kv_test_dir);
    const char *bob[] = { "plot", g_results, "-o", figs, "--trace", "bob's.h5", "-q", NULL };
    kvsim(bob, 0, &r);
    assert_figures(figs);
}

/* Hostile values the results do not have: refused as usage errors, nothing written. */
static void test_plot_hostile_unknowns(void **state)
{
    (void)state;
    if (!kv_plot_available() || !g_results[0])
        skip();
    kv_cli_result r;
    char figs[700];
    snprintf(figs, sizeof figs, "%s/figs_none", kv_test_dir);
    static const char *const opts[] = { "--trace", "--budget", "--policies" };
    for (size_t i = 0; i < N_PAYLOADS; i++)
        for (int o = 0; o < 3; o++) {
            char value[300];
            snprintf(value, sizeof value, "%s%s", payloads[i], o == 2 ? "x" : "");
            const char *args[] = { "plot", g_results, "-o", figs, opts[o], value, NULL };
            kvsim(args, 2, &r);
            assert_int_equal(kv_cli_lines(r.err), 1);
            assert_non_null(strstr(r.err, opts[o]));
            assert_not_pwned("kvsim plot (refused)");
        }
    assert_int_equal(access(figs, F_OK), -1);   /* not even the directory */
}

/* ------------------------------------------------------------ refusals before writing */

static char g_good[600];   /* results of a plain run, with figures */

static void make_good_results(void)
{
    if (g_good[0])
        return;
    char t[400];
    snprintf(t, sizeof t, "%s/plain.h5", kv_test_dir);
    kv_test_gen_small(t, 3, 0, 0);
    snprintf(g_good, sizeof g_good, "%s/good", kv_test_dir);
    kv_cli_result r;
    const char *args[] = { "run", "--trace", t, "--policies", "full,window,h2o,morphkv",
                           "--budgets", "16,32", "--set", "morphkv.window=4", "-o", g_good,
                           "-q", NULL };
    kvsim(args, 0, &r);
}

/* A budget the results lack: exit 2, one line naming it and the budgets there are, and
 * the figures already there untouched (it used to delete one and exit 1). */
static void test_plot_unknown_budget(void **state)
{
    (void)state;
    if (!kv_plot_available())
        skip();
    make_good_results();
    char figs[700];
    snprintf(figs, sizeof figs, "%s/figures", g_good);
    char *before = snapshot(figs);
    kv_cli_result r;
    const char *args[] = { "plot", g_good, "--budget", "99", NULL };
    kvsim(args, 2, &r);
    assert_int_equal(kv_cli_lines(r.err), 1);
    assert_non_null(strstr(r.err, "no budget_spec '99'"));
    assert_non_null(strstr(r.err, "16, 32"));
    assert_same_snapshot(figs, before);
    free(before);
}

/* A copy of the good results with sed script `edit` applied to `file` (NULL: removed). */
static void damaged_copy(const char *dir, const char *file, const char *edit)
{
    char cmd[2000];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", dir, g_good, dir);
    assert_int_equal(kv_test_run_quiet(cmd), 0);
    if (edit)
        snprintf(cmd, sizeof cmd, "sed -i '%s' '%s/%s'", edit, dir, file);
    else
        snprintf(cmd, sizeof cmd, "rm '%s/%s'", dir, file);
    assert_int_equal(kv_test_run_quiet(cmd), 0);
}

/* Damaged result files: exit 1 with one kvsim line naming the file and the fault (no
 * gnuplot message), the figures there before kept. */
static void test_plot_damaged_files(void **state)
{
    (void)state;
    if (!kv_plot_available())
        skip();
    make_good_results();
    static const struct {
        const char *file, *edit, *want1, *want2;
    } cases[] = {
        { "steps.tsv", "1s/\\trecall\\t/\\tXX\\t/", "steps.tsv", "no column 'recall'" },
        { "summary.tsv", "1s/\\trecall_ci_hi\\t/\\tXX\\t/", "summary.tsv",
          "no column 'recall_ci_hi'" },
        { "steps.tsv", "1s/\\tmeta_bytes\\t/\\tXX\\t/", "steps.tsv", "no column 'meta_bytes'" },
        { "retention_map.tsv", "1s/\\tkv_head\\t/\\tXX\\t/", "retention_map.tsv",
          "no column 'kv_head'" },
        { "heads.tsv", NULL, "heads.tsv", "cannot read" },
        { "steps.tsv", "5s/\\t[^\\t]*$//", "steps.tsv line 5", "fields where the header has" },
        { "steps.tsv", "7s/\\t0\\.[0-9]*\\t/\\tabc\\t/", "steps.tsv line 7",
          "not a finite number" },
        { "summary.tsv", "3s/\\t0\\.[0-9]*\\t/\\tnan\\t/", "summary.tsv line 3",
          "not a finite number" },
    };
    char dir[700], figs[800];
    snprintf(dir, sizeof dir, "%s/damaged", kv_test_dir);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        damaged_copy(dir, cases[i].file, cases[i].edit);
        snprintf(figs, sizeof figs, "%s/figures", dir);
        char *before = snapshot(figs);
        kv_cli_result r;
        const char *args[] = { "plot", dir, "-q", NULL };
        kvsim(args, 1, &r);
        if (kv_cli_lines(r.err) != 1 || strncmp(r.err, "kvsim plot: ", 12) != 0 ||
            !strstr(r.err, cases[i].want1) || !strstr(r.err, cases[i].want2))
            fail_msg("case %zu: wanted one line with '%s' and '%s', got: %s", i,
                     cases[i].want1, cases[i].want2, r.err);
        assert_same_snapshot(figs, before);
        assert_no_private_dirs(figs);
        free(before);
    }
    /* a file cut short inside its last line */
    damaged_copy(dir, "heads.tsv", "$s/\\t[^\\t]*$//");
    char cmd[900];
    snprintf(cmd, sizeof cmd, "truncate -s -1 '%s/heads.tsv'", dir);
    assert_int_equal(kv_test_run_quiet(cmd), 0);
    kv_cli_result r;
    const char *args[] = { "plot", dir, "-q", NULL };
    kvsim(args, 1, &r);
    assert_int_equal(kv_cli_lines(r.err), 1);
    assert_non_null(strstr(r.err, "heads.tsv: the last line is incomplete"));
}

/* ------------------------------------------------------------ the numbers drawn */

/* Column `col` of the rows of steps.tsv for (trace, policy), by step (index step - from),
 * read here with strtok: an independent route from the plot's reader. */
static int read_steps(const char *path, const char *trace, const char *policy, double *y,
                      int from, int n)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[4096];
    int got = 0;
    static const char head[] = "trace\tpolicy\tbudget\tbudget_spec\tstep\trecall\t";
    assert_non_null(fgets(line, sizeof line, f));
    assert_int_equal(strncmp(line, head, strlen(head)), 0);
    while (fgets(line, sizeof line, f)) {
        char *save, *t = strtok_r(line, "\t", &save), *p = strtok_r(NULL, "\t", &save);
        strtok_r(NULL, "\t", &save);
        strtok_r(NULL, "\t", &save);
        int step = atoi(strtok_r(NULL, "\t", &save));
        double r = atof(strtok_r(NULL, "\t", &save));
        if (strcmp(t, trace) == 0 && strcmp(p, policy) == 0 && step >= from && step < from + n) {
            y[step - from] = r;
            got++;
        }
    }
    fclose(f);
    return got;
}

static char *kept_file(const char *keep, const char *name)
{
    static char path[800];
    snprintf(path, sizeof path, "%s/%s", keep, name);
    return path;
}

/* recall_steps' lines recomputed from steps.tsv: the mean of the two traces at each
 * decode step, then the centred moving mean over 5 steps (3 at the ends: the first point
 * averages steps P..P+2). The small traces have P = 40, T = 96: 56 decode steps. */
static void test_plot_numbers(void **state)
{
    (void)state;
    if (!kv_plot_available())
        skip();
    char a[400], b[400], ab[820], dir[400], keep[400];
    snprintf(a, sizeof a, "%s/num_a.h5", kv_test_dir);
    snprintf(b, sizeof b, "%s/num_b.h5", kv_test_dir);
    snprintf(dir, sizeof dir, "%s/numbers", kv_test_dir);
    snprintf(keep, sizeof keep, "%s/numbers/kept", kv_test_dir);
    kv_test_gen_small(a, 5, 0, 0);
    kv_test_gen_small(b, 6, 0, 0);
    snprintf(ab, sizeof ab, "%s,%s", a, b);
    kv_cli_result r;
    const char *run[] = { "run", "--trace", ab, "--policies", "full,window,h2o",
                          "--budgets", "16", "-o", dir, "-q", "--no-plot", NULL };
    kvsim(run, 0, &r);
    setenv("KVSIM_PLOT_KEEP", keep, 1);
    const char *plot[] = { "plot", dir, "--smooth", "5", "-q", NULL };
    kv_cli_run(plot, NULL, &r);
    unsetenv("KVSIM_PLOT_KEEP");
    assert_int_equal(r.code, 0);
    enum { P = 40, N = 56 };
    double ya[N], yb[N], mean[N];
    char steps[500];
    snprintf(steps, sizeof steps, "%s/steps.tsv", dir);
    assert_int_equal(read_steps(steps, "num_a.h5", "window", ya, P, N), N);
    assert_int_equal(read_steps(steps, "num_b.h5", "window", yb, P, N), N);
    for (int i = 0; i < N; i++)
        mean[i] = (ya[i] + yb[i]) / 2;
    FILE *f = fopen(kept_file(keep, "rs_b1_p2.dat"), "r");   /* window: the 2nd policy */
    assert_non_null(f);
    for (int i = 0; i < N; i++) {
        double step, raw, smooth;
        assert_int_equal(fscanf(f, "%lf %lf %lf", &step, &raw, &smooth), 3);
        int lo = i < 2 ? 0 : i - 2, hi = i + 2 >= N ? N - 1 : i + 2;
        double sum = 0;
        for (int j = lo; j <= hi; j++)
            sum += mean[j];
        assert_int_equal((int)step, P + i);
        assert_float_equal(raw, mean[i], 1e-8);
        assert_float_equal(smooth, sum / (hi - lo + 1), 1e-8);
    }
    double extra;
    assert_int_equal(fscanf(f, "%lf", &extra), EOF);
    fclose(f);
    /* the caption states the smoothing, the traces and what is left out */
    long len;
    snprintf(steps, sizeof steps, "%s/figures/recall_steps.txt", dir);
    char *cap = slurp(steps, &len);
    assert_non_null(cap);
    assert_non_null(strstr(cap, "centred moving mean over 5 decode steps"));
    assert_non_null(strstr(cap, "the mean over 2 traces"));
    assert_non_null(strstr(cap, "num_a.h5, num_b.h5"));
    assert_non_null(strstr(cap, "full (recall constant at 1) is not drawn"));
    free(cap);
}

/* A policy's colour follows its name, not its place in the run: Okabe and Ito's bluish
 * green (#009E73) for h2o and orange (#E69F00) for window, in either order. */
static void test_plot_colours(void **state)
{
    (void)state;
    if (!kv_plot_available())
        skip();
    char t[400], dir[400], keep[500];
    snprintf(t, sizeof t, "%s/col.h5", kv_test_dir);
    snprintf(dir, sizeof dir, "%s/colours", kv_test_dir);
    kv_test_gen_small(t, 7, 0, 0);
    kv_cli_result r;
    const char *run[] = { "run", "--trace", t, "--policies", "window,h2o", "--budgets", "16",
                          "-o", dir, "-q", "--no-plot", NULL };
    kvsim(run, 0, &r);
    static const char *const orders[] = { "h2o,window", "window,h2o" };
    for (int o = 0; o < 2; o++) {
        snprintf(keep, sizeof keep, "%s/kept%d", dir, o);
        setenv("KVSIM_PLOT_KEEP", keep, 1);
        const char *plot[] = { "plot", dir, "--policies", orders[o], "-q", NULL };
        kv_cli_run(plot, NULL, &r);
        unsetenv("KVSIM_PLOT_KEEP");
        assert_int_equal(r.code, 0);
        long len;
        char *vars = slurp(kept_file(keep, "vars.gp"), &len);
        assert_non_null(vars);
        assert_non_null(strstr(vars, o == 0 ? "set linetype 1 lc rgb '#009E73'"
                                            : "set linetype 2 lc rgb '#009E73'"));
        assert_non_null(strstr(vars, o == 0 ? "set linetype 2 lc rgb '#E69F00'"
                                            : "set linetype 1 lc rgb '#E69F00'"));
        free(vars);
    }
}

/* `style = paper` in an experiment file: kvsim run draws 3.4 in wide figures (680
 * pixels at 200 dpi); another style is refused before replaying. */
static void test_run_paper_style(void **state)
{
    (void)state;
    if (!kv_plot_available())
        skip();
    char t[400], dir[400], ini[1400], path[500];
    snprintf(t, sizeof t, "%s/style.h5", kv_test_dir);
    snprintf(dir, sizeof dir, "%s/style", kv_test_dir);
    kv_test_gen_small(t, 8, 0, 0);
    for (int bad = 0; bad < 2; bad++) {
        snprintf(ini, sizeof ini, "[experiment]\ntrace = %s\nbudgets = 16\noutput = %s\n"
                 "style = %s\n[policy window]\ntype = window\n", t, dir,
                 bad ? "fancy" : "paper");
        snprintf(path, sizeof path, "%s/style%d.ini", kv_test_dir, bad);
        kv_test_write_text(path, ini);
        kv_cli_result r;
        const char *args[] = { "run", path, "-q", NULL };
        kvsim(args, bad ? 2 : 0, &r);
        if (bad) {
            assert_non_null(strstr(r.err, "style must be paper or screen, got 'fancy'"));
            continue;
        }
        snprintf(path, sizeof path, "%s/figures/recall_budget.png", dir);
        long len;
        unsigned char *png = (unsigned char *)slurp(path, &len);
        assert_non_null(png);
        unsigned w = (unsigned)png[16] << 24 | (unsigned)png[17] << 16 |
                     (unsigned)png[18] << 8 | png[19];
        assert_int_equal(w, 680);
        free(png);
    }
}

/* ------------------------------------------------------------ no space */

/* A plot that cannot write: exit 1, the message names `cause`, the figures there before
 * are byte for byte the same and no private directory is left. */
static void expect_write_failure(const char *dir, const kv_cli_limits *lim,
                                 const char *cause)
{
    char figs[800];
    snprintf(figs, sizeof figs, "%s/figures", dir);
    char *before = snapshot(figs);
    kv_cli_result r;
    const char *args[] = { "plot", dir, "-q", NULL };
    int rc = kv_cli_run(args, lim, &r);
    if (rc != 1 || kv_cli_lines(r.err) != 1 || !strstr(r.err, cause))
        fail_msg("wanted exit 1 and one line naming '%s', got %d: %s", cause, rc, r.err);
    assert_same_snapshot(figs, before);
    assert_no_private_dirs(figs);
    free(before);
}

/* A file-size limit (RLIMIT_FSIZE, inherited by gnuplot): every write is checked. */
static void test_plot_file_size_limit(void **state)
{
    (void)state;
    if (!kv_plot_available())
        skip();
    make_good_results();
    kv_cli_limits lim = { .fsize_bytes = 4096 };
    expect_write_failure(g_good, &lim, "figure");
}

/* A real full disk: the results on a small tmpfs, filled up after the first figures. */
static void test_plot_full_tmpfs(void **state)
{
    (void)state;
    if (!kv_plot_available())
        skip();
    make_good_results();
    const char *mnt = kv_cli_tmpfs_mount("8m");
    char dir[400], cmd[1200];
    snprintf(dir, sizeof dir, "%s/results", mnt);
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s' && dd if=/dev/zero of='%s/filler' bs=4k "
             "2>/dev/null; true", g_good, dir, mnt);
    assert_int_equal(kv_test_run_quiet(cmd), 0);
    expect_write_failure(dir, NULL, "ENOSPC");
    kv_cli_tmpfs_unmount();
}

static int setup(void **state)
{
    (void)state;
    if (kv_test_dir_make("kvsim_plot") != 0 || access(kv_cli_bin(), X_OK) != 0)
        return -1;
    snprintf(g_pwned, sizeof g_pwned, "%s/PWNED", kv_test_dir);
    setenv("KV_PWNED", g_pwned, 1);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_with_hostile_names),
        cmocka_unit_test(test_plot_hostile_options),
        cmocka_unit_test(test_plot_hostile_unknowns),
        cmocka_unit_test(test_plot_unknown_budget),
        cmocka_unit_test(test_plot_damaged_files),
        cmocka_unit_test(test_plot_numbers),
        cmocka_unit_test(test_plot_colours),
        cmocka_unit_test(test_run_paper_style),
        cmocka_unit_test(test_plot_file_size_limit),
        cmocka_unit_test(test_plot_full_tmpfs),
    };
    return cmocka_run_group_tests(tests, setup, kv_cli_tmpfs_teardown);
}
