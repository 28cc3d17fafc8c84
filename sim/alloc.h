/*
 * alloc.h - the rules that compose with any scoring policy (policy.h's `scores` slot),
 * written once here and applied by the cache layer (sim/cache.h) for whichever driver
 * steps the caches: how a total budget is shared out over layers and caches, and how a
 * policy's position scores are turned into a kept set.
 *
 *   alloc = uniform   every cache gets B (the default, what every policy did before).
 *   alloc = pyramid   PyramidKV (Cai et al. 2024, arXiv 2406.02069), the layer budget
 *                     formula as kvpress's PyramidKVPress writes it (beta = 20), with the
 *                     policy's window w added on top of each layer's pyramid part:
 *                       m = B - w (the pyramid part per layer on average), P the prompt;
 *                       lo = m / beta, hi = 2m - lo; if hi >= P - w: hi = P - w, lo = 2m - hi;
 *                       if not (P >= hi >= lo >= w): every layer gets B (kvpress's
 *                       fallback to the uniform budget);
 *                       else part_l = hi - l * (hi - lo) / (L - 1) for l = 0..L-1 (real
 *                       numbers, falling linearly from the first layer to the last),
 *                       B_l = w + floor(part_l), and the residue L * m - sum floor(part_l)
 *                       (an integer in [0, L)) adds one token to each of layers 0, 1, ...
 *                       in turn, so the total is exactly L * B. One layer: B.
 *   alloc = ada       AdaKV (Feng et al. 2024, arXiv 2407.11550), the rule of kvpress's
 *                     AdaKVPress (alpha_safeguard = 0.2): at every selection (the prompt
 *                     compression and every decode step) the G caches of a layer choose
 *                     jointly: each keeps its floor(alpha * B) best positions by its own
 *                     ranking, then the layer's remaining G * B - sum of those places go
 *                     to the best remaining entries over all its caches. A ranking puts
 *                     the policy's fixed positions (its window) first, then higher score,
 *                     then the more recent position, then (across caches) the lower cache
 *                     index. Caches end up with different sizes that drift with the scores;
 *                     the layer holds G * B at most. When no cache's rule evicts at a step
 *                     (policy.h scores returns 0), or the layer holds at most G * B, all
 *                     keep all.
 *   chunk = N         ChunkKV (Liu et al. 2025, arXiv 2502.00299): the non-fixed entries
 *                     of the view, in cache order, are cut into consecutive chunks of N
 *                     (the last may be shorter); a chunk's score is the sum of its
 *                     entries' scores; chunks are kept whole in order of score (ties: the
 *                     chunk with the more recent last position) while they fit the
 *                     min(n, B) - fixed places left; the first chunk that does not fit
 *                     fills the rest with its own best entries (kv_keep_top), so exactly
 *                     min(n, B) are kept as with every other rule. Not with alloc = ada.
 *   value_weight = l1 VATP (Guo et al. 2024, "Attention Score is not All You Need for
 *                     Token Importance Indicator in KV Cache Reduction: Value Also
 *                     Matters", EMNLP): each non-fixed score is multiplied by the L1 norm
 *                     of the position's value vector (the trace's v, the cache's KV head).
 * Budgets are totals: with every option, the sum of the budgets over all L * G caches is
 * L * G * B, so the memory comparison between policies stays the same.
 */
#ifndef KV_ALLOC_H
#define KV_ALLOC_H

#include <stddef.h>

typedef enum { KV_ALLOC_UNIFORM = 0, KV_ALLOC_PYRAMID = 1, KV_ALLOC_ADA = 2 } kv_alloc_mode;
typedef enum { KV_VALUE_WEIGHT_NONE = 0, KV_VALUE_WEIGHT_L1 = 1 } kv_value_weight;

#define KV_PYRAMID_BETA 20.0   /* kvpress PyramidKVPress's default */
#define KV_ADA_ALPHA 0.2       /* kvpress AdaKVPress's alpha_safeguard */

/* The composing options of one configured policy (engine-level parameters). A zeroed
 * struct is the default: uniform, no chunk, no weight, beta KV_PYRAMID_BETA (beta 0 reads
 * as the default) and alpha KV_ADA_ALPHA (alpha_given 0). */
typedef struct {
    kv_alloc_mode alloc;
    double beta;               /* pyramid shape, >= 1 */
    double alpha;              /* ada's per-cache share of B kept by own score, [0, 1];
                                  read only when alpha_given (else KV_ADA_ALPHA) */
    int alpha_given;
    int chunk;                 /* N >= 2, or 0: off */
    kv_value_weight value_weight;
} kv_select_opts;

/* o with the defaults filled in (beta, alpha). Cannot fail. */
kv_select_opts kv_select_resolved(const kv_select_opts *o);

/* 1 when the cache layer must select from the policy's scores itself (alloc = ada,
 * chunk or value_weight set); pyramid alone only changes the budgets. Cannot fail. */
int kv_select_composed(const kv_select_opts *o);

/* 1 when any option is not the default (the policy must have scores). Cannot fail. */
int kv_select_any(const kv_select_opts *o);

/*
 * The budget of every layer of a run at budget B (out: [n_layers]): B each for uniform
 * and ada; the pyramid rule above for pyramid, with window w (the policy's ops->window at
 * B, 0 without) and prompt length P. The sum is n_layers * B exactly. Cannot fail
 * (B >= 1, 0 <= w; a w >= B gives the fallback).
 */
void kv_alloc_layer_budgets(const kv_select_opts *o, int budget, int window, int prefill,
                            int n_layers, int *out);

/* The most past positions one cache of a layer of n_caches may hold after a select under
 * o at budget B: n_caches * B with ada (the layer's whole budget), else B. */
int kv_alloc_held_cap(const kv_select_opts *o, int budget, int n_caches);

#endif
