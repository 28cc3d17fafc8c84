/*
 * fuzz_targets.h - what the fuzzers feed one input to, shared by the libFuzzer harnesses
 * (tests/fuzz_trace.c, tests/fuzz_config.c) and the regression test that replays every
 * saved input (tests/test_fuzz_regress.c). Header-only (static functions).
 *
 * Each target writes the bytes to a temporary file (the reader and the parser take
 * paths), runs the code under test and releases everything; a return of 0 means
 * "handled" (accepted or rejected with a message), and anything else is a bug the
 * sanitizers or the harness assertions catch.
 */
#ifndef KV_FUZZ_TARGETS_H
#define KV_FUZZ_TARGETS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sim/config.h"
#include "sim/engine.h"
#include "traces/trace.h"
#include "traces/validate.h"

/* Reads are capped so a file that claims a huge (but self-consistent) geometry is opened
 * and checked without allocating gigabytes. */
#define KV_FUZZ_READ_MAX_BYTES ((size_t)16 << 20)

/* A per-process temporary path with the given suffix (tmpfs when there is one). */
__attribute__((unused)) static const char *kv_fuzz_path(const char *suffix)
{
    static char path[128];
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(path, sizeof path, "%s/kvsim-fuzz-%ld%s", dir, (long)getpid(), suffix);
    return path;
}

__attribute__((unused)) static int kv_fuzz_write(const char *path, const uint8_t *data,
                                                 size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t put = size ? fwrite(data, 1, size, f) : 0;
    return fclose(f) == 0 && put == size ? 0 : -1;
}

/* A message must be one line that names the file. */
static void kv_fuzz_check_message(const char *path, const char *err)
{
    if (strncmp(err, path, strlen(path)) != 0 || strchr(err, '\n')) {
        fprintf(stderr, "bad message for %s: '%s'\n", path, err);
        abort();
    }
}

/* Opens the bytes as a trace; when it opens, scans q/k/v and reads a few rows with
 * checks on. */
__attribute__((unused)) static int kv_fuzz_trace_input(const uint8_t *data, size_t size)
{
    const char *path = kv_fuzz_path(".h5");
    if (kv_fuzz_write(path, data, size) != 0)
        return 0;
    char err[1024] = "";
    kv_trace *tr = NULL;
    if (kv_trace_open(path, &tr, err, sizeof err) != 0) {
        kv_fuzz_check_message(path, err);
        unlink(path);
        return 0;
    }
    const kv_trace_info *in = kv_trace_get_info(tr);
    size_t T = (size_t)in->n_tokens;
    size_t qk_bytes = ((size_t)in->n_heads + (size_t)in->n_kv_heads) * T * in->head_dim * 4;
    size_t rows = T < 4 ? T : 4;
    size_t attn_bytes = (size_t)in->n_heads * rows * T * 4;
    int rc = 0;
    kv_trace_set_read_checks(tr, 1);
    if (qk_bytes <= KV_FUZZ_READ_MAX_BYTES)
        rc = kv_trace_check_values(tr, KV_CHECK_QKV, 0, err, sizeof err);
    if (!rc && in->source == KV_SOURCE_ATTN && attn_bytes <= KV_FUZZ_READ_MAX_BYTES) {
        float *buf = malloc(attn_bytes);
        for (int l = 0; buf && l < in->n_layers && l < 2 && !rc; l++)
            rc = kv_trace_read_attn(tr, l, 0, in->n_heads, 0, (int)rows, buf, err, sizeof err);
        free(buf);
    }
    if (!rc && in->has_tokens && T * 4 <= KV_FUZZ_READ_MAX_BYTES) {
        int32_t *tok = malloc(T * sizeof *tok);
        if (tok)
            rc = kv_trace_read_tokens(tr, tok, err, sizeof err);
        free(tok);
    }
    if (rc)
        kv_fuzz_check_message(path, err);
    kv_trace_close(tr);
    unlink(path);
    return 0;
}

/* Parses the bytes as an experiment file, then validates every (policy, budget) pair. */
__attribute__((unused)) static int kv_fuzz_config_input(const uint8_t *data, size_t size)
{
    const char *path = kv_fuzz_path(".ini");
    if (kv_fuzz_write(path, data, size) != 0)
        return 0;
    static kv_experiment ex;   /* large for the stack */
    kv_experiment_init(&ex);
    char err[1024] = "";
    if (kv_config_load(path, &ex, err, sizeof err) == 0) {
        /* token budgets as given; prompt and byte budgets need a trace, so they are
         * validated at the smallest token budget instead */
        int tokens[64];
        int n = ex.n_budgets < 64 ? ex.n_budgets : 64;
        for (int b = 0; b < n; b++)
            tokens[b] = ex.budgets[b].kind == KV_BUDGET_TOKENS &&
                                ex.budgets[b].value <= 1e9
                            ? (int)ex.budgets[b].value : 1;
        kv_replay_conf conf = { .policies = ex.policies, .n_policies = ex.n_policies,
                                .budgets = tokens, .n_budgets = n };
        kv_replay_validate(&conf, err, sizeof err);
    } else if (strchr(err, '\n') || !err[0]) {
        fprintf(stderr, "bad message for %s: '%s'\n", path, err);
        abort();
    }
    kv_experiment_free(&ex);
    unlink(path);
    return 0;
}

#endif
