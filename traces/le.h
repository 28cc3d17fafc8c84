/*
 * le.h - little-endian fields of the llama2.c files (checkpoints, traces/model.h; the
 * tokenizer, traces/tokenizer.h), read whatever the host byte order.
 */
#ifndef KV_LE_H
#define KV_LE_H

#include <stdint.h>
#include <string.h>

/* The little-endian int32 at p (4 readable bytes). Cannot fail. */
static inline int32_t kv_le32(const unsigned char *p)
{
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                 (uint32_t)p[3] << 24;
    int32_t v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* The little-endian IEEE float32 at p (4 readable bytes). Cannot fail. */
static inline float kv_le_float(const unsigned char *p)
{
    uint32_t u = (uint32_t)kv_le32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

#endif
