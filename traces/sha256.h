/*
 * sha256.h - SHA-256 digests as hex text, through OpenSSL's EVP interface: the identity of
 * a checkpoint (traces/model.h) and of a tokenizer (traces/tokenizer.h), as sha256sum
 * prints it.
 */
#ifndef KV_SHA256_H
#define KV_SHA256_H

#include <stddef.h>

#define KV_SHA256_HEX 65 /* 64 hex digits and a NUL */

/*
 * SHA-256 of a[0..a_bytes) followed by b[0..b_bytes) (b may be NULL when b_bytes is 0;
 * both borrowed), as 64 lowercase hex digits and a NUL into hex. Returns 0, or -1 when
 * OpenSSL fails (out of memory); hex is then unspecified.
 */
int kv_sha256_hex(const void *a, size_t a_bytes, const void *b, size_t b_bytes,
                  char hex[KV_SHA256_HEX]);

#endif
