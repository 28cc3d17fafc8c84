/*
 * test_closedloop.c - the closed loop (sim/closedloop.h) and the open-loop output error,
 * on a tiny checkpoint the test writes itself (2 layers, 4 query heads over 2 KV heads of
 * size 4, vocabulary 32) and a trace `kvsim capture`'s library records from it.
 *
 *   - the batched forward pass (kv_model_batch, one column per run) gives kv_model_step's
 *     logits bit for bit in every column, and the closed loop's nll_full is -log softmax
 *     of those logits at the next token: the full cache's logits are capture's;
 *   - every policy at B = T-1 has kl exactly 0, nll equal to nll_full, ppl to ppl_full;
 *   - the window run's dumped A_t are {t-B, ..., t} (the rule worked by hand), and every
 *     run's step kl and nll and its kl_mean, ppl and top1_agree agree with an independent
 *     numpy float64 forward pass over the dumped sets (tests/ref_closedloop.py);
 *   - out_err of window and full agrees with numpy on the trace's q, k and v
 *     (tests/ref_out_err.py);
 *   - a trace from another checkpoint, or from none, is one line naming both, exit 2.
 */
#define _DEFAULT_SOURCE   /* wait4 in kv_cli.h */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/kv_cli.h"
#include "tests/kv_test.h"
#include "traces/capture.h"
#include "traces/model.h"
#include "traces/trace.h"

enum { DIM = 16, HIDDEN = 24, LAYERS = 2, HEADS = 4, KV_HEADS = 2, VOCAB = 32, SEQ = 64 };
enum { HS = DIM / HEADS, KVD = KV_HEADS * HS, T = 40, P = 12 };

static uint64_t rng_state;

/* Uniform in [-1, 1) from a 64-bit LCG (Knuth's constants): the test's own weights. */
static float uniform(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void put(FILE *f, int n, float scale, float offset)
{
    for (int i = 0; i < n; i++) {
        float x = offset + scale * uniform();
        assert_int_equal(fwrite(&x, sizeof x, 1, f), 1);
    }
}

/* A llama2.c-layout checkpoint (models README) with weights drawn from seed: large enough
 * query and key weights that attention is peaked, so evictions change the output. */
static void write_checkpoint(const char *path, uint64_t seed)
{
    rng_state = seed;
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    int32_t header[7] = { DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ };
    assert_int_equal(fwrite(header, sizeof header, 1, f), 1);
    put(f, VOCAB * DIM, 1.0f, 0.0f);               /* embedding = classifier */
    put(f, LAYERS * DIM, 0.1f, 1.0f);              /* attention RMSNorm gains */
    put(f, LAYERS * DIM * DIM, 0.35f, 0.0f);       /* wq */
    put(f, LAYERS * KVD * DIM, 0.35f, 0.0f);       /* wk */
    put(f, LAYERS * KVD * DIM, 0.5f, 0.0f);        /* wv */
    put(f, LAYERS * DIM * DIM, 0.6f, 0.0f);        /* wo */
    put(f, LAYERS * DIM, 0.1f, 1.0f);              /* FFN RMSNorm gains */
    put(f, LAYERS * HIDDEN * DIM, 0.3f, 0.0f);     /* w1 */
    put(f, LAYERS * DIM * HIDDEN, 0.3f, 0.0f);     /* w2 */
    put(f, LAYERS * HIDDEN * DIM, 0.3f, 0.0f);     /* w3 */
    put(f, DIM, 0.1f, 1.0f);                       /* final gain */
    put(f, 2 * (SEQ * HS / 2), 0.0f, 0.0f);        /* the unused RoPE tables */
    assert_int_equal(fclose(f), 0);
}

static int setup(void **state)
{
    (void)state;
    if (kv_test_dir_make("kvsim-closedloop"))
        return -1;
    write_checkpoint(kv_test_path("tiny.bin"), 7);
    write_checkpoint(kv_test_path("other.bin"), 8);
    kv_capture_opts o;
    kv_capture_defaults(&o);
    o.model_path = kv_test_path("tiny.bin");
    o.out_path = kv_test_path("tiny.h5");
    o.n_tokens = T;
    o.prefill_len = P;
    o.seed = 3;
    char err[KV_CAPTURE_ERR_LEN];
    kv_capture_result res;
    if (kv_capture(&o, &res, err, sizeof err)) {
        fprintf(stderr, "capture: %s\n", err);
        return -1;
    }
    return 0;
}

static void read_tokens(int32_t *tok)
{
    kv_trace *tr = NULL;
    char err[512];
    assert_int_equal(kv_trace_open(kv_test_path("tiny.h5"), &tr, err, sizeof err), 0);
    assert_int_equal(kv_trace_read_tokens(tr, tok, err, sizeof err), 0);
    kv_trace_close(tr);
}

/* Runs kvsim with args; asserts exit status want. */
static void run_kvsim(const char *const *args, int want)
{
    kv_cli_result r;
    int rc = kv_cli_run(args, NULL, &r);
    if (rc != want)
        fail_msg("kvsim exited %d, expected %d: %s", rc, want, r.err);
}

/* The value of column `col` in the rows of TSV file path whose column key_col equals key
 * and whose `step` column equals step; NULL when there is none. Static buffer. */
static const char *tsv_cell(const char *path, const char *key_col, const char *key,
                            int step, const char *col)
{
    static char line[8192], out[64];
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char head[8192];
    assert_non_null(fgets(head, sizeof head, f));
    int i_key = -1, i_step = -1, i_col = -1, i = 0;
    for (char *save = NULL, *c = strtok_r(head, "\t\n", &save); c;
         c = strtok_r(NULL, "\t\n", &save), i++) {
        i_key = strcmp(c, key_col) == 0 ? i : i_key;
        i_step = strcmp(c, "step") == 0 ? i : i_step;
        i_col = strcmp(c, col) == 0 ? i : i_col;
    }
    assert_true(i_key >= 0 && i_col >= 0);
    const char *found = NULL;
    while (!found && fgets(line, sizeof line, f)) {
        char *cells[64];
        int n = 0;
        for (char *save = NULL, *c = strtok_r(line, "\t\n", &save); c && n < 64;
             c = strtok_r(NULL, "\t\n", &save))
            cells[n++] = c;
        if (strcmp(cells[i_key], key) == 0 && (step < 0 || atoi(cells[i_step]) == step)) {
            snprintf(out, sizeof out, "%s", cells[i_col]);
            found = out;
        }
    }
    fclose(f);
    return found;
}

/* The batch's columns give kv_model_step's logits bit for bit (capture's route), and the
 * closed loop's nll_full is -log softmax of those logits at the next token. */
static void test_full_logits_equal_capture(void **state)
{
    (void)state;
    int32_t tok[T];
    read_tokens(tok);
    char err[512];
    kv_model *m = NULL;
    kv_model_run *run = NULL;
    kv_model_batch *b = NULL;
    assert_int_equal(kv_model_load(kv_test_path("tiny.bin"), &m, err, sizeof err), 0);
    assert_int_equal(kv_model_run_create(m, T, &run, err, sizeof err), 0);
    enum { N = 3 };
    assert_int_equal(kv_model_batch_create(m, N, &b, err, sizeof err), 0);
    static float keys[N][LAYERS][KV_HEADS][T * HS], vals[N][LAYERS][KV_HEADS][T * HS];
    static float step_logits[T][VOCAB];
    float row[T];
    for (int t = 0; t < T; t++) {
        assert_int_equal(kv_model_step(run, tok[t], t, err, sizeof err), 0);
        memcpy(step_logits[t], kv_model_logits(run), sizeof step_logits[t]);
        kv_model_batch_embed(b, tok[t], t);
        for (int l = 0; l < LAYERS; l++) {
            kv_model_batch_qkv(b, l);
            for (int s = 0; s < N; s++) {
                for (int g = 0; g < KV_HEADS; g++) {
                    memcpy(&keys[s][l][g][t * HS], kv_model_batch_k(b, s) + g * HS,
                           HS * sizeof(float));
                    memcpy(&vals[s][l][g][t * HS], kv_model_batch_v(b, s) + g * HS,
                           HS * sizeof(float));
                }
                for (int h = 0; h < HEADS; h++) {
                    int g = h / (HEADS / KV_HEADS);
                    kv_model_attend(kv_model_batch_q(b, s) + h * HS, keys[s][l][g],
                                    vals[s][l][g], HS, NULL, t + 1, row,
                                    kv_model_batch_heads(b, s) + h * HS);
                }
            }
            kv_model_batch_mix(b, l);
        }
        const float *logits = kv_model_batch_logits(b);
        for (int s = 0; s < N; s++)
            assert_memory_equal(logits + s * VOCAB, step_logits[t], sizeof step_logits[t]);
    }
    const char *args[] = { "run", "--trace", kv_test_path("tiny.h5"), "--policies", "window",
                           "--budgets", "6", "--model", kv_test_path("tiny.bin"), "-o",
                           kv_test_path("logits"), "--force", "--no-plot", "-q", NULL };
    run_kvsim(args, 0);
    for (int t = P; t <= T - 2; t++) {
        long double mx = step_logits[t][0], z = 0;
        for (int v = 1; v < VOCAB; v++)
            mx = step_logits[t][v] > mx ? step_logits[t][v] : mx;
        for (int v = 0; v < VOCAB; v++)
            z += expl(step_logits[t][v] - mx);
        double want = (double)-(step_logits[t][tok[t + 1]] - mx - logl(z));
        const char *got = tsv_cell(kv_test_path("logits/steps.tsv"), "policy", "window", t,
                                   "nll_full");
        assert_non_null(got);
        /* steps.tsv prints 9 significant digits */
        assert_true(fabs(atof(got) - want) <= 1e-8 * (1 + fabs(want)));
    }
    kv_model_batch_free(b);
    kv_model_run_free(run);
    kv_model_free(m);
}

/* Nothing is evicted at B = T-1: every policy computes what the full cache computes. */
static void test_kl_zero_without_eviction(void **state)
{
    (void)state;
    static const char *const policies[] = { "full", "window", "streamingllm", "h2o",
                                            "snapkv", "morphkv", "tova", "random", "oracle",
                                            "lookahead" };
    const char *args[] = { "run", "--trace", kv_test_path("tiny.h5"), "--policies",
                           "full,window,streamingllm,h2o,snapkv,morphkv,tova,random,oracle,"
                           "lookahead", "--set", "snapkv.window=4", "--set", "morphkv.window=4",
                           "--budgets", "39", "--model", kv_test_path("tiny.bin"), "-o",
                           kv_test_path("nokl"), "--force", "--no-plot", "-q", NULL };
    run_kvsim(args, 0);
    const char *steps = kv_test_path("nokl/steps.tsv");
    const char *summary = kv_test_path("nokl/summary.tsv");
    for (size_t p = 0; p < sizeof policies / sizeof policies[0]; p++) {
        for (int t = P; t <= T - 2; t++) {
            assert_string_equal(tsv_cell(steps, "policy", policies[p], t, "kl"), "0");
            assert_string_equal(tsv_cell(steps, "policy", policies[p], t, "top1"), "1");
            char nll[64];
            snprintf(nll, sizeof nll, "%s", tsv_cell(steps, "policy", policies[p], t, "nll"));
            assert_string_equal(nll, tsv_cell(steps, "policy", policies[p], t, "nll_full"));
        }
        assert_string_equal(tsv_cell(steps, "policy", policies[p], T - 1, "kl"), "NA");
        char ppl[64];
        snprintf(ppl, sizeof ppl, "%s", tsv_cell(summary, "policy", policies[p], -1, "ppl"));
        assert_string_equal(ppl, tsv_cell(summary, "policy", policies[p], -1, "ppl_full"));
        assert_string_equal(tsv_cell(summary, "policy", policies[p], -1, "kl_mean"), "0");
    }
}

/* Window's A_t as worked by hand, and every run against the float64 reference. */
static void test_matches_float64_reference(void **state)
{
    (void)state;
    const char *args[] = { "run", "--trace", kv_test_path("tiny.h5"), "--policies",
                           "window,h2o,tova,oracle,lookahead", "--budgets", "5,9", "--model",
                           kv_test_path("tiny.bin"), "--dump-sets", kv_test_dir, "-o",
                           kv_test_path("ref"), "--force", "--no-plot", "-q", NULL };
    run_kvsim(args, 0);
    /* the sets file: header lines, then [t][run][layer][head][ceil(T/8)] bitmaps */
    FILE *f = fopen(kv_test_path("tiny.h5.sets"), "rb");
    assert_non_null(f);
    char line[256];
    int hT, hP, hR, hL, hH;
    assert_non_null(fgets(line, sizeof line, f));
    assert_string_equal(line, "KVSETS1\n");
    assert_non_null(fgets(line, sizeof line, f));
    assert_int_equal(sscanf(line, "%d %d %d %d %d", &hT, &hP, &hR, &hL, &hH), 5);
    assert_true(hT == T && hP == P && hR == 10 && hL == LAYERS && hH == HEADS);
    for (int r = 0; r < hR; r++)
        assert_non_null(fgets(line, sizeof line, f));
    enum { NB = (T + 7) / 8 };
    static unsigned char bits[T - P][10][LAYERS][HEADS][NB];
    assert_int_equal(fread(bits, sizeof bits, 1, f), 1);
    fclose(f);
    static const int budgets[2] = { 5, 9 };   /* runs 0 and 1: window at 5 and 9 */
    for (int r = 0; r < 2; r++)
        for (int t = P; t < T; t++)
            for (int l = 0; l < LAYERS; l++)
                for (int h = 0; h < HEADS; h++)
                    for (int j = 0; j < T; j++) {
                        int in = (bits[t - P][r][l][h][j / 8] >> (j % 8)) & 1;
                        assert_int_equal(in, j <= t && j >= t - budgets[r]);
                    }
    /* evictions changed the output, so the comparison below is not of zeros */
    double kl = atof(tsv_cell(kv_test_path("ref/summary.tsv"), "policy", "window", -1,
                              "kl_mean"));
    if (!(kl > 1e-3))
        fail_msg("window kl_mean %g: the tiny model barely reacts to evictions", kl);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/ref_closedloop.py %s %s %s %s",
             kv_test_path("tiny.bin"), kv_test_path("tiny.h5"), kv_test_path("tiny.h5.sets"),
             kv_test_path("ref"));
    assert_int_equal(system(cmd), 0);
}

/* out_err of the open loop against numpy on the trace's q, k and v. */
static void test_out_err_against_numpy(void **state)
{
    (void)state;
    const char *args[] = { "run", "--trace", kv_test_path("tiny.h5"), "--policies",
                           "full,window", "--budgets", "4,10", "-o", kv_test_path("oe"),
                           "--force", "--no-plot", "-q", NULL };
    run_kvsim(args, 0);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/ref_out_err.py %s %s",
             kv_test_path("tiny.h5"), kv_test_path("oe"));
    assert_int_equal(system(cmd), 0);
    /* no model: the closed-loop columns say NA */
    assert_string_equal(tsv_cell(kv_test_path("oe/summary.tsv"), "policy", "window", -1,
                                 "kl_mean"), "NA");
}

/* A trace from another checkpoint, or from none: one line naming both, exit 2. */
static void test_pairing_checked(void **state)
{
    (void)state;
    char err[512];
    kv_model *a = NULL, *b = NULL;
    assert_int_equal(kv_model_load(kv_test_path("tiny.bin"), &a, err, sizeof err), 0);
    assert_int_equal(kv_model_load(kv_test_path("other.bin"), &b, err, sizeof err), 0);
    const char *args[] = { "run", "--trace", kv_test_path("tiny.h5"), "--policies", "window",
                           "--budgets", "6", "--model", kv_test_path("other.bin"), "-o",
                           kv_test_path("bad"), "--force", "--no-plot", "-q", NULL };
    kv_cli_result r;
    assert_int_equal(kv_cli_run(args, NULL, &r), 2);
    assert_int_equal(kv_cli_lines(r.err), 1);
    assert_non_null(strstr(r.err, kv_model_sha256(a)));
    assert_non_null(strstr(r.err, kv_model_sha256(b)));
    assert_non_null(strstr(r.err, kv_test_path("tiny.h5")));
    assert_non_null(strstr(r.err, kv_test_path("other.bin")));
    kv_test_gen_small(kv_test_path("gen.h5"), 1, 0, 0);
    const char *gen[] = { "run", "--trace", kv_test_path("gen.h5"), "--policies", "window",
                          "--budgets", "6", "--model", kv_test_path("tiny.bin"), "-o",
                          kv_test_path("bad2"), "--force", "--no-plot", "-q", NULL };
    assert_int_equal(kv_cli_run(gen, NULL, &r), 2);
    assert_int_equal(kv_cli_lines(r.err), 1);
    assert_non_null(strstr(r.err, "checkpoint_sha256"));
    kv_model_free(a);
    kv_model_free(b);
}

/* The console table's closed-loop block shows each run's kl_mean and ppl as
 * summary.tsv holds them (one trace: the mean is the run's own value). */
static void test_console_table(void **state)
{
    (void)state;
    char cmd[2048], summary[1024];
    snprintf(cmd, sizeof cmd, "./kvsim run --trace %s --policies full,window --budgets 6 "
             "--model %s -o %s --force --no-plot 2>/dev/null", kv_test_path("tiny.h5"),
             kv_test_path("tiny.bin"), kv_test_path("table"));
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[1024], block[4096] = "";
    int in_block = 0;
    while (fgets(line, sizeof line, p)) {
        in_block |= strncmp(line, "closed loop:", 12) == 0;
        if (in_block && strlen(block) + strlen(line) < sizeof block)
            strcat(block, line);
    }
    assert_int_equal(pclose(p), 0);
    snprintf(summary, sizeof summary, "%s", kv_test_path("table/summary.tsv"));
    char kl[64], ppl[64], ppl_full[64], want[256];
    snprintf(kl, sizeof kl, "%s", tsv_cell(summary, "policy", "window", -1, "kl_mean"));
    snprintf(ppl, sizeof ppl, "%s", tsv_cell(summary, "policy", "window", -1, "ppl"));
    snprintf(ppl_full, sizeof ppl_full, "%s", tsv_cell(summary, "policy", "window", -1,
                                                       "ppl_full"));
    /* labels padded to the widest (at least 8) plus 2, then two spaces */
    snprintf(want, sizeof want, "\n%-10s  %.4f / %.4g\n", "window", strtod(kl, NULL),
             strtod(ppl, NULL));
    if (!strstr(block, want))
        fail_msg("expected '%s' in the table's closed-loop block:\n%s", want, block);
    snprintf(want, sizeof want, "full-cache perplexity %.4g\n", strtod(ppl_full, NULL));
    assert_non_null(strstr(block, want));
    assert_true(strtod(kl, NULL) > 0.0);   /* B = 6 < T - 1 evicts: a non-trivial value */
}

/* A listed checkpoint that does not exist: the traces of the others still run closed-loop,
 * a trace of the missing one runs open-loop only with a note; none existing is an error. */
static void test_missing_checkpoint(void **state)
{
    (void)state;
    char both[2048];
    snprintf(both, sizeof both, "%s,%s", kv_test_path("tiny.bin"), kv_test_path("absent.bin"));
    kv_test_gen_small(kv_test_path("gen_open.h5"), 1, 0, 0);   /* no checkpoint_sha256 */
    char traces[2048];
    snprintf(traces, sizeof traces, "%s,%s", kv_test_path("tiny.h5"), kv_test_path("gen_open.h5"));
    const char *args[] = { "run", "--trace", traces, "--policies", "window", "--budgets", "6",
                           "--model", both, "-o", kv_test_path("partial"), "--force",
                           "--no-plot", "-q", NULL };
    kv_cli_result r;
    assert_int_equal(kv_cli_run(args, NULL, &r), 0);
    assert_int_equal(kv_cli_lines(r.err), 1);
    assert_non_null(strstr(r.err, "gen_open.h5 runs open-loop only"));
    assert_non_null(strstr(r.err, "absent.bin"));
    const char *summary = kv_test_path("partial/summary.tsv");
    assert_string_equal(tsv_cell(summary, "trace", "gen_open.h5", -1, "kl_mean"), "NA");
    assert_string_not_equal(tsv_cell(summary, "trace", "tiny.h5", -1, "kl_mean"), "NA");
    const char *none[] = { "run", "--trace", kv_test_path("tiny.h5"), "--policies", "window",
                           "--budgets", "6", "--model", kv_test_path("absent.bin"), "-o",
                           kv_test_path("none"), "--force", "--no-plot", "-q", NULL };
    assert_int_equal(kv_cli_run(none, NULL, &r), 1);
    assert_int_equal(kv_cli_lines(r.err), 1);
    assert_non_null(strstr(r.err, "absent.bin not found"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_logits_equal_capture),
        cmocka_unit_test(test_kl_zero_without_eviction),
        cmocka_unit_test(test_matches_float64_reference),
        cmocka_unit_test(test_out_err_against_numpy),
        cmocka_unit_test(test_pairing_checked),
        cmocka_unit_test(test_console_table),
        cmocka_unit_test(test_missing_checkpoint),
    };
    return cmocka_run_group_tests(tests, setup, kv_test_dir_teardown);
}
