/*
 * main.c - the `kvsim` command: dispatches to the subcommands of sim/commands.h.
 */
#include "sim/commands.h"
#include "sim/signals.h"
#include "traces/status.h"

#include <stdio.h>
#include <string.h>

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

int main(int argc, char **argv)
{
    kv_signals_install();   /* interrupts remove temporaries; see sim/signals.h */
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
