/*
 * cmd_capture.c - `kvsim capture`: the command line of the capture library
 * (traces/capture.h): parse and check the options, run the capture, report.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sim/commands.h"
#include "sim/publish.h"
#include "sim/index.h"
#include "traces/capture.h"
#include "traces/status.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void print_help(FILE *f)
{
    fprintf(f,
"usage: kvsim capture --model FILE -o TRACE.h5 [options]\n"
"\n"
"Runs a llama2.c-layout checkpoint (float32 forward pass) from BOS and records its\n"
"attention as a kvtrace v1 file (source qk): per layer the post-rotary queries\n"
"/layers/<l>/q [n_heads, T, head_dim], keys /layers/<l>/k [n_kv_heads, T, head_dim] and\n"
"values /layers/<l>/v, stored as float32, plus /tokens and the sampling settings and the\n"
"checkpoint's sha256 as root attributes; then indexes it as `kvsim index` does (each\n"
"row's log-normaliser /layers/<l>/lse and full-cache output /layers/<l>/o_full, from the\n"
"stored q, k and v), so it replays sparsely at once.\n"
"\n"
"Positions 0..T-1 hold BOS (id 1), then the prompt (--prompt TEXT or --prompt-ids), then\n"
"the model's own tokens; a BOS the model emits starts a new story and generation goes on\n"
"(--stop-at-bos ends the trace there instead). The first P positions (--prefill) are the\n"
"prompt that the replay treats as prefill; BOS plus the prompt must fit in them, and where\n"
"they are fewer than P the model's own samples fill the rest of the prompt region (with\n"
"no prompt, position 0 is BOS and positions 1..P-1 are generated).\n"
"\n"
"With a tokenizer the trace also stores each position's token text (/token_text), the\n"
"prompt's text and the tokenizer's sha256; `kvsim text` and `kvsim info` print the text.\n"
"\n"
"A FILE without a '/' that does not exist here is looked for in $KVSIM_MODELS (default\n"
"models/, where `make models` puts stories260K.bin, stories15M.bin and tokenizer.bin).\n"
"\n"
"options:\n"
"  --model FILE           checkpoint to run (required), e.g. stories15M.bin\n"
"  --tokenizer FILE       the checkpoint's llama2.c tokenizer, e.g. tokenizer.bin (either\n"
"                         export); default with --prompt: tokenizer.bin beside the model\n"
"  --prompt TEXT          the prompt as text, encoded after BOS with llama2.c's scheme\n"
"                         (the empty text gives BOS alone); --prefill then defaults to\n"
"                         the prompt's length, BOS included\n"
"  -o, --output FILE      trace to write (required; an existing file is replaced)\n"
"  --tokens T             positions to record, BOS included (default %d; 2..seq_len)\n"
"  --prefill P            prompt length in positions, BOS included (default %d; 1..T-1)\n"
"  --temperature X        sampling temperature, >= 0 (default %.1f); 0 = greedy: the\n"
"                         most likely token, the lowest id on a tie\n"
"  --top-p Y              nucleus sampling: draw among the most likely tokens whose\n"
"                         probabilities first reach a total >= Y (default %.1f; 0 < Y <= 1,\n"
"                         equal probabilities ordered by lower id;\n"
"                         1 = the whole distribution; unused when greedy)\n"
"  --seed S               seed of the sampler, GSL mt19937 (default %lu; 0..4294967295)\n"
"  --prompt-ids LIST      comma-separated token ids that follow BOS, each 0..vocab_size-1\n"
"                         (default: none); a list that starts with 1 is taken to begin\n"
"                         with BOS itself\n"
"  --stop-at-bos          end the trace before a BOS the model emits after the first\n"
"                         decode position (so T may be below --tokens)\n"
"  --f16                  store q, k and v as float16 (half the bytes; the replay\n"
"                         widens them to float32)\n"
"  --attn                 also store the softmax rows computed in the forward pass as\n"
"                         /layers/<l>/attn [n_heads, T, T] float32 and set source = attn\n"
"                         (q, k, v are still stored); 4 * n_layers * n_heads * T^2 bytes\n"
"                         before compression (42 MB at T = 512 for stories260K; the empty\n"
"                         upper triangle compresses away)\n"
"  --allow-extrapolation  allow T beyond the checkpoint's trained context (seq_len);\n"
"                         rotary positions extrapolate and quality degrades\n"
"  -h, --help             this help\n"
"\n"
"Same arguments give identical datasets. Progress goes to stderr for captures longer\n"
"than a second. Exit status: 0 ok, 1 runtime failure, 2 usage error.\n",
            KV_CAPTURE_DEFAULT_TOKENS, KV_CAPTURE_DEFAULT_PREFILL,
            KV_CAPTURE_DEFAULT_TEMPERATURE, KV_CAPTURE_DEFAULT_TOP_P, KV_CAPTURE_DEFAULT_SEED);
}

/* The options, and the prompt ids they borrow (owned here). */
typedef struct {
    kv_capture_opts o;
    int *prompt;
    int prefill_given;
    char model_path[4096], tokenizer_path[4096]; /* resolved (kv_resolve_model_file) */
} capture_args;

/* Where `make models` puts the files: $KVSIM_MODELS, default models. */
static const char *models_dir(void)
{
    const char *d = getenv("KVSIM_MODELS");
    return d && *d ? d : "models";
}

void kv_resolve_model_file(const char *name, char *out, size_t len)
{
    snprintf(out, len, "%s", name);
    if (strchr(name, '/') || access(name, F_OK) == 0)
        return;
    char alt[4096];
    snprintf(alt, sizeof alt, "%s/%s", models_dir(), name);
    if (access(alt, F_OK) == 0)
        snprintf(out, len, "%s", alt);
}

/* tokenizer.bin in the directory of model (a resolved path). */
static void tokenizer_beside(const char *model, char *out, size_t len)
{
    const char *slash = strrchr(model, '/');
    if (slash)
        snprintf(out, len, "%.*s/tokenizer.bin", (int)(slash - model), model);
    else
        snprintf(out, len, "tokenizer.bin");
}

/* Parses a whole decimal integer in [lo, hi]; 0 on success. */
static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_real(const char *s, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

/* Parses "1,23,45" into a->prompt (ids after BOS; a leading BOS is dropped). Range
 * against the vocabulary is checked once the model is loaded. */
static int parse_prompt(const char *s, capture_args *a)
{
    int n = 1;
    for (const char *c = s; *c; c++)
        n += *c == ',';
    a->prompt = malloc((size_t)n * sizeof(int));
    if (!a->prompt) {
        fprintf(stderr, "capture: out of memory for %d prompt ids\n", n);
        return KV_ENOMEM;
    }
    a->o.n_prompt = 0;
    const char *p = s;
    for (int i = 0; i < n; i++) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char buf[32];
        long v;
        if (len == 0 || len >= sizeof buf) {
            fprintf(stderr, "capture: --prompt-ids: entry %d of '%s' is not a token id\n",
                    i + 1, s);
            return KV_EUSAGE;
        }
        memcpy(buf, p, len);
        buf[len] = '\0';
        if (parse_long(buf, 0, INT_MAX, &v) != 0) {
            fprintf(stderr, "capture: --prompt-ids: '%s' is not a token id (a whole "
                            "number >= 0)\n", buf);
            return KV_EUSAGE;
        }
        if (!(i == 0 && v == KV_CAPTURE_BOS_ID))
            a->prompt[a->o.n_prompt++] = (int)v;
        p = comma ? comma + 1 : p + len;
    }
    return 0;
}

enum { OPT_MODEL = 256, OPT_TOKENS, OPT_PREFILL, OPT_TEMP, OPT_TOP_P, OPT_SEED,
       OPT_PROMPT, OPT_ATTN, OPT_EXTRAP, OPT_TOKENIZER, OPT_PROMPT_TEXT, OPT_STOP_BOS,
       OPT_F16 };

static int usage_error(const char *msg, const char *value)
{
    fprintf(stderr, "capture: %s%s%s\n(see kvsim capture --help)\n", msg,
            value ? ": " : "", value ? value : "");
    return KV_EUSAGE;
}

/* Returns 0 to run, 2 on a usage error, -1 when --help was printed. */
static int parse_args(int argc, char **argv, capture_args *a)
{
    static const struct option longopts[] = {
        {"model", required_argument, NULL, OPT_MODEL},
        {"output", required_argument, NULL, 'o'},
        {"tokens", required_argument, NULL, OPT_TOKENS},
        {"prefill", required_argument, NULL, OPT_PREFILL},
        {"temperature", required_argument, NULL, OPT_TEMP},
        {"top-p", required_argument, NULL, OPT_TOP_P},
        {"seed", required_argument, NULL, OPT_SEED},
        {"prompt-ids", required_argument, NULL, OPT_PROMPT},
        {"attn", no_argument, NULL, OPT_ATTN},
        {"allow-extrapolation", no_argument, NULL, OPT_EXTRAP},
        {"tokenizer", required_argument, NULL, OPT_TOKENIZER},
        {"prompt", required_argument, NULL, OPT_PROMPT_TEXT},
        {"stop-at-bos", no_argument, NULL, OPT_STOP_BOS},
        {"f16", no_argument, NULL, OPT_F16},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    long v;
    int c, rc;
    optind = 0; /* full getopt re-initialisation: main() or a test may call us again */
    while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_MODEL: a->o.model_path = optarg; break;
        case 'o': a->o.out_path = optarg; break;
        case OPT_TOKENS:
            if (parse_long(optarg, 2, INT_MAX, &v))
                return usage_error("--tokens needs a whole number of positions >= 2", optarg);
            a->o.n_tokens = (int)v;
            break;
        case OPT_PREFILL:
            if (parse_long(optarg, 1, INT_MAX, &v))
                return usage_error("--prefill needs a whole number of positions >= 1", optarg);
            a->o.prefill_len = (int)v;
            a->prefill_given = 1;
            break;
        case OPT_TEMP:
            if (parse_real(optarg, &a->o.temperature) || a->o.temperature < 0)
                return usage_error("--temperature needs a number >= 0", optarg);
            break;
        case OPT_TOP_P:
            if (parse_real(optarg, &a->o.top_p) || !(a->o.top_p > 0 && a->o.top_p <= 1))
                return usage_error("--top-p needs a number in (0, 1]", optarg);
            break;
        case OPT_SEED:
            if (parse_long(optarg, 0, 4294967295L, &v))
                return usage_error("--seed needs a whole number in 0..4294967295", optarg);
            a->o.seed = (unsigned long)v;
            break;
        case OPT_PROMPT:
            free(a->prompt);
            a->prompt = NULL;
            if ((rc = parse_prompt(optarg, a)) != 0)
                return rc;
            break;
        case OPT_ATTN: a->o.with_attn = 1; break;
        case OPT_EXTRAP: a->o.allow_extrapolation = 1; break;
        case OPT_TOKENIZER: a->o.tokenizer_path = optarg; break;
        case OPT_PROMPT_TEXT: a->o.prompt_text = optarg; break;
        case OPT_STOP_BOS: a->o.stop_at_bos = 1; break;
        case OPT_F16: a->o.store_f16 = 1; break;
        case 'h': print_help(stdout); return -1;
        default: return usage_error("unknown option or missing value", NULL);
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument", argv[optind]);
    if (!a->o.model_path)
        return usage_error("--model FILE is required", NULL);
    if (!a->o.out_path)
        return usage_error("-o TRACE.h5 is required", NULL);
    if (a->o.prompt_text && a->o.n_prompt > 0)
        return usage_error("give the prompt as --prompt TEXT or --prompt-ids LIST, not both",
                           NULL);
    kv_resolve_model_file(a->o.model_path, a->model_path, sizeof a->model_path);
    a->o.model_path = a->model_path;
    if (a->o.tokenizer_path)
        kv_resolve_model_file(a->o.tokenizer_path, a->tokenizer_path, sizeof a->tokenizer_path);
    else if (a->o.prompt_text)
        tokenizer_beside(a->model_path, a->tokenizer_path, sizeof a->tokenizer_path);
    if (a->o.tokenizer_path || a->o.prompt_text)
        a->o.tokenizer_path = a->tokenizer_path;
    if (a->o.prompt_text && !a->prefill_given)
        a->o.prefill_len = 0; /* the prompt's length */
    return 0;
}

int kv_cmd_capture(int argc, char **argv)
{
    capture_args a = {.prompt = NULL};
    kv_capture_defaults(&a.o);
    a.o.progress = 1;
    int rc = parse_args(argc, argv, &a);
    if (rc != 0) {
        free(a.prompt);
        return rc < 0 ? 0 : kv_exit_status(rc);
    }
    a.o.prompt = a.prompt;
    char err[KV_CAPTURE_ERR_LEN];
    double start = now_s();
    kv_capture_result res;
    kv_out_file out;   /* written beside the target, renamed over it when complete */
    const char *target = a.o.out_path;
    rc = kv_out_file_begin(&out, target, err, sizeof err);
    if (rc == 0) {
        a.o.out_path = out.tmp;
        rc = kv_capture(&a.o, &res, err, sizeof err);
        /* a qk trace is indexed before it replaces the target, so it replays sparsely at
         * once (index.h) */
        if (rc == 0 && !a.o.with_attn)
            rc = kv_index_trace(out.tmp, 0, err, sizeof err);
        a.o.out_path = target;
        if (rc)
            kv_out_file_abort(&out, err, sizeof err);
        else if (kv_out_file_commit(&out, err, sizeof err))
            rc = KV_EIO;
    }
    free(a.prompt);
    if (rc) {
        fprintf(stderr, "capture: %s\n", err);
        return kv_exit_status(rc);
    }
    fprintf(stderr, "capture: wrote %s: %d positions (prompt %d)%s, %s%s, %.2f s\n",
            a.o.out_path, res.n_tokens, res.prefill_len,
            res.stopped_at_bos ? ", stopped before the model's BOS" : "",
            a.o.with_attn ? "qk + attn" : "qk + index (lse, o_full)",
            a.o.store_f16 ? " float16" : "",
            now_s() - start);
    return 0;
}
