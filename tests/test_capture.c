/*
 * test_capture.c - `kvsim capture` (traces/capture.c) end to end on the real checkpoint.
 *
 * - Greedy capture is deterministic (two runs: identical tokens, q, k, v) and its first
 *   ids are the ones an independent numpy implementation gives (tests/ref_llama.py).
 * - Sampled capture is deterministic per seed, differs across seeds, keeps the prompt
 *   ids, and every sampled token lies in the top-p nucleus that the test recomputes from
 *   the logits (top-p -> 0 degenerates to greedy).
 * - Consistency: rows recomputed from the stored q and k equal the rows the forward pass
 *   stored with --attn (max abs difference <= 1e-5 over every layer, head and row), both
 *   for an independent double-precision recomputation here and for the replay's own
 *   kv_attn_rows_from_qk (sim/rows.h).
 * - Root attributes, read back through h5py (an independent reader).
 * - Usage errors exit 2, a missing checkpoint exits 1, T beyond the trained context is
 *   refused without --allow-extrapolation; a 64-token capture takes well under seconds.
 *
 * The checkpoint is $KVSIM_MODEL, else ../shared/models/stories260K.bin relative to the
 * repository root (tests run from there). A missing checkpoint fails the test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sim/commands.h"
#include "sim/rows.h"
#include "tests/kv_test.h"
#include "traces/capture.h"
#include "traces/model.h"
#include "traces/trace.h"

#define N_LAYERS 5
#define N_HEADS 8
#define N_KV 4
#define HS 8

/* A fresh temporary path; the file is removed so capture creates it. */
static void temp_path(char *buf, size_t len)
{
    snprintf(buf, len, "/tmp/kvsim_test_capture_XXXXXX");
    int fd = mkstemp(buf);
    assert_true(fd >= 0);
    close(fd);
    unlink(buf);
}

/* Runs `kvsim capture --model MODEL -o out <args...>` (args NULL-terminated). */
static int capture(const char *out, ...)
{
    char *argv[32];
    int argc = 0;
    argv[argc++] = "capture";
    argv[argc++] = "--model";
    argv[argc++] = (char *)kv_test_model_path();
    if (out) {
        argv[argc++] = "-o";
        argv[argc++] = (char *)out;
    }
    va_list ap;
    va_start(ap, out);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && argc < 31)
        argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    return kv_cmd_capture(argc, argv);
}

typedef struct {
    kv_trace_info info;
    int32_t *tokens;
    float *q[N_LAYERS], *k[N_LAYERS];
} trace_data;

static void load_trace(const char *path, trace_data *d)
{
    kv_trace *tr = NULL;
    char err[512] = "";
    if (kv_trace_open(path, &tr, err, sizeof err))
        fail_msg("%s", err);
    d->info = *kv_trace_get_info(tr);
    int T = d->info.n_tokens;
    d->tokens = malloc((size_t)T * sizeof(int32_t));
    assert_non_null(d->tokens);
    if (kv_trace_read_tokens(tr, d->tokens, err, sizeof err))
        fail_msg("%s", err);
    for (int l = 0; l < N_LAYERS; l++) {
        d->q[l] = malloc((size_t)N_HEADS * T * HS * sizeof(float));
        d->k[l] = malloc((size_t)N_KV * T * HS * sizeof(float));
        assert_true(d->q[l] && d->k[l]);
        if (kv_trace_read_qk(tr, l, d->q[l], d->k[l], err, sizeof err))
            fail_msg("%s", err);
    }
    kv_trace_close(tr);
}

static void free_trace(trace_data *d)
{
    free(d->tokens);
    for (int l = 0; l < N_LAYERS; l++) {
        free(d->q[l]);
        free(d->k[l]);
    }
}

static void assert_same_trace(const trace_data *a, const trace_data *b)
{
    int T = a->info.n_tokens;
    assert_int_equal(b->info.n_tokens, T);
    assert_memory_equal(a->tokens, b->tokens, (size_t)T * sizeof(int32_t));
    for (int l = 0; l < N_LAYERS; l++) {
        assert_memory_equal(a->q[l], b->q[l], (size_t)N_HEADS * T * HS * sizeof(float));
        assert_memory_equal(a->k[l], b->k[l], (size_t)N_KV * T * HS * sizeof(float));
    }
}

static void test_greedy_deterministic_and_pinned(void **state)
{
    (void)state;
    char a[64], b[64];
    temp_path(a, sizeof a);
    temp_path(b, sizeof b);
    assert_int_equal(capture(a, "--tokens", "64", "--prefill", "16", "--temperature", "0",
                             NULL), 0);
    assert_int_equal(capture(b, "--tokens", "64", "--prefill", "16", "--temperature", "0",
                             NULL), 0);
    trace_data da, db;
    load_trace(a, &da);
    load_trace(b, &db);
    const kv_trace_info *in = &da.info;
    assert_int_equal(in->n_layers, N_LAYERS);
    assert_int_equal(in->n_heads, N_HEADS);
    assert_int_equal(in->n_kv_heads, N_KV);
    assert_int_equal(in->head_dim, HS);
    assert_int_equal(in->n_tokens, 64);
    assert_int_equal(in->prefill_len, 16);
    assert_int_equal(in->source, KV_SOURCE_QK);
    assert_true(fabs(in->softmax_scale - 0.35355339059327373) < 1e-12); /* 1/sqrt(8) */
    assert_int_equal(in->dtype_bytes, 2);
    assert_true(in->has_tokens && in->has_v);
    assert_string_equal(in->model, "stories260K");
    assert_same_trace(&da, &db);
    /* tests/ref_llama.py (numpy float64): `ref_llama.py stories260K.bin 8`. */
    static const int32_t expect[9] = {1, 461, 461, 401, 401, 401, 461, 378, 455};
    assert_memory_equal(da.tokens, expect, sizeof expect);
    free_trace(&da);
    free_trace(&db);
    unlink(a);
    unlink(b);
}

/* The nucleus rule restated without sorting: id is in the top-p nucleus when the tokens
 * strictly more likely than it carry less than top_p of the mass (a tie with the last
 * member counts as a member). */
static int in_nucleus(const float *logits, int n, double temp, double top_p, int id)
{
    double probs[512], mx = -INFINITY, sum = 0.0, above = 0.0;
    for (int i = 0; i < n; i++)
        mx = fmax(mx, logits[i]);
    for (int i = 0; i < n; i++)
        sum += probs[i] = exp((logits[i] - mx) / temp);
    for (int i = 0; i < n; i++)
        above += probs[i] > probs[id] ? probs[i] / sum : 0.0;
    return above < top_p + 1e-12;
}

/* Every token after the prompt ids is in the nucleus of the model's distribution. */
static void check_sampled_in_nucleus(const trace_data *d, int n_fixed, double temp,
                                     double top_p)
{
    kv_model *m = kv_test_model_load();
    kv_model_run *r = NULL;
    char err[512] = "";
    int T = d->info.n_tokens;
    assert_int_equal(kv_model_run_create(m, T, &r, err, sizeof err), 0);
    for (int t = 0; t + 1 < T; t++) {
        assert_int_equal(kv_model_step(r, d->tokens[t], t, err, sizeof err), 0);
        if (t + 1 >= n_fixed && !in_nucleus(kv_model_logits(r), 512, temp, top_p,
                                            d->tokens[t + 1]))
            fail_msg("token %d at position %d is outside the top-p %.2f nucleus",
                     d->tokens[t + 1], t + 1, top_p);
    }
    kv_model_run_free(r);
    kv_model_free(m);
}

static void test_sampled_seeded(void **state)
{
    (void)state;
    char a[64], b[64], c[64], g[64], z[64];
    temp_path(a, sizeof a);
    temp_path(b, sizeof b);
    temp_path(c, sizeof c);
    temp_path(g, sizeof g);
    temp_path(z, sizeof z);
    const char *args = "--tokens";
    assert_int_equal(capture(a, args, "64", "--prefill", "16", "--seed", "1",
                             "--prompt-ids", "1,5,6,7", NULL), 0);
    assert_int_equal(capture(b, args, "64", "--prefill", "16", "--seed", "1",
                             "--prompt-ids", "5,6,7", NULL), 0); /* BOS implied */
    assert_int_equal(capture(c, args, "64", "--prefill", "16", "--seed", "2",
                             "--prompt-ids", "5,6,7", NULL), 0);
    assert_int_equal(capture(g, args, "64", "--prefill", "16", "--temperature", "0", NULL), 0);
    assert_int_equal(capture(z, args, "64", "--prefill", "16", "--top-p", "1e-9", NULL), 0);
    trace_data da, db, dc, dg, dz;
    load_trace(a, &da);
    load_trace(b, &db);
    load_trace(c, &dc);
    load_trace(g, &dg);
    load_trace(z, &dz);
    assert_same_trace(&da, &db);
    static const int32_t prompt[4] = {1, 5, 6, 7};
    assert_memory_equal(da.tokens, prompt, sizeof prompt);
    assert_memory_equal(dc.tokens, prompt, sizeof prompt);
    assert_memory_not_equal(da.tokens, dc.tokens, 64 * sizeof(int32_t));
    /* A nucleus of mass 1e-9 is the single most likely token: greedy. */
    assert_same_trace(&dz, &dg);
    check_sampled_in_nucleus(&da, 4, 1.0, 0.9);
    check_sampled_in_nucleus(&dc, 4, 1.0, 0.9);
    trace_data *all[] = {&da, &db, &dc, &dg, &dz};
    for (int i = 0; i < 5; i++)
        free_trace(all[i]);
    unlink(a), unlink(b), unlink(c), unlink(g), unlink(z);
}

/* Row t of one head recomputed in double: softmax over j <= t of scale * q_t . k_j. */
static void reference_row(const float *q, const float *k, int t, double scale, double *row)
{
    double mx = -INFINITY, sum = 0.0;
    for (int j = 0; j <= t; j++) {
        double s = 0.0;
        for (int d = 0; d < HS; d++)
            s += (double)q[(size_t)t * HS + d] * (double)k[(size_t)j * HS + d];
        row[j] = scale * s;
        mx = fmax(mx, row[j]);
    }
    for (int j = 0; j <= t; j++)
        sum += row[j] = exp(row[j] - mx);
    for (int j = 0; j <= t; j++)
        row[j] /= sum;
}

static void test_rows_match_forward_pass(void **state)
{
    (void)state;
    enum { T = 160 }; /* crosses the 128-row block the capture writes attn rows in */
    char a[64];
    temp_path(a, sizeof a);
    assert_int_equal(capture(a, "--tokens", "160", "--prefill", "32", "--seed", "3", "--attn",
                             NULL), 0);
    kv_trace *tr = NULL;
    char err[512] = "";
    if (kv_trace_open(a, &tr, err, sizeof err))
        fail_msg("%s", err);
    const kv_trace_info *in = kv_trace_get_info(tr);
    assert_int_equal(in->source, KV_SOURCE_ATTN);
    assert_int_equal(in->n_tokens, T);
    float *q = malloc(sizeof(float) * N_HEADS * T * HS);
    float *k = malloc(sizeof(float) * N_KV * T * HS);
    float *attn = malloc(sizeof(float) * N_HEADS * T * T);
    float *replay = malloc(sizeof(float) * T * T), *logits = malloc(sizeof(float) * T * T);
    double row[T], worst_ref = 0.0, worst_replay = 0.0;
    assert_true(q && k && attn && replay && logits);
    for (int l = 0; l < N_LAYERS; l++) {
        if (kv_trace_read_qk(tr, l, q, k, err, sizeof err) ||
            kv_trace_read_attn(tr, l, 0, N_HEADS, 0, T, attn, err, sizeof err))
            fail_msg("%s", err);
        for (int h = 0; h < N_HEADS; h++) {
            const float *qh = q + (size_t)h * T * HS;
            const float *kg = k + (size_t)(h / (N_HEADS / N_KV)) * T * HS;
            kv_attn_rows_from_qk(qh, 1, kg, HS, in->softmax_scale, 0, T, replay, T, NULL, 0, 0);
            for (int t = 0; t < T; t++) {
                reference_row(qh, kg, t, in->softmax_scale, row);
                const float *got = attn + ((size_t)h * T + t) * T;
                for (int j = 0; j <= t; j++) {
                    worst_ref = fmax(worst_ref, fabs(got[j] - row[j]));
                    worst_replay = fmax(worst_replay, fabs(got[j] - replay[t * T + j]));
                }
                for (int j = t + 1; j < T; j++)
                    assert_true(got[j] == 0.0f);
            }
        }
    }
    print_message("    largest |forward-pass row - row recomputed from q,k|: %.3g (double, "
                  "here), %.3g (kv_attn_rows_from_qk)\n", worst_ref, worst_replay);
    assert_true(worst_ref <= 1e-5);
    assert_true(worst_replay <= 1e-5);
    free(q);
    free(k);
    free(attn);
    free(replay);
    free(logits);
    kv_trace_close(tr);
    unlink(a);
}

static void test_attributes_via_h5py(void **state)
{
    (void)state;
    char a[64], cmd[512], line[512];
    temp_path(a, sizeof a);
    assert_int_equal(capture(a, "--tokens", "32", "--prefill", "8", "--seed", "7",
                             "--temperature", "0.8", "--top-p", "0.5", "--prompt-ids", "9,10",
                             NULL), 0);
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c \"import h5py,sys; f=h5py.File('%s','r'); "
             "a=f.attrs; g=lambda k: a[k].decode() if isinstance(a[k], bytes) else a[k]; "
             "print(g('checkpoint_sha256'), g('model'), g('source'), g('prompt_ids'), "
             "int(g('seed')), float(g('temperature')), float(g('top_p')), "
             "int(g('prefill_len')), int(g('n_tokens')), int(g('dtype_bytes')), "
             "list(f['tokens'][:3]), f['layers/4/v'].shape, f['layers/0/q'].dtype)\"",
             a);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    if (!fgets(line, sizeof line, p))
        fail_msg("h5py could not read the attributes (is python3-h5py installed?)");
    assert_int_equal(pclose(p), 0);
    print_message("    h5py: %s", line);
    assert_string_equal(line, KV_TEST_MODEL_SHA256 " stories260K qk 1,9,10 7 0.8 0.5 8 32 2 "
                              "[1, 9, 10] (4, 32, 8) float32\n");
    unlink(a);
}

static void test_refusals(void **state)
{
    (void)state;
    char a[64];
    temp_path(a, sizeof a);
    /* Usage errors: exit 2, nothing written. */
    assert_int_equal(capture(a, "--tokens", "513", NULL), 2); /* seq_len is 512 */
    assert_int_equal(capture(a, "--tokens", "64", "--prefill", "64", NULL), 2);
    assert_int_equal(capture(a, "--tokens", "64", "--prefill", "3", "--prompt-ids", "5,6,7",
                             NULL), 2);
    assert_int_equal(capture(a, "--tokens", "64", "--prefill", "16", "--prompt-ids", "5,512",
                             NULL), 2);
    assert_int_equal(capture(a, "--tokens", "64", "--prefill", "16", "--prompt-ids", "5,,6",
                             NULL), 2);
    assert_int_equal(capture(a, "--top-p", "0", NULL), 2);
    assert_int_equal(capture(a, "--top-p", "1.5", NULL), 2);
    assert_int_equal(capture(a, "--temperature", "-1", NULL), 2);
    assert_int_equal(capture(a, "--seed", "x", NULL), 2);
    assert_int_equal(capture(a, "--tokens", "1", NULL), 2);
    assert_int_equal(capture(NULL, NULL), 2); /* no -o */
    assert_int_equal(access(a, F_OK), -1);
    /* A missing checkpoint is a runtime failure. */
    char *argv[] = {"capture", "--model", "/nonexistent/m.bin", "-o", a, NULL};
    assert_int_equal(kv_cmd_capture(5, argv), 1);
    assert_int_equal(access(a, F_OK), -1);
    /* --help succeeds. */
    char *help[] = {"capture", "--help", NULL};
    assert_int_equal(kv_cmd_capture(2, help), 0);
    /* Past the trained context only when asked. */
    assert_int_equal(capture(a, "--tokens", "520", "--prefill", "500",
                             "--allow-extrapolation", NULL), 0);
    trace_data d;
    load_trace(a, &d);
    assert_int_equal(d.info.n_tokens, 520);
    free_trace(&d);
    unlink(a);
}

/* The library (traces/capture.h) without the command line: the status codes and
 * messages of traces/status.h, and a greedy capture equal to the command's. */
static void test_library(void **state)
{
    (void)state;
    char a[64], b[64], err[KV_CAPTURE_ERR_LEN];
    temp_path(a, sizeof a);
    temp_path(b, sizeof b);
    kv_capture_opts o;
    kv_capture_defaults(&o);
    assert_int_equal(o.n_tokens, KV_CAPTURE_DEFAULT_TOKENS);
    o.model_path = kv_test_model_path();
    o.out_path = a;
    o.n_tokens = 64;
    o.prefill_len = 64;
    assert_int_equal(kv_capture(&o, NULL, err, sizeof err), KV_EUSAGE);
    assert_string_equal(err, "--prefill 64 must be below --tokens 64 (a trace needs at least "
                             "one decode position)");
    assert_int_equal(access(a, F_OK), -1);
    o.model_path = "/nonexistent/m.bin";
    assert_int_equal(kv_capture(&o, NULL, err, sizeof err), KV_EIO);
    o.model_path = kv_test_model_path();
    o.prefill_len = 16;
    o.temperature = 0;
    assert_int_equal(kv_capture(&o, NULL, err, sizeof err), 0);
    assert_int_equal(capture(b, "--tokens", "64", "--prefill", "16", "--temperature", "0",
                             NULL), 0);
    trace_data da, db;
    load_trace(a, &da);
    load_trace(b, &db);
    assert_memory_equal(da.tokens, db.tokens, 64 * sizeof *da.tokens);
    free_trace(&da);
    free_trace(&db);
    unlink(a);
    unlink(b);
}

static void test_64_tokens_fast(void **state)
{
    (void)state;
    char a[64];
    temp_path(a, sizeof a);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(capture(a, "--tokens", "64", "--prefill", "16", NULL), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    print_message("    64-token capture: %.3f s\n", s);
    assert_true(s < 5.0);
    unlink(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_deterministic_and_pinned),
        cmocka_unit_test(test_sampled_seeded),
        cmocka_unit_test(test_rows_match_forward_pass),
        cmocka_unit_test(test_attributes_via_h5py),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_library),
        cmocka_unit_test(test_64_tokens_fast),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
