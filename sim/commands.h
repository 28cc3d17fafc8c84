/*
 * commands.h - the `kvsim` subcommands. Each takes the arguments after the subcommand
 * name (argv[0] is the subcommand name itself, as getopt_long expects) and returns the
 * process exit status: 0 success, 1 runtime failure, 2 usage error. Each prints its own
 * messages to stderr and handles --help. Only main() exits.
 */
#ifndef KV_COMMANDS_H
#define KV_COMMANDS_H

#include <stddef.h>

int kv_cmd_run(int argc, char **argv);      /* sim/cmd_run.c */
int kv_cmd_policies(int argc, char **argv); /* sim/cmd_run.c */
int kv_cmd_plot(int argc, char **argv);     /* sim/cmd_plot.c */
int kv_cmd_info(int argc, char **argv);     /* sim/cmd_info.c */
int kv_cmd_gen(int argc, char **argv);      /* sim/cmd_gen.c */
int kv_cmd_capture(int argc, char **argv);  /* sim/cmd_capture.c */
int kv_cmd_text(int argc, char **argv);     /* sim/cmd_text.c */
int kv_cmd_index(int argc, char **argv);    /* sim/cmd_index.c */

/* Where a checkpoint or tokenizer named on the command line is: name as given when it
 * exists or contains a '/', else $KVSIM_MODELS/name (default models/, where `make models`
 * puts them) when that exists; into out (len bytes, truncated). Cannot fail. */
void kv_resolve_model_file(const char *name, char *out, size_t len);  /* sim/cmd_capture.c */

/*
 * `kvsim run` with its resolve, check and replay steps done by driver (NULL: in this
 * process, as kv_cmd_run). kvsim-mpi's rank 0 runs it with the MPI driver
 * (sim/mpi_run.c); the options, messages, output and exit status are kv_cmd_run's.
 */
#include "sim/experiment.h"
int kv_cmd_run_with(int argc, char **argv, const kv_experiment_driver *driver);

/*
 * The experiment `kvsim run` with these arguments would run (the file, then the options
 * over it), without printing or running anything: what the other ranks of an MPI job
 * load. Returns 0, -1 after --help (usage printed), or 2 with err set; *ex is the
 * caller's (kv_experiment_init before, kv_experiment_free after).
 */
int kv_run_load_experiment(int argc, char **argv, kv_experiment *ex, char *err,
                           size_t err_len);

#endif
