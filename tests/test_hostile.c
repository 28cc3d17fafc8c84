/*
 * test_hostile.c - the real `kvsim` binary against what a hostile or careless user does:
 * damaged length fields that claim gigabytes, FIFOs given as inputs, logits that
 * overflow, memory limits, concurrent runs into one directory, kills at chosen points,
 * odd names and settings. Each case checks the exit status, a one-line message and what
 * must not happen (memory blow-up, a hang, a replaced or mixed file).
 *
 * Files are built by `kvsim gen`, by h5py (which writes no checksums, so damage is not
 * caught by HDF5 itself) or by the HDF5 C API, never by the code under test alone.
 */
#define _GNU_SOURCE   /* wait4 in kv_cli.h, memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <limits.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <hdf5.h>

#include "tests/kv_cli.h"
#include "tests/kv_test.h"
#include "sim/rows.h"

static char g_trace[300];   /* small generated qk trace */

/* ------------------------------------------------------------ helpers */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Runs kvsim with args; a child still running after limit_s seconds is killed and the
 * test fails (the case it runs would have hung). Returns the exit status. */
static int run_bounded(const char *const *args, const kv_cli_limits *lim, double limit_s,
                       kv_cli_result *r)
{
    const char *err_path = kv_test_path("bounded.err");
    pid_t pid = kv_cli_start(args, lim, err_path);
    assert_true(pid > 0);
    double start = now_s();
    int status;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (now_s() - start > limit_s) {
            kill(pid, SIGKILL);
            kv_cli_wait(pid, err_path, r);
            fail_msg("kvsim %s %s: still running after %g s (blocked?)", args[0],
                     args[1] ? args[1] : "", limit_s);
        }
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    /* reaped above: read stderr back the way kv_cli_wait does */
    r->pid = pid;
    r->exited = WIFEXITED(status);
    r->code = r->exited ? WEXITSTATUS(status) : WTERMSIG(status);
    r->err[0] = '\0';
    FILE *f = fopen(err_path, "r");
    if (f) {
        size_t got = fread(r->err, 1, sizeof r->err - 1, f);
        r->err[got] = '\0';
        fclose(f);
    }
    unlink(err_path);
    return r->exited ? r->code : 128 + r->code;
}

/* Expects exit status want, exactly one line on stderr holding needle. */
static void expect_one_line(const char *what, int rc, const kv_cli_result *r, int want,
                            const char *needle)
{
    /* under `make test-asan` LeakSanitizer may append its suppression report */
    char own[sizeof r->err];
    snprintf(own, sizeof own, "%s", r->err);
    char *lsan = strstr(own, "-----------------------------------------------------\nSuppressions");
    if (lsan)
        *lsan = '\0';
    if (rc != want || !strstr(own, needle) || kv_cli_lines(own) != 1)
        fail_msg("%s: exit %d, stderr '%s'; expected %d and one line with '%s'", what, rc,
                 r->err, want, needle);
}

/* Runs a python3 (h5py) script given as text; fails the test when it fails. */
static void python(const char *script)
{
    const char *path = kv_test_path("script.py");
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(script, f);
    fclose(f);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "cd '%s' && /usr/bin/python3 script.py", kv_test_dir);
    if (system(cmd) != 0)
        fail_msg("the h5py script failed (is python3-h5py installed?):\n%s", script);
}

/* The h5py preamble: writes a valid small qk trace to NAME with root attributes as
 * h5py stores them (variable-length strings, no checksums). */
#define H5PY_TRACE \
    "import h5py, numpy as np, struct\n" \
    "def trace(name, T=64, P=16, H=2, KV=1, D=8, L=1, model='stories-test', attn=None,\n" \
    "          chunks=None, maxshape=None, scale=None):\n" \
    "    f = h5py.File(name, 'w')\n" \
    "    for k, v in dict(kvtrace_version=1, n_layers=L, n_heads=H, n_kv_heads=KV,\n" \
    "                     head_dim=D, n_tokens=T, prefill_len=P).items():\n" \
    "        f.attrs[k] = np.int64(v)\n" \
    "    f.attrs['model'] = model\n" \
    "    f.attrs['source'] = 'qk' if attn is None else 'attn'\n" \
    "    if scale is not None: f.attrs['softmax_scale'] = np.float64(scale)\n" \
    "    rng = np.random.default_rng(1)\n" \
    "    for l in range(L):\n" \
    "        g = f.create_group('layers/%d' % l)\n" \
    "        if attn is None:\n" \
    "            g['q'] = rng.standard_normal((H, T, D)).astype(np.float32)\n" \
    "            g['k'] = rng.standard_normal((KV, T, D)).astype(np.float32)\n" \
    "        else:\n" \
    "            g.create_dataset('attn', data=attn, chunks=chunks, maxshape=maxshape,\n" \
    "                             compression='gzip')\n" \
    "    f.close()\n"

/* ------------------------------------------------------------ bounded reads */

/* 4 damaged bytes: the stored length of the `model` string claims 2 GiB. HDF5 allocated
 * and copied what the length said (gigabytes, many seconds); now refused up front. */
static void test_damaged_string_length(void **state)
{
    (void)state;
    python(H5PY_TRACE
           "trace('vlen.h5', model='MODELNAME')\n"
           "d = bytearray(open('vlen.h5', 'rb').read())\n"
           "heap = d.find(b'GCOL')\n"
           "desc = struct.pack('<IQ', len('MODELNAME'), heap)\n"
           "at = d.find(desc)\n"
           "assert heap > 0 and at > 0 and d.find(desc, at + 1) < 0\n"
           "d[at:at + 4] = struct.pack('<I', 0x7fffffff)\n"
           "open('vlen_bad.h5', 'wb').write(d)\n");
    /* far below the 2 GiB claim (no limit under ASan, which reserves terabytes) */
    kv_cli_limits lim = { .as_bytes = getenv("KVSIM_SANITIZED") ? 0 : (rlim_t)1 << 30 };
    const char *ok[] = {"info", kv_test_path("vlen.h5"), NULL};
    kv_cli_result r;
    assert_int_equal(run_bounded(ok, &lim, 30, &r), 0);     /* the undamaged file is fine */
    const char *args[] = {"info", kv_test_path("vlen_bad.h5"), NULL};
    int rc = run_bounded(args, &lim, 30, &r);
    expect_one_line("damaged string length", rc, &r, 1, "root attribute model");
    assert_non_null(strstr(r.err, "2147483647 bytes"));
}

/* A chunk shape larger than the dataset (legal for an extendible dataset): a read would
 * decompress the whole chunk (16 MiB here; 1 GiB of a 2 MB file was seen). Refused
 * before any read. */
static void test_oversized_chunks(void **state)
{
    (void)state;
    python(H5PY_TRACE
           "T = 64\n"
           "a = np.tril(np.ones((2, T, T), np.float32)); a /= a.sum(-1, keepdims=True)\n"
           "trace('chunk_big.h5', T=T, attn=a, chunks=(2, T, 1 << 15),\n"
           "      maxshape=(None, None, None))\n"
           "trace('chunk_ok.h5', T=T, attn=a, chunks=(1, 32, 32))\n");
    kv_cli_limits lim = { .as_bytes = getenv("KVSIM_SANITIZED") ? 0 : (rlim_t)768 << 20 };
    kv_cli_result r;
    const char *ok[] = {"info", "--check", kv_test_path("chunk_ok.h5"), NULL};
    assert_int_equal(run_bounded(ok, &lim, 30, &r), 0);
    const char *args[] = {"info", "--check", kv_test_path("chunk_big.h5"), NULL};
    int rc = run_bounded(args, &lim, 30, &r);
    expect_one_line("oversized chunks", rc, &r, 1, "/layers/0/attn has chunks [2, 64, 32768]");
}

/* ------------------------------------------------------------ not regular files */

/* A FIFO with no writer blocks open(2) forever; a directory is no input either. */
static void test_fifo_inputs(void **state)
{
    (void)state;
    char fifo[300], out[300], cap[300];
    snprintf(fifo, sizeof fifo, "%s", kv_test_path("pipe.h5"));
    snprintf(out, sizeof out, "%s", kv_test_path("out_fifo"));
    snprintf(cap, sizeof cap, "%s", kv_test_path("cap_fifo.h5"));
    unlink(fifo);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    struct {
        const char *args[10];
        int want;
    } cases[] = {
        {{"info", fifo, NULL}, 1},
        {{"info", "--check", fifo, NULL}, 1},
        {{"run", "--trace", fifo, "--policies", "window", "--budgets", "8", "-o", out,
          NULL}, 1},
        {{"run", fifo, NULL}, 2},   /* as the experiment file */
        {{"capture", "--model", fifo, "--tokens", "8", "--prefill", "2", "-o", cap,
          NULL}, 1},
        {{"info", kv_test_dir, NULL}, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kv_cli_result r;
        int rc = run_bounded(cases[i].args, NULL, 20, &r);
        char what[128];
        snprintf(what, sizeof what, "kvsim %s %s", cases[i].args[0], cases[i].args[1]);
        expect_one_line(what, rc, &r, cases[i].want, "expected a regular file");
    }
    assert_int_equal(access(out, F_OK), -1);
    assert_int_equal(access(cap, F_OK), -1);
}

/* ------------------------------------------------------------ overflowing logits */

/* Copies the small generated trace to name and runs an h5py edit on it (python text
 * working on the open file `f`). */
static const char *edited_trace(const char *name, const char *edit)
{
    static char path[300];
    snprintf(path, sizeof path, "%s", kv_test_path(name));
    char script[2048];
    snprintf(script, sizeof script,
             "import h5py, numpy as np, shutil\n"
             "shutil.copy('%s', '%s')\n"
             "f = h5py.File('%s', 'r+')\n%s\nf.close()\n", g_trace, path, path, edit);
    python(script);
    return path;
}

/* info --check and run (policies whose assertions and top-k metric met NaN rows) each
 * give one line naming the first bad row, exit 1, and write no result file. */
static void expect_bad_logits(const char *trace, const char *needle)
{
    char out[300];
    snprintf(out, sizeof out, "%s", kv_test_path("out_logits"));
    const char *check[] = {"info", "--check", trace, NULL};
    kv_cli_result r;
    int rc = run_bounded(check, NULL, 30, &r);
    expect_one_line("info --check", rc, &r, 1, needle);
    const char *run[] = {"run", "--trace", trace, "--policies", "h2o,morphkv,lookahead,tova",
                         "--budgets", "40", "--set", "morphkv.window=8", "-q", "-o", out,
                         NULL};
    rc = run_bounded(run, NULL, 30, &r);
    expect_one_line("run", rc, &r, 1, needle);
    assert_int_equal(access(out, F_OK), -1);
}

/* A scale that float32 (the replay's SGEMM) cannot hold: every logit is Inf. */
static void test_softmax_scale_overflow(void **state)
{
    (void)state;
    const char *t = edited_trace("scale.h5", "f.attrs['softmax_scale'] = np.float64(1e300)");
    expect_bad_logits(t, "softmax_scale = 1e+300");
}

/* Finite q and k whose products overflow: query head 3 of layer 1 from row 30 on, and
 * every key of its KV head 1, times 1e20, so |q.k| ~ 1e40 > FLT_MAX first at row [3, 30]
 * (rows before 30 stay near 1e20: finite). */
static void test_qk_overflow(void **state)
{
    (void)state;
    const char *t = edited_trace("qk_big.h5",
                                 "q = f['layers/1/q'][...]; q[3, 30:, :] *= 1e20\n"
                                 "k = f['layers/1/k'][...]; k[1, :, :] *= 1e20\n"
                                 "f['layers/1/q'][...] = q; f['layers/1/k'][...] = k");
    expect_bad_logits(t, "/layers/1 row [3, 30]: logit");
}

/* The replay's own guard, behind the check above: the first row with an overflowing
 * logit is reported, not turned into NaN probabilities. q row 2 of head 1 overflows
 * against the keys (3e38 * 2 > FLT_MAX), rows before it are finite. */
static void test_rows_guard(void **state)
{
    (void)state;
    enum { NQ = 2, T = 6, HD = 2 };
    float q[NQ * T * HD], k[T * HD], out[NQ * T * T];
    for (int i = 0; i < NQ * T * HD; i++)
        q[i] = 0.5f;
    for (int i = 0; i < T * HD; i++)
        k[i] = 1.0f;
    q[(1 * T + 2) * HD] = 3e38f;
    q[(1 * T + 2) * HD + 1] = 3e38f;
    assert_int_equal(kv_attn_rows_from_qk(q, NQ, k, HD, 1.0, 0, T, out, T, NULL, 0, 0), 1 * T + 2);
    q[(1 * T + 2) * HD] = q[(1 * T + 2) * HD + 1] = 0.5f;
    assert_int_equal(kv_attn_rows_from_qk(q, NQ, k, HD, 1.0, 0, T, out, T, NULL, 0, 0), -1);
    assert_float_equal(out[(1 * T + 2) * T + 0], 1.0 / 3, 1e-6);   /* 3 equal logits */
}

/* ------------------------------------------------------------ result sets */

static char g_long[300];          /* a trace whose run takes about a second */
static const char *const long_budgets = "8,16,24,32,40,48,56,64,72,80,88,96";

/* Appends "name\n<bytes>" of every entry of dir (sorted; figures/ descended into) to a
 * growing buffer: the result set byte for byte. */
static void snapshot_into(const char *dir, const char *prefix, const char *suffix, char **buf,
                          size_t *len)
{
    struct dirent **names;
    int n = scandir(dir, &names, NULL, alphasort);
    assert_true(n >= 0);
    for (int i = 0; i < n; i++) {
        const char *e = names[i]->d_name;
        char path[600];
        snprintf(path, sizeof path, "%s/%s", dir, e);
        struct stat st;
        size_t el = strlen(e), sl = suffix ? strlen(suffix) : 0;
        int wanted = !suffix || (el > sl && strcmp(e + el - sl, suffix) == 0);
        if (strcmp(e, ".") && strcmp(e, "..") && wanted && lstat(path, &st) == 0) {
            char head[400];
            int hl = snprintf(head, sizeof head, "%s%s\n", prefix, e);
            *buf = realloc(*buf, *len + (size_t)hl + (size_t)st.st_size + 1);
            assert_non_null(*buf);
            memcpy(*buf + *len, head, (size_t)hl);
            *len += (size_t)hl;
            if (S_ISDIR(st.st_mode)) {
                char sub[400];
                snprintf(sub, sizeof sub, "%s%s/", prefix, e);
                snapshot_into(path, sub, suffix, buf, len);
            } else {
                FILE *f = fopen(path, "rb");
                assert_non_null(f);
                *len += fread(*buf + *len, 1, (size_t)st.st_size, f);
                fclose(f);
            }
        }
        free(names[i]);
    }
    free(names);
}

/* 1 when the len bytes at buf (figures: binary) contain s. */
static int contains(const char *buf, size_t len, const char *s)
{
    return memmem(buf, len, s, strlen(s)) != NULL;
}

static char *snapshot(const char *dir, size_t *len)
{
    char *buf = NULL;
    *len = 0;
    snapshot_into(dir, "", NULL, &buf, len);
    return buf;
}

/* The TSV files of dir only (manifest.json records the command line, which differs). */
static char *snapshot_tsv(const char *dir, size_t *len)
{
    char *buf = NULL;
    *len = 0;
    snapshot_into(dir, "", ".tsv", &buf, len);
    return buf;
}

/* Number of entries of dir whose name contains part (dir unreadable: 0). */
static int count_named(const char *dir, const char *part)
{
    DIR *d = opendir(dir);
    int n = 0;
    if (!d)
        return 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strstr(e->d_name, part) != NULL;
    closedir(d);
    return n;
}

/* The staging directory of a run into kv_test_dir/NAME, or "" when there is none. */
static const char *staging_of(const char *name)
{
    static char path[600];
    char prefix[300];
    snprintf(prefix, sizeof prefix, ".%s.kvsim.tmp.", name);
    path[0] = '\0';
    DIR *d = opendir(kv_test_dir);
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d));)
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0)
            snprintf(path, sizeof path, "%s/%s", kv_test_dir, e->d_name);
    closedir(d);
    return path;
}

/* Where a run is when the test interrupts it. */
enum stage { IN_REPLAY, WRITING_TSV, RENDERING };

/* 1 once the run into NAME has reached stage: its staging directory exists (replay),
 * holds a result temporary or file (writing), or its figures/ directory, where the
 * figures are being rendered (rendering). */
static int reached(const char *name, enum stage at)
{
    const char *st = staging_of(name);
    if (!*st)
        return 0;
    if (at == IN_REPLAY)
        return 1;
    char figs[700];
    snprintf(figs, sizeof figs, "%s/figures", st);
    if (at == WRITING_TSV)
        return count_named(st, ".tsv") > 0;
    DIR *d = opendir(figs);
    if (d)
        closedir(d);
    return d != NULL;
}

/* Runs kvsim run into kv_test_dir/NAME (policies, --force) to completion. */
static void run_into(const char *name, const char *trace, const char *policies,
                     const char *budgets, int plot)
{
    char out[300];
    snprintf(out, sizeof out, "%s", kv_test_path(name));
    const char *args[] = {"run", "--trace", trace, "--policies", policies, "--budgets", budgets,
                          "-q", "--force", "-o", out, plot ? NULL : "--no-plot", NULL};
    kv_cli_result r;
    int rc = run_bounded(args, NULL, 60, &r);
    if (rc != 0)
        fail_msg("run into %s: exit %d, %s", name, rc, r.err);
}

/*
 * The old set (TSVs and figures of a small run) is in DIR; a long run with --force is
 * sent sig once it reaches stage `at`. Then DIR must hold the old set byte for byte.
 * Returns 1 when sig left the staging directory beside DIR (SIGKILL), else checks that
 * no temporary stayed and returns 0.
 */
static int interrupt_once(const char *name, enum stage at, int sig, const char *old,
                          size_t old_len)
{
    char out[300];
    snprintf(out, sizeof out, "%s", kv_test_path(name));
    const char *args[] = {"run", "--trace", g_long, "--policies", "window,streamingllm,h2o",
                          "--budgets", long_budgets, "-q", "--force", "-o", out, NULL};
    const char *err_path = kv_test_path("interrupt.err");
    pid_t pid = kv_cli_start(args, NULL, err_path);
    assert_true(pid > 0);
    double start = now_s();
    while (!reached(name, at) && now_s() - start < 60) {
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
    kill(pid, sig);
    kv_cli_result r;
    kv_cli_wait(pid, err_path, &r);
    if (sig == SIGKILL)
        assert_true(!r.exited && r.code == SIGKILL);
    else if (!r.exited || r.code != 128 + sig || !strstr(r.err, "no result file replaced"))
        fail_msg("stage %d, signal %d: exited %d code %d, stderr '%s' (the run finished "
                 "first?)", at, sig, r.exited, r.code, r.err);
    size_t now_len;
    char *now = snapshot(out, &now_len);
    assert_int_equal(now_len, old_len);
    assert_memory_equal(now, old, old_len);
    free(now);
    if (sig == SIGKILL)
        return 1;
    assert_int_equal(count_named(kv_test_dir, ".tmp."), 0);
    return 0;
}

/* interrupt_once with SIGTERM-like sig, then SIGKILL, at stage `at`; then the next run
 * into DIR removes what the kill left and publishes its own whole set. */
static void interrupt_at(enum stage at, int sig)
{
    const char *name = "out_set";
    char out[300];
    snprintf(out, sizeof out, "%s", kv_test_path(name));
    run_into(name, g_trace, "window,h2o", "16", 1);
    size_t old_len;
    char *old = snapshot(out, &old_len);
    assert_true(old_len > 1000 && contains(old, old_len, "figures/recall_steps.png\n"));
    interrupt_once(name, at, sig, old, old_len);
    assert_int_equal(interrupt_once(name, at, SIGKILL, old, old_len), 1);
    free(old);
    assert_int_equal(count_named(kv_test_dir, ".out_set.kvsim.tmp."), 1);
    run_into(name, g_trace, "window", "8", 0);
    assert_int_equal(count_named(kv_test_dir, ".tmp."), 0);
    char *set = snapshot(out, &old_len);
    assert_false(contains(set, old_len, "figures"));   /* the new set, whole: no old figures */
    assert_true(contains(set, old_len, "summary.tsv\n"));
    free(set);
}

static void test_interrupt_in_replay(void **state)
{
    (void)state;
    interrupt_at(IN_REPLAY, SIGTERM);
}

static void test_interrupt_writing_tsv(void **state)
{
    (void)state;
    interrupt_at(WRITING_TSV, SIGINT);
}

static void test_interrupt_rendering(void **state)
{
    (void)state;
    interrupt_at(RENDERING, SIGTERM);
}

/* ------------------------------------------------------------ one run per directory */

/* A second run into a directory a run is writing is refused at once (exit 2, one line)
 * and touches nothing; the first completes with its own set. */
static void test_concurrent_runs(void **state)
{
    (void)state;
    char out[300];
    snprintf(out, sizeof out, "%s", kv_test_path("out_two"));
    const char *first[] = {"run", "--trace", g_long, "--policies", "window", "--budgets",
                           long_budgets, "-q", "--no-plot", "-o", out, NULL};
    const char *second[] = {"run", "--trace", g_trace, "--policies", "h2o", "--budgets", "16",
                            "-q", "--no-plot", "--force", "-o", out, NULL};
    const char *err_path = kv_test_path("first.err");
    pid_t pid = kv_cli_start(first, NULL, err_path);
    assert_true(pid > 0);
    double start = now_s();
    while (!reached("out_two", IN_REPLAY) && now_s() - start < 60) {
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
    kv_cli_result r;
    int rc = run_bounded(second, NULL, 30, &r);
    expect_one_line("second run", rc, &r, 2, "another kvsim run is writing into");
    kv_cli_wait(pid, err_path, &r);
    assert_true(r.exited && r.code == 0);
    size_t len;
    char *set = snapshot(out, &len);
    assert_false(contains(set, len, "\th2o\t"));   /* nothing of the second run */
    assert_true(contains(set, len, "\twindow\t"));
    free(set);
    /* started together, many times: one set, never a mix of the two */
    for (int trial = 0; trial < 6; trial++) {
        char dir[300];
        snprintf(dir, sizeof dir, "%s/race%d", kv_test_dir, trial);
        const char *a[] = {"run", "--trace", g_trace, "--policies", "window", "--budgets",
                           "16", "-q", "--no-plot", "--force", "-o", dir, NULL};
        const char *b[] = {"run", "--trace", g_trace, "--policies", "h2o", "--budgets",
                           "16", "-q", "--no-plot", "--force", "-o", dir, NULL};
        char ea[300], eb[300];
        snprintf(ea, sizeof ea, "%s", kv_test_path("a.err"));
        snprintf(eb, sizeof eb, "%s", kv_test_path("b.err"));
        pid_t pa = kv_cli_start(a, NULL, ea), pb = kv_cli_start(b, NULL, eb);
        kv_cli_result ra, rb;
        kv_cli_wait(pa, ea, &ra);
        kv_cli_wait(pb, eb, &rb);
        assert_true(ra.exited && rb.exited);
        assert_true((ra.code == 0 || ra.code == 2) && (rb.code == 0 || rb.code == 2));
        assert_true(ra.code == 0 || rb.code == 0);
        set = snapshot(dir, &len);
        int has_a = contains(set, len, "\twindow\t"), has_b = contains(set, len, "\th2o\t");
        assert_true(has_a != has_b);
        free(set);
    }
}

/* ------------------------------------------------------------ traces written whole */

/* The whole content of path (fails the test when unreadable). */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    *len = (size_t)ftell(f);
    rewind(f);
    char *buf = malloc(*len + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, *len, f), *len);
    fclose(f);
    return buf;
}

/*
 * keep.h5 (a complete trace) is the target of a longer `gen` or `capture` (args, with
 * "-o" keep.h5 among them), killed with each signal once its temporary beside keep.h5
 * exists. keep.h5 must stay byte for byte; a SIGTERM/SIGINT removes the temporary, what
 * SIGKILL left is removed by the next write to keep.h5, which then replaces it.
 */
static void interrupt_writer(const char *const *args, const char *keep,
                             const char *const *again)
{
    char cmd[700];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", g_trace, keep);
    assert_int_equal(system(cmd), 0);
    size_t old_len;
    char *old = read_file(keep, &old_len);
    const int sigs[] = {SIGTERM, SIGINT, SIGKILL};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        const char *err_path = kv_test_path("writer.err");
        pid_t pid = kv_cli_start(args, NULL, err_path);
        assert_true(pid > 0);
        double start = now_s();
        while (count_named(kv_test_dir, ".keep.h5.tmp.") == 0 && now_s() - start < 30) {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
        kill(pid, sigs[i]);
        kv_cli_result r;
        kv_cli_wait(pid, err_path, &r);
        if (sigs[i] != SIGKILL && (!r.exited || r.code != 128 + sigs[i]))
            fail_msg("%s, signal %d: exited %d code %d, stderr '%s' (finished first?)",
                     args[0], sigs[i], r.exited, r.code, r.err);
        size_t now_len;
        char *now = read_file(keep, &now_len);
        assert_int_equal(now_len, old_len);
        assert_memory_equal(now, old, old_len);
        free(now);
        assert_int_equal(count_named(kv_test_dir, ".keep.h5.tmp."), sigs[i] == SIGKILL);
    }
    free(old);
    kv_cli_result r;
    assert_int_equal(run_bounded(again, NULL, 60, &r), 0);
    assert_int_equal(count_named(kv_test_dir, ".keep.h5.tmp."), 0);
    char *now = read_file(keep, &old_len);
    assert_true(old_len > 0 && memcmp(now, "\x89HDF", 4) == 0);   /* replaced, complete */
    free(now);
}

static void test_interrupted_gen(void **state)
{
    (void)state;
    char keep[300];
    snprintf(keep, sizeof keep, "%s", kv_test_path("keep.h5"));
    const char *big[] = {"gen", "--layers", "2", "--tokens", "1500", "--prefill", "64",
                         "-o", keep, NULL};
    const char *small[] = {"gen", "--seed", "7", "--layers", "1", "--tokens", "64",
                           "--prefill", "8", "-o", keep, NULL};
    interrupt_writer(big, keep, small);
}

static void test_interrupted_capture(void **state)
{
    (void)state;
    char keep[300], model[300];
    snprintf(keep, sizeof keep, "%s", kv_test_path("keep.h5"));
    snprintf(model, sizeof model, "%s", kv_test_model_path());
    const char *big[] = {"capture", "--model", model, "--tokens", "512", "--prefill", "8",
                         "-o", keep, NULL};
    const char *small[] = {"capture", "--model", model, "--tokens", "16", "--prefill", "4",
                           "-o", keep, NULL};
    interrupt_writer(big, keep, small);
}

/* Weights scaled by 1e15: q and k reach ~1e30, so the first attention logit, q.k ~ 1e60,
 * overflows at layer 0, position 0 and the residual stream turns NaN there. capture wrote
 * NaN and exited 0; now one line naming the layer and position, exit 1, and the existing
 * target stays as it was. */
static void test_capture_overflow(void **state)
{
    (void)state;
    char script[PATH_MAX + 512], real[PATH_MAX], keep[300], model[300];
    snprintf(model, sizeof model, "%s", kv_test_path("scaled.bin"));
    snprintf(script, sizeof script,
             "import numpy as np\n"
             "b = open('%s', 'rb').read()\n"
             "w = np.frombuffer(b[28:], dtype=np.float32) * np.float32(1e15)\n"
             "open('scaled.bin', 'wb').write(b[:28] + w.astype(np.float32).tobytes())\n",
             realpath(kv_test_model_path(), real));   /* the script runs in kv_test_dir */
    python(script);
    snprintf(keep, sizeof keep, "%s", kv_test_path("keep_cap.h5"));
    char cmd[700];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", g_trace, keep);
    assert_int_equal(system(cmd), 0);
    size_t old_len, now_len;
    char *old = read_file(keep, &old_len);
    const char *args[] = {"capture", "--model", model, "--tokens", "32", "--prefill", "8",
                          "-o", keep, NULL};
    kv_cli_result r;
    int rc = run_bounded(args, NULL, 30, &r);
    expect_one_line("capture, weights x 1e15", rc, &r, 1, "layer 0, position 0: Inf or NaN");
    char *now = read_file(keep, &now_len);
    assert_int_equal(now_len, old_len);
    assert_memory_equal(now, old, old_len);
    free(now);
    free(old);
    assert_int_equal(count_named(kv_test_dir, ".tmp."), 0);
}

/* --force replaces the output directory as a whole, so one that holds anything but kvsim
 * results is refused (exit 2) and left as it was. */
static void test_force_keeps_foreign_files(void **state)
{
    (void)state;
    run_into("out_foreign", g_trace, "window", "16", 0);
    char note[400], out[300];
    snprintf(out, sizeof out, "%s", kv_test_path("out_foreign"));
    snprintf(note, sizeof note, "%s/notes.txt", out);
    kv_test_write_text(note, "mine\n");
    const char *args[] = {"run", "--trace", g_trace, "--policies", "h2o", "--budgets", "16",
                          "-q", "--no-plot", "--force", "-o", out, NULL};
    kv_cli_result r;
    int rc = run_bounded(args, NULL, 30, &r);
    expect_one_line("--force over a foreign file", rc, &r, 2, "holds 'notes.txt', which is "
                    "not a kvsim result");
    size_t len;
    char *set = snapshot(out, &len);
    assert_true(contains(set, len, "notes.txt\nmine\n") && contains(set, len, "\twindow\t"));
    free(set);
}

/* ------------------------------------------------------------ memory and threads */

/* Under an address-space limit too small for OpenBLAS's work buffers, a replay hung (a
 * BLAS thread retrying its allocation forever, at exit or inside the first product), and
 * so did every command at exit. Now: the message, exit 1 (0 for `policies`), promptly. */
static void test_memory_limit(void **state)
{
    (void)state;
    if (getenv("KVSIM_SANITIZED"))   /* ASan reserves terabytes of address space */
        skip();
    const rlim_t limits[] = {(rlim_t)100 << 20, (rlim_t)160 << 20, (rlim_t)300 << 20};
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
        kv_cli_limits lim = { .as_bytes = limits[i] };
        char out[300];
        snprintf(out, sizeof out, "%s", kv_test_path("out_oom"));
        const char *run[] = {"run", "--trace", g_long, "--policies", "window,h2o", "--budgets",
                             "64", "-q", "--no-plot", "--force", "-o", out, NULL};
        kv_cli_result r;
        int rc = run_bounded(run, &lim, 30, &r);
        char what[64];
        snprintf(what, sizeof what, "run under a %lu MiB limit", (unsigned long)(limits[i] >> 20));
        expect_one_line(what, rc, &r, 1, "out of memory");
        const char *policies[] = {"policies", NULL};
        assert_int_equal(run_bounded(policies, &lim, 30, &r), 0);
    }
}

/* OMP_NUM_THREADS=100000 crashed inside libgomp; kvsim caps what it asks for (4 per
 * core), says so, and gives the same results as with one thread. */
static void test_thread_cap(void **state)
{
    (void)state;
    char out1[300], outn[300];
    snprintf(out1, sizeof out1, "%s", kv_test_path("out_threads1"));
    snprintf(outn, sizeof outn, "%s", kv_test_path("out_threadsN"));
    const char *a1[] = {"run", "--trace", g_trace, "--policies", "window,h2o", "--budgets", "16",
                        "-q", "--no-plot", "--force", "-o", out1, NULL};
    const char *an[] = {"run", "--trace", g_trace, "--policies", "window,h2o", "--budgets", "16",
                        "-q", "--no-plot", "--force", "-o", outn, NULL};
    kv_cli_result r;
    setenv("OMP_NUM_THREADS", "1", 1);
    assert_int_equal(run_bounded(a1, NULL, 30, &r), 0);
    setenv("OMP_NUM_THREADS", "100000", 1);
    int rc = run_bounded(an, NULL, 30, &r);
    unsetenv("OMP_NUM_THREADS");
    expect_one_line("OMP_NUM_THREADS=100000", rc, &r, 0, "100000 threads asked for");
    size_t l1, ln;
    char *s1 = snapshot_tsv(out1, &l1), *sn = snapshot_tsv(outn, &ln);
    assert_int_equal(l1, ln);
    assert_memory_equal(s1, sn, l1);
    free(s1);
    free(sn);
}

/* ------------------------------------------------------------ smaller things */

/* Runs `kvsim run INI` (the experiment's trace is the small one) and expects exit want
 * and one line holding needle. */
static void expect_ini(const char *what, const char *body, int want, const char *needle)
{
    char ini[300], text[4096];
    snprintf(ini, sizeof ini, "%s", kv_test_path("case.ini"));
    snprintf(text, sizeof text, "[experiment]\ntrace = %s\nbudgets = 16\noutput = %s\n%s",
             g_trace, kv_test_path("out_ini"), body);
    kv_test_write_text(ini, text);
    const char *args[] = {"run", ini, "-q", "--no-plot", "--force", NULL};
    kv_cli_result r;
    int rc = run_bounded(args, NULL, 30, &r);
    expect_one_line(what, rc, &r, want, needle);
}

/* What the INI parser used to drop or misreport, and a trace given as the experiment. */
static void test_experiment_file_errors(void **state)
{
    (void)state;
    expect_ini("empty policy section", "[policy h2o]\n[policy w]\ntype = window\n", 2,
               "[policy h2o] is empty");
    expect_ini("unclosed section", "[policy h]\ntype = h2o\n[policy w\ntype = window\n", 2,
               "line 7: section header '[policy w' has no closing ']'");
    expect_ini("seed beyond 64 bits", "seed = 18446744073709551616\n[policy w]\ntype = window\n",
               2, "seed must be a whole number in 0..18446744073709551615");
    const char *as_ini[] = {"run", g_trace, NULL};
    kv_cli_result r;
    int rc = run_bounded(as_ini, NULL, 30, &r);
    expect_one_line("trace as experiment file", rc, &r, 2, "is an HDF5 file, not an experiment "
                    "file: give a trace with --trace");
    const char *cli_seed[] = {"run", "--trace", g_trace, "--policies", "window", "--budgets",
                              "16", "--seed", "18446744073709551616", "-o",
                              kv_test_path("out_seed"), NULL};
    rc = run_bounded(cli_seed, NULL, 30, &r);
    expect_one_line("--seed beyond 64 bits", rc, &r, 2,
                    "seed must be a whole number in 0..18446744073709551615");
}

/* One seed rule: 2^63 on the command line and in the file give the same random sets
 * (the command line used to clamp it to 2^63 - 1). */
static void test_seed_one_rule(void **state)
{
    (void)state;
    char ini[300], text[1024], out_ini[300], out_cli[300];
    snprintf(out_ini, sizeof out_ini, "%s", kv_test_path("out_seed_ini"));
    snprintf(out_cli, sizeof out_cli, "%s", kv_test_path("out_seed_cli"));
    snprintf(ini, sizeof ini, "%s", kv_test_path("seed.ini"));
    snprintf(text, sizeof text, "[experiment]\ntrace = %s\nbudgets = 16\noutput = %s\n"
             "seed = 9223372036854775808\n[policy random]\ntype = random\n", g_trace, out_ini);
    kv_test_write_text(ini, text);
    const char *a[] = {"run", ini, "-q", "--no-plot", NULL};
    const char *b[] = {"run", "--trace", g_trace, "--policies", "random", "--budgets", "16",
                       "--seed", "9223372036854775808", "-q", "--no-plot", "-o", out_cli, NULL};
    const char *c[] = {"run", "--trace", g_trace, "--policies", "random", "--budgets", "16",
                       "--seed", "9223372036854775807", "-q", "--no-plot", "--force", "-o",
                       out_ini, NULL};
    kv_cli_result r;
    assert_int_equal(run_bounded(a, NULL, 30, &r), 0);
    assert_int_equal(run_bounded(b, NULL, 30, &r), 0);
    size_t la, lb;
    char *sa = snapshot_tsv(out_ini, &la), *sb = snapshot_tsv(out_cli, &lb);
    assert_int_equal(la, lb);
    assert_memory_equal(sa, sb, la);
    free(sa);
    assert_int_equal(run_bounded(c, NULL, 30, &r), 0);   /* 2^63 - 1 is another seed */
    sa = snapshot_tsv(out_ini, &la);
    assert_false(la == lb && memcmp(sa, sb, la) == 0);
    free(sa);
    free(sb);
}

/* A trace file name with a tab or a line break would break the trace column. */
static void test_trace_name_tab(void **state)
{
    (void)state;
    char odd[300], cmd[700];
    snprintf(odd, sizeof odd, "%s", kv_test_path("odd\tname.h5"));
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", g_trace, odd);
    assert_int_equal(system(cmd), 0);
    const char *args[] = {"run", "--trace", odd, "--policies", "window", "--budgets", "16",
                          "-o", kv_test_path("out_tab"), NULL};
    kv_cli_result r;
    int rc = run_bounded(args, NULL, 30, &r);
    expect_one_line("tab in a trace name", rc, &r, 2, "'odd\\tname.h5' contains a tab");
}

/* h5py's lzf filter, absent from Debian's HDF5: named, not "damaged". The data compresses
 * (ones), so chunks are stored filtered. */
static void test_lzf_named(void **state)
{
    (void)state;
    python("import h5py, numpy as np\n"
           "f = h5py.File('lzf.h5', 'w')\n"
           "for k, v in dict(kvtrace_version=1, n_layers=1, n_heads=2, n_kv_heads=1,\n"
           "                 head_dim=8, n_tokens=64, prefill_len=16).items():\n"
           "    f.attrs[k] = np.int64(v)\n"
           "f.attrs['model'] = 'm'; f.attrs['source'] = 'qk'\n"
           "f.create_dataset('layers/0/q', data=np.ones((2, 64, 8), np.float32), compression='lzf')\n"
           "f.create_dataset('layers/0/k', data=np.ones((1, 64, 8), np.float32), compression='lzf')\n"
           "f.close()\n");
    const char *args[] = {"info", "--check", kv_test_path("lzf.h5"), NULL};
    kv_cli_result r;
    int rc = run_bounded(args, NULL, 30, &r);
    expect_one_line("lzf", rc, &r, 1, "needs the lzf filter");
}

/* compare.tsv: all pairs up to 64 policies; beyond, the first against each other one
 * (all pairs of 70 would be 2,415 rows per budget; 1,000 policies took over 30 s). */
static void test_compare_bounded(void **state)
{
    (void)state;
    char ini[300], out[300];
    snprintf(ini, sizeof ini, "%s", kv_test_path("many.ini"));
    snprintf(out, sizeof out, "%s", kv_test_path("out_many"));
    static char text[1 << 14];
    size_t at = (size_t)snprintf(text, sizeof text, "[experiment]\ntrace = %s\nbudgets = 16\n"
                                 "output = %s\n", g_trace, out);
    for (int i = 0; i < 70; i++)
        at += (size_t)snprintf(text + at, sizeof text - at, "[policy w%d]\ntype = window\n", i);
    kv_test_write_text(ini, text);
    const char *args[] = {"run", ini, "-q", "--no-plot", NULL};
    kv_cli_result r;
    assert_int_equal(run_bounded(args, NULL, 60, &r), 0);
    char path[400];
    snprintf(path, sizeof path, "%s/compare.tsv", out);
    size_t len;
    char *tsv = read_file(path, &len);
    int lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += tsv[i] == '\n';
    free(tsv);
    assert_int_equal(lines, 1 + 69);   /* header, then w0 against w1..w69 */
}

static int setup(void **state)
{
    (void)state;
    if (kv_test_dir_make("kvsim_hostile") != 0 || access(kv_cli_bin(), X_OK) != 0)
        return -1;
    snprintf(g_trace, sizeof g_trace, "%s", kv_test_path("small.h5"));
    kv_gen_params gp;
    kv_gen_defaults(&gp);
    gp.n_layers = 2;
    gp.n_heads = 4;
    gp.n_kv_heads = 2;
    gp.head_dim = 8;
    gp.n_tokens = 96;
    gp.prefill_len = 24;
    char err[512];
    if (kv_gen_write(g_trace, &gp, 0, 0, err, sizeof err) != 0)
        return -1;
    snprintf(g_long, sizeof g_long, "%s", kv_test_path("long.h5"));
    gp.n_layers = 1;
    gp.n_heads = 2;
    gp.n_kv_heads = 1;
    gp.n_tokens = 3000;
    gp.prefill_len = 64;
    return kv_gen_write(g_long, &gp, 0, 0, err, sizeof err) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_damaged_string_length),
        cmocka_unit_test(test_oversized_chunks),
        cmocka_unit_test(test_fifo_inputs),
        cmocka_unit_test(test_softmax_scale_overflow),
        cmocka_unit_test(test_qk_overflow),
        cmocka_unit_test(test_rows_guard),
        cmocka_unit_test(test_interrupt_in_replay),
        cmocka_unit_test(test_interrupt_writing_tsv),
        cmocka_unit_test(test_interrupt_rendering),
        cmocka_unit_test(test_concurrent_runs),
        cmocka_unit_test(test_interrupted_gen),
        cmocka_unit_test(test_interrupted_capture),
        cmocka_unit_test(test_capture_overflow),
        cmocka_unit_test(test_force_keeps_foreign_files),
        cmocka_unit_test(test_memory_limit),
        cmocka_unit_test(test_thread_cap),
        cmocka_unit_test(test_experiment_file_errors),
        cmocka_unit_test(test_seed_one_rule),
        cmocka_unit_test(test_trace_name_tab),
        cmocka_unit_test(test_lzf_named),
        cmocka_unit_test(test_compare_bounded),
    };
    return cmocka_run_group_tests(tests, setup, kv_test_dir_teardown);
}
