/*
 * test_cli.c - the real `kvsim` binary on bad configurations and options (exit status 2
 * and the message), on its output directory (refused unless --force), and interrupted or
 * starved of disk: previous results intact, no temporaries left, a message, non-zero exit.
 *
 * Expected messages are the rules of the issue and of `kvsim policies` written out here by
 * hand (the nearest name of a misspelt one, the rule broken), not the code's output.
 */
#define _DEFAULT_SOURCE   /* wait4, mount in kv_cli.h */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>

#include "tests/kv_cli.h"
#include "tests/kv_test.h"
#include "traces/gen.h"
#include "traces/trace.h"

static char g_trace[300];   /* small generated trace */
static char g_long[300];    /* a trace whose run writes ~40 MB of results */
static char g_long_budgets[512];

static void gen_trace(const char *path, int T, int P, int heads, int kv_heads)
{
    kv_gen_params gp;
    kv_gen_defaults(&gp);
    gp.n_layers = 1;
    gp.n_heads = heads;
    gp.n_kv_heads = kv_heads;
    gp.head_dim = 8;
    gp.n_tokens = T;
    gp.prefill_len = P;
    gp.n_heavy_hitters = 4;
    char err[512];
    if (kv_gen_write(path, &gp, 0, 0, err, sizeof err))
        fail_msg("%s", err);
}

/* ------------------------------------------------------------ configs and options */

typedef struct {
    const char *what;
    const char *ini;          /* experiment file text, or NULL */
    const char *args[12];     /* after `kvsim run` (and the file), NULL-terminated */
    const char *needle1, *needle2;
} bad_case;

static void expect_usage_error(const bad_case *c)
{
    const char *args[24];
    int n = 0;
    args[n++] = "run";
    if (c->ini) {
        const char *ini = kv_test_path("bad.ini");
        char text[2048];
        snprintf(text, sizeof text, "[experiment]\ntrace = %s\nbudgets = 64\noutput = %s\n%s",
                 g_trace, kv_test_path("out_bad"), c->ini);
        kv_test_write_text(ini, text);
        args[n++] = ini;
    }
    for (int i = 0; c->args[i]; i++)
        args[n++] = c->args[i];
    args[n++] = "-q";
    args[n] = NULL;
    kv_cli_result r;
    int rc = kv_cli_run(args, NULL, &r);
    if (rc != 2 || !strstr(r.err, c->needle1) || (c->needle2 && !strstr(r.err, c->needle2))
        || kv_cli_lines(r.err) != 1)
        fail_msg("%s: exit %d, stderr '%s'; expected 2 and '%s' / '%s' on one line", c->what,
                 rc, r.err, c->needle1, c->needle2 ? c->needle2 : "");
    assert_int_equal(access(kv_test_path("out_bad"), F_OK), -1);   /* nothing created */
}

static void test_config_errors(void **state)
{
    (void)state;
    char O[300], missing[300];   /* own copies: kv_test_path's buffers rotate */
    const char *T = g_trace;
    snprintf(O, sizeof O, "%s", kv_test_path("out_bad"));
    snprintf(missing, sizeof missing, "%s", kv_test_path("no-such.ini"));
    const bad_case cases[] = {
        {"unknown policy", NULL, {"--trace", T, "-o", O, "--budgets", "64", "--policies",
         "morphvk", NULL}, "unknown policy 'morphvk'", "did you mean 'morphkv'"},
        {"unknown type", "[policy a]\ntype = snapvk\n", {NULL}, "snapvk",
         "did you mean 'snapkv'"},
        {"unknown parameter", NULL, {"--trace", T, "-o", O, "--budgets", "64", "--policies",
         "h2o", "--set", "h2o.recnt=0.3", NULL}, "'recnt'", "did you mean 'recent'"},
        {"unknown ini parameter", "[policy m]\ntype = morphkv\nwindw = 8\n", {NULL}, "windw",
         "did you mean 'window'"},
        {"budget 0", NULL, {"--trace", T, "-o", O, "--policies", "h2o", "--budgets", "64,0",
         NULL}, "budget '0'", "positive"},
        {"budget negative", "[policy w]\ntype = window\n", {"--budgets", "-8", NULL},
         "budget '-8'", "positive"},
        {"window = budget (morphkv)", "[policy m]\ntype = morphkv\nwindow = 64\n", {NULL},
         "policy 'm' at budget 64", "window 64"},
        {"window > budget (snapkv)", NULL, {"--trace", T, "-o", O, "--budgets", "16",
         "--policies", "snapkv", NULL}, "policy 'snapkv' at budget 16", "window 32"},
        {"even kernel", "[policy s]\ntype = snapkv\nkernel = 6\n", {NULL},
         "kernel 6 must be odd", "use --set snapkv.kernel=N with N odd, e.g. 5"},
        {"unknown pooling", "[policy s]\ntype = snapkv\npooling = mean\n", {NULL}, "'mean'",
         "max|avg"},
        {"unknown fusion", NULL, {"--trace", T, "-o", O, "--budgets", "64", "--policies",
         "morphkv", "--set", "morphkv.fusion=avg", NULL}, "'avg'", "sum|max"},
        {"duplicate label (ini)", "[policy a]\ntype = h2o\n[policy b]\ntype = window\n"
         "[policy a]\nrecent = 0.2\n", {NULL}, "[policy a] appears twice", NULL},
        {"duplicate label (cli)", NULL, {"--trace", T, "-o", O, "--budgets", "64",
         "--policies", "h2o,window,h2o", NULL}, "duplicate policy label 'h2o'", NULL},
        {"out of range real", "[policy a]\ntype = h2o\nrecent = 1.5\n", {NULL}, "recent",
         "1.5"},
        {"syntax error", "[policy a]\ntype = h2o\nthis line is not ini\n", {NULL},
         "syntax error", ":7:"},   /* line 7 of the file: 4 + 3 */
        {"unreadable file", NULL, {missing, NULL}, "no-such.ini",
         "No such file"},
        {"unknown option", NULL, {"--trace", T, "--frobnicate", NULL}, "--frobnicate", NULL},
        {"bad budget list", NULL, {"--trace", T, "-o", O, "--policies", "h2o", "--budgets",
         "64,abc", NULL}, "budget 'abc'", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_usage_error(&cases[i]);
    /* a directory is not a readable experiment file either */
    const char *args[] = {"run", kv_test_dir, "-q", NULL};
    kv_cli_result r;
    assert_int_equal(kv_cli_run(args, NULL, &r), 2);
    assert_non_null(strstr(r.err, kv_test_dir));
}

/* ------------------------------------------------------------ output directory */

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

static void test_output_dir(void **state)
{
    (void)state;
    const char *out = kv_test_path("out_force");
    const char *args[] = {"run", "--trace", g_trace, "--policies", "window,h2o", "--budgets",
                          "16", "-q", "--no-plot", "-o", out, NULL};
    kv_cli_result r;
    assert_int_equal(kv_cli_run(args, NULL, &r), 0);
    assert_int_equal(count_entries(out), 11);   /* ten result files and manifest.json */
    assert_int_equal(kv_cli_run(args, NULL, &r), 2);
    assert_non_null(strstr(r.err, "not empty"));
    assert_non_null(strstr(r.err, "--force"));
    const char *forced[] = {"run", "--trace", g_trace, "--policies", "window,h2o",
                            "--budgets", "16", "-q", "--no-plot", "--force", "-o", out, NULL};
    assert_int_equal(kv_cli_run(forced, NULL, &r), 0);
    assert_int_equal(count_entries(out), 11);
    const char *file = kv_test_path("a_file");
    kv_test_write_text(file, "x");
    const char *onto_file[] = {"run", "--trace", g_trace, "--policies", "window", "--budgets",
                               "16", "-q", "-o", file, NULL};
    assert_int_not_equal(kv_cli_run(onto_file, NULL, &r), 0);
    assert_non_null(strstr(r.err, "not a directory"));
}

/* ------------------------------------------------------------ interrupted runs */

/* Makes dir hold the results of a small run; returns them concatenated in *snapshot. */
static void previous_results(const char *dir, char *snapshot, size_t len)
{
    const char *args[] = {"run", "--trace", g_trace, "--policies", "window", "--budgets", "16",
                          "-q", "--force", "-o", dir, NULL};
    kv_cli_result r;
    assert_int_equal(kv_cli_run(args, NULL, &r), 0);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "cd '%s' && ls -A && cat *.tsv", dir);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t got = fread(snapshot, 1, len - 1, p);
    snapshot[got] = '\0';
    pclose(p);
    assert_true(got > 100 && got < len - 1);
}

static void same_results(const char *dir, const char *snapshot)
{
    static char now[1 << 16];
    char cmd[512];
    snprintf(cmd, sizeof cmd, "cd '%s' && ls -A && cat *.tsv", dir);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t got = fread(now, 1, sizeof now - 1, p);
    now[got] = '\0';
    pclose(p);
    assert_string_equal(now, snapshot);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/*
 * Starts the long run into dir (holding previous results, --force), sends sig either
 * after delay_s (during the replay) or as soon as a temporary appears (delay_s < 0:
 * while result files are being written), and checks: exit status 128 + sig, one
 * message, previous results byte-identical, no temporary left.
 */
static void interrupt_run(int sig, double delay_s)
{
    const char *dir = kv_test_path("out_interrupt");
    static char before[1 << 16];
    previous_results(dir, before, sizeof before);
    const char *args[] = {"run", "--trace", g_long, "--policies", "window,streamingllm",
                          "--budgets", g_long_budgets, "-q", "--force", "-o", dir, NULL};
    const char *err_path = kv_test_path("interrupt.err");
    pid_t pid = kv_cli_start(args, NULL, err_path);
    assert_true(pid > 0);
    double start = now_s();
    int sent = 0;
    while (!sent && now_s() - start < 60) {
        if (delay_s >= 0 ? now_s() - start >= delay_s : kv_cli_has_temporaries(dir)) {
            kill(pid, sig);
            sent = 1;
        } else {
            struct timespec ts = {0, 1000000};   /* 1 ms */
            nanosleep(&ts, NULL);
        }
    }
    kv_cli_result r;
    kv_cli_wait(pid, err_path, &r);
    if (!r.exited || r.code != 128 + sig)
        fail_msg("signal %d after %g s: exited %d code %d, stderr '%s' (the run finished "
                 "before the signal? make the long trace longer)", sig, delay_s, r.exited,
                 r.code, r.err);
    assert_non_null(strstr(r.err, "interrupted"));
    assert_false(kv_cli_has_temporaries(dir));
    same_results(dir, before);
}

static void test_sigint_during_replay(void **state)
{
    (void)state;
    interrupt_run(SIGINT, 0.3);
}

static void test_sigint_while_writing(void **state)
{
    (void)state;
    interrupt_run(SIGINT, -1);
}

static void test_sigterm_while_writing(void **state)
{
    (void)state;
    interrupt_run(SIGTERM, -1);
}

/* ------------------------------------------------------------ full disk */

/* A write that fails part-way (the limit or device full): message naming the file and
 * the reason, exit 1, no temporaries, previous results intact. */
static void expect_write_failure(const char *dir, const kv_cli_limits *lim,
                                 const char *reason)
{
    static char before[1 << 16];
    previous_results(dir, before, sizeof before);
    const char *args[] = {"run", "--trace", g_long, "--policies", "window,streamingllm",
                          "--budgets", g_long_budgets, "-q", "--force", "-o", dir, NULL};
    kv_cli_result r;
    int rc = kv_cli_run(args, lim, &r);
    if (rc != 1 || !strstr(r.err, "writing failed") || !strstr(r.err, reason)
        || kv_cli_lines(r.err) != 1)
        fail_msg("exit %d, stderr '%s'; expected 1 and '... writing failed: %s'", rc, r.err,
                 reason);
    assert_false(kv_cli_has_temporaries(dir));
    same_results(dir, before);
}

static void test_file_size_limit(void **state)
{
    (void)state;
    /* the previous results are ~20 KB; the long run's steps.tsv is megabytes */
    kv_cli_limits lim = { .fsize_bytes = 1 << 20 };
    expect_write_failure(kv_test_path("out_fsize"), &lim, "File too large");
}

/* A real full file system: a 2 MB tmpfs, where the machine lets root mount one. */
static void test_full_tmpfs(void **state)
{
    (void)state;
    const char *mnt = kv_cli_tmpfs_mount("2m");
    char dir[300];
    snprintf(dir, sizeof dir, "%s/results", mnt);
    expect_write_failure(dir, NULL, "No space left on device");
    kv_cli_tmpfs_unmount();
}

static int setup(void **state)
{
    (void)state;
    if (kv_test_dir_make("kvsim_cli") != 0 || access(kv_cli_bin(), X_OK) != 0)
        return -1;
    snprintf(g_trace, sizeof g_trace, "%s", kv_test_path("small.h5"));
    snprintf(g_long, sizeof g_long, "%s", kv_test_path("long.h5"));
    gen_trace(g_trace, 96, 24, 2, 1);
    /* 2 policies x 32 budgets x ~4000 steps: about a second of replay, then ~40 MB of
     * steps.tsv and retention.tsv, so a signal lands while the files are written */
    gen_trace(g_long, 4000, 64, 2, 1);
    size_t at = 0;
    for (int b = 8; b <= 256; b += 8)
        at += (size_t)snprintf(g_long_budgets + at, sizeof g_long_budgets - at, "%s%d",
                               b > 8 ? "," : "", b);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_output_dir),
        cmocka_unit_test(test_sigint_during_replay),
        cmocka_unit_test(test_sigint_while_writing),
        cmocka_unit_test(test_sigterm_while_writing),
        cmocka_unit_test(test_file_size_limit),
        cmocka_unit_test(test_full_tmpfs),
    };
    return cmocka_run_group_tests(tests, setup, kv_cli_tmpfs_teardown);
}
