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
#define _DEFAULT_SOURCE   /* wait4 in kv_cli.h */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
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
    if (rc != want || !strstr(r->err, needle) || kv_cli_lines(r->err) != 1)
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
    kv_cli_limits lim = { .as_bytes = (rlim_t)1 << 30 };   /* far below the 2 GiB claim */
    const char *ok[] = {"info", kv_test_path("vlen.h5"), NULL};
    kv_cli_result r;
    assert_int_equal(run_bounded(ok, &lim, 30, &r), 0);     /* the undamaged file is fine */
    const char *args[] = {"info", kv_test_path("vlen_bad.h5"), NULL};
    int rc = run_bounded(args, &lim, 30, &r);
    expect_one_line("damaged string length", rc, &r, 1, "root attribute model");
    assert_non_null(strstr(r.err, "2147483647 bytes"));
}

/* A chunk shape larger than the dataset (legal for an extendible dataset): a read would
 * decompress a 1 GiB chunk of a 1 MB file. Refused before any read. */
static void test_oversized_chunks(void **state)
{
    (void)state;
    python(H5PY_TRACE
           "T = 64\n"
           "a = np.tril(np.ones((2, T, T), np.float32)); a /= a.sum(-1, keepdims=True)\n"
           "trace('chunk_big.h5', T=T, attn=a, chunks=(2, T, 1 << 19),\n"
           "      maxshape=(None, None, None))\n"
           "trace('chunk_ok.h5', T=T, attn=a, chunks=(1, 32, 32))\n");
    kv_cli_limits lim = { .as_bytes = (rlim_t)768 << 20 };
    kv_cli_result r;
    const char *ok[] = {"info", "--check", kv_test_path("chunk_ok.h5"), NULL};
    assert_int_equal(run_bounded(ok, &lim, 30, &r), 0);
    const char *args[] = {"info", "--check", kv_test_path("chunk_big.h5"), NULL};
    int rc = run_bounded(args, &lim, 30, &r);
    expect_one_line("oversized chunks", rc, &r, 1, "/layers/0/attn has chunks [2, 64, 524288]");
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
    assert_int_equal(kv_rows_from_qk(q, NQ, k, HD, 1.0, 0, T, out, T, NULL, 0, 0), 1 * T + 2);
    q[(1 * T + 2) * HD] = q[(1 * T + 2) * HD + 1] = 0.5f;
    assert_int_equal(kv_rows_from_qk(q, NQ, k, HD, 1.0, 0, T, out, T, NULL, 0, 0), -1);
    assert_float_equal(out[(1 * T + 2) * T + 0], 1.0 / 3, 1e-6);   /* 3 equal logits */
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
    return kv_gen_write(g_trace, &gp, 0, 0, err, sizeof err) == 0 ? 0 : -1;
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
    };
    return cmocka_run_group_tests(tests, setup, kv_test_dir_teardown);
}
