/*
 * cmd_info.c - `kvsim info FILE`: what a trace holds (geometry, source, P and T, GQA groups,
 * dtypes, storage) and whether it is a valid kvtrace v1 file that `kvsim run` can replay
 * (kv_trace_open's checks and a decode step: P < T). With --check it also scans
 * every value (traces/validate.h): what `kvsim run` would otherwise stop on mid-replay.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim/commands.h"
#include "traces/trace_int.h"
#include "traces/trace_text.h"
#include "traces/validate.h"
#include "traces/status.h"

#define KV_INFO_GROUPS_SHOWN 8

static void info_usage(FILE *f)
{
    fprintf(f, "usage: kvsim info FILE [--check] [--verbose]\n"
               "Prints a kvtrace file's geometry, source, prefill and length, GQA groups, "
               "dtypes\nand storage, then \"valid\", or the first problem found. Without --check "
               "it checks\nthe structure as `kvsim run` does: attributes, datasets, shapes, and "
               "a prompt\nthat leaves a decode step to replay (P < T).\n\n"
               "  -c, --check     also scan every value: NaN or Inf in q, k, v and attn,\n"
               "                  negative attention, attn rows not summing to 1 within\n"
               "                  the tolerance of the trace's attn_precision (1e-3 for\n"
               "                  float32 rows of up to ~5,700 entries; 2^-8 + 1.5*2^-24*n\n"
               "                  for bfloat16 rows of n entries: see traces/FORMAT.md)\n"
               "                  (reads the whole file)\n"
               "  -v, --verbose   every layer's datasets, and HDF5's own error stack\n"
               "  -h, --help      this help\n\n"
               "exit status: 0 valid, 1 invalid or unreadable, 2 usage error.\n");
}

/* "kv 0 <- q 0-1, kv 1 <- q 2-3, ...": query head h uses KV head h / group. */
static void print_groups(const kv_trace_info *in)
{
    int group = in->n_heads / in->n_kv_heads;
    printf("gqa          %d query head%s per KV head (KV head of query head h = h / %d):",
           group, group > 1 ? "s" : "", group);
    for (int g = 0; g < in->n_kv_heads; g++) {
        int shown = in->n_kv_heads <= KV_INFO_GROUPS_SHOWN || g < KV_INFO_GROUPS_SHOWN / 2
                    || g == in->n_kv_heads - 1;
        if (!shown) {
            if (g == KV_INFO_GROUPS_SHOWN / 2)
                printf(" ...");
            continue;
        }
        if (group == 1)
            printf("%s kv %d <- q %d", g ? "," : "", g, g);
        else
            printf("%s kv %d <- q %d-%d", g ? "," : "", g, g * group, g * group + group - 1);
    }
    printf("\n");
}

/* "shuffle+gzip(4)" from a dataset creation property list. */
static void filter_names(hid_t dcpl, char *buf, size_t len)
{
    int n = H5Pget_nfilters(dcpl);
    size_t at = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && at < len; i++) {
        unsigned flags, cd[8], config;
        size_t n_cd = 8;
        char name[64];
        H5Z_filter_t f = H5Pget_filter2(dcpl, (unsigned)i, &flags, &n_cd, cd, sizeof name, name,
                                        &config);
        const char *sep = i ? "+" : "";
        if (f == H5Z_FILTER_DEFLATE)
            at += (size_t)snprintf(buf + at, len - at, "%sgzip(%u)", sep, n_cd ? cd[0] : 0);
        else if (f == H5Z_FILTER_SHUFFLE)
            at += (size_t)snprintf(buf + at, len - at, "%sshuffle", sep);
        else
            at += (size_t)snprintf(buf + at, len - at, "%s%s", sep, name);
    }
    if (n <= 0)
        snprintf(buf, len, "no filters");
}

/* One line on a dataset: type, shape, layout, filters, bytes stored; its stored bytes. */
static unsigned long long describe(hid_t file, const char *dpath)
{
    hid_t d = H5Dopen2(file, dpath, H5P_DEFAULT);
    if (d < 0)
        return 0;
    hid_t type = H5Dget_type(d), space = H5Dget_space(d), dcpl = H5Dget_create_plist(d);
    char tname[32] = "?", shape[96] = "[", layout[96] = "contiguous", filters[128] = "";
    hsize_t dims[H5S_MAX_RANK], chunk[H5S_MAX_RANK];
    int rank = space >= 0 ? H5Sget_simple_extent_dims(space, dims, NULL) : -1;
    if (type >= 0)
        kv_trace_type_name(type, tname, sizeof tname);
    for (int i = 0; i < rank; i++)
        snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%llu", i ? ", " : "",
                 (unsigned long long)dims[i]);
    strcat(shape, "]");
    if (dcpl >= 0 && H5Pget_layout(dcpl) == H5D_CHUNKED) {
        int cr = H5Pget_chunk(dcpl, H5S_MAX_RANK, chunk);
        snprintf(layout, sizeof layout, "chunks [");
        for (int i = 0; i < cr; i++)
            snprintf(layout + strlen(layout), sizeof layout - strlen(layout), "%s%llu",
                     i ? ", " : "", (unsigned long long)chunk[i]);
        strcat(layout, "]");
    }
    if (dcpl >= 0)
        filter_names(dcpl, filters, sizeof filters);
    unsigned long long stored = H5Dget_storage_size(d);
    double raw = space >= 0 && type >= 0
                 ? (double)H5Sget_simple_extent_npoints(space) * (double)H5Tget_size(type) : 0;
    printf("  %-16s %-8s %-18s %-20s %-16s %10.1f KiB stored (%.0f%% of raw)\n", dpath, tname,
           shape, layout, filters, (double)stored / 1024, raw > 0 ? 100 * (double)stored / raw
                                                                  : 0);
    if (type >= 0)
        H5Tclose(type);
    if (space >= 0)
        H5Sclose(space);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    H5Dclose(d);
    return stored;
}

/* The datasets of each layer (all layers with verbose, else layer 0 and a total). */
static void print_storage(const kv_trace *tr, int verbose)
{
    static const char *const names[] = {"attn", "q", "k", "v"};
    hid_t file = kv_trace_hid(tr);
    const kv_trace_info *in = kv_trace_get_info(tr);
    unsigned long long total = 0;
    printf("datasets%s\n", verbose ? "" : " (layer 0; --verbose for every layer)");
    for (int l = 0; l < in->n_layers; l++) {
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            char dpath[64];
            snprintf(dpath, sizeof dpath, "/layers/%d/%s", l, names[i]);
            if (H5Lexists(file, dpath, H5P_DEFAULT) <= 0)
                continue;
            if (verbose || l == 0)
                total += describe(file, dpath);
            else {
                hid_t d = H5Dopen2(file, dpath, H5P_DEFAULT);
                if (d >= 0) {
                    total += H5Dget_storage_size(d);
                    H5Dclose(d);
                }
            }
        }
    }
    if (in->has_tokens)
        total += describe(file, "/tokens");
    if (kv_trace_has_token_text(tr))
        total += describe(file, "/token_text");
    printf("storage      %.2f MiB of datasets over %d layer%s\n", (double)total / 1048576.0,
           in->n_layers, in->n_layers > 1 ? "s" : "");
}

/* Prints text with every line after the first indented under the value column. */
static void print_indented(const char *label, const char *text)
{
    printf("%-12s ", label);
    for (const char *c = text; *c; c++) {
        putchar(*c);
        if (*c == '\n' && c[1])
            printf("%13s", "");
    }
    printf("\n");
}

/* The tokenizer, and the prompt and generated text, of a trace captured with one. */
static void print_text(kv_trace *tr)
{
    char tok[256], sha[80], err[512];
    if (!kv_trace_has_token_text(tr))
        return;
    if (kv_trace_read_attr_string(tr, "tokenizer", tok, sizeof tok, err, sizeof err))
        tok[0] = '\0';
    if (kv_trace_read_attr_string(tr, "tokenizer_sha256", sha, sizeof sha, err, sizeof err))
        sha[0] = '\0';
    printf("tokenizer    %s (sha256 %s), token texts in /token_text\n", tok[0] ? tok : "?",
           sha[0] ? sha : "?");
    kv_trace_tokens tk;
    if (kv_trace_tokens_read(tr, &tk, err, sizeof err)) {
        printf("text         unreadable: %s\n", err);
        return;
    }
    int P = kv_trace_get_info(tr)->prefill_len;
    char *prompt = kv_trace_tokens_render(&tk, 0, P, 1);
    char *gen = kv_trace_tokens_render(&tk, P, tk.n_tokens, P == 0);
    if (prompt && gen) {
        print_indented("prompt", prompt);
        print_indented("generated", gen);
    }
    free(prompt);
    free(gen);
    kv_trace_tokens_free(&tk);
}

/* The precision of the attn rows and the row-sum tolerance that follows from it
 * (traces/validate.h), from the first row (1 entry) to the last (T entries). */
static void print_row_tolerance(const kv_trace *tr)
{
    const kv_trace_info *in = kv_trace_get_info(tr);
    const char *name = kv_attn_precision_name(in->attn_precision);
    if (in->source != KV_SOURCE_ATTN) {
        printf("attn rows    none stored (recomputed from q and k in float32); "
               "attn_precision %s\n", name);
        return;
    }
    double lo = kv_row_sum_tol(in->attn_precision, 1);
    double hi = kv_row_sum_tol(in->attn_precision, in->n_tokens);
    char lo_s[32], hi_s[32];
    snprintf(lo_s, sizeof lo_s, "%.2g", lo);
    snprintf(hi_s, sizeof hi_s, "%.2g", hi);
    printf("attn rows    computed in %s; each row sums to 1 within ", name);
    if (hi == KV_ROW_SUM_TOL_MIN)
        printf("1e-3\n");
    else if (strcmp(lo_s, hi_s) == 0)
        printf("%s\n", lo_s);
    else
        printf("%s (row of 1 entry) to %s (row of %d)\n", lo_s, hi_s, in->n_tokens);
}

static void print_info(kv_trace *tr, int verbose)
{
    const kv_trace_info *in = kv_trace_get_info(tr);
    printf("file         %s\n", kv_trace_path(tr));
    printf("model        %s\n", in->model);
    printf("format       kvtrace v%d, source %s%s\n", in->version,
           in->source == KV_SOURCE_ATTN ? "attn" : "qk",
           in->source == KV_SOURCE_ATTN && kv_trace_has_qk(tr) ? " (q and k also present)"
                                                               : "");
    printf("geometry     %d layers, %d query heads, %d KV heads, head_dim %d\n", in->n_layers,
           in->n_heads, in->n_kv_heads, in->head_dim);
    printf("tokens       T = %d, prefill P = %d, decode steps %d%s%s\n", in->n_tokens,
           in->prefill_len, in->n_tokens - in->prefill_len,
           in->prefill_len == in->n_tokens ? " (nothing to replay: P = T)" : "",
           in->has_tokens ? ", token ids in /tokens" : "");
    printf("softmax      scale %.9g\n", in->softmax_scale);
    printf("dtype_bytes  %d (bytes per K or V element modelled)\n", in->dtype_bytes);
    print_row_tolerance(tr);
    print_groups(in);
    print_text(tr);
    print_storage(tr, verbose);
}

int kv_cmd_info(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"verbose", no_argument, NULL, 'v'},
        {"check", no_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int verbose = 0, check = 0, c;
    optind = 0;   /* glibc: full re-initialisation, argv[0] is the subcommand */
    while ((c = getopt_long(argc, argv, "cvh", longopts, NULL)) != -1) {
        if (c == 'c') {
            check = 1;
        } else if (c == 'v') {
            verbose = 1;
        } else if (c == 'h') {
            info_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "Try 'kvsim info --help'.\n");
            return KV_EUSAGE;
        }
    }
    if (argc - optind != 1) {
        fprintf(stderr, "kvsim info: expected one FILE, got %d\nTry 'kvsim info --help'.\n",
                argc - optind);
        return KV_EUSAGE;
    }
    kv_trace_set_verbose(verbose);
    char err[1024];
    kv_trace *tr = NULL;
    if (kv_trace_open(argv[optind], &tr, err, sizeof err) != 0) {
        fprintf(stderr, "kvsim info: %s\n", err);
        printf("status       invalid\n");
        return KV_ERUNTIME;
    }
    print_info(tr, verbose);
    fflush(stdout);
    /* what `kvsim run` refuses beyond kv_trace_open's checks, then (--check) the values */
    int rc = kv_trace_check_replayable(tr, err, sizeof err);
    if (!rc && check)
        rc = kv_trace_check_values(tr, KV_CHECK_ALL, 1, err, sizeof err);
    if (rc) {
        fprintf(stderr, "kvsim info: %s\n", err);
        printf("status       invalid\n");
        kv_trace_close(tr);
        return KV_ERUNTIME;
    }
    printf("status       valid%s\n", check ? " (every value checked)" : "");
    kv_trace_close(tr);
    return 0;
}
