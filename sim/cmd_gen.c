/*
 * cmd_gen.c - `kvsim gen`: the command line of the synthetic trace generator
 * (traces/gen.h). Its options and --help come from the generator's parameter table,
 * kv_gen_options, plus --f16, --attn and -o.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "sim/commands.h"
#include "sim/publish.h"
#include "traces/gen.h"
#include "traces/status.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The default of option o as --help shows it. */
static void opt_format(const kv_gen_params *p, const kv_gen_option *o, char *buf, size_t len)
{
    if (o->type == KV_GEN_OPT_REAL)
        snprintf(buf, len, "%g", kv_gen_option_get(p, o));
    else
        snprintf(buf, len, "%.0f", kv_gen_option_get(p, o));
}

static void gen_usage(FILE *f)
{
    kv_gen_params d;
    kv_gen_defaults(&d);
    fprintf(f, "usage: kvsim gen [OPTIONS] -o FILE\n"
               "Writes a seeded synthetic kvtrace v1 file (source = qk; with --attn, source = "
               "attn\nwith q and k kept) whose attention has sinks, locality, heavy hitters "
               "and periodic\nrecall of controllable strength. Strengths are logits in nats "
               "(x nats = e^x weight).\n\n");
    for (size_t i = 0; i < kv_gen_n_options; i++) {
        char arg[40], def[32];
        snprintf(arg, sizeof arg, "--%s %s", kv_gen_options[i].name,
                 kv_gen_options[i].type == KV_GEN_OPT_REAL ? "X" : "N");
        opt_format(&d, &kv_gen_options[i], def, sizeof def);
        fprintf(f, "  %-22s %s [default %s%s%s]\n", arg, kv_gen_options[i].help, def,
                *kv_gen_options[i].unit ? " " : "", kv_gen_options[i].unit);
    }
    fprintf(f, "  %-22s %s\n", "--f16", "store float16, not float32 [default off]");
    fprintf(f, "  %-22s %s\n", "--attn", "also store the exact rows, source = attn (T^2 "
            "storage) [default off]");
    fprintf(f, "  %-22s %s\n", "-o, --output FILE", "the trace to write (required)");
    fprintf(f, "  %-22s %s\n", "-h, --help", "this help");
    fprintf(f, "\nexit status: 0 written, 1 runtime failure, 2 usage error.\n");
}

/* Parses text into option o of p; 0, or -1 with a message on stderr. */
static int opt_parse(kv_gen_params *p, const kv_gen_option *o, const char *text)
{
    char *end = NULL;
    double v = 0;
    if (o->type == KV_GEN_OPT_REAL)
        v = strtod(text, &end);
    else if (text[0] == '-' || text[0] == '+')
        end = (char *)text;   /* signs are not digits: reject */
    else
        v = (double)strtoull(text, &end, 10);
    if (end == text || *end != '\0' || !(v >= o->min && v <= o->max)) {
        fprintf(stderr, "kvsim gen: --%s expects %s in %g..%g, got '%s'\n", o->name,
                o->type == KV_GEN_OPT_REAL ? "a number" : "a whole number", o->min, o->max,
                text);
        return -1;
    }
    kv_gen_option_set(p, o, v);
    return 0;
}

enum { OPT_F16 = 1000, OPT_ATTN, OPT_TABLE };

/* What the command line asks for. */
typedef struct {
    kv_gen_params p;
    int store_f16, with_attn;
    const char *out;
} gen_args;

/* getopt_long's table: the generator's options, then --f16, --attn, -o and -h. The
 * caller frees it; NULL when out of memory. */
static struct option *gen_longopts(void)
{
    struct option *lo = malloc((kv_gen_n_options + 5) * sizeof *lo);
    if (!lo)
        return NULL;
    for (size_t i = 0; i < kv_gen_n_options; i++)
        lo[i] = (struct option){kv_gen_options[i].name, required_argument, NULL,
                                OPT_TABLE + (int)i};
    lo[kv_gen_n_options] = (struct option){"f16", no_argument, NULL, OPT_F16};
    lo[kv_gen_n_options + 1] = (struct option){"attn", no_argument, NULL, OPT_ATTN};
    lo[kv_gen_n_options + 2] = (struct option){"output", required_argument, NULL, 'o'};
    lo[kv_gen_n_options + 3] = (struct option){"help", no_argument, NULL, 'h'};
    lo[kv_gen_n_options + 4] = (struct option){NULL, 0, NULL, 0};
    return lo;
}

/* Parses argv into a; 0 to generate, 2 on a usage error (message on stderr), -1 when
 * --help was printed. */
static int parse_args(int argc, char **argv, const struct option *longopts, gen_args *a)
{
    optind = 0;   /* glibc: full re-initialisation, argv[0] is the subcommand */
    int c;
    while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
        if (c == 'h') {
            gen_usage(stdout);
            return -1;
        } else if (c == 'o') {
            a->out = optarg;
        } else if (c == OPT_F16) {
            a->store_f16 = 1;
        } else if (c == OPT_ATTN) {
            a->with_attn = 1;
        } else if (c >= OPT_TABLE && c < OPT_TABLE + (int)kv_gen_n_options) {
            if (opt_parse(&a->p, &kv_gen_options[c - OPT_TABLE], optarg) != 0)
                return KV_EUSAGE;
        } else {
            fprintf(stderr, "Try 'kvsim gen --help'.\n");
            return KV_EUSAGE;
        }
    }
    if (optind < argc || !a->out) {
        fprintf(stderr, "kvsim gen: %s%s\nTry 'kvsim gen --help'.\n",
                optind < argc ? "unexpected argument " : "missing -o FILE",
                optind < argc ? argv[optind] : "");
        return KV_EUSAGE;
    }
    return 0;
}

int kv_cmd_gen(int argc, char **argv)
{
    gen_args a = {.store_f16 = 0, .with_attn = 0, .out = NULL};
    kv_gen_defaults(&a.p);
    a.p.progress = 1;
    struct option *longopts = gen_longopts();
    if (!longopts) {
        fprintf(stderr, "kvsim gen: out of memory\n");
        return KV_ERUNTIME;
    }
    int rc = parse_args(argc, argv, longopts, &a);
    free(longopts);
    if (rc != 0)
        return rc < 0 ? 0 : rc;
    char err[512];
    if (kv_gen_check(&a.p, err, sizeof err) != 0) {
        fprintf(stderr, "kvsim gen: %s\n", err);
        return KV_EUSAGE;
    }
    double start = now_s();
    kv_out_file out;   /* written beside a.out, renamed over it when complete */
    if (kv_out_file_begin(&out, a.out, err, sizeof err) != 0) {
        fprintf(stderr, "kvsim gen: %s\n", err);
        return 1;
    }
    rc = kv_gen_write(out.tmp, &a.p, a.store_f16, a.with_attn, err, sizeof err);
    if (rc != 0)
        kv_out_file_abort(&out, err, sizeof err);
    else
        rc = kv_out_file_commit(&out, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "kvsim gen: %s\n", err);
        return KV_ERUNTIME;
    }
    fprintf(stderr, "kvsim gen: wrote %s (source %s, %d layers, %d/%d heads, T = %d, P = %d, "
            "%s) in %.1f s\n", a.out, a.with_attn ? "attn" : "qk", a.p.n_layers, a.p.n_heads,
            a.p.n_kv_heads, a.p.n_tokens, a.p.prefill_len,
            a.store_f16 ? "float16" : "float32", now_s() - start);
    return 0;
}
