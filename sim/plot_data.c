/*
 * plot_data.c - the inputs of every figure, prepared by kvsim (see plot_data.h).
 *
 * Steps of a figure: (1) select its rows from the result files by trace, policy and
 * budget_spec, (2) combine them (the mean over traces per decode step, a moving mean,
 * identical memory lines merged), (3) write the numbers, the variables and the caption.
 */
#include "sim/plot_data.h"
#include "sim/budget.h"
#include "traces/status.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* ------------------------------------------------------------ policy styles */

/*
 * A fixed look per policy NAME, the same in every figure of every run: the colour
 * family and point shape come from the policy's type (its `type` column), so a label of
 * a known type looks like its type; a label other than the type's own name is a variant
 * and gets a darker or lighter shade, a dash pattern and another point (the open one of
 * its shape, or +, x, *), chosen from a hash of the label. Colours: Okabe and Ito's palette (colour-blind safe);
 * the references (full, oracle, lookahead) in black and greys. In greyscale the point
 * shapes and dashes keep the policies apart.
 */
typedef struct {
    const char *type;
    const char *shade[3];   /* the type's own colour, then a darker and a lighter one */
    int pt;                 /* filled point type; pt - 1 is its open counterpart */
} type_style;

static const type_style type_styles[] = {
    { "full",         { "#000000", "#000000", "#555555" }, 3 },
    { "window",       { "#E69F00", "#9A6A00", "#F2C15C" }, 5 },
    { "streamingllm", { "#56B4E9", "#2A7AAB", "#9DD3F2" }, 15 },
    { "h2o",          { "#009E73", "#00664A", "#5CC7A4" }, 7 },
    { "snapkv",       { "#0072B2", "#003F63", "#5C9FD0" }, 9 },
    { "morphkv",      { "#D55E00", "#8A3D00", "#EE9A5C" }, 13 },
    { "tova",         { "#CC79A7", "#8E4673", "#E2AECB" }, 11 },
    { "random",       { "#999933", "#66661F", "#C2C270" }, 1 },
    { "oracle",       { "#444444", "#222222", "#777777" }, 2 },
    { "lookahead",    { "#888888", "#5A5A5A", "#AAAAAA" }, 4 },
};
static const type_style other_style = { "", { "#882255", "#5A1638", "#B8648E" }, 7 };

static uint32_t fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

/* Style of policy p: variant 0 for the type's own name, else 1..4 by hash, bumped past
 * a variant an earlier policy of the same type in this figure already has. */
static void policy_style(const kv_plot_ctx *c, size_t p, const char **rgb, int *dt, int *pt)
{
    const type_style *ts = &other_style;
    for (size_t i = 0; i < sizeof type_styles / sizeof type_styles[0]; i++)
        if (strcmp(type_styles[i].type, c->pol_type[p]) == 0)
            ts = &type_styles[i];
    int used[5] = { 0 }, variant = 0;
    for (size_t q = 0; q <= p; q++) {
        if (strcmp(c->pol_type[q], c->pol_type[p]) != 0)
            continue;
        int v = strcmp(c->pol[q], c->pol_type[q]) == 0 ? 0 : 1 + (int)(fnv1a(c->pol[q]) % 4);
        for (int tries = 0; used[v] && tries < 5; tries++)
            v = v == 4 ? 1 : v + 1;
        used[v] = 1;
        variant = v;
    }
    static const int dashes[5] = { 1, 2, 4, 5, 3 };
    *rgb = ts->shade[variant == 0 ? 0 : 1 + (variant - 1) % 2];
    *dt = dashes[variant];
    /* point: the type's filled shape, its open one, then +, x and * for variants 2-4, so
     * no two labels of one type share colour, dash and point */
    static const int variant_pt[5] = { 0, -1, 1, 2, 3 };
    *pt = variant == 0 ? ts->pt : (variant == 1 ? (ts->pt >= 4 ? ts->pt - 1 : 6)
                                                : variant_pt[variant]);
}

/* ------------------------------------------------------------ small helpers */

/* Writes s as a gnuplot single-quoted string constant: inside one, gnuplot treats
 * nothing as special except a doubled quote; a control character (which would end the
 * line, and with it the constant) becomes '?'. */
static void gp_string(FILE *f, const char *s)
{
    fputc('\'', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '\'')
            fputs("''", f);
        else if (ch < 0x20 || ch == 0x7f)
            fputc('?', f);
        else
            fputc(ch, f);
    }
    fputc('\'', f);
}

static void gp_assign(FILE *f, const char *name, const char *value)
{
    fprintf(f, "%s = ", name);
    gp_string(f, value);
    fputc('\n', f);
}

int kv_plot_disk_full(const char *path)
{
    struct statvfs s;
    return statvfs(path, &s) == 0 && (double)s.f_bavail * s.f_frsize < 1048576.0;
}

static FILE *data_open(const kv_plot_ctx *c, const char *name, char *path, size_t path_len,
                       char *err, size_t err_len)
{
    snprintf(path, path_len, "%s/%s", c->tmp, name);
    FILE *f = fopen(path, "w");
    if (!f)
        snprintf(err, err_len, "%s: cannot write: %s%s", path, strerror(errno),
                 errno == ENOSPC ? " (ENOSPC)" : "");
    return f;
}

/* Closes f, checking that every write reached the file. 0, or 1 with err set. */
static int data_close(FILE *f, const char *path, char *err, size_t err_len)
{
    int bad = ferror(f);
    errno = 0;
    int flush = fflush(f);
    int e = errno;
    int close = fclose(f);
    if (!bad && !flush && !close)
        return 0;
    if (!e)
        e = errno;
    if (!e && kv_plot_disk_full(path))
        e = ENOSPC;
    snprintf(err, err_len, "%s: write failed: %s%s", path, e ? strerror(e) : "I/O error",
             e == ENOSPC ? " (ENOSPC)" : "");
    return KV_ERUNTIME;
}

static int in_list(const char *const *list, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], s) == 0)
            return KV_ERUNTIME;
    return 0;
}

/* The distinct values of column col over the rows of t whose column fcol equals fval
 * (fcol < 0: every row), in order of first appearance, into *out (malloc'd; the strings
 * are borrowed from t). Quadratic in the distinct values, which are few. */
static int distinct(const kv_tsv *t, int col, int fcol, const char *fval, const char ***out,
                    size_t *n)
{
    *out = malloc((t->n_rows + 1) * sizeof **out);
    *n = 0;
    if (!*out)
        return KV_ERUNTIME;
    for (size_t r = 0; r < t->n_rows; r++) {
        if (fcol >= 0 && strcmp(kv_tsv_cell(t, r, fcol), fval) != 0)
            continue;
        const char *v = kv_tsv_cell(t, r, col);
        if (!in_list(*out, *n, v))
            (*out)[(*n)++] = v;
    }
    return 0;
}

/* "a b c" from a list, for messages. */
static void join(char *buf, size_t len, const char *const *list, size_t n)
{
    size_t at = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && at < len; i++)
        at += (size_t)snprintf(buf + at, len - at, "%s%s", i ? ", " : "", list[i]);
}

/* ------------------------------------------------------------ open and resolve */

static int read_table(const kv_plot_ctx *c, const char *file, const char *cols, kv_tsv *t,
                      char *err, size_t err_len)
{
    char path[KV_PLOT_PATH + 64];
    snprintf(path, sizeof path, "%s/%s", c->dir, file);
    int rc = kv_tsv_read(path, t, err, err_len);
    return rc ? rc : kv_tsv_need(t, cols, err, err_len);
}

#define SUMMARY_COLS "trace policy type budget budget_spec recall_mean recall_ci_lo " \
                     "recall_ci_hi ci_units kv_bytes_peak meta_bytes_peak"

static int resolve_policies(kv_plot_ctx *c, char *err, size_t err_len)
{
    const kv_tsv *s = &c->summary;
    int c_trace = kv_tsv_col(s, "trace"), c_pol = kv_tsv_col(s, "policy");
    int c_type = kv_tsv_col(s, "type");
    const char **all;
    size_t n_all;
    if (distinct(s, c_pol, c_trace, c->map_trace, &all, &n_all))
        return KV_ERUNTIME;
    c->pol = malloc((n_all + 1) * sizeof *c->pol);
    c->pol_type = malloc((n_all + 1) * sizeof *c->pol_type);
    if (!c->pol || !c->pol_type) {
        free(all);
        return KV_ERUNTIME;
    }
    c->n_pol = 0;
    if (!c->o->policies) {
        memcpy(c->pol, all, n_all * sizeof *all);
        c->n_pol = n_all;
    } else {
        char *list = strdup(c->o->policies);
        if (!list) {
            free(all);
            return KV_ERUNTIME;
        }
        int rc = 0;
        for (char *save = NULL, *p = strtok_r(list, ",", &save); p && !rc;
             p = strtok_r(NULL, ",", &save)) {
            size_t i = 0;
            while (i < n_all && strcmp(all[i], p) != 0)
                i++;
            if (i == n_all) {
                char have[600];
                join(have, sizeof have, all, n_all);
                snprintf(err, err_len, "--policies: no policy '%s' in %s/summary.tsv (has: "
                         "%s)", p, c->dir, have);
                rc = KV_EUSAGE;
            } else if (!in_list(c->pol, c->n_pol, all[i])) {
                c->pol[c->n_pol++] = all[i];
            }
        }
        free(list);
        if (!rc && c->n_pol == 0) {
            snprintf(err, err_len, "--policies: no policy named");
            rc = KV_EUSAGE;
        }
        if (rc) {
            free(all);
            return rc;
        }
    }
    free(all);
    for (size_t p = 0; p < c->n_pol; p++) {
        c->pol_type[p] = c->pol[p];
        for (size_t r = 0; r < s->n_rows; r++)
            if (strcmp(kv_tsv_cell(s, r, c_pol), c->pol[p]) == 0) {
                c->pol_type[p] = kv_tsv_cell(s, r, c_type);
                break;
            }
    }
    return 0;
}

static int resolve(kv_plot_ctx *c, char *err, size_t err_len)
{
    const kv_tsv *s = &c->summary;
    int c_trace = kv_tsv_col(s, "trace"), c_spec = kv_tsv_col(s, "budget_spec");
    const char **all;
    size_t n_all;
    if (distinct(s, c_trace, -1, NULL, &all, &n_all))
        return KV_ERUNTIME;
    c->traces = malloc((n_all + 1) * sizeof *c->traces);
    if (!c->traces) {
        free(all);
        return KV_ERUNTIME;
    }
    for (size_t i = 0; i < n_all; i++)
        if (strcmp(all[i], "all") != 0)
            c->traces[c->n_traces++] = all[i];
    int has_all = c->n_traces < n_all;
    if (c->n_traces == 0) {
        free(all);
        snprintf(err, err_len, "%s/summary.tsv: no rows", c->dir);
        return KV_ERUNTIME;
    }
    const char *t = c->o->trace;
    if (t && !in_list(all, n_all, t)) {
        char have[600];
        join(have, sizeof have, all, n_all);
        snprintf(err, err_len, "--trace: no trace '%s' in %s/summary.tsv (has: %s)", t,
                 c->dir, have);
        free(all);
        return KV_EUSAGE;
    }
    free(all);
    int one = t && strcmp(t, "all") != 0;
    c->used = one ? &c->o->trace : c->traces;
    c->n_used = one ? 1 : c->n_traces;
    c->map_trace = one ? t : c->traces[0];
    c->shown = one ? t : (has_all ? "all" : c->traces[0]);
    if (distinct(s, c_spec, c_trace, c->map_trace, &c->specs, &c->n_specs))
        return KV_ERUNTIME;
    c->budget = c->o->budget ? c->o->budget : c->specs[0];
    if (!in_list(c->specs, c->n_specs, c->budget)) {
        char have[600];
        join(have, sizeof have, c->specs, c->n_specs);
        snprintf(err, err_len, "--budget: no budget_spec '%s' in %s/summary.tsv (has: %s)",
                 c->budget, c->dir, have);
        return KV_EUSAGE;
    }
    return resolve_policies(c, err, err_len);
}

int kv_plot_open(kv_plot_ctx *c, const char *dir, const kv_plot_options *o, char *err,
                 size_t err_len)
{
    memset(c, 0, sizeof *c);
    c->o = o;
    c->dir = dir;
    c->format = o->format ? o->format : "png";
    c->style = o->style ? o->style : "screen";
    c->smooth = o->smooth ? o->smooth : KV_PLOT_SMOOTH_DEFAULT;
    if (read_table(c, "summary.tsv", SUMMARY_COLS, &c->summary, err, err_len))
        return KV_ERUNTIME;
    int rc = resolve(c, err, err_len);
    if (rc != KV_EUSAGE && !err[0])
        snprintf(err, err_len, "out of memory reading %s", dir);
    if (rc)
        return rc;
    if (read_table(c, "steps.tsv", "trace policy budget_spec step recall kv_bytes meta_bytes",
                   &c->steps, err, err_len) ||
        read_table(c, "heads.tsv", "trace policy budget_spec layer head recall_mean",
                   &c->heads, err, err_len) ||
        read_table(c, "retention_map.tsv", "trace policy budget_spec layer kv_head position "
                   "held", &c->map, err, err_len))
        return KV_ERUNTIME;
    return 0;
}

void kv_plot_close(kv_plot_ctx *c)
{
    /* $KVSIM_PLOT_KEEP: keep the inputs gnuplot got, as that directory (for checking the
     * numbers a figure shows, and for tests); the last figure's vars.gp is the one left */
    const char *keep = getenv("KVSIM_PLOT_KEEP");
    if (c->tmp[0] && keep && keep[0] && rename(c->tmp, keep) == 0)
        c->tmp[0] = '\0';
    if (c->tmp[0]) {
        DIR *d = opendir(c->tmp);
        struct dirent *e;
        char path[KV_PLOT_PATH + 300];
        while (d && (e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(path, sizeof path, "%s/%s", c->tmp, e->d_name);
            unlink(path);
        }
        if (d)
            closedir(d);
        rmdir(c->tmp);
        c->tmp[0] = '\0';
    }
    kv_tsv_free(&c->summary);
    kv_tsv_free(&c->steps);
    kv_tsv_free(&c->heads);
    kv_tsv_free(&c->map);
    free(c->traces);
    free(c->specs);
    free(c->pol);
    free(c->pol_type);
}

/* ------------------------------------------------------------ series */

typedef struct {
    double *x, *y;
    size_t n;
} series;

static void series_free(series *s)
{
    free(s->x);
    free(s->y);
    s->x = s->y = NULL;
    s->n = 0;
}

static int oom(char *err, size_t err_len)
{
    snprintf(err, err_len, "out of memory preparing a figure");
    return KV_ENOMEM;
}

/* 1 when row r of steps.tsv belongs to (policy, spec) and one of the used traces. */
static int step_row(const kv_plot_ctx *c, size_t r, const int *cols, const char *policy,
                    const char *spec)
{
    const kv_tsv *t = &c->steps;
    return strcmp(kv_tsv_cell(t, r, cols[1]), policy) == 0 &&
           strcmp(kv_tsv_cell(t, r, cols[2]), spec) == 0 &&
           in_list(c->used, c->n_used, kv_tsv_cell(t, r, cols[0]));
}

/* Column ycol of steps.tsv for (policy, spec) per decode step: the mean over the used
 * traces, at the steps every one of them has. */
static int step_series(const kv_plot_ctx *c, const char *policy, const char *spec,
                       const char *ycol, series *s, char *err, size_t err_len)
{
    const kv_tsv *t = &c->steps;
    int cols[5] = { kv_tsv_col(t, "trace"), kv_tsv_col(t, "policy"),
                    kv_tsv_col(t, "budget_spec"), kv_tsv_col(t, "step"), kv_tsv_col(t, ycol) };
    memset(s, 0, sizeof *s);
    double v, max_step = -1;
    for (size_t r = 0; r < t->n_rows; r++) {
        if (!step_row(c, r, cols, policy, spec))
            continue;
        if (kv_tsv_number(t, r, cols[3], &v, err, err_len))
            return KV_ERUNTIME;
        if (v < 0 || v > 1e9 || v != floor(v)) {
            snprintf(err, err_len, "%s line %zu: step %g is not a position", t->path, r + 2, v);
            return KV_ERUNTIME;
        }
        max_step = v > max_step ? v : max_step;
    }
    size_t len = (size_t)(max_step + 1);
    double *sum = calloc(len + 1, sizeof *sum);
    int *count = calloc(len + 1, sizeof *count);
    s->x = malloc((len + 1) * sizeof *s->x);
    s->y = malloc((len + 1) * sizeof *s->y);
    if (!sum || !count || !s->x || !s->y) {
        free(sum);
        free(count);
        series_free(s);
        return oom(err, err_len);
    }
    int rc = 0;
    for (size_t r = 0; r < t->n_rows && !rc; r++) {
        double step;
        if (!step_row(c, r, cols, policy, spec))
            continue;
        rc = kv_tsv_number(t, r, cols[3], &step, err, err_len) ||
             kv_tsv_number(t, r, cols[4], &v, err, err_len);
        sum[(size_t)step] += v;
        count[(size_t)step]++;
    }
    for (size_t i = 0; i < len && !rc; i++)
        if (count[i] == (int)c->n_used) {
            s->x[s->n] = (double)i;
            s->y[s->n++] = sum[i] / (double)c->n_used;
        }
    free(sum);
    free(count);
    if (rc)
        series_free(s);
    return rc;
}

/* out[i] = the mean of y over the w points centred on i (fewer at the ends). */
static void moving_mean(const double *y, size_t n, int w, double *out)
{
    size_t half = (size_t)(w / 2);
    for (size_t i = 0; i < n; i++) {
        size_t lo = i > half ? i - half : 0, hi = i + half < n ? i + half : n - 1;
        double sum = 0;
        for (size_t j = lo; j <= hi; j++)
            sum += y[j];
        out[i] = sum / (double)(hi - lo + 1);
    }
}

static int constant(const series *s)
{
    for (size_t i = 1; i < s->n; i++)
        if (fabs(s->y[i] - s->y[0]) > 1e-6)
            return 0;
    return KV_ERUNTIME;
}

static int same_series(const series *a, const series *b)
{
    if (a->n != b->n)
        return 0;
    for (size_t i = 0; i < a->n; i++)
        if (a->x[i] != b->x[i] || a->y[i] != b->y[i])
            return 0;
    return KV_ERUNTIME;
}

/* The `budget` (tokens) column of summary for (trace, policy, spec), or "?". */
static const char *spec_tokens(const kv_plot_ctx *c, const char *trace, const char *policy,
                               const char *spec)
{
    const kv_tsv *s = &c->summary;
    int ct = kv_tsv_col(s, "trace"), cp = kv_tsv_col(s, "policy");
    int cs = kv_tsv_col(s, "budget_spec"), cb = kv_tsv_col(s, "budget");
    for (size_t r = 0; r < s->n_rows; r++)
        if (strcmp(kv_tsv_cell(s, r, ct), trace) == 0 &&
            strcmp(kv_tsv_cell(s, r, cp), policy) == 0 &&
            strcmp(kv_tsv_cell(s, r, cs), spec) == 0)
            return kv_tsv_cell(s, r, cb);
    return "?";
}

static kv_budget_kind spec_kind(const char *spec, double *value)
{
    kv_budget_spec b;
    char err[200];
    if (kv_budget_parse(spec, &b, err, sizeof err) != 0) {
        *value = 0;
        return KV_BUDGET_TOKENS;
    }
    *value = b.value;
    return b.kind;
}

/* A budget spec in words, for panel headings: "B = 64 tokens", "0.25p = 32 tokens",
 * "64KiB of KV + metadata". */
static void spec_words(const kv_plot_ctx *c, const char *spec, char *buf, size_t len)
{
    double v;
    switch (spec_kind(spec, &v)) {
    case KV_BUDGET_BYTES:
        snprintf(buf, len, "budget %s (KV + metadata)", spec);
        break;
    case KV_BUDGET_PROMPT:
        snprintf(buf, len, "B = %s of the prompt = %s tokens", spec,
                 spec_tokens(c, c->map_trace, c->pol[0], spec));
        break;
    default:
        snprintf(buf, len, "B = %s tokens", spec);
    }
}

/* spec in words for a caption; a byte budget adds the tokens each policy got on the
 * trace of the maps (a byte budget resolves per policy). */
static void caption_words(const kv_plot_ctx *c, const char *spec, char *buf, size_t len)
{
    double v;
    spec_words(c, spec, buf, len);
    if (spec_kind(spec, &v) != KV_BUDGET_BYTES)
        return;
    size_t at = strlen(buf);
    at += (size_t)snprintf(buf + at, at < len ? len - at : 0, ", that is B =");
    for (size_t p = 0; p < c->n_pol && at < len; p++)
        at += (size_t)snprintf(buf + at, len - at, "%s %s tokens for %s", p ? "," : "",
                               spec_tokens(c, c->map_trace, c->pol[p], spec), c->pol[p]);
}

/* ------------------------------------------------------------ the variables file */

static void vars_common(const kv_plot_ctx *c, FILE *f, const char *scripts, const char *name)
{
    fprintf(f, "# written by kvsim plot: the inputs of figure %s\n", name);
    gp_assign(f, "adir", scripts);
    gp_assign(f, "name", name);
    gp_assign(f, "fmt", c->format);
    gp_assign(f, "style", c->style);
    fprintf(f, "columns = %d\nreq_w = %.6g\nreq_h = %.6g\nsmooth = %d\nraw = %d\n",
            c->o->columns ? c->o->columns : 1, c->o->width, c->o->height, c->smooth,
            c->o->raw);
    fprintf(f, "n_pol = %zu\narray pol[%zu]\narray pol_pt[%zu]\n", c->n_pol, c->n_pol,
            c->n_pol);
    for (size_t p = 0; p < c->n_pol; p++) {
        const char *rgb;
        int dt, pt;
        policy_style(c, p, &rgb, &dt, &pt);
        fprintf(f, "pol[%zu] = ", p + 1);
        gp_string(f, c->pol[p]);
        fprintf(f, "\npol_pt[%zu] = %d\n", p + 1, pt);
        fprintf(f, "set linetype %zu lc rgb '%s' lw 1.5 dt %d pt %d\n", p + 1, rgb, dt, pt);
    }
    /* linetype n_pol + 1: lines standing for several policies at once */
    fprintf(f, "set linetype %zu lc rgb '#777777' lw 1.5 dt 1 pt 6\n", c->n_pol + 1);
    /* linetype n_pol + 2: an invisible sample, for a legend row continuing the one above */
    fprintf(f, "set linetype %zu lc rgb '#ffffff' lw 0 dt 1 pt 0\n", c->n_pol + 2);
    gp_assign(f, "budget", c->budget);
    fprintf(f, "n_used = %zu\n", c->n_used);
    size_t longest = 1;
    for (size_t p = 0; p < c->n_pol; p++)
        longest = strlen(c->pol[p]) > longest ? strlen(c->pol[p]) : longest;
    fprintf(f, "label_chars = %zu\n", longest);
}

/* What the per-step figures show, for captions. */
static void traces_words(const kv_plot_ctx *c, char *buf, size_t len)
{
    char list[2000];
    join(list, sizeof list, c->used, c->n_used);
    if (c->n_used == 1)
        snprintf(buf, len, "trace %s", list);
    else
        snprintf(buf, len, "the mean over %zu traces at each decode step all of them have "
                 "(%s)", c->n_used, list);
}

/* ------------------------------------------------------------ figures */

typedef struct {
    FILE *vars, *caption;
    char vars_path[KV_PLOT_PATH + 64], caption_path[KV_PLOT_PATH + 64];
} fig_files;

static int write_series(const kv_plot_ctx *c, const char *name, const series *s,
                        const double *smoothed, char *err, size_t err_len)
{
    char path[KV_PLOT_PATH + 64];
    FILE *f = data_open(c, name, path, sizeof path, err, err_len);
    if (!f)
        return KV_ERUNTIME;
    for (size_t i = 0; i < s->n; i++) {
        if (smoothed)
            fprintf(f, "%.9g\t%.9g\t%.9g\n", s->x[i], s->y[i], smoothed[i]);
        else
            fprintf(f, "%.9g\t%.9g\n", s->x[i], s->y[i]);
    }
    return data_close(f, path, err, err_len);
}

static int fig_recall_steps(const kv_plot_ctx *c, fig_files *ff, char *err, size_t err_len)
{
    FILE *v = ff->vars;
    char words[3000], tw[2200];
    double y_lo = 1;
    size_t n_b = c->n_specs, dropped = 0;
    const char *dropped_name = "";
    fprintf(v, "n_b = %zu\narray panel[%zu]\narray keep[%zu]\n", n_b, n_b, n_b * c->n_pol);
    for (size_t b = 0; b < n_b; b++) {
        spec_words(c, c->specs[b], words, sizeof words);
        fprintf(v, "panel[%zu] = ", b + 1);
        gp_string(v, words);
        fputc('\n', v);
        for (size_t p = 0; p < c->n_pol; p++) {
            series s;
            if (step_series(c, c->pol[p], c->specs[b], "recall", &s, err, err_len))
                return KV_ERUNTIME;
            double *sm = malloc((s.n + 1) * sizeof *sm);
            if (!sm) {
                series_free(&s);
                return oom(err, err_len);
            }
            moving_mean(s.y, s.n, c->smooth, sm);
            /* a reference that never changes (full: recall 1) says nothing per step */
            int keep = s.n > 0 && !(strcmp(c->pol_type[p], "full") == 0 && constant(&s) &&
                                   c->n_pol > 1);
            if (!keep && s.n) {
                dropped++;
                dropped_name = c->pol[p];
            }
            for (size_t i = 0; keep && i < s.n; i++) {
                double y = c->o->raw ? s.y[i] : sm[i];
                y_lo = y < y_lo ? y : y_lo;
            }
            char name[64];
            snprintf(name, sizeof name, "rs_b%zu_p%zu.dat", b + 1, p + 1);
            int rc = write_series(c, name, &s, sm, err, err_len);
            free(sm);
            series_free(&s);
            if (rc)
                return KV_ERUNTIME;
            fprintf(v, "keep[%zu] = %d\n", b * c->n_pol + p + 1, keep);
        }
    }
    fprintf(v, "y_lo = %.3f\n", floor(y_lo * 10) / 10.0);
    traces_words(c, tw, sizeof tw);
    fprintf(ff->caption, "Attention-mass recall (the share of the full cache's attention "
            "mass that the kept tokens receive, averaged over layers and query heads) at "
            "each decode step, one line per policy, one panel per budget. Data: %s. ", tw);
    if (c->smooth > 1)
        fprintf(ff->caption, "Lines: centred moving mean over %d decode steps (fewer at "
                "the ends)%s. ", c->smooth,
                c->o->raw ? "; thin light lines: the unsmoothed values" : "");
    else
        fprintf(ff->caption, "Lines: the unsmoothed values. ");
    if (dropped)
        fprintf(ff->caption, "%s (recall constant at 1) is not drawn. ", dropped_name);
    fprintf(ff->caption, "Budgets: ");
    for (size_t b = 0; b < n_b; b++) {
        caption_words(c, c->specs[b], words, sizeof words);
        fprintf(ff->caption, "%s%s", b ? "; " : "", words);
    }
    fprintf(ff->caption, ".\n");
    return 0;
}

/* Policies whose series are identical share one line; *group receives each policy's
 * group (0-based), the return value the number of groups. */
static size_t group_series(const series *s, size_t n, size_t *group)
{
    size_t n_groups = 0;
    for (size_t p = 0; p < n; p++) {
        group[p] = n_groups;
        for (size_t q = 0; q < p; q++)
            if (same_series(&s[p], &s[q])) {
                group[p] = group[q];
                break;
            }
        if (group[p] == n_groups)
            n_groups++;
    }
    return n_groups;
}

/* The legend rows of group g (members: the policies p with group[p] == g): its names,
 * three to a row, the last row ending in suffix; the first row shows the line (linetype
 * lt, dash dt), the others an invisible one (linetype n_pol + 2). Appends to key_* in
 * vars.gp; *n_key counts the rows. */
static void group_key(const kv_plot_ctx *c, FILE *v, size_t g, const size_t *group, int lt,
                      int dt, const char *suffix, size_t *n_key)
{
    size_t members = 0, k = 0;
    for (size_t p = 0; p < c->n_pol; p++)
        members += group[p] == g;
    for (size_t p = 0; p < c->n_pol; p++) {
        if (group[p] != g)
            continue;
        if (k % 3 == 0) {
            ++*n_key;
            fprintf(v, "key_lt[%zu] = %d\nkey_dt[%zu] = %d\nkey_text[%zu] = ''", *n_key,
                    k == 0 ? lt : (int)c->n_pol + 2, *n_key, dt, *n_key);
        }
        fprintf(v, " . ");
        gp_string(v, c->pol[p]);
        k++;
        if (k == members) {
            fprintf(v, " . ");
            gp_string(v, suffix);
        } else if (k % 3 != 0) {
            fprintf(v, " . ', '");
        } else {
            fprintf(v, " . ','");
        }
        if (k % 3 == 0 || k == members)
            fputc('\n', v);
    }
}

static int fig_memory_steps(const kv_plot_ctx *c, fig_files *ff, char *err, size_t err_len)
{
    FILE *v = ff->vars;
    size_t n = c->n_pol;
    series *kv = calloc(n, sizeof *kv), *meta = calloc(n, sizeof *meta);
    size_t *gk = calloc(n, sizeof *gk), *gm = calloc(n, sizeof *gm);
    int rc = !kv || !meta || !gk || !gm ? oom(err, err_len) : 0;
    for (size_t p = 0; p < n && !rc; p++)
        rc = step_series(c, c->pol[p], c->budget, "kv_bytes", &kv[p], err, err_len) ||
             step_series(c, c->pol[p], c->budget, "meta_bytes", &meta[p], err, err_len);
    double lo = INFINITY, hi = 0;
    size_t n_kv = 0, n_meta = 0;
    if (!rc) {
        n_kv = group_series(kv, n, gk);
        n_meta = group_series(meta, n, gm);
        fprintf(v, "n_kv = %zu\narray kv_lt[%zu]\narray meta_lt[%zu]\n", n_kv, n_kv, n_meta);
        fprintf(v, "array key_text[%zu]\narray key_lt[%zu]\narray key_dt[%zu]\n", 3 * n + 2,
                3 * n + 2, 3 * n + 2);
    }
    size_t shown_meta = 0, n_key = 0;
    for (int pass = 0; pass < 2 && !rc; pass++) {
        const series *s = pass ? meta : kv;
        const size_t *g = pass ? gm : gk;
        size_t n_g = pass ? n_meta : n_kv;
        for (size_t k = 0; k < n_g && !rc; k++) {
            size_t first = 0, members = 0;
            for (size_t p = n; p-- > 0;)
                if (g[p] == k) {
                    first = p;
                    members++;
                }
            if (pass && constant(&s[first]) && s[first].n && s[first].y[0] == 0)
                continue;   /* no metadata: no line */
            for (size_t i = 0; i < s[first].n; i++) {
                double y = s[first].y[i];
                if (y > 0 && y < lo)
                    lo = y;
                hi = y > hi ? y : hi;
            }
            size_t idx = pass ? ++shown_meta : k + 1;
            char name[64];
            snprintf(name, sizeof name, "%s_%zu.dat", pass ? "mm" : "ms", idx);
            rc = write_series(c, name, &s[first], NULL, err, err_len);
            /* a shared line keeps its policies' look when they are of one type */
            int one_type = 1;
            for (size_t p = 0; p < n; p++)
                one_type &= g[p] != k || strcmp(c->pol_type[p], c->pol_type[first]) == 0;
            size_t lt = one_type ? first + 1 : n + 1;
            group_key(c, v, k, g, (int)lt, pass ? 2 : 1, pass ? ": metadata" :
                      (members > 1 ? ": KV (equal)" : ": KV"), &n_key);
            fprintf(v, "%s[%zu] = %zu\n", pass ? "meta_lt" : "kv_lt", idx, lt);
        }
    }
    double bytes = 0;
    int is_bytes = spec_kind(c->budget, &bytes) == KV_BUDGET_BYTES;
    if (is_bytes)
        hi = bytes > hi ? bytes : hi;
    if (!rc) {
        fprintf(v, "n_key = %zu\n", n_key);
        fprintf(v, "n_meta = %zu\ny_lo = %.9g\ny_hi = %.9g\nbudget_bytes = %.9g\n", shown_meta,
                isfinite(lo) ? lo / 1024 : 0.5, hi > 0 ? hi / 1024 : 1, is_bytes ? bytes : 0);
        char words[3000], tw[2200];
        caption_words(c, c->budget, words, sizeof words);
        traces_words(c, tw, sizeof tw);
        fprintf(ff->caption, "KV-cache bytes (solid) and policy metadata bytes (dashed) "
                "summed over all layers and KV heads at each decode step, %s; data: %s. "
                "Unsmoothed (the values are exact counts). Policies with identical lines "
                "share one, labelled with all their names; policies without metadata have "
                "no dashed line.%s\n", words, tw, is_bytes ?
                " The dotted horizontal line is the byte budget, which bounds the peak of "
                "KV plus metadata." : "");
    }
    for (size_t p = 0; p < n && kv && meta; p++) {
        series_free(&kv[p]);
        series_free(&meta[p]);
    }
    free(kv);
    free(meta);
    free(gk);
    free(gm);
    return rc;
}

/* One summary row of the shown trace: x, and recall_mean with its interval. */
typedef struct {
    double x, mean, lo, hi;
} budget_point;

static int by_x(const void *a, const void *b)
{
    double d = ((const budget_point *)a)->x - ((const budget_point *)b)->x;
    return (d > 0) - (d < 0);
}

/* x of a summary row: "tokens" (budget), "spec_bytes" (the byte spec) or "peak_bytes"
 * (kv_bytes_peak + meta_bytes_peak). */
static int summary_points(const kv_plot_ctx *c, const char *policy, const char *x,
                          budget_point *pts, size_t *n, char *err, size_t err_len)
{
    const kv_tsv *s = &c->summary;
    int ct = kv_tsv_col(s, "trace"), cp = kv_tsv_col(s, "policy");
    int cb = kv_tsv_col(s, "budget"), cs = kv_tsv_col(s, "budget_spec");
    int cm = kv_tsv_col(s, "recall_mean"), cl = kv_tsv_col(s, "recall_ci_lo");
    int ch = kv_tsv_col(s, "recall_ci_hi"), ck = kv_tsv_col(s, "kv_bytes_peak");
    int cmeta = kv_tsv_col(s, "meta_bytes_peak");
    *n = 0;
    for (size_t r = 0; r < s->n_rows; r++) {
        if (strcmp(kv_tsv_cell(s, r, ct), c->shown) || strcmp(kv_tsv_cell(s, r, cp), policy))
            continue;
        budget_point *q = &pts[*n];
        double kvb = 0, mb = 0;
        if (kv_tsv_number(s, r, cm, &q->mean, err, err_len) ||
            kv_tsv_number(s, r, cl, &q->lo, err, err_len) ||
            kv_tsv_number(s, r, ch, &q->hi, err, err_len))
            return KV_ERUNTIME;
        if (strcmp(x, "tokens") == 0) {
            if (kv_tsv_number(s, r, cb, &q->x, err, err_len))
                return KV_ERUNTIME;
        } else if (strcmp(x, "spec_bytes") == 0) {
            spec_kind(kv_tsv_cell(s, r, cs), &q->x);
        } else {
            if (kv_tsv_number(s, r, ck, &kvb, err, err_len) ||
                kv_tsv_number(s, r, cmeta, &mb, err, err_len))
                return KV_ERUNTIME;
            q->x = kvb + mb;
        }
        (*n)++;
    }
    qsort(pts, *n, sizeof *pts, by_x);
    return 0;
}

static int write_points(const kv_plot_ctx *c, const char *name, const budget_point *pts,
                        size_t n, double x_scale, char *err, size_t err_len)
{
    char path[KV_PLOT_PATH + 64];
    FILE *f = data_open(c, name, path, sizeof path, err, err_len);
    if (!f)
        return KV_ERUNTIME;
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%.9g\t%.9g\t%.9g\t%.9g\n", pts[i].x * x_scale, pts[i].mean, pts[i].lo,
                pts[i].hi);
    return data_close(f, path, err, err_len);
}

/* The interval the summary rows of the shown trace carry, for captions. */
static void interval_words(const kv_plot_ctx *c, char *buf, size_t len)
{
    const kv_tsv *s = &c->summary;
    int ct = kv_tsv_col(s, "trace"), cu = kv_tsv_col(s, "ci_units");
    const char *units = "?";
    for (size_t r = 0; r < s->n_rows; r++)
        if (strcmp(kv_tsv_cell(s, r, ct), c->shown) == 0) {
            units = kv_tsv_cell(s, r, cu);
            break;
        }
    if (strcmp(c->shown, "all") == 0)
        snprintf(buf, len, "the mean over %s traces, with 95%% Student-t intervals across "
                 "the traces", units);
    else
        snprintf(buf, len, "trace %s, with 95%% percentile-bootstrap intervals (1000 "
                 "resamples) over its %s (layer, query head) units", c->shown, units);
}

/* Points of every policy against x; writes NAME_p%d.dat files and the x range. */
static int recall_against(const kv_plot_ctx *c, fig_files *ff, const char *x,
                          const char *prefix, double x_scale, double *x_lo, double *x_hi,
                          char *err, size_t err_len)
{
    budget_point *pts = malloc((c->summary.n_rows + 1) * sizeof *pts);
    if (!pts)
        return oom(err, err_len);
    double y_lo = 1;
    *x_lo = INFINITY;
    *x_hi = 0;
    for (size_t p = 0; p < c->n_pol; p++) {
        size_t n;
        char name[64];
        snprintf(name, sizeof name, "%s_p%zu.dat", prefix, p + 1);
        if (summary_points(c, c->pol[p], x, pts, &n, err, err_len) ||
            write_points(c, name, pts, n, x_scale, err, err_len)) {
            free(pts);
            return KV_ERUNTIME;
        }
        for (size_t i = 0; i < n; i++) {
            y_lo = pts[i].lo < y_lo ? pts[i].lo : y_lo;
            *x_lo = pts[i].x * x_scale < *x_lo ? pts[i].x * x_scale : *x_lo;
            *x_hi = pts[i].x * x_scale > *x_hi ? pts[i].x * x_scale : *x_hi;
        }
    }
    free(pts);
    y_lo = floor((y_lo - 0.01) * 20) / 20.0;
    fprintf(ff->vars, "y_lo = %.3f\nx_lo = %.9g\nx_hi = %.9g\n", y_lo < 0 ? 0 : y_lo,
            isfinite(*x_lo) ? *x_lo : 1, *x_hi > 0 ? *x_hi : 2);
    return 0;
}

static int fig_recall_budget(const kv_plot_ctx *c, fig_files *ff, char *err, size_t err_len)
{
    /* byte budgets: the axis is the budget in bytes as given; otherwise tokens */
    int bytes = 1;
    double v;
    for (size_t b = 0; b < c->n_specs; b++)
        bytes &= spec_kind(c->specs[b], &v) == KV_BUDGET_BYTES;
    double lo, hi;
    if (recall_against(c, ff, bytes ? "spec_bytes" : "tokens", "rb", bytes ? 1.0 / 1024 : 1,
                       &lo, &hi, err, err_len))
        return KV_ERUNTIME;
    FILE *f = ff->vars;
    fprintf(f, "x_bytes = %d\nn_xt = %zu\narray xt_val[%zu]\narray xt_lab[%zu]\n", bytes,
            c->n_specs, c->n_specs, c->n_specs);
    /* ticks: the budgets run, when they are the same for every policy */
    for (size_t b = 0; b < c->n_specs; b++) {
        kv_budget_kind k = spec_kind(c->specs[b], &v);
        fprintf(f, "xt_val[%zu] = %.9g\nxt_lab[%zu] = ", b + 1,
                k == KV_BUDGET_BYTES ? v / 1024 : (k == KV_BUDGET_TOKENS ? v : -1), b + 1);
        gp_string(f, c->specs[b]);
        fputc('\n', f);
    }
    char iw[600];
    interval_words(c, iw, sizeof iw);
    fprintf(ff->caption, "Mean attention-mass recall over the decode steps against the "
            "budget (%s, log scale), one line per policy; error bars: %s. Points of one "
            "budget are spread slightly sideways so their bars stay apart.%s\n",
            bytes ? "KiB of KV cache plus policy metadata, as given" : "tokens per cache",
            iw, bytes ? " A byte budget gives each policy the tokens that fit, so "
            "policies are compared at equal memory." : "");
    return 0;
}

static int fig_recall_bytes(const kv_plot_ctx *c, fig_files *ff, char *err, size_t err_len)
{
    double lo, hi;
    if (recall_against(c, ff, "peak_bytes", "rx", 1.0 / 1024, &lo, &hi, err, err_len))
        return KV_ERUNTIME;
    char iw[600];
    interval_words(c, iw, sizeof iw);
    fprintf(ff->caption, "Mean attention-mass recall over the decode steps against the "
            "memory each run needed: the peak over decode steps of KV-cache bytes plus "
            "policy metadata bytes, summed over all layers and KV heads (KiB, log scale); "
            "one point per budget, one line per policy; error bars: %s.\n", iw);
    return 0;
}

/* The panels of the per-policy maps: every policy but a `full` one (whose map and
 * heatmap say nothing: it holds everything, recall 1), unless it is alone. */
static size_t map_panels(const kv_plot_ctx *c, FILE *v, size_t *panel_pol)
{
    size_t n = 0;
    for (size_t p = 0; p < c->n_pol; p++)
        if (strcmp(c->pol_type[p], "full") != 0 || c->n_pol == 1)
            panel_pol[n++] = p;
    fprintf(v, "n_panels = %zu\narray panel_pol[%zu]\n", n, n);
    for (size_t k = 0; k < n; k++)
        fprintf(v, "panel_pol[%zu] = %zu\n", k + 1, panel_pol[k] + 1);
    return n;
}

/* Rows of table t for (map_trace, policy, budget) into NAME: the columns cols (by name,
 * numbers), tab-separated. *max receives each column's largest value (first 4). */
static int write_rows(const kv_plot_ctx *c, const kv_tsv *t, const char *name,
                      const char *policy, const char *const *cols, int n_cols, double *max,
                      double *min0, char *err, size_t err_len)
{
    int ct = kv_tsv_col(t, "trace"), cp = kv_tsv_col(t, "policy");
    int cs = kv_tsv_col(t, "budget_spec"), idx[8];
    for (int i = 0; i < n_cols; i++)
        idx[i] = kv_tsv_col(t, cols[i]);
    char path[KV_PLOT_PATH + 64];
    FILE *f = data_open(c, name, path, sizeof path, err, err_len);
    if (!f)
        return KV_ERUNTIME;
    int rc = 0;
    for (size_t r = 0; r < t->n_rows && !rc; r++) {
        if (strcmp(kv_tsv_cell(t, r, cp), policy) || strcmp(kv_tsv_cell(t, r, cs), c->budget) ||
            strcmp(kv_tsv_cell(t, r, ct), c->map_trace))
            continue;
        for (int i = 0; i < n_cols && !rc; i++) {
            double v;
            rc = kv_tsv_number(t, r, idx[i], &v, err, err_len);
            max[i] = v > max[i] ? v : max[i];
            min0[i] = v < min0[i] ? v : min0[i];
            fprintf(f, i ? "\t%.9g" : "%.9g", v);
        }
        fputc('\n', f);
    }
    if (rc) {
        fclose(f);
        return KV_ERUNTIME;
    }
    return data_close(f, path, err, err_len);
}

static int fig_retention_map(const kv_plot_ctx *c, fig_files *ff, char *err, size_t err_len)
{
    size_t *panel_pol = malloc((c->n_pol + 1) * sizeof *panel_pol);
    if (!panel_pol)
        return oom(err, err_len);
    size_t n = map_panels(c, ff->vars, panel_pol);
    static const char *const cols[] = { "position", "layer", "kv_head" };
    double max[3] = { 0, 0, 0 }, min[3] = { INFINITY, INFINITY, INFINITY };
    int rc = 0;
    for (size_t k = 0; k < n && !rc; k++) {
        char name[64];
        snprintf(name, sizeof name, "rm_p%zu.dat", k + 1);
        rc = write_rows(c, &c->map, name, c->pol[panel_pol[k]], cols, 3, max, min, err,
                        err_len);
    }
    /* P and T from steps.tsv: the first decode step is P, the last T - 1 */
    const kv_tsv *t = &c->steps;
    int ct = kv_tsv_col(t, "trace"), cst = kv_tsv_col(t, "step");
    double p_lo = INFINITY, t_hi = 0, v;
    for (size_t r = 0; r < t->n_rows && !rc; r++) {
        if (strcmp(kv_tsv_cell(t, r, ct), c->map_trace))
            continue;
        rc = kv_tsv_number(t, r, cst, &v, err, err_len);
        p_lo = v < p_lo ? v : p_lo;
        t_hi = v > t_hi ? v : t_hi;
    }
    free(panel_pol);
    if (rc)
        return KV_ERUNTIME;
    fprintf(ff->vars, "P = %.0f\nT = %.0f\nn_layers = %.0f\nn_kv = %.0f\n",
            isfinite(p_lo) ? p_lo : 0, t_hi + 1, max[1] + 1, max[2] + 1);
    char words[3000];
    caption_words(c, c->budget, words, sizeof words);
    fprintf(ff->caption, "Which positions each cache still holds at the end of trace %s "
            "(dark: held), one row per (layer, KV head), layers from the bottom, one panel "
            "per policy, %s. The dashed line marks the end of the prompt (P = %.0f).%s\n",
            c->map_trace, words, isfinite(p_lo) ? p_lo : 0, n < c->n_pol ?
            " full is not shown: it holds every position." : "");
    return 0;
}

static int fig_head_recall(const kv_plot_ctx *c, fig_files *ff, char *err, size_t err_len)
{
    size_t *panel_pol = malloc((c->n_pol + 1) * sizeof *panel_pol);
    if (!panel_pol)
        return oom(err, err_len);
    size_t n = map_panels(c, ff->vars, panel_pol);
    static const char *const cols[] = { "head", "layer", "recall_mean" };
    double max[3] = { 0, 0, 0 }, min[3] = { INFINITY, INFINITY, INFINITY };
    int rc = 0;
    for (size_t k = 0; k < n && !rc; k++) {
        char name[64];
        snprintf(name, sizeof name, "hr_p%zu.dat", k + 1);
        rc = write_rows(c, &c->heads, name, c->pol[panel_pol[k]], cols, 3, max, min, err,
                        err_len);
    }
    free(panel_pol);
    if (rc)
        return KV_ERUNTIME;
    double c_lo = isfinite(min[2]) ? floor(min[2] * 10) / 10.0 : 0;
    fprintf(ff->vars, "n_heads = %.0f\nn_layers = %.0f\nc_lo = %.3f\n", max[0] + 1,
            max[1] + 1, c_lo >= 1 ? 0.9 : c_lo);
    char words[3000];
    caption_words(c, c->budget, words, sizeof words);
    fprintf(ff->caption, "Mean attention-mass recall over the decode steps of every (layer, "
            "query head) of trace %s, one heatmap per policy on one colour scale, %s.%s\n",
            c->map_trace, words, n < c->n_pol ? " full is not shown: its recall is 1 "
            "everywhere." : "");
    return 0;
}

/* ------------------------------------------------------------ retention_text */

#define TEXT_COLS 150      /* characters per line of the paragraph */
#define TEXT_PANELS 4      /* policies shown at most */

/* A retention.tsv token cell back to its text: \\ \t \n \r unescaped, into out. */
static void tsv_unescape(const char *s, char *out, size_t len)
{
    size_t n = 0;
    for (; *s && n + 1 < len; s++) {
        if (*s == '\\' && s[1]) {
            s++;
            out[n++] = *s == 't' ? '\t' : *s == 'n' ? '\n' : *s == 'r' ? '\r' : *s;
        } else {
            out[n++] = *s;
        }
    }
    out[n] = '\0';
}

/* Characters (UTF-8 code points) of s. */
static int utf8_chars(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* The policies shown: up to TEXT_PANELS that are not references (full, oracle,
 * lookahead); their indices into c->pol go to panel_pol. */
static size_t text_panels(const kv_plot_ctx *c, FILE *v, size_t *panel_pol)
{
    size_t n = 0;
    for (size_t p = 0; p < c->n_pol && n < TEXT_PANELS; p++)
        if (strcmp(c->pol_type[p], "full") && strcmp(c->pol_type[p], "oracle") &&
            strcmp(c->pol_type[p], "lookahead"))
            panel_pol[n++] = p;
    for (size_t p = 0; n == 0 && p < c->n_pol; p++)
        panel_pol[n++] = p;
    fprintf(v, "n_panels = %zu\narray panel_pol[%zu]\n", n, n);
    for (size_t k = 0; k < n; k++)
        fprintf(v, "panel_pol[%zu] = %zu\n", k + 1, panel_pol[k] + 1);
    return n;
}

typedef struct {
    char **text;       /* [T] the shown text of each position (leading space of a line cut) */
    int *x, *y, *len;  /* [T] grid cell of its first character, line, characters */
    double *frac;      /* [T] the share of caches holding it, for the panel being written */
    int T, P, n_lines, has_text;
} text_layout;

static void text_layout_free(text_layout *L)
{
    for (int i = 0; L->text && i < L->T; i++)
        free(L->text[i]);
    free(L->text), free(L->x), free(L->y), free(L->len), free(L->frac);
}

/* Lays the tokens out on a grid of TEXT_COLS characters: a token that would cross the
 * right edge starts the next line, as does "<s>" (a new story) after the first position;
 * "<0x0A>" (a newline byte) ends the line; a line does not start with a space. */
static void text_place(text_layout *L)
{
    int x = 0, y = 0;
    for (int i = 0; i < L->T; i++) {
        int newline = strcmp(L->text[i], "<0x0A>") == 0;
        if (newline)
            L->text[i][0] = '\0';
        int n = utf8_chars(L->text[i]);
        if (x > 0 && (x + n > TEXT_COLS || (i > 0 && strcmp(L->text[i], "<s>") == 0)))
            x = 0, y++;
        if (x == 0 && L->text[i][0] == ' ')
            memmove(L->text[i], L->text[i] + 1, strlen(L->text[i])), n--;
        L->x[i] = x, L->y[i] = y, L->len[i] = n;
        x += n;
        if (newline)
            x = 0, y++;
    }
    L->n_lines = y + 1;
}

/* The texts and P of map_trace from retention.tsv (rows of its first panel policy). */
static int text_read(const kv_plot_ctx *c, const kv_tsv *t, const char *policy,
                     text_layout *L, char *err, size_t err_len)
{
    int ct = kv_tsv_col(t, "trace"), cp = kv_tsv_col(t, "policy");
    int cs = kv_tsv_col(t, "budget_spec"), cj = kv_tsv_col(t, "position");
    int ck = kv_tsv_col(t, "token");
    int T = 0;
    for (size_t r = 0; r < t->n_rows; r++)
        T += !strcmp(kv_tsv_cell(t, r, ct), c->map_trace) &&
             !strcmp(kv_tsv_cell(t, r, cp), policy) && !strcmp(kv_tsv_cell(t, r, cs), c->budget);
    L->T = T;
    L->text = calloc((size_t)T + 1, sizeof *L->text);
    L->x = calloc((size_t)T + 1, sizeof *L->x);
    L->y = calloc((size_t)T + 1, sizeof *L->y);
    L->len = calloc((size_t)T + 1, sizeof *L->len);
    L->frac = calloc((size_t)T + 1, sizeof *L->frac);
    if (!L->text || !L->x || !L->y || !L->len || !L->frac)
        return oom(err, err_len);
    const char *first = NULL;
    for (size_t r = 0; r < t->n_rows; r++) {
        if (strcmp(kv_tsv_cell(t, r, ct), c->map_trace) || strcmp(kv_tsv_cell(t, r, cp), policy) ||
            strcmp(kv_tsv_cell(t, r, cs), c->budget))
            continue;
        double j;
        if (kv_tsv_number(t, r, cj, &j, err, err_len))
            return KV_ERUNTIME;
        if (j < 0 || j >= T || L->text[(int)j]) {
            snprintf(err, err_len, "%s/retention.tsv: position %.0f of trace %s repeated or "
                     "outside 0..%d", c->dir, j, c->map_trace, T - 1);
            return KV_ERUNTIME;
        }
        char buf[1024];
        const char *cell = ck >= 0 ? kv_tsv_cell(t, r, ck) : "";
        first = first ? first : cell;
        tsv_unescape(cell, buf, sizeof buf);
        L->has_text = ck >= 0 && first[0] && first[0] != '#';
        if (!L->has_text) /* ids (#id) or positions, space-separated */
            snprintf(buf, sizeof buf, " %s", cell[0] ? cell : "");
        if (!L->has_text && !cell[0])
            snprintf(buf, sizeof buf, " %d", (int)j);
        if (!(L->text[(int)j] = strdup(buf)))
            return oom(err, err_len);
    }
    /* P from steps.tsv: the first decode step */
    const kv_tsv *st = &c->steps;
    int sct = kv_tsv_col(st, "trace"), scs = kv_tsv_col(st, "step");
    double p_lo = INFINITY, v;
    for (size_t r = 0; r < st->n_rows; r++) {
        if (strcmp(kv_tsv_cell(st, r, sct), c->map_trace))
            continue;
        if (kv_tsv_number(st, r, scs, &v, err, err_len))
            return KV_ERUNTIME;
        p_lo = v < p_lo ? v : p_lo;
    }
    L->P = isfinite(p_lo) ? (int)p_lo : 0;
    return 0;
}

/* Panel k's boxes and labels: x centre, line, half width, fraction, label x, colour
 * (0xRRGGBB: prompt grey, generated black), token index (tok[] in vars.gp). */
static int text_panel(const kv_plot_ctx *c, const kv_tsv *t, size_t k, const char *policy,
                      text_layout *L, char *err, size_t err_len)
{
    int ct = kv_tsv_col(t, "trace"), cp = kv_tsv_col(t, "policy");
    int cs = kv_tsv_col(t, "budget_spec"), cj = kv_tsv_col(t, "position");
    int cf = kv_tsv_col(t, "fraction");
    for (size_t r = 0; r < t->n_rows; r++) {
        if (strcmp(kv_tsv_cell(t, r, ct), c->map_trace) || strcmp(kv_tsv_cell(t, r, cp), policy) ||
            strcmp(kv_tsv_cell(t, r, cs), c->budget))
            continue;
        double j, f;
        if (kv_tsv_number(t, r, cj, &j, err, err_len) || kv_tsv_number(t, r, cf, &f, err, err_len))
            return KV_ERUNTIME;
        if (j >= 0 && j < L->T)
            L->frac[(int)j] = f;
    }
    char name[64], path[KV_PLOT_PATH + 64];
    snprintf(name, sizeof name, "rt_p%zu.dat", k + 1);
    FILE *f = data_open(c, name, path, sizeof path, err, err_len);
    if (!f)
        return KV_ERUNTIME;
    for (int i = 0; i < L->T; i++) {
        if (L->len[i] == 0)
            continue;
        /* a label's leading space is left out and its cell skipped: cairo drops it */
        int lead = L->text[i][0] == ' ';
        fprintf(f, "%.9g\t%d\t%.9g\t%.9g\t%d\t%d\t%d\n", L->x[i] + L->len[i] / 2.0 - 0.5,
                L->y[i], L->len[i] / 2.0, L->frac[i], L->x[i] + lead,
                i < L->P ? 0x888888 : 0x000000, i + 1);
    }
    return data_close(f, path, err, err_len);
}

static int fig_retention_text(const kv_plot_ctx *c, fig_files *ff, char *err, size_t err_len)
{
    kv_tsv t = { 0 };
    text_layout L = { 0 };
    size_t panel_pol[TEXT_PANELS];
    size_t n = text_panels(c, ff->vars, panel_pol);
    int rc = read_table(c, "retention.tsv", "trace policy budget_spec position fraction", &t,
                        err, err_len);
    if (!rc)
        rc = text_read(c, &t, c->pol[panel_pol[0]], &L, err, err_len);
    if (!rc)
        text_place(&L);
    for (size_t k = 0; k < n && !rc; k++)
        rc = text_panel(c, &t, k, c->pol[panel_pol[k]], &L, err, err_len);
    if (!rc) {
        fprintf(ff->vars, "T = %d\nP = %d\ncols = %d\nn_lines = %d\nhas_text = %d\n"
                "array tok[%d]\n", L.T, L.P, TEXT_COLS, L.n_lines, L.has_text, L.T > 0 ? L.T : 1);
        for (int i = 0; i < L.T; i++) {
            /* an apostrophe is shown as U+2019: gnuplot does not parse a single-quoted
             * constant that starts with a doubled quote (an apostrophe token) */
            char shown[4 * 1024];
            size_t m = 0;
            for (const char *q = L.text[i][0] == ' ' ? L.text[i] + 1 : L.text[i];
                 *q && m + 4 < sizeof shown; q++) {
                if (*q == '\'')
                    memcpy(shown + m, "\xE2\x80\x99", 3), m += 3;
                else
                    shown[m++] = *q;
            }
            shown[m] = '\0';
            fprintf(ff->vars, "tok[%d] = ", i + 1);
            gp_string(ff->vars, shown);
            fputc('\n', ff->vars);
        }
        char words[3000];
        caption_words(c, c->budget, words, sizeof words);
        fprintf(ff->caption, "The text of trace %s as a paragraph, each token shaded by the "
                "share of (layer, KV head) caches still holding it at the end, one panel per "
                "policy (references left out), %s. The prompt (P = %d) is grey.%s\n",
                c->map_trace, words, L.P,
                L.has_text ? "" : " The trace has no text (captured without a tokenizer): "
                                  "its token ids are shown.");
    }
    text_layout_free(&L);
    kv_tsv_free(&t);
    return rc ? KV_ERUNTIME : 0;
}

/* A number of summary row r's column col, NaN for NA or a column the results lack. */
static double summary_value(const kv_plot_ctx *c, size_t r, int col)
{
    if (col < 0)
        return NAN;
    const char *cell = kv_tsv_cell(&c->summary, r, col);
    char *end;
    double v = strtod(cell, &end);
    return end == cell || *end ? NAN : v;
}

/* Figure predict: per policy, pr_pP.dat = recall_mean, out_err_mean, kl_mean of the
 * shown trace's rows with kl_mean > 0 (a log axis); have_kl, have_err and the KL range
 * as variables. */
static int fig_predict(const kv_plot_ctx *c, fig_files *ff, char *err, size_t err_len)
{
    const kv_tsv *s = &c->summary;
    int ct = kv_tsv_col(s, "trace"), cp = kv_tsv_col(s, "policy");
    int cr = kv_tsv_col(s, "recall_mean"), ce = kv_tsv_col(s, "out_err_mean");
    int ck = kv_tsv_col(s, "kl_mean");
    double y_lo = INFINITY, y_hi = 0, e_hi = 0;
    size_t n_points = 0, n_err = 0;
    for (size_t p = 0; p < c->n_pol; p++) {
        char name[64], path[KV_PLOT_PATH + 64];
        snprintf(name, sizeof name, "pr_p%zu.dat", p + 1);
        FILE *f = data_open(c, name, path, sizeof path, err, err_len);
        if (!f)
            return KV_ERUNTIME;
        for (size_t r = 0; r < s->n_rows; r++) {
            if (strcmp(kv_tsv_cell(s, r, ct), c->shown) || strcmp(kv_tsv_cell(s, r, cp),
                                                                   c->pol[p]))
                continue;
            double x = summary_value(c, r, cr), e = summary_value(c, r, ce);
            double kl = summary_value(c, r, ck);
            if (!(kl > 0))      /* NA, or nothing evicted: no place on a log axis */
                continue;
            fprintf(f, "%.9g\t%.9g\t%.9g\n", x, isnan(e) ? -1.0 : e, kl);
            n_points++;
            n_err += !isnan(e);
            y_lo = kl < y_lo ? kl : y_lo;
            y_hi = kl > y_hi ? kl : y_hi;
            e_hi = !isnan(e) && e > e_hi ? e : e_hi;
        }
        if (data_close(f, path, err, err_len))
            return KV_ERUNTIME;
    }
    fprintf(ff->vars, "have_kl = %d\nhave_err = %d\ny_lo = %.9g\ny_hi = %.9g\n"
            "e_hi = %.9g\n", n_points > 0, n_err > 0,
            n_points ? pow(10, floor(log10(y_lo))) : 0.01,
            n_points ? pow(10, ceil(log10(y_hi))) : 10, e_hi > 0 ? e_hi * 1.05 : 1);
    if (!n_points)
        fprintf(ff->caption, "No closed-loop results: kvsim run without --model (or model "
                "= ...) measures no KL; this figure needs them.\n");
    else
        fprintf(ff->caption, "Open-loop metrics against what the cache does to the "
                "model's output: mean attention-mass recall (left) and mean output error "
                "(right) of each (policy, budget) against the closed loop's kl_mean, the "
                "KL divergence of the next-token distribution from the full cache's in "
                "nats per token (log scale), %s. Runs whose KL is exactly 0 (nothing "
                "evicted) are left out.\n", strcmp(c->shown, "all") == 0
                ? "means over the traces" : "one trace");
    return 0;
}

int kv_plot_prepare(kv_plot_ctx *c, const char *name, const char *scripts, char *err,
                    size_t err_len)
{
    static const struct {
        const char *name;
        int (*prepare)(const kv_plot_ctx *, fig_files *, char *, size_t);
    } preparers[] = {
        { "recall_steps", fig_recall_steps }, { "memory_steps", fig_memory_steps },
        { "recall_budget", fig_recall_budget }, { "recall_bytes", fig_recall_bytes },
        { "retention_map", fig_retention_map }, { "head_recall", fig_head_recall },
        { "retention_text", fig_retention_text }, { "predict", fig_predict },
    };
    fig_files ff;
    char cap[64];
    snprintf(cap, sizeof cap, "%s.txt", name);
    ff.vars = data_open(c, "vars.gp", ff.vars_path, sizeof ff.vars_path, err, err_len);
    if (!ff.vars)
        return KV_ERUNTIME;
    ff.caption = data_open(c, cap, ff.caption_path, sizeof ff.caption_path, err, err_len);
    if (!ff.caption) {
        fclose(ff.vars);
        return KV_ERUNTIME;
    }
    vars_common(c, ff.vars, scripts, name);
    int rc = KV_ERUNTIME;
    for (size_t i = 0; i < sizeof preparers / sizeof preparers[0]; i++)
        if (strcmp(preparers[i].name, name) == 0)
            rc = preparers[i].prepare(c, &ff, err, err_len);
    if (rc) {
        fclose(ff.vars);
        fclose(ff.caption);
        return KV_ERUNTIME;
    }
    int bad = data_close(ff.vars, ff.vars_path, err, err_len);
    bad |= data_close(ff.caption, ff.caption_path, err, err_len);
    return bad;
}
