/*
 * sha256.c - SHA-256 digests as hex text (see sha256.h).
 */
#include "traces/sha256.h"

#include <openssl/evp.h>
#include <stdio.h>

int kv_sha256_hex(const void *a, size_t a_bytes, const void *b, size_t b_bytes,
                  char hex[KV_SHA256_HEX])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) &&
             EVP_DigestUpdate(ctx, a, a_bytes) &&
             (b_bytes == 0 || EVP_DigestUpdate(ctx, b, b_bytes)) &&
             EVP_DigestFinal_ex(ctx, md, &md_len) && md_len == 32;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return -1;
    for (unsigned i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return 0;
}
