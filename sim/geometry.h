/*
 * geometry.h - named model geometries, and a policy's memory projected onto one.
 *
 * A replay counts the tokens each (layer, KV head) cache of the traced model holds. How
 * many tokens a policy holds depends only on the prompt length P, the sequence length T,
 * the budget and the policy's parameters, never on the attention values (true of every
 * registered policy: sim/budget.h), so the same counts can be charged at the geometry of
 * another model - the models a paper ran - to read its memory in that model's bytes.
 *
 * The table holds the models of the MorphKV paper (Ghadia et al. 2025, arXiv 2503.00979,
 * Sec. 5), with their published configurations (config.json of each model on the
 * HuggingFace hub: num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim
 * = hidden_size / num_attention_heads) and 2 bytes per element (float16 / bfloat16):
 *
 *   name               layers  heads  kv_heads  head_dim
 *   llama-3.1-8b           32     32         8       128   Llama-3.1-8B-Instruct
 *   mistral-7b-v0.2        32     32         8       128   Mistral-7B-Instruct-v0.2
 *   qwen2.5-7b             28     28         4       128   Qwen2.5-7B-Instruct
 *
 * Bytes, with g = heads / kv_heads the GQA group size:
 *   KV bytes of one step   = tokens_per_cache * caches * 2 (K and V) * head_dim * 2,
 *   caches                 = layers * kv_heads            (kv_granularity = kv_head)
 *                          = layers * kv_heads * g        (kv_granularity = query_head:
 *                            the KV repeated per query head, layers * heads caches)
 * and the policy's metadata bytes as its own meta_bytes rule gives them for a cache of
 * that model's group size (e.g. MorphKV: min(window, rows) * g * tokens * 4 per cache),
 * summed over the same caches.
 */
#ifndef KV_GEOMETRY_H
#define KV_GEOMETRY_H

#include <stddef.h>
#include "traces/trace.h"

typedef struct {
    const char *name;       /* lower case, as given to --geometry */
    const char *model;      /* the HuggingFace model it stands for */
    int n_layers, n_heads, n_kv_heads, head_dim;
    int dtype_bytes;        /* 2: float16 / bfloat16 */
} kv_model_geometry;

/* The table above, n_geometries rows; static storage. Cannot fail. */
const kv_model_geometry *kv_geometries(int *n_geometries);

/* The geometry named name (case-insensitive), or NULL; err then lists the known names. */
const kv_model_geometry *kv_geometry_find(const char *name, char *err, size_t err_len);

/*
 * *out = *trace with the layers, heads, KV heads, head size and element size of g: the
 * trace's T and P (and the rest) kept, so a footprint computed on *out is the trace's
 * token counts charged at g's geometry. Cannot fail.
 */
void kv_geometry_apply(const kv_model_geometry *g, const kv_trace_info *trace,
                       kv_trace_info *out);

#endif
