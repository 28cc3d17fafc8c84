/*
 * manifest.c - manifest.json: how a results folder was made (see manifest.h).
 */
#define _DEFAULT_SOURCE   /* gethostname in unistd.h */
#include "sim/manifest.h"
#include "sim/experiment.h"
#include "sim/output.h"
#include "sim/signals.h"
#include "traces/status.h"
#include "traces/trace.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#ifndef KVSIM_COMMIT
#define KVSIM_COMMIT "unknown"   /* built outside the Makefile (the fuzz build) */
#endif

static void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

/* sha256 of the file at path as 64 hex digits into hex[65]. 0, or 1 with err set. */
static int file_sha256(const char *path, char *hex, char *err, size_t err_len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, err_len, "%s: cannot read for its sha256: %s", path, strerror(errno));
        return KV_ERUNTIME;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char *buf = malloc(1 << 20), digest[EVP_MAX_MD_SIZE];
    unsigned int n_digest = 0;
    int rc = !md || !buf || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1;
    size_t n;
    while (!rc && (n = fread(buf, 1, 1 << 20, f)) > 0)
        rc = EVP_DigestUpdate(md, buf, n) != 1;
    rc = rc || ferror(f) || EVP_DigestFinal_ex(md, digest, &n_digest) != 1;
    fclose(f);
    free(buf);
    EVP_MD_CTX_free(md);
    if (rc) {
        snprintf(err, err_len, "%s: cannot compute its sha256", path);
        return KV_ERUNTIME;
    }
    for (unsigned int i = 0; i < n_digest; i++)
        sprintf(hex + 2 * i, "%02x", digest[i]);
    return 0;
}

/* "name=value,name=value" (kv_output_params) as a JSON object of strings. */
static void params_object(FILE *f, const kv_policy_conf *pc)
{
    char buf[1024];
    kv_output_params(pc, 0, buf, sizeof buf);
    fputc('{', f);
    int first = 1;
    for (char *save = NULL, *kv = strtok_r(buf, ",", &save); kv;
         kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq)
            continue;
        *eq = '\0';
        fputs(first ? "" : ", ", f);
        json_string(f, kv);
        fputs(": ", f);
        json_string(f, eq + 1);
        first = 0;
    }
    fputc('}', f);
}

static void write_head(FILE *f, int argc, char **argv)
{
    fprintf(f, "{\n  \"kvsim\": {\"commit\": ");
    json_string(f, KVSIM_COMMIT);
    fprintf(f, "},\n  \"command\": [");
    for (int i = 0; i < argc; i++) {
        fputs(i ? ", " : "", f);
        json_string(f, argv[i]);
    }
    char date[32];
    time_t now = time(NULL);
    struct tm tm;
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
    fprintf(f, "],\n  \"date\": \"%s\",\n  \"machine\": {", date);
    struct utsname u;
    if (uname(&u) == 0) {
        fputs("\"host\": ", f);
        json_string(f, u.nodename);
        fputs(", \"system\": ", f);
        json_string(f, u.sysname);
        fputs(", \"release\": ", f);
        json_string(f, u.release);
        fputs(", \"arch\": ", f);
        json_string(f, u.machine);
        fputs(", ", f);
    }
    fprintf(f, "\"cpus\": %ld},\n", sysconf(_SC_NPROCESSORS_ONLN));
}

static void write_experiment(FILE *f, const kv_experiment *ex)
{
    fprintf(f, "  \"experiment\": {\n    \"output\": ");
    json_string(f, ex->output);
    fprintf(f, ",\n    \"seed\": %lu,\n    \"topk\": %s,\n    \"style\": ", ex->seed,
            ex->no_topk ? "false" : "true");
    json_string(f, ex->style[0] ? ex->style : "screen");
    fprintf(f, ",\n    \"budgets\": [");
    for (int b = 0; b < ex->n_budgets; b++) {
        fputs(b ? ", " : "", f);
        json_string(f, ex->budgets[b].text);
    }
    fprintf(f, "],\n    \"policies\": [\n");
    for (int p = 0; p < ex->n_policies; p++) {
        const kv_policy_conf *pc = &ex->policies[p];
        fprintf(f, "      {\"label\": ");
        json_string(f, pc->label);
        fprintf(f, ", \"type\": ");
        json_string(f, pc->ops->name);
        fprintf(f, ", \"params\": ");
        params_object(f, pc);
        fprintf(f, "}%s\n", p + 1 < ex->n_policies ? "," : "");
    }
    fprintf(f, "    ]\n  },\n");
}

static int write_trace(FILE *f, const kv_experiment *ex, const int *tokens, int k,
                       char *err, size_t err_len)
{
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    if (file_sha256(ex->traces[k], hex, err, err_len))
        return KV_ERUNTIME;
    kv_trace *tr;
    if (kv_trace_open(ex->traces[k], &tr, err, err_len))
        return KV_ERUNTIME;
    const kv_trace_info *in = kv_trace_get_info(tr);
    fprintf(f, "    {\"path\": ");
    json_string(f, ex->traces[k]);
    fprintf(f, ", \"name\": ");
    json_string(f, kv_trace_display_name(ex->traces[k]));
    fprintf(f, ", \"sha256\": \"%s\", \"model\": ", hex);
    json_string(f, in->model);
    fprintf(f, ", \"source\": \"%s\",\n     \"layers\": %d, \"heads\": %d, \"kv_heads\": %d, "
            "\"head_dim\": %d, \"tokens\": %d, \"prompt\": %d, \"dtype_bytes\": %d,\n",
            in->source == KV_SOURCE_ATTN ? "attn" : "qk",
            in->n_layers, in->n_heads, in->n_kv_heads, in->head_dim, in->n_tokens,
            in->prefill_len, in->dtype_bytes);
    /* the replay path the engine took for this trace (kv_replay_dense_reason) */
    kv_replay_conf conf = { .policies = ex->policies, .n_policies = ex->n_policies,
                            .no_topk = ex->no_topk, .dense = ex->dense };
    char why[256];
    int dense = kv_replay_dense_reason(&conf, in, why, sizeof why);
    fprintf(f, "     \"replay\": \"%s\", \"replay_dense_because\": ", dense ? "dense" : "sparse");
    json_string(f, dense ? why : "");
    fprintf(f, ",\n     \"budgets\": {");
    kv_trace_close(tr);
    for (int p = 0; p < ex->n_policies; p++) {
        fputs(p ? ", " : "", f);
        json_string(f, ex->policies[p].label);
        fputs(": [", f);
        for (int b = 0; b < ex->n_budgets; b++)
            fprintf(f, "%s%d", b ? ", " : "",
                    tokens[((size_t)k * ex->n_policies + p) * ex->n_budgets + b]);
        fputc(']', f);
    }
    fprintf(f, "}}%s\n", k + 1 < ex->n_traces ? "," : "");
    return 0;
}

int kv_manifest_write(const char *dir, const kv_experiment *ex, const int *tokens,
                      int argc, char **argv, char *err, size_t err_len)
{
    char path[KV_PATH_LEN + 32], tmp[KV_PATH_LEN + 48];
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    snprintf(tmp, sizeof tmp, "%s/manifest.json.tmp.%ld", dir, (long)getpid());
    if (kv_tmp_register(tmp) != 0) {
        snprintf(err, err_len, "%s: path too long", tmp);
        return KV_ERUNTIME;
    }
    FILE *f = fopen(tmp, "w");
    if (!f) {
        snprintf(err, err_len, "%s: cannot write: %s", tmp, strerror(errno));
        kv_tmp_unregister(tmp);
        return KV_ERUNTIME;
    }
    write_head(f, argc, argv);
    write_experiment(f, ex);
    fprintf(f, "  \"traces\": [\n");
    int rc = 0;
    for (int k = 0; k < ex->n_traces && !rc; k++)
        rc = write_trace(f, ex, tokens, k, err, err_len);
    fprintf(f, "  ]\n}\n");
    int bad = ferror(f);
    errno = 0;
    bad |= fflush(f) != 0;
    int e = errno;
    bad |= fclose(f) != 0;
    if (!rc && bad) {
        e = e ? e : errno;
        snprintf(err, err_len, "%s: write failed: %s%s", tmp, e ? strerror(e) : "I/O error",
                 e == ENOSPC ? " (ENOSPC)" : "");
        rc = KV_ERUNTIME;
    }
    if (!rc && rename(tmp, path) != 0) {
        snprintf(err, err_len, "%s: cannot rename into place: %s", path, strerror(errno));
        rc = KV_ERUNTIME;
    }
    if (rc)
        unlink(tmp);
    kv_tmp_unregister(tmp);
    return rc;
}
