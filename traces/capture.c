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

#include "traces/capture.h"
#include "traces/model.h"
#include "traces/tokenizer.h"
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
    if (o->stop_at_bos && o->with_attn)
        return capture_fail(err, err_len, KV_EUSAGE, "--stop-at-bos and --attn cannot "
                            "be combined (the rows are written before the length is known)");
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
    const kv_capture_opts *o;
    const kv_model *model;
    const kv_model_config *cfg;
    kv_model_run *run;
    kv_trace_writer *w;
    sampler smp;
    const kv_tokenizer *tok; /* NULL: ids only */
    int n_tokens;     /* T written: o->n_tokens, or fewer when stop_at_bos ends early */
    int stopped_at_bos;
    int32_t *tokens;  /* [o->n_tokens] */
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
    info.n_tokens = st->n_tokens;
    info.prefill_len = o->prefill_len;
    info.source = o->with_attn ? KV_SOURCE_ATTN : KV_SOURCE_QK;
    info.softmax_scale = 1.0 / sqrt((double)c->head_size);
    info.dtype_bytes = 2;
    /* float32 storage: rows recomputed from q/k then match the forward pass to ~1e-7;
     * float16 halves the bytes (traces/data/README.md measures what that costs). */
    return kv_trace_create(o->out_path, &info, o->store_f16, &st->w, st->err, sizeof st->err);
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
        if (t + 1 < T && t + 1 > o->n_prompt) {
            st->tokens[t + 1] = sample_next(&st->smp, kv_model_logits(st->run),
                                            o->temperature, o->top_p);
            /* a BOS after the first decode position ends the trace before it */
            if (o->stop_at_bos && st->tokens[t + 1] == KV_CAPTURE_BOS_ID &&
                t + 1 > o->prefill_len) {
                st->n_tokens = t + 1;
                st->stopped_at_bos = 1;
                return 0;
            }
        }
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

/* Copies n_heads record rows [h][cap][hs] of the first T positions into out [h][T][hs]. */
static void first_positions(const float *rec, int n_heads, int cap, int T, int hs, float *out)
{
    for (int h = 0; h < n_heads; h++)
        memcpy(out + (size_t)h * (size_t)T * (size_t)hs,
               rec + (size_t)h * (size_t)cap * (size_t)hs, (size_t)T * (size_t)hs * sizeof(float));
}

/* Step 4: every layer's q, k, v; the first st->n_tokens positions of the records. */
static int write_records(capture_state *st)
{
    const kv_model_config *c = st->cfg;
    int T = st->n_tokens, cap = st->o->n_tokens, hs = c->head_size;
    float *q = NULL, *k = NULL, *v = NULL;
    if (T < cap) {
        q = malloc((size_t)c->n_heads * (size_t)T * (size_t)hs * sizeof(float));
        k = malloc((size_t)c->n_kv_heads * (size_t)T * (size_t)hs * sizeof(float));
        v = malloc((size_t)c->n_kv_heads * (size_t)T * (size_t)hs * sizeof(float));
        if (!q || !k || !v) {
            free(q), free(k), free(v);
            snprintf(st->err, sizeof st->err, "out of memory for the records");
            return 1;
        }
    }
    int rc = 0;
    for (int l = 0; l < c->n_layers && !rc; l++) {
        const float *ql = kv_model_q(st->run, l), *kl = kv_model_k(st->run, l),
                    *vl = kv_model_v(st->run, l);
        if (T < cap) {
            first_positions(ql, c->n_heads, cap, T, hs, q);
            first_positions(kl, c->n_kv_heads, cap, T, hs, k);
            first_positions(vl, c->n_kv_heads, cap, T, hs, v);
            ql = q, kl = k, vl = v;
        }
        rc = kv_trace_write_qk(st->w, l, ql, kl, vl, st->err, sizeof st->err) != 0;
    }
    free(q), free(k), free(v);
    return rc;
}

/* Step 4, with a tokenizer: /token_text, the prompt's text and the tokenizer's identity. */
static int write_text(capture_state *st)
{
    const kv_capture_opts *o = st->o;
    int T = st->n_tokens;
    char *err = st->err, name[KV_TRACE_MODEL_LEN];
    size_t el = sizeof st->err;
    char (*texts)[KV_TOKEN_TEXT_MAX] = malloc((size_t)T * sizeof *texts);
    const char **ptrs = malloc((size_t)T * sizeof *ptrs);
    int *prompt = malloc((size_t)(1 + o->n_prompt) * sizeof *prompt);
    char *prompt_text = NULL;
    int rc = !texts || !ptrs || !prompt;
    if (rc)
        snprintf(err, el, "out of memory for the token texts");
    for (int t = 0; !rc && t < T; t++) {
        kv_tokenizer_token_text(st->tok, st->tokens[t], texts[t], sizeof texts[t]);
        ptrs[t] = texts[t];
    }
    if (!rc) {
        prompt[0] = KV_CAPTURE_BOS_ID;
        if (o->n_prompt > 0)
            memcpy(prompt + 1, o->prompt, (size_t)o->n_prompt * sizeof *prompt);
        rc = kv_tokenizer_decode(st->tok, prompt, 1 + o->n_prompt, &prompt_text, err, el) != 0;
    }
    const char *b = strrchr(o->tokenizer_path, '/');
    snprintf(name, sizeof name, "%s", b ? b + 1 : o->tokenizer_path);
    rc = rc || kv_trace_write_token_text(st->w, ptrs, err, el) ||
         kv_trace_write_attr_string(st->w, "tokenizer", name, err, el) ||
         kv_trace_write_attr_string(st->w, "tokenizer_sha256", kv_tokenizer_sha256(st->tok),
                                    err, el) ||
         kv_trace_write_attr_string(st->w, "prompt_text", prompt_text, err, el);
    free(texts);
    free(ptrs);
    free(prompt);
    free(prompt_text);
    return rc;
}

/* Step 4. */
static int write_results(capture_state *st)
{
    const kv_capture_opts *o = st->o;
    const kv_model_config *c = st->cfg;
    char *err = st->err, name[KV_TRACE_MODEL_LEN];
    size_t el = sizeof st->err;
    if (kv_trace_write_tokens(st->w, st->tokens, err, el) || write_records(st))
        return 1;
    if (st->tok && write_text(st))
        return 1;
    if (o->stop_at_bos && kv_trace_write_attr_int(st->w, "stop_at_bos", 1, err, el))
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
    /* the trace is created first, so an unwritable path fails early, unless its length
     * is known only once generation stops */
    int late = st->o->stop_at_bos;
    if (!late && create_trace(st))
        return KV_EIO;
    st->created = !late;
    int rc = generate(st);
    if (!rc && late) {
        if (create_trace(st))
            return KV_EIO;
        st->created = 1;
    }
    rc = rc || write_results(st);
    char ferr[KV_CAPTURE_ERR_LEN] = "";
    int frc = kv_trace_finish(st->w, ferr, sizeof ferr);
    st->w = NULL;
    if (!rc && frc) {
        snprintf(st->err, sizeof st->err, "%s", ferr);
        rc = 1;
    }
    return rc ? KV_EIO : 0;
}

/* Step 1, text: loads the tokenizer into *tok (its vocabulary must be the checkpoint's)
 * and encodes o->prompt_text into *ids; eff gets the prompt and the prompt-long prefill. */
static int load_text(const kv_capture_opts *o, const kv_model_config *c, kv_tokenizer **tok,
                     int **ids, kv_capture_opts *eff, char *err, size_t err_len)
{
    char terr[KV_CAPTURE_ERR_LEN];
    if (o->prompt_text && !o->tokenizer_path)
        return capture_fail(err, err_len, KV_EUSAGE, "--prompt needs --tokenizer FILE");
    if (!o->tokenizer_path)
        return 0;
    int rc = kv_tokenizer_load(o->tokenizer_path, tok, terr, sizeof terr);
    if (rc)
        return capture_fail(err, err_len, rc, "%s", terr);
    if (kv_tokenizer_vocab_size(*tok) != c->vocab_size)
        return capture_fail(err, err_len, KV_EUSAGE, "--tokenizer %s has %d tokens, the "
                            "checkpoint's vocabulary %d: not this model's tokenizer",
                            o->tokenizer_path, kv_tokenizer_vocab_size(*tok), c->vocab_size);
    if (o->prompt_text) {
        int n = 0;
        if (kv_tokenizer_encode(*tok, o->prompt_text, strlen(o->prompt_text), ids, &n, terr,
                                sizeof terr))
            return capture_fail(err, err_len, KV_ENOMEM, "%s", terr);
        eff->prompt = *ids;
        eff->n_prompt = n;
    }
    return 0;
}

int kv_capture(const kv_capture_opts *o, kv_capture_result *res, char *err, size_t err_len)
{
    /* 1. */
    kv_model *model = NULL;
    kv_tokenizer *tok = NULL;
    int *ids = NULL;
    char merr[KV_CAPTURE_ERR_LEN];
    int rc = kv_model_load(o->model_path, &model, merr, sizeof merr);
    if (rc)
        return capture_fail(err, err_len, rc, "%s", merr);
    kv_capture_opts eff = *o;
    rc = load_text(o, kv_model_get_config(model), &tok, &ids, &eff, err, err_len);
    if (!rc && eff.prefill_len == 0)
        eff.prefill_len = 1 + eff.n_prompt;
    if (!rc)
        rc = kv_capture_check(&eff, kv_model_get_config(model), err, err_len);
    if (rc) {
        kv_tokenizer_free(tok);
        free(ids);
        kv_model_free(model);
        return rc;
    }
    /* 2-4. */
    capture_state st;
    memset(&st, 0, sizeof st);
    st.o = &eff;
    st.model = model;
    st.cfg = kv_model_get_config(model);
    st.tok = tok;
    st.n_tokens = eff.n_tokens;
    st.t_start = now_s();
    rc = capture_run(&st);
    if (rc) {
        capture_fail(err, err_len, rc, "%s", st.err);
        if (st.created)
            unlink(o->out_path); /* no half-written trace left behind */
    } else if (res) {
        *res = (kv_capture_result){.n_tokens = st.n_tokens, .prefill_len = eff.prefill_len,
                                   .n_prompt = eff.n_prompt,
                                   .stopped_at_bos = st.stopped_at_bos};
    }
    kv_model_run_free(st.run);
    free(st.tokens);
    free(st.attn_blk);
    sampler_free(&st.smp);
    kv_tokenizer_free(tok);
    free(ids);
    kv_model_free(model);
    return rc;
}
