/*
 * budget.c - budget specs: parsing, footprint dry runs, resolution to tokens (budget.h).
 */
#include "sim/budget.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TOKENS 100000000.0

static const struct {
    const char *suffix;
    double bytes;
} byte_units[] = {
    { "B", 1.0 }, { "KiB", 1024.0 }, { "MiB", 1048576.0 }, { "GiB", 1073741824.0 },
};

static int bad_spec(const char *text, char *err, size_t err_len)
{
    snprintf(err, err_len, "budget '%s' must be tokens (64), a fraction of the prompt "
             "(0.25p) or bytes (4096B, 64KiB, 1.5MiB, 2GiB), and positive", text);
    return 2;
}

int kv_budget_parse(const char *text, kv_budget_spec *out, char *err, size_t err_len)
{
    while (*text == ' ' || *text == '\t')
        text++;
    size_t len = strlen(text);
    while (len && (text[len - 1] == ' ' || text[len - 1] == '\t'))
        len--;
    if (len == 0 || len >= KV_BUDGET_TEXT_LEN) {
        snprintf(err, err_len, "budget '%.*s' must be 1 to %d characters", (int)len, text,
                 KV_BUDGET_TEXT_LEN - 1);
        return 2;
    }
    memset(out, 0, sizeof *out);
    memcpy(out->text, text, len);
    char *end;
    errno = 0;
    double v = strtod(out->text, &end);
    if (end == out->text || errno || !(v > 0) || !isfinite(v))
        return bad_spec(out->text, err, err_len);
    if (*end == '\0') {
        if (v != floor(v) || v > MAX_TOKENS) {
            snprintf(err, err_len, "budget '%s' must be a whole number of tokens in "
                     "1..%.0f (or 0.25p, 64KiB)", out->text, MAX_TOKENS);
            return 2;
        }
        out->kind = KV_BUDGET_TOKENS;
        out->value = v;
        return 0;
    }
    if (strcmp(end, "p") == 0) {
        out->kind = KV_BUDGET_PROMPT;
        out->value = v;
        return 0;
    }
    for (size_t i = 0; i < sizeof byte_units / sizeof byte_units[0]; i++)
        if (strcmp(end, byte_units[i].suffix) == 0) {
            out->kind = KV_BUDGET_BYTES;
            out->value = floor(v * byte_units[i].bytes);
            if (out->value < 1)
                return bad_spec(out->text, err, err_len);
            return 0;
        }
    return bad_spec(out->text, err, err_len);
}

/* ------------------------------------------------------------ dry run */

/* The caches of one policy in one layer, as the engine lays them out (engine.c,
 * caches_per_layer): one per layer for a layer-scope policy, else one per query head
 * or per KV head by kv_granularity. */
static int caches_per_layer(const kv_policy_conf *pc, const kv_trace_info *in)
{
    if (pc->ops->scope && pc->ops->scope(&pc->values) == KV_SCOPE_LAYER)
        return 1;
    return pc->granularity == KV_GRAN_QUERY_HEAD ? in->n_heads : in->n_kv_heads;
}

typedef struct {
    int *pos, *identity;
    double *w;
    unsigned char *keep;
} dry_buffers;

static void dry_free(dry_buffers *b)
{
    free(b->pos);
    free(b->identity);
    free(b->w);
    free(b->keep);
}

/* Uniform rows: each of the group's heads puts 1/n on each of n positions. */
static void uniform(double *w, int group, int n)
{
    for (int i = 0; i < group * n; i++)
        w[i] = 1.0 / n;
}

/* One cache through the engine's steps (engine.c, cache_step): prescan, then per t the
 * oracle's attend, append t, record the decode-step footprint, observe, select. */
static void dry_cache(const kv_policy_ops *ops, void *st, const kv_trace_info *in,
                      int group, int budget, dry_buffers *b, long long *peak_n,
                      double *peak_meta)
{
    int T = in->n_tokens, P = in->prefill_len, n = 0;
    for (int t = 0; ops->prescan && t < T; t++) {
        uniform(b->w, group, t + 1);
        kv_row full = { .t = t, .n = t + 1, .pos = b->identity, .n_heads = group,
                        .w = b->w, .is_prefill = t < P };
        ops->prescan(st, &full);
    }
    for (int t = 0; t < T; t++) {
        if (t >= P && ops->attend) {
            uniform(b->w, group, t + 1);
            kv_row full = { .t = t, .n = t + 1, .pos = b->identity, .n_heads = group,
                            .w = b->w, .is_prefill = 0 };
            memset(b->keep, 0, (size_t)t + 1);
            ops->attend(st, &full, b->keep);
            n = 0;
            for (int j = 0; j < t; j++)
                if (b->keep[j])
                    b->pos[n++] = j;
        }
        b->pos[n++] = t;
        if (t >= P) {
            double meta = ops->meta_bytes ? (double)ops->meta_bytes(st, n) : 0.0;
            *peak_n = n > *peak_n ? n : *peak_n;
            *peak_meta = meta > *peak_meta ? meta : *peak_meta;
        }
        uniform(b->w, group, n);
        kv_row row = { .t = t, .n = n, .pos = b->pos, .n_heads = group, .w = b->w,
                       .is_prefill = t < P };
        ops->observe(st, &row);
        if (t < P - 1)
            continue;
        kv_cache_view view = { .t = t, .n = n, .pos = b->pos, .budget = budget,
                               .is_prefill_end = t == P - 1 };
        memset(b->keep, 0, (size_t)n);
        ops->select(st, &view, b->keep);
        int m = 0;
        for (int i = 0; i < n; i++)
            if (b->keep[i])
                b->pos[m++] = b->pos[i];
        n = m;
    }
}

int kv_budget_footprint(const kv_policy_conf *pc, const kv_trace_info *info, int budget,
                        double *kv_bytes_peak, double *meta_bytes_peak, char *err,
                        size_t err_len)
{
    int T = info->n_tokens, per_layer = caches_per_layer(pc, info);
    int group = info->n_heads / per_layer;
    int token_weight = per_layer == 1 ? info->n_kv_heads : 1;   /* as engine.c */
    dry_buffers b = {
        .pos = malloc((size_t)T * sizeof *b.pos),
        .identity = malloc((size_t)T * sizeof *b.identity),
        .w = malloc((size_t)group * T * sizeof *b.w),
        .keep = malloc((size_t)T),
    };
    kv_policy_ctx ctx = { .budget = budget, .group_size = group, .n_tokens = T,
                          .prefill_len = info->prefill_len, .seed = 1 };
    void *st = NULL;
    if (b.pos && b.identity && b.w && b.keep)
        st = pc->ops->create(&pc->values, &ctx);
    if (!st) {
        dry_free(&b);
        snprintf(err, err_len, "out of memory sizing policy '%s'", pc->label);
        return 1;
    }
    for (int j = 0; j < T; j++)
        b.identity[j] = j;
    long long peak_n = 0;
    double peak_meta = 0.0;
    dry_cache(pc->ops, st, info, group, budget, &b, &peak_n, &peak_meta);
    pc->ops->destroy(st);
    dry_free(&b);
    long long caches = (long long)info->n_layers * per_layer;
    *kv_bytes_peak = kv_tokens_to_bytes(info, peak_n * token_weight * caches);
    *meta_bytes_peak = peak_meta * (double)caches;
    return 0;
}

/* ---------------------------------------------------------- resolution */

static int check_ok(const kv_policy_conf *pc, int budget, char *why, size_t why_len)
{
    return kv_policy_pair_check(pc, budget, why, why_len) == 0;
}

/* 1 if B fits in bytes, 0 if not, -1 on failure. *need: B's footprint. */
static int fits(const kv_policy_conf *pc, const kv_trace_info *info, int budget,
                double bytes, double *need, char *err, size_t err_len)
{
    double kv, meta;
    if (kv_budget_footprint(pc, info, budget, &kv, &meta, err, err_len))
        return -1;
    *need = kv + meta;
    return *need <= bytes;
}

static int resolve_bytes(const kv_budget_spec *spec, const kv_policy_conf *pc,
                         const kv_trace_info *info, int *tokens, char *err, size_t err_len)
{
    char why[KV_ERRMSG] = "";
    int b_min = 1;
    /* the rules are lower bounds (B > window, B > sinks): the first accepted B */
    while (b_min <= info->n_tokens + 1000000 && !check_ok(pc, b_min, why, sizeof why))
        b_min++;
    if (why[0]) {
        snprintf(err, err_len, "budget '%s' for policy '%s': no budget passes its rule (%s)",
                 spec->text, pc->label, why);
        return 2;
    }
    int b_max = info->n_tokens - 1 > b_min ? info->n_tokens - 1 : b_min;
    double need;
    int ok = fits(pc, info, b_min, spec->value, &need, err, err_len);
    if (ok < 0)
        return 1;
    if (!ok) {
        snprintf(err, err_len, "budget '%s' (%.0f bytes) is too small for policy '%s': at "
                 "its smallest valid budget (%d token%s) its KV cache and metadata peak at "
                 "%.0f bytes; give a larger budget or leave the policy out", spec->text,
                 spec->value, pc->label, b_min, b_min == 1 ? "" : "s", need);
        return 2;
    }
    int lo = b_min, hi = b_max;   /* lo fits; find the largest that does */
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        ok = fits(pc, info, mid, spec->value, &need, err, err_len);
        if (ok < 0)
            return 1;
        if (ok)
            lo = mid;
        else
            hi = mid - 1;
    }
    *tokens = lo;
    return 0;
}

int kv_budget_resolve(const kv_budget_spec *spec, const kv_policy_conf *pc,
                      const kv_trace_info *info, int *tokens, char *err, size_t err_len)
{
    char why[KV_ERRMSG];
    if (spec->kind == KV_BUDGET_BYTES)
        return resolve_bytes(spec, pc, info, tokens, err, err_len);
    double b = spec->kind == KV_BUDGET_PROMPT ? floor(spec->value * info->prefill_len)
                                              : spec->value;
    if (b < 1 || b > MAX_TOKENS) {
        snprintf(err, err_len, "budget '%s' of a %d-token prompt is %.0f tokens: must be "
                 "1..%.0f", spec->text, info->prefill_len, b, MAX_TOKENS);
        return 2;
    }
    *tokens = (int)b;
    if (!check_ok(pc, *tokens, why, sizeof why)) {
        snprintf(err, err_len, "policy '%s' at budget %d ('%s'): %s", pc->label, *tokens,
                 spec->text, why);
        return 2;
    }
    return 0;
}
