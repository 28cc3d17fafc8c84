/*
 * alloc.c - budgets shared out over layers and caches (alloc.h). The selections that use
 * them (chunks, value weights, AdaKV's joint choice) are the cache layer's (cache.c).
 */
#include "sim/alloc.h"

#include <math.h>

kv_select_opts kv_select_resolved(const kv_select_opts *o)
{
    kv_select_opts r = *o;
    if (r.beta < 1.0)
        r.beta = KV_PYRAMID_BETA;
    if (!r.alpha_given)
        r.alpha = KV_ADA_ALPHA;
    r.alpha_given = 1;
    return r;
}

int kv_select_composed(const kv_select_opts *o)
{
    return o->alloc == KV_ALLOC_ADA || o->chunk > 0 || o->value_weight != KV_VALUE_WEIGHT_NONE;
}

int kv_select_any(const kv_select_opts *o)
{
    return o->alloc != KV_ALLOC_UNIFORM || kv_select_composed(o);
}

void kv_alloc_layer_budgets(const kv_select_opts *o, int budget, int window, int prefill,
                            int n_layers, int *out)
{
    for (int l = 0; l < n_layers; l++)
        out[l] = budget;
    if (o->alloc != KV_ALLOC_PYRAMID || n_layers < 2)
        return;
    /* kvpress PyramidKVPress.get_layer_budget, with its max_capacity_prompt - window
     * being the pyramid part m = B - w and q_len the prompt P */
    double m = (double)budget - window, w = window, P = prefill;
    double beta = o->beta >= 1.0 ? o->beta : KV_PYRAMID_BETA;
    double lo = m / beta, hi = 2.0 * m - lo;
    if (hi >= P - w) {
        hi = P - w;
        lo = 2.0 * m - hi;
    }
    if (!(P >= hi && hi >= lo && lo >= w) || m <= 0.0)
        return;                                   /* the fallback: uniform */
    double steps = (hi - lo) / (n_layers - 1);
    long total = 0, want = (long)n_layers * (budget - window);
    for (int l = 0; l < n_layers; l++) {
        out[l] = (int)floor(hi - l * steps);
        total += out[l];
    }
    /* floor(x_l) sums to within n_layers below the exact L * m: the residue goes to the
     * lowest layers, one token each */
    for (int l = 0; total < want; l = (l + 1) % n_layers, total++)
        out[l]++;
    for (int l = 0; total > want; l = (l + 1) % n_layers, total--)
        out[n_layers - 1 - l]--;              /* rounding above: never in exact terms */
    for (int l = 0; l < n_layers; l++)
        out[l] += window;
}

int kv_alloc_held_cap(const kv_select_opts *o, int budget, int n_caches)
{
    return o->alloc == KV_ALLOC_ADA ? budget * n_caches : budget;
}
