/*
 * test_memory.c - the replay streams: its peak memory is O(n_heads * T * head_dim +
 * caches), not O(T^2); and running out of memory is a message and exit status 1.
 *
 * The trace: 1 layer, 1 head, T = 32768 tokens, head_dim 8, source qk. Its dense
 * attention would take T * T * 4 bytes = 4 GiB (4294967296 bytes); q and k take
 * 2 * 32768 * 8 * 4 bytes = 2 MiB. A `kvsim run` child must peak (ru_maxrss) below
 * 400 MB. The replay takes ~15 s on 2 cores; KVSIM_SLOW_TESTS=0 skips it (the sanitizer
 * build, whose shadow memory would inflate the peak anyway).
 */
#define _DEFAULT_SOURCE   /* wait4 in kv_cli.h */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tests/kv_cli.h"
#include "tests/kv_test.h"
#include "traces/gen.h"

enum { BIG_T = 32768 };

static char g_trace[300];

static int slow_tests_off(void)
{
    const char *s = getenv("KVSIM_SLOW_TESTS");
    return s && strcmp(s, "0") == 0;
}

static void test_peak_memory(void **state)
{
    (void)state;
    if (slow_tests_off())
        skip();
    assert_true((double)BIG_T * BIG_T * 4 >= 4e9);   /* the dense tensor it must not hold */
    const char *out = kv_test_path("out_peak");
    const char *args[] = {"run", "--trace", g_trace, "--policies", "window,h2o", "--budgets",
                          "256", "--block", "256", "-q", "-o", out, NULL};
    kv_cli_result r;
    int rc = kv_cli_run(args, NULL, &r);
    if (rc != 0)
        fail_msg("run failed (%d): %s", rc, r.err);
    print_message("peak resident memory of the replay: %ld KB\n", r.maxrss_kb);
    assert_true(r.maxrss_kb > 0);
    assert_true(r.maxrss_kb < 400 * 1000);
}

/* A block of 4096 rows of 32768 keys needs 512 MiB for the rows and as much for the
 * logits; under a 1 GiB address-space limit the allocation fails: one line, exit 1. One
 * BLAS and one OpenMP thread: OpenBLAS's own threads retry a failed buffer allocation
 * forever (a library behaviour kvsim cannot change), and kvsim fails before its BLAS
 * call. */
static void test_out_of_memory(void **state)
{
    (void)state;
    const char *sanitized = getenv("KVSIM_SANITIZED");
    if (sanitized && strcmp(sanitized, "1") == 0)
        skip();   /* ASan reserves terabytes of address space: no RLIMIT_AS fits it */
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    setenv("OMP_NUM_THREADS", "1", 1);
    const char *out = kv_test_path("out_oom");
    const char *args[] = {"run", "--trace", g_trace, "--policies", "window", "--budgets",
                          "256", "--block", "4096", "-q", "-o", out, NULL};
    kv_cli_limits lim = { .as_bytes = (rlim_t)1 << 30 };
    kv_cli_result r;
    int rc = kv_cli_run(args, &lim, &r);
    unsetenv("OPENBLAS_NUM_THREADS");
    unsetenv("OMP_NUM_THREADS");
    if (rc != 1 || !strstr(r.err, "out of memory") || kv_cli_lines(r.err) != 1)
        fail_msg("exit %d, stderr '%s'; expected 1 and one 'out of memory' line", rc, r.err);
    char summary[200];
    snprintf(summary, sizeof summary, "%s/summary.tsv", out);
    assert_int_equal(access(summary, F_OK), -1);
}

static int setup(void **state)
{
    (void)state;
    if (kv_test_dir_make("kvsim_memory") != 0 || access(kv_cli_bin(), X_OK) != 0)
        return -1;
    snprintf(g_trace, sizeof g_trace, "%s", kv_test_path("long.h5"));
    kv_gen_params gp;
    kv_gen_defaults(&gp);
    gp.n_layers = 1;
    gp.n_heads = 1;
    gp.n_kv_heads = 1;
    gp.head_dim = 8;
    gp.n_tokens = BIG_T;
    gp.prefill_len = 64;
    gp.n_heavy_hitters = 4;
    char err[512];
    if (kv_gen_write(g_trace, &gp, 0, 0, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_peak_memory),
    };
    return cmocka_run_group_tests(tests, setup, kv_test_dir_teardown);
}
