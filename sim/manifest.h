/*
 * manifest.h - manifest.json, the record in every results folder of how it was made:
 *
 *   kvsim        {"commit": `git describe --always --dirty` at build time, or "unknown"}
 *   command      the command line, one string per argument
 *   date         when the run finished, UTC, ISO 8601
 *   machine      {"host", "system", "release", "arch", "cpus"} (uname, online CPUs)
 *   experiment   {"output", "seed", "style", "budgets": [spec text...],
 *                 "policies": [{"label", "type", "params": {name: value, every one of
 *                 the type's parameters and kv_granularity, defaults included}}]}
 *   traces       [{"path", "name" (the trace column), "sha256" (of the file), "model",
 *                  "source" ("attn" or "qk"), "layers", "heads", "kv_heads", "head_dim",
 *                  "tokens" (T), "prompt" (P), "dtype_bytes",
 *                  "budgets": {label: [tokens per budget, in budget order]}}]
 *
 * Strings are JSON-escaped (quotes, backslashes, control characters as \uXXXX); bytes
 * that are not UTF-8 are written as they are.
 */
#ifndef KV_MANIFEST_H
#define KV_MANIFEST_H

#include <stddef.h>
#include "sim/config.h"

/*
 * Writes dir/manifest.json for experiment ex (resolved: tokens as
 * kv_experiment_resolve_budgets filled it) run by the command line argv[0..argc-1],
 * through a temporary renamed into place when complete. Reads every trace file once
 * (its sha256). Returns 0, or 1 with err set (a trace unreadable, a write failing: the
 * message names ENOSPC for a full disk; no partial manifest is left).
 */
int kv_manifest_write(const char *dir, const kv_experiment *ex, const int *tokens,
                      int argc, char **argv, char *err, size_t err_len);

#endif
