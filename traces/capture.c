/*
 * capture.c - `kvsim capture`: run a trained checkpoint and record its attention.
 *
 * Steps (the code carries the same labels):
 *   1. parse and check the options; load the checkpoint (traces/model.h) and check the
 *      options against it (trained context, vocabulary, prompt length);
 *   2. create the trace (kvtrace v1, traces/trace.h) so an unwritable path fails early;
 *   3. for t = 0..T-1: token t is BOS (t = 0), a prompt id, or the sample drawn from the
 *      logits of step t-1 (greedy at temperature 0, else temperature + top-p from a
 *      seeded GSL mt19937); run the forward pass; with --attn, buffer the softmax rows
 *      of the step and write them a block of positions at a time;
 *   4. write /tokens, every layer's q, k and v, and the provenance attributes; close.
 *
 * Everything the datasets hold follows from the arguments and the checkpoint bytes: the
 * forward pass is bit-reproducible (model.h) and the sampler is seeded, so the same
 * arguments give identical datasets.
 */
#include "sim/commands.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <gsl/gsl_rng.h>

#include "traces/model.h"
#include "traces/trace.h"

#define BOS_ID 1
#define DEFAULT_TOKENS 512
#define DEFAULT_PREFILL 128
#define DEFAULT_TEMPERATURE 1.0
#define DEFAULT_TOP_P 0.9
#define DEFAULT_SEED 1UL
#define ATTN_BLOCK 128 /* rows buffered per write: the writer's (1, 128, 128) tile height */
#define ERR_LEN 512

typedef struct {
    const char *model_path;
    const char *out_path;
    int n_tokens;          /* T, positions */
    int prefill_len;       /* P, positions */
    double temperature;    /* 0 = greedy */
    double top_p;          /* nucleus mass, (0, 1] */
    unsigned long seed;    /* mt19937 seed, 32 bits */
    int *prompt;           /* ids after BOS, owned */
    int n_prompt;
    int with_attn;         /* --attn */
    int allow_extrapolation;
} capture_opts;

static void print_help(FILE *f)
{
    fprintf(f,
"usage: kvsim capture --model FILE -o TRACE.h5 [options]\n"
"\n"
"Runs a llama2.c-layout checkpoint (float32 forward pass) from BOS and records its\n"
"attention as a kvtrace v1 file (source qk): per layer the post-rotary queries\n"
"/layers/<l>/q [n_heads, T, head_dim], keys /layers/<l>/k [n_kv_heads, T, head_dim] and\n"
"values /layers/<l>/v, stored as float32, plus /tokens and the sampling settings and the\n"
"checkpoint's sha256 as root attributes.\n"
"\n"
"Positions 0..T-1 hold BOS (id 1), then the --prompt-ids, then the model's own tokens.\n"
"The first P positions (--prefill) are the prompt that the replay treats as prefill; BOS\n"
"plus the prompt ids must fit in them, and where they are fewer than P the model's own\n"
"samples fill the rest of the prompt region (with no prompt ids, position 0 is BOS and\n"
"positions 1..P-1 are generated).\n"
"\n"
"options:\n"
"  --model FILE           checkpoint to run (required), e.g. ../shared/models/stories260K.bin\n"
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
            DEFAULT_TOKENS, DEFAULT_PREFILL, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, DEFAULT_SEED);
}

/* ------------------------------------------------------------ step 1: options */

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

/* Parses "1,23,45" into o->prompt (ids after BOS; a leading BOS is dropped). Range
 * against the vocabulary is checked once the model is loaded. */
static int parse_prompt(const char *s, capture_opts *o)
{
    int n = 1;
    for (const char *c = s; *c; c++)
        n += *c == ',';
    o->prompt = malloc((size_t)n * sizeof(int));
    if (!o->prompt) {
        fprintf(stderr, "capture: out of memory for %d prompt ids\n", n);
        return 1;
    }
    o->n_prompt = 0;
    const char *p = s;
    for (int i = 0; i < n; i++) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char buf[32];
        long v;
        if (len == 0 || len >= sizeof buf) {
            fprintf(stderr, "capture: --prompt-ids: entry %d of '%s' is not a token id\n",
                    i + 1, s);
            return 2;
        }
        memcpy(buf, p, len);
        buf[len] = '\0';
        if (parse_long(buf, 0, INT_MAX, &v) != 0) {
            fprintf(stderr, "capture: --prompt-ids: '%s' is not a token id (a whole "
                            "number >= 0)\n", buf);
            return 2;
        }
        if (!(i == 0 && v == BOS_ID))
            o->prompt[o->n_prompt++] = (int)v;
        p = comma ? comma + 1 : p + len;
    }
    return 0;
}

enum { OPT_MODEL = 256, OPT_TOKENS, OPT_PREFILL, OPT_TEMP, OPT_TOP_P, OPT_SEED,
       OPT_PROMPT, OPT_ATTN, OPT_EXTRAP };

static int usage_error(const char *msg, const char *value)
{
    fprintf(stderr, "capture: %s%s%s\n(see kvsim capture --help)\n", msg,
            value ? ": " : "", value ? value : "");
    return 2;
}

/* Returns 0 to run, 2 on a usage error, -1 when --help was printed. */
static int parse_args(int argc, char **argv, capture_opts *o)
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
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    long v;
    int c, rc;
    optind = 0; /* full getopt re-initialisation: main() or a test may call us again */
    while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_MODEL: o->model_path = optarg; break;
        case 'o': o->out_path = optarg; break;
        case OPT_TOKENS:
            if (parse_long(optarg, 2, INT_MAX, &v))
                return usage_error("--tokens needs a whole number of positions >= 2", optarg);
            o->n_tokens = (int)v;
            break;
        case OPT_PREFILL:
            if (parse_long(optarg, 1, INT_MAX, &v))
                return usage_error("--prefill needs a whole number of positions >= 1", optarg);
            o->prefill_len = (int)v;
            break;
        case OPT_TEMP:
            if (parse_real(optarg, &o->temperature) || o->temperature < 0)
                return usage_error("--temperature needs a number >= 0", optarg);
            break;
        case OPT_TOP_P:
            if (parse_real(optarg, &o->top_p) || !(o->top_p > 0 && o->top_p <= 1))
                return usage_error("--top-p needs a number in (0, 1]", optarg);
            break;
        case OPT_SEED:
            if (parse_long(optarg, 0, 4294967295L, &v))
                return usage_error("--seed needs a whole number in 0..4294967295", optarg);
            o->seed = (unsigned long)v;
            break;
        case OPT_PROMPT:
            free(o->prompt);
            o->prompt = NULL;
            if ((rc = parse_prompt(optarg, o)) != 0)
                return rc == 1 ? 2 : rc;
            break;
        case OPT_ATTN: o->with_attn = 1; break;
        case OPT_EXTRAP: o->allow_extrapolation = 1; break;
        case 'h': print_help(stdout); return -1;
        default: return usage_error("unknown option or missing value", NULL);
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument", argv[optind]);
    if (!o->model_path)
        return usage_error("--model FILE is required", NULL);
    if (!o->out_path)
        return usage_error("-o TRACE.h5 is required", NULL);
    return 0;
}

/* Checks the options that depend on the checkpoint; 0 or 2 (usage error). */
static int check_against_model(const capture_opts *o, const kv_model_config *c)
{
    if (o->n_tokens > c->seq_len && !o->allow_extrapolation) {
        fprintf(stderr, "capture: --tokens %d exceeds the checkpoint's trained context "
                        "(seq_len %d); pass --allow-extrapolation to run past it\n",
                o->n_tokens, c->seq_len);
        return 2;
    }
    if (o->prefill_len >= o->n_tokens) {
        fprintf(stderr, "capture: --prefill %d must be below --tokens %d (a trace needs at "
                        "least one decode position)\n", o->prefill_len, o->n_tokens);
        return 2;
    }
    if (1 + o->n_prompt > o->prefill_len) {
        fprintf(stderr, "capture: BOS plus %d prompt ids is %d positions, more than "
                        "--prefill %d\n", o->n_prompt, 1 + o->n_prompt, o->prefill_len);
        return 2;
    }
    for (int i = 0; i < o->n_prompt; i++) {
        if (o->prompt[i] >= c->vocab_size) {
            fprintf(stderr, "capture: --prompt-ids: id %d is outside the vocabulary "
                            "0..%d\n", o->prompt[i], c->vocab_size - 1);
            return 2;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ step 3: sampling */

typedef struct {
    int id;
    double p;
} id_prob;

typedef struct {
    gsl_rng *rng;
    double *probs;  /* [vocab] */
    id_prob *cand;  /* [vocab], nucleus candidates, most likely first */
    int n_vocab;
} sampler;

/* The most likely id, the lowest on a tie. */
static int argmax(const float *logits, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        best = logits[i] > logits[best] ? i : best;
    return best;
}

/* qsort order of the candidates: higher probability first, the lower id on a tie (a
 * total order, so the nucleus does not depend on the sort algorithm). */
static int by_prob_desc(const void *a, const void *b)
{
    const id_prob *x = a, *y = b;
    if (x->p != y->p)
        return x->p > y->p ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Sorts the ids whose probability is at least cutoff into s->cand, most likely first;
 * returns how many. */
static int sort_candidates(sampler *s, double cutoff)
{
    int n = 0;
    for (int i = 0; i < s->n_vocab; i++)
        if (s->probs[i] >= cutoff)
            s->cand[n++] = (id_prob){.id = i, .p = s->probs[i]};
    qsort(s->cand, (size_t)n, sizeof *s->cand, by_prob_desc);
    return n;
}

/*
 * Temperature + top-p: p = softmax(logits / temperature) in double; the nucleus is the
 * shortest run of most likely tokens (descending p, the lower id first on a tie) whose
 * mass reaches top_p; one uniform draw picks within the nucleus in proportion to p.
 * Only tokens with p >= (1 - top_p) / (n - 1) are sorted: the others together hold less
 * than 1 - top_p, so the nucleus is complete before them (the whole vocabulary is sorted
 * when rounding leaves the candidates just short).
 */
static int sample_next(sampler *s, const float *logits, double temperature, double top_p)
{
    if (temperature == 0.0)
        return argmax(logits, s->n_vocab);
    int n = s->n_vocab;
    double mx = logits[argmax(logits, n)], sum = 0.0;
    for (int i = 0; i < n; i++) {
        s->probs[i] = exp(((double)logits[i] - mx) / temperature);
        sum += s->probs[i];
    }
    for (int i = 0; i < n; i++)
        s->probs[i] /= sum;
    double cutoff = n > 1 ? (1.0 - top_p) / (double)(n - 1) : 0.0;
    int n_cand = sort_candidates(s, cutoff);
    double mass = 0.0;
    int n_nucleus = 0;
    while (n_nucleus < n_cand && mass < top_p)
        mass += s->cand[n_nucleus++].p;
    if (mass < top_p && n_cand < n) {
        n_cand = sort_candidates(s, 0.0);
        for (; n_nucleus < n_cand && mass < top_p; n_nucleus++)
            mass += s->cand[n_nucleus].p;
    }
    double u = gsl_rng_uniform(s->rng) * mass, acc = 0.0;
    for (int r = 0; r < n_nucleus; r++) {
        acc += s->cand[r].p;
        if (u < acc)
            return s->cand[r].id;
    }
    return s->cand[n_nucleus - 1].id; /* u rounded onto the total: the last member */
}

static void sampler_free(sampler *s)
{
    gsl_rng_free(s->rng);
    free(s->probs);
    free(s->cand);
}

static int sampler_init(sampler *s, int n_vocab, unsigned long seed)
{
    s->n_vocab = n_vocab;
    s->rng = gsl_rng_alloc(gsl_rng_mt19937);
    s->probs = malloc((size_t)n_vocab * sizeof(double));
    s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
    if (!s->rng || !s->probs || !s->cand)
        return -1; /* the caller frees what was allocated */
    gsl_rng_set(s->rng, seed);
    return 0;
}

/* ------------------------------------------------------------ steps 2-4: the capture */

typedef struct {
    const capture_opts *o;
    const kv_model *model;
    const kv_model_config *cfg;
    kv_model_run *run;
    kv_trace_writer *w;
    sampler smp;
    int32_t *tokens;  /* [T] */
    float *attn_blk;  /* --attn: [n_layers][n_heads][ATTN_BLOCK][T] */
    double t_start;   /* seconds, monotonic */
    char err[ERR_LEN];
} capture_state;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* "path/stories260K.bin" -> "stories260K" */
static void model_name(const char *path, char *out, size_t len)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    snprintf(out, len, "%s", b);
    char *dot = strrchr(out, '.');
    if (dot && dot != out)
        *dot = '\0';
}

/* Step 2. */
static int create_trace(capture_state *st)
{
    const capture_opts *o = st->o;
    const kv_model_config *c = st->cfg;
    kv_trace_info info;
    memset(&info, 0, sizeof info);
    info.version = KV_TRACE_VERSION;
    model_name(o->model_path, info.model, sizeof info.model);
    info.n_layers = c->n_layers;
    info.n_heads = c->n_heads;
    info.n_kv_heads = c->n_kv_heads;
    info.head_dim = c->head_size;
    info.n_tokens = o->n_tokens;
    info.prefill_len = o->prefill_len;
    info.source = o->with_attn ? KV_SOURCE_ATTN : KV_SOURCE_QK;
    info.softmax_scale = 1.0 / sqrt((double)c->head_size);
    info.dtype_bytes = 2;
    /* float32 storage: rows recomputed from q/k then match the forward pass to ~1e-7. */
    return kv_trace_create(o->out_path, &info, 0, &st->w, st->err, sizeof st->err);
}

/* Step 3, --attn: buffers the rows of position t; writes the block when it is full. */
static int buffer_attn(capture_state *st, int t)
{
    const kv_model_config *c = st->cfg;
    size_t T = (size_t)st->o->n_tokens, blk = (size_t)ATTN_BLOCK;
    int t0 = t - t % ATTN_BLOCK;
    for (int l = 0; l < c->n_layers; l++)
        for (int h = 0; h < c->n_heads; h++) {
            float *rows = st->attn_blk + ((size_t)l * (size_t)c->n_heads + (size_t)h) * blk * T;
            memcpy(rows + (size_t)(t - t0) * T, kv_model_attn(st->run, l, h),
                   (size_t)(t + 1) * sizeof(float));
        }
    if ((t + 1) % ATTN_BLOCK != 0 && t + 1 != st->o->n_tokens)
        return 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int h = 0; h < c->n_heads; h++) {
            const float *rows =
                st->attn_blk + ((size_t)l * (size_t)c->n_heads + (size_t)h) * blk * T;
            if (kv_trace_write_attn_rows(st->w, l, h, t0, t + 1, rows, st->err,
                                         sizeof st->err))
                return 1;
        }
    return 0;
}

static void report_progress(const capture_state *st, int t)
{
    int T = st->o->n_tokens;
    if ((t + 1) % 64 != 0 && t + 1 != T)
        return;
    double dt = now_s() - st->t_start;
    if (dt > 1.0)
        fprintf(stderr, "capture: %d/%d positions (%.1f s)\n", t + 1, T, dt);
}

/* Step 3. */
static int generate(capture_state *st)
{
    const capture_opts *o = st->o;
    int T = o->n_tokens;
    st->tokens[0] = BOS_ID;
    for (int i = 0; i < o->n_prompt; i++)
        st->tokens[1 + i] = o->prompt[i];
    /* The given positions (BOS and prompt ids, all but the last) go through the weights
     * together; bit-identical to stepping them one by one (model.h). --attn steps every
     * position, since it stores each position's rows. */
    int t = 0;
    int n_given = o->with_attn ? 0 : (1 + o->n_prompt < T ? 1 + o->n_prompt : T) - 1;
    if (n_given > 0) {
        if (kv_model_prefill(st->run, st->tokens, n_given, 0, st->err, sizeof st->err))
            return 1;
        t = n_given;
    }
    for (; t < T; t++) {
        if (kv_model_step(st->run, st->tokens[t], t, st->err, sizeof st->err))
            return 1;
        if (o->with_attn && buffer_attn(st, t))
            return 1;
        if (t + 1 < T && t + 1 > o->n_prompt)
            st->tokens[t + 1] = sample_next(&st->smp, kv_model_logits(st->run),
                                            o->temperature, o->top_p);
        report_progress(st, t);
    }
    return 0;
}

/* Step 4: the prompt ids as given, BOS included, e.g. "1,23,45". */
static int prompt_string(const capture_opts *o, char **out)
{
    size_t len = 16 + 12 * (size_t)o->n_prompt;
    char *s = malloc(len);
    if (!s)
        return -1;
    size_t n = (size_t)snprintf(s, len, "%d", BOS_ID);
    for (int i = 0; i < o->n_prompt; i++)
        n += (size_t)snprintf(s + n, len - n, ",%d", o->prompt[i]);
    *out = s;
    return 0;
}

/* Step 4. */
static int write_results(capture_state *st)
{
    const capture_opts *o = st->o;
    const kv_model_config *c = st->cfg;
    char *err = st->err, name[KV_TRACE_MODEL_LEN];
    size_t el = sizeof st->err;
    if (kv_trace_write_tokens(st->w, st->tokens, err, el))
        return 1;
    for (int l = 0; l < c->n_layers; l++)
        if (kv_trace_write_qk(st->w, l, kv_model_q(st->run, l), kv_model_k(st->run, l),
                              kv_model_v(st->run, l), err, el))
            return 1;
    char *prompt = NULL;
    if (prompt_string(o, &prompt)) {
        snprintf(err, el, "out of memory");
        return 1;
    }
    const char *b = strrchr(o->model_path, '/');
    snprintf(name, sizeof name, "%s", b ? b + 1 : o->model_path);
    int rc = kv_trace_write_attr_string(st->w, "generator", "kvsim capture", err, el) ||
             kv_trace_write_attr_string(st->w, "checkpoint", name, err, el) ||
             kv_trace_write_attr_string(st->w, "checkpoint_sha256", kv_model_sha256(st->model),
                                        err, el) ||
             kv_trace_write_attr_int(st->w, "checkpoint_seq_len", c->seq_len, err, el) ||
             kv_trace_write_attr_double(st->w, "temperature", o->temperature, err, el) ||
             kv_trace_write_attr_double(st->w, "top_p", o->top_p, err, el) ||
             kv_trace_write_attr_int(st->w, "seed", (long long)o->seed, err, el) ||
             kv_trace_write_attr_string(st->w, "prompt_ids", prompt, err, el);
    free(prompt);
    return rc ? 1 : 0;
}

static int alloc_state(capture_state *st)
{
    const kv_model_config *c = st->cfg;
    int T = st->o->n_tokens;
    if (kv_model_run_create(st->model, T, &st->run, st->err, sizeof st->err))
        return 1;
    st->tokens = calloc((size_t)T, sizeof(int32_t));
    if (st->o->with_attn)
        st->attn_blk = calloc((size_t)c->n_layers * (size_t)c->n_heads * ATTN_BLOCK * (size_t)T,
                              sizeof(float));
    if (!st->tokens || (st->o->with_attn && !st->attn_blk) ||
        sampler_init(&st->smp, c->vocab_size, st->o->seed)) {
        snprintf(st->err, sizeof st->err, "out of memory for a capture of %d positions", T);
        return 1;
    }
    return 0;
}

static int capture(const capture_opts *o, const kv_model *model)
{
    capture_state st;
    memset(&st, 0, sizeof st);
    st.o = o;
    st.model = model;
    st.cfg = kv_model_get_config(model);
    st.t_start = now_s();
    int rc = alloc_state(&st) || create_trace(&st) || generate(&st) || write_results(&st);
    char ferr[ERR_LEN] = "";
    int frc = kv_trace_finish(st.w, ferr, sizeof ferr);
    if (!rc && frc) {
        snprintf(st.err, sizeof st.err, "%s", ferr);
        rc = 1;
    }
    if (rc) {
        fprintf(stderr, "capture: %s\n", st.err);
        if (st.w)
            unlink(o->out_path); /* no half-written trace left behind */
    } else {
        fprintf(stderr, "capture: wrote %s: %d positions (prompt %d), %s, %.2f s\n",
                o->out_path, o->n_tokens, o->prefill_len, o->with_attn ? "qk + attn" : "qk",
                now_s() - st.t_start);
    }
    kv_model_run_free(st.run);
    free(st.tokens);
    free(st.attn_blk);
    sampler_free(&st.smp);
    return rc ? 1 : 0;
}

int kv_cmd_capture(int argc, char **argv)
{
    capture_opts o = {
        .n_tokens = DEFAULT_TOKENS,
        .prefill_len = DEFAULT_PREFILL,
        .temperature = DEFAULT_TEMPERATURE,
        .top_p = DEFAULT_TOP_P,
        .seed = DEFAULT_SEED,
    };
    /* 1. */
    int rc = parse_args(argc, argv, &o);
    if (rc != 0) {
        free(o.prompt);
        return rc < 0 ? 0 : rc;
    }
    kv_model *model = NULL;
    char err[ERR_LEN];
    if (kv_model_load(o.model_path, &model, err, sizeof err)) {
        fprintf(stderr, "capture: %s\n", err);
        free(o.prompt);
        return 1;
    }
    rc = check_against_model(&o, kv_model_get_config(model));
    /* 2-4. */
    if (rc == 0)
        rc = capture(&o, model);
    kv_model_free(model);
    free(o.prompt);
    return rc;
}
