/*
 * gen.c - the synthetic trace generator (construction in gen.h).
 *
 * One table (kv_gen_options) describes every parameter: its option name, type, range,
 * unit and help. Range checks and the gen_* provenance attributes come from it here;
 * `kvsim gen` (sim/cmd_gen.c) builds its parsing and --help from the same table.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <gsl/gsl_cblas.h>
#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>

#include "traces/gen.h"
#include "traces/trace_int.h"

#define KV_GEN_BLOCK 128     /* attn rows computed and written per block (one tile-row) */
#define KV_GEN_MAX_TOKENS (1 << 20)
#define KV_GEN_MAX_DIM 4096

void kv_gen_defaults(kv_gen_params *p)
{
    *p = (kv_gen_params){
        .seed = 1, .n_layers = 2, .n_heads = 8, .n_kv_heads = 4, .head_dim = 64,
        .n_tokens = 1024, .prefill_len = 256, .n_sinks = 4, .sink_strength = 5,
        .locality = 3, .locality_span = 32, .n_heavy_hitters = 8, .heavy_strength = 4,
        .period = 0, .period_strength = 6, .noise = 1, .head_spread = 0.5, .progress = 0,
    };
}

/* ------------------------------------------------------------ parameter table */

const kv_gen_option kv_gen_options[] = {
#define F(field) offsetof(kv_gen_params, field)
    {"seed", KV_GEN_OPT_SEED, F(seed), 0, 4294967295.0, "", "random seed (mt19937)"},
    {"layers", KV_GEN_OPT_INT, F(n_layers), 1, 4096, "", "layers"},
    {"heads", KV_GEN_OPT_INT, F(n_heads), 1, 4096, "", "query heads per layer"},
    {"kv-heads", KV_GEN_OPT_INT, F(n_kv_heads), 1, 4096, "",
     "KV heads per layer (divides --heads)"},
    {"head-dim", KV_GEN_OPT_INT, F(head_dim), 4, KV_GEN_MAX_DIM, "elements",
     "elements per query/key vector"},
    {"tokens", KV_GEN_OPT_INT, F(n_tokens), 1, KV_GEN_MAX_TOKENS, "tokens", "trace length T"},
    {"prefill", KV_GEN_OPT_INT, F(prefill_len), 1, KV_GEN_MAX_TOKENS, "tokens",
     "prompt length P, 1..T"},
    {"sinks", KV_GEN_OPT_INT, F(n_sinks), 0, KV_GEN_MAX_TOKENS, "tokens",
     "attention sinks: positions 0..N-1"},
    {"sink-strength", KV_GEN_OPT_REAL, F(sink_strength), 0, 100, "nats",
     "logit every query adds on a sink"},
    {"locality", KV_GEN_OPT_REAL, F(locality), 0, 100, "nats",
     "recency logit on the query's own position"},
    {"locality-span", KV_GEN_OPT_INT, F(locality_span), 1, KV_GEN_MAX_TOKENS, "tokens",
     "distance over which locality falls by 1/e"},
    {"heavy-hitters", KV_GEN_OPT_INT, F(n_heavy_hitters), 0, KV_GEN_MAX_TOKENS, "tokens",
     "heavy hitters per (layer, KV head)"},
    {"heavy-strength", KV_GEN_OPT_REAL, F(heavy_strength), 0, 100, "nats",
     "mean logit on a heavy hitter"},
    {"period", KV_GEN_OPT_INT, F(period), 0, KV_GEN_MAX_TOKENS, "tokens",
     "query t recalls key t-N (0: off)"},
    {"period-strength", KV_GEN_OPT_REAL, F(period_strength), 0, 100, "nats",
     "logit of that recall"},
    {"noise", KV_GEN_OPT_REAL, F(noise), 0, 100, "nats", "std of each pair's random logit"},
    {"head-spread", KV_GEN_OPT_REAL, F(head_spread), 0, 5, "",
     "log-std of per-query-head pattern weights"},
#undef F
};
const size_t kv_gen_n_options = sizeof kv_gen_options / sizeof kv_gen_options[0];

double kv_gen_option_get(const kv_gen_params *p, const kv_gen_option *o)
{
    const char *f = (const char *)p + o->offset;
    switch (o->type) {
    case KV_GEN_OPT_SEED: return (double)*(const unsigned long *)(const void *)f;
    case KV_GEN_OPT_INT: return *(const int *)(const void *)f;
    default: return *(const double *)(const void *)f;
    }
}

void kv_gen_option_set(kv_gen_params *p, const kv_gen_option *o, double v)
{
    char *f = (char *)p + o->offset;
    if (o->type == KV_GEN_OPT_SEED)
        *(unsigned long *)(void *)f = (unsigned long)v;
    else if (o->type == KV_GEN_OPT_INT)
        *(int *)(void *)f = (int)v;
    else
        *(double *)(void *)f = v;
}

int kv_gen_check(const kv_gen_params *p, char *err, size_t err_len)
{
    for (size_t i = 0; i < kv_gen_n_options; i++) {
        const kv_gen_option *o = &kv_gen_options[i];
        double v = kv_gen_option_get(p, o);
        if (!(v >= o->min && v <= o->max))
            return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "--%s = %g is outside %g..%g",
                                 o->name, v, o->min, o->max);
    }
    if (p->n_heads % p->n_kv_heads != 0)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "--heads = %d is not a multiple of "
                             "--kv-heads = %d", p->n_heads, p->n_kv_heads);
    if (p->prefill_len > p->n_tokens)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "--prefill = %d exceeds --tokens = "
                             "%d", p->prefill_len, p->n_tokens);
    if (p->n_sinks + p->n_heavy_hitters > p->n_tokens)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "--sinks + --heavy-hitters = %d "
                             "exceeds --tokens = %d", p->n_sinks + p->n_heavy_hitters,
                             p->n_tokens);
    if (p->period >= p->n_tokens)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "--period = %d must be below "
                             "--tokens = %d", p->period, p->n_tokens);
    return 0;
}

/* ------------------------------------------------------------ q and k of one layer */

/* An independent 32-bit seed per (seed, layer): splitmix64's finaliser. */
static unsigned long layer_seed(unsigned long seed, int layer)
{
    uint64_t x = (uint64_t)seed * 0x9e3779b97f4a7c15ull + (uint64_t)layer + 1;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return (unsigned long)((x ^ (x >> 31)) & 0xffffffffu);
}

/* The shape of the construction (gen.h): subspace sizes and the logit-unit scale. */
typedef struct {
    int T, D, m_loc, m_content;
    double c;            /* stored = c * logit-unit vector, c = softmax_scale^(-1/2) */
    double sink, heavy, loc;  /* square roots of the strengths */
} gen_shape;

static gen_shape shape_of(const kv_gen_params *p)
{
    gen_shape s;
    s.T = p->n_tokens;
    s.D = p->head_dim;
    s.m_loc = (s.D - 2) / 2;
    s.m_content = s.D - 2 - s.m_loc;
    s.c = pow((double)s.D, 0.25);
    s.sink = sqrt(p->sink_strength);
    s.heavy = sqrt(p->heavy_strength);
    s.loc = sqrt(p->locality);
    return s;
}

/* Step 1: the keys of one KV head (sinks, locality walk, content) and its heavy hitters. */
static void gen_keys(const kv_gen_params *p, const gen_shape *s, gsl_rng *r, float *k,
                     int *heavy, int *pool)
{
    const double rho = exp(-1.0 / p->locality_span), tau = sqrt(1 - rho * rho);
    const double u_sd = 1 / sqrt((double)s->m_loc), z_sd = 1 / sqrt((double)s->m_content);
    double u[KV_GEN_MAX_DIM];
    for (int t = 0; t < s->T; t++) {
        float *kt = k + (size_t)t * (size_t)s->D;
        kt[0] = (float)(t < p->n_sinks ? s->c * s->sink : 0);
        kt[1] = 0;
        for (int i = 0; i < s->m_loc; i++) {
            double step = gsl_ran_gaussian_ziggurat(r, u_sd);
            u[i] = t == 0 ? step : rho * u[i] + tau * step;   /* stationary: E|u|^2 = 1 */
            kt[2 + i] = (float)(s->c * s->loc * u[i]);
        }
        for (int i = 0; i < s->m_content; i++)
            kt[2 + s->m_loc + i] = (float)(s->c * gsl_ran_gaussian_ziggurat(r, z_sd));
    }
    int n_pool = s->T - p->n_sinks;
    for (int i = 0; i < n_pool; i++)
        pool[i] = p->n_sinks + i;
    gsl_ran_choose(r, heavy, (size_t)p->n_heavy_hitters, pool, (size_t)n_pool, sizeof(int));
    for (int i = 0; i < p->n_heavy_hitters; i++)
        k[(size_t)heavy[i] * (size_t)s->D + 1] = (float)(s->c * s->heavy
                                                         * (0.5 + gsl_rng_uniform(r)));
}

/* Step 2: the queries of one query head, given its KV head's keys kg. */
static void gen_queries(const kv_gen_params *p, const gen_shape *s, gsl_rng *r,
                        const float *kg, float *q)
{
    double w_sink = exp(p->head_spread * gsl_ran_gaussian_ziggurat(r, 1));
    double w_heavy = exp(p->head_spread * gsl_ran_gaussian_ziggurat(r, 1));
    double w_loc = exp(p->head_spread * gsl_ran_gaussian_ziggurat(r, 1));
    double w_period = exp(p->head_spread * gsl_ran_gaussian_ziggurat(r, 1));
    const int c0 = 2 + s->m_loc;
    for (int t = 0; t < s->T; t++) {
        float *qt = q + (size_t)t * (size_t)s->D;
        const float *kt = kg + (size_t)t * (size_t)s->D;
        /* "most queries" look for heavy hitters: a weight around 1, rarely near 0 */
        double a = 1 + 0.25 * gsl_ran_gaussian_ziggurat(r, 1);
        qt[0] = (float)(s->c * w_sink * s->sink);
        qt[1] = (float)(s->c * w_heavy * s->heavy * (a > 0 ? a : 0));
        for (int i = 2; i < c0; i++)
            qt[i] = (float)(w_loc * kt[i]);                  /* c * w_loc * sqrt(loc) * u_t */
        const float *kr = p->period > 0 && t >= p->period
                          ? kg + (size_t)(t - p->period) * (size_t)s->D : NULL;
        for (int i = c0; i < s->D; i++) {
            double v = s->c * p->noise * gsl_ran_gaussian_ziggurat(r, 1);
            if (kr)
                v += w_period * p->period_strength * kr[i];  /* c * strength * z_{t-period} */
            qt[i] = (float)v;
        }
    }
}

int kv_gen_layer(const kv_gen_params *p, int layer, float *q, float *k, int *heavy,
                 char *err, size_t err_len)
{
    const gen_shape s = shape_of(p);
    const int group = p->n_heads / p->n_kv_heads;
    const size_t per_head = (size_t)s.T * (size_t)s.D;
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    int *pool = malloc((size_t)s.T * sizeof(int));
    int *hh = malloc(((size_t)p->n_heavy_hitters + 1) * sizeof(int));
    if (!r || !pool || !hh) {
        if (r)
            gsl_rng_free(r);
        free(pool);
        free(hh);
        return kv_trace_fail(err, err_len, KV_ETRACE_NOMEM, "kvsim gen: out of memory");
    }
    gsl_rng_set(r, layer_seed(p->seed, layer));
    for (int g = 0; g < p->n_kv_heads; g++) {
        gen_keys(p, &s, r, k + (size_t)g * per_head, hh, pool);
        if (heavy)
            memcpy(heavy + (size_t)g * (size_t)p->n_heavy_hitters, hh,
                   (size_t)p->n_heavy_hitters * sizeof(int));
    }
    for (int h = 0; h < p->n_heads; h++)
        gen_queries(p, &s, r, k + (size_t)(h / group) * per_head, q + (size_t)h * per_head);
    gsl_rng_free(r);
    free(pool);
    free(hh);
    return 0;
}

/* ------------------------------------------------------------ attn rows */

/*
 * Rows a..b-1 of one query head, as FORMAT.md defines them: logits in double (DGEMM over
 * the block) rounded to float32, max subtracted, exponentials in float32, the normaliser
 * summed in double. qd, kd: T*D doubles; logits: (b-a)*b doubles; out[(t-a)*T + j].
 */
static void attn_rows(const double *qd, const double *kd, int T, int D, double scale, int a,
                      int b, double *logits, float *out)
{
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b - a, b, D, 1.0,
                qd + (size_t)a * (size_t)D, D, kd, D, 0.0, logits, b);
    for (int t = a; t < b; t++) {
        const double *lg = logits + (size_t)(t - a) * (size_t)b;
        float *o = out + (size_t)(t - a) * (size_t)T;
        float m = -INFINITY;
        for (int j = 0; j <= t; j++) {
            o[j] = (float)(scale * lg[j]);
            m = o[j] > m ? o[j] : m;
        }
        double sum = 0;
        for (int j = 0; j <= t; j++) {
            o[j] = expf(o[j] - m);
            sum += o[j];
        }
        for (int j = 0; j <= t; j++)
            o[j] = (float)(o[j] / sum);
        memset(o + t + 1, 0, (size_t)(T - t - 1) * sizeof(float));
    }
}

static void to_double(const float *src, size_t n, double *dst)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = src[i];
}

/* Computes and writes every attn row of a layer from its (stored) q and k. */
static int write_attn_layer(kv_trace_writer *w, const kv_gen_params *p, int layer,
                            const float *q, const float *k, char *err, size_t err_len)
{
    const int T = p->n_tokens, D = p->head_dim, group = p->n_heads / p->n_kv_heads;
    const size_t per_head = (size_t)T * (size_t)D;
    const int blk = T < KV_GEN_BLOCK ? T : KV_GEN_BLOCK;
    double *qd = malloc(per_head * sizeof(double));
    double *kd = malloc(per_head * sizeof(double));
    double *logits = malloc((size_t)blk * (size_t)T * sizeof(double));
    float *rows = malloc((size_t)blk * (size_t)T * sizeof(float));
    int rc = qd && kd && logits && rows ? 0
             : kv_trace_fail(err, err_len, KV_ETRACE_NOMEM, "kvsim gen: out of memory");
    for (int h = 0; !rc && h < p->n_heads; h++) {
        if (h % group == 0)
            to_double(k + (size_t)(h / group) * per_head, per_head, kd);
        to_double(q + (size_t)h * per_head, per_head, qd);
        for (int a = 0; !rc && a < T; a += blk) {
            int b = a + blk < T ? a + blk : T;
            attn_rows(qd, kd, T, D, 1 / sqrt((double)D), a, b, logits, rows);
            rc = kv_trace_write_attn_rows(w, layer, h, a, b, rows, err, err_len);
        }
    }
    free(qd);
    free(kd);
    free(logits);
    free(rows);
    return rc;
}

/* ------------------------------------------------------------ the file */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Root attributes gen_<option> (dashes as underscores) recording every parameter. */
static int write_provenance(kv_trace_writer *w, const kv_gen_params *p, char *err, size_t len)
{
    int rc = 0;
    for (size_t i = 0; !rc && i < kv_gen_n_options; i++) {
        char name[64];
        snprintf(name, sizeof name, "gen_%s", kv_gen_options[i].name);
        for (char *c = name; *c; c++)
            *c = *c == '-' ? '_' : *c;
        double v = kv_gen_option_get(p, &kv_gen_options[i]);
        rc = kv_gen_options[i].type == KV_GEN_OPT_REAL
                 ? kv_trace_write_attr_double(w, name, v, err, len)
                 : kv_trace_write_attr_int(w, name, (long long)v, err, len);
    }
    return rc;
}

/* /generator/heavy_hitters int32 [n_layers, n_kv_heads, n_heavy_hitters]. */
static int write_heavy(kv_trace_writer *w, const kv_gen_params *p, const int *heavy,
                       const char *path, char *err, size_t len)
{
    hid_t file = kv_trace_writer_hid(w);
    hsize_t dims[3] = {(hsize_t)p->n_layers, (hsize_t)p->n_kv_heads,
                       (hsize_t)p->n_heavy_hitters};
    hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    int ok = gcpl >= 0 && dcpl >= 0 && H5Pset_obj_track_times(gcpl, 0) >= 0
             && H5Pset_obj_track_times(dcpl, 0) >= 0;
    hid_t g = ok ? H5Gcreate2(file, "/generator", H5P_DEFAULT, gcpl, H5P_DEFAULT) : -1;
    hid_t space = H5Screate_simple(3, dims, NULL);
    hid_t d = g >= 0 && space >= 0 ? H5Dcreate2(g, "heavy_hitters", H5T_STD_I32LE, space,
                                                H5P_DEFAULT, dcpl, H5P_DEFAULT) : -1;
    ok = d >= 0 && (p->n_heavy_hitters == 0
                    || H5Dwrite(d, H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, heavy) >= 0);
    if (d >= 0)
        ok &= H5Dclose(d) >= 0;
    if (space >= 0)
        H5Sclose(space);
    if (g >= 0)
        H5Gclose(g);
    if (gcpl >= 0)
        H5Pclose(gcpl);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    return ok ? 0 : kv_trace_fail(err, len, KV_ETRACE_IO, "%s: cannot write "
                                  "/generator/heavy_hitters", path);
}

/* Rounds v to float16 in place, so rows are computed from exactly what is stored. */
static void round_f16(float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        v[i] = kv_half_to_float(kv_half_from_float(v[i]));
}

static int write_layers(kv_trace_writer *w, const kv_gen_params *p, int store_f16,
                        int with_attn, float *q, float *k, int *heavy, char *err, size_t len)
{
    const size_t per_head = (size_t)p->n_tokens * (size_t)p->head_dim;
    const size_t hh_per_layer = (size_t)p->n_kv_heads * (size_t)p->n_heavy_hitters;
    double start = now_s();
    int rc = 0;
    for (int l = 0; !rc && l < p->n_layers; l++) {
        rc = kv_gen_layer(p, l, q, k, heavy + (size_t)l * hh_per_layer, err, len);
        if (!rc && store_f16) {
            round_f16(q, (size_t)p->n_heads * per_head);
            round_f16(k, (size_t)p->n_kv_heads * per_head);
        }
        if (!rc)
            rc = kv_trace_write_qk(w, l, q, k, NULL, err, len);
        if (!rc && with_attn)
            rc = write_attn_layer(w, p, l, q, k, err, len);
        if (!rc && p->progress && now_s() - start > 1)
            fprintf(stderr, "kvsim gen: layer %d/%d written (%.1f s)\n", l + 1, p->n_layers,
                    now_s() - start);
    }
    return rc;
}

int kv_gen_write(const char *path, const kv_gen_params *p, int store_f16, int with_attn,
                 char *err, size_t err_len)
{
    if (!path || !p)
        return kv_trace_fail(err, err_len, KV_ETRACE_ARG, "kv_gen_write: NULL argument");
    int rc = kv_gen_check(p, err, err_len);
    if (rc)
        return rc;
    kv_trace_info info = {
        .n_layers = p->n_layers, .n_heads = p->n_heads, .n_kv_heads = p->n_kv_heads,
        .head_dim = p->head_dim, .n_tokens = p->n_tokens, .prefill_len = p->prefill_len,
        .source = with_attn ? KV_SOURCE_ATTN : KV_SOURCE_QK,
        .softmax_scale = 1 / sqrt((double)p->head_dim), .dtype_bytes = 2,
    };
    snprintf(info.model, sizeof info.model, "kvsim-gen synthetic");
    const size_t per_head = (size_t)p->n_tokens * (size_t)p->head_dim;
    float *q = malloc((size_t)p->n_heads * per_head * sizeof(float));
    float *k = malloc((size_t)p->n_kv_heads * per_head * sizeof(float));
    int *heavy = malloc(((size_t)p->n_layers * (size_t)p->n_kv_heads
                         * (size_t)p->n_heavy_hitters + 1) * sizeof(int));
    kv_trace_writer *w = NULL;
    if (!q || !k || !heavy)
        rc = kv_trace_fail(err, err_len, KV_ETRACE_NOMEM, "kvsim gen: out of memory for %d "
                           "heads x %d tokens x %d", p->n_heads, p->n_tokens, p->head_dim);
    if (!rc)
        rc = kv_trace_create(path, &info, store_f16, &w, err, err_len);
    if (!rc)
        rc = write_provenance(w, p, err, err_len);
    if (!rc)
        rc = write_layers(w, p, store_f16, with_attn, q, k, heavy, err, err_len);
    if (!rc)
        rc = write_heavy(w, p, heavy, path, err, err_len);
    if (w) {
        int frc = kv_trace_finish(w, rc ? NULL : err, err_len);
        rc = rc ? rc : frc;
        if (rc)
            unlink(path);
    }
    free(q);
    free(k);
    free(heavy);
    return rc;
}
