/*
 * registry.c - the table of every policy, by name. Adding a policy is one extern line
 * and one table entry here, plus its file policies/NAME.c.
 */
#include "policies/policy.h"

#include <string.h>

extern const kv_policy_ops kv_policy_full;
extern const kv_policy_ops kv_policy_window;
extern const kv_policy_ops kv_policy_streamingllm;
extern const kv_policy_ops kv_policy_h2o;
extern const kv_policy_ops kv_policy_snapkv;
extern const kv_policy_ops kv_policy_morphkv;
extern const kv_policy_ops kv_policy_tova;
extern const kv_policy_ops kv_policy_random;
extern const kv_policy_ops kv_policy_oracle;
extern const kv_policy_ops kv_policy_lookahead;
extern const kv_policy_ops kv_policy_knorm;
extern const kv_policy_ops kv_policy_keydiff;
extern const kv_policy_ops kv_policy_cur;

/* The order `kvsim policies` lists them: the reference, then by increasing state; then
 * the later rules: TOVA, the random floor, and the two offline references; then the
 * scorers that read keys and values. */
const kv_policy_ops *const kv_policy_registry[] = {
    &kv_policy_full,
    &kv_policy_window,
    &kv_policy_streamingllm,
    &kv_policy_h2o,
    &kv_policy_snapkv,
    &kv_policy_morphkv,
    &kv_policy_tova,
    &kv_policy_random,
    &kv_policy_oracle,
    &kv_policy_lookahead,
    &kv_policy_knorm,
    &kv_policy_keydiff,
    &kv_policy_cur,
    NULL,
};

const kv_policy_ops *kv_policy_find(const char *name)
{
    for (int i = 0; kv_policy_registry[i] != NULL; i++)
        if (strcmp(kv_policy_registry[i]->name, name) == 0)
            return kv_policy_registry[i];
    return NULL;
}

const char *kv_policy_suggest(const char *name)
{
    const char *best = NULL;
    int best_d = 0;
    for (int i = 0; kv_policy_registry[i] != NULL; i++) {
        int d = kv_edit_distance(name, kv_policy_registry[i]->name);
        if (best == NULL || d < best_d) {
            best = kv_policy_registry[i]->name;
            best_d = d;
        }
    }
    return best;
}
