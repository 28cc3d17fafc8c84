/*
 * test_validate.c - what kvsim checks in a trace (traces/validate.h, the structure checks
 * of kv_trace_open) and how it reports it: one line naming the file, the dataset, the
 * index and what was expected; exit status 1; no HDF5 error stack unless --verbose; no
 * result file written, earlier results left as they were.
 *
 * Every expected message is written out by hand below from the value the test planted
 * (its dataset, its [head, t, j] index, its value), not taken from the code.
 */
#define _DEFAULT_SOURCE   /* wait4 in kv_cli.h */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <hdf5.h>

#include "tests/h5_edit.h"
#include "tests/kv_cli.h"
#include "tests/kv_test.h"
#include "traces/trace.h"
#include "traces/validate.h"

enum { L = 2, H = 4, G = 2, D = 4, T = 48, P = 8 };

/* A planted value: layer, [h, t, j], and either a value to set or a factor for the row. */
typedef struct {
    int layer, h, t, j;
    float value;       /* set attn[h, t, j] = value (when scale == 0) */
    double scale;      /* multiply row [h, t] by scale */
} plant;

/* Writes an attn trace whose rows are uniform, p_t[j] = 1/(t+1), then applies plants;
 * the rows are declared computed in prec (attn_precision). */
static void write_attn_prec(const char *path, const plant *pl, int n_pl, kv_attn_precision prec)
{
    kv_trace_info in;
    memset(&in, 0, sizeof in);
    in.attn_precision = prec;
    snprintf(in.model, sizeof in.model, "validate-test");
    in.n_layers = L, in.n_heads = H, in.n_kv_heads = G, in.head_dim = D;
    in.n_tokens = T, in.prefill_len = P, in.source = KV_SOURCE_ATTN;
    char err[512];
    kv_trace_writer *w = NULL;
    if (kv_trace_create(path, &in, 0, &w, err, sizeof err))
        fail_msg("%s", err);
    static float rows[T][T];
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++) {
            for (int t = 0; t < T; t++)
                for (int j = 0; j < T; j++)
                    rows[t][j] = j <= t ? 1.0f / (float)(t + 1) : 0.0f;
            for (int i = 0; i < n_pl; i++) {
                if (pl[i].layer != l || pl[i].h != h)
                    continue;
                if (pl[i].scale != 0)
                    for (int j = 0; j <= pl[i].t; j++)
                        rows[pl[i].t][j] = (float)(pl[i].scale / (pl[i].t + 1));
                else
                    rows[pl[i].t][pl[i].j] = pl[i].value;
            }
            if (kv_trace_write_attn_rows(w, l, h, 0, T, &rows[0][0], err, sizeof err))
                fail_msg("%s", err);
        }
    if (kv_trace_finish(w, err, sizeof err))
        fail_msg("%s", err);
}

static void write_attn(const char *path, const plant *pl, int n_pl)
{
    write_attn_prec(path, pl, n_pl, KV_PREC_FLOAT32);
}

/* A qk trace with v, all finite (small values), then one value of q, k or v set to bad. */
static void write_qk(const char *path, const char *which, int layer, int h, int t, int d,
                     float bad)
{
    kv_trace_info in;
    memset(&in, 0, sizeof in);
    snprintf(in.model, sizeof in.model, "validate-test");
    in.n_layers = L, in.n_heads = H, in.n_kv_heads = G, in.head_dim = D;
    in.n_tokens = T, in.prefill_len = P, in.source = KV_SOURCE_QK;
    static float q[H * T * D], k[G * T * D], v[G * T * D];
    char err[512];
    kv_trace_writer *w = NULL;
    if (kv_trace_create(path, &in, 1, &w, err, sizeof err))
        fail_msg("%s", err);
    for (int l = 0; l < L; l++) {
        for (int i = 0; i < H * T * D; i++)
            q[i] = (float)((i * 7 + l) % 11) / 11.0f - 0.5f;
        for (int i = 0; i < G * T * D; i++) {
            k[i] = (float)((i * 5 + l) % 13) / 13.0f - 0.5f;
            v[i] = (float)(i % 3);
        }
        float *x = strcmp(which, "q") == 0 ? q : strcmp(which, "k") == 0 ? k : v;
        if (which[0] && l == layer)
            x[((size_t)h * T + (size_t)t) * D + (size_t)d] = bad;
        if (kv_trace_write_qk(w, l, q, k, v, err, sizeof err))
            fail_msg("%s", err);
    }
    if (kv_trace_finish(w, err, sizeof err))
        fail_msg("%s", err);
}

/* In process: the file opens (its structure is fine) and the full scan reports want. */
static void expect_scan(const char *path, const char *want)
{
    char err[512] = "";
    kv_trace *tr = NULL;
    if (kv_trace_open(path, &tr, err, sizeof err))
        fail_msg("open %s: %s", path, err);
    int rc = kv_trace_check_values(tr, KV_CHECK_ALL, 0, err, sizeof err);
    kv_trace_close(tr);
    if (!want) {
        if (rc)
            fail_msg("%s: expected valid, got %s", path, err);
        return;
    }
    assert_int_equal(rc, KV_ETRACE_FORMAT);
    if (strcmp(err, want) != 0)
        fail_msg("message\n  got  '%s'\n  want '%s'", err, want);
}

/* Through the binary: `kvsim info --check` and `kvsim run` exit 1 with exactly the line
 * want (prefixed by the subcommand) and write no result file. */
static void expect_cli_rejects(const char *path, const char *want, const char *out_dir)
{
    kv_cli_result r;
    const char *info[] = {"info", "--check", path, NULL};
    assert_int_equal(kv_cli_run(info, NULL, &r), 1);
    char line[1024];
    snprintf(line, sizeof line, "kvsim info: %s\n", want);
    if (strcmp(r.err, line) != 0)
        fail_msg("kvsim info --check stderr\n  got  '%s'\n  want '%s'", r.err, line);
    const char *run[] = {"run", "--trace", path, "--policies", "window,h2o", "--budgets", "4",
                         "-q", "-o", out_dir, NULL};
    assert_int_equal(kv_cli_run(run, NULL, &r), 1);
    snprintf(line, sizeof line, "kvsim run: %s\n", want);
    if (strcmp(r.err, line) != 0)
        fail_msg("kvsim run stderr\n  got  '%s'\n  want '%s'", r.err, line);
    char summary[512];
    snprintf(summary, sizeof summary, "%s/summary.tsv", out_dir);
    assert_int_equal(access(summary, F_OK), -1);
    assert_false(kv_cli_has_temporaries(out_dir));
}

/* ------------------------------------------------------------ value checks */

static void test_attn_values(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        plant pl;
        const char *want;   /* after "FILE: " */
    } cases[] = {
        {"nan.h5", {1, 3, 17, 5, NAN, 0},
         "/layers/1/attn[3, 17, 5] is NaN, expected a finite probability"},
        {"inf.h5", {0, 0, 47, 47, INFINITY, 0},
         "/layers/0/attn[0, 47, 47] is Inf, expected a finite probability"},
        {"neginf.h5", {1, 2, 9, 0, -INFINITY, 0},
         "/layers/1/attn[2, 9, 0] is -Inf, expected a finite probability"},
        {"negative.h5", {0, 1, 10, 3, -0.01f, 0},
         "/layers/0/attn[1, 10, 3] = -0.01, expected a probability >= 0"},
        /* 41 entries of 0.93/41: the row sums to 0.93 */
        {"sum.h5", {0, 2, 40, 0, 0, 0.93}, "/layers/0/attn row [2, 40] sums to 0.93, "
         "expected 1 within 1e-3"},
        {"sum_high.h5", {1, 0, 20, 0, 0, 1.0011}, "/layers/1/attn row [0, 20] sums to "
         "1.0011, expected 1 within 1e-3"},
        /* the first row: its one entry is the whole sum */
        {"row0.h5", {1, 3, 0, 0, 0.5f, 0}, "/layers/1/attn row [3, 0] sums to 0.5, "
         "expected 1 within 1e-3"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = kv_test_path(cases[i].file);
        write_attn(path, &cases[i].pl, 1);
        char want[512];
        snprintf(want, sizeof want, "%s: %s", path, cases[i].want);
        expect_scan(path, want);
        expect_cli_rejects(path, want, kv_test_path("out_values"));
    }
}

/* What must pass: sums within 1e-3 and anything above the diagonal (ignored by the
 * format), NaN included. */
static void test_attn_accepted(void **state)
{
    (void)state;
    const plant ok[] = {
        {0, 0, 30, 0, 0, 1.0009}, {0, 1, 30, 0, 0, 0.9991},
        {1, 2, 3, 10, NAN, 0}, {1, 2, 3, 11, -5.0f, 0}, {0, 3, 0, 47, INFINITY, 0},
    };
    const char *path = kv_test_path("accepted.h5");
    write_attn(path, ok, sizeof ok / sizeof ok[0]);
    expect_scan(path, NULL);
    kv_cli_result r;
    const char *info[] = {"info", "--check", path, NULL};
    assert_int_equal(kv_cli_run(info, NULL, &r), 0);
    const char *run[] = {"run", "--trace", path, "--policies", "window", "--budgets", "4",
                         "-q", "-o", kv_test_path("out_accepted"), NULL};
    if (kv_cli_run(run, NULL, &r) != 0)
        fail_msg("run failed: %s", r.err);
}

/* The tolerance per attn_precision, worked out by hand from validate.h's formula
 * max(1e-3, u_p + s_p + n * (2^-24 + 2^-25)). */
static void test_row_sum_tolerance(void **state)
{
    (void)state;
    const double len_term = 0x1p-24 + 0x1p-25;   /* per entry */
    assert_true(kv_row_sum_tol(KV_PREC_FLOAT32, 1) == 1e-3);
    assert_true(kv_row_sum_tol(KV_PREC_FLOAT16, 512) == 1e-3);
    /* bfloat16: 8 significand bits, u = 2^-8 = 0.00390625 */
    assert_true(fabs(kv_row_sum_tol(KV_PREC_BFLOAT16, 1) - (0.00390625 + len_term)) < 1e-15);
    /* 41 entries: 2^-8 + 61.5 * 2^-24 = 0.00390625 + 0.0000036657 */
    assert_true(fabs(kv_row_sum_tol(KV_PREC_BFLOAT16, 41) - 0.00390991569) < 1e-11);
    /* 65536 entries: the length term is 1.5 * 2^-8 = 0.005859375 */
    assert_true(fabs(kv_row_sum_tol(KV_PREC_BFLOAT16, 65536) - (0.00390625 + 0.005859375))
                < 1e-15);
    assert_true(fabs(kv_row_sum_tol(KV_PREC_FLOAT32, 65536)
                     - (0x1p-24 + 0x1p-11 + 0.005859375)) < 1e-15);
    assert_true(fabs(kv_row_sum_tol(KV_PREC_FLOAT16, 65536) - (0x1p-11 + 0.005859375)) < 1e-15);
}

/* attn_precision = bfloat16 lets a row of 41 entries sum to 1 - 0.0038 (within 0.0039099,
 * as a bfloat16 softmax may) but not to 1 - 0.0040; the same row with no attribute
 * (float32) is refused at 1e-3; an unknown precision is refused by name. */
static void test_attn_precision(void **state)
{
    (void)state;
    const plant near = {0, 2, 40, 0, 0, 0.9962}, over = {0, 2, 40, 0, 0, 0.9960};
    char ok[300], bad[300], f32[300];   /* kv_test_path keeps only its last four results */
    snprintf(ok, sizeof ok, "%s", kv_test_path("bf16_ok.h5"));
    snprintf(bad, sizeof bad, "%s", kv_test_path("bf16_over.h5"));
    snprintf(f32, sizeof f32, "%s", kv_test_path("f32_near.h5"));
    write_attn_prec(ok, &near, 1, KV_PREC_BFLOAT16);
    expect_scan(ok, NULL);
    kv_cli_result r;
    const char *info[] = {"info", "--check", ok, NULL};
    assert_int_equal(kv_cli_run(info, NULL, &r), 0);
    const char *run[] = {"run", "--trace", ok, "--policies", "window", "--budgets", "4",
                         "-q", "-o", kv_test_path("out_bf16"), NULL};
    if (kv_cli_run(run, NULL, &r) != 0)
        fail_msg("run of a bfloat16 trace failed: %s", r.err);

    char want[512];
    write_attn_prec(bad, &over, 1, KV_PREC_BFLOAT16);
    snprintf(want, sizeof want, "%s: /layers/0/attn row [2, 40] sums to 0.996, expected 1 "
             "within 0.0039 (bfloat16 rows of 41 entries)", bad);
    expect_scan(bad, want);
    expect_cli_rejects(bad, want, kv_test_path("out_bf16_over"));

    write_attn_prec(f32, &near, 1, KV_PREC_FLOAT32);
    snprintf(want, sizeof want, "%s: /layers/0/attn row [2, 40] sums to 0.9962, expected 1 "
             "within 1e-3", f32);
    expect_scan(f32, want);

    /* `kvsim info` names the precision and the tolerance (T = 48: 0.0039 at both ends) */
    char cmd[512], line[256];
    snprintf(cmd, sizeof cmd, "%s info %s", kv_cli_bin(), ok);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    int seen = 0;
    while (fgets(line, sizeof line, p))
        seen |= strcmp(line, "attn rows    computed in bfloat16; each row sums to 1 within "
                             "0.0039\n") == 0;
    pclose(p);
    assert_true(seen);

    set_string_attr(ok, "attn_precision", "float8");
    char err[512];
    kv_trace *tr = NULL;
    assert_int_equal(kv_trace_open(ok, &tr, err, sizeof err), KV_ETRACE_FORMAT);
    snprintf(want, sizeof want, "%s: root attribute attn_precision = \"float8\", expected "
             "\"float32\", \"float16\" or \"bfloat16\"", ok);
    assert_string_equal(err, want);
}

static void test_qkv_values(void **state)
{
    (void)state;
    static const struct {
        const char *file, *which;
        int layer, h, t, d;
        float bad;
        const char *want;
    } cases[] = {
        {"q_nan.h5", "q", 1, 2, 5, 1, NAN, "/layers/1/q[2, 5, 1] is NaN, expected a finite number"},
        {"k_inf.h5", "k", 0, 1, 47, 3, INFINITY,
         "/layers/0/k[1, 47, 3] is Inf, expected a finite number"},
        /* float16 storage: 1e6 overflows to Inf when written */
        {"k_big.h5", "k", 1, 0, 0, 0, -1e6f,
         "/layers/1/k[0, 0, 0] is -Inf, expected a finite number"},
        {"v_nan.h5", "v", 0, 1, 7, 3, NAN, "/layers/0/v[1, 7, 3] is NaN, expected a finite number"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = kv_test_path(cases[i].file);
        write_qk(path, cases[i].which, cases[i].layer, cases[i].h, cases[i].t, cases[i].d,
                 cases[i].bad);
        char want[512];
        snprintf(want, sizeof want, "%s: %s", path, cases[i].want);
        expect_scan(path, want);
        expect_cli_rejects(path, want, kv_test_path("out_qkv"));
        /* a run stops before creating its output directory: checked before any replay */
        assert_int_equal(access(kv_test_path("out_qkv"), F_OK), -1);
    }
    const char *good = kv_test_path("qk_good.h5");
    write_qk(good, "", 0, 0, 0, 0, 0);
    expect_scan(good, NULL);
}

/* Reads with checks on return the same message; with checks off (the default) the same
 * rows come back unchanged. */
static void test_read_checks(void **state)
{
    (void)state;
    const plant pl = {1, 3, 17, 5, NAN, 0};
    const char *path = kv_test_path("read_checks.h5");
    write_attn(path, &pl, 1);
    char err[512], want[512];
    kv_trace *tr = NULL;
    assert_int_equal(kv_trace_open(path, &tr, err, sizeof err), 0);
    static float rows[H * 16 * T];   /* the largest read below: 16 rows of every head */
    assert_int_equal(kv_trace_read_attn(tr, 1, 0, H, 16, 24, rows, err, sizeof err), 0);
    assert_true(isnan(rows[((size_t)3 * 8 + 1) * T + 5]));
    kv_trace_set_read_checks(tr, 1);
    assert_int_equal(kv_trace_read_attn(tr, 1, 0, H, 0, 16, rows, err, sizeof err), 0);
    assert_int_equal(kv_trace_read_attn(tr, 1, 0, H, 16, 24, rows, err, sizeof err),
                     KV_ETRACE_FORMAT);
    snprintf(want, sizeof want, "%s: /layers/1/attn[3, 17, 5] is NaN, expected a finite "
             "probability", path);
    assert_string_equal(err, want);
    /* heads 0..2 of the same rows are fine */
    assert_int_equal(kv_trace_read_attn(tr, 1, 0, 3, 16, 24, rows, err, sizeof err), 0);
    kv_trace_close(tr);
}

/* The buffer checks on their own: index arithmetic of a [2, 3, 5] array. */
static void test_finite_index(void **state)
{
    (void)state;
    float x[2 * 3 * 5];
    for (int i = 0; i < 30; i++)
        x[i] = (float)i;
    const int dims[3] = {2, 3, 5};
    char err[256];
    assert_int_equal(kv_check_finite("f.h5", "/layers/0/q", dims, x, err, sizeof err), 0);
    x[1 * 15 + 2 * 5 + 4] = NAN;   /* [1, 2, 4] is element 29 */
    assert_int_equal(kv_check_finite("f.h5", "/layers/0/q", dims, x, err, sizeof err),
                     KV_ETRACE_FORMAT);
    assert_string_equal(err, "f.h5: /layers/0/q[1, 2, 4] is NaN, expected a finite number");
    x[0 * 15 + 1 * 5 + 0] = -INFINITY;   /* [0, 1, 0] comes first */
    kv_check_finite("f.h5", "/layers/0/q", dims, x, err, sizeof err);
    assert_string_equal(err, "f.h5: /layers/0/q[0, 1, 0] is -Inf, expected a finite number");
}

/* ------------------------------------------------------------ structure checks */

/* Bare `kvsim info` (no --check) checks the structure as `kvsim run` does: exit 1 and
 * exactly the line want. */
static void expect_info_rejects(const char *path, const char *want)
{
    kv_cli_result r;
    const char *info[] = {"info", path, NULL};
    assert_int_equal(kv_cli_run(info, NULL, &r), 1);
    char line[1024];
    snprintf(line, sizeof line, "kvsim info: %s\n", want);
    if (strcmp(r.err, line) != 0)
        fail_msg("kvsim info stderr\n  got  '%s'\n  want '%s'", r.err, line);
}

/* An HDF5 file in another tool's layout: one [4, 4] float32 dataset
 * NAME/batch_0/head_0 under each of the root groups names[0..n), no attributes. */
static void write_other_layout(const char *path, const char *const *names, int n)
{
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(f >= 0);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    assert_true(lcpl >= 0 && H5Pset_create_intermediate_group(lcpl, 1) >= 0);
    const hsize_t dims[2] = {4, 4};
    hid_t s = H5Screate_simple(2, dims, NULL);
    for (int i = 0; i < n; i++) {
        char dpath[128];
        snprintf(dpath, sizeof dpath, "%s/batch_0/head_0", names[i]);
        hid_t d = H5Dcreate2(f, dpath, H5T_IEEE_F32LE, s, lcpl, H5P_DEFAULT, H5P_DEFAULT);
        assert_true(d >= 0);
        H5Dclose(d);
    }
    H5Sclose(s);
    H5Pclose(lcpl);
    H5Fclose(f);
}

/* A file without kvtrace_version is named as not a kvsim trace: what its root holds
 * (at most three names, in name order, then "..."), the layout and FORMAT.md. */
static void test_other_layout(void **state)
{
    (void)state;
    static const char layout[] = "expected root attributes kvtrace_version, model, source, "
        "n_layers, n_heads, n_kv_heads, head_dim, n_tokens, prefill_len and datasets "
        "/layers/<l>/attn or /layers/<l>/q and k; see traces/FORMAT.md (kvsim capture or "
        "traces/capture_hf.py write it)";
    const char *one[] = {"layer_0"}, *four[] = {"layer_1", "layer_0", "layer_3", "layer_2"};
    const char *p1 = strdup(kv_test_path("other1.h5")), *p4 = kv_test_path("other4.h5");
    char want[1024];
    write_other_layout(p1, one, 1);
    snprintf(want, sizeof want, "%s: not a kvsim trace: no root attribute kvtrace_version "
             "(its root holds layer_0); %s", p1, layout);
    expect_info_rejects(p1, want);
    expect_cli_rejects(p1, want, kv_test_path("out_other"));
    free((void *)p1);
    write_other_layout(p4, four, 4);
    snprintf(want, sizeof want, "%s: not a kvsim trace: no root attribute kvtrace_version "
             "(its root holds layer_0, layer_1, layer_2, ...); %s", p4, layout);
    expect_info_rejects(p4, want);
    write_other_layout(p4, four, 0);
    snprintf(want, sizeof want, "%s: not a kvsim trace: no root attribute kvtrace_version "
             "(its root holds nothing); %s", p4, layout);
    expect_info_rejects(p4, want);
}

static void test_structure_cli(void **state)
{
    (void)state;
    const hsize_t short_dims[3] = {H, T, T - 1}, rank2[2] = {T, T}, full[3] = {H, T, T};
    struct { const char *file, *want; } cases[] = {
        {"no_attr.h5", "missing root attribute n_heads"},
        {"str_attr.h5", "root attribute n_layers has type string, expected an integer"},
        {"shape.h5", "/layers/0/attn has shape [4, 48, 47], expected [4, 48, 48] (n_heads, "
         "n_tokens, n_tokens)"},
        {"gqa.h5", "root attribute n_heads = 3 is not a multiple of n_kv_heads = 2"},
        {"p0.h5", "root attribute prefill_len = 0, expected 1..n_tokens"},
        {"p49.h5", "root attribute prefill_len = 49, expected 1..n_tokens (n_tokens = 48)"},
        {"p48.h5", "prefill_len 48 equals n_tokens 48: the trace has no decode step to replay"},
        {"rank.h5", "/layers/1/attn has rank 2, expected 3 (n_heads, n_tokens, n_tokens)"},
        {"type.h5", "/layers/1/attn has type int32, expected float16 or float32"},
        {"layer.h5", "missing group /layers/1 (n_layers = 2 needs /layers/0 .. /layers/1)"},
        {"source.h5", "root attribute source = \"probs\", expected \"attn\" or \"qk\""},
    };
    const char *p[sizeof cases / sizeof cases[0]];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        p[i] = strdup(kv_test_path(cases[i].file));
        write_attn(p[i], NULL, 0);
    }
    delete_object(p[0], "n_heads", 1);
    set_string_attr(p[1], "n_layers", "2");
    replace_dataset(p[2], "/layers/0/attn", 3, short_dims, H5T_IEEE_F32LE);
    set_int_attr(p[3], "n_heads", 3);
    set_int_attr(p[4], "prefill_len", 0);
    set_int_attr(p[5], "prefill_len", 49);
    set_int_attr(p[6], "prefill_len", 48);   /* P = T: the format allows it, run does not */
    replace_dataset(p[7], "/layers/1/attn", 2, rank2, H5T_IEEE_F32LE);
    replace_dataset(p[8], "/layers/1/attn", 3, full, H5T_STD_I32LE);
    delete_object(p[9], "/layers/1", 0);
    set_string_attr(p[10], "source", "probs");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char want[512];
        snprintf(want, sizeof want, "%s: %s", p[i], cases[i].want);
        expect_cli_rejects(p[i], want, kv_test_path("out_structure"));
        expect_info_rejects(p[i], want);
        assert_int_equal(access(kv_test_path("out_structure"), F_OK), -1);
        free((void *)p[i]);
    }
}

/* Damaged files: one line and no HDF5 stack; --verbose adds HDF5's own stack. */
static void test_hdf5_stack_only_verbose(void **state)
{
    (void)state;
    const char *good = kv_test_path("to_truncate.h5"), *bad = kv_test_path("truncated.h5");
    write_attn(good, NULL, 0);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "head -c 3000 '%s' > '%s'", good, bad);
    assert_int_equal(system(cmd), 0);
    kv_cli_result r;
    const char *quiet[] = {"info", bad, NULL};
    assert_int_equal(kv_cli_run(quiet, NULL, &r), 1);
    assert_int_equal(kv_cli_lines(r.err), 1);
    assert_non_null(strstr(r.err, bad));
    assert_null(strstr(r.err, "HDF5-DIAG"));
    const char *verbose[] = {"info", "--verbose", bad, NULL};
    assert_int_equal(kv_cli_run(verbose, NULL, &r), 1);
    assert_non_null(strstr(r.err, "HDF5-DIAG"));
    const char *run_verbose[] = {"run", "--verbose", "--trace", bad, "--policies", "window",
                                 "--budgets", "4", "-o", kv_test_path("out_v"), NULL};
    assert_int_equal(kv_cli_run(run_verbose, NULL, &r), 1);
    assert_non_null(strstr(r.err, "HDF5-DIAG"));
    const char *run_quiet[] = {"run", "--trace", bad, "--policies", "window", "--budgets", "4",
                               "-o", kv_test_path("out_v"), NULL};
    assert_int_equal(kv_cli_run(run_quiet, NULL, &r), 1);
    assert_int_equal(kv_cli_lines(r.err), 1);
}

/* A run that fails on a bad value leaves the previous results of --force as they were. */
static void test_previous_results_kept(void **state)
{
    (void)state;
    const char *good = kv_test_path("prev_good.h5"), *bad = kv_test_path("prev_bad.h5");
    const char *out = kv_test_path("out_prev");
    write_attn(good, NULL, 0);
    const plant pl = {1, 0, 40, 2, NAN, 0};   /* layer 1: found after layer 0 replayed */
    write_attn(bad, &pl, 1);
    kv_cli_result r;
    const char *first[] = {"run", "--trace", good, "--policies", "window", "--budgets", "4",
                           "-q", "-o", out, NULL};
    assert_int_equal(kv_cli_run(first, NULL, &r), 0);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "cd '%s' && cat *.tsv > ../prev_before && ls -A > ../prev_ls",
             out);
    assert_int_equal(system(cmd), 0);
    const char *second[] = {"run", "--trace", bad, "--policies", "window", "--budgets", "4",
                            "-q", "--force", "-o", out, NULL};
    assert_int_equal(kv_cli_run(second, NULL, &r), 1);
    assert_non_null(strstr(r.err, "/layers/1/attn[0, 40, 2] is NaN"));
    snprintf(cmd, sizeof cmd, "cd '%s' && cat *.tsv | cmp -s - ../prev_before && ls -A | "
             "cmp -s - ../prev_ls", out);
    assert_int_equal(system(cmd), 0);
}

static int setup(void **state)
{
    (void)state;
    if (kv_test_dir_make("kvsim_validate") != 0)
        return -1;
    if (access(kv_cli_bin(), X_OK) != 0) {
        fprintf(stderr, "%s is not built (make kvsim)\n", kv_cli_bin());
        return -1;
    }
    kv_trace_set_verbose(0);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_finite_index),
        cmocka_unit_test(test_attn_values),
        cmocka_unit_test(test_attn_accepted),
        cmocka_unit_test(test_row_sum_tolerance),
        cmocka_unit_test(test_attn_precision),
        cmocka_unit_test(test_qkv_values),
        cmocka_unit_test(test_read_checks),
        cmocka_unit_test(test_structure_cli),
        cmocka_unit_test(test_other_layout),
        cmocka_unit_test(test_hdf5_stack_only_verbose),
        cmocka_unit_test(test_previous_results_kept),
    };
    return cmocka_run_group_tests(tests, setup, kv_test_dir_teardown);
}
