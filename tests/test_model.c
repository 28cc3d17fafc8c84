/*
 * test_model.c - the checkpoint loader and the forward pass (traces/model.c).
 *
 * Loader: the real checkpoint loads with the header values and SHA-256 that
 * ../shared/models/README.md states (sha256sum gives the same digest); truncated,
 * oversized, random-byte and inconsistent-header files are refused with a one-line
 * message naming the problem.
 * Forward pass: the first greedy ids from BOS are pinned to the values an independent
 * numpy float64 implementation (tests/ref_llama.py) produced, and the C queries, keys and
 * logits match that implementation run live.
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
#include <unistd.h>

#include "tests/kv_test.h"
#include "traces/model.h"

#define MODEL_BYTES 1056540L

/* Reads the whole checkpoint into a malloc'd buffer. */
static unsigned char *slurp(const char *path, long *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    *n = ftell(f);
    rewind(f);
    unsigned char *buf = malloc((size_t)*n + 64);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)*n, f), (size_t)*n);
    fclose(f);
    return buf;
}

/* Writes n bytes to a new temporary file; returns its path (static buffer). */
static const char *write_temp(const void *data, size_t n)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/kvsim_test_model_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
    return path;
}

/* Loads data as a checkpoint file, expects failure with every needle in the message. */
static void expect_refused(const void *data, size_t n, int code, const char *needle1,
                           const char *needle2)
{
    const char *path = write_temp(data, n);
    kv_model *m = NULL;
    char err[512] = "";
    int rc = kv_model_load(path, &m, err, sizeof err);
    unlink(path);
    print_message("    refused: %s\n", err);
    assert_int_equal(rc, code);
    assert_null(m);
    assert_non_null(strstr(err, path)); /* names the file */
    assert_null(strchr(err, '\n'));     /* one line */
    assert_non_null(strstr(err, needle1));
    if (needle2)
        assert_non_null(strstr(err, needle2));
}

static void put_le32(unsigned char *p, int32_t v)
{
    uint32_t u = (uint32_t)v;
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(u >> (8 * i));
}

static void test_loads_real_checkpoint(void **state)
{
    (void)state;
    kv_model *m = kv_test_model_load();
    const kv_model_config *c = kv_model_get_config(m);
    /* The header table of ../shared/models/README.md. */
    assert_int_equal(c->dim, 64);
    assert_int_equal(c->hidden_dim, 172);
    assert_int_equal(c->n_layers, 5);
    assert_int_equal(c->n_heads, 8);
    assert_int_equal(c->n_kv_heads, 4);
    assert_int_equal(c->vocab_size, 512);
    assert_int_equal(c->seq_len, 512);
    assert_int_equal(c->shared_classifier, 1);
    assert_int_equal(c->head_size, 8);
    assert_int_equal(c->kv_dim, 32);
    /* The README's digest, also what `sha256sum stories260K.bin` prints. */
    assert_string_equal(kv_model_sha256(m), KV_TEST_MODEL_SHA256);
    kv_model_free(m);
}

static void test_rejects_truncated_and_oversized(void **state)
{
    (void)state;
    long n;
    unsigned char *buf = slurp(kv_test_model_path(), &n);
    assert_int_equal(n, MODEL_BYTES);
    expect_refused(buf, 1000, KV_EMODEL_FORMAT, "file is 1000 bytes", "needs 1056540: truncated");
    expect_refused(buf, (size_t)n - 4, KV_EMODEL_FORMAT, "file is 1056536 bytes", "truncated");
    expect_refused(buf, (size_t)n + 4, KV_EMODEL_FORMAT, "file is 1056544 bytes", "trailing bytes");
    expect_refused(buf, 10, KV_EMODEL_FORMAT, "file is 10 bytes, shorter than the 28-byte header",
                   NULL);
    expect_refused(buf, 0, KV_EMODEL_FORMAT, "file is 0 bytes", NULL);
    free(buf);
}

static void test_rejects_random_bytes(void **state)
{
    (void)state;
    unsigned char *buf = malloc(MODEL_BYTES);
    assert_non_null(buf);
    uint64_t x = 88172645463325252ULL; /* xorshift64: reproducible garbage */
    for (long i = 0; i < MODEL_BYTES; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        buf[i] = (unsigned char)(x >> 32);
    }
    /* Random header: some field is far outside its range. */
    expect_refused(buf, MODEL_BYTES, KV_EMODEL_FORMAT, "header field", "not a llama2.c checkpoint");
    /* The real header over random weights: the size matches, the weights are garbage
     * (one float in 256 has an all-ones exponent). */
    long n;
    unsigned char *real = slurp(kv_test_model_path(), &n);
    memcpy(buf, real, 28);
    expect_refused(buf, MODEL_BYTES, KV_EMODEL_FORMAT, "not a finite number", NULL);
    free(real);
    free(buf);
}

static void test_rejects_inconsistent_header(void **state)
{
    (void)state;
    long n;
    unsigned char *buf = slurp(kv_test_model_path(), &n);
    put_le32(buf + 12, 3); /* n_heads 3: 64 % 3 != 0 */
    expect_refused(buf, (size_t)n, KV_EMODEL_FORMAT, "dim 64 is not a multiple of n_heads 3", NULL);
    put_le32(buf + 12, 8);
    put_le32(buf + 16, 3); /* n_kv_heads 3: 8 % 3 != 0 */
    expect_refused(buf, (size_t)n, KV_EMODEL_FORMAT, "n_heads 8 is not a multiple of n_kv_heads 3",
                   NULL);
    put_le32(buf + 16, 4);
    put_le32(buf + 0, -64); /* negative dim */
    expect_refused(buf, (size_t)n, KV_EMODEL_FORMAT, "header field dim is -64", NULL);
    put_le32(buf + 0, 64);
    put_le32(buf + 8, 0); /* no layers */
    expect_refused(buf, (size_t)n, KV_EMODEL_FORMAT, "header field n_layers is 0", NULL);
    put_le32(buf + 8, 5);
    /* vocab -512 announces an unshared classifier: 512 * 64 more floats than the file has. */
    put_le32(buf + 20, -512);
    expect_refused(buf, (size_t)n, KV_EMODEL_FORMAT, "(unshared classifier)",
                   "needs 1187612: truncated"); /* 1056540 + 4 * 512 * 64 */
    free(buf);
}

static void test_unshared_classifier_loads(void **state)
{
    (void)state;
    long n;
    unsigned char *real = slurp(kv_test_model_path(), &n);
    size_t extra = 4 * 512 * 64, total = (size_t)n + extra;
    unsigned char *buf = malloc(total);
    assert_non_null(buf);
    memcpy(buf, real, (size_t)n);
    memcpy(buf + n, real + 28, extra); /* classifier = a copy of the embedding */
    put_le32(buf + 20, -512);
    const char *path = write_temp(buf, total);
    kv_model *m = NULL;
    char err[512] = "";
    int rc = kv_model_load(path, &m, err, sizeof err);
    unlink(path);
    if (rc)
        fail_msg("%s", err);
    assert_int_equal(kv_model_get_config(m)->shared_classifier, 0);
    assert_int_equal(kv_model_get_config(m)->vocab_size, 512);
    kv_model_free(m);
    free(buf);
    free(real);
}

static void test_missing_file(void **state)
{
    (void)state;
    kv_model *m = NULL;
    char err[512] = "";
    assert_int_equal(kv_model_load("/nonexistent/x.bin", &m, err, sizeof err), KV_EMODEL_IO);
    assert_null(m);
    assert_non_null(strstr(err, "/nonexistent/x.bin: cannot open"));
}

/* Greedy decoding from BOS and prompt[0..n_prompt-1] (run together, kv_model_prefill) for
 * n_steps more ids (prompt may be NULL when n_prompt is 0); ids gets 1 + n_prompt +
 * n_steps ids. */
static kv_model_run *greedy_from(const kv_model *m, const int *prompt, int n_prompt,
                                 int n_steps, int *ids)
{
    int n = 1 + n_prompt + n_steps;
    kv_model_run *r = NULL;
    char err[512] = "";
    if (kv_model_run_create(m, n, &r, err, sizeof err))
        fail_msg("%s", err);
    ids[0] = 1;
    if (n_prompt > 0)
        memcpy(ids + 1, prompt, (size_t)n_prompt * sizeof *ids);
    if (n_prompt > 0 && kv_model_prefill(r, ids, n_prompt, 0, err, sizeof err))
        fail_msg("%s", err);
    for (int t = n_prompt; t < n; t++) {
        if (kv_model_step(r, ids[t], t, err, sizeof err))
            fail_msg("%s", err);
        if (t == n - 1)
            break;
        const float *lg = kv_model_logits(r);
        int best = 0;
        for (int i = 1; i < kv_model_get_config(m)->vocab_size; i++)
            best = lg[i] > lg[best] ? i : best;
        ids[t + 1] = best;
    }
    return r;
}

static void test_greedy_ids_pinned(void **state)
{
    (void)state;
    /* Derived by tests/ref_llama.py (numpy, float64): `ref_llama.py stories260K.bin 8`.
     * The smallest top-1/top-2 logit gap over these steps is 0.05, far above float32
     * rounding, so any correct float32 implementation gives the same ids. */
    static const int expect[9] = {1, 461, 461, 401, 401, 401, 461, 378, 455};
    kv_model *m = kv_test_model_load();
    int ids[9];
    kv_model_run *r = greedy_from(m, NULL, 0, 8, ids);
    for (int i = 0; i < 9; i++)
        assert_int_equal(ids[i], expect[i]);
    kv_model_run_free(r);
    kv_model_free(m);
}

/* Parses "<tag> [<layer>] v v v ..." into vals; returns the count. */
static int parse_values(char *line, const char *tag, int layer, double *vals, int max)
{
    char *save = NULL, *tok = strtok_r(line, " \n", &save);
    if (!tok || strcmp(tok, tag) != 0)
        fail_msg("ref_llama.py: expected a '%s' line, got '%s'", tag, tok ? tok : "");
    if (layer >= 0) {
        tok = strtok_r(NULL, " \n", &save);
        assert_non_null(tok);
        assert_int_equal(atoi(tok), layer);
    }
    int n = 0;
    while ((tok = strtok_r(NULL, " \n", &save)) && n < max)
        vals[n++] = strtod(tok, NULL);
    return n;
}

static void assert_close(const float *got, const double *want, int n, double tol,
                         const char *what)
{
    double worst = 0.0;
    for (int i = 0; i < n; i++)
        worst = fmax(worst, fabs((double)got[i] - want[i]) / (1.0 + fabs(want[i])));
    print_message("    %s: largest difference %.3g (relative to 1 + |value|)\n", what, worst);
    if (worst > tol)
        fail_msg("%s differs from the numpy reference by %g > %g", what, worst, tol);
}


/* Runs tests/ref_llama.py on the checkpoint at path (greedy from BOS + prompt, n_steps)
 * and compares ids (exactly), the last position's q, k, logits and attention rows. */
static void compare_with_reference(const char *path, const int *prompt, int n_prompt,
                                   int n_steps)
{
    if (access("/usr/bin/python3", X_OK) != 0)
        fail_msg("/usr/bin/python3 missing: `make deps` installs python3-numpy");
    char cmd[2048], list[512] = "";
    for (int i = 0, n = 0; i < n_prompt; i++)
        n += snprintf(list + n, sizeof list - (size_t)n, "%s%d", i ? "," : "", prompt[i]);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/ref_llama.py '%s' %d '%s'", path,
             n_steps, list);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    static char line[1 << 20];
    static double vals[65536];
    static float got[4096];
    enum { MAXV = 65536 };

    kv_model *m = NULL;
    char err[512] = "";
    if (kv_model_load(path, &m, err, sizeof err))
        fail_msg("%s", err);
    const kv_model_config *c = kv_model_get_config(m);
    int np = 1 + n_prompt + n_steps, last = np - 1, hs = c->head_size;
    int *ids = malloc((size_t)np * sizeof *ids);
    assert_non_null(ids);
    kv_model_run *r = greedy_from(m, prompt, n_prompt, n_steps, ids);

    if (!fgets(line, sizeof line, p))
        fail_msg("no output from %s (is python3-numpy installed?)", cmd);
    assert_int_equal(parse_values(line, "ids", -1, vals, MAXV), np);
    for (int i = 0; i < np; i++)
        assert_int_equal(ids[i], (int)vals[i]);
    assert_non_null(fgets(line, sizeof line, p)); /* margin */
    print_message("    %s", line);
    for (int l = 0; l < c->n_layers; l++) {
        assert_non_null(fgets(line, sizeof line, p));
        assert_int_equal(parse_values(line, "q", l, vals, MAXV), c->dim);
        for (int h = 0; h < c->n_heads; h++)
            memcpy(got + h * hs, kv_model_q(r, l) + ((size_t)h * np + last) * hs,
                   (size_t)hs * sizeof(float));
        assert_close(got, vals, c->dim, 1e-4, "q (last position)");
        assert_non_null(fgets(line, sizeof line, p));
        assert_int_equal(parse_values(line, "k", l, vals, MAXV), c->kv_dim);
        for (int g = 0; g < c->n_kv_heads; g++)
            memcpy(got + g * hs, kv_model_k(r, l) + ((size_t)g * np + last) * hs,
                   (size_t)hs * sizeof(float));
        assert_close(got, vals, c->kv_dim, 1e-4, "k (last position)");
    }
    assert_non_null(fgets(line, sizeof line, p));
    assert_int_equal(parse_values(line, "logits", -1, vals, MAXV), c->vocab_size);
    assert_close(kv_model_logits(r), vals, c->vocab_size, 1e-4, "logits (last position)");
    for (int l = 0; l < c->n_layers; l++) {
        assert_non_null(fgets(line, sizeof line, p));
        assert_int_equal(parse_values(line, "attn", l, vals, MAXV), c->n_heads * np);
        for (int h = 0; h < c->n_heads; h++)
            memcpy(got + h * np, kv_model_attn(r, l, h), (size_t)np * sizeof(float));
        assert_close(got, vals, c->n_heads * np, 1e-5, "attention rows (last position)");
    }
    assert_int_equal(pclose(p), 0);
    free(ids);
    kv_model_run_free(r);
    kv_model_free(m);
}

static void test_matches_numpy_reference(void **state)
{
    (void)state;
    compare_with_reference(kv_test_model_path(), NULL, 0, 16);
}

/* stories15M: head size 48, no GQA, a 32,000-token vocabulary; the prompt " Once upon"
 * (ids 9038, 2501) goes through kv_model_prefill. */
static void test_stories15m_matches_numpy_reference(void **state)
{
    (void)state;
    static const int prompt[] = {9038, 2501};
    compare_with_reference(kv_test_models_file("stories15M.bin"), prompt, 2, 24);
}

/* A prefill of n positions gives the bits of n single steps: every record, the logits
 * and the last position's attention rows. 37 positions cross a 32-position chunk and
 * leave remainders of the four-position tiles; hidden_dim 172 leaves a partial panel. */
static void test_prefill_equals_steps(void **state)
{
    (void)state;
    enum { N = 37 };
    kv_model *m = kv_test_model_load();
    kv_model_run *a = NULL, *b = NULL;
    char err[512] = "";
    const kv_model_config *c = kv_model_get_config(m);
    int tokens[N];
    for (int i = 0; i < N; i++)
        tokens[i] = i == 0 ? 1 : (i * 37 + 11) % c->vocab_size;
    assert_int_equal(kv_model_run_create(m, N + 1, &a, err, sizeof err), 0);
    assert_int_equal(kv_model_run_create(m, N + 1, &b, err, sizeof err), 0);
    assert_int_equal(kv_model_prefill(a, tokens, N, 0, err, sizeof err), 0);
    for (int t = 0; t < N; t++)
        assert_int_equal(kv_model_step(b, tokens[t], t, err, sizeof err), 0);
    size_t np = N + 1;
    for (int l = 0; l < c->n_layers; l++) {
        assert_memory_equal(kv_model_q(a, l), kv_model_q(b, l), np * c->dim * sizeof(float));
        assert_memory_equal(kv_model_k(a, l), kv_model_k(b, l), np * c->kv_dim * sizeof(float));
        assert_memory_equal(kv_model_v(a, l), kv_model_v(b, l), np * c->kv_dim * sizeof(float));
        for (int h = 0; h < c->n_heads; h++)
            assert_memory_equal(kv_model_attn(a, l, h), kv_model_attn(b, l, h),
                                N * sizeof(float));
    }
    assert_memory_equal(kv_model_logits(a), kv_model_logits(b),
                        (size_t)c->vocab_size * sizeof(float));
    /* the next step continues either run alike; a wrong position is refused */
    assert_int_equal(kv_model_prefill(a, tokens, 1, N - 1, err, sizeof err), KV_EMODEL_ARG);
    assert_int_equal(kv_model_step(a, 5, N, err, sizeof err), 0);
    assert_int_equal(kv_model_step(b, 5, N, err, sizeof err), 0);
    assert_memory_equal(kv_model_logits(a), kv_model_logits(b),
                        (size_t)c->vocab_size * sizeof(float));
    kv_model_run_free(a);
    kv_model_run_free(b);
    kv_model_free(m);
}

static void test_step_rejects_bad_arguments(void **state)
{
    (void)state;
    kv_model *m = kv_test_model_load();
    kv_model_run *r = NULL;
    char err[512] = "";
    assert_int_equal(kv_model_run_create(m, 0, &r, err, sizeof err), KV_EMODEL_ARG);
    assert_null(r);
    assert_int_equal(kv_model_run_create(m, 2, &r, err, sizeof err), 0);
    assert_int_equal(kv_model_step(r, 512, 0, err, sizeof err), KV_EMODEL_ARG);
    assert_non_null(strstr(err, "token id 512 outside 0..511"));
    assert_int_equal(kv_model_step(r, 1, 1, err, sizeof err), KV_EMODEL_ARG); /* skips 0 */
    assert_int_equal(kv_model_step(r, 1, 0, err, sizeof err), 0);
    assert_int_equal(kv_model_step(r, 1, 1, err, sizeof err), 0);
    assert_int_equal(kv_model_step(r, 1, 2, err, sizeof err), KV_EMODEL_ARG); /* full */
    /* The row of position 1 has two weights that sum to 1. */
    for (int h = 0; h < 8; h++)
        assert_true(fabs(kv_model_attn(r, 0, h)[0] + kv_model_attn(r, 0, h)[1] - 1.0) < 1e-6);
    kv_model_run_free(r);
    kv_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loads_real_checkpoint),
        cmocka_unit_test(test_rejects_truncated_and_oversized),
        cmocka_unit_test(test_rejects_random_bytes),
        cmocka_unit_test(test_rejects_inconsistent_header),
        cmocka_unit_test(test_unshared_classifier_loads),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_greedy_ids_pinned),
        cmocka_unit_test(test_matches_numpy_reference),
        cmocka_unit_test(test_stories15m_matches_numpy_reference),
        cmocka_unit_test(test_prefill_equals_steps),
        cmocka_unit_test(test_step_rejects_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
