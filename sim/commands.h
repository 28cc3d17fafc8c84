/*
 * commands.h - the `kvsim` subcommands. Each takes the arguments after the subcommand
 * name (argv[0] is the subcommand name itself, as getopt_long expects) and returns the
 * process exit status: 0 success, 1 runtime failure, 2 usage error. Each prints its own
 * messages to stderr and handles --help. Only main() exits.
 */
#ifndef KV_COMMANDS_H
#define KV_COMMANDS_H

int kv_cmd_run(int argc, char **argv);      /* sim/cmd_run.c */
int kv_cmd_policies(int argc, char **argv); /* sim/cmd_run.c */
int kv_cmd_plot(int argc, char **argv);     /* sim/cmd_plot.c */
int kv_cmd_info(int argc, char **argv);     /* sim/cmd_info.c */
int kv_cmd_gen(int argc, char **argv);      /* sim/cmd_gen.c */
int kv_cmd_capture(int argc, char **argv);  /* sim/cmd_capture.c */
int kv_cmd_index(int argc, char **argv);    /* sim/cmd_index.c */

#endif
