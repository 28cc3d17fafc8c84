/*
 * config.c - experiments from INI files (libinih) and command-line options.
 */
#include "sim/config.h"
#include "traces/status.h"
#include "traces/trace.h"

#include <errno.h>
#include <glob.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void kv_experiment_init(kv_experiment *ex)
{
    memset(ex, 0, sizeof *ex);
    ex->seed = 1;
    ex->no_topk = 1;   /* the top-k metrics only when asked (topk = yes, --topk) */
}

static void free_paths(char **paths, int n)
{
    for (int i = 0; paths && i < n; i++)
        free(paths[i]);
    free(paths);
}

void kv_experiment_free(kv_experiment *ex)
{
    free_paths(ex->traces, ex->n_traces);
    free(ex->budgets);
    free(ex->policies);
    kv_experiment_init(ex);
}

static kv_policy_conf *find_label(kv_experiment *ex, const char *label)
{
    for (int i = 0; i < ex->n_policies; i++)
        if (strcmp(ex->policies[i].label, label) == 0)
            return &ex->policies[i];
    return NULL;
}

int kv_experiment_add_policy(kv_experiment *ex, const char *label, const char *type,
                             char *err, size_t err_len)
{
    const kv_policy_ops *ops = kv_policy_find(type);
    if (!ops) {
        snprintf(err, err_len, "unknown policy '%s' (did you mean '%s'? `kvsim policies` "
                 "lists them)", type, kv_policy_suggest(type));
        return KV_EUSAGE;
    }
    if (strlen(label) == 0 || strlen(label) >= KV_LABEL_LEN || strpbrk(label, "\t\n\r")) {
        snprintf(err, err_len, "policy label '%s' must be 1 to %d characters without tabs "
                 "or newlines", label, KV_LABEL_LEN - 1);
        return KV_EUSAGE;
    }
    if (find_label(ex, label)) {
        snprintf(err, err_len, "duplicate policy label '%s'", label);
        return KV_EUSAGE;
    }
    kv_policy_conf *grown = realloc(ex->policies, (size_t)(ex->n_policies + 1) * sizeof *grown);
    if (!grown) {
        snprintf(err, err_len, "out of memory");
        return KV_ENOMEM;
    }
    ex->policies = grown;
    kv_policy_conf *pc = &ex->policies[ex->n_policies++];
    memset(pc, 0, sizeof *pc);
    snprintf(pc->label, sizeof pc->label, "%s", label);
    pc->ops = ops;
    kv_params_defaults(ops, &pc->values);
    return 0;
}

int kv_experiment_set(kv_experiment *ex, const char *target, const char *param,
                      const char *text, char *err, size_t err_len)
{
    kv_policy_conf *pc = find_label(ex, target);
    if (pc)
        return kv_policy_conf_set(pc, param, text, err, err_len);
    int matched = 0;
    for (int i = 0; i < ex->n_policies; i++) {
        pc = &ex->policies[i];
        if (strcmp(pc->ops->name, target) != 0)
            continue;
        matched++;
        if (kv_policy_conf_set(pc, param, text, err, err_len))
            return KV_EUSAGE;
    }
    if (!matched) {
        snprintf(err, err_len, "--set %s.%s: no policy labelled or of type '%s' in this run",
                 target, param, target);
        return KV_EUSAGE;
    }
    return 0;
}

/* The number of comma-separated items of text (empty ones included). */
static int count_items(const char *text)
{
    int n = 1;
    for (const char *c = text; *c; c++)
        n += *c == ',';
    return n;
}

/* 1 when two of paths[0..n) share a file name (err names them). */
static int same_file_name(char *const *paths, int n, char *err, size_t err_len)
{
    /* rows name traces by file name, so two with one name could not be told apart */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++) {
            const char *a = strrchr(paths[i], '/'), *b = strrchr(paths[j], '/');
            a = a ? a + 1 : paths[i];
            b = b ? b + 1 : paths[j];
            if (strcmp(a, b) == 0) {
                snprintf(err, err_len, "traces '%s' and '%s' share the file name '%s', which "
                         "the trace column uses: list a trace once, rename one",
                         paths[j], paths[i], a);
                return 1;
            }
        }
    return 0;
}

/* 1 (err set) when a trace's file name holds a tab or a line break: the `trace` column of
 * the TSV files holds the file name, and a cell cannot hold those. */
static int untabular_file_name(char **paths, int n, char *err, size_t err_len)
{
    for (int i = 0; i < n; i++) {
        const char *slash = strrchr(paths[i], '/');
        const char *name = slash ? slash + 1 : paths[i];
        if (!strpbrk(name, "\t\n\r"))
            continue;
        char shown[256];   /* escaped, so the message stays one line */
        size_t at = 0;
        for (const char *c = name; *c && at + 3 < sizeof shown; c++) {
            const char *esc = *c == '\t' ? "\\t" : *c == '\n' ? "\\n" : *c == '\r' ? "\\r"
                              : NULL;
            if (esc) {
                memcpy(shown + at, esc, 2);
                at += 2;
            } else {
                shown[at++] = *c;
            }
        }
        shown[at] = '\0';
        snprintf(err, err_len, "trace file name '%s' contains a tab or a line break, which "
                 "the result files' trace column cannot hold; rename the file", shown);
        return 1;
    }
    return 0;
}

/* Replaces every item of paths[0..*n) with * ? or [ by the files it matches (glob(3),
 * sorted by name); *paths may be reallocated. A pattern that matches nothing is an error
 * naming it. */
static int expand_patterns(char ***paths, int *n, char *err, size_t err_len)
{
    int cap = *n, m = 0, rc = 0;
    char **out = calloc((size_t)cap, sizeof *out);
    if (!out) {
        snprintf(err, err_len, "out of memory");
        return KV_ENOMEM;
    }
    for (int i = 0; i < *n && !rc; i++) {
        glob_t g = {0};
        int many = strpbrk((*paths)[i], "*?[") != NULL;
        int grc = many ? glob((*paths)[i], 0, NULL, &g) : 0;
        size_t k = many ? g.gl_pathc : 1;
        if (grc != 0) {
            snprintf(err, err_len, "no trace matches '%s'", (*paths)[i]);
            rc = KV_EUSAGE;
        } else if (m + (int)k > cap) {
            int grown_cap = 2 * (m + (int)k);
            char **grown = realloc(out, (size_t)grown_cap * sizeof *out);
            if (!grown) {
                snprintf(err, err_len, "out of memory");
                rc = KV_ENOMEM;
            } else {
                out = grown;
                cap = grown_cap;
            }
        }
        for (size_t j = 0; !rc && j < k; j++) {
            const char *path = many ? g.gl_pathv[j] : (*paths)[i];
            if (strlen(path) >= KV_PATH_LEN) {
                snprintf(err, err_len, "trace paths have at most %d characters", KV_PATH_LEN - 1);
                rc = KV_EUSAGE;
            } else if (!(out[m] = strdup(path))) {
                snprintf(err, err_len, "out of memory");
                rc = KV_ENOMEM;
            } else {
                m++;
            }
        }
        if (many && grc != GLOB_NOMATCH)
            globfree(&g);
    }
    free_paths(*paths, *n);
    *paths = out;
    *n = m;
    return rc;
}

int kv_experiment_set_traces(kv_experiment *ex, const char *text, char *err, size_t err_len)
{
    char **paths = calloc((size_t)count_items(text), sizeof *paths);
    if (!paths) {
        snprintf(err, err_len, "out of memory");
        return KV_ENOMEM;
    }
    int n = 0, rc = 0;
    for (const char *p = text; *p && !rc;) {
        while (*p == ' ' || *p == '\t')
            p++;
        size_t len = strcspn(p, ",");
        size_t trimmed = len;
        while (trimmed && (p[trimmed - 1] == ' ' || p[trimmed - 1] == '\t'))
            trimmed--;
        if (trimmed == 0) {
            snprintf(err, err_len, "empty trace path in '%s'", text);
            rc = KV_EUSAGE;
        } else if (trimmed >= KV_PATH_LEN) {
            snprintf(err, err_len, "trace paths have at most %d characters", KV_PATH_LEN - 1);
            rc = KV_EUSAGE;
        } else if (!(paths[n] = strndup(p, trimmed))) {
            snprintf(err, err_len, "out of memory");
            rc = KV_ENOMEM;
        } else {
            n++;
        }
        p += len;
        if (*p == ',')
            p++;
    }
    if (!rc && n == 0) {
        snprintf(err, err_len, "no trace path given");
        rc = KV_EUSAGE;
    }
    if (!rc)
        rc = expand_patterns(&paths, &n, err, err_len);
    if (!rc && same_file_name(paths, n, err, err_len))
        rc = KV_EUSAGE;
    if (!rc && untabular_file_name(paths, n, err, err_len))
        rc = KV_EUSAGE;
    if (rc) {
        free_paths(paths, n);
        return rc;
    }
    free_paths(ex->traces, ex->n_traces);
    ex->traces = paths;
    ex->n_traces = n;
    return 0;
}

int kv_experiment_set_budgets(kv_experiment *ex, const char *text, char *err, size_t err_len)
{
    kv_budget_spec *specs = malloc((size_t)count_items(text) * sizeof *specs);
    if (!specs) {
        snprintf(err, err_len, "out of memory");
        return KV_ENOMEM;
    }
    int n = 0, rc = 0;
    for (const char *p = text; *p && !rc;) {
        size_t len = strcspn(p, ",");
        char item[128];
        snprintf(item, sizeof item, "%.*s", (int)(len < sizeof item ? len : sizeof item - 1),
                 p);
        if (kv_budget_parse(item, &specs[n++], err, err_len))
            rc = KV_EUSAGE;
        for (int i = 0; !rc && i < n - 1; i++)
            if (strcmp(specs[i].text, specs[n - 1].text) == 0) {
                snprintf(err, err_len, "budget '%s' is listed twice", specs[i].text);
                rc = KV_EUSAGE;
            }
        p += len;
        if (*p == ',')
            p++;
    }
    if (!rc && n == 0) {
        snprintf(err, err_len, "no budget given (expected e.g. 64,128,256 or 0.25p or 64KiB)");
        rc = KV_EUSAGE;
    }
    if (rc) {
        free(specs);
        return rc;
    }
    free(ex->budgets);
    ex->budgets = specs;
    ex->n_budgets = n;
    return 0;
}

int kv_experiment_set_seed(kv_experiment *ex, const char *text, char *err, size_t err_len)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    /* digits only: strtoull would take a sign, spaces, or wrap "-1" around */
    if (text[0] < '0' || text[0] > '9' || *end || errno == ERANGE || v > KV_SEED_MAX) {
        snprintf(err, err_len, "seed must be a whole number in 0..%llu, got '%s'",
                 (unsigned long long)KV_SEED_MAX, text);
        return 2;
    }
    ex->seed = (unsigned long)v;
    return 0;
}

/* ------------------------------------------------------------------ INI */

/* Policy sections are collected first and applied after the parse, so `type` may stand
 * anywhere in its section. */
typedef struct {
    char section[128], key[64], value[512];
} ini_item;

typedef struct {
    const char *path;
    kv_experiment *ex;
    ini_item *items;
    int n_items, cap;
    char prev_section[128];
    char seen[256][128];   /* section names met so far, to catch a repeated section */
    int n_seen;
    char exp_keys[16][64]; /* [experiment] keys met so far, to catch a repeated key */
    int n_exp_keys;
    char *err;
    size_t err_len;
    int failed;            /* 1 once a handler failed: the rest are skipped */
    int code;              /* the failure's status: KV_EUSAGE unless set before fail() */
} ini_state;

static int fail(ini_state *s, const char *fmt, const char *a, const char *b, const char *c)
{
    char msg[768];
    snprintf(msg, sizeof msg, fmt, a, b, c);
    snprintf(s->err, s->err_len, "%s: %s", s->path, msg);
    s->failed = 1;
    if (!s->code)
        s->code = KV_EUSAGE;
    return 0;
}

static int on_experiment_key(ini_state *s, const char *key, const char *value)
{
    kv_experiment *ex = s->ex;
    char why[512];
    if (strcmp(key, "trace") == 0 || strcmp(key, "traces") == 0) {
        if (kv_experiment_set_traces(ex, value, why, sizeof why))
            return fail(s, "[experiment] %s: %s%s", key, why, "");
    }
    else if (strcmp(key, "output") == 0)
        snprintf(ex->output, sizeof ex->output, "%s", value);
    else if (strcmp(key, "model") == 0)
        snprintf(ex->model, sizeof ex->model, "%s", value);
    else if (strcmp(key, "budgets") == 0) {
        if (kv_experiment_set_budgets(ex, value, why, sizeof why))
            return fail(s, "[experiment] budgets: %s%s%s", why, "", "");
    } else if (strcmp(key, "seed") == 0) {
        if (kv_experiment_set_seed(ex, value, why, sizeof why))
            return fail(s, "[experiment] %s%s%s", why, "", "");
    } else if (strcmp(key, "topk") == 0) {
        if (strcmp(value, "yes") != 0 && strcmp(value, "no") != 0)
            return fail(s, "[experiment] topk must be yes or no, got '%s'%s%s", value, "", "");
        ex->no_topk = strcmp(value, "no") == 0;
    } else if (strcmp(key, "style") == 0) {
        if (strcmp(value, "paper") != 0 && strcmp(value, "screen") != 0)
            return fail(s, "[experiment] style must be paper or screen, got '%s'%s%s",
                        value, "", "");
        snprintf(ex->style, sizeof ex->style, "%s", value);
    } else
        return fail(s, "[experiment]: unknown key '%s' (known: trace, budgets, output, "
                    "seed, topk, style, model)%s%s", key, "", "");
    return 1;
}

static int on_ini(void *user, const char *section, const char *key, const char *value)
{
    ini_state *s = user;
    if (s->failed)
        return 0;
    if (strcmp(section, s->prev_section) != 0) {
        for (int i = 0; i < s->n_seen; i++)
            if (strcmp(s->seen[i], section) == 0)
                return fail(s, "section [%s] appears twice (duplicate label)%s%s", section,
                            "", "");
        if (s->n_seen < 256)
            snprintf(s->seen[s->n_seen++], sizeof s->seen[0], "%s", section);
        snprintf(s->prev_section, sizeof s->prev_section, "%s", section);
    }
    if (strcmp(section, "experiment") == 0) {
        /* a repeated key would silently replace the first: refuse it ("trace" and
         * "traces" are one key) */
        const char *k = strcmp(key, "traces") == 0 ? "trace" : key;
        for (int i = 0; i < s->n_exp_keys; i++)
            if (strcmp(s->exp_keys[i], k) == 0)
                return fail(s, "[experiment]: key '%s' is given twice%s%s", key, "", "");
        if (s->n_exp_keys < 16)
            snprintf(s->exp_keys[s->n_exp_keys++], sizeof s->exp_keys[0], "%s", k);
        return on_experiment_key(s, key, value);
    }
    for (int i = 0; i < s->n_items; i++)
        if (strcmp(s->items[i].section, section + 7) == 0 && strcmp(s->items[i].key, key) == 0)
            return fail(s, "[%s]: key '%s' is given twice%s", section, key, "");
    if (strncmp(section, "policy ", 7) != 0)
        return fail(s, "unknown section [%s] (expected [experiment] or [policy LABEL])%s%s",
                    section, "", "");
    if (s->n_items == s->cap) {
        int cap = s->cap ? 2 * s->cap : 32;
        ini_item *grown = realloc(s->items, (size_t)cap * sizeof *grown);
        if (!grown) {
            s->code = KV_ENOMEM;
            return fail(s, "out of memory%s%s%s", "", "", "");
        }
        s->items = grown;
        s->cap = cap;
    }
    ini_item *it = &s->items[s->n_items++];
    snprintf(it->section, sizeof it->section, "%s", section + 7);
    snprintf(it->key, sizeof it->key, "%s", key);
    snprintf(it->value, sizeof it->value, "%s", value);
    return 1;
}

/* Creates the policy of every [policy LABEL] section from its `type`, then sets the rest. */
static int apply_policy_items(ini_state *s)
{
    char why[512];
    for (int i = 0; i < s->n_items; i++) {
        const ini_item *it = &s->items[i];
        if (strcmp(it->key, "type") != 0)
            continue;
        int rc = kv_experiment_add_policy(s->ex, it->section, it->value, why, sizeof why);
        if (rc) {
            s->code = rc;
            return fail(s, "[policy %s] type: %s%s", it->section, why, "");
        }
    }
    for (int i = 0; i < s->n_items; i++) {
        const ini_item *it = &s->items[i];
        kv_policy_conf *pc = find_label(s->ex, it->section);
        if (!pc)
            return fail(s, "[policy %s] has no 'type =' line (e.g. type = h2o)%s%s",
                        it->section, "", "");
        if (strcmp(it->key, "type") == 0)
            continue;
        if (kv_policy_conf_set(pc, it->key, it->value, why, sizeof why))
            return fail(s, "[policy %s] %s", it->section, why, "");
    }
    return 1;
}

/*
 * What libinih does not report: it skips a section without keys (so an empty
 * [policy h2o] vanished), and after a section line without ']' it goes on with the
 * previous section (so an unclosed [policy w gave "key 'type' is given twice"). A first
 * pass over the lines catches both, and a trace given where the experiment file goes.
 * Fills policy_sections (labels, n_policy up to 256). Returns 1, or 0 after fail().
 */
static int prescan(ini_state *s, FILE *f, char (*policy_sections)[128], int *n_policy)
{
    static char head[1 << 16];
    static const char hdf5_signature[8] = {'\x89', 'H', 'D', 'F', '\r', '\n', '\x1a', '\n'};
    size_t got = fread(head, 1, sizeof head, f);
    if (got >= sizeof hdf5_signature && memcmp(head, hdf5_signature, 8) == 0)
        return fail(s, "is an HDF5 file, not an experiment file: give a trace with --trace "
                    "(kvsim run --trace FILE --policies h2o --budgets 64 -o DIR)%s%s%s",
                    "", "", "");
    if (memchr(head, '\0', got))
        return fail(s, "is not a text file: expected an INI experiment file (configs/ has "
                    "examples); a trace goes with --trace%s%s%s", "", "", "");
    rewind(f);
    *n_policy = 0;
    char line[1024];
    int lineno = 0, line_start = 1;
    while (fgets(line, sizeof line, f)) {
        int starts_line = line_start;
        size_t len = strlen(line);
        line_start = len > 0 && line[len - 1] == '\n';
        if (!starts_line)
            continue;   /* the rest of a long line */
        lineno++;
        const char *p = line + strspn(line, " \t");
        if (*p != '[')
            continue;
        const char *close = strchr(p, ']');
        if (!close) {
            char at[16], text[128];
            snprintf(at, sizeof at, "%d", lineno);
            snprintf(text, sizeof text, "%.*s", (int)strcspn(p, "\r\n"), p);
            return fail(s, "line %s: section header '%s' has no closing ']'%s", at, text, "");
        }
        if (strncmp(p + 1, "policy ", 7) == 0 && *n_policy < 256)
            snprintf(policy_sections[(*n_policy)++], 128, "%.*s", (int)(close - p - 8), p + 8);
    }
    rewind(f);
    return 1;
}

/* An empty [policy LABEL] section (no keys at all) is an error, not nothing. */
static int check_empty_sections(ini_state *s, char (*policy_sections)[128], int n_policy)
{
    for (int i = 0; i < n_policy; i++) {
        int used = 0;
        for (int j = 0; j < s->n_items && !used; j++)
            used = strcmp(s->items[j].section, policy_sections[i]) == 0;
        char label[128];
        size_t n = strnlen(policy_sections[i], sizeof label - 1);
        memcpy(label, policy_sections[i], n);
        label[n] = '\0';
        if (!used)
            return fail(s, "[policy %s] is empty: give it a 'type =' line (e.g. type = h2o)"
                        "%s%s", label, "", "");
    }
    return 1;
}

int kv_config_load(const char *path, kv_experiment *ex, char *err, size_t err_len)
{
    ini_state s = { .path = path, .ex = ex, .err = err, .err_len = err_len };
    char why[KV_PATH_LEN + 64];
    struct stat st;
    /* a FIFO would block fopen; a missing file is reported by fopen below */
    if (stat(path, &st) == 0 && kv_check_regular_file(path, why, sizeof why) != 0) {
        snprintf(err, err_len, "%s (the experiment file)", why);
        return 2;
    }
    FILE *f = fopen(path, "r");
    if (f && fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);   /* a directory opens, but reads as an empty file */
        f = NULL;
        errno = EISDIR;
    }
    if (!f) {
        snprintf(err, err_len, "%s: cannot read the experiment file: %s", path, strerror(errno));
        return KV_EUSAGE;
    }
    static char policy_sections[256][128];
    int n_policy = 0;
    if (!prescan(&s, f, policy_sections, &n_policy)) {
        fclose(f);
        return 2;
    }
    int rc = ini_parse_file(f, on_ini, &s);
    fclose(f);
    if (rc > 0 && !s.failed) {
        snprintf(err, err_len, "%s:%d: syntax error (expected [section] or key = value)",
                 path, rc);
        s.failed = 1;
    } else if (rc < 0 && !s.failed) {
        snprintf(err, err_len, "%s: cannot parse the experiment file", path);
        s.failed = 1;
    }
    if (!s.failed && check_empty_sections(&s, policy_sections, n_policy))
        apply_policy_items(&s);
    free(s.items);
    return s.failed ? (s.code ? s.code : KV_EUSAGE) : 0;
}
