/*
 * test_tokenizer.c - the llama2.c tokenizer (traces/tokenizer.c).
 *
 * - A hand-built vocabulary: the ids of a few texts worked out by hand from the rule
 *   (dummy prefix, per-character lookup, byte fallback, best score first, leftmost on a
 *   tie, byte tokens never chosen by text).
 * - The real tokenizer.bin: the ids of prompts with punctuation, digits, accents, an
 *   emoji, leading and repeated spaces, a newline, CJK and the empty prompt equal the ids
 *   of an independent Python encoder (tests/ref_tokenizer.py); decoding gives the prompt
 *   back.
 * - The older export, made here from the newer by rewriting ids 3..258 the way the npm
 *   copy writes them (its sha256 is then the one ../shared/models/README.md gives for that
 *   file), loads and encodes and decodes every prompt alike.
 * - Damaged files are refused with a one-line message naming the file.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/kv_test.h"
#include "traces/tokenizer.h"

#define OLD_EXPORT_SHA256 "74f899535f8f99cdeac697474b697f3fa40467b8376dab7b6c4d8c753f28ae9f"
#define NEW_EXPORT_SHA256 "50a52ef822ee9e83de5ce9d0be0a025a773d019437f58b5ff9dcafb063ece361"

static const char *const prompts[] = {
    "Once upon a time, there was a little girl named Lily.",
    "  two leading spaces and   three   repeated",
    "Numbers: 3.14159, 2026 and 42! Really?! (yes) [no] {maybe} #1 @home 50% a+b=c",
    "Caf\xc3\xa9 cr\xc3\xa8me br\xc3\xbbl\xc3\xa9" "e, na\xc3\xafve Zo\xc3\xab, \xc3\x85ngstr\xc3\xb6m",
    "The cat \xf0\x9f\x90\xb1 smiled \xf0\x9f\x98\x80!",
    "Line one\nline two\ttabbed \"quoted\" 'single'",
    "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e and \xce\xb1\xce\xb2\xce\xb3",
    " ",
    "",
};
#define N_PROMPTS ((int)(sizeof prompts / sizeof prompts[0]))

static void put_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16), p[3] = (unsigned char)(v >> 24);
}

/* Appends one record (score, length, text) to buf at *n. */
static void put_record(unsigned char *buf, size_t *n, float score, const void *text, int len)
{
    uint32_t u;
    memcpy(&u, &score, 4);
    put_le32(buf + *n, u);
    put_le32(buf + *n + 4, (uint32_t)len);
    memcpy(buf + *n + 8, text, (size_t)len);
    *n += 8 + (size_t)len;
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static unsigned char *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    rewind(f);
    unsigned char *b = malloc(*n);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

static kv_tokenizer *load(const char *path)
{
    kv_tokenizer *t = NULL;
    char err[512] = "";
    if (kv_tokenizer_load(path, &t, err, sizeof err))
        fail_msg("%s", err);
    return t;
}

/* ids of text through t (the caller frees). */
static int *encode(const kv_tokenizer *t, const char *text, int *n)
{
    int *ids = NULL;
    char err[256] = "";
    if (kv_tokenizer_encode(t, text, strlen(text), &ids, n, err, sizeof err))
        fail_msg("%s", err);
    return ids;
}

static void expect_ids(const kv_tokenizer *t, const char *text, const int *want, int n_want)
{
    int n = 0;
    int *ids = encode(t, text, &n);
    for (int i = 0; i < n && i < n_want; i++)
        if (ids[i] != want[i])
            fail_msg("'%s': id %d is %d, expected %d", text, i, ids[i], want[i]);
    assert_int_equal(n, n_want);
    free(ids);
}

static int setup(void **state)
{
    (void)state;
    return kv_test_dir_make("kvsim_test_tokenizer");
}

/* ------------------------------------------------------------ a vocabulary by hand */

/* Ids of the hand-built vocabulary: 0..2 special, 3..258 bytes (older export's form),
 * then: */
enum { T_SPACE = 259, T_A, T_B, T_AB, T_SPACE_A, T_BA, T_E_ACUTE, N_HAND };

static const char *hand_vocab(void)
{
    static unsigned char buf[8192];
    size_t n = 4;
    put_le32(buf, 8);
    put_record(buf, &n, 0.0f, "<unk>", 5);
    put_record(buf, &n, 0.0f, "\n<s>\n", 5);
    put_record(buf, &n, 0.0f, "\n</s>\n", 6);
    for (int b = 0; b < 256; b++) {
        unsigned char u[2] = {(unsigned char)(0xC0 | b >> 6), (unsigned char)(0x80 | (b & 0x3F))};
        unsigned char raw = (unsigned char)b;
        if (b < 0x80)
            put_record(buf, &n, 0.0f, &raw, 1);
        else
            put_record(buf, &n, 0.0f, u, 2);
    }
    put_record(buf, &n, -100.0f, " ", 1);   /* T_SPACE */
    put_record(buf, &n, -100.0f, "a", 1);   /* T_A */
    put_record(buf, &n, -100.0f, "b", 1);   /* T_B */
    put_record(buf, &n, 2.0f, "ab", 2);     /* T_AB */
    put_record(buf, &n, 1.0f, " a", 2);     /* T_SPACE_A */
    put_record(buf, &n, 2.0f, "ba", 2);     /* T_BA: ties with "ab" */
    put_record(buf, &n, -5.0f, "\xc3\xa9", 2); /* T_E_ACUTE: also the older form of byte 0xE9 */
    const char *path = kv_test_path("hand.bin");
    write_file(path, buf, n);
    return path;
}

static void test_hand_vocabulary(void **state)
{
    (void)state;
    kv_tokenizer *t = load(hand_vocab());
    assert_int_equal(kv_tokenizer_vocab_size(t), N_HAND);
    /* "ab": [' ', a, b]; pairs " a" (1), "ab" (2): "ab" wins; " ab" is no token. */
    expect_ids(t, "ab", (int[]){T_SPACE, T_AB}, 2);
    /* "aba": [' ', a, b, a]; "ab" and "ba" both score 2: the leftmost, "ab", merges;
     * then " ab" and "aba" are no tokens. */
    expect_ids(t, "aba", (int[]){T_SPACE, T_AB, T_A}, 3);
    /* "a": [' ', a] -> " a". */
    expect_ids(t, "a", (int[]){T_SPACE_A}, 1);
    /* "a" is byte token 3 + 0x61's text too (older form): the ordinary token wins. */
    expect_ids(t, "b", (int[]){T_SPACE, T_B}, 2);
    /* "é" (C3 A9) is an ordinary token, and byte 0xE9's older-form text too: T_E_ACUTE. */
    expect_ids(t, "\xc3\xa9", (int[]){T_SPACE, T_E_ACUTE}, 2);
    /* "ü" (C3 BC) is no token: its two bytes. "z" is no token: its byte. */
    expect_ids(t, "\xc3\xbcz", (int[]){T_SPACE, 3 + 0xC3, 3 + 0xBC, 3 + 'z'}, 4);
    /* the empty text: no ids, no dummy prefix */
    expect_ids(t, "", NULL, 0);
    char buf[KV_TOKEN_TEXT_MAX];
    assert_int_equal(kv_tokenizer_token_text(t, 1, buf, sizeof buf), 0);
    assert_string_equal(buf, "<s>");
    assert_int_equal(kv_tokenizer_token_text(t, 3 + 0xC3, buf, sizeof buf), 0);
    assert_string_equal(buf, "<0xC3>");
    assert_int_equal(kv_tokenizer_token_text(t, 3 + 'z', buf, sizeof buf), 0);
    assert_string_equal(buf, "z");
    assert_int_equal(kv_tokenizer_token_text(t, T_SPACE_A, buf, sizeof buf), 0);
    assert_string_equal(buf, " a");
    assert_int_equal(kv_tokenizer_token_text(t, N_HAND, buf, sizeof buf), KV_ETOKENIZER_ARG);
    kv_tokenizer_free(t);
}

/* ------------------------------------------------------------ the real vocabulary */

/* The ids ref_tokenizer.py gives for every prompt with the tokenizer at path:
 * want[p] (malloc'd), n_want[p]. */
static void reference_ids(const char *path, int *want[N_PROMPTS], int n_want[N_PROMPTS])
{
    if (access("/usr/bin/python3", X_OK) != 0)
        fail_msg("/usr/bin/python3 missing");
    static char cmd[8192];
    size_t n = (size_t)snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/ref_tokenizer.py '%s'",
                                path);
    for (int p = 0; p < N_PROMPTS; p++) {
        n += (size_t)snprintf(cmd + n, sizeof cmd - n, " ");
        if (!prompts[p][0])
            n += (size_t)snprintf(cmd + n, sizeof cmd - n, "-");
        for (const unsigned char *c = (const unsigned char *)prompts[p]; *c; c++)
            n += (size_t)snprintf(cmd + n, sizeof cmd - n, "%02x", *c);
    }
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    static char line[65536];
    for (int p = 0; p < N_PROMPTS; p++) {
        if (!fgets(line, sizeof line, f))
            fail_msg("ref_tokenizer.py gave no line for prompt %d", p);
        want[p] = malloc(sizeof(int) * 512);
        assert_non_null(want[p]);
        n_want[p] = 0;
        for (char *s = NULL, *tok = strtok_r(line, " \n", &s); tok; tok = strtok_r(NULL, " \n", &s))
            want[p][n_want[p]++] = atoi(tok);
    }
    assert_int_equal(pclose(f), 0);
}

/* Encodes and decodes every prompt with the tokenizer at path and compares with the
 * Python encoder's ids for ref_path. */
static void check_prompts(const char *path, const char *ref_path)
{
    int *want[N_PROMPTS], n_want[N_PROMPTS];
    reference_ids(ref_path, want, n_want);
    kv_tokenizer *t = load(path);
    assert_int_equal(kv_tokenizer_vocab_size(t), 32000);
    for (int p = 0; p < N_PROMPTS; p++) {
        expect_ids(t, prompts[p], want[p], n_want[p]);
        int n = 0;
        int *ids = encode(t, prompts[p], &n);
        char *text = NULL, err[256] = "";
        assert_int_equal(kv_tokenizer_decode(t, ids, n, &text, err, sizeof err), 0);
        assert_string_equal(text, prompts[p]);
        free(text);
        /* after BOS, as a trace holds it: the same text */
        int *with_bos = malloc(sizeof(int) * (size_t)(n + 1));
        assert_non_null(with_bos);
        with_bos[0] = KV_TOKEN_BOS;
        if (n > 0)
            memcpy(with_bos + 1, ids, sizeof(int) * (size_t)n);
        assert_int_equal(kv_tokenizer_decode(t, with_bos, n + 1, &text, err, sizeof err), 0);
        assert_string_equal(text, prompts[p]);
        print_message("    %d ids: %s\n", n, prompts[p]);
        free(text);
        free(with_bos);
        free(ids);
        free(want[p]);
    }
    kv_tokenizer_free(t);
}

static void test_real_vocabulary_against_python(void **state)
{
    (void)state;
    const char *path = kv_test_models_file("tokenizer.bin");
    kv_tokenizer *t = load(path);
    assert_string_equal(kv_tokenizer_sha256(t), NEW_EXPORT_SHA256);
    /* "Once" after the dummy prefix is one token; its display text keeps the space */
    int n = 0;
    int *ids = encode(t, "Once", &n);
    assert_int_equal(n, 1);
    char buf[KV_TOKEN_TEXT_MAX];
    assert_int_equal(kv_tokenizer_token_text(t, ids[0], buf, sizeof buf), 0);
    assert_string_equal(buf, " Once");
    free(ids);
    kv_tokenizer_free(t);
    check_prompts(path, path);
}

/* Rewrites the newer export into the older: ids 3..258 hold the byte itself below 0x80,
 * the UTF-8 bytes of U+0080..U+00FF above. */
static const char *make_old_export(const char *new_path)
{
    size_t n = 0;
    unsigned char *in = read_all(new_path, &n);
    unsigned char *out = malloc(n);
    assert_non_null(out);
    size_t r = 4, w = 4;
    memcpy(out, in, 4);
    for (int id = 0; r < n; id++) {
        uint32_t len = (uint32_t)in[r + 4] | (uint32_t)in[r + 5] << 8 |
                       (uint32_t)in[r + 6] << 16 | (uint32_t)in[r + 7] << 24;
        if (id >= 3 && id < 259) {
            int b = id - 3;
            unsigned char text[2] = {(unsigned char)b, 0};
            int tl = 1;
            if (b >= 0x80)
                text[0] = (unsigned char)(0xC0 | b >> 6), text[1] = (unsigned char)(0x80 | (b & 0x3F)),
                tl = 2;
            memcpy(out + w, in + r, 4);
            put_le32(out + w + 4, (uint32_t)tl);
            memcpy(out + w + 8, text, (size_t)tl);
            w += 8 + (size_t)tl;
        } else {
            memcpy(out + w, in + r, 8 + len);
            w += 8 + len;
        }
        r += 8 + len;
    }
    const char *path = kv_test_path("old_export.bin");
    write_file(path, out, w);
    free(in);
    free(out);
    return path;
}

static void test_older_export_alike(void **state)
{
    (void)state;
    const char *new_path = kv_test_models_file("tokenizer.bin");
    char newp[1024];
    snprintf(newp, sizeof newp, "%s", new_path);
    const char *old_path = make_old_export(newp);
    kv_tokenizer *t = load(old_path);
    /* the rewrite is the npm copy's file, byte for byte */
    assert_string_equal(kv_tokenizer_sha256(t), OLD_EXPORT_SHA256);
    kv_tokenizer_free(t);
    /* the older export encodes every prompt as the Python encoder does with the newer
     * export, and the Python encoder agrees on the older export too */
    check_prompts(old_path, newp);
    check_prompts(old_path, old_path);
}

static void expect_refused(const void *data, size_t n, const char *needle)
{
    const char *path = kv_test_path("bad.bin");
    write_file(path, data, n);
    kv_tokenizer *t = NULL;
    char err[512] = "";
    int rc = kv_tokenizer_load(path, &t, err, sizeof err);
    print_message("    refused: %s\n", err);
    assert_int_not_equal(rc, 0);
    assert_null(t);
    assert_non_null(strstr(err, path));
    assert_null(strchr(err, '\n'));
    assert_non_null(strstr(err, needle));
}

static void test_damaged_files_refused(void **state)
{
    (void)state;
    size_t n = 0;
    unsigned char *b = read_all(kv_test_models_file("tokenizer.bin"), &n);
    expect_refused(b, n - 3, "past the end");      /* truncated in the last text */
    expect_refused(b, 2, "bytes");                  /* no header */
    unsigned char *c = malloc(n);
    assert_non_null(c);
    memcpy(c, b, n);
    put_le32(c, 0);
    expect_refused(c, n, "max_token_length");
    memcpy(c, b, n);
    memcpy(c + 4 + 3 * 8 + 5 + 5 + 6 + 8, "<0x01>", 6); /* id 3 written as byte 0x01's */
    expect_refused(c, n, "token 3 should be the byte token of 0x00");
    memcpy(c, b, n);
    memset(c + 4, 0xFF, 4); /* score of token 0: NaN */
    expect_refused(c, n, "not a finite number");
    kv_tokenizer *t = NULL;
    char err[512] = "";
    assert_int_equal(kv_tokenizer_load("/nonexistent/tok.bin", &t, err, sizeof err),
                     KV_ETOKENIZER_IO);
    assert_non_null(strstr(err, "/nonexistent/tok.bin"));
    free(b);
    free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hand_vocabulary),
        cmocka_unit_test(test_real_vocabulary_against_python),
        cmocka_unit_test(test_older_export_alike),
        cmocka_unit_test(test_damaged_files_refused),
    };
    return cmocka_run_group_tests(tests, setup, kv_test_dir_teardown);
}
