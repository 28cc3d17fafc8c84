/*
 * test_capture_text.c - `kvsim capture` with a tokenizer on stories15M, `kvsim text`.
 *
 * - --prompt TEXT: the ids after BOS in /tokens are the ids the independent Python encoder
 *   (tests/ref_tokenizer.py) gives; --prefill defaults to BOS plus the prompt; the empty
 *   prompt gives BOS alone.
 * - /token_text, read by h5py (an independent reader), holds for every position the text
 *   the tokenizer file gives for its id (read by Python from tokenizer.bin itself);
 *   prompt_text and tokenizer_sha256 are stored.
 * - Greedy from BOS, the model emits BOS as its 222nd token (../shared/models/README.md):
 *   generation goes on past it by default, --stop-at-bos ends the trace at T = 222, and
 *   `kvsim text` prints the README's opening sentence with the prompt marked.
 * - Refusals: a tokenizer of another vocabulary, --prompt with --prompt-ids,
 *   --stop-at-bos with --attn.
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

#include "sim/commands.h"
#include "tests/kv_test.h"
#include "traces/trace.h"
#include "traces/trace_text.h"

#define TOKENIZER_SHA256 "50a52ef822ee9e83de5ce9d0be0a025a773d019437f58b5ff9dcafb063ece361"

static char model15[1024], tokenizer[1024];

static int setup(void **state)
{
    (void)state;
    snprintf(model15, sizeof model15, "%s", kv_test_models_file("stories15M.bin"));
    snprintf(tokenizer, sizeof tokenizer, "%s", kv_test_models_file("tokenizer.bin"));
    return kv_test_dir_make("kvsim_test_capture_text");
}

/* kvsim capture --model stories15M --tokenizer tokenizer.bin -o out <args> (NULL-ended);
 * the exit status. */
static int capture15(const char *out, ...)
{
    char *argv[40];
    int argc = 0;
    argv[argc++] = "capture";
    argv[argc++] = "--model";
    argv[argc++] = model15;
    argv[argc++] = "--tokenizer";
    argv[argc++] = tokenizer;
    argv[argc++] = "-o";
    argv[argc++] = (char *)out;
    va_list ap;
    va_start(ap, out);
    for (char *a; (a = va_arg(ap, char *)) != NULL && argc < 39;)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    return kv_test_call_quiet(kv_cmd_capture, argc, argv);
}

/* The trace's /tokens; *T gets the length. The caller frees. */
static int32_t *read_tokens(const char *path, int *T, int *P)
{
    kv_trace *tr = NULL;
    char err[512];
    if (kv_trace_open(path, &tr, err, sizeof err))
        fail_msg("%s", err);
    *T = kv_trace_get_info(tr)->n_tokens;
    *P = kv_trace_get_info(tr)->prefill_len;
    int32_t *ids = malloc((size_t)*T * sizeof *ids);
    assert_non_null(ids);
    if (kv_trace_read_tokens(tr, ids, err, sizeof err))
        fail_msg("%s", err);
    kv_trace_close(tr);
    return ids;
}

/* Reference ids of text by tests/ref_tokenizer.py; returns the count, ids into want. */
static int python_ids(const char *text, int *want, int max)
{
    char cmd[4096];
    size_t n = (size_t)snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/ref_tokenizer.py '%s' ",
                                tokenizer);
    if (!*text)
        n += (size_t)snprintf(cmd + n, sizeof cmd - n, "-");
    for (const unsigned char *c = (const unsigned char *)text; *c; c++)
        n += (size_t)snprintf(cmd + n, sizeof cmd - n, "%02x", *c);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[8192];
    int count = 0;
    if (fgets(line, sizeof line, p))
        for (char *s = NULL, *t = strtok_r(line, " \n", &s); t && count < max;
             t = strtok_r(NULL, " \n", &s))
            want[count++] = atoi(t);
    assert_int_equal(pclose(p), 0);
    return count;
}

static void test_prompt_ids_match_python(void **state)
{
    (void)state;
    static const char *const prompts[] = {
        "Once upon a time, Tom's dog -- a 3-year-old \"Rex\" -- said: hi!",
        "  Zo\xc3\xab ate cr\xc3\xa8me br\xc3\xbbl\xc3\xa9" "e \xf0\x9f\x8d\xae at 7:45.",
        "",
    };
    for (int i = 0; i < 3; i++) {
        const char *out = kv_test_path("prompt.h5");
        assert_int_equal(capture15(out, "--prompt", prompts[i], "--tokens", "40",
                                   "--temperature", "0", NULL), 0);
        int want[64], T, P;
        int n = python_ids(prompts[i], want, 64);
        int32_t *ids = read_tokens(out, &T, &P);
        print_message("    %d prompt ids, P = %d: '%s'\n", n, P, prompts[i]);
        assert_int_equal(T, 40);
        assert_int_equal(P, 1 + n); /* --prefill defaults to BOS plus the prompt */
        assert_int_equal(ids[0], 1);
        for (int j = 0; j < n; j++)
            assert_int_equal(ids[1 + j], want[j]);
        free(ids);
    }
}

static void test_token_text_via_h5py(void **state)
{
    (void)state;
    const char *out = kv_test_path("text.h5");
    const char *prompt = "The bird \xf0\x9f\x90\xa6 sang.\nThen";
    assert_int_equal(capture15(out, "--prompt", prompt, "--tokens", "48", "--seed", "3",
                               NULL), 0);
    /* Python reads the vocabulary itself and the trace through h5py. */
    char script[4096];
    snprintf(script, sizeof script,
             "/usr/bin/python3 - <<'EOF'\n"
             "import h5py, struct, sys\n"
             "d = open('%s', 'rb').read(); pos = 4; voc = []\n"
             "while pos < len(d):\n"
             "    s, n = struct.unpack_from('<fi', d, pos); voc.append(d[pos+8:pos+8+n]); pos += 8+n\n"
             "def shown(i):\n"
             "    if i < 3: return ['<unk>', '<s>', '</s>'][i]\n"
             "    if i < 259:\n"
             "        b = i - 3\n"
             "        return chr(b) if 32 <= b < 127 else '<0x%%02X>' %% b\n"
             "    return voc[i].decode('utf-8')\n"
             "f = h5py.File('%s', 'r')\n"
             "ids = f['tokens'][:]; texts = f['token_text'].asstr()[:]\n"
             "assert len(texts) == len(ids) == 48, len(texts)\n"
             "for i, t in zip(ids, texts): assert t == shown(int(i)), (int(i), t, shown(int(i)))\n"
             "assert f.attrs['prompt_text'].decode() == %s\n"
             "assert f.attrs['tokenizer_sha256'].decode() == '%s'\n"
             "print('ok', ''.join(texts[:12]))\n"
             "EOF",
             tokenizer, out, "'The bird \\U0001F426 sang.\\nThen'", TOKENIZER_SHA256);
    FILE *p = popen(script, "r");
    assert_non_null(p);
    char line[4096] = "";
    if (!fgets(line, sizeof line, p))
        line[0] = '\0';
    int st = pclose(p);
    print_message("    h5py: %s", line);
    assert_int_equal(st, 0);
    assert_int_equal(strncmp(line, "ok", 2), 0);
}

/* Runs kvsim text on path into buf (the first len - 1 bytes). */
static void text_of(const char *path, char *buf, size_t len)
{
    char cmd[2048];
    const char *bin = getenv("KVSIM_BIN");
    snprintf(cmd, sizeof cmd, "%s text '%s'", bin && *bin ? bin : "./kvsim", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(buf, 1, len - 1, p);
    buf[n] = '\0';
    assert_int_equal(pclose(p), 0);
}

static void test_bos_continues_or_stops(void **state)
{
    (void)state;
    const char *on = kv_test_path("on.h5"), *stop = kv_test_path("stop.h5");
    assert_int_equal(capture15(on, "--tokens", "256", "--prefill", "8", "--temperature", "0",
                               NULL), 0);
    assert_int_equal(capture15(stop, "--tokens", "256", "--prefill", "8", "--temperature",
                               "0", "--stop-at-bos", NULL), 0);
    int T, P;
    int32_t *ids = read_tokens(on, &T, &P);
    assert_int_equal(T, 256);
    assert_int_equal(ids[222], 1); /* the model's BOS, the 222nd token after position 0 */
    for (int t = 1; t < 222; t++)
        assert_int_not_equal(ids[t], 1);
    free(ids);
    ids = read_tokens(stop, &T, &P);
    assert_int_equal(T, 222);
    assert_int_equal(P, 8);
    free(ids);
    static char text[65536];
    text_of(stop, text, sizeof text);
    print_message("    %.120s...\n", text);
    const char *readme = "[[Once upon a time, there was]] a little girl named Lily. She loved "
                         "to play outside in the sunshine.";
    assert_int_equal(strncmp(text, readme, strlen(readme)), 0);
    text_of(on, text, sizeof text);
    assert_non_null(strstr(text, "\n\n")); /* the second story after the BOS */
}

/* retention.tsv's token column: per position, the /token_text h5py reads, TSV-escaped;
 * the escaping itself on a text with every escaped character, worked out by hand. */
static void test_retention_token_column(void **state)
{
    (void)state;
    const char *trace = kv_test_path("ret.h5"), *dir = kv_test_path("ret");
    assert_int_equal(capture15(trace, "--prompt", "A cat\nsat.", "--tokens", "40", NULL), 0);
    char *argv[] = {"run", "--trace", (char *)trace, "--policies", "window,h2o", "--budgets",
                    "12", "-o", (char *)dir, "--no-plot", "-q", "--force", NULL};
    assert_int_equal(kv_test_call_quiet(kv_cmd_run, 12, argv), 0);
    char script[2048];
    snprintf(script, sizeof script,
             "/usr/bin/python3 - <<'EOF'\n"
             "import csv, h5py\n"
             "texts = h5py.File('%s', 'r')['token_text'].asstr()[:]\n"
             "rows = list(csv.DictReader(open('%s/retention.tsv'), delimiter='\\t', quoting=csv.QUOTE_NONE))\n"
             "assert len(rows) == 2 * 40, len(rows)\n"
             "for r in rows: assert r['token'] == texts[int(r['position'])], r\n"
             "print('ok')\n"
             "EOF",
             trace, dir);
    assert_int_equal(system(script), 0);
    char out[64];
    kv_tsv_escape("a\tb\nc\\d\re", out, sizeof out);
    assert_string_equal(out, "a\\tb\\nc\\\\d\\re");
}

static void test_refusals(void **state)
{
    (void)state;
    const char *out = kv_test_path("bad.h5");
    /* a tokenizer of another vocabulary: stories260K has 512 tokens */
    char *argv[] = {"capture", "--model", (char *)kv_test_model_path(), "--tokenizer",
                    tokenizer, "--prompt", "hi", "-o", (char *)out, NULL};
    assert_int_equal(kv_test_call_quiet(kv_cmd_capture, 9, argv), 2);
    assert_int_equal(capture15(out, "--prompt", "hi", "--prompt-ids", "5,6", NULL), 2);
    assert_int_equal(capture15(out, "--stop-at-bos", "--attn", "--tokens", "32", "--prefill",
                               "4", NULL), 2);
    assert_int_not_equal(access(out, F_OK), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prompt_ids_match_python),
        cmocka_unit_test(test_token_text_via_h5py),
        cmocka_unit_test(test_bos_continues_or_stops),
        cmocka_unit_test(test_retention_token_column),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, setup, kv_test_dir_teardown);
}
