/*
 * config.c - experiments from INI files (libinih) and command-line options.
 */
#include "sim/config.h"
#include "traces/status.h"

#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void kv_experiment_init(kv_experiment *ex)
{
    memset(ex, 0, sizeof *ex);
    ex->seed = 1;
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
    if (!rc && same_file_name(paths, n, err, err_len))
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
    else if (strcmp(key, "budgets") == 0) {
        if (kv_experiment_set_budgets(ex, value, why, sizeof why))
            return fail(s, "[experiment] budgets: %s%s%s", why, "", "");
    } else if (strcmp(key, "seed") == 0) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(value, &end, 10);
        if (end == value || *end || errno || value[0] == '-')
            return fail(s, "[experiment] seed must be a whole number >= 0, got '%s'%s%s",
                        value, "", "");
        ex->seed = v;
    } else if (strcmp(key, "style") == 0) {
        if (strcmp(value, "paper") != 0 && strcmp(value, "screen") != 0)
            return fail(s, "[experiment] style must be paper or screen, got '%s'%s%s",
                        value, "", "");
        snprintf(ex->style, sizeof ex->style, "%s", value);
    } else
        return fail(s, "[experiment]: unknown key '%s' (known: trace, budgets, output, "
                    "seed, style)%s%s", key, "", "");
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

int kv_config_load(const char *path, kv_experiment *ex, char *err, size_t err_len)
{
    ini_state s = { .path = path, .ex = ex, .err = err, .err_len = err_len };
    FILE *f = fopen(path, "r");
    struct stat st;
    if (f && fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);   /* a directory opens, but reads as an empty file */
        f = NULL;
        errno = EISDIR;
    }
    if (!f) {
        snprintf(err, err_len, "%s: cannot read the experiment file: %s", path, strerror(errno));
        return KV_EUSAGE;
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
    if (!s.failed)
        apply_policy_items(&s);
    free(s.items);
    return s.failed ? (s.code ? s.code : KV_EUSAGE) : 0;
}
