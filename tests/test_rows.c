/*
 * test_rows.c - the row source (sim/rows.c) against independent references: recomputed
 * rows against a softmax computed here in double precision, including tails down to the
 * float denormals; the top keys of a row against a full sort with ties; the row-slab
 * hyperslab reads against the whole-dataset reads; and a block of rows from kv_row_producer
 * against the reference on a generated trace.
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
#include <unistd.h>

#include "sim/rows.h"
#include "traces/gen.h"
#include "traces/trace.h"

/* A small deterministic generator (LCG), so the test needs no RNG of the code's own. */
static unsigned long long lcg_state = 12345;
static double uniform(void)
{
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(lcg_state >> 11) / 9007199254740992.0;
}

/* p_t[j] for j <= t in double: logits in double from the float inputs, max subtracted. */
static void reference_row(const float *q, const float *k, int hd, double scale, int t,
                          double *p)
{
    double max = -INFINITY, sum = 0;
    for (int j = 0; j <= t; j++) {
        double s = 0;
        for (int d = 0; d < hd; d++)
            s += (double)q[d] * k[(size_t)j * hd + d];
        p[j] = scale * s;
        max = p[j] > max ? p[j] : max;
    }
    for (int j = 0; j <= t; j++)
        sum += p[j] = exp(p[j] - max);
    for (int j = 0; j <= t; j++)
        p[j] /= sum;
}

/* The k best of row[0..t] by a full sort: value descending, then position descending. */
static const float *sort_row;
static int by_value_then_recent(const void *a, const void *b)
{
    int i = *(const int *)a, j = *(const int *)b;
    if (sort_row[i] != sort_row[j])
        return sort_row[i] > sort_row[j] ? -1 : 1;
    return j - i;
}

static void check_topk(const float *row, int t, int k, const int *top)
{
    int *idx = malloc((size_t)(t + 1) * sizeof *idx);
    for (int j = 0; j <= t; j++)
        idx[j] = j;
    sort_row = row;
    qsort(idx, (size_t)t + 1, sizeof *idx, by_value_then_recent);
    int n = k < t + 1 ? k : t + 1;
    for (int i = 0; i < n; i++)
        if (top[i] != idx[i])
            fail_msg("t=%d k=%d: rank %d is key %d (%.9g), the sort says %d (%.9g)", t, k, i,
                     top[i], row[top[i]], idx[i], row[idx[i]]);
    free(idx);
}

/* A GQA group's block of rows: every value within 2e-5 relative of the double reference,
 * the block's upper triangle zero, columns from t1 on untouched, and the top keys. */
static void test_rows_match_double_reference(void **state)
{
    (void)state;
    enum { HD = 24, NQ = 3, T0 = 37, T1 = 50, NB = T1 - T0, LD = 64, K = 8 };
    double scale = 1 / sqrt((double)HD);
    float k[T1 * HD], q[NQ * NB * HD], out[NQ * NB * LD];
    for (int i = 0; i < T1 * HD; i++)
        k[i] = (float)(4 * uniform() - 2);
    for (int i = 0; i < NQ * NB * HD; i++)
        q[i] = (float)(4 * uniform() - 2);
    for (int i = 0; i < NQ * NB * LD; i++)
        out[i] = -7.0f;                      /* sentinel: must survive from t1 on */
    int top[NQ * NB * K];
    kv_attn_rows_from_qk(q, NQ, k, HD, scale, T0, T1, out, LD, top, K, T0 + 2);
    double ref[T1];
    for (int i = 0; i < NQ; i++)
        for (int t = T0; t < T1; t++) {
            int row = i * NB + (t - T0);
            const float *o = out + row * LD;
            reference_row(q + row * HD, k, HD, scale, t, ref);
            for (int j = 0; j <= t; j++)
                if (fabs(o[j] - ref[j]) > 2e-5 * ref[j] + 1e-30)
                    fail_msg("head %d row %d key %d: %.9g, reference %.9g", i, t, j, o[j],
                             ref[j]);
            for (int j = t + 1; j < T1; j++)
                assert_true(o[j] == 0.0f);
            for (int j = T1; j < LD; j++)
                assert_true(o[j] == -7.0f);
            if (t >= T0 + 2)
                check_topk(o, t, K, top + row * K);
        }
}

/*
 * Logits chosen directly (head_dim 1, q = 1, scale 1: logit_j = k_j exactly) to reach
 * the exponential's tails: a row with logits 0, -x for x across the float range down to
 * the denormals and past the point where e^-x rounds to 0 in float.
 */
static void test_softmax_tails(void **state)
{
    (void)state;
    const float xs[] = { 0.0f, -1e-7f, -0.5f, -0.6931472f, -1.0f, -10.5f, -20.0f,
                         -30.3f, -87.0f, -87.5f, -88.8f, -95.0f, -100.0f, -103.0f,
                         -103.9f, -104.5f, -110.0f, -1000.0f, -3.0e4f };
    enum { N = sizeof xs / sizeof xs[0] };
    float k[N], q[1] = { 1.0f }, out[N];
    for (int j = 0; j < N; j++)
        k[j] = xs[j];
    int top[N];
    kv_attn_rows_from_qk(q, 1, k, 1, 1.0, N - 1, N, out, N, top, N, 0);
    double sum = 0;
    for (int j = 0; j < N; j++)
        sum += exp((double)xs[j]);
    for (int j = 0; j < N; j++) {
        double want = exp((double)xs[j]) / sum;
        /* 2 float ulps relative, or 1.5 of the least denormal (2^-149) in absolute */
        double tol = fmax(2.5e-7 * want, 1.5 * 0x1p-149);
        if (fabs(out[j] - want) > tol)
            fail_msg("logit %g: p %.9g, reference %.9g", xs[j], out[j], want);
    }
    assert_true(out[N - 1] == 0.0f && out[N - 2] == 0.0f);   /* e^-1000, e^-30000: 0 */
    assert_true(out[9] > 0.0f && out[9] < 0x1p-126f);        /* e^-87.5 / ~3.5: denormal */
    check_topk(out, N - 1, N, top);   /* all keys ranked, ties of the zeros included */
}

/* The top keys found inside the softmax (span maxima prune the spans that cannot hold
 * one) against a full sort, on long rows whose logits come from a set of 5 (ties
 * everywhere, many spans sharing the maximum) and on rows rising to the newest key
 * (every span a candidate until the last). head_dim 1, q = 1, scale 1: logit_j = k_j. */
static void test_softmax_topk_spans_against_sort(void **state)
{
    (void)state;
    enum { T = 1100, NB = 40, T0 = T - NB };
    const int ks[] = { 1, 8, 17 };
    float *k = malloc(T * sizeof *k), *out = malloc((size_t)NB * T * sizeof *out);
    float q[NB];
    int *top = malloc((size_t)NB * 17 * sizeof *top);
    for (int i = 0; i < NB; i++)
        q[i] = 1.0f;
    for (int rep = 0; rep < 3; rep++)
        for (size_t b = 0; b < sizeof ks / sizeof ks[0]; b++) {
            for (int j = 0; j < T; j++)
                k[j] = rep == 0 ? (float)(int)(5 * uniform()) * 0.5f
                     : rep == 1 ? (float)j * 1e-3f : (float)(4 * uniform() - 2);
            kv_attn_rows_from_qk(q, 1, k, 1, 1.0, T0, T, out, T, top, ks[b], T0);
            for (int t = T0; t < T; t++)
                check_topk(out + (size_t)(t - T0) * T, t, ks[b], top + (t - T0) * ks[b]);
        }
    free(k);
    free(out);
    free(top);
}

/* Rows whose values come from a set of 5, so ties are everywhere; spans of 64 keys and
 * the first keys (fewer than a span) both exercised. */
static void test_topk_ties_against_sort(void **state)
{
    (void)state;
    const int ts[] = { 0, 1, 6, 7, 8, 62, 63, 64, 65, 127, 128, 200, 1000 };
    const int ks[] = { 1, 3, 8, 17 };
    float *row = malloc(1001 * sizeof *row);
    int top[17];
    for (size_t a = 0; a < sizeof ts / sizeof ts[0]; a++)
        for (size_t b = 0; b < sizeof ks / sizeof ks[0]; b++)
            for (int rep = 0; rep < 4; rep++) {
                int t = ts[a];
                for (int j = 0; j <= t; j++)   /* rep 3: increasing, worst for a scan */
                    row[j] = rep == 3 ? (float)j : (float)(int)(5 * uniform()) * 0.25f;
                kv_row_topk(row, t, ks[b], top);
                check_topk(row, t, ks[b], top);
            }
    free(row);
}

static int setup(void **state)
{
    (void)state;
    assert_int_equal(kv_test_dir_make("kvsim-test-rows"), 0);
    return 0;
}

static void gen_trace(const char *path, int f16, int with_attn)
{
    kv_gen_params gp;
    kv_gen_defaults(&gp);
    gp.n_layers = 2;
    gp.n_heads = 6;
    gp.n_kv_heads = 2;
    gp.head_dim = 16;
    gp.n_tokens = 150;
    gp.prefill_len = 40;
    char err[512];
    if (kv_gen_write(path, &gp, f16, with_attn, err, sizeof err))
        fail_msg("%s", err);
}

/* kv_trace_read_rows, slab by slab (uneven slabs, float32 and float16 files), gives
 * exactly what kv_trace_read_qk gives; bad ranges are refused. */
static void test_read_rows_equals_read_qk(void **state)
{
    (void)state;
    for (int f16 = 0; f16 <= 1; f16++) {
        char path[300];
        snprintf(path, sizeof path, "%s/slabs%d.h5", kv_test_dir, f16);
        gen_trace(path, f16, 0);
        char err[512];
        kv_trace *tr;
        assert_int_equal(kv_trace_open(path, &tr, err, sizeof err), 0);
        size_t per = 150 * 16;
        float *q = malloc(6 * per * sizeof *q), *k = malloc(2 * per * sizeof *k);
        float *q2 = malloc(6 * per * sizeof *q2), *k2 = malloc(2 * per * sizeof *k2);
        const int cuts[] = { 0, 1, 57, 64, 149, 150 };
        for (int l = 0; l < 2; l++) {
            assert_int_equal(kv_trace_read_qk(tr, l, q, k, err, sizeof err), 0);
            memset(q2, 0xff, 6 * per * sizeof *q2);   /* NaN: a row not read shows */
            memset(k2, 0xff, 2 * per * sizeof *k2);
            for (int c = 0; c + 1 < (int)(sizeof cuts / sizeof cuts[0]); c++) {
                assert_int_equal(kv_trace_read_rows(tr, l, KV_TENSOR_Q, cuts[c], cuts[c + 1],
                                                    q2, err, sizeof err), 0);
                assert_int_equal(kv_trace_read_rows(tr, l, KV_TENSOR_K, cuts[c], cuts[c + 1],
                                                    k2, err, sizeof err), 0);
            }
            assert_memory_equal(q, q2, 6 * per * sizeof *q);
            assert_memory_equal(k, k2, 2 * per * sizeof *k);
        }
        assert_int_equal(kv_trace_read_rows(tr, 0, KV_TENSOR_K, 10, 10, k2, err, sizeof err),
                         KV_ETRACE_ARG);
        assert_int_equal(kv_trace_read_rows(tr, 0, KV_TENSOR_K, 100, 151, k2, err,
                                            sizeof err), KV_ETRACE_ARG);
        assert_int_equal(kv_trace_read_rows(tr, 2, KV_TENSOR_Q, 0, 1, q2, err, sizeof err),
                         KV_ETRACE_ARG);
        free(q);
        free(k);
        free(q2);
        free(k2);
        kv_trace_close(tr);
    }
}

/* Blocks from kv_row_producer (qk: loaded piece by piece, GQA groups as tasks) against the
 * double reference from the trace's own q and k; attn blocks equal the stored rows. */
static void test_row_source_blocks(void **state)
{
    (void)state;
    char qk[300], attn[300], err[512];
    snprintf(qk, sizeof qk, "%s/src_qk.h5", kv_test_dir);
    snprintf(attn, sizeof attn, "%s/src_attn.h5", kv_test_dir);
    gen_trace(qk, 0, 0);
    gen_trace(attn, 0, 1);
    kv_trace *tq, *ta;
    assert_int_equal(kv_trace_open(qk, &tq, err, sizeof err), 0);
    assert_int_equal(kv_trace_open(attn, &ta, err, sizeof err), 0);
    const int T = 150, HD = 16, block = 32;
    size_t per = (size_t)T * HD;
    float *q = malloc(6 * per * sizeof *q), *k = malloc(2 * per * sizeof *k);
    float *stored = malloc(6 * (size_t)block * T * sizeof *stored);
    double *ref = malloc(T * sizeof *ref);
    kv_row_producer *rq = kv_producer_open(tq, 1, block, err, sizeof err);
    kv_row_producer *ra = kv_producer_open(ta, 1, block, err, sizeof err);
    assert_non_null(rq);
    assert_non_null(ra);
    assert_int_equal(kv_producer_n_tasks(rq), 2);
    assert_int_equal(kv_producer_n_load_pieces(rq), 1);   /* 150 rows: one piece of 256 */
    assert_int_equal(kv_producer_pieces_for(rq, 150), 1);
    assert_int_equal(kv_producer_row_stride(ra), T);
    assert_true(kv_producer_row_stride(rq) >= (size_t)T);
    assert_int_equal(kv_trace_read_qk(tq, 1, q, k, err, sizeof err), 0);
    for (int t0 = 0; t0 < T; t0 += block) {
        int nb, nb_a;
        const float *b = kv_producer_block(rq, t0, &nb, err, sizeof err);
        assert_non_null(b);
        assert_int_equal(nb, t0 + block <= T ? block : T - t0);
        for (int h = 0; h < 6; h++)
            for (int t = t0; t < t0 + nb; t++) {
                const float *o = b + ((size_t)h * nb + (t - t0)) * kv_producer_row_stride(rq);
                reference_row(q + h * per + (size_t)t * HD, k + (h / 3) * per, HD,
                              1 / sqrt((double)HD), t, ref);
                for (int j = 0; j <= t; j++)
                    if (fabs(o[j] - ref[j]) > 2e-5 * ref[j] + 1e-30)
                        fail_msg("head %d row %d key %d: %.9g, reference %.9g", h, t, j,
                                 o[j], ref[j]);
            }
        const float *a = kv_producer_block(ra, t0, &nb_a, err, sizeof err);
        assert_non_null(a);
        assert_int_equal(nb_a, nb);
        assert_int_equal(kv_trace_read_attn(ta, 1, 0, 6, t0, t0 + nb, stored, err,
                                            sizeof err), 0);
        assert_memory_equal(a, stored, 6 * (size_t)nb * T * sizeof *a);
    }
    kv_producer_close(rq);
    kv_producer_close(ra);
    free(q);
    free(k);
    free(stored);
    free(ref);
    kv_trace_close(tq);
    kv_trace_close(ta);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows_match_double_reference),
        cmocka_unit_test(test_softmax_tails),
        cmocka_unit_test(test_topk_ties_against_sort),
        cmocka_unit_test(test_softmax_topk_spans_against_sort),
        cmocka_unit_test(test_read_rows_equals_read_qk),
        cmocka_unit_test(test_row_source_blocks),
    };
    return cmocka_run_group_tests(tests, setup, kv_test_dir_teardown);
}
