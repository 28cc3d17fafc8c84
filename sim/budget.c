/*
 * budget.c - budget specs: parsing, footprint dry runs, resolution to tokens (budget.h).
 */
#include "sim/budget.h"
#include "sim/cache.h"
#include "traces/status.h"

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
    return KV_EUSAGE;
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
        return KV_EUSAGE;
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
            return KV_EUSAGE;
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

/*
 * One cache through the replay's own step (sim/cache.h) on constant rows - every head
 * puts the same weight on every key - recording the peaks over decode steps of |A_t| *
 * token_weight and of the policy's metadata bytes, and, when step_tokens and step_meta
 * are not NULL, both at every decode step t (index t - P). Returns 0, or 1 when out of
 * memory.
 */
static int dry_run(const kv_policy_conf *pc, const kv_trace_info *in, int budget, int group,
                   int token_weight, double *peak_tokens, double *peak_meta,
                   double *step_tokens, double *step_meta)
{
    int T = in->n_tokens, P = in->prefill_len;
    int *identity = malloc((size_t)T * sizeof *identity);
    float *ones = malloc((size_t)T * sizeof *ones);
    /* a policy that reads keys or values ranks zero vectors: sizes do not depend on them */
    float *zeros = pc->ops->needs ? calloc((size_t)T * in->head_dim, sizeof *zeros) : NULL;
    kv_policy_ctx ctx = { .budget = budget, .group_size = group, .n_tokens = T,
                          .prefill_len = P, .seed = 1, .head_dim = in->head_dim };
    kv_cache c;
    if (!identity || !ones || (pc->ops->needs && !zeros)) {
        free(identity);
        free(ones);
        free(zeros);
        return KV_ERUNTIME;
    }
    for (int j = 0; j < T; j++) {
        identity[j] = j;
        ones[j] = 1.0f;
    }
    if (kv_cache_init(&c, pc->ops, &pc->values, &ctx, token_weight, identity)) {
        free(identity);
        free(ones);
        free(zeros);
        return KV_ERUNTIME;
    }
    kv_cache_set_kv(&c, zeros, zeros, in->head_dim);
    kv_group_rows rows = { .p = ones, .head_stride = 0, .top = NULL, .top_stride = 0 };
    for (int t = 0; kv_cache_prescans(&c) && t < T; t++)
        kv_cache_prescan(&c, t, &rows);
    for (int t = 0; t < T; t++) {
        kv_step_metrics m;
        kv_cache_step(&c, t, &rows, &m);
        if (t >= P) {
            *peak_tokens = m.kv_tokens > *peak_tokens ? m.kv_tokens : *peak_tokens;
            *peak_meta = m.meta_bytes > *peak_meta ? m.meta_bytes : *peak_meta;
            if (step_tokens) {
                step_tokens[t - P] = m.kv_tokens;
                step_meta[t - P] = m.meta_bytes;
            }
        }
    }
    kv_cache_free(&c);
    free(identity);
    free(ones);
    free(zeros);
    return 0;
}

/* dry_run of pc at budget on the trace's cache layout; *caches gets how many caches the
 * trace has (layers x caches per layer) to scale the per-cache numbers by. Returns 0, or
 * KV_ERUNTIME when out of memory (err set). */
static int size_one_cache(const kv_policy_conf *pc, const kv_trace_info *info, int budget,
                          double *peak_tokens, double *peak_meta, double *step_tokens,
                          double *step_meta, long long *caches, char *err, size_t err_len)
{
    int per_layer = kv_caches_per_layer(pc, info);
    int group = info->n_heads / per_layer;
    int token_weight = kv_cache_token_weight(pc, info);
    if (dry_run(pc, info, budget, group, token_weight, peak_tokens, peak_meta, step_tokens,
                step_meta)) {
        snprintf(err, err_len, "out of memory sizing policy '%s'", pc->label);
        return KV_ERUNTIME;
    }
    *caches = (long long)info->n_layers * per_layer;
    return 0;
}

int kv_budget_footprint(const kv_policy_conf *pc, const kv_trace_info *info, int budget,
                        double *kv_bytes_peak, double *meta_bytes_peak, char *err,
                        size_t err_len)
{
    double peak_tokens = 0.0, peak_meta = 0.0;
    long long caches;
    if (size_one_cache(pc, info, budget, &peak_tokens, &peak_meta, NULL, NULL, &caches, err,
                       err_len))
        return KV_ERUNTIME;
    *kv_bytes_peak = kv_tokens_to_bytes(info, (long long)peak_tokens * caches);
    *meta_bytes_peak = peak_meta * (double)caches;
    return 0;
}

int kv_budget_footprint_steps(const kv_policy_conf *pc, const kv_trace_info *info,
                              int budget, double *kv_bytes, double *meta_bytes, char *err,
                              size_t err_len)
{
    double peak_tokens = 0.0, peak_meta = 0.0;
    long long caches;
    if (size_one_cache(pc, info, budget, &peak_tokens, &peak_meta, kv_bytes, meta_bytes,
                       &caches, err, err_len))
        return KV_ERUNTIME;
    for (int i = 0; i < info->n_tokens - info->prefill_len; i++) {
        kv_bytes[i] = kv_tokens_to_bytes(info, (long long)kv_bytes[i] * caches);
        meta_bytes[i] *= (double)caches;
    }
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
    /* the rules are lower bounds (B > window, B >= sinks): the first accepted B */
    while (b_min <= info->n_tokens + 1000000 && !check_ok(pc, b_min, why, sizeof why))
        b_min++;
    if (why[0]) {
        snprintf(err, err_len, "budget '%s' for policy '%s': no budget passes its rule (%s)",
                 spec->text, pc->label, why);
        return KV_EUSAGE;
    }
    int b_max = info->n_tokens - 1 > b_min ? info->n_tokens - 1 : b_min;
    double need;
    int ok = fits(pc, info, b_min, spec->value, &need, err, err_len);
    if (ok < 0)
        return KV_ERUNTIME;
    if (!ok) {
        snprintf(err, err_len, "budget '%s' (%.0f bytes) is too small for policy '%s': at "
                 "its smallest valid budget (%d token%s) its KV cache and metadata peak at "
                 "%.0f bytes; give a larger budget or leave the policy out", spec->text,
                 spec->value, pc->label, b_min, b_min == 1 ? "" : "s", need);
        return KV_EUSAGE;
    }
    int lo = b_min, hi = b_max;   /* lo fits; find the largest that does */
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        ok = fits(pc, info, mid, spec->value, &need, err, err_len);
        if (ok < 0)
            return KV_ERUNTIME;
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
        return KV_EUSAGE;
    }
    *tokens = (int)b;
    if (!check_ok(pc, *tokens, why, sizeof why)) {
        snprintf(err, err_len, "policy '%s' at budget %d ('%s'): %s", pc->label, *tokens,
                 spec->text, why);
        return KV_EUSAGE;
    }
    return 0;
}
