/*
 * policy.c - the shared half of the policy interface: parameter tables (defaults,
 * parsing, formatting), GQA score combination and the top-k selection every policy
 * ranks with. The contract is in policy.h; nothing here knows any policy by name.
 */
#include "policies/policy.h"
#include "sim/simd.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ messages */

/* Writes a formatted message into err (always NUL-terminated when err_len > 0). */
static void set_err(char *err, size_t err_len, const char *fmt, ...)
{
    if (err == NULL || err_len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

/* --------------------------------------------------------- edit distance */

#define KV_EDIT_MAX 64 /* names longer than this are compared on their first 63 bytes */

/* Levenshtein distance between a and b (insert, delete, substitute each cost 1). Names
 * are short, so two rows on the stack suffice. Cannot fail. */
int kv_edit_distance(const char *a, const char *b)
{
    size_t na = strnlen(a, KV_EDIT_MAX - 1), nb = strnlen(b, KV_EDIT_MAX - 1);
    int prev[KV_EDIT_MAX], cur[KV_EDIT_MAX];
    for (size_t j = 0; j <= nb; j++)
        prev[j] = (int)j;
    for (size_t i = 1; i <= na; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= nb; j++) {
            int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            int del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, (nb + 1) * sizeof prev[0]);
    }
    return prev[nb];
}

/* ------------------------------------------------------------ parameters */

/* Index of word in a '|'-separated list, or -1. */
static int choice_index(const char *choices, const char *word)
{
    size_t len = strlen(word);
    int idx = 0;
    for (const char *p = choices; p != NULL; idx++) {
        const char *bar = strchr(p, '|');
        size_t wlen = bar ? (size_t)(bar - p) : strlen(p);
        if (wlen == len && strncmp(p, word, len) == 0)
            return idx;
        p = bar ? bar + 1 : NULL;
    }
    return -1;
}

/* Copies the idx-th word of a '|'-separated list into buf ("?" if there is none). */
static void choice_word(const char *choices, int idx, char *buf, size_t buf_len)
{
    const char *p = choices;
    for (int i = 0; p != NULL && i < idx; i++) {
        p = strchr(p, '|');
        if (p != NULL)
            p++;
    }
    if (p == NULL || idx < 0) {
        snprintf(buf, buf_len, "?");
        return;
    }
    const char *bar = strchr(p, '|');
    int wlen = bar ? (int)(bar - p) : (int)strlen(p);
    snprintf(buf, buf_len, "%.*s", wlen, p);
}

/* Parses a whole number (optional sign, decimal digits, nothing else) into *out. */
static int parse_int(const char *text, double *out)
{
    if (*text == '\0' || !(*text == '+' || *text == '-' || (*text >= '0' && *text <= '9')))
        return 1;
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno != 0 || *end != '\0')
        return 1;
    *out = (double)v;
    return 0;
}

/* Parses a finite real number (no surrounding blanks) into *out. */
static int parse_real(const char *text, double *out)
{
    if (*text == '\0' || *text == ' ' || *text == '\t')
        return 1;
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno == ERANGE || *end != '\0' || !isfinite(v))
        return 1;
    *out = v;
    return 0;
}

/* Parses text as the value of spec into *out; 0, or 1 with the message of policy.h. */
int kv_param_parse(const kv_param_spec *spec, const char *text, double *out, char *err,
                   size_t err_len)
{
    double v = 0;
    switch (spec->type) {
    case KV_PARAM_INT:
        if (spec->choices != NULL && strcmp(text, spec->choices) == 0) {
            v = 0; /* the word standing for 0, e.g. horizon = all */
            break;
        }
        if (parse_int(text, &v) != 0 || v < spec->min || v > spec->max) {
            if (spec->choices != NULL)
                set_err(err, err_len, "%s must be %s or an integer in [%.15g, %.15g], got '%s'",
                        spec->name, spec->choices, spec->min, spec->max, text);
            else
                set_err(err, err_len, "%s must be an integer in [%.15g, %.15g], got '%s'",
                        spec->name, spec->min, spec->max, text);
            return 1;
        }
        break;
    case KV_PARAM_REAL:
        if (parse_real(text, &v) != 0 || v < spec->min || v > spec->max) {
            set_err(err, err_len, "%s must be a number in [%.15g, %.15g], got '%s'",
                    spec->name, spec->min, spec->max, text);
            return 1;
        }
        break;
    case KV_PARAM_CHOICE: {
        int idx = spec->choices ? choice_index(spec->choices, text) : -1;
        if (idx < 0) {
            set_err(err, err_len, "%s must be one of %s, got '%s'", spec->name,
                    spec->choices ? spec->choices : "(none)", text);
            return 1;
        }
        v = idx;
        break;
    }
    }
    *out = v;
    return 0;
}

void kv_params_defaults(const kv_policy_ops *ops, kv_param_values *values)
{
    memset(values, 0, sizeof *values);
    for (int i = 0; i < ops->n_params && i < KV_MAX_PARAMS; i++) {
        double v = 0;
        /* Tables are checked by the conformance test; a bad default stays 0. */
        if (kv_param_parse(&ops->params[i], ops->params[i].default_text, &v, NULL, 0) == 0)
            values->v[i] = v;
    }
}

int kv_params_index(const kv_policy_ops *ops, const char *name)
{
    for (int i = 0; i < ops->n_params; i++)
        if (strcmp(ops->params[i].name, name) == 0)
            return i;
    return -1;
}

/* The message for an unknown parameter: a suggestion when one name is close (at most
 * 2 edits, or a third of its length), else the list of known names. */
static void unknown_param(const kv_policy_ops *ops, const char *name, char *err,
                          size_t err_len)
{
    if (ops->n_params == 0) {
        set_err(err, err_len, "unknown parameter '%s' for %s (%s has no parameters)", name,
                ops->name, ops->name);
        return;
    }
    int best = -1, best_d = 0;
    for (int i = 0; i < ops->n_params; i++) {
        int d = kv_edit_distance(name, ops->params[i].name);
        if (best < 0 || d < best_d) {
            best = i;
            best_d = d;
        }
    }
    int len = (int)strlen(ops->params[best].name);
    if (best_d <= (len / 3 > 2 ? len / 3 : 2)) {
        set_err(err, err_len, "unknown parameter '%s' for %s (did you mean '%s'?)", name,
                ops->name, ops->params[best].name);
        return;
    }
    char list[160] = "";
    size_t used = 0;
    for (int i = 0; i < ops->n_params && used < sizeof list; i++) {
        int w = snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "",
                         ops->params[i].name);
        used += w > 0 ? (size_t)w : 0;
    }
    set_err(err, err_len, "unknown parameter '%s' for %s (parameters: %s)", name, ops->name,
            list);
}

int kv_params_set(const kv_policy_ops *ops, kv_param_values *values, const char *name,
                  const char *text, char *err, size_t err_len)
{
    int i = kv_params_index(ops, name);
    if (i < 0) {
        unknown_param(ops, name, err, err_len);
        return 1;
    }
    if (text == NULL)
        text = "";
    double v;
    if (kv_param_parse(&ops->params[i], text, &v, err, err_len) != 0)
        return 1;
    values->v[i] = v;
    return 0;
}

/* Writes the text of value v of spec into buf. */
static void format_value(const kv_param_spec *spec, double v, char *buf, size_t buf_len)
{
    if (spec->type == KV_PARAM_CHOICE)
        choice_word(spec->choices ? spec->choices : "", (int)v, buf, buf_len);
    else if (spec->type == KV_PARAM_INT && spec->choices != NULL && v == 0)
        snprintf(buf, buf_len, "%s", spec->choices);
    else if (spec->type == KV_PARAM_INT)
        snprintf(buf, buf_len, "%.0f", v);
    else
        snprintf(buf, buf_len, "%.15g", v);
}

void kv_params_format(const kv_policy_ops *ops, const kv_param_values *values,
                      int only_changed, char *buf, size_t buf_len)
{
    if (buf == NULL || buf_len == 0)
        return;
    buf[0] = '\0';
    kv_param_values defaults;
    kv_params_defaults(ops, &defaults);
    size_t used = 0;
    for (int i = 0; i < ops->n_params && i < KV_MAX_PARAMS; i++) {
        if (only_changed && values->v[i] == defaults.v[i])
            continue;
        char text[64];
        format_value(&ops->params[i], values->v[i], text, sizeof text);
        if (used >= buf_len)
            break;
        int w = snprintf(buf + used, buf_len - used, "%s%s=%s", used ? "," : "",
                         ops->params[i].name, text);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

int kv_policy_max_held(const kv_policy_ops *ops, const kv_param_values *values, int budget)
{
    if (ops->max_held != NULL)
        return ops->max_held(values, budget);
    return ops->bounded ? budget : -1;
}

int kv_check_budget(int budget, char *err, size_t err_len)
{
    if (budget >= 1)
        return 0;
    set_err(err, err_len, "budget %d must be at least 1", budget);
    return 1;
}

int kv_check_budget_window(const char *policy, int budget, int window, char *err,
                           size_t err_len)
{
    if (kv_check_budget(budget, err, err_len) != 0)
        return 1;
    if (budget >= window)
        return 0;
    set_err(err, err_len, "budget %d must be at least %s window %d (use --set %s.window=N "
            "with N <= %d)", budget, policy, window, policy, budget);
    return 1;
}

int kv_reads_no_row(const void *state, int t)
{
    (void)state;
    (void)t;
    return 0;
}

/* The token a stateless policy's instances share: any non-NULL address will do. */
static char stateless_token;

void *kv_stateless_create(const kv_param_values *values, const kv_policy_ctx *ctx)
{
    (void)values;
    (void)ctx;
    return &stateless_token;
}

void kv_stateless_destroy(void *state)
{
    (void)state;
}

void kv_observe_nothing(void *state, const kv_row *row)
{
    (void)state;
    (void)row;
}

/* ------------------------------------------------------------------ GQA */

void kv_gqa_combine(kv_gqa_mode mode, int n_heads, int n, const double *per_head,
                    size_t stride, double *out)
{
    for (int i = 0; i < n; i++)
        out[i] = n_heads > 0 ? per_head[i] : 0.0;
    for (int h = 1; h < n_heads; h++) {
        const double *row = per_head + (size_t)h * stride;
        if (mode == KV_GQA_MAX) {
            for (int i = 0; i < n; i++)
                if (row[i] > out[i])
                    out[i] = row[i];
        } else {
            for (int i = 0; i < n; i++)
                out[i] += row[i];
        }
    }
}

/* ------------------------------------------------------------- top-k */

/* 1 when candidate a ranks above candidate b: higher score, then the more recent
 * position (README rule 4). Strict and total for distinct positions and non-NaN scores. */
static inline int ranks_above(const double *score, const int *pos, int a, int b)
{
    if (score[a] != score[b])
        return score[a] > score[b];
    return pos[a] > pos[b];
}

/* xorshift64*: pivot choice only. Any pivot gives the same result (the order is
 * strict); randomness just makes adversarial inputs unlikely to cost O(n^2). */
static inline uint64_t next_rand(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

/* Quickselect (Lomuto partition, random pivot) on scratch[0..n) until scratch[0..k)
 * holds exactly the k best (worst = 0) or the k worst (worst = 1): every element left of
 * a settled pivot ranks above it (below, for worst), every element right of it below.
 * Expected 2n..3.4n comparisons. */
static void select_first(const double *score, const int *pos, int *scratch, int n, int k,
                         int worst)
{
    uint64_t rng = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)n << 32) ^ (uint64_t)k;
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int p = lo + (int)(next_rand(&rng) % (uint64_t)(hi - lo + 1));
        int pivot = scratch[p];
        scratch[p] = scratch[hi];
        scratch[hi] = pivot;
        int store = lo;
        for (int i = lo; i < hi; i++) {
            int x = scratch[i];
            if (worst ? ranks_above(score, pos, pivot, x) : ranks_above(score, pos, x, pivot)) {
                scratch[i] = scratch[store];
                scratch[store++] = x;
            }
        }
        scratch[hi] = scratch[store];
        scratch[store] = pivot;
        /* scratch[0..store) lie before the pivot: done when the boundary is at k. */
        if (store == k || store == k - 1)
            break;
        if (store < k)
            lo = store + 1;
        else
            hi = store - 1;
    }
}

void kv_keep_top(const double *score, const int *pos, const int *cand, int n_cand, int k,
                 int *scratch, unsigned char *keep)
{
    if (k <= 0 || n_cand <= 0)
        return;
    if (k >= n_cand) {
        for (int i = 0; i < n_cand; i++)
            keep[cand[i]] = 1;
        return;
    }
    int drop = n_cand - k;
    if (drop == 1) { /* a decode step's usual case: evict the single worst, one scan */
        int worst = cand[0];
        double ws = score[worst];
        int wp = pos[worst];
        for (int i = 1; i < n_cand; i++) {
            int c = cand[i];
            double sc = score[c];
            if (sc < ws || (sc == ws && pos[c] < wp)) { /* ranks below the worst so far */
                worst = c;
                ws = sc;
                wp = pos[c];
            }
        }
        for (int i = 0; i < n_cand; i++)
            keep[cand[i]] = cand[i] != worst;
        return;
    }
    memcpy(scratch, cand, (size_t)n_cand * sizeof *scratch);
    if (drop < k) { /* fewer to evict than to keep: select the evicted */
        select_first(score, pos, scratch, n_cand, drop, 1);
        for (int i = 0; i < n_cand; i++)
            keep[cand[i]] = 1;
        for (int i = 0; i < drop; i++)
            keep[scratch[i]] = 0;
        return;
    }
    select_first(score, pos, scratch, n_cand, k, 0);
    for (int i = 0; i < n_cand; i++)
        keep[cand[i]] = 0;
    for (int i = 0; i < k; i++)
        keep[scratch[i]] = 1;
}

void kv_keep_top_by_position(const double *by_pos, const int *pos, int n, int k,
                             double *score, int *cand, int *scratch, unsigned char *keep)
{
    for (int i = 0; i < n; i++) {
        keep[i] = 0;
        cand[i] = i;
        score[i] = by_pos[pos[i]];
    }
    kv_keep_top(score, pos, cand, n, k, scratch, keep);
}

void kv_keep_scored(const double *score, const unsigned char *fixed, const int *pos, int n,
                    int budget, int *cand, int *scratch, unsigned char *keep)
{
    if (n <= budget) {
        for (int i = 0; i < n; i++)
            keep[i] = 1;
        return;
    }
    int n_fixed = 0, n_cand = 0;
    for (int i = 0; i < n; i++) {
        keep[i] = fixed[i] != 0;
        if (fixed[i])
            n_fixed++;
        else
            cand[n_cand++] = i;
    }
    if (budget - n_fixed > 0)
        kv_keep_top(score, pos, cand, n_cand, budget - n_fixed, scratch, keep);
}

/* ---------------------------------------------------------- exact sums */

#define EXACT_GRID 149 /* the sum counts units of 2^-149 */

/* x as m * 2^shift grid units, m < 2^53, shift >= 0 (bits below the grid truncated).
 * Read from the IEEE-754 fields (x >= 0): x = (2^52 | fraction) * 2^(exponent - 1075),
 * so shift = exponent - 1075 + 149; zero and subnormals (< 2^-1022) are below the grid. */
static void exact_split(double x, uint64_t *m, int *shift)
{
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    int biased = (int)(bits >> 52);
    if (biased == 0) {
        *m = 0;
        *shift = 0;
        return;
    }
    uint64_t mant = (bits & ((1ULL << 52) - 1)) | (1ULL << 52);
    int s = biased - 1075 + EXACT_GRID;
    if (s < 0) {
        mant = s > -64 ? mant >> -s : 0;
        s = 0;
    }
    *m = mant;
    *shift = s;
}

/* Adds (sign > 0) or subtracts m * 2^shift grid units (m < 2^64, shift < 192) to the
 * 192-bit integer; a subtraction that would go below 0 leaves 0. */
static void exact_apply_units(kv_exact_sum *s, uint64_t m, int shift, int sign)
{
    if (m == 0)
        return;
    /* the term as limbs: bits [shift, shift + 64) */
    int k = shift / 64, off = shift % 64;
    uint64_t part[3] = { 0, 0, 0 };
    part[k] = m << off;
    if (off != 0 && k + 1 < 3)
        part[k + 1] = m >> (64 - off);
    unsigned __int128 lo = ((unsigned __int128)s->limb[1] << 64) | s->limb[0];
    unsigned __int128 plo = ((unsigned __int128)part[1] << 64) | part[0];
    if (sign > 0) {
        unsigned __int128 r = lo + plo;
        s->limb[2] += part[2] + (r < lo);
        lo = r;
    } else {
        uint64_t need = part[2] + (lo < plo); /* from the top limb, with the borrow */
        if (s->limb[2] < need || need < part[2]) { /* more than the sum: misuse, clamp */
            s->limb[0] = s->limb[1] = s->limb[2] = 0;
            return;
        }
        s->limb[2] -= need;
        lo -= plo;
    }
    s->limb[0] = (uint64_t)lo;
    s->limb[1] = (uint64_t)(lo >> 64);
}

static void exact_apply(kv_exact_sum *s, double x, int sign)
{
    assert(x >= 0.0 && x <= 0x1p40);
    uint64_t m;
    int shift;
    exact_split(x, &m, &shift);
    exact_apply_units(s, m, shift, sign);
}

void kv_exact_add(kv_exact_sum *s, double x)
{
    exact_apply(s, x, 1);
}

void kv_exact_sub(kv_exact_sum *s, double x)
{
    exact_apply(s, x, -1);
}

/* kv_exact_add_many, any terms: doubles with biased exponent >= EXACT_LOW_EXP lie on the
 * grid (shift = exponent - EXACT_LOW_EXP >= 0); their 53-bit mantissas are summed per
 * exponent in 64-bit bins, and the bins are folded into the 192-bit sum every
 * EXACT_FOLD_EVERY terms: the same integer as adding them one by one. Four sets of bins
 * take turns (at most 2^9 mantissas per bin between folds), so that runs of equal
 * exponents do not wait on one another. */
#define EXACT_LOW_EXP (1075 - EXACT_GRID)          /* 926: 2^-97 */
#define EXACT_N_BINS (1023 + 40 - EXACT_LOW_EXP + 1) /* up to 2^40 */
#define EXACT_FOLD_EVERY 2048

/* kv_exact_add_many for terms in [0, 1] (attention values), vectorised: floor(x * 2^149),
 * the term on the grid, is l1 * 2^100 + l2 * 2^50 + l3 with l1 = floor(x * 2^49) and l2,
 * l3 the next 50 bits each, every step exact in double (scaling by powers of 2,
 * truncation to an integer, and taking that integer part off). The three parts are
 * summed as integers (each < 2^50, so 4096 of them stay below 2^62) and added to the
 * 192-bit sum. Returns 1 without touching s when a term lies outside [0, 1]. */
static KV_SIMD_CLONES int exact_add_unit(kv_exact_sum *s, const double *x, int n)
{
    double lo = 0.0, hi = 0.0;
    #pragma omp simd reduction(min:lo) reduction(max:hi)
    for (int i = 0; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    if (!(lo >= 0.0 && hi <= 1.0))
        return 1;
    for (int start = 0; start < n; start += 4096) {
        int end = n - start > 4096 ? start + 4096 : n;
        uint64_t s1 = 0, s2 = 0, s3 = 0;
        #pragma omp simd reduction(+:s1, s2, s3)
        for (int i = start; i < end; i++) {
            /* truncation is floor here (all >= 0); each difference is exact */
            double y = x[i] * 0x1p49;
            uint64_t l1 = (uint64_t)y;
            double r = (y - (double)l1) * 0x1p50;
            uint64_t l2 = (uint64_t)r;
            uint64_t l3 = (uint64_t)((r - (double)l2) * 0x1p50);
            s1 += l1;
            s2 += l2;
            s3 += l3;
        }
        exact_apply_units(s, s3, 0, 1);
        exact_apply_units(s, s2, 50, 1);
        exact_apply_units(s, s1, 100, 1);
    }
    return 0;
}

void kv_exact_add_many(kv_exact_sum *s, const double *x, int n)
{
    if (n <= 0 || exact_add_unit(s, x, n) == 0)
        return;
    uint64_t bins[4][EXACT_N_BINS];
    for (int start = 0; start < n; start += EXACT_FOLD_EVERY) {
        int end = n - start > EXACT_FOLD_EVERY ? start + EXACT_FOLD_EVERY : n;
        memset(bins, 0, sizeof bins);
        for (int i = start; i < end; i++) {
            uint64_t bits;
            memcpy(&bits, &x[i], sizeof bits);
            int biased = (int)(bits >> 52);
            assert(x[i] >= 0.0 && x[i] <= 0x1p40);
            if (biased < EXACT_LOW_EXP) { /* below 2^-97: truncated to the grid, alone */
                exact_apply(s, x[i], 1);
                continue;
            }
            bins[i & 3][biased - EXACT_LOW_EXP] += (bits & ((1ULL << 52) - 1)) | (1ULL << 52);
        }
        /* Fold: each set's bins hold at most 2^9 mantissas (< 2^62), so the four add
         * without overflow; the shifted bins are added into the limbs as 128-bit pieces. */
        unsigned __int128 acc_lo = 0; /* bits [0, 128) of the folded bins, and ... */
        uint64_t acc_hi = 0;          /* ... bits [128, 192) */
        for (int b = 0; b < EXACT_N_BINS; b++) {
            uint64_t m = (bins[0][b] + bins[1][b]) + (bins[2][b] + bins[3][b]);
            if (m == 0)
                continue;
            if (b >= 128) {               /* bits [b, b + 64): all in the top limb */
                acc_hi += m << (b - 128);
            } else if (b >= 64) {         /* into bits [64, 192) */
                unsigned __int128 part = (unsigned __int128)m << (b - 64);
                unsigned __int128 mid = (acc_lo >> 64) + (uint64_t)part;
                acc_lo = (acc_lo & UINT64_MAX) | (mid << 64);
                acc_hi += (uint64_t)(part >> 64) + (uint64_t)(mid >> 64);
            } else {                      /* into bits [0, 128), carry into the top */
                unsigned __int128 part = (unsigned __int128)m << b;
                acc_lo += part;
                acc_hi += acc_lo < part;
            }
        }
        exact_apply_units(s, (uint64_t)acc_lo, 0, 1);
        exact_apply_units(s, (uint64_t)(acc_lo >> 64), 64, 1);
        exact_apply_units(s, acc_hi, 128, 1);
    }
}

double kv_exact_value(const kv_exact_sum *s)
{
    int k = 2;
    while (k > 0 && s->limb[k] == 0)
        k--;
    uint64_t hi = s->limb[k], lo = k > 0 ? s->limb[k - 1] : 0;
    if (hi == 0)
        return 0.0;
    int c = __builtin_clzll(hi); /* normalise: the leading 1 to bit 63, refilled from lo */
    if (c > 0)
        hi = (hi << c) | (lo >> (64 - c));
    /* Keep 53 bits, truncated (monotone): value = (hi >> 11) * 2^(64k - c + 11) units. */
    return ldexp((double)(hi >> 11), 64 * k - c + 11 - EXACT_GRID);
}
