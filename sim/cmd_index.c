/*
 * cmd_index.c - `kvsim index TRACE...`: stores the log-normalisers of a qk trace's rows
 * (sim/index.h) so that `kvsim run` can replay it sparsely.
 */
#include "sim/commands.h"
#include "sim/index.h"
#include "traces/status.h"

#include <getopt.h>
#include <stdio.h>
#include <time.h>

static void index_usage(FILE *f)
{
    fprintf(f,
"usage: kvsim index TRACE [TRACE...] [-q]\n"
"\n"
"Computes the log-normaliser lse_t = log sum_{j<=t} exp(x_tj) of every row of a qk trace\n"
"(every layer, query head and position: one dense pass of the replay's own SGEMM and\n"
"softmax) and stores it in the trace as the optional datasets /layers/<l>/lse (float64\n"
"[n_heads, T]); for a trace with v also the full-cache outputs o_full = sum_j p_t[j] v_j\n"
"as /layers/<l>/o_full (float32 [n_heads, T, head_dim]); traces/FORMAT.md. The trace\n"
"stays kvtrace v1: older kvsim ignores them.\n"
"`kvsim run` then replays decode steps from the rows over each cache alone (p_t[j] =\n"
"exp(x_tj - lse_t)) when every policy and metric of the run allows it.\n"
"\n"
"  -q, --quiet   no progress and no summary line\n"
"  -h, --help    this help\n"
"\n"
"exit status: 0 success, 1 runtime failure, 2 usage error (or an attn trace)\n");
}

int kv_cmd_index(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "quiet", no_argument, NULL, 'q' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int quiet = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "qh", longopts, NULL)) != -1) {
        if (c == 'q')
            quiet = 1;
        else if (c == 'h') {
            index_usage(stdout);
            return 0;
        } else {
            index_usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "kvsim index: no trace given\n");
        index_usage(stderr);
        return 2;
    }
    for (int i = optind; i < argc; i++) {
        char err[1024];
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        int rc = kv_index_trace(argv[i], !quiet, err, sizeof err);
        if (rc) {
            fprintf(stderr, "kvsim index: %s\n", err);
            return kv_exit_status(rc);
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        if (!quiet)
            printf("kvsim index: %s: stored lse (and o_full, with v) of every layer in "
                   "%.1f s\n", argv[i],
                   (double)(b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9);
    }
    return 0;
}
