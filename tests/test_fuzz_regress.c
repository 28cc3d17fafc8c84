/*
 * test_fuzz_regress.c - replays every saved fuzzer input through the fuzz targets
 * (tests/fuzz_targets.h): the seed corpora tests/fuzz/trace/ and tests/fuzz/config/, and
 * each input that once crashed, tests/fuzz/regress/trace/ and tests/fuzz/regress/config/
 * (`make fuzz` tells where to put a new one). A regression crashes this program, or under
 * `make test-asan` makes the sanitizers report it.
 *
 * The seeds are also checked for what they are: the valid traces open and pass every
 * value check, the example configs load.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tests/fuzz_targets.h"

typedef int (*fuzz_target)(const uint8_t *data, size_t size);

/* Feeds every regular file of dir to target; returns how many. */
static int replay_dir(const char *dir, fuzz_target target)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        static uint8_t buf[1 << 20];
        size_t size = fread(buf, 1, sizeof buf, f);
        fclose(f);
        print_message("%s (%zu bytes)\n", path, size);
        assert_int_equal(target(buf, size), 0);
        n++;
    }
    closedir(d);
    return n;
}

static void test_trace_inputs(void **state)
{
    (void)state;
    assert_true(replay_dir("tests/fuzz/trace", kv_fuzz_trace_input) >= 2);
    replay_dir("tests/fuzz/regress/trace", kv_fuzz_trace_input);
}

static void test_config_inputs(void **state)
{
    (void)state;
    assert_true(replay_dir("tests/fuzz/config", kv_fuzz_config_input) >= 2);
    replay_dir("tests/fuzz/regress/config", kv_fuzz_config_input);
}

/* The trace seeds are valid traces (so the fuzzer starts from the interesting part). */
static void test_trace_seeds_valid(void **state)
{
    (void)state;
    const char *seeds[] = {"tests/fuzz/trace/attn_f16.h5", "tests/fuzz/trace/qk_f32.h5"};
    for (int i = 0; i < 2; i++) {
        char err[512];
        kv_trace *tr = NULL;
        if (kv_trace_open(seeds[i], &tr, err, sizeof err))
            fail_msg("%s", err);
        if (kv_trace_check_values(tr, KV_CHECK_ALL, 0, err, sizeof err))
            fail_msg("%s", err);
        kv_trace_close(tr);
    }
}

int main(void)
{
    kv_trace_set_verbose(0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trace_seeds_valid),
        cmocka_unit_test(test_trace_inputs),
        cmocka_unit_test(test_config_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
