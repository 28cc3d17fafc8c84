/*
 * kv_test.h - helpers shared by the test programs: policies configured from "k=v,k=v"
 * strings, a per-program temporary directory, shell commands or in-process subcommands
 * run with their output discarded, and the path of the real checkpoint. Include after
 * <cmocka.h>.
 */
#ifndef KV_TEST_H
#define KV_TEST_H

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sim/engine.h"
#include "traces/gen.h"
#include "traces/model.h"

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

/* pc = policy `type` labelled `label` with "k=v,..." params (NULL or "" for none), the
 * engine-level ones (kv_granularity, alloc, chunk, ...) included, each set as sim/config.c
 * sets it (kv_policy_conf_set); a bad one fails the test with the parser's message. */
__attribute__((unused)) static void kv_test_policy(kv_policy_conf *pc, const char *label,
                                                   const char *type, const char *params)
{
    memset(pc, 0, sizeof *pc);
    snprintf(pc->label, sizeof pc->label, "%s", label);
    pc->ops = kv_policy_find(type);
    assert_non_null(pc->ops);
    kv_params_defaults(pc->ops, &pc->values);
    char buf[256];
    snprintf(buf, sizeof buf, "%s", params ? params : "");
    for (char *save = NULL, *kv = strtok_r(buf, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        assert_non_null(eq);
        *eq = '\0';
        char err[KV_ERRMSG] = "";
        if (kv_policy_conf_set(pc, kv, eq + 1, err, sizeof err) != 0)
            fail_msg("%s", err);
    }
}

/* A small generated trace for the engine tests: 2 layers, 4 query heads over 2 KV heads,
 * head_dim 16, T = 96, P = 40, the generator's defaults otherwise (period: its recall
 * period, 0 for off); attn rows too when with_attn. A failure fails the test. */
__attribute__((unused)) static void kv_test_gen_small(const char *path, int seed,
                                                      int with_attn, int period)
{
    kv_gen_params gp;
    kv_gen_defaults(&gp);
    gp.seed = (unsigned long)seed;
    gp.n_layers = 2;
    gp.n_heads = 4;
    gp.n_kv_heads = 2;
    gp.head_dim = 16;
    gp.n_tokens = 96;
    gp.prefill_len = 40;
    gp.period = period;
    char err[512];
    if (kv_gen_write(path, &gp, 0, with_attn, err, sizeof err))
        fail_msg("%s", err);
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

/* kv_test_dir_remove as a cmocka group teardown: 0, or -1 when the removal failed. */
__attribute__((unused)) static int kv_test_dir_teardown(void **state)
{
    (void)state;
    return kv_test_dir_remove() == 0 ? 0 : -1;
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

/* Writes text to path (created or truncated); fails the test when it cannot. */
__attribute__((unused)) static void kv_test_write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

/* Runs cmd through the shell with stdout and stderr sent to /dev/null; returns
 * system()'s status. */
__attribute__((unused)) static int kv_test_run_quiet(const char *cmd)
{
    char *buf = malloc(strlen(cmd) + 32);
    assert_non_null(buf);
    sprintf(buf, "%s >/dev/null 2>&1", cmd);
    int rc = system(buf);
    free(buf);
    return rc;
}

/* Runs fn(argc, argv) (a `kvsim` subcommand, in process) with stdout and stderr sent to
 * /dev/null; returns its status. */
__attribute__((unused)) static int kv_test_call_quiet(int (*fn)(int, char **), int argc,
                                                      char **argv)
{
    fflush(stdout);
    fflush(stderr);
    int so = dup(1), se = dup(2), nul = open("/dev/null", O_WRONLY);
    dup2(nul, 1);
    dup2(nul, 2);
    int rc = fn(argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so);
    close(se);
    close(nul);
    return rc;
}

/* sha256 of that checkpoint (shared/models/README.md). */
#define KV_TEST_MODEL_SHA256 "9414d5a285453a7eab631713d171753232c978f6f97654211469aff8be93c8d6"

/* The path of file `name` (e.g. "tokenizer.bin") where `make models` puts it: the
 * directory $KVSIM_MODELS, else models/ in the repository root (tests run from there),
 * else ../shared/models beside the clone. A missing file fails the test. Static buffer. */
__attribute__((unused)) static const char *kv_test_models_file(const char *name)
{
    static char path[1024];
    const char *dir = getenv("KVSIM_MODELS");
    const char *dirs[] = {dir && *dir ? dir : "models", "../shared/models"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", dirs[i], name);
        if (access(path, R_OK) == 0)
            return path;
    }
    fail_msg("%s not found in %s or ../shared/models: run `make models` (or set "
             "KVSIM_MODELS to the directory that holds it)",
             name, dirs[0]);
    return NULL;
}

/* The stories260K checkpoint: $KVSIM_MODEL, else kv_test_models_file's places. */
__attribute__((unused)) static const char *kv_test_model_path(void)
{
    const char *p = getenv("KVSIM_MODEL");
    if (p && *p) {
        if (access(p, R_OK) != 0)
            fail_msg("checkpoint %s (KVSIM_MODEL) not found", p);
        return p;
    }
    return kv_test_models_file("stories260K.bin");
}

/* Loads the stories260K checkpoint (kv_test_model_path); a failure fails the test. The
 * caller frees it with kv_model_free. */
__attribute__((unused)) static kv_model *kv_test_model_load(void)
{
    kv_model *m = NULL;
    char err[512] = "";
    if (kv_model_load(kv_test_model_path(), &m, err, sizeof err))
        fail_msg("%s", err);
    return m;
}

#endif
