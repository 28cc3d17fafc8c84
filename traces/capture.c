/*
 * capture.c - run a trained checkpoint and record its attention as a trace (capture.h).
 *
 * Steps (the code carries the same labels):
 *   1. load the checkpoint (traces/model.h) and check the options against it (trained
 *      context, vocabulary, prompt length);
 *   2. create the trace (kvtrace v1, traces/trace.h) so an unwritable path fails early;
 *   3. for t = 0..T-1: token t is BOS (t = 0), a prompt id, or the sample drawn from the
 *      logits of step t-1 (greedy at temperature 0, else temperature + top-p from a
 *      seeded GSL mt19937); run the forward pass; with_attn: buffer the softmax rows
 *      of the step and write them a block of positions at a time;
 *   4. write /tokens, every layer's q, k and v, and the provenance attributes; close.
 *
 * Everything the datasets hold follows from the options and the checkpoint bytes: the
 * forward pass is bit-reproducible (model.h) and the sampler is seeded, so the same
 * options give identical datasets. The command line is sim/cmd_capture.c.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <gsl/gsl_rng.h>
#include <gsl/gsl_sort.h>

#include "traces/capture.h"
#include "traces/model.h"
#include "traces/trace.h"

#define ATTN_BLOCK 128 /* rows buffered per write: the writer's (1, 128, 128) tile height */

void kv_capture_defaults(kv_capture_opts *o)
{
    *o = (kv_capture_opts){
        .n_tokens = KV_CAPTURE_DEFAULT_TOKENS,
        .prefill_len = KV_CAPTURE_DEFAULT_PREFILL,
        .temperature = KV_CAPTURE_DEFAULT_TEMPERATURE,
        .top_p = KV_CAPTURE_DEFAULT_TOP_P,
        .seed = KV_CAPTURE_DEFAULT_SEED,
    };
}

/* Writes printf-style fmt into err and returns code. */
static int capture_fail(char *err, size_t err_len, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int capture_fail(char *err, size_t err_len, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (err && err_len)
        vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
    return code;
}

/* ------------------------------------------------------------ step 1: the options */

int kv_capture_check(const kv_capture_opts *o, const kv_model_config *c, char *err,
                     size_t err_len)
{
    if (o->n_tokens > c->seq_len && !o->allow_extrapolation)
        return capture_fail(err, err_len, KV_EUSAGE, "--tokens %d exceeds the "
                            "checkpoint's trained context (seq_len %d); pass "
                            "--allow-extrapolation to run past it", o->n_tokens, c->seq_len);
    if (o->prefill_len >= o->n_tokens)
        return capture_fail(err, err_len, KV_EUSAGE, "--prefill %d must be below "
                            "--tokens %d (a trace needs at least one decode position)",
                            o->prefill_len, o->n_tokens);
    if (1 + o->n_prompt > o->prefill_len)
        return capture_fail(err, err_len, KV_EUSAGE, "BOS plus %d prompt ids is %d "
                            "positions, more than --prefill %d", o->n_prompt, 1 + o->n_prompt,
                            o->prefill_len);
    for (int i = 0; i < o->n_prompt; i++)
        if (o->prompt[i] >= c->vocab_size)
            return capture_fail(err, err_len, KV_EUSAGE, "--prompt-ids: id %d is "
                                "outside the vocabulary 0..%d", o->prompt[i],
                                c->vocab_size - 1);
    return 0;
}

/* ------------------------------------------------------------ step 3: sampling */

typedef struct {
    gsl_rng *rng;
    double *probs;  /* [vocab] */
    size_t *order;  /* [vocab], ascending probability */
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

/*
 * Temperature + top-p: p = softmax(logits / temperature) in double; the nucleus is the
 * shortest run of most likely tokens (GSL heapsort order) whose mass reaches top_p; one
 * uniform draw picks within the nucleus in proportion to p.
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
    gsl_sort_index(s->order, s->probs, 1, (size_t)n);
    double mass = 0.0;
    int n_nucleus = 0;
    while (n_nucleus < n && mass < top_p)
        mass += s->probs[s->order[n - 1 - n_nucleus++]];
    double u = gsl_rng_uniform(s->rng) * mass, acc = 0.0;
    for (int r = 0; r < n_nucleus; r++) {
        size_t id = s->order[n - 1 - r];
        acc += s->probs[id];
        if (u < acc)
            return (int)id;
    }
    return (int)s->order[n - n_nucleus]; /* u rounded onto the total: the last member */
}

static void sampler_free(sampler *s)
{
    gsl_rng_free(s->rng);
    free(s->probs);
    free(s->order);
}

static int sampler_init(sampler *s, int n_vocab, unsigned long seed)
{
    s->n_vocab = n_vocab;
    s->rng = gsl_rng_alloc(gsl_rng_mt19937);
    s->probs = malloc((size_t)n_vocab * sizeof(double));
    s->order = malloc((size_t)n_vocab * sizeof(size_t));
    if (!s->rng || !s->probs || !s->order)
        return -1; /* the caller frees what was allocated */
    gsl_rng_set(s->rng, seed);
    return 0;
}

/* ------------------------------------------------------------ steps 2-4: the capture */

typedef struct {
    const kv_capture_opts *o;
    const kv_model *model;
    const kv_model_config *cfg;
    kv_model_run *run;
    kv_trace_writer *w;
    sampler smp;
    int32_t *tokens;  /* [T] */
    float *attn_blk;  /* --attn: [n_layers][n_heads][ATTN_BLOCK][T] */
    double t_start;   /* seconds, monotonic */
    int created;      /* the trace file exists: remove it on failure */
    char err[KV_CAPTURE_ERR_LEN];
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
    const kv_capture_opts *o = st->o;
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
    if (!st->o->progress)
        return;
    double dt = now_s() - st->t_start;
    if (dt > 1.0)
        fprintf(stderr, "capture: %d/%d positions (%.1f s)\n", t + 1, T, dt);
}

/* Step 3. */
static int generate(capture_state *st)
{
    const kv_capture_opts *o = st->o;
    int T = o->n_tokens;
    st->tokens[0] = KV_CAPTURE_BOS_ID;
    for (int i = 0; i < o->n_prompt; i++)
        st->tokens[1 + i] = o->prompt[i];
    for (int t = 0; t < T; t++) {
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
static int prompt_string(const kv_capture_opts *o, char **out)
{
    size_t len = 16 + 12 * (size_t)o->n_prompt;
    char *s = malloc(len);
    if (!s)
        return -1;
    size_t n = (size_t)snprintf(s, len, "%d", KV_CAPTURE_BOS_ID);
    for (int i = 0; i < o->n_prompt; i++)
        n += (size_t)snprintf(s + n, len - n, ",%d", o->prompt[i]);
    *out = s;
    return 0;
}

/* Step 4. */
static int write_results(capture_state *st)
{
    const kv_capture_opts *o = st->o;
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

/* Steps 2-4 on a loaded, checked model; 0, KV_ENOMEM or KV_EIO with st->err set. */
static int capture_run(capture_state *st)
{
    if (alloc_state(st))
        return KV_ENOMEM;
    if (create_trace(st))
        return KV_EIO;
    st->created = 1;
    int rc = generate(st) || write_results(st);
    char ferr[KV_CAPTURE_ERR_LEN] = "";
    int frc = kv_trace_finish(st->w, ferr, sizeof ferr);
    st->w = NULL;
    if (!rc && frc) {
        snprintf(st->err, sizeof st->err, "%s", ferr);
        rc = 1;
    }
    return rc ? KV_EIO : 0;
}

int kv_capture(const kv_capture_opts *o, char *err, size_t err_len)
{
    /* 1. */
    kv_model *model = NULL;
    char merr[KV_CAPTURE_ERR_LEN];
    int rc = kv_model_load(o->model_path, &model, merr, sizeof merr);
    if (rc)
        return capture_fail(err, err_len, rc, "%s", merr);
    rc = kv_capture_check(o, kv_model_get_config(model), err, err_len);
    if (rc) {
        kv_model_free(model);
        return rc;
    }
    /* 2-4. */
    capture_state st;
    memset(&st, 0, sizeof st);
    st.o = o;
    st.model = model;
    st.cfg = kv_model_get_config(model);
    st.t_start = now_s();
    rc = capture_run(&st);
    if (rc) {
        capture_fail(err, err_len, rc, "%s", st.err);
        if (st.created)
            unlink(o->out_path); /* no half-written trace left behind */
    }
    kv_model_run_free(st.run);
    free(st.tokens);
    free(st.attn_blk);
    sampler_free(&st.smp);
    kv_model_free(model);
    return rc;
}
