/*
 * main.c - the `kvsim` command: dispatches to the subcommands of sim/commands.h.
 */
#include "sim/commands.h"
#include "sim/rows.h"
#include "sim/signals.h"
#include "traces/status.h"

#include <omp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} commands[] = {
    { "run", kv_cmd_run, "replay a trace under every policy and budget, write TSV results" },
    { "plot", kv_cmd_plot, "render the figures of a result directory with gnuplot" },
    { "info", kv_cmd_info, "describe a trace and check that it is valid" },
    { "gen", kv_cmd_gen, "write a seeded synthetic trace" },
    { "capture", kv_cmd_capture, "record a real trace from a llama2.c checkpoint" },
    { "text", kv_cmd_text, "print the text of a trace captured with a tokenizer" },
    { "index", kv_cmd_index, "store a qk trace's row normalisers for sparse replays" },
    { "policies", kv_cmd_policies, "list the eviction policies and their parameters" },
    { NULL, NULL, NULL },
};

static void usage(FILE *f)
{
    fprintf(f, "usage: kvsim COMMAND [options]   (kvsim COMMAND --help for details)\n\n"
               "kvsim replays recorded attention and compares KV-cache eviction policies.\n\n"
               "commands:\n");
    for (int i = 0; commands[i].name; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
}

/* Threads per core kvsim asks for at most: more only add BLAS buffers (128 MiB each)
 * and, by the ten thousand, make libgomp fail to create them. */
#define KV_THREADS_PER_CORE 4

/* Caps OMP_NUM_THREADS (read by libgomp) at KV_THREADS_PER_CORE per core, with a note;
 * the results do not depend on the thread count. */
static void cap_threads(void)
{
    int cap = KV_THREADS_PER_CORE * omp_get_num_procs(), asked = omp_get_max_threads();
    if (asked <= cap)
        return;
    fprintf(stderr, "kvsim: note: %d threads asked for (OMP_NUM_THREADS), using %d (%d per "
            "core)\n", asked, cap, KV_THREADS_PER_CORE);
    omp_set_num_threads(cap);
}

/* Leaves with rc. Under a memory limit too tight for OpenBLAS's work buffers, its library
 * destructor would wait forever (sim/rows.h): then _exit, after flushing the output. */
static int finish(int rc)
{
    if (kv_blas_can_shut_down())
        return rc;
    fflush(stdout);
    fflush(stderr);
    _exit(rc);
}

static int dispatch(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return KV_EUSAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    for (int i = 0; commands[i].name; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "kvsim: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return KV_EUSAGE;
}

int main(int argc, char **argv)
{
    kv_signals_install();   /* interrupts remove temporaries; see sim/signals.h */
    cap_threads();
    return finish(dispatch(argc, argv));
}
