/*
 * test_trace_gen.c - the synthetic trace generator (traces/gen.h) and `kvsim gen`.
 *
 * Structure is checked on attention computed independently from the q and k in the file:
 * by numpy (/usr/bin/python3 with h5py) and, for a few rows, by a brute-force double
 * softmax here. Thresholds come from the construction (gen.h): with a pattern of strength
 * x nats against ~t keys of logit noise ~1, its mass is about n e^x / (n e^x + t e^0.5);
 * the baseline (pattern off) is about n / t.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "sim/commands.h"
#include "traces/gen.h"
#include "tests/kv_test.h"
#include "traces/trace.h"

static int g_have_h5py;

/* A small parameter set with every pattern off; tests switch one on. */
static kv_gen_params quiet_params(void)
{
    kv_gen_params p;
    kv_gen_defaults(&p);
    p.n_layers = 1;
    p.n_heads = 4;
    p.n_kv_heads = 2;
    p.head_dim = 64;
    p.n_tokens = 160;
    p.prefill_len = 32;
    p.n_sinks = 2;
    p.sink_strength = 0;
    p.locality = 0;
    p.n_heavy_hitters = 4;
    p.heavy_strength = 0;
    p.period = 0;
    p.head_spread = 0;
    return p;
}

static void write_gen(const char *path, const kv_gen_params *p, int f16, int attn)
{
    char err[512] = "";
    if (kv_gen_write(path, p, f16, attn, err, sizeof err) != 0)
        fail_msg("kv_gen_write %s: %s", path, err);
}

/* ------------------------------------------------------------ parameters */

static void test_defaults_and_check(void **state)
{
    (void)state;
    kv_gen_params p;
    kv_gen_defaults(&p);
    assert_int_equal(p.seed, 1);
    assert_int_equal(p.n_layers, 2);
    assert_int_equal(p.n_heads, 8);
    assert_int_equal(p.n_kv_heads, 4);
    assert_int_equal(p.head_dim, 64);
    assert_int_equal(p.n_tokens, 1024);
    assert_int_equal(p.prefill_len, 256);
    assert_int_equal(p.n_sinks, 4);
    assert_int_equal(p.period, 0);
    char err[256];
    assert_int_equal(kv_gen_check(&p, err, sizeof err), 0);
    static const struct { int field; int value; const char *needle; } bad[] = {
        {0, 6, "--heads = 6 is not a multiple of --kv-heads = 4"},
        {1, 2000, "--prefill = 2000 exceeds --tokens = 1024"},
        {2, 1021, "--sinks + --heavy-hitters"},
        {3, 1024, "--period = 1024"},
        {4, 3, "--head-dim"},
        {5, 0, "--layers"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kv_gen_params q = p;
        int *f[] = {&q.n_heads, &q.prefill_len, &q.n_sinks, &q.period, &q.head_dim,
                    &q.n_layers};
        *f[bad[i].field] = bad[i].value;
        assert_int_equal(kv_gen_check(&q, err, sizeof err), KV_ETRACE_ARG);
        if (!strstr(err, bad[i].needle))
            fail_msg("'%s' lacks '%s'", err, bad[i].needle);
    }
    p.sink_strength = -1;
    assert_int_equal(kv_gen_check(&p, err, sizeof err), KV_ETRACE_ARG);
    assert_non_null(strstr(err, "--sink-strength"));
}

/* ------------------------------------------------------------ determinism */

static void read_layer(const char *path, int layer, float *q, float *k)
{
    char err[512];
    kv_trace *tr = NULL;
    if (kv_trace_open(path, &tr, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(kv_trace_read_qk(tr, layer, q, k, err, sizeof err), 0);
    kv_trace_close(tr);
}

static int files_identical(const char *a, const char *b)
{
    char cmd[700];
    snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s'", a, b);
    return system(cmd) == 0;
}

static void test_deterministic(void **state)
{
    (void)state;
    kv_gen_params p = quiet_params();
    p.n_layers = 2;
    p.sink_strength = 5;
    p.locality = 3;
    p.heavy_strength = 4;
    p.period = 20;
    p.head_spread = 0.5;
    p.seed = 7;
    const char *a = kv_test_path("det_a.h5"), *b = kv_test_path("det_b.h5"), *c = kv_test_path("det_c.h5");
    write_gen(a, &p, 0, 1);
    write_gen(b, &p, 0, 1);
    p.seed = 8;
    write_gen(c, &p, 0, 1);
    assert_true(files_identical(a, b));   /* untimed HDF5 objects: same bytes */
    assert_false(files_identical(a, c));
    const size_t nq = 4 * 160 * 64, nk = 2 * 160 * 64;
    float *qa = malloc(nq * sizeof(float)), *ka = malloc(nk * sizeof(float));
    float *qb = malloc(nq * sizeof(float)), *kb = malloc(nk * sizeof(float));
    assert_true(qa && ka && qb && kb);
    read_layer(a, 1, qa, ka);
    read_layer(b, 1, qb, kb);
    assert_memory_equal(qa, qb, nq * sizeof(float));
    assert_memory_equal(ka, kb, nk * sizeof(float));
    read_layer(c, 1, qb, kb);
    assert_true(memcmp(qa, qb, nq * sizeof(float)) != 0);
    read_layer(a, 0, qb, kb);                /* layers draw different numbers */
    assert_true(memcmp(ka, kb, nk * sizeof(float)) != 0);
    free(qa);
    free(ka);
    free(qb);
    free(kb);
}

/* ------------------------------------------------------------ attn rows */

/* p_t[j] for one row, in double from the stored (float32) q and k: the reference. */
static void brute_row(const float *q, const float *k, int D, double scale, int t, double *p)
{
    double m = -INFINITY, sum = 0;
    for (int j = 0; j <= t; j++) {
        double dot = 0;
        for (int d = 0; d < D; d++)
            dot += (double)q[(size_t)t * D + d] * (double)k[(size_t)j * D + d];
        p[j] = scale * dot;
        m = p[j] > m ? p[j] : m;
    }
    for (int j = 0; j <= t; j++)
        sum += (p[j] = exp(p[j] - m));
    for (int j = 0; j <= t; j++)
        p[j] /= sum;
}

/* --attn rows against a brute-force softmax of the file's own q and k, GQA included. */
static void check_attn_rows(int f16)
{
    kv_gen_params p = quiet_params();
    p.head_dim = 16;
    p.n_tokens = 150;
    p.sink_strength = 4;
    p.locality = 3;
    p.heavy_strength = 3;
    p.head_spread = 0.5;
    const int H = 4, T = 150, D = 16;
    const char *path = kv_test_path(f16 ? "rows16.h5" : "rows32.h5");
    write_gen(path, &p, f16, 1);
    char err[512];
    kv_trace *tr = NULL;
    if (kv_trace_open(path, &tr, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(kv_trace_get_info(tr)->source, KV_SOURCE_ATTN);
    assert_int_equal(kv_trace_has_qk(tr), 1);
    float *q = malloc((size_t)H * T * D * sizeof(float));
    float *k = malloc((size_t)2 * T * D * sizeof(float));
    float *rows = malloc((size_t)H * T * T * sizeof(float));
    double ref[150];
    assert_true(q && k && rows);
    assert_int_equal(kv_trace_read_qk(tr, 0, q, k, err, sizeof err), 0);
    assert_int_equal(kv_trace_read_attn(tr, 0, 0, H, 0, T, rows, err, sizeof err), 0);
    /* float32 storage: the rows' own float32 rounding and exponentials, ~1e-7; float16
     * storage: half an ulp of values <= 1, 2^-12 */
    double tol = f16 ? 2.5e-4 : 2e-6;
    for (int h = 0; h < H; h++) {
        int g = h / 2;    /* GQA: 4 query heads over 2 KV heads */
        for (int t = 0; t < T; t += 7) {
            brute_row(q + (size_t)h * T * D, k + (size_t)g * T * D, D, 0.25, t, ref);
            const float *row = rows + ((size_t)h * T + t) * T;
            for (int j = 0; j <= t; j++)
                if (fabs(row[j] - ref[j]) > tol)
                    fail_msg("head %d row %d key %d: stored %.9g, softmax of q.k %.9g", h, t,
                             j, row[j], ref[j]);
        }
    }
    kv_trace_close(tr);
    free(q);
    free(k);
    free(rows);
}

static void test_attn_rows_f32(void **state)
{
    (void)state;
    check_attn_rows(0);
}

static void test_attn_rows_f16(void **state)
{
    (void)state;
    check_attn_rows(1);
}

/* ------------------------------------------------------------ structure, by numpy */

/*
 * For each file: mean over query heads and decode rows t of the attention mass computed by
 * numpy from the file's q and k (float64) on the sinks, the heavy hitters (from
 * /generator/heavy_hitters, those <= t), key t - period (t - 16 when the period is off: the
 * baseline), and the last 8 keys t-7..t.
 */
static const char stats_script[] =
    "import sys, h5py, numpy as np\n"
    "for path in sys.argv[1:]:\n"
    "    f = h5py.File(path, 'r')\n"
    "    H, G, T, P = (int(f.attrs[n]) for n in ('n_heads', 'n_kv_heads', 'n_tokens',\n"
    "                                           'prefill_len'))\n"
    "    S, per = int(f.attrs['gen_sinks']), int(f.attrs['gen_period'])\n"
    "    s = float(f.attrs['softmax_scale'])\n"
    "    q = f['layers/0/q'][...].astype(np.float64)\n"
    "    k = f['layers/0/k'][...].astype(np.float64)\n"
    "    hh = f['generator/heavy_hitters'][0]\n"
    "    acc = np.zeros(4)\n"
    "    for h in range(H):\n"
    "        g = h // (H // G)\n"
    "        x = s * q[h] @ k[g].T\n"
    "        x[np.triu_indices(T, 1)] = -np.inf\n"
    "        p = np.exp(x - x.max(axis=1, keepdims=True))\n"
    "        p /= p.sum(axis=1, keepdims=True)\n"
    "        for t in range(P, T):\n"
    "            acc[0] += p[t, :S].sum()\n"
    "            acc[1] += p[t, hh[g][hh[g] <= t]].sum()\n"
    "            acc[2] += p[t, t - (per or 16)]\n"
    "            acc[3] += p[t, t - 7:t + 1].sum()\n"
    "    print(path, *(acc / (H * (T - P))))\n";

enum { M_SINK, M_HEAVY, M_PERIOD, M_LOCAL, N_MEASURES };

static void test_structure(void **state)
{
    (void)state;
    if (!g_have_h5py) {
        fprintf(stderr, "no h5py for /usr/bin/python3: structure test skipped\n");
        skip();
    }
    /* base: every pattern off; then each pattern on alone */
    kv_gen_params ps[5];
    for (int i = 0; i < 5; i++)
        ps[i] = quiet_params();
    ps[1].sink_strength = 8;
    ps[2].heavy_strength = 6;
    ps[3].period = 16;
    ps[3].period_strength = 8;
    ps[4].locality = 6;
    ps[4].locality_span = 8;
    char cmd[2048];
    const char *script = kv_test_path("stats.py");
    FILE *f = fopen(script, "w");
    assert_non_null(f);
    fputs(stats_script, f);
    fclose(f);
    int at = snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s", script);
    for (int i = 0; i < 5; i++) {
        char name[32];
        snprintf(name, sizeof name, "structure%d.h5", i);
        write_gen(kv_test_path(name), &ps[i], 0, 0);
        at += snprintf(cmd + at, sizeof cmd - (size_t)at, " %s", kv_test_path(name));
    }
    FILE *py = popen(cmd, "r");
    assert_non_null(py);
    double m[5][N_MEASURES];
    for (int i = 0; i < 5; i++) {
        char path[300];
        assert_int_equal(fscanf(py, "%299s %lf %lf %lf %lf", path, &m[i][0], &m[i][1],
                                &m[i][2], &m[i][3]), 5);
    }
    assert_int_equal(pclose(py), 0);
    for (int i = 0; i < 5; i++)
        fprintf(stderr, "  scenario %d: sinks %.3f heavy %.3f period %.3f last8 %.3f\n", i,
                m[i][0], m[i][1], m[i][2], m[i][3]);
    /* baseline: about 2/t on the sinks, 4/t on heavy hitters, 8/t on the last 8 keys */
    assert_true(m[0][M_SINK] < 0.1);
    assert_true(m[0][M_HEAVY] < 0.15);
    assert_true(m[0][M_LOCAL] < 0.2);
    assert_true(m[0][M_PERIOD] < 0.05);
    /* each pattern switched on dominates its measure */
    assert_true(m[1][M_SINK] > 0.8);
    assert_true(m[2][M_HEAVY] > 0.5);
    assert_true(m[3][M_PERIOD] > 0.6);
    assert_true(m[4][M_LOCAL] > 0.4);
    /* and leaves the others near baseline */
    assert_true(m[1][M_LOCAL] < 0.1);
    assert_true(m[4][M_SINK] < 0.1);
}

/* ------------------------------------------------------------ kvsim gen */

static void test_cmd_gen(void **state)
{
    (void)state;
    char out[256], bad_dir[] = "/nonexistent-kvsim-dir/x.h5";
    snprintf(out, sizeof out, "%s", kv_test_path("synthetic.h5"));
    /* the Makefile's run target */
    char *run[] = {"gen", "--seed", "1", "--layers", "2", "--heads", "8", "--kv-heads", "4",
                   "--head-dim", "32", "--tokens", "512", "--prefill", "128", "-o", out, NULL};
    assert_int_equal(kv_test_call_quiet(kv_cmd_gen, 17, run), 0);
    char err[512];
    kv_trace *tr = NULL;
    if (kv_trace_open(out, &tr, err, sizeof err) != 0)
        fail_msg("%s", err);
    const kv_trace_info *in = kv_trace_get_info(tr);
    assert_int_equal(in->source, KV_SOURCE_QK);
    assert_int_equal(in->n_layers, 2);
    assert_int_equal(in->n_heads, 8);
    assert_int_equal(in->n_kv_heads, 4);
    assert_int_equal(in->head_dim, 32);
    assert_int_equal(in->n_tokens, 512);
    assert_int_equal(in->prefill_len, 128);
    assert_true(fabs(in->softmax_scale - 0.17677669529663687) < 1e-15);   /* 1/sqrt(32) */
    kv_trace_close(tr);

    char *help[] = {"gen", "--help", NULL};
    char *no_out[] = {"gen", "--tokens", "64", NULL};
    char *not_num[] = {"gen", "--tokens", "abc", "-o", out, NULL};
    char *neg[] = {"gen", "--seed", "-3", "-o", out, NULL};
    char *gqa[] = {"gen", "--heads", "6", "--kv-heads", "4", "-o", out, NULL};
    char *p_gt_t[] = {"gen", "--tokens", "64", "--prefill", "65", "-o", out, NULL};
    char *stray[] = {"gen", "-o", out, "extra", NULL};
    char *unknown[] = {"gen", "--bogus", "-o", out, NULL};
    char *unwritable[] = {"gen", "--tokens", "64", "--prefill", "8", "-o", bad_dir, NULL};
    char *f16_attn[] = {"gen", "--tokens", "64", "--prefill", "8", "--f16", "--attn",
                        "--heads", "2", "--kv-heads", "1", "--layers", "1", "-o", out, NULL};
    assert_int_equal(kv_test_call_quiet(kv_cmd_gen, 2, help), 0);
    assert_int_equal(kv_test_call_quiet(kv_cmd_gen, 3, no_out), 2);
    assert_int_equal(kv_test_call_quiet(kv_cmd_gen, 5, not_num), 2);
    assert_int_equal(kv_test_call_quiet(kv_cmd_gen, 5, neg), 2);
    assert_int_equal(kv_test_call_quiet(kv_cmd_gen, 7, gqa), 2);
    assert_int_equal(kv_test_call_quiet(kv_cmd_gen, 7, p_gt_t), 2);
    assert_int_equal(kv_test_call_quiet(kv_cmd_gen, 4, stray), 2);
    assert_int_equal(kv_test_call_quiet(kv_cmd_gen, 4, unknown), 2);
    assert_int_equal(kv_test_call_quiet(kv_cmd_gen, 7, unwritable), 1);
    assert_int_equal(kv_test_call_quiet(kv_cmd_gen, 15, f16_attn), 0);
    if (kv_trace_open(out, &tr, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(kv_trace_get_info(tr)->source, KV_SOURCE_ATTN);
    assert_int_equal(kv_trace_get_info(tr)->n_tokens, 64);
    kv_trace_close(tr);
    if (g_have_h5py) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c \"import h5py, numpy as np; "
                 "f = h5py.File('%s', 'r'); "
                 "assert f['layers/0/attn'].dtype == np.float16; "
                 "assert f['layers/0/q'].dtype == np.float16\"", out);
        assert_int_equal(kv_test_run_quiet(cmd), 0);
    }
}

/* ------------------------------------------------------------ main */

static int setup(void **state)
{
    (void)state;
    if (kv_test_dir_make("kvsim_trace_gen") != 0)
        return -1;
    g_have_h5py = kv_test_run_quiet("/usr/bin/python3 -c 'import h5py, numpy'") == 0;
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_check),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_attn_rows_f32),
        cmocka_unit_test(test_attn_rows_f16),
        cmocka_unit_test(test_structure),
        cmocka_unit_test(test_cmd_gen),
    };
    return cmocka_run_group_tests(tests, setup, kv_test_dir_teardown);
}
