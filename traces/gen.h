/*
 * gen.h - seeded synthetic kvtrace generator (the library behind `kvsim gen`, sim/cmd_gen.c).
 *
 * Writes a qk trace (optionally with the exact attn rows too) whose attention has the
 * structure eviction policies care about, each part with its own strength in nats (added
 * logit, i.e. a factor e^x in attention weight):
 *   - sinks: the first n_sinks keys get +sink_strength for every query;
 *   - locality: key j gets locality * rho^|t-j| (in expectation), rho = exp(-1/locality_span),
 *     from a slowly drifting component shared by q_t and k_t;
 *   - heavy hitters: n_heavy_hitters random positions per (layer, KV head) whose keys align
 *     with a direction most queries share: about +heavy_strength (0.5x..1.5x per token);
 *   - periodic recall: query t >= period gets +period_strength on key t - period;
 *   - noise: a random logit of standard deviation `noise` on every (query, key) pair.
 * Every query head weights the four structured parts by its own factors exp(head_spread *
 * N(0,1)), so the query heads of a GQA group (sharing one KV head's keys) differ.
 *
 * Construction, in "logit units" (q~.k~ = logit; the stored vectors are q~ and k~ times
 * softmax_scale^(-1/2), softmax_scale = 1/sqrt(head_dim)): dimension 0 carries the sink
 * direction, dimension 1 the heavy-hitter direction, then (head_dim-2)/2 dimensions hold the
 * drifting locality component u_t (an Ornstein-Uhlenbeck walk with E|u_t|^2 = 1) and the rest
 * a random content vector z_j per key (E|z_j|^2 = 1); q_t's content part is period_strength *
 * z_{t-period} plus noise * N(0, I).
 *
 * Deterministic: one mt19937 stream per layer, seeded from (seed, layer), consumed in a
 * fixed order; the same parameters give the same file.
 */
#ifndef KV_GEN_H
#define KV_GEN_H

#include <stddef.h>

typedef struct {
    unsigned long seed;      /* RNG seed, default 1 */
    int n_layers;            /* layers, default 2 */
    int n_heads;             /* query heads per layer, default 8 */
    int n_kv_heads;          /* KV heads per layer (n_heads a multiple), default 4 */
    int head_dim;            /* elements per q/k vector, >= 4, default 64 */
    int n_tokens;            /* T, tokens, default 1024 */
    int prefill_len;         /* P, tokens, 1..T, default 256 */
    int n_sinks;             /* sink tokens (positions 0..n_sinks-1), default 4 */
    double sink_strength;    /* nats, default 5 */
    double locality;         /* nats on the query's own position, default 3 */
    int locality_span;       /* tokens: locality decays by 1/e per span, default 32 */
    int n_heavy_hitters;     /* heavy-hitter tokens per (layer, KV head), default 8 */
    double heavy_strength;   /* nats, default 4 */
    int period;              /* tokens between a query and the key it recalls; 0 = off */
    double period_strength;  /* nats, default 6 */
    double noise;            /* nats, standard deviation of the random logits, default 1 */
    double head_spread;      /* log-std of per-head weights, default 0.5 (0: identical) */
    int progress;            /* 1: per-layer progress on stderr once a run passes 1 s */
} kv_gen_params;

/* The kind of one parameter's field in kv_gen_params. */
typedef enum { KV_GEN_OPT_SEED, KV_GEN_OPT_INT, KV_GEN_OPT_REAL } kv_gen_option_type;

/*
 * One parameter of kv_gen_params, as `kvsim gen` spells it: the table below is the one
 * place that names, types, ranges and explains the parameters. kv_gen_check validates
 * against it, kv_gen_write records every entry as a root attribute gen_<name> (dashes as
 * underscores), and sim/cmd_gen.c builds its options and --help from it.
 */
typedef struct {
    const char *name;        /* option, without the leading "--" */
    kv_gen_option_type type; /* SEED: unsigned long, INT: int, REAL: double */
    size_t offset;           /* the field in kv_gen_params */
    double min, max;         /* valid range, inclusive */
    const char *unit;        /* "tokens", "nats", ... or "" */
    const char *help;        /* one line */
} kv_gen_option;

extern const kv_gen_option kv_gen_options[];   /* kv_gen_n_options entries */
extern const size_t kv_gen_n_options;

/* The value of option o in p, as a double (exact for every field's range). Cannot fail. */
double kv_gen_option_get(const kv_gen_params *p, const kv_gen_option *o);

/* Stores v into option o of p, converted to the field's type; v must lie in o's range
 * (the caller checks). Cannot fail. */
void kv_gen_option_set(kv_gen_params *p, const kv_gen_option *o, double v);

/* Fills p with the defaults above. Cannot fail. */
void kv_gen_defaults(kv_gen_params *p);

/*
 * Checks p's ranges and relations (n_heads % n_kv_heads, P <= T, n_sinks +
 * n_heavy_hitters <= T, period < T, ...). Returns 0, or KV_ETRACE_ARG (trace.h) with a
 * one-line message naming the parameter (as its `kvsim gen` option) in err.
 */
int kv_gen_check(const kv_gen_params *p, char *err, size_t err_len);

/*
 * Generates one layer's queries and keys, exactly the values kv_gen_write stores in float32:
 *   q[(h * T + t) * head_dim + d] (n_heads * T * head_dim floats),
 *   k[(g * T + t) * head_dim + d] (n_kv_heads * T * head_dim floats),
 *   heavy[g * n_heavy_hitters + i]: the heavy-hitter positions of KV head g, ascending
 *   (may be NULL). Buffers owned by the caller. p must pass kv_gen_check.
 * Returns 0, or KV_ETRACE_NOMEM (trace.h) with err set.
 */
int kv_gen_layer(const kv_gen_params *p, int layer, float *q, float *k, int *heavy,
                 char *err, size_t err_len);

/*
 * Writes a trace to path (truncating it): source = qk with /layers/<l>/q and k, or, when
 * with_attn is 1, source = attn with /layers/<l>/attn rows computed from the stored q and k
 * (as FORMAT.md defines them: logits in double rounded to float32, max subtracted,
 * exponentials in float32, the sum in double) and q and k kept alongside. store_f16 stores
 * float16 (q and k are rounded before the rows are computed, so rows match the stored q/k).
 * Also writes the parameters as root attributes gen_* and the heavy-hitter positions as
 * /generator/heavy_hitters int32 [n_layers, n_kv_heads, n_heavy_hitters].
 * Returns 0, or a KV_ETRACE_* code (trace.h) with err set: ARG for parameters failing
 * kv_gen_check, IO or NOMEM otherwise; on failure the partial file is removed.
 */
int kv_gen_write(const char *path, const kv_gen_params *p, int store_f16, int with_attn,
                 char *err, size_t err_len);

#endif
