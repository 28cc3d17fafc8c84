/*
 * test_policy_params.c - parameter parsing, its error messages, formatting, and the
 * registry's lookups. Expected texts are the ones policy.h promises.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "policies/policy.h"
#include "sim/engine.h"

/* kv_params_set must fail with exactly `expect` and leave values unchanged. */
static void expect_error(const char *policy, const char *name, const char *text,
                         const char *expect)
{
    const kv_policy_ops *ops = kv_policy_find(policy);
    assert_non_null(ops);
    kv_param_values v, before;
    kv_params_defaults(ops, &v);
    before = v;
    char err[KV_ERRMSG] = "";
    assert_int_equal(kv_params_set(ops, &v, name, text, err, sizeof err), 1);
    assert_string_equal(err, expect);
    assert_memory_equal(&v, &before, sizeof v);
}

static void test_unknown_names(void **state)
{
    (void)state;
    expect_error("morphkv", "windw", "8",
                 "unknown parameter 'windw' for morphkv (did you mean 'window'?)");
    expect_error("snapkv", "kernal", "5",
                 "unknown parameter 'kernal' for snapkv (did you mean 'kernel'?)");
    expect_error("h2o", "recnet", "0.3",
                 "unknown parameter 'recnet' for h2o (did you mean 'recent'?)");
    /* Nothing close: list the names instead of a far-fetched guess. */
    expect_error("h2o", "zzzzzzzz", "1",
                 "unknown parameter 'zzzzzzzz' for h2o (parameters: recent, gqa, normalize)");
    expect_error("window", "size", "8",
                 "unknown parameter 'size' for window (window has no parameters)");
}

static void test_int_values(void **state)
{
    (void)state;
    expect_error("morphkv", "window", "0", "window must be an integer in [1, 1000000], got '0'");
    expect_error("morphkv", "window", "1000001",
                 "window must be an integer in [1, 1000000], got '1000001'");
    expect_error("morphkv", "window", "8.5", "window must be an integer in [1, 1000000], got '8.5'");
    expect_error("morphkv", "window", "8x", "window must be an integer in [1, 1000000], got '8x'");
    expect_error("morphkv", "window", "", "window must be an integer in [1, 1000000], got ''");
    expect_error("morphkv", "window", " 8", "window must be an integer in [1, 1000000], got ' 8'");
    expect_error("streamingllm", "sinks", "-1", "sinks must be an integer in [0, 1000000], got '-1'");
    const kv_policy_ops *ops = kv_policy_find("morphkv");
    kv_param_values v;
    kv_params_defaults(ops, &v);
    char err[KV_ERRMSG];
    assert_int_equal(kv_params_set(ops, &v, "window", "8", err, sizeof err), 0);
    assert_true(v.v[kv_params_index(ops, "window")] == 8.0);
    assert_int_equal(kv_params_set(ops, &v, "window", "1000000", err, sizeof err), 0);
    assert_true(v.v[kv_params_index(ops, "window")] == 1e6);
}

static void test_real_values(void **state)
{
    (void)state;
    expect_error("h2o", "recent", "1.5", "recent must be a number in [0, 1], got '1.5'");
    expect_error("h2o", "recent", "-0.1", "recent must be a number in [0, 1], got '-0.1'");
    expect_error("h2o", "recent", "nan", "recent must be a number in [0, 1], got 'nan'");
    expect_error("h2o", "recent", "0.5.", "recent must be a number in [0, 1], got '0.5.'");
    const kv_policy_ops *ops = kv_policy_find("h2o");
    kv_param_values v;
    kv_params_defaults(ops, &v);
    assert_true(v.v[0] == 0.5);
    char err[KV_ERRMSG];
    assert_int_equal(kv_params_set(ops, &v, "recent", "0.25", err, sizeof err), 0);
    assert_true(v.v[0] == 0.25);
    assert_int_equal(kv_params_set(ops, &v, "recent", "1", err, sizeof err), 0);
    assert_true(v.v[0] == 1.0);
    assert_int_equal(kv_params_set(ops, &v, "recent", "2.5e-1", err, sizeof err), 0);
    assert_true(v.v[0] == 0.25);
}

static void test_choice_values(void **state)
{
    (void)state;
    expect_error("morphkv", "fusion", "avg", "fusion must be one of sum|max, got 'avg'");
    expect_error("snapkv", "pooling", "Max", "pooling must be one of max|avg, got 'Max'");
    expect_error("h2o", "gqa", "", "gqa must be one of sum|max, got ''");
    expect_error("h2o", "gqa", "su", "gqa must be one of sum|max, got 'su'");
    const kv_policy_ops *ops = kv_policy_find("snapkv");
    kv_param_values v;
    kv_params_defaults(ops, &v);
    int pooling = kv_params_index(ops, "pooling");
    assert_true(v.v[pooling] == 0.0); /* "max", the first word */
    char err[KV_ERRMSG];
    assert_int_equal(kv_params_set(ops, &v, "pooling", "avg", err, sizeof err), 0);
    assert_true(v.v[pooling] == 1.0);
}

static void test_defaults_and_format(void **state)
{
    (void)state;
    const kv_policy_ops *ops = kv_policy_find("snapkv");
    kv_param_values v;
    kv_params_defaults(ops, &v);
    /* window 32, kernel 7, pooling max (0), gqa sum (0), decode none (0), interval 1 */
    assert_true(v.v[0] == 32 && v.v[1] == 7 && v.v[2] == 0 && v.v[3] == 0 && v.v[4] == 0 &&
                v.v[5] == 1);
    char buf[128];
    kv_params_format(ops, &v, 0, buf, sizeof buf);
    assert_string_equal(buf, "window=32,kernel=7,pooling=max,gqa=sum,decode=none,interval=1");
    kv_params_format(ops, &v, 1, buf, sizeof buf);
    assert_string_equal(buf, "");
    char err[KV_ERRMSG];
    assert_int_equal(kv_params_set(ops, &v, "pooling", "avg", err, sizeof err), 0);
    assert_int_equal(kv_params_set(ops, &v, "window", "8", err, sizeof err), 0);
    kv_params_format(ops, &v, 1, buf, sizeof buf);
    assert_string_equal(buf, "window=8,pooling=avg");
    /* A short buffer is truncated, still terminated. */
    kv_params_format(ops, &v, 0, buf, 10);
    assert_string_equal(buf, "window=8,");

    const kv_policy_ops *h2o = kv_policy_find("h2o");
    kv_params_defaults(h2o, &v);
    assert_int_equal(kv_params_set(h2o, &v, "recent", "0.3", err, sizeof err), 0);
    kv_params_format(h2o, &v, 1, buf, sizeof buf);
    assert_string_equal(buf, "recent=0.3");
    kv_params_format(kv_policy_find("window"), &v, 0, buf, sizeof buf);
    assert_string_equal(buf, "");
}

/* An INT parameter with a word (lookahead horizon = all): the word is stored as 0 and
 * printed back as the word; numbers keep their range; the message names both forms. */
static void test_int_with_word(void **state)
{
    (void)state;
    const kv_policy_ops *ops = kv_policy_find("lookahead");
    kv_param_values v;
    kv_params_defaults(ops, &v);
    assert_true(v.v[0] == 0.0); /* default "all" */
    char err[KV_ERRMSG] = "", buf[128];
    assert_int_equal(kv_params_set(ops, &v, "horizon", "16", err, sizeof err), 0);
    assert_true(v.v[0] == 16.0);
    kv_params_format(ops, &v, 0, buf, sizeof buf);
    assert_string_equal(buf, "horizon=16");
    assert_int_equal(kv_params_set(ops, &v, "horizon", "all", err, sizeof err), 0);
    kv_params_format(ops, &v, 0, buf, sizeof buf);
    assert_string_equal(buf, "horizon=all");
    kv_params_format(ops, &v, 1, buf, sizeof buf);
    assert_string_equal(buf, ""); /* all is the default */
    expect_error("lookahead", "horizon", "0",
                 "horizon must be all or an integer in [1, 1000000], got '0'");
    expect_error("lookahead", "horizon", "ALL",
                 "horizon must be all or an integer in [1, 1000000], got 'ALL'");
    expect_error("morphkv", "evict_every", "all",
                 "evict_every must be an integer in [1, 1000000], got 'all'");
}

static void test_registry_lookup(void **state)
{
    (void)state;
    static const char *const names[] = { "full", "window", "streamingllm", "h2o", "snapkv",
                                         "morphkv", "tova", "random", "oracle", "lookahead",
                                         "knorm", "keydiff", "cur", NULL };
    for (int i = 0; names[i] != NULL; i++) {
        assert_non_null(kv_policy_registry[i]);
        assert_string_equal(kv_policy_registry[i]->name, names[i]);
        assert_ptr_equal(kv_policy_find(names[i]), kv_policy_registry[i]);
    }
    assert_null(kv_policy_registry[13]);
    assert_null(kv_policy_find("H2O"));
    assert_null(kv_policy_find("lru"));
    assert_string_equal(kv_policy_suggest("morpkv"), "morphkv");
    assert_string_equal(kv_policy_suggest("stremingllm"), "streamingllm");
    assert_string_equal(kv_policy_suggest("snap"), "snapkv");
    assert_string_equal(kv_policy_suggest("h20"), "h2o");
    assert_string_equal(kv_policy_suggest("tovaa"), "tova");
    assert_string_equal(kv_policy_suggest("orcale"), "oracle");
    assert_int_equal(kv_edit_distance("kitten", "sitting"), 3);
    assert_int_equal(kv_edit_distance("", "abc"), 3);
    assert_int_equal(kv_edit_distance("window", "window"), 0);
}

/* kv_granularity comes from the engine's table, the rest from the policy's own. */
static void test_engine_level_params(void **state)
{
    (void)state;
    kv_policy_conf pc = { .ops = kv_policy_find("h2o"), .granularity = KV_GRAN_KV_HEAD };
    kv_params_defaults(pc.ops, &pc.values);
    char err[KV_ERRMSG] = "";
    assert_int_equal(kv_policy_conf_set(&pc, "kv_granularity", "query_head", err, sizeof err),
                     0);
    assert_int_equal(pc.granularity, KV_GRAN_QUERY_HEAD);
    assert_int_equal(kv_policy_conf_set(&pc, "kv_granularity", "kv_head", err, sizeof err), 0);
    assert_int_equal(pc.granularity, KV_GRAN_KV_HEAD);
    assert_int_equal(kv_policy_conf_set(&pc, "kv_granularity", "layer", err, sizeof err),
                     KV_EUSAGE);
    assert_non_null(strstr(err, "kv_head|query_head"));
    assert_int_equal(pc.granularity, KV_GRAN_KV_HEAD);
    assert_int_equal(kv_policy_conf_set(&pc, "recent", "0.25", err, sizeof err), 0);
    assert_true(pc.values.v[kv_params_index(pc.ops, "recent")] == 0.25);
    assert_int_equal(kv_policy_conf_set(&pc, "kv_granularty", "kv_head", err, sizeof err),
                     KV_EUSAGE);
    /* every engine-level default parses */
    for (int i = 0; i < kv_n_engine_params; i++) {
        double v;
        assert_int_equal(kv_param_parse(&kv_engine_params[i], kv_engine_params[i].default_text,
                                        &v, err, sizeof err), 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unknown_names),
        cmocka_unit_test(test_int_values),
        cmocka_unit_test(test_real_values),
        cmocka_unit_test(test_choice_values),
        cmocka_unit_test(test_defaults_and_format),
        cmocka_unit_test(test_int_with_word),
        cmocka_unit_test(test_registry_lookup),
        cmocka_unit_test(test_engine_level_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
