/*
 * budget.h - budgets as the user writes them, and their resolution into tokens.
 *
 * A budget spec is one of
 *   64        tokens: B = 64;
 *   0.25p     a fraction of the prompt: B = floor(0.25 * P) tokens, per trace;
 *   64KiB     bytes (suffix B, KiB, MiB or GiB; binary units): the largest B whose
 *             footprint fits, per trace and per policy:
 *               B = max { B : kv_bytes_peak(B) + meta_bytes_peak(B) <= bytes },
 *             kv_bytes_peak and meta_bytes_peak being exactly the summary.tsv columns of a
 *             run at budget B (peaks over decode steps of the sums over every cache of the
 *             model), so policies are compared at equal memory, metadata included.
 * The spec's text is kept for the `budget_spec` column; the `budget` column holds the
 * resolved tokens.
 */
#ifndef KV_BUDGET_H
#define KV_BUDGET_H

#include <stddef.h>
#include "sim/engine.h"
#include "traces/trace.h"

#define KV_BUDGET_TEXT_LEN 32

typedef enum {
    KV_BUDGET_TOKENS = 0,   /* value: tokens, a whole number >= 1 */
    KV_BUDGET_PROMPT = 1,   /* value: fraction of the prompt length P, > 0 */
    KV_BUDGET_BYTES = 2     /* value: bytes, >= 1 */
} kv_budget_kind;

typedef struct {
    kv_budget_kind kind;
    double value;
    char text[KV_BUDGET_TEXT_LEN];   /* as given, without surrounding blanks */
} kv_budget_spec;

/*
 * Parses one spec ("64", "0.25p", "64KiB", "1.5MiB", "4096B"). Returns 0, or KV_EUSAGE with a
 * message naming the text and the accepted forms (not a number, zero or negative, unknown
 * suffix, text of KV_BUDGET_TEXT_LEN characters or more, tokens above 10^8).
 */
int kv_budget_parse(const char *text, kv_budget_spec *out, char *err, size_t err_len);

/*
 * The memory a run of policy pc at budget B (tokens) would reach on a trace of geometry
 * info: *kv_bytes_peak and *meta_bytes_peak, in bytes, summed over all the model's caches
 * as summary.tsv reports them. Computed by a dry run of one cache through the replay's
 * own step (sim/cache.h: the policy's create / observe / select / meta_bytes in the same
 * order) on constant attention rows, one cache standing for all (every cache sees the
 * same counts), so it is exact for any policy whose memory depends on how many tokens it
 * holds and has seen, not on the attention values: all of the registered ones. Cost:
 * one cache's replay, O(T * B * group) plus the policy's own work. B must pass pc's
 * check. Returns 0, or 1 when out of memory.
 */
int kv_budget_footprint(const kv_policy_conf *pc, const kv_trace_info *info, int budget,
                        double *kv_bytes_peak, double *meta_bytes_peak, char *err,
                        size_t err_len);

/*
 * The same dry run, step by step: kv_bytes[i] and meta_bytes[i] (caller's arrays of
 * T - P doubles) receive the KV bytes and the metadata bytes, summed over all the caches
 * of geometry info, at decode step t = P + i: exactly the kv_bytes and meta_bytes columns
 * of steps.tsv for a run of pc at budget B on a trace of geometry info. With info a
 * trace's T and P at another model's geometry (sim/geometry.h) it projects the policy's
 * memory onto that model. B must pass pc's check. Returns 0, or 1 when out of memory.
 */
int kv_budget_footprint_steps(const kv_policy_conf *pc, const kv_trace_info *info,
                              int budget, double *kv_bytes, double *meta_bytes, char *err,
                              size_t err_len);

/*
 * Resolves spec into *tokens for policy pc on a trace of geometry info (see the top of
 * this file). Byte specs search B in [B_min, max(T - 1, B_min)] by bisection (the
 * footprint grows with B), B_min being the smallest budget pc's check accepts; at B >= T - 1
 * nothing is ever evicted, so larger budgets change nothing. Returns 0; 2 when no budget
 * fits or the result breaks pc's rule (message naming the spec, the policy label and the
 * bytes the smallest valid budget needs, or the rule); 1 when out of memory. The message
 * does not name the trace: the caller prefixes it.
 */
int kv_budget_resolve(const kv_budget_spec *spec, const kv_policy_conf *pc,
                      const kv_trace_info *info, int *tokens, char *err, size_t err_len);

#endif
