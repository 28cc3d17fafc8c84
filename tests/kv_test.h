/*
 * kv_test.h - helpers shared by the engine and policy tests: policies configured from
 * "k=v,k=v" strings, and a per-program temporary directory. Include after <cmocka.h>.
 */
#ifndef KV_TEST_H
#define KV_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sim/engine.h"

/* values = ops's defaults, then each "name=value" of settings (NULL or "" for none);
 * a bad setting fails the test with the parser's message. */
__attribute__((unused)) static void kv_test_apply_settings(const kv_policy_ops *ops,
                                                           const char *settings,
                                                           kv_param_values *values)
{
    kv_params_defaults(ops, values);
    if (settings == NULL)
        return;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", settings);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok != NULL;
         tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        assert_non_null(eq);
        *eq = '\0';
        char err[KV_ERRMSG] = "";
        if (kv_params_set(ops, values, tok, eq + 1, err, sizeof err) != 0)
            fail_msg("%s", err);
    }
}

/* pc = policy `type` labelled `label` with "k=v,..." params; `kv_granularity=query_head`
 * sets the engine-level granularity, as sim/config.c reads it. */
__attribute__((unused)) static void kv_test_policy(kv_policy_conf *pc, const char *label,
                                                   const char *type, const char *params)
{
    memset(pc, 0, sizeof *pc);
    snprintf(pc->label, sizeof pc->label, "%s", label);
    pc->ops = kv_policy_find(type);
    assert_non_null(pc->ops);
    char own[256] = "";
    size_t used = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", params ? params : "");
    for (char *save = NULL, *kv = strtok_r(buf, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        if (strcmp(kv, "kv_granularity=query_head") == 0)
            pc->granularity = KV_GRAN_QUERY_HEAD;
        else
            used += (size_t)snprintf(own + used, sizeof own - used, "%s%s", used ? "," : "", kv);
    }
    kv_test_apply_settings(pc->ops, own, &pc->values);
}

static char kv_test_dir[256];

/* Makes /tmp/PREFIX-XXXXXX for the test program (a cmocka group setup). */
__attribute__((unused)) static int kv_test_dir_make(const char *prefix)
{
    snprintf(kv_test_dir, sizeof kv_test_dir, "/tmp/%s-XXXXXX", prefix);
    return mkdtemp(kv_test_dir) ? 0 : -1;
}

/* Removes it with everything in it (a cmocka group teardown). */
__attribute__((unused)) static int kv_test_dir_remove(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", kv_test_dir);
    return system(cmd);
}

/* kv_test_dir/name; the last four results stay valid. */
__attribute__((unused)) static char *kv_test_path(const char *name)
{
    static char buf[4][300];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", kv_test_dir, name);
    return buf[k];
}

#endif
