/*
 * test_analysis.c - a real experiment end to end (two generated traces replayed by
 * `kvsim run`): the statistics columns and files checked against values recomputed here
 * from the other files or derived by hand, and the figures: `kvsim plot` writes six
 * 1200x800 PNG files (screen style) or 3.4 in wide ones (paper style); test_plot.c has
 * the hostile names, damaged files and full disks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "tests/kv_test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sim/commands.h"
#include "sim/plot.h"
#include "traces/gen.h"

/* ------------------------------------------------------------ TSV reading */

typedef struct {
    int n_cols, n_rows;       /* n_rows: data rows */
    char **cell;              /* [(n_rows + 1) * n_cols], row 0 the header */
    char *text;
} tsv;

static tsv *tsv_read(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot read %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    rewind(f);
    tsv *t = calloc(1, sizeof *t);
    t->text = malloc((size_t)len + 1);
    assert_int_equal(fread(t->text, 1, (size_t)len, f), (size_t)len);
    t->text[len] = '\0';
    fclose(f);
    int lines = 0, tabs = 0;
    for (long i = 0; i < len; i++) {
        lines += t->text[i] == '\n';
        tabs += lines == 0 && t->text[i] == '\t';
    }
    t->n_cols = tabs + 1;
    t->n_rows = lines - 1;
    t->cell = malloc((size_t)lines * t->n_cols * sizeof *t->cell);
    char *p = t->text;
    for (int r = 0; r < lines; r++)
        for (int c = 0; c < t->n_cols; c++) {
            t->cell[r * t->n_cols + c] = p;
            p += strcspn(p, c == t->n_cols - 1 ? "\n" : "\t\n");
            if (c < t->n_cols - 1 && *p != '\t')
                fail_msg("%s: row %d has too few columns", path, r);
            *p++ = '\0';
        }
    return t;
}

static void tsv_free(tsv *t)
{
    free(t->cell);
    free(t->text);
    free(t);
}

static int col(const tsv *t, const char *name)
{
    for (int c = 0; c < t->n_cols; c++)
        if (strcmp(t->cell[c], name) == 0)
            return c;
    fail_msg("no column %s", name);
    return -1;
}

static const char *get(const tsv *t, int row, const char *name)
{
    return t->cell[(row + 1) * t->n_cols + col(t, name)];
}

static double num(const tsv *t, int row, const char *name)
{
    return atof(get(t, row, name));
}

/* The first data row whose columns equal the given "name=value" pairs (NULL-ended). */
static int find(const tsv *t, ...)
{
    for (int r = 0; r < t->n_rows; r++) {
        va_list ap;
        va_start(ap, t);
        int ok = 1;
        for (const char *name; ok && (name = va_arg(ap, const char *));) {
            const char *value = va_arg(ap, const char *);
            ok = strcmp(get(t, r, name), value) == 0;
        }
        va_end(ap);
        if (ok)
            return r;
    }
    fail_msg("no matching row");
    return -1;
}

/* ------------------------------------------------------------ the experiment */

static char results[300];
enum { T = 160, P = 48, LAYERS = 2, HEADS = 4, KV_HEADS = 2 };

static void gen(const char *path, unsigned long seed)
{
    kv_gen_params gp;
    kv_gen_defaults(&gp);
    gp.seed = seed;
    gp.n_layers = LAYERS;
    gp.n_heads = HEADS;
    gp.n_kv_heads = KV_HEADS;
    gp.head_dim = 16;
    gp.n_tokens = T;
    gp.prefill_len = P;
    char err[512];
    if (kv_gen_write(path, &gp, 0, 0, err, sizeof err))
        fail_msg("%s", err);
}

/* Two traces, five policies, budgets 24 and 0.75p (= floor(0.75 * 48) = 36), no plot. */
static int setup(void **state)
{
    (void)state;
    assert_int_equal(kv_test_dir_make("kvsim-test-analysis"), 0);
    char a[300], b[300], traces[700];
    snprintf(a, sizeof a, "%s/a.h5", kv_test_dir);
    snprintf(b, sizeof b, "%s/b.h5", kv_test_dir);
    gen(a, 1);
    gen(b, 2);
    snprintf(traces, sizeof traces, "%s,%s", a, b);
    snprintf(results, sizeof results, "%s/out", kv_test_dir);
    char *argv[] = { "run", "--trace", traces, "--policies", "full,window,h2o,snapkv,morphkv",
                     "--budgets", "24,0.75p", "--set", "snapkv.window=8", "--set",
                     "morphkv.window=8", "-o", results, "-q", "--no-plot", NULL };
    return kv_cmd_run((int)(sizeof argv / sizeof argv[0]) - 1, argv);
}

static tsv *result(const char *name)
{
    char path[400];
    snprintf(path, sizeof path, "%s/%s", results, name);
    return tsv_read(path);
}

/* ------------------------------------------------------------ statistics */

/* budget_spec keeps the text, budget the tokens: 0.75p of P = 48 is 36. */
static void test_budget_columns(void **state)
{
    (void)state;
    tsv *s = result("summary.tsv");
    int r = find(s, "trace", "a.h5", "policy", "h2o", "budget_spec", "0.75p", NULL);
    assert_string_equal(get(s, r, "budget"), "36");
    r = find(s, "trace", "b.h5", "policy", "window", "budget_spec", "24", NULL);
    assert_string_equal(get(s, r, "budget"), "24");
    tsv_free(s);
}

/* README "Output files": every file starts with trace, policy, budget, budget_spec
 * (summary.tsv with type after policy) but compare.tsv and predict.tsv, which start with
 * trace and budget_spec; the list is every .tsv the run wrote, so a new file must be
 * placed in it (and in the README). */
static void test_leading_columns(void **state)
{
    (void)state;
    static const struct { const char *file, *lead; } files[] = {
        {"summary.tsv", "trace\tpolicy\ttype\tbudget\tbudget_spec\t"},
        {"steps.tsv", "trace\tpolicy\tbudget\tbudget_spec\t"},
        {"heads.tsv", "trace\tpolicy\tbudget\tbudget_spec\t"},
        {"retention.tsv", "trace\tpolicy\tbudget\tbudget_spec\t"},
        {"retention_map.tsv", "trace\tpolicy\tbudget\tbudget_spec\t"},
        {"lifetimes.tsv", "trace\tpolicy\tbudget\tbudget_spec\t"},
        {"recall_hist.tsv", "trace\tpolicy\tbudget\tbudget_spec\t"},
        {"budgets.tsv", "trace\tpolicy\tbudget\tbudget_spec\t"},
        {"compare.tsv", "trace\tbudget_spec\tpolicy_a\tpolicy_b\t"},
        {"predict.tsv", "trace\tbudget_spec\tmetric\t"},
    };
    size_t n = sizeof files / sizeof files[0];
    for (size_t i = 0; i < n; i++) {
        tsv *t = result(files[i].file);
        char header[512] = "";
        for (int c = 0; c < t->n_cols; c++)
            snprintf(header + strlen(header), sizeof header - strlen(header), "%s\t",
                     t->cell[c]);
        if (strncmp(header, files[i].lead, strlen(files[i].lead)) != 0)
            fail_msg("%s starts '%s', expected '%s'", files[i].file, header, files[i].lead);
        tsv_free(t);
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "ls '%s' | grep -c '[.]tsv$' > '%s/n_tsv'", results, kv_test_dir);
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s/n_tsv", kv_test_dir);
    FILE *f = fopen(cmd, "r");
    assert_non_null(f);
    size_t n_tsv = 0;
    assert_int_equal(fscanf(f, "%zu", &n_tsv), 1);
    fclose(f);
    assert_int_equal(n_tsv, n);
}

/* The bootstrap interval brackets recall_mean and lies within the smallest and largest
 * per-(layer, head) means of heads.tsv (a resample mean cannot leave that range); the
 * mean of heads.tsv's 8 units is recall_mean. */
static void test_summary_ci(void **state)
{
    (void)state;
    tsv *s = result("summary.tsv"), *h = result("heads.tsv");
    const char *pols[] = { "window", "h2o", "snapkv", "morphkv" };
    for (int p = 0; p < 4; p++) {
        int r = find(s, "trace", "a.h5", "policy", pols[p], "budget_spec", "24", NULL);
        double lo = 1e9, hi = -1e9, sum = 0;
        int n = 0;
        for (int i = 0; i < h->n_rows; i++)
            if (!strcmp(get(h, i, "trace"), "a.h5") && !strcmp(get(h, i, "policy"), pols[p]) &&
                !strcmp(get(h, i, "budget_spec"), "24")) {
                double v = num(h, i, "recall_mean");
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
                sum += v;
                n++;
            }
        assert_int_equal(n, LAYERS * HEADS);
        assert_int_equal((int)num(s, r, "ci_units"), LAYERS * HEADS);
        double mean = num(s, r, "recall_mean");
        assert_true(fabs(mean - sum / n) < 1e-6);
        assert_true(num(s, r, "recall_ci_lo") <= mean && mean <= num(s, r, "recall_ci_hi"));
        assert_true(num(s, r, "recall_ci_lo") >= lo - 1e-9);
        assert_true(num(s, r, "recall_ci_hi") <= hi + 1e-9);
        assert_true(num(s, r, "recall_ci_hi") > num(s, r, "recall_ci_lo"));
    }
    tsv_free(s);
    tsv_free(h);
}

/* trace = all: the mean of the two traces, and the Student-t interval by hand: with two
 * values, s / sqrt(2) = |x1 - x2| / 2 and t(0.975, 1) = 12.7062 (table). */
static void test_all_rows(void **state)
{
    (void)state;
    tsv *s = result("summary.tsv");
    int ra = find(s, "trace", "a.h5", "policy", "h2o", "budget_spec", "24", NULL);
    int rb = find(s, "trace", "b.h5", "policy", "h2o", "budget_spec", "24", NULL);
    int rall = find(s, "trace", "all", "policy", "h2o", "budget_spec", "24", NULL);
    double x1 = num(s, ra, "recall_mean"), x2 = num(s, rb, "recall_mean");
    double half = 12.7062 * fabs(x1 - x2) / 2.0;
    assert_true(fabs(num(s, rall, "recall_mean") - (x1 + x2) / 2) < 1e-8);
    assert_true(fabs(num(s, rall, "recall_ci_lo") - ((x1 + x2) / 2 - half)) < 1e-4 * half + 1e-8);
    assert_true(fabs(num(s, rall, "recall_ci_hi") - ((x1 + x2) / 2 + half)) < 1e-4 * half + 1e-8);
    assert_string_equal(get(s, rall, "ci_units"), "2");
    tsv_free(s);
}

/* compare.tsv: diff_mean (a - b) is the mean over (layer, head) of the difference of
 * heads.tsv's recall_mean (equal steps per unit, so the mean over (layer, head, step)),
 * which is also the difference of the summary means; its interval brackets it. */
static void test_compare(void **state)
{
    (void)state;
    tsv *c = result("compare.tsv"), *h = result("heads.tsv"), *s = result("summary.tsv");
    /* pairs follow the configuration order: a = window, b = h2o */
    int r = find(c, "trace", "b.h5", "budget_spec", "0.75p", "policy_a", "window", "policy_b",
                 "h2o", NULL);
    double sum = 0;
    for (int l = 0; l < LAYERS; l++)
        for (int hd = 0; hd < HEADS; hd++) {
            char ls[16], hs[16];
            snprintf(ls, sizeof ls, "%d", l);
            snprintf(hs, sizeof hs, "%d", hd);
            int a = find(h, "trace", "b.h5", "policy", "h2o", "budget_spec", "0.75p", "layer",
                         ls, "head", hs, NULL);
            int b = find(h, "trace", "b.h5", "policy", "window", "budget_spec", "0.75p",
                         "layer", ls, "head", hs, NULL);
            sum += num(h, b, "recall_mean") - num(h, a, "recall_mean");
        }
    double d = num(c, r, "diff_mean");
    assert_true(fabs(d - sum / (LAYERS * HEADS)) < 1e-6);
    int sa = find(s, "trace", "b.h5", "policy", "h2o", "budget_spec", "0.75p", NULL);
    int sb = find(s, "trace", "b.h5", "policy", "window", "budget_spec", "0.75p", NULL);
    assert_true(fabs(d - (num(s, sb, "recall_mean") - num(s, sa, "recall_mean"))) < 1e-6);
    assert_true(num(c, r, "diff_ci_lo") <= d && d <= num(c, r, "diff_ci_hi"));
    assert_string_equal(get(c, r, "budget_a"), "36");
    /* 5 policies: 10 pairs per budget and trace, 2 budgets, traces a, b and all */
    assert_int_equal(c->n_rows, 10 * 2 * 3);
    tsv_free(c);
    tsv_free(h);
    tsv_free(s);
}

/* retention_map.tsv by hand: window at B = 24 ends holding exactly T-24 .. T-1 in every
 * (layer, KV head); full holds all T positions. */
static void test_retention_map(void **state)
{
    (void)state;
    tsv *m = result("retention_map.tsv");
    int n_window = 0, n_full = 0;
    for (int i = 0; i < m->n_rows; i++) {
        if (strcmp(get(m, i, "trace"), "a.h5") || strcmp(get(m, i, "budget_spec"), "24"))
            continue;
        if (!strcmp(get(m, i, "policy"), "window")) {
            n_window++;
            assert_true(num(m, i, "position") >= T - 24);
            assert_true(num(m, i, "held") == 1.0);
        }
        n_full += !strcmp(get(m, i, "policy"), "full");
    }
    assert_int_equal(n_window, LAYERS * KV_HEADS * 24);
    assert_int_equal(n_full, LAYERS * KV_HEADS * T);
    tsv_free(m);
}

/* recall_hist.tsv: 20 bins per run whose step counts add up to the D = T - P steps. */
static void test_recall_hist(void **state)
{
    (void)state;
    tsv *hist = result("recall_hist.tsv");
    long long total = 0;
    int bins = 0;
    for (int i = 0; i < hist->n_rows; i++)
        if (!strcmp(get(hist, i, "trace"), "b.h5") && !strcmp(get(hist, i, "policy"), "h2o") &&
            !strcmp(get(hist, i, "budget_spec"), "24")) {
            total += atoll(get(hist, i, "steps"));
            bins++;
        }
    assert_int_equal(bins, 20);
    assert_int_equal(total, T - P);
    int full = find(hist, "trace", "a.h5", "policy", "full", "budget_spec", "24", "bin_lo",
                    "0.95", NULL);
    assert_int_equal(atoll(get(hist, full, "steps")), T - P);   /* recall 1: last bin */
    tsv_free(hist);
}

/*
 * Byte budgets resolve to different tokens per policy, so the policies are replayed in
 * separate groups and merged. By hand (a.h5: 2 layers x 2 KV heads, head_dim 16, 2-byte
 * elements: 256 bytes per cached token over the 4 caches; P = 48 > B): 6KiB = 6144 bytes
 * gives window 256 (B + 1) <= 6144 -> B = 23; h2o (+4 bytes per token per cache)
 * 272 (B + 1) <= 6144 -> B = 21; morphkv (window 8: 8 rows * 2 heads * 4 bytes = 64
 * per token per cache) 512 (B + 1) <= 6144 -> B = 11. Each policy's rows must then be
 * exactly those of a run of that policy alone at that many tokens.
 */
static void test_byte_budget_groups(void **state)
{
    (void)state;
    char a[300], dir[300], alone[300];
    snprintf(a, sizeof a, "%s/a.h5", kv_test_dir);
    snprintf(dir, sizeof dir, "%s/bytes", kv_test_dir);
    char *argv[] = { "run", "--trace", a, "--policies", "window,h2o,morphkv", "--budgets",
                     "6KiB", "--set", "morphkv.window=8", "-o", dir, "-q", "--no-plot", NULL };
    assert_int_equal(kv_cmd_run(13, argv), 0);
    char path[400];
    snprintf(path, sizeof path, "%s/summary.tsv", dir);
    tsv *s = tsv_read(path);
    const char *pols[] = { "window", "h2o", "morphkv" }, *tokens[] = { "23", "21", "11" };
    for (int p = 0; p < 3; p++) {
        int r = find(s, "policy", pols[p], NULL);
        assert_string_equal(get(s, r, "budget"), tokens[p]);
        assert_string_equal(get(s, r, "budget_spec"), "6KiB");
        snprintf(alone, sizeof alone, "%s/alone-%s", kv_test_dir, pols[p]);
        char *one[] = { "run", "--trace", a, "--policies", (char *)pols[p], "--budgets",
                        (char *)tokens[p], "-o", alone, "-q", "--no-plot", "--set",
                        "morphkv.window=8", NULL };
        /* --set only where morphkv is in the run */
        assert_int_equal(kv_cmd_run(p == 2 ? 13 : 11, one), 0);
        snprintf(path, sizeof path, "%s/summary.tsv", alone);
        tsv *t = tsv_read(path);
        assert_string_equal(get(t, 0, "recall_mean"), get(s, r, "recall_mean"));
        assert_string_equal(get(t, 0, "kv_bytes_peak"), get(s, r, "kv_bytes_peak"));
        tsv_free(t);
    }
    tsv_free(s);
}

/* params: the label's non-default parameters, from the run's --set (snapkv and morphkv
 * default to window 32, so window=8 is their only change), "-" for the others, in the
 * per-trace and the "all" rows alike. */
static void test_params_column(void **state)
{
    (void)state;
    tsv *s = result("summary.tsv");
    static const char *const pols[] = { "full", "window", "h2o", "snapkv", "morphkv" };
    static const char *const want[] = { "-", "-", "-", "window=8", "window=8" };
    for (int p = 0; p < 5; p++) {
        assert_string_equal(get(s, find(s, "policy", pols[p], "trace", "a.h5", NULL),
                                "params"), want[p]);
        assert_string_equal(get(s, find(s, "policy", pols[p], "trace", "all", NULL),
                                "params"), want[p]);
    }
    tsv_free(s);
}

/* manifest.json, read by Python's json module (so it must be valid JSON), its facts
 * checked against independent sources: the sha256 of each trace file by hashlib, the
 * geometry the traces were generated with (gen() above), the --set values and the
 * defaults of `kvsim policies` (morphkv: fusion sum, evict_every 1), 0.75p of P = 48 is
 * 36 tokens, and the command line in the order typed. */
static void test_manifest(void **state)
{
    (void)state;
    char cmd[2400];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c '\n"
             "import json, hashlib, sys\n"
             "d = json.load(open(sys.argv[1] + \"/manifest.json\"))\n"
             "assert d[\"command\"][:5] == [\"kvsim\", \"run\", \"--trace\", sys.argv[2], \"--policies\"], d[\"command\"]\n"
             "assert d[\"experiment\"][\"budgets\"] == [\"24\", \"0.75p\"]\n"
             "pols = {p[\"label\"]: p for p in d[\"experiment\"][\"policies\"]}\n"
             "m = pols[\"morphkv\"][\"params\"]\n"
             "assert m[\"window\"] == \"8\" and m[\"fusion\"] == \"sum\" and m[\"evict_every\"] == \"1\", m\n"
             "assert m[\"kv_granularity\"] == \"kv_head\"\n"
             "assert [t[\"name\"] for t in d[\"traces\"]] == [\"a.h5\", \"b.h5\"]\n"
             "for t in d[\"traces\"]:\n"
             "    assert t[\"sha256\"] == hashlib.sha256(open(t[\"path\"], \"rb\").read()).hexdigest()\n"
             "    g = (t[\"layers\"], t[\"heads\"], t[\"kv_heads\"], t[\"head_dim\"], t[\"tokens\"], t[\"prompt\"])\n"
             "    assert g == (%d, %d, %d, 16, %d, %d), g\n"
             "    assert t[\"budgets\"][\"window\"] == [24, 36], t[\"budgets\"]\n"
             "' '%s' '%s/a.h5,%s/b.h5'", LAYERS, HEADS, KV_HEADS, T, P, results, kv_test_dir,
             kv_test_dir);
    assert_int_equal(system(cmd), 0);
}

/* The printed table: growing policies (full, snapkv: the budget does not bound them)
 * marked '*', h2o not; every row as long as the header and the " + " of each budget at
 * the same column in every row; h2o's metadata as summary.tsv's meta_bytes_peak says
 * (whole bytes under 1 KiB, else KiB to one decimal). */
static void test_printed_table(void **state)
{
    (void)state;
    char cmd[1200], dir[400], line[600], rows[8][600];
    snprintf(dir, sizeof dir, "%s/table", kv_test_dir);
    snprintf(cmd, sizeof cmd, "%s run --trace %s/a.h5 --policies full,h2o,snapkv --budgets 24 "
             "--set snapkv.window=8 -o %s --no-plot", getenv("KVSIM_BIN") ? getenv("KVSIM_BIN")
             : "./kvsim", kv_test_dir, dir);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    int n = 0;
    while (fgets(line, sizeof line, p) && n < 8)
        if (n > 0 || strncmp(line, "policy", 6) == 0)
            snprintf(rows[n++], sizeof rows[0], "%s", line);
    assert_int_equal(pclose(p), 0);
    assert_true(n >= 6);   /* two header lines, three policies, the footnote */
    assert_int_equal(strncmp(rows[2], "full *", 6), 0);
    assert_int_equal(strncmp(rows[3], "h2o ", 4), 0);
    assert_null(strchr(rows[3], '*'));
    assert_int_equal(strncmp(rows[4], "snapkv *", 8), 0);
    assert_non_null(strstr(rows[5], "does not bound"));
    size_t plus = strstr(rows[1], " + ") - rows[1];
    for (int r = 1; r < 5; r++) {
        assert_int_equal(strlen(rows[r]), strlen(rows[1]));
        assert_int_equal(strstr(rows[r], " + ") - rows[r], (long)plus);
    }
    snprintf(line, sizeof line, "%s/summary.tsv", dir);
    tsv *s = tsv_read(line);
    char want[64], bytes[32];
    double meta = num(s, find(s, "policy", "h2o", NULL), "meta_bytes_peak");
    if (meta < 1024)
        snprintf(bytes, sizeof bytes, "%.0f B", meta);
    else
        snprintf(bytes, sizeof bytes, "%.1f KiB", meta / 1024);
    snprintf(want, sizeof want, "+ %10s\n", bytes);
    assert_non_null(strstr(rows[3], want));
    tsv_free(s);
}

/* ------------------------------------------------------------ figures */

/* Width and height from a PNG's IHDR chunk (bytes 16..23, big-endian). */
static void png_size(const char *path, unsigned *w, unsigned *h, long *bytes)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("no figure %s", path);
    unsigned char head[24];
    assert_int_equal(fread(head, 1, 24, f), 24);
    fseek(f, 0, SEEK_END);
    *bytes = ftell(f);
    fclose(f);
    static const unsigned char sig[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
    assert_memory_equal(head, sig, 8);
    assert_memory_equal(head + 12, "IHDR", 4);
    *w = (unsigned)head[16] << 24 | (unsigned)head[17] << 16 | (unsigned)head[18] << 8 | head[19];
    *h = (unsigned)head[20] << 24 | (unsigned)head[21] << 16 | (unsigned)head[22] << 8 | head[23];
}

static void test_plot_pngs(void **state)
{
    (void)state;
    if (!kv_plot_available())
        skip();
    char out[400];
    snprintf(out, sizeof out, "%s/figs", kv_test_dir);
    char *argv[] = { "plot", results, "--budget", "0.75p", "-o", out, "-q", NULL };
    assert_int_equal(kv_cmd_plot(7, argv), 0);
    const char *names[] = { "recall_steps", "memory_steps", "recall_budget", "recall_bytes",
                            "retention_map", "head_recall" };
    for (int i = 0; i < 6; i++) {
        char path[500];
        snprintf(path, sizeof path, "%s/%s.png", out, names[i]);
        unsigned w, h;
        long bytes;
        png_size(path, &w, &h, &bytes);
        assert_int_equal(w, 1200);
        assert_int_equal(h, 800);
        assert_true(bytes > 10000);   /* a blank 1200x800 PNG is about 4 KB */
    }
    /* paper style: 3.4 in wide at 200 dots per inch */
    char *paper[] = { "plot", results, "--style", "paper", "-o", out, "-q", NULL };
    assert_int_equal(kv_cmd_plot(7, paper), 0);
    for (int i = 0; i < 6; i++) {
        char path[500];
        snprintf(path, sizeof path, "%s/%s.png", out, names[i]);
        unsigned w, h;
        long bytes;
        png_size(path, &w, &h, &bytes);
        assert_int_equal(w, 680);
        assert_true(h >= 150 && h <= 1800);   /* 0.75 to 9 in tall */
    }
    /* a budget the results do not have is a usage error */
    char *bad[] = { "plot", results, "--budget", "999", "-o", out, "-q", NULL };
    assert_int_equal(kv_test_call_quiet(kv_cmd_plot, 7, bad), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_budget_columns),
        cmocka_unit_test(test_leading_columns),
        cmocka_unit_test(test_summary_ci),
        cmocka_unit_test(test_all_rows),
        cmocka_unit_test(test_compare),
        cmocka_unit_test(test_retention_map),
        cmocka_unit_test(test_recall_hist),
        cmocka_unit_test(test_byte_budget_groups),
        cmocka_unit_test(test_params_column),
        cmocka_unit_test(test_manifest),
        cmocka_unit_test(test_printed_table),
        cmocka_unit_test(test_plot_pngs),
    };
    return cmocka_run_group_tests(tests, setup, kv_test_dir_teardown);
}
