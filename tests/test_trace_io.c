/*
 * test_trace_io.c - the kvtrace reader and writer (traces/trace.h).
 *
 * Expected values come from routes independent of the code under test:
 *   - float16 rounding: a brute-force nearest-representable search over all halves, ties
 *     to even (ref_half), and numpy's astype(float16) when /usr/bin/python3 has h5py;
 *   - files written by h5py (float16, variable- and fixed-length strings, int64/int16/uint8
 *     attributes, big-endian float32, contiguous layout) with expectations numpy writes out;
 *     without h5py the committed fixture tests/data/h5py_f16.h5 made by the same script;
 *   - attn tiles allocated, messages of malformed files: worked out by hand below.
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
#include <hdf5.h>

#include "sim/commands.h"
#include "tests/h5_edit.h"
#include "tests/kv_test.h"
#include "traces/trace.h"

#define FIXTURE "tests/data/h5py_f16.h5"

static int g_have_h5py;

/* ------------------------------------------------------------ independent float16 */

/* The value of non-negative half bits b (0 .. 0x7c00), decoded from the definition. */
static double half_bits_value(unsigned b)
{
    unsigned e = b >> 10, m = b & 0x3ffu;
    if (e == 0)
        return ldexp((double)m, -24);
    if (e == 31)
        return INFINITY;
    return ldexp((double)(1024 + m), (int)e - 25);
}

/* IEEE round-to-nearest-even of x to binary16, by searching the representable values. */
static float ref_half(double x)
{
    double a = fabs(x), r;
    if (isnan(x))
        return NAN;
    if (a >= 65520.0) {          /* halfway between 65504 and 2^16: overflows to inf */
        r = INFINITY;
    } else {
        unsigned lo = 0, hi = 0x7bff;
        while (lo < hi) {
            unsigned mid = (lo + hi + 1) / 2;
            if (half_bits_value(mid) <= a)
                lo = mid;
            else
                hi = mid - 1;
        }
        unsigned b = lo;
        if (b < 0x7bff) {
            double d0 = a - half_bits_value(b), d1 = half_bits_value(b + 1) - a;
            if (d1 < d0 || (d1 == d0 && (b & 1u)))
                b++;
        }
        r = half_bits_value(b);
    }
    return (float)copysign(r, x);
}

/* ------------------------------------------------------------ helpers */

/* Deterministic values spanning many binades (subnormal halves to ~1e3), signs mixed. */
static float test_value(uint64_t *state)
{
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    double u = (double)(*state >> 11) / 9007199254740992.0;
    int binade = (int)((*state >> 3) % 40) - 28;
    return (float)((u - 0.5) * ldexp(1.0, binade));
}

static float *alloc_floats(size_t n)
{
    float *p = malloc(n * sizeof(float));
    assert_non_null(p);
    return p;
}

static kv_trace_info tiny_info(kv_source source, int L, int H, int G, int D, int T, int P)
{
    kv_trace_info in;
    memset(&in, 0, sizeof in);
    snprintf(in.model, sizeof in.model, "test-model");
    in.n_layers = L;
    in.n_heads = H;
    in.n_kv_heads = G;
    in.head_dim = D;
    in.n_tokens = T;
    in.prefill_len = P;
    in.source = source;
    return in;
}

/* ------------------------------------------------------------ qk round trip */

/* Float16 rounding cases worked out by hand: ties to even, overflow, subnormals. */
static const float special[] = {
    1.0f + 0x1p-11f,          /* tie between 1 and 1 + 2^-10: even -> 1 */
    1.0f + 3 * 0x1p-11f,      /* tie between 1 + 2^-10 and 1 + 2^-9: even -> 1 + 2^-9 */
    65504.0f, 65519.0f,       /* max half; just below the overflow threshold -> 65504 */
    65520.0f, -70000.0f,      /* -> +inf, -inf */
    0x1p-24f, 0x1p-25f,       /* smallest subnormal; its half -> 0 (tie to even) */
    0x1.8p-25f, -0x1p-14f,    /* -> 2^-24; smallest normal */
    0x1.ffcp-15f, 0.0f,       /* 1023.5 * 2^-24: tie between 1023 and 1024 units -> 2^-14 */
};

static void check_qk_roundtrip(int store_f16)
{
    const int L = 2, H = 4, G = 2, D = 8, T = 40, P = 10;
    const size_t nq = (size_t)H * T * D, nk = (size_t)G * T * D;
    kv_trace_info in = tiny_info(KV_SOURCE_QK, L, H, G, D, T, P);
    in.dtype_bytes = 1;
    const char *path = kv_test_path(store_f16 ? "qk16.h5" : "qk32.h5");
    char err[512] = "";
    kv_trace_writer *w = NULL;
    assert_int_equal(kv_trace_create(path, &in, store_f16, &w, err, sizeof err), 0);
    float *q[2], *k[2], *v[2];
    uint64_t state = 42;
    for (int l = 0; l < L; l++) {
        q[l] = alloc_floats(nq);
        k[l] = alloc_floats(nk);
        v[l] = alloc_floats(nk);
        for (size_t i = 0; i < nq; i++)
            q[l][i] = test_value(&state);
        for (size_t i = 0; i < nk; i++) {
            k[l][i] = test_value(&state);
            v[l][i] = test_value(&state);
        }
    }
    memcpy(q[0], special, sizeof special);
    for (int l = 0; l < L; l++)
        assert_int_equal(kv_trace_write_qk(w, l, q[l], k[l], v[l], err, sizeof err), 0);
    int32_t tokens[40];
    for (int t = 0; t < T; t++)
        tokens[t] = 1000 + 7 * t;
    assert_int_equal(kv_trace_write_tokens(w, tokens, err, sizeof err), 0);
    assert_int_equal(kv_trace_write_attr_string(w, "prompt", "héllo", err, sizeof err), 0);
    assert_int_equal(kv_trace_finish(w, err, sizeof err), 0);

    kv_trace *tr = NULL;
    assert_int_equal(kv_trace_open(path, &tr, err, sizeof err), 0);
    const kv_trace_info *got = kv_trace_get_info(tr);
    assert_int_equal(got->version, 1);
    assert_string_equal(got->model, "test-model");
    assert_int_equal(got->n_layers, L);
    assert_int_equal(got->n_heads, H);
    assert_int_equal(got->n_kv_heads, G);
    assert_int_equal(got->head_dim, D);
    assert_int_equal(got->n_tokens, T);
    assert_int_equal(got->prefill_len, P);
    assert_int_equal(got->source, KV_SOURCE_QK);
    assert_true(fabs(got->softmax_scale - 0.35355339059327373) < 1e-15);  /* 1/sqrt(8) */
    assert_int_equal(got->dtype_bytes, 1);
    assert_int_equal(got->has_tokens, 1);
    assert_int_equal(got->has_v, 1);
    assert_int_equal(kv_trace_has_qk(tr), 1);
    float *rq = alloc_floats(nq), *rk = alloc_floats(nk);
    for (int l = 0; l < L; l++) {
        assert_int_equal(kv_trace_read_qk(tr, l, rq, rk, err, sizeof err), 0);
        for (size_t i = 0; i < nq; i++) {
            float want = store_f16 ? ref_half(q[l][i]) : q[l][i];
            if (rq[i] != want || signbit(rq[i]) != signbit(want))
                fail_msg("layer %d q[%zu]: input %a read %a expected %a", l, i, q[l][i], rq[i],
                         want);
        }
        for (size_t i = 0; i < nk; i++)
            assert_true(rk[i] == (store_f16 ? ref_half(k[l][i]) : k[l][i]));
    }
    int32_t rt[40];
    assert_int_equal(kv_trace_read_tokens(tr, rt, err, sizeof err), 0);
    assert_memory_equal(rt, tokens, sizeof tokens);
    kv_trace_close(tr);

    if (store_f16 && g_have_h5py) {
        /* numpy's float16 rounding of the same float32 inputs, through h5py */
        const char *bin = kv_test_path("qk16_in.bin");
        FILE *f = fopen(bin, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(q[0], sizeof(float), nq, f), nq);
        fclose(f);
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c \"import h5py, numpy as np; "
                 "d = h5py.File('%s', 'r')['layers/0/q']; "
                 "x = np.fromfile('%s', np.float32).reshape(%d, %d, %d).astype(np.float16); "
                 "assert d.dtype == np.float16, d.dtype; "
                 "assert np.array_equal(d[...].view(np.uint16), x.view(np.uint16))\"",
                 path, bin, H, T, D);
        assert_int_equal(kv_test_run_quiet(cmd), 0);
    }
    for (int l = 0; l < L; l++) {
        free(q[l]);
        free(k[l]);
        free(v[l]);
    }
    free(rq);
    free(rk);
}

static void test_qk_roundtrip_f32(void **state)
{
    (void)state;
    check_qk_roundtrip(0);
}

static void test_qk_roundtrip_f16(void **state)
{
    (void)state;
    check_qk_roundtrip(1);
}

/* The hand-worked float16 cases, value by value. */
static void test_f16_special_values(void **state)
{
    (void)state;
    const float want[] = {1.0f, 1.0f + 0x1p-9f, 65504.0f, 65504.0f, INFINITY, -INFINITY,
                          0x1p-24f, 0.0f, 0x1p-24f, -0x1p-14f, 0x1p-14f, 0.0f};
    assert_int_equal(sizeof want, sizeof special);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        assert_true(ref_half(special[i]) == want[i]);   /* the reference itself */
    kv_trace_info in = tiny_info(KV_SOURCE_QK, 1, 1, 1, 12, 1, 1);
    const char *path = kv_test_path("special.h5");
    char err[512];
    kv_trace_writer *w = NULL;
    assert_int_equal(kv_trace_create(path, &in, 1, &w, err, sizeof err), 0);
    assert_int_equal(kv_trace_write_qk(w, 0, special, special, NULL, err, sizeof err), 0);
    assert_int_equal(kv_trace_finish(w, err, sizeof err), 0);
    kv_trace *tr = NULL;
    float q[12], k[12];
    assert_int_equal(kv_trace_open(path, &tr, err, sizeof err), 0);
    assert_int_equal(kv_trace_get_info(tr)->has_v, 0);
    assert_int_equal(kv_trace_read_qk(tr, 0, q, k, err, sizeof err), 0);
    for (size_t i = 0; i < 12; i++)
        assert_true(q[i] == want[i]);
    kv_trace_close(tr);
}

/* ------------------------------------------------------------ attn blocks */

enum { AT = 300, AH = 3 };

/* Row t of head h: j <= t by formula, 777 above the diagonal (must be ignored). */
static float attn_value(int h, int t, int j)
{
    return j <= t ? (float)((h + 1) * 1000 + t) + (float)j / 1024.0f : 777.0f;
}

static void check_attn_blocks(int store_f16)
{
    const int T = AT, H = AH;
    kv_trace_info in = tiny_info(KV_SOURCE_ATTN, 1, H, 1, 4, T, 100);
    const char *path = kv_test_path(store_f16 ? "attn16.h5" : "attn32.h5");
    char err[512];
    kv_trace_writer *w = NULL;
    assert_int_equal(kv_trace_create(path, &in, store_f16, &w, err, sizeof err), 0);
    float *rows = alloc_floats((size_t)T * T);
    for (int h = 0; h < H; h++) {
        /* head 0 in two uneven blocks, head 1 at once, head 2 in blocks of 7 rows */
        int step = h == 0 ? 100 : h == 1 ? T : 7;
        for (int a = h == 0 ? 0 : 0, b; a < T; a = b) {
            b = h == 0 ? (a == 0 ? 100 : T) : (a + step < T ? a + step : T);
            for (int t = a; t < b; t++)
                for (int j = 0; j < T; j++)
                    rows[(size_t)(t - a) * T + j] = attn_value(h, t, j);
            assert_int_equal(kv_trace_write_attn_rows(w, 0, h, a, b, rows, err, sizeof err), 0);
        }
    }
    assert_int_equal(kv_trace_finish(w, err, sizeof err), 0);
    free(rows);

    /* Tiles of 128: tile-rows 0..127, 128..255, 256..299 touch 1, 2, 3 tiles of the
     * lower triangle: 6 per head, 18 in all; the other 9 are never allocated. */
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, "/layers/0/attn", H5P_DEFAULT);
    hid_t space = H5Dget_space(d);
    hsize_t n_chunks = 0;
    assert_true(H5Dget_num_chunks(d, space, &n_chunks) >= 0);
    H5Sclose(space);
    assert_int_equal(n_chunks, 18);
    H5Dclose(d);
    H5Fclose(f);

    kv_trace *tr = NULL;
    assert_int_equal(kv_trace_open(path, &tr, err, sizeof err), 0);
    assert_int_equal(kv_trace_has_qk(tr), 0);
    static const int blocks[][4] = {   /* t0, t1, h0, h1 */
        {0, 1, 0, 3}, {0, AT, 0, 3}, {5, 133, 1, 2}, {127, 129, 0, 2}, {250, 300, 2, 3},
        {128, 256, 0, 3}, {299, 300, 1, 3},
    };
    float *out = alloc_floats((size_t)H * T * T);
    for (size_t b = 0; b < sizeof blocks / sizeof blocks[0]; b++) {
        int t0 = blocks[b][0], t1 = blocks[b][1], h0 = blocks[b][2], h1 = blocks[b][3];
        for (size_t i = 0; i < (size_t)H * T * T; i++)
            out[i] = NAN;   /* whatever the caller's buffer held */
        assert_int_equal(kv_trace_read_attn(tr, 0, h0, h1, t0, t1, out, err, sizeof err), 0);
        for (int h = h0; h < h1; h++)
            for (int t = t0; t < t1; t++)
                for (int j = 0; j < T; j++) {
                    float got = out[((size_t)(h - h0) * (size_t)(t1 - t0) + (size_t)(t - t0))
                                    * T + j];
                    float want = j > t ? 0.0f : store_f16 ? ref_half(attn_value(h, t, j))
                                                          : attn_value(h, t, j);
                    if (got != want)
                        fail_msg("block %zu head %d row %d col %d: read %g, expected %g", b, h,
                                 t, j, got, want);
                }
    }
    free(out);
    float one;
    assert_int_equal(kv_trace_read_attn(tr, 0, 0, 1, 5, 5, &one, err, sizeof err),
                     KV_ETRACE_ARG);
    assert_int_equal(kv_trace_read_attn(tr, 1, 0, 1, 0, 1, &one, err, sizeof err),
                     KV_ETRACE_ARG);
    assert_int_equal(kv_trace_read_attn(tr, 0, 0, 4, 0, 1, &one, err, sizeof err),
                     KV_ETRACE_ARG);
    assert_int_equal(kv_trace_read_qk(tr, 0, &one, &one, err, sizeof err), KV_ETRACE_ARG);
    int32_t tok;
    assert_int_equal(kv_trace_read_tokens(tr, &tok, err, sizeof err), KV_ETRACE_FORMAT);
    kv_trace_close(tr);
}

static void test_attn_blocks_f32(void **state)
{
    (void)state;
    check_attn_blocks(0);
}

static void test_attn_blocks_f16(void **state)
{
    (void)state;
    check_attn_blocks(1);
}

/* ------------------------------------------------------------ files written by h5py */

/*
 * Writes, into the directory argv[1]:
 *   h5py_f16.h5  qk, float16 q/k/v, int64 attributes, variable-length UTF-8 strings,
 *                float32 softmax_scale, no dtype_bytes, int64 /tokens, gzip+shuffle in
 *                chunks that do not divide T, libver='latest' (its compact chunk index
 *                keeps the committed fixture tests/data/h5py_f16.h5, this file, small);
 *   h5py_attn.h5 attn: layer 0 float16 contiguous with garbage above the diagonal,
 *                layer 1 big-endian float32 chunked; int16/uint8 attributes, fixed-length
 *                byte strings;
 * and, for each, numpy's float32 expectations as raw .bin files.
 */
static const char h5py_script[] =
    "import sys, h5py, numpy as np\n"
    "out = sys.argv[1]\n"
    "L, H, G, D, T, P = 2, 4, 2, 8, 24, 8\n"
    "def vals(n, salt):\n"
    "    i = np.arange(n, dtype=np.int64)\n"
    "    return (((i * 7919 + salt) % 2001) - 1000) / 999.0\n"
    "with h5py.File(out + '/h5py_f16.h5', 'w', libver='latest') as f:\n"
    "    for name, v in [('kvtrace_version', 1), ('model', 'h5py-fixture \\u00e9'),\n"
    "                    ('n_layers', L), ('n_heads', H), ('n_kv_heads', G), ('head_dim', D),\n"
    "                    ('n_tokens', T), ('prefill_len', P), ('source', 'qk'),\n"
    "                    ('softmax_scale', np.float32(0.3))]:\n"
    "        f.attrs[name] = v\n"
    "    f['tokens'] = np.arange(T, dtype=np.int64) * 3\n"
    "    for l in range(L):\n"
    "        g = f.create_group('layers/%d' % l)\n"
    "        for name, n, salt in [('q', H, 11), ('k', G, 23), ('v', G, 37)]:\n"
    "            x = vals(n * T * D, salt + l).reshape(n, T, D).astype(np.float16)\n"
    "            g.create_dataset(name, data=x, chunks=(1, 5, D), compression='gzip',\n"
    "                             shuffle=True)\n"
    "            x.astype(np.float32).tofile('%s/h5py_%s%d.bin' % (out, name, l))\n"
    "with h5py.File(out + '/h5py_attn.h5', 'w') as f:\n"
    "    f.attrs['kvtrace_version'] = np.uint8(1)\n"
    "    f.attrs['model'] = np.bytes_(b'fixed-length')\n"
    "    f.attrs['source'] = np.bytes_(b'attn')\n"
    "    for name, v in [('n_layers', 2), ('n_heads', 3), ('n_kv_heads', 1),\n"
    "                    ('head_dim', 4), ('n_tokens', 37), ('prefill_len', 37),\n"
    "                    ('dtype_bytes', 4)]:\n"
    "        f.attrs[name] = np.int16(v)\n"
    "    for l, dt in [(0, np.float16), (1, np.dtype('>f4'))]:\n"
    "        a = vals(3 * 37 * 37, 5 + l).reshape(3, 37, 37).astype(dt)\n"
    "        f.create_dataset('layers/%d/attn' % l, data=a,\n"
    "                         chunks=None if l == 0 else (1, 16, 8))\n"
    "        np.tril(a.astype(np.float32)).tofile('%s/h5py_attn%d.bin' % (out, l))\n";

/* The fixture's values by the script's formula, rounded to float16 here. */
static float fixture_value(size_t i, int salt)
{
    long long v = ((long long)i * 7919 + salt) % 2001 - 1000;
    return ref_half((double)v / 999.0);
}

static void check_bin(const char *bin, const float *got, size_t n)
{
    FILE *f = fopen(bin, "rb");
    assert_non_null(f);
    float *want = alloc_floats(n);
    assert_int_equal(fread(want, sizeof(float), n, f), n);
    fclose(f);
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i])
            fail_msg("%s[%zu]: read %g, numpy expects %g", bin, i, got[i], want[i]);
    free(want);
}

/* Checks h5py_f16.h5 at path; bin_dir holds numpy's expectations, or NULL. */
static void check_h5py_qk(const char *path, const char *bin_dir)
{
    enum { L = 2, H = 4, G = 2, D = 8, T = 24 };
    char err[512];
    kv_trace *tr = NULL;
    if (kv_trace_open(path, &tr, err, sizeof err) != 0)
        fail_msg("%s", err);
    const kv_trace_info *in = kv_trace_get_info(tr);
    assert_string_equal(in->model, "h5py-fixture \xc3\xa9");
    assert_int_equal(in->n_layers, L);
    assert_int_equal(in->n_heads, H);
    assert_int_equal(in->n_kv_heads, G);
    assert_int_equal(in->head_dim, D);
    assert_int_equal(in->n_tokens, T);
    assert_int_equal(in->prefill_len, 8);
    assert_int_equal(in->source, KV_SOURCE_QK);
    assert_true(in->softmax_scale == (double)0.3f);
    assert_int_equal(in->dtype_bytes, 2);      /* absent: the default */
    assert_int_equal(in->has_v, 1);
    assert_int_equal(in->has_tokens, 1);
    int32_t tokens[T];
    assert_int_equal(kv_trace_read_tokens(tr, tokens, err, sizeof err), 0);
    for (int t = 0; t < T; t++)
        assert_int_equal(tokens[t], 3 * t);
    float q[H * T * D], k[G * T * D];
    for (int l = 0; l < L; l++) {
        assert_int_equal(kv_trace_read_qk(tr, l, q, k, err, sizeof err), 0);
        for (size_t i = 0; i < H * T * D; i++)
            assert_true(q[i] == fixture_value(i, 11 + l));
        for (size_t i = 0; i < G * T * D; i++)
            assert_true(k[i] == fixture_value(i, 23 + l));
        if (bin_dir) {
            char bin[300];
            snprintf(bin, sizeof bin, "%s/h5py_q%d.bin", bin_dir, l);
            check_bin(bin, q, H * T * D);
            snprintf(bin, sizeof bin, "%s/h5py_k%d.bin", bin_dir, l);
            check_bin(bin, k, G * T * D);
        }
    }
    kv_trace_close(tr);
}

static void test_h5py_fixture(void **state)
{
    (void)state;
    check_h5py_qk(FIXTURE, NULL);
}

static void test_h5py_fresh(void **state)
{
    (void)state;
    if (!g_have_h5py) {
        fprintf(stderr, "no h5py for /usr/bin/python3: the committed fixture stands in\n");
        skip();
    }
    const char *script = kv_test_path("h5py_write.py");
    FILE *f = fopen(script, "w");
    assert_non_null(f);
    fputs(h5py_script, f);
    fclose(f);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s", script, kv_test_dir);
    assert_int_equal(kv_test_run_quiet(cmd), 0);
    check_h5py_qk(kv_test_path("h5py_f16.h5"), kv_test_dir);

    char err[512];
    kv_trace *tr = NULL;
    if (kv_trace_open(kv_test_path("h5py_attn.h5"), &tr, err, sizeof err) != 0)
        fail_msg("%s", err);
    const kv_trace_info *in = kv_trace_get_info(tr);
    assert_string_equal(in->model, "fixed-length");
    assert_int_equal(in->source, KV_SOURCE_ATTN);
    assert_int_equal(in->n_heads, 3);
    assert_int_equal(in->n_tokens, 37);
    assert_int_equal(in->dtype_bytes, 4);
    assert_true(in->softmax_scale == 0.5);     /* absent: 1/sqrt(head_dim = 4) */
    float out[3 * 37 * 37];
    for (int l = 0; l < 2; l++) {
        assert_int_equal(kv_trace_read_attn(tr, l, 0, 3, 0, 37, out, err, sizeof err), 0);
        char bin[300];
        snprintf(bin, sizeof bin, "%s/h5py_attn%d.bin", kv_test_dir, l);
        check_bin(bin, out, 3 * 37 * 37);
    }
    kv_trace_close(tr);
}

/* ------------------------------------------------------------ malformed files */

/* A valid attn trace: 2 layers, 4 heads, 2 KV heads, head_dim 8, T = 20, P = 5. */
static const char *write_valid_attn(const char *name)
{
    const char *path = kv_test_path(name);
    kv_trace_info in = tiny_info(KV_SOURCE_ATTN, 2, 4, 2, 8, 20, 5);
    char err[512];
    kv_trace_writer *w = NULL;
    assert_int_equal(kv_trace_create(path, &in, 0, &w, err, sizeof err), 0);
    float rows[20 * 20];
    for (int i = 0; i < 400; i++)
        rows[i] = 0.05f;
    for (int l = 0; l < 2; l++)
        for (int h = 0; h < 4; h++)
            assert_int_equal(kv_trace_write_attn_rows(w, l, h, 0, 20, rows, err, sizeof err), 0);
    assert_int_equal(kv_trace_finish(w, err, sizeof err), 0);
    return path;
}

/* Opens path expecting failure with code; err must contain each of the needles. */
static void expect_rejected(const char *path, int code, const char *needle1,
                            const char *needle2)
{
    char err[512] = "";
    kv_trace *tr = (kv_trace *)&err;   /* must be reset to NULL */
    int rc = kv_trace_open(path, &tr, err, sizeof err);
    if (rc != code)
        fail_msg("%s: got code %d (%s), expected %d", path, rc, err, code);
    assert_null(tr);
    assert_non_null(strstr(err, path));
    if (!strstr(err, needle1) || (needle2 && !strstr(err, needle2)))
        fail_msg("message '%s' lacks '%s' / '%s'", err, needle1, needle2 ? needle2 : "");
    assert_null(strchr(err, '\n'));
}

static void test_malformed(void **state)
{
    (void)state;
    char want[512];
    const char *p = write_valid_attn("bad_shape.h5");
    hsize_t dims[3] = {4, 20, 19};
    replace_dataset(p, "/layers/0/attn", 3, dims, H5T_IEEE_F32LE);
    snprintf(want, sizeof want, "%s: /layers/0/attn has shape [4, 20, 19], expected "
             "[4, 20, 20] (n_heads, n_tokens, n_tokens)", p);
    expect_rejected(p, KV_ETRACE_FORMAT, want, NULL);

    p = write_valid_attn("bad_rank.h5");
    replace_dataset(p, "/layers/1/attn", 2, dims + 1, H5T_IEEE_F32LE);
    expect_rejected(p, KV_ETRACE_FORMAT, "/layers/1/attn has rank 2, expected 3", NULL);

    p = write_valid_attn("bad_type.h5");
    dims[2] = 20;
    replace_dataset(p, "/layers/1/attn", 3, dims, H5T_STD_I32LE);
    expect_rejected(p, KV_ETRACE_FORMAT, "/layers/1/attn has type int32", "float16 or float32");

    p = write_valid_attn("bad_double.h5");
    replace_dataset(p, "/layers/0/attn", 3, dims, H5T_IEEE_F64LE);
    expect_rejected(p, KV_ETRACE_FORMAT, "/layers/0/attn has type float64", NULL);

    p = write_valid_attn("p_gt_t.h5");
    set_int_attr(p, "prefill_len", 21);
    expect_rejected(p, KV_ETRACE_FORMAT, "prefill_len = 21", "n_tokens = 20");

    p = write_valid_attn("p_zero.h5");
    set_int_attr(p, "prefill_len", 0);
    expect_rejected(p, KV_ETRACE_FORMAT, "prefill_len = 0", NULL);

    p = write_valid_attn("no_layer.h5");
    delete_object(p, "/layers/1", 0);
    expect_rejected(p, KV_ETRACE_FORMAT, "missing group /layers/1", NULL);

    p = write_valid_attn("no_attn.h5");
    delete_object(p, "/layers/1/attn", 0);
    expect_rejected(p, KV_ETRACE_FORMAT, "missing dataset /layers/1/attn", NULL);

    p = write_valid_attn("gqa.h5");
    set_int_attr(p, "n_heads", 3);
    expect_rejected(p, KV_ETRACE_FORMAT, "n_heads = 3 is not a multiple of n_kv_heads = 2",
                    NULL);

    p = write_valid_attn("no_source.h5");
    delete_object(p, "source", 1);
    expect_rejected(p, KV_ETRACE_FORMAT, "missing root attribute source", NULL);

    p = write_valid_attn("version.h5");
    set_int_attr(p, "kvtrace_version", 2);
    expect_rejected(p, KV_ETRACE_FORMAT, "kvtrace_version = 2", NULL);

    /* a stored NaN scale is an error, not the "absent" default of 1/sqrt(head_dim) */
    p = write_valid_attn("nan_scale.h5");
    set_real_attr(p, "softmax_scale", NAN);
    expect_rejected(p, KV_ETRACE_FORMAT, "softmax_scale = nan", NULL);

    p = write_valid_attn("huge.h5");
    set_int_attr(p, "n_tokens", 1LL << 40);
    expect_rejected(p, KV_ETRACE_FORMAT, "n_tokens", "out of range");

    p = write_valid_attn("qk_missing_k.h5");
    set_int_attr(p, "n_layers", 2);   /* still valid as attn; now claim qk without q/k */
    {
        hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
        H5Adelete(f, "source");
        hid_t t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, 2);
        H5Tset_strpad(t, H5T_STR_NULLPAD);
        hid_t s = H5Screate(H5S_SCALAR);
        hid_t a = H5Acreate2(f, "source", t, s, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, t, "qk");   /* fixed-length, no terminator: still read as "qk" */
        H5Aclose(a);
        H5Sclose(s);
        H5Tclose(t);
        H5Fclose(f);
    }
    expect_rejected(p, KV_ETRACE_FORMAT, "missing dataset /layers/0/q", "source = qk");

    p = kv_test_path("random.h5");
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    for (int i = 0; i < 4096; i++)
        fputc((i * 131 + 7) & 0xff, f);
    fclose(f);
    expect_rejected(p, KV_ETRACE_IO, "not an HDF5 file", NULL);
    expect_rejected(kv_test_path("does_not_exist.h5"), KV_ETRACE_IO, "No such file", NULL);
}

static void test_writer_rejects(void **state)
{
    (void)state;
    char err[512];
    kv_trace_writer *w = (kv_trace_writer *)&err;
    kv_trace_info in = tiny_info(KV_SOURCE_QK, 1, 6, 4, 8, 10, 3);
    assert_int_equal(kv_trace_create(kv_test_path("w.h5"), &in, 0, &w, err, sizeof err),
                     KV_ETRACE_ARG);
    assert_null(w);
    assert_non_null(strstr(err, "n_heads = 6 is not a multiple of n_kv_heads = 4"));
    in = tiny_info(KV_SOURCE_QK, 1, 4, 4, 8, 10, 11);
    assert_int_equal(kv_trace_create(kv_test_path("w.h5"), &in, 0, &w, err, sizeof err),
                     KV_ETRACE_ARG);
    assert_non_null(strstr(err, "prefill_len = 11"));
    in = tiny_info(KV_SOURCE_QK, 1, 4, 4, 8, 10, 10);
    assert_int_equal(kv_trace_create("/nonexistent-dir/x.h5", &in, 0, &w, err, sizeof err),
                     KV_ETRACE_IO);
    assert_int_equal(kv_trace_create(kv_test_path("w.h5"), &in, 0, &w, err, sizeof err), 0);
    float x[4 * 10 * 8] = {0};
    assert_int_equal(kv_trace_write_attn_rows(w, 0, 0, 0, 1, x, err, sizeof err),
                     KV_ETRACE_ARG);   /* source is qk */
    assert_int_equal(kv_trace_write_qk(w, 1, x, x, NULL, err, sizeof err), KV_ETRACE_ARG);
    assert_int_equal(kv_trace_write_qk(w, 0, x, x, NULL, err, sizeof err), 0);
    assert_int_equal(kv_trace_write_qk(w, 0, x, x, NULL, err, sizeof err), KV_ETRACE_ARG);
    assert_non_null(strstr(err, "/layers/0/q is already written"));
    assert_int_equal(kv_trace_finish(w, err, sizeof err), 0);
}

/* ------------------------------------------------------------ kvsim info */

static void test_cmd_info(void **state)
{
    (void)state;
    const char *good = write_valid_attn("info_good.h5");
    const char *bad = write_valid_attn("info_bad.h5");
    set_int_attr(bad, "prefill_len", 99);
    char *ok_args[] = {"info", (char *)good, NULL};
    char *ok_verbose[] = {"info", "--verbose", (char *)good, NULL};
    char *bad_args[] = {"info", (char *)bad, NULL};
    char *none[] = {"info", NULL};
    char *two[] = {"info", (char *)good, (char *)bad, NULL};
    char *unknown[] = {"info", "--frobnicate", (char *)good, NULL};
    char *help[] = {"info", "--help", NULL};
    assert_int_equal(kv_test_call_quiet(kv_cmd_info, 2, ok_args), 0);
    assert_int_equal(kv_test_call_quiet(kv_cmd_info, 3, ok_verbose), 0);
    kv_trace_set_verbose(0);
    assert_int_equal(kv_test_call_quiet(kv_cmd_info, 2, bad_args), 1);
    assert_int_equal(kv_test_call_quiet(kv_cmd_info, 1, none), 2);
    assert_int_equal(kv_test_call_quiet(kv_cmd_info, 3, two), 2);
    assert_int_equal(kv_test_call_quiet(kv_cmd_info, 3, unknown), 2);
    assert_int_equal(kv_test_call_quiet(kv_cmd_info, 2, help), 0);
}

/* ------------------------------------------------------------ main */

static int setup(void **state)
{
    (void)state;
    if (kv_test_dir_make("kvsim_trace_io") != 0)
        return -1;
    g_have_h5py = kv_test_run_quiet("/usr/bin/python3 -c 'import h5py, numpy'") == 0;
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qk_roundtrip_f32),
        cmocka_unit_test(test_qk_roundtrip_f16),
        cmocka_unit_test(test_f16_special_values),
        cmocka_unit_test(test_attn_blocks_f32),
        cmocka_unit_test(test_attn_blocks_f16),
        cmocka_unit_test(test_h5py_fixture),
        cmocka_unit_test(test_h5py_fresh),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_writer_rejects),
        cmocka_unit_test(test_cmd_info),
    };
    return cmocka_run_group_tests(tests, setup, kv_test_dir_teardown);
}
