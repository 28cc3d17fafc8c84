/*
 * test_budget.c - budget specs: parsing, resolution to tokens against counts worked out by
 * hand from the geometry and each policy's metadata formula, and, by an independent
 * route, against the peaks the replay engine itself measures.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sim/budget.h"
#include "sim/engine.h"
#include "sim/output.h"
#include "tests/kv_test.h"
#include "traces/gen.h"

static void parse_ok(const char *text, kv_budget_kind kind, double value, const char *kept)
{
    kv_budget_spec s;
    char err[256];
    if (kv_budget_parse(text, &s, err, sizeof err))
        fail_msg("'%s': %s", text, err);
    assert_int_equal(s.kind, kind);
    assert_true(s.value == value);
    assert_string_equal(s.text, kept);
}

static void test_parse(void **state)
{
    (void)state;
    parse_ok("64", KV_BUDGET_TOKENS, 64, "64");
    parse_ok(" 0.25p ", KV_BUDGET_PROMPT, 0.25, "0.25p");
    parse_ok("64KiB", KV_BUDGET_BYTES, 65536, "64KiB");
    parse_ok("1.5MiB", KV_BUDGET_BYTES, 1572864, "1.5MiB");
    parse_ok("4096B", KV_BUDGET_BYTES, 4096, "4096B");
    parse_ok("2GiB", KV_BUDGET_BYTES, 2147483648.0, "2GiB");
    const char *bad[] = { "0", "-1", "1.5", "64kb", "64 KiB", "abc", "p", "", "0p", "0.1B",
                          "123456789012345678901234567890123" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kv_budget_spec s;
        char err[256] = "";
        assert_int_equal(kv_budget_parse(bad[i], &s, err, sizeof err), 2);
        assert_true(strlen(err) > 0);
    }
}

/* The geometry of `make run`'s trace: 2 layers, 8 query heads on 4 KV heads (groups of
 * 2), head_dim 32, 2-byte elements, T = 512, P = 128. One cached token costs
 * 2 (K, V) * 32 * 2 = 128 bytes per cache, 1024 bytes over the 8 caches. */
static kv_trace_info geometry(void)
{
    kv_trace_info in = { .version = 1, .n_layers = 2, .n_heads = 8, .n_kv_heads = 4,
                         .head_dim = 32, .n_tokens = 512, .prefill_len = 128,
                         .source = KV_SOURCE_QK, .dtype_bytes = 2 };
    return in;
}

/* Policy `type`, labelled by its type, with "k=v,..." settings (NULL: the defaults). */
static kv_policy_conf policy(const char *type, const char *settings)
{
    kv_policy_conf pc;
    kv_test_policy(&pc, type, type, settings);
    return pc;
}

/* Resolves text for pc; returns the status, *tokens the budget. */
static int resolve(const char *text, const kv_policy_conf *pc, int *tokens, char *err,
                   size_t err_len)
{
    kv_budget_spec s;
    kv_trace_info in = geometry();
    assert_int_equal(kv_budget_parse(text, &s, err, err_len), 0);
    *tokens = -1;
    return kv_budget_resolve(&s, pc, &in, tokens, err, err_len);
}

static void expect_tokens(const char *text, const kv_policy_conf *pc, int expect)
{
    int tokens;
    char err[512];
    if (resolve(text, pc, &tokens, err, sizeof err))
        fail_msg("%s for %s: %s", text, pc->label, err);
    assert_int_equal(tokens, expect);
}

static void expect_error(const char *text, const kv_policy_conf *pc, const char *needle)
{
    int tokens;
    char err[512] = "";
    assert_int_equal(resolve(text, pc, &tokens, err, sizeof err), 2);
    if (!strstr(err, needle))
        fail_msg("'%s' lacks '%s'", err, needle);
}

/*
 * By hand (P = 128 > B, so a bounded policy peaks at B + 1 tokens per cache):
 *   0.25p = floor(0.25 * 128) = 32; 0.3p = floor(38.4) = 38; 0.001p = 0: an error.
 *   window, 64KiB: 1024 (B + 1) <= 65536 -> B = 63.
 *   h2o (4 bytes per cached token per cache, 32 over the 8 caches): 1056 (B + 1) <= 65536
 *     -> B + 1 <= 62.06 -> B = 61.
 *   morphkv (window 32; 32 rows * 2 heads * 4 bytes = 256 bytes per cached token per
 *     cache, 2048 over 8): 3072 (B + 1) <= 65536 -> B = 20, below its minimum 33: an
 *     error; 256KiB: 3072 (B + 1) <= 262144 -> B + 1 <= 85.3 -> B = 84.
 *   snapkv (window 32): keeps min(P, B) after the prompt and grows by one per decode step
 *     (D = 384), peaking at min(128, B) + 384 tokens: 448KiB -> B + 384 <= 448 -> B = 64;
 *     511KiB -> B = 127 exactly (B >= 128 needs 512 KiB, and then nothing changes up to
 *     T - 1 = 511: 512KiB -> 511).
 *   full: always 512 tokens = 512 KiB: 512KiB -> 511 (T - 1); 511KiB: an error.
 *   window with kv_granularity = query_head: 16 caches, 2048 bytes per token -> B = 31.
 */
static void test_resolve_by_hand(void **state)
{
    (void)state;
    kv_policy_conf window = policy("window", NULL), h2o = policy("h2o", NULL),
                   morph = policy("morphkv", NULL), snap = policy("snapkv", NULL),
                   full = policy("full", NULL);
    expect_tokens("0.25p", &window, 32);
    expect_tokens("0.3p", &window, 38);
    expect_tokens("100", &window, 100);
    expect_error("0.001p", &window, "0 tokens");
    expect_error("0.25p", &morph, "must exceed");   /* 32 is not > window 32 */
    expect_tokens("64KiB", &window, 63);
    expect_tokens("65536B", &window, 63);
    expect_tokens("64KiB", &h2o, 61);
    expect_error("64KiB", &morph, "(33 tokens)");
    expect_tokens("256KiB", &morph, 84);
    expect_tokens("448KiB", &snap, 64);
    expect_tokens("511KiB", &snap, 127);
    expect_tokens("512KiB", &snap, 511);
    expect_tokens("512KiB", &full, 511);
    expect_error("511KiB", &full, "peak at 524288 bytes");
    window.granularity = KV_GRAN_QUERY_HEAD;
    expect_tokens("64KiB", &window, 31);
}

/*
 * The independent route: on a generated trace, the replay at the resolved budget B
 * measures kv_bytes_peak + meta_bytes_peak within the byte budget (summary.tsv's own
 * columns), and at B + 1 beyond it (unless B is already T - 1).
 */
static void test_resolve_matches_replay(void **state)
{
    (void)state;
    char path[] = "/tmp/kvsim-test-budget-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    kv_gen_params gp;
    kv_gen_defaults(&gp);
    gp.n_layers = 1;
    gp.n_heads = 4;
    gp.n_kv_heads = 2;
    gp.head_dim = 8;
    gp.n_tokens = 96;
    gp.prefill_len = 40;
    char err[512];
    if (kv_gen_write(path, &gp, 0, 0, err, sizeof err))
        fail_msg("%s", err);
    kv_trace *tr;
    if (kv_trace_open(path, &tr, err, sizeof err))
        fail_msg("%s", err);
    kv_policy_conf pcs[] = {
        policy("window", NULL), policy("h2o", NULL),
        policy("streamingllm", NULL), policy("morphkv", "window=8"),
        policy("snapkv", "window=8"), policy("h2o", "gqa=max"),
    };
    const char *specs[] = { "4500B", "5KiB", "6000B" };
    int n_tight = 0;   /* cases where B + 1 was checked not to fit */
    for (size_t p = 0; p < sizeof pcs / sizeof pcs[0]; p++)
        for (size_t s = 0; s < 3; s++) {
            kv_budget_spec spec;
            assert_int_equal(kv_budget_parse(specs[s], &spec, err, sizeof err), 0);
            int b;
            if (kv_budget_resolve(&spec, &pcs[p], kv_trace_get_info(tr), &b, err, sizeof err))
                fail_msg("%s", err);
            int budgets[2] = { b, b + 1 };
            kv_replay_conf conf = { .policies = &pcs[p], .n_policies = 1, .budgets = budgets,
                                    .n_budgets = 2 };
            kv_results *res;
            if (kv_replay(tr, &conf, &res, err, sizeof err))
                fail_msg("%s", err);
            double at[64], above[64];
            int kv = kv_summary_column("kv_bytes_peak");
            int meta = kv_summary_column("meta_bytes_peak");
            assert_true(kv_n_output_columns <= 64 && kv >= 0 && meta >= 0);
            assert_int_equal(kv_run_summarise(res, 0, at, err, sizeof err), 0);
            assert_int_equal(kv_run_summarise(res, 1, above, err, sizeof err), 0);
            assert_true(at[kv] + at[meta] <= spec.value);
            if (b < gp.n_tokens - 1) {
                if (!(above[kv] + above[meta] > spec.value))
                    fail_msg("%s %s: B + 1 = %d also fits", pcs[p].label, specs[s], b + 1);
                n_tight++;
            }
            kv_results_free(res);
        }
    assert_int_equal(n_tight, (int)(3 * (sizeof pcs / sizeof pcs[0])));   /* every case */
    kv_trace_close(tr);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_resolve_by_hand),
        cmocka_unit_test(test_resolve_matches_replay),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
