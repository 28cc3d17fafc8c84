/*
 * config.h - an experiment: which traces, budgets and policies to run, and where the
 * results go. Built from an INI file (libinih) and/or command-line options.
 *
 * INI layout (the files in configs/ are commented examples):
 *
 *   [experiment]
 *   trace   = traces/data/a.h5, traces/data/b.h5  ; one or more, comma-separated,
 *                                  ; relative to the working directory; an item with
 *                                  ; * ? or [ is a pattern (glob(3)): its files by name
 *   budgets = 64, 0.25p, 64KiB     ; tokens, a fraction of the prompt, or bytes (budget.h)
 *   output  = results/default      ; directory
 *   seed    = 1                    ; optional, base of every policy's random seed
 *   model   = stories260K.bin          ; optional, one or more: also run
 *                                  ; every trace closed-loop with the checkpoint it was
 *                                  ; captured from (sim/closedloop.h)
 *   topk    = yes                  ; optional: measure the top-k recall metrics (yes) or
 *                                  ; not (no, the default: their columns hold nan; they
 *                                  ; rank every key of every row, so a run needs them off
 *                                  ; to replay sparsely, engine.h)
 *   style   = paper                ; optional: the figures' style, screen (default) or
 *                                  ; paper (kvsim plot --style)
 *
 *   [policy morphkv-max]           ; the label used in every output file
 *   type   = morphkv               ; a registered policy (kvsim policies)
 *   window = 32                    ; any of that policy's parameters
 *   fusion = max
 */
#ifndef KV_CONFIG_H
#define KV_CONFIG_H

#include <stddef.h>
#include "sim/budget.h"
#include "sim/engine.h"

#define KV_PATH_LEN 4096   /* longest path, NUL included */
#define KV_MAX_MODELS 16   /* checkpoints of one closed-loop experiment (model =) */

typedef struct {
    char **traces;              /* owned paths, replayed one after the other */
    int n_traces;
    char output[KV_PATH_LEN];
    char model[KV_PATH_LEN];    /* checkpoints for the closed loop, comma-separated (each
                                   trace runs with the one it was captured from); "" for
                                   none */
    kv_budget_spec *budgets;    /* owned; resolved to tokens per trace and policy */
    int n_budgets;
    kv_policy_conf *policies;   /* owned */
    int n_policies;
    unsigned long seed;
    int no_topk;                /* 1 (default, topk = no): the top-k metrics are not
                                   measured; topk = yes or --topk: 0 */
    int dense;                  /* 1: --dense, never the sparse replay (engine.h) */
    char style[8];              /* figure style: "screen", "paper", or "" (screen) */
} kv_experiment;

/* Sets ex to an empty experiment (no policies, no budgets, seed 1). Cannot fail. */
void kv_experiment_init(kv_experiment *ex);

/* Frees what ex owns and empties it. */
void kv_experiment_free(kv_experiment *ex);

/*
 * Reads an INI experiment file into ex (which must be initialised; values it sets replace
 * earlier ones, policies are appended). Returns 0, or KV_EUSAGE (traces/status.h) with a
 * message naming the file,
 * the section and the key: unreadable file, syntax error (with its line), unknown section
 * or key, unknown policy type or parameter (with the nearest name), out-of-range value,
 * duplicate label, a policy section without `type`; KV_ENOMEM when out of memory.
 */
int kv_config_load(const char *path, kv_experiment *ex, char *err, size_t err_len);

/* Appends a policy labelled label of registered type type with default parameters.
 * Returns 0, KV_EUSAGE (unknown type, with a suggestion; duplicate label; label too long)
 * or KV_ENOMEM. */
int kv_experiment_add_policy(kv_experiment *ex, const char *label, const char *type,
                             char *err, size_t err_len);

/* Sets parameter param to text on the policy labelled target, or, when no label matches,
 * on every policy of type target. Returns 0, or KV_EUSAGE (no such policy, bad
 * parameter/value). */
int kv_experiment_set(kv_experiment *ex, const char *target, const char *param,
                      const char *text, char *err, size_t err_len);

/* Replaces the trace list by the comma-separated paths in text; an item with * ? or [ is
 * replaced by the files it matches, sorted by name. Returns 0, or KV_EUSAGE (empty item,
 * a pattern that matches nothing, a path too long, two with one file name, a file name
 * with a tab or a line break, which the TSV trace column could not hold) or KV_ENOMEM. */
int kv_experiment_set_traces(kv_experiment *ex, const char *text, char *err, size_t err_len);

/* Parses "64, 0.25p, 64KiB" (budget specs, kv_budget_parse) into
 * ex->budgets, replacing earlier ones. Returns 0, KV_EUSAGE naming the bad item, or
 * KV_ENOMEM. */
int kv_experiment_set_budgets(kv_experiment *ex, const char *text, char *err, size_t err_len);

/* The seed range, the same for `seed =` in [experiment] and for --seed. */
#define KV_SEED_MAX 18446744073709551615ull

/* Parses text (decimal digits only, 0..KV_SEED_MAX) into ex->seed. Returns 0, or 2 with
 * err saying the range. */
int kv_experiment_set_seed(kv_experiment *ex, const char *text, char *err, size_t err_len);

#endif
