/*
 * geometry.c - the named model geometries (geometry.h).
 */
#include "sim/geometry.h"

#include <stdio.h>
#include <strings.h>

static const kv_model_geometry table[] = {
    { "llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct", 32, 32, 8, 128, 2 },
    { "mistral-7b-v0.2", "mistralai/Mistral-7B-Instruct-v0.2", 32, 32, 8, 128, 2 },
    { "qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", 28, 28, 4, 128, 2 },
};

#define N_TABLE ((int)(sizeof table / sizeof table[0]))

const kv_model_geometry *kv_geometries(int *n_geometries)
{
    *n_geometries = N_TABLE;
    return table;
}

const kv_model_geometry *kv_geometry_find(const char *name, char *err, size_t err_len)
{
    for (int i = 0; i < N_TABLE; i++)
        if (strcasecmp(name, table[i].name) == 0)
            return &table[i];
    snprintf(err, err_len, "unknown model geometry '%s' (known: %s, %s, %s)", name,
             table[0].name, table[1].name, table[2].name);
    return NULL;
}

void kv_geometry_apply(const kv_model_geometry *g, const kv_trace_info *trace,
                       kv_trace_info *out)
{
    *out = *trace;
    out->n_layers = g->n_layers;
    out->n_heads = g->n_heads;
    out->n_kv_heads = g->n_kv_heads;
    out->head_dim = g->head_dim;
    out->dtype_bytes = g->dtype_bytes;
}
